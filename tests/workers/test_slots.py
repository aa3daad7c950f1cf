"""Job slots: one uid per concurrent job, held by a lock, cleaned of leftovers before reuse."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from workers.errors import ConfigError, InfraError
from workers.slots import UidRange, hold_slot, processes_of


def test_uid_ranges_parse_and_refuse_nonsense() -> None:
    assert UidRange.parse("64100:8", "x") == UidRange(64100, 8)
    for bad in ("64100", "0:8", "64100:0", "a:b"):
        with pytest.raises(ConfigError):
            UidRange.parse(bad, "sandbox.build_uids")


def test_concurrent_holders_get_different_slots(tmp_path: Path) -> None:
    uids = UidRange(64196, 2)
    with hold_slot("t", uids, lock_dir=tmp_path) as first, hold_slot("t", uids, lock_dir=tmp_path) as second:
        assert first.index != second.index and first.name != second.name
        with pytest.raises(InfraError, match="no free t slot"), hold_slot("t", uids, lock_dir=tmp_path, wait_s=0.3):
            pass


@pytest.mark.needs("root", "switching uid needs root (the worker's case in CI)")
def test_a_leftover_process_of_the_slot_uid_is_killed_before_reuse(tmp_path: Path) -> None:
    uid = 64199
    stray = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while not processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_of(uid)
        with hold_slot("t", UidRange(uid, 1), lock_dir=tmp_path) as slot:
            assert slot.uid == uid and processes_of(uid) == []
        assert stray.wait(timeout=5) == -9
    finally:
        if stray.poll() is None:
            stray.kill()


def test_slot_locks_are_the_hosts_so_two_instances_never_share_a_uid() -> None:
    """Two labgate instances with data dirs of their own still take different uids (uids are the host's)."""
    uids = UidRange(64190, 2)
    with hold_slot("build", uids) as first, hold_slot("build", uids) as second:
        assert first.uid != second.uid or first.uid is None and first.index != second.index
        assert first.name != second.name


def test_the_delivery_counter_names_the_jobs_token() -> None:
    from workers.app import delivery_key

    assert delivery_key("build", 7, "a") != delivery_key("build", 7, "b")
    assert delivery_key("build", 7, "a").startswith("labgate:deliveries:build:7:")
