"""Log lines about failures that carry no data (P23): an exception's type and
where it was raised, never its message.

An exception's text can quote what it was about: psycopg's IntegrityError
carries "DETAIL: Failing row contains (...)", a JSON error quotes the body, a
KeyError names the key. `install()` makes that impossible for every logger in
the process, ours and the libraries': a record made with exc_info (a
`log.exception()` anywhere) is rewritten at creation into its message plus
"<Type> at file:line func <- ...", and the traceback text is dropped.
"""
from __future__ import annotations

import logging
import traceback

_installed = False


def where(exc: BaseException) -> str:
    """The stack frames of `exc`, innermost first, with no values."""
    return " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                       for f in reversed(traceback.extract_tb(exc.__traceback__)))


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__} at {where(exc) or '?'}"


def install() -> None:
    """Once per process: every record with exception info keeps only its class and frames."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(name, level, fn, lno, msg, args, exc_info, func=None, sinfo=None, **kw):
        if exc_info and exc_info is not True and exc_info[1] is not None:
            detail = describe(exc_info[1]).replace("%", "%%")
            msg = f"{msg} [{detail}]" if args else f"{msg} [{describe(exc_info[1])}]"
            exc_info = None
        return make(name, level, fn, lno, msg, args, exc_info, func, sinfo, **kw)

    logging.setLogRecordFactory(factory)


class AccessFormatter(logging.Formatter):
    """uvicorn's access line without the path or query: `[time] addr "METHOD" status HTTP/x`.
    A path can be a secret (/reset/<token>, an export's download link) or client
    text (/v1/models/<anything>), so it never reaches the log (P23)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            client_addr, method, _path, version, status = record.args  # type: ignore[misc]
        except (TypeError, ValueError):
            return "[access] (unrecognised record)"
        return f"[{self.formatTime(record)}] {client_addr} \"{method}\" {status} HTTP/{version}"
