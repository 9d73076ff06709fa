"""The retention job (P60) with a controlled clock: usage rows roll into daily
aggregates at the window's edge and go, aggregates go after 13 months, audit
rows go behind a checkpoint that keeps the chain verifiable (P55), due
deletions are erased (P52); the job is idempotent and never runs twice at once."""
from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app import jobs
from app.extensions import db
from app.models import AuditCheckpoint, AuditEvent, JobLock, PrivacyRequest, UsageDaily, UsageRecord, User
from app.models.types import utcnow
from app.services import audit, deletion
from app.services.audit import record_event, verify_chain
from app.services.dates import add_months

_seq = iter(range(1_000_000))


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app


def usage(when, *, user_id=1, key_id=10, model="gpt-test", status=200, tokens=(10, 20, 3, 4), cost="0.01"):
    db.session.add(UsageRecord(
        request_id=f"r{next(_seq)}", user_id=user_id, api_key_id=key_id, team_id=None, project="p",
        tags='["t"]', started_at=when, ended_at=when + timedelta(seconds=1), model=model, provider="oai",
        input_tokens=tokens[0], output_tokens=tokens[1], cache_read_tokens=tokens[2], cache_write_tokens=tokens[3],
        cost_usd=Decimal(cost), latency_ms=1000, status_code=status, routing_trace="[]", usage_source="provider"))


def count(model, *where) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def steps_only(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "exports_purged"}


# ---- usage rows -> daily aggregates -------------------------------------------------

@pytest.mark.promise("P60")
def test_rollup_sums_by_day_user_key_model_and_deletes_raw_rows_at_the_edge(ctx):
    now = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    edge = now - timedelta(days=90)
    old_day = now - timedelta(days=100)
    usage(old_day, status=200)
    usage(old_day + timedelta(hours=1), status=500)
    usage(old_day + timedelta(hours=2), status=429, tokens=(1, 2, 0, 0), cost="0.5")
    usage(old_day, user_id=2, key_id=20)                          # another person, same day
    usage(old_day, model="other-model")                           # another model
    usage(old_day + timedelta(days=1))                            # another day
    usage(edge - timedelta(seconds=1))                            # just past the window: goes
    usage(edge + timedelta(seconds=1))                            # just inside: stays
    db.session.commit()

    result = jobs.run_all(ctx, now=now)
    assert result["usage_rolled_up"] == 7
    left = db.session.scalars(sa.select(UsageRecord)).all()
    assert [r.started_at for r in left] == [edge + timedelta(seconds=1)]

    day = old_day.date()
    main = db.session.scalars(sa.select(UsageDaily).where(
        UsageDaily.day == day, UsageDaily.user_id == 1, UsageDaily.model == "gpt-test")).one()
    assert (main.requests, main.errors) == (3, 2)
    assert (main.input_tokens, main.output_tokens, main.cache_read_tokens, main.cache_write_tokens) == (21, 42, 6, 8)
    assert Decimal(main.cost_usd) == Decimal("0.52")
    assert (main.api_key_id, main.provider) == (10, "oai")
    assert count(UsageDaily) == 5  # (day,1,gpt) (day,2,gpt) (day,1,other) (day+1,1,gpt) (edge day,1,gpt)
    totals = db.session.execute(sa.select(sa.func.sum(UsageDaily.requests),
                                          sa.func.sum(UsageDaily.input_tokens))).one()
    assert tuple(totals) == (7, 10 * 6 + 1)

    # Two days later the row that was inside the window goes too, into the same
    # aggregate row when it is the same day, not a second one.
    later = now + timedelta(days=2)
    assert jobs.run_all(ctx, now=later)["usage_rolled_up"] == 1
    assert count(UsageRecord) == 0
    edge_day = (edge - timedelta(seconds=1)).date()
    same_day = (edge + timedelta(seconds=1)).date() == edge_day
    rows = db.session.scalars(sa.select(UsageDaily).where(UsageDaily.day == edge_day)).all()
    if same_day:
        assert len(rows) == 1 and rows[0].requests == 2
    assert db.session.scalar(sa.select(sa.func.sum(UsageDaily.requests))) == 8


