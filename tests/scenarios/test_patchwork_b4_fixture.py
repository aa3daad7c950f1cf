"""Conformance: the real b4 series in ../shared/fixtures/mbox/b4/ the whole way, on the tree it was sent
against (gitdir.bundle: text files, no plan), with a plan from labgate's config.

poll -> base from its base-commit: trailer -> git am of its four patches (never the cover letter) ->
build -> QEMU -> final checks on every patch -> one mail in the cover letter's thread. Its patatt
signatures are by a key no keyring here holds: it reads unverifiable, so it waits until approved."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store.models import Pipeline
from tests.scenarios.running import git
from tests.scenarios.test_patchwork_scenarios import PROJECT, World, running_world
from tests.shared_fixtures import shared_fixture

BASE_COMMIT = "f435c12df7c0ecf20ab8937859e63cddffacabb4"  # the series' base-commit: trailer
COVER_ID = "<20221025-test1-v1-0-e4f28f57990c@linuxfoundation.org>"
SUBJECTS = ["Remove line 2 from file2", "Add more lines to file 1", "Add some paragraphs to lipsum",
            "Minor typo changes imitation"]  # fmt: skip
# For a tree of text files: the build counts their lines, the QEMU guest checks what it was given.
PLAN = """version: 1
builds:
  - name: x86_64
    command: wc -l file1.txt file2.txt lipsum.txt > "$LABGATE_BUILD/counts.txt"
    artifacts: [counts.txt]
    timeout: 120
tests:
  - name: unit
    build: x86_64
    device: {arch: x86_64, platform: qemu}
    kernel: debian
    commands:
      - name: counted
        run: grep -q lipsum.txt ./counts.txt
    timeout: 120
"""


@pytest.fixture(scope="module")
def b4_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    bundle = shared_fixture("mbox/b4/gitdir.bundle")
    root = tmp_path_factory.mktemp("b4-fixture")
    origin = root / "origin"
    subprocess.run(["git", "clone", "-q", str(bundle), str(origin)], check=True)
    git(origin, "checkout", "-q", "-B", "main", BASE_COMMIT)
    (root / "plan.yaml").write_text(PLAN)
    with running_world(root, origin, BASE_COMMIT, tree="b4test", plan_file=root / "plan.yaml",
                       mail="{report: true}", list_id="test.example.org") as world:  # fmt: skip
        yield world


def test_the_b4_fixture_series_goes_the_whole_way_on_its_own_tree(b4_world: World) -> None:
    world = b4_world
    mbox = shared_fixture("mbox/b4/shazam-git1-just-series.mbox").read_bytes()
    series_id = world.pw.add_series(PROJECT, "This is a cover for test series 1", SUBJECTS,
                                    submitter=("Konstantin Ryabitsev", "konstantin@linuxfoundation.org"),
                                    mbox=mbox)  # fmt: skip
    world.poll()
    patches = world.pw.series_patches(series_id)
    assert len(patches) == 4
    for patch_id in patches:  # signed by a key nobody here holds: unverifiable, so it waits
        waiting = world.latest(patch_id)["labgate"]
        assert (waiting["state"], waiting["description"]) == (
            "pending", f"waiting for approval: labgate approve {series_id} --version 1")
    assert world.approve(series_id, 1) == 0
    shown = world.wait_final(series_id)
    for patch_id in patches:
        states = {context: check["state"] for context, check in shown[patch_id].items() if context != "labgate"}
        assert set(states.values()) == {"success"}, shown[patch_id]
    (pipeline_id, state, result), = world.pipelines()
    assert (state, result) == ("done", "pass")
    with world.services.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None and pipeline.revision.base_ref == BASE_COMMIT  # the trailer's base
        tested = pipeline.revision.head_sha
    assert tested is not None and tested != BASE_COMMIT  # the four patches applied on it
    world.wait(lambda: len(world.smtp.received) == 1, "the report mail")
    mail = world.smtp.received[0].message
    assert mail["In-Reply-To"] == COVER_ID and mail["To"] == "konstantin@linuxfoundation.org"
    assert mail["Subject"] == "Re: [PATCH 0/4] This is a cover for test series 1"
    assert "labgate: pass" in mail.get_content()


def test_the_fixture_bundle_is_the_tree_the_series_names(tmp_path: Path) -> None:
    """The base the scenario uses is the bundle's own newest commit, as the series' trailer says."""
    clone = tmp_path / "tree"
    subprocess.run(["git", "clone", "-q", str(shared_fixture("mbox/b4/gitdir.bundle")), str(clone)], check=True)
    assert git(clone, "rev-parse", "HEAD") == BASE_COMMIT
