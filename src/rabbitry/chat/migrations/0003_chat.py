"""Chat history.

Revision ID: 0003_chat
Revises: 0002_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_chat"
down_revision = "0002_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_message",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("room", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chat_message"),
    )
    op.create_index("ix_chat_message_tenant_room_id", "chat_message", ["tenant", "room", "id"])


def downgrade() -> None:
    op.drop_index("ix_chat_message_tenant_room_id", "chat_message")
    op.drop_table("chat_message")
