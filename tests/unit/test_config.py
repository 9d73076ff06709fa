"""Settings: the embedded default needs nothing configured, and the README's
table is the same list the code reads."""
from __future__ import annotations

import os
import stat
from email import message_from_bytes
from pathlib import Path

from app import config, create_app
from app.config import SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def test_secret_key_is_generated_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    first = config.load({"INSTANCE_PATH": str(tmp_path)})["SECRET_KEY"]
    path = tmp_path / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 40
    assert config.load({"INSTANCE_PATH": str(tmp_path)})["SECRET_KEY"] == first


def test_embedded_default_is_sqlite_in_the_instance_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    cfg = config.load({"INSTANCE_PATH": str(tmp_path)})
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'relay.db'}"
    assert cfg["MAIL_TRANSPORT"] == "file"
    assert cfg["SESSION_COOKIE_SECURE"] is True  # off only when asked (make run, plain http)


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in SETTINGS if f"| `{name}` |" not in readme]
    assert not missing, f"README settings table lacks {missing}: regenerate it with `flask settings`"


def test_file_transport_writes_eml_into_the_mail_folder(tmp_path, database_url):
    from app.extensions import db
    from app.services import mail

    app = create_app({"DATABASE_URL": database_url, "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "k" * 40,
                      "MAIL_TRANSPORT": "file", "MAIL_WORKER": "off"})
    with app.app_context(), app.test_request_context():
        mail.queue("reader@example.com", "test:file", "Hello from the outbox", "notice_2fa", user=None, what="on")
        db.session.commit()
        assert mail.deliver_pending(app) == 1
        from app.models import OutboxMessage
        db.session.query(OutboxMessage).delete()
        db.session.commit()
    files = list((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 1
    msg = message_from_bytes(files[0].read_bytes())
    assert msg["To"] == "reader@example.com" and msg["Subject"] == "Hello from the outbox"


def test_providers_file_max_output_is_a_positive_whole_number(tmp_path):
    """P26: `max_output` bounds a budget hold, so the file refuses anything else."""
    import pytest

    from app.relay.providers import ProvidersFileError, load
    base = ('[providers.p]\nkind = "openai_compatible"\nbase_url = "http://127.0.0.1:9/v1"\n'
            '[[models]]\nname = "m"\ntargets = [ { provider = "p" } ]\n')
    path = tmp_path / "providers.toml"
    path.write_text(base + "max_output = 512\n")
    assert load(str(path)).models["m"].max_output == 512
    path.write_text(base)
    assert load(str(path)).models["m"].max_output is None
    for bad in ("0", "-5", "1.5", '"many"', "true"):
        path.write_text(base + f"max_output = {bad}\n")
        with pytest.raises(ProvidersFileError, match="max_output"):
            load(str(path))


def test_parse_dollars_reads_typed_amounts_exactly_and_names_what_is_wrong():
    """The one reader of typed dollar amounts (budgets, alerts, staff adjustments)."""
    from decimal import Decimal

    import pytest

    from app.numbers import NotDollars, parse_dollars
    assert parse_dollars(" $1,250.50 ") == Decimal("1250.50")
    assert parse_dollars("-2.5") == Decimal("-2.5") and parse_dollars("1e3") == Decimal(1000)
    assert parse_dollars("") is None and parse_dollars("  ") is None and parse_dollars(None) is None
    for text, reason in (("abc", "number"), ("١٢", "number"), ("1.2.3", "number"), ("0x10", "number"),
                         ("1.234", "cents"), ("NaN", "range"), ("-Infinity", "range")):
        with pytest.raises(NotDollars) as exc:
            parse_dollars(text)
        assert exc.value.reason == reason, text


def test_budget_holds_count_each_image_part_of_every_api_shape():
    """P26: an image is worth far more tokens than its bytes; each part adds IMAGE_TOKENS to a hold."""
    from app.relay.budget import image_parts
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "image of a cat"},
                                                      {"type": "image_url", "image_url": {"url": "https://x/y"}}]}]}
    messages = {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}] * 2}]}
    responses = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:..."}]}]}
    assert (image_parts(chat), image_parts(messages), image_parts(responses)) == (1, 2, 1)
    assert image_parts({"messages": [{"role": "user", "content": "the word image alone"}]}) == 0
