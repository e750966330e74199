"""Which server (slot) is stable: per service, and per rollout as it started.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("stable_slot", sa.String(length=64), nullable=True))
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("stable_slot", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("canary_slot", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("canary_slot")
        batch.drop_column("stable_slot")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("stable_slot")
