"""Data export (P51): a ZIP of everything stored about one person, as JSON and CSV.

The same writer serves two callers. The portal queues an export
(`request_export`), a background worker (`ExportWorker`, or `flask jobs run`
through `run_pending`) builds it into a file under EXPORT_DIR and mails a
single-use link; the API streams it straight to the client (`iter_zip`).

Memory stays bounded whatever the account's size: rows are read in pages by
keyset (never OFFSET, never the whole table), every file inside the ZIP is
written row by row through zipfile's streaming writer, and the API drains the
compressed bytes to the client as they are produced. Secrets never enter the
export: the column lists below are allow-lists, so a column added to a model
later stays out until someone decides it belongs to the person.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Flask, current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    Budget,
    ConsentEvent,
    DataExport,
    LedgerEntry,
    OutboxMessage,
    PolicyAcceptance,
    PolicyVersion,
    PrivacyRequest,
    Team,
    TeamMember,
    UsageDaily,
    UsageRecord,
    User,
    UserSession,
    Wallet,
)
from app.models.billing import to_usd
from app.models.types import utcnow
from app.services import ServiceError
from app.services.audit import record_event
from app.services.crypto import token_hash, token_hasher
from app.services.worker import BackgroundWorker
from app.urls import public_base_url

log = logging.getLogger(__name__)

BATCH = 5000            # rows per keyset page
YIELD_EVERY = 1000      # rows between drains of the ZIP stream (bounds the API's buffer)
PROGRESS_EVERY = 5000   # rows between progress commits while building
STALE_RUNNING = timedelta(hours=6)   # a build this old died with its process
IN_FLIGHT = ("queued", "running")  # the partial unique index uq_data_exports_in_flight says the same
BUSY = ("An export is already being prepared. It will be ready in a few minutes; "
        "we will email you when it is.")
STATUS_LABELS = {"queued": "Waiting to start", "running": "Being prepared", "ready": "Ready to download",
                 "failed": "Failed", "downloaded": "Downloaded", "expired": "Expired"}


# ---- what goes into the ZIP ------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    name: str
    # text int bool time date decimal json jsonraw (JSON text written by our own code)
    # units (an integer amount of 10⁻⁸ USD, written as exact dollars)
    kind: str = "text"
    about: str = ""


@dataclass(frozen=True)
class Category:
    """One `<name>.json` + `<name>.csv` pair. `select` lists the columns (labelled
    with the output names) and the conditions that make them this person's;
    `keyset` is the ordered key the pages walk, ending with a unique column."""

    name: str
    about: str
    columns: tuple[Column, ...]
    select: Callable[[int], sa.Select]
    keyset: Callable[[], tuple]
    count: Callable[[int], sa.Select]
    derive: Callable[[dict], dict] | None = None


def _t(*cols: Column) -> tuple[Column, ...]:
    return cols


def _profile_select(uid: int) -> sa.Select:
    u = User
    return sa.select(u.id.label("id"), u.email.label("email"), u.name.label("name"), u.company.label("company"),
                     u.created_at.label("created_at"), u.email_verified_at.label("email_verified_at"),
                     u.age_confirmed_at.label("age_confirmed_at"),
                     u.totp_enabled_at.label("two_factor_enabled_at"),
                     u.marketing_email.label("marketing_email"),
                     u.preference_cookies.label("preference_cookies"),
                     u.restricted_at.label("restricted_at"),
                     u.deletion_requested_at.label("deletion_requested_at"),
                     u.is_staff.label("is_staff")).where(u.id == uid)


def _sessions_select(uid: int) -> sa.Select:
    s = UserSession
    return sa.select(s.id.label("id"), s.created_at.label("created_at"), s.last_seen_at.label("last_seen_at"),
                     s.authenticated_at.label("authenticated_at"), s.method.label("method"),
                     s.user_agent.label("user_agent")).where(s.user_id == uid)


def _keys_select(uid: int) -> sa.Select:
    k = ApiKey
    return sa.select(k.id.label("id"), k.name.label("name"), k.prefix.label("_prefix"), k.last4.label("_last4"),
                     k.team_id.label("team_id"), k.created_at.label("created_at"),
                     k.last_used_at.label("last_used_at"), k.expires_at.label("expires_at"),
                     k.revoked_at.label("revoked_at"), k.rotated_at.label("rotated_at"),
                     k.suspended_at.label("suspended_at"), k.allowed_models.label("allowed_models"),
                     k.rpm_limit.label("rpm_limit"), k.tpm_limit.label("tpm_limit")).where(k.user_id == uid)


def _teams_select(uid: int) -> sa.Select:
    m = TeamMember
    return (sa.select(m.id.label("id"), m.team_id.label("team_id"), Team.name.label("team_name"),
                      Team.slug.label("team_slug"), m.role.label("role"), m.joined_at.label("joined_at"))
            .join(Team, Team.id == m.team_id).where(m.user_id == uid))


def _key_derive(row: dict) -> dict:
    row["key"] = f"{row.pop('_prefix')}…{row.pop('_last4')}"
    now = utcnow()
    row["state"] = ("revoked" if row["revoked_at"] else
                    "expired" if row["expires_at"] and row["expires_at"] <= now else
                    "suspended" if row["suspended_at"] else "active")
    return row


USAGE_COLUMNS = _t(
    Column("id", "int"), Column("request_id"), Column("user_id", "int"), Column("team_id", "int"),
    Column("api_key_id", "int"), Column("project"), Column("tags", "jsonraw"), Column("started_at", "time"),
    Column("ended_at", "time"), Column("model"), Column("provider"), Column("input_tokens", "int"),
    Column("output_tokens", "int"), Column("cache_read_tokens", "int"), Column("cache_write_tokens", "int"),
    Column("cost_usd", "decimal"), Column("ttft_ms", "int"), Column("latency_ms", "int"),
    Column("status_code", "int"), Column("error_class"), Column("routing_trace", "jsonraw"),
    Column("usage_source"),
)


def _raw(col):
    """The driver's own value, without SQLAlchemy's per-value result processing:
    on the million-row table that processing is most of the allocations. The
    converters below accept both forms (a SQLite text time, a PostgreSQL
    datetime, a float or a Decimal)."""
    return sa.type_coerce(col, sa.types.NullType())


def _usage_select(uid: int) -> sa.Select:
    t = UsageRecord.__table__
    return sa.select(*(_raw(t.c[c.name]).label(c.name) for c in USAGE_COLUMNS)).where(t.c.user_id == uid)


def _usage_keyset() -> tuple:
    t = UsageRecord.__table__
    return (_raw(t.c.started_at).label("started_at"), _raw(t.c.id).label("id"))


def _daily_select(uid: int) -> sa.Select:
    d = UsageDaily
    return sa.select(d.id.label("id"), d.day.label("day"), d.team_id.label("team_id"),
                     d.api_key_id.label("api_key_id"), d.model.label("model"), d.provider.label("provider"),
                     d.requests.label("requests"), d.errors.label("errors"), d.input_tokens.label("input_tokens"),
                     d.output_tokens.label("output_tokens"), d.cache_read_tokens.label("cache_read_tokens"),
                     d.cache_write_tokens.label("cache_write_tokens"),
                     d.cost_usd.label("cost_usd")).where(d.user_id == uid)


def _consents_select(uid: int) -> sa.Select:
    c = ConsentEvent
    return (sa.select(c.id.label("id"), c.created_at.label("created_at"), c.purpose.label("purpose"),
                      c.granted.label("granted"), c.source.label("source"),
                      PolicyVersion.number.label("policy_version"))
            .outerjoin(PolicyVersion, PolicyVersion.id == c.policy_version_id).where(c.user_id == uid))


def _requests_select(uid: int) -> sa.Select:
    r = PrivacyRequest
    return sa.select(r.id.label("id"), r.kind.label("kind"), r.channel.label("channel"), r.status.label("status"),
                     r.details.label("details"), r.received_at.label("received_at"), r.due_at.label("due_at"),
                     r.extended_at.label("extended_at"), r.extension_reason.label("extension_reason"),
                     r.verified_at.label("verified_at"), r.verification_method.label("verification_method"),
                     r.outcome.label("outcome"), r.outcome_reason.label("outcome_reason"),
                     r.closed_at.label("closed_at"), r.execute_after.label("execute_after"),
                     r.executed_at.label("executed_at")).where(r.user_id == uid)


def _acceptances_select(uid: int) -> sa.Select:
    a = PolicyAcceptance
    return (sa.select(a.id.label("id"), a.accepted_at.label("accepted_at"), a.context.label("context"),
                      PolicyVersion.number.label("policy_version"),
                      PolicyVersion.effective_at.label("policy_effective_at"))
            .outerjoin(PolicyVersion, PolicyVersion.id == a.policy_version_id).where(a.user_id == uid))


def _exports_select(uid: int) -> sa.Select:
    e = DataExport
    return sa.select(e.id.label("id"), e.source.label("source"), e.status.label("status"),
                     e.created_at.label("created_at"), e.started_at.label("started_at"),
                     e.finished_at.label("finished_at"), e.expires_at.label("expires_at"),
                     e.downloaded_at.label("downloaded_at"), e.size_bytes.label("size_bytes")).where(e.user_id == uid)


def _wallet_select(uid: int) -> sa.Select:
    # The personal wallet only: a team's wallet is the team's, not this person's.
    w = Wallet
    return sa.select(w.id.label("id"), w.anon_ref.label("anon_ref"), w.payment_method.label("payment_method"),
                     w.stripe_customer_id.label("stripe_customer_id"), w.balance_units.label("balance_usd"),
                     w.created_at.label("created_at")).where(w.user_id == uid, w.team_id.is_(None))


def _personal_wallet(uid: int):
    return (sa.select(Wallet.id).where(Wallet.user_id == uid, Wallet.team_id.is_(None))
            .scalar_subquery())


def _ledger_where(uid: int):
    # One wallet id, so the pages walk the (wallet_id, created_at) index.
    return LedgerEntry.wallet_id == _personal_wallet(uid)


def _ledger_select(uid: int) -> sa.Select:
    e = LedgerEntry
    return sa.select(e.id.label("id"), e.created_at.label("created_at"), e.kind.label("kind"),
                     e.amount_units.label("amount_usd"), e.reference.label("reference"),
                     e.memo.label("memo")).where(_ledger_where(uid))


def _ledger_keyset() -> tuple:
    return (LedgerEntry.created_at.label("created_at"), LedgerEntry.id.label("id"))


def _budgets_select(uid: int) -> sa.Select:
    b = Budget
    return sa.select(b.id.label("id"), b.target.label("target"), b.scope.label("scope"),
                     b.team_id.label("team_id"), b.api_key_id.label("api_key_id"),
                     b.monthly_units.label("monthly_usd"), b.total_units.label("total_usd"),
                     b.created_at.label("created_at"), b.updated_at.label("updated_at")).where(b.user_id == uid)


def _audit_where(uid: int):
    return sa.or_(AuditEvent.subject_id == uid, AuditEvent.actor_id == uid)


def _audit_select(uid: int) -> sa.Select:
    a = AuditEvent
    return sa.select(a.id.label("id"), a.created_at.label("created_at"), a.event.label("event"),
                     a.actor_id.label("_actor"), a.subject_id.label("_subject"),
                     a.details.label("details")).where(_audit_where(uid))


def _audit_derive(uid: int) -> Callable[[dict], dict]:
    def derive(row: dict) -> dict:
        actor, subject = row.pop("_actor"), row.pop("_subject")
        row["by"] = "you" if actor == uid else "system" if actor is None else "staff or another account"
        row["about"] = "you" if subject == uid else "another account"
        return row
    return derive


def _emails_select(uid: int) -> sa.Select:
    # By account, never by address: an address can belong to someone else
    # before or after this person, and their mail is not this person's.
    m = OutboxMessage
    return sa.select(m.id.label("id"), m.created_at.label("created_at"), m.kind.label("kind"),
                     m.to_addr.label("to"), m.subject.label("subject"), m.sent_at.label("sent_at"),
                     m.failed_at.label("failed_at")).where(m.user_id == uid)


def _count(model, cond: Callable[[int], Any]) -> Callable[[int], sa.Select]:
    return lambda uid: sa.select(sa.func.count()).select_from(model).where(cond(uid))


def categories(uid: int) -> list[Category]:
    """Every category stored about a person, in the order the ZIP holds them."""
    by_id = lambda col: (lambda: (col,))  # noqa: E731
    return [
        Category("profile", "Your account: address, optional name and company, when it was made and "
                 "confirmed, two-factor status (when it was turned on; never the secret), current "
                 "consents and any restriction or deletion request.",
                 _t(Column("id", "int"), Column("email"), Column("name"), Column("company"),
                    Column("created_at", "time"), Column("email_verified_at", "time"),
                    Column("age_confirmed_at", "time"), Column("two_factor_enabled_at", "time"),
                    Column("marketing_email", "bool"), Column("preference_cookies", "bool"),
                    Column("restricted_at", "time"), Column("deletion_requested_at", "time"),
                    Column("is_staff", "bool")),
                 _profile_select, by_id(User.id), _count(User, lambda u: User.id == u)),
        Category("sessions", "Your signed-in devices: when each login started and was last seen, how "
                 "you signed in, and the browser's user agent.",
                 _t(Column("id", "int"), Column("created_at", "time"), Column("last_seen_at", "time"),
                    Column("authenticated_at", "time"), Column("method"), Column("user_agent")),
                 _sessions_select, by_id(UserSession.id),
                 _count(UserSession, lambda u: UserSession.user_id == u)),
        Category("api_keys", "Your API keys' metadata: name, display form (prefix…last four), dates, "
                 "state, model allow-list and limits. Never the key itself, its hash or its "
                 "encrypted copy.",
                 _t(Column("id", "int"), Column("name"), Column("key"), Column("state"), Column("team_id", "int"),
                    Column("created_at", "time"), Column("last_used_at", "time"), Column("expires_at", "time"),
                    Column("revoked_at", "time"), Column("rotated_at", "time"), Column("suspended_at", "time"),
                    Column("allowed_models", "json"), Column("rpm_limit", "int"), Column("tpm_limit", "int")),
                 _keys_select, by_id(ApiKey.id), _count(ApiKey, lambda u: ApiKey.user_id == u),
                 derive=_key_derive),
        Category("team_memberships", "The teams you belong to, your role in each and when you joined. "
                 "The keys you made for a team are in api_keys, with its team_id.",
                 _t(Column("id", "int"), Column("team_id", "int"), Column("team_name"), Column("team_slug"),
                    Column("role"), Column("joined_at", "time")),
                 _teams_select, by_id(TeamMember.id), _count(TeamMember, lambda u: TeamMember.user_id == u)),
        Category("usage", "One row per request you sent through the relay: exactly the metadata our "
                 "privacy policy lists (request id, key, project, tags, times, model, provider, token "
                 "counts, cost, latency, status, error class, routing trace). Never a prompt or a reply: "
                 "we do not keep them.",
                 USAGE_COLUMNS, _usage_select,
                 _usage_keyset,
                 _count(UsageRecord, lambda u: UsageRecord.user_id == u)),
        Category("usage_daily", "Daily totals per model and key, kept after the per-request rows are "
                 "deleted under the retention policy.",
                 _t(Column("id", "int"), Column("day", "date"), Column("team_id", "int"),
                    Column("api_key_id", "int"), Column("model"), Column("provider"), Column("requests", "int"),
                    Column("errors", "int"), Column("input_tokens", "int"), Column("output_tokens", "int"),
                    Column("cache_read_tokens", "int"), Column("cache_write_tokens", "int"),
                    Column("cost_usd", "decimal")),
                 _daily_select, by_id(UsageDaily.id), _count(UsageDaily, lambda u: UsageDaily.user_id == u)),
        Category("wallet", "Your prepaid wallet: its anonymous id (the only thing it is tied to after "
                 "you delete your account), the display form of the card you last paid with (never its "
                 "number), the id of your customer record at Stripe, our payment processor, its balance and "
                 "when it was opened. A team's wallet is the team's and is not here.",
                 _t(Column("anon_ref"), Column("payment_method"), Column("stripe_customer_id"),
                    Column("balance_usd", "units"),
                    Column("created_at", "time")),
                 _wallet_select, by_id(Wallet.id),
                 _count(Wallet, lambda u: sa.and_(Wallet.user_id == u, Wallet.team_id.is_(None)))),
        Category("ledger", "Every movement of your wallet's money: top-ups, charges (one per request, its "
                 "request id as reference and the model as memo), refunds and staff adjustments with "
                 "their reason. The ledger is kept indefinitely; corrections are new entries, never edits.",
                 _t(Column("created_at", "time"), Column("kind"), Column("amount_usd", "units"),
                    Column("reference"), Column("memo")),
                 _ledger_select, _ledger_keyset, _count(LedgerEntry, _ledger_where)),
        Category("budgets", "The spending limits on your account, your keys and your part of a team: "
                 "monthly and total amounts, and when they were set.",
                 _t(Column("id", "int"), Column("target"), Column("scope"), Column("team_id", "int"),
                    Column("api_key_id", "int"), Column("monthly_usd", "units"), Column("total_usd", "units"),
                    Column("created_at", "time"), Column("updated_at", "time")),
                 _budgets_select, by_id(Budget.id), _count(Budget, lambda u: Budget.user_id == u)),
        Category("consents", "Every consent you gave or withdrew: what, when, from where, and the "
                 "privacy policy version in force.",
                 _t(Column("id", "int"), Column("created_at", "time"), Column("purpose"),
                    Column("granted", "bool"), Column("source"), Column("policy_version", "int")),
                 _consents_select, by_id(ConsentEvent.id),
                 _count(ConsentEvent, lambda u: ConsentEvent.user_id == u)),
        Category("privacy_requests", "Your privacy requests (access, export, rectify, delete, restrict, "
                 "object), their due dates, verification, outcome and reason.",
                 _t(Column("id", "int"), Column("kind"), Column("channel"), Column("status"), Column("details"),
                    Column("received_at", "time"), Column("due_at", "time"), Column("extended_at", "time"),
                    Column("extension_reason"), Column("verified_at", "time"), Column("verification_method"),
                    Column("outcome"), Column("outcome_reason"), Column("closed_at", "time"),
                    Column("execute_after", "time"), Column("executed_at", "time")),
                 _requests_select, by_id(PrivacyRequest.id),
                 _count(PrivacyRequest, lambda u: PrivacyRequest.user_id == u)),
        Category("policy_acceptances", "Each privacy policy version you accepted, when, and where.",
                 _t(Column("id", "int"), Column("accepted_at", "time"), Column("context"),
                    Column("policy_version", "int"), Column("policy_effective_at", "time")),
                 _acceptances_select, by_id(PolicyAcceptance.id),
                 _count(PolicyAcceptance, lambda u: PolicyAcceptance.user_id == u)),
        Category("data_exports", "Your data exports: when requested, built, downloaded or expired. "
                 "Never the download link.",
                 _t(Column("id", "int"), Column("source"), Column("status"), Column("created_at", "time"),
                    Column("started_at", "time"), Column("finished_at", "time"), Column("expires_at", "time"),
                    Column("downloaded_at", "time"), Column("size_bytes", "int")),
                 _exports_select, by_id(DataExport.id), _count(DataExport, lambda u: DataExport.user_id == u)),
        Category("emails", "Messages we sent you or are about to send: when, what kind, to which address, "
                 "subject, and when it was delivered. Not the bodies: we empty them once sent, because "
                 "links in them are secrets. Sent mail is deleted after the retention period.",
                 _t(Column("id", "int"), Column("created_at", "time"), Column("kind"), Column("to"),
                    Column("subject"), Column("sent_at", "time"), Column("failed_at", "time")),
                 _emails_select, by_id(OutboxMessage.id),
                 _count(OutboxMessage, lambda u: OutboxMessage.user_id == u)),
        Category("audit_events", "The security and privacy log entries about you or made by you: time, "
                 "event, who acted (you, the system, or staff) and the recorded details.",
                 _t(Column("id", "int"), Column("created_at", "time"), Column("event"), Column("by"),
                    Column("about"), Column("details", "json")),
                 _audit_select, by_id(AuditEvent.id), _count(AuditEvent, _audit_where),
                 derive=_audit_derive(uid)),
    ]


README = """\
{site} — your data export
{rule}

