"""The usage writer's running totals (P30, P31): after a generated mix of
streamed, failed, cached and estimated requests written through the meter's
own path, every rollup cell equals the sum of the raw rows it covers, to the
micro-dollar, in every scope, grain and dimension; members' spend adds up to
the team's; a crash replay of the same rows counts nothing twice; erasure
folds a person away without changing a team's totals; retention prunes by grain.
"""
from __future__ import annotations

import json
import random
import secrets
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import UsageRecord, UsageRollup
from app.relay.meter import _encode, check_row
from app.services import rollups
from tests.relay.test_meter import refusing_project

MICRO = Decimal("0.000001")
TEAM = 7
MEMBERS = (11, 12, 13)
SOLO = 21
KEYS = {11: (101, 102), 12: (103,), 13: (104, 105), 21: (106,)}
START = datetime(2026, 11, 28, 22, 30, tzinfo=UTC)  # crosses midnights and hours


def generated_rows(n: int, seed: int = 7) -> list[dict]:
    """A mix as the relay writes them: streamed (ttft), failed (no tokens, no
    cost), cached (cache tokens), estimated (stream cut short), personal and team."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        user = rnd.choice(MEMBERS + (SOLO,))
        team = None if user == SOLO or rnd.random() < 0.2 else TEAM
        kind = rnd.choice(["stream", "whole", "failed", "cached", "estimated"])
        status = rnd.choice([429, 500, 502, 400]) if kind == "failed" else 200
        began = START + timedelta(minutes=rnd.randrange(0, 60 * 50), seconds=rnd.random() * 59)
        latency = int(10 ** rnd.uniform(0.5, 5.6))
        ok = status == 200
        rows.append({
            "request_id": "req_" + secrets.token_hex(12), "user_id": user, "team_id": team,
            "api_key_id": rnd.choice(KEYS[user]), "project": rnd.choice([None, "checkout", "search"]),
            "tags": json.dumps(rnd.sample(["beta", "eu", "batch"], rnd.randrange(0, 3))) if rnd.random() < .6 else None,
            "started_at": began, "ended_at": began + timedelta(milliseconds=latency),
            "model": rnd.choice(["gpt-test", "claude-test", "embed-test"]),
            "provider": rnd.choice(["oai", "claude"]),
            "input_tokens": rnd.randrange(1, 5000) if ok else 0, "output_tokens": rnd.randrange(0, 900) if ok else 0,
            "cache_read_tokens": rnd.randrange(1, 4000) if kind == "cached" else 0,
            "cache_write_tokens": rnd.randrange(0, 800) if kind == "cached" else 0,
            "cost_usd": Decimal(rnd.randrange(0, 9_000_000)) / Decimal(10**8) if ok else Decimal(0),
            "ttft_ms": rnd.randrange(5, latency + 6) if kind in ("stream", "estimated") else None,
            "latency_ms": latency, "status_code": status,
            "error_class": None if ok else "upstream_error", "routing_trace": "[]",
            "usage_source": {"estimated": "estimated", "failed": "none"}.get(kind, "provider"),
        })
    return rows


def write(app, rows: list[dict], batch: int = 50) -> None:
    """Through the writer's real database path: spool lines, decoded and inserted in batches."""
    meter = app.extensions["meter"]
    lines = [_encode(check_row(r)) for r in rows]
    for start in range(0, len(lines), batch):
        meter._write_lines(lines[start:start + batch])


def raw(app) -> list[UsageRecord]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(UsageRecord)))
        db.session.expunge_all()
        return rows


def cells(app) -> dict[tuple, dict]:
    with app.app_context():
        out = {}
        for c in db.session.scalars(sa.select(UsageRollup)):
            out[(c.team_id, c.user_id, c.grain, c.dim, c.bucket, c.value)] = {
                s: (Decimal(str(getattr(c, s))) if s == "cost_usd" else getattr(c, s))
                for s in rollups.SUMS}
        return out


