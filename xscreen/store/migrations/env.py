"""Alembic's environment: migrate on the connection (already in a transaction) that the store passes in."""

from __future__ import annotations

from alembic import context

from xscreen.store.schema import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():  # the caller's transaction: no commit here
    context.run_migrations()