Made {made} UTC for account {email}.

Each kind of data comes twice: as <name>.json (a JSON array of objects) and as
<name>.csv (the same rows and columns, UTF-8, with a header row). Times are UTC
in ISO 8601; money is a decimal string in US dollars, kept exact. In the CSV
files, lists and objects (tags, routing traces, audit details, model lists)
are written as JSON text, and text that starts with = + - @ gets a leading '
so a spreadsheet does not run it as a formula.

{files}
What is not here, on purpose: your password (we keep only an Argon2id hash and
never show it), your two-factor secret and recovery codes, your API keys
themselves (we keep a keyed hash to recognise them and, if reveal is on, an
encrypted copy that only a fresh sign-in opens), the tokens of sign-in cookies
and emailed links, the contents of requests you sent through the relay (we
never store prompts or replies), and your card's number (it never reaches us:
Stripe's own page takes it, and we keep only its display form).

Questions, or anything missing: write to {contact}.
"""


# ---- formatting -----------------------------------------------------------------------
# One converter per column, chosen once per category, so the per-row work is a
# list comprehension and two C encoders (orjson, csv): a million rows per minute.

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _dec(v):
    if v is None:
        return None
    if isinstance(v, float):  # SQLite keeps NUMERIC as REAL; the columns have 8 decimals
        return f"{v:.8f}"
    return format(Decimal(v), "f")


def _parse(v):
    return orjson.loads(v) if isinstance(v, str) else v


def _fragment(v):
    """JSON text the relay wrote with orjson, embedded as it is: parsing and
    re-encoding two values per row would be a third of a large export's work."""
    return None if v is None else orjson.Fragment(v)


