"""A record you can trust: every label delivery kept, a history of replaced predictions, quarantine counts.

- labels: unique per delivery (model, entity, as_of, arrived_at) instead of per key, so a
  correction is kept beside the original. Rows from before hold one delivery per key: the last one
  ingested (that code overwrote corrections); re-reading the older files adds the others back.
- predictions_history: what a chosen re-scoring replaced, never lost.
- indexes on (model_name, as_of) for per-interval reads.
- validation_runs: rows checked and quarantined, and where the quarantined rows are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_constraint("uq_labels_key", type_="unique")
        batch.create_unique_constraint("uq_labels_delivery", ["model_name", "entity_id", "as_of", "arrived_at"])
    op.create_index("ix_labels_as_of", "labels", ["model_name", "as_of"])
    op.create_index("ix_predictions_as_of", "predictions", ["model_name", "as_of"])
    op.create_table(
        "predictions_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("as_of", TZ, nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("features_sha256", sa.String(64), nullable=False),
        sa.Column("dag_run_id", sa.String(250), nullable=False),
        sa.Column("scored_at", TZ, nullable=False),
        sa.Column("unseen_categories", sa.Integer),
        sa.Column("superseded_at", TZ, nullable=False),
        sa.Column("superseded_by_run", sa.String(250), nullable=False),
    )
    op.create_index("ix_predictions_history_as_of", "predictions_history", ["model_name", "as_of"])
    with op.batch_alter_table("validation_runs") as batch:
        batch.add_column(sa.Column("rows_checked", sa.Integer))
        batch.add_column(sa.Column("rows_quarantined", sa.Integer))
        batch.add_column(sa.Column("quarantine_uri", sa.Text))


def downgrade() -> None:
    raise NotImplementedError("a downgrade would fold label deliveries together: restore a backup instead")
