"""core.perf: metric lines read from hostile output without a blow-up, the exact one-sided U test checked
against brute force, and the regression rule's false-alarm rate and power in seeded simulated trials."""

from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from bot.core import perf
from bot.core.perf import (
    MAX_METRICS,
    Metric,
    compare_metric,
    mann_whitney_one_sided,
    parse_metrics,
)

ALPHA, MIN_EFFECT = 0.02, 0.05


# --- parse_metrics ---


def test_metric_lines_are_read_with_name_value_unit_and_direction() -> None:
    text = (
        "KTAP version 1\n"
        "    # metric: sched.wakeup_ns=123.5 ns lower is better\n"
        "# metric: net.bw=9.5e2 MB/s higher is better\n"
        "# metric: ratio=-0.25 [higher is better]\n"
        "# # metric: cache:hits=7 %\r\n"
        "# metric: plain=3\n"
        "ok 1 test\n"
    )
    assert parse_metrics(text) == [
        Metric("sched.wakeup_ns", 123.5, "ns", "lower"),
        Metric("net.bw", 950.0, "MB/s", "higher"),
        Metric("ratio", -0.25, "", "higher"),
        Metric("cache:hits", 7.0, "%", "lower"),
        Metric("plain", 3.0, "", "lower"),
    ]


def test_a_name_reported_twice_keeps_its_first_value() -> None:
    assert parse_metrics("# metric: a=1 ns\n# metric: a=2 ns\n") == [Metric("a", 1.0, "ns", "lower")]


@pytest.mark.parametrize(
    "line",
    [
        "# metric: x=nan ns",
        "# metric: x=inf ns",
        "# metric: x=-Infinity",
        "# metric: x=1e999",  # overflows to inf
        "# metric: x=" + "9" * 5000,
        "# metric: x=1_000",  # float() would take it; the format does not
        "# metric: x=١٢",  # Arabic-Indic digits: float() would take them too
        "# metric: ẋ=1",
        "# metric: x=1 nś",
        "# metric: " + "n" * 101 + "=1",
        "# metric: x=1 " + "u" * 17,
        "# metric: x=",
        "# metric: =1",
        "metric: x=1",  # not a diagnostic line
        "ok 1 # metric: x=1",
        "# metric: x=1 ns sideways is better",
        "# metric: x=1\x00",
    ],
)
def test_a_malformed_or_non_finite_metric_line_is_dropped(line: str) -> None:
    assert parse_metrics(line + "\n# metric: ok=1\n") == [Metric("ok", 1.0, "", "lower")]


def test_a_flood_of_metric_lines_keeps_only_the_cap() -> None:
    text = "".join(f"# metric: m{i}=1 ns\n" for i in range(100_000))
    metrics = parse_metrics(text)
    assert len(metrics) == MAX_METRICS and metrics[0].name == "m0"


def _growth(small: str, large: str) -> float:
    """How much longer large takes than small: CPU time (other helpers share the cores), best of 5."""
    best = {small: math.inf, large: math.inf}
    parse_metrics(small)  # warm the pattern
    for _ in range(5):
        for text in (small, large):
            start = time.process_time()
            parse_metrics(text)
            best[text] = min(best[text], time.process_time() - start)
    return best[large] / max(best[small], 1e-6)


@pytest.mark.parametrize(
    "line",
    [
        "# metric: x=" + "1" * 50,  # a value the pattern must give up on, on every line
        "# metric: x=1" + " " * 40 + "z",  # spaces the optional parts could fight over
        "# # # # # # # # # # # metric: x=1",
        "é" * 60,
    ],
)
def test_hostile_output_is_read_in_linear_time(line: str) -> None:
    growth = _growth((line + "\n") * 1_000, (line + "\n") * 16_000)
    assert growth < 64, growth  # 16x the input: linear is ~16, quadratic would be ~256


def test_a_huge_single_line_is_skipped_in_linear_time() -> None:
    small, large = "# metric: x=" + "9" * 250_000, "# metric: x=" + "9" * 4_000_000
    assert parse_metrics(large + "\n# metric: ok=1") == [Metric("ok", 1.0, "", "lower")]
    assert _growth(small, large) < 64