def _iso(v):
    """ISO 8601 in UTC from an aware datetime, a naive UTC one, or SQLite's text."""
    if v is None:
        return None
    if isinstance(v, str):
        return v.replace(" ", "T", 1) + "+00:00"
    if v.tzinfo is None:
        return v.isoformat() + "+00:00"
    return v.isoformat()


def _date(v):
    return v if v is None or isinstance(v, str) else v.isoformat()


def _usd(v):
    """Whole 10⁻⁸ USD units as an exact dollar string. Our own number, never a
    client's text: a leading minus is a debit, not a formula (CSV too)."""
    return None if v is None else format(to_usd(int(v)), "f")


def _csv_text(v):
    """Text a spreadsheet would run as a formula gets a leading quote (CSV only)."""
    return "'" + v if v and v.startswith(_FORMULA) else v


def _csv_bool(v):
    return None if v is None else ("true" if v else "false")


def _csv_json(v):
    """Stored JSON text goes out as it is (it is what our code wrote)."""
    return v if v is None or isinstance(v, str) else orjson.dumps(v).decode()


_JSON_CONV = {"text": None, "int": None, "bool": None, "time": _iso, "date": _date, "decimal": _dec,
              "json": _parse, "jsonraw": _fragment, "units": _usd}
_CSV_CONV = {"text": _csv_text, "int": None, "bool": _csv_bool, "time": _iso, "date": _date, "decimal": _dec,
             "json": _csv_json, "jsonraw": None, "units": _usd}


