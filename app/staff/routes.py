"""The staff area. Only accounts with the staff role get in; everyone else 403.
Its request queue arrives with the privacy issue; for now it shows the health
of the things staff answer for: the audit chain, the mail outbox, the policy."""
import sqlalchemy as sa
from flask import Blueprint, render_template
from flask_login import current_user

from app.extensions import db
from app.models import AuditEvent, OutboxMessage, User
from app.services import policy
from app.services.audit import record_event, verify_chain
from app.web import staff_required

bp = Blueprint("staff", __name__)


@bp.before_request
@staff_required
def _staff_only():
    pass


@bp.route("/")
def index():
    count = lambda q: db.session.scalar(sa.select(sa.func.count()).select_from(q)) or 0  # noqa: E731
    stats = {
        "accounts": count(sa.select(User.id).subquery()),
        "mail_pending": count(sa.select(OutboxMessage.id).where(
            OutboxMessage.sent_at.is_(None), OutboxMessage.failed_at.is_(None)).subquery()),
        "mail_failed": count(sa.select(OutboxMessage.id).where(OutboxMessage.failed_at.is_not(None)).subquery()),
        "audit_rows": count(sa.select(AuditEvent.id).subquery()),
    }
    chain = verify_chain()
    recent = db.session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(20)).all()
    record_event(current_user, "staff:dashboard:viewed")
    db.session.commit()
    return render_template("staff/index.html", stats=stats, chain=chain, recent=recent,
                           policy_version=policy.current_version())
