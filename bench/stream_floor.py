"""The stream harness alone, and (optionally) the floor under the relay.

Part 1 (always): bench/lightclient.py straight to bench/lightfake.py, 20 x 50 ms
streams, 500 and 1,000 concurrent by default. It shows whether the harness alone
holds them with no chunk delayed (a gap over 100 ms, the wait for the first
event included) and how many cores the fake and the client use (CPU seconds /
wall seconds of their processes, from /proc, over the client's measured window),
with the machine's other load beside them: a run on a busy machine is marked.

Part 2 (--floor): a relay with no logic at all (bench/floor_apps.py: no key, no
limits, no parsing, no metering) served by granian with 2 workers, between the
same client and fake: WSGI (512 blocking threads, as scripts/serve.sh), ASGI
(raw asyncio streams to the fake, --loop uvloop) or ASGI with an aiohttp client
(needs aiohttp). Compare its "us/event" with relay_overhead.py's: the difference
is the relay's own per-stream cost.

    .venv/bin/python bench/stream_floor.py [--levels 500,1000] [--hold 5] [--client-procs 1]
                                           [--floor none|wsgi|asgi|asgi-aiohttp|all] [--floor-levels 250,500]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
if VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and __name__ == "__main__":
    os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])  # uvloop and granian are in the project's venv
sys.path.insert(0, str(HERE))

import lightclient as lc  # noqa: E402  (bench/: the light load generator)
import relay_overhead as ro  # noqa: E402  (process and /proc helpers)

CHUNKS, DELAY = ro.STREAM_CHUNKS, ro.CHUNK_DELAY
LIMIT = DELAY + ro.STALL_SLACK
RAMP = CHUNKS * DELAY + 0.15


def self_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def level(port: int, n: int, hold: float, procs: int, parties: dict[str, list[int]], sample=None) -> dict:
    """One level: the client in its own process; cores of every party over its measured window."""
    snap: dict[str, dict] = {}

    def take() -> dict:
        return {**{k: ro.cpu_seconds(p) for k, p in parties.items()}, "self": self_cpu(),
                "machine": ro.machine_busy(), "wall": time.monotonic()}

    res = lc.spawn(["streams", "--port", str(port), "--model", "bench-slow", "-n", str(n), "--hold", str(hold),
                    "--ramp", str(RAMP), "--chunks", str(CHUNKS), "--limit-ms", str(LIMIT * 1e3),
                    "--procs", str(procs)],
                   on_start=lambda: snap.setdefault("a", take()), on_end=lambda: snap.setdefault("b", take()),
                   sample=sample, timeout=RAMP + hold + 180)
    a, b = snap["a"], snap["b"]
    wall = b["wall"] - a["wall"]
    cpu = {k: b[k] - a[k] for k in parties}
    cpu["client"] = res["client_cpu_s"]
    cpu["bench"] = b["self"] - a["self"]  # this script's own sampling
    cpu["other"] = max(0.0, (b["machine"] - a["machine"]) - sum(cpu.values()))
    res["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
    res["cores"] = {k: round(v / wall, 3) for k, v in cpu.items()}
    res["window_s"] = round(wall, 3)
    return res


def start_fake(procs: ro.Processes, workers: int) -> tuple[int, list[int]]:
    port = ro.free_port()
    fake = procs.start("light fake (20 x 50 ms)", [sys.executable, str(HERE / "lightfake.py"), "--quiet", "--port",
                                                   str(port), "--chunks", str(CHUNKS), "--delay-ms",
                                                   f"{DELAY * 1e3:g}", "--workers", str(workers)],
                       cwd=ROOT, stdout=subprocess.DEVNULL)
    ro.wait_port(port)
    time.sleep(0.3)
    return port, ro.tree(fake.pid)


def harness(levels: list[int], hold: float, client_procs: int, fake_workers: int) -> list[dict]:
    procs = ro.Processes()
    rows = []
    try:
        port, fake_pids = start_fake(procs, fake_workers)
        for n in levels:
            res = level(port, n, hold, client_procs, {"fake": fake_pids})
            rows.append(res)
            c = res["cores"]
            ro.log(f"harness {n:5d} streams: {'stall-free' if res['stall_free'] else 'NOT stall-free'}, "
                   f"{res['completed']} done, {res['events']} events, {res['delayed']} delayed gaps "
                   f"({res['slow_first_event']} first events), max gap {res['gap_max_ms']:.0f} ms, "
                   f"errors {res['errors']}; cores fake {c['fake']:.2f}, client {c['client']:.2f}, "
                   f"other {c['other']:.2f}")
            time.sleep(0.5)
    finally:
        procs.stop_all()
    return rows


def floor(interface: str, levels: list[int], hold: float, client_procs: int, fake_workers: int) -> list[dict]:
    app = {"wsgi": "wsgi_app", "asgi": "asgi_app", "asgi-aiohttp": "asgi_aiohttp_app"}[interface]
    if interface == "wsgi":
        extra = ["--interface", "wsgi", "--blocking-threads", "512"]
    else:
        extra = ["--interface", "asgi", "--loop", "uvloop"]
    procs = ro.Processes()
    rows = []
    try:
        fake_port, fake_pids = start_fake(procs, fake_workers)
        port = ro.free_port()
        server = procs.start(f"floor ({interface})", [str(Path(sys.executable).parent / "granian"), *extra,
                                                      "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                                                      "--backlog", "2048", f"floor_apps:{app}"],
                             cwd=HERE, env={**os.environ, "FLOOR_UPSTREAM_PORT": str(fake_port)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ro.wait_port(port)
        time.sleep(1)
        workers = ro.children(server.pid)
        for n in levels:
            peak: dict[int, float] = {}

            def sample(peak=peak):
                for pid in workers:
                    peak[pid] = max(peak.get(pid, 0.0), ro.rss_mib(pid))

            res = level(port, n, hold, client_procs, {"server": [server.pid, *workers], "fake": fake_pids}, sample)
            res["us_per_event"] = res["cpu_s"]["server"] / max(1, res["events"]) * 1e6
            res["rss_peak_mib"] = sorted(round(v) for v in peak.values())
            res["interface"] = interface
            rows.append(res)
            c = res["cores"]
            ro.log(f"floor {interface} {n:5d} streams: {'stall-free' if res['stall_free'] else 'NOT stall-free'}, "
                   f"{res['completed']} done, {res['delayed']} delayed gaps ({res['slow_first_event']} first), "
                   f"max gap {res['gap_max_ms']:.0f} ms, errors {res['errors']}; server {res['us_per_event']:.0f} "
                   f"us/event; cores server {c['server']:.2f}, fake {c['fake']:.2f}, client {c['client']:.2f}, "
                   f"other {c['other']:.2f}; RSS peak {res['rss_peak_mib']} MiB")
            time.sleep(0.5)
    finally:
        procs.stop_all()
    return rows


def report(out: dict) -> str:
    cores = os.cpu_count()
    lines = [f"stream harness alone: bench/lightclient.py -> bench/lightfake.py, {CHUNKS} x {DELAY * 1e3:g} ms "
             f"streams, "
             f"hold {out['hold_s']:g} s after a {RAMP:g} s ramp; delayed = a gap over {LIMIT * 1e3:g} ms "
             f"(the wait for the first event included); {cores} cores",
             f"  {'streams':>7}  {'stall-free':10} {'done':>6} {'events':>7} {'delayed':>7} {'gap p50':>8} "
             f"{'gap p99':>8} {'gap max':>8} {'1st max':>8} {'err':>4}   cores: {'fake':>5} {'client':>6} "
             f"{'other':>6}"]
    for r in out["harness"]:
        c = r["cores"]
        lines.append(f"  {r['streams']:>7}  {'yes' if r['stall_free'] else 'NO':10} {r['completed']:>6} "
                     f"{r['events']:>7} {r['delayed']:>7} {r['gap_p50_ms']:>6.1f}ms {r['gap_p99_ms']:>6.1f}ms "
                     f"{r['gap_max_ms']:>6.0f}ms {r['first_event_max_ms']:>6.0f}ms {r['errors']:>4}          "
                     f"{c['fake']:>5.2f} {c['client']:>6.2f} {c['other']:>6.2f}")
    busy = [r["cores"]["other"] for r in out["harness"]]
    if busy and max(busy) > 0.3:
        lines.append(f"  WARNING: other processes used up to {max(busy):.2f} of {cores} cores during these levels")
    for interface, rows in out.get("floor", {}).items():
        if isinstance(rows, str):
            lines.append(f"floor {interface}: skipped: {rows}")
            continue
        lines.append(f"floor relay ({interface}, granian, 2 workers) between the same client and fake:")
        lines.append(f"  {'streams':>7}  {'stall-free':10} {'done':>6} {'delayed':>7} {'gap p99':>8} {'gap max':>8} "
                     f"{'us/event':>8} {'RSS/worker':>12}   cores: {'server':>6} {'fake':>5} {'client':>6} "
                     f"{'other':>6}")
        for r in rows:
            c = r["cores"]
            lines.append(f"  {r['streams']:>7}  {'yes' if r['stall_free'] else 'NO':10} {r['completed']:>6} "
                         f"{r['delayed']:>7} {r['gap_p99_ms']:>6.0f}ms {r['gap_max_ms']:>6.0f}ms "
                         f"{r['us_per_event']:>8.0f} {'/'.join(map(str, r['rss_peak_mib'])) + ' MiB':>12}          "
                         f"{c['server']:>6.2f} {c['fake']:>5.2f} {c['client']:>6.2f} {c['other']:>6.2f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="500,1000", help="concurrent streams, harness alone")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds each level holds after its ramp")
    ap.add_argument("--client-procs", type=int, default=1, help="processes of the load generator")
    ap.add_argument("--fake-workers", type=int, default=1, help="processes of the fake (SO_REUSEPORT)")
    ap.add_argument("--floor", choices=("none", "wsgi", "asgi", "asgi-aiohttp", "all"), default="none",
                    help="also measure the logic-free floor relay (part 2)")
    ap.add_argument("--floor-levels", default="250,500")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for other processes to leave the CPUs alone")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    lc.raise_nofile()
    if args.wait_quiet:
        ro.wait_quiet(args.wait_quiet)
    out: dict = {"hold_s": args.hold, "chunks": CHUNKS, "delay_ms": DELAY * 1e3,
                 "harness": harness([int(x) for x in args.levels.split(",") if x.strip()], args.hold,
                                    args.client_procs, args.fake_workers)}
    kinds = ["wsgi", "asgi", "asgi-aiohttp"] if args.floor == "all" else [] if args.floor == "none" else [args.floor]
    if kinds:
        out["floor"] = {}
        for interface in kinds:
            if interface == "asgi-aiohttp" and importlib.util.find_spec("aiohttp") is None:
                out["floor"][interface] = "aiohttp is not installed in this venv (pip install aiohttp to measure it)"
                ro.log(f"floor {interface}: {out['floor'][interface]}")
                continue
            out["floor"][interface] = floor(interface, [int(x) for x in args.floor_levels.split(",") if x.strip()],
                                            args.hold, args.client_procs, args.fake_workers)
    print(json.dumps(out, indent=2, default=str) if args.json else report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
