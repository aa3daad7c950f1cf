"""Boot on a board through labgrid: a place of a coordinator, driven only by labgrid drivers.

The code path a real board takes: reserve a place by tags and lock it (lab/places.py), render
the device class's environment for that place (a RemotePlace plus drivers), then power off,
stage the kernel and initramfs with the place's provider driver (ssh to the exporter host, as
labgrid's ManagedFile does), power on, read the console and the DUT runner's port through
SerialDriver, power off, and release whatever happened. No QEMUDriver and no subprocess of
ours: on the stand-in board (workers/standin/) the QEMU belongs to the PDU.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attr
import jinja2
from labgrid import Environment, Target
from labgrid.driver import NetworkPowerDriver
from labgrid.resource.common import ResourceManager
from labgrid.resource.remote import RemotePlace, RemotePlaceManager
from labgrid.util.ssh import sshmanager
from pexpect import TIMEOUT
from serial import SerialException

from lab.caps import CAP_ENDINGS, BootCaps, Ended, Port, PortsReading, cap_message
from lab.errors import LabSetupError
from lab.places import Coordinator, HeldPlace, Identity, holding_place, offline_identity, worker_identity
from lab.runner import BootOutcome, boot_caps

log = logging.getLogger(__name__)

SSH_CONFIG_ENV = "LABGATE_LAB_SSH_CONFIG"  # ssh config for staging to exporter hosts (holds the worker's key)
KERNEL_NAME = "vmlinuz"  # the names images are staged under: the board's boot configuration names them
INITRAMFS_NAME = "initramfs.cpio.gz"
_STAGING_DRIVERS = ("TFTPProviderDriver", "HTTPProviderDriver")
_READ_SLICE_S = 0.02  # each port is read in turn for at most this long
_CHUNK = 65536


@dataclass(frozen=True)
class BoardRequest:
    coordinator: str
    place_tags: dict[str, str]
    environment: str  # the class's labgrid environment template (Jinja2; `place` is set)
    kernel: Path
    initramfs: Path
    work_dir: Path
    timeout_s: float  # from power-on to the runner's end marker
    boot_timeout_s: float | None = None  # power-on to the runner's first byte; None: only timeout_s
    silence_timeout_s: float | None = None  # no byte on either UART; None: only timeout_s
    # The DUT may use a network (the class allows it, the tree grants it): labgate only carries the grant;
    # what a board wires for it (a switch port, a VLAN) is its own environment's business.
    network: bool = False
    place_wait_s: float = 600.0  # how long a job waits for a place before it is incomplete
    max_console_bytes: int = 16 * 1024 * 1024
    max_runner_bytes: int = 16 * 1024 * 1024
    identity: Identity | None = None  # the labgrid user to lock as; default: this host's lab worker
    avoid_places: tuple[str, ...] = ()  # places this job failed on through their fault: another, if one can
    health_check_place: str | None = None  # boot on exactly this place, held offline (lab/places.hold_offline)
    offline_why: str = "health check"  # the offline comment when a health check takes its place offline


class PlaceFault(LabSetupError):
    """A held place's own drivers failed (power, staging, console): the board's fault, never the change's."""

    def __init__(self, held: HeldPlace, step: str, cause: str) -> None:
        super().__init__(f"place {held.name}: {step} failed: {cause}")
        self.held = held  # the place, and how long and for whom the job waited for it
        self.step = step


@dataclass(frozen=True)
class BoardOutcome:
    boot: BootOutcome
    place: str
    waited_s: float
    waited_for: str  # who held the places while the job waited ("" when one was free)
    avoided: str = ""  # how the places to avoid were kept from the job, or why they were not


