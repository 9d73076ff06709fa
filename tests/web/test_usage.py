"""The usage page through the test client: the P22 columns a person reads, the
30-day totals, newest-first pagination and filters (P30), the htmx fragment,
the first-run help, and that nobody ever sees another person's rows.

Usage rows are inserted directly, as the relay's writer would leave them.
"""
from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.extensions import db
from app.models import ApiKey, Team, TeamMember, UsageRecord
from app.models.types import utcnow
from app.services import rollups
from app.usage.routes import usd

HX = {"HX-Request": "true"}
RID_RE = re.compile(r'data-request-id="([^"]+)"')


def text(resp) -> str:
    return resp.get_data(as_text=True)


def request_ids(resp) -> list[str]:
    return RID_RE.findall(text(resp))


def add_key(app, user_id: int, name: str = "laptop", last4: str = "abcd") -> int:
    with app.app_context():
        key = ApiKey(user_id=user_id, name=name, prefix="rk_Xy12", last4=last4,
                     lookup_hash=secrets.token_hex(32), created_at=utcnow())
        db.session.add(key)
        db.session.commit()
        return key.id


def add_usage(app, user_id: int, n: int = 1, *, start: datetime | None = None, step=timedelta(minutes=1),
              prefix: str = "req_", rollup: bool = True, **fields) -> list[str]:
    """n rows for one person, one `step` apart going back from `start`; the
    request ids are `prefix` + a zero-padded index (0 is the newest). Written
    as the usage writer does: the rows and their rollup cells in one
    transaction (`rollup=False`: rows only, as before the rollups were kept)."""
    start = start or utcnow() - timedelta(minutes=1)
    rows = []
    for i in range(n):
        began = start - i * step
        row = {"request_id": f"{prefix}{i:04d}", "user_id": user_id, "team_id": None, "api_key_id": None,
               "project": None, "tags": None, "started_at": began, "ended_at": began + timedelta(milliseconds=800),
               "model": "gpt-4o-mini", "provider": "openai", "input_tokens": 100, "output_tokens": 20,
               "cache_read_tokens": 0, "cache_write_tokens": 0, "cost_usd": Decimal("0.000027"), "ttft_ms": 120,
               "latency_ms": 800, "status_code": 200, "error_class": None,
               "routing_trace": json.dumps([{"provider": "openai", "model": "gpt-4o-mini", "outcome": "ok",
                                             "ms": 790}]),
               "usage_source": "provider"}
        row.update(fields)
        rows.append(row)
    with app.app_context(), db.engine.begin() as conn:
        if rows:
            conn.execute(sa.insert(UsageRecord.__table__), rows)
            if rollup:
                rollups.apply(conn, rows)
    return [r["request_id"] for r in rows]


@pytest.fixture
def ada(app, users, login):
    uid = users.create()
    login()
    return uid


# ---- access ---------------------------------------------------------------------------

