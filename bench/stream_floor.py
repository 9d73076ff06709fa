"""What the server alone costs per streamed event: the floor under the relay.

Serves bench/floor_apps.py (a relay with no logic at all) with granian, WSGI
(512 blocking threads, as scripts/serve.sh) or ASGI, 2 workers, and ramps the
same 20 x 50 ms streams as bench/relay_overhead.py, with its load generator.
Compare its "us/event" with relay_overhead's: the difference is the relay's
own per-stream cost.

    .venv/bin/python bench/stream_floor.py [--interface wsgi|asgi|both] [--levels 250,500]
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import relay_overhead as ro  # noqa: E402  (the bench's load generator and process helpers)


def run(interface: str, levels: list[int], hold: float) -> None:
    slow, port = ro.free_port(), ro.free_port()
    procs = ro.Processes()
    try:
        procs.start("fake (20 x 50 ms)", [sys.executable, "-m", "tests.fakes.provider", "--quiet", "--port",
                                          str(slow), "--chunks", str(ro.STREAM_CHUNKS), "--chunk-delay",
                                          str(ro.CHUNK_DELAY)], cwd=ROOT, stdout=subprocess.DEVNULL,
                    stop_signal=signal.SIGKILL)
        extra = ["--blocking-threads", "512"] if interface == "wsgi" else []
        server = procs.start(f"floor ({interface})", [str(Path(sys.executable).parent / "granian"), "--interface",
                                                      interface, "--host", "127.0.0.1", "--port", str(port),
                                                      "--workers", "2", "--backlog", "2048", *extra,
                                                      f"floor_apps:{interface}_app"],
                             cwd=HERE, env={**os.environ, "FLOOR_UPSTREAM_PORT": str(slow)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ro.wait_port(slow)
        ro.wait_port(port)
        time.sleep(1)
        workers = ro.children(server.pid)
        req = ro.raw_request(port, "x", ro.STREAM_BODY)
        ramp = ro.STREAM_CHUNKS * ro.CHUNK_DELAY + 0.15
        for n in levels:
            peak: dict[int, float] = {}

            def sample(peak=peak):
                for pid in workers:
                    peak[pid] = max(peak.get(pid, 0.0), ro.rss_mib(pid))

            c0 = ro.cpu_seconds(workers)
            res = ro.stream_level(port, req, n, hold, ramp, sample)
            cpu = ro.cpu_seconds(workers) - c0
            events = res["chunk_gaps"] + res["completed"]
            print(f"{interface} {n:4d} streams: {res['completed']} done, {res['delayed']} delayed gaps, "
                  f"{res['slow_first_event']} slow first events, max gap {res['gap_max_ms']:.0f} ms, "
                  f"server CPU {cpu:.2f} s = {cpu / max(1, events) * 1e6:.0f} us/event, "
                  f"RSS peak {sorted(round(v) for v in peak.values())} MiB", flush=True)
            time.sleep(0.5)
    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interface", choices=["wsgi", "asgi", "both"], default="both")
    ap.add_argument("--levels", default="250,500")
    ap.add_argument("--hold", type=float, default=3.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    levels = [int(x) for x in args.levels.split(",")]
    for interface in (["wsgi", "asgi"] if args.interface == "both" else [args.interface]):
        run(interface, levels, args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
