"""Billing records through their life (P41, P51, P52, P60): the ledger refuses
UPDATE and DELETE in the database itself; erasure keeps the personal wallet and
its ledger (same entries, same balance) under the wallet's anonymous id only,
and takes the person's budgets, alerts and spend counters; the export carries
the wallet, its ledger and the budgets; "what we keep" counts them; the job
deletes Stripe event ids past BILLING_RETENTION_YEARS and never a ledger row,
gives back stale holds and mails unsent alerts; `flask billing verify`,
`adjust` and `sweep`. The real database (SQLite or PostgreSQL), the real
services, the Flask test client."""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app import jobs
from app.extensions import db
from app.models import (
    ApiKey,
    AuditEvent,
    Budget,
    BudgetAlert,
    BudgetReservation,
    LedgerEntry,
    OutboxMessage,
    PrivacyRequest,
    SpendCounter,
    StripeEvent,
    Team,
    User,
    Wallet,
)
from app.models.billing import to_units
from app.models.types import utcnow
from app.services import deletion, exports, wallets
from app.services import keys as key_service
from app.services.dates import add_months

EMAIL = "ada@example.com"
MONTH = utcnow().strftime("%Y-%m")


def text(resp) -> str:
    return resp.get_data(as_text=True)


def count(model, *where) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def fund(app, *, user_id=None, team_id=None, entries=(("topup", "10"), ("charge", "-0.0123"),
                                                        ("adjustment", "-2.50")), card="Visa ending in 4242"):
    """A wallet with ledger entries posted through the service (balance moves with each)."""
    with app.app_context():
        w = wallets.open_for(user_id=user_id, team_id=team_id)
        w.payment_method = card
        db.session.flush()
        for i, (kind, usd) in enumerate(entries):
            ref = f"pi_{w.anon_ref}_{i}" if kind == "topup" else f"{kind}_{w.anon_ref}_{i}"
            memo = {"topup": "Card payment", "charge": "gpt-test", "adjustment": "Goodwill",
                    "refund": "Refund to card"}[kind]
            wallets.post(w.id, kind, to_units(usd), ref, memo)
        db.session.commit()
        return w.id, w.anon_ref


def ledger_of(wallet_id) -> list[tuple]:
    return [(e.id, e.kind, e.amount_units, e.reference, e.memo) for e in db.session.scalars(
        sa.select(LedgerEntry).where(LedgerEntry.wallet_id == wallet_id).order_by(LedgerEntry.id))]


# ---- the ledger is append-only in the database (P41) ----------------------------------

@pytest.mark.promise("P41")
def test_ledger_entries_refuse_update_and_delete_in_the_database(app, users):
    uid = users.create()
    wallet_id, _ = fund(app, user_id=uid)
    with app.app_context():
        before = ledger_of(wallet_id)
        entry_id = before[0][0]
        for statement in (f"UPDATE ledger_entries SET amount_units = 1 WHERE id = {entry_id}",
                          f"UPDATE ledger_entries SET memo = 'edited' WHERE wallet_id = {wallet_id}",
                          f"DELETE FROM ledger_entries WHERE id = {entry_id}",
                          "DELETE FROM ledger_entries"):
            with pytest.raises(sa.exc.DBAPIError) as refused:
                with db.engine.begin() as conn:
                    conn.execute(sa.text(statement))
            assert "append-only" in str(refused.value.orig), statement
        db.session.expire_all()
        assert ledger_of(wallet_id) == before
        # Inserting is what the ledger is for; it still works.
        wallets.post(wallet_id, "adjustment", to_units("1"), "adj_after", "More")
        db.session.commit()
        assert len(ledger_of(wallet_id)) == len(before) + 1
        assert wallets.verify() == []


# ---- erasure ------------------------------------------------------------------------------

