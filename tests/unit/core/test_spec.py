from pathlib import Path

import pytest
import yaml

from pipelines.core.errors import PermanentError
from pipelines.core.spec import SpecError, load_spec
from tests import REPO_ROOT

DEMO_SPEC = REPO_ROOT / "dags" / "models" / "demo_churn.yaml"


def write_spec(tmp_path: Path, name: str, **changes: object) -> Path:
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_spec_loads_with_tz_aware_start() -> None:
    spec = load_spec(DEMO_SPEC)
    assert spec.name == "demo_churn"
    assert spec.start_date.tzinfo is not None
    assert spec.label.delay_hours == 6
    assert "plan" in spec.features.categorical


def test_wrong_field_names_file_and_field(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", training={"window_days": 0})
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert "training.window_days" in str(error.value)


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", schedulez={"train": "@daily"})
    with pytest.raises(SpecError, match="field 'schedulez'"):
        load_spec(path)


def test_feature_listed_twice_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", features={"numeric": ["plan"], "categorical": ["plan"]})
    with pytest.raises(SpecError, match="both numeric and categorical"):
        load_spec(path)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "other_model")
    with pytest.raises(SpecError, match="field 'name' is 'demo_churn'"):
        load_spec(path)


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize(
    ("field", "cron", "message"),
    [
        ("backtest", "30 3 * * *", r"field 'schedules.backtest': .*'30 3 \* \* \*' fires at 03:30, inside an hour"),
        ("score", "*/15 * * * *", r"field 'schedules.score': .*fires at 00:15, inside an hour"),
        ("train", "0 2 * * * 30", r"field 'schedules.train': .*fires at 02:00:30, inside an hour"),
        ("train", "0 2 * *", r"field 'schedules.train': .*'0 2 \* \*' is not a valid cron expression"),
        ("train", "0 25 * * *", r"field 'schedules.train': .*is not a valid cron expression"),
    ],
)
def test_schedules_that_cut_partitions_are_refused(tmp_path: Path, field: str, cron: str, message: str) -> None:
    path = write_spec(tmp_path, "demo_churn", schedules={field: cron})
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_whole_hour_schedules_are_accepted(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "demo_churn", schedules={"score": "0 */3 * * *", "backtest": "0 4 * * 1"})
    assert load_spec(path).schedules.backtest == "0 4 * * 1"


def test_an_interval_that_cuts_an_hour_is_refused_not_trimmed() -> None:
    from datetime import UTC, datetime

    from pipelines.core.intervals import hours_between

    with pytest.raises(PermanentError, match=r"does not start on a whole hour"):
        hours_between(datetime(2026, 1, 3, 3, 30, tzinfo=UTC), datetime(2026, 1, 4, 4, tzinfo=UTC))
    with pytest.raises(PermanentError, match=r"does not end on a whole hour"):
        hours_between(datetime(2026, 1, 3, 4, tzinfo=UTC), datetime(2026, 1, 4, 3, 30, tzinfo=UTC))
    hours = hours_between(datetime(2026, 1, 3, 4, tzinfo=UTC), datetime(2026, 1, 4, 4, tzinfo=UTC))
    assert len(hours) == 24 and hours[0].hour == 4 and hours[-1].hour == 3


