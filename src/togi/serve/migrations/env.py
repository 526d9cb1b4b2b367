"""Alembic's environment for togi's PostgreSQL store: migrations run on the connection ``PostgresStore`` hands over
(``config.attributes["connection"]``), inside its advisory lock, so that several API replicas starting at once
migrate the database once."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