def test_parse_metrics_never_raises_on_random_bytes() -> None:
    rng = random.Random(7)
    alphabet = "# metric:=.-+eE0123456789 nsMB/%[]()higherlowisbt\t\r\né\x00"
    for _ in range(2_000):
        line = "# metric: " + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for m in parse_metrics(line):
            assert math.isfinite(m.value) and m.better in ("higher", "lower")


# --- the exact one-sided Mann-Whitney U test ---


def _brute_force(x: list[float], y: list[float]) -> float:
    def u(a: list[float], b: list[float]) -> float:
        return sum((p > q) + 0.5 * (p == q) for p in a for q in b)

    pooled, observed = x + y, u(x, y)
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    hits = 0
    for chosen in splits:
        xs = [pooled[i] for i in chosen]
        ys = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += u(xs, ys) >= observed - 1e-9
    return hits / len(splits)


def test_the_u_test_matches_brute_force_enumeration_with_ties() -> None:
    rng = random.Random(3)
    for _ in range(150):
        x = [float(rng.choice([1, 2, 3, 3, 4])) for _ in range(rng.randint(1, 6))]
        y = [float(rng.choice([1, 2, 3, 4, 5])) for _ in range(rng.randint(1, 6))]
        assert mann_whitney_one_sided(x, y) == pytest.approx(_brute_force(x, y), abs=1e-12), (x, y)


