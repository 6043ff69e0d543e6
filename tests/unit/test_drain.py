"""The graceful-drain decision (farm/core/drain.py): finish the item, or hand it back."""

import pytest

from farm.core.drain import AFTER_DENOISE_FRACTION, NodeDrain, decide


def test_an_item_that_fits_before_the_deadline_finishes():
    # 10 of 50 steps in 10 s: 40 s of denoise left, 5 s after it; 60 s left, 5 s margin.
    verdict = decide(elapsed_s=10, steps_done=10, steps_total=50, after_denoise_s=5, seconds_left=60, margin_s=5)
    assert verdict.finish and verdict.remaining_s == pytest.approx(45)


def test_an_item_that_would_not_fit_is_handed_back():
    verdict = decide(elapsed_s=10, steps_done=10, steps_total=50, after_denoise_s=5, seconds_left=48, margin_s=5)
    assert not verdict.finish and verdict.remaining_s == pytest.approx(45) and "48.0 s" in verdict.why


def test_the_margin_counts():
    args = dict(elapsed_s=1, steps_done=1, steps_total=10, after_denoise_s=1, seconds_left=20)
    assert decide(**args, margin_s=10).finish  # 10 s left to do, 20 - 10 to spend
    assert not decide(**args, margin_s=10.5).finish


def test_without_a_measured_post_denoise_time_a_fraction_of_the_denoise_is_assumed():
    # 2 s a step, 10 steps: 20 s of denoise; 5 done, so 10 s left plus the fraction of 20 s.
    verdict = decide(elapsed_s=10, steps_done=5, steps_total=10, after_denoise_s=None, seconds_left=100, margin_s=0)
    assert verdict.remaining_s == pytest.approx(10 + AFTER_DENOISE_FRACTION * 20)


def test_nothing_done_yet_is_handed_back_and_no_deadline_finishes():
    assert not decide(elapsed_s=0, steps_done=0, steps_total=50, seconds_left=1e6).finish
    assert decide(elapsed_s=100, steps_done=1, steps_total=1000, seconds_left=None).finish


def test_a_deadline_already_past_hands_back():
    assert not decide(elapsed_s=1, steps_done=9, steps_total=10, after_denoise_s=0, seconds_left=-3, margin_s=0).finish


def test_ray_deadlines_are_epoch_milliseconds_and_zero_means_none():
    assert NodeDrain.from_ray(1_700_000_000_500).deadline_s == pytest.approx(1_700_000_000.5)
    assert NodeDrain.from_ray(0).deadline_s is None and NodeDrain.from_ray(0).seconds_left(5.0) is None
    assert NodeDrain(100.0).seconds_left(90.0) == pytest.approx(10.0)
