"""P26 through the server exactly as `make run` serves it (scripts/serve.sh:
uvicorn, two worker processes sharing nothing but the database): 64
concurrent streams against one $1.00 budget on a key, its member and its
team never settle past $1.00; and the hold of a worker SIGKILLed mid-stream
is given back by the sweeper of the other worker, leaving no phantom limit.
"""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Budget, BudgetReservation, SpendCounter, Team, TeamMember, UsageRecord, User
from app.models.billing import to_units
from app.models.types import utcnow
from app.services import keys as key_service
from app.services import spend
from app.services.passwords import hash_password
from tests.fakes.provider import FakeProvider
from tests.served import Served

UPSTREAM_KEY = "sk-fake-upstream-credential"
PROVIDERS = """
[providers.oai]
kind = "openai"
base_url = "{fake}/v1"
api_key_env = "RELAY_TEST_OPENAI_KEY"
read_timeout = 30

[[models]]
name = "pricey-test"
targets = [ {{ provider = "oai", model = "gpt-pricey" }} ]
price = {{ input = 1000.0, output = 4000.0 }}
"""
DOLLAR = to_units(1)


@pytest.fixture
def fake():
    server = FakeProvider(api_key=UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def setup(make_app, tmp_path, fake, database_url):
    """A team with a key, a $1.00 monthly budget on the key, the member and the team; the server."""
    app = make_app()
    with app.app_context(), app.test_request_context():
        user = User(email="spender@example.com", email_key="spender@example.com", password_hash=hash_password("x" * 12),
                    age_confirmed_at=utcnow(), email_verified_at=utcnow())
        db.session.add(user)
        db.session.flush()
        team = Team(name="Spenders", slug="spenders")
        db.session.add(team)
        db.session.flush()
        db.session.add(TeamMember(team_id=team.id, user_id=user.id, role="owner"))
        db.session.flush()
        key, raw = key_service.create(user, "load", team_id=team.id, rpm_limit=1_000_000)
        for target, scope, ids in ((f"key:{key.id}", "key", {"api_key_id": key.id}),
                                   (f"member:{team.id}:{user.id}", "member", {"team_id": team.id, "user_id": user.id}),
                                   (f"team:{team.id}", "team", {"team_id": team.id})):
            db.session.add(Budget(target=target, scope=scope, monthly_units=DOLLAR, **ids))
        db.session.commit()
        ids = {"key": key.id, "team": team.id, "user": user.id}
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(fake=fake.base_url))
    served = Served(database_url, tmp_path / "served", PROVIDERS_FILE=str(providers),
                    RELAY_TEST_OPENAI_KEY=UPSTREAM_KEY, RELAY_ACCOUNT_RPM="1000000",
                    RESERVATION_TIMEOUT_SECONDS="3",
                    RATELIMIT_STORAGE_URI=app.config["RATELIMIT_STORAGE_URI"]).start()
    served.wait_ready(workers=2)
    try:
        yield app, served, raw, ids
    finally:
        served.stop()


def _counters(app, targets: list[str]) -> dict[str, tuple[int, int]]:
    month = spend.month_of(utcnow())
    with app.app_context():
        db.session.remove()
        return {t: (c.spent_units, c.reserved_units) if (c := db.session.get(SpendCounter, (t, month))) else (0, 0)
                for t in targets}


def _holds(app) -> int:
    with app.app_context():
        db.session.remove()
        return db.session.scalar(sa.select(sa.func.count()).select_from(BudgetReservation))


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.promise("P26")
def test_p26_64_concurrent_streams_through_two_server_processes_never_overspend(setup):
    app, served, raw, ids = setup
    oai = openai.OpenAI(base_url=served.url + "/v1", api_key=raw, max_retries=0, timeout=30)

    def one(i: int) -> str:
        try:
            stream = oai.chat.completions.create(
                model="pricey-test", max_tokens=60, stream=True,
                messages=[{"role": "user", "content": f"count the words of request number {i} please"}])
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return "ok" if text.startswith("echo:") else "bad"
        except openai.APIStatusError as exc:
            return str(exc.status_code)

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    more = [one(100 + i) for i in range(40)]  # then one at a time, until the budget is used up
    assert set(results + more) <= {"ok", "402"}, results + more
    assert "402" in results and "ok" in results and more[-1] == "402"
    targets = [f"key:{ids['key']}", f"member:{ids['team']}:{ids['user']}", f"team:{ids['team']}"]
    def settled():
        c = _counters(app, targets)
        return c if all(r == 0 for _, r in c.values()) else None

    counters = _wait(settled, 20, "every hold to be settled")
    for target, (spent, _) in counters.items():
        assert 0 < spent <= DOLLAR, (target, spent)
    assert _holds(app) == 0

    def rows():
        with app.app_context():
            db.session.remove()
            found = db.session.scalars(sa.select(UsageRecord.cost_usd)
                                       .where(UsageRecord.api_key_id == ids["key"])).all()
        return found if len(found) == len(results) + len(more) else None

    costs = _wait(rows, 20, "every request's row, refused ones too")
    assert sum(to_units(c) for c in costs) == counters[f"team:{ids['team']}"][0] <= DOLLAR


@pytest.mark.promise("P26")
def test_p26_hold_of_a_worker_killed_mid_stream_is_released_by_the_sweeper(setup, fake):
    app, served, raw, ids = setup
    fake.push_fault(chunk_delay=0.5, chunks=200)  # a stream of ~100 s
    oai = openai.OpenAI(base_url=served.url + "/v1", api_key=raw, max_retries=0, timeout=30)
    stream = oai.chat.completions.create(model="pricey-test", max_tokens=200, stream=True,
                                         messages=[{"role": "user", "content": "tell me a long story"}])
    next(iter(stream))  # the stream has begun: the hold exists
    with app.app_context():
        hold = db.session.scalar(sa.select(BudgetReservation))
        holder_pid = int(hold.holder.split(":")[1])
    targets = [f"key:{ids['key']}", f"team:{ids['team']}"]
    assert all(r > 0 for _, r in _counters(app, targets).values())
    assert holder_pid in served.workers()
    os.kill(holder_pid, signal.SIGKILL)
    killed = time.monotonic()
    _wait(lambda: _holds(app) == 0, 60, "the sweeper to give the hold back")
    took = time.monotonic() - killed
    assert took < 60
    assert all(r == 0 for _, r in _counters(app, targets).values())  # no phantom limit remains
    stream.close()
    print(f"hold released {took:.1f} s after SIGKILL (RESERVATION_TIMEOUT_SECONDS=3)")