def _convert_all(convs: list, rows: list[tuple]) -> list[list]:
    """Apply each column's converter; columns that need none are copied in C."""
    todo = [(i, c) for i, c in enumerate(convs) if c is not None]
    out = []
    for r in rows:
        row = list(r)
        for i, c in todo:
            row[i] = c(row[i])
        out.append(row)
    return out


def _pages(cat: Category, uid: int) -> Iterator[list[tuple]]:
    """The person's rows of one category in the order of `cat.columns`, page by
    page: WHERE key > last ORDER BY key LIMIT BATCH, so each page is one index
    range and memory holds one page."""
    keys = cat.keyset()
    base = cat.select(uid)
    names = [c.name for c in cat.columns]
    last: tuple | None = None
    while True:
        stmt = base
        if last is not None:
            if len(keys) == 1:
                stmt = stmt.where(keys[0] > last[0])
            else:  # (a, b) > (x, y), written so SQLite walks the (user_id, a) index
                stmt = stmt.where(keys[0] >= last[0], sa.or_(keys[0] > last[0], keys[1] > last[1]))
        result = db.session.execute(stmt.order_by(*keys).limit(BATCH))
        cols = list(result.keys())
        rows = result.all()
        if not rows:
            return
        at = [cols.index(k.key) for k in keys]
        last = tuple(rows[-1][i] for i in at)
        if cat.derive is not None:
            page = [cat.derive(dict(zip(cols, r, strict=True))) for r in rows]
            yield [tuple(d[n] for n in names) for d in page]
        else:
            idx = [cols.index(n) for n in names]
            yield rows if idx == list(range(len(cols))) else [tuple(r[i] for i in idx) for r in rows]
        if len(rows) < BATCH:
            return


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file that keeps what is written until drained.
    zipfile sees no `seek`/`tell` and writes a streamable ZIP (data descriptors)."""

    def __init__(self):
        super().__init__()
        self.chunks: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        self.chunks.append(data)
        self.size += len(data)
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        return out


def _chunks(rows: list, size: int = YIELD_EVERY) -> Iterator[list]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _write_zip(fp, user: User) -> Iterator[tuple[int, int]]:
    """Write the whole export into `fp`, yielding (rows written, rows in total)
    every YIELD_EVERY rows so the caller can report progress or drain `fp`.
    Each category is read twice (JSON, then CSV): files inside a ZIP are
    written one after the other, and a second pass costs less than holding one."""
    uid = user.id
    cats = categories(uid)
    counts = {c.name: db.session.scalar(c.count(uid)) or 0 for c in cats}
    total = 2 * sum(counts.values()) or 1
    done = 0
    cfg = current_app.config
    with zipfile.ZipFile(fp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        files = "".join(f"{c.name}.json / {c.name}.csv ({counts[c.name]:,} rows)\n    "
                        f"{c.about}\n    Columns: {', '.join(col.name for col in c.columns)}.\n\n" for c in cats)
        title = f"{cfg['SITE_NAME']} — your data export"
        zf.writestr("README.txt", README.format(site=cfg["SITE_NAME"], rule="=" * len(title),
                                                 made=utcnow().strftime("%Y-%m-%d %H:%M"), email=user.email,
                                                 files=files, contact=cfg["PRIVACY_CONTACT"]))
        for cat in cats:
            names = [c.name for c in cat.columns]
            # JSON: an array written one object at a time, never a list in memory.
            convs = [_JSON_CONV[c.kind] for c in cat.columns]
            with zf.open(f"{cat.name}.json", "w", force_zip64=True) as out:
                out.write(b"[")
                sep = b"\n"
                for page in _pages(cat, uid):
                    for part in _chunks(page):
                        out.write(sep + b",\n".join([orjson.dumps(dict(zip(names, values, strict=True)))
                                                      for values in _convert_all(convs, part)]))
                        sep = b",\n"
                        done += len(part)
                        yield done, total
                out.write(b"\n]\n")
            # CSV: the same rows and columns, one header line, RFC 4180 line ends.
            convs = [_CSV_CONV[c.kind] for c in cat.columns]
            with zf.open(f"{cat.name}.csv", "w", force_zip64=True) as out:
                text = io.StringIO()
                writer = csv.writer(text, lineterminator="\r\n")
                writer.writerow(names)
                for page in _pages(cat, uid):
                    for part in _chunks(page):
                        writer.writerows(_convert_all(convs, part))
                        out.write(text.getvalue().encode("utf-8"))
                        text.seek(0)
                        text.truncate()
                        done += len(part)
                        yield done, total
                out.write(text.getvalue().encode("utf-8"))
            yield done, total


def iter_zip(user: User) -> Iterator[bytes]:
    """The export as a stream of ZIP bytes, produced chunk by chunk (the API).
    Needs an app context for as long as it is iterated; the person is loaded
    again inside it, since a streamed response outlives the view's session."""
    return _iter_zip(user.id)