def expected(records: list[UsageRecord]) -> dict[tuple, dict]:
    """The same totals computed the slow way from the stored raw rows (the spec in test form)."""
    out: dict[tuple, dict] = defaultdict(lambda: {s: (Decimal(0) if s == "cost_usd" else 0) for s in rollups.SUMS})
    for r in records:
        scopes = [(0, r.user_id, False)] if r.team_id is None else [(r.team_id, 0, True), (r.team_id, r.user_id, False)]
        hour = r.started_at.replace(minute=0, second=0, microsecond=0)
        day = hour.replace(hour=0)
        for team, user, whole in scopes:
            dims = [("", ""), ("model", r.model), ("key", str(r.api_key_id)), ("project", r.project or ""),
                    ("lat", rollups.hist_bucket(r.latency_ms))]
            dims += [("tag", t) for t in sorted(set(json.loads(r.tags or "[]")))]
            if r.ttft_ms is not None:
                dims.append(("ttft", rollups.hist_bucket(r.ttft_ms)))
            if whole:
                dims.append(("member", str(r.user_id)))
            for grain, bucket in (("h", hour), ("d", day)):
                for dim, value in dims:
                    acc = out[(team, user, grain, dim, bucket, value)]
                    acc["requests"] += 1
                    acc["errors"] += 0 if 200 <= r.status_code <= 299 else 1
                    for s in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
                        acc[s] += getattr(r, s)
                    acc["cost_usd"] += Decimal(str(r.cost_usd))
                    acc["latency_ms_sum"] += r.latency_ms
                    acc["ttft_ms_sum"] += r.ttft_ms or 0
                    acc["ttft_count"] += r.ttft_ms is not None
    return dict(out)


def same(got: dict, want: dict) -> bool:
    """Counts exactly, money to the micro-dollar (SQLite keeps NUMERIC as a double)."""
    return got.keys() == want.keys() and all(
        abs(got[k] - want[k]) < MICRO if k == "cost_usd" else got[k] == want[k] for k in want)


