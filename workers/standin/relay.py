"""A board's UART on TCP, the way ser2net exports one: QEMU's serial socket relayed to 127.0.0.1:PORT.

QEMU never listens on the host's network: it runs in a network namespace of its own (a
guest that escaped into QEMU must not reach 127.0.0.1's services), so it connects to a unix
socket in its runtime directory and this relay serves the TCP side that the exporter
announces as a NetworkSerialPort (protocol raw). What QEMU writes before a client connects
is kept (up to a cap), as QEMU's `wait=on` would have kept it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

_TICK_S = 0.1
_HANG_UP_DELAY_S = 1.0
_CHUNK = 65536


class SerialRelay:
    """One UART: a fixed TCP port for clients, a unix socket per power-on for the board's QEMU."""

    def __init__(self, name: str, port: int = 0, max_buffered: int = 16 << 20) -> None:
        self.name = name
        self.max_buffered = max_buffered
        self._tcp = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self._tcp.setblocking(False)
        self.port: int = self._tcp.getsockname()[1]
        self._lock = threading.Lock()
        self._unix: socket.socket | None = None
        self._board: socket.socket | None = None
        self._client: socket.socket | None = None
        self._pending = bytearray()  # board output no client has read yet
        # Once the board's QEMU is gone and its last output delivered, the client is hung up on (a
        # stand-in board's console ends like a USB UART that was unplugged, so a reader learns it
        # now), but only a moment later: pyserial drops what one read() got when EOF ends that read.
        self._hang_up_at: float | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{name}", daemon=True)
        self._thread.start()

    def attach(self, path: Path, uid: int | None) -> None:
        """Listen for the board's QEMU on `path` (owned by QEMU's uid); output of an earlier boot is gone."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
        path.chmod(0o600)
        if uid is not None:
            os.chown(path, uid, uid)
        with self._lock:
            self._drop_board()
            self._unix = listener
            self._pending.clear()
            self._hang_up_at = None

    def is_connected(self) -> bool:
        with self._lock:
            return self._board is not None

    def detach(self) -> None:
        """Power is off: the board's side closes, and so does the client's (it sees EOF, as after a hang-up)."""
        with self._lock:
            self._drop_board()
            if self._client is not None:
                self._client.close()
                self._client = None
            self._pending.clear()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self.detach()
        self._tcp.close()

    def _drop_board(self) -> None:
        for sock in (self._board, self._unix):
            if sock is not None:
                sock.close()
        self._board = self._unix = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                watched = [s for s in (self._tcp, self._unix, self._board, self._client) if s is not None]
            with selectors.DefaultSelector() as selector:
                for sock in watched:
                    with contextlib.suppress(ValueError, OSError):  # closed by detach() since the list was made
                        selector.register(sock, selectors.EVENT_READ)
                ready = selector.select(_TICK_S)
            with self._lock:
                for key, _ in ready:
                    with contextlib.suppress(OSError):
                        self._serve(key.fileobj)  # type: ignore[arg-type]
                self._flush()

    def _serve(self, sock: socket.socket) -> None:
        if sock is self._tcp:
            client, _ = self._tcp.accept()
            if self._client is not None:  # one user of a UART at a time, as ser2net does
                client.close()
                return
            client.setblocking(True)
            self._client = client
        elif sock is self._unix and self._unix is not None:
            board, _ = self._unix.accept()
            if self._board is not None:
                board.close()
                return
            self._board = board
        elif sock is self._board:
            chunk = sock.recv(_CHUNK)
            if not chunk:  # QEMU went away (the guest powered off or QEMU crashed)
                self._board.close()
                self._board = None
                self._hang_up_at = time.monotonic() + _HANG_UP_DELAY_S
            elif len(self._pending) + len(chunk) <= self.max_buffered:
                self._pending += chunk
        elif sock is self._client:
            chunk = sock.recv(_CHUNK)
            if not chunk:
                self._client.close()
                self._client = None
            elif self._board is not None:
                self._board.sendall(chunk)

    def _flush(self) -> None:
        if self._client is None:
            return
        if not self._pending:
            if self._hang_up_at is not None and time.monotonic() >= self._hang_up_at:
                self._client.close()
                self._client = None
            return
        try:
            self._client.sendall(bytes(self._pending))
        except OSError:
            self._client.close()
            self._client = None
            return
        self._pending.clear()
