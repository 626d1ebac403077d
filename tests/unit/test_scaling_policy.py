"""From a metric to a task count, on a clock the test holds: steps, clamps, the
scale-down window and the largest step a pass may take."""

from __future__ import annotations

import pytest

from warden.manager.demand import MetricError
from warden.policy import MAX_TASKS, Policy, Window, desired, valid_steps

STEPS = ((0.0, 1), (10.0, 3), (50.0, 6))


def test_steps_clamps_and_an_unbounded_count_refused():
    policy = Policy(steps=STEPS, min_tasks=2)
    assert [policy.wanted(v, STEPS) for v in (-5, 0, 9.9, 10, 49, 50, 1e9)] == [2, 2, 2, 3, 3, 6, 6]
    assert Policy(max_tasks=4).wanted(2.1, ()) == 3
    assert Policy(max_tasks=4).wanted(99, ()) == 4
    with pytest.raises(MetricError):
        Policy().wanted(3, ())


def test_scale_down_waits_for_the_window_and_up_goes_at_once():
    policy, window = Policy(steps=STEPS, scale_down_delay=300), Window()
    assert desired(policy, 6, 1, window, now=0) == 6
    assert desired(policy, 1, 6, window, now=100) == 6, "the window still holds 6"
    # 6 was wanted until the sample at 100: the window reaches past it until 400.
    assert desired(policy, 1, 6, window, now=399) == 6
    assert desired(policy, 1, 6, window, now=400) == 1
    assert desired(Policy(max_step=2), 9, 1, Window(), now=0) == 3
    assert desired(Policy(max_step=2, scale_down_delay=0), 0, 9, Window(), now=0) == 7


def test_passes_further_apart_than_the_window_never_scale_down_at_once():
    policy, window = Policy(scale_down_delay=60), Window()
    desired(policy, 8, 8, window, now=0)
    assert desired(policy, 2, 8, window, now=1000) == 8, "the sample before the window counts"
    assert desired(policy, 2, 8, window, now=1061) == 2


def test_step_tables_are_finite_and_bounded():
    assert valid_steps([[0, 1], [10.5, MAX_TASKS]])
    for bad in ([[0, MAX_TASKS + 1]], [[float("nan"), 1]], [[float("inf"), 1]], [[0, -1]], [[0]], "x",
                [[0, 1.5]], [[True, 1]]):
        assert not valid_steps(bad), bad
