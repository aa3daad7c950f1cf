"""bot/core/reproduce.py: the command text, the closest QEMU class, the jobs a reproduction drafts, and the
spec document refusing what a hostile server could send."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bot.core.caps import TestCaps
from bot.core.inventory import ClassEntry, Inventory
from bot.core.reproduce import (
    DeviceClassInfo,
    JobSpecDoc,
    QemuInfo,
    choose_device_class,
    patches_of,
    plan_reproduction,
    reproduce_command,
    reproduction_drafts,
)
from workers.errors import UserError

BASE, HEAD, NEW_HEAD = "b" * 40, "c" * 40, "e" * 40
X86_QEMU = QemuInfo(arch="x86_64", machine="q35", cpu="qemu64", memory="512M")


def local_lab(*entries: ClassEntry) -> Inventory:
    return Inventory(entries or (
        ClassEntry(name="qemu-x86_64", tags={"arch": "x86_64", "platform": "qemu"}, memory_mb=512,
                   caps=TestCaps(max_job_s=300, max_boot_s=100, max_silence_s=100, max_console_bytes=1 << 20)),
        ClassEntry(name="qemu-arm64", tags={"arch": "arm64", "platform": "qemu"}, memory_mb=512),
        ClassEntry(name="board-x86", tags={"arch": "x86_64", "board": "nuc"}, memory_mb=4096, lab="labgrid"),
    ))  # fmt: skip


def spec(**changes: Any) -> dict[str, Any]:
    """A test job's spec as the API answers it: a kernel build on its base build, a test on QEMU."""
    build = {"name": "x86_64", "head_sha": HEAD, "script": "make -j2 bzImage", "artifacts": ["arch/x86/boot/bzImage"],
             "timeout_s": 1800, "kernel": {"arch": "x86_64", "toolchain": "gcc", "warm_key": "0" * 32},
             "trusted": True, "role": "change", "job_id": 4, "needs": "base x86_64"}  # fmt: skip
    doc: dict[str, Any] = {
        "job": {"id": 5, "kind": "test", "name": "qemu-x86_64 boot", "pipeline_id": 1, "state": "done",
                "result": "fail"},
        "tree": {"name": "linux", "url": "https://example.org/linux.git"},
        "revision": {"base_ref": "master", "base_sha": BASE, "head_sha": HEAD},
        "patches": [{"name": "fix.patch", "digest": "d" * 64, "bytes": 3, "content_base64": "YWJj"}],
        "builds": [{**build, "name": "base x86_64", "head_sha": BASE, "role": "base", "job_id": 3, "needs": None},
                   build],
        "test": {"name": "boot", "kernel": "arch/x86/boot/bzImage", "commands": [{"name": "a", "run": "true"}],
                 "timeout_s": 600, "boot_timeout_s": 300, "silence_timeout_s": 50, "max_console_bytes": 1 << 24},
        "device_class": {"name": "qemu-x86_64", "lab": "qemu", "tags": {"arch": "x86_64", "platform": "qemu"},
                         "qemu": X86_QEMU.model_dump()},
    }  # fmt: skip
    doc.update(changes)
    return doc


def test_the_command_names_the_job_and_the_server() -> None:
    assert reproduce_command(42, "https://ci.example.org/") == "labgate reproduce 42 --server https://ci.example.org"
    # A public URL is the operator's, but a shell must still read it as one word.
    assert reproduce_command(7, "https://ci.example.org/a b;rm -rf ~") == (
        "labgate reproduce 7 --server 'https://ci.example.org/a b;rm -rf ~'"
    )


def test_a_qemu_job_runs_on_its_own_class() -> None:
    ran_on = DeviceClassInfo(name="qemu-x86_64", lab="qemu", tags={"arch": "x86_64", "platform": "qemu"})
    choice = choose_device_class(ran_on, local_lab())
    assert (choice.name, choice.note) == ("qemu-x86_64", "")


def test_a_board_job_runs_on_the_closest_qemu_class_of_its_arch_and_says_so() -> None:
    board = DeviceClassInfo(name="board-arm", lab="labgrid", tags={"arch": "arm64", "soc": "rk3399"})
    choice = choose_device_class(board, local_lab())
    assert choice.name == "qemu-arm64"
    assert "board class board-arm" in choice.note and "qemu-arm64" in choice.note and "arch=arm64" in choice.note
    # A local board class of the same name is no QEMU class: never chosen.
    local_board = DeviceClassInfo(name="board-x86", lab="labgrid", tags={"arch": "x86_64", "board": "nuc"})
    assert choose_device_class(local_board, local_lab()).name == "qemu-x86_64"


def test_among_several_qemu_classes_of_the_arch_the_one_sharing_most_tags_wins() -> None:
    lab = local_lab(
        ClassEntry(name="a-plain", tags={"arch": "x86_64"}, memory_mb=512),
        ClassEntry(name="b-kvm", tags={"arch": "x86_64", "features": "kvm"}, memory_mb=512),
        ClassEntry(name="c-arm", tags={"arch": "arm64", "features": "kvm"}, memory_mb=512),
    )
    board = DeviceClassInfo(name="nuc", lab="labgrid", tags={"arch": "x86_64", "features": "kvm"})
    assert choose_device_class(board, lab).name == "b-kvm"
    plain = DeviceClassInfo(name="nuc", lab="labgrid", tags={"arch": "x86_64"})
    assert choose_device_class(plain, lab).name == "a-plain"  # then fewest tags


