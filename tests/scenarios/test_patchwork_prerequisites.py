"""The mailing-list route with b4 prerequisites, series to checks: FakePatchwork serving our lcm v2 sample and
the gcd v3 series it names, real workers, git and QEMU (the world of test_patchwork_scenarios.py)."""

from __future__ import annotations

from bot.store.models import Pipeline
from tests.bot.forges.patchwork.test_prerequisites import GCD_CHANGE_ID, gcd_series, lcm_v2_on_gcd
from tests.scenarios.running import git
from tests.scenarios.test_patchwork_scenarios import PIPELINE_CONTEXTS, PROJECT, SAMPLE_CHANGE_ID, World
from tests.scenarios.test_patchwork_scenarios import world as world  # the fixture, one world for this module


def test_a_series_runs_with_its_recorded_prerequisite_series_applied_first(world: World) -> None:
    """lcm v2 names gcd v3 (b4's prerequisite-change-id and the real patch-id of its patch); gcd v3 is on
    Patchwork too: the run applies gcd's patch, then lcm's two, and passes."""
    gcd = world.pw.add_series(PROJECT, "mathx: gcd of negative numbers", ["mathx: document the sign of gcd"],
                              version=3, mbox=gcd_series(world.base_sha))  # fmt: skip
    lcm = world.send(lcm_v2_on_gcd(world.base_sha).replace(SAMPLE_CHANGE_ID.encode(), b"20260302-pre-lcm"), 2)
    world.poll()
    for patch_id in world.pw.series_patches(lcm):
        said = world.latest(patch_id)["labgate-prerequisites"]
        assert (said["state"], said["description"]) == ("success", f"applied first: change-id {GCD_CHANGE_ID}:v3 "
                                                                   f"(series {gcd} v3)")  # fmt: skip
    assert world.approve(lcm, 2) == 0
    shown = world.wait_final(lcm)
    assert {shown[p][c]["state"] for p in shown for c in PIPELINE_CONTEXTS} == {"success"}, shown
    with world.services.runtime.store.session() as session:
        (pipeline,) = [p for p in session.query(Pipeline) if p.revision.change.number == lcm]
        base, head = pipeline.revision.base_sha, pipeline.revision.head_sha
        assert [p["name"] for p in pipeline.revision.patches] == [f"prerequisite series {gcd} v3 0001.patch",
                                                                  "0001.patch", "0002.patch"]  # fmt: skip
    mirror = next(world.config_path.parent.rglob("mirrors/hello.git"))
    assert git(mirror, "log", "--format=%s", f"{base}..{head}").split("\n") == [
        "README: list the mathx helpers", "mathx: add mathx_lcm()", "mathx: document the sign of gcd"]
    assert git(mirror, "show", f"{head}:GCD.md") == "mathx_gcd() of negative numbers is never negative."
