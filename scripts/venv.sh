#!/usr/bin/env bash
# Create .venv and install requirements.txt into it, only when something changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
stamp="$venv/.requirements.stamp"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "==> creating $venv"
    python3 -m venv "$venv"
fi

# The stamp is a copy of the requirements last installed: an edit, a checkout or
# a merge that changes the file triggers a reinstall; an unchanged file does not.
if [[ -f "$stamp" ]] && cmp -s requirements.txt "$stamp"; then
    echo "==> requirements unchanged since last install; skipping pip"
else
    echo "==> installing requirements.txt into $venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -r requirements.txt
    cp requirements.txt "$stamp"
fi