@pytest.mark.promise("P60")
def test_anonymized_usage_rolls_into_anonymous_aggregates(ctx):
    now = utcnow()
    usage(now - timedelta(days=95), user_id=None, key_id=None)
    usage(now - timedelta(days=95), user_id=None, key_id=None)
    db.session.commit()
    jobs.run_all(ctx, now=now)
    row = db.session.scalars(sa.select(UsageDaily)).one()
    assert row.user_id is None and row.api_key_id is None and row.requests == 2


@pytest.mark.promise("P60")
def test_aggregates_are_pruned_after_13_months(ctx):
    now = utcnow()
    first_kept = add_months(now.date(), -13)
    for day in (first_kept - timedelta(days=1), first_kept, now.date() - timedelta(days=200)):
        db.session.add(UsageDaily(day=day, user_id=None, model="m", requests=1, errors=0, input_tokens=1,
                                  output_tokens=1, cache_read_tokens=0, cache_write_tokens=0, cost_usd=0))
    db.session.commit()
    assert jobs.run_all(ctx, now=now)["aggregates_pruned"] == 1
    assert sorted(db.session.scalars(sa.select(UsageDaily.day))) == [first_kept, now.date() - timedelta(days=200)]
    # 14 months on, the rest go as well.
    assert jobs.run_all(ctx, now=now + timedelta(days=14 * 31))["aggregates_pruned"] == 2


def test_months_back_clamp_to_the_month_end():
    from datetime import date

    assert add_months(date(2026, 3, 31), -13) == date(2025, 2, 28)
    assert add_months(date(2025, 1, 15), -13) == date(2023, 12, 15)


# ---- audit retention ----------------------------------------------------------------

def write_events(monkeypatch, when, n, prefix):
    monkeypatch.setattr(audit, "utcnow", lambda: when)
    rows = [record_event(None, f"test:{prefix}:{i}") for i in range(n)]
    db.session.commit()
    monkeypatch.undo()
    return [r.id for r in rows]


@pytest.mark.promise("P60", "P55")
def test_audit_prune_writes_a_checkpoint_and_the_chain_still_verifies(ctx, monkeypatch):
    now = utcnow()
    old = write_events(monkeypatch, now - timedelta(days=100), 3, "old")
    recent = write_events(monkeypatch, now - timedelta(days=10), 2, "recent")
    last_old_hash = db.session.get(AuditEvent, old[-1]).hash
    assert verify_chain().ok

    assert jobs.run_all(ctx, now=now)["audit_pruned"] == 3
    assert count(AuditEvent, AuditEvent.id.in_(old)) == 0
    assert count(AuditEvent, AuditEvent.id.in_(recent)) == 2
    cp = db.session.scalars(sa.select(AuditCheckpoint)).one()
    assert (cp.removed_through_id, cp.last_removed_hash, cp.removed_count) == (old[-1], last_old_hash, 3)
    report = verify_chain()
    # two kept + the first policy version, published when the job first read it + the prune's own event
    assert report.ok and report.checked == 4
    assert "retention:audit:pruned" in db.session.scalars(sa.select(AuditEvent.event)).all()

    # Running again prunes nothing and writes no second checkpoint.
    assert jobs.run_all(ctx, now=now)["audit_pruned"] == 0
    assert count(AuditCheckpoint) == 1

    # Removing the oldest kept row by hand still shows as a break.
    db.session.execute(sa.delete(AuditEvent).where(AuditEvent.id == recent[0]))
    db.session.commit()
    report = verify_chain()
    assert not report.ok and report.broken_at == recent[1]


