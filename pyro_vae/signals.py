"""Stopping a run from outside: Ctrl-C (SIGINT) and a cluster scheduler's SIGTERM ask the loop to finish its
step, save and return; a second signal aborts.  Nothing here may fail on a closed terminal or pipe: with
``pyro-vae train ... | tee log``, Ctrl-C reaches ``tee`` too, which exits first, and a message or progress bar
written to the dead pipe must not kill the run before it saves.
"""
import signal
import sys
import threading
from typing import Callable, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def say(text: str, stream=None) -> None:
    """Print a line to ``stream`` (stderr by default), silently dropping it when the stream is closed."""
    try:
        print(text, file=stream or sys.stderr, flush=True)
    except (OSError, ValueError):          # BrokenPipeError, or a closed file
        pass


class SafeStream:
    """A text stream (for tqdm) whose writes are dropped once the other end is gone."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def __getattr__(self, name):
        return getattr(self.stream, name)


LOG_REFRESH_SECONDS = 30.0


def bar_settings(stream=None) -> dict:
    """tqdm settings for a progress bar on ``stream`` (stderr by default): tqdm's own on a terminal; where the
    stream is a file or a pipe (a batch job's log), a refresh at most every :data:`LOG_REFRESH_SECONDS`, so a
    30-minute evaluation leaves some sixty lines, each with its remaining time, instead of megabytes of
    carriage-return updates."""
    stream = stream if stream is not None else sys.stderr
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        terminal = False
    return {} if terminal else {"mininterval": LOG_REFRESH_SECONDS}


class StopOnSignal:
    """While active (a context manager, in the main thread only), the first SIGINT or SIGTERM calls
    ``request_stop()`` and is remembered in :attr:`received`; a second one raises ``KeyboardInterrupt``.
    ``active=False`` makes it a no-op (a process whose parent relays the signals)."""

    def __init__(self, request_stop: Callable[[], None], active: bool = True):
        self.request_stop, self.active, self.received, self._previous = request_stop, active, None, {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        say(f"{signal.Signals(signum).name} received: saving a checkpoint after this step (again to abort).")
        self.request_stop()

    def __enter__(self) -> "StopOnSignal":
        if self.active and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}


def exit_code(signum: Optional[int]) -> int:
    """The shell's convention for a process stopped by ``signum``: 128 + its number (130 for Ctrl-C)."""
    return 128 + int(signum or signal.SIGINT)
