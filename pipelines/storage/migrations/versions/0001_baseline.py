"""Baseline: the tables as the pipeline created them before schema versions (frozen, never edited).

Databases made by that code are adopted: only missing tables and the nullable columns added
over time are created. An older layout of backtest_metrics is renamed aside, not dropped.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _tables() -> dict[str, list[Any]]:
    return {
        "predictions": [
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("entity_id", sa.String(128), nullable=False),
            sa.Column("as_of", TZ, nullable=False),
            sa.Column("model_version", sa.String(32), nullable=False),
            sa.Column("score", sa.Float, nullable=False),
            sa.Column("features_sha256", sa.String(64), nullable=False),
            sa.Column("dag_run_id", sa.String(250), nullable=False),
            sa.Column("scored_at", TZ, nullable=False),
            sa.Column("unseen_categories", sa.Integer),
            sa.UniqueConstraint("model_name", "entity_id", "as_of", name="uq_predictions_key"),
        ],
        "labels": [
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("entity_id", sa.String(128), nullable=False),
            sa.Column("as_of", TZ, nullable=False),
            sa.Column("label", sa.Float, nullable=False),
            sa.Column("arrived_at", TZ, nullable=False),
            sa.UniqueConstraint("model_name", "entity_id", "as_of", name="uq_labels_key"),
        ],
        "backtest_metrics": [
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("cohort", sa.String(10), nullable=False),
            sa.Column("model_version", sa.String(32), nullable=False),
            sa.Column("scored_by", sa.String(8), nullable=False),
            sa.Column("slice_column", sa.String(128), nullable=False),
            sa.Column("slice_value", sa.String(256), nullable=False),
            sa.Column("n", sa.Integer, nullable=False),
            sa.Column("positives", sa.Integer, nullable=False),
            sa.Column("auc", sa.Float),
            sa.Column("logloss", sa.Float),
            sa.Column("brier", sa.Float),
            sa.Column("mean_score", sa.Float),
            sa.Column("labels_as_of", TZ, nullable=False),
            sa.Column("dag_run_id", sa.String(250), nullable=False),
            sa.UniqueConstraint(
                "model_name",
                "cohort",
                "model_version",
                "scored_by",
                "slice_column",
                "slice_value",
                name="uq_backtest_metrics_key",
            ),
        ],
        "validation_runs": [
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("interval_start", TZ, nullable=False),
            sa.Column("interval_end", TZ, nullable=False),
            sa.Column("dag_id", sa.String(250), nullable=False),
            sa.Column("dag_run_id", sa.String(250), nullable=False),
            sa.Column("suite", sa.String(128), nullable=False),
            sa.Column("success", sa.Boolean, nullable=False),
            sa.Column("failed_expectations", sa.Text, nullable=False),
            sa.Column("result_path", sa.Text, nullable=False),
            sa.Column("validated_at", TZ, nullable=False),
            sa.UniqueConstraint("model_name", "dag_id", "interval_start", "interval_end", name="uq_validation_key"),
        ],
        "drift_reports": [
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("interval_start", TZ, nullable=False),
            sa.Column("interval_end", TZ, nullable=False),
            sa.Column("model_version", sa.String(32), nullable=False),
            sa.Column("reference_rows", sa.Integer, nullable=False),
            sa.Column("current_rows", sa.Integer, nullable=False),
            sa.Column("columns", sa.Integer, nullable=False),
            sa.Column("drifted_columns", sa.Integer, nullable=False),
            sa.Column("drift_share", sa.Float, nullable=False),
            sa.Column("dataset_drift", sa.Boolean, nullable=False),
            sa.Column("drifted_column_names", sa.Text, nullable=False),
            sa.Column("prediction_drift", sa.Boolean),
            sa.Column("verdict", sa.Text),
            sa.Column("report_path", sa.Text, nullable=False),
            sa.Column("dag_run_id", sa.String(250), nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.UniqueConstraint("model_name", "interval_start", "interval_end", name="uq_drift_reports_key"),
        ],
        "drift_metrics": [
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("interval_start", TZ, nullable=False),
            sa.Column("interval_end", TZ, nullable=False),
            sa.Column("column_name", sa.String(128), nullable=False),
            sa.Column("stattest", sa.String(64), nullable=False),
            sa.Column("drift_score", sa.Float, nullable=False),
            sa.Column("threshold", sa.Float, nullable=False),
            sa.Column("drifted", sa.Boolean, nullable=False),
            sa.UniqueConstraint(
                "model_name", "interval_start", "interval_end", "column_name", name="uq_drift_metrics_key"
            ),
        ],
        "model_events": [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model_name", sa.String(64), nullable=False),
            sa.Column("event", sa.String(32), nullable=False),
            sa.Column("alias", sa.String(32)),
            sa.Column("from_version", sa.String(32)),
            sa.Column("to_version", sa.String(32)),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("dag_run_id", sa.String(250)),
            sa.Column("actor", sa.String(128), nullable=False),
            sa.Column("at", TZ, nullable=False),
            sa.Column("details", sa.Text),
        ],
    }


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, items in _tables().items():
        if not inspector.has_table(name):
            op.create_table(name, *items)
            continue
        present = {column["name"] for column in inspector.get_columns(name)}
        columns = [item for item in items if isinstance(item, sa.Column)]
        if name == "backtest_metrics" and not {"scored_by", "slice_column"} <= present:
            # The layout before slices: keep its rows under another name, start the new layout empty.
            op.rename_table(name, "backtest_metrics_before_slices")
            op.create_table(name, *_tables()[name])
            continue
        for column in columns:
            if column.name not in present and column.nullable:
                op.add_column(name, column.copy())


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: it holds the model's record")