@pytest.mark.promise("P52", "P41")
def test_erasure_keeps_the_wallet_and_ledger_under_its_anonymous_id_only(app, users, mail):
    uid = users.create()
    other = users.create("bob@example.com")
    with app.app_context():
        team = Team(name="Engines", slug="engines", created_at=utcnow())
        db.session.add(team)
        db.session.commit()
        team_id = team.id
        key, _ = key_service.create(db.session.get(User, uid), "laptop")
        db.session.commit()
        key_id = key.id
    wallet_id, anon_ref = fund(app, user_id=uid)
    team_wallet, team_ref = fund(app, team_id=team_id, entries=(("topup", "50"),))
    bob_wallet, _ = fund(app, user_id=other, entries=(("topup", "5"),))
    with app.app_context():
        kept = ledger_of(wallet_id)
        team_kept = ledger_of(team_wallet)
        balance = db.session.get(Wallet, wallet_id).balance_units
        now = utcnow()
        mine = [f"account:{uid}", f"key:{key_id}", f"member:{team_id}:{uid}"]
        theirs = [f"team:{team_id}", f"account:{other}", f"member:{team_id}:{other}", f"member:{team_id}1:{uid}0"]
        for target in mine + theirs:
            scope = target.split(":")[0]
            owner = uid if target in mine else (other if scope in ("account", "member") else None)
            db.session.add(Budget(target=target, scope=scope, user_id=owner,
                                  team_id=team_id if scope in ("team", "member") else None,
                                  api_key_id=key_id if scope == "key" else None, monthly_units=to_units(20)))
            db.session.add(SpendCounter(target=target, period=MONTH, spent_units=to_units(3), reserved_units=0))
            db.session.add(BudgetAlert(target=target, period=MONTH, kind="monthly", threshold=50,
                                       limit_units=to_units(20), user_id=owner,
                                       team_id=team_id if scope in ("team", "member") else None))
        db.session.add(BudgetAlert(target=f"wallet:{wallet_id}", period="after:1", kind="low_balance", threshold=0,
                                   limit_units=to_units(5), user_id=uid))
        # A hold left by a process that died mid-request, on the person's and the team's counters.
        hold = to_units("0.5")
        db.session.add(BudgetReservation(request_id="req_dead", amount_units=hold, wallet_id=team_wallet,
                                         holder="gone:1", counters=f"key:{key_id}|{MONTH},team:{team_id}|{MONTH}"))
        db.session.execute(sa.update(SpendCounter).where(SpendCounter.target.in_([f"key:{key_id}", f"team:{team_id}"]))
                           .values(reserved_units=hold))
        db.session.execute(sa.update(Wallet).where(Wallet.id == team_wallet).values(reserved_units=hold))
        db.session.commit()
        assert wallets.verify() == []

        req = deletion.request_deletion(db.session.get(User, uid), db.session.get(User, uid), now=now)
        db.session.commit()
        assert deletion.erase_due(req.execute_after + timedelta(minutes=1)) == 1
        db.session.expire_all()

        assert db.session.get(User, uid) is None
        w = db.session.get(Wallet, wallet_id)
        assert w.user_id is None and w.team_id is None and w.anon_ref == anon_ref
        assert w.balance_units == balance == to_units("7.4877")
        assert ledger_of(wallet_id) == kept, "the same entries, untouched"
        assert wallets.by_ref(anon_ref).id == wallet_id
        # The team's wallet and the other person's are untouched.
        tw = db.session.get(Wallet, team_wallet)
        assert tw.team_id == team_id and ledger_of(team_wallet) == team_kept and tw.reserved_units == 0
        assert db.session.get(Wallet, bob_wallet).user_id == other
        # Budgets, alerts and counters of the person go; the team's and others' stay.
        assert sorted(db.session.scalars(sa.select(Budget.target))) == sorted(theirs)
        assert sorted(db.session.scalars(sa.select(SpendCounter.target))) == sorted(theirs)
        assert sorted(db.session.scalars(sa.select(BudgetAlert.target))) == sorted(theirs)
        # The dead hold went back, so nothing drifts.
        assert count(BudgetReservation) == 0
        assert db.session.get(SpendCounter, (f"team:{team_id}", MONTH)).reserved_units == 0
        assert wallets.verify() == []
        erased = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.event == "privacy:deletion:erased"))
        details = json.loads(erased.details)
        assert details["wallets_kept"] == 1 and details["budgets"] == 3 and details["holds_released"] == 1
        assert anon_ref not in erased.details, "the audit trail does not tie the anonymous wallet to the id"
        # The closing message says what was kept, truthfully.
        closed = db.session.get(PrivacyRequest, req.id)
        assert "we take no payments" not in closed.outcome_reason
        assert "kept indefinitely" in closed.outcome_reason and "anonymous id" in closed.outcome_reason
        assert "7 years" in closed.outcome_reason
        # Twice is harmless.
        assert deletion.erase(uid) is False
        db.session.commit()
        assert ledger_of(wallet_id) == kept
    msg = mail.wait_for(EMAIL, "privacy request")
    assert "anonymous id" in msg.get_body().get_content()


