"""The drift policy's decision: N drifted windows of the last M since the last retraining, and a cooldown."""

from datetime import UTC, datetime, timedelta

from pipelines.core.spec import DriftSpec
from pipelines.stages.drift_policy import Window, decide

POLICY = DriftSpec(windows=4, drifted_windows=2, cooldown_hours=24)
T0 = datetime(2026, 1, 3, 12, tzinfo=UTC)


def windows(*drifted: bool) -> list[Window]:
    """Oldest first in the arguments; returned newest first, as the policy reads them."""
    made = [
        Window(T0 + timedelta(hours=i), flag, ["plan"] if flag else [], f"report-{i}") for i, flag in enumerate(drifted)
    ]
    return list(reversed(made))


def test_clean_windows_request_nothing() -> None:
    verdict = decide(POLICY, windows(False, False, False, False, False), None, None)
    assert not verdict.retrain and verdict.windows_drifted == 0 and "no persistent drift" in verdict.reason


def test_n_of_the_last_m_windows_requests_a_retraining() -> None:
    assert not decide(POLICY, windows(False, False, False, True), None, None).retrain  # one is noise
    verdict = decide(POLICY, windows(False, True, False, True), None, None)
    assert verdict.retrain and verdict.windows_drifted == 2 and verdict.windows_considered == 4
    assert verdict.report_path == "report-3" and verdict.drifted_columns == ["plan"]
    # Drift older than the last M windows no longer counts.
    assert not decide(POLICY, windows(True, True, False, False, False, False), None, None).retrain


def test_windows_before_the_last_retraining_do_not_count() -> None:
    retrained = T0 + timedelta(hours=1, minutes=30)  # after windows 0 and 1
    assert decide(POLICY, windows(True, True, False, True), retrained - timedelta(days=2), None).retrain is not False
    verdict = decide(
        DriftSpec(windows=4, drifted_windows=2, cooldown_hours=0), windows(True, True, False, True), retrained, None
    )
    assert not verdict.retrain and verdict.windows_considered == 2 and verdict.windows_drifted == 1


def test_the_cooldown_holds_back_a_second_retraining() -> None:
    fired_at = T0 + timedelta(hours=1)
    verdict = decide(POLICY, windows(True, True, True, True), None, fired_at)
    assert not verdict.retrain and verdict.reason.startswith("cooldown until 2026-01-04T13:00:00+00:00")
    later = [Window(fired_at + timedelta(hours=24 + i), True, ["plan"], "r") for i in (2, 1)]
    assert decide(POLICY, later, None, fired_at).retrain  # after the cooldown, persistent drift fires again


def test_a_rerun_of_the_same_window_does_not_request_twice() -> None:
    ws = windows(False, True, False, True)
    verdict = decide(POLICY, ws, None, last_request=ws[0].interval_end)
    assert not verdict.retrain and "already requested for this window" in verdict.reason
