"""Spending limits that cannot be overspent (P26), and the alerts they raise (P42).

Every request whose key, member, team or account has a budget, or whose
wallet is prepaid, is admitted by `reserve`: the most it can cost is held
against each limit at once, in one transaction of conditional updates

    UPDATE spend_counters SET reserved = reserved + :most
     WHERE target = :t AND period = :p AND spent + reserved + :most <= :limit

(and `balance - reserved - :most >= 0` on its wallet). Either every limit
takes the hold or none does: a request that does not fit is refused, naming
the limit, and never forwarded. Counters are locked in one order (target,
period), so two holds never deadlock; PostgreSQL re-checks the condition on
the row a concurrent hold just committed, SQLite runs one writer at a time.

The usage writer settles: in the transaction that inserts a request's row it
moves the cost into `spent_units` on every target the row counts for (budget
or not, so a budget set mid-month knows the month so far), deletes the hold
and gives back what it reserved, charges the wallet in the ledger, and
records each alert that the new spend reaches (`settle_rows`). A replayed row
is not inserted again, so it settles nothing twice.

A hold whose process died (SIGKILL mid-stream) is never settled; each process
renews its live holds every third of RESERVATION_TIMEOUT_SECONDS, and the
sweeper gives back any hold not renewed for that long (`sweep`).

Money is in units of 10⁻⁸ USD (app/models/billing.py).
"""
from __future__ import annotations

import logging
import os
import queue
import re
import secrets
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from app.models import Budget, BudgetAlert, BudgetReservation, LedgerEntry, SpendCounter, Wallet
from app.models.billing import ALERT_THRESHOLDS, to_units, to_usd
from app.models.types import insert_for

log = logging.getLogger(__name__)
TOTAL = "total"


def month_of(when: datetime) -> str:
    return when.strftime("%Y-%m")


def next_month(when: datetime) -> datetime:
    first = when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def targets_of(key_id: int | None, user_id: int | None, team_id: int | None) -> list[str]:
    """Every target a request's spend counts for: its key, and the team and the
    member within it (a team key) or the account (a personal key)."""
    out = [f"key:{key_id}"] if key_id is not None else []
    if team_id is not None:
        out.append(f"team:{team_id}")
        if user_id is not None:
            out.append(f"member:{team_id}:{user_id}")
    elif user_id is not None:
        out.append(f"account:{user_id}")
    return out


SCOPE_WORDS = {"key": "this API key", "member": "your part of this team", "team": "this team",
               "account": "this account"}


