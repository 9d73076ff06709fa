"""/models: the deployment's models with their prices (per million tokens),
the API shapes each answers and the providers it falls back to. Signed-in
people always see it; everyone else only when MODELS_PAGE_PUBLIC is on.

The blueprint also gives every template the public address and the quick
start's model names (app/urls.py, listing.py), so each page that prints a
snippet prints the same, real values."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template
from flask_login import current_user

from app.catalog import listing
from app.extensions import login_manager
from app.urls import public_base_url, relay_urls

bp = Blueprint("catalog", __name__)


@bp.app_context_processor
def _globals():
    return {"public_base_url": public_base_url, "relay_urls": relay_urls,
            "quickstart_models": listing.quickstart_models, "models_page_visible": _visible}


def _visible() -> bool:
    return current_user.is_authenticated or current_app.config["MODELS_PAGE_PUBLIC"]


@bp.route("/models")
def index():
    if not _visible():
        return login_manager.unauthorized()
    return render_template("catalog/index.html", entries=listing.entries(), money=listing.money,
                           api_labels=listing.API_LABELS, api_paths=listing.API_PATHS,
                           root=public_base_url())