def same_cells(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for cell, sums in want.items():
        assert same(got[cell], sums), (cell, got[cell], sums)


def total(cs: dict, team: int, user: int, grain: str, dim: str, field: str, value: str | None = None):
    return sum((v[field] for (t, u, g, d, _, val), v in cs.items()
                if (t, u, g, d) == (team, user, grain, dim) and (value is None or val == value)), Decimal(0))


@pytest.fixture
def written(app):
    rows = generated_rows(400)
    write(app, rows)
    return rows


@pytest.mark.promise("P30", "P31")
def test_P30_every_rollup_cell_equals_the_raw_rows_it_covers(app, written):
    records = raw(app)
    assert len(records) == len(written)
    got, want = cells(app), expected(records)
    same_cells(got, want)
    # Each single-valued dimension partitions its scope's total, in both grains.
    for team, user in {(k[0], k[1]) for k in want}:
        for grain in rollups.GRAINS:
            for field in ("requests", "cost_usd", "errors", "input_tokens", "cache_read_tokens"):
                whole = total(got, team, user, grain, "", field)
                for dim in ("model", "key", "project", "lat") + (("member",) if team and not user else ()):
                    assert abs(total(got, team, user, grain, dim, field) - whole) < MICRO, (team, user, grain, dim)


@pytest.mark.promise("P31")
def test_P31_members_spend_adds_up_to_the_teams_and_a_member_scope_has_no_member_dimension(app, written):
    got = cells(app)
    records = [r for r in raw(app) if r.team_id == TEAM]
    team_cost = sum((Decimal(str(r.cost_usd)) for r in records), Decimal(0))
    assert team_cost > 0
    for grain in rollups.GRAINS:
        assert abs(total(got, TEAM, 0, grain, "", "cost_usd") - team_cost) < MICRO
        assert abs(sum(total(got, TEAM, m, grain, "", "cost_usd") for m in MEMBERS) - team_cost) < MICRO
        for m in MEMBERS:
            mine = sum((Decimal(str(r.cost_usd)) for r in records if r.user_id == m), Decimal(0))
            assert abs(total(got, TEAM, 0, grain, "member", "cost_usd", str(m)) - mine) < MICRO
            assert abs(total(got, TEAM, m, grain, "", "cost_usd") - mine) < MICRO
    assert not [k for k in got if k[1] != 0 and k[3] == "member"]


@pytest.mark.promise("P30")
def test_P30_a_crash_replay_of_the_same_rows_counts_nothing_twice(app, written):
    before = cells(app)
    write(app, written, batch=70)  # the same spool lines again, batched differently
    more = generated_rows(30, seed=99)
    write(app, written[:10] + more)  # a batch half replayed, half new
    records = raw(app)
    assert len(records) == len(written) + len(more)
    after = cells(app)
    same_cells(after, expected(records))
    assert total(after, 0, SOLO, "d", "", "requests") >= total(before, 0, SOLO, "d", "", "requests")


@pytest.mark.promise("P30")
def test_P30_a_row_refused_for_good_is_not_counted(app):
    """The writer retries a refused batch row by row: the rollups of the
    refused row roll back with it, every other row is counted once."""
    rows = generated_rows(6, seed=3)
    rows[2]["project"] = "poison"
    with refusing_project(app, "poison"):
        write(app, rows)
    records = raw(app)
    assert sorted(r.request_id for r in records) == sorted(r["request_id"] for i, r in enumerate(rows) if i != 2)
    same_cells(cells(app), expected(records))


@pytest.mark.promise("P31")
def test_forget_user_folds_a_person_into_former_and_keeps_team_totals(app, written):
    before = cells(app)
    gone = 12
    with app.app_context(), db.engine.begin() as conn:
        rollups.forget_user(conn, gone, KEYS[gone])
    after = cells(app)
    assert not [k for k in after if k[1] == gone]
    assert not [k for k in after if k[3] == "member" and k[5] == str(gone)]
    assert not [k for k in after if k[3] == "key" and k[5] in {str(x) for x in KEYS[gone]}]
    for grain in rollups.GRAINS:
        for field in ("requests", "cost_usd", "output_tokens"):
            for dim in ("", "member", "key"):
                assert abs(total(after, TEAM, 0, grain, dim, field) - total(before, TEAM, 0, grain, dim, field)) < MICRO
            assert abs(total(after, TEAM, 0, grain, "member", field, rollups.FORMER)
                       - total(before, TEAM, 0, grain, "member", field, str(gone))) < MICRO
    # Other people are untouched.
    for k, v in before.items():
        if k[1] not in (0, gone):
            assert same(after[k], v)


def test_prune_drops_hourly_cells_after_the_metadata_window_and_daily_after_the_aggregate_window(app, written):
    with app.app_context():
        now = START + timedelta(days=90, hours=30)  # hours of the first day are past 90 days
        n = rollups.prune(now)
        db.session.commit()
        assert n > 0
    left = cells(app)
    cutoff = rollups.hour_of(now) - timedelta(days=90)
    assert left and all(k[4] >= cutoff for k in left if k[2] == "h")
    assert any(k[2] == "d" and k[4] < cutoff for k in left)  # days stay 13 months
    with app.app_context():
        rollups.prune(START + timedelta(days=500))
        db.session.commit()
    assert cells(app) == {}


def test_histogram_buckets_are_ordered_and_cover_every_duration():
    assert rollups.HIST_BUCKETS == 24
    assert [rollups.hist_bucket(ms) for ms in (0, 9, 10, 14, 15, 999, 1000, 249_999, 250_000, 10**9)] == \
        ["00", "00", "01", "01", "02", "10", "11", "22", "23", "23"]
    for i in range(1, len(rollups.LATENCY_BOUNDS)):
        assert rollups.LATENCY_BOUNDS[i] / rollups.LATENCY_BOUNDS[i - 1] <= 5 / 3 + 1e-9


def test_P30_rebuild_recounts_the_totals_from_the_raw_rows(app):
    """`flask usage rebuild-rollups`: a deployment upgraded from before the
    rollups gets its raw rows counted, exactly once however often it runs."""
    now = datetime.now(UTC)
    with app.app_context():
        for i in range(30):
            db.session.add(UsageRecord(request_id=f"req_rebuild_{i}", user_id=7, team_id=3 if i % 2 else None,
                                       api_key_id=11, started_at=now - timedelta(hours=i), ended_at=now,
                                       model="m", latency_ms=100 + i, status_code=200 if i % 5 else 500,
                                       usage_source="provider", cost_usd=Decimal("0.00000123") * i,
                                       input_tokens=i, output_tokens=2 * i))
        db.session.add(UsageRecord(request_id="req_rebuild_erased", user_id=None, team_id=None, started_at=now,
                                   ended_at=now, model="m", latency_ms=1, status_code=200, usage_source="provider",
                                   cost_usd=Decimal(1)))
        db.session.commit()
    runner = app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["usage", "rebuild-rollups"])
        assert result.exit_code == 0 and "recounted 30 usage rows" in result.output
    with app.app_context():
        def total(team, user, grain):
            return db.session.execute(sa.select(sa.func.sum(UsageRollup.requests), sa.func.sum(UsageRollup.cost_usd))
                                      .where(UsageRollup.team_id == team, UsageRollup.user_id == user,
                                             UsageRollup.grain == grain, UsageRollup.dim == "")).one()
        personal = [i for i in range(30) if i % 2 == 0]
        team = [i for i in range(30) if i % 2]
        for grain in ("h", "d"):
            assert total(0, 7, grain) == (len(personal), Decimal("0.00000123") * sum(personal))
            assert total(3, 0, grain) == (len(team), Decimal("0.00000123") * sum(team))
            assert total(3, 7, grain) == (len(team), Decimal("0.00000123") * sum(team))


