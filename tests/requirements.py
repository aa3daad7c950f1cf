"""What a test needs from the host, and what happens when it is missing: a skip here, a failure under CI=true.

A developer's laptop may lack QEMU or root, and the tests that need them say so and skip. CI has
everything (scripts/setup.sh installs it), so there a missing piece is a broken machine, not a reason
to report green: with `CI=true` in the environment every such skip becomes a failure naming what is
missing and how to get it. Decided when the test runs, never at import, so collection never breaks.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

SETUP = "scripts/setup.sh (as root) installs it"


@dataclass(frozen=True)
class HostRequirement:
    """Something the host must have: how to tell, what to call it, how to get it."""

    what: str
    present: Callable[[], bool]
    install: str


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# Every name a test may `need`; a name not here is a typo, and fails at once (see need()).
HOST: dict[str, HostRequirement] = {
    "qemu": HostRequirement(
        "qemu-system-x86_64", lambda: shutil.which("qemu-system-x86_64") is not None,
        f"apt-get install qemu-system-x86; {SETUP}",
    ),
    "busybox": HostRequirement(
        # The static one: it runs inside the DUT's initramfs, where there is no libc.
        "a static busybox at /bin/busybox", lambda: Path("/bin/busybox").is_file(),
        f"apt-get install busybox-static; {SETUP}",
    ),
    "root": HostRequirement(
        "root (uid 0)", lambda: os.geteuid() == 0,
        "run the tests as root, as CI does (the worker is root: uids, cgroups, loop mounts need it)",
    ),
    "sandbox-users": HostRequirement(
        "the sandbox users (labgate-qemu7 among them)", lambda: _user_exists("labgate-qemu7"),
        "run scripts/setup.sh as root: it creates the labgate-build* and labgate-qemu* users",
    ),
}


def in_ci() -> bool:
    """True where the CI machine runs the suite: `CI=true` (what CI services set), or 1/yes."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(message: str) -> NoReturn:
    """Skip the calling test with `message`; under CI=true fail it instead: CI must have everything."""
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    # Reported at the test, as a skipif marker's skip is, rather than at this line.
    raise pytest.skip.Exception(message, _use_item_location=True)


def need(name: str, reason: str) -> None:
    """Go on only if the host has `name` (a key of HOST); else skip, or fail under CI=true.

    `reason` says why the test needs it, so that the message tells a reader what was not tested.
    """
    requirement = HOST.get(name)
    if requirement is None:
        raise KeyError(f"unknown host requirement {name!r}; known: {', '.join(sorted(HOST))}")
    if not requirement.present():
        missing(f"{requirement.what} is missing ({reason}); to install: {requirement.install}")