def test_the_deletion_page_says_what_is_kept_of_billing(app, client, users, login):
    users.create()
    login()
    page = re.sub(r"\s+", " ", text(client.get("/privacy-center/delete/")))
    assert "we take no payments" not in page.lower()
    assert "ledger" in page and "indefinitely" in page and "7 years" in page and "anonymous id" in page


# ---- export -----------------------------------------------------------------------------

def read_zip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def json_and_csv(files, name) -> tuple[list[dict], list[dict]]:
    return (json.loads(files[f"{name}.json"]),
            list(csv.DictReader(io.StringIO(files[f"{name}.csv"].decode("utf-8"), newline=""))))


@pytest.mark.promise("P51", "P41")
def test_export_has_the_personal_wallet_its_ledger_and_budgets_not_the_teams(app, users):
    uid = users.create()
    other = users.create("bob@example.com")
    with app.app_context():
        team = Team(name="Engines", slug="engines", created_at=utcnow())
        db.session.add(team)
        db.session.commit()
        team_id = team.id
    wallet_id, anon_ref = fund(app, user_id=uid)
    _, team_ref = fund(app, team_id=team_id, entries=(("topup", "50"), ("charge", "-1")))
    _, bob_ref = fund(app, user_id=other, entries=(("topup", "5"),))
    with app.app_context():
        db.session.execute(sa.update(Wallet).where(Wallet.id == wallet_id).values(stripe_customer_id="cus_ada1"))
        db.session.add(Budget(target=f"account:{uid}", scope="account", user_id=uid, monthly_units=to_units("25"),
                              total_units=None))
        db.session.add(Budget(target=f"team:{team_id}", scope="team", team_id=team_id, monthly_units=to_units(9)))
        db.session.commit()
        files = read_zip(b"".join(exports.iter_zip(db.session.get(User, uid))))
        kept = ledger_of(wallet_id)
        created = db.session.get(Wallet, wallet_id).created_at
    readme = files["README.txt"].decode()
    for name in ("wallet", "ledger", "budgets"):
        assert f"{name}.json / {name}.csv" in readme

    (wallet,), (wallet_csv,) = json_and_csv(files, "wallet")
    assert wallet == {"anon_ref": anon_ref, "payment_method": "Visa ending in 4242",
                      "stripe_customer_id": "cus_ada1", "balance_usd": "7.48770000",
                      "created_at": wallet["created_at"]}
    assert wallet["created_at"].startswith(created.strftime("%Y-%m-%dT%H:%M:%S"))
    assert wallet_csv == {k: v or "" for k, v in wallet.items()}

    ledger, ledger_csv = json_and_csv(files, "ledger")
    assert [(e["kind"], e["amount_usd"], e["reference"], e["memo"]) for e in ledger] == [
        (kind, format(Decimal(units) / 100_000_000, ".8f"), ref, memo) for _, kind, units, ref, memo in kept]
    assert [e["amount_usd"] for e in ledger] == ["10.00000000", "-0.01230000", "-2.50000000"]
    assert list(ledger[0]) == ["created_at", "kind", "amount_usd", "reference", "memo"]
    # The CSV has the same rows; a debit is a number, not a formula to defuse.
    assert ledger_csv == [{k: v or "" for k, v in e.items()} for e in ledger]
    assert "\r\n" in files["ledger.csv"].decode() and ",-2.50000000," in files["ledger.csv"].decode()

    (budget,), (budget_csv,) = json_and_csv(files, "budgets")
    assert budget["target"] == f"account:{uid}" and budget["monthly_usd"] == "25.00000000"
    assert budget["total_usd"] is None and budget_csv["total_usd"] == ""
    # Nothing of the team's wallet, or anyone else's.
    blob = b"".join(files.values())
    for foreign in (team_ref, bob_ref, "50.00000000", "-1.00000000", f"team:{team_id}", "9.00000000"):
        assert foreign.encode() not in blob, foreign


