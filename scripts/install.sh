#!/usr/bin/env bash
# Installs what mlflow-gcp and its local emulator need: PostgreSQL server binaries (for emulated Cloud SQL)
# and a virtualenv at .venv with the package and its dev/server extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if ! have_postgres; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL server binaries are needed for the emulated Cloud SQL: install the 'postgresql' package." >&2
    exit 1
  fi
fi
# Cloud SQL's PostgreSQL databases use the en_US.UTF8 collation; the emulator's servers need that locale on the host
# (without it they fall back to C.UTF-8 and report so, which the tool rightly sees as a different collation).
have_locale() { locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; }
if ! have_locale; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq locales >/dev/null
    $SUDO sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
    $SUDO locale-gen >/dev/null
  else
    echo "The en_US.UTF-8 locale is needed for the emulated Cloud SQL: install and generate it (locale-gen)." >&2
    exit 1
  fi
fi
# The browser tests (the MLflow UI behind Identity-Aware Proxy) drive Debian's chromium through playwright.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "The browser tests need Chromium: install the 'chromium' package." >&2
    exit 1
  fi
fi
# The emulator runs PostgreSQL as the unprivileged 'postgres' user when started as root (initdb refuses root).
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[dev]'
