"""The WSGI entry point (gunicorn: wsgi:app; flask CLI: --app wsgi). `make run` serves asgi.py, which wraps it."""
import click
from flask.cli import ScriptInfo

from app import create_app


def _under_flask_cli() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.find_object(ScriptInfo) is not None


# The flask CLI (`flask db upgrade`) needs Alembic; a server's workers do not.
app = create_app(migrations=_under_flask_cli())

if not _under_flask_cli():
    # A server process replays the usage spool of any process that died before
    # it (a killed worker's rows) from its first request on, relay or portal.
    app.extensions["meter"].start_with(app)
