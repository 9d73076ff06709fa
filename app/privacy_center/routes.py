"""The person's privacy center: consents, what we keep, who looked, requests (P50, P53, P55)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("privacy_center", __name__)
