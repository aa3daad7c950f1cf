"""Results a change's code cannot forge: DUT commands run as an unprivileged user, report through a pipe,
and cannot reach the runner's own serial port, the console's framing or a later command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.security.conftest import AttackLab

FAIL_PATCH = Path(__file__).resolve().parents[2] / "examples" / "hello" / "patches" / "fail.patch"
TEST_MATH = (Path(__file__).resolve().parents[2] / "examples" / "hello" / "tests" / "test_math.c").read_text()


PLAN_HEAD = """version: 1
builds:
  - name: x86_64
    command: make O="$LABGATE_BUILD" -j2
    artifacts: [tests/test_*]
tests:
  - name: unit
    build: x86_64
    device: {arch: x86_64, platform: qemu}
    commands:
"""


def _commit(repo: Path, files: dict[str, str], message: str) -> None:
    for path, text in files.items():
        (repo / path).write_text(text)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=m", "-c", "user.email=m@m", "commit", "-qm", message],
                   check=True)  # fmt: skip


def test_vertical_tab_lines_cannot_turn_a_failing_change_into_a_pass(attack_lab: AttackLab) -> None:
    """The issue's attack: fail.patch plus a test binary printing `\\vok 1 math\\vok 2 strings\\n`."""
    repo = attack_lab.repo()
    forged = TEST_MATH.replace("int main(void)\n{\n", 'int main(void)\n{\n\tprintf("\\vok 1 math\\vok 2 strings\\n'
                               '\\f\\x1c\\x85ok 3 skip\\n");\n', 1)  # fmt: skip
    assert forged != TEST_MATH
    patch = attack_lab.patch(repo, {"tests/test_math.c": forged})
    tried = attack_lab.try_(repo, FAIL_PATCH, patch)
    assert tried.returncode == 1, tried.output
    assert "not ok math.mul" in tried.output and "expected 42" in tried.output


def test_output_that_breaks_the_parser_cannot_turn_a_failure_into_an_outage(attack_lab: AttackLab) -> None:
    """A 5000-digit test number and a megabyte line once raised in the parser: infra-error, a neutral check."""
    repo = attack_lab.repo()
    noise = ('\tprintf("ok %s warmup\\n", "' + "9" * 5000 + '");\n'
             '\tfor (int i = 0; i < 200000; i++) putchar(32);\n\tprintf("x\\n");\n')  # fmt: skip
    noisy = TEST_MATH.replace("int main(void)\n{\n", "int main(void)\n{\n" + noise, 1)
    assert noisy != TEST_MATH
    tried = attack_lab.try_(repo, FAIL_PATCH, attack_lab.patch(repo, {"tests/test_math.c": noisy}))
    assert tried.returncode == 1, tried.output
    assert "not ok math.mul" in tried.output
    test_job = [j for j in attack_lab.view(tried.pipeline_id).jobs if j.kind == "test"][0]
    assert test_job.result == "fail" and test_job.error_code is None


def test_console_port_forgery_and_later_commands_are_out_of_reach(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    plan = PLAN_HEAD + """      - name: forge
        run: |
          printf 'ok 1 forge\\nok 2 daemon\\nok 3 strings\\n# labgate: end\\n' > /dev/console
          printf 'ok 1 forge\\n# labgate: end\\n' > /dev/ttyS1
          printf '<0>ok 1 forge\\n' > /dev/kmsg
          cp /bin/busybox ./tests/test_strings; echo 'exit 0' > ./tests/test_strings
          (setsid sh -c 'while :; do sleep 0.2; done' &)
          sleep 0.5; id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
          exit 1
      - name: daemon
        run: if ps | grep -q '[s]leep 0.2'; then echo DAEMON-ALIVE; exit 1; fi; echo no daemon left
      - name: strings
        run: ./tests/test_strings
"""
    _commit(repo, {".labgate/plan.yaml": plan}, "plan: forge")
    tried = attack_lab.try_(repo, ref="main")
    assert tried.returncode == 1, tried.output
    log = attack_lab.job_log(tried.pipeline_id, "test")
    view = attack_lab.view(tried.pipeline_id)
    test_job = [j for j in view.jobs if j.kind == "test"][0]
    assert [t.path for t in test_job.failed_tests] == ["forge"], tried.output
    assert test_job.test_counts == {"fail": 1, "pass": 4, "skip": 1}, test_job.test_counts  # strings' own 4 + daemon
    assert "can't create /dev/ttyS1: Permission denied" in log and "can't create /dev/console" in log
    assert "CapEff:\t0000000000000000" in log and "\n    1000\n" in log
    assert "DAEMON-ALIVE" not in log and "no daemon left" in log
    # The runner's real output is on record, after the console's (the forged lines stay there, inert).
    runner_part = log[log.index("# ---- labgate: the runner's port ----") :]
    assert "not ok 1 forge # exit status 1" in runner_part and "ok 3 strings" in runner_part


def test_a_root_command_that_forges_the_runner_port_never_passes(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    plan = PLAN_HEAD + """      - name: math
        run: ./tests/test_math
      - name: rooted
        root: true
        run: |
          printf 'KTAP version 1\\n1..1\\nok 1 math\\n# labgate: end\\n' > /dev/ttyS1
"""
    _commit(repo, {".labgate/plan.yaml": plan}, "plan: root forgery")
    tried = attack_lab.try_(repo, ref="main")
    # A fail: the change's own root command broke the framing; incomplete (ktap-framing) would be retried and
    # counted against the lab, never the change.
    assert tried.returncode == 1, tried.output
    view = attack_lab.view(tried.pipeline_id)
    test_job = [j for j in view.jobs if j.kind == "test"][0]
    assert test_job.result == "fail" and test_job.error_code is None, test_job
    assert "results refused" in (test_job.error_message or "")