@pytest.mark.promise("P55", "P60")
def test_tampering_after_pruning_is_detected(ctx, monkeypatch):
    now = utcnow()
    write_events(monkeypatch, now - timedelta(days=100), 2, "old")
    recent = write_events(monkeypatch, now - timedelta(days=10), 3, "recent")
    jobs.run_all(ctx, now=now)
    assert verify_chain().ok
    db.session.execute(sa.update(AuditEvent).where(AuditEvent.id == recent[1]).values(event="test:forged"))
    db.session.commit()
    report = verify_chain()
    assert not report.ok and report.broken_at == recent[1] and "edited" in report.reason
    # A forged checkpoint does not help either.
    db.session.execute(sa.update(AuditEvent).where(AuditEvent.id == recent[1]).values(event="test:recent:1"))
    db.session.execute(sa.update(AuditCheckpoint).values(last_removed_hash="f" * 64))
    db.session.commit()
    assert verify_chain().broken_at == recent[0]


@pytest.mark.promise("P55")
def test_without_a_checkpoint_the_chain_must_start_at_genesis(ctx):
    a = record_event(None, "test:a")
    b = record_event(None, "test:b")
    db.session.commit()
    assert a.prev_hash == audit.GENESIS and verify_chain().ok
    db.session.execute(sa.delete(AuditEvent).where(AuditEvent.id == a.id))
    db.session.commit()
    report = verify_chain()
    assert not report.ok and report.broken_at == b.id


@pytest.mark.promise("P55", "P60")
def test_when_every_row_is_pruned_new_rows_chain_from_the_checkpoint(ctx, monkeypatch):
    now = utcnow()
    write_events(monkeypatch, now - timedelta(days=100), 2, "old")
    jobs.run_all(ctx, now=now)
    # Everything old went; the prune's own event and any later one chain on.
    record_event(None, "test:after")
    db.session.commit()
    assert verify_chain().ok
    # A run far ahead prunes the prune event too, and the chain still holds.
    jobs.run_all(ctx, now=now + timedelta(days=200))
    record_event(None, "test:after:again")
    db.session.commit()
    assert count(AuditCheckpoint) == 2 and verify_chain().ok


# ---- due deletions, the lease, idempotence, the CLI ---------------------------------

@pytest.mark.promise("P52", "P60")
def test_the_job_erases_due_deletions(ctx, users):
    uid = users.create()
    user = db.session.get(User, uid)
    start = utcnow()
    req = deletion.request_deletion(user, user, now=start)
    db.session.commit()
    usage(start - timedelta(days=1), user_id=uid, key_id=None)
    db.session.commit()
    grace = timedelta(days=ctx.config["DELETION_GRACE_DAYS"])
    assert jobs.run_all(ctx, now=start + grace - timedelta(minutes=1))["accounts_erased"] == 0
    assert jobs.run_all(ctx, now=start + grace + timedelta(minutes=1))["accounts_erased"] == 1
    db.session.expire_all()
    assert db.session.get(User, uid) is None
    assert db.session.get(PrivacyRequest, req.id).executed_at is not None
    assert count(UsageRecord, UsageRecord.user_id.is_(None)) == 1
    assert jobs.run_all(ctx, now=start + grace * 2)["accounts_erased"] == 0