def _iter_zip(uid: int) -> Iterator[bytes]:
    user = db.session.get(User, uid)
    if user is None:
        return
    sink = _Sink()
    for _ in _write_zip(sink, user):
        if sink.size:
            yield sink.drain()
    # zipfile writes the central directory on close, after the last step.
    if sink.size:
        yield sink.drain()


# ---- the portal's queued exports ------------------------------------------------------

def request_export(user: User, source: str, request_id: int | None = None,
                   now: datetime | None = None) -> DataExport:
    """Queue an export in the caller's transaction; one at a time per person."""
    busy = db.session.scalar(sa.select(DataExport.id).where(DataExport.user_id == user.id,
                                                             DataExport.status.in_(IN_FLIGHT)).limit(1))
    if busy is not None:
        raise ServiceError(BUSY)
    # Two requests racing past the check: the partial unique index stops the
    # second, which inserts nothing. Not a savepoint: on SQLite, releasing one
    # that opened the transaction commits it, before the audit row and
    # whatever else the caller's transaction holds.
    insert = (postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert)(DataExport)
    export_id = db.session.execute(
        insert.values(user_id=user.id, source=source, request_id=request_id, status="queued", progress=0,
                      created_at=now or utcnow())
        .on_conflict_do_nothing().returning(DataExport.id)).scalar()
    if export_id is None:
        raise ServiceError(BUSY)
    exp = db.session.get(DataExport, export_id)
    record_event(user, "privacy:export:requested", export=exp.id, source=source, request=request_id)
    db.session.info["export_queued"] = True
    return exp


