"""The static stage's wiring on a tiny tree: which tool runs on what, how its words become annotations
and TestCases, and what a missing tool or a clean change gives. Stand-in tools (tests/workers/static_tree.py);
the real checkpatch and kernel-doc run in test_static_linux_slow.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.static_tree import BASE_FILES, case_named, check_run, make_tree, read_log, run
from workers.static_parse import parse_checkpatch, parse_diff_check, patch_positions, slug

root_only = pytest.mark.needs("root", "the static tools run as a slot's uid, as the build worker runs them")


@root_only
def test_each_commit_gets_its_checkpatch_case_with_findings_placed_in_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    tree.git("checkout", "-q", "-b", "change")
    first = tree.commit({"kernel/a.c": "/** old_one */\nint a;\nint b; /* TODO later */\n"}, "kernel: add b")
    second = tree.commit({"kernel/b.c": "int c;\n\nint d; /* FIXME */\n"}, "kernel: Add c & d!")
    outcome = run(tree, tmp_path, second)
    cases = {case.path: case for case in outcome.tests}
    assert list(cases) == ["static/checkpatch/1-kernel-add-b", "static/checkpatch/2-kernel-add-c-d",
                           "static/diff-check", "static/kernel-doc"]  # fmt: skip
    assert cases["static/checkpatch/1-kernel-add-b"].status == "pass"
    assert cases["static/checkpatch/1-kernel-add-b"].reason == "1 warning(s)"
    assert cases["static/checkpatch/2-kernel-add-c-d"].status == "fail"
    assert cases["static/checkpatch/2-kernel-add-c-d"].reason == "1 error(s)"
    assert outcome.result == "fail"
    checkpatch = [a for a in outcome.annotations if a["source"] == "checkpatch"]
    assert checkpatch == [
        {"file": "kernel/a.c", "line": 3, "level": "warning", "source": "checkpatch", "check": "TODO_ADDED",
         "text": "a TODO is added", "commit": first},
        {"file": "kernel/b.c", "line": 3, "level": "error", "source": "checkpatch", "check": "FIXME_ADDED",
         "text": "a FIXME is added", "commit": second},
    ]  # fmt: skip
    log = read_log(tmp_path, outcome)
    # The base's .checkpatch.conf is in checkpatch's cwd; the options are the stage's, the patch last.
    assert "conf in cwd: yes" in log
    assert "checkpatch argv: --terse --show-types --no-tree -- ../patches/0001.patch" in log and "--strict" not in log


@root_only
def test_strict_adds_the_option_and_off_runs_no_checkpatch(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    head = tree.commit({"kernel/c.c": "int c;\n"}, "kernel: add c")
    strict = run(tree, tmp_path, head, checkpatch="strict", kernel_doc=False, diff_check=False)
    assert "checkpatch argv: --terse --show-types --no-tree --strict -- ../patches/0001.patch" in read_log(
        tmp_path, strict
    )
    assert [case.path for case in strict.tests] == ["static/checkpatch/1-kernel-add-c"]
    off = run(tree, tmp_path, head, checkpatch="off", kernel_doc=False, diff_check=False)
    assert off.tests == [] and off.result == "pass"


@root_only
def test_diff_check_fails_on_whitespace_and_names_the_line(tmp_path: Path) -> None:
    outcome = check_run(tmp_path, {"README": "tiny tree\nnew line   \n"}, "README: trailing spaces", kernel_doc=False)
    case = case_named(outcome, "static/diff-check")
    assert case.status == "fail" and case.reason == "1 whitespace error(s)"
    assert {"file": "README", "line": 2, "level": "error", "source": "diff-check", "check": "",
            "text": "trailing whitespace", "commit": ""} in outcome.annotations  # fmt: skip
    assert outcome.result == "fail"


@root_only
def test_kernel_doc_reports_only_what_the_change_added(tmp_path: Path) -> None:
    # The base's warning (old_one) moves down a line and stays old; new_one is the change's.
    outcome = check_run(tmp_path, {"kernel/a.c": "int z;\n/** old_one */\nint a;\n/** new_one */\nint n;\n"},
                        "kernel: doc")  # fmt: skip
    case = case_named(outcome, "static/kernel-doc")
    assert case.status == "pass" and case.reason == "1 warning(s)"
    docs = [a for a in outcome.annotations if a["source"] == "kernel-doc"]
    assert docs == [{"file": "kernel/a.c", "line": 4, "level": "warning", "source": "kernel-doc", "check": "",
                     "text": "new_one not described", "commit": ""}]  # fmt: skip
    assert outcome.result == "pass"


@root_only
def test_a_base_without_the_tools_skips_with_the_reason(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"kernel/a.c": "int a;\n"})
    head = tree.commit({"kernel/a.c": "int a; /* FIXME */\n"}, "kernel: fixme")
    outcome = run(tree, tmp_path, head)
    cases = {case.path: (case.status, case.reason) for case in outcome.tests}
    assert cases == {"static/checkpatch": ("skip", "the base has no scripts/checkpatch.pl"),
                     "static/diff-check": ("pass", ""),
                     "static/kernel-doc": ("skip", "the base has no scripts/kernel-doc")}  # fmt: skip
    assert outcome.result == "pass"


@root_only
def test_a_change_without_c_files_skips_kernel_doc_and_a_clean_change_passes(tmp_path: Path) -> None:
    outcome = check_run(tmp_path, {"README": "tiny tree, better\n"}, "README: better")
    assert [(c.path, c.status) for c in outcome.tests] == [("static/checkpatch/1-readme-better", "pass"),
                                                          ("static/diff-check", "pass"),
                                                          ("static/kernel-doc", "skip")]  # fmt: skip
    assert outcome.result == "pass" and outcome.annotations == [] and outcome.annotations_complete
    assert outcome.confinement["network"].startswith("none") and outcome.confinement["uid"].startswith("64106 ")
    assert not (tmp_path / "job").exists()  # nothing of the job is left


def test_patch_positions_follow_hunks_and_leave_the_message_and_signature_to_the_commit() -> None:
    patch = "\n".join([
        "From abc Mon Sep 17 00:00:00 2001", "Subject: [PATCH] x", "", "diff --git a/fake b/fake", "---",
        " f.c | 2 +-", "", "diff --git a/f.c b/f.c", "index 1..2 100644", "--- a/f.c", "+++ b/f.c",
        "@@ -10,3 +10,3 @@ int f(void)", " a", "-b", "+B", " c", "diff --git \"a/g h.c\" \"b/g h.c\"",
        "new file mode 100644", "--- /dev/null", "+++ \"b/g h.c\"", "@@ -0,0 +1 @@", "+x", "-- ", "2.39.5", "",
    ])  # fmt: skip
    positions = patch_positions(patch)
    assert positions[3] == ("fake", 0)  # a message line that looks like a diff header: git's own words lie too
    assert positions[12] == ("f.c", 10) and positions[13] == ("f.c", 11) and positions[14] == ("f.c", 11)
    assert positions[15] == ("f.c", 12)
    assert positions[21] == ("g h.c", 1)
    assert positions[22] == ("", 0) and positions[23] == ("", 0)
    found = parse_checkpatch("/p/0001.patch:22: ERROR:X: y\n/p/0001.patch:24: ERROR:MISSING_SIGN_OFF: z\n"
                             "/p/0001.patch:99: WARNING: untyped\nnoise\n", patch, "c0")  # fmt: skip
    assert [(f.file, f.line, f.check, f.level) for f in found] == [("g h.c", 1, "X", "error"),
                                                                  ("", 0, "MISSING_SIGN_OFF", "error"),
                                                                  ("", 0, "", "warning")]  # fmt: skip


def test_names_and_texts_that_could_not_be_files_or_lines_are_neutralised() -> None:
    found = parse_diff_check('"a\\033[31mb.c":3: trailing whitespace.\n+x \n../../etc/passwd:1: space before tab.\n'
                             "ok.c:2: new blank line at EOF.\n")  # fmt: skip
    assert [(f.file, f.line, f.text) for f in found] == [("", 3, "trailing whitespace"),
                                                        ("", 1, "space before tab"),
                                                        ("ok.c", 2, "new blank line at EOF")]  # fmt: skip
    assert slug("$(rm -rf /) --help `id`") == "rm-rf-help-id" and slug("!!!") == "patch"


@root_only
def test_the_static_task_returns_a_job_result_the_bot_can_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.core.findings import checked_annotations
    from workers.checkout import mirror_path
    from workers.spec import JobResult, JobSpec, StaticSpec
    from workers.tasks import execute_static

    tree = make_tree(tmp_path)
    head = tree.commit({"kernel/a.c": "/** old_one */\nint a; /* FIXME */\n"}, "kernel: fixme")
    monkeypatch.setenv("LABGATE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LABGATE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("LABGATE_BUILD_UIDS", "64106:1")
    mirror = mirror_path(tmp_path / "work", "tiny")
    mirror.parent.mkdir(parents=True)
    tree.mirror().rename(mirror)
    spec = JobSpec(job_id=7, pipeline_id=3, kind="static", tree_name="tiny", tree_url=str(tree.repo),
                   max_log_bytes=1 << 20, static=StaticSpec(base_sha=tree.base, head_sha=head))  # fmt: skip
    result = JobResult.model_validate_json(execute_static(spec, 1, []).model_dump_json())
    assert result.result == "fail" and result.log_digest and result.command_s > 0
    assert [(t.path, t.status) for t in result.tests] == [("static/checkpatch/1-kernel-fixme", "fail"),
                                                          ("static/diff-check", "pass"),
                                                          ("static/kernel-doc", "pass")]  # fmt: skip
    assert checked_annotations(result.outputs["annotations"]) == result.outputs["annotations"]
    assert result.outputs["annotations_complete"] is True
    assert not (tmp_path / "work" / "work" / "job-7").exists()


@root_only
def test_a_head_behind_the_base_is_judged_on_what_it_wrote_since_it_forked(tmp_path: Path) -> None:
    # The fork point has a trailing space and an undocumented old_one; the base fixed both since. Against
    # the base itself the head would "add" them back; against the fork point it added neither.
    tree = make_tree(tmp_path, {**BASE_FILES, "README": "tiny tree  \n"})
    tree.git("checkout", "-q", "-b", "change")
    head = tree.commit({"kernel/a.c": "/** old_one */\nint a;\nint c;\n"}, "kernel: add c")
    tree.git("checkout", "-q", "main")
    tree.base = tree.commit({"README": "tiny tree\n", "kernel/a.c": "int a;\n"}, "base: fixes")
    outcome = run(tree, tmp_path, head)
    assert [(c.path, c.status) for c in outcome.tests] == [("static/checkpatch/1-kernel-add-c", "pass"),
                                                          ("static/diff-check", "pass"),
                                                          ("static/kernel-doc", "pass")]  # fmt: skip
    assert outcome.annotations == []