def test_export_of_a_person_without_a_wallet_has_empty_billing_files(app, users):
    uid = users.create()
    with app.app_context():
        files = read_zip(b"".join(exports.iter_zip(db.session.get(User, uid))))
    for name in ("wallet", "ledger", "budgets"):
        assert json.loads(files[f"{name}.json"]) == []
        assert len(files[f"{name}.csv"].decode().splitlines()) == 1  # the header row only


# ---- what we keep --------------------------------------------------------------------------

def row_html(page: str, row_id: str) -> str:
    m = re.search(rf'<tr id="{row_id}">(.*?)</tr>', page, re.S)
    assert m, f"no row {row_id}"
    return re.sub(r"\s+", " ", m.group(1))


@pytest.mark.promise("P41", "P61")
def test_what_we_keep_counts_the_ledger_and_says_how_long(app, client, users, login):
    uid = users.create()
    login()
    billing = row_html(text(client.get("/privacy-center/data")), "inv-billing")
    assert "No billing records" in billing and "<strong>0</strong>" in billing and "7 years" in billing

    _, anon_ref = fund(app, user_id=uid)
    with app.app_context():
        db.session.add(Budget(target=f"account:{uid}", scope="account", user_id=uid, monthly_units=to_units(5)))
        db.session.commit()
    billing = row_html(text(client.get("/privacy-center/data")), "inv-billing")
    assert "<strong>3</strong>" in billing and "3 ledger entries" in billing
    assert "Visa ending in 4242" in billing and "Balance $7.49" in billing and anon_ref in billing
    assert "1 budget" in billing
    assert "indefinitely" in billing and "7 years" in billing and "anonymous id" in billing

    with app.app_context():
        db.session.execute(sa.update(Wallet).values(payment_method=None))
        db.session.commit()
    assert "No card details stored" in row_html(text(client.get("/privacy-center/data")), "inv-billing")


# ---- retention and the job ------------------------------------------------------------------

@pytest.mark.promise("P60", "P41")
def test_keep_billing_deletes_old_stripe_events_and_never_a_ledger_entry(app, users):
    uid = users.create()
    wallet_id, _ = fund(app, user_id=uid)
    now = utcnow()
    with app.app_context():
        years = app.config["BILLING_RETENTION_YEARS"]
        edge = add_months(now.date(), -12 * years)
        db.session.add_all([
            StripeEvent(id="evt_ancient", type="checkout.session.completed", received_at=now - timedelta(days=3000)),
            StripeEvent(id="evt_past_edge", type="refund.created",
                        received_at=now.replace(year=edge.year, month=edge.month, day=edge.day) - timedelta(days=2)),
            StripeEvent(id="evt_within", type="refund.created", received_at=now - timedelta(days=365 * years - 30)),
            StripeEvent(id="evt_new", type="checkout.session.completed", received_at=now)])
        # Ledger rows far older than any window (written directly: the database only refuses changes).
        db.session.execute(sa.update(Wallet).where(Wallet.id == wallet_id)
                           .values(balance_units=Wallet.balance_units + to_units(1)))
        db.session.add(LedgerEntry(wallet_id=wallet_id, kind="topup", amount_units=to_units(1), reference="pi_old",
                                   memo="Card payment", created_at=now - timedelta(days=365 * 20)))
        db.session.commit()
        entries = ledger_of(wallet_id)

        assert jobs.keep_billing(now) == 2
        assert sorted(db.session.scalars(sa.select(StripeEvent.id))) == ["evt_new", "evt_within"]
        assert ledger_of(wallet_id) == entries
        # Twenty years on: every event goes, the ledger and its wallet stay whole.
        assert jobs.keep_billing(now + timedelta(days=365 * 20)) == 2
        assert count(StripeEvent) == 0 and ledger_of(wallet_id) == entries
        assert wallets.verify() == []


