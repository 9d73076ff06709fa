"""Account deletion: request, receipt, grace period, cancel (P52)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("deletion", __name__)
