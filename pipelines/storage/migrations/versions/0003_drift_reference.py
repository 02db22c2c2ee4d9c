"""Drift reports say what each window was compared with (drift.reference: the training sample, a
fixed window or the same period earlier). Reports from before read as the training sample."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_reports") as batch:
        batch.add_column(sa.Column("reference", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("drift_reports") as batch:
        batch.drop_column("reference")
