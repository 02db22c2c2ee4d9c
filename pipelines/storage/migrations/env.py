"""Alembic environment: run on the connection `pipelines.storage.database.upgrade_schema` hands over."""

from alembic import context

from pipelines.storage.database import SCHEMA_VERSION_TABLE

# Our own version table: the tables may share a database with Airflow, whose `alembic_version` is its own.
context.configure(
    connection=context.config.attributes["connection"],
    version_table=SCHEMA_VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
