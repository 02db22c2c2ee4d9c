"""Drift verdicts per column, from Evidently's snapshot."""

from pipelines.drift import column_results


def test_drift_verdicts_follow_the_test_kind() -> None:
    snapshot = {
        "metrics": [
            {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1, "share": 0.5}},
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "a",
                    "method": "K-S p_value",
                    "threshold": 0.05,
                },
                "value": 0.01,
            },
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "b",
                    "method": "K-S p_value",
                    "threshold": 0.05,
                },
                "value": 0.5,
            },
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "c",
                    "method": "Wasserstein distance (normed)",
                    "threshold": 0.1,
                },
                "value": 0.3,
            },
            {
                "config": {
                    "type": "evidently:metric_v2:ValueDrift",
                    "column": "d",
                    "method": "Jensen-Shannon distance",
                    "threshold": 0.1,
                },
                "value": 0.02,
            },
        ]
    }
    assert {c.column: c.drifted for c in column_results(snapshot)} == {"a": True, "b": False, "c": True, "d": False}
