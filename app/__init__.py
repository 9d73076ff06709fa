"""The application factory."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from app import config, logsafe
from app.extensions import csrf, db, limiter, login_manager

ROOT = config.ROOT


def _tune_sqlite(app: Flask) -> None:
    """WAL lets readers (the relay's key lookups) go on while the usage writer
    commits; with the default rollback journal they wait for it. A busy timeout
    turns rare writer collisions into a short wait instead of an error."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return
    from sqlalchemy import event

    with app.app_context():
        @event.listens_for(db.engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()


def create_app(overrides: dict[str, Any] | None = None, migrations: bool = True) -> Flask:
    """`migrations=False` leaves out Alembic, which only the `flask db` commands
    and tests need: the server's worker processes are ~10 MiB smaller without it."""
    settings = config.load(overrides)
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"),
                instance_path=settings["INSTANCE_DIR"])
    app.config.update(settings)
    logging.basicConfig(level=app.config["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logsafe.install()  # no exception's message in any log line, whoever logs it (P23)

    db.init_app(app)
    _tune_sqlite(app)
    if migrations:
        from flask_migrate import Migrate
        Migrate(app, db, directory=str(ROOT / "migrations"), render_as_batch=True)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)

    from app import (
        errors,
        inputs,
        models,  # noqa: F401  (the whole schema, for Alembic)
        numbers,
        security,
        web,
    )
    from app.services import mail

    numbers.init_app(app)  # the strict <int:...> converter, before any blueprint adds a rule
    inputs.init_app(app)   # named form fields only; no NUL in a query parameter
    security.init_app(app)
    errors.init_app(app)
    web.init_app(app)
    from app import context
    context.init_app(app)
    mail.init_app(app)
    from app import jobs
    jobs.init_app(app)  # the retention scheduler thread, when JOBS_SCHEDULER=thread

    from app.account.routes import bp as account_bp
    from app.analytics.routes import bp as analytics_bp
    from app.auth.routes import bp as auth_bp
    from app.billing import bp as billing_bp
    from app.catalog.routes import bp as catalog_bp
    from app.deletion.routes import bp as deletion_bp
    from app.exports.routes import bp as exports_bp
    from app.incidents.routes import bp as incidents_bp
    from app.keys.routes import bp as keys_bp
    from app.main.routes import bp as main_bp
    from app.policy.routes import bp as policy_bp
    from app.policy.staff import bp as policy_staff_bp
    from app.privacy_center.routes import bp as privacy_center_bp
    from app.staff.routes import bp as staff_bp
    from app.teams.routes import bp as teams_bp
    from app.usage.routes import bp as usage_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(account_bp, url_prefix="/account")
    app.register_blueprint(keys_bp, url_prefix="/keys")
    app.register_blueprint(policy_bp)
    app.register_blueprint(staff_bp, url_prefix="/staff")
    app.register_blueprint(usage_bp, url_prefix="/usage")
    app.register_blueprint(privacy_center_bp, url_prefix="/privacy-center")
    app.register_blueprint(exports_bp)  # /privacy-center/export/... and /api/v1/export
    app.register_blueprint(deletion_bp, url_prefix="/privacy-center/delete")
    app.register_blueprint(incidents_bp, url_prefix="/staff/incidents")
    app.register_blueprint(policy_staff_bp, url_prefix="/staff/policy")
    app.register_blueprint(teams_bp, url_prefix="/teams")
    app.register_blueprint(analytics_bp, url_prefix="/analytics")
    app.register_blueprint(catalog_bp)  # /models
    app.register_blueprint(billing_bp, url_prefix="/billing")

    from app.relay import routes as relay
    relay.init_app(app)

    from app.cli import register
    register(app)
    return app
