"""Kernel builds (BuildSpec.kernel) in warm state, on a tiny C project run through the real worker path:
cold then warm, only the touched unit recompiled, every unit's warnings kept, the throwaway copy of an
untrusted build, the read-only source, the dirty mark of a build that did not end on its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.workers.warm_project import FILES, Project, snapshot

root_only = pytest.mark.needs("root", "the worker runs as root: slot uids, loop disks, binds")


def _noisy_warning(outcome_kernel: dict[str, object]) -> list[dict[str, object]]:
    warnings = outcome_kernel["warnings"]
    assert isinstance(warnings, list)
    return [w for w in warnings if w["file"] == "noisy.c"]


@root_only
def test_a_trusted_patch_recompiles_only_the_touched_unit_and_keeps_every_units_warnings(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    base = project.build(project.mirror_head(), trusted=True)
    assert base.result == "pass", project.log(base)
    assert base.kernel is not None
    assert base.kernel["warm"]["mode"] == "cold"
    assert sorted(base.kernel["recompiled"]) == ["main.o", "noisy.o", "util.o"]
    [warning] = _noisy_warning(base.kernel)
    assert warning["flag"] == "-Wunused-variable" and warning["level"] == "warning" and warning["line"] == 1
    assert "unused_here" in str(warning["text"])

    patched = project.commit({"util.c": FILES["util.c"].replace("x + 1", "x + 2")}, "patch util")
    warm = project.build(patched, trusted=True)
    assert warm.result == "pass", project.log(warm)
    assert warm.kernel is not None
    assert warm.kernel["warm"]["mode"] == "warm"
    assert warm.kernel["warm"]["source"] == "synced"
    assert warm.kernel["recompiled"] == ["util.o"]
    assert _noisy_warning(warm.kernel), "noisy.o was not recompiled; its warning must still be in the ledger"
    assert warm.kernel["warnings_complete"] is True
    assert warm.kernel["binary_digest"] != base.kernel["binary_digest"]
    # Reproducible: the fixed KBUILD_BUILD_* values are in the build's environment.
    assert os.stat(project.build_dir).st_uid == 0, "the warm build dir goes back to root after the build"


@root_only
def test_a_comment_only_change_is_recompiled_and_gives_the_same_binary_digest(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    base = project.build(project.mirror_head(), trusted=True)
    edited = project.commit({"util.c": FILES["util.c"].replace("/* util */", "/* UTIL */")}, "comment")
    change = project.build(edited, trusted=False)
    assert change.result == "pass", project.log(change)
    assert change.kernel is not None and base.kernel is not None
    assert change.kernel["warm"]["mode"] == "copy"
    assert change.kernel["recompiled"] == ["util.o"]
    assert change.kernel["binary_digest"] == base.kernel["binary_digest"]


@root_only
def test_an_untrusted_build_works_on_a_copy_and_leaves_the_warm_build_dir_as_it_was(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    assert project.build(project.mirror_head(), trusted=True).result == "pass"
    before = snapshot(project.build_dir)
    patched = project.commit({"main.c": FILES["main.c"].replace("- 2", "- 3")}, "patch main")
    change = project.build(patched, trusted=False,
                           script="echo planted > \"$LABGATE_BUILD/planted\"\n" + project.script)  # fmt: skip
    assert change.result == "pass", project.log(change)
    assert change.kernel is not None and change.kernel["recompiled"] == ["main.o"]
    assert snapshot(project.build_dir) == before


@root_only
def test_the_source_is_read_only_for_every_build(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    sha = project.mirror_head()
    script = ('for f in "$LABGATE_SRC/util.c" "$LABGATE_SRC/new"; do echo x >> "$f" && echo "WROTE $f"; done\n'
              'rm -f "$LABGATE_SRC/main.c" && echo REMOVED; touch -d 2099-01-01 "$LABGATE_SRC/util.h" && echo TOUCHED\n'
              'mkdir "$LABGATE_SRC/.git" && echo MKDIR; true\n')  # fmt: skip
    for trusted in (True, False):
        if trusted:
            assert project.build(sha, trusted=True).result == "pass"
        before = snapshot(project.source)
        outcome = project.build(sha, trusted=trusted, script=script)
        log = project.log(outcome)
        assert "WROTE" not in log and "REMOVED" not in log and "TOUCHED" not in log and "MKDIR" not in log, log
        assert "Read-only file system" in log, log
        assert snapshot(project.source) == before


@root_only
def test_a_build_that_did_not_end_on_its_own_leaves_a_dirty_dir_the_next_build_throws_away(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    sha = project.mirror_head()
    killed = project.build(sha, trusted=True, script=project.script + "sleep 60\n", timeout_s=3)
    assert killed.cap is not None and "wall-time" in killed.cap
    assert project.build_dir.with_name(project.build_dir.name + ".dirty").exists()
    again = project.build(sha, trusted=True)
    assert again.result == "pass", project.log(again)
    assert again.kernel is not None and again.kernel["warm"]["mode"] == "cold"
    assert sorted(again.kernel["recompiled"]) == ["main.o", "noisy.o", "util.o"]
    assert not project.build_dir.with_name(project.build_dir.name + ".dirty").exists()


@root_only
def test_kernel_builds_get_fixed_paths_a_wrapper_and_reproducible_build_values(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    script = ('echo "SRC=$LABGATE_SRC BUILD=$LABGATE_BUILD CC=$LABGATE_CC PWD=$(pwd)"\n'
              'echo "TS=$KBUILD_BUILD_TIMESTAMP U=$KBUILD_BUILD_USER H=$KBUILD_BUILD_HOST V=$KBUILD_BUILD_VERSION"\n'
              'echo x > "$LABGATE_CC" || echo "WRAPPER READ-ONLY"\n'
              'touch /labgate/ccache/x || echo "SHARED CCACHE READ-ONLY"\n' + project.script)  # fmt: skip
    outcome = project.build(project.mirror_head(), trusted=False, script=script)
    log = project.log(outcome)
    assert outcome.result == "pass", log
    assert "SRC=/labgate/src BUILD=/labgate/build CC=/labgate/bin/cc PWD=/labgate/src" in log
    assert "TS=Mon Jan  1 00:00:00 UTC 2024 U=labgate H=labgate V=1" in log
    assert "WRAPPER READ-ONLY" in log and "SHARED CCACHE READ-ONLY" in log
    assert outcome.diagnostics and outcome.diagnostics[0]["file"] == "noisy.c"


@root_only
def test_an_untrusted_build_gets_hits_from_the_shared_ccache_it_cannot_write(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    sha = project.mirror_head()
    assert project.build(sha, trusted=True).result == "pass"
    shared = snapshot(project.shared_ccache)
    stats = project.script + "ccache --print-stats | grep -E '^(remote_storage_hit|cache_miss)'\n"
    # Another warm key: no warm build dir to copy, so every unit is compiled, each from the shared cache.
    outcome = project.build(sha, trusted=False, script=stats, key="fedcba9876543210fedcba9876543210")
    log = project.log(outcome)
    assert outcome.result == "pass", log
    assert outcome.kernel is not None and outcome.kernel["warm"]["mode"] == "cold"
    assert "remote_storage_hit\t3" in log, log
    assert snapshot(project.shared_ccache) == shared
    assert not project.tree.build_dir("fedcba9876543210fedcba9876543210").exists()


@root_only
def test_the_config_steps_run_again_only_when_what_makes_the_config_changed(tmp_path: Path) -> None:
    project = Project.make(tmp_path)
    # As bot/core/plans.py renders a recipe: the config steps are skipped when the worker keeps the .config.
    script = ('if [ "${LABGATE_KCONFIG_KEPT:-}" != 1 ] || [ ! -s "$LABGATE_BUILD/.config" ]; then\n'
              '  echo "configured from $(cat "$LABGATE_SRC/Kconfig" 2>/dev/null)" > "$LABGATE_BUILD/.config"\nfi\n'
              + project.script)  # fmt: skip

    def built(sha: str, *, trusted: bool = True) -> dict[str, object]:
        outcome = project.build(sha, trusted=trusted, script=script)
        assert outcome.result == "pass" and outcome.kernel is not None, project.log(outcome)
        return dict(outcome.kernel["warm"])

    assert built(project.mirror_head())["kconfig_kept"] is False  # cold: nothing to keep
    code_only = project.commit({"util.c": FILES["util.c"].replace("x + 1", "x + 2")}, "code")
    assert built(code_only)["kconfig_kept"] is True
    assert built(code_only, trusted=False)["kconfig_kept"] is True  # the copy's .config is the warm one's
    kconfig = project.commit({"Kconfig": "config NEW\n"}, "a new symbol")
    assert built(kconfig, trusted=False)["kconfig_kept"] is False
    assert "config NEW" not in (project.build_dir / ".config").read_text()  # the untrusted build changed no state
    assert built(kconfig)["kconfig_kept"] is False
    assert (project.build_dir / ".config").read_text() == "configured from config NEW\n"
    failing = project.commit({"util.c": "syntax error\n"}, "broken")
    assert project.build(failing, trusted=True, script=script).result == "fail"
    assert built(kconfig)["kconfig_kept"] is False  # after a failed build its config is in doubt


@root_only
def test_the_warnings_of_a_unit_a_later_commit_deleted_leave_the_ledger(tmp_path: Path) -> None:
    # Kbuild never deletes the objects of a file a commit removed; nor does the warm dir. Its old warning
    # counted in a base's ledger would make the same warning, brought back by a change, look pre-existing.
    project = Project.make(tmp_path)
    base = project.build(project.mirror_head(), trusted=True)
    assert base.kernel is not None and _noisy_warning(base.kernel)
    makefile = FILES["Makefile"].replace(" $(O)/noisy.o", "")
    without = project.commit({"noisy.c": None, "Makefile": makefile}, "noisy goes")
    later = project.build(without, trusted=True)
    assert later.result == "pass" and later.kernel is not None, project.log(later)
    assert (project.build_dir / "noisy.o").exists()  # still there, as Kbuild leaves it
    assert _noisy_warning(later.kernel) == [] and later.kernel["warnings_complete"] is True
