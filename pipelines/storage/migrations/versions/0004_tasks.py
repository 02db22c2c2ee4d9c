"""Regression and multiclass models: a multiclass label by its class name, the predicted class and
class probabilities in the prediction log, each task's metrics in backtest_metrics, and a
model-quality report per monitored window. Existing rows are binary and keep their values."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.alter_column("label", existing_type=sa.Float, nullable=True)
        batch.add_column(sa.Column("label_class", sa.String(256)))
    for table in ("predictions", "predictions_history"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("predicted_class", sa.String(256)))
            batch.add_column(sa.Column("class_probabilities", sa.Text))
    with op.batch_alter_table("backtest_metrics") as batch:
        batch.alter_column("positives", existing_type=sa.Integer, nullable=True)
        for name in ("rmse", "mae", "r2", "mean_error", "mean_label", "accuracy", "macro_f1"):
            batch.add_column(sa.Column(name, sa.Float))
        batch.add_column(sa.Column("class_recall", sa.Text))
    op.create_table(
        "quality_reports",
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("interval_start", TZ, nullable=False),
        sa.Column("interval_end", TZ, nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("report_path", sa.Text),
        sa.Column("labels_as_of", TZ, nullable=False),
        sa.Column("dag_run_id", sa.String(250), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("model_name", "interval_start", "interval_end", name="uq_quality_reports_key"),
    )


def downgrade() -> None:
    raise NotImplementedError("a downgrade would drop multiclass labels and regression metrics: restore a backup")
