"""flask commands: users, audit, mail, jobs, policy, usage, settings."""
from __future__ import annotations

import sys

import click
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

    @app.cli.command("settings")
    def settings_table():
        """Print every setting as a Markdown table (for the README)."""
        from app.config import SETTINGS

        click.echo("| Setting | Default | What it does |\n|---|---|---|")
        for name, default, doc in SETTINGS:
            click.echo(f"| `{name}` | `{default}` | {doc} |")
