"""Serve an ASGI app in this process, on a thread with its own event loop (uvicorn).

The relay's tests serve the production ASGI app (asgi.App: /v1/ on the event
loop, the portal behind it) this way, so they can reach into the app (flush
its meter, read its database) as the WSGI tests do.
"""
from __future__ import annotations

import logging
import threading
import time

import uvicorn


class AsgiServer:
    def __init__(self, app, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                lifespan="on", log_level="warning", access_log=False, timeout_keep_alive=30)
        # uvicorn logs every request with its path and query string whenever the access
        # logger has a handler (pytest's capture counts): paths carry client text (P23).
        # Production runs granian, whose access-log format has no path (scripts/serve.sh).
        logging.getLogger("uvicorn.access").addFilter(lambda record: False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"asgi-{port}")

    def start(self, timeout: float = 10.0) -> AsgiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the ASGI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
