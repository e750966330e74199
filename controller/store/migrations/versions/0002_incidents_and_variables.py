"""Incidents opened by the rollback runbook; per-rollout template variables.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("variables", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("trigger", sa.JSON(), nullable=False),
        sa.Column("started_by", sa.String(length=128), nullable=False),
        sa.Column("timeline", sa.JSON(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("webhook_status", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_incidents_rollout_id", "incidents", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_incidents_rollout_id", table_name="incidents")
    op.drop_table("incidents")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("variables")
