"""The promotion gate's statistics: pure functions over labels and two models' scores.

The challenger is compared with the champion on the same rows. A paired bootstrap (the same
resampled rows for both models) gives a confidence interval of the improvement; promotion needs
its lower bound to beat the spec's `min_improvement`, so a tie or a lucky draw keeps the champion.
Slices listed in the spec may not regress by more than a tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pipelines.core.errors import BadDataError, SpecError
from pipelines.core.spec import GateSpec
from pipelines.core.tasks import METRICS, higher_is_better

# The direction each gate metric improves in (pipelines/core/tasks.py: METRICS).
HIGHER_IS_BETTER = {m.name: higher_is_better(m.name) for m in METRICS.values() if m.gate_for}
# Bootstrap resamples are processed in blocks of at most this many cells (resamples x rows).
_BLOCK_CELLS = 4_000_000
_EPS = 1e-15


class GateDecision(BaseModel):
    """One decision of the gate, as recorded (the challenger's MLflow run, the version's tags, a
    model_events row) and passed between the train and backtest DAGs' tasks. The first hearing (at
    training) carries `holdout` and `base_rate`; the second (the backtest's replay) `hearing` and `replay`."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # records written by later versions still read

    model: str
    challenger_version: str
    challenger_run_id: str
    champion_version: str | None
    metric: str
    higher_is_better: bool
    mode: Literal["enabled", "dry_run", "manual"]
    gate: dict[str, Any]  # the spec's gate settings the decision was made under
    hearing: str | None = None
    holdout: dict[str, Any] | None = None
    base_rate: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None
    interval: dict[str, Any] | None  # the improvement's bootstrap interval; None without a champion
    slices: list[dict[str, Any]]
    verdict: Literal["promote", "keep"]
    action: Literal["promote", "dry_run", "await_approval", "keep_champion"]
    reason: str
    dag_id: str
    dag_run_id: str
    decided_at: str

    def record(self) -> dict[str, Any]:
        """As JSON stores it: the fields this decision was made with (a first hearing has no `replay`)."""
        return self.model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class Interval:
    """The improvement of the challenger over the champion, positive = better in the metric's direction."""

    point: float
    lower: float
    upper: float
    confidence: float
    samples: int


@dataclass(frozen=True)
class SliceCheck:
    column: str
    value: str
    rows: int
    champion: float | None
    challenger: float | None
    regression: float | None  # how much worse the challenger is (positive = worse)
    status: str  # ok | regressed | skipped
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    interval: Interval | None
    slices: list[SliceCheck]
    floor: Interval | None = None  # the candidate's improvement over its task's trivial baseline


def weighted_metric(metric: str, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric under each row of `weights` (resamples x rows of counts); one value per resample.

    `scores` is a probability or a value per row, or (multiclass) a row of class probabilities, whose
    labels are class indices. Integer counts as weights give exactly the metric of the resampled rows.
    """
    weights = np.atleast_2d(weights).astype("float64")
    total = weights.sum(axis=1)
    if metric == "auc":
        return _weighted_auc(labels, scores, weights)
    if metric == "macro_f1":
        return _weighted_macro_f1(labels.astype("int64"), scores.argmax(axis=1), scores.shape[1], weights)
    if metric == "r2":
        squared = weights @ (scores - labels) ** 2
        mean_label = weights @ labels / total
        spread = weights @ labels**2 - total * mean_label**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(spread > 0, 1 - squared / np.where(spread > 0, spread, 1), np.nan)
    mean = weights @ _per_row(metric, labels, scores) / total
    return np.asarray(np.sqrt(mean) if metric == "rmse" else mean)


def _per_row(metric: str, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The row's share of a mean metric (log loss, squared or absolute error, a hit)."""
    if scores.ndim == 2:  # multiclass
        truth = labels.astype("int64")
        if metric == "logloss":
            return np.asarray(-np.log(np.clip(scores[np.arange(len(truth)), truth], _EPS, 1)))
        if metric == "accuracy":
            return np.asarray((scores.argmax(axis=1) == truth).astype("float64"))
    elif metric == "logloss":
        clipped = np.clip(scores, _EPS, 1 - _EPS)
        return np.asarray(-(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    elif metric in ("brier", "rmse"):
        return np.asarray((scores - labels) ** 2)
    elif metric == "mae":
        return np.asarray(np.abs(scores - labels))
    raise SpecError(f"gate metric '{metric}' does not judge these predictions; use one of {sorted(HIGHER_IS_BETTER)}")


def _weighted_macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: int, weights: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes among the labels or predictions of each resample, as scikit-learn's."""
    f1_sum = np.zeros(len(weights))
    present = np.zeros(len(weights))
    for k in range(classes):
        is_true, is_predicted = truth == k, predicted == k
        hits = weights @ (is_true & is_predicted)
        misses = weights @ (is_true ^ is_predicted)  # false positives and false negatives
        seen = hits + misses > 0
        f1_sum += np.where(seen, 2 * hits / np.where(seen, 2 * hits + misses, 1), 0)
        present += seen
    with np.errstate(invalid="ignore", divide="ignore"):
        return f1_sum / present


def _weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC with row weights; tied scores count half, as in sklearn's roc_auc_score."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order].astype("float64")
    w = weights[:, order]
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    positives = np.add.reduceat(w * sorted_labels, group_starts, axis=1)
    negatives = np.add.reduceat(w * (1 - sorted_labels), group_starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((positives * (negatives_below + 0.5 * negatives)).sum(axis=1) / pairs)


def metric_value(metric: str, labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The metric on the rows as they are; None when undefined (AUC of a single class, R2 of a constant label)."""
    if metric == "auc" and len(np.unique(labels)) < 2:
        return None
    value = float(weighted_metric(metric, labels, scores, np.ones((1, len(labels))))[0])
    return None if np.isnan(value) else value


def improvement(metric: str, challenger: float, champion: float) -> float:
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def bootstrap_improvement(
    metric: str,
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> Interval:
    """Percentile interval of the paired improvement over `samples` resamples of the rows, or, with
    `groups` (a cohort per row), of whole groups: rows of one day share its conditions, so resampling
    days is honest about how much the days differ."""
    labels = np.asarray(labels, dtype="float64")
    n = len(labels)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    group_of_row = None if groups is None else np.unique(groups, return_inverse=True)[1]
    units = n if group_of_row is None or n == 0 else int(group_of_row.max()) + 1
    diffs = []
    for done in range(0, samples, block):
        # Each resample draws as many units (rows or groups) as there are, with replacement.
        counts = rng.multinomial(units, np.full(units, 1.0 / units), size=min(block, samples - done))
        if group_of_row is not None:
            counts = counts[:, group_of_row]  # a row weighs as often as its group was drawn
        diffs.append(
            improvement(
                metric,
                weighted_metric(metric, labels, challenger, counts),  # type: ignore[arg-type]
                weighted_metric(metric, labels, champion, counts),  # type: ignore[arg-type]
            )
        )
    values = np.concatenate(diffs)
    values = values[~np.isnan(values)]  # a resample with a single class has no AUC, a constant label no R2
    if len(values) == 0:
        raise BadDataError(f"'{metric}' is undefined on every resample of the holdout (a single class or value?)")
    tail = (1 - confidence) / 2 * 100
    point_challenger, point_champion = metric_value(metric, labels, challenger), metric_value(metric, labels, champion)
    if point_challenger is None or point_champion is None:
        raise BadDataError(f"'{metric}' is undefined on the holdout (a single class?)")
    return Interval(
        point=improvement(metric, point_challenger, point_champion),
        lower=float(np.percentile(values, tail)),
        upper=float(np.percentile(values, 100 - tail)),
        confidence=confidence,
        samples=len(values),
    )


def bounded_holdout(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded uniform sample of at most `max_rows` rows, in the original order.

    The bootstrap costs rows x resamples; fewer rows only widen the interval, so sampling can make
    the gate more cautious, never less (bench/gate_bootstrap.py has the timings).
    """
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index()


def slice_checks(
    gate: GateSpec, frame: pd.DataFrame, label: str, challenger: np.ndarray, champion: np.ndarray
) -> list[SliceCheck]:
    """Per value of each spec'd slice column, how much the challenger regresses against the champion."""
    checks = []
    labels = frame[label].to_numpy(dtype="float64")
    for column in gate.slices:
        values = frame[column].astype("string").fillna("<missing>")
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            rows = int(mask.sum())
            if rows < gate.min_slice_rows:
                checks.append(
                    SliceCheck(
                        column, value, rows, None, None, None, "skipped", f"fewer than {gate.min_slice_rows} rows"
                    )
                )
                continue
            ch = metric_value(gate.metric, labels[mask], challenger[mask])
            champ = metric_value(gate.metric, labels[mask], champion[mask])
            if ch is None or champ is None:
                checks.append(
                    SliceCheck(column, value, rows, None, None, None, "skipped", "undefined: a single class or value")
                )
                continue
            regression = -improvement(gate.metric, ch, champ)
            status = "regressed" if regression > gate.slice_tolerance else "ok"
            checks.append(SliceCheck(column, value, rows, champ, ch, regression, status))
    return checks


def describe(metric: str, interval: Interval, rows: int, over: str = "") -> str:
    return (
        f"{metric} improvement{over} {interval.point:+.4f}, {interval.confidence:.0%} CI "
        f"[{interval.lower:+.4f}, {interval.upper:+.4f}] over {rows} holdout rows"
    )


def judge_replay(
    gate: GateSpec,
    frame: pd.DataFrame,
    label: str,
    challenger: np.ndarray,
    champion: np.ndarray,
    cohorts: np.ndarray,
) -> Verdict:
    """The second hearing of a kept challenger: its replay against the champion's logged scores on the
    same rows of whole cohorts, with a bootstrap over cohorts; the same threshold and slice checks as
    the gate at training."""
    labels = frame[label].to_numpy(dtype="float64")
    interval = bootstrap_improvement(
        gate.metric,
        labels,
        challenger,
        champion,
        samples=gate.bootstrap_samples,
        confidence=gate.confidence,
        seed=gate.seed,
        groups=cohorts,
    )
    days = len(np.unique(cohorts))
    summary = (
        f"{gate.metric} improvement {interval.point:+.4f}, {interval.confidence:.0%} CI "
        f"[{interval.lower:+.4f}, {interval.upper:+.4f}] over {len(frame)} replayed rows of {days} whole cohorts "
        "(resampled by cohort)"
    )
    slices = slice_checks(gate, frame, label, challenger, champion)
    if interval.lower <= gate.min_improvement:
        reason = (
            f"no real improvement in the replay: {summary}; "
            f"the lower bound must exceed min_improvement={gate.min_improvement}"
        )
        return Verdict(False, reason, interval, slices)
    regressed = [s for s in slices if s.status == "regressed"]
    if regressed:
        worst = ", ".join(f"{s.column}={s.value} by {s.regression:.4f}" for s in regressed)
        reason = f"slice regression in the replay beyond tolerance {gate.slice_tolerance}: {worst} (overall {summary})"
        return Verdict(False, reason, interval, slices)
    return Verdict(True, f"second hearing: the replay beat the champion: {summary}", interval, slices)


def below_the_base_rate(
    gate: GateSpec, frame: pd.DataFrame, label: str, candidate: np.ndarray, baseline: np.ndarray
) -> tuple[Verdict | None, Interval]:
    """The candidate against its task's trivial model: a keeping verdict unless the improvement's lower
    bound exceeds 0, and the interval either way."""
    labels = frame[label].to_numpy(dtype="float64")
    floor = bootstrap_improvement(
        gate.metric,
        labels,
        candidate,
        baseline,
        samples=gate.bootstrap_samples,
        confidence=gate.confidence,
        seed=gate.seed,
    )
    if floor.lower > 0:
        return None, floor
    reason = (
        f"no better than the base rate: {describe(gate.metric, floor, len(frame), ' over the base rate')}; "
        "the lower bound must exceed 0 (gate.beat_base_rate)"
    )
    return Verdict(False, reason, None, [], floor), floor


def judge(
    gate: GateSpec,
    frame: pd.DataFrame,
    label: str,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    baseline: np.ndarray | None = None,
) -> Verdict:
    """Promote only on a real improvement whose interval clears `min_improvement`, with no slice regressed;
    with a `baseline` (the task's trivial model), only a candidate whose improvement over it is real too."""
    labels = frame[label].to_numpy(dtype="float64")
    floor = None
    if baseline is not None:
        kept, floor = below_the_base_rate(gate, frame, label, challenger, baseline)
        if kept is not None:
            return kept
    if champion is None:
        beats = "" if floor is None else f" and beats the base rate: {describe(gate.metric, floor, len(frame))}"
        return Verdict(True, f"no champion yet{beats}", None, [], floor)
    interval = bootstrap_improvement(
        gate.metric,
        labels,
        challenger,
        champion,
        samples=gate.bootstrap_samples,
        confidence=gate.confidence,
        seed=gate.seed,
    )
    slices = slice_checks(gate, frame, label, challenger, champion)
    summary = describe(gate.metric, interval, len(frame))
    if interval.lower <= gate.min_improvement:
        return Verdict(
            False,
            f"no real improvement: {summary}; the lower bound must exceed min_improvement={gate.min_improvement}",
            interval,
            slices,
            floor,
        )
    regressed = [s for s in slices if s.status == "regressed"]
    if regressed:
        worst = ", ".join(f"{s.column}={s.value} by {s.regression:.4f}" for s in regressed)
        return Verdict(
            False,
            f"slice regression beyond tolerance {gate.slice_tolerance}: {worst} (overall {summary})",
            interval,
            slices,
            floor,
        )
    return Verdict(True, f"real improvement: {summary}", interval, slices, floor)
