"""Relay overhead benchmark: the same requests direct to a fake provider and through the relay, interleaved.

    .venv/bin/python bench/relay_overhead.py [--server uvicorn|granian|gunicorn] [--quick] [--json]

In one run it starts two loopback light fake providers (bench/lightfake.py,
asyncio + uvloop): one answering at once with 64-chunk streams, one streaming 20
chunks 50 ms apart. It prepares a throwaway instance folder (SQLite, a providers
file pointing at the fakes, limits set out of reach, mail worker off), migrates
it and creates a user and an API key in a separate process with the same
environment, then starts the relay exactly as `make run` does: `bash
scripts/serve.sh` (SERVER, BIND, WORKERS=2, SESSION_COOKIE_SECURE=false;
ACCESS_LOG only with --access-log). It measures

 1. added latency p50/p99 at concurrency 1 (non-streaming chat, small body,
    persistent stdlib http.client connections, direct and relay alternated);
 2. added latency p50/p99 and requests/s at concurrency 32 (wrk with a Lua
    script when installed, else bench/lightclient.py's `load` in 2 processes;
    direct and relay rounds alternated);
 3. added time to first token of a 64-chunk stream at concurrency 1 (time until
    the first event with non-empty content arrives; bench/lightclient.py);
 4. the most concurrent 20 x 50 ms streams held with no chunk delayed (a gap
    more than 50 ms over the fake's 50 ms; the wait for the first event counts
    as a gap too), ramping 100, 250, 500, 1000 streams, direct then relay per
    level, the load from bench/lightclient.py in its own process;
 5. relay CPU per streamed event (relay processes' CPU during a level / SSE events delivered);
 6. resident memory (VmRSS) of each relay worker at the peak of the 500-stream load;

and prints the figures beside the targets of the async-server issue, each
"met" or "not met". Everything it started is stopped at the end, on Ctrl-C and
on errors. "added" is always relay minus direct of the same statistic measured
in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
if VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and __name__ == "__main__":
    os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])  # the app and the fakes need the project's venv
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import lightclient as lc  # noqa: E402  (bench/: the light load generator)

UPSTREAM_KEY = "sk-fake-upstream"  # bench/lightfake.py's (and tests.fakes.provider's) DEFAULT_KEY
HIGH_LIMIT = "1000000000"
STREAM_CHUNKS, CHUNK_DELAY = 20, 0.050
STALL_SLACK = 0.050          # a chunk is delayed when its gap exceeds CHUNK_DELAY by more than this
TTFT_CHUNKS = 64
CHAT_PATH = "/v1/chat/completions"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {  # the async-server issue (/v1/ on an async server)
    "streams": 500,            # concurrent 20 x 50 ms streams with no chunk delayed
    "us_per_event": 70,        # relay CPU per streamed event, at 500 streams
    "rss_mib": 100,            # per worker at the 500-stream peak
    "added_p50_c1_ms": 0.4,
    "rps_c32": 4000,
    "added_ttft_ms": 1.0,
}
TARGET_LEVEL = 500  # the stream level at which CPU per event and RSS are judged
LIGHTFAKE = ROOT / "bench" / "lightfake.py"

PROVIDERS_TOML = """\
# written by bench/relay_overhead.py
[providers.fast]
kind = "openai_compatible"
base_url = "http://127.0.0.1:{fast}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[providers.slow]
kind = "openai_compatible"
base_url = "http://127.0.0.1:{slow}/v1"
api_key_env = "BENCH_UPSTREAM_KEY"
read_timeout = 30

[[models]]
name = "bench"
targets = [ {{ provider = "fast", model = "bench" }} ]
price = {{ input = 0.15, output = 0.60 }}

[[models]]
name = "bench-64"
targets = [ {{ provider = "fast", model = "bench-64" }} ]
price = {{ input = 0.15, output = 0.60 }}

