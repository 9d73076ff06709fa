"""A light load generator for the relay benchmarks: asyncio + uvloop, one raw asyncio.Protocol per connection.

Three loads, each runnable on its own (it prints one JSON line) or imported:

* ``streams``: N keep-alive connections, opened evenly over ``--ramp`` seconds, each
  running streamed chats back to back for ``--hold`` more seconds. Every wait
  between two reads that bring SSE events is a gap, and so is the wait from the
  request to its first event (a server that queues streams fails); a gap over
  ``--limit-ms`` (100 ms: the fake's 50 ms + 50 ms) is "delayed". Events are
  counted exactly (the chunked framing is decoded, each blank-line-terminated SSE
  event is one).
* ``ttft``: time to first token at concurrency 1, over one keep-alive connection
  per target, targets alternated ABBA: the time until the first event with
  non-empty ``delta.content``, and until the end of the response.
* ``load``: non-streaming requests at concurrency C on keep-alive connections for
  S seconds: requests/s and latency percentiles (wrk, when installed, remains the
  first choice of relay_overhead.py).

``--procs K`` splits the connections of ``streams`` and ``load`` over K forked
processes started together (1,000 streams are more than one process wants on a
shared 2-core box). When run as a program, ``START`` and ``END`` lines on stdout
mark the measured window for whoever watches CPU from outside, and the result
carries the client's own CPU seconds for that window (from /proc/self/stat of
every process it used).

    .venv/bin/python bench/lightclient.py streams --port 8901 -n 500 --hold 5 [--procs 2]
    .venv/bin/python bench/lightclient.py ttft --port 8900 [--port 8000 --auth sk-...] -n 400
    .venv/bin/python bench/lightclient.py load --port 8900 -c 32 --seconds 5 [--procs 2]
"""
from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import statistics
import sys
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the project's venv has uvloop
    uvloop = None

CHAT_PATH = "/v1/chat/completions"
UPSTREAM_KEY = "sk-fake-upstream"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FIRST_CONTENT = re.compile(rb'"delta":\{"content":"[^"]')
perf = time.perf_counter


# ---------------------------------------------------------------------------- helpers

def run(coro):
    """Run a coroutine on uvloop (asyncio's loop when uvloop is missing)."""
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)  # pragma: no cover


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 65536):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def own_cpu() -> float:
    """CPU seconds (user + system) of this process so far, from /proc/self/stat."""
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values, p: float) -> float:
    """The p-th percentile (nearest rank) of values; NaN when empty."""
    if not len(values):
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def chat_body(model: str, stream: bool, words: int = 20, include_usage: bool = False) -> bytes:
    body: dict = {"model": model, "messages": [{"role": "user", "content": " ".join(f"t{i}" for i in range(words))}]}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    else:
        body["max_tokens"] = 16
    return json.dumps(body, separators=(",", ":")).encode()


def raw_request(port: int, auth: str, body: bytes, path: str = CHAT_PATH, host: str = "127.0.0.1") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------- HTTP/1.1 response decoding