SOURCES = {
    "events": {"kind": "files", "path": "demo_churn/events/dt={start:%Y-%m-%d}/hour={start:%H}.csv"},
    "labels": {"kind": "files", "path": "demo_churn/labels/{start:%Y-%m-%d}.csv"},
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"source": {**SOURCES, "events": {"kind": "files", "path": "../../../etc/{start:%H}.csv"}}},
            r"field 'source.events.files.path': '\.\./\.\./\.\./etc/\{start:%H\}\.csv' must be s3://bucket/key or "
            "a path relative to the source root",
        ),
        (
            {"source": {**SOURCES, "labels": {"kind": "files", "path": "/etc/labels.csv"}}},
            r"field 'source.labels.files.path': '/etc/labels.csv' must be s3://bucket/key or a path relative",
        ),
        (
            {"source": {**SOURCES, "events": {"kind": "files", "path": "e/{start.__class__}.csv"}}},
            r"field 'source.events.files.path': .* placeholder\(s\) \['start.__class__'\]; only \{start:...\}",
        ),
        (
            {"source": {**SOURCES, "events": {"kind": "files", "path": "events/{start:%Y}"}}},
            r"field 'source.events.files': .*give format \(csv or parquet\)",
        ),
        (
            {"source": {**SOURCES, "events": {"kind": "sql", "connection": "wh", "query": "SELECT * FROM t"}}},
            r"field 'source.events.sql': .*query must use the bound parameters :start and :end",
        ),
        (
            {"source": {**SOURCES, "events": {"kind": "sql", "connection": "wh", "table": "t; DROP TABLE t"}}},
            r"field 'source.events.sql.table': 't; DROP TABLE t' must be a table name",
        ),
        (
            {"source": {"kind": "local_files", "events_path": "../../../etc", "labels_path": "demo_churn/labels"}},
            r"field 'source': '\.\./\.\./\.\./etc' must be s3://bucket/key or a path relative to the source root",
        ),
        ({"partition": "day"}, r"schedules.score '0 \* \* \* \*' fires at 01:00, inside a day"),
        ({"suite": "../../etc/passwd"}, r"field 'suite': '\.\./\.\./etc/passwd' must be a suite name"),
        ({"suite": "no_such_suite"}, r"field 'suite': 'no_such_suite' has no file .*expectations/no_such_suite\.json"),
        (
            {"features": {"numeric": ["tenure_months"], "categorical": ["plan", "region", "device_type"]}},
            r"features\.categorical \['device_type'\] not among the columns of suite 'demo_churn'",
        ),
        ({"entity_key": "account_id"}, r"entity_key \['account_id'\] not among the columns of suite"),
        (
            {"source": {**SOURCES, "events": {"kind": "files", "path": "e/{start!r}.csv"}}},
            r"field 'source.events.files.path': .* converts the date \(!r\); give a date format",
        ),
        (
            {"source": {**SOURCES, "labels": {"kind": "files", "path": "l/{end:%s%f}.csv"}}},
            r"field 'source.labels.files.path': .* uses %f, %s; only the date directives %A %B",
        ),
    ],
)
def test_paths_stay_in_their_roots_and_the_suite_knows_every_column(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, "demo_churn", **changes))


def drift_of(tmp_path: Path, **settings: object) -> Path:
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    return write_spec(tmp_path, "demo_churn", drift={**raw["drift"], **settings})


