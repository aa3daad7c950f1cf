"""A patatt-signed series from a keyring identity, polled from FakePatchwork as Patchwork renders it (the
signature trailer dropped: the attestation breaks), gets the hardware tier and its own plan through the
originals a public-inbox archive on 127.0.0.1 keeps; without the archive the same series waits."""

from __future__ import annotations

from pathlib import Path

import patatt
from sqlalchemy import select

from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.intake.mailing_list import poll_patchwork
from bot.store.models import Job, Pipeline
from tests.bot.forges.mail.test_identity import Archive, Ed25519, as_mboxrd, attest, ed25519_key, patchwork_served
from tests.bot.forges.patchwork.conftest import PROJECT
from tests.bot.test_mailing_list import MAINTAINER, mbox, patch
from tests.fakes.patchwork_api import FakePatchwork
from workers.app import configure

TRAILER = b"-- \n2.40.0\n"


def runtime_for(pw: FakePatchwork, tmp_path: Path, key: Ed25519, archive_url: str | None) -> Runtime:
    keyring = tmp_path / "keyring"
    path = keyring / patatt.make_pkey_path("ed25519", MAINTAINER, "default")
    path.parent.mkdir(parents=True)
    path.write_text(key.public + "\n")
    (tmp_path / "token").write_text(pw.add_token("labgate-bot"))
    mail = {"keyring": str(keyring), "public_inbox_url": archive_url}
    tree = {"name": "t", "url": "https://git.example.org/t.git", "mail": mail}
    return open_runtime(Config.model_validate({
        "data_dir": str(tmp_path / "data"), "trees": [tree],
        "patchwork": {"url": pw.base_url, "token_file": str(tmp_path / "token"),
                      "projects": [{"project": PROJECT, "tree": "t"}]}}))  # fmt: skip


def signed_series(pw: FakePatchwork, archive: Archive, key: Ed25519) -> int:
    originals = [attest(patch(i, MAINTAINER) + TRAILER, key) for i in (1, 2)]
    for index, original in enumerate(originals, 1):
        archive.pages[f"/list/20221025-foo-v1-{index}@kernel.example.org/raw"] = (200, as_mboxrd(original))
    served = mbox(*(patchwork_served(original) for original in originals))
    return pw.add_series(PROJECT, "foo: two parts", ["foo: part 1", "foo: part 2"], cover=False, mbox=served)


def started(runtime: Runtime) -> list[tuple[str, str]]:
    """(tier, where the plan comes from) of each pipeline started."""
    with runtime.store.session() as session:
        rows = session.execute(select(Pipeline.tier, Job.spec).join(Job).where(Job.kind == "checkout")).all()
    return [(tier, spec["plan_from"]) for tier, spec in rows]


def test_a_patatt_signed_series_from_a_keyring_identity_gets_hardware_and_its_own_plan(
    pw: FakePatchwork, archive: Archive, tmp_path: Path, redis_db_url: str
) -> None:
    configure(redis_db_url, longest_job_s=60)
    key = ed25519_key()
    runtime = runtime_for(pw, tmp_path, key, archive.url)
    series_id = signed_series(pw, archive, key)
    poll_patchwork(runtime)
    assert started(runtime) == [("hardware", "head")]
    for patch_id in pw.series_patches(series_id):
        assert [c for c in pw.checks(patch_id) if c["context"] == "labgate"] == []  # nothing to approve


def test_the_same_series_without_the_archive_waits(
    pw: FakePatchwork, archive: Archive, tmp_path: Path, redis_db_url: str
) -> None:
    configure(redis_db_url, longest_job_s=60)
    key = ed25519_key()
    runtime = runtime_for(pw, tmp_path, key, None)
    series_id = signed_series(pw, archive, key)
    poll_patchwork(runtime)
    assert started(runtime) == [] and archive.asked == []
    for patch_id in pw.series_patches(series_id):
        (said,) = [c for c in pw.checks(patch_id) if c["context"] == "labgate"]
        assert said["state"] == "pending"
