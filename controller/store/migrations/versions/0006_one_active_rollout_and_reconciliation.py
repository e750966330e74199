"""One active rollout per service, enforced by the database; the data reconciliation
a rollback for failed writes requires before the service's next rollout.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The active states as they are at this revision (a later change of states needs a
# migration of its own).
ACTIVE = ("pending", "blocked", "running", "paused", "rolling_back", "rollback_failed")
ACTIVE_SQL = "state IN (" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"


def upgrade() -> None:
    doubled = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT service FROM rollouts WHERE {ACTIVE_SQL} "
                "GROUP BY service HAVING COUNT(*) > 1"
            )
        )
        .scalars()
        .all()
    )
    if doubled:
        raise RuntimeError(
            "cannot enforce one active rollout per service: these services have more "
            f"than one: {', '.join(doubled)}. Abort all but one of each (canary abort ID "
            "--reason ...), let them finish, then run canary db upgrade again."
        )
    op.create_index(
        "uq_rollouts_one_active_per_service",
        "rollouts",
        ["service"],
        unique=True,
        postgresql_where=sa.text(ACTIVE_SQL),
        sqlite_where=sa.text(ACTIVE_SQL),
    )
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("reconcile_required_by", sa.String(32), nullable=True))
        batch.add_column(sa.Column("reconcile_required_reason", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("reconcile_required_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("reconcile_required_at")
        batch.drop_column("reconcile_required_reason")
        batch.drop_column("reconcile_required_by")
    op.drop_index("uq_rollouts_one_active_per_service", table_name="rollouts")
