"""core.triage's rendering: what a push's comparison says, in markdown a test's name cannot leave."""

from __future__ import annotations

from bot.core.triage import Comparison, render_comparison


def test_a_test_name_cannot_break_out_of_its_code_span() -> None:
    hostile = "a` ![t](https://attacker.example/x) `b"
    text = render_comparison(Comparison(new=(hostile,), pre_existing=(), fixed=()), "`abc`")
    line = next(line for line in text.splitlines() if "attacker" in line)
    assert line.startswith("- ``") and line.endswith("``"), line
