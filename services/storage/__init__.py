"""Storage for the control plane: engine, Core tables, migrations, dialect helpers and the unit of work.

Import the modules themselves (``from services.storage import tables``). This package imports nothing, so a
module that needs only the tables (an ingest worker process, the CLI's client commands) does not load the
engine, alembic and the migrations with them.
"""