def test_rebuild_keeps_the_days_whose_raw_rows_are_gone(app):
    """Daily cells older than the raw rows, and a day that retention already
    moved partly into usage_daily, are left as they are by a rebuild."""
    from app.models import UsageDaily

    today = rollups.day_of(datetime.now(UTC))
    old_day, partial_day = today - timedelta(days=200), today - timedelta(days=90)

    def cell(bucket):
        return {"team_id": 0, "user_id": 7, "grain": "d", "dim": "", "bucket": bucket, "value": "",
                **{name: 0 for name in rollups.SUMS}, "requests": 5}

    with app.app_context():
        conn = db.session.connection()
        rollups.upsert(conn, {tuple(cell(b)[c] for c in rollups.CELL): [cell(b)[s] for s in rollups.SUMS]
                              for b in (old_day, partial_day)})
        db.session.add(UsageDaily(day=partial_day.date(), model="m", requests=4))
        db.session.add(UsageRecord(request_id="req_partial", user_id=7, started_at=partial_day + timedelta(hours=23),
                                   ended_at=partial_day + timedelta(hours=23), model="m", latency_ms=1,
                                   status_code=200, usage_source="provider", cost_usd=Decimal(0)))
        db.session.add(UsageRecord(request_id="req_recent", user_id=7, started_at=today, ended_at=today,
                                   model="m", latency_ms=1, status_code=200, usage_source="provider",
                                   cost_usd=Decimal(0)))
        db.session.commit()
        assert rollups.rebuild(db.session) == 1  # only the recent row: its day is wholly raw
        db.session.commit()
        daily = dict(db.session.execute(sa.select(UsageRollup.bucket, UsageRollup.requests).where(
            UsageRollup.grain == "d", UsageRollup.dim == "", UsageRollup.user_id == 7)).all())
    assert daily == {old_day: 5, partial_day: 5, today: 1}
