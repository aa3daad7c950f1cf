"""`labgate lab status|offline|online|health`: the places of the config's board classes, as their coordinators
see them and as labgate's results do.

Offline is labgrid's own state, not labgate's: the place is locked by `<host>/labgate-offline`
and its comment says why (lab/places.py), so labgrid-client users see it too, and a place an
operator took out stays out whichever labgate instance or worker looks. The store adds what results
said (bot/pipelines/place_health.py): consecutive infrastructure failures, the reason labgate took a
place out, and its last health check. `health` queues a health check of a place now.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from bot.host.config import Config, DeviceClass
from bot.store.models import PlaceHealth
from workers.errors import ConfigError, UserError


def add_lab_parser(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    """`labgate lab` and its commands; returns the commands' parsers (each takes --config)."""
    lab = sub.add_parser("lab", help="see the board places, take one offline or bring it back")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    status = lab_sub.add_parser("status", help="every place of every board class: free, locked by whom, or offline")
    offline = lab_sub.add_parser("offline", help="take a place out of service (it must be idle)")
    offline.add_argument("place")
    offline.add_argument("--why", required=True, help="kept in the place's comment, shown by status and to waiters")
    online = lab_sub.add_parser("online", help="put an offline place back in service")
    online.add_argument("place")
    health = lab_sub.add_parser("health", help="queue a health check of a place now (a pass brings it back)")
    health.add_argument("place")
    health.add_argument("--class", dest="device_class", help="the device class to check it as (when several "
                        "board classes take the place)")  # fmt: skip
    return [status, offline, online, health]


def run_lab(config: Config, args: argparse.Namespace) -> int:
    from lab.errors import LabSetupError
    from lab.places import Coordinator, bring_online, take_offline, worker_identity

    boards = [dc for dc in config.device_classes if dc.labgrid is not None]
    if not boards:
        raise ConfigError("no device class has `lab: labgrid`; there are no places to look at")
    try:
        if args.lab_command == "status":
            for line in _status_lines(boards, _store_health(config)):
                print(line)
            return 0
        address = _coordinator_of(boards, args.place)
        if args.lab_command == "health":
            return _queue_health_check(config, args, _classes_of_place(boards, address, args.place))
        if args.lab_command == "offline":
            take_offline(address, args.place, args.why)
            print(f"{args.place}: offline ({args.why})")
        else:
            coordinator = Coordinator(address, worker_identity())
            try:
                bring_online(coordinator, args.place)
            finally:
                coordinator.close()
            print(f"{args.place}: online")
        return 0
    except LabSetupError as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return 1


def _status_lines(boards: list[DeviceClass], health: dict[tuple[str, str], PlaceHealth]) -> list[str]:
    from lab.places import Coordinator, worker_identity

    lines = []
    for address in sorted({dc.labgrid.coordinator for dc in boards if dc.labgrid is not None}):
        coordinator = Coordinator(address, worker_identity())
        try:
            places = coordinator.places()
        finally:
            coordinator.close()
        lines.append(f"coordinator {address}")
        for place in places.values():
            classes = [dc.name for dc in boards if dc.labgrid is not None and dc.labgrid.coordinator == address
                       and dc.labgrid.place_tags.items() <= place.tags.items()]  # fmt: skip
            if place.offline_reason is not None:
                state = f"offline: {place.offline_reason}"
            elif place.acquired:
                state = f"locked by {place.acquired}"
            elif place.reservation:
                state = "reserved"
            else:
                state = "free"
            lines.append(f"  {place.name:<24} {state:<40} classes: {', '.join(classes) or '-'}")
            lines += [f"    {name}: {_health_words(health[name, place.name])}" for name in classes
                      if (name, place.name) in health]  # fmt: skip
    return lines


def _health_words(row: PlaceHealth) -> str:
    """What labgate's results say of one place: `2 consecutive failures (last: ...); last health check ...`."""
    words = [f"{row.consecutive_failures} consecutive infrastructure failures"
             + (f" (last: {row.last_fault})" if row.consecutive_failures and row.last_fault else "")]  # fmt: skip
    if row.offline:
        words.append(f"offline by labgate: {row.offline_reason}")
    if row.last_check_result:
        words.append(f"last health check {row.last_check_result} at {_when(row.last_check_at)}")
    if row.check_job_id is not None and row.last_check_result is None:
        words.append(f"health check queued (job {row.check_job_id})")
    if row.recheck_at is not None:
        words.append(f"next health check at {_when(row.recheck_at)}")
    return "; ".join(words)


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "?"


def _store_health(config: Config) -> dict[tuple[str, str], PlaceHealth]:
    """The store's place rows; none when this config has no store yet (status never makes one)."""
    from bot.host.stores import open_runtime
    from bot.pipelines.place_health import places
    from bot.store.db import database_url_for

    url = database_url_for(config.database_url, config.resolved_data_dir())
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}
    runtime = open_runtime(config, database_url=url)
    try:
        with runtime.store.session() as session:
            return places(session)
    finally:
        runtime.store.engine.dispose()


def _classes_of_place(boards: list[DeviceClass], address: str, place: str) -> list[str]:
    from lab.places import Coordinator, worker_identity

    coordinator = Coordinator(address, worker_identity())
    try:
        tags = coordinator.places()[place].tags
    finally:
        coordinator.close()
    return [dc.name for dc in boards if dc.labgrid is not None and dc.labgrid.coordinator == address
            and dc.labgrid.place_tags.items() <= tags.items()]  # fmt: skip


def _queue_health_check(config: Config, args: argparse.Namespace, classes: list[str]) -> int:
    from bot.cli.steer import operator_name
    from bot.host.bring_up import open_services
    from bot.pipelines.place_health import request_check

    if args.device_class is not None and args.device_class not in classes:
        raise UserError(f"{args.place} is not a place of device class {args.device_class!r} "
                        f"(its classes: {', '.join(classes) or 'none'})")  # fmt: skip
    if args.device_class is None and len(classes) != 1:
        raise UserError(f"{args.place} is a place of {', '.join(classes) or 'no board class'}: "
                        "say which with --class")  # fmt: skip
    device_class = args.device_class or classes[0]
    services = open_services(config, args.config)
    try:
        job_id, new = request_check(services.runtime, device_class, args.place,
                                    f"asked for by {operator_name()} (labgate lab health)")  # fmt: skip
    finally:
        services.stop()
    if new:
        print(f"{args.place}: health check queued as {device_class} (job {job_id})")
    else:
        print(f"{args.place}: a health check is already queued or running (job {job_id})")
    return 0


def _coordinator_of(boards: list[DeviceClass], place: str) -> str:
    """The coordinator that has this place (the config's board classes may name several)."""
    from lab.places import Coordinator, worker_identity

    for address in sorted({dc.labgrid.coordinator for dc in boards if dc.labgrid is not None}):
        coordinator = Coordinator(address, worker_identity())
        try:
            if place in coordinator.places():
                return address
        finally:
            coordinator.close()
    raise UserError(f"no coordinator of the config's board classes has a place named {place!r}")