@dataclass(frozen=True, slots=True)
class Limit:
    target: str
    period: str          # "2026-12" (monthly) or "total"
    limit_units: int

    @property
    def scope(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def kind(self) -> str:
        return "total" if self.period == TOTAL else "monthly"

    def describe(self) -> str:
        return f"the {self.kind} budget of {SCOPE_WORDS[self.scope]}"


def limits_of(budgets: list[tuple[str, int | None, int | None]], now: datetime) -> list[Limit]:
    """(target, monthly units, total units) of each budget that applies -> the limits to hold against."""
    month = month_of(now)
    out = []
    for target, monthly, total in budgets:
        if monthly is not None:
            out.append(Limit(target, month, monthly))
        if total is not None:
            out.append(Limit(target, TOTAL, total))
    return sorted(out, key=lambda lim: (lim.target, lim.period))


@dataclass(frozen=True, slots=True)
class Over:
    """Why a hold was refused: the limit (None: the prepaid balance), and what is left of it."""
    limit: Limit | None
    left_units: int

    @property
    def error_class(self) -> str:
        return "budget_wallet" if self.limit is None else f"budget_{self.limit.scope}_{self.limit.kind}"


# ---- the holder: this process, and the holds it keeps alive ---------------------------------

class Holds:
    """The holds of this process's requests in flight, renewed until each is settled."""

    def __init__(self):
        self.live: set[str] = set()
        self._pid = None
        self._name = ""

    @property
    def holder(self) -> str:
        if self._pid != os.getpid():  # a forked worker is a holder of its own
            self._pid = os.getpid()
            self._name = f"{socket.gethostname()[:32]}:{self._pid}:{secrets.token_hex(4)}"
            self.live = set()
        return self._name


HOLDS = Holds()


# ---- admission ------------------------------------------------------------------------------

_ENSURE = ("INSERT INTO spend_counters (target, period, spent_units, reserved_units) "
           "VALUES (:t, :p, 0, 0) ON CONFLICT DO NOTHING")
_HOLD = ("UPDATE spend_counters SET reserved_units = reserved_units + :a "
         "WHERE target = :t AND period = :p AND spent_units + reserved_units + :a <= :lim")
_HOLD_WALLET = ("UPDATE wallets SET reserved_units = reserved_units + :a "
                "WHERE id = :w AND balance_units - reserved_units - :a >= 0")
_RESERVE = ("INSERT INTO budget_reservations (request_id, amount_units, counters, wallet_id, holder, "
            "created_at, renewed_at) VALUES (:r, :a, :c, :w, :h, :now, :now)")


class _Raw:
    """The hot path's statements on a pooled DBAPI connection, as app/keyauth.py
    does: SQLAlchemy's Connection layers cost more than these small statements.
    Written with :name parameters; PostgreSQL's driver gets %(name)s."""

    _cache: dict = {}

    def __init__(self, engine):
        self.sqlite = engine.dialect.name == "sqlite"

    def sql(self, text: str) -> str:
        key = (self.sqlite, text)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = text if self.sqlite else re.sub(r":(\w+)", r"%(\1)s", text)
        return out

    def when(self, now: datetime):
        naive = now.astimezone(timezone.utc).replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else naive  # as UTCDateTime stores it


def reserve(engine, request_id: str, limits: list[Limit], wallet_id: int | None, amount: int,
            now: datetime) -> Over | None:
    """Hold `amount` against every limit and the wallet, or against none of them."""
    raw = _Raw(engine)
    refused: Over | None = None
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        for lim in limits:
            hold = {"a": amount, "t": lim.target, "p": lim.period, "lim": lim.limit_units}
            cur.execute(raw.sql(_HOLD), hold)
            if cur.rowcount != 1:
                # No counter yet (a new month, a new target), or no room: make sure, then once more.
                cur.execute(raw.sql(_ENSURE), {"t": lim.target, "p": lim.period})
                cur.execute(raw.sql(_HOLD), hold)
                if cur.rowcount != 1:
                    refused = Over(lim, 0)
                    break
        if refused is None and wallet_id is not None:
            cur.execute(raw.sql(_HOLD_WALLET), {"a": amount, "w": wallet_id})
            if cur.rowcount != 1:
                refused = Over(None, 0)
        if refused is None:
            when = raw.when(now)
            cur.execute(raw.sql(_RESERVE), {"r": request_id, "a": amount, "w": wallet_id, "h": HOLDS.holder,
                                            "now": when, "c": ",".join(f"{lim.target}|{lim.period}" for lim in limits)})
            conn.commit()
        else:
            conn.rollback()
        cur.close()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()  # back to the pool
    if refused is not None:
        return Over(refused.limit, left(engine, refused.limit, wallet_id))
    HOLDS.live.add(request_id)
    return None


def left(engine, limit: Limit | None, wallet_id: int | None) -> int:
    """What is left of a limit (or of the wallet's balance) now, for the refusal's message."""
    with engine.connect() as conn:
        if limit is None:
            row = conn.execute(sa.select(Wallet.balance_units - Wallet.reserved_units)
                               .where(Wallet.id == wallet_id)).first()
            return max(0, row[0]) if row else 0
        c = SpendCounter.__table__.c
        row = conn.execute(sa.select(c.spent_units + c.reserved_units)
                           .where(c.target == limit.target, c.period == limit.period)).first()
        return max(0, limit.limit_units - (row[0] if row else 0))


_SHRINK = "UPDATE budget_reservations SET amount_units = :cost WHERE request_id = :r AND amount_units = :a"
_SHRINK_COUNTER = ("UPDATE spend_counters SET reserved_units = reserved_units - :d "
                   "WHERE target = :t AND period = :p")
_SHRINK_WALLET = "UPDATE wallets SET reserved_units = reserved_units - :d WHERE id = :w"


class _Settler:
    """One thread per process (made after any fork) that shrinks holds in batches:
    whatever finished since its last pass goes in one transaction, so a busy
    worker pays one commit for many requests."""

    def __init__(self):
        self.pid, self.queue, self.thread = None, None, None

    def put(self, item) -> None:
        if self.pid != os.getpid():
            self.pid, self.queue = os.getpid(), queue.SimpleQueue()
            self.thread = threading.Thread(target=self._run, name="budget-settle", daemon=True)
            self.thread.start()
        self.queue.put(item)

    def _run(self) -> None:
        q = self.queue
        while True:
            batch = [q.get()]
            while len(batch) < 200:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            by_engine: dict = defaultdict(list)
            for engine, *rest in batch:
                by_engine[engine].append(rest)
            for engine, items in by_engine.items():
                settled(engine, items)


_SETTLER = _Settler()


def settle_later(engine, request_id: str, limits: list[Limit], wallet_id: int | None, held: int, cost: int) -> None:
    """Shrink the hold to `cost`, off the request's thread (or event loop): the
    client's last byte never waits for it, and in whichever order it and the
    usage writer run, the hold is given back exactly once."""
    HOLDS.live.discard(request_id)
    if held > cost:
        _SETTLER.put((engine, request_id, limits, wallet_id, held, cost))


def settled(engine, items: list) -> None:
    """Shrink each answered request's hold, (request id, limits, wallet id, held,
    cost), to its real cost at once, so the headroom it no longer needs is free
    for the next request; the cost stays held until the usage writer moves it
    into the spend with the request's row. A hold already given back (by the
    writer or the sweeper) is left alone."""
    raw = _Raw(engine)
    back: dict[tuple[str, str], int] = defaultdict(int)
    back_wallet: dict[int, int] = defaultdict(int)
    try:
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            for request_id, limits, wallet_id, held, cost in items:
                cur.execute(raw.sql(_SHRINK), {"cost": cost, "r": request_id, "a": held})
                if cur.rowcount != 1:
                    continue
                for lim in limits:
                    back[(lim.target, lim.period)] += held - cost
                if wallet_id is not None:
                    back_wallet[wallet_id] += held - cost
            for (target, period), d in sorted(back.items()):
                cur.execute(raw.sql(_SHRINK_COUNTER), {"d": d, "t": target, "p": period})
            for wallet_id, d in sorted(back_wallet.items()):
                cur.execute(raw.sql(_SHRINK_WALLET), {"d": d, "w": wallet_id})
            conn.commit()
            cur.close()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
    except Exception as exc:  # the whole holds then go back with the rows, a moment later
        log.warning("budgets: could not shrink %d hold(s) (%s)", len(items), type(exc).__name__)


# ---- settlement (inside the usage writer's transaction) ---------------------------------------

_COUNTERS = SpendCounter.__table__
_RESERVATIONS = BudgetReservation.__table__
_WALLETS = Wallet.__table__
_LEDGER = LedgerEntry.__table__
_BUDGETS = Budget.__table__
_ALERTS = BudgetAlert.__table__


def _units(cost) -> int:
    return to_units(cost or 0)


def _insert(conn, table):
    return insert_for(conn)(table)


def settle_rows(conn, rows: list[dict]) -> int:
    """Settle the requests whose usage rows this transaction just inserted:
    spend onto every counter, holds given back, wallets charged, alerts
    recorded. Returns how many alerts fired (their mail goes after commit)."""
    spent: dict[tuple[str, str], int] = defaultdict(int)
    charged = []
    for r in rows:
        units = _units(r.get("cost_usd"))
        if units <= 0:
            continue
        charged.append((r, units))
        for target in targets_of(r.get("api_key_id"), r.get("user_id"), r.get("team_id")):
            spent[(target, month_of(r["started_at"]))] += units
            spent[(target, TOTAL)] += units
    if spent:
        stmt = _insert(conn, _COUNTERS)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["target", "period"],
            set_={"spent_units": _COUNTERS.c.spent_units + stmt.excluded.spent_units}),
            [{"target": t, "period": p, "spent_units": n, "reserved_units": 0} for (t, p), n in sorted(spent.items())])
    release(conn, conn.execute(sa.delete(_RESERVATIONS)
                               .where(_RESERVATIONS.c.request_id.in_([r["request_id"] for r in rows]))
                               .returning(_RESERVATIONS.c.amount_units, _RESERVATIONS.c.counters,
                                          _RESERVATIONS.c.wallet_id)).all())
    wallets = _charge_wallets(conn, charged)
    return _record_alerts(conn, {t for t, _ in spent}, wallets, _refused_by_budgets(rows))


