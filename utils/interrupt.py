"""Graceful stop on SIGINT/SIGTERM: the training loop finishes its step, saves, and exits."""
from __future__ import annotations

import signal
import threading


class StopRequest:
    """Context manager; ``requested`` turns true on the first SIGINT or SIGTERM. A second SIGINT
    interrupts at once (KeyboardInterrupt), for when saving hangs."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step, then saving a checkpoint "
              f"(press Ctrl-C again to abort without saving)", flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
