"""A light fake OpenAI provider for benchmarks: asyncio + uvloop, one raw asyncio.Protocol per connection.

tests/fakes/provider.py (a thread per connection, every fault on demand) costs
about one of this VM's two cores at 500 streams; this one answers only what the
benchmarks ask and spends its time in the event loop, so what is measured behind
it is the relay, not the fake:

* ``POST /v1/chat/completions``, non-streaming: a small fixed completion with usage
  (Content-Length body);
* the same with ``"stream": true``: a role event, ``--chunks`` content events and
  a finish event, ``--delay-ms`` apart, the finish event followed at once (as
  OpenAI sends them) by a usage event when ``stream_options.include_usage`` and by
  ``data: [DONE]``. The wire format is the full fake's: chunked transfer encoding,
  one chunk per event, the first event with the headers; or, with ``--framing
  close``, no length at all and the connection closed at the end. (Pacing the
  usage event too would open a 2 x delay gap wherever a relay asks for usage and
  drops the event because its client did not.)
* ``GET /v1/models`` (and ``/v1/models/<id>``);
* anything else 404, a wrong key 401, a body that is not JSON 400, all with the
  provider's error body.

HTTP/1.1 keep-alive (and pipelining: a request that arrives during a stream waits
for it), Content-Length or chunked request bodies, ``Connection: close`` honoured,
TCP_NODELAY, no per-request logging. The pacing is per process, so one instance
is "instant, 64 chunks" and another "20 x 50 ms". ``--workers N`` forks N
processes sharing the port with SO_REUSEPORT.

    .venv/bin/python bench/lightfake.py --port 8901 --chunks 20 --delay-ms 50 [--workers 1] [--quiet]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the project's venv has orjson
    _loads = json.loads

try:
    import uvloop
except ImportError:  # pragma: no cover - the project's venv has uvloop
    uvloop = None

DEFAULT_KEY = "sk-fake-upstream"  # as tests/fakes/provider.py
MODELS = ("gpt-4o-mini", "gpt-4o", "bench", "bench-64", "bench-slow")
FINGERPRINT = "fp_fake0001"
_ids = itertools.count(1)
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Payload Too Large"}
MAX_BODY = 16 * 1024 * 1024
REPLY = b"Hello from the light fake provider."  # the non-streaming answer
REPLY_TOKENS = len(REPLY.split())


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Config:
    """What one fake process answers: the pacing and framing of its streams, and its key."""

    def __init__(self, chunks: int = 20, delay: float = 0.0, api_key: str = DEFAULT_KEY, framing: str = "chunked",
                 first_byte: float = 0.0):
        self.chunks, self.delay, self.framing, self.first_byte = chunks, delay, framing, first_byte
        self.auth = b"bearer " + api_key.encode()
        self.content = [b"w%d " % i for i in range(chunks)]  # the content deltas: "w0 ", "w1 ", ...
        self.completion_tokens = max(1, chunks)


def _usage(prompt: int, completion: int) -> bytes:
    return (b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
            b'"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
            b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
            b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
            % (prompt, completion, prompt + completion))


def _prompt_tokens(messages) -> int:
    """Whitespace-separated words of every message's text content, at least 1 (as the full fake counts)."""
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    n += len(part["text"].split())
    return max(n, 1)


class _Stream:
    """The events of one streamed answer, written `delay` apart by timer callbacks (no task, no thread)."""

    __slots__ = ("proto", "events", "i", "handle")

    def __init__(self, proto: FakeProtocol, events: list[bytes]):
        self.proto, self.events, self.i, self.handle = proto, events, 0, None