def _refused_by_budgets(rows: list[dict]) -> list[dict]:
    """A request refused by a budget means that budget is reached, even when the
    spend itself stops short of 100 % (a hold needs room for the most a request
    can cost): its 100 % alert."""
    out = []
    for r in rows:
        cls = r.get("error_class") or ""
        if not cls.startswith("budget_") or cls in ("budget_wallet", "budget_unpriced"):
            continue
        _, scope, kind = cls.split("_", 2)
        target = next((t for t in targets_of(r.get("api_key_id"), r.get("user_id"), r.get("team_id"))
                       if t.startswith(scope + ":")), None)
        if target:
            out.append({"target": target, "period": TOTAL if kind == "total" else month_of(r["started_at"]),
                        "kind": kind})
    return out


def release(conn, holds) -> None:
    """Give back what deleted holds (amount, counters, wallet id) reserved."""
    back: dict[tuple[str, str], int] = defaultdict(int)
    back_wallet: dict[int, int] = defaultdict(int)
    for amount, counters, wallet_id in holds:
        for name in filter(None, (counters or "").split(",")):
            target, period = name.split("|")
            back[(target, period)] += amount
        if wallet_id is not None:
            back_wallet[wallet_id] += amount
    for (target, period), amount in sorted(back.items()):
        conn.execute(sa.update(_COUNTERS).where(_COUNTERS.c.target == target, _COUNTERS.c.period == period)
                     .values(reserved_units=_COUNTERS.c.reserved_units - amount))
    for wallet_id, amount in sorted(back_wallet.items()):
        conn.execute(sa.update(_WALLETS).where(_WALLETS.c.id == wallet_id)
                     .values(reserved_units=_WALLETS.c.reserved_units - amount))


