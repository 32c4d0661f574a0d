"""One daemon thread that follows something until told to stop.

The list-directory follower, the Redis follower and the hit forwarder all
poll in the background of a server and must stop promptly on shutdown; this
is the part they share.
"""

from __future__ import annotations

import threading


class Background:
    """Subclasses implement ``_run``, waiting on ``self._stop`` between rounds."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish its round and wait for it (up to 5 s)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        raise NotImplementedError