def test_five_runs_each_fully_separated_give_the_smallest_p_1_in_252() -> None:
    assert mann_whitney_one_sided([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1 / 252)
    assert mann_whitney_one_sided([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == 1.0
    assert mann_whitney_one_sided([1, 1, 1], [1, 1, 1]) == 1.0  # all tied: no evidence either way
    assert mann_whitney_one_sided([], [1.0]) == 1.0


def test_large_samples_use_a_normal_approximation_close_to_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    for shift in (0.0, 0.3, 0.8):
        x = [round(rng.gauss(shift, 1), 1) for _ in range(20)]  # rounded: ties too
        y = [round(rng.gauss(0, 1), 1) for _ in range(20)]
        exact = mann_whitney_one_sided(x, y)
        with monkeypatch.context() as patched:
            patched.setattr(perf, "EXACT_MAX_RUNS", 0)
            approx = mann_whitney_one_sided(x, y)
        assert approx == pytest.approx(exact, abs=0.01), (shift, exact, approx)
    start = time.process_time()
    mann_whitney_one_sided(list(range(20)), [v + 0.5 for v in range(20)])  # the exact path at its largest
    assert time.process_time() - start < 2


def test_the_u_test_refuses_non_finite_values() -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        mann_whitney_one_sided([math.nan], [1.0])


# --- compare_metric ---


def test_a_slowdown_beyond_both_thresholds_is_a_regression_with_its_numbers() -> None:
    c = compare_metric("sched.wakeup_ns", "ns", "lower", [114, 115, 113, 116, 114], [100, 101, 99, 100, 102],
                       alpha=ALPHA, min_effect=MIN_EFFECT)  # fmt: skip
    assert c.regression and c.text == "sched.wakeup_ns +14% (p=0.004, 5 runs each)"
    assert c.change_pct == pytest.approx(14.0) and c.p_value == pytest.approx(1 / 252)


def test_higher_is_better_turns_the_direction_round() -> None:
    drop = compare_metric("net.bw", "MB/s", "higher", [90, 91, 89, 90, 92], [100, 101, 99, 100, 102],
                          alpha=ALPHA, min_effect=MIN_EFFECT)  # fmt: skip
    assert drop.regression and drop.text.startswith("net.bw -10%")
    gain = compare_metric("net.bw", "MB/s", "higher", [110, 111, 109, 110, 112], [100, 101, 99, 100, 102],
                          alpha=ALPHA, min_effect=MIN_EFFECT)  # fmt: skip
    assert not gain.regression and gain.p_value == 1.0


def test_a_significant_but_small_move_is_not_a_regression() -> None:
    c = compare_metric("x", "ns", "lower", [101, 101.1, 101.2, 101.3, 101.4], [100, 100.1, 100.2, 100.3, 100.4],
                       alpha=ALPHA, min_effect=MIN_EFFECT)  # fmt: skip
    assert c.p_value <= ALPHA and not c.regression and c.text.startswith("x +1.0%")


def test_a_big_move_without_significance_is_not_a_regression() -> None:
    c = compare_metric("x", "ns", "lower", [200, 100], [100, 101], alpha=ALPHA, min_effect=MIN_EFFECT)
    assert c.p_value > ALPHA and not c.regression
    assert c.text.endswith("2 runs each)")


def test_unequal_run_counts_and_a_zero_base_are_said_plainly() -> None:
    c = compare_metric("x", "", "lower", [1, 1, 1, 1, 1], [0, 0, 0, 0], alpha=ALPHA, min_effect=MIN_EFFECT)
    assert c.change_pct is None and c.regression
    assert c.text == "x 0 -> 1 (p=0.0079, 5 runs with the change, 4 on base)"
    empty = compare_metric("x", "", "lower", [], [1.0], alpha=ALPHA, min_effect=MIN_EFFECT)
    assert not empty.regression and "no runs" in empty.text


def test_bad_input_names_the_metric() -> None:
    with pytest.raises(ValueError, match="x: better is 'sideways'"):
        compare_metric("x", "", "sideways", [1.0], [1.0], alpha=ALPHA, min_effect=MIN_EFFECT)
    with pytest.raises(ValueError, match="x: a value is not a finite number"):
        compare_metric("x", "", "lower", [math.inf], [1.0], alpha=ALPHA, min_effect=MIN_EFFECT)


# --- simulated trials: false alarms under noise only, and power against a 10% slowdown ---

TRIALS, RUNS = 1_000, 5


def _margin(rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / TRIALS)


def _regressions(seed: int, change_mean: float, change_sd: float, min_effect: float) -> float:
    """The share of trials called a regression: 5 runs each, the base drawn from N(100, 2)."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(TRIALS):
        change = [rng.gauss(change_mean, change_sd) for _ in range(RUNS)]
        base = [rng.gauss(100, 2) for _ in range(RUNS)]
        hits += compare_metric("m", "ns", "lower", change, base, alpha=ALPHA, min_effect=min_effect).regression
    return hits / TRIALS


def test_noise_alone_is_called_a_regression_at_most_alpha_of_the_time() -> None:
    # the test's exact level with 5 runs each: the share of the 252 rank splits whose p is <= alpha
    splits = list(itertools.combinations(range(10), RUNS))
    level = sum(
        mann_whitney_one_sided(list(chosen), [r for r in range(10) if r not in chosen]) <= ALPHA for chosen in splits
    ) / len(splits)
    assert level == pytest.approx(4 / 252) and level <= ALPHA
    # min_effect 0: the U test alone decides, the worst case for false alarms
    assert _regressions(20261207, 100, 2, min_effect=0) <= level + _margin(level)
    assert _regressions(20261208, 100, 2, min_effect=MIN_EFFECT) <= level + _margin(level)


def test_a_ten_percent_slowdown_under_two_percent_noise_is_caught() -> None:
    assert _regressions(20261209, 110, 2.2, min_effect=MIN_EFFECT) >= 0.95


@pytest.mark.parametrize(
    ("change", "base"),
    [
        ([1e308] * 5, [-1e308] * 5),
        ([1e308, 1e308], [1e308, 1e308]),
        ([1e300] * 5, [1e-300] * 5),
        ([-1e-300] * 5, [1e-300] * 5),
    ],
)
def test_extreme_values_give_finite_figures_and_a_verdict(change: list[float], base: list[float]) -> None:
    c = compare_metric("x", "", "lower", change, base, alpha=ALPHA, min_effect=MIN_EFFECT)
    assert c.change_pct is None or math.isfinite(c.change_pct)
    assert "nan" not in c.text and "inf" not in c.text and 0 <= c.p_value <= 1
    assert c.regression == (change[0] > base[0] and len(change) == 5)
