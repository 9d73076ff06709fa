"""A slow client slows the provider instead of filling the relay's memory (P21).

The relay reads the provider's next event only after the client's connection
took the last one, so when a client stops reading, the relay stops reading
too, and the provider's writes block. Shown at the fake provider: with the
client paused, the bytes it has managed to send stop growing, far short of
the whole answer. Then the client leaves, and the call is recorded as such.
Served both in-process (the `relay` fixture) and by granian as `make run`
serves it.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from tests.relay.conftest import PROVIDERS, UPSTREAM_KEY
from tests.servers import free_port

WORDS = 30_000  # ~60 MB of answer: several times what the socket buffers on the way can hold (~16 MB seen)
WORD = "w" * 2000


def _paused_client(url: str, key: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    body = json.dumps({"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # then it reads no more
    return sock


def _held_back(fake) -> tuple[int, int]:
    """Bytes the fake has sent once it has stopped (blocked by the paused client)."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = fake.streamed_bytes
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            break
        time.sleep(0.05)
    total = WORDS * (len(WORD) + 1)  # its text alone; the events around it add more
    return last, total


def _check(url: str, key: str, fake) -> None:
    fake.streamed_bytes = 0
    fake.push_fault(reply=" ".join([WORD] * WORDS), chunks=WORDS)
    sock = _paused_client(url, key)
    try:
        sent, total = _held_back(fake)
        assert 0 < sent < total * 0.5, \
            f"the fake sent {sent:,} bytes (the answer holds over {total:,}) to a client that reads nothing"
    finally:
        sock.close()


@pytest.mark.promise("P21")
def test_a_slow_client_holds_back_the_provider(relay, fake):
    mark = relay.mark()
    _check(relay.url, relay.key, fake)
    [row] = relay.new_rows(mark, timeout=10)
    assert row.error_class == "client_disconnected" and row.status_code == 499


@pytest.mark.promise("P21")
def test_a_slow_client_holds_back_the_provider_served_as_make_run_serves_it(relay, fake, database_url, tmp_path):
    from tests.served import Served

    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(fake=fake.base_url, dead_port=free_port()))
    served = Served(database_url, tmp_path / "served", secret=relay.app.config["SECRET_KEY"],
                    PROVIDERS_FILE=str(providers),
                    RELAY_TEST_OPENAI_KEY=UPSTREAM_KEY, RELAY_TEST_ANTHROPIC_KEY=UPSTREAM_KEY,
                    MAIL_TRANSPORT="file", RATELIMIT_STORAGE_URI=relay.app.config["RATELIMIT_STORAGE_URI"])
    served.start()
    try:
        mark = relay.mark()
        _check(served.url, relay.key, fake)
        [row] = relay.new_rows(mark, timeout=15)  # the served process writes it to the same database
        assert row.error_class == "client_disconnected" and row.status_code == 499
    finally:
        served.stop()
