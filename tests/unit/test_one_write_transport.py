"""OneWriteTransport (api/connections.py) over a real TCP connection on
127.0.0.1: what it holds back, and when what it holds goes out."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from tests.helpers import data_segments_received
from users_service.api.connections import OneWriteTransport

Check = Callable[[OneWriteTransport, socket.socket], Awaitable[None]]


class _Accepting(asyncio.Protocol):
    def __init__(self, accepted: asyncio.Future[asyncio.Transport]) -> None:
        self.accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.accepted.set_result(transport)


def on_a_connection(check: Check) -> None:
    """Run `check` with the server side's transport, wrapped, and the client's socket."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.Transport] = loop.create_future()
        server = await loop.create_server(lambda: _Accepting(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            transport = OneWriteTransport(await accepted, loop)
            await check(transport, client)
            transport.abort()
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def received(client: socket.socket, size: int) -> bytes:
    """What the client has received once `size` bytes came, read off the loop's thread."""

    def read() -> bytes:
        data = b""
        while len(data) < size:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    return await asyncio.to_thread(read)


def test_two_writes_in_one_turn_of_the_event_loop_arrive_as_one_segment() -> None:
    async def check(transport: OneWriteTransport, client: socket.socket) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        data = await received(client, 40)
        assert data == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        assert data_segments_received(client) == 1

    on_a_connection(check)


def test_a_write_alone_is_held_only_until_the_end_of_the_turn() -> None:
    async def check(transport: OneWriteTransport, client: socket.socket) -> None:
        transport.write(b"head")
        assert transport.get_write_buffer_size() == 4  # held, counted
        await asyncio.sleep(0)  # the turn ends: sent
        assert await received(client, 4) == b"head"
        transport.write(memoryview(bytearray(b"body")))  # a buffer the caller may reuse: copied
        assert await received(client, 4) == b"body"

    on_a_connection(check)


def test_at_most_one_write_is_held_while_a_body_streams() -> None:
    async def check(transport: OneWriteTransport, client: socket.socket) -> None:
        transport.write(b"head|")
        transport.write(b"chunk 1|")
        assert transport.get_write_buffer_size() == 0  # both sent together
        transport.write(b"chunk 2|")
        assert transport.get_write_buffer_size() == 8  # the next is held again
        transport.write(b"")  # an empty body after a head: the head goes now
        assert transport.get_write_buffer_size() == 0
        transport.write(b"")  # and nothing held: nothing to send, nothing held
        assert transport.get_write_buffer_size() == 0
        assert await received(client, 21) == b"head|chunk 1|chunk 2|"

    on_a_connection(check)


def test_close_and_write_eof_send_what_is_held_first() -> None:
    async def close(transport: OneWriteTransport, client: socket.socket) -> None:
        transport.write(b"last answer")
        transport.close()
        assert await received(client, 1 << 20) == b"last answer"  # then the end of the stream

    async def write_eof(transport: OneWriteTransport, client: socket.socket) -> None:
        assert transport.can_write_eof()
        transport.write(b"a refusal")
        transport.write_eof()
        assert await received(client, 1 << 20) == b"a refusal"
        assert not transport.is_closing()  # still open for the linger

    on_a_connection(close)
    on_a_connection(write_eof)


def test_reading_and_flow_control_are_the_real_transports() -> None:
    async def check(transport: OneWriteTransport, client: socket.socket) -> None:
        assert transport.get_extra_info("peername") == client.getsockname()
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.resume_reading()
        transport.set_write_buffer_limits(high=1024, low=256)
        assert transport.get_write_buffer_limits() == (256, 1024)
        assert isinstance(transport.get_protocol(), _Accepting)

    on_a_connection(check)
