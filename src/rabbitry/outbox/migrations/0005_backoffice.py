"""Back-office: soft delete and manual requeue time on ledger rows, listing indexes, and what a
record sent by hand becomes (message type, payload shape) on registry entries.

Revision ID: 0005_backoffice
Revises: 0004_sessions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_backoffice"
down_revision = "0004_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages") as table:
        table.add_column(sa.Column("deleted_at", sa.DateTime(), nullable=True))
        table.add_column(sa.Column("requeued_at", sa.DateTime(), nullable=True))
    # Newest-first listings walk these from a key (keyset pagination), whatever the state.
    op.create_index("ix_outbox_messages_created", "outbox_messages", ["created_at", "id"])
    op.create_index(
        "ix_outbox_messages_queue_created", "outbox_messages", ["queue", "created_at", "id"]
    )
    with op.batch_alter_table("outbox_queues") as table:
        table.add_column(
            sa.Column("message_type", sa.String(255), nullable=False, server_default="")
        )
        table.add_column(
            sa.Column("payload", sa.String(16), nullable=False, server_default="record")
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_queues") as table:
        table.drop_column("payload")
        table.drop_column("message_type")
    op.drop_index("ix_outbox_messages_queue_created", table_name="outbox_messages")
    op.drop_index("ix_outbox_messages_created", table_name="outbox_messages")
    with op.batch_alter_table("outbox_messages") as table:
        table.drop_column("requeued_at")
        table.drop_column("deleted_at")
