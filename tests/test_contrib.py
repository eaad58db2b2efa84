"""contrib/: the Prometheus alerting rules and the Grafana dashboard.

Static (every Python, no tools): the dashboard's JSON structure, and every metric
name the rules and the dashboard use is one amdgpu_top_web exports (or ALERTS/up).
promtool (Debian package prometheus): `check rules` and the rules' unit tests
(contrib/prometheus/alerts_test.yml).
Live (main Python 3.11 only, one Prometheus for the module; ~15 s, or ~75 s with the
VRAM forecast's wait, see below): a real
Prometheus on a loopback port (storage in a temp dir, scrape and rule evaluation
every 1 s, rule_files = alerts.yml) scrapes a real `--demo --enable-prometheus
--prometheus-processes 3` server; then every rule is loaded and healthy, every rule
and dashboard expression (variables substituted as Grafana would) evaluates through
the HTTP API without error, and every metric name they reference returns data.

Series that exist only in some states are waited for, never assumed:
- ALERTS exists only while an alert is pending or firing. The demo fires none of the
  real rules, so after the first scrapes the test adds a DERIVED rule: the real
  vram_usage warning expression as Prometheus loaded it, with only its level lowered
  from 90 to 1 % (label test="derived"), and reloads Prometheus (SIGHUP). That it
  fires on the demo's data also proves the rule's label matching on live series.
- amdgpu_throttle_reason_active (only while an NVIDIA demo GPU has a reason) and
  amdgpu_alert_active (only while a built-in alert is active: where the program has
  APP_ALERT_RULES the test lowers the built-in vram_usage level to 1 %) are waited for
  up to CONDITIONAL_WAIT_S after Prometheus starts.
- amdgpu_vram_full_seconds exists only while a GPU's used VRAM grows as a trend: where
  the program has `--demo-scenario leak` the demo runs it, and the forecast's own gate
  (60 s of points) makes this the one long wait (~75 s), run last.
If a waited-for series never comes, the test FAILS and says which state was missing;
it does not pass by skipping.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

import amdgpu_top_web as atw
from conftest import REPO, debian_tool, wait_for

CONTRIB = os.path.join(REPO, "contrib")
RULES_FILE = os.path.join(CONTRIB, "prometheus", "alerts.yml")
RULES_TEST_FILE = os.path.join(CONTRIB, "prometheus", "alerts_test.yml")
DASHBOARD_FILE = os.path.join(CONTRIB, "grafana", "dashboard.json")

RULE_NAMES = {"gpu_temperature", "vram_usage", "vram_full_soon", "gpu_throttling", "fan_stopped",
              "gpu_lost", "busy_unattributed", "host_memory", "gpu_held_idle"}
# Names other branches add to /metrics (notes/contract.md; the host work named the CPU
# count amdgpu_host_cpus, as promtool's lint keeps _count for histograms); on a branch
# without them the live per-name test fails for exactly these.
HOST_NAMES = {"amdgpu_host_" + n for n in (
    "cpu_busy_ratio", "cpus", "load1", "load5", "load15", "memory_total_bytes",
    "memory_used_bytes", "memory_available_bytes", "swap_total_bytes", "swap_used_bytes",
    "memory_pressure_some_ratio", "memory_pressure_full_ratio")}
INSIGHT_NAMES = {"amdgpu_vram_full_seconds", "amdgpu_alert_active"}
# Present only in some states: waited for (see the module docstring).
CONDITIONAL = {
    "amdgpu_throttle_reason_active": "a throttle reason (idle included) on a demo NVIDIA GPU",
    "amdgpu_alert_active": "a built-in alert active in the demo (the test lowers the "
                           "built-in vram_usage level to 1 % with APP_ALERT_RULES)",
}
CONDITIONAL_WAIT_S = 20.0
# amdgpu_vram_full_seconds needs a VRAM trend (--demo-scenario leak) and the forecast's
# own gate (FORECAST_MIN_SPAN_S, 60 s of points) before its first value: the one wait
# longer than the rest, run last so the other live tests use that time.
FORECAST_NAME = "amdgpu_vram_full_seconds"
FORECAST_SLACK_S = 15.0
# All 8 synthetic GPUs (4 AMD, 4 NVIDIA): NVIDIA's throttle reasons come and go with
# each one's load wave; with four of them one has a reason at almost any moment.
DEMO_GPUS = 8
PROMETHEUS_NAMES = {"ALERTS", "up"}

GRID_COLUMNS = 24
PANEL_TYPES = {"row", "stat", "table", "timeseries", "state-timeline"}
DS_UID = "${DS_PROMETHEUS}"

MAIN_PYTHON = sys.version_info[:2] == (3, 11)


def tool(name):
    return debian_tool(name, "prometheus")


# -- what the files hold ------------------------------------------------------

def load_dashboard():
    with open(DASHBOARD_FILE, encoding="utf-8") as f:
        return json.load(f)


def all_panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        for inner in panel.get("panels") or ():   # collapsed rows hold their panels
            yield inner


def dashboard_exprs():
    """[(where, expr, instant)] of every query in the dashboard (panels, annotations)."""
    dashboard = load_dashboard()
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or ():
            out.append(("panel %d %r %s" % (panel["id"], panel["title"], target["refId"]),
                        target["expr"], bool(target.get("instant"))))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            out.append(("annotation %r" % annotation["name"], annotation["expr"], False))
    return out


EXPR_LINE_RE = re.compile(r"^(\s*)expr:\s*(.*)$")


def rule_exprs():
    """[(alertname, expr)] of alerts.yml, read with a small reader for its own style
    (`expr: one line` or `expr: |` and an indented block): no YAML library in the
    standard library. The live test checks it against what Prometheus loaded."""
    with open(RULES_FILE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, name = [], None
    for index, line in enumerate(lines):
        alert = re.match(r"^\s*- alert:\s*(\S+)\s*$", line)
        if alert:
            name = alert.group(1)
        match = EXPR_LINE_RE.match(line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value in ("|", "|-", ">", ">-"):
            block = []
            for more in lines[index + 1:]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                block.append(more.strip())
            value = "\n".join(block).strip()
        out.append((name, value))
    return out


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr):
    """Metric names a PromQL expression selects (strings, label matchers, ranges,
    grouping lists and function names taken out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b", text):
        word = match.group(0)
        if word.lower() in PROMQL_KEYWORDS or re.match(r"\s*\(", text[match.end():]):
            continue      # a keyword, or a function / aggregation call
        names.add(word)
    return names


def exported_names():
    """Every family name this branch's render_prometheus can write."""
    names = {atw.PROM_PREFIX + family[0] for family in atw.PROM_GPU_FAMILIES}
    names |= {atw.PROM_PREFIX + n for n in atw.HEALTH_HELP}
    names |= {atw.PROM_PREFIX + n for n in (
        "gpu_info", "runtime_suspended", "gpu_lost", "throttled", "throttle_reason_active",
        "processes", "process_memory_bytes", "process_engine_seconds_total",
        "process_engine_busy_ratio")}
    return names


def referenced_names():
    names = set()
    for _, expr, _ in dashboard_exprs():
        names |= metric_names(substitute(expr, {"instance": ".*", "gpu": ".*"}))
    for _, expr in rule_exprs():
        names |= metric_names(expr)
    return names


def substitute(expr, variables):
    """Grafana's variables: $instance/$gpu (regex of the chosen values), and the
    interval ones at a 1 s scrape interval ($__rate_interval = 4 x scrape interval)."""
    fixed = {"__rate_interval": "4s", "__interval": "1s", "__range": "30s"}
    fixed.update(variables)

    def one(match):
        name = match.group(1) or match.group(2)
        assert name in fixed, "unknown dashboard variable $%s in %r" % (name, expr)
        return fixed[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# -- static tests -------------------------------------------------------------

def test_metric_name_reader():
    assert metric_names('sum by (instance, gpu) (rate(amdgpu_x_total{gpu=~"a|b"}[5m])) '
                        '/ on (job) group_left amdgpu_y > 5m') == {"amdgpu_x_total", "amdgpu_y"}
    assert metric_names('count(ALERTS{alertstate="firing"}) or vector(0)') == {"ALERTS"}
    assert metric_names("amdgpu_a == 1 and on (job, instance) up == 1 unless amdgpu_b") == \
        {"amdgpu_a", "up", "amdgpu_b"}


def test_rules_file_has_every_built_in_rule():
    names = [name for name, _ in rule_exprs()]
    assert set(names) == RULE_NAMES
    assert all(expr for _, expr in rule_exprs())


def test_every_referenced_name_is_exported_here_or_on_a_sibling_branch():
    known = exported_names() | HOST_NAMES | INSIGHT_NAMES | PROMETHEUS_NAMES
    names = referenced_names()
    assert names - known == set(), "names /metrics does not export (typos?)"
    # and the fleet views use what they should
    assert {"amdgpu_gpu_busy_ratio", "amdgpu_memory_used_bytes", "amdgpu_temperature_celsius",
            "amdgpu_power_watts", "amdgpu_throttled", "amdgpu_process_memory_bytes",
            "amdgpu_processes", "ALERTS", "amdgpu_alert_active"} <= names
    assert HOST_NAMES <= names


def test_counters_are_only_used_through_rate():
    for where, expr, _ in dashboard_exprs():
        for name in metric_names(substitute(expr, {"instance": ".*", "gpu": ".*"})):
            if name.endswith("_total"):
                assert re.search(r"\b(i?rate|increase)\(\s*%s\b" % name, expr), (where, expr)


def test_dashboard_structure():
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None     # importable: Grafana assigns the id
    inputs = dict((i["name"], i) for i in dashboard["__inputs"])
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = dict((v["name"], v) for v in dashboard["templating"]["list"])
    assert set(variables) >= {"instance", "gpu"}
    for var in variables.values():
        assert var["type"] == "query" and var["datasource"] == {"type": "prometheus", "uid": DS_UID}
        assert "label_values(amdgpu_gpu_info" in var["definition"]
    assert "$instance" in variables["gpu"]["definition"]     # gpu choices follow the host

    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = {}
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("h", "w", "x", "y")), panel
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, "panels %s and %s overlap" % (cells.get((x, y)), panel["id"])
                cells[(x, y)] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["datasource"] == {"type": "prometheus", "uid": DS_UID}
        targets = panel["targets"]
        assert targets, panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target["expr"].strip() and target["datasource"]["uid"] == DS_UID, panel["title"]
            assert "$instance" in target["expr"], (panel["title"], "every query follows the host")
    titles = " ".join(p["title"] for p in panels).lower()
    for word in ("busy", "vram", "temperature", "power", "throttl", "process", "alert", "host"):
        assert word in titles, word


def test_promtool_check_rules():
    result = subprocess.run([tool("promtool"), "check", "rules", RULES_FILE],
                            capture_output=True, timeout=60)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and "SUCCESS" in out, out


def test_promtool_rule_unit_tests_cover_every_rule():
    result = subprocess.run([tool("promtool"), "test", "rules", RULES_TEST_FILE],
                            capture_output=True, timeout=60, cwd=os.path.dirname(RULES_TEST_FILE))
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and "SUCCESS" in out, out
    with open(RULES_TEST_FILE, encoding="utf-8") as f:
        text = f.read()
    for name in RULE_NAMES:
        tested = re.findall(r"alertname: %s\b.*?(exp_alerts: \[\]|exp_labels)" % name, text, re.S)
        assert "exp_alerts: []" in tested, "%s: no not-firing case" % name
        assert "exp_labels" in tested, "%s: no firing case" % name


# -- live: a real Prometheus scraping a real demo server ------------------------

def promql_regex(value):
    """A literal value as a regex inside a PromQL double-quoted string."""
    return re.escape(value).replace("\\", "\\\\")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus(object):
    """A Prometheus server on 127.0.0.1:port with its storage in ``base``."""

    def __init__(self, binary, base, target):
        self.base, self.port = base, free_port()
        self.derived_dir = os.path.join(base, "derived")
        os.makedirs(self.derived_dir)
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"},
                  "rule_files": [RULES_FILE, os.path.join(self.derived_dir, "*.json")],
                  "scrape_configs": [{"job_name": "amdgpu",
                                      "static_configs": [{"targets": [target]}]}]}
        config_file = os.path.join(base, "prometheus.json")   # JSON is YAML
        with open(config_file, "w") as f:
            json.dump(config, f)
        self.log_file = open(os.path.join(base, "prometheus.log"), "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "--config.file=" + config_file, "--storage.tsdb.path=" + os.path.join(base, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self):
        with open(self.log_file.name, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def api(self, path, **params):
        url = "http://127.0.0.1:%d%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:      # 400/422: a bad query, with its error
            return json.loads(error.read().decode("utf-8"))

    def ready(self):
        assert self.proc.poll() is None, "prometheus exited:\n" + self.log()
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def query(self, expr):
        return self.api("/api/v1/query", query=expr)

    def series_count(self, expr):
        body = self.query(expr)
        assert body["status"] == "success", (expr, body)
        return len(body["data"]["result"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()


def add_derived_alert(prom):
    """The real vram_usage warning rule as Prometheus loaded it, its level lowered to
    1 %, as a second rule file; SIGHUP reloads the rules."""
    rules = [r for g in prom.api("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    warning = [r for r in rules if r["name"] == "vram_usage" and r["labels"]["severity"] == "warning"]
    assert len(warning) == 1, rules
    expr, count = re.subn(r">\s*90\s*$", "> 1", warning[0]["query"].strip())
    assert count == 1, warning[0]["query"]
    derived = {"groups": [{"name": "test_derived", "rules": [
        {"alert": "vram_usage", "expr": expr, "labels": {"severity": "warning", "test": "derived"},
         "annotations": {"summary": "derived from vram_usage (level 1 %) by tests/test_contrib.py"}}]}]}
    with open(os.path.join(prom.derived_dir, "vram_usage_low.json"), "w") as f:
        json.dump(derived, f)
    prom.proc.send_signal(signal.SIGHUP)


def demo_options(base):
    """Extra demo settings where this program has them (the insight work): the leak
    scenario (a VRAM trend for the forecast) and a built-in vram_usage level of 1 %
    (an active built-in alert). -> (args, env, forecast wait in s or None)."""
    args, env, forecast_wait = [], {}, None
    if "leak" in getattr(atw, "DEMO_SCENARIOS", ()):
        args = ["--demo-scenario", "leak"]
        forecast_wait = getattr(atw, "FORECAST_MIN_SPAN_S", 60.0) + FORECAST_SLACK_S
    if hasattr(atw, "parse_alert_rules"):
        override = json.dumps({"vram_usage": {"warn": 1, "warn_clear": 0.5}})
        atw.parse_alert_rules(override)        # the program's own validation, here first
        path = os.path.join(base, "alert_rules.json")
        with open(path, "w") as f:
            f.write(override)
        env["APP_ALERT_RULES"] = path
    return args, env, forecast_wait


@pytest.fixture(scope="module")
def fleet(server_module, tmp_path_factory):
    """(Prometheus, demo server, variables) once the first scrapes have arrived."""
    if not MAIN_PYTHON:
        pytest.skip("the live Prometheus test runs on the main Python (3.11) only")
    binary = tool("prometheus")
    base = str(tmp_path_factory.mktemp("prometheus"))
    args, env, forecast_wait = demo_options(base)
    env.update({"APP_PROC_ENABLE": "true", "APP_SAMPLE_INTERVAL": "250ms",
                "APP_PROC_SCAN_INTERVAL": "500ms"})
    demo = server_module(args=["--demo", "--demo-gpus", str(DEMO_GPUS), "--enable-prometheus",
                               "--prometheus-processes", "3"] + args, env=env)
    demo.forecast_wait = forecast_wait
    demo.wait_metrics(count=DEMO_GPUS)
    prom = Prometheus(binary, base, "127.0.0.1:%d" % demo.port)
    try:
        wait_for(prom.ready, 20, 0.2, message="prometheus /-/ready")
        # 3 scrapes of every demo GPU (rate() needs 2), and a process scan in them
        wait_for(lambda: prom.series_count("count_over_time(amdgpu_gpu_info[1m]) >= 3") == DEMO_GPUS
                 and prom.series_count("amdgpu_processes") == DEMO_GPUS, 20, 0.25,
                 message="three scrapes of the demo server")
        add_derived_alert(prom)
        wait_for(lambda: prom.series_count('ALERTS{test="derived"}') >= 1, 15, 0.25,
                 message="the derived vram_usage alert (ALERTS series)")
        instance = "127.0.0.1:%d" % demo.port
        gpus = prom.api("/api/v1/label/gpu/values", **{"match[]": "amdgpu_gpu_info"})["data"]
        # as Grafana writes a chosen value into a =~ matcher: regex-escaped, in a PromQL string
        yield prom, demo, {"instance": promql_regex(instance),
                           "gpu": "(%s)" % "|".join(promql_regex(g) for g in gpus)}
    finally:
        prom.stop()


def wait_for_series(prom, name, deadline):
    while prom.series_count(name) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    return prom.series_count(name)


def assert_query_ok(prom, where, expr, instant):
    if instant:
        body = prom.query(expr)
    else:
        now = time.time()
        body = prom.api("/api/v1/query_range", query=expr, start="%.3f" % (now - 30),
                        end="%.3f" % now, step="1")
    assert body.get("status") == "success", "%s: %s\n%s" % (where, expr, body)
    assert not body.get("warnings"), (where, body["warnings"])
    return body["data"]["result"]


def test_prometheus_loaded_every_rule_and_each_evaluates_healthy(fleet):
    prom = fleet[0]
    groups = [g for g in prom.api("/api/v1/rules")["data"]["groups"] if g["file"] == RULES_FILE]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == RULE_NAMES
    # the small expr reader of the static tests reads what Prometheus reads
    # (compared in Prometheus's own formatting)
    def formatted(expr):
        return prom.api("/api/v1/format_query", query=expr)["data"]
    assert sorted(formatted(r["query"]) for r in rules) == sorted(formatted(e) for _, e in rule_exprs())
    for rule in rules:
        assert rule["type"] == "alerting" and rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        assert rule["duration"] > 0, rule["name"]
        assert rule["health"] in ("ok", "unknown") and not rule.get("lastError"), rule
    wait_for(lambda: all(r["health"] == "ok" for g in prom.api("/api/v1/rules")["data"]["groups"]
                         if g["file"] == RULES_FILE for r in g["rules"]), 5, 0.25,
             message="every rule evaluated without error")


def test_every_rule_expression_evaluates(fleet):
    prom = fleet[0]
    for name, expr in rule_exprs():
        assert_query_ok(prom, "rule " + name, expr, instant=True)


def test_the_derived_vram_rule_fires_on_the_demo_with_the_gpu_labels(fleet):
    prom, _, variables = fleet
    body = prom.api("/api/v1/alerts")
    derived = [a for a in body["data"]["alerts"] if a["labels"].get("test") == "derived"]
    assert derived and all(a["state"] == "firing" for a in derived), body
    # one alert per demo GPU with VRAM, labelled with its job, instance and gpu
    assert {a["labels"]["gpu"] for a in derived} <= set(variables["gpu"].strip("()").split("|"))
    assert all(a["labels"]["job"] == "amdgpu" and a["labels"]["instance"] for a in derived)


# Off the main Python the live cases are not generated at all (one skip each, not ~80).
LIVE_EXPRS = dashboard_exprs() if MAIN_PYTHON else []
LIVE_NAMES = sorted(referenced_names() - {FORECAST_NAME}) if MAIN_PYTHON else []


@pytest.mark.parametrize("where,expr,instant", LIVE_EXPRS, ids=[e[0] for e in LIVE_EXPRS])
def test_dashboard_expression_evaluates(fleet, where, expr, instant):
    prom, _, variables = fleet
    assert_query_ok(prom, where, substitute(expr, variables), instant)


def test_dashboard_variables_have_values(fleet):
    prom, demo, _ = fleet
    instances = prom.api("/api/v1/label/instance/values", **{"match[]": "amdgpu_gpu_info"})["data"]
    assert instances == ["127.0.0.1:%d" % demo.port]
    gpus = prom.api("/api/v1/label/gpu/values",
                    **{"match[]": 'amdgpu_gpu_info{instance=~"%s"}' % promql_regex(instances[0])})["data"]
    assert len(gpus) == DEMO_GPUS


@pytest.mark.parametrize("name", LIVE_NAMES)
def test_metric_name_returns_data(fleet, name):
    prom = fleet[0]
    if name in CONDITIONAL:
        assert wait_for_series(prom, name, prom.started + CONDITIONAL_WAIT_S) >= 1, (
            "%s: no series %.0f s after Prometheus started; it exists only with %s"
            % (name, CONDITIONAL_WAIT_S, CONDITIONAL[name]))
    assert prom.series_count(name) >= 1, "%s: no series scraped from the demo server" % name


# Last in the module (see FORECAST_NAME).
@pytest.mark.skipif(not MAIN_PYTHON, reason="the live Prometheus test runs on the main Python (3.11) only")
def test_vram_forecast_returns_data_once_the_demo_leaks(fleet):
    prom, demo, _ = fleet
    assert demo.forecast_wait is not None, (
        "%s: this amdgpu_top_web has no --demo-scenario leak, so the demo never exports a "
        "VRAM forecast (the insight work adds both)" % FORECAST_NAME)
    assert wait_for_series(prom, FORECAST_NAME, demo.spawned_at + demo.forecast_wait) >= 1, (
        "%s: no series %.0f s after the leaking demo started" % (FORECAST_NAME, demo.forecast_wait))
    # and the rule that reads it evaluates on it
    assert_query_ok(prom, "vram_full_soon", "%s < 15 * 60" % FORECAST_NAME, instant=True)


# -- contrib/systemd: the service unit ----------------------------------------------

UNIT_FILE = os.path.join(CONTRIB, "systemd", "amdgpu_top_web.service")
UNIT_SCORE_RE = re.compile(r"Overall exposure level for \S+: ([0-9.]+) (\S+)")


def unit_settings():
    """[Service] of the unit -> {key: [values]} (comments skipped)."""
    settings, section = {}, None
    with open(UNIT_FILE, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif line and not line.startswith("#") and section == "Service":
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_with_least_privilege_and_still_reads_every_gpu():
    unit = unit_settings()
    for key, value in (("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("StateDirectory", "amdgpu_top_web"), ("CapabilityBoundingSet", "")):
        assert unit.get(key) == [value], key
    assert "-/etc/amdgpu_top_web/env" in unit["EnvironmentFile"]
    env = dict(v.split("=", 1) for v in unit["Environment"])
    # the history lives in the StateDirectory, the one place the service may write
    assert env["APP_HISTORY_PATH"] == "%S/amdgpu_top_web/history.sqlite3"
    # NVML needs /dev/nvidia*: PrivateDevices=yes would hide them
    assert unit.get("PrivateDevices", ["no"]) == ["no"]
    assert unit["DevicePolicy"] == ["closed"] and unit["DeviceAllow"] == ["char-nvidia* rw"]
    # the host metrics need /proc/stat & co., process top needs other PIDs
    assert "ProcSubset" not in unit and "ProtectProc" not in unit
    # every APP_* the unit sets is a setting of the program
    names = {s.env for s in atw.SETTINGS}
    assert {k for k in env if k.startswith("APP_")} <= names
    with open(UNIT_FILE, encoding="utf-8") as f:
        text = f.read()
    assert "fdinfo" in text and "CANNOT see without root" in text


def systemd_analyze():
    return debian_tool("systemd-analyze", "systemd")


def verifiable_unit(tmp_path):
    """The unit itself, or a copy naming this machine's python3 where it has no
    /usr/bin/python3 (verify checks that ExecStart's program exists)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return UNIT_FILE
    with open(UNIT_FILE, encoding="utf-8") as f:
        text = f.read().replace("/usr/bin/python3", shutil.which("python3") or sys.executable)
    copy = tmp_path / "amdgpu_top_web.service"
    copy.write_text(text)
    return str(copy)


def test_systemd_analyze_verify_and_security_score(tmp_path):
    tool_path = systemd_analyze()
    unit = verifiable_unit(tmp_path)
    result = subprocess.run([tool_path, "verify", unit], capture_output=True, timeout=60)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and out.strip() == "", out   # a warning fails too
    version = subprocess.run([tool_path, "--version"], capture_output=True, timeout=30).stdout
    if int(re.match(rb"systemd (\d+)", version).group(1)) < 250:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    result = subprocess.run([tool_path, "security", "--offline=yes", unit], capture_output=True,
                            timeout=60)
    out = (result.stdout + result.stderr).decode()
    match = UNIT_SCORE_RE.search(out)
    assert match, out
    print("systemd-analyze security: %s %s" % match.groups())
    assert float(match.group(1)) <= 2.0, out                    # "OK" or better


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a typo in a key and a missing program are reported."""
    tool_path = systemd_analyze()
    with open(UNIT_FILE, encoding="utf-8") as f:
        text = f.read()
    broken = tmp_path / "amdgpu_top_web.service"
    broken.write_text(text.replace("ExecStart=/usr/bin/python3", "ExecStart=/nonexistent/python3")
                      .replace("\nProtectHome=yes", "\nProtectHomee=yes"))
    result = subprocess.run([tool_path, "verify", str(broken)], capture_output=True, timeout=60)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode != 0 and "ProtectHomee" in out and "/nonexistent/python3" in out, out
