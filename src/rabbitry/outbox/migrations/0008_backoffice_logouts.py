"""Back-office: logouts that every back-office process sees (``backoffice_logouts``), so a copy
of a logged-out session's cookie is refused by all of them, not only by the one that served
the logout.

Revision ID: 0008_backoffice_logouts
Revises: 0007_outbox_failure
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_backoffice_logouts"
down_revision = "0007_outbox_failure"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backoffice_logouts",
        sa.Column("sid_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sid_hash", name=op.f("pk_backoffice_logouts")),
    )
    op.create_index(op.f("ix_backoffice_logouts_expires_at"), "backoffice_logouts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_backoffice_logouts_expires_at", table_name="backoffice_logouts")
    op.drop_table("backoffice_logouts")
