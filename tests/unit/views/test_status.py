"""What `pipelines status` prints about a champion and the backtest rows that count."""

from __future__ import annotations

from typing import Any

from pipelines.views.status import format_status

FLOOR = (
    "no better than the base rate: auc improvement over the base rate -0.0230, 95% CI [-0.0810, +0.0350] "
    "over 740 holdout rows; the lower bound must exceed 0 (gate.beat_base_rate)"
)


def report(champion: str | None, reason: str, backtest: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    model = {
        "model": "flights",
        "task": "binary",
        "champion_version": champion,
        "champion_since": None,
        "challenger_version": "1",
        "champion_holdout": {},
        "since_champion": {
            "since": None,
            "blocked_intervals": 0,
            "latest_blocked": [],
            "drift_windows": 0,
            "drifted_windows": 0,
            "retrain_requests": 0,
            "latest_retrain_request": None,
        },
        "last_gate_decision": {
            "at": "2026-01-03T02:10:00+00:00",
            "challenger_version": "1",
            "champion_version": champion,
            "action": "keep_champion",
            "reason": reason,
        },
        "latest_prediction_as_of": None,
        "predictions_last_24h": 0,
        "labels_last_24h": 0,
        "backtest_metrics": len(backtest or []),
        "latest_backtest": backtest or [],
        "last_quality_report": None,
        "last_validation": None,
        "last_drift_report": None,
    }
    storage = {"tables": "sqlite://", "tables_from": "default", "lake": "file:///lake"}
    return {"home": "/home", "storage": storage, "models": [model], "not_run_here": ["demo_sales"], "spec_errors": []}


def test_no_champion_says_the_first_model_is_no_better_than_the_base_rate() -> None:
    text = format_status(report(None, FLOOR))
    assert f"  no champion: v1 is {FLOOR}" in text.splitlines()


def test_a_kept_challenger_beside_a_champion_is_not_called_championless() -> None:
    assert "no champion" not in format_status(report("2", "no real improvement: auc improvement +0.0100"))
    assert "no champion" not in format_status(report(None, "only 12 holdout rows are newer than ..."))


def test_a_backtest_row_shows_its_coverage_and_when_its_labels_were_known() -> None:
    row = {
        "cohort": "2026-01-03",
        "model_version": "1",
        "scored_by": "logged",
        "n": 604,
        "predictions": 738,
        "complete": False,
        "labels_as_of": "2026-01-04T04:00:00+00:00",
        "auc": 0.61,
        "logloss": 0.5,
        "brier": 0.2,
        "mean_score": 0.3,
        "positives": 160,
    }
    line = next(x for x in format_status(report("1", "no champion yet", [row])).splitlines() if "cohort" in x)
    assert "n=604 of 738 predictions, labels as of 2026-01-04T04:00:00+00:00 (labels still due)" in line
    assert "auc=0.610" in line


def test_the_month_story_names_blocked_days_drift_and_requests() -> None:
    story = report("2", "no real improvement: auc improvement +0.0100")
    model = story["models"][0]
    model["champion_holdout"] = {"auc": 0.707, "logloss": 0.61}
    model["since_champion"] = {
        "since": "2026-02-01T00:00:00+00:00",
        "blocked_intervals": 1,
        "latest_blocked": [
            {"interval": "[2026-02-03T00:00:00+00:00, 2026-02-04T00:00:00+00:00)", "failed": ["temp: 12 rows"]}
        ],
        "drift_windows": 28,
        "drifted_windows": 2,
        "retrain_requests": 0,
        "latest_retrain_request": None,
    }
    lines = format_status(story).splitlines()
    assert "  champion's holdout at training: auc=0.707 logloss=0.610 brier=n/a" in lines
    assert (
        "  since the champion's training data (2026-02-01T00:00:00+00:00): 1 interval(s) still blocked, "
        "2 of 28 drift window(s) drifted, 0 retraining request(s)"
    ) in lines
    assert "    blocked [2026-02-03T00:00:00+00:00, 2026-02-04T00:00:00+00:00): temp: 12 rows" in lines
    assert "not run in this home: demo_sales" in lines
