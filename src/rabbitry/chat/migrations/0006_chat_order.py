"""Chat history: the order the store assigns (``seq``), which ``since`` recovery follows.

Revision ID: 0006_chat_order
Revises: 0005_backoffice
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_chat_order"
down_revision = "0005_backoffice"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chat_message") as table:
        table.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
    op.create_index("ix_chat_message_seq", "chat_message", ["seq"], unique=True)
    op.create_index("ix_chat_message_tenant_room_seq", "chat_message", ["tenant", "room", "seq"])


def downgrade() -> None:
    op.drop_index("ix_chat_message_tenant_room_seq", "chat_message")
    op.drop_index("ix_chat_message_seq", "chat_message")
    with op.batch_alter_table("chat_message") as table:
        table.drop_column("seq")
