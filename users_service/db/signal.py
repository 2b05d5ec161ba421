"""A signal that a write transaction committed in this process."""

from __future__ import annotations

import asyncio


class CommitSignal:
    """Wakes long polls when this process commits a write. Other processes'
    writes are seen by polling again (changes.RECHECK_SECONDS)."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def current(self) -> asyncio.Event:
        """The event the next commit sets: take it before reading, wait on it after."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()