_HEAD, _LENGTH, _SIZE, _DATA, _CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)
_LEN_RE = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class Decoder:
    """Incremental HTTP/1.1 response decoder: feed() returns (body pieces, done).

    Content-Length, chunked and close-delimited bodies (for the last, `done` comes
    from eof()). `status` and `close` are known once the head is in."""

    __slots__ = ("buf", "state", "status", "remaining", "close")

    def __init__(self):
        self.buf = b""
        self.state = _HEAD
        self.status = 0
        self.remaining = 0
        self.close = False

    def reset(self) -> None:
        self.state, self.status, self.remaining, self.close = _HEAD, 0, 0, False

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        state = self.state
        while buf:
            if state == _DATA:
                n = self.remaining
                if len(buf) <= n:
                    out.append(buf)
                    self.remaining = n - len(buf)
                    buf = b""
                    if not self.remaining:
                        state = _CRLF
                    break
                out.append(buf[:n])
                buf = buf[n:]
                self.remaining = 0
                state = _CRLF
            elif state == _CRLF:
                if len(buf) < 2:
                    break
                buf = buf[2:]
                state = _SIZE
            elif state == _SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(buf[:i].split(b";", 1)[0], 16)
                buf = buf[i + 2:]
                if size:
                    self.remaining, state = size, _DATA
                else:
                    state = _TRAILER
            elif state == _HEAD:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    break
                head = buf[:i].lower()
                buf = buf[i + 4:]
                self.status = int(head[9:12])
                self.close = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
                if b"\r\ntransfer-encoding: chunked" in head:
                    state = _SIZE
                else:
                    m = _LEN_RE.search(head)
                    if m is not None:
                        self.remaining = int(m.group(1))
                        state = _LENGTH if self.remaining else _DONE
                    elif self.status in (204, 304) or 100 <= self.status < 200:
                        state = _DONE
                    else:
                        self.close = True
                        state = _UNTIL_CLOSE
            elif state == _LENGTH:
                take = buf[:self.remaining]
                out.append(take)
                self.remaining -= len(take)
                buf = buf[len(take):]
                if self.remaining:
                    break
                state = _DONE
            elif state == _TRAILER:
                if buf.startswith(b"\r\n"):
                    buf = buf[2:]
                    state = _DONE
                else:
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        break
                    buf = buf[i + 4:]
                    state = _DONE
            elif state == _UNTIL_CLOSE:
                out.append(buf)
                buf = b""
            else:  # _DONE with bytes left: a pipelined or broken answer; keep them for the next response
                break
        self.buf = buf
        self.state = state
        return out, state == _DONE

    def eof(self) -> bool:
        """The connection closed: True when that ends the response (close-delimited), False when it cuts it."""
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
            return True
        return self.state == _DONE


def count_events(piece: bytes, lone_nl: bool) -> tuple[int, bool]:
    """SSE events ending in `piece` (blank-line terminated), given whether the text before ended in a lone LF."""
    n = piece.count(b"\n\n")
    if lone_nl and piece[:1] == b"\n":
        n += 1
    return n, piece[-1:] == b"\n" and piece[-2:] != b"\n\n"


# ---------------------------------------------------------------------------- (a) concurrent streams

class _Level:
    """What all the connections of one process saw at one stream level."""

    def __init__(self, deadline: float, limit: float, min_events: int):
        self.deadline, self.limit, self.min_events = deadline, limit, min_events
        self.gaps = array.array("d")  # every gap, the first-event waits included
        self.first = array.array("d")  # the first-event waits alone
        self.delayed = self.slow_first = self.errors = self.completed = self.events = 0
        self.bad_status = self.reconnects = 0
        self.active = 0
        self.slots = 0  # connections opened or opening whose streams are not over
        self.idle = asyncio.Event()  # set whenever slots drops to 0

    def slot_ended(self) -> None:
        self.slots -= 1
        if self.slots == 0:
            self.idle.set()

    def open_slot(self, loop, req: bytes, host: str, port: int, new: bool = True) -> asyncio.Task:
        """A connection for a new slot, or (new=False) for a slot whose connection the server closed."""
        if new:
            self.slots += 1
            self.idle.clear()

        async def connect():
            try:
                await loop.create_connection(lambda: _StreamConn(self, req, loop, host, port), host, port)
            except OSError:
                self.errors += 1
                self.slot_ended()
        return asyncio.ensure_future(connect())


