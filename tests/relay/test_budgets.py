"""P26: budgets per key, member, team and account, held before a request is
forwarded, settled to the real cost, and never overspent by concurrent
requests; through the real server with the official SDKs.

`pricey-test` costs $1,000 / $4,000 per million input / output tokens, so one
echo request costs a few cents and a $1.00 budget runs out in tens of them.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import openai
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Budget, BudgetReservation, SpendCounter, Team, TeamMember, UsageRecord, User
from app.models.billing import to_units, to_usd
from app.models.types import utcnow
from app.services import keys as key_service
from app.services import spend

DOLLAR = to_units(1)


def set_budget(relay, target: str, monthly=None, total=None, **ids) -> None:
    with relay.app.app_context():
        db.session.execute(sa.delete(Budget).where(Budget.target == target))
        scope = target.split(":")[0]
        db.session.add(Budget(target=target, scope=scope, monthly_units=monthly, total_units=total, **ids))
        db.session.commit()


def clear_budgets(relay) -> None:
    from app.models import BudgetAlert
    with relay.app.app_context():
        db.session.execute(sa.delete(BudgetAlert))
        db.session.execute(sa.delete(Budget))
        db.session.execute(sa.delete(BudgetReservation))
        db.session.execute(sa.delete(SpendCounter))
        db.session.commit()


def counter(relay, target: str, period: str | None = None) -> tuple[int, int]:
    with relay.app.app_context():
        c = db.session.get(SpendCounter, (target, period or spend.month_of(utcnow())))
        return (c.spent_units, c.reserved_units) if c else (0, 0)


def holds(relay) -> int:
    with relay.app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(BudgetReservation))


def spent_in_rows(relay, **where) -> int:
    assert relay.app.extensions["meter"].flush(10)
    with relay.app.app_context():
        costs = db.session.scalars(sa.select(UsageRecord.cost_usd).filter_by(**where)).all()
        return sum(to_units(c) for c in costs)


@pytest.fixture(autouse=True)
def _no_budgets(relay):
    clear_budgets(relay)
    yield
    relay.app.extensions["meter"].flush(10)
    clear_budgets(relay)


@pytest.mark.promise("P26")
def test_p26_key_budget_refuses_with_402_naming_the_limit_and_is_never_forwarded(relay):
    oai = relay.openai()
    set_budget(relay, f"key:{relay.key_id}", monthly=DOLLAR, api_key_id=relay.key_id,
               user_id=relay.user_id)
    answered = 0
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(80):
            oai.chat.completions.create(model="pricey-test", max_tokens=20,
                                        messages=[{"role": "user", "content": "a few words here"}])
            answered += 1
            relay.app.extensions["meter"].flush(10)  # settled: the next one sees the real spend
    assert answered >= 1
    err = refused.value
    assert err.status_code == 402
    body = err.response.json()["error"]
    assert body["type"] == "insufficient_quota"
    assert "monthly budget of this API key" in body["message"] and "of $1.00;" in body["message"]
    forwarded = len(relay.fake.requests)
    assert forwarded == answered  # the refused one never reached the provider
    spent, reserved = counter(relay, f"key:{relay.key_id}")
    assert reserved == 0 and 0 < spent <= DOLLAR
    assert spent == spent_in_rows(relay, api_key_id=relay.key_id, status_code=200) - _before(relay)
    rows = relay.rows()
    assert rows[-1].status_code == 402 and rows[-1].error_class == "budget_key_monthly"


_BASE: dict[int, int] = {}


def _before(relay) -> int:
    return _BASE.get(relay.key_id, 0)


@pytest.fixture(autouse=True)
def _baseline(relay, _no_budgets):
    """Spend of this key before the test (the module's relay is shared)."""
    _BASE[relay.key_id] = spent_in_rows(relay, api_key_id=relay.key_id, status_code=200)


@pytest.mark.promise("P26")
def test_p26_anthropic_client_gets_its_own_error_shape(relay):
    set_budget(relay, f"key:{relay.key_id}", total=1, api_key_id=relay.key_id)  # 10^-8 USD: nothing fits
    with pytest.raises(anthropic.APIStatusError) as refused:
        relay.anthropic().messages.create(model="pricey-claude", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 402
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    assert "total budget of this API key" in body["error"]["message"]
    assert relay.fake.requests == []


@pytest.mark.promise("P26")
def test_p26_model_without_price_cannot_be_used_where_a_limit_applies(relay):
    oai = relay.openai()
    oai.chat.completions.create(model="free-test", messages=[{"role": "user", "content": "hi"}])  # no limit: fine
    set_budget(relay, f"account:{relay.user_id}", monthly=DOLLAR, user_id=relay.user_id)
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model="free-test", messages=[{"role": "user", "content": "hi"}])
    assert "has no price" in refused.value.response.json()["error"]["message"]


@pytest.mark.promise("P26")
def test_p26_no_cap_from_the_client_means_the_models_cap_is_sent(relay):
    set_budget(relay, f"key:{relay.key_id}", monthly=DOLLAR * 100, api_key_id=relay.key_id)
    relay.openai().chat.completions.create(model="pricey-test", messages=[{"role": "user", "content": "hi"}])
    relay.openai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    sent = [r.body for r in relay.fake.requests]
    assert sent[0]["max_completion_tokens"] == 200       # pricey-test's max_output
    assert sent[1]["max_completion_tokens"] == 4096      # the deployment's default
    relay.openai().chat.completions.create(model="gpt-test", max_tokens=7, messages=[{"role": "user", "content": "x"}])
    assert relay.fake.requests[-1].body["max_tokens"] == 7
    assert "max_completion_tokens" not in relay.fake.requests[-1].body


@pytest.mark.promise("P26")
def test_p26_keys_without_budgets_are_not_capped(relay):
    relay.openai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert "max_completion_tokens" not in relay.fake.requests[-1].body
    relay.app.extensions["meter"].flush(10)
    assert holds(relay) == 0
    spent, _ = counter(relay, f"key:{relay.key_id}", spend.TOTAL)
    assert spent > 0  # spend is counted without a budget, so one set later knows the month so far


def _team_with_key(relay) -> tuple[int, int, str]:
    with relay.app.app_context(), relay.app.test_request_context():
        user = db.session.get(User, relay.user_id)
        team = Team(name="Budget team", slug=f"budget-{relay.key_id}-{threading.get_ident() % 1000}")
        db.session.add(team)
        db.session.flush()
        db.session.add(TeamMember(team_id=team.id, user_id=user.id, role="owner"))
        db.session.flush()
        k, raw = key_service.create(user, "team key", team_id=team.id)
        db.session.commit()
        return team.id, k.id, raw


@pytest.mark.promise("P26")
def test_p26_64_concurrent_streams_never_overspend_a_shared_budget(relay):
    """A $1.00 budget on the key, its member and its team at once: whatever the
    interleaving, the settled spend of each stays within $1.00."""
    team_id, key_id, raw = _team_with_key(relay)
    for target, ids in ((f"key:{key_id}", {"api_key_id": key_id}),
                        (f"member:{team_id}:{relay.user_id}", {"team_id": team_id, "user_id": relay.user_id}),
                        (f"team:{team_id}", {"team_id": team_id})):
        set_budget(relay, target, monthly=DOLLAR, **ids)
    oai = relay.openai(raw)
    gate = threading.Barrier(16)

    def one(i: int) -> str:
        if i < 16:
            gate.wait()
        try:
            stream = oai.chat.completions.create(
                model="pricey-test", max_tokens=60, stream=True,
                messages=[{"role": "user", "content": f"count the words of request number {i} please"}])
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return "ok" if text.startswith("echo:") else "bad"
        except openai.APIStatusError as exc:
            return str(exc.status_code)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    assert set(results) <= {"ok", "402"}, results
    assert results.count("402") > 0 and results.count("ok") > 0
    assert relay.app.extensions["meter"].flush(10)
    month = spend.month_of(utcnow())
    for target in (f"key:{key_id}", f"member:{team_id}:{relay.user_id}", f"team:{team_id}"):
        spent, reserved = counter(relay, target, month)
        assert reserved == 0, target
        assert 0 < spent <= DOLLAR, (target, to_usd(spent))
    assert holds(relay) == 0
    rows_spend = spent_in_rows(relay, api_key_id=key_id)
    assert rows_spend == counter(relay, f"team:{team_id}", month)[0]
    # The budget was used, not refused wholesale (each hold is ~20 times the cost it settles to).
    assert to_usd(rows_spend) > Decimal("0.25")


@pytest.mark.promise("P26")
def test_p26_a_provider_count_above_the_hold_is_charged_at_the_hold(relay):
    """A provider reporting 1,000 tokens more than the request could use cannot push a budget past its limit."""
    set_budget(relay, f"key:{relay.key_id}", monthly=DOLLAR * 10, api_key_id=relay.key_id)
    relay.fake.push_fault(wrong_usage="inflated")
    mark = relay.mark()
    relay.openai().chat.completions.create(model="pricey-test", max_tokens=10,
                                           messages=[{"role": "user", "content": "hi"}])
    [row] = relay.new_rows(mark)
    assert row.input_tokens > 1000  # the provider's (inflated) count is kept as reported...
    spent, reserved = counter(relay, f"key:{relay.key_id}")
    assert reserved == 0 and spent == to_units(row.cost_usd)
    body_bytes = len(relay.fake.requests[-1].raw)  # ~ what the relay held for: bytes in, 10 tokens out
    assert to_units(row.cost_usd) < to_units(Decimal(1250 * (body_bytes + 200) + 4000 * 10) / 1_000_000)


@pytest.mark.promise("P42")
def test_p42_alerts_fire_once_each_at_50_80_and_100_percent_under_concurrency(relay):
    from app.models import BudgetAlert, OutboxMessage
    from app.services import billing_mail
    set_budget(relay, f"key:{relay.key_id}", monthly=DOLLAR * 5 // 2, api_key_id=relay.key_id,
               user_id=relay.user_id)
    with relay.app.app_context():
        first_mail = db.session.scalar(sa.select(sa.func.max(OutboxMessage.id))) or 0
    oai = relay.openai()

    def one(_):
        try:
            oai.chat.completions.create(model="pricey-test", max_tokens=5,
                                        messages=[{"role": "user", "content": "w w w w w w"}])
            return "ok"
        except openai.APIStatusError as exc:
            return exc.status_code

    for _ in range(12):  # waves, so the spend climbs past each threshold while requests race
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(8)))
        relay.app.extensions["meter"].flush(10)
    with relay.app.app_context():
        billing_mail.send_alerts()  # a second pass (as the job runs it) sends nothing again
        alerts = db.session.scalars(sa.select(BudgetAlert).where(BudgetAlert.target == f"key:{relay.key_id}")).all()
        mails = db.session.scalars(sa.select(OutboxMessage.subject).where(
            OutboxMessage.kind == "billing:alert:monthly", OutboxMessage.id > first_mail)).all()
    assert sorted(a.threshold for a in alerts) == [50, 80, 100]
    assert all(a.notified_at is not None for a in alerts)
    assert sorted(mails) == sorted(["50% of a budget used: the API key “default”",
                                    "80% of a budget used: the API key “default”",
                                    "Budget reached: the API key “default”"])


