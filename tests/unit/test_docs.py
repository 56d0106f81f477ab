"""The README and docs/ stay true to the code: every variable documented, every link resolving."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SETTINGS = ROOT / "portico_site" / "settings.py"
# Where an environment variable may be documented.
VARIABLE_PAGES = ("configuration.md", "deploying.md")

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]*)(?:\s+\"[^\"]*\")?\)")
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
BARE_URL = re.compile(r"https?://", re.IGNORECASE)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
CODE_NAME = re.compile(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b")
SHELL_READ = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?=[:}=+?-])|\$([A-Z][A-Z0-9_]*)\b")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def prose_with_code(text: str) -> str:
    """The text outside fenced code blocks, inline code spans kept."""
    return FENCE.sub("", text)


def code(text: str) -> str:
    """Everything inside fenced code blocks and inline code spans."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    spans = INLINE_CODE.findall(FENCE.sub("", text))
    return "\n".join(blocks + spans)


def slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    body = prose(text)
    return LINK.findall(body) + AUTOLINK.findall(body)


def broken_links(page: Path, text: str) -> list[str]:
    """What is wrong with the links of one page: outside targets, missing files, missing anchors."""
    problems = []
    for target in links(text):
        if not target:
            problems.append("an empty link")
            continue
        if SCHEME.match(target):
            problems.append(f"{target}: a link outside the repository")
            continue
        path_part, _, anchor = target.partition("#")
        if not path_part:
            if anchor not in anchors(text):
                problems.append(f"{target}: no heading with that anchor")
            continue
        destination = (page.parent / path_part).resolve()
        if not destination.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
            continue
        if not destination.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor:
            if destination.suffix != ".md":
                problems.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(destination.read_text()):
                problems.append(f"{target}: no heading with that anchor")
    if BARE_URL.search(prose(text)):
        problems.append("a bare http(s) address in the text")
    return problems


