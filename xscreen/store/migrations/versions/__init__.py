"""One module per revision of the index's tables (Alembic skips this file)."""
