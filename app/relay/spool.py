"""The usage spool: an append-only local file per server process, written
before a client's last byte, so a worker killed at any moment loses no row
that its client saw answered.

Why a file and not the database: a commit per request costs a round trip (and
an fsync on PostgreSQL, a write lock on SQLite) on the client's path; an
append to a file already open with O_APPEND is one `write(2)` of ~500 bytes
into the page cache (a few µs), and it survives the process: SIGKILL and the
out-of-memory killer end a process, not the kernel's copy of its writes. (A
power cut can still lose the last seconds; that is the database's own
trade-off with `synchronous_commit=off`, and the price of not fsyncing per
request.) The usage writer (app/relay/meter.py) reads the file back and moves
its rows into the database; it never keeps more than a batch in memory, so a
database outage fills the disk slowly instead of the worker's memory.

Layout: ``<dir>/usage-<db>-<pid>-<nonce>-<seq>.log``, one JSON object a line.
``<db>`` is a fingerprint of the database URL, so a spool is only ever
replayed into the database it was meant for. Each segment is held with an
exclusive ``flock`` for the life of its writer; the kernel drops the lock when
the process dies, however it dies, so "I can lock it" means "its writer is
gone" and any process may replay it. A segment is created under a temporary
name, locked, and only then renamed into place, so nobody can mistake a
segment that is being born for an orphan. Replays are idempotent: rows are
inserted with ON CONFLICT (request_id) DO NOTHING.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 4 * 1024 * 1024  # a new segment after this much; a finished one is deleted


def fingerprint(database_url: str) -> str:
    return hashlib.sha256(database_url.encode()).hexdigest()[:10]


@dataclass
class Segment:
    seq: int
    path: Path
    fd: int
    size: int = 0  # bytes appended so far (this process is the only writer)


class Spool:
    """The appending side, used by the request threads of one process."""

    def __init__(self, directory: str | os.PathLike, database_url: str):
        self.dir = Path(directory)
        self.db = fingerprint(database_url)
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.nonce = ""
        self.segments: list[Segment] = []  # oldest first; the last one takes appends

    # ---- appending (request threads) ------------------------------------------------

    def append(self, line: bytes) -> None:
        """Append one row (a JSON object, without newline). Raises OSError when
        the disk refuses; the caller decides (the meter answers the client anyway)."""
        data = line + b"\n"
        with self.lock:
            if self.pid != os.getpid():  # first use, or a forked child: segments of our own
                self._reset()
            seg = self.segments[-1] if self.segments else self._open(0)
            if seg.size >= SEGMENT_BYTES:
                seg = self._open(seg.seq + 1)
            n = os.write(seg.fd, data)
            while n < len(data):  # a short write (a signal, a full disk): finish the line
                n += os.write(seg.fd, data[n:])
            seg.size += len(data)

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.nonce = secrets.token_hex(4)
        self.segments = []  # a parent's descriptors are the parent's; its locks are not ours

    def _open(self, seq: int) -> Segment:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"usage-{self.db}-{self.pid}-{self.nonce}-{seq:06d}.log"
        tmp = self.dir / f".{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours until this process ends
        path = self.dir / name
        os.rename(tmp, path)
        seg = Segment(seq, path, fd)
        self.segments.append(seg)
        return seg

    # ---- the writer's view of its own segments --------------------------------------

    def own(self) -> list[tuple[Path, int, bool]]:
        """(path, bytes appended, still taking appends) of each segment, oldest first."""
        with self.lock:
            if self.pid != os.getpid():
                return []
            last = len(self.segments) - 1
            return [(s.path, s.size, i == last) for i, s in enumerate(self.segments)]

    def retire(self, path: Path) -> None:
        """Delete a finished segment whose rows are all in the database: unlink
        while still holding its lock, then let the lock go with the descriptor."""
        with self.lock:
            for i, seg in enumerate(self.segments):
                if seg.path == path and i < len(self.segments) - 1:
                    os.unlink(seg.path)
                    os.close(seg.fd)
                    del self.segments[i]
                    return

    # ---- other processes' segments --------------------------------------------------

    def orphans(self) -> list[Path]:
        """Segments of this database that are not this process's, oldest first."""
        mine = {s.path for s in self.segments} if self.pid == os.getpid() else set()
        try:
            found = sorted(self.dir.glob(f"usage-{self.db}-*.log"))
        except OSError:
            return []
        return [p for p in found if p not in mine]


class Claim:
    """An orphan segment locked by this process while it is replayed."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def take(self) -> bool:
        """True when the segment's writer is gone and the segment is now ours."""
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # retired by its owner, or replayed by someone else, meanwhile
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            return False  # its writer is alive
        return True

    def done(self) -> None:
        """Every row is in the database: remove the segment, then unlock."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_lines(path: Path, offset: int, limit: int, max_bytes: int = 1024 * 1024) -> tuple[list[bytes], int]:
    """Complete lines from `offset` on (at most `limit`), and the offset after
    the last one returned. A line still being written (no newline yet) is left
    for the next read."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) == max_bytes:  # one line longer than max_bytes: not ours, skip it whole
            return [data], offset + len(data)
        return [], offset
    lines = data[:end].split(b"\n")
    if len(lines) > limit:
        lines = lines[:limit]
        used = sum(len(x) + 1 for x in lines)
    else:
        used = end + 1
    return lines, offset + used
