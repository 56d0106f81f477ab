"""deploy/: the Prometheus alert rules, their promtool unit tests, the example config and the dashboard."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ALERT_NAMES = {
    "PorticoQueueBacklog",
    "PorticoDeadLetterJobs",
    "PorticoHighFailureRate",
    "PorticoNoWorkers",
    "PorticoQueueLatencyHigh",
    "PorticoQueueWaitP95High",
    "PorticoMetricsDown",
    "PorticoMetricsAbsent",
}

# Names in PromQL that are not metrics: aggregation modifiers, set operators, literals.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan",
}
# Prometheus' own series for every target.
SCRAPE_SERIES = {"up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed; it comes with Debian's prometheus package: "
            "apt-get install -y prometheus (scripts/test.sh installs it when missing)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def deploy(project_root: Path) -> Path:
    return project_root / "deploy"


@pytest.fixture(scope="module")
def dashboard(deploy: Path) -> dict[str, Any]:
    return json.loads((deploy / "grafana" / "portico.json").read_text())


def run_promtool(promtool: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60,
    )


def assert_promtool_passed(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}:\n{output}"
    )
    return output


def exported_series() -> set[str]:
    """Every series name /metrics can export, from the families jobs.metrics declares."""
    from jobs.metrics import FAMILIES

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {name + suffix for name, (kind, _) in FAMILIES.items() for suffix in suffixes[kind]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed in strings)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, $queue included
    expr = re.sub(r"#[^\n]*", "", expr)  # comments
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    # Label lists, so that `sum by (queue) (x)` reads as the call `sum (x)`.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function call
        if match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def alert_expressions(text: str) -> dict[str, str]:
    """Each alert's expr in alerts.yml, read line by line (the venv has no YAML parser)."""
    lines = text.splitlines()
    expressions: dict[str, str] = {}
    alert = None
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if found := re.match(r"\s*- alert:\s*(\S+)\s*$", line):
            alert = found.group(1)
        elif found := re.match(r"(\s*)expr:\s*(.*?)\s*$", line):
            assert alert is not None and alert not in expressions, f"stray expr: {line!r}"
            indent, value = len(found.group(1)), found.group(2)
            if value in {"|", "|-", ">", ">-"}:
                body = []
                while index < len(lines) and (
                    not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
                ):
                    body.append(lines[index].strip())
                    index += 1
                value = "\n".join(body).strip()
            expressions[alert] = value
    return expressions


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        f"panel {panel['id']} ({panel['title']}) {target['refId']}": target["expr"]
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    }


def test_the_alert_rules_pass_promtool_check(promtool, deploy):
    output = assert_promtool_passed(run_promtool(promtool, "check", "rules", "alerts.yml",
                                                 cwd=deploy / "prometheus"))
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output, output


def test_the_alert_unit_tests_pass(promtool, deploy):
    output = assert_promtool_passed(run_promtool(promtool, "test", "rules", "alerts_test.yml",
                                                 cwd=deploy / "prometheus"))
    assert "SUCCESS" in output, output


def test_the_example_config_loads_the_alert_rules_and_passes_promtool_check(promtool, project_root):
    # rule_files are resolved against the config file's folder, whatever the working directory.
    output = assert_promtool_passed(
        run_promtool(promtool, "check", "config", "deploy/prometheus/prometheus.yml", cwd=project_root))
    assert "SUCCESS: 1 rule files found" in output, output
    assert f"deploy/prometheus/alerts.yml\n  SUCCESS: {len(ALERT_NAMES)} rules found" in output, output


def test_the_example_config_scrapes_metrics_as_job_portico_every_15_seconds(deploy):
    config = (deploy / "prometheus" / "prometheus.yml").read_text()
    for line in ("- job_name: portico", "metrics_path: /metrics", "scrape_interval: 15s",
                 "rule_files:\n  - alerts.yml", "credentials_file:"):
        assert line in config


def test_every_alert_is_tested_both_firing_and_silent(deploy):
    tests = (deploy / "prometheus" / "alerts_test.yml").read_text()
    silent = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]", tests))
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", tests))
    assert silent == ALERT_NAMES
    assert firing == ALERT_NAMES


def test_every_alert_has_a_severity_a_summary_and_a_description(deploy):
    text = (deploy / "prometheus" / "alerts.yml").read_text()
    assert set(alert_expressions(text)) == ALERT_NAMES
    rules = re.split(r"\n\s+- alert: ", text)[1:]
    assert len(rules) == len(ALERT_NAMES)
    for rule in rules:
        name = rule.split()[0]
        assert re.search(r"\n\s+severity: (warning|critical)\n", rule), name
        assert "summary:" in rule and "description:" in rule, name
        if name.startswith("PorticoMetrics"):
            continue  # about a scrape target, not a queue
        assert "{{ $labels.queue }}" in rule and "$value" in rule, name


