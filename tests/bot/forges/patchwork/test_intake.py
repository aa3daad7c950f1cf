"""Series intake against FakePatchwork and a real store, without workers: a series that waits says so once on
every patch, across a failed check POST, a crash before the event is marked handled, and a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.forges.patchwork.client import PatchworkClient, PatchworkError
from bot.forges.patchwork.desk import SOURCE, load_series
from bot.forges.patchwork.poller import PatchworkEvent, PatchworkPoller
from bot.host.stores import Runtime
from bot.intake.mailing_list import poll_patchwork, series_intake
from bot.store.models import Change, Delivery, PatchworkSeenEvent, Pipeline
from tests.bot.forges.patchwork.conftest import PROJECT, open_patchwork_runtime
from tests.fakes.patchwork_api import FakePatchwork

MBOX = Path(__file__).parents[3] / "samples" / "mbox" / "b4-mathx-lcm-v1.mbox"


@pytest.fixture
def runtime(pw: FakePatchwork, tmp_path: Path, redis_db_url: str) -> Runtime:
    return open_patchwork_runtime(pw, tmp_path, {PROJECT: "hello"}, redis_db_url)


def send(pw: FakePatchwork) -> int:
    return pw.add_series(PROJECT, "mathx: add an lcm helper", ["mathx: add mathx_lcm()", "README: list"],
                         mbox=MBOX.read_bytes())  # fmt: skip


def waiting_checks(pw: FakePatchwork, patch_id: int) -> list[str]:
    return [c["description"] for c in pw.checks(patch_id) if c["context"] == "labgate"]


def test_a_waiting_series_says_so_once_on_every_patch_across_a_failed_post_and_a_restart(
    pw: FakePatchwork, runtime: Runtime
) -> None:
    series_id = send(pw)
    first, second = pw.series_patches(series_id)
    pw.fail_next("POST", rf"/api/[0-9.]*/?patches/{second}/checks/", 503)
    with pytest.raises(PatchworkError):  # transient: the task's retry comes back to it
        poll_patchwork(runtime)
    with runtime.store.session() as session:
        status = session.scalar(select(Delivery.status).where(Delivery.source == SOURCE))
    assert status == "accepted"  # seen by the poller, not yet carried out
    poll_patchwork(runtime)
    poll_patchwork(runtime)  # a restart: the same window read again
    expected = f"waiting for approval: labgate approve {series_id} --version 1"
    assert waiting_checks(pw, second) == [expected]
    # Patch 1's check went out before patch 2's failed; the retry posted it again (Patchwork takes no
    # idempotency key, and a repeat of the same state and context shows nothing new).
    assert set(waiting_checks(pw, first)) == {expected} and len(waiting_checks(pw, first)) <= 2
    with runtime.store.session() as session:
        assert session.scalars(select(Change.external_id).where(Change.source == SOURCE)).all() == [
            f"{PROJECT}#{series_id}"
        ]
        assert session.scalars(select(Pipeline.id)).all() == []
        statuses = session.scalars(select(Delivery.status).where(Delivery.source == SOURCE)).all()
    assert statuses == ["handled"]


def test_attack_a_series_of_another_project_is_not_taken_as_this_one(pw: FakePatchwork, runtime: Runtime) -> None:
    pw.add_project("other")
    pw.add_series("other", "foreign", ["x"], mbox=MBOX.read_bytes())
    send(pw)
    poll_patchwork(runtime)
    with runtime.store.session() as session:
        titles = session.scalars(select(Change.title).where(Change.source == SOURCE)).all()
    assert titles == ["mathx: add an lcm helper"]


def stored_blobs(runtime: Runtime) -> list[Path]:
    return [p for p in runtime.artifacts.root.rglob("*") if p.is_file()]


def test_a_batch_rolled_back_after_staging_leaves_its_mbox_unreferenced_and_a_rerun_records_once(
    pw: FakePatchwork, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    series_id = send(pw)

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the process dies before the batch commits")

    with monkeypatch.context() as patched:
        patched.setattr(PatchworkPoller, "_insert_marks", crash)
        with pytest.raises(RuntimeError, match="dies"):
            poll_patchwork(runtime)
    staged = stored_blobs(runtime)
    assert [blob.read_bytes() for blob in staged] == [MBOX.read_bytes()]  # stored before the transaction
    with runtime.store.session() as session:
        assert session.scalars(select(Delivery.delivery_id)).all() == []  # nothing refers to it
        assert session.scalars(select(PatchworkSeenEvent.id)).all() == []
    poll_patchwork(runtime)
    poll_patchwork(runtime)  # and once more: the overlap lists the event again
    mboxes = [blob for blob in stored_blobs(runtime) if blob.read_bytes() == MBOX.read_bytes()]
    assert mboxes == staged  # the same bytes, the same blob (the rest: what handling the series stored)
    with runtime.store.session() as session:
        record = load_series(session, pw.base_url.rstrip("/"), series_id)
        deliveries = session.scalars(select(Delivery.source)).all()
    assert record is not None and runtime.artifacts.path_of(record.mbox_digest) == staged[0]
    # One series record (in the once table, with the check said once), one accepted event.
    assert sorted(deliveries).count(SOURCE) == 1


def test_a_repeated_event_keeps_the_first_series_record_and_delivery(pw: FakePatchwork, runtime: Runtime) -> None:
    send(pw)
    with PatchworkClient(pw.base_url) as client:
        intake = series_intake(runtime, client)
        raw = next(e for e in pw.events() if e["category"] == "series-completed")
        event = PatchworkEvent(raw["id"], raw["category"], PROJECT, raw["date"], raw.get("actor"), raw["payload"])
        series = client.series(raw["payload"]["series"]["id"])
        for name in ("first", "second"):  # as after a crash whose rows did commit, or a second poller's
            with runtime.store.session() as session:
                intake.record_series(session, event, {**series, "name": name}, MBOX.read_bytes())
        with runtime.store.session() as session:
            record = load_series(session, intake.server, series["id"])
            accepted = session.scalars(select(Delivery.delivery_id).where(Delivery.source == SOURCE)).all()
    assert record is not None and record.name == "first" and len(accepted) == 1
