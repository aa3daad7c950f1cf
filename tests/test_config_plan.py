"""Plans from config: a tree that carries no .labgate/plan.yaml (most mailing-list trees) is tested
by the plan its config names; an in-tree plan still wins; a broken one stops labgate at start, naming
the config file and key."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import load_config
from bot.pipelines.lifecycle import Submission, submit
from bot.reporting.pipeline_views import PipelineView, pipeline_view
from tests.conftest import EXAMPLES, make_git_repo
from workers.errors import ConfigError

HELLO_PLAN = EXAMPLES / "hello" / ".labgate" / "plan.yaml"


def write_config(root: Path, plan_file: str) -> Path:
    config = root / "labgate.yaml"
    config.write_text(f"data_dir: data\ncaps: {{max_build_s: 120, max_job_s: 120}}\n"
                      f"trees:\n  - name: bare\n    url: {root / 'bare'}\n    plan_file: {plan_file}\n")  # fmt: skip
    return config


def test_a_relative_plan_file_is_the_config_files_neighbour(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    shutil.copy(HELLO_PLAN, tmp_path / "plans" / "bare.yaml")
    config = load_config(write_config(tmp_path, "plans/bare.yaml"))
    assert config.trees[0].plan_file == tmp_path / "plans" / "bare.yaml"


def test_a_broken_or_missing_plan_file_names_the_config_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("builds:\n  - name: x\n    comand: make\n")
    config_path = write_config(tmp_path, "bad.yaml")
    expected = rf"(?s){config_path}: trees\[0\]\.plan_file: .*bad\.yaml:3: builds\.0\.comand: Extra inputs"
    with pytest.raises(ConfigError, match=expected):
        load_config(config_path)
    config_path = write_config(tmp_path, "nowhere.yaml")
    with pytest.raises(ConfigError, match=r"trees\[0\]\.plan_file: cannot read .*nowhere\.yaml"):
        load_config(config_path)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    shutil.copy(HELLO_PLAN, tmp_path / "bare-plan.yaml")
    tree = make_git_repo(EXAMPLES / "hello", tmp_path / "bare")
    shutil.rmtree(tree / ".labgate")
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "no plan"], cwd=tree,
                   check=True)  # fmt: skip
    config_path = write_config(tmp_path, "bare-plan.yaml")
    services = open_services(load_config(config_path), config_path)
    try:
        start_all_workers(services)
        yield services
    finally:
        services.stop()


def wait(services: Services, pipeline_id: int, timeout_s: float = 180) -> PipelineView:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = pipeline_view(services.runtime, pipeline_id)
        if view.state == "done":
            return view
        time.sleep(0.2)
    raise AssertionError(f"pipeline {pipeline_id} not done after {timeout_s} s")


def test_a_tree_without_a_plan_runs_the_configs(services: Services, tmp_path: Path) -> None:
    submission = Submission(tree_name="bare", tree_url=str(tmp_path / "bare"), source="test", external_id="1",
                            base_ref="main", patches=(("pass.patch", (EXAMPLES / "hello" / "patches" /
                                                                     "pass.patch").read_bytes()),))  # fmt: skip
    view = wait(services, submit(services.runtime, submission))
    assert view.result == "pass", view
    assert [(j.kind, j.result) for j in view.jobs] == [("checkout", "pass"), ("build", "pass"), ("test", "pass")]


def test_a_config_plan_with_a_test_no_device_class_can_run_stops_labgate_at_start(tmp_path: Path) -> None:
    (tmp_path / "arm.yaml").write_text(HELLO_PLAN.read_text().replace("arch: x86_64", "arch: arm64"))
    config_path = write_config(tmp_path, "arm.yaml")
    expected = (rf"{config_path}: trees\[0\]\.plan_file: .*arm\.yaml: tests\.0\.device: test \S+: "
                r"no device class carries arch=arm64 platform=qemu$")  # fmt: skip
    with pytest.raises(ConfigError, match=expected):
        load_config(config_path)


def test_the_inventory_carries_each_class_with_the_global_caps_or_its_own(tmp_path: Path) -> None:
    shutil.copy(HELLO_PLAN, tmp_path / "bare.yaml")
    config_path = write_config(tmp_path, "bare.yaml")
    config_path.write_text(config_path.read_text().replace(
        "caps: {max_build_s: 120, max_job_s: 120}",
        "caps: {max_build_s: 120, max_job_s: 120, max_boot_s: 60, max_console_bytes: 4096}\n"
        "device_classes:\n"
        "  - {name: q, tags: {arch: x86_64, platform: qemu}}\n"
        "  - {name: big, tags: {arch: x86_64, platform: qemu, kvm: 'yes'}, memory_mb: 8192, network: true,\n"
        "     caps: {max_job_s: 3600, max_console_silence_s: 30}}",
    ) + "    lab_grants: {network: [hardware]}\n")  # fmt: skip
    config = load_config(config_path)
    inventory = config.inventory()
    q, big = inventory["q"], inventory["big"]
    assert (q.caps.max_job_s, q.caps.max_boot_s, q.caps.max_silence_s, q.caps.max_console_bytes) == (120, 60, 300, 4096)
    assert (big.caps.max_job_s, big.caps.max_boot_s, big.caps.max_silence_s) == (3600, 60, 30)
    assert (q.network, big.network, big.memory_mb, big.lab) == (False, True, 8192, "qemu")
    assert config.trees[0].lab_grants.network == ["hardware"]


@pytest.mark.parametrize("bad", ["lab_grants: {network: [everyone]}", "lab_grants: {disk: [hardware]}"])
def test_a_grant_names_known_tiers_and_known_things(tmp_path: Path, bad: str) -> None:
    shutil.copy(HELLO_PLAN, tmp_path / "bare.yaml")
    config_path = write_config(tmp_path, "bare.yaml")
    config_path.write_text(config_path.read_text() + f"    {bad}\n")
    with pytest.raises(ConfigError, match=r"trees\.0\.lab_grants"):
        load_config(config_path)
