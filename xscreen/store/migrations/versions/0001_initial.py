"""The first index: bags, their classes and detections, reviewers' verdicts.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _bags() -> None:
    op.create_table(
        "xscreen_bags",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("seq", sa.BigInteger, unique=True),
        sa.Column("time_s", sa.Double, nullable=False),
        sa.Column("reserved_s", sa.Double, nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("alarm", sa.Boolean, nullable=False),
        sa.Column("top_score", sa.Double),
        sa.Column("n_views", sa.Integer, nullable=False),
        sa.Column("view_sizes", sa.JSON, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("answer", sa.JSON, nullable=False),
    )
    op.create_index("xscreen_bags_state_time", "xscreen_bags", ["state", "time_s"])
    counters = op.create_table(
        "xscreen_store_counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counters, [{"name": "seq", "value": 0}])
    op.create_table(
        "xscreen_bag_classes",
        sa.Column("bag_id", ID, sa.ForeignKey("xscreen_bags.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("class_name", sa.String(64), primary_key=True),
    )
    op.create_index("xscreen_bag_classes_class", "xscreen_bag_classes", ["class_name"])


def _detections_and_verdicts() -> None:
    op.create_table(
        "xscreen_detections",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("bag_id", ID, sa.ForeignKey("xscreen_bags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("view", sa.Integer, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("class_name", sa.String(64), nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        *(sa.Column(c, sa.Double, nullable=False) for c in ("x1", "y1", "x2", "y2")),
        sa.UniqueConstraint("bag_id", "view", "idx", name="xscreen_detections_place"),
    )
    op.create_table(
        "xscreen_verdicts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("bag_id", ID, sa.ForeignKey("xscreen_bags.id", ondelete="CASCADE"), nullable=False),
        sa.Column("detection_id", ID, sa.ForeignKey("xscreen_detections.id", ondelete="CASCADE")),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("view", sa.Integer, nullable=False),
        sa.Column("class_name", sa.String(64), nullable=False),
        *(sa.Column(c, sa.Double) for c in ("x1", "y1", "x2", "y2")),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("time_s", sa.Double, nullable=False),
        sa.Column("is_current", sa.Boolean, nullable=False),
        sa.Column("replaced_by", ID),
    )
    op.create_index("xscreen_verdicts_bag", "xscreen_verdicts", ["bag_id"])
    # at most one current verdict per detection: two reviewers at once cannot both be current
    current = sa.text("is_current AND detection_id IS NOT NULL")
    op.create_index(
        "xscreen_verdicts_one_current",
        "xscreen_verdicts",
        ["detection_id"],
        unique=True,
        postgresql_where=current,
        sqlite_where=current,
    )


def upgrade() -> None:
    _bags()
    _detections_and_verdicts()


def downgrade() -> None:
    for table in ("verdicts", "detections", "bag_classes", "store_counters", "bags"):
        op.drop_table(f"xscreen_{table}")
