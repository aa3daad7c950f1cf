"""An ASGI app served by uvicorn on 127.0.0.1 in a thread of the test process: the fakes' transport."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any, Generic, Self, TypeVar

import uvicorn

from tests.fakes.github_api import _Server

R = TypeVar("R")


class ServedApp:
    """`with ServedApp(app, "FakeX") as served:` answers at `served.base_url` until the block ends."""

    def __init__(self, app: Any, name: str) -> None:
        self.app, self.name = app, name
        self.base_url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ServedApp:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets (else Nagle's 40 ms per answer).
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listening.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        server = _Server(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                        server_header=False))  # fmt: skip
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        give_up = time.monotonic() + 5
        while not server.started:
            if time.monotonic() > give_up or not thread.is_alive():
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None and self._thread is not None:
            self._server.stop()
            self._thread.join(timeout=5)


class ServedFake:
    """A fake that answers at `base_url` inside its `with` block: a subclass makes its app and calls
    `self.serve(app, "FakeX")` in __init__."""

    base_url: str = ""

    def serve(self, app: Any, name: str) -> None:
        self._served = ServedApp(app, name)

    def __enter__(self) -> Self:
        self._served.__enter__()
        self.base_url = self._served.base_url
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.__exit__(*exc)


class RequestLog(Generic[R]):
    """What a fake was asked, in order, safe to read while its server thread appends."""

    def __init__(self) -> None:
        self._entries: list[R] = []
        self._guard = threading.Lock()

    def append(self, entry: R) -> None:
        with self._guard:
            self._entries.append(entry)

    def all(self) -> list[R]:
        with self._guard:
            return list(self._entries)

    def matching(self, method: str, path_regex: str) -> list[R]:
        """Entries (with `method` and `path` attributes) of this method whose path fully matches the regex."""
        pattern = re.compile(path_regex)
        return [e for e in self.all() if e.method == method.upper() and pattern.fullmatch(e.path)]  # type: ignore[attr-defined]