# Each change moves one threshold (or drops a guard) by the smallest step: the unit tests
# must notice every one, or they do not pin the boundary they claim to.
MUTATIONS = {
    "backlog fires at 1000": ('portico_jobs{status="pending"}) > 1000', 'portico_jobs{status="pending"}) > 999'),
    "backlog needs 1002": ('portico_jobs{status="pending"}) > 1000', 'portico_jobs{status="pending"}) > 1001'),
    "backlog without for": ("> 1000\n        for: 10m", "> 1000\n        for: 0m"),
    "failure ratio at 5%": ("(portico_queue_failure_ratio) > 0.05", "(portico_queue_failure_ratio) > 0.04"),
    "failure ratio at 100 processed": ('dead_letter"})) > 100', 'dead_letter"})) > 99'),
    "dead letter at 1": ('portico_jobs{status="dead_letter"}) > 0', 'portico_jobs{status="dead_letter"}) > 1'),
    "zero workers count as workers": ("(max by (queue) (portico_workers) > 0)",
                                      "(max by (queue) (portico_workers) >= 0)"),
    "retrying jobs are not waiting": ('{status=~"pending|retrying"}', '{status=~"pending"}'),
    "oldest age at 300 s": ("(portico_queue_oldest_job_age_seconds) > 300",
                            "(portico_queue_oldest_job_age_seconds) > 299"),
    "p95 wait at 60 s": ("[10m]))) > 300", "[10m]))) > 59"),
    "metrics down on any job": ('up{job=~"portico.*"} == 0', "up == 0"),
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_the_alert_unit_tests_fail_when_a_threshold_moves(promtool, deploy, tmp_path, mutation):
    old, new = MUTATIONS[mutation]
    rules = (deploy / "prometheus" / "alerts.yml").read_text()
    assert rules.count(old) == 1, f"{old!r} is not in alerts.yml exactly once"
    (tmp_path / "alerts.yml").write_text(rules.replace(old, new))
    shutil.copy(deploy / "prometheus" / "alerts_test.yml", tmp_path)
    assert_promtool_passed(run_promtool(promtool, "check", "rules", "alerts.yml", cwd=tmp_path))
    result = run_promtool(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests still pass with {new!r}:\n{result.stdout}"
    assert "FAILED" in result.stdout + result.stderr


def test_the_metric_name_check_sees_metrics_and_nothing_else():
    expr = ('histogram_quantile(0.95, sum by (le, queue) (rate(portico_job_wait_seconds_bucket'
            '{queue=~"$queue", status!="x y"}[5m] offset 1h))) > 3e2 '
            'and on (queue) portico_jobs_lost_total unless ignoring(status) group_left up')
    assert metric_names(expr) == {"portico_job_wait_seconds_bucket", "portico_jobs_lost_total", "up"}
    assert "portico_jobs_lost_total" not in exported_series()


def test_the_alert_rules_use_only_exported_metrics(deploy):
    expressions = alert_expressions((deploy / "prometheus" / "alerts.yml").read_text())
    allowed = exported_series() | SCRAPE_SERIES
    used = set()
    for alert, expr in expressions.items():
        names = metric_names(expr)
        assert names, f"{alert}: no metric found in {expr!r}"
        assert names <= allowed, f"{alert} uses {sorted(names - allowed)}, not exported by jobs.metrics"
        used |= names
    assert {"portico_jobs", "portico_workers", "up"} <= used


def test_the_dashboard_uses_only_exported_metrics_and_shows_every_family(dashboard):
    from jobs.metrics import FAMILIES

    allowed = exported_series() | SCRAPE_SERIES
    used = set()
    for where, expr in dashboard_expressions(dashboard).items():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= allowed, f"{where} uses {sorted(names - allowed)}, not exported by jobs.metrics"
        used |= names
    shown = {family for family in FAMILIES if any(name.startswith(family) for name in used)}
    assert shown == set(FAMILIES)


def test_every_dashboard_query_of_a_queue_metric_follows_the_queue_variable(dashboard):
    for where, expr in dashboard_expressions(dashboard).items():
        for selected in re.finditer(r"\b(portico_\w+)(\{[^}]*\})?", expr):
            if selected.group(1) == "portico_scrape_duration_seconds":
                continue  # one per target, no queue label
            assert 'queue=~"$queue"' in (selected.group(2) or ""), f"{where}: {expr}"


def test_the_dashboard_queries_are_valid_promql(promtool, dashboard, tmp_path):
    rules = []
    for index, expr in enumerate(dashboard_expressions(dashboard).values()):
        concrete = expr.replace("$queue", ".*")
        assert "$" not in concrete, f"an unexpected Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": concrete})
    # JSON is YAML, which promtool reads.
    (tmp_path / "dashboard_rules.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = assert_promtool_passed(run_promtool(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path))
    assert f"SUCCESS: {len(rules)} rules found" in output, output


def test_the_dashboard_panels_have_unique_ids_and_do_not_overlap(dashboard):
    assert dashboard["schemaVersion"] >= 39
    panels = dashboard_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    boxes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for title, other in boxes:
            apart = (grid["x"] + grid["w"] <= other["x"] or other["x"] + other["w"] <= grid["x"]
                     or grid["y"] + grid["h"] <= other["y"] or other["y"] + other["h"] <= grid["y"])
            assert apart, f"{panel['title']!r} overlaps {title!r}"
        boxes.append((panel["title"], grid))


def test_the_dashboard_picks_its_prometheus_and_queues_from_variables(dashboard):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queue = variables["queue"]
    query = queue["query"]["query"] if isinstance(queue["query"], dict) else queue["query"]
    assert query == "label_values(portico_jobs, queue)"
    assert queue["type"] == "query" and queue["multi"] and queue["includeAll"]
    assert queue["datasource"]["uid"] == "${datasource}"
    for panel in dashboard_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
