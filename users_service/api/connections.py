"""The HTTP/1.1 connections `serve` accepts: uvicorn's httptools protocol, bounded.

uvicorn hands every byte of a request's head to httptools, which keeps
what it has of the header being read until the header ends: one 100 MB
header held the event loop for 10 s and took the worker from 198 to 489 MB,
and a head sent a byte a second, or a connection that sends nothing at all,
stayed open for ever. `BoundedHttpToolsProtocol` adds three limits
(settings.py, docs/operations.md "Limits"):

- **MAX_HEADER_BYTES** (16 KiB, as Node.js): the bytes of a request from
  its first to the blank line that ends its headers. A head that has not
  ended within that many bytes is answered 431 `headers_too_large`; the
  parser is never given more than that many bytes of one head.
- **HEADERS_TIMEOUT_SECONDS** (10): a head not complete that long after
  the read that brought its first byte is answered 408 `request_timeout`.
- **KEEP_ALIVE_TIMEOUT_SECONDS** (5): a connection with no request under
  way is closed after that long. uvicorn counts it from the end of each
  answer; here it also runs from the moment the connection opens.

The 431 and 408 are written here, since no request has reached the app:
problem details like the app's, with a new request id (in `X-Request-ID`
too) and `Connection: close`. Then the connection stops being read for
requests: what the client still sends is read and dropped for at most
LINGER_SECONDS, as nginx's lingering close does, so that a client still
sending (a 100 MB header) gets to read the answer rather than a reset.

What this costs a request whose head arrives in one read, as is usual: a
few comparisons per read and an attribute set in two parser callbacks, no
timer (one is made only when a read leaves a head incomplete). Measured
on a GET of the benchmark's shape fed to the protocol 20,000 times (best
of 40 runs, CPU time): 6.8 µs against uvicorn's 6.1 µs, so about 0.7 µs a
request. A read that holds more than MAX_HEADER_BYTES (a head followed by
a large body) is fed to the parser in two slices.

On SIGTERM uvicorn closes every idle keep-alive connection at once. A
load balancer that sent a request on one of them at that moment gets no
answer at all, and HAProxy then closes its caller's connection without
one (a POST it may not repeat): seen once in three runs of the rolling
restart test. So an idle connection stays open SHUTDOWN_IDLE_LINGER_SECONDS
(3 s: HAProxy takes a replica whose listening socket is closed out of
rotation after two failed checks 0.5 s apart), and a request that arrives
on it meanwhile is answered, with `Connection: close`.

Each connection's transport is wrapped in a `OneWriteTransport`: uvicorn
writes an answer's status line and headers, then its body, in two writes
(two system calls, two TCP segments for the client to read); the wrapper
holds the first until the second, or until the event loop's turn ends, and
sends both in one. Measured with wrk on the SQLite service (64
connections, four alternating pairs of runs): GET /users/{id} 2,363 ->
2,538 requests/s on average, POST /users 1,081 -> 1,113
(docs/performance.md, "One write per answer").

One case is bounded more loosely: a request pipelined right behind one
with a body, whose first bytes came in the read that ended that body, is
counted from the next read, so its head may pass the limit by what that
read held of it (at most one socket read, 256 KiB).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from users_service.api.middleware import address
from users_service.api.problems import PROBLEM_CONTENT_TYPE, STATUS, problem_body
from users_service.errors import HeadersTooLarge, RequestTimeout, ServiceError
from users_service.metrics import CONNECTIONS_REFUSED
from users_service.settings import Settings

logger = logging.getLogger("users_service.connections")

# How long a refused connection is still read (and what it sends dropped)
# before it is closed.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    headers_timeout_seconds: float
    shutdown_idle_linger_seconds: float = 0.0

    @classmethod
    def for_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.max_header_bytes,
            settings.headers_timeout_seconds,
            settings.shutdown_idle_linger_seconds,
        )


class OneWriteTransport(asyncio.Transport):
    """A connection's transport that holds one write back until the next
    write or the end of the event loop's turn, whichever comes first, and
    then sends the two together (module notes). It holds at most one write:
    a body streamed in many writes goes out as it comes, under the real
    transport's flow control."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            if data:
                self._held = bytes(data)  # a copy only if a buffer the caller may reuse
                self._loop.call_soon(self._flush)
            return
        self._held = None
        self._transport.writelines((held, data))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        held = 0 if self._held is None else len(self._held)
        return held + self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; uvicorn makes one
    per connection (`serve` passes it as `http=`, with its limits bound)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head = limits.max_header_bytes
        self.headers_timeout = limits.headers_timeout_seconds
        self.shutdown_linger = limits.shutdown_idle_linger_seconds
        self.shutting_down = False
        # Bytes of the request head being read; -1 while a body is.
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.refused = False
        self.linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))
        # uvicorn arms this only once an answer has gone out.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.head_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.linger_timer = None
        super().connection_lost(exc)

    # The per-request methods call uvicorn's by name: cheaper than super().

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering: dropped
        read = self.head_bytes
        if read < 0:  # a body: BodyLimitMiddleware bounds it
            HttpToolsProtocol.data_received(self, data)
        elif len(data) <= self.max_head - read:
            self.head_bytes = read + len(data)
            HttpToolsProtocol.data_received(self, data)
        else:
            self._feed_up_to_the_limit(data)
            return
        # Is a head under way? Bytes of it were counted, or (a request
        # pipelined behind one that ended in this read, its beginning not
        # counted) its scope has no method yet.
        head = self.head_bytes
        if head > 0 or (head == 0 and self.scope is not None and "method" not in self.scope):
            self._time_the_head()

    def _time_the_head(self) -> None:
        if self.head_timer is None and not self.transport.is_closing():
            self.head_timer = self.loop.call_later(self.headers_timeout, self._head_too_slow)

    def _feed_up_to_the_limit(self, data: bytes) -> None:
        room = self.max_head - self.head_bytes
        self.head_bytes = self.max_head
        if room:
            HttpToolsProtocol.data_received(self, data[:room])
        if self.transport.is_closing():  # the parser refused the request (400)
            return
        if self.head_bytes == self.max_head:  # the head did not end within the limit
            self._refuse(
                HeadersTooLarge(
                    f"The request's header section is larger than {self.max_head} bytes"
                ),
                "headers_too_large",
            )
            return
        self.data_received(data[room:])  # a body, or the next request

    def on_headers_complete(self) -> None:
        self.head_bytes = -1
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        HttpToolsProtocol.on_headers_complete(self)
        if self.shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

    def shutdown(self) -> None:
        """SIGTERM: a connection with an answer under way closes after it
        (uvicorn's way); an idle one closes after the linger (module notes)."""
        self.shutting_down = True
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.shutdown_linger > 0:
            self.loop.call_later(self.shutdown_linger, self._close_after_answer)
        else:
            self._close_after_answer()

    def _close_after_answer(self) -> None:
        """Close now if idle, else once the answer under way has gone out."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self.head_bytes = 0
        HttpToolsProtocol.on_message_complete(self)

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self._refuse(
                RequestTimeout(
                    "The request's header section was not complete within "
                    f"{self.headers_timeout:g} s"
                ),
                "headers_timeout",
            )

    def _refuse(self, error: ServiceError, reason: str) -> None:
        """Answer `error` (if no answer is on its way), then close."""
        self.refused = True
        self._unset_keepalive_if_required()
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        CONNECTIONS_REFUSED.labels(reason).inc()
        request_id = uuid.uuid4().hex
        logger.info(
            "connection refused: %s; peer=%s [request_id=%s]",
            error.detail,
            address(self.client),
            request_id,
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # The answer to a request before this one is still being sent:
            # it goes out whole, then the connection closes.
            self.cycle.keep_alive = False
            return
        self.transport.write(self._problem(error, request_id))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _problem(self, error: ServiceError, request_id: str) -> bytes:
        body = orjson.dumps(problem_body(error, request_id))
        head = [STATUS_LINE[STATUS[error.code]]]
        headers = [
            *self.server_state.default_headers,
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
        head.extend(b"%s: %s\r\n" % header for header in headers)
        return b"".join([*head, b"\r\n", body])
