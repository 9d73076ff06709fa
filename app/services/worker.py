"""A background OS thread per process, started lazily on the first request
(so it runs in the serving process, after any fork), woken early by `wake`,
and stopped cleanly (an app torn down in-process must not go on working).
The mail sender, the export builder and the retention scheduler are each one."""
from __future__ import annotations

import threading

from flask import Flask


class BackgroundWorker:
    name = "worker"

    def __init__(self, app: Flask, interval: float):
        self.app = app
        self.interval = interval
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def first_delay(self) -> float:
        """Seconds to wait before the first pass (0: at once)."""
        return self.interval

    def work(self) -> None:  # pragma: no cover - each worker defines it
        raise NotImplementedError

    def _loop(self) -> None:
        delay = self.first_delay()
        while not self.stopping.is_set():
            if delay:
                self.wake.wait(delay)
                self.wake.clear()
            delay = self.interval
            if self.stopping.is_set():
                break
            self.work()

    def start_with(self, app: Flask) -> None:
        """Start on the app's first request."""
        app.before_request(self.ensure_started)
