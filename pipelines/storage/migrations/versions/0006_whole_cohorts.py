"""Backtest history is append-only: one row per cohort x version x slice per `labels_as_of`, with
how many of the cohort's predictions it covers (`predictions`) and whether all their labels were
due (`complete`). Readers take, per cohort, the row computed from the most labelled predictions, so
a backtest that knew fewer labels (an older range re-run) never replaces one that knew more. The
rows stored before keep their values, with `predictions` and `complete` unknown (NULL)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEY = ["model_name", "cohort", "model_version", "scored_by", "slice_column", "slice_value"]


def upgrade() -> None:
    with op.batch_alter_table("backtest_metrics") as batch:
        batch.add_column(sa.Column("predictions", sa.Integer))
        batch.add_column(sa.Column("complete", sa.Boolean))
        batch.drop_constraint("uq_backtest_metrics_key", type_="unique")
        batch.create_unique_constraint("uq_backtest_metrics_key", [*KEY, "labels_as_of"])


def downgrade() -> None:
    # Back to one row per cohort key: keep the row computed from the most labelled predictions.
    op.execute(
        "DELETE FROM backtest_metrics WHERE EXISTS (SELECT 1 FROM backtest_metrics AS better WHERE "
        + " AND ".join(f"better.{c} = backtest_metrics.{c}" for c in KEY)
        + " AND (better.n > backtest_metrics.n OR (better.n = backtest_metrics.n"
        " AND better.labels_as_of > backtest_metrics.labels_as_of)))"
    )
    with op.batch_alter_table("backtest_metrics") as batch:
        batch.drop_constraint("uq_backtest_metrics_key", type_="unique")
        batch.create_unique_constraint("uq_backtest_metrics_key", KEY)
        batch.drop_column("complete")
        batch.drop_column("predictions")
