"""Liveness and readiness rules, and the pause state (pure, with explicit times)."""

from __future__ import annotations

from consumer.engine.health import Health, PauseState


def test_live_while_the_loop_turns_and_batches_finish() -> None:
    h = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    assert h.live(0.0) == (True, "starting")
    h.polled(0.0, pending=True, paused=False)
    h.progressed(10.0)
    h.polled(500.0, pending=True, paused=False)
    assert h.live(520.0)[0]


def test_a_stalled_poll_loop_fails_liveness() -> None:
    h = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    h.polled(0.0, pending=False, paused=False)
    ok, why = h.live(61.0)
    assert not ok
    assert "poll loop stalled" in why


def test_no_progress_with_pending_work_fails_but_a_pause_or_idleness_does_not() -> None:
    h = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    h.polled(0.0, pending=True, paused=False)
    for t in range(30, 630, 30):
        h.polled(float(t), pending=True, paused=False)
    ok, why = h.live(630.0)
    assert not ok
    assert "no batch finished" in why
    paused = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    idle = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    for t in range(0, 630, 30):
        paused.polled(float(t), pending=True, paused=True)
        idle.polled(float(t), pending=False, paused=False)
    assert paused.live(630.0)[0]
    assert idle.live(630.0)[0]


def test_commits_failing_for_too_long_fail_liveness_and_recover() -> None:
    h = Health(poll_stall_seconds=60, progress_stall_seconds=600)
    h.commit_failed(0.0)
    h.commit_failed(30.0)  # the first failure time is kept
    h.polled(61.0, pending=False, paused=False)
    ok, why = h.live(61.0)
    assert not ok
    assert "commits failing" in why
    h.commit_succeeded()
    assert h.live(61.0)[0]


def test_ready_needs_salesforce_and_the_group() -> None:
    h = Health()
    assert h.ready() == (False, "salesforce authentication pending or failing")
    h.salesforce_ok = True
    assert h.ready() == (False, "not yet in the consumer group")
    h.joined = True
    assert h.ready() == (True, "ok")


def test_pause_state_is_extended_never_shortened() -> None:
    p = PauseState()
    assert not p.active(0.0)
    assert p.pause("daily_limit", 100.0) is True
    assert p.pause("api_budget", 50.0) is False  # shorter: ignored
    assert (p.reason, p.until) == ("daily_limit", 100.0)
    assert p.pause("unavailable", 150.0) is False
    assert p.reason == "unavailable"
    assert p.active(149.0)
    assert not p.active(150.0)
    assert p.remaining(140.0) == 10.0
    assert p.clear() == "unavailable"
    assert p.remaining(140.0) == 0.0