def test_logged_out_goes_to_login(client):
    resp = client.get("/usage/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_nav_links_to_usage(client, ada):
    page = text(client.get("/usage/"))
    assert re.search(r'<a href="/usage/"\s+aria-current="page">Usage</a>', page)


@pytest.mark.promise("P22", "P31")
def test_another_persons_rows_never_appear(app, client, users, ada):
    bob = users.create("bob@example.com")
    bob_key = add_key(app, bob, name="bob-prod")
    add_usage(app, ada, 3, prefix="req_ada_")
    add_usage(app, bob, 5, prefix="req_bob_", model="bob-secret-model", api_key_id=bob_key,
              cost_usd=Decimal("9.5"), project="bobproject")

    page = text(client.get("/usage/"))
    assert request_ids(client.get("/usage/")) == ["req_ada_0000", "req_ada_0001", "req_ada_0002"]
    for leak in ("req_bob_", "bob-secret-model", "bob-prod", "bobproject", "9.50"):
        assert leak not in page
    # Not through the filters either: Bob's key and model select nothing of his.
    assert request_ids(client.get(f"/usage/?key={bob_key}")) == []
    assert "req_bob_" not in text(client.get("/usage/?model=bob-secret-model"))
    assert "req_bob_" not in text(client.get("/usage/?model=bob-secret-model", headers=HX))
    # The summary counts only Ada's three requests.
    assert re.search(r'id="stat-requests">.*?stat-value">3<', page, re.DOTALL)


# ---- the columns (P22) ------------------------------------------------------------------

@pytest.mark.promise("P22")
def test_row_shows_the_p22_columns(app, client, ada):
    key = add_key(app, ada, name="checkout-service", last4="9f3c")
    began = datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)
    add_usage(app, ada, start=began, prefix="req_7f3a9c2b1d4e5f60718293a4_",
              api_key_id=key, model="claude-sonnet-4-5", provider="anthropic",
              input_tokens=12345, output_tokens=678, cache_read_tokens=4000, cache_write_tokens=250,
              cost_usd=Decimal("0.01234567"), ttft_ms=431, latency_ms=2875, status_code=200,
              project="checkout", tags=json.dumps(["beta", "eu"]), usage_source="estimated",
              routing_trace=json.dumps([
                  {"provider": "bedrock", "model": "claude-sonnet", "outcome": "error",
                   "error_class": "http_503", "ms": 37},
                  {"provider": "anthropic", "model": "claude-sonnet-4-5", "outcome": "ok", "ms": 2801}]))
    page = text(client.get("/usage/?from=2026-03-01"))

    assert '<time datetime="2026-03-14T15:09:26.535000+00:00">2026-03-14 15:09:26</time>' in page
    # Request id: short in the table (full in a tooltip and in the details).
    assert 'title="req_7f3a9c2b1d4e5f60718293a4_0000">req_7f3a9c2b…<' in page
    assert '<dd class="mono">req_7f3a9c2b1d4e5f60718293a4_0000</dd>' in page
    assert "claude-sonnet-4-5" in page and ">anthropic<" in page
    assert "checkout-service" in page and "rk_Xy12…9f3c" in page
    # Input is the total the model read; the cached part (read + write) under it.
    for figure in ("16,595", "4,250 cached", "678", "$0.012346", "2,875 ms", "TTFT 431 ms",
                   "12,345 uncached + 4,000 cache read + 250 cache write"):
        assert figure in page, figure
    assert 'title="cache read 4,000 + cache write 250"' in page
    assert 'title="Total input = uncached input + cache read + cache write">Input</abbr>' in page
    assert '<span class="badge ok">200</span>' in page
    # The usage source is a badge that explains itself.
    assert re.search(r'<span class="badge warn source" title="[^"]*relay counted the tokens itself\.">estimated</span>',
                     page)
    # Project and tags.
    assert '<span class="label-chip" title="Project">checkout</span>' in page
    assert "#beta" in page and "#eu" in page
    # The routing trace, attempt by attempt, inside a <details>.
    trace = page[page.index('<details class="trace">'):page.index("</details>")]
    assert "2 attempts" in trace
    rows = re.findall(r"<tr>\s*<td class=\"muted\">(\d)</td>(.*?)</tr>", trace, re.DOTALL)
    assert [n for n, _ in rows] == ["1", "2"]
    assert "bedrock" in rows[0][1] and "http_503" in rows[0][1] and "37 ms" in rows[0][1] and ">error<" in rows[0][1]
    assert "anthropic" in rows[1][1] and ">ok<" in rows[1][1] and "2801 ms" in rows[1][1]


@pytest.mark.promise("P22")
def test_errors_sources_and_deleted_keys(app, client, ada):
    add_usage(app, ada, prefix="req_err_", status_code=502, error_class="http_503", usage_source="none",
              provider=None, input_tokens=0, output_tokens=0, cost_usd=0, ttft_ms=None,
              api_key_id=987654, routing_trace=json.dumps([
                  {"provider": "openai", "model": "gpt-4o-mini", "outcome": "error", "error_class": "http_503",
                   "ms": 12}]))
    add_usage(app, ada, prefix="req_401_", start=utcnow() - timedelta(hours=1), status_code=401,
              error_class="authentication_error", usage_source="none", routing_trace="[]", ttft_ms=None)
    add_usage(app, ada, prefix="req_bad_", start=utcnow() - timedelta(hours=2), routing_trace="not json")
    page = text(client.get("/usage/"))
    assert '<span class="badge bad">502</span>' in page and "http_503" in page
    assert '<span class="badge warn">401</span>' in page and "authentication_error" in page
    assert re.search(r'<span class="badge source" title="Nothing was sent[^"]*">none</span>', page)
    assert "deleted key" in page
    assert "no TTFT" in page
    assert "$0.00" in page
    # A request refused before routing, and a row whose trace is unreadable, both say so.
    assert page.count("No provider was tried") == 2


def test_request_content_is_escaped(app, client, ada):
    add_usage(app, ada, model="<script>alert(1)</script>", tags=json.dumps(["<b>x</b>"]))
    page = text(client.get("/usage/"))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page


def test_usd_formatting():
    assert usd(Decimal("0.01234567")) == "$0.012346"
    assert usd(Decimal("0.000027")) == "$0.000027"
    assert usd(Decimal("0.5")) == "$0.50"
    assert usd(Decimal("1234.5")) == "$1,234.50"
    assert usd(Decimal("12.345600")) == "$12.3456"
    assert usd(0) == "$0.00"
    assert usd(Decimal("0.00000001")) == "<$0.000001"


# ---- totals ----------------------------------------------------------------------------------

@pytest.mark.promise("P30")
def test_summary_totals_last_30_days(app, client, ada):
    add_usage(app, ada, 3, prefix="req_ok_", input_tokens=1000, output_tokens=250, cost_usd=Decimal("0.0125"))
    add_usage(app, ada, 1, prefix="req_fail_", status_code=500, input_tokens=7, output_tokens=0,
              cost_usd=Decimal("0.00000100"))
    add_usage(app, ada, 1, prefix="req_old_", start=utcnow() - timedelta(days=31), input_tokens=99999,
              cost_usd=Decimal(50))
    page = text(client.get("/usage/"))

    def stat(name):
        return re.search(rf'id="stat-{name}">.*?stat-value">([^<]+)<', page, re.DOTALL).group(1)

    assert stat("requests") == "4"
    assert stat("input") == "3,007"
    assert stat("output") == "750"
    assert stat("cost") == "$0.037501"
    assert "1 failed" in page and "Last 30 days" in page and "Showing the last 30 days" in page
    # The old row is outside the default range, of the table and the summary alike.
    assert "req_old_0000" not in request_ids(client.get("/usage/"))
    older = client.get(f"/usage/?from={(utcnow() - timedelta(days=40)).date().isoformat()}")
    assert "req_old_0000" in request_ids(older)
    assert re.search(r'id="stat-requests">.*?stat-value">5<', text(older), re.DOTALL)