def test_drift_settings_choose_columns_tests_and_a_seasonal_reference(tmp_path: Path) -> None:
    spec = load_spec(
        drift_of(
            tmp_path,
            exclude=["region"],
            tests={"monthly_charges": {"method": "psi", "threshold": 0.2}, "plan": {"threshold": 0.01}},
            reference={"kind": "same_period", "offset_days": 7},
        )
    )
    assert "region" not in spec.drift_columns and len(spec.drift_columns) == len(spec.features.all) - 1
    assert spec.drift.tests["plan"].method is None and spec.drift.reference.offset_days == 7
    chosen = load_spec(drift_of(tmp_path, columns=["plan", "tenure_months"])).drift_columns
    assert chosen == ["tenure_months", "plan"]  # spec order: numeric, then categorical


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"exclude": ["churned"]}, r"drift.exclude \['churned'\] must be features"),
        ({"columns": ["plan"], "exclude": ["plan"]}, "leave no feature to test for drift"),
        ({"exclude": ["plan"], "tests": {"plan": {"method": "psi"}}}, r"drift.tests \['plan'\] name columns that"),
        ({"tests": {"plan": {"method": "ks"}}}, "drift.tests.plan: 'ks' does not test a categorical column"),
        ({"tests": {"tenure_months": {"method": "chisquare"}}}, "'chisquare' does not test a numeric column"),
        ({"tests": {"plan": {"method": "kolmogorov"}}}, r"field 'drift.tests.plan.method': Input should be"),
        ({"tests": {"plan": {}}}, "set a method, a threshold or both"),
        ({"reference": {"kind": "same_period"}}, "needs offset_days"),
        ({"reference": {"kind": "window", "start": "2026-01-02T00:00:00Z"}}, "needs start < end"),
        ({"reference": {"kind": "training", "offset_days": 7}}, "kind 'training' takes no other field"),
        (
            {"reference": {"kind": "window", "start": "2026-01-02T00:30:00Z", "end": "2026-01-03T00:00:00Z"}},
            "drift.reference 2026-01-02T00:30:00\\+00:00 is not on a whole hour",
        ),
    ],
)
def test_bad_drift_settings_name_the_field(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    path = drift_of(tmp_path, **settings)
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_the_spec_knows_the_drift_tests_evidently_has() -> None:
    from typing import get_args

    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    from pipelines.core.spec import (
        ANY_TYPE_DRIFT_TESTS,
        CATEGORICAL_DRIFT_TESTS,
        NUMERIC_DRIFT_TESTS,
        P_VALUE_DRIFT_TESTS,
        DriftTest,
    )

    kinds = {
        name: {str(kind).rsplit(".", 1)[-1] for kind in by_kind} for name, by_kind in _registered_stat_tests.items()
    }
    assert set(get_args(DriftTest)) == {*NUMERIC_DRIFT_TESTS, *CATEGORICAL_DRIFT_TESTS, *ANY_TYPE_DRIFT_TESTS}
    assert set(P_VALUE_DRIFT_TESTS) < set(get_args(DriftTest))
    for names, expected in (
        (NUMERIC_DRIFT_TESTS, {"Numerical"}),
        (CATEGORICAL_DRIFT_TESTS, {"Categorical"}),
        (ANY_TYPE_DRIFT_TESTS, {"Numerical", "Categorical"}),
    ):
        assert {name: kinds.get(name) for name in names} == dict.fromkeys(names, expected)


LABEL = {"column": "churned", "delay_hours": 6}
CLASSES = {**LABEL, "classes": ["stay", "downgrade", "leave"]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "ranking"}, "field 'task'"),
        (
            {"task": "regression", "training": {"params": {"objective": "binary:logistic"}}},
            r"training.params.objective 'binary:logistic' does not fit task 'regression'; use one of \['reg:squarederror'",
        ),
        (
            {"task": "multiclass", "label": CLASSES, "training": {"params": {"objective": "multi:softmax"}}},
            r"'multi:softmax' does not fit task 'multiclass'; use one of \['multi:softprob'\]",
        ),
        (
            {"task": "multiclass", "label": CLASSES, "training": {"params": {"num_class": 3}}},
            "training.params.num_class is set from label.classes",
        ),
        ({"task": "multiclass", "label": LABEL}, "task multiclass needs label.classes"),
        ({"label": CLASSES}, "label.classes is for task multiclass, not binary"),
        ({"task": "multiclass", "label": {**LABEL, "classes": ["a", "a"]}}, "field 'label.classes'"),
        ({"task": "regression", "gate": {"metric": "auc"}}, r"gate.metric 'auc' does not judge a regression model"),
        ({"task": "multiclass", "label": CLASSES, "gate": {"metric": "rmse"}}, "does not judge a multiclass model"),
    ],
)
def test_a_task_its_objective_labels_and_gate_metric_must_fit(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw["training"].pop("params", None)
    raw["gate"].pop("metric", None)
    raw.update(changes)
    path = tmp_path / "demo_churn.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=message) as error:
        load_spec(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("task", "metric", "objective"),
    [("binary", "auc", "binary:logistic"), ("regression", "rmse", "reg:squarederror"),
     ("multiclass", "logloss", "multi:softprob")],
)  # fmt: skip
def test_each_task_has_its_default_objective_and_gate_metric(
    tmp_path: Path, task: str, metric: str, objective: str
) -> None:
    raw = yaml.safe_load(DEMO_SPEC.read_text())
    raw["training"].pop("params", None)
    raw["gate"].pop("metric", None)
    raw.update(task=task, label=CLASSES if task == "multiclass" else LABEL)
    path = tmp_path / "demo_churn.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    assert (spec.task, spec.gate.metric, spec.objective) == (task, metric, objective)
