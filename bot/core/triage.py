"""Results against a baseline: which failures are new, which were there before, which are fixed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.core.render import inline_code

FAILING = ("fail", "incomplete")


@dataclass(frozen=True)
class Comparison:
    new: tuple[str, ...]  # failing now, not failing in the baseline (or absent from it)
    pre_existing: tuple[str, ...]  # failing in both
    fixed: tuple[str, ...]  # failing in the baseline, passing now


def compare_results(current: Mapping[str, str], baseline: Mapping[str, str]) -> Comparison:
    """Compare test statuses by path (`job/test.path`); order follows the current run."""
    new = tuple(p for p, s in current.items() if s in FAILING and baseline.get(p) not in FAILING)
    pre = tuple(p for p, s in current.items() if s in FAILING and baseline.get(p) in FAILING)
    fixed = tuple(p for p, s in baseline.items() if s in FAILING and current.get(p) == "pass")
    return Comparison(new, pre, fixed)


def render_comparison(comparison: Comparison, baseline_label: str) -> str:
    """Markdown, new failures first: what a maintainer must look at after a push."""
    lines = []
    if comparison.new:
        lines += [f"**New failures since {baseline_label}:**", *[f"- {inline_code(p)}" for p in comparison.new], ""]
    else:
        lines += [f"No new failures since {baseline_label}.", ""]
    if comparison.pre_existing:
        lines += ["Failing before too:", *[f"- {inline_code(p)}" for p in comparison.pre_existing], ""]
    if comparison.fixed:
        lines += ["Fixed:", *[f"- {inline_code(p)}" for p in comparison.fixed], ""]
    return "\n".join(lines).strip()
