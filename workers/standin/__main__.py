"""`python -m workers.standin SPEC.json`: run the stand-in boards and their PDU until SIGTERM.

SPEC: {"state_dir": DIR, "ports_file": FILE, "boards": [{"name", "images", "memory_mb"?}, ...]}.
When the PDU answers, FILE gets {"pdu_url": ..., "boards": [{"name", "console", "runner",
"images"}]} (written whole, then renamed), for the exporter's config.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

from workers.standin.board import BoardSettings, StandinBoard
from workers.standin.pdu import StandinPdu


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s standin %(levelname)s %(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    state = Path(spec["state_dir"])
    boards = []
    for entry in spec["boards"]:
        board_state = state / entry["name"]
        board_state.mkdir(parents=True, exist_ok=True)
        settings = BoardSettings(name=entry["name"], images=Path(entry["images"]), state_dir=board_state,
                                 memory_mb=entry.get("memory_mb", 512))  # fmt: skip
        boards.append(StandinBoard(settings))
    pdu = StandinPdu(boards)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server = threading.Thread(target=pdu.serve_forever, daemon=True)
    server.start()
    ports = {"pdu_url": pdu.url_template(), "pdu_port": pdu.port,
             "boards": [{"name": b.settings.name, "console": b.console.port, "runner": b.runner.port,
                         "images": str(b.settings.images)} for b in boards]}  # fmt: skip
    ports_file = Path(spec["ports_file"])
    partial = ports_file.with_suffix(".partial")
    partial.write_text(json.dumps(ports))
    partial.rename(ports_file)
    stopping.wait()
    pdu.shutdown()
    pdu.close_boards()  # every board powered off: no QEMU outlives its PDU
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
