"""Measurement totals sharded by worker process: one row per criterion, verdict and
shard, summed when read, so concurrent commits do not queue on one row lock. The
existing totals become shard 0.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(
            "measurement_totals",
            sa.Column("shard", sa.SmallInteger(), nullable=False, server_default="0"),
        )
        op.drop_constraint("measurement_totals_pkey", "measurement_totals", type_="primary")
        op.create_primary_key(
            "measurement_totals_pkey", "measurement_totals", ["criterion", "verdict", "shard"]
        )
        return
    # SQLite (and others) cannot change a primary key in place: rebuild the table.
    op.rename_table("measurement_totals", "measurement_totals_unsharded")
    _create(sa.Column("shard", sa.SmallInteger(), nullable=False, server_default="0"))
    op.execute(
        "INSERT INTO measurement_totals (criterion, verdict, shard, count) "
        "SELECT criterion, verdict, 0, count FROM measurement_totals_unsharded"
    )
    op.drop_table("measurement_totals_unsharded")


def _create(*shard: sa.Column) -> sa.Table:
    return op.create_table(
        "measurement_totals",
        sa.Column("criterion", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        *shard,
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("criterion", "verdict", *(c.name for c in shard)),
    )


def downgrade() -> None:
    bind = op.get_bind()
    merged = bind.execute(
        sa.text(
            "SELECT criterion, verdict, sum(count) FROM measurement_totals "
            "GROUP BY criterion, verdict"
        )
    ).all()
    op.drop_table("measurement_totals")
    table = _create()
    if merged:
        op.bulk_insert(
            table, [{"criterion": c, "verdict": v, "count": int(n)} for c, v, n in merged]
        )
