"""A TCP listener on the host's 127.0.0.1 that counts who reached it: network tests first reach it from
outside the sandbox (so they can fail), then assert the sandboxed code could not."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Listener:
    port: int
    accepted: list[object] = field(default_factory=list)

    def wait_for(self, count: int, timeout_s: float = 5.0) -> int:
        """How many connections it has accepted, once `count` have come or timeout_s has passed."""
        deadline = time.monotonic() + timeout_s
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.accepted)


@contextmanager
def loopback_listener() -> Iterator[Listener]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    listener = Listener(server.getsockname()[1])

    def accept() -> None:
        while True:
            try:
                listener.accepted.append(server.accept())
            except OSError:  # closed: the test is over
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener
    finally:
        server.close()
