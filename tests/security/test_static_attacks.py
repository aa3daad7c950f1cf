"""Attacks on the static stage, run on the worker directly (tests/workers/static_tree.py's tiny tree).

A change controls the patches checkpatch reads, the names of the files kernel-doc is given, and its
own copy of every tool. None of that may silence a finding, run a command of its choosing, flood the
worker, or reach the network or a host path from inside the tools' sandbox.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.security.listener import Listener, loopback_listener
from tests.workers.static_tree import BASE_FILES, case_named, make_tree, read_log, run
from workers import static
from workers.static import MAX_ANNOTATIONS, MAX_TOOL_OUTPUT_BYTES

pytestmark = pytest.mark.needs("root", "the static tools run as a slot's uid, as the build worker runs them")


def test_a_change_rewriting_checkpatch_to_find_nothing_still_gets_its_error(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    silent = '#!/usr/bin/perl\nprint "total: 0 errors, 0 warnings\\n";\nexit 0;\n'
    head = tree.commit({"scripts/checkpatch.pl": silent, "scripts/kernel-doc": silent,
                        ".checkpatch.conf": "--ignore FIXME_ADDED\n",
                        "kernel/a.c": "/** old_one */\nint a; /* FIXME */\n/** added_doc */\n"},
                       "kernel: nothing to see")  # fmt: skip
    outcome = run(tree, tmp_path, head)
    cases = {case.path: case for case in outcome.tests}
    assert cases["static/checkpatch/1-kernel-nothing-to-see"].status == "fail"
    assert outcome.result == "fail"
    assert {(a["source"], a["file"], a["line"], a["check"]) for a in outcome.annotations} == {
        ("checkpatch", "kernel/a.c", 2, "FIXME_ADDED"),
        ("kernel-doc", "kernel/a.c", 3, ""),
        ("checkpatch", ".checkpatch.conf", 1, "FIXME_ADDED"),  # the change's own conf line, checked not obeyed
    }
    assert "checkpatch argv: --terse" in read_log(tmp_path, outcome)  # the base's stand-in ran, not the change's


def test_file_names_and_subjects_cannot_inject_commands_or_options(tmp_path: Path) -> None:
    marker = Path(f"/tmp/labgate-static-pwned-{uuid.uuid4().hex}")
    tree = make_tree(tmp_path)
    names = ["-rf.c", "--help.h", f"$(touch {marker}).c", f"`touch {marker}`.h", "a;touch x.c", "new\nline.c"]
    head = tree.commit({name: f"/** doc_{index} */\nint v{index}; /* FIXME */\n" for index, name in enumerate(names)},
                       f"$(touch {marker}) --help; `touch {marker}` -v")  # fmt: skip
    outcome = run(tree, tmp_path, head)
    assert not marker.exists()
    log = read_log(tmp_path, outcome)
    # kernel-doc is given each file as "./name", never as an option; the one with a line break is left out.
    argv = next(line for line in log.split("\n") if line.startswith("kernel-doc argv: "))
    assert sorted(argv.removeprefix("kernel-doc argv: -none ./").split(" ./")) == sorted(names[:-1]), argv
    checkpatch = next(case for case in outcome.tests if case.path.startswith("static/checkpatch/"))
    assert re.fullmatch(r"static/checkpatch/1-touch-tmp-labgate-static-pwned-[0-9a-f]+", checkpatch.path)
    assert checkpatch.status == "fail" and checkpatch.reason == "6 error(s)"
    files = sorted(str(a["file"]) for a in outcome.annotations if a["source"] == "checkpatch")
    assert files == sorted(["", *names[:-1]])  # a name that cannot be a line of a report names nothing
    docs = sorted(str(a["file"]) for a in outcome.annotations if a["source"] == "kernel-doc")
    assert docs == sorted(names[:-1])


def test_a_flood_of_findings_is_capped_everywhere(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    flood = "".join(f"int v{i}; /* FIXME */ \n" for i in range(120_000))  # an error and trailing space on each
    head = tree.commit({"kernel/flood.c": flood}, "kernel: flood")
    outcome = run(tree, tmp_path, head, kernel_doc=False, max_log_bytes=256 << 10)
    cases = {case.path: case for case in outcome.tests}
    assert cases["static/checkpatch/1-kernel-flood"].status == "fail"
    assert f"the output cap of {MAX_TOOL_OUTPUT_BYTES} bytes" in cases["static/checkpatch/1-kernel-flood"].reason
    assert cases["static/diff-check"].status == "fail"
    assert f"(output cut at {MAX_TOOL_OUTPUT_BYTES} bytes)" in cases["static/diff-check"].reason
    assert len(outcome.annotations) == MAX_ANNOTATIONS and not outcome.annotations_complete
    assert len(read_log(tmp_path, outcome).encode()) <= 256 << 10


# The base's tool as an attacker would write it: the sandbox, not the tool's good manners, holds it in.
PROBE = r"""
use IO::Socket::INET;
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => PORT, Proto => 'tcp', Timeout => 5);
print $s ? "connect: CONNECTED\n" : "connect: REFUSED $!\n";
"""


def test_the_tools_have_no_network_and_no_host_path(tmp_path: Path) -> None:
    with loopback_listener() as listener:
        _tools_have_no_network_and_no_host_path(tmp_path, listener)


def _tools_have_no_network_and_no_host_path(tmp_path: Path, listener: Listener) -> None:
    probe = PROBE.replace("PORT", str(listener.port))
    # The control half: the same probe from outside the sandbox reaches the listener, so the test can fail.
    outside = subprocess.run(["perl", "-e", probe], capture_output=True, text=True, timeout=30)
    assert "connect: CONNECTED" in outside.stdout, outside
    assert listener.wait_for(1) == 1
    secret = tmp_path / "secret.txt"
    secret.write_text(f"SECRET-{uuid.uuid4().hex}\n")
    secret.chmod(0o644)
    attacker = (
        "#!/usr/bin/perl\n"
        + probe
        + f"""
