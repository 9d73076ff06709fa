#!/usr/bin/env bash
# Installs what the test suite needs from Debian: Chromium for Playwright,
# PostgreSQL and Redis servers (the suite starts private instances of each).
# Does nothing when they are already there.
set -euo pipefail

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)

if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

echo "system packages: installing ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The suite never uses the distribution's own database service: it runs a
# private cluster on a free port.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" fonts-liberation >/dev/null
echo "system packages: done"