def run_board_boot(req: BoardRequest, on_waiting: Callable[[str], None] | None = None) -> BoardOutcome:
    """Hold a place for one boot and return what its ports said; the place is always released.

    PlaceUnavailable when no place was granted within place_wait_s; PlaceFault when the held
    place's drivers fail (power, staging, console): the board's fault, never the change's.
    A health check (req.health_check_place) holds its place offline instead, as the offline user,
    and leaves it so: lab/places.end_health_check decides from the verdict whether it comes back.
    """
    for what, path in (("kernel", req.kernel), ("initramfs", req.initramfs)):
        if not Path(path).is_file():
            raise LabSetupError(f"{what} {path} is not a file; build or fetch it first")
    work_dir = Path(req.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    if req.health_check_place is not None:
        coordinator = Coordinator(req.coordinator, offline_identity())
        try:
            held = coordinator.hold_offline(req.health_check_place, req.offline_why, req.place_wait_s, on_waiting)
            boot = _boot_on(coordinator, held, req, work_dir)
        finally:
            coordinator.close()
        return BoardOutcome(boot=boot, place=held.name, waited_s=held.waited_s, waited_for=held.waited_for)
    coordinator = Coordinator(req.coordinator, req.identity or worker_identity())
    try:
        with holding_place(coordinator, req.place_tags, req.place_wait_s, on_waiting, req.avoid_places) as held:
            boot = _boot_on(coordinator, held, req, work_dir)
    finally:
        coordinator.close()
    return BoardOutcome(boot=boot, place=held.name, waited_s=held.waited_s, waited_for=held.waited_for,
                        avoided=held.avoided)  # fmt: skip


def sweep_stale_locks(address: str, identity: Identity | None = None) -> list[str]:
    """At a lab worker's start: power off and release every place still locked as this worker's labgrid user.

    Locks outlive a killed worker (only reservations expire), so what its predecessor held stays
    held until this runs. Each place is powered off with its own power port (a RemotePlace target
    and NetworkPowerDriver, as `labgrid-client power off` does), then released: cancel, then unlock.
    Returns the places released. Locks of other users, and offline places, are not touched.
    """
    coordinator = Coordinator(address, identity or worker_identity())
    released = []
    try:
        for place in coordinator.places().values():
            if place.acquired != coordinator.identity.name:
                continue
            try:
                _power_off_place(coordinator, place.name)
            except Exception:  # the lock still goes: a place that cannot be powered off is the operator's to see
                log.warning("place %s: power off failed during the sweep", place.name, exc_info=True)
            if place.reservation:
                coordinator.cancel(place.reservation)
            coordinator.unlock(place.name, holder=coordinator.identity.name)
            released.append(place.name)
            log.info("place %s: stale lock of %s released", place.name, coordinator.identity.name)
    finally:
        coordinator.close()
    return released


def _power_off_place(coordinator: Coordinator, place: str) -> None:
    _use_session(coordinator)
    target = Target(place)
    try:
        RemotePlace(target, name=place)
        power = NetworkPowerDriver(target, name=None)
        target.activate(power)
        power.off()
    finally:
        _cleanup(target)


def render_board_env(template: str, place: str, network: bool = False) -> str:
    """The class's environment for one place; values through `yaml` (JSON strings are YAML scalars).
    `network` is the job's grant: a template that can wire a DUT's network (a switch port, a VLAN) uses
    it; one that cannot ignores it, and its DUT stays off the network."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["yaml"] = json.dumps
    return env.from_string(template).render(place=place, network=network)


def use_ssh_config(config: Path, bin_dir: Path) -> None:
    """Make labgrid's ssh and rsync use this ssh config (host alias, port, user, the worker's key).

    labgrid runs `ssh HOST` from PATH and reads nothing but the user's ~/.ssh/config; a lab
    worker keeps its staging key in its own config, so an `ssh` first on PATH adds `-F`.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "ssh"
    system_ssh = shutil.which("ssh", path=os.defpath + ":/usr/bin") or "/usr/bin/ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {system_ssh} -F "{config}" "$@"\n')
    wrapper.chmod(0o755)
    path = os.environ.get("PATH", os.defpath).split(":")
    if str(bin_dir) not in path:
        os.environ["PATH"] = ":".join([str(bin_dir), *path])


