"""Every setting the portal reads, from the environment, in one place.

Each entry of SETTINGS is (environment name, default, description); the README's
settings table is generated from the same list (`flask settings`), so the two
cannot drift. The embedded default needs nothing set: SQLite and a generated
SECRET_KEY in ``instance/``, mail written to ``instance/mail/``.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (name, default, what it does). Defaults are strings as they would appear in
# the environment; `load()` converts them.
SETTINGS: list[tuple[str, str, str]] = [
    ("SECRET_KEY", "(generated into instance/secret_key, mode 0600)",
     "Signs session cookies and emailed links; derives the key that encrypts TOTP secrets."),
    ("DATABASE_URL", "sqlite:///instance/relay.db",
     "SQLAlchemy URL. PostgreSQL: postgresql+psycopg://user:pass@host/db."),
    ("INSTANCE_PATH", "instance/", "Folder for the SQLite file, the generated secret and file mail."),
    ("SITE_NAME", "Relay", "Product name shown in pages, mail and the privacy policy."),
    ("BASE_URL", "http://127.0.0.1:8000",
     ("Public address printed in pages, snippets and emailed links (no trailing slash). Unset: the "
      "address each request came in on, when its host is in ALLOWED_HOSTS or is loopback (behind "
      "TRUSTED_PROXIES, the host the proxy forwarded); otherwise, and for mail sent by a job, this "
      "default.")),
    ("ALLOWED_HOSTS", "",
     ("Comma-separated host names the portal answers on (e.g. relay.example.org). Set: a request naming "
      "any other host is refused with 400, and pages and mails may use the request's own address; "
      "empty: any host is answered, but only a loopback host's address is ever printed (so a forged "
      "Host header cannot put its own address into a sign-in or reset link).")),
    ("SESSION_COOKIE_SECURE", "true",
     "Send the session cookie over HTTPS only. `make run` sets false for plain-http local use."),
    ("SESSION_LIFETIME_HOURS", "336", "A login lasts this long without activity (default 14 days)."),
    ("REAUTH_WINDOW_MINUTES", "10",
     "Dangerous actions (2FA off, email or password change) need a login this recent."),
    ("MIN_AGE", "18", "Minimum age a person must confirm at signup (P03)."),
    ("PASSWORD_MIN_LENGTH", "10", "Shortest accepted password."),
    ("PASSWORD_MAX_LENGTH", "128", "Longest accepted password."),
    ("VERIFY_LINK_HOURS", "48", "An email verification link expires after this many hours."),
    ("RESET_LINK_MINUTES", "60", "A password reset link expires after this many minutes."),
    ("MAGIC_LINK_MINUTES", "15", "A passwordless sign-in link expires after this many minutes (P05)."),
    ("ARGON2_TIME_COST", "3", "Argon2id iterations; a change rehashes passwords on next login (P01)."),
    ("ARGON2_MEMORY_COST", "65536", "Argon2id memory in KiB."),
    ("ARGON2_PARALLELISM", "4", "Argon2id lanes."),
    ("RATELIMIT_STORAGE_URI", "memory://",
     "Flask-Limiter storage. Use redis://host:port/0 when running several processes."),
    ("RATELIMIT_AUTH", "10 per minute;50 per hour",
     "Limit on login, signup, reset and magic-link requests, per client address and per account."),
    ("RATELIMIT_RESEND", "3 per hour", "Limit on resending the verification mail, per account."),
    ("MAIL_FROM", "Relay <no-reply@relay.local>", "From: address of every message."),
    ("MAIL_TRANSPORT", "file",
     "file (writes .eml files into MAIL_DIR), console (logs that a message went out), or smtp."),
    ("MAIL_DIR", "instance/mail/", "Where the file transport writes messages."),
    ("SMTP_HOST", "localhost", "SMTP server for the smtp transport."),
    ("SMTP_PORT", "25", "SMTP port."),
    ("SMTP_USERNAME", "", "SMTP login, if the server needs one."),
    ("SMTP_PASSWORD", "", "SMTP password."),
    ("SMTP_STARTTLS", "false", "Upgrade the SMTP connection with STARTTLS."),
    ("MAIL_WORKER", "thread",
     "thread: each web process sends queued mail in the background; off: only `flask mail send`."),
    ("MAIL_MAX_ATTEMPTS", "8", "A message is retried with backoff this many times, then marked failed."),
    ("PRIVACY_CONTACT", "privacy@relay.local", "Where people send privacy requests; shown in the policy."),
    ("COMPANY_NAME", "Relay operator", "The controller named in the privacy policy."),
    ("SUB_PROCESSORS", "Stripe (payments, US);OpenAI (model provider, US);Anthropic (model provider, US)",
     "Semicolon-separated list shown in the privacy policy."),
    ("METADATA_RETENTION_DAYS", "90", "Per-request metadata is kept this many days (P60)."),
    ("AGGREGATE_RETENTION_MONTHS", "13", "Daily usage aggregates are kept this many months (P60)."),
    ("AUDIT_RETENTION_DAYS", "90", "Audit log rows are kept this many days (P60)."),
    ("MAIL_RETENTION_DAYS", "30",
     "Sent or failed outbox mail (address, subject, kind, times) is kept this many days (P52, P60)."),
    ("BILLING_RETENTION_YEARS", "7", "Billing records are kept this many years (P52, P60)."),
    ("REQUEST_DUE_DAYS", "30", "A privacy request is due this many days after it is received (P54)."),
    ("DELETION_GRACE_DAYS", "7",
     "After a deletion request the person may cancel for this many days; then the job erases (P52)."),
    ("EXPORT_LINK_HOURS", "48", "A data export's single-use download link expires after this many hours (P51)."),
    ("RATELIMIT_EXPORT_REQUEST", "10 per day", "Limit on export requests from the privacy center, per account."),
    ("RATELIMIT_EXPORT_API", "3 per hour", "Limit on GET /api/v1/export, per API key."),
    ("EXPORT_DIR", "instance/exports/", "Where finished export ZIP files wait for their download."),
    ("EXPORT_WORKER", "thread",
     "thread: each web process builds queued exports in the background; off: only `flask jobs run`."),
    ("JOBS_SCHEDULER", "thread",
     "thread: the web process runs the retention job (`flask jobs run`) every JOBS_INTERVAL_MINUTES; "
     "off: run it from cron."),
    ("JOBS_INTERVAL_MINUTES", "60", "How often the in-process scheduler runs the retention job."),
    ("KEY_REVEAL", "true",
     "Keep an envelope-encrypted copy of each API key so its owner can reveal it after re-entering "
     "the password (P11). false: hash only, a lost key must be rotated."),
    ("KEY_ENCRYPTION_KEY", "(derived from SECRET_KEY)",
     "Master key (32 bytes, url-safe base64) that wraps each API key's data key."),
    ("KEY_PREFIX", "rk_", "Start of every API key, so leaked keys are easy to scan for."),
    ("PROVIDERS_FILE", "",
     "TOML file naming providers and model routes (see providers.example.toml). Empty: the portal "
     "runs and the relay answers that no model is configured."),
    ("MODELS_PAGE_PUBLIC", "true",
     ("Show the Models page (/models: models, prices, APIs, fallback providers) to visitors who are "
      "not signed in; false: signed-in people only.")),
    ("STRIPE_SECRET_KEY", "",
     "Stripe secret key (sk_live_… or sk_test_…). Empty: billing pages say how to enable payments."),
    ("STRIPE_WEBHOOK_SECRET", "", "Signing secret (whsec_…) of the Stripe webhook endpoint /billing/webhook."),
    ("STRIPE_API_BASE", "",
     "Stripe API address; empty: Stripe's own. Local runs and tests point it at the fake (tests/fakes/stripe.py)."),
    ("PREPAID", "auto",
     ("true: every account and team pays for requests from its prepaid balance and is refused at zero (P41); "
      "false: balances are not enforced; auto: true when STRIPE_SECRET_KEY is set.")),
    ("TOPUP_MIN_USD", "5", "Smallest top-up through Stripe Checkout, in USD."),
    ("TOPUP_MAX_USD", "1000", "Largest top-up, in USD."),
    ("BUDGET_DEFAULT_MAX_OUTPUT", "4096",
     ("Output tokens a budget hold allows for (and asks the provider to stop at) when the client sets no "
      "max_tokens and the model has no max_output in the providers file.")),
    ("RESERVATION_TIMEOUT_SECONDS", "45",
     ("A budget hold of a process that stopped renewing it (killed mid-request) is given back after this "
      "long; each process renews its live holds every third of it.")),
    ("REDIS_URL", "", "Redis for rate limits shared by every process (relay and portal); empty: in-process memory."),
    ("RELAY_KEY_RPM", "600", "Requests per minute per API key, unless the key sets its own (P25)."),
    ("RELAY_KEY_TPM", "2000000", "Tokens per minute per API key, unless the key sets its own."),
    ("RELAY_ACCOUNT_RPM", "1200", "Requests per minute per account, over all its keys."),
    ("RELAY_ACCOUNT_TPM", "4000000", "Tokens per minute per account."),
    ("RELAY_MAX_BODY_MB", "20", "Largest request body the relay accepts, in MiB."),
    ("USAGE_SPOOL_DIR", "instance/spool/",
     "Where each server process appends its usage rows before the client's last byte, so a killed "
     "worker loses none; the usage writer moves them into the database."),
    ("PORTAL_THREADS", "32",
     "Threads per server worker for the portal's pages (the relay's /v1/ runs on the event loop); "
     "a long export download holds one while it streams."),
    ("TRUSTED_PROXIES", "0",
     "How many reverse proxies in front of the app set X-Forwarded-For/-Proto/-Host (0: trust none)."),
    ("LOG_LEVEL", "INFO", "Python logging level."),
]


DEFAULT_BASE_URL = next(default for name, default, _ in SETTINGS if name == "BASE_URL")


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _instance_secret(instance: Path) -> str:
    """Read, or create once with mode 0600, the secret for a deployment that set none."""
    path = instance / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def load(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from the environment, then `overrides` (tests)."""
    overrides = dict(overrides or {})
    raw = {name: os.environ.get(name, default) for name, default, _ in SETTINGS}
    raw.update({k: v for k, v in overrides.items() if isinstance(v, str) and k in raw})

    instance = Path(raw["INSTANCE_PATH"])
    if not instance.is_absolute():
        instance = ROOT / instance
    instance.mkdir(parents=True, exist_ok=True)

    secret = overrides.get("SECRET_KEY") or os.environ.get("SECRET_KEY") or _instance_secret(instance)

    db_url = raw["DATABASE_URL"]
    if db_url == "sqlite:///instance/relay.db":
        db_url = f"sqlite:///{instance / 'relay.db'}"
    mail_dir = Path(raw["MAIL_DIR"])
    if not mail_dir.is_absolute():
        mail_dir = instance / "mail" if raw["MAIL_DIR"] == "instance/mail/" else ROOT / mail_dir
    spool_dir = Path(raw["USAGE_SPOOL_DIR"])
    if not spool_dir.is_absolute():
        spool_dir = instance / "spool" if raw["USAGE_SPOOL_DIR"] == "instance/spool/" else ROOT / spool_dir
    export_dir = Path(raw["EXPORT_DIR"])
    if not export_dir.is_absolute():
        export_dir = instance / "exports" if raw["EXPORT_DIR"] == "instance/exports/" else ROOT / export_dir

    cfg: dict[str, Any] = {
        "SECRET_KEY": secret,
        "INSTANCE_DIR": str(instance),
        "SQLALCHEMY_DATABASE_URI": db_url,
        # A liveness ping per checkout guards against dropped server connections;
        # a SQLite file has none to drop, and the relay checks out per request.
        # hide_parameters: a failed statement's message never carries its
        # values (a name, a message, an address) into a log line (P23).
        # insertmanyvalues_page_size: the usage writer inserts its batches as multi-row
        # INSERT ... RETURNING statements, one text per batch size, and each connection
        # keeps its recent prepared statements (SQLite's cache of 128, psycopg's prepared
        # ones): with pages of up to 1,000 rows those grew a worker by ~70 MiB under
        # load; with pages of 40 they stay small.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": not db_url.startswith("sqlite"), "hide_parameters": True,
                                      "insertmanyvalues_page_size": 40},
        "SITE_NAME": raw["SITE_NAME"],
        "BASE_URL": raw["BASE_URL"].strip().rstrip("/") or DEFAULT_BASE_URL,
        # Set by the deployment (not the default): app/urls.py prints it instead of the request's origin.
        "BASE_URL_EXPLICIT": bool(raw["BASE_URL"].strip()) and ("BASE_URL" in overrides or "BASE_URL" in os.environ),
        # P02: one cookie, HttpOnly, Secure, SameSite=Lax.
        "SESSION_COOKIE_NAME": "session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SECURE": _bool(raw["SESSION_COOKIE_SECURE"]),
        "SESSION_COOKIE_SAMESITE": "Lax",
        "PERMANENT_SESSION_LIFETIME": int(raw["SESSION_LIFETIME_HOURS"]) * 3600,
        "REMEMBER_COOKIE_NAME": "session",  # Flask-Login's remember cookie is never set
        "REAUTH_WINDOW_MINUTES": int(raw["REAUTH_WINDOW_MINUTES"]),
        "MIN_AGE": int(raw["MIN_AGE"]),
        "PASSWORD_MIN_LENGTH": int(raw["PASSWORD_MIN_LENGTH"]),
        "PASSWORD_MAX_LENGTH": int(raw["PASSWORD_MAX_LENGTH"]),
        "VERIFY_LINK_HOURS": int(raw["VERIFY_LINK_HOURS"]),
        "RESET_LINK_MINUTES": int(raw["RESET_LINK_MINUTES"]),
        "MAGIC_LINK_MINUTES": int(raw["MAGIC_LINK_MINUTES"]),
        "ARGON2_TIME_COST": int(raw["ARGON2_TIME_COST"]),
        "ARGON2_MEMORY_COST": int(raw["ARGON2_MEMORY_COST"]),
        "ARGON2_PARALLELISM": int(raw["ARGON2_PARALLELISM"]),
        "RATELIMIT_STORAGE_URI": (raw["REDIS_URL"] if raw["RATELIMIT_STORAGE_URI"] == "memory://"
                                  and raw["REDIS_URL"] else raw["RATELIMIT_STORAGE_URI"]),
        "RATELIMIT_AUTH": raw["RATELIMIT_AUTH"],
        "RATELIMIT_RESEND": raw["RATELIMIT_RESEND"],
        "RATELIMIT_HEADERS_ENABLED": False,
        "MAIL_FROM": raw["MAIL_FROM"],
        "MAIL_TRANSPORT": raw["MAIL_TRANSPORT"],
        "MAIL_DIR": str(mail_dir),
        "SMTP_HOST": raw["SMTP_HOST"],
        "SMTP_PORT": int(raw["SMTP_PORT"]),
        "SMTP_USERNAME": raw["SMTP_USERNAME"],
        "SMTP_PASSWORD": raw["SMTP_PASSWORD"],
        "SMTP_STARTTLS": _bool(raw["SMTP_STARTTLS"]),
        "MAIL_WORKER": raw["MAIL_WORKER"],
        "MAIL_MAX_ATTEMPTS": int(raw["MAIL_MAX_ATTEMPTS"]),
        "PRIVACY_CONTACT": raw["PRIVACY_CONTACT"],
        "COMPANY_NAME": raw["COMPANY_NAME"],
        "SUB_PROCESSORS": [s.strip() for s in raw["SUB_PROCESSORS"].split(";") if s.strip()],
        "METADATA_RETENTION_DAYS": int(raw["METADATA_RETENTION_DAYS"]),
        "AGGREGATE_RETENTION_MONTHS": int(raw["AGGREGATE_RETENTION_MONTHS"]),
        "AUDIT_RETENTION_DAYS": int(raw["AUDIT_RETENTION_DAYS"]),
        "MAIL_RETENTION_DAYS": int(raw["MAIL_RETENTION_DAYS"]),
        "BILLING_RETENTION_YEARS": int(raw["BILLING_RETENTION_YEARS"]),
        "REQUEST_DUE_DAYS": int(raw["REQUEST_DUE_DAYS"]),
        "DELETION_GRACE_DAYS": int(raw["DELETION_GRACE_DAYS"]),
        "EXPORT_LINK_HOURS": int(raw["EXPORT_LINK_HOURS"]),
        "RATELIMIT_EXPORT_REQUEST": raw["RATELIMIT_EXPORT_REQUEST"],
        "RATELIMIT_EXPORT_API": raw["RATELIMIT_EXPORT_API"],
        "EXPORT_DIR": str(export_dir),
        "EXPORT_WORKER": raw["EXPORT_WORKER"],
        "JOBS_SCHEDULER": raw["JOBS_SCHEDULER"],
        "JOBS_INTERVAL_MINUTES": int(raw["JOBS_INTERVAL_MINUTES"]),
        "KEY_REVEAL": _bool(raw["KEY_REVEAL"]),
        "KEY_ENCRYPTION_KEY": "" if raw["KEY_ENCRYPTION_KEY"].startswith("(") else raw["KEY_ENCRYPTION_KEY"],
        "KEY_PREFIX": raw["KEY_PREFIX"],
        "PROVIDERS_FILE": raw["PROVIDERS_FILE"],
        "MODELS_PAGE_PUBLIC": _bool(raw["MODELS_PAGE_PUBLIC"]),
        "STRIPE_SECRET_KEY": raw["STRIPE_SECRET_KEY"],
        "STRIPE_WEBHOOK_SECRET": raw["STRIPE_WEBHOOK_SECRET"],
        "STRIPE_API_BASE": raw["STRIPE_API_BASE"].strip().rstrip("/"),
        "PREPAID": (bool(raw["STRIPE_SECRET_KEY"]) if raw["PREPAID"].strip().lower() == "auto"
                    else _bool(raw["PREPAID"])),
        "TOPUP_MIN_USD": int(raw["TOPUP_MIN_USD"]),
        "TOPUP_MAX_USD": int(raw["TOPUP_MAX_USD"]),
        "BUDGET_DEFAULT_MAX_OUTPUT": int(raw["BUDGET_DEFAULT_MAX_OUTPUT"]),
        "RESERVATION_TIMEOUT_SECONDS": float(raw["RESERVATION_TIMEOUT_SECONDS"]),
        "REDIS_URL": raw["REDIS_URL"],
        "RELAY_LIMITS": {"key_rpm": int(raw["RELAY_KEY_RPM"]), "key_tpm": int(raw["RELAY_KEY_TPM"]),
                         "account_rpm": int(raw["RELAY_ACCOUNT_RPM"]),
                         "account_tpm": int(raw["RELAY_ACCOUNT_TPM"])},
        "MAX_CONTENT_LENGTH": int(raw["RELAY_MAX_BODY_MB"]) * 1024 * 1024,
        "USAGE_SPOOL_DIR": str(spool_dir),
        "PORTAL_THREADS": int(raw["PORTAL_THREADS"]),
        "TRUSTED_PROXIES": int(raw["TRUSTED_PROXIES"]),
        "ALLOWED_HOSTS": [h.strip().lower() for h in raw["ALLOWED_HOSTS"].split(",") if h.strip()],
        "LOG_LEVEL": raw["LOG_LEVEL"],
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "WTF_CSRF_SSL_STRICT": False,  # Referer checks break behind some proxies; SameSite + token suffice
    }
    cfg.update({k: v for k, v in overrides.items() if k not in raw or not isinstance(v, str)})
    return cfg
