#!/usr/bin/env bash
# Run the test suite: venv, service checks, browser, then pytest with the given arguments.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/venv.sh

echo "==> checking PostgreSQL, Redis and RabbitMQ"
python3 scripts/check_services.py

if [[ "${PORTICO_SKIP_BROWSER_INSTALL:-}" == "1" ]]; then
    echo "==> PORTICO_SKIP_BROWSER_INSTALL=1: not checking for chromium"
elif command -v chromium >/dev/null 2>&1; then
    echo "==> chromium present: $(command -v chromium)"
else
    echo "==> installing Debian's chromium for the browser tests"
    if ! (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium); then
        echo "error: could not install chromium with apt-get (run as root, or set" \
            "PORTICO_SKIP_BROWSER_INSTALL=1 to skip this step)" >&2
        exit 1
    fi
fi

# promtool checks and unit-tests the alert rules in deploy/prometheus.
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "==> promtool present: $(command -v promtool)"
else
    echo "==> installing Debian's prometheus for promtool (the alert rule tests)"
    if ! (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus); then
        echo "error: could not install prometheus with apt-get (run as root)" >&2
        exit 1
    fi
fi

# Fixed on purpose: the suite must not pick up a developer's own database or key.
# pytest-django creates (and drops) test_portico on this server.
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/portico"
export DJANGO_DEBUG=1
export DJANGO_SECRET_KEY="portico-test-suite-secret-key-not-for-production"

# Django connects to the configured database before it creates test_portico beside it.
.venv/bin/python - <<'PY'
import psycopg
from psycopg import sql

with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'portico'").fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("portico")))
PY

echo "==> .venv/bin/python -m pytest${*:+ $(printf '%q ' "$@")}  (PostgreSQL)"
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ "$status" -eq 5 ]]; then
    echo "error: no tests ran (pytest exit code 5); an empty run is a failure" >&2
    exit 1
fi
[[ "$status" -eq 0 ]] || exit "$status"

# The embedded default stores jobs in SQLite: the database adapter's contract, store and
# metrics tests run again there. Skipped only when the caller picked tests of their own.
if [[ $# -eq 0 ]]; then
    echo "==> the database adapter again, on the embedded SQLite default"
    env -u DATABASE_URL .venv/bin/python -m pytest -p no:cacheprovider \
        tests/contract tests/integration/test_database_store.py tests/integration/test_metrics.py \
        -m "not postgres" -k "sqlite or test_database_store or test_metrics" || status=$?
    if [[ "$status" -eq 5 ]]; then
        echo "error: the SQLite pass ran no tests" >&2
        exit 1
    fi
fi
exit "$status"