class FakeProtocol(asyncio.Protocol):
    __slots__ = ("cfg", "loop", "tr", "buf", "busy", "closing", "stream")

    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop):
        self.cfg, self.loop = cfg, loop
        self.tr: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a (paced) response is being written: later requests wait in buf
        self.closing = False
        self.stream: _Stream | None = None

    # -- transport events

    def connection_made(self, transport):
        self.tr = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes):
        self.buf += data
        if not self.busy:
            self._next_request()

    def eof_received(self):
        if not self.busy:
            return False  # close now
        self.closing = True
        return True  # keep the write side open until the stream ends

    def connection_lost(self, exc):
        st, self.stream = self.stream, None
        if st is not None and st.handle is not None:
            st.handle.cancel()
        self.tr = None

    # -- requests

    def _next_request(self) -> None:
        while self.tr is not None and not self.busy and not self.closing:
            req = self._parse()
            if req is None:
                return
            self._handle(*req)

    def _parse(self):
        """(method, path, headers, body, keep_alive) of the first complete request in buf, else None."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self._fail(413)
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ", 2)
        except ValueError:
            self._fail(400)
            return None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        pos = end + 4
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = bytearray()
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0] or b"0", 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", eol)
                    if buf[eol:eol + 4] == b"\r\n\r\n":
                        pos = eol + 4
                    elif trailer_end >= 0:
                        pos = trailer_end + 4
                    else:
                        return None
                    break
                if len(buf) < eol + 2 + size + 2:
                    return None
                body += buf[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
            body = bytes(body)
        else:
            length = int(headers.get(b"content-length", b"0") or b"0")
            if length > MAX_BODY:
                self._fail(413)
                return None
            if len(buf) < pos + length:
                return None
            body = bytes(buf[pos:pos + length])
            pos += length
        del buf[:pos]
        conn = headers.get(b"connection", b"").lower()
        keep = (b"close" not in conn) if version == b"HTTP/1.1" else (b"keep-alive" in conn)
        return method, target.split(b"?", 1)[0], headers, body, keep

    def _fail(self, status: int) -> None:
        self._send(status, _error_body(status, "Bad request."), keep=False)

    def _handle(self, method: bytes, path: bytes, headers: dict, body: bytes, keep: bool) -> None:
        cfg = self.cfg
        auth = headers.get(b"authorization", b"")
        if not auth:
            return self._send(401, _error_body(401, "You didn't provide an API key."), keep)
        if auth.lower()[:7] != b"bearer " or auth[7:] != cfg.auth[7:]:
            return self._send(401, _error_body(401, "Incorrect API key provided.", code="invalid_api_key"), keep)
        if path == b"/v1/chat/completions":
            if method != b"POST":
                return self._send(405, _error_body(405, "Method not allowed."), keep)
            return self._chat(body, keep)
        if method == b"GET" and path == b"/v1/models":
            rows = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in MODELS]
            return self._send(200, _dumps({"object": "list", "data": rows}), keep)
        if method == b"GET" and path.startswith(b"/v1/models/"):
            name = path[len(b"/v1/models/"):].decode(errors="replace")
            if name in MODELS:
                return self._send(200, _dumps({"id": name, "object": "model", "created": 1700000000,
                                               "owned_by": "openai"}), keep)
            return self._send(404, _error_body(404, f"The model '{name}' does not exist", code="model_not_found"),
                              keep)
        return self._send(404, _error_body(404, f"Invalid URL ({method.decode()} {path.decode(errors='replace')})"),
                          keep)

    def _chat(self, raw: bytes, keep: bool) -> None:
        try:
            body = _loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._send(400, _error_body(400, "We could not parse the JSON body of your request."), keep)
        model = body.get("model")
        messages = body.get("messages")
        if not model or not isinstance(model, str):
            return self._send(400, _error_body(400, "you must provide a model parameter"), keep)
        if not isinstance(messages, list):
            return self._send(400, _error_body(400, "Missing required parameter: 'messages'."), keep)
        cfg = self.cfg
        prompt = _prompt_tokens(messages)
        cid = b"chatcmpl-%016x" % next(_ids)
        created = int(time.time())
        mdl = _dumps(model)
        if not body.get("stream"):
            out = (b'{"id":"%s","object":"chat.completion","created":%d,"model":%s,"choices":[{"index":0,'
                   b'"message":{"role":"assistant","content":"%s","refusal":null,"annotations":[]},'
                   b'"logprobs":null,"finish_reason":"stop"}],"usage":%s,"service_tier":"default",'
                   b'"system_fingerprint":"%s"}'
                   % (cid, created, mdl, REPLY, _usage(prompt, REPLY_TOKENS), FINGERPRINT.encode()))
            return self._send(200, out, keep)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        start = (b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
                 b'"service_tier":"default","system_fingerprint":"%s","choices":[{"index":0,"delta":'
                 % (cid, created, mdl, FINGERPRINT.encode()))
        tail = b'}]' + (b',"usage":null}\n\n' if include_usage else b"}\n\n")
        events = [start + b'{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null'
                  + tail]
        events += [start + b'{"content":"' + c + b'"},"logprobs":null,"finish_reason":null' + tail
                   for c in cfg.content]
        events.append(start + b'{},"logprobs":null,"finish_reason":"stop"' + tail)
        if include_usage:  # with the finish event, as the last write
            events[-1] += (b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
                           b'"service_tier":"default","system_fingerprint":"%s","choices":[],"usage":%s}\n\n'
                           % (cid, created, mdl, FINGERPRINT.encode(), _usage(prompt, cfg.completion_tokens)))
        events[-1] += b"data: [DONE]\n\n"
        self._stream(events, keep)

    # -- writing

    def _head(self, status: int, ctype: bytes, extra: bytes, keep: bool) -> bytes:
        return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nx-request-id: req_%016x\r\n%s%s"
                % (status, _REASONS.get(status, b"Error"), ctype, next(_ids), extra,
                   b"" if keep else b"Connection: close\r\n"))

    def _send(self, status: int, data: bytes, keep: bool) -> None:
        if self.cfg.first_byte:
            self.busy = True
            self.loop.call_later(self.cfg.first_byte, self._send_now, status, data, keep)
        else:
            self._send_now(status, data, keep)

    def _send_now(self, status: int, data: bytes, keep: bool) -> None:
        tr = self.tr
        if tr is None:
            return
        tr.write(self._head(status, b"application/json", b"Content-Length: %d\r\n\r\n" % len(data), keep) + data)
        self._done(keep)

    def _done(self, keep: bool) -> None:
        self.busy = False
        if not keep or self.closing:
            self.closing = True
            if self.tr is not None:
                self.tr.close()
            return
        if self.buf:
            self._next_request()

    def _stream(self, events: list[bytes], keep: bool) -> None:
        """Write each of `events` (an element may hold several SSE events: they leave together) `delay` apart."""
        cfg = self.cfg
        chunked = cfg.framing == "chunked"
        if not chunked:
            keep = False
        head = self._head(200, b"text/event-stream; charset=utf-8",
                          b"Cache-Control: no-cache\r\n" + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked
                                                            else b"Connection: close\r\n\r\n"), True)
        if chunked:
            events = [_chunks(e) for e in events]
            events.append(b"0\r\n\r\n")  # sent with the last event
            events[-2:] = [events[-2] + events[-1]]
        events[0] = head + events[0]
        if not cfg.delay and not cfg.first_byte:
            self.tr.write(b"".join(events))  # an instant stream: one write
            self._done(keep)
            return
        self.busy = True
        st = _Stream(self, events)
        st.i = 0
        self.stream = st
        keep_flag = keep

        def step():
            tr = self.tr
            if tr is None or self.stream is not st:
                return
            tr.write(st.events[st.i])
            st.i += 1
            if st.i < len(st.events):
                st.handle = self.loop.call_later(cfg.delay, step)
            else:
                self.stream = None
                self._done(keep_flag)

        if cfg.first_byte:
            st.handle = self.loop.call_later(cfg.first_byte, step)
        else:
            step()


def _chunks(events: bytes) -> bytes:
    """One HTTP chunk per SSE event."""
    if events.count(b"\n\n") <= 1:
        return b"%x\r\n%s\r\n" % (len(events), events)
    return b"".join(b"%x\r\n%s\n\n\r\n" % (len(e) + 2, e) for e in events.split(b"\n\n") if e)


def _error_body(status: int, message: str, code: str | None = None) -> bytes:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return _dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


# ---------------------------------------------------------------------------- running it

def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(cfg: Config, sock: socket.socket, stop: asyncio.Event | None = None) -> None:
    """Serve on a listening socket until `stop` is set (or forever)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeProtocol(cfg, loop), sock=sock, backlog=4096)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        server.close()


