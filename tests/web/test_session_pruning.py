"""Ended logins leave nothing behind (P60): a session row unused for
SESSION_LIFETIME_HOURS is deleted by the retention job, even when its cookie
never comes back (a lost laptop, a cleared browser), since otherwise only the
next request with that cookie would remove it."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app import jobs
from app.extensions import db
from app.models import UserSession
from app.models.types import utcnow
from tests.conftest import Forms

EMAIL = "ada@example.com"


def sign_in(app, password) -> tuple:
    client = app.test_client()
    assert Forms(client).post("/login", {"email": EMAIL, "password": password}).status_code == 302
    with app.app_context():
        newest = db.session.scalar(sa.select(UserSession.id).order_by(UserSession.id.desc()).limit(1))
    return client, newest


def row_html(page: str, row_id: str) -> str:
    start = page.index(f'id="{row_id}"')
    return page[start:page.index("</tr>", start)]


@pytest.mark.promise("P60")
def test_the_job_deletes_sessions_unused_for_the_lifetime(make_app, users):
    app = make_app(SESSION_LIFETIME_HOURS="48")
    users.create(EMAIL)
    laptop, laptop_id = sign_in(app, users.password)
    phone, phone_id = sign_in(app, users.password)
    lost, lost_id = sign_in(app, users.password)
    now = utcnow()
    with app.app_context():
        for sid, idle in ((laptop_id, timedelta(hours=1)), (phone_id, timedelta(hours=47)),
                          (lost_id, timedelta(hours=49))):
            db.session.execute(sa.update(UserSession).where(UserSession.id == sid)
                               .values(last_seen_at=now - idle))
        db.session.commit()

    jobs.run_all(app, now=now)
    with app.app_context():
        left = set(db.session.scalars(sa.select(UserSession.id)))
    assert left == {laptop_id, phone_id}, "the session unused for 49 hours is gone, the others stay"
    page = laptop.get("/privacy-center/data").get_data(as_text=True)
    assert "2 signed-in sessions" in row_html(page, "inv-security")

    # Two days later nobody came back: every row is gone.
    assert jobs.run_all(app, now=now + timedelta(hours=49))["sessions_pruned"] == 2
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(UserSession)) == 0