class _StreamConn(asyncio.Protocol):
    """One keep-alive connection running streams back to back until the level's deadline."""

    __slots__ = ("lv", "req", "loop", "addr", "tr", "dec", "last", "started", "events", "lone_nl", "in_response",
                 "handed_on")

    def __init__(self, lv: _Level, req: bytes, loop, host: str, port: int):
        self.lv, self.req, self.loop, self.addr = lv, req, loop, (host, port)
        self.handed_on = False  # the slot went on to a new connection
        self.tr = None
        self.dec = Decoder()
        self.last = 0.0
        self.started = False
        self.events = 0
        self.lone_nl = False
        self.in_response = False

    def connection_made(self, tr):
        self.tr = tr
        with contextlib.suppress(OSError, AttributeError):
            tr.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self):
        self.dec.reset()
        self.started = False
        self.events = 0
        self.lone_nl = False
        self.in_response = True
        self.last = perf()
        self.tr.write(self.req)

    def data_received(self, data):
        now = perf()
        lv = self.lv
        try:
            pieces, done = self.dec.feed(data)
        except ValueError:
            lv.errors += 1
            self.tr.close()
            return
        k = 0
        lone = self.lone_nl
        for p in pieces:
            n, lone = count_events(p, lone)
            k += n
        self.lone_nl = lone
        if k:
            gap = now - self.last
            lv.gaps.append(gap)
            if gap > lv.limit:
                lv.delayed += 1
            if not self.started:
                self.started = True
                lv.active += 1
                lv.first.append(gap)
                if gap > lv.limit:
                    lv.slow_first += 1
            self.events += k
            lv.events += k
            self.last = now
        if done:
            self._end(now)

    def _end(self, now: float) -> None:
        lv = self.lv
        self.in_response = False
        if self.started:
            lv.active -= 1
        if self.dec.status != 200:
            lv.bad_status += 1
            lv.errors += 1
        elif self.events < lv.min_events:
            lv.errors += 1
        lv.completed += 1
        if now >= lv.deadline:
            self.tr.close()
        elif not self.dec.close:
            self._send()
        else:  # the server closes after this answer: go on on a new connection
            lv.reconnects += 1
            self.handed_on = True
            self.tr.close()
            lv.open_slot(self.loop, self.req, *self.addr, new=False)

    def eof_received(self):
        if self.in_response and self.dec.eof():
            self._end(perf())
        return False

    def connection_lost(self, exc):
        lv = self.lv
        if self.in_response:  # closed in the middle of a response
            self.in_response = False
            lv.errors += 1
            if self.started:
                lv.active -= 1
        if not self.handed_on:
            lv.slot_ended()


async def streams_async(port: int, req: bytes, n: int, hold: float, ramp: float, *, limit: float = 0.100,
                        min_events: int = 23, host: str = "127.0.0.1", t0: float | None = None,
                        share: tuple[int, int] = (0, 1), sample=None, sample_every: float = 0.1,
                        grace: float = 60.0) -> dict:
    """Streams of one level in this process: the connections i with i % share[1] == share[0] of n.

    Connection i opens at t0 + ramp * i / n; every connection runs streams back to back
    until t0 + ramp + hold, then finishes the one under way. Returns the raw figures
    (merge() combines several processes' and summarizes)."""
    loop = asyncio.get_running_loop()
    t0 = perf() if t0 is None else t0
    lv = _Level(t0 + ramp + hold, limit, min_events)
    mine = [i for i in range(n) if i % share[1] == share[0]]
    active: list[int] = []
    cpu0 = own_cpu()

    async def opener(i: int) -> None:
        delay = t0 + ramp * i / n - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        await lv.open_slot(loop, req, host, port)

    lv.slots += 1  # held by the openers until they are all done
    openers = [asyncio.ensure_future(opener(i)) for i in mine]

    def tick():
        now = perf()
        if now > lv.deadline:
            return
        if now >= t0 + ramp:
            active.append(lv.active)
            if sample is not None:
                sample()
        loop.call_later(sample_every, tick)

    loop.call_later(max(0.0, t0 + ramp - perf()), tick)
    await asyncio.gather(*openers)
    lv.slot_ended()
    try:
        await asyncio.wait_for(lv.idle.wait(), timeout=max(1.0, lv.deadline - perf()) + grace)
    except TimeoutError:
        lv.errors += lv.slots
    wall = perf() - t0
    return {"n": len(mine), "completed": lv.completed, "errors": lv.errors, "bad_status": lv.bad_status,
            "reconnects": lv.reconnects,
            "events": lv.events, "delayed": lv.delayed, "slow_first": lv.slow_first,
            "gaps": lv.gaps, "first": lv.first, "active": active, "cpu_s": own_cpu() - cpu0, "wall_s": wall}


