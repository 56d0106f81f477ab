#!/usr/bin/env bash
# Create bench/.venv: the project's requirements plus the peer job systems the benchmark
# compares against. The peers are benchmark-only; they never go into requirements.txt.
# Idempotent: a stamp records what was installed, and nothing is reinstalled unless the
# project's requirements or the peer pins below change.
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
venv="$bench_dir/.venv"
stamp="$venv/.bench-env.stamp"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

# Peer pins (versions current when the benchmark was written).
peers=(
    "pgqueuer[asyncpg]==1.6.0"
    "asyncpg==0.32.0"
    "procrastinate==3.10.0"
    "celery[redis]==5.7.0"
    "psycopg[binary]==3.3.9"
)

want="$( { printf '%s\n' "${peers[@]}"; [[ -f "$repo_root/requirements.txt" ]] && cat "$repo_root/requirements.txt"; } | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "==> creating $venv"
    "$python" -m venv "$venv"
fi

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]]; then
    echo "==> bench environment up to date; skipping pip"
    exit 0
fi

args=()
if [[ -f "$repo_root/requirements.txt" ]]; then
    args+=(-r "$repo_root/requirements.txt")
fi
echo "==> installing project requirements and peers into $venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet "${args[@]}" "${peers[@]}"
echo "$want" > "$stamp"
echo "==> done"