def test_no_qemu_class_of_the_arch_is_a_user_error_naming_it() -> None:
    board = DeviceClassInfo(name="riscv-board", lab="labgrid", tags={"arch": "riscv64"})
    with pytest.raises(UserError, match=r"arch=riscv64.*qemu-x86_64 \(x86_64\)"):
        choose_device_class(board, local_lab())
    with pytest.raises(UserError, match="name no arch"):
        choose_device_class(DeviceClassInfo(name="gone", lab="labgrid"), local_lab())


def test_a_qemu_class_missing_here_falls_back_to_its_arch() -> None:
    elsewhere = DeviceClassInfo(name="qemu-big", lab="qemu", tags={"platform": "qemu"}, qemu=X86_QEMU)
    choice = choose_device_class(elsewhere, local_lab())
    assert choice.name == "qemu-x86_64" and "not in this machine's config" in choice.note


def test_a_test_job_drafts_its_builds_at_the_new_commits_and_its_test_under_local_caps() -> None:
    doc = JobSpecDoc.model_validate(spec())
    reproduction = plan_reproduction(doc, local_lab(), trusted=True)
    drafts, notes = reproduction_drafts(reproduction, tested_sha=NEW_HEAD, base_sha=BASE, inventory=local_lab())
    base, change, test = drafts
    assert (base.name, base.needs, base.spec["head_sha"], base.spec["role"], base.spec["trusted"]) == (
        "base x86_64", None, BASE, "base", True)
    assert (change.name, change.needs, change.spec["head_sha"], change.spec["trusted"]) == (
        "x86_64", "base x86_64", NEW_HEAD, True)
    assert change.spec["script"] == "make -j2 bzImage" and change.spec["kernel"]["warm_key"] == "0" * 32
    assert (test.kind, test.name, test.device_class, test.needs) == ("test", "qemu-x86_64 boot", "qemu-x86_64",
                                                                     "x86_64")
    # The recorded 600 s is over this machine's 300 s: cut, and said; a recorded lower cap is kept.
    assert test.spec["timeout_s"] == 300 and test.spec["boot_timeout_s"] == 100
    assert test.spec["silence_timeout_s"] == 50 and test.spec["max_console_bytes"] == 1 << 20
    assert test.spec["commands"] == [{"name": "a", "run": "true", "root": False}]
    assert notes[0] == "reproduction of job 5" and any("capped at 300 s" in n for n in notes)


def test_a_spec_from_a_server_never_writes_warm_state() -> None:
    reproduction = plan_reproduction(JobSpecDoc.model_validate(spec()), local_lab(), trusted=False)
    drafts, _ = reproduction_drafts(reproduction, tested_sha=NEW_HEAD, base_sha=BASE, inventory=local_lab())
    assert [d.spec.get("trusted") for d in drafts if d.kind == "build"] == [False, False]


def test_a_build_job_reproduces_its_builds_only() -> None:
    job = {"id": 4, "kind": "build", "name": "x86_64", "pipeline_id": 1, "state": "done", "result": "fail"}
    doc = JobSpecDoc.model_validate(spec(job=job, test=None, device_class=None))
    drafts, _ = reproduction_drafts(plan_reproduction(doc, local_lab(), trusted=True), tested_sha=NEW_HEAD,
                                    base_sha=BASE, inventory=local_lab())  # fmt: skip
    assert [d.kind for d in drafts] == ["build", "build"]


@pytest.mark.parametrize("kind", ["checkout", "static"])
def test_checkout_and_static_jobs_are_refused_by_name(kind: str) -> None:
    doc = JobSpecDoc.model_validate(spec(job={"id": 2, "kind": kind, "name": kind, "pipeline_id": 1,
                                              "state": "done"}))  # fmt: skip
    with pytest.raises(UserError, match=f"job 2 \\({kind} {kind}\\): labgate reproduce runs build and test jobs"):
        plan_reproduction(doc, local_lab(), trusted=True)


def test_what_the_store_could_not_describe_is_said() -> None:
    doc = JobSpecDoc.model_validate(spec(problems=["test job 5: its stored spec lacks or garbles commands"]))
    with pytest.raises(UserError, match="lacks or garbles commands"):
        plan_reproduction(doc, local_lab(), trusted=True)


def test_pruned_patches_are_named() -> None:
    doc = JobSpecDoc.model_validate(spec(patches=[{"name": "gone.patch", "digest": "d" * 64}]))
    with pytest.raises(UserError, match="gone.patch are no longer stored"):
        patches_of(doc)


# -- what a hostile server could send ----------------------------------------------------------------


@pytest.mark.parametrize(("where", "value"), [
    (("test", "commands", 0, "name"), "a\nok 1 forged"),  # a KTAP line of its own on the runner's port
    (("builds", 1, "artifacts", 0), "../../etc/passwd"),
    (("builds", 1, "artifacts", 0), "/etc/passwd"),
    (("test", "modules"), "../modules.tar.gz"),
    (("tree", "url"), "https://user:s3cret-token@example.org/linux.git"),
    (("tree", "name"), "../../outside"),
    (("tree", "name"), "org/../../outside"),
    (("patches", 0, "digest"), "../" * 21 + "x"),
    (("builds", 1, "kernel", "warm_key"), "../../../warm"),
    (("builds", 1, "script"), "x" * ((1 << 20) + 1)),
])  # fmt: skip
def test_a_hostile_spec_is_refused_and_the_value_never_echoed(where: tuple[Any, ...], value: str) -> None:
    doc = spec()
    node: Any = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(ValidationError) as caught:
        JobSpecDoc.model_validate(doc)
    assert value[:40] not in str(caught.value)
    assert "s3cret" not in str(caught.value)
