"""Rollouts and their append-only event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 14:13:27.822478
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("service", sa.String(length=128), nullable=False),
        sa.Column("canary_version", sa.String(length=128), nullable=False),
        sa.Column("stable_version", sa.String(length=128), nullable=False),
        sa.Column("plan_name", sa.String(length=64), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("analysis", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("tripped_criterion", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_rollouts_next_check_at"), "rollouts", ["next_check_at"], unique=False)
    op.create_index(op.f("ix_rollouts_service"), "rollouts", ["service"], unique=False)
    op.create_index(op.f("ix_rollouts_state"), "rollouts", ["state"], unique=False)
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_rollout_id_id", "events", ["rollout_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_rollout_id_id", table_name="events")
    op.drop_table("events")
    op.drop_index(op.f("ix_rollouts_state"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_service"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_next_check_at"), table_name="rollouts")
    op.drop_table("rollouts")
