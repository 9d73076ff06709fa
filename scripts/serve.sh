#!/usr/bin/env bash
# Start the portal and the relay exactly as `make run` does (the benchmark uses
# this too): apply migrations, publish the privacy policy, then serve.
#   SERVER=granian (default: ASGI, the relay's /v1/ on the event loop, the portal on
#   PORTAL_THREADS threads per worker) | gunicorn (WSGI threads, the blocking relay)
#   BIND=127.0.0.1:8000    WORKERS=2    THREADS: gunicorn's threads per worker (default 64)
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
case "${SERVER:-granian}" in
  granian)
    exec "$BIN/granian" --interface asgi --loop uvloop --host "$HOST" --port "$PORT" \
      --workers "${WORKERS:-2}" \
      --respawn-failed-workers --respawn-interval "${RESPAWN_INTERVAL:-1}" \
      --backlog 2048 ${ACCESS_LOG:+--access-log --access-log-fmt "$GRANIAN_FMT"} asgi:app ;;
  gunicorn)
    exec "$BIN/gunicorn" --bind "$BIND" --workers "${WORKERS:-2}" --threads "${THREADS:-64}" \
      --worker-class gthread --backlog 2048 ${ACCESS_LOG:+--access-logfile - --access-logformat "$GUNICORN_FMT"} \
      wsgi:app ;;
  *)
    echo "SERVER must be granian or gunicorn" >&2; exit 2 ;;
esac
