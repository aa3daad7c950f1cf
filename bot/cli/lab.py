"""`labgate lab status|offline|online`: the places of the config's board classes, as their coordinators see them.

Offline is labgrid's own state, not labgate's: the place is locked by `<host>/labgate-offline`
and its comment says why (lab/places.py), so labgrid-client users see it too, and a place an
operator took out stays out whichever labgate instance or worker looks.
"""

from __future__ import annotations

import argparse
import sys

from bot.host.config import Config, DeviceClass
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
    return [status, offline, online]


def run_lab(config: Config, args: argparse.Namespace) -> int:
    from lab.errors import LabSetupError
    from lab.places import Coordinator, bring_online, take_offline, worker_identity

    boards = [dc for dc in config.device_classes if dc.labgrid is not None]
    if not boards:
        raise ConfigError("no device class has `lab: labgrid`; there are no places to look at")
    try:
        if args.lab_command == "status":
            for line in _status_lines(boards):
                print(line)
            return 0
        address = _coordinator_of(boards, args.place)
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


def _status_lines(boards: list[DeviceClass]) -> list[str]:
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
    return lines


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