def _charge_wallets(conn, charged: list[tuple[dict, int]]) -> set[int]:
    """A ledger charge per request billed to a wallet (P41), and the wallet's balance with it."""
    if not charged:
        return set()
    teams = {r["team_id"] for r, _ in charged if r.get("team_id") is not None}
    users = {r["user_id"] for r, _ in charged if r.get("team_id") is None and r.get("user_id") is not None}
    cond = []
    if teams:
        cond.append(_WALLETS.c.team_id.in_(teams))
    if users:
        cond.append(_WALLETS.c.user_id.in_(users))
    if not cond:
        return set()
    by_team, by_user = {}, {}
    for wid, uid, tid in conn.execute(sa.select(_WALLETS.c.id, _WALLETS.c.user_id, _WALLETS.c.team_id)
                                      .where(sa.or_(*cond))):
        if tid is not None:
            by_team[tid] = wid
        elif uid is not None:
            by_user[uid] = wid
    entries, totals = [], defaultdict(int)
    for r, units in charged:
        wid = by_team.get(r["team_id"]) if r.get("team_id") is not None else by_user.get(r.get("user_id"))
        if wid is None:
            continue
        entries.append({"wallet_id": wid, "kind": "charge", "amount_units": -units, "reference": r["request_id"],
                        "memo": r.get("model"), "created_at": r["ended_at"]})
        totals[wid] += units
    if not entries:
        return set()
    stmt = _insert(conn, _LEDGER).on_conflict_do_nothing(index_elements=["kind", "reference"])
    conn.execute(stmt, entries)
    for wid, units in sorted(totals.items()):
        conn.execute(sa.update(_WALLETS).where(_WALLETS.c.id == wid)
                     .values(balance_units=_WALLETS.c.balance_units - units))
    return set(totals)


