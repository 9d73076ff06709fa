"""Analytics at scale: millions of usage rows, every analytics view timed (issue 11, P30, P31).

    .venv/bin/python bench/usage_scale.py [--rows 5000000] [--database-url URL | --start-postgres]
                                          [--runs 20] [--keep]

It fills a throwaway database (a SQLite file by default; `--database-url` for
PostgreSQL, whose tables it empties first; `--start-postgres` starts a
private cluster as the test suite does) migrated to head, with one team of
50 members (one owner) and 200 keys (4 per member), and `--rows` usage rows
spread over the last 90 days: raw rows and their rollups are written in
batches of 50,000, through `app.services.rollups.apply`, the same code the
usage writer runs. Then it times, p50/p95 over `--runs` runs each:

  * every analytics view (`analytics.report`: the series, every breakdown and
    both histograms, with key and member names) for each range (24h, 7d,
    30d, 90d, and a custom 14-day range), as the owner (scope T,0) and as a
    member (scope T,M);
  * each of those queries alone, for the 90-day range;
  * the first page and a deep page (80 days back) of the team's request
    table and of one member's, by keyset on (started_at, id);

and prints the plan of every query (EXPLAIN QUERY PLAN on SQLite, EXPLAIN
on PostgreSQL), flagging any full scan of usage_records. Target: p95 under
300 ms for every view on both engines.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
if VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and __name__ == "__main__":
    os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])  # the app needs the project's venv
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402  (after the re-exec into the venv, which has it)
from sqlalchemy.ext.compiler import compiles  # noqa: E402
from sqlalchemy.sql.expression import ClauseElement, Executable  # noqa: E402

MEMBERS, KEYS_PER_MEMBER, DAYS, BATCH = 50, 4, 90, 50_000
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5", "o3-mini", "text-embedding-3-small",
          "gemini-2.0-flash", "llama-3.3-70b"]
PROJECTS = [None, "checkout", "search", "support-bot", "etl", "docs", "mobile"]
TAGS = [None, '["beta"]', '["eu"]', '["batch","eu"]', '["prod"]', '["prod","us"]']
TARGET_MS = 300.0


class Explain(Executable, ClauseElement):
    """EXPLAIN (QUERY PLAN) of a statement, with its parameters bound as SQLAlchemy binds them."""

    inherit_cache = False

    def __init__(self, stmt, prefix: str):
        self.stmt, self.prefix = stmt, prefix


@compiles(Explain)
def _explain(element, compiler, **kw):
    return element.prefix + " " + compiler.process(element.stmt, **kw)


def make_app(url: str, instance: Path):
    from app import create_app

    return create_app({"DATABASE_URL": url, "INSTANCE_PATH": str(instance), "SECRET_KEY": "bench-" + "x" * 40,
                       "MAIL_WORKER": "off", "EXPORT_WORKER": "off", "JOBS_SCHEDULER": "off",
                       "LOG_LEVEL": "WARNING", "USAGE_SPOOL_DIR": str(instance / "spool")})


def migrate(app) -> None:
    from flask_migrate import upgrade

    from app.extensions import db
    with app.app_context():
        upgrade()
        if db.engine.dialect.name == "postgresql":
            with db.engine.begin() as conn:
                names = ", ".join(t.name for t in db.metadata.sorted_tables)
                conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def people(conn) -> tuple[int, list[int], dict[int, list[int]]]:
    """One team, 50 members (the first is the owner), 4 keys each; (team, members, keys by member)."""
    from app.models import ApiKey, Team, TeamMember, User

    now = datetime.now(UTC)
    users = [{"email": f"m{i}@bench.example", "email_key": f"m{i}@bench.example", "password_hash": "x",
              "name": f"Member {i}", "age_confirmed_at": now, "email_verified_at": now, "is_staff": False}
             for i in range(MEMBERS)]
    conn.execute(sa.insert(User.__table__), users)
    ids = [r[0] for r in conn.execute(sa.select(User.id).order_by(User.id))]
    team = conn.execute(sa.insert(Team.__table__).values(name="Bench Team", slug="bench", created_at=now,
                                                         members_make_keys=True).returning(Team.id)).scalar_one()
    conn.execute(sa.insert(TeamMember.__table__), [
        {"team_id": team, "user_id": u, "role": "owner" if i == 0 else "member", "joined_at": now}
        for i, u in enumerate(ids)])
    conn.execute(sa.insert(ApiKey.__table__), [
        {"user_id": u, "team_id": team, "name": f"key {u}-{k}", "prefix": "rk_bench", "last4": f"{k:04d}",
         "lookup_hash": f"bench-{u}-{k}", "created_at": now, "revoked_at": now if k == 3 else None}
        for u in ids for k in range(KEYS_PER_MEMBER)])
    keys: dict[int, list[int]] = {u: [] for u in ids}
    for kid, uid in conn.execute(sa.select(ApiKey.id, ApiKey.user_id)):
        keys[uid].append(kid)
    return team, ids, keys


def rows(n: int, team: int, members: list[int], keys: dict[int, list[int]], end: datetime, seed: int = 11):
    """Batches of raw rows in time order over the last DAYS days (so a batch covers a few hours)."""
    rnd = random.Random(seed)
    span = DAYS * 86400
    step = span / n
    batch = []
    for i in range(n):
        began = end - timedelta(seconds=span - i * step - rnd.random() * step)
        user = members[int(rnd.paretovariate(1.2)) % len(members)]
        ok = rnd.random() > 0.03
        streamed = rnd.random() < 0.7
        latency = int(rnd.lognormvariate(6.7, 0.8))
        tin, tout = rnd.randrange(50, 6000), rnd.randrange(0, 1200)
        batch.append({
            "request_id": f"req_{i:024x}", "user_id": user, "team_id": team,
            "api_key_id": keys[user][rnd.randrange(KEYS_PER_MEMBER)], "project": rnd.choice(PROJECTS),
            "tags": rnd.choice(TAGS), "started_at": began, "ended_at": began + timedelta(milliseconds=latency),
            "model": MODELS[min(int(rnd.expovariate(0.6)), len(MODELS) - 1)], "provider": "bench",
            "input_tokens": tin if ok else 0, "output_tokens": tout if ok else 0,
            "cache_read_tokens": rnd.randrange(0, 2000) if ok and rnd.random() < 0.3 else 0,
            "cache_write_tokens": 0, "cost_usd": Decimal(tin + 4 * tout).scaleb(-7) if ok else Decimal(0),
            "ttft_ms": max(1, latency // 4) if ok and streamed else None, "latency_ms": latency,
            "status_code": 200 if ok else rnd.choice([429, 500, 502]),
            "error_class": None if ok else "upstream_error", "routing_trace": "[]",
            "usage_source": "provider" if ok else "none"})
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(app, n: int) -> tuple[int, list[int], datetime]:
    from app.extensions import db
    from app.models import UsageRecord
    from app.services import rollups

    end = datetime.now(UTC)
    with app.app_context():
        with db.engine.begin() as conn:
            team, members, keys = people(conn)
        began, written, cells = time.monotonic(), 0, 0
        for batch in rows(n, team, members, keys, end):
            with db.engine.begin() as conn:
                conn.execute(sa.insert(UsageRecord.__table__), batch)
                cells += rollups.apply(conn, batch)
            written += len(batch)
            if written % (BATCH * 10) == 0 or written == n:
                rate = written / (time.monotonic() - began)
                print(f"  {written:>10,} rows, {cells:,} cell upserts, {rate:,.0f} rows/s", flush=True)
        with db.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
            total = conn.scalar(sa.select(sa.func.count()).select_from(rollups.TABLE))
        print(f"  filled in {time.monotonic() - began:,.0f} s; usage_rollups holds {total:,} cells")
    return team, members, end


def timed(fn, runs: int) -> tuple[float, float]:
    fn()  # warm the cache once, as a page view after the first would
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]


def plan(conn, stmt) -> list[str]:
    if conn.dialect.name == "postgresql":
        return [r[0] for r in conn.execute(Explain(stmt, "EXPLAIN"))]
    return [r[-1] for r in conn.execute(Explain(stmt, "EXPLAIN QUERY PLAN"))]


def full_scan(lines: list[str]) -> bool:
    text = "\n".join(lines)
    return ("SCAN usage_records" in text and "USING" not in text.split("SCAN usage_records", 1)[1].split("\n")[0]) \
        or "Seq Scan on usage_records" in text


def request_page(team: int | None, user: int | None, cursor: tuple[datetime, int] | None):
    """One page of the request table by keyset on (started_at, id). The plain
    `started_at <= ?` beside the row comparison lets both engines seek the index."""
    from app.models import UsageRecord as U

    where = [U.team_id == team] if team is not None else [U.user_id == user]
    if cursor is not None:
        where += [U.started_at <= cursor[0], sa.tuple_(U.started_at, U.id) < sa.tuple_(*cursor)]
    return (sa.select(U.id, U.request_id, U.started_at, U.model, U.api_key_id, U.cost_usd, U.status_code)
            .where(*where).order_by(U.started_at.desc(), U.id.desc()).limit(50))


def measure(app, team: int, members: list[int], end: datetime, runs: int) -> list[tuple]:
    from app.extensions import db
    from app.services import analytics as an

    results = []
    owner, member = an.Scope(team, 0), an.Scope(team, members[1])
    custom = an.custom_window((end - timedelta(days=13)).date(), end.date(), end, 90)
    windows = {k: an.preset_window(k, end) for k in an.RANGES} | {"custom 14d": custom}
    with app.app_context():
        for role, scope in (("owner", owner), ("member", member)):
            for name, window in windows.items():
                p50, p95 = timed(lambda s=scope, w=window: (an.report(s, w), db.session.rollback()), runs)
                results.append((f"page {name} ({window.grain})", role, p50, p95))
            w = windows["90d"]
            queries = {"series": an.series_statement(scope, w)}
            for dim in an.BREAKDOWNS:
                if dim != "member" or scope.whole_team:
                    queries[f"by {dim}"] = an.breakdown_statement(scope, w, dim)
            queries["latency"] = an.histogram_statement(scope, w, "lat")
            queries["ttft"] = an.histogram_statement(scope, w, "ttft")
            w7 = windows["7d"]
            queries["by key, 7d hourly"] = an.breakdown_statement(scope, w7, "key")
            for name, stmt in queries.items():
                p50, p95 = timed(lambda s=stmt: db.session.execute(s).all(), runs)
                results.append((f"query {name}" + ("" if "7d" in name else " 90d"), role, p50, p95, stmt))
        deep = (end - timedelta(days=80), 2**62)
        for role, t, u in (("owner", team, None), ("member", None, members[1])):
            for name, cursor in (("first page", None), ("deep page (80 d back)", deep)):
                stmt = request_page(t, u, cursor)
                p50, p95 = timed(lambda s=stmt: db.session.execute(s).all(), runs)
                results.append((f"requests {name}", role, p50, p95, stmt))
    return results


def report(app, results: list[tuple], n: int) -> bool:
    from app.extensions import db

    with app.app_context():
        engine = db.engine.dialect.name
    print(f"\n{engine}, {n:,} usage rows, p50 / p95 in ms over the runs (target p95 < {TARGET_MS:.0f} ms)\n")
    print(f"{'view':<40} {'as':<7} {'p50':>8} {'p95':>8}")
    ok = True
    for name, role, p50, p95, *_ in results:
        flag = "" if p95 < TARGET_MS else "  OVER TARGET"
        ok &= not flag
        print(f"{name:<40} {role:<7} {p50:>8.1f} {p95:>8.1f}{flag}")
    print("\nQuery plans:")
    with app.app_context(), db.engine.connect() as conn:
        for name, role, *_rest in results:
            if len(_rest) < 3:
                continue
            lines = plan(conn, _rest[2])
            scan = full_scan(lines)
            ok &= not scan
            print(f"\n-- {name} ({role}){'  FULL SCAN OF usage_records' if scan else ''}")
            for line in lines:
                print("   ", line)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--database-url", help="PostgreSQL URL (its tables are emptied); default a SQLite file")
    ap.add_argument("--start-postgres", action="store_true",
                    help="start a private PostgreSQL cluster (as the test suite does) and use it")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file and print its path")
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="usage-scale-"))
    pg = None
    if args.start_postgres:
        from tests.servers import Postgres

        pg = Postgres()
        args.database_url = pg.start()
    url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    try:
        app = make_app(url, folder)
        migrate(app)
        print(f"filling {args.rows:,} rows over {DAYS} days: 1 team, {MEMBERS} members, "
              f"{MEMBERS * KEYS_PER_MEMBER} keys ({url.split('://')[0]})", flush=True)
        team, members, end = fill(app, args.rows)
        return 0 if report(app, measure(app, team, members, end, args.runs), args.rows) else 1
    finally:
        if pg is not None:
            pg.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