def merge(parts: list[dict], n: int, limit: float) -> dict:
    """One level's summary from the raw figures of every process that ran part of it."""
    gaps = array.array("d")
    first = array.array("d")
    for p in parts:
        gaps.extend(p["gaps"])
        first.extend(p["first"])
    # the active count is per process: add up the samples taken at the same tick
    ticks = min((len(p["active"]) for p in parts if p["n"]), default=0)
    active = [sum(p["active"][i] for p in parts if p["n"]) for i in range(ticks)]
    tot = {k: sum(p[k] for p in parts) for k in ("completed", "errors", "bad_status", "events", "delayed",
                                                  "slow_first", "cpu_s", "reconnects")}
    wall = max(p["wall_s"] for p in parts)
    return {
        "streams": n, "completed": tot["completed"], "errors": tot["errors"], "bad_status": tot["bad_status"],
        "events": tot["events"], "reconnects": tot["reconnects"],
        "gaps": len(gaps), "chunk_gaps": len(gaps) - len(first),
        "delayed": tot["delayed"], "slow_first_event": tot["slow_first"], "delayed_when_gap_over_ms": limit * 1e3,
        "gap_p50_ms": pct(gaps, 50) * 1e3, "gap_p99_ms": pct(gaps, 99) * 1e3,
        "gap_max_ms": max(gaps) * 1e3 if gaps else float("nan"),
        "first_event_p50_ms": pct(first, 50) * 1e3, "first_event_p99_ms": pct(first, 99) * 1e3,
        "first_event_max_ms": max(first) * 1e3 if first else float("nan"),
        "active_mean": statistics.fmean(active) if active else 0, "active_min": min(active) if active else 0,
        "stall_free": tot["delayed"] == 0 and tot["errors"] == 0 and tot["completed"] > 0,
        "client_cpu_s": round(tot["cpu_s"], 3), "client_wall_s": round(wall, 3),
        "client_cores": round(tot["cpu_s"] / wall, 3) if wall else float("nan"), "client_procs": len(parts),
    }


def streams(port: int, req: bytes, n: int, hold: float, ramp: float, *, procs: int = 1, limit: float = 0.100,
            min_events: int = 23, host: str = "127.0.0.1", on_start=None, sample=None) -> dict:
    """One stream level, in this process (procs=1) or in `procs` forked processes; the merged summary.

    `on_start()` is called as the level begins (after the processes are ready); `sample()`
    every 0.1 s while it holds (in this process only, so with procs=1)."""
    raise_nofile()
    kw = {"limit": limit, "min_events": min_events, "host": host}
    if procs <= 1:
        async def one():
            if on_start:
                on_start()
            return await streams_async(port, req, n, hold, ramp, sample=sample, **kw)
        return merge([run(one())], n, limit)

    def child(j: int, t0: float) -> dict:
        return run(streams_async(port, req, n, hold, ramp, t0=t0, share=(j, procs), **kw))

    return merge(_forked(procs, child, on_start), n, limit)


def _forked(procs: int, child, on_start=None) -> list[dict]:
    """Run child(j, t0) in `procs` forked processes that start together at t0; their results."""
    import multiprocessing as mp
    import pickle

    ctx = mp.get_context("fork")
    pipes, kids = [], []

    def body(j: int, conn) -> None:
        conn.send(b"ready")
        t0 = conn.recv()
        conn.send_bytes(pickle.dumps(child(j, t0)))
        conn.close()

    for j in range(procs):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=body, args=(j, theirs), daemon=True)
        p.start()
        pipes.append(mine)
        kids.append(p)
    try:
        for c in pipes:
            c.recv()
        if on_start:
            on_start()
        t0 = perf() + 0.05
        for c in pipes:
            c.send(t0)
        results = [pickle.loads(c.recv_bytes()) for c in pipes]
    finally:
        for p in kids:
            p.join(5)
            if p.is_alive():
                p.kill()
    return results


