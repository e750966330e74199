"""Measurement totals by criterion and verdict, so /metrics does not count the
event log on every scrape; filled from the events already written.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_FIELD = {
    "postgresql": "(data::json ->> '{name}')",
    "sqlite": "json_extract(data, '$.{name}')",
}


def upgrade() -> None:
    op.create_table(
        "measurement_totals",
        sa.Column("criterion", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("criterion", "verdict"),
    )
    field = _FIELD.get(op.get_bind().dialect.name)
    if field is None:
        return  # another database: the totals start from now
    criterion = f"substr(coalesce({field.format(name='criterion')}, ''), 1, 64)"
    verdict = f"substr(coalesce({field.format(name='verdict')}, ''), 1, 16)"
    op.execute(
        f"INSERT INTO measurement_totals (criterion, verdict, count) "
        f"SELECT {criterion}, {verdict}, count(*) FROM events "
        f"WHERE kind = 'measurement' GROUP BY 1, 2"
    )


def downgrade() -> None:
    op.drop_table("measurement_totals")
