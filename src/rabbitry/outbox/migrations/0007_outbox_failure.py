"""Outbox: a refusal is not an outage. The kind of a row's last failure (``failure``: refused
or unavailable) and when the relay may try it again (``next_attempt_at``), which until now
rode on the lease column.

Revision ID: 0007_outbox_failure
Revises: 0006_chat_order
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_outbox_failure"
down_revision = "0006_chat_order"
branch_labels = None
depends_on = None

# The reasons the publisher and the requeue run have always written for a refusal.
_REFUSED = (
    "last_error LIKE 'refused by the broker%' OR last_error LIKE 'unroutable%'"
    " OR last_error LIKE 'exchange % does not exist'"
    " OR last_error LIKE 'cannot rebuild the stored message%'"
)


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages") as table:
        table.add_column(sa.Column("failure", sa.String(16), nullable=True))
        table.add_column(sa.Column("next_attempt_at", sa.DateTime(), nullable=True))
    # Rows stored before: their kind from their reason, so that the listings flag them too.
    op.execute(
        "UPDATE outbox_messages SET failure = CASE WHEN "
        + _REFUSED
        + " THEN 'refused' ELSE 'unavailable' END WHERE last_error IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages") as table:
        table.drop_column("next_attempt_at")
        table.drop_column("failure")
