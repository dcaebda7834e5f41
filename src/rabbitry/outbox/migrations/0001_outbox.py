"""outbox: queue registry and pending-message ledger

Revision ID: 0001_outbox
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Frozen copies of the model types (a migration must not change when the models do): a 64-bit
# id that SQLite still auto-increments, and times as naive UTC (outbox.models.UTCDateTime).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


revision = "0001_outbox"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_queues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("allow_manual_insertion", sa.Boolean(), nullable=False),
        sa.Column("classname", sa.String(length=255), nullable=False),
        sa.Column("exchange", sa.String(length=255), nullable=False),
        sa.Column("routing_key", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_queues")),
        sa.UniqueConstraint("name", name=op.f("uq_outbox_queues_name")),
    )
    op.create_index(op.f("ix_outbox_queues_classname"), "outbox_queues", ["classname"])
    op.create_table(
        "outbox_messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("queue", sa.String(length=511), nullable=False),
        sa.Column("exchange", sa.String(length=255), nullable=False),
        sa.Column("routing_key", sa.String(length=255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("processed", sa.Boolean(), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("claim_token", sa.String(length=36), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_messages")),
    )
    op.create_index(op.f("ix_outbox_messages_message_id"), "outbox_messages", ["message_id"])
    op.create_index(
        "ix_outbox_messages_pending",
        "outbox_messages",
        ["created_at", "id"],
        postgresql_where=sa.text("processed = false"),
        sqlite_where=sa.text("processed = 0"),
    )
    op.create_index(
        "ix_outbox_messages_pending_queue",
        "outbox_messages",
        ["queue", "created_at", "id"],
        postgresql_where=sa.text("processed = false"),
        sqlite_where=sa.text("processed = 0"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_messages_pending_queue", table_name="outbox_messages")
    op.drop_index("ix_outbox_messages_pending", table_name="outbox_messages")
    op.drop_index(op.f("ix_outbox_messages_message_id"), table_name="outbox_messages")
    op.drop_table("outbox_messages")
    op.drop_index(op.f("ix_outbox_queues_classname"), table_name="outbox_queues")
    op.drop_table("outbox_queues")
