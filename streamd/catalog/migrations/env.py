"""Alembic environment: runs the migrations on the connection the catalogue hands over."""

from alembic import context

from streamd.catalog.models import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
