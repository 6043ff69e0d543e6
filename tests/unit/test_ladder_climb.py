"""`climb`, the one walk of the degrade ladder, and the typed contracts around it."""

import pickle

import pytest

from farm.core.contracts import Escalation, ItemOutcome, WorkerReply
from farm.core.ladder import OomRecord, RenderSettings, blocked_on, climb

START = RenderSettings(512, "1:1", 16)


def test_settings_that_fit_and_are_not_blocked_are_kept():
    result = climb(START, mode="allowed", fits=lambda s: True)
    assert result.settings == START and result.degradations == () and not (result.escalate or result.exhausted)


def test_blocked_rungs_are_skipped_on_their_tier_only():
    ooms = [OomRecord("denoise", "12g", START, "oom"), OomRecord("denoise", "12g", RenderSettings(512, "1:1", 16, 1), "oom"),
            OomRecord("denoise", "24g", RenderSettings(512, "1:1", 16, 2), "oom")]
    result = climb(START, mode="allowed", blocked=blocked_on("12g", ooms), why=lambda s, b: f"blocked={b}")
    assert result.settings == RenderSettings(512, "1:1", 16, 2)
    assert [d.step for d in result.degradations] == ["memory_savers", "memory_savers"]
    assert all(d.why == "blocked=True" for d in result.degradations)
    assert climb(START, mode="allowed", blocked=blocked_on("80g", ooms)).settings == START


def test_a_bigger_tier_ends_the_climb_with_an_escalation_once_the_savers_are_used():
    blocked = {RenderSettings(512, "1:1", 16, level) for level in range(4)}
    result = climb(START, mode="allowed", blocked=blocked, bigger_tier_available=True)
    assert result.escalate and result.settings.saver_level == 3 and len(result.degradations) == 3
    shrunk = climb(START, mode="allowed", blocked=blocked)
    assert shrunk.degradations[-1].step == "resolution" and shrunk.settings.resolution == 256


def test_a_mode_that_refuses_the_ladder_is_exhausted_at_once():
    result = climb(START, mode="never", blocked={START})
    assert result.exhausted and result.settings == START and result.degradations == ()


def test_fitting_a_budget_merges_consecutive_saver_levels_into_one_record():
    result = climb(START, mode="memory_savers", fits=lambda s: s.saver_level >= 3, merge_savers=True)
    assert result.settings.saver_level == 3 and len(result.degradations) == 1
    assert result.degradations[0].before == [] and "cpu_offload" in result.degradations[0].after


def test_outcomes_are_final_states_and_a_failure_names_its_reason():
    with pytest.raises(ValueError, match="needs a FailureReason"):
        ItemOutcome(item_id="a", status="failed")
    with pytest.raises(ValueError, match="one of succeeded, skipped, failed"):
        ItemOutcome(item_id="a", status="running")
    with pytest.raises(ValueError):
        ItemOutcome.failure("a", "not_a_reason", "x")
    assert ItemOutcome.failure("a", "oom", "x").reason == "oom"


def test_a_reply_survives_pickling_as_ray_sends_it():
    escalation = Escalation("a", "j", "oom", START, ooms=(OomRecord("denoise", "12g", START, "oom"),))
    reply = WorkerReply("12g-0", 3, (ItemOutcome(item_id="b", status="succeeded"),), escalation, (("j", "c"),))
    back = pickle.loads(pickle.dumps(reply))
    assert back == reply and back.escalation.ooms[0].settings == START
