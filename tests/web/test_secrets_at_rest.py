"""No password, TOTP secret, recovery code or emailed link is kept in clear:
after a whole account life cycle, the database and the logs are scanned for
each of them."""
from __future__ import annotations

import logging
import re

import pyotp
import pytest
import sqlalchemy as sa

from app.extensions import db
from tests.fakes.smtp import link

P1, P2, P3 = "first-Pa55word-canary", "second-Pa55word-canary", "third-Pa55word-canary"


def dump_database(app) -> str:
    """Every value of every row of every table, as text."""
    parts = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


@pytest.mark.promise("P01", "P05")
def test_no_secret_is_stored_or_logged_in_clear(app, client, forms, mail, caplog):
    caplog.set_level(logging.DEBUG)
    email = "canary@example.com"
    forms.post("/signup", {"email": email, "password": P1, "age_ok": "y", "accept_policy": "y"})
    verify_link = link(mail.wait_for(email, "Confirm"))
    client.get(verify_link.replace("http://localhost", ""))
    forms.post("/login", {"email": email, "password": P1})

    page = client.get("/account/2fa/setup").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)
    codes_page = forms.post("/account/2fa/setup", {"code": pyotp.TOTP(secret).now()},
                            page="/account/2fa/setup").get_data(as_text=True)
    recovery = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", codes_page)
    assert len(recovery) == 10

    forms.post("/account/password", {"current": P1, "password": P2, "confirm": P2})
    forms.post("/logout", {})
    forms.post("/forgot", {"email": email})
    reset_link = link(mail.wait_for(email, "Reset"))
    path = reset_link.replace("http://localhost", "")
    forms.post(path, {"password": P3, "confirm": P3}, page=path)
    forms.post("/login/link", {"email": email})
    magic_link = link(mail.wait_for(email, "sign-in link"))
    mail.deliver()

    stored = dump_database(app)
    logged = caplog.text
    tokens = [verify_link.rsplit("/", 1)[1], reset_link.rsplit("/", 1)[1], magic_link.rsplit("/", 1)[1]]
    for secret_value in [P1, P2, P3, secret, *recovery, *tokens]:
        assert secret_value not in stored, f"{secret_value[:8]}… is in the database"
        assert secret_value not in logged, f"{secret_value[:8]}… is in the logs"
    assert "$argon2id$" in stored
