"""The stand-in boards' PDU: labgrid's `simplerest` power protocol on 127.0.0.1, one outlet per board.

labgrid's simplerest backend (labgrid/driver/power/simplerest.py) formats the exporter's URL
`http://127.0.0.1:PORT/power/{index}/{value}` and sends GET: value 1 or 0 switches the outlet,
an empty value (the trailing slash stripped) asks its state, answered `1` or `0`. Switching an
outlet to the state it is in changes nothing, as on a real PDU. Every request is recorded
(GET /events) so tests can see what labgrid asked.

A test aid, not a PDU feature: while a board's state directory holds a file named POWER_FAULT_FILE,
its outlet answers every request with 500 and the file's text, as a dead outlet or relay would
(StandinLab.inject_power_fault writes it; only whoever can write the PDU's state directory can).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lab.errors import LabSetupError
from workers.standin.board import BoardError, StandinBoard

log = logging.getLogger(__name__)

POWER_FAULT_FILE = "power-fault"
_POWER_PATH = re.compile(r"/power/(?P<outlet>[0-9]{1,3})(?:/(?P<value>[01]))?/?")


class StandinPdu(ThreadingHTTPServer):
    """An HTTP PDU whose outlets are stand-in boards."""

    daemon_threads = True

    def __init__(self, boards: list[StandinBoard], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _PduHandler)
        self.boards = boards
        self.events: list[dict[str, Any]] = []
        self.events_lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url_template(self) -> str:
        """The NetworkPowerPort `host` for the exporter (labgrid fills in index and value)."""
        return f"http://127.0.0.1:{self.port}/power/{{index}}/{{value}}"

    def record(self, outlet: int, request: str, answer: int) -> None:
        with self.events_lock:
            self.events.append({"at": time.time(), "outlet": outlet, "request": request, "status": answer})

    def close_boards(self) -> None:
        for board in self.boards:
            board.close()


class _PduHandler(BaseHTTPRequestHandler):
    server: StandinPdu

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/events":
            with self.server.events_lock:
                self._answer(200, json.dumps(self.server.events), "application/json")
            return
        match = _POWER_PATH.fullmatch(self.path)
        if match is None or int(match["outlet"]) >= len(self.server.boards):
            self._answer(404, "no such outlet\n")
            return
        outlet = int(match["outlet"])
        board = self.server.boards[outlet]
        value = match["value"]
        request = {None: "get", "1": "on", "0": "off"}[value]
        fault = board.settings.state_dir / POWER_FAULT_FILE
        try:
            if fault.exists():
                raise BoardError(f"outlet {outlet} is dead (injected: {fault.read_text().strip()})")
            if value == "1":
                board.power_on()
            elif value == "0":
                board.power_off()
            status, body = 200, "1" if board.is_on() else "0"
        except (BoardError, LabSetupError, OSError) as exc:
            log.warning("outlet %s: %s failed: %s", outlet, request, exc)
            status, body = 500, f"{exc}\n"
        self.server.record(outlet, request, status)
        self._answer(status, body)

    def _answer(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("pdu: " + format, *args)