def _run_worker(cfg: Config, sock: socket.socket) -> None:
    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, sock, stop)

    if uvloop is not None:
        uvloop.run(main())
    else:  # pragma: no cover
        asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one, printed)")
    ap.add_argument("--chunks", type=int, default=20, help="content events per streamed answer (default 20)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="milliseconds between the events of a stream")
    ap.add_argument("--first-byte-ms", type=float, default=0.0, help="milliseconds before each answer's headers")
    ap.add_argument("--framing", choices=("chunked", "close"), default="chunked",
                    help="streams chunked on a keep-alive connection (as the full fake) or close-delimited")
    ap.add_argument("--api-key", default=DEFAULT_KEY)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--quiet", action="store_true", help="do not print the address")
    args = ap.parse_args(argv)
    cfg = Config(args.chunks, args.delay_ms / 1e3, args.api_key, args.framing, args.first_byte_ms / 1e3)
    reuse = args.workers > 1
    sock = listen_socket(args.host, args.port, reuse)
    port = sock.getsockname()[1]
    if not args.quiet:
        print(f"light fake provider on http://{args.host}:{port} ({args.chunks} chunks, "
              f"{args.delay_ms:g} ms apart, {args.workers} worker(s))", flush=True)
    if args.workers <= 1:
        _run_worker(cfg, sock)
        return 0
    # Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections over them.
    kids: list[int] = []
    for i in range(args.workers):
        own = sock if i == 0 else listen_socket(args.host, port, True)
        pid = os.fork()
        if pid == 0:
            try:
                _run_worker(cfg, own)
            finally:
                os._exit(0)
        kids.append(pid)
        if i:
            own.close()
    sock.close()

    def on_signal(signum, frame):  # pass it on; waitpid below then returns as each worker ends
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while kids:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid in kids:
            kids.remove(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