def test_dashboard_card_shows_the_same_30_day_totals(app, client, ada):
    assert "No requests in the last 30 days" in text(client.get("/dashboard"))
    add_usage(app, ada, 3, prefix="req_ok_", cost_usd=Decimal("0.0125"))
    add_usage(app, ada, 1, prefix="req_fail_", status_code=502, cost_usd=Decimal(0))
    add_usage(app, ada, 1, prefix="req_old_", start=utcnow() - timedelta(days=31), cost_usd=Decimal(50))
    page = re.sub(r"\s+", " ", text(client.get("/dashboard")))
    assert "<strong>4</strong> requests and <strong>$0.0375</strong> in the last 30 days, 1 failed" in page
    assert 'href="/usage/"' in page


# ---- order and pagination (P30) -------------------------------------------------------

def links(page: str) -> dict[str, str]:
    """The pager's links by rel ("prev" is Newer, "next" is Older), unescaped."""
    return {rel: href.replace("&amp;", "&") for rel, href in re.findall(r'rel="(prev|next)" href="([^"]+)"', page)}


def walk(client, url: str, rel: str = "next") -> list[list[str]]:
    """Follow the pager from `url` until there is no `rel` link: each page's request ids."""
    pages = []
    while url:
        page = text(client.get(url))
        pages.append(RID_RE.findall(page))
        url = links(page).get(rel)
        assert len(pages) < 100
    return pages


@pytest.mark.promise("P30")
def test_P30_keyset_pages_of_fifty_newest_first(app, client, ada):
    ids = add_usage(app, ada, 120)  # req_0000 is the newest
    first = text(client.get("/usage/"))
    assert RID_RE.findall(first) == ids[:50]
    assert "Showing <strong>50</strong> requests, newest first" in first
    assert "<strong>120</strong> requests in range" in first
    assert 'aria-disabled="true">← Newer' in first and "page=" not in first
    older = links(first)["next"]
    assert re.fullmatch(r"/usage/\?after=\d{8}T\d{6}\.\d{6}Z_\d+", older)

    second = text(client.get(older))
    assert RID_RE.findall(second) == ids[50:100]
    third = text(client.get(links(second)["next"]))
    assert RID_RE.findall(third) == ids[100:]
    assert 'aria-disabled="true">Older →' in third
    # Newer from the third page is the second; from the second, the first (without a cursor).
    assert RID_RE.findall(text(client.get(links(third)["prev"]))) == ids[50:100]
    assert links(second)["prev"].startswith("/usage/?before=")
    back = text(client.get(links(second)["prev"]))
    assert RID_RE.findall(back) == ids[:50] and 'aria-disabled="true">← Newer' in back
    # Old page-number links land on the first page.
    assert request_ids(client.get("/usage/?page=3")) == ids[:50]


@pytest.mark.promise("P30")
def test_P30_walking_every_page_shows_each_row_once_even_with_equal_times(app, client, ada):
    """Rows that share a started_at (a burst in one microsecond) are ordered by
    id, so the cursor never skips or repeats one at a page boundary."""
    same = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    add_usage(app, ada, 73, start=same, step=timedelta(0), prefix="req_same_")
    add_usage(app, ada, 40, start=same + timedelta(minutes=1), prefix="req_new_")
    add_usage(app, ada, 40, start=same - timedelta(minutes=1), prefix="req_old_")
    with app.app_context():
        expected = list(db.session.scalars(sa.select(UsageRecord.request_id).order_by(
            UsageRecord.started_at.desc(), UsageRecord.id.desc())))
    pages = walk(client, "/usage/")
    assert [len(p) for p in pages] == [50, 50, 50, 3]
    assert [rid for p in pages for rid in p] == expected
    # And back again, Newer by Newer from the last page, the same pages in reverse.
    last = "/usage/?" + links(text(client.get(walk_url(client, "/usage/", 3))))["prev"].split("?", 1)[1]
    back = walk(client, last, "prev")
    assert back == pages[-2::-1]


def walk_url(client, url: str, hops: int) -> str:
    for _ in range(hops):
        url = links(text(client.get(url)))["next"]
    return url