def _reads_environment(node: ast.AST) -> str | None:
    """The variable name when ``node`` reads one literally: os.environ.get/getenv/[...]/in."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        dotted = ast.unparse(func)
        if dotted in ("os.environ.get", "os.getenv", "getenv", "environ.get"):
            return node.args[0].value if isinstance(node.args[0].value, str) else None
    if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) in ("os.environ", "environ")
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
        return node.slice.value
    if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str) and len(node.ops) == 1
            and isinstance(node.ops[0], ast.In)
            and ast.unparse(node.comparators[0]) in ("os.environ", "environ")):
        return node.left.value
    return None


def _reads_environment_by_parameter(function: ast.FunctionDef) -> bool:
    """True for a helper like ``_env_flag(name)``: reads the variable its first parameter names."""
    if not function.args.args:
        return False
    parameter = function.args.args[0].arg
    for node in ast.walk(function):
        if (isinstance(node, ast.Call)
                and ast.unparse(node.func) in ("os.environ.get", "os.getenv", "getenv", "environ.get")
                and node.args and ast.unparse(node.args[0]) == parameter):
            return True
        if (isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ")
                and ast.unparse(node.slice) == parameter):
            return True
    return False


def python_variables(path: Path) -> set[str]:
    """Every environment variable a module reads, directly or through a helper of its own
    (a module-level function reading the variable its first parameter names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    helpers = {node.name for node in tree.body
               if isinstance(node, ast.FunctionDef) and _reads_environment_by_parameter(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        name = _reads_environment(node)
        if name is None and (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                             and node.func.id in helpers and node.args
                             and isinstance(node.args[0], ast.Constant)
                             and isinstance(node.args[0].value, str)):
            name = node.args[0].value
        if name is not None:
            names.add(name)
    return names


def shell_variables(path: Path) -> set[str]:
    """Upper-case variables a shell script or Procfile reads (``${NAME:-…}``, ``$NAME``)."""
    text = "\n".join(line for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("#") or path.name == "Procfile")
    names = {a or b for a, b in SHELL_READ.findall(text)}
    # Bash's own variables, not the environment's.
    return names - {"BASH_SOURCE", "SECONDS", "LINENO", "RANDOM", "PWD", "HOME", "PATH"}


def python_files() -> list[Path]:
    """The repository's own Python files (no virtual environments, caches or collected files)."""
    skipped = {".venv", "staticfiles", "node_modules", "__pycache__"}
    return sorted(path for path in ROOT.rglob("*.py")
                  if not skipped & set(path.relative_to(ROOT).parts)
                  and not any(part.startswith(".") for part in path.relative_to(ROOT).parts))


def read_variables() -> dict[str, set[str]]:
    """Environment variables by the file that reads them: settings.py and gunicorn.conf.py
    first among every Python file, the shell scripts, and the Procfile."""
    found = {str(path.relative_to(ROOT)): python_variables(path) for path in python_files()}
    for script in sorted([*(ROOT / "scripts").glob("*.sh"), *(ROOT / "bench").glob("*.sh")]):
        found[str(script.relative_to(ROOT))] = shell_variables(script)
    procfile = ROOT / "Procfile"
    if procfile.exists():
        found["Procfile"] = shell_variables(procfile)
    return found


def documented_variables() -> set[str]:
    names: set[str] = set()
    for name in VARIABLE_PAGES:
        page = DOCS / name
        if page.exists():
            names |= set(CODE_NAME.findall(code(page.read_text())))
    return names


def _constant(node: ast.expr) -> object:
    """A literal, or arithmetic on numbers (``7 * 24 * 3600``), computed without eval."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add | ast.Sub):
        left, right = _constant(node.left), _constant(node.right)
        assert isinstance(left, int | float) and isinstance(right, int | float)
        if isinstance(node.op, ast.Mult):
            return left * right
        return left + right if isinstance(node.op, ast.Add) else left - right
    return ast.literal_eval(node)


def setting_defaults() -> dict[str, object]:
    """jobs/conf.py's DEFAULTS, evaluated from its source (constant expressions only)."""
    tree = ast.parse((ROOT / "jobs" / "conf.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "DEFAULTS":
            assert isinstance(node.value, ast.Dict)
            return {ast.literal_eval(k): _constant(v)
                    for k, v in zip(node.value.keys, node.value.values, strict=True)}
    raise AssertionError("jobs/conf.py defines no DEFAULTS")


def renderings(value: object) -> set[str]:
    """How a default may be written in a docs table."""
    if isinstance(value, bool) or value is None:
        return {repr(value)}
    if isinstance(value, float) and value.is_integer():
        return {repr(value), str(int(value))}
    if isinstance(value, int | float):
        return {repr(value)}
    return {json.dumps(value), repr(value)}


def settings_rows(text: str) -> list[tuple[list[str], list[str]]]:
    """(setting names, backticked defaults) of every row of a "| Setting | Default |" table."""
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| Setting | Default"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[1])))
    return rows


# -- the tests --------------------------------------------------------------------------------


def test_every_environment_variable_the_code_reads_is_documented():
    found = read_variables()
    # The scanner must see the direct reads and the ones through settings' own helpers.
    assert {"DATABASE_URL", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS"} <= (
        found["portico_site/settings.py"])
    assert "PORT" in found["scripts/run.sh"]
    assert "PORTICO_TEST_DATABASE_URL" in found["tests/integration/conftest.py"]
    documented = documented_variables()
    missing = {f"{name} (read in {where})" for where, names in found.items()
               for name in names if name not in documented}
    assert not missing, f"not in docs/{' or docs/'.join(VARIABLE_PAGES)}: {sorted(missing)}"


def test_every_portico_setting_is_in_the_configuration_table_with_its_default():
    defaults = setting_defaults()
    table = settings_rows((DOCS / "configuration.md").read_text())
    listed = {name for names, _ in table for name in names}
    assert set(defaults) <= listed, f"missing from docs/configuration.md: {sorted(set(defaults) - listed)}"


def test_every_default_a_docs_settings_table_states_is_the_code_s():
    defaults = setting_defaults()
    wrong = []
    checked = 0
    for page in pages():
        for names, values in settings_rows(page.read_text()):
            if not values:
                continue  # a default said in words ("unset", "from the environment")
            for name, value in zip(names, values, strict=False):
                if name in defaults:
                    checked += 1
                    if value not in renderings(defaults[name]):
                        wrong.append(f"{page.relative_to(ROOT)}: {name} = {value}, "
                                     f"the code says {defaults[name]!r}")
    assert checked >= len(defaults)
    assert not wrong, wrong


def test_every_relative_link_and_anchor_resolves_and_none_leaves_the_repository():
    problems = {str(page.relative_to(ROOT)): broken_links(page, page.read_text()) for page in pages()}
    assert not {page: found for page, found in problems.items() if found}
    assert sum(len(links(page.read_text())) for page in pages()) > 20


def test_the_readme_stays_a_first_page_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160, "the reference belongs in docs/, not the README"
    assert "```\nmake run\nmake test\n```" in readme


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(readme.read_text())}
    unlinked = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert list(DOCS.glob("*.md")), "docs/ has no pages"
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_architecture_layout_names_every_module_and_package_of_the_tree():
    layout = prose_with_code((DOCS / "architecture.md").read_text())
    spans = {span.strip("`") for span in INLINE_CODE.findall(layout)}
    required = []
    for top in ("portico", "jobs"):
        for entry in sorted((ROOT / top).iterdir()):
            if entry.name.startswith(("_", ".")) or entry.suffix not in ("", ".py"):
                continue
            required.append(f"{top}/{entry.name}" + ("/" if entry.is_dir() else ""))
    tracked_dirs = ("portico_site", "templates", "static", "tests", "deploy", "bench", "scripts")
    required += [f"{name}/" for name in tracked_dirs if (ROOT / name).is_dir()]
    def named(path: str) -> bool:
        return any(span == path or (path.endswith("/") and span.startswith(path)) for span in spans)

    missing = [path for path in required if not named(path)]
    assert "jobs/queue.py" in required and "jobs/views/" in required
    assert not missing, f"docs/architecture.md's layout does not name: {missing}"


def test_no_benchmark_figures_outside_bench_results():
    # Rates, latencies and ratios belong in bench/RESULTS.md, measured with their date.
    figure = re.compile(r"\d[\d,.]*\s*(jobs/s|/s\b|ms\b|µs|×)")
    found = {str(page.relative_to(ROOT)): [m.group(0) for m in figure.finditer(prose(page.read_text()))]
             for page in pages()}
    assert not {page: hits for page, hits in found.items() if hits}


def test_the_link_checker_finds_what_is_wrong(tmp_path):
    page = DOCS / "example.md"  # not written: the checker reads only the text given
    text = ("# Title\n\n## A section: `code`\n\n[ok](#a-section-code) [ok](../README.md) "
            "[gone](missing.md) [anchor](#nowhere) [out](https://example.org/) "
            "<mailto:someone@example.org> [up](../../etc/passwd)\n\n"
            "```\nhttps://in.a.code.block/ is fine [x](nothing.md)\n```\n"
            "plain http://example.org/ text\n")
    problems = broken_links(page, text)
    assert problems == [
        "missing.md: no such file",
        "#nowhere: no heading with that anchor",
        "https://example.org/: a link outside the repository",
        "../../etc/passwd: outside the repository",
        "mailto:someone@example.org: a link outside the repository",
        "a bare http(s) address in the text",
    ]


def test_the_variable_scanner_sees_every_way_of_reading_the_environment(tmp_path):
    module = tmp_path / "settings.py"
    module.write_text(
        "import os\n"
        "def _flag(name):\n    return os.environ.get(name, '') == '1'\n"
        "A = os.environ.get('ONE')\nB = os.getenv('TWO', 'x')\nC = os.environ['THREE']\n"
        "D = 'FOUR' in os.environ\nE = _flag('FIVE')\nos.environ['NOT_READ'] = '1'\n"
        "os.environ.setdefault('NOT_READ_EITHER', '1')\n"
    )
    assert python_variables(module) == {"ONE", "TWO", "THREE", "FOUR", "FIVE"}
    script = tmp_path / "run.sh"
    script.write_text('port="${PORT:-8000}"\ncd "$(dirname "${BASH_SOURCE[0]}")"\n'
                      'echo "$HOST_NAME ${lower}"\n# ${COMMENTED:-x}\n')
    assert shell_variables(script) == {"PORT", "HOST_NAME"}
