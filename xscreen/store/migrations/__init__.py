"""Alembic migrations of the scan store's index, run by ``xscreen.store.database.migrate``."""
