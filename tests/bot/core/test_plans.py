"""In-tree plan parsing: errors name file, line and key; recipes; selection; schema in sync."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.core.caps import TestCaps
from bot.core.inventory import ClassEntry, Inventory
from bot.core.plans import (
    PlanError,
    parse_plan,
    plan_json_schema,
    render_build_script,
    select_tests,
)
from bot.core.progress import classes_for_tier, draft_jobs, exit_code_for, pipeline_result

REPO = Path(__file__).resolve().parents[3]
GOOD = """\
version: 1
builds:
  - name: x86_64
    command: make O="$LABGATE_BUILD"
    artifacts: [tests/*]
    timeout: 5000
tests:
  - name: unit
    build: x86_64
    device: {arch: x86_64, platform: qemu}
    commands:
      - {name: math, run: ./tests/test_math}
  - name: drivers
    build: x86_64
    device: {arch: arm64}
    commands: [{name: d, run: "true"}]
    paths: [drivers/]
"""


def test_example_plans_parse() -> None:
    for path in (REPO / "examples" / "hello" / ".labgate" / "plan.yaml", REPO / "examples" / "linux" / "plan.yaml"):
        plan = parse_plan(path.read_text(), str(path))
        assert plan.builds and plan.tests


def test_errors_name_file_line_and_key() -> None:
    text = GOOD.replace("build: x86_64\n    device: {arch: arm64}", "build: arm\n    device: {arch: arm64}")
    text = text.replace("    timeout: 5000\n", "    timeout: -1\n    colour: red\n")
    with pytest.raises(PlanError) as info:
        parse_plan(text, "hello/.labgate/plan.yaml")
    lines = str(info.value).splitlines()
    assert "hello/.labgate/plan.yaml:6: builds.0.timeout: Input should be greater than 0" in lines
    assert "hello/.labgate/plan.yaml:7: builds.0.colour: Extra inputs are not permitted" in lines


def test_reference_errors_point_at_the_key() -> None:
    text = GOOD.replace("build: x86_64\n    device: {arch: arm64}", "build: arm\n    device: {arch: arm64}")
    with pytest.raises(PlanError, match=r"^plan.yaml:14: tests.1.build: no build named 'arm' in the plan$"):
        parse_plan(text, "plan.yaml")


def test_missing_empty_and_broken_plans() -> None:
    with pytest.raises(PlanError, match=r"\.labgate/plan\.yaml: no plan"):
        parse_plan(None)
    with pytest.raises(PlanError, match="empty"):
        parse_plan("")
    with pytest.raises(PlanError, match=r"p.yaml:4: not valid YAML"):
        parse_plan("version: 1\nbuilds:\n  - name: [\n", "p.yaml")
    with pytest.raises(PlanError, match=r"p.yaml:1: version: Input should be less than or equal to 1"):
        parse_plan(GOOD.replace("version: 1", "version: 2"), "p.yaml")


def test_build_needs_exactly_one_recipe() -> None:
    text = GOOD.replace('    command: make O="$LABGATE_BUILD"\n', "")
    with pytest.raises(PlanError, match=r"builds.0: give exactly one of `command` or `kernel`"):
        parse_plan(text)


def test_kernel_recipe_renders_config_merge_and_build() -> None:
    text = (REPO / "examples" / "linux" / "plan.yaml").read_text()
    build = parse_plan(text).builds[0]
    script = render_build_script(build)
    assert "tinyconfig" in script and "merge_config.sh" in script and "bzImage" in script
    assert script.index("tinyconfig") < script.index("merge_config.sh") < script.index("bzImage")


def test_tests_selected_by_changed_paths() -> None:
    plan = parse_plan(GOOD)
    assert [t.name for t in select_tests(plan, ["lib/x.c"])] == ["unit"]
    assert [t.name for t in select_tests(plan, ["drivers/net/a.c"])] == ["unit", "drivers"]


def test_drafts_cap_timeouts_and_match_devices() -> None:
    plan = parse_plan(GOOD)
    inventory = Inventory([ClassEntry("qemu-x86_64", {"arch": "x86_64", "platform": "qemu"}, 512,
                                      caps=TestCaps(max_job_s=60))])  # fmt: skip
    drafts = draft_jobs(plan, head_sha="a" * 40, changed_files=["drivers/x"], inventory=inventory, tier="hardware",
                        max_build_s=1800)  # fmt: skip
    build, unit, drivers = drafts
    assert build.spec["timeout_s"] == 1800  # the lab's cap beats the plan's 5000
    assert unit.device_class == "qemu-x86_64" and unit.spec["timeout_s"] == 60
    # A plan that got past check_plan_devices against another lab still drafts: nothing can run the test.
    assert drivers.device_class is None and drivers.skip_reason == "no test ran: no device class carries arch=arm64"
    assert drivers.result == "incomplete"


def test_pipeline_result_is_the_worst_outcome() -> None:
    assert pipeline_result(["pass", "skip", "pass"]) == "pass"
    assert pipeline_result(["pass", "fail", "incomplete"]) == "fail"
    assert pipeline_result(["fail", "error"]) == "error"
    assert [exit_code_for(r) for r in ("pass", "skip", "fail", "incomplete", "error", None)] == [0, 0, 1, 2, 2, 2]


def test_schema_file_is_in_sync() -> None:
    on_disk = json.loads((REPO / "tests-intree" / "plan.schema.json").read_text())
    assert on_disk == plan_json_schema()


def test_qemu_tier_keeps_untrusted_changes_off_boards() -> None:
    qemu = ClassEntry("qemu-x86_64", {"arch": "x86_64", "platform": "qemu"}, 512, lab="qemu")
    inventory = Inventory([qemu, ClassEntry("board-x86", {"arch": "x86_64", "platform": "board"}, 2048, lab="labgrid")])
    assert classes_for_tier(inventory, "qemu") == {"qemu-x86_64"}
    assert classes_for_tier(inventory, "hardware") == {"qemu-x86_64", "board-x86"}
    plan = parse_plan(GOOD.replace("device: {arch: arm64}", "device: {platform: board}"))
    for tier, expected in (("qemu", None), ("hardware", "board-x86")):
        drafts = draft_jobs(plan, head_sha="a" * 40, changed_files=["drivers/x"], inventory=inventory, tier=tier,
                            max_build_s=1800)  # fmt: skip
        assert drafts[2].device_class == expected
        assert drafts[1].device_class == "qemu-x86_64"


def test_anchors_and_aliases_are_refused_so_a_plan_cannot_expand_into_a_bomb() -> None:
    bomb = "version: 1\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    bomb += "".join(f"c{i}: &c{i} [*{'b' if i == 0 else f'c{i - 1}'}] \n" for i in range(30))
    with pytest.raises(PlanError, match=r"plan.yaml:2: YAML anchors and aliases are not accepted"):
        parse_plan(bomb, ".labgate/plan.yaml")


def test_an_oversized_plan_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(PlanError, match="over the cap"):
        parse_plan("#" * (300 * 1024), ".labgate/plan.yaml")


@pytest.mark.parametrize("kernel", ["../../etc/passwd", "/boot/vmlinuz", "a//b"])
def test_a_test_kernel_must_be_debian_or_a_relative_artifact_path(kernel: str) -> None:
    text = GOOD.replace("    build: x86_64\n    device: {arch: x86_64", f"    build: x86_64\n    kernel: {kernel!r}\n"
                        "    device: {arch: x86_64", 1)  # fmt: skip
    assert text != GOOD
    with pytest.raises(PlanError, match="give 'debian' or an artifact path"):
        parse_plan(text, ".labgate/plan.yaml")


@pytest.mark.parametrize(("text", "why"), [
    ("version: 1\n[a, b]: 1\n", "plan.yaml:2: a mapping key must be a plain word"),
    ("version: 1\nx: !!python/object:os.system 1\n", "cannot read the plan"),
    ("version: 1\nx: !!timestamp 2020-99-99\n", "cannot read the plan"),
    ("version: 1\nx: " + "[" * 5000 + "\n", "plan.yaml"),
])  # fmt: skip
def test_plans_that_trip_the_yaml_library_are_plan_errors_not_crashes(text: str, why: str) -> None:
    with pytest.raises(PlanError, match=re.escape(why)):
        parse_plan(text, ".labgate/plan.yaml")


def test_no_test_ran_is_said_and_deselection_is_a_note() -> None:
    from bot.core.progress import no_test_ran, selection_notes

    plan = parse_plan(GOOD, "p")
    assert selection_notes(plan, ["src/x.c"]) == ["test drivers not selected: the change touches none of drivers/"]
    assert selection_notes(plan, ["drivers/y.c"]) == []
    builds_only = parse_plan(GOOD.split("tests:")[0], "p")
    assert selection_notes(builds_only, []) == ["the plan has no tests: builds only"]
    assert no_test_ran([]) is None
    assert no_test_ran([("pass", None), ("skip", "x")]) is None
    assert no_test_ran([("incomplete", "no test ran: no device class carries arch=arm64")]) is None
    assert no_test_ran([("skip", "needs /ok-to-test hardware"), ("skip", "needs /ok-to-test hardware")]) == (
        "no test ran: needs /ok-to-test hardware"
    )