def _record_alerts(conn, targets: set[str], wallets: set[int], reached: list[dict]) -> int:
    """An alert row for each threshold the spend now reaches, and a 100 % one for
    each budget that refused a request (P42): unique, so each fires once."""
    fired = []
    targets = targets | {r["target"] for r in reached}
    if targets:
        budgets = conn.execute(sa.select(_BUDGETS.c.target, _BUDGETS.c.monthly_units, _BUDGETS.c.total_units,
                                         _BUDGETS.c.user_id, _BUDGETS.c.team_id)
                               .where(_BUDGETS.c.target.in_(targets))).all()
        by_target = {b.target: b for b in budgets}
        for r in reached:
            b = by_target.get(r["target"])
            limit = b and (b.monthly_units if r["kind"] == "monthly" else b.total_units)
            if limit:
                fired.append({**r, "threshold": 100, "limit_units": limit, "user_id": b.user_id,
                              "team_id": b.team_id})
        if budgets:
            counters = {(t, p): s for t, p, s in conn.execute(
                sa.select(_COUNTERS.c.target, _COUNTERS.c.period, _COUNTERS.c.spent_units)
                .where(_COUNTERS.c.target.in_([b.target for b in budgets])))}
            month = month_of(datetime.now(timezone.utc))
            for b in budgets:
                for kind, period, limit in (("monthly", month, b.monthly_units), ("total", TOTAL, b.total_units)):
                    if not limit:
                        continue
                    spent = counters.get((b.target, period), 0)
                    for threshold in ALERT_THRESHOLDS:
                        if spent * 100 >= limit * threshold:
                            fired.append({"target": b.target, "period": period, "kind": kind,
                                          "threshold": threshold, "limit_units": limit, "user_id": b.user_id,
                                          "team_id": b.team_id})
    for wid, balance, low, uid, tid in (conn.execute(
            sa.select(_WALLETS.c.id, _WALLETS.c.balance_units, _WALLETS.c.low_balance_units, _WALLETS.c.user_id,
                      _WALLETS.c.team_id).where(_WALLETS.c.id.in_(wallets))).all() if wallets else []):
        if low and balance < low:
            last_topup = conn.execute(sa.select(sa.func.max(_LEDGER.c.id)).where(
                _LEDGER.c.wallet_id == wid, _LEDGER.c.kind == "topup")).scalar() or 0
            fired.append({"target": f"wallet:{wid}", "period": f"after:{last_topup}", "kind": "low_balance",
                          "threshold": 0, "limit_units": low, "user_id": uid, "team_id": tid})
    if not fired:
        return 0
    now = datetime.now(timezone.utc)
    stmt = _insert(conn, _ALERTS).on_conflict_do_nothing(
        index_elements=["target", "period", "kind", "threshold"]).returning(_ALERTS.c.id)
    n = 0
    for row in fired:  # one by one: RETURNING tells which were new
        n += len(conn.execute(stmt, {**row, "created_at": now}).all())
    return n


# ---- the sweeper ------------------------------------------------------------------------------

def renew(engine, now: datetime) -> int:
    """Keep this process's live holds from being swept."""
    live = list(HOLDS.live)
    if not live:
        return 0
    with engine.begin() as conn:
        return conn.execute(sa.update(_RESERVATIONS)
                            .where(_RESERVATIONS.c.holder == HOLDS.holder, _RESERVATIONS.c.request_id.in_(live))
                            .values(renewed_at=now)).rowcount


def sweep(engine, now: datetime, timeout: float) -> int:
    """Give back every hold not renewed for `timeout` seconds: its process is gone."""
    cutoff = now - timedelta(seconds=timeout)
    with engine.connect() as conn:  # a read first: every process sweeps, and mostly finds nothing
        if conn.execute(sa.select(_RESERVATIONS.c.request_id).where(_RESERVATIONS.c.renewed_at < cutoff)
                        .limit(1)).first() is None:
            return 0
    with engine.begin() as conn:
        holds = conn.execute(sa.delete(_RESERVATIONS).where(_RESERVATIONS.c.renewed_at < cutoff)
                             .returning(_RESERVATIONS.c.amount_units, _RESERVATIONS.c.counters,
                                        _RESERVATIONS.c.wallet_id)).all()
        release(conn, holds)
    if holds:
        log.warning("budgets: released %d hold(s) of requests whose process ended", len(holds))
    return len(holds)


def describe_units(units: int) -> str:
    return f"${to_usd(units):,.2f}" if units >= 1_000_000 or units == 0 else f"${to_usd(units):,.4f}"
