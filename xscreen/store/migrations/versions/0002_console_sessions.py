"""Console sessions: reviewers signed in to /console, shared by every replica of one index.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xscreen_console_sessions",
        sa.Column("id_sha256", sa.String(64), primary_key=True),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("created_s", sa.Double, nullable=False),
        sa.Column("expires_s", sa.Double, nullable=False),
    )
    op.create_index("xscreen_console_sessions_expires", "xscreen_console_sessions", ["expires_s"])


def downgrade() -> None:
    op.drop_table("xscreen_console_sessions")
