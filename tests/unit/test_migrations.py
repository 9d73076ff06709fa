"""The schema comes only from Alembic, and Alembic agrees with the models."""
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.extensions import db


def test_models_and_migrations_agree(app):
    with app.app_context():
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"render_as_batch": True, "compare_type": True})
            diff = compare_metadata(ctx, db.metadata)
    assert diff == [], f"models differ from migrations/: {diff}"
