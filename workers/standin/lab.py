"""A whole stand-in lab on 127.0.0.1: staging sshd, boards and their PDU, labgrid coordinator, exporter, places.

What an operator runs on real hosts (their own coordinator, an exporter next to the boards,
places made with labgrid-client), brought up on one machine for CI and demos:
`python -m workers.standin.lab DIR [BOARDS [COORDINATOR_PORT]]` runs it until interrupted and prints
the settings a lab worker and a `lab: labgrid` device class need (README, "Labs").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lab.errors import LabSetupError
from lab.places import Coordinator, Identity
from workers.standin.pdu import POWER_FAULT_FILE
from workers.standin.staging_sshd import STAGE_USER, StagingSshd, ensure_stage_user, free_port, start_staging_sshd

EXPORTER_NAME = "standin"
DEFAULT_TAGS = {"board": "standin-x86"}
ADMIN_USER = "labgate-admin"  # the labgrid user that makes the places
_UP_CAP_S = 20.0


@dataclass
class StandinLab:
    directory: Path
    coordinator: str  # host:port
    places: list[str]
    tags: dict[str, str]
    pdu_url: str
    ssh_config: Path  # LABGATE_LAB_SSH_CONFIG for the lab worker
    boards: list[dict[str, object]]  # name, console, runner, images (from the PDU)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sshd: StagingSshd | None = None
    tftp_root: Path | None = None

    def worker_env(self) -> dict[str, str]:
        return {"LABGATE_LAB_SSH_CONFIG": str(self.ssh_config)}

    def inject_power_fault(self, place: str, why: str = "test") -> None:
        """A test aid: the place's outlet answers 500 until clear_power_fault (workers/standin/pdu.py)."""
        self._fault_file(place).write_text(why + "\n")

    def clear_power_fault(self, place: str) -> None:
        self._fault_file(place).unlink(missing_ok=True)

    def _fault_file(self, place: str) -> Path:
        board = self.boards[self.places.index(place)]
        return self.directory / "boards" / str(board["name"]) / POWER_FAULT_FILE

    def stop(self) -> None:
        # The PDU first: it powers every board off, so no QEMU outlives the lab.
        for name in ("pdu", "exporter", "coordinator"):
            process = self.processes.pop(name, None)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.sshd is not None:
            self.sshd.stop()
        if self.tftp_root is not None:
            shutil.rmtree(self.tftp_root, ignore_errors=True)


def start_standin_lab(directory: Path, boards: int = 2, tags: dict[str, str] | None = None,
                      coordinator_port: int = 0) -> StandinLab:  # fmt: skip
    """Bring up the stand-in lab in `directory` (the coordinator on a free port unless given); stop() ends it."""
    tags = dict(tags or DEFAULT_TAGS)
    directory.mkdir(parents=True, exist_ok=True)
    lab = StandinLab(directory=directory, coordinator="", places=[], tags=tags, pdu_url="",
                     ssh_config=directory / "ssh" / "ssh_config", boards=[])  # fmt: skip
    try:
        _start(lab, boards, coordinator_port)
    except BaseException:
        lab.stop()
        raise
    return lab