@pytest.mark.promise("P42")
def test_p42_a_team_budget_alerts_its_owners_and_admins_and_a_member_budget_the_member_too(relay):
    from app.models import OutboxMessage
    from app.services.passwords import hash_password
    with relay.app.app_context(), relay.app.test_request_context():
        people = {}
        for role in ("admin", "member"):
            u = User(email=f"{role}-{relay.key_id}@example.com", email_key=f"{role}-{relay.key_id}@example.com",
                     password_hash=hash_password("x" * 12), age_confirmed_at=utcnow(), email_verified_at=utcnow())
            db.session.add(u)
            db.session.flush()
            people[role] = u
        team = Team(name="Alerted", slug=f"alerted-{relay.key_id}")
        db.session.add(team)
        db.session.flush()
        db.session.add_all([TeamMember(team_id=team.id, user_id=relay.user_id, role="owner"),
                            TeamMember(team_id=team.id, user_id=people["admin"].id, role="admin"),
                            TeamMember(team_id=team.id, user_id=people["member"].id, role="member")])
        team.members_make_keys = True
        db.session.flush()
        _, raw = key_service.create(people["member"], "member key", team_id=team.id)
        db.session.commit()
        team_id, member_id = team.id, people["member"].id
        owner_email = db.session.get(User, relay.user_id).email
        first_mail = db.session.scalar(sa.select(sa.func.max(OutboxMessage.id))) or 0
    set_budget(relay, f"team:{team_id}", monthly=DOLLAR * 100, team_id=team_id)
    set_budget(relay, f"member:{team_id}:{member_id}", monthly=DOLLAR * 100, team_id=team_id, user_id=member_id)
    with relay.app.app_context():  # as if most of both budgets were spent already this month
        for target in (f"team:{team_id}", f"member:{team_id}:{member_id}"):
            db.session.add(SpendCounter(target=target, period=spend.month_of(utcnow()),
                                        spent_units=DOLLAR * 50 - 1, reserved_units=0))
        db.session.commit()
    relay.openai(raw).chat.completions.create(model="pricey-test", max_tokens=50,
                                              messages=[{"role": "user", "content": "a b c d e f g h"}])
    assert relay.app.extensions["meter"].flush(10)
    with relay.app.app_context():
        sent = db.session.execute(sa.select(OutboxMessage.to_addr, OutboxMessage.subject).where(
            OutboxMessage.id > first_mail, OutboxMessage.kind == "billing:alert:monthly")).all()
    team_mail = sorted(to for to, subject in sent if "the team “Alerted”" in subject and "member" not in to
                       and "part" not in subject)
    member_mail = sorted(to for to, subject in sent if "part of the team" in subject)
    assert team_mail == sorted([owner_email, f"admin-{relay.key_id}@example.com"])
    assert member_mail == sorted([owner_email, f"admin-{relay.key_id}@example.com",
                                  f"member-{relay.key_id}@example.com"])
