"""Flask extensions, created unbound here and bound to the app in create_app()."""
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager as _LoginManager
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    # Named constraints so Alembic can alter them on SQLite and PostgreSQL alike.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class LoginManager(_LoginManager):
    """Flask-Login without its "remember me" cookie, which the app never sets
    (a login is the server-side session row; REMEMBER_COOKIE_NAME names the
    session cookie itself). Flask-Login still read the session cookie as one
    whenever it held no user, and its decoder raised TypeError on a non-ASCII
    value: a garbage `session` cookie was a 500 on every page."""

    def _load_user_from_remember_cookie(self, cookie):
        return None


db = SQLAlchemy(model_class=Base)
login_manager = LoginManager()
csrf = CSRFProtect()
# No default limit: each sensitive route declares its own (see app/auth/routes.py).
limiter = Limiter(key_func=get_remote_address, default_limits=[])
