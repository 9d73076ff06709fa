"""The usage downloads (P30, P31): every row of the filtered set, all pages,
streamed in keyset batches as CSV or as one JSON array, with the P22 columns,
exact costs, cells a spreadsheet will not execute, and only the rows of the
viewer's context: a member's download holds no other member's requests.
"""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models.types import utcnow
from app.services import usage as usage_service
from tests.web import test_usage as base
from tests.web.test_usage import MAX, OLGA, add_key, add_usage, no_canary, switch

ada, acme = base.ada, base.acme  # the fixtures of the usage page's tests

HEADER = ["request_id", "started_at", "ended_at", "model", "provider", "key_name", "key_id", "project", "tags",
          "input_tokens", "cache_read_tokens", "cache_write_tokens", "total_input_tokens", "output_tokens",
          "cost_usd", "ttft_ms", "latency_ms", "status_code", "error_class", "usage_source"]


def csv_rows(resp) -> list[dict]:
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


def count_batches(app):
    """Count the SELECTs of usage rows the download makes (one per keyset batch)."""
    seen = []

    def before(conn, cursor, statement, params, context, executemany):
        if "FROM usage_records" in statement and "LIMIT" in statement:
            seen.append(statement)
    return seen, before


@pytest.mark.promise("P30")
def test_P30_csv_download_streams_every_row_in_keyset_batches(app, client, ada):
    ids = add_usage(app, ada, 2600, step=timedelta(seconds=1), model="gpt-4o")
    add_usage(app, ada, 30, prefix="req_other_", model="gpt-4o-mini")
    seen, before = count_batches(app)
    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        resp = client.get("/usage/download.csv?model=gpt-4o", buffered=False)
        assert resp.is_streamed
        chunks = [c.decode() for c in resp.response]
        resp.close()
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    body = "".join(chunks)
    assert resp.status_code == 200 and len(chunks) > 10  # sent as it is read, a few hundred lines a chunk
    assert resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"] == f"attachment; filename=usage-{utcnow():%Y%m%d}.csv"
    assert resp.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == HEADER  # no member column outside a team
    assert [r["request_id"] for r in rows] == ids  # every page, newest first, each once
    # Read 1000 at a time: three batches for 2,600 rows, never one big SELECT.
    batches = [s for s in seen if "ORDER BY" in s]
    assert len(batches) == 3 and all(usage_service.DOWNLOAD_BATCH == 1000 for _ in batches)