@pytest.mark.promise("P60")
def test_running_twice_is_idempotent(ctx, monkeypatch):
    now = utcnow()
    usage(now - timedelta(days=120))
    usage(now - timedelta(days=100), status=503)
    db.session.add(UsageDaily(day=(now - timedelta(days=500)).date(), model="m", requests=1, errors=0,
                              input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0,
                              cost_usd=0))
    db.session.commit()
    write_events(monkeypatch, now - timedelta(days=100), 2, "old")
    first = steps_only(jobs.run_all(ctx, now=now))
    assert first == {"usage_spool_replayed": 0, "usage_rolled_up": 2, "aggregates_pruned": 1, "audit_pruned": 2,
                     "accounts_erased": 0, "mail_pruned": 0, "sessions_pruned": 0, "billing_pruned": 0,
                     "holds_released": 0, "budget_alerts_queued": 0, "policy_notices_queued": 0,
                     "rollups_pruned": 0, "invitations_pruned": 0}
    snapshot = [(d.day, d.requests, d.errors)
                for d in db.session.scalars(sa.select(UsageDaily).order_by(UsageDaily.day))]
    second = steps_only(jobs.run_all(ctx, now=now))
    assert second == {"usage_spool_replayed": 0, "usage_rolled_up": 0, "aggregates_pruned": 0, "audit_pruned": 0,
                      "accounts_erased": 0, "mail_pruned": 0, "sessions_pruned": 0, "billing_pruned": 0,
                      "holds_released": 0, "budget_alerts_queued": 0, "policy_notices_queued": 0,
                     "rollups_pruned": 0, "invitations_pruned": 0}
    assert [(d.day, d.requests, d.errors)
            for d in db.session.scalars(sa.select(UsageDaily).order_by(UsageDaily.day))] == snapshot
    assert verify_chain().ok
    lock = db.session.get(JobLock, "retention")
    assert lock.locked_until is None and lock.last_run_at is not None


@pytest.mark.promise("P60")
def test_two_runs_at_once_one_is_skipped(app, monkeypatch):
    """Both threads race from an empty lock table (the insert race too); the
    winner is held inside a step until the loser has answered."""
    hold = threading.Event()
    entered = threading.Event()
    real = jobs.prune_aggregates

    def slow_step(now):
        entered.set()
        assert hold.wait(20), "the test never released the step"
        return real(now)

    monkeypatch.setattr(jobs, "prune_aggregates", slow_step)
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def run():
        barrier.wait()
        results.append(jobs.run_all(app))
        if results[-1] == {"skipped": "locked"}:
            hold.set()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    hold.set()
    assert entered.is_set()
    assert len(results) == 2
    assert sum(r == {"skipped": "locked"} for r in results) == 1
    winner = next(r for r in results if r != {"skipped": "locked"})
    assert winner["aggregates_pruned"] == 0
    # The lease is released: the next run goes ahead.
    assert "skipped" not in jobs.run_all(app)


def test_a_stale_lease_from_a_crashed_run_is_taken_over(ctx):
    db.session.add(JobLock(name="retention", holder="crashed", locked_until=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    assert "skipped" not in jobs.run_all(ctx)
    db.session.execute(sa.update(JobLock).values(holder="busy", locked_until=utcnow() + timedelta(minutes=5)))
    db.session.commit()
    assert jobs.run_all(ctx) == {"skipped": "locked"}


def test_a_failing_step_is_reported_and_the_others_run(ctx, monkeypatch):
    def broken(now):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "rollup_usage", broken)
    result = jobs.run_all(ctx)
    assert result["usage_rolled_up"] == "error: RuntimeError"
    assert result["billing_pruned"] == 0 and result["audit_pruned"] == 0
    assert db.session.get(JobLock, "retention").locked_until is None


@pytest.mark.promise("P60")
def test_flask_jobs_run_prints_the_counts(app):
    with app.app_context():
        usage(utcnow() - timedelta(days=100))
        db.session.commit()
    out = app.test_cli_runner().invoke(args=["jobs", "run"])
    assert out.exit_code == 0, out.output
    assert "usage_rolled_up: 1" in out.output and "audit_pruned: 0" in out.output
    assert "billing_pruned: 0" in out.output and "exports_purged:" in out.output
    out = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert out.exit_code == 0 and "chain intact" in out.output


def test_scheduler_thread_only_when_asked(make_app):
    assert "jobs_scheduler" not in make_app().extensions  # tests run with JOBS_SCHEDULER=off
    app = make_app(JOBS_SCHEDULER="thread", JOBS_INTERVAL_MINUTES="1")
    scheduler = app.extensions["jobs_scheduler"]
    assert scheduler.thread is None, "started lazily, on the first request"
    app.test_client().get("/")
    assert scheduler.thread.is_alive() and scheduler.thread.daemon
    scheduler.stop(5)
    assert not scheduler.thread.is_alive()