def exports_for(user: User, limit: int = 20) -> list[DataExport]:
    return list(db.session.scalars(sa.select(DataExport).where(DataExport.user_id == user.id)
                                   .order_by(DataExport.created_at.desc(), DataExport.id.desc()).limit(limit)))


def download_token(exp: DataExport) -> str | None:
    """The link's token, derived from the server secret and the file's random name.

    Only its keyed hash is stored (token_hash), so a copy of the database opens
    nothing; deriving it (rather than keeping it nowhere) lets the signed-in
    owner's page show the same single-use link the email carries."""
    if not exp.filename:
        return None
    derive = token_hasher(current_app.config["SECRET_KEY"], "export:download-link")
    return derive(f"{exp.id}:{exp.filename}")


def hash_download_token(token: str) -> str:
    return token_hash(token, "export")


def find_by_token(token: str) -> DataExport | None:
    if not token or len(token) > 128:
        return None
    return db.session.scalar(sa.select(DataExport).where(DataExport.token_hash == hash_download_token(token)))


def export_dir() -> Path:
    folder = Path(current_app.config["EXPORT_DIR"])
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def file_path(exp: DataExport) -> Path | None:
    return Path(current_app.config["EXPORT_DIR"]) / exp.filename if exp.filename else None


def _set_progress(export_id: int, percent: int) -> None:
    db.session.execute(sa.update(DataExport).where(DataExport.id == export_id).values(progress=percent))
    db.session.commit()


