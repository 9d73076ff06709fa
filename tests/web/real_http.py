"""A minimal browser for tests that drive a served app (tests/served.py) over
real HTTP: one cookie jar, CSRF tokens taken from the page as a browser takes
them, redirects not followed (so a test sees the 302 a view answered).

The standard library only, and safe to share between threads: racing two
server processes means many requests from one signed-in person at once.
"""
from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import SimpleCookie

from tests.conftest import csrf_from


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str


class Browser:
    def __init__(self, base_url: str):
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = {}
        self._lock = threading.Lock()

    def request(self, method: str, path: str, data: dict | None = None, headers: dict | None = None,
                timeout: float = 60.0) -> Response:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        hdrs = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        if body is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        with self._lock:
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(5):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                break
            except (ConnectionResetError, ConnectionRefusedError, http.client.RemoteDisconnected):
                # A listen backlog overflow under a burst: a browser retries too.
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
            finally:
                conn.close()
        with self._lock:
            for raw in resp.headers.get_all("Set-Cookie") or []:
                jar = SimpleCookie()
                jar.load(raw)
                for name, morsel in jar.items():
                    if morsel["max-age"] == "0" or not morsel.value:
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)

    def on(self, base_url: str) -> Browser:
        """The same browser (one cookie jar) talking to another server of the
        same deployment: a second process behind the same load balancer."""
        other = Browser(base_url)
        other.cookies, other._lock = self.cookies, self._lock
        return other

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def token(self, page: str) -> str:
        resp = self.get(page)
        assert resp.status == 200, (page, resp.status, resp.text[:500])
        return csrf_from(resp.text)

    def post(self, path: str, data: dict | None = None, page: str | None = None, token: str | None = None,
             **kw) -> Response:
        """POST a form, with the CSRF token of `page` (default: the form's own URL)."""
        token = token or self.token(page or path)
        return self.request("POST", path, data={"csrf_token": token, **(data or {})}, **kw)

    def login(self, email: str, password: str) -> None:
        resp = self.post("/login", {"email": email, "password": password})
        assert resp.status == 302, (resp.status, resp.text[:500])


def at_once(*calls):
    """Run the calls in threads released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(run, c) for c in calls]]