# ---------------------------------------------------------------------------- (b) time to first token

class _OneShot(asyncio.Protocol):
    """A keep-alive connection that sends one request at a time and times its answer."""

    def __init__(self):
        self.tr = None
        self.dec = Decoder()
        self.fut: asyncio.Future | None = None
        self.t0 = self.first = 0.0
        self.seen = b""
        self.lost = None

    def connection_made(self, tr):
        self.tr = tr
        tr.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ask(self, req: bytes) -> asyncio.Future:
        self.fut = asyncio.get_running_loop().create_future()
        self.dec.reset()
        self.seen = b""
        self.first = float("nan")
        self.t0 = perf()
        self.tr.write(req)
        return self.fut

    def data_received(self, data):
        now = perf()
        pieces, done = self.dec.feed(data)
        if self.first != self.first and pieces:
            self.seen += b"".join(pieces)
            if FIRST_CONTENT.search(self.seen):
                self.first = now - self.t0
        if done and self.fut is not None and not self.fut.done():
            self.fut.set_result((self.first, now - self.t0, self.dec.status))

    def connection_lost(self, exc):
        if self.fut is not None and not self.fut.done():
            if self.dec.eof():
                self.fut.set_result((self.first, perf() - self.t0, self.dec.status))
            else:
                self.fut.set_exception(ConnectionError("connection closed mid-response"))


async def ttft_async(targets: dict[str, tuple[int, bytes]], n: int, warmup: int, host: str = "127.0.0.1") -> dict:
    """Time to first token at concurrency 1: `targets` maps a side's name to (port, request);
    the sides take turns, in ABBA order, on one keep-alive connection each (reopened if closed)."""
    loop = asyncio.get_running_loop()
    conns: dict[str, _OneShot] = {}

    async def conn(name: str) -> _OneShot:
        c = conns.get(name)
        if c is None or c.tr is None or c.tr.is_closing():
            _, c = await loop.create_connection(_OneShot, host, targets[name][0])
            conns[name] = c
        return c

    first: dict[str, list[float]] = {k: [] for k in targets}
    total: dict[str, list[float]] = {k: [] for k in targets}
    errors = dict.fromkeys(targets, 0)
    names = list(targets)
    for i in range(warmup + n):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            c = await conn(name)
            try:
                f, e, status = await c.ask(targets[name][1])
            except ConnectionError:
                f, e, status = float("nan"), float("nan"), 0
            if c.dec.close:
                c.tr.close()
            if i < warmup:
                continue
            if status != 200 or f != f:
                errors[name] += 1
                continue
            first[name].append(f)
            total[name].append(e)
    for c in conns.values():
        c.tr.close()
    out: dict = {"n": {k: len(v) for k, v in first.items()}, "errors": errors}
    for name in names:
        out[name] = {"p50_ms": pct(first[name], 50) * 1e3, "p99_ms": pct(first[name], 99) * 1e3,
                     "mean_ms": statistics.fmean(first[name]) * 1e3 if first[name] else float("nan"),
                     "end_p50_ms": pct(total[name], 50) * 1e3}
    return out


def ttft(targets: dict[str, tuple[int, bytes]], n: int, warmup: int, host: str = "127.0.0.1") -> dict:
    return run(ttft_async(targets, n, warmup, host))


# ---------------------------------------------------------------------------- (c) non-streaming throughput