def build(app: Flask, export_id: int) -> None:
    """Build one claimed export into EXPORT_DIR, then mail its link. A failure
    leaves the row `failed` (the page offers a new request), never a half file."""
    with app.app_context():
        exp = db.session.get(DataExport, export_id)
        if exp is None or exp.status not in IN_FLIGHT:
            return
        user = db.session.get(User, exp.user_id)
        if user is None:
            return
        exp.status = "running"
        exp.started_at = exp.started_at or utcnow()
        exp.filename = secrets.token_urlsafe(24) + ".zip"  # random: the name says nothing
        db.session.commit()
        path = Path(app.config["EXPORT_DIR"]) / exp.filename
        part = path.with_name(path.name + ".part")
        try:
            export_dir()
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                last_done, last_pct = 0, 0
                for done, total in _write_zip(fh, user):
                    pct = min(99, done * 100 // total)
                    if pct != last_pct and done - last_done >= PROGRESS_EVERY:
                        _set_progress(export_id, pct)
                        last_done, last_pct = done, pct
            os.replace(part, path)
        except Exception as exc:  # type only: nothing of the data goes to the log
            log.error("export %s failed: %s", export_id, type(exc).__name__)
            db.session.rollback()
            try:
                part.unlink(missing_ok=True)
            except OSError:
                pass
            exp = db.session.get(DataExport, export_id)
            exp.status = "failed"
            exp.finished_at = utcnow()
            exp.filename = None
            record_event(None, "privacy:export:failed", subject=exp.user_id, export=export_id)
            db.session.commit()
            return
        exp = db.session.get(DataExport, export_id)
        user = db.session.get(User, exp.user_id)
        now = utcnow()
        exp.status = "ready"
        exp.progress = 100
        exp.finished_at = now
        exp.expires_at = now + timedelta(hours=app.config["EXPORT_LINK_HOURS"])
        exp.size_bytes = path.stat().st_size
        token = download_token(exp)
        exp.token_hash = hash_download_token(token)
        from app.services import mail

        mail.queue(user.email, "export_ready", "Your data export is ready", "export_ready", user=user,
                   link=f"{public_base_url()}/privacy-center/export/download/{token}",
                   hours=app.config["EXPORT_LINK_HOURS"], expires_at=exp.expires_at, size=exp.size_bytes)
        record_event(None, "privacy:export:ready", subject=user, export=exp.id, size=exp.size_bytes)
        db.session.commit()


def run_pending(app: Flask, limit: int = 5) -> int:
    """Claim and build up to `limit` queued exports; return how many were built.
    The claim is one conditional UPDATE, so two workers never build the same one."""
    built = 0
    with app.app_context():
        try:
            ids = list(db.session.scalars(sa.select(DataExport.id).where(DataExport.status == "queued")
                                          .order_by(DataExport.id).limit(limit)))
            db.session.commit()
            for export_id in ids:
                res = db.session.execute(sa.update(DataExport)
                                         .where(DataExport.id == export_id, DataExport.status == "queued")
                                         .values(status="running", started_at=utcnow(), progress=0))
                db.session.commit()
                if res.rowcount != 1:
                    continue  # another worker has it
                build(app, export_id)
                built += 1
        finally:
            db.session.remove()
    return built


def purge_expired(now: datetime | None = None) -> int:
    """Delete the files of exports past their link's expiry, downloaded, failed
    or abandoned, and any file no export points to (an erased account's).
    Returns how many exports changed. The caller commits."""
    now = now or utcnow()
    folder = Path(current_app.config["EXPORT_DIR"])
    on_disk = sorted(folder.iterdir()) if folder.is_dir() else []  # listed before the rows are read
    changed = 0
    expired = db.session.scalars(sa.select(DataExport).where(
        sa.or_(sa.and_(DataExport.status == "ready", DataExport.expires_at <= now),
               sa.and_(DataExport.status == "running", DataExport.started_at <= now - STALE_RUNNING),
               sa.and_(DataExport.status.in_(("downloaded", "failed", "expired")),
                       DataExport.filename.is_not(None))))).all()
    for exp in expired:
        path = file_path(exp)
        if path is not None:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".part").unlink(missing_ok=True)
        if exp.status == "ready":
            exp.status = "expired"
            record_event(None, "privacy:export:expired", subject=exp.user_id, export=exp.id)
        elif exp.status == "running":
            exp.status = "failed"
            exp.finished_at = now
        exp.filename = None
        changed += 1
    db.session.flush()
    keep = set(db.session.scalars(sa.select(DataExport.filename).where(
        DataExport.status.in_(("queued", "running", "ready")), DataExport.filename.is_not(None))))
    for path in on_disk:
        name = path.name.removesuffix(".part")
        if path.is_file() and name.endswith(".zip") and name not in keep:
            path.unlink(missing_ok=True)
    return changed