def _start(lab: StandinLab, count: int, coordinator_port: int) -> None:
    directory = lab.directory
    lab.sshd = start_staging_sshd(directory / "ssh")
    lab.ssh_config = lab.sshd.ssh_config
    # Boards' TFTP roots: the staging user links images there, so they sit outside directories
    # it cannot walk (a test's tmp_path is root's own).
    stage = ensure_stage_user()
    lab.tftp_root = Path(tempfile.mkdtemp(prefix="labgate-standin-tftp-"))
    lab.tftp_root.chmod(0o755)
    boards = []
    for index in range(count):
        images = lab.tftp_root / f"board-{index}"
        images.mkdir()
        os.chown(images, stage.pw_uid, stage.pw_gid)
        boards.append({"name": f"board-{index}", "images": str(images)})
    spec = directory / "standin.json"
    ports_file = directory / "standin-ports.json"
    ports_file.unlink(missing_ok=True)
    spec.write_text(json.dumps({"state_dir": str(directory / "boards"), "ports_file": str(ports_file),
                                "boards": boards}))  # fmt: skip
    lab.processes["pdu"] = _spawn([sys.executable, "-m", "workers.standin", str(spec)], directory / "pdu.log")
    ports = json.loads(_wait_file(ports_file, lab.processes["pdu"]).read_text())
    lab.pdu_url, lab.boards = ports["pdu_url"], ports["boards"]

    port = coordinator_port or free_port()
    lab.coordinator = f"127.0.0.1:{port}"
    (directory / "coordinator").mkdir(exist_ok=True)
    lab.processes["coordinator"] = _spawn([_labgrid_tool("labgrid-coordinator"), "-l", lab.coordinator],
                                          directory / "coordinator.log", cwd=directory / "coordinator")  # fmt: skip
    _wait_listening(port, lab.processes["coordinator"])

    exporter_yaml = directory / "exporter.yaml"
    exporter_yaml.write_text(yaml.safe_dump(exporter_config(lab.pdu_url, lab.boards), sort_keys=False))
    lab.processes["exporter"] = _spawn(
        [_labgrid_tool("labgrid-exporter"), "-c", lab.coordinator, "-n", EXPORTER_NAME,
         "--hostname", lab.sshd.host_alias, str(exporter_yaml)],
        directory / "exporter.log",
    )  # fmt: skip
    admin = Coordinator(lab.coordinator, Identity(socket.gethostname(), ADMIN_USER))
    try:
        _wait_resources(admin, len(boards), lab.processes["exporter"])
        for index, board in enumerate(lab.boards):
            place = f"standin-{index}"
            admin.create_place(place, [f"{EXPORTER_NAME}/{board['name']}/*"], lab.tags)
            lab.places.append(place)
    finally:
        admin.close()


def exporter_config(pdu_url: str, boards: list[dict[str, object]]) -> dict[str, object]:
    """One exporter group per board: its outlet, its two UARTs, its TFTP root."""
    config: dict[str, object] = {}
    for index, board in enumerate(boards):
        config[str(board["name"])] = {
            "power": {"cls": "NetworkPowerPort", "model": "simplerest", "host": pdu_url, "index": index},
            "console": {"cls": "NetworkSerialPort", "host": "127.0.0.1", "port": board["console"],
                        "protocol": "raw", "speed": 115200},
            "runner": {"cls": "NetworkSerialPort", "host": "127.0.0.1", "port": board["runner"],
                       "protocol": "raw", "speed": 115200},
            "images": {"cls": "TFTPProvider", "internal": f"{board['images']}/", "external": f"{board['name']}/"},
        }  # fmt: skip
    return config


def _labgrid_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the venv labgate runs from
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise LabSetupError(f"{name} not found; pip install labgrid")
    return found


def _spawn(argv: list[str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def _wait_file(path: Path, process: subprocess.Popen[bytes]) -> Path:
    deadline = time.monotonic() + _UP_CAP_S
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise LabSetupError(f"{process.args!r} did not come up (status {process.returncode})")
        time.sleep(0.05)
    return path


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _UP_CAP_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise LabSetupError(f"{process.args!r} did not listen on {port} ({process.returncode})") from None
            time.sleep(0.05)


def _wait_resources(admin: Coordinator, count: int, exporter: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _UP_CAP_S
    while len(admin.session.resources.get(EXPORTER_NAME, {})) < count:
        if exporter.poll() is not None or time.monotonic() > deadline:
            raise LabSetupError(f"the exporter's resources never reached the coordinator ({exporter.returncode})")
        admin.loop.run_until_complete(admin.session.sync_with_coordinator())
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("standin-lab")
    lab = start_standin_lab(directory.resolve(), int(argv[1]) if len(argv) > 1 else 2,
                            coordinator_port=int(argv[2]) if len(argv) > 2 else 0)  # fmt: skip
    print(json.dumps({"coordinator": lab.coordinator, "places": lab.places, "place_tags": lab.tags,
                      "environment": str(Path(__file__).resolve().parents[1] / "envs" / "board.yaml.j2"),
                      "worker_env": lab.worker_env(), "stage_user": STAGE_USER}, indent=2), flush=True)  # fmt: skip
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