class _Loop(asyncio.Protocol):
    """A keep-alive connection sending `req` again as soon as each response ends, until the deadline."""

    __slots__ = ("st", "req", "tr", "dec", "t")

    def __init__(self, st: dict, req: bytes):
        self.st, self.req = st, req
        self.tr = None
        self.dec = Decoder()
        self.t = 0.0

    def connection_made(self, tr):
        self.tr = tr
        tr.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.st["open"] += 1
        self._send()

    def _send(self):
        self.dec.reset()
        self.t = perf()
        self.tr.write(self.req)

    def data_received(self, data):
        _, done = self.dec.feed(data)
        if not done:
            return
        now = perf()
        st = self.st
        st["lat"].append(now - self.t)
        st["requests"] += 1
        if self.dec.status != 200:
            st["non2xx"] += 1
        if now < st["deadline"] and not self.dec.close:
            self._send()
        else:
            self.tr.close()

    def connection_lost(self, exc):
        st = self.st
        st["open"] -= 1
        if st["open"] == 0 and not st["done"].done():
            st["done"].set_result(None)


async def load_async(port: int, req: bytes, conns: int, seconds: float, host: str = "127.0.0.1",
                     t0: float | None = None) -> dict:
    loop = asyncio.get_running_loop()
    if t0 is not None and t0 > perf():
        await asyncio.sleep(t0 - perf())
    cpu0 = own_cpu()
    t0 = perf()
    st = {"lat": array.array("d"), "requests": 0, "non2xx": 0, "errors": 0, "open": 0, "deadline": t0 + seconds,
          "done": loop.create_future()}
    for _ in range(conns):
        try:
            await loop.create_connection(lambda: _Loop(st, req), host, port)
        except OSError:
            st["errors"] += 1
    if st["open"]:
        await asyncio.wait_for(st["done"], seconds + 60)
    return {"lat": st["lat"], "requests": st["requests"], "non2xx": st["non2xx"], "errors": st["errors"],
            "seconds": perf() - t0, "cpu_s": own_cpu() - cpu0}


def load(port: int, req: bytes, conns: int, seconds: float, *, procs: int = 1, host: str = "127.0.0.1",
         on_start=None) -> dict:
    """Non-streaming requests at concurrency `conns` (split over `procs` processes) for `seconds`."""
    raise_nofile()
    share = [conns // procs + (i < conns % procs) for i in range(procs)]
    if procs <= 1:
        if on_start:
            on_start()
        parts = [run(load_async(port, req, conns, seconds, host))]
    else:
        parts = _forked(procs, lambda j, t0: run(load_async(port, req, share[j], seconds, host, t0)), on_start)
    lat = array.array("d")
    for p in parts:
        lat.extend(p["lat"])
    n = sum(p["requests"] for p in parts)
    secs = max(p["seconds"] for p in parts)
    cpu = sum(p["cpu_s"] for p in parts)
    return {"requests": n, "seconds": secs, "rps": n / secs if secs else float("nan"),
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "errors": sum(p["errors"] + p["non2xx"] for p in parts), "non2xx": sum(p["non2xx"] for p in parts),
            "client_cpu_s": round(cpu, 3), "client_cores": round(cpu / secs, 3) if secs else float("nan")}


# ---------------------------------------------------------------------------- in its own process

def spawn(cli_args: list[str], *, on_start=None, on_end=None, sample=None, sample_every: float = 0.1,
          timeout: float = 600.0) -> dict:
    """Run this file as a program (its own process group) with `cli_args`; return its JSON result.

    on_start() / on_end() are called when it prints START / END (the measured window);
    sample() every `sample_every` s in between. On any error or Ctrl-C its process group is killed."""
    import signal
    import subprocess
    import threading

    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *cli_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    lines: list[bytes] = []
    seen = threading.Condition()

    def reader():
        for line in proc.stdout:
            with seen:
                lines.append(line.strip())
                seen.notify_all()
        with seen:
            lines.append(b"")  # EOF
            seen.notify_all()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    deadline = time.monotonic() + timeout

    def wait_for(word: bytes, every: float | None) -> bool:
        while True:
            with seen:
                if word in lines:
                    return True
                if b"" in lines:
                    return False
                if time.monotonic() > deadline:
                    raise TimeoutError(f"lightclient {cli_args[0]} did not finish within {timeout:g} s")
                seen.wait(every if every else 0.5)
            if every and sample:
                sample()

    try:
        if wait_for(b"START", None):
            if on_start:
                on_start()
            if wait_for(b"END", sample_every if sample else None) and on_end:
                on_end()
        th.join(timeout)
        proc.wait(30)
        result = next((ln for ln in reversed(lines) if ln.startswith(b"{")), None)
        if proc.returncode or result is None:
            err = proc.stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"lightclient {' '.join(cli_args)} failed ({proc.returncode}):\n{err}")
        return json.loads(result)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


