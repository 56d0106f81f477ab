"""The core under portico/ imports only the standard library: Django, Celery and friends stay outside."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PORTICO = Path(__file__).resolve().parents[2] / "portico"
FORBIDDEN = ("django", "celery", "prometheus_client", "psycopg")


def portico_files() -> list[Path]:
    return sorted(PORTICO.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PORTICO.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_has_python_files_to_check() -> None:
    files = portico_files()
    assert PORTICO / "ports" / "job.py" in files
    assert PORTICO / "kits" / "job" / "worker.py" in files
    assert len(files) >= 10


@pytest.mark.parametrize("path", portico_files(), ids=lambda p: str(p.relative_to(PORTICO.parent)))
def test_every_core_module_imports_only_the_standard_library_or_portico(path: Path) -> None:
    outside = sorted(
        name
        for name in imported_top_level_names(path)
        if name != "portico" and name not in sys.stdlib_module_names
    )
    assert not outside, (
        f"{path.relative_to(PORTICO.parent)} imports {', '.join(outside)}, "
        "which is not in the standard library; portico/ must stay stdlib-only"
    )


def test_the_import_check_would_catch_a_third_party_import(tmp_path: Path) -> None:
    sample = tmp_path / "leaky.py"
    sample.write_text(
        "import os\nfrom django.db import models\nimport celery.app\nfrom . import sibling\n",
        encoding="utf-8",
    )
    assert imported_top_level_names(sample) == {"os", "django", "celery"}


def test_importing_every_core_module_loads_no_django_celery_prometheus_or_psycopg() -> None:
    modules = [module_name(path) for path in portico_files()]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PORTICO.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    leaked = json.loads(completed.stdout.strip().splitlines()[-1])
    assert leaked == [], f"importing portico loaded {', '.join(leaked)}"
