"""Export of an account with 1,000,000 usage rows (P51): rows, seconds and peak memory.

Builds a throwaway SQLite database (or uses DATABASE_URL), inserts the rows
with batched Core inserts, then streams `iter_zip` to /dev/null twice: once
plain for the time, once under tracemalloc for the peak of Python memory.
The resident set size of the process is printed too.

    .venv/bin/python bench/export_memory.py [--rows 1000000] [--no-trace]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import UsageRecord, User  # noqa: E402
from app.models.types import utcnow  # noqa: E402
from app.services import exports  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def insert(app, uid: int, rows: int, batch: int = 20_000) -> None:
    template = {"user_id": uid, "team_id": None, "api_key_id": 1, "project": "bench",
                "tags": json.dumps(["bench", "export"]), "model": "gpt-4o-mini", "provider": "openai",
                "output_tokens": 80, "cache_read_tokens": 0, "cache_write_tokens": 0,
                "cost_usd": Decimal("0.00012345"), "ttft_ms": 120, "latency_ms": 640, "status_code": 200,
                "error_class": None, "routing_trace": '[{"provider":"openai","status":200,"ms":600}]',
                "usage_source": "provider"}
    step, latency = timedelta(seconds=2), timedelta(milliseconds=640)
    with app.app_context(), db.engine.begin() as conn:
        for start in range(0, rows, batch):
            conn.execute(sa.insert(UsageRecord.__table__), [
                {**template, "request_id": f"req_bench_{i:09d}", "started_at": T0 + i * step,
                 "ended_at": T0 + i * step + latency, "input_tokens": 100 + i % 500}
                for i in range(start, min(rows, start + batch))])


def stream(app, uid: int) -> int:
    size = 0
    with app.app_context():
        user = db.session.get(User, uid)
        for chunk in exports.iter_zip(user):
            size += len(chunk)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-trace", action="store_true", help="skip the (slow) tracemalloc pass")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="export-bench-")
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{folder}/bench.db"
    app = create_app({"DATABASE_URL": url, "INSTANCE_PATH": folder, "SECRET_KEY": "bench-" + "x" * 40,
                      "MAIL_WORKER": "off", "EXPORT_WORKER": "off", "JOBS_SCHEDULER": "off",
                      "LOG_LEVEL": "WARNING"}, migrations=False)
    with app.app_context():
        db.create_all()
        user = User(email="bench@example.com", email_key="bench@example.com", password_hash="-",
                    age_confirmed_at=utcnow())
        db.session.add(user)
        db.session.commit()
        uid = user.id

    t = time.perf_counter()
    insert(app, uid, args.rows)
    print(f"inserted      {args.rows:>12,} rows in {time.perf_counter() - t:6.1f} s")

    t = time.perf_counter()
    size = stream(app, uid)
    seconds = time.perf_counter() - t
    print(f"exported      {args.rows:>12,} rows in {seconds:6.1f} s "
          f"({args.rows / seconds:,.0f} rows/s), ZIP {size / 1e6:,.1f} MB")
    print(f"max RSS       {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:12,.1f} MiB (whole process)")

    if not args.no_trace:
        tracemalloc.start()
        t = time.perf_counter()
        stream(app, uid)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"traced peak   {peak / 2**20:12,.1f} MiB during iter_zip "
              f"({time.perf_counter() - t:.1f} s under tracemalloc)")


if __name__ == "__main__":
    main()