@pytest.mark.promise("P22", "P30")
def test_P30_download_columns_are_the_p22_metadata(app, client, ada):
    key = add_key(app, ada, "checkout-service")
    add_usage(app, ada, 1, api_key_id=key, model="claude-sonnet-4-5", provider="anthropic", input_tokens=1200,
              output_tokens=300, cache_read_tokens=4000, cache_write_tokens=250, cost_usd=Decimal("0.01234567"),
              ttft_ms=431, latency_ms=2875, project="checkout", tags=json.dumps(["beta", "eu"]),
              usage_source="estimated")
    add_usage(app, ada, 1, prefix="req_fail_", status_code=429, error_class="rate_limit_error", ttft_ms=None,
              cost_usd=Decimal(0), usage_source="none", start=utcnow() - timedelta(hours=1))
    row = csv_rows(client.get("/usage/download.csv"))[0]
    assert row == {**row, "request_id": "req_0000", "model": "claude-sonnet-4-5", "provider": "anthropic",
                   "key_name": "checkout-service", "key_id": str(key), "project": "checkout", "tags": "beta,eu",
                   "input_tokens": "1200", "cache_read_tokens": "4000", "cache_write_tokens": "250",
                   "total_input_tokens": "5450", "output_tokens": "300", "cost_usd": "0.01234567", "ttft_ms": "431",
                   "latency_ms": "2875", "status_code": "200", "error_class": "", "usage_source": "estimated"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", row["started_at"])

    resp = client.get("/usage/download.json")
    assert resp.mimetype == "application/json"
    assert resp.headers["Content-Disposition"] == f"attachment; filename=usage-{utcnow():%Y%m%d}.json"
    data = json.loads(resp.get_data(as_text=True))
    assert [r["request_id"] for r in data] == ["req_0000", "req_fail_0000"]
    first, failed = data
    assert first["cost_usd"] == "0.01234567" and first["tags"] == ["beta", "eu"] and first["ttft_ms"] == 431
    assert first["total_input_tokens"] == 5450 and "member" not in first
    assert failed["status_code"] == 429 and failed["error_class"] == "rate_limit_error" and failed["ttft_ms"] is None
    assert failed["cost_usd"] == "0.00000000" and failed["usage_source"] == "none"
    # An empty set is a header alone, or an empty array.
    assert client.get("/usage/download.csv?model=nothing").get_data(as_text=True).strip() == ",".join(HEADER)
    assert json.loads(client.get("/usage/download.json?model=nothing").get_data(as_text=True)) == []


@pytest.mark.promise("P30")
def test_P30_csv_cells_that_start_a_formula_get_an_apostrophe(app, client, ada):
    key = add_key(app, ada, "=HYPERLINK(\"http://evil\",\"x\")")
    add_usage(app, ada, 1, api_key_id=key, project="+proj", tags=json.dumps(["-1+1", "@sum", "ok"]),
              error_class="=cmd")
    row = csv_rows(client.get("/usage/download.csv"))[0]
    assert row["key_name"] == "'=HYPERLINK(\"http://evil\",\"x\")"
    assert row["project"] == "'+proj" and row["tags"] == "'-1+1,@sum,ok" and row["error_class"] == "'=cmd"
    # JSON is data, not a spreadsheet: the values stay as they are.
    data = json.loads(client.get("/usage/download.json").get_data(as_text=True))
    assert data[0]["key_name"].startswith("=HYPERLINK") and data[0]["project"] == "+proj"


@pytest.mark.promise("P31")
def test_P31_a_members_download_holds_only_their_own_rows(app, client, login, forms, acme):
    login(MAX)
    switch(forms, acme["team"])
    for fmt in ("csv", "json"):
        for q in ("", f"member={acme['nina']}", f"key={acme['keys']['nina']}", "from=2000-01-01"):
            resp = client.get(f"/usage/download.{fmt}?{q}")
            body = resp.get_data(as_text=True)
            assert resp.status_code == 200
            no_canary(body, q)
            for other in ("req_nina", "req_olga", "req_gone", "req_maxown", "Nina", "Olga", "research"):
                assert other not in body, (fmt, q, other)
    rows = csv_rows(client.get("/usage/download.csv"))
    assert sorted(r["request_id"] for r in rows) == [f"req_maxteam_{i:04d}" for i in range(3)]
    assert "member" not in rows[0]
    assert client.get(f"/usage/download.csv?key={acme['keys']['nina']}").get_data(as_text=True).count("\n") == 1


@pytest.mark.promise("P31")
def test_P31_an_owners_download_names_each_member(app, client, login, forms, acme):
    login(OLGA)
    switch(forms, acme["team"])
    rows = csv_rows(client.get("/usage/download.csv"))
    assert len(rows) == 12 and list(rows[0])[:8] == HEADER[:7] + ["member"]
    by_member = {r["member"] for r in rows}
    assert by_member == {"Olga Owner", "Max Member", "Nina Neighbour", "Former member"}
    no_canary("\n".join(",".join(r.values()) for r in rows))
    nina = json.loads(client.get(f"/usage/download.json?member={acme['nina']}&status=ok").get_data(as_text=True))
    assert len(nina) == 4 and {r["member"] for r in nina} == {"Nina Neighbour"}
    assert all(r["key_name"] == "nina-team" for r in nina)


def test_downloads_need_a_login(client):
    for fmt in ("csv", "json"):
        resp = client.get(f"/usage/download.{fmt}")
        assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert client.get("/usage/download.xlsx").status_code in (302, 404)