# ---------------------------------------------------------------------------- command line

def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1")
    common.add_argument("--auth", action="append", help="API key (Bearer); one per --port for ttft")
    common.add_argument("--model", default=None, help="model of the chat body")
    common.add_argument("--body", help="the request's JSON body (instead of one built from --model)")

    s = sub.add_parser("streams", parents=[common], help="N concurrent streams back to back")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("-n", "--streams", type=int, default=500)
    s.add_argument("--hold", type=float, default=5.0, help="seconds after the ramp")
    s.add_argument("--ramp", type=float, default=1.15, help="seconds over which the connections open")
    s.add_argument("--chunks", type=int, default=20, help="content events expected per stream")
    s.add_argument("--include-usage", action="store_true", help="ask for the usage event")
    s.add_argument("--limit-ms", type=float, default=100.0, help="a gap over this is delayed")
    s.add_argument("--procs", type=int, default=1)

    t = sub.add_parser("ttft", parents=[common], help="time to first token at concurrency 1")
    t.add_argument("--port", type=int, action="append", required=True, help="one per side (direct, relay)")
    t.add_argument("-n", type=int, default=400)
    t.add_argument("--warmup", type=int, default=50)

    ld = sub.add_parser("load", parents=[common], help="non-streaming requests at concurrency C")
    ld.add_argument("--port", type=int, required=True)
    ld.add_argument("-c", "--conns", type=int, default=32)
    ld.add_argument("--seconds", type=float, default=5.0)
    ld.add_argument("--procs", type=int, default=1)
    args = ap.parse_args(argv)

    if args.cmd == "streams":
        auth = (args.auth or [UPSTREAM_KEY])[0]
        body = args.body.encode() if args.body else chat_body(args.model or "bench-slow", True, args.chunks,
                                                             args.include_usage)
        req = raw_request(args.port, auth, body, host=args.host)
        min_events = args.chunks + 3 + (1 if args.include_usage else 0)  # role, content, finish, [usage], [DONE]
        res = streams(args.port, req, args.streams, args.hold, args.ramp, procs=args.procs,
                      limit=args.limit_ms / 1e3, min_events=min_events, host=args.host,
                      on_start=lambda: _say("START"))
    elif args.cmd == "ttft":
        auths = args.auth or [UPSTREAM_KEY] * len(args.port)
        if len(auths) != len(args.port):
            ap.error("give one --auth per --port (or none)")
        body = args.body.encode() if args.body else chat_body(args.model or "bench-64", True, 64)
        targets = {f"{i}:{p}": (p, raw_request(p, a, body, host=args.host))
                   for i, (p, a) in enumerate(zip(args.port, auths, strict=True))}
        _say("START")
        res = ttft(targets, args.n, args.warmup, args.host)
    else:
        auth = (args.auth or [UPSTREAM_KEY])[0]
        body = args.body.encode() if args.body else chat_body(args.model or "bench", False)
        res = load(args.port, raw_request(args.port, auth, body, host=args.host), args.conns, args.seconds,
                   procs=args.procs, host=args.host, on_start=lambda: _say("START"))
    _say("END")
    _say(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
