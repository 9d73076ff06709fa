"""The privacy policy, rendered from the settings the code enforces (P61).

The policy text is a template filled from settings (minimum age, retention
windows, sub-processors, contact). `current_version()` returns the stored
version whose text equals what the settings produce now, publishing a new
version when they changed, so /privacy can never describe rules the code
does not apply, and every text ever shown stays archived under its number.
"""
from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from flask import current_app, render_template
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import PolicyVersion
from app.models.types import utcnow

# The settings the policy text is made from; changing any of them makes a new version.
POLICY_SETTINGS = (
    "SITE_NAME", "COMPANY_NAME", "PRIVACY_CONTACT", "MIN_AGE", "SUB_PROCESSORS",
    "METADATA_RETENTION_DAYS", "AGGREGATE_RETENTION_MONTHS", "AUDIT_RETENTION_DAYS",
    "BILLING_RETENTION_YEARS", "MAGIC_LINK_MINUTES",
)


def policy_settings() -> dict:
    return {k: current_app.config[k] for k in POLICY_SETTINGS}


def render_body(settings: dict) -> str:
    return render_template("policy/_body.html", s=settings)


def current_version() -> PolicyVersion:
    settings = policy_settings()
    body = render_body(settings)
    digest = hashlib.sha256(body.encode()).hexdigest()
    existing = db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.digest == digest))
    if existing is not None:
        return existing
    return publish(settings, body, digest)


def publish(settings: dict, body: str, digest: str) -> PolicyVersion:
    """Store a new version. Two processes racing to publish the same text both
    end up with the one row (unique digest)."""
    from app.services.audit import record_event

    number = (db.session.scalar(sa.select(sa.func.max(PolicyVersion.number))) or 0) + 1
    now = utcnow()
    row = PolicyVersion(number=number, digest=digest, published_at=now, effective_at=now,
                        settings_json=json.dumps(settings, sort_keys=True), body_html=body)
    try:
        with db.session.begin_nested():
            db.session.add(row)
            record_event(None, "policy:version:published", number=number)
    except IntegrityError:
        return db.session.scalar(sa.select(PolicyVersion).where(PolicyVersion.digest == digest))
    db.session.commit()
    return row


def all_versions() -> list[PolicyVersion]:
    return list(db.session.scalars(sa.select(PolicyVersion).order_by(PolicyVersion.number.desc())))
