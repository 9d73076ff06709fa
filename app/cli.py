"""flask commands: users, audit, mail, jobs, policy, usage, billing, settings."""
from __future__ import annotations

import sys

import click
import sqlalchemy as sa
from flask import Flask, current_app

from app.extensions import db


def register(app: Flask) -> None:
    @app.cli.group()
    def users():
        """Manage accounts."""

    def _set_staff(email: str, value: bool) -> None:
        from app.services.accounts import find_by_email
        from app.services.audit import record_event

        user = find_by_email(email)
        if user is None:
            raise click.ClickException(f"no account with the address {email}")
        user.is_staff = value
        record_event(None, "staff:role:granted" if value else "staff:role:revoked", subject=user,
                     via="cli")
        db.session.commit()
        click.echo(f"{user.email} is {'now' if value else 'no longer'} staff")

    @users.command("grant-staff")
    @click.argument("email")
    def grant_staff(email):
        """Give EMAIL's account the staff role."""
        _set_staff(email, True)

    @users.command("revoke-staff")
    @click.argument("email")
    def revoke_staff(email):
        """Take the staff role from EMAIL's account."""
        _set_staff(email, False)

    @app.cli.group()
    def audit():
        """The tamper-evident audit log."""

    @audit.command("verify")
    def audit_verify():
        """Check every link of the chain; report the first broken one."""
        from app.services.audit import verify_chain

        report = verify_chain()
        if report.ok:
            click.echo(f"audit log OK: {report.checked} events, chain intact")
        else:
            click.echo(f"audit log BROKEN at event {report.broken_at}: {report.reason} "
                       f"({report.checked} events before it are intact)")
            sys.exit(1)

    @app.cli.group()
    def mail():
        """The mail outbox."""

    @mail.command("send")
    def mail_send():
        """Send every due message in the outbox now."""
        from app.services.mail import deliver_pending

        total = 0
        while n := deliver_pending(current_app._get_current_object()):
            total += n
        click.echo(f"sent {total} message(s)")

    @app.cli.group()
    def jobs():
        """Scheduled work: retention, due deletions, expired exports (P52, P60)."""

    @jobs.command("run")
    def jobs_run():
        """Run every retention step once (safe to run twice at once: the second skips)."""
        from app.jobs import run_all

        result = run_all(current_app._get_current_object())
        for name, value in result.items():
            click.echo(f"{name}: {value}")
        if any(isinstance(v, str) and v.startswith("error") for v in result.values()):
            sys.exit(1)

    @app.cli.group()
    def policy():
        """The privacy policy."""

    @policy.command("sync")
    def policy_sync():
        """Publish the policy as the settings render it when the change only protects
        people more; say so when it needs staff to publish it with notice (P62)."""
        from app.services.policy import current_version, draft, upcoming

        v = current_version()
        click.echo(f"privacy policy version {v.number} is in effect")
        waiting = upcoming()
        if waiting is not None:
            click.echo(f"version {waiting.number} takes effect on {waiting.effective_at:%Y-%m-%d}")
        d = draft()
        if d is not None:
            what = ", ".join(c.label for c in d.changes) or "the wording"
            click.echo(f"the settings change {what}: publish it with notice at /staff/policy/ "
                       f"(until then version {v.number}'s rules apply)")

    @app.cli.group()
    def usage():
        """Usage rows and the analytics' running totals."""

    @usage.command("rebuild-rollups")
    def rebuild_rollups():
        """Recount the analytics totals from the raw usage rows (once, after
        upgrading from a version without them; safe to run again)."""
        from app.services import rollups

        n = rollups.rebuild(db.session)
        db.session.commit()
        click.echo(f"recounted {n:,} usage rows into the analytics totals")

    @app.cli.group()
    def billing():
        """Wallets and their ledger (P41), budget holds (P26)."""

    @billing.command("verify")
    def billing_verify():
        """Check every wallet's balance against its ledger, and what wallets and
        budget counters hold against the holds of requests in flight."""
        from app.models import LedgerEntry, Wallet
        from app.models.billing import to_usd
        from app.services import wallets

        drifts = wallets.verify()
        n_wallets = db.session.scalar(sa.select(sa.func.count()).select_from(Wallet)) or 0
        n_entries = db.session.scalar(sa.select(sa.func.count()).select_from(LedgerEntry)) or 0
        checked = f"{n_wallets:,} wallet{'s' if n_wallets != 1 else ''}, {n_entries:,} ledger " \
                  f"entr{'ies' if n_entries != 1 else 'y'} checked."
        if not drifts:
            click.echo(f"No drift: {checked}")
            return
        for d in drifts:
            click.echo(f"DRIFT {d.what}: cached {to_usd(d.cached):f} USD, derived {to_usd(d.derived):f} USD")
        click.echo(f"{len(drifts)} drift{'s' if len(drifts) != 1 else ''} found: {checked}")
        sys.exit(1)

    @billing.command("adjust")
    @click.option("--wallet", "anon_ref", required=True, help="The wallet's anonymous id (w_…).")
    @click.option("--amount", required=True, help="Dollars, in cents at most: 5, -2.50.")
    @click.option("--reason", required=True, help="Why; 5 to 200 characters, shown to the wallet's owners.")
    @click.option("--staff", "staff_email", required=True, help="The address of the staff account acting.")
    def billing_adjust(anon_ref, amount, reason, staff_email):
        """Post a correcting entry to a wallet's ledger, audited as the staff member's."""
        from app.services import ServiceError, wallets
        from app.services.accounts import find_by_email

        staff = find_by_email(staff_email)
        if staff is None or not staff.is_staff:
            raise click.ClickException(f"no staff account with the address {staff_email}")
        wallet = wallets.by_ref(anon_ref.strip())
        if wallet is None:
            raise click.ClickException(f"no wallet {anon_ref}")
        try:
            entry = wallets.adjust(staff, wallet, amount, reason)
        except ServiceError as exc:
            db.session.rollback()
            raise click.ClickException(str(exc)) from None
        db.session.commit()
        db.session.refresh(wallet)
        click.echo(f"wallet {wallet.anon_ref}: adjustment #{entry.id} of {entry.amount} USD; "
                   f"balance now {wallet.balance} USD")

    @billing.command("sweep")
    def billing_sweep():
        """Give back now the budget holds of requests whose process stopped
        renewing them (the web processes and the job do it on their own)."""
        from app.models.types import utcnow
        from app.services import spend

        n = spend.sweep(db.engine, utcnow(), current_app.config["RESERVATION_TIMEOUT_SECONDS"])
        click.echo(f"released {n} stale hold{'s' if n != 1 else ''}")

    @app.cli.command("settings")
    def settings_table():
        """Print every setting as a Markdown table (for the README)."""
        from app.config import SETTINGS

        click.echo("| Setting | Default | What it does |\n|---|---|---|")
        for name, default, doc in SETTINGS:
            click.echo(f"| `{name}` | `{default}` | {doc} |")
