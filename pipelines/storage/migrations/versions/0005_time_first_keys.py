"""The keys of the prediction log and the labels lead with time: UNIQUE (model_name, as_of, entity_id)
and (model_name, as_of, entity_id, arrived_at).

Rows of an interval arrive in time order with their entity ids in any order: under the former keys
(entity_id before as_of) every insert landed at a random place of the index, which made a
million-row hour's write three times slower on SQLite, and SQLite's planner grouped the labels of
a backtest window by walking all the model's labels in that key's order. The time-first keys also
serve every per-interval read, so the separate (model_name, as_of) indexes go. Rows are kept as
they are.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_as_of")
        batch.drop_constraint("uq_predictions_key", type_="unique")
        batch.create_unique_constraint("uq_predictions_key", ["model_name", "as_of", "entity_id"])
    with op.batch_alter_table("labels") as batch:
        batch.drop_index("ix_labels_as_of")
        batch.drop_constraint("uq_labels_delivery", type_="unique")
        batch.create_unique_constraint("uq_labels_delivery", ["model_name", "as_of", "entity_id", "arrived_at"])


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_constraint("uq_labels_delivery", type_="unique")
        batch.create_unique_constraint("uq_labels_delivery", ["model_name", "entity_id", "as_of", "arrived_at"])
        batch.create_index("ix_labels_as_of", ["model_name", "as_of"])
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint("uq_predictions_key", type_="unique")
        batch.create_unique_constraint("uq_predictions_key", ["model_name", "entity_id", "as_of"])
        batch.create_index("ix_predictions_as_of", ["model_name", "as_of"])
