#!/usr/bin/env bash
# Run the demo on the embedded SQLite default: migrate, demo login, demo data, worker, live traffic, web server.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

port="${PORT:-8000}"
if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || (( 10#$port < 1 || 10#$port > 65535 )); then
    echo "error: PORT must be a port number (1-65535), not '$port'" >&2
    exit 2
fi
port=$((10#$port))
# The login's password and the worker's and generator's logs; .demo/ is gitignored.
demo_dir="${PORTICO_DEMO_DIR:-.demo}"
queues="default,emails,reports,payments,webhooks"
py=.venv/bin/python

bash scripts/venv.sh

# Always the embedded SQLite file (PORTICO_SQLITE_PATH, default db.sqlite3): the demo
# empties the job store, which must never be a database DATABASE_URL points at. No
# Celery either: the built-in worker runs the jobs.
unset DATABASE_URL PORTICO_DISPATCH
# DEBUG: the development server serves the static files (htmx, css) only in debug, and
# debug needs no DJANGO_SECRET_KEY. PORTICO_DEMO=1 registers the demo jobs' handlers.
export DJANGO_DEBUG=1 PORTICO_DEMO=1 PYTHONUNBUFFERED=1
mkdir -p "$demo_dir"

pids=()
names=()

# Stop what was started: SIGTERM first (the worker finishes or releases its jobs in flight
# within PORTICO_GRACE_PERIOD), SIGKILL for anything still there after that.
stop_all() {
    local pid i deadline
    for i in "${!pids[@]}"; do
        pid="${pids[$i]}"
        # Each runs in a process group of its own (set -m): signal the whole group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 40))
    for i in "${!pids[@]}"; do
        pid="${pids[$i]}"
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "==> ${names[$i]} did not stop in time; killing it" >&2
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}

on_signal() {
    trap '' INT TERM  # a second Ctrl-C must not cut the graceful stop short
    echo
    echo "==> $1 received: stopping the web server, the traffic generator and the worker"
    stop_all
    echo "==> demo stopped"
    exit 0
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
# Whatever ends the script (an error under set -e included) takes its children with it.
trap 'stop_all' EXIT

start() {
    local name="$1"
    shift
    set -m  # the child gets its own process group: Ctrl-C reaches this script only
    "$@" </dev/null &
    set +m
    pids+=("$!")
    names+=("$name")
}

echo "==> migrating the SQLite database"
"$py" manage.py migrate --noinput
echo "==> seeding the demo queues (the job store is emptied first)"
"$py" manage.py portico_demo --reset --login-file "$demo_dir/login"
password="$(<"$demo_dir/login")"

echo "==> starting the worker (log: $demo_dir/worker.log) and the traffic generator (log: $demo_dir/live.log)"
start "the worker" "$py" manage.py portico_worker --queues "$queues" >"$demo_dir/worker.log" 2>&1
start "the traffic generator" "$py" manage.py portico_demo --live >"$demo_dir/live.log" 2>&1
# No autoreloader: it would run the server in a second process that outlives a stop.
start "the web server" "$py" manage.py runserver "127.0.0.1:$port" --noreload

# The address is printed once the server answers, not buried under its start-up lines.
server="${pids[2]}"
probe='import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1).close()
except urllib.error.HTTPError:
    pass'
deadline=$((SECONDS + 60))
while kill -0 "$server" 2>/dev/null && (( SECONDS < deadline )); do
    "$py" -c "$probe" "http://127.0.0.1:$port/accounts/login/" 2>/dev/null && break
    sleep 0.25
done

kill -0 "$server" 2>/dev/null && cat <<EOF

==> Portico Jobs demo: http://127.0.0.1:$port/
    log in as:  demo / $password   (password kept in $demo_dir/login)
    admin:      http://127.0.0.1:$port/admin/
    logs:       tail -f $demo_dir/worker.log $demo_dir/live.log
    stop:       Ctrl-C (stops the server, the traffic generator and the worker)

EOF

# Returns when a child exits by itself, or at once when a signal arrives (then the trap runs).
status=0
wait -n "${pids[@]}" || status=$?
for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        echo "error: ${names[$i]} exited (status $status); stopping the rest" >&2
    fi
done
stop_all
exit 1