@pytest.mark.promise("P30")
def test_P30_paging_keeps_the_filters(app, client, ada):
    key = add_key(app, ada)
    ids = add_usage(app, ada, 60, model="gpt-4o", api_key_id=key, project="shop", tags=json.dumps(["beta"]))
    add_usage(app, ada, 60, prefix="req_other_", model="gpt-4o-mini")
    page = text(client.get(f"/usage/?model=gpt-4o&key={key}&status=ok&from=2000-01-01&project=shop&tag=beta"))
    next_url = links(page)["next"]
    for part in ("model=gpt-4o", f"key={key}", "status=ok", "from=2000-01-01", "project=shop", "tag=beta",
                 "after="):
        assert part in next_url
    assert request_ids(client.get(next_url)) == ids[50:]
    assert 'hx-get="' + next_url.replace("&", "&amp;") + '"' in page
    # The downloads carry the same filters (and no cursor: they are every page).
    csv_url = re.search(r'id="download-csv" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert csv_url.startswith("/usage/download.csv?") and "after=" not in csv_url
    for part in ("model=gpt-4o", f"key={key}", "status=ok", "project=shop", "tag=beta"):
        assert part in csv_url


@pytest.mark.promise("P30")
@pytest.mark.parametrize("cursor", ["garbage", "20261301T000000.000000Z_5", "20260101T000000.000000Z_0",
                                    "20260101T000000.000000Z_99999999999999999999", "20260101T000000Z_5",
                                    "%00", "²", "20260101T000000.000000Z_5_6", "1" * 500])
def test_P30_a_garbage_cursor_is_the_first_page_with_a_note(app, client, ada, cursor):
    ids = add_usage(app, ada, 60)
    for name in ("after", "before"):
        resp = client.get("/usage/", query_string={name: cursor})
        assert resp.status_code == 200
        assert request_ids(resp) == ids[:50]
        assert "That page link is not one this page made" in text(resp)


# ---- filters (P30) ---------------------------------------------------------------------

@pytest.mark.promise("P30")
def test_filter_by_model_key_and_status(app, client, ada):
    laptop, server = add_key(app, ada, "laptop", "1111"), add_key(app, ada, "server", "2222")
    a = add_usage(app, ada, 2, prefix="req_a_", model="gpt-4o-mini", api_key_id=laptop)
    b = add_usage(app, ada, 2, prefix="req_b_", model="claude-haiku", api_key_id=server,
                  start=utcnow() - timedelta(hours=1))
    c = add_usage(app, ada, 1, prefix="req_c_", model="claude-haiku", api_key_id=laptop, status_code=429,
                  error_class="rate_limit_error", start=utcnow() - timedelta(hours=2))

    page = text(client.get("/usage/"))
    # The choices are this person's own models and keys.
    assert re.search(r'<option value="claude-haiku"\s*>claude-haiku</option>', page)
    assert re.search(r'<option value="gpt-4o-mini"\s*>gpt-4o-mini</option>', page)
    assert f'<option value="{laptop}" >laptop (rk_Xy12…1111)</option>' in page

    assert request_ids(client.get("/usage/?model=claude-haiku")) == b + c
    assert request_ids(client.get(f"/usage/?key={laptop}")) == a + c
    assert request_ids(client.get(f"/usage/?key={server}&model=claude-haiku")) == b
    assert request_ids(client.get("/usage/?status=ok")) == a + b
    assert request_ids(client.get("/usage/?status=error")) == c
    # The form shows what is selected.
    page = text(client.get(f"/usage/?model=claude-haiku&key={server}&status=error"))
    assert '<option value="claude-haiku" selected>' in page
    assert f'<option value="{server}" selected>' in page
    assert '<option value="error" selected>' in page


@pytest.mark.promise("P30")
def test_filter_by_utc_date_range(app, client, ada):
    day = datetime(2026, 5, 10, tzinfo=UTC)
    add_usage(app, ada, prefix="req_may09_late_", start=day - timedelta(seconds=1))       # 09 23:59:59
    add_usage(app, ada, prefix="req_may10_start_", start=day)                              # 10 00:00:00
    add_usage(app, ada, prefix="req_may11_late_", start=day + timedelta(days=2, seconds=-1))  # 11 23:59:59
    add_usage(app, ada, prefix="req_may12_start_", start=day + timedelta(days=2))          # 12 00:00:00

    assert request_ids(client.get("/usage/?from=2026-05-10&to=2026-05-11")) == [
        "req_may11_late_0000", "req_may10_start_0000"]
    assert request_ids(client.get("/usage/?from=2026-05-11")) == ["req_may12_start_0000", "req_may11_late_0000"]
    assert request_ids(client.get("/usage/?to=2026-05-09")) == ["req_may09_late_0000"]
    # Swapped dates are put in order, and the person is told.
    resp = client.get("/usage/?from=2026-05-11&to=2026-05-10")
    assert request_ids(resp) == ["req_may11_late_0000", "req_may10_start_0000"]
    assert "swapped" in text(resp)


@pytest.mark.promise("P30")
def test_bad_filter_values_are_ignored_not_errors(app, client, ada):
    ids = add_usage(app, ada, 3)
    for query in ("from=yesterday", "to=2026-13-45", "from=0001-01-01", "to=9999-12-31", "status=maybe",
                  "key=abc", "key=99999999999", "key=-1", "model=%00", "model=" + "x" * 500,
                  "from=%00&to=%ff", "page=abc&from=&to=&model=&key=&status="):
        resp = client.get("/usage/?" + query)
        assert resp.status_code == 200, query
        assert request_ids(resp) == ids, query
    resp = client.get("/usage/?from=yesterday")
    assert "“yesterday” is not a date like 2025-01-31, so it was ignored." in text(resp)


@pytest.mark.promise("P30")
def test_filters_that_match_nothing(app, client, ada):
    add_usage(app, ada, 2)
    resp = client.get("/usage/?model=gpt-5-ultra")
    page = text(resp)
    assert "No requests match these filters" in page
    assert '<a class="button secondary small" href="/usage/">Reset filters</a>' in page
    assert "No requests yet" not in page
    # The filter form stays, with the unknown model still selected, so it can be changed.
    assert '<option value="gpt-5-ultra" selected>' in page


# ---- htmx --------------------------------------------------------------------------------

@pytest.mark.promise("P30")
def test_htmx_gets_the_summary_and_table_fragment(app, client, ada):
    ids = add_usage(app, ada, 70, model="gpt-4o")
    after = links(text(client.get("/usage/?model=gpt-4o")))["next"].split("after=")[1]
    resp = client.get(f"/usage/?after={after}&model=gpt-4o&key=&status=&from=&to=&project=&tag=", headers=HX)
    fragment = text(resp)
    assert resp.status_code == 200
    assert "<html" not in fragment and "<nav aria-label=\"Main\"" not in fragment and "<form" not in fragment
    # The cards follow the filters, so they are part of the fragment.
    assert re.search(r'id="stat-requests">.*?stat-value">70<', fragment, re.DOTALL)
    assert RID_RE.findall(fragment) == ids[50:]
    # The address bar gets the tidy URL; caches keep page and fragment apart.
    assert resp.headers["HX-Push-Url"] == f"/usage/?model=gpt-4o&after={after}"
    assert "HX-Request" in resp.headers["Vary"]
    # The full page includes the same fragment.
    full = text(client.get(f"/usage/?after={after}&model=gpt-4o"))
    assert "<html" in full and 'id="usage-table"' in full and 'id="stat-requests"' in full
    assert RID_RE.findall(full) == ids[50:]
    # The filter form and pager ask htmx for the fragment, and still work without it.
    assert 'method="get" action="/usage/"' in full and 'hx-get="/usage/" hx-target="#usage-table"' in full
    # A back-button history restore needs the whole page.
    restore = text(client.get("/usage/", headers={**HX, "HX-History-Restore-Request": "true"}))
    assert "<html" in restore
    # A Newer link that reaches the newest rows pushes the first page's address.
    newer = client.get(links(fragment)["prev"], headers=HX)
    assert newer.headers["HX-Push-Url"] == "/usage/?model=gpt-4o"


# ---- first run --------------------------------------------------------------------------------

@pytest.mark.promise("P30")
def test_empty_state_explains_how_to_call_the_relay(client, ada):
    page = text(client.get("/usage/"))
    assert "No requests yet" in page
    assert '<code class="pill" id="base-url">http://localhost/v1</code>' in page
    assert 'OpenAI(\n    base_url="http://localhost/v1",\n    api_key="YOUR_KEY",' in page
    assert "client.chat.completions.create(" in page
    assert 'Anthropic(\n    base_url="http://localhost",' in page
    assert 'href="/keys/"' in page
    assert "<form class=\"usage-filters\"" not in page  # nothing to filter yet
    # Filters on an account with no requests still get the first-run help.
    assert "No requests yet" in text(client.get("/usage/?model=gpt-4o"))


def test_empty_state_uses_the_configured_base_url(make_app):
    from tests.conftest import Forms
    app = make_app(BASE_URL="https://relay.example.org/")
    client = app.test_client()
    with app.app_context():
        from app.models import User
        from app.services.passwords import hash_password
        db.session.add(User(email="ada@example.com", email_key="ada@example.com",
                            password_hash=hash_password("correct horse battery"), age_confirmed_at=utcnow(),
                            email_verified_at=utcnow()))
        db.session.commit()
    Forms(client).post("/login", {"email": "ada@example.com", "password": "correct horse battery"})
    page = text(client.get("/usage/"))
    assert 'base_url="https://relay.example.org/v1"' in page
    assert 'base_url="https://relay.example.org",' in page


# ---- contexts: personal, team owner, team member (P31) -----------------------------------

OLGA, MAX, NINA, BOB = "olga@example.com", "max@example.com", "nina@example.com", "bob@example.com"
CANARIES = ("CANARY-rival-key", "canary-rival-project", "req_rival_", "CANARY-bob-key", "canary-bob-project",
            "req_bob_", "canary-model")


def make_team(app, name: str, members: dict[int, str]) -> int:
    with app.app_context():
        team = Team(name=name, slug=name.lower().replace(" ", "-") + secrets.token_hex(3))
        db.session.add(team)
        db.session.flush()
        db.session.add_all(TeamMember(team_id=team.id, user_id=u, role=role) for u, role in members.items())
        db.session.commit()
        return team.id


def team_key(app, user_id: int, team_id: int, name: str) -> int:
    with app.app_context():
        key = ApiKey(user_id=user_id, team_id=team_id, name=name, prefix="rk_Tm01", last4=secrets.token_hex(2),
                     lookup_hash=secrets.token_hex(32), created_at=utcnow())
        db.session.add(key)
        db.session.commit()
        return key.id


def switch(forms, team_id: int | None) -> None:
    resp = forms.post("/teams/switch", {"team": "" if team_id is None else str(team_id)}, page="/usage/")
    assert resp.status_code == 302


@pytest.fixture
def acme(app, users):
    """Acme: Olga owns it, Max and Nina are members, each with a team key and
    rows on it; a former member's rows stay. Max has personal rows too. Next
    door, a rival team and Bob's personal rows carry canaries that must never
    show on any page of Acme's people."""
    olga, max_, nina = (users.create(OLGA, name="Olga Owner"), users.create(MAX, name="Max Member"),
                        users.create(NINA, name="Nina Neighbour"))
    gone, bob = users.create("gone@example.com"), users.create(BOB)
    team = make_team(app, "Acme", {olga: "owner", max_: "member", nina: "member"})
    rival = make_team(app, "Rival", {bob: "owner", olga: "member"})
    keys = {"olga": team_key(app, olga, team, "olga-team"), "max": team_key(app, max_, team, "max-team"),
            "nina": team_key(app, nina, team, "nina-team"), "max_personal": add_key(app, max_, "max-own"),
            "rival": team_key(app, bob, rival, "CANARY-rival-key"), "bob": add_key(app, bob, "CANARY-bob-key")}
    add_usage(app, olga, 2, team_id=team, api_key_id=keys["olga"], prefix="req_olga_", project="website",
              cost_usd=Decimal("1.00"))
    add_usage(app, max_, 3, team_id=team, api_key_id=keys["max"], prefix="req_maxteam_", model="claude-haiku",
              tags=json.dumps(["beta"]), cache_read_tokens=40, cache_write_tokens=2)
    add_usage(app, nina, 4, team_id=team, api_key_id=keys["nina"], prefix="req_nina_", project="research",
              cost_usd=Decimal("0.25"))
    add_usage(app, nina, 1, team_id=team, api_key_id=keys["nina"], prefix="req_ninafail_", status_code=429,
              error_class="rate_limit_error", start=utcnow() - timedelta(hours=2))
    add_usage(app, gone, 2, team_id=team, api_key_id=None, prefix="req_gone_", start=utcnow() - timedelta(hours=3))
    add_usage(app, max_, 5, api_key_id=keys["max_personal"], prefix="req_maxown_", start=utcnow() - timedelta(hours=5))
    add_usage(app, bob, 3, team_id=rival, api_key_id=keys["rival"], prefix="req_rival_",
              project="canary-rival-project", model="canary-model")
    add_usage(app, olga, 2, team_id=rival, api_key_id=None, prefix="req_rival_olga_", model="canary-model")
    add_usage(app, bob, 3, api_key_id=keys["bob"], prefix="req_bob_", project="canary-bob-project",
              model="canary-model")
    return {"olga": olga, "max": max_, "nina": nina, "gone": gone, "bob": bob, "team": team, "rival": rival,
            "keys": keys}


def no_canary(body: str, query: str = "") -> None:
    """No other scope's key name, project, model or request id in the body
    (a value the person typed into the query string may be echoed in the form)."""
    for canary in CANARIES:
        if canary not in query:
            assert canary not in body, canary


def ids_with(resp, prefix: str) -> list[str]:
    return [r for r in request_ids(resp) if r.startswith(prefix)]


def probes(acme) -> list[str]:
    """Query strings aimed at the rows of others: their keys, members, models, projects."""
    k, t = acme["keys"], acme
    return ["", f"key={k['rival']}", f"key={k['bob']}", f"member={t['bob']}", "model=canary-model",
            "project=canary-rival-project", "project=canary-bob-project", f"member={t['nina']}",
            f"key={k['nina']}", "tag=beta", "status=error", "from=2000-01-01"]


@pytest.mark.promise("P31")
def test_P31_personal_context_is_personal_keys_only(app, client, login, forms, acme):
    login(MAX)
    resp = client.get("/usage/")
    assert sorted(request_ids(resp)) == [f"req_maxown_{i:04d}" for i in range(5)]
    page = text(resp)
    assert "max-own" in page and "max-team" not in page and ">Member<" not in page
    for q in probes(acme):
        body = text(client.get("/usage/?" + q))
        no_canary(body, q)
        assert "req_maxteam_" not in body and "req_nina_" not in body


@pytest.mark.promise("P31")
def test_P31_owner_sees_every_members_rows_with_member_column_and_filter(app, client, login, forms, acme):
    login(OLGA)
    switch(forms, acme["team"])
    resp = client.get("/usage/")
    page = text(resp)
    got = request_ids(resp)
    assert len(got) == 12 and not any(r.startswith(("req_rival", "req_bob", "req_maxown")) for r in got)
    # Newest first across members.
    with app.app_context():
        expected = list(db.session.scalars(sa.select(UsageRecord.request_id).where(
            UsageRecord.team_id == acme["team"]).order_by(UsageRecord.started_at.desc(), UsageRecord.id.desc())))
    assert got == expected
    # The Member column: names of current members, "Former member" for the others.
    assert '<th scope="col">Member</th>' in page
    assert "Max Member" in page and "Nina Neighbour" in page and "Former member" in page
    assert "gone@example.com" not in page
    # The member filter lists the current members, and filters by one.
    assert re.search(rf'<option value="{acme["nina"]}"\s*>Nina Neighbour</option>', page)
    nina = client.get(f"/usage/?member={acme['nina']}")
    assert sorted(request_ids(nina)) == sorted([f"req_nina_{i:04d}" for i in range(4)] + ["req_ninafail_0000"])
    assert re.search(r'id="stat-requests">.*?stat-value">5<', text(nina), re.DOTALL)
    gone = client.get(f"/usage/?member={acme['gone']}")
    assert ids_with(gone, "req_gone_") == ["req_gone_0000", "req_gone_0001"]
    assert f'<option value="{acme["gone"]}" selected>Former member</option>' in text(gone)
    # The key filter lists the team's keys, every member's, and no one else's.
    for name in ("olga-team", "max-team", "nina-team"):
        assert name in page
    assert "max-own" not in page
    for q in probes(acme):
        no_canary(text(client.get("/usage/?" + q)), q)
        no_canary(text(client.get("/usage/?" + q, headers=HX)), q)
    assert request_ids(client.get(f"/usage/?member={acme['bob']}")) == []
    assert request_ids(client.get(f"/usage/?key={acme['keys']['rival']}")) == []


@pytest.mark.promise("P31")
def test_P31_a_member_sees_only_their_own_rows_of_the_team(app, client, login, forms, acme):
    login(MAX)
    switch(forms, acme["team"])
    resp = client.get("/usage/")
    assert sorted(request_ids(resp)) == [f"req_maxteam_{i:04d}" for i in range(3)]
    page = text(resp)
    assert ">Member<" not in page and 'name="member"' not in page
    # Only Max's own team key is offered.
    assert "max-team" in page and "nina-team" not in page and "olga-team" not in page and "max-own" not in page
    assert "Nina" not in page and "Olga" not in page
    assert re.search(r'id="stat-requests">.*?stat-value">3<', page, re.DOTALL)
    for q in probes(acme):
        resp = client.get("/usage/?" + q)
        body = text(resp)
        no_canary(body, q)
        for other in ("req_nina", "req_olga", "req_gone", "req_maxown", "research", "website"):
            assert other not in body, (q, other)
    # A member filter is an owner's tool: ignored with a note, still only Max's rows.
    resp = client.get(f"/usage/?member={acme['nina']}")
    assert "Only a team’s owners and admins can filter by member" in text(resp)
    assert sorted(request_ids(resp)) == [f"req_maxteam_{i:04d}" for i in range(3)]
    # Nina's key selects nothing of hers, and the cards agree.
    resp = client.get(f"/usage/?key={acme['keys']['nina']}")
    assert request_ids(resp) == [] and "No requests match these filters" in text(resp)
    assert re.search(r'id="stat-requests">.*?stat-value">0<', text(resp), re.DOTALL)


@pytest.mark.promise("P31")
def test_P31_leaving_the_team_context_goes_back_to_personal(app, client, login, forms, acme):
    login(MAX)
    switch(forms, acme["team"])
    assert ids_with(client.get("/usage/"), "req_maxteam_")
    switch(forms, None)
    assert ids_with(client.get("/usage/"), "req_maxteam_") == []
    assert len(ids_with(client.get("/usage/"), "req_maxown_")) == 5


# ---- the summary follows the filters (P30) ------------------------------------------------

def raw_sums(app, where) -> dict:
    """The figures the cards must show, summed from the raw rows in Python."""
    with app.app_context():
        rows = db.session.scalars(sa.select(UsageRecord).where(*where)).all()
        return {"requests": len(rows), "errors": sum(not 200 <= r.status_code < 300 for r in rows),
                "input": sum(r.input_tokens + r.cache_read_tokens + r.cache_write_tokens for r in rows),
                "cached": sum(r.cache_read_tokens + r.cache_write_tokens for r in rows),
                "output": sum(r.output_tokens for r in rows),
                "cost": sum((Decimal(r.cost_usd) for r in rows), Decimal(0))}


def cards(page: str) -> dict:
    def stat(name):
        return re.search(rf'id="stat-{name}">.*?stat-value">([^<]+)<', page, re.DOTALL).group(1)
    source = re.search(r'class="usage-stats"[^>]*data-source="(\w+)"', page).group(1)
    return {"requests": stat("requests"), "input": stat("input"), "output": stat("output"), "cost": stat("cost"),
            "source": source}


@pytest.mark.promise("P30", "P31")
@pytest.mark.parametrize("query, source", [
    ("", "rollups"), ("model=claude-haiku", "rollups"), ("project=research", "rollups"), ("tag=beta", "rollups"),
    ("member={nina}", "rollups"), ("key={nina_key}", "rollups"), ("status=error", "rows"),
    ("model=gpt-4o-mini&project=research", "rows"), ("member={nina}&status=ok", "rows"),
    ("from={today}&to={today}", "rollups"), ("from=2000-01-01&tag=beta", "rollups"),
])
def test_P30_summary_cards_equal_the_sum_of_the_matching_rows(app, client, login, forms, acme, query, source):
    """The cards read the daily rollups when one dimension (or none) and no
    status is filtered, the raw rows otherwise; either way they are the sum of
    exactly the rows the table matches."""
    login(OLGA)
    switch(forms, acme["team"])
    today = utcnow().date().isoformat()
    query = query.format(nina=acme["nina"], nina_key=acme["keys"]["nina"], today=today)
    page = text(client.get("/usage/?" + query))
    args = dict(p.split("=") for p in query.split("&") if p)
    U = UsageRecord
    where = [U.team_id == acme["team"], U.started_at >= datetime.combine(
        date.fromisoformat(args.get("from", (utcnow() - timedelta(days=29)).date().isoformat())),
        datetime.min.time(), tzinfo=UTC)]
    if "model" in args:
        where.append(U.model == args["model"])
    if "project" in args:
        where.append(U.project == args["project"])
    if "tag" in args:
        where.append(U.tags.contains('"beta"'))
    if "member" in args:
        where.append(U.user_id == int(args["member"]))
    if "key" in args:
        where.append(U.api_key_id == int(args["key"]))
    if args.get("status") == "error":
        where.append(U.status_code >= 300)
    if args.get("status") == "ok":
        where.append(U.status_code < 300)
    want = raw_sums(app, where)
    assert want["requests"] > 0, query
    got = cards(page)
    assert got == {"requests": f"{want['requests']:,}", "input": f"{want['input']:,}",
                   "output": f"{want['output']:,}", "cost": usd(want["cost"]), "source": source}, query
    assert len(request_ids(client.get("/usage/?" + query))) == min(50, want["requests"])


@pytest.mark.promise("P30")
def test_P30_summary_from_rows_when_the_rollups_hold_nothing(app, client, ada):
    """Rows written before the rollups were kept still count."""
    add_usage(app, ada, 4, rollup=False, input_tokens=10, cache_read_tokens=5)
    page = text(client.get("/usage/"))
    assert cards(page) == {"requests": "4", "input": "60", "output": "80", "cost": "$0.000108", "source": "rows"}
    assert "20 cached" in page


@pytest.mark.promise("P30")
def test_P30_project_and_tag_filters(app, client, ada):
    a = add_usage(app, ada, 2, prefix="req_a_", project="shop", tags=json.dumps(["beta", "eu"]))
    b = add_usage(app, ada, 2, prefix="req_b_", project="shop2", tags=json.dumps(["Beta", "beta2"]),
                  start=utcnow() - timedelta(hours=1))
    c = add_usage(app, ada, 1, prefix="req_c_", tags='["x", "beta"]', start=utcnow() - timedelta(hours=2))
    assert request_ids(client.get("/usage/?project=shop")) == a
    assert request_ids(client.get("/usage/?tag=beta")) == a + c
    assert request_ids(client.get("/usage/?tag=Beta")) == b
    assert request_ids(client.get("/usage/?tag=eu&project=shop")) == a
    assert request_ids(client.get("/usage/?tag=b_ta")) == []  # no wildcard
    page = text(client.get("/usage/?project=shop&tag=beta"))
    assert 'name="project" value="shop"' in page and 'name="tag" value="beta"' in page
    for bad in ("project=%20%3Cx%3E", "project=" + "p" * 65, "tag=a%2Cb", "tag=%22beta%22", "tag=-x"):
        resp = client.get("/usage/?" + bad)
        assert resp.status_code == 200 and request_ids(resp) == a + b + c, bad
        assert "so that one was ignored" in text(resp), bad


# ---- any query string (P30) -----------------------------------------------------------------

QUERY_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["1", "0", "-1", "2147483648", "9" * 30, "²", "١٢", "\x00", "%00", "2026-02-29", "2026-13-01",
                     "0001-01-01", "9999-12-31", "ok", "error", "beta", "20260101T000000.000000Z_1",
                     "20260101T000000.000000Z_9223372036854775808", "99991231T235959.999999Z_1"]))


@pytest.mark.promise("P30", "P31")
def test_P30_no_query_string_makes_a_5xx(app, client, login, forms, acme):
    """Any values of the filter, pager and download fields (and others) give a
    page or a download of Acme's rows only, never a 5xx."""
    login(OLGA)
    switch(forms, acme["team"])
    names = ["model", "key", "member", "project", "tag", "status", "from", "to", "after", "before", "page", "x"]

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(params=st.dictionaries(st.sampled_from(names), QUERY_VALUES),
           where=st.sampled_from(["/usage/", "/usage/download.csv", "/usage/download.json"]),
           hx=st.booleans())
    def check(params, where, hx):
        resp = client.get(where, query_string=params, headers=HX if hx else {})
        body = resp.get_data(as_text=True)
        assert resp.status_code == 200, (params, resp.status_code)
        no_canary(body)

    check()
