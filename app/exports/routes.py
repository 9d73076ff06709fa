"""Data export: a ZIP of everything about the person, in the portal and through the API (P51)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("exports", __name__)