@pytest.mark.promise("P26", "P42", "P60")
def test_the_job_gives_back_stale_holds_and_mails_unsent_alerts(app, users, mail):
    uid = users.create()
    wallet_id, _ = fund(app, user_id=uid)
    with app.app_context():
        hold = to_units("0.25")
        target = f"account:{uid}"
        db.session.add(SpendCounter(target=target, period=MONTH, spent_units=0, reserved_units=2 * hold))
        db.session.execute(sa.update(Wallet).where(Wallet.id == wallet_id).values(reserved_units=2 * hold))
        stale = utcnow() - timedelta(seconds=app.config["RESERVATION_TIMEOUT_SECONDS"] + 5)
        db.session.add(BudgetReservation(request_id="req_dead", amount_units=hold, counters=f"{target}|{MONTH}",
                                         wallet_id=wallet_id, holder="gone:1", created_at=stale, renewed_at=stale))
        db.session.add(BudgetReservation(request_id="req_live", amount_units=hold, counters=f"{target}|{MONTH}",
                                         wallet_id=wallet_id, holder="here:1"))
        db.session.add(Budget(target=target, scope="account", user_id=uid, monthly_units=to_units(1)))
        db.session.add(BudgetAlert(target=target, period=MONTH, kind="monthly", threshold=80,
                                   limit_units=to_units(1), user_id=uid))
        db.session.commit()
        assert wallets.verify() == []

    # The retention clock may run far ahead; the holds' staleness is wall-clock time.
    result = jobs.run_all(app, now=utcnow() + timedelta(days=400))
    assert result["holds_released"] == 1 and result["budget_alerts_queued"] == 1, result
    with app.app_context():
        assert list(db.session.scalars(sa.select(BudgetReservation.request_id))) == ["req_live"]
        assert db.session.get(SpendCounter, (target, MONTH)).reserved_units == hold
        assert db.session.get(Wallet, wallet_id).reserved_units == hold
        assert wallets.verify() == []
        assert db.session.scalar(sa.select(BudgetAlert.notified_at)) is not None
        assert count(OutboxMessage, OutboxMessage.kind == "billing:alert:monthly") == 1
    assert "80% of a budget used" in mail.wait_for(EMAIL, "budget").get("Subject")
    again = jobs.run_all(app)
    assert again["holds_released"] == 0 and again["budget_alerts_queued"] == 0


# ---- the CLI ----------------------------------------------------------------------------------

@pytest.mark.promise("P41")
def test_flask_billing_verify_reports_drift(app, users):
    uid = users.create()
    runner = app.test_cli_runner()
    out = runner.invoke(args=["billing", "verify"])
    assert out.exit_code == 0 and "No drift: 0 wallets, 0 ledger entries checked." in out.output

    wallet_id, anon_ref = fund(app, user_id=uid)
    fund(app, user_id=users.create("bob@example.com"), entries=(("topup", "5"),))
    out = runner.invoke(args=["billing", "verify"])
    assert out.exit_code == 0, out.output
    assert "No drift: 2 wallets, 4 ledger entries checked." in out.output

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE wallets SET balance_units = balance_units + 500000000 WHERE id = :w"),
                         {"w": wallet_id})
    out = runner.invoke(args=["billing", "verify"])
    assert out.exit_code == 1, out.output
    assert f"wallet {anon_ref} balance: cached 12.48770000 USD, derived 7.48770000 USD" in out.output
    assert "1 drift found: 2 wallets, 4 ledger entries checked." in out.output

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE wallets SET reserved_units = 7 WHERE id = :w"), {"w": wallet_id})
    out = runner.invoke(args=["billing", "verify"])
    assert out.exit_code == 1 and "2 drifts found" in out.output
    assert f"wallet {anon_ref} reserved: cached 0.00000007 USD, derived 0.00000000 USD" in out.output


