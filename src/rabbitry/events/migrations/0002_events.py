"""Event store and module message log (event sourcing).

Revision ID: 0002_events
Revises: 0001_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_events"
down_revision = "0001_outbox"
branch_labels = None
depends_on = None

# SQLite only auto-increments an INTEGER PRIMARY KEY.
SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_store",
        sa.Column("sequence", SEQUENCE, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(255), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name="pk_event_store"),
        sa.UniqueConstraint(
            "entity", "entity_id", "version", name="uq_event_store_entity_entity_id_version"
        ),
        sa.UniqueConstraint("message_id", name="uq_event_store_message_id"),
    )
    op.create_table(
        "module_message_log",
        sa.Column("sequence", SEQUENCE, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=True),
        sa.Column("exchange", sa.String(255), nullable=False, server_default=""),
        sa.Column("routing_key", sa.String(255), nullable=False, server_default=""),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name="pk_module_message_log"),
        sa.UniqueConstraint("message_id", name="uq_module_message_log_message_id"),
    )


def downgrade() -> None:
    op.drop_table("module_message_log")
    op.drop_table("event_store")
