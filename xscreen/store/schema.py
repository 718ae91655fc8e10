"""The index's tables, as SQLAlchemy Core sees them (the migrations in migrations/versions create them).

Every name starts with ``xscreen_`` so the index can share a PostgreSQL database with other schemas.
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "xscreen_store_version"
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY: SQLite's rowid

metadata = sa.MetaData()

# One row per bag. state: "writing" (room reserved, files being written) or "stored" (complete, visible).
# seq numbers stored bags in the order they became visible: the live list's cursor.
bags = sa.Table(
    "xscreen_bags",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("seq", sa.BigInteger, unique=True),
    sa.Column("time_s", sa.Double, nullable=False),  # the bag's time, Unix seconds
    sa.Column("reserved_s", sa.Double, nullable=False),  # when its row was made (stale-write cleanup)
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("alarm", sa.Boolean, nullable=False),
    sa.Column("top_score", sa.Double),
    sa.Column("n_views", sa.Integer, nullable=False),
    sa.Column("view_sizes", sa.JSON, nullable=False),  # [[width, height], ...]
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("answer", sa.JSON, nullable=False),
)

# Named counters: "seq", the last seq given (never reused, even after a purge, so a cursor stays valid).
counters = sa.Table(
    "xscreen_store_counters",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

bag_classes = sa.Table(
    "xscreen_bag_classes",
    metadata,
    sa.Column("bag_id", ID, sa.ForeignKey("xscreen_bags.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("class_name", sa.String(64), primary_key=True),
)

detections = sa.Table(
    "xscreen_detections",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("bag_id", ID, sa.ForeignKey("xscreen_bags.id", ondelete="CASCADE"), nullable=False),
    sa.Column("view", sa.Integer, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),  # its place in the view's detections
    sa.Column("class_name", sa.String(64), nullable=False),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("x1", sa.Double, nullable=False),
    sa.Column("y1", sa.Double, nullable=False),
    sa.Column("x2", sa.Double, nullable=False),
    sa.Column("y2", sa.Double, nullable=False),
)

# Reviewers' verdicts. kind: confirm / false_alarm (of a detection) or missed (a drawn box). A later
# verdict on a detection clears ``is_current`` on the earlier one, which is kept: who said what, when.
verdicts = sa.Table(
    "xscreen_verdicts",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("bag_id", ID, sa.ForeignKey("xscreen_bags.id", ondelete="CASCADE"), nullable=False),
    sa.Column("detection_id", ID, sa.ForeignKey("xscreen_detections.id", ondelete="CASCADE")),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("view", sa.Integer, nullable=False),
    sa.Column("class_name", sa.String(64), nullable=False),
    sa.Column("x1", sa.Double),
    sa.Column("y1", sa.Double),
    sa.Column("x2", sa.Double),
    sa.Column("y2", sa.Double),
    sa.Column("reviewer", sa.String(128), nullable=False),
    sa.Column("time_s", sa.Double, nullable=False),
    sa.Column("is_current", sa.Boolean, nullable=False),
    sa.Column("replaced_by", ID),
)

# Signed-in console reviewers (migration 0002). Only the SHA-256 of a session's random id is kept, so a
# copy of the table signs nobody in; every replica sharing the index shares the sessions.
console_sessions = sa.Table(
    "xscreen_console_sessions",
    metadata,
    sa.Column("id_sha256", sa.String(64), primary_key=True),
    sa.Column("reviewer", sa.String(128), nullable=False),  # the reviewer key's id, never the key
    sa.Column("created_s", sa.Double, nullable=False),
    sa.Column("expires_s", sa.Double, nullable=False),
)
