"""The gate's statistics: weighted metrics match sklearn, and the verdicts follow the evidence."""

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from pipelines.core.spec import GateSpec
from pipelines.stages.gate import bootstrap_improvement, bounded_holdout, judge, judge_replay, weighted_metric

RNG = np.random.default_rng(42)
N = 4000
LABELS = RNG.integers(0, 2, N).astype(float)
SIGNAL = LABELS * 1.0 + RNG.normal(0, 1, N)


def scores(signal: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(signal + rng.normal(0, noise, len(signal)))))


def frame(plan: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame({"y": LABELS, "plan": plan if plan is not None else RNG.choice(["a", "b"], N)})


@pytest.mark.parametrize("metric", ["auc", "logloss", "brier", "rmse"])
def test_weighted_metric_equals_sklearn_on_the_resampled_rows(metric: str) -> None:
    s = np.round(scores(SIGNAL, 0.5, 1), 2)  # rounding makes ties, which AUC must count half
    counts = np.random.default_rng(3).multinomial(N, np.full(N, 1 / N), size=3)
    for row in counts:
        y, p = np.repeat(LABELS, row), np.repeat(s, row)
        expected = {
            "auc": roc_auc_score(y, p),
            "logloss": log_loss(y, p),
            "brier": brier_score_loss(y, p),
            "rmse": np.sqrt(brier_score_loss(y, p)),
        }[metric]
        assert weighted_metric(metric, LABELS, s, row[None, :])[0] == pytest.approx(expected, rel=1e-9)


def test_first_model_is_promoted_without_a_comparison() -> None:
    verdict = judge(GateSpec(), frame(), "y", scores(SIGNAL, 0.5, 1), None)
    assert verdict.promote and verdict.reason == "no champion yet" and verdict.interval is None  # no floor given


def test_identical_models_tie_and_keep_the_champion() -> None:
    s = scores(SIGNAL, 0.5, 1)
    verdict = judge(GateSpec(), frame(), "y", s, s.copy())
    assert not verdict.promote
    assert verdict.interval is not None and verdict.interval.lower == verdict.interval.upper == 0.0
    assert verdict.reason.startswith("no real improvement")


def test_noise_is_not_an_improvement() -> None:
    # Two models of the same quality: the challenger's point estimate may win, its interval straddles 0.
    challenger, champion = scores(SIGNAL, 0.6, 1), scores(SIGNAL, 0.6, 2)
    verdict = judge(GateSpec(), frame(), "y", challenger, champion)
    assert verdict.interval is not None and verdict.interval.lower < 0 < verdict.interval.upper
    assert not verdict.promote


def test_a_clearly_better_model_is_promoted_in_either_metric_direction() -> None:
    better, worse = scores(SIGNAL, 0.1, 1), scores(SIGNAL, 2.0, 2)
    for metric in ("auc", "logloss"):
        gate = GateSpec(metric=metric)
        promoted = judge(gate, frame(), "y", better, worse)
        assert promoted.promote and promoted.interval is not None and promoted.interval.lower > 0, metric
        assert not judge(gate, frame(), "y", worse, better).promote, metric


def test_min_improvement_raises_the_bar() -> None:
    better, champion = scores(SIGNAL, 0.1, 1), scores(SIGNAL, 0.6, 2)
    interval = bootstrap_improvement("auc", LABELS, better, champion, samples=500, confidence=0.95, seed=0)
    assert interval.lower > 0
    assert judge(GateSpec(min_improvement=interval.lower / 2), frame(), "y", better, champion).promote
    assert not judge(GateSpec(min_improvement=interval.upper), frame(), "y", better, champion).promote


def test_a_regressed_slice_blocks_an_overall_improvement() -> None:
    plan = np.where(np.arange(N) < N // 10, "small", "big")
    champion = scores(SIGNAL, 1.5, 2)
    challenger = scores(SIGNAL, 0.05, 1)
    small = plan == "small"
    challenger[small] = np.random.default_rng(9).random(small.sum())  # useless on a tenth of the rows
    gate = GateSpec(slices=["plan"], slice_tolerance=0.02, min_slice_rows=100)
    verdict = judge(gate, frame(plan), "y", challenger, champion)
    assert not verdict.promote and "plan=small" in verdict.reason
    status = {s.value: s.status for s in verdict.slices}
    assert status == {"small": "regressed", "big": "ok"}
    tiny = judge(gate.model_copy(update={"min_slice_rows": N}), frame(plan), "y", challenger, champion)
    assert {s.status for s in tiny.slices} == {"skipped"}


def test_large_holdouts_are_sampled_reproducibly_and_small_ones_kept_whole() -> None:
    data = frame()
    assert bounded_holdout(data, N, 0) is data
    sample = bounded_holdout(data, 1000, 0)
    assert len(sample) == 1000 and sample.index.is_monotonic_increasing
    assert sample.index.equals(bounded_holdout(data, 1000, 0).index)
    assert not sample.index.equals(bounded_holdout(data, 1000, 1).index)


REG_LABELS = RNG.gamma(2.0, 30.0, N)
CLASSES = 4
CLASS_LABELS = RNG.integers(0, CLASSES, N)


def class_probabilities(noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = np.eye(CLASSES)[CLASS_LABELS] * 2 + rng.normal(0, noise, (N, CLASSES))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_weighted_regression_metrics_equal_sklearn_on_the_resampled_rows(metric: str) -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted = REG_LABELS + np.random.default_rng(5).normal(0, 10, N)
    for row in np.random.default_rng(3).multinomial(N, np.full(N, 1 / N), size=3):
        y, p = np.repeat(REG_LABELS, row), np.repeat(predicted, row)
        expected = {
            "rmse": np.sqrt(mean_squared_error(y, p)),
            "mae": mean_absolute_error(y, p),
            "r2": r2_score(y, p),
        }[metric]
        assert weighted_metric(metric, REG_LABELS, predicted, row[None, :])[0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("metric", ["logloss", "accuracy", "macro_f1"])
def test_weighted_multiclass_metrics_equal_sklearn_on_the_resampled_rows(metric: str) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    probabilities = class_probabilities(1.5, 7)
    for row in np.random.default_rng(3).multinomial(N, np.full(N, 1 / N), size=3):
        y, p = np.repeat(CLASS_LABELS, row), np.repeat(probabilities, row, axis=0)
        expected = {
            "logloss": log_loss(y, p, labels=list(range(CLASSES))),
            "accuracy": accuracy_score(y, p.argmax(axis=1)),
            "macro_f1": f1_score(y, p.argmax(axis=1), average="macro"),
        }[metric]
        weighted = weighted_metric(metric, CLASS_LABELS.astype(float), probabilities, row[None, :])[0]
        assert weighted == pytest.approx(expected, rel=1e-9)


def test_macro_f1_counts_only_classes_seen_in_the_labels_or_predictions_as_sklearn_does() -> None:
    from sklearn.metrics import f1_score

    labels = np.array([0, 0, 1, 1, 2])
    probabilities = np.eye(4)[[0, 1, 1, 1, 3]]  # class 3 predicted but never true; class 2 never predicted
    expected = f1_score(labels, probabilities.argmax(axis=1), average="macro", zero_division=0)
    assert weighted_metric("macro_f1", labels.astype(float), probabilities, np.ones((1, 5)))[0] == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    ("metric", "labels", "better", "worse"),
    [
        ("rmse", REG_LABELS, REG_LABELS + RNG.normal(0, 5, N), REG_LABELS + RNG.normal(0, 20, N)),
        ("r2", REG_LABELS, REG_LABELS + RNG.normal(0, 5, N), REG_LABELS + RNG.normal(0, 20, N)),
        ("mae", REG_LABELS, REG_LABELS + RNG.normal(0, 5, N), REG_LABELS + RNG.normal(0, 20, N)),
        ("logloss", CLASS_LABELS, class_probabilities(0.5, 1), class_probabilities(3.0, 2)),
        ("macro_f1", CLASS_LABELS, class_probabilities(0.5, 1), class_probabilities(3.0, 2)),
    ],
)
def test_each_metric_is_judged_in_its_own_direction(
    metric: str, labels: np.ndarray, better: np.ndarray, worse: np.ndarray
) -> None:
    holdout = pd.DataFrame({"y": labels.astype(float)})
    gate = GateSpec(metric=metric)  # type: ignore[arg-type]
    assert judge(gate, holdout, "y", better, worse).promote
    assert not judge(gate, holdout, "y", worse, better).promote
    tie = judge(gate, holdout, "y", better, better.copy())
    assert not tie.promote and tie.interval is not None and tie.interval.point == 0.0


def test_a_first_model_no_better_than_the_base_rate_is_not_promoted() -> None:
    """The floor (gate.beat_base_rate): a first model must beat its task's trivial model with the
    gate's confidence. A useless score (noise) is kept out; a real one is promoted and says by how much."""
    base_rate = np.full(N, LABELS.mean())
    # Noise: AUC 0.5035 here (seed 5); 1 draw in 40 of such noise clears a 95% bound by chance.
    useless = judge(GateSpec(), frame(), "y", np.random.default_rng(5).random(N), None, base_rate)
    assert not useless.promote and useless.reason.startswith("no better than the base rate: auc improvement")
    assert useless.floor is not None and useless.floor.lower <= 0
    good = scores(SIGNAL, 0.5, 1)
    promoted = judge(GateSpec(), frame(), "y", good, None, base_rate)
    assert promoted.promote and promoted.reason.startswith("no champion yet and beats the base rate")
    assert promoted.floor is not None and promoted.floor.point == pytest.approx(roc_auc_score(LABELS, good) - 0.5)
    # Log loss too: a calibrated base rate beats an overconfident guess.
    overconfident = np.where(np.random.default_rng(8).random(N) < 0.5, 0.99, 0.01)
    assert not judge(GateSpec(metric="logloss"), frame(), "y", overconfident, None, base_rate).promote


def test_the_floor_holds_for_regression_and_multiclass() -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(9)
    y = rng.gamma(2.0, 50.0, N)
    training_mean = np.full(N, y.mean() + 5)  # the training split's mean, a little off the holdout's
    regression = pd.DataFrame({"y": y})
    worse = judge(GateSpec(metric="r2"), regression, "y", y.mean() + rng.normal(0, 60, N), None, training_mean)
    assert not worse.promote and worse.reason.startswith("no better than the base rate: r2")
    fitted = y + rng.normal(0, 20, N)
    better = judge(GateSpec(metric="r2"), regression, "y", fitted, None, training_mean)
    assert better.promote and better.floor is not None
    assert better.floor.point == pytest.approx(r2_score(y, fitted) - r2_score(y, training_mean))

    truth = rng.integers(0, 3, N)
    priors = np.bincount(truth, minlength=3) / N
    multiclass = pd.DataFrame({"y": truth.astype(float)})
    uniform = np.full((N, 3), 1 / 3)
    prior_rows = np.tile(priors, (N, 1))
    assert not judge(GateSpec(metric="logloss"), multiclass, "y", uniform, None, prior_rows).promote
    informed = 0.5 * prior_rows + 0.5 * np.eye(3)[truth]
    assert judge(GateSpec(metric="logloss"), multiclass, "y", informed, None, prior_rows).promote


def cohort_days(days: int, rows_per_day: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a shared signal and each row's cohort (a day) for `days` days."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, days * rows_per_day).astype(float)
    signal = labels + rng.normal(0, 1, len(labels))
    return labels, signal, np.repeat([f"2026-01-{d + 1:02d}" for d in range(days)], rows_per_day)


def test_the_cohort_bootstrap_resamples_whole_days_as_an_independent_count_does() -> None:
    labels, signal, cohorts = cohort_days(6, 100, 7)
    challenger, champion = scores(signal, 0.3, 1), scores(signal, 1.0, 2)
    got = bootstrap_improvement(
        "auc", labels, challenger, champion, samples=200, confidence=0.9, seed=5, groups=cohorts
    )
    # The same draws, counted the slow way: each drawn day's rows repeated, then sklearn's AUC.
    draws = np.random.default_rng(5).multinomial(6, np.full(6, 1 / 6), size=200)
    days = np.unique(cohorts)
    diffs = []
    for draw in draws:
        rows = np.concatenate(
            [np.flatnonzero(cohorts == day) for day, k in zip(days, draw, strict=True) for _ in range(k)]
        )
        diffs.append(roc_auc_score(labels[rows], challenger[rows]) - roc_auc_score(labels[rows], champion[rows]))
    assert (got.lower, got.upper) == pytest.approx((np.percentile(diffs, 5), np.percentile(diffs, 95)), rel=1e-9)
    # One row per group is the row bootstrap, draw for draw.
    by_row = bootstrap_improvement("auc", labels, challenger, champion, samples=200, confidence=0.9, seed=5)
    each_alone = bootstrap_improvement(
        "auc", labels, challenger, champion, samples=200, confidence=0.9, seed=5, groups=np.arange(len(labels))
    )
    assert each_alone == by_row


def test_a_replay_that_wins_every_day_passes_and_one_that_wins_half_the_days_does_not() -> None:
    labels, signal, cohorts = cohort_days(10, 300, 11)
    table = pd.DataFrame({"y": labels})
    gate = GateSpec(bootstrap_samples=500)
    steady = judge_replay(gate, table, "y", scores(signal, 0.2, 1), scores(signal, 1.5, 2), cohorts)
    assert steady.promote and steady.reason.startswith("second hearing: the replay beat the champion")
    assert "of 10 whole cohorts (resampled by cohort)" in steady.reason
    # Much better on five days, much worse on the other five: pooled rows look like a small win, the
    # days say it is luck of which days were drawn.
    good_days = np.isin(cohorts, np.unique(cohorts)[:5])
    mixed = np.where(good_days, scores(signal, 0.1, 3), scores(signal, 2.5, 4))
    middling = scores(signal, 1.2, 5)
    row_wise = bootstrap_improvement("auc", labels, mixed, middling, samples=500, confidence=0.95, seed=0)
    kept = judge_replay(gate, table, "y", mixed, middling, cohorts)
    assert not kept.promote and kept.reason.startswith("no real improvement in the replay")
    assert kept.interval is not None and kept.interval.upper - kept.interval.lower > row_wise.upper - row_wise.lower


def test_a_gate_decision_is_recorded_with_the_fields_of_its_hearing_and_read_back_equal() -> None:
    from pipelines.stages.gate import GateDecision

    common = {
        "model": "m", "challenger_version": "2", "challenger_run_id": "r2", "champion_version": None,
        "metric": "auc", "higher_is_better": True, "mode": "enabled", "gate": {"metric": "auc"},
        "interval": None, "slices": [], "verdict": "promote", "action": "promote", "reason": "no champion yet",
        "dag_id": "m__train", "dag_run_id": "run", "decided_at": "2026-01-03T02:00:00+00:00",
    }  # fmt: skip
    first = GateDecision(**common, holdout={"rows": 10}, base_rate={"baseline": None, "interval": None})
    assert set(first.record()) == set(common) | {"holdout", "base_rate"}  # no second hearing's fields
    assert first.record()["champion_version"] is None  # None that was decided stays on record
    second = GateDecision(**common, hearing="second: the backtest's replay", replay={"cohorts": 7})
    assert set(second.record()) == set(common) | {"hearing", "replay"}
    for decision in (first, second):
        assert GateDecision.model_validate_json(json.dumps(decision.record())) == decision
    with pytest.raises(ValidationError, match="action"):
        GateDecision(**{**common, "action": "maybe"})
