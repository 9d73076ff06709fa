"""The usage spool and the row check (app/relay/spool.py, app/relay/meter.py),
below the HTTP level: concurrent appends stay whole lines, a live writer's
segment cannot be claimed, a dead one's can, segments roll over and are
retired, and no value that fails its column's rules is ever spooled (P22, P23).
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.relay import spool as spool_mod
from app.relay.meter import COLUMNS, InvalidRow, _decode, _encode, check_row
from app.relay.spool import Claim, Spool, fingerprint, read_lines

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def row(**over) -> dict:
    base = {"request_id": "req_" + "ab" * 12, "user_id": 1, "team_id": None, "api_key_id": 2, "project": None,
            "tags": None, "started_at": NOW, "ended_at": NOW, "model": "gpt-test", "provider": "oai",
            "input_tokens": 1, "output_tokens": 2, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "cost_usd": Decimal("0.00000100"), "ttft_ms": None, "latency_ms": 3, "status_code": 200,
            "error_class": None, "routing_trace": "[]", "usage_source": "provider"}
    base.update(over)
    return base


@pytest.mark.promise("P22")
def test_appends_from_many_threads_stay_whole_lines(tmp_path):
    sp = Spool(tmp_path, "sqlite:///x.db")
    threads, per = 16, 500

    def work(t):
        for i in range(per):
            sp.append(orjson.dumps({"t": t, "i": i, "pad": "x" * (i % 300)}))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    [(path, size, active)] = sp.own()
    assert active and size == path.stat().st_size
    lines, end = read_lines(path, 0, 10**6, max_bytes=size + 1)
    assert end == size
    seen = {(o["t"], o["i"]) for o in map(orjson.loads, lines)}
    assert len(lines) == len(seen) == threads * per


def test_read_lines_leaves_a_line_being_written(tmp_path):
    p = tmp_path / "seg.log"
    p.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    lines, end = read_lines(p, 0, 100)
    assert lines == [b'{"a":1}', b'{"b":2}'] and end == 16
    assert read_lines(p, end, 100) == ([], end)
    lines, end2 = read_lines(p, 0, 1)
    assert lines == [b'{"a":1}'] and end2 == 8


def test_a_live_writers_segment_cannot_be_claimed_a_dead_ones_can(tmp_path):
    url = "sqlite:///x.db"
    live = Spool(tmp_path, url)
    live.append(b"{}")
    other = Spool(tmp_path, url)
    [path] = other.orphans()
    claim = Claim(path)
    assert not claim.take()  # its writer holds the lock (another descriptor, even in one process)
    # The writer goes away (as a dead process's descriptors are closed by the kernel).
    for seg in live.segments:
        import os
        os.close(seg.fd)
    live.segments = []
    assert claim.take()
    claim.done()
    assert not path.exists()
    # A segment of another database is never offered.
    assert Spool(tmp_path, "postgresql://elsewhere").orphans() == []
    assert fingerprint(url) != fingerprint("postgresql://elsewhere")


def test_segments_roll_over_and_finished_ones_are_retired(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 100)
    sp = Spool(tmp_path, "sqlite:///x.db")
    for i in range(10):
        sp.append(orjson.dumps({"i": i, "pad": "y" * 40}))
    segs = sp.own()
    assert len(segs) > 2 and [a for _, _, a in segs] == [False] * (len(segs) - 1) + [True]
    first = segs[0][0]
    sp.retire(first)
    assert not first.exists() and len(sp.own()) == len(segs) - 1
    sp.retire(sp.own()[-1][0])  # the active one is never retired
    assert len(sp.own()) == len(segs) - 1
    # Nothing half-made is left behind under a temporary name.
    assert not list(tmp_path.glob(".*.new"))


def test_a_row_round_trips_through_the_spool_format():
    r = check_row(row(ttft_ms=7, tags='["a"]'))
    assert _decode(_encode(r)) == r


@pytest.mark.parametrize("field,value", [
    ("model", "gpt\x00test"), ("model", "m" * 101), ("project", 5), ("request_id", "my own id"),
    ("user_id", 0), ("user_id", 2**40), ("status_code", 42), ("started_at", datetime(2026, 1, 1)),
    ("cost_usd", Decimal("NaN")), ("cost_usd", -1), ("input_tokens", "7"), ("usage_source", None),
    ("input_tokens", True),
])
@pytest.mark.promise("P23")
def test_a_value_that_breaks_its_columns_rules_is_refused(field, value):
    with pytest.raises(InvalidRow) as info:
        check_row(row(**{field: value}))
    assert info.value.column == field and repr(value) not in str(info.value)


def test_counts_beyond_an_int32_column_are_clamped():
    r = check_row(row(input_tokens=10**12, output_tokens=-5, latency_ms=2**40))
    assert r["input_tokens"] == 2**31 - 1 and r["output_tokens"] == 0 and r["latency_ms"] == 2**31 - 1


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text,
                     st.lists(st.integers(), max_size=3), st.dictionaries(text, st.integers(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(COLUMNS), anything, max_size=6))
@pytest.mark.promise("P23")
def test_any_value_in_any_field_is_either_a_valid_row_or_refused(changes):
    """Whatever a bug might put in a row, check_row answers InvalidRow or a row
    that every column can store: strings within length and without NUL, ints in
    range, aware times; and the spool format round-trips it."""
    try:
        r = check_row(row(**changes))
    except InvalidRow:
        return
    for value in r.values():
        if isinstance(value, str):
            assert "\x00" not in value
        if isinstance(value, int):
            assert -(2**31) < value < 2**31
    assert _decode(_encode(r)) == r
