"""One series labgate cannot read must not stop the project: every series after it is still handled."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.forges.patchwork.desk import SOURCE
from bot.intake.mailing_list import poll_patchwork
from bot.store.models import Change, Delivery
from tests.bot.forges.patchwork.conftest import PROJECT, open_patchwork_runtime
from tests.fakes.patchwork_api import FakePatchwork

MBOX = Path(__file__).parents[3] / "samples" / "mbox" / "b4-mathx-lcm-v1.mbox"


def nested_parts(depth: int) -> bytes:
    """A patch mail whose MIME parts nest `depth` deep: Python's email parser recurses once a level."""
    head = ("From: Eve <eve@example.org>\nTo: list@example.org\nSubject: [PATCH] mathx: deep\n"
            "Message-Id: <deep@example.org>\nDate: Mon, 7 Dec 2026 10:00:00 +0000\nMIME-Version: 1.0\n")  # fmt: skip
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth))
    closing = "".join(f"\n--b{i}--\n" for i in reversed(range(depth)))
    body = f"{opening}Content-Type: text/plain\n\nx\n{closing}"
    return f"From eve@example.org Mon Dec  7 10:00:00 2026\n{head}{body}".encode()


def test_attack_a_series_nested_past_the_parsers_limit_ends_with_a_reason_and_the_next_series_runs(
    pw: FakePatchwork, tmp_path: Path, redis_db_url: str
) -> None:
    runtime = open_patchwork_runtime(pw, tmp_path, {PROJECT: "hello"}, redis_db_url)
    pw.add_series(PROJECT, "mathx: deep", ["mathx: deep"], cover=False, mbox=nested_parts(5000))
    later = pw.add_series(PROJECT, "mathx: add an lcm helper", ["mathx: add mathx_lcm()", "README: list"],
                          mbox=MBOX.read_bytes())  # fmt: skip
    poll_patchwork(runtime)
    with runtime.store.session() as session:
        deliveries = session.execute(select(Delivery.status, Delivery.detail).where(Delivery.source == SOURCE)
                                     .order_by(Delivery.id)).all()  # fmt: skip
        changes = session.scalars(select(Change.external_id).where(Change.source == SOURCE)).all()
    assert [status for status, _ in deliveries] == ["handled", "handled"]
    assert "not handled" in deliveries[0][1] and "nests its MIME parts too deeply" in deliveries[0][1]
    assert changes == [f"{PROJECT}#{later}"]
    poll_patchwork(runtime)  # and the next poll does not stop on it either
    with runtime.store.session() as session:
        accepted = select(Delivery.id).where(Delivery.source == SOURCE, Delivery.status == "accepted")
        assert session.scalar(accepted) is None