def claim_download(exp: DataExport, user: User, now: datetime | None = None) -> Path | None:
    """Spend the link: mark the export downloaded with one conditional UPDATE
    (so two clicks cannot both win) and return its file, or None when the link
    is used, expired or its file gone. The caller commits."""
    now = now or utcnow()
    path = file_path(exp)
    if exp.status != "ready" or exp.expires_at is None or exp.expires_at <= now or path is None \
            or not path.is_file():
        return None
    res = db.session.execute(sa.update(DataExport).where(DataExport.id == exp.id, DataExport.status == "ready")
                             .values(status="downloaded", downloaded_at=now))
    if res.rowcount != 1:
        return None
    record_event(user, "privacy:export:downloaded", export=exp.id)
    return path


# ---- the background builder -----------------------------------------------------------

class ExportWorker(BackgroundWorker):
    """One builder thread per process, woken after a commit that queued an export."""

    name = "export-builder"

    def __init__(self, app: Flask, interval: float = 30.0):
        super().__init__(app, interval)

    def first_delay(self) -> float:
        return 0  # exports queued before the process started are built at once

    def work(self) -> None:
        try:
            while run_pending(self.app) and not self.stopping.is_set():
                pass
        except Exception as exc:
            log.error("export builder pass failed (%s); will try again", type(exc).__name__)


def init_app(app: Flask) -> None:
    if app.config.get("EXPORT_WORKER") != "thread":
        return
    worker = ExportWorker(app)
    app.extensions["export_worker"] = worker

    worker.start_with(app)


@event.listens_for(Session, "after_commit")
def _kick(session):
    """One listener for the process: wake the builder of the app whose session
    just committed a new export."""
    if session.info.pop("export_queued", False) and has_app_context():
        worker = current_app.extensions.get("export_worker")
        if worker is not None:
            worker.wake.set()
