"""The stand-in board: its PDU speaks labgrid's simplerest and owns a confined QEMU; a board boot through a
real coordinator and exporter returns KTAP; a worker killed mid-boot leaves nothing the sweep cannot undo."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from lab.places import Coordinator, Identity
from tests.lab.standin_lab import ENVIRONMENT, ktap_initramfs, need_standin, standin
from workers.artifacts import ArtifactStore
from workers.spec import ArtifactRef, JobSpec, LabgridTarget, QemuSpec, TestCommand, TestSpec
from workers.standin.board import BoardSettings, StandinBoard
from workers.standin.lab import StandinLab
from workers.standin.pdu import StandinPdu
from workers.standin.staging_sshd import ensure_stage_user
from workers.testjob import run_board_job

__all__ = ["standin"]  # the fixture, imported for this module's tests

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _qemu_processes(marker: str) -> list[int]:
    """Live qemu-system processes whose command line mentions `marker` (a board's image copies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        is_qemu = bool(cmdline) and cmdline[0].endswith(b"qemu-system-x86_64")
        if is_qemu and marker.encode() in b" ".join(cmdline) and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def pdu(tmp_path: Path, debian_kernel: Path) -> Iterator[StandinPdu]:
    need_standin()
    ensure_stage_user()
    # A board's TFTP root as the staging user sees it: readable, out of root's own directories.
    tftp = Path(tempfile.mkdtemp(prefix="labgate-test-tftp-"))
    tftp.chmod(0o755)
    images, empty, hostile = tftp / "b0", tftp / "b1", tftp / "b2"
    for directory in (images, empty, hostile):
        directory.mkdir(mode=0o755)
    shutil.copyfile(debian_kernel, images / "vmlinuz")
    ktap_initramfs(images / "initramfs.cpio.gz")
    secret = tmp_path / "root-only"
    secret.write_text("not for the board\n")
    secret.chmod(0o600)
    (hostile / "vmlinuz").symlink_to(secret)  # what a staging user (or its stolen key) could link
    (hostile / "initramfs.cpio.gz").symlink_to(images / "initramfs.cpio.gz")
    boards = []
    for name, directory in (("b0", images), ("b1", empty), ("b2", hostile)):
        (tmp_path / name).mkdir()
        boards.append(StandinBoard(BoardSettings(name=name, images=directory, state_dir=tmp_path / name)))
    server = StandinPdu(boards)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close_boards()
        shutil.rmtree(tftp)


def test_the_pdu_switches_its_board_as_simplerest_asks_and_repeats_change_nothing(pdu: StandinPdu) -> None:
    url = pdu.url_template()
    board = pdu.boards[0]
    assert requests.get(url.format(index=0, value="").rstrip("/"), timeout=5).text == "0"
    assert requests.get(url.format(index=0, value=1), timeout=30).text == "1"
    pid = board.qemu_pid()
    assert pid is not None
    assert requests.get(url.format(index=0, value=1), timeout=30).text == "1"
    assert board.qemu_pid() == pid, "a second power-on restarted the board"
    assert requests.get(url.format(index=0, value="").rstrip("/"), timeout=5).text == "1"
    marker = str(board.settings.state_dir / "boot")
    qemus = _qemu_processes(marker)
    assert len(qemus) == 1
    assert _uid_of(qemus[0]) != 0, "the board's QEMU runs as root"
    assert Path(f"/proc/{qemus[0]}/ns/net").readlink() != Path("/proc/self/ns/net").readlink()
    # The console is served on TCP by the relay: the kernel's first lines come through it.
    with socket.create_connection(("127.0.0.1", board.console.port), timeout=30) as console:
        console.settimeout(60)
        seen = b""
        while b"Linux version" not in seen:
            chunk = console.recv(4096)
            assert chunk, f"console closed early: {seen[-300:]!r}"
            seen += chunk
    for _ in range(2):
        assert requests.get(url.format(index=0, value=0), timeout=30).text == "0"
    assert _qemu_processes(marker) == []
    assert board.boots == 1
    events = requests.get(url.split("/power")[0] + "/events", timeout=5).json()
    assert [(e["outlet"], e["request"], e["status"]) for e in events] == [
        (0, "get", 200), (0, "on", 200), (0, "on", 200), (0, "get", 200), (0, "off", 200), (0, "off", 200),
    ]  # fmt: skip


def test_a_board_with_nothing_staged_does_not_power_on(pdu: StandinPdu) -> None:
    answer = requests.get(pdu.url_template().format(index=1, value=1), timeout=30)
    assert answer.status_code == 500
    assert "nothing staged" in answer.text
    assert requests.get(pdu.url_template().format(index=1, value="").rstrip("/"), timeout=5).text == "0"
    base = pdu.url_template().split("/power")[0]
    for path in ("/power/7/1", "/power/0/2", "/power/-1/1", "/power/00000001/1", "/x"):
        assert requests.get(base + path, timeout=5).status_code == 404, path
    assert not pdu.boards[0].is_on()


def test_a_staged_link_to_a_file_the_staging_user_cannot_read_never_reaches_the_board(pdu: StandinPdu) -> None:
    answer = requests.get(pdu.url_template().format(index=2, value=1), timeout=30)
    assert answer.status_code == 500
    assert "cannot read" in answer.text and "labgate-stage" in answer.text
    assert not pdu.boards[2].is_on()
    assert not (pdu.boards[2].settings.state_dir / "boot" / "vmlinuz").exists()


@pytest.fixture(scope="module")
def hello_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hello-build")
    done = subprocess.run(["make", "-C", str(HELLO), f"O={out}", "-j2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_a_board_job_boots_examples_hello_through_the_coordinator_and_returns_its_ktap(
    standin: StandinLab, hello_build: Path, tmp_path: Path
) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    artifacts = {f"tests/{name}": ArtifactRef(digest=store.put_file(hello_build / "tests" / name), mode=0o755)
                 for name in ("test_math", "test_strings", "test_skip")}  # fmt: skip
    spec = JobSpec(
        job_id=7, pipeline_id=1, kind="test", tree_name="hello", tree_url="https://example.org/hello.git",
        max_log_bytes=1 << 20,
        test=TestSpec(
            name="unit", device_class="board-x86", qemu=QemuSpec(), kernel="debian", artifacts=artifacts,
            commands=(TestCommand(name="math", run="./tests/test_math"),
                      TestCommand(name="strings", run="./tests/test_strings"),
                      TestCommand(name="skip", run="./tests/test_skip")),
            timeout_s=120,
            labgrid=LabgridTarget(coordinator=standin.coordinator, place_tags=standin.tags,
                                  environment=ENVIRONMENT.read_text()),
        ),
    )  # fmt: skip
    result = run_board_job(spec, 1, tmp_path / "worker", store)
    assert result.result == "pass", (result.error_code, result.error_message, result.outputs, result.tests)
    assert result.outputs["ended"] == "end-marker"
    assert result.outputs["place"] in standin.places
    statuses = {case.path: case.status for case in result.tests}
    assert statuses["math.add"] == "pass" and statuses["math.gcd"] == "pass"
    assert statuses["strings.utf8"] == "skip" and statuses["skip"] == "skip"
    log = store.get_bytes(result.log_digest or "").decode()
    assert "Linux version" in log, "the board's console is in the job's log"
    # Released (cancel, then unlock) and powered off: the coordinator and the PDU say so.
    admin = Coordinator(standin.coordinator, Identity("test", "observer"))
    try:
        assert all(p.acquired is None and p.reservation is None for p in admin.places().values())
    finally:
        admin.close()
    events = requests.get(standin.pdu_url.split("/power")[0] + "/events", timeout=5).json()
    assert [e["request"] for e in events][-3:] == ["off", "on", "off"]


_KILLED_WORKER = """
import sys
from pathlib import Path
from lab.board import BoardRequest, run_board_boot
run_board_boot(BoardRequest(coordinator=sys.argv[1], place_tags={"board": "standin-x86"},
               environment=Path(sys.argv[2]).read_text(), kernel=Path(sys.argv[3]), initramfs=Path(sys.argv[4]),
               work_dir=Path(sys.argv[5]), timeout_s=300))
"""


def _start_up_sweep(coordinator: str, lab_user: str) -> str:
    """What a lab worker runs at start-up (workers/tasks.release_stale_places), as labgrid user `lab_user`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LABGATE_LAB_USER": lab_user}
    done = subprocess.run([sys.executable, "-m", "lab.sweep", coordinator], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_worker_killed_mid_boot_leaves_a_lock_the_start_up_sweep_releases_and_no_qemu(
    standin: StandinLab, debian_kernel: Path, tmp_path: Path
) -> None:
    image = ktap_initramfs(tmp_path / "initramfs.cpio.gz", command="sleep 600")
    events_url = standin.pdu_url.split("/power")[0] + "/events"
    before = len(requests.get(events_url, timeout=5).json())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LABGATE_LAB_USER": "lab-worker"}
    worker = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, standin.coordinator, str(ENVIRONMENT),
                               str(debian_kernel), str(image), str(tmp_path / "job")], cwd=ROOT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(e["request"] == "on" for e in requests.get(events_url, timeout=5).json()[before:]):
            assert worker.poll() is None, "the worker ended before powering the board on"
            assert time.monotonic() < deadline, "the board was never powered on"
            time.sleep(0.1)
        on = [e for e in requests.get(events_url, timeout=5).json()[before:] if e["request"] == "on"][-1]
        board = standin.boards[on["outlet"]]
        place = f"standin-{on['outlet']}"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    marker = str(standin.directory / "boards" / str(board["name"]) / "boot")  # this lab's board, not another test's
    assert _qemu_processes(marker), "the board's QEMU belongs to the PDU and outlives the worker"
    owner = f"{socket.gethostname()}/lab-worker"
    observer = Coordinator(standin.coordinator, Identity("test", "observer"))
    try:
        assert observer.places()[place].acquired == owner, "the lock outlives its holder"
        # Another worker's start-up sweep leaves the lock alone; its own successor's releases it.
        assert _start_up_sweep(standin.coordinator, "another-worker") == ""
        assert observer.places()[place].acquired == owner
        assert _qemu_processes(marker), "another worker's sweep powered the board off"
        assert _start_up_sweep(standin.coordinator, "lab-worker") == f"{standin.coordinator}: released {place}\n"
        state = observer.places()[place]
        assert state.acquired is None and state.reservation is None
    finally:
        observer.close()
    assert _qemu_processes(marker) == []
    assert [e["request"] for e in requests.get(events_url, timeout=5).json()[before:]][-1] == "off"


def test_the_exporter_announces_each_boards_outlet_uarts_and_tftp_root(standin: StandinLab) -> None:
    config = yaml.safe_load((standin.directory / "exporter.yaml").read_text())
    assert set(config) == {"board-0", "board-1"}
    board = config["board-0"]
    assert board["power"] == {"cls": "NetworkPowerPort", "model": "simplerest", "host": standin.pdu_url, "index": 0}
    assert board["console"]["cls"] == board["runner"]["cls"] == "NetworkSerialPort"
    assert board["console"]["protocol"] == "raw" and board["console"]["host"] == "127.0.0.1"
    assert board["images"]["cls"] == "TFTPProvider"
