"""Drift verdicts per column, from Evidently's snapshot."""

from pipelines.stages.drift import column_results


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


def test_a_test_the_spec_chose_is_judged_by_its_kind_not_its_name() -> None:
    """Tests the spec names keep their own names ("mannw", "psi"): which of them are p-values is known."""

    def verdict(method: str, value: float) -> bool:
        config = {"type": "evidently:metric_v2:ValueDrift", "column": "a", "method": method, "threshold": 0.05}
        return column_results({"metrics": [{"config": config, "value": value}]})[0].drifted

    assert verdict("mannw", 0.001) and not verdict("mannw", 0.5)  # p-values: drift below
    assert verdict("psi", 0.5) and not verdict("psi", 0.001)  # distances: drift at or above