[[models]]
name = "bench-slow"
targets = [ {{ provider = "slow", model = "bench-slow" }} ]
price = {{ input = 0.15, output = 0.60 }}
"""

SMALL_BODY = json.dumps({"model": "bench", "max_tokens": 16,
                         "messages": [{"role": "user", "content": "Say hello to the benchmark, briefly."}]},
                        separators=(",", ":")).encode()
TTFT_BODY = json.dumps({"model": "bench-64", "stream": True,
                        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(TTFT_CHUNKS))}]},
                       separators=(",", ":")).encode()
STREAM_BODY = json.dumps({"model": "bench-slow", "stream": True,
                          "messages": [{"role": "user", "content": " ".join(f"t{i}" for i in range(STREAM_CHUNKS))}]},
                         separators=(",", ":")).encode()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p: float) -> float:
    """The p-th percentile (nearest rank) of values; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def raw_request(port: int, auth: str, body: bytes) -> bytes:
    return (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------- processes

class Processes:
    """Everything the benchmark starts, each in its own process group, stopped by id."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen, int]] = []

    def start(self, name: str, cmd: list[str], stop_signal: int = signal.SIGTERM, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append((name, proc, stop_signal))
        return proc

    def stop_all(self) -> None:
        for _name, proc, sig in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) ignored SIGTERM: killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # also any worker left behind in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return sorted(out)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def own_cpu() -> float:
    """CPU of this process and its waited-for children (wrk, load-generator processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(max_wait: float, busy_cores: float = 0.3) -> float:
    """Wait (up to max_wait s) until other processes use under busy_cores for 3 s; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = machine_busy(), time.monotonic()
        time.sleep(3)
        load = (machine_busy() - b0) / (time.monotonic() - t0)
        if load < busy_cores or time.monotonic() >= deadline:
            return load
        log(f"machine busy ({load:.2f} cores used by other processes): waiting ...")


class CPU:
    """CPU seconds used by each party between two snapshots; "other" is every process this run did not start."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.start = self._snap()

    def _snap(self) -> dict[str, float]:
        b = self.bench
        return {"relay": cpu_seconds([b.server.pid, *b.workers]), "fakes": cpu_seconds(b.fake_pids),
                "loadgen": own_cpu(), "machine": machine_busy(), "wall": time.monotonic()}

    def delta(self) -> dict[str, float]:
        end = self._snap()
        d = {k: end[k] - self.start[k] for k in end}
        d["other"] = max(0.0, d.pop("machine") - d["relay"] - d["fakes"] - d["loadgen"])
        return {k: round(v, 3) for k, v in d.items()}


def wait_http(port: int, key: str, proc: subprocess.Popen, logfile: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the relay exited with {proc.returncode}:\n{tail(logfile)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                return
            raise RuntimeError(f"GET /v1/models answered {resp.status}:\n{tail(logfile)}")
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the relay did not answer on port {port} within {timeout}s:\n{tail(logfile)}")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------- (1) c=1 latency

def latency_c1(direct_port: int, relay_port: int, key: str, n: int, warmup: int) -> dict:
    """Non-streaming chat at concurrency 1: one persistent http.client connection each side,
    the two sides alternated (ABBA) so that drift hits both alike."""
    sides = {
        "direct": (direct_port, {"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": "application/json"}),
        "relay": (relay_port, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}),
    }
    conns = {}
    for name, (port, _) in sides.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns[name] = conn
    times: dict[str, list[float]] = {"direct": [], "relay": []}
    errors = {"direct": 0, "relay": 0}
    perf = time.perf_counter

    def one(name: str) -> None:
        conn, headers = conns[name], sides[name][1]
        t = perf()
        conn.request("POST", CHAT_PATH, SMALL_BODY, headers)
        resp = conn.getresponse()
        resp.read()
        dt = perf() - t
        if resp.status != 200:
            errors[name] += 1
        times[name].append(dt)

    for i in range(warmup + n):
        order = ("direct", "relay") if i % 2 == 0 else ("relay", "direct")
        for name in order:
            one(name)
        if i == warmup - 1:
            times = {"direct": [], "relay": []}
    for conn in conns.values():
        conn.close()
    return summarize_pair(times, errors)


def summarize_pair(times: dict[str, list[float]], errors: dict[str, int]) -> dict:
    out: dict = {"n": {k: len(v) for k, v in times.items()}, "errors": errors}
    for name, ts in times.items():
        out[name] = {"p50_ms": pct(ts, 50) * 1e3, "p99_ms": pct(ts, 99) * 1e3, "mean_ms": statistics.fmean(ts) * 1e3}
    out["added_p50_ms"] = out["relay"]["p50_ms"] - out["direct"]["p50_ms"]
    out["added_p99_ms"] = out["relay"]["p99_ms"] - out["direct"]["p99_ms"]
    return out


# ---------------------------------------------------------------------------- (2) c=32 throughput

WRK_LUA = """\
wrk.method = "POST"
wrk.path = "{path}"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {auth}"
done = function(summary, latency, requests)
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_run(port: int, auth: str, seconds: float, conns: int, workdir: Path) -> dict:
    script = workdir / f"wrk-{port}.lua"
    if not script.exists():
        script.write_text(WRK_LUA.format(path=CHAT_PATH, body=SMALL_BODY.decode(), auth=auth))
    threads = min(2, conns)
    res = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(script), f"http://127.0.0.1:{port}{CHAT_PATH}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if res.returncode or line is None:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout[-2000:]} {res.stderr[-2000:]}")
    req, dur, st, conn_e, read_e, write_e, to_e, p50, p99 = (int(x) for x in line.split()[1:])
    return {"requests": req, "seconds": dur / 1e6, "rps": req / (dur / 1e6), "p50_ms": p50 / 1e3,
            "p99_ms": p99 / 1e3, "errors": st + conn_e + read_e + write_e + to_e, "non2xx": st}


def pyload_run(port: int, auth: str, seconds: float, conns: int, procs: int = 2) -> dict:
    """bench/lightclient.py's `load` in its own processes (waited for, so own_cpu() counts them)."""
    return lc.spawn(["load", "--port", str(port), "--auth", auth, "--body", SMALL_BODY.decode(), "-c", str(conns),
                     "--seconds", str(seconds), "--procs", str(procs)], timeout=seconds + 120)


def throughput_c32(bench: Bench, rounds: int, seconds: float, conns: int = 32) -> dict:
    run = (lambda port, auth: wrk_run(port, auth, seconds, conns, bench.tmp)) if bench.loadgen == "wrk" else \
        (lambda port, auth: pyload_run(port, auth, seconds, conns))
    run(bench.relay_port, bench.key)  # warm-up round, not counted: pools fill, code paths warm
    per: dict[str, list[dict]] = {"direct": [], "relay": []}
    relay_cpu: list[dict] = []
    for r in range(rounds):
        for name in (("direct", "relay") if r % 2 == 0 else ("relay", "direct")):
            if name == "direct":
                per[name].append(run(bench.fast_port, UPSTREAM_KEY))
            else:
                cpu = CPU(bench)
                per[name].append(run(bench.relay_port, bench.key))
                relay_cpu.append(cpu.delta())
    out: dict = {"concurrency": conns, "rounds": rounds, "seconds_per_round": seconds, "per_round": per}
    for name, rs in per.items():
        reqs = sum(x["requests"] for x in rs)
        secs = sum(x["seconds"] for x in rs)
        out[name] = {"rps": reqs / secs, "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                     "p99_ms": statistics.median(x["p99_ms"] for x in rs), "requests": reqs,
                     "errors": sum(x["errors"] for x in rs)}
    out["added_p50_ms"] = out["relay"]["p50_ms"] - out["direct"]["p50_ms"]
    out["added_p99_ms"] = out["relay"]["p99_ms"] - out["direct"]["p99_ms"]
    relay_secs = sum(c["relay"] for c in relay_cpu)
    out["relay_cpu_us_per_request"] = relay_secs / max(1, out["relay"]["requests"]) * 1e6
    out["cpu_during_relay_rounds_s"] = {k: round(sum(c[k] for c in relay_cpu), 2) for k in relay_cpu[0]}
    out["wall_relay_rounds_s"] = sum(x["seconds"] for x in per["relay"])
    return out


# ---------------------------------------------------------------------------- (3) time to first token

def ttft_c1(direct_port: int, relay_port: int, key: str, n: int, warmup: int) -> dict:
    """bench/lightclient.py's ttft in this process: one keep-alive connection each side, ABBA."""
    res = lc.ttft({"direct": (direct_port, lc.raw_request(direct_port, UPSTREAM_KEY, TTFT_BODY)),
                   "relay": (relay_port, lc.raw_request(relay_port, key, TTFT_BODY))}, n, warmup)
    out = {"n": res["n"], "errors": res["errors"], "chunks": TTFT_CHUNKS,
           "direct": {k: res["direct"][k] for k in ("p50_ms", "p99_ms", "mean_ms")},
           "relay": {k: res["relay"][k] for k in ("p50_ms", "p99_ms", "mean_ms")},
           "stream_end_p50_ms": {k: res[k]["end_p50_ms"] for k in ("direct", "relay")}}
    out["added_p50_ms"] = out["relay"]["p50_ms"] - out["direct"]["p50_ms"]
    out["added_p99_ms"] = out["relay"]["p99_ms"] - out["direct"]["p99_ms"]
    return out


# ---------------------------------------------------------------------------- (4)-(6) concurrent streams

def stream_level(bench: Bench, port: int, auth: str, n: int, hold: float, ramp: float, sample=None) -> dict:
    """One level of 20 x 50 ms streams from bench/lightclient.py in its own process(es); CPU per party
    for the window the client reports (START to END), its own from its /proc/self/stat."""
    box: dict = {}

    def on_start():
        box["cpu"] = CPU(bench)

    def on_end():
        box["d"] = box["cpu"].delta()

    res = lc.spawn(["streams", "--port", str(port), "--auth", auth, "--body", STREAM_BODY.decode(),
                    "-n", str(n), "--hold", str(hold), "--ramp", str(ramp), "--chunks", str(STREAM_CHUNKS),
                    "--limit-ms", str((CHUNK_DELAY + STALL_SLACK) * 1e3), "--procs", str(bench.args.client_procs)],
                   on_start=on_start, on_end=on_end, sample=sample, timeout=ramp + hold + 180)
    d = box.get("d") or {"relay": 0.0, "fakes": 0.0, "loadgen": 0.0, "other": 0.0, "wall": float("nan")}
    client = res["client_cpu_s"]
    d["loadgen"] = round(d["loadgen"] + client, 3)  # this process's sampling, plus the client's own
    d["other"] = round(max(0.0, d["other"] - client), 3)
    res["cpu_s"] = d
    return res


def streams_ramp(bench: Bench, levels: list[int], hold: float) -> dict:
    ramp = STREAM_CHUNKS * CHUNK_DELAY + 0.15
    out: dict = {"levels": {}, "chunk_delay_ms": CHUNK_DELAY * 1e3,
                 "delayed_when_gap_over_ms": (CHUNK_DELAY + STALL_SLACK) * 1e3, "hold_s": hold}
    for n in levels:
        row: dict = {}
        for name, port, auth in (("direct", bench.slow_port, UPSTREAM_KEY), ("relay", bench.relay_port, bench.key)):
            peak: dict[int, float] = {}

            def sample(peak=peak):
                for pid in bench.workers:
                    peak[pid] = max(peak.get(pid, 0.0), rss_mib(pid))

            res = stream_level(bench, port, auth, n, hold, ramp, sample if name == "relay" else None)
            cpu = res["cpu_s"]
            wall = cpu["wall"] or float("nan")
            res["cores"] = {k: round(cpu[k] / wall, 3) for k in ("relay", "fakes", "loadgen", "other")}
            if name == "relay":
                res["rss_peak_mib"] = {str(pid): round(v, 1) for pid, v in peak.items()}
                res["relay_cpu_us_per_event"] = cpu["relay"] / max(1, res["events"]) * 1e6
            row[name] = res
            log(f"  {n:4d} streams {name:6s}: {res['completed']} done, {res['events']} events, "
                f"{res['delayed']} delayed gaps ({res['slow_first_event']} first events), "
                f"max gap {res['gap_max_ms']:.0f} ms, active ~{res['active_mean']:.0f}, errors {res['errors']}; "
                f"cores relay {res['cores']['relay']:.2f}, fakes {res['cores']['fakes']:.2f}, "
                f"client {res['cores']['loadgen']:.2f}, other {res['cores']['other']:.2f}"
                + (f"; relay {res['relay_cpu_us_per_event']:.0f} us/event" if name == "relay" else ""))
            time.sleep(0.5)
        out["levels"][n] = row
    held = [n for n, row in out["levels"].items() if row["relay"]["stall_free"]]
    ok_prefix = 0
    for n in levels:
        if not out["levels"][n]["relay"]["stall_free"]:
            break
        ok_prefix = n
    out["most_stall_free"] = ok_prefix
    out["stall_free_levels"] = held
    return out


# ---------------------------------------------------------------------------- setup

def setup_instance() -> None:
    """Child process (same environment as the server): migrate, create a verified user and an API key."""
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.models import User
    from app.models.types import utcnow
    from app.services import keys as key_service

    app = create_app()
    with app.app_context():
        upgrade()
        with app.test_request_context():
            user = User(email="bench@example.com", email_key="bench@example.com", password_hash="!unusable",
                        age_confirmed_at=utcnow(), email_verified_at=utcnow())
            db.session.add(user)
            db.session.flush()
            key, raw = key_service.create(user, "bench")
            if os.environ.get("BENCH_BUDGET"):  # every request takes (and settles) a budget hold (P26)
                from app.models import Budget
                db.session.add(Budget(target=f"key:{key.id}", scope="key", api_key_id=key.id,
                                      monthly_units=10**17))
            db.session.commit()
        db.engine.dispose()
    print("KEY " + raw, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Processes()
        self.tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
        self.loadgen = "python" if args.loadgen == "python" or not shutil.which("wrk") else "wrk"
        self.fake_roots: list[int] = []
        self.fake_pids: list[int] = []
        self.workers: list[int] = []
        self.server: subprocess.Popen | None = None
        self.key = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_CMD_ARGS",))}
        env.update({
            "DATABASE_URL": f"sqlite:///{self.tmp / 'relay.db'}",
            "INSTANCE_PATH": str(self.tmp / "instance"),
            "SECRET_KEY": self.secret,
            "PROVIDERS_FILE": str(self.tmp / "providers.toml"),
            **({"BENCH_BUDGET": "1"} if self.args.budget else {}),
            "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
            "RELAY_KEY_RPM": HIGH_LIMIT, "RELAY_KEY_TPM": HIGH_LIMIT,
            "RELAY_ACCOUNT_RPM": HIGH_LIMIT, "RELAY_ACCOUNT_TPM": HIGH_LIMIT,
            "RATELIMIT_STORAGE_URI": "memory://", "REDIS_URL": "",
            "MAIL_WORKER": "off", "MAIL_TRANSPORT": "file",
            "LOG_LEVEL": "WARNING",
            "SESSION_COOKIE_SECURE": "false",  # as `make run`
            "BASE_URL": f"http://127.0.0.1:{self.relay_port}",
            "FLASK_APP": "wsgi",
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("ACCESS_LOG", None)
        if self.args.access_log:
            env["ACCESS_LOG"] = "1"  # only when asked: `make run` leaves the access log off
        return env

    def start(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < min(hard, 65536):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
        self.secret = secrets.token_urlsafe(48)
        self.fast_port, self.slow_port, self.relay_port = free_port(), free_port(), free_port()
        (self.tmp / "providers.toml").write_text(PROVIDERS_TOML.format(fast=self.fast_port, slow=self.slow_port))
        fake = [sys.executable, str(LIGHTFAKE), "--quiet", "--workers", str(self.args.fake_workers)]
        kw = {"cwd": ROOT, "stdout": subprocess.DEVNULL}
        f1 = self.procs.start("fake (instant, 64 chunks)", [*fake, "--port", str(self.fast_port), "--chunks",
                                                            str(TTFT_CHUNKS)], **kw)
        f2 = self.procs.start("fake (20 x 50 ms)", [*fake, "--port", str(self.slow_port), "--chunks",
                                                    str(STREAM_CHUNKS), "--delay-ms", f"{CHUNK_DELAY * 1e3:g}"], **kw)
        self.fake_roots = [f1.pid, f2.pid]
        self.fake_pids = list(self.fake_roots)
        env = self.env()
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_setup"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("KEY ")), None)
        if res.returncode or not line:
            raise RuntimeError(f"instance setup failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        self.key = line[4:]
        wait_port(self.fast_port)
        wait_port(self.slow_port)
        self.fake_pids = [p for root in self.fake_roots for p in tree(root)]  # with --fake-workers N, the workers

        env.update({"SERVER": self.args.server, "BIND": f"127.0.0.1:{self.relay_port}", "WORKERS": "2"})
        self.server_log = self.tmp / "server.log"
        with open(self.server_log, "wb") as fh:
            self.server = self.procs.start(f"relay ({self.args.server})", ["bash", "scripts/serve.sh"], cwd=ROOT,
                                           env=env, stdout=fh, stderr=subprocess.STDOUT)
        t = time.monotonic()
        wait_http(self.relay_port, self.key, self.server, self.server_log)
        self.startup_s = time.monotonic() - t
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.workers = [p for p in children(self.server.pid) if "resource_tracker" not in cmdline(p)]
            if len(self.workers) >= 2:
                break
            time.sleep(0.2)
        self.idle_rss = {str(p): round(rss_mib(p), 1) for p in self.workers}

    def stop(self) -> None:
        self.procs.stop_all()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- report

def fmt(v: float, unit: str = "ms", digits: int = 2) -> str:
    if v != v:
        return "-"
    return f"{v:.{digits}f} {unit}".strip()


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "not met")


def targets_rows(r: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, the figure, what it is, met?) for each target of the async-server issue."""
    c1, c32, tt, st = r["c1"], r["c32"], r["ttft"], r["streams"]
    at = st["levels"].get(TARGET_LEVEL)
    rows: list[tuple[str, str, str, bool | None]] = []
    if at is None:
        rows.append((f"{TARGET_LEVEL} concurrent 20 x 50 ms streams, no chunk delayed", "-",
                     f"level {TARGET_LEVEL} not measured (--streams)", None))
        rows.append((f"relay CPU per streamed event <= {TARGETS['us_per_event']} us", "-", "not measured", None))
        rows.append((f"RSS <= {TARGETS['rss_mib']} MiB per worker at {TARGET_LEVEL} streams", "-", "not measured",
                     None))
    else:
        x = at["relay"]
        rows.append((f"{TARGET_LEVEL} concurrent 20 x 50 ms streams, no chunk delayed",
                     "stall-free" if x["stall_free"] else f"{x['delayed']} delayed, {x['errors']} errors",
                     f"most held stall-free: {st['most_stall_free'] or '< ' + str(min(st['levels']))}",
                     x["stall_free"]))
        us = x["relay_cpu_us_per_event"]
        rows.append((f"relay CPU per streamed event <= {TARGETS['us_per_event']} us", f"{us:.0f} us",
                     f"at {TARGET_LEVEL} streams ({x['cores']['relay']:.2f} cores)", us <= TARGETS["us_per_event"]))
        rss = list(x.get("rss_peak_mib", {}).values())
        rows.append((f"RSS <= {TARGETS['rss_mib']} MiB per worker at {TARGET_LEVEL} streams",
                     ", ".join(f"{v:.0f}" for v in rss) + " MiB" if rss else "-", "peak VmRSS of each worker",
                     bool(rss) and max(rss) <= TARGETS["rss_mib"]))
    rows.append((f"added p50 at concurrency 1 <= {TARGETS['added_p50_c1_ms']:g} ms", fmt(c1["added_p50_ms"]),
                 "non-streaming chat", c1["added_p50_ms"] <= TARGETS["added_p50_c1_ms"]))
    rows.append((f">= {TARGETS['rps_c32']:,} requests/s at concurrency 32", f"{c32['relay']['rps']:,.0f} rps",
                 f"direct {c32['direct']['rps']:,.0f} rps", c32["relay"]["rps"] >= TARGETS["rps_c32"]))
    rows.append((f"added time to first token <= {TARGETS['added_ttft_ms']:g} ms", fmt(tt["added_p50_ms"]),
                 f"p50, {tt['chunks']}-chunk stream", tt["added_p50_ms"] <= TARGETS["added_ttft_ms"]))
    return rows


def report(r: dict) -> str:
    c1, c32, tt, st = r["c1"], r["c32"], r["ttft"], r["streams"]
    lines = [f"relay benchmark: SERVER={r['server']} via scripts/serve.sh, WORKERS=2, "
             f"ACCESS_LOG={'1' if r['access_log'] else 'unset'}, c=32 load from {r['loadgen']}, light fakes and "
             f"client (bench/lightfake.py, lightclient.py); {os.cpu_count()} cores shared by all of them", ""]
    w = 38
    lines += [f"{'figure':{w}} {'direct':>10} {'relay':>10} {'added':>10}", "-" * (w + 33)]
    for name, x, rps in (("latency p50, c=1", c1, False), ("latency p99, c=1", c1, False),
                         ("latency p50, c=32", c32, False), ("latency p99, c=32", c32, False),
                         ("requests/s, c=32", c32, True),
                         (f"TTFT p50, {tt['chunks']}-chunk stream", tt, False), ("TTFT p99", tt, False)):
        if rps:
            lines.append(f"{name:{w}} {x['direct']['rps']:>10,.0f} {x['relay']['rps']:>10,.0f}")
            continue
        key = "p50_ms" if "p50" in name else "p99_ms"
        lines.append(f"{name:{w}} {fmt(x['direct'][key]):>10} {fmt(x['relay'][key]):>10} "
                     f"{fmt(x['relay'][key] - x['direct'][key]):>10}")
    lines.append("")
    lines.append(f"c=1: {c1['n']['relay']} requests each side; c=32: {c32['rounds']} x {c32['seconds_per_round']:g} s "
                 f"rounds each side, relay CPU {c32['relay_cpu_us_per_request']:.0f} us/request; CPU s during relay "
                 f"rounds {c32['cpu_during_relay_rounds_s']} over {c32['wall_relay_rounds_s']:.1f} s wall")
    lines.append(f"TTFT: {tt['n']['relay']} streams each side; whole {tt['chunks']}-chunk stream p50 direct "
                 f"{tt['stream_end_p50_ms']['direct']:.2f} ms, relay {tt['stream_end_p50_ms']['relay']:.2f} ms")
    lines.append(f"streams (gap > {st['delayed_when_gap_over_ms']:.0f} ms = delayed, the wait for the first event "
                 f"included; hold {st['hold_s']:g} s per level; cores = CPU s / wall s of each party):")
    lines.append(f"  {'level':>5} {'side':6} {'done':>6} {'events':>7} {'delayed':>7} {'of 1st':>6} {'gap p99':>8} "
                 f"{'gap max':>8} {'1st max':>8} {'active':>6} {'err':>4}  cores relay/fakes/client/other  us/event")
    for n, row in st["levels"].items():
        for side in ("direct", "relay"):
            x = row[side]
            c = x["cores"]
            lines.append(f"  {n:>5} {side:6} {x['completed']:>6} {x['events']:>7} {x['delayed']:>7} "
                         f"{x['slow_first_event']:>6} {x['gap_p99_ms']:>6.0f}ms {x['gap_max_ms']:>6.0f}ms "
                         f"{x['first_event_max_ms']:>6.0f}ms {x['active_mean']:>6.0f} {x['errors']:>4}  "
                         f"{c['relay']:.2f}/{c['fakes']:.2f}/{c['loadgen']:.2f}/{c['other']:.2f}"
                         + (f"{x['relay_cpu_us_per_event']:>17.0f}" if side == "relay" else ""))
    peak = st["levels"].get(TARGET_LEVEL) or (st["levels"].get(max(st["levels"])) if st["levels"] else None)
    rss = peak["relay"].get("rss_peak_mib", {}) if peak else {}
    lines.append(f"worker RSS idle after start: {r['idle_rss_mib']} MiB; at the {peak['relay']['streams']}-stream "
                 f"peak: {rss} MiB (pids {', '.join(r['workers'])})" if peak else "")
    other = sum(r[k]["phase_cpu_s"]["other"] for k in ("c1", "c32", "ttft", "streams"))
    wall = sum(r[k]["phase_cpu_s"]["wall"] for k in ("c1", "c32", "ttft", "streams"))
    lines.append(f"other processes on the machine used {other:.1f} CPU-s over the {wall:.0f} s of measurement "
                 f"({other / wall:.2f} of {os.cpu_count()} cores)"
                 + ("  -- WARNING: a busy machine, the figures are not this relay's alone"
                    if other / wall > 0.15 else ""))
    errs = c1["errors"]["relay"] + c32["relay"]["errors"] + tt["errors"]["relay"]
    if errs:
        lines.append(f"WARNING: {errs} relay requests failed (non-200 or transport errors); see {r.get('server_log')}")
    lines.append("")
    lines.append("targets (the async-server issue):")
    w = 52
    lines.append(f"  {'target':{w}} {'figure':>22}  {'':8} note")
    for target, figure, note, ok in targets_rows(r):
        lines.append(f"  {target:{w}} {figure:>22}  {_met(ok):8} {note}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=("uvicorn", "granian", "gunicorn"), default="uvicorn")
    ap.add_argument("--quick", action="store_true", help="fewer requests and shorter holds: a smoke run")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    ap.add_argument("--access-log", dest="access_log", action="store_true",
                    help="set ACCESS_LOG=1 (make run leaves it unset)")
    ap.add_argument("--loadgen", choices=("auto", "python"), default="auto",
                    help="c=32 load generator: wrk when installed (auto) or the Python one")
    ap.add_argument("--streams", default=None,
                    help="concurrent stream levels to ramp through (default 100,250,500,1000; --quick: 100,500)")
    ap.add_argument("--client-procs", type=int, default=1, help="processes of the stream load generator")
    ap.add_argument("--fake-workers", type=int, default=1, help="processes of each light fake (SO_REUSEPORT)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for other processes to leave the CPUs alone")
    ap.add_argument("--keep", action="store_true", help="keep the temporary instance folder and server log")
    ap.add_argument("--budget", action="store_true",
                    help="give the key a (never reached) monthly budget: every request is held and settled")
    ap.add_argument("--_setup", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._setup:
        setup_instance()
        return 0

    q = args.quick
    levels = [int(x) for x in (args.streams or ("100,500" if q else "100,250,500,1000")).split(",") if x.strip()]
    bench = Bench(args)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started with SIGINT ignored
    try:
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        log(f"starting fakes and the relay (SERVER={args.server}) in {bench.tmp} ...")
        bench.start()
        log(f"relay up in {bench.startup_s:.1f}s: server pid {bench.server.pid}, workers "
            + ", ".join(f"{p} ({cmdline(p)[:60]})" for p in bench.workers))
        if len(bench.workers) < 2:
            log("WARNING: fewer than 2 worker processes found under the server process")
        results: dict = {"server": args.server, "quick": q, "access_log": args.access_log, "loadgen": bench.loadgen,
                         "workers": [str(p) for p in bench.workers], "idle_rss_mib": bench.idle_rss,
                         "server_log": str(bench.server_log) if args.keep else None}
        phases = [
            ("c1", "(1) c=1 non-streaming latency",
             lambda: latency_c1(bench.fast_port, bench.relay_port, bench.key, 200 if q else 2000, 50 if q else 300)),
            ("c32", f"(2) c=32 with {bench.loadgen}", lambda: throughput_c32(bench, 2 if q else 4, 2 if q else 5)),
            ("ttft", f"(3) TTFT of a {TTFT_CHUNKS}-chunk stream, c=1",
             lambda: ttft_c1(bench.fast_port, bench.relay_port, bench.key, 50 if q else 400, 20 if q else 50)),
            ("streams", "(4)-(6) concurrent 20 x 50 ms streams",
             lambda: streams_ramp(bench, levels, 2.0 if q else 5.0)),
        ]
        for name, title, fn in phases:
            log(title + " ...")
            cpu = CPU(bench)
            results[name] = fn()
            results[name]["phase_cpu_s"] = d = cpu.delta()
            log(f"    done in {d['wall']:.1f} s; CPU s relay {d['relay']:.1f}, fakes {d['fakes']:.1f}, "
                f"load generator {d['loadgen']:.1f}, other processes {d['other']:.1f}")
        bad = [p for p in bench.workers if not Path(f"/proc/{p}").exists()]
        if bad:
            log(f"WARNING: worker(s) {bad} died during the run")
        results["server_alive"] = bench.server.poll() is None
    finally:
        bench.stop()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
