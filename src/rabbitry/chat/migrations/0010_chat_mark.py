"""Chat: the marks gateways pass through the history queue after a reconnect (``chat_mark``).

Revision ID: 0010_chat_mark
Revises: 0009_events_append
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_chat_mark"
down_revision = "0009_events_append"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_mark",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chat_mark"),
    )


def downgrade() -> None:
    op.drop_table("chat_mark")
