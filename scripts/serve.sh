#!/usr/bin/env bash
# Start the portal and the relay exactly as `make run` does (the benchmark uses
# this too): apply migrations, publish the privacy policy, then serve asgi:app
# (the relay's /v1/ on the event loop, the portal on PORTAL_THREADS threads per
# worker) on one port with WORKERS worker processes; a worker that dies is
# replaced.
#   SERVER=uvicorn (default: uvloop + httptools; chosen by bench/relay_overhead.py,
#          see README "Speed") | granian (the same ASGI app) | gunicorn (WSGI threads,
#          the blocking relay; THREADS per worker, default 64)
#   BIND=127.0.0.1:8000    WORKERS=2    ACCESS_LOG=1: a line per request, never a path
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
export FLASK_APP=wsgi
BIND=${BIND:-127.0.0.1:8000}
HOST=${BIND%:*}
PORT=${BIND##*:}
"$BIN/flask" db upgrade
"$BIN/flask" policy sync
# The access log (ACCESS_LOG=1) never has a path or query string: paths carry
# link tokens (/reset/<token>, export downloads) and model names (P23).
GRANIAN_FMT='[%(time)s] %(addr)s "%(method)s" %(status)d %(dt_ms).3f'
GUNICORN_FMT='%(h)s %(t)s "%(m)s" %(s)s %(M)s'
case "${SERVER:-uvicorn}" in
  granian)
    exec "$BIN/granian" --interface asgi --loop uvloop --host "$HOST" --port "$PORT" \
      --workers "${WORKERS:-2}" \
      --respawn-failed-workers --respawn-interval "${RESPAWN_INTERVAL:-1}" \
      --backlog 2048 ${ACCESS_LOG:+--access-log --access-log-fmt "$GRANIAN_FMT"} asgi:app ;;
  uvicorn)
    # No proxy headers: the app trusts X-Forwarded-* only as TRUSTED_PROXIES says.
    ACCESS=(--no-access-log)
    if [ -n "${ACCESS_LOG:-}" ]; then ACCESS=(--log-config scripts/uvicorn-access-log.json); fi
    exec "$BIN/uvicorn" --host "$HOST" --port "$PORT" --workers "${WORKERS:-2}" --loop uvloop --http httptools \
      --backlog 2048 --no-proxy-headers --no-server-header --timeout-keep-alive 30 "${ACCESS[@]}" asgi:app ;;
  gunicorn)
    exec "$BIN/gunicorn" --bind "$BIND" --workers "${WORKERS:-2}" --threads "${THREADS:-64}" \
      --worker-class gthread --backlog 2048 ${ACCESS_LOG:+--access-logfile - --access-logformat "$GUNICORN_FMT"} \
      wsgi:app ;;
  *)
    echo "SERVER must be granian, uvicorn or gunicorn" >&2; exit 2 ;;
esac