def _boot_on(coordinator: Coordinator, held: HeldPlace, req: BoardRequest, work_dir: Path) -> BootOutcome:
    started = time.monotonic()
    ssh_config = os.environ.get(SSH_CONFIG_ENV)
    if ssh_config:
        use_ssh_config(Path(ssh_config), work_dir.parent / "ssh-bin")
    env_file = work_dir / "board-env.yaml"
    env_file.write_text(render_board_env(req.environment, held.name, req.network))
    try:  # the class's template, not the place: a broken one must not take every place offline
        environment = Environment(str(env_file))
    except Exception as exc:
        raise LabSetupError(f"the device class's labgrid environment: {type(exc).__name__}: {exc}") from exc
    _use_session(coordinator)
    target: Any = None
    power: Any = None
    step = "the place's resources"
    try:
        target = environment.get_target("main")
        step = "power off"
        power = target.get_driver("PowerProtocol")
        power.off()  # every job starts from power-off, whatever the last one left
        step = "image staging"
        _stage(target, req, work_dir)
        setup_s = time.monotonic() - started
        step = "power on"
        power.on()
        on_at = time.monotonic()
        step = "console"
        console = target.get_driver("ConsoleProtocol", name="console")
        runner = target.get_driver("ConsoleProtocol", name="runner")
        raw, runner_raw, ended = read_board_ports(console, runner, boot_caps(req), on_at)
        boot_s = time.monotonic() - on_at
        step = "power off"
        power.off()
        power = None
    except PlaceFault:
        raise
    except Exception as exc:  # the drivers' own errors (HTTP 500 from a PDU, a refused UART, ssh/rsync failing)
        raise PlaceFault(held, step, f"{type(exc).__name__}: {exc}") from exc
    finally:
        if power is not None:
            with contextlib.suppress(Exception):
                power.off()
        _cleanup(target)
    console_text = raw.decode("utf-8", errors="replace").replace("\r", "")
    note = {"qemu-exit": f"# labgate: the board's console hung up before the end marker ({held.name})"}.get(ended)
    if ended in CAP_ENDINGS:
        note = f"# labgate: {cap_message(ended, boot_caps(req), boot_s)}; the board was powered off"
    if note:
        console_text += ("" if console_text.endswith("\n") or not console_text else "\n") + note + "\n"
    runner_text = runner_raw.decode("utf-8", errors="replace").replace("\r", "")
    (work_dir / "console.log").write_text(console_text, encoding="utf-8")
    (work_dir / "runner.log").write_text(runner_text, encoding="utf-8")
    return BootOutcome(console=console_text, runner=runner_text, ended=ended, boot_s=boot_s,
                       qemu_status=None, setup_s=setup_s)  # fmt: skip


def _stage(target: Any, req: BoardRequest, work_dir: Path) -> None:
    """Stage the images under the names the board boots, with the place's provider driver."""
    staging = None
    for name in _STAGING_DRIVERS:
        with contextlib.suppress(Exception):
            staging = target.get_driver(name)
            break
    if staging is None:
        raise LabSetupError(f"the environment has no staging driver ({', '.join(_STAGING_DRIVERS)})")
    images = work_dir / "board-images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for source, name in ((req.kernel, KERNEL_NAME), (req.initramfs, INITRAMFS_NAME)):
        shutil.copyfile(source, images / name)
        (images / name).chmod(0o644)
        staging.stage(str(images / name))


def read_board_ports(console: Any, runner: Any, caps: BootCaps, on_at: float) -> tuple[bytes, bytes, Ended]:
    """Read both UARTs (labgrid ConsoleProtocol drivers) until the runner's end marker, a cap, or hang-up."""
    reading = PortsReading(caps, on_at)
    ports: dict[Port, Any] = {"console": console, "runner": runner}
    while True:
        ended = reading.due(time.monotonic())
        if ended is not None:
            return reading.result(ended)
        if not ports:
            return reading.result("qemu-exit")
        for name, port in list(ports.items()):
            try:
                chunk = port.read(size=_CHUNK, max_size=_CHUNK, timeout=_READ_SLICE_S)  # what came within the slice
            except TIMEOUT:
                continue
            except (SerialException, OSError):  # the far end hung up: the board is off or gone
                del ports[name]
                continue
            ended = reading.take(name, chunk, time.monotonic())
            if ended is not None:
                return reading.result(ended)


class _PromptRemotePlaceManager(RemotePlaceManager):  # type: ignore[misc]
    """labgrid's RemotePlace manager, but a poll runs what the session's loop has ready instead of
    running it for 0.1 s: a driver's activation polls every resource of the place twice, 1 s per
    driver for the stand-in's five resources, 4 s of every job. The place's resources were synced
    when it was locked and do not change while we hold it."""

    def poll(self) -> None:
        if not self.loop.is_running():
            self.loop.run_until_complete(asyncio.sleep(0))
        for resource in self.resources + self.unmanaged_resources:
            if isinstance(resource, RemotePlace):
                continue
            fields = attr.fields(resource.__class__)
            for key, value in {**resource._remote_entry.args, "avail": resource._remote_entry.avail}.items():
                converter = getattr(fields, key).converter
                setattr(resource, key, converter(value) if converter else value)


def _use_session(coordinator: Coordinator) -> None:
    """labgrid's RemotePlace resolves through one manager per process: a fresh one per job, on our session."""
    manager = _PromptRemotePlaceManager()
    manager.session, manager.loop = coordinator.session, coordinator.loop
    ResourceManager.instances[RemotePlaceManager] = manager


def _cleanup(target: Any) -> None:
    if target is not None:
        try:
            target.cleanup()
        except Exception:
            log.warning("labgrid target cleanup failed", exc_info=True)
        atexit.unregister(target._atexit_cleanup)  # a long-lived worker would pile them up
    ResourceManager.instances.pop(RemotePlaceManager, None)
    sshmanager.close_all()  # no ssh master outlives the job
