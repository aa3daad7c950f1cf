"""core.triage's decision rule in seeded simulated trials, driven as the runner drives it (runs_wanted, then
triage): a test no worse with the change is called `new` no more often than false_new_bound allows, and real
regressions are called `new` at the exact rate new_rate computes."""

from __future__ import annotations

import math
import random

import pytest

from bot.core.triage import Evidence, TriageRule, false_new_bound, false_new_rate, new_rate, runs_wanted, triage

RULE = TriageRule()  # k=3, alpha=0.02, history=20
TRIALS = 1_000


def _run(rng: random.Random, p: float, board_faults: float) -> str:
    if rng.random() < board_faults:
        return "incomplete"
    return "fail" if rng.random() < p else "pass"


def _trial(rng: random.Random, change_p: float, base_p: float, history_runs: int, board_faults: float) -> str:
    """One test of one change: its base history, its first run, the runs triage asks for, then the verdict."""
    history = tuple(_run(rng, base_p, 0) for _ in range(history_runs))
    ev = Evidence("kselftest/t", "qemu-x86_64", (_run(rng, change_p, board_faults),), history=history)
    for _ in range(100):  # the runner's loop; a cap it never meets here
        more_change, more_base = runs_wanted(ev, RULE)
        if (more_change, more_base) == (0, 0):
            break
        change = ev.change + tuple(_run(rng, change_p, board_faults) for _ in range(more_change))
        base = ev.base + tuple(_run(rng, base_p, board_faults) for _ in range(more_base))
        ev = Evidence(ev.path, ev.device_class, change, base, history)
    else:
        raise AssertionError(f"runs_wanted never settled: {ev}")
    return triage(ev, RULE).verdict


def _new_rate(seed: int, change_p: float, base_p: float, history_runs: int, board_faults: float = 0.0) -> float:
    rng = random.Random(seed)
    return sum(_trial(rng, change_p, base_p, history_runs, board_faults) == "new" for _ in range(TRIALS)) / TRIALS


def _sigma(rate: float) -> float:
    return math.sqrt(rate * (1 - rate) / TRIALS)


@pytest.mark.parametrize("history_runs", [0, 20])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_no_regression_is_called_new_within_the_stated_bound(p: float, history_runs: int) -> None:
    bound = false_new_bound(RULE, history_runs)
    observed = _new_rate(int(p * 1000) + history_runs, p, p, history_runs)
    assert observed <= bound + 3 * _sigma(bound), (observed, bound)
    # and the simulation agrees with the exact figure for this p (a floor of 2 trials for rates near 0)
    exact = false_new_rate(RULE, p, history_runs)
    assert abs(observed - exact) <= 3 * _sigma(exact) + 2 / TRIALS, (observed, exact)


@pytest.mark.parametrize("history_runs", [0, 20])
def test_board_faults_do_not_raise_the_false_new_rate(history_runs: int) -> None:
    """An incomplete run is no evidence and is run again: 20% board faults leave the rate where it was."""
    bound = false_new_bound(RULE, history_runs)
    assert _new_rate(99 + history_runs, 0.5, 0.5, history_runs, board_faults=0.2) <= bound + 3 * _sigma(bound)


@pytest.mark.parametrize(
    ("change_p", "history_runs", "stated"),
    [
        (1.0, 0, 1.0),  # always fails with the change: 4/4 against 0/4, p=1/70
        (1.0, 20, 1.0),
        (0.5, 0, 1 / 16),  # fails half the time: only 4 of 4 runs failing is `new` without history
        (0.5, 20, 7 / 16),  # with 20 clean history runs, 2 of 4 is enough (p=1/63)
    ],
)
def test_real_regressions_are_caught_at_the_stated_rate(change_p: float, history_runs: int, stated: float) -> None:
    assert new_rate(RULE, change_p, 0.0, history_runs) == pytest.approx(stated)
    observed = _new_rate(7 + history_runs, change_p, 0.0, history_runs)
    assert abs(observed - stated) <= 3 * _sigma(stated) + 1 / TRIALS, (observed, stated)