@pytest.mark.promise("P41", "P55")
def test_flask_billing_adjust_is_audited_and_checked(app, users):
    uid = users.create()
    staff = users.create("grace@example.com", staff=True)
    users.create("mallory@example.com")
    wallet_id, anon_ref = fund(app, user_id=uid)
    runner = app.test_cli_runner()

    def adjust(*extra, staff_email="grace@example.com", wallet=anon_ref):
        return runner.invoke(args=["billing", "adjust", "--wallet", wallet, *extra, "--staff", staff_email])

    out = adjust("--amount", "-2.50", "--reason", "Double charge on 3 May")
    assert out.exit_code == 0, out.output
    assert f"wallet {anon_ref}: adjustment #" in out.output and "balance now 4.98770000 USD" in out.output
    refused = [adjust("--amount", "-2.50", "--reason", "Nope", staff_email="mallory@example.com"),
               adjust("--amount", "-2.50", "--reason", "Unknown staff", staff_email="nobody@example.com"),
               adjust("--amount", "1", "--reason", "No such wallet", wallet="w_0000000000000000"),
               adjust("--amount", "0", "--reason", "Zero changes nothing"),
               adjust("--amount", "1.234", "--reason", "Too many decimals"),
               adjust("--amount", "lots", "--reason", "Not a number"),
               adjust("--amount", "1", "--reason", "x")]
    assert [r.exit_code for r in refused] == [1] * len(refused), [r.output for r in refused]
    assert "no staff account" in refused[0].output and "no wallet" in refused[2].output
    assert "non-zero" in refused[3].output and "in cents" in refused[4].output
    assert "a number of dollars" in refused[5].output and "5 to 200 characters" in refused[6].output
    with app.app_context():
        adjustments = [e for e in ledger_of(wallet_id) if e[1] == "adjustment"]
        assert [(e[2], e[4]) for e in adjustments] == [(to_units("-2.50"), "Goodwill"),
                                                        (to_units("-2.50"), "Double charge on 3 May")]
        assert db.session.get(Wallet, wallet_id).balance_units == to_units("4.9877")
        (event,) = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == "billing:adjusted")).all()
        assert event.actor_id == staff and event.subject_id == uid
        assert json.loads(event.details)["amount"] == "-2.50"
        assert wallets.verify() == []


def test_flask_billing_sweep_releases_stale_holds_now(app, users):
    uid = users.create()
    wallet_id, _ = fund(app, user_id=uid)
    with app.app_context():
        stale = utcnow() - timedelta(minutes=10)
        db.session.add(BudgetReservation(request_id="req_dead", amount_units=5, counters="", wallet_id=wallet_id,
                                         holder="gone:1", created_at=stale, renewed_at=stale))
        db.session.execute(sa.update(Wallet).where(Wallet.id == wallet_id).values(reserved_units=5))
        db.session.commit()
    out = app.test_cli_runner().invoke(args=["billing", "sweep"])
    assert out.exit_code == 0 and "released 1 stale hold" in out.output
    with app.app_context():
        assert db.session.get(Wallet, wallet_id).reserved_units == 0 and count(BudgetReservation) == 0
    assert "released 0 stale holds" in app.test_cli_runner().invoke(args=["billing", "sweep"]).output


@pytest.mark.promise("P52")
def test_a_budget_on_a_key_of_an_erased_person_goes_with_the_key(app, users):
    """A budget on one of the person's keys goes with the key (budgets.key targets)."""
    uid = users.create()
    with app.app_context():
        key, _ = key_service.create(db.session.get(User, uid), "ci")
        db.session.add(Budget(target=f"key:{key.id}", scope="key", user_id=None, api_key_id=key.id,
                              total_units=to_units(3)))
        db.session.commit()
        req = deletion.request_deletion(db.session.get(User, uid), None)
        db.session.commit()
        assert deletion.erase_due(req.execute_after + timedelta(seconds=1)) == 1
        assert count(Budget) == 0 and count(ApiKey) == 0
