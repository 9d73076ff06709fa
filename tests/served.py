"""The app served exactly as `make run` serves it, for tests that need real
server processes: `bash scripts/serve.sh` (migrate, publish the policy, then
the server with WORKERS worker processes) on a free loopback port.

Tests that race two processes, or kill a worker, start one (or two) of these
against the suite's database. `workers()` lists the worker processes' pids
(children of the server's main process), so a test can SIGKILL one as the
kernel's out-of-memory killer would.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


class Served:
    def __init__(self, database_url: str, instance: Path, *, workers: int = 2, secret: str | None = None,
                 **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.instance = Path(instance)
        self.instance.mkdir(parents=True, exist_ok=True)
        self.log_path = self.instance / "server.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GRANIAN_", "GUNICORN_"))},
            "VENV": str(VENV_BIN.parent),
            "DATABASE_URL": database_url,
            "INSTANCE_PATH": str(self.instance),
            "SECRET_KEY": secret or "test-secret-key-that-is-long-enough-for-hkdf",
            "BIND": f"127.0.0.1:{self.port}",
            "WORKERS": str(workers),
            "THREADS": "64",
            "SESSION_COOKIE_SECURE": "false",
            "MAIL_WORKER": "off",
            "EXPORT_WORKER": "off",
            "JOBS_SCHEDULER": "off",
            "LOG_LEVEL": "WARNING",
            "ARGON2_TIME_COST": "1", "ARGON2_MEMORY_COST": "8192", "ARGON2_PARALLELISM": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60.0) -> Served:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["bash", "scripts/serve.sh"], cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0, workers: int | None = None) -> None:
        """Until the server answers (and, if given, has that many workers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/privacy", timeout=2) as resp:
                    if resp.status == 200 and (workers is None or len(self.workers()) >= workers):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s; log:\n{self.log()[-3000:]}")

    def workers(self) -> list[int]:
        """Pids of the live worker processes: the server's children, less multiprocessing's
        resource tracker (a server that spawns its workers starts one) and less a killed
        worker its server has not reaped yet (a zombie)."""
        out = subprocess.run(["ps", "-ww", "-o", "pid=,stat=,args=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True)
        pids = []
        for line in out.stdout.splitlines():
            fields = line.split(None, 2)
            if len(fields) >= 2 and not fields[1].startswith("Z") and "resource_tracker" not in line:
                pids.append(int(fields[0]))
        return pids

    def started_workers(self) -> int:
        """How many worker processes the server has started so far (replacements included)."""
        log = self.log()
        return log.count("Started worker") + log.count("Started server process")  # granian's, uvicorn's

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log:
            self._log.close()
        self.proc = None