print "secret: ", (open(my $f, '<', '{secret}') ? <$f> : "unreadable $!"), "\\n";
print "mirror: ", (-e '{tmp_path}/mirror.git/config' ? "visible" : "absent"), "\\n";
print "store: ", (-e '{tmp_path}/artifacts' ? "visible" : "absent"), "\\n";
for my $target ('.checkpatch.conf', $ARGV[-1], '/tmp/x', '{tmp_path}/job/y') {{
    print "write $target: ", (open(my $w, '>', $target) ? "WRITTEN" : "refused"), "\\n";
}}
print "uid: $<\\n";
"""
    )
    tree = make_tree(tmp_path, {**BASE_FILES, "scripts/checkpatch.pl": attacker})
    head = tree.commit({"kernel/b.c": "int b;\n"}, "kernel: b")
    outcome = run(tree, tmp_path, head, kernel_doc=False, diff_check=False)
    log = read_log(tmp_path, outcome)
    assert "connect: REFUSED" in log and "CONNECTED" not in log, log
    # Refused, not unreachable: bwrap brings up a loopback of the sandbox's own, where nothing listens.
    assert "Connection refused" in log
    assert listener.wait_for(2, timeout_s=1) == 1  # the listener saw the control connection only
    assert "secret: unreadable No such file or directory" in log and "SECRET-" not in log
    assert "mirror: absent" in log and "store: absent" in log
    assert "WRITTEN" not in log.replace("write /tmp/x: WRITTEN", ""), log  # only its own tmpfs is writable
    assert "uid: 64106" in log


def test_a_tool_kept_busy_by_a_patch_stops_at_the_stages_time_cap(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    head = tree.commit({"kernel/slow.c": "int s; /* SLOWLY */\n/** doc */\n"}, "kernel: slow")
    outcome = run(tree, tmp_path, head, timeout_s=2)
    checkpatch = case_named(outcome, "static/checkpatch/1-kernel-slow")
    assert (checkpatch.status, checkpatch.reason) == (
        "fail",
        "checkpatch stopped: it hit the static stage's wall-time cap of 2 s",
    )
    kernel_doc = case_named(outcome, "static/kernel-doc")  # no time left for it: not a pass
    assert kernel_doc.status == "fail" and "the static stage's wall-time cap of 2 s" in kernel_doc.reason
    assert outcome.result == "fail" and outcome.command_s < 4


def test_a_patch_past_the_size_cap_fails_unchecked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static, "MAX_PATCH_BYTES", 64 << 10)
    tree = make_tree(tmp_path)
    head = tree.commit({"kernel/big.c": "int big;\n" * 20_000}, "kernel: big")
    outcome = run(tree, tmp_path, head, kernel_doc=False)
    checkpatch = case_named(outcome, "static/checkpatch/1-kernel-big")
    assert (checkpatch.status, checkpatch.reason) == ("fail", "the patch is larger than 0 MiB: not checked")
    assert outcome.result == "fail"


def test_a_crafted_tree_naming_dot_dot_cannot_make_root_write_outside_the_job(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    # git's porcelain never makes such a tree, but its plumbing and a mirror's fetch take one as it is.
    blob = tree.git("hash-object", "-w", str(tree.repo / "kernel" / "a.c"))
    inner = subprocess.run(["git", "mktree"], cwd=tree.repo, input=f"100644 blob {blob}\tescape.c\n", text=True,
                           capture_output=True, check=True).stdout.strip()  # fmt: skip
    middle = subprocess.run(["git", "mktree"], cwd=tree.repo, input=f"040000 tree {inner}\t..\n", text=True,
                            capture_output=True, check=True).stdout.strip()  # fmt: skip
    listing = tree.git("ls-tree", tree.base)
    crafted = subprocess.run(["git", "mktree"], cwd=tree.repo, input=f"{listing}\n040000 tree {middle}\t..\n",
                             text=True, capture_output=True, check=True).stdout.strip()  # fmt: skip
    head = tree.git("commit-tree", crafted, "-p", tree.base, "-m", "kernel: escape")
    assert "../../escape.c" in tree.git("diff", "--name-only", tree.base, head)  # the attack is in the tree
    outcome = run(tree, tmp_path, head)
    assert not (tmp_path / "escape.c").exists() and not list(tmp_path.parent.glob("escape.c"))
    assert case_named(outcome, "static/kernel-doc").reason == "the change touches no .c or .h file"
