"""SIGTERM stops a transfer even when it arrives inside a finalizer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# The signal arrives while a finalizer runs (as PyMySQL's result finalizer
# did under an export): Python drops an exception raised there.
SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    from users_service.__main__ import _stop

    signal.signal(signal.SIGTERM, _stop)

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    Finalized()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pass
    print("ran on")
    """
)


def test_a_sigterm_arriving_in_a_finalizer_still_stops_the_process_as_killed_by_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 128 + 15, done.stderr
    assert "ran on" not in done.stdout
