"""Alerts: the state machine (hysteresis, holds, one event per change), the
rules file, the engine as a cache sink (frames, hello, /plain, Prometheus),
the Alertmanager webhook against a real loopback receiver (http.server in
this process), /api/alerts, and a real server with a dead webhook.
Timestamps are injected everywhere; the only waits are for real sockets."""
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

import amdgpu_top_web as atw
from conftest import wait_for

PROGRAM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "amdgpu_top_web.py")
T0 = 1764686400.0
GiB = 1 << 30


def levels(**over):
    base = dict(warn=85.0, warn_clear=80.0, crit=95.0, crit_clear=90.0, for_s=10.0,
                clear_for_s=30.0)
    base.update(over)
    return base


def feed(state, points):
    """[(seconds after T0, value)] -> the events, as (t, state, severity)."""
    out = []
    for t, value in points:
        change = state.update(T0 + t, value)
        if change:
            out.append((t, change["state"], change["severity"]))
    return out


# -- the state machine ---------------------------------------------------------


def test_fires_only_after_the_hold_and_resolves_only_after_clear_for():
    state = atw.AlertState("gpu_temperature", levels())
    points = [(t, 70) for t in range(0, 10)] + [(t, 88) for t in range(10, 40)] + [
        (t, 70) for t in range(40, 100)]
    assert feed(state, points) == [(20, "firing", "warning"), (70, "resolved", "warning")]


def test_hysteresis_no_flapping_between_raise_and_clear_levels():
    """A value dancing across 85 (but never under 80) fires once and never resolves."""
    state = atw.AlertState("gpu_temperature", levels())
    points = [(t, 86 if t % 2 else 82) for t in range(0, 30)]
    assert feed(state, [(t, 86) for t in range(0, 11)]) == [(10, "firing", "warning")]
    assert feed(state, [(11 + t, v) for t, v in points]) == []
    assert state.severity == "warning"


def test_a_short_spike_never_fires():
    state = atw.AlertState("gpu_temperature", levels())
    points = [(t, 99 if 5 <= t < 12 else 60) for t in range(0, 60)]
    assert feed(state, points) == []


def test_escalation_and_step_down_are_one_event_each():
    state = atw.AlertState("vram_usage", levels(warn=90, warn_clear=85, crit=97, crit_clear=95))
    points = ([(t, 91) for t in range(0, 15)] + [(t, 98) for t in range(15, 30)]
              + [(t, 92) for t in range(30, 70)] + [(t, 50) for t in range(70, 110)])
    events = feed(state, points)
    assert events == [(10, "firing", "warning"), (25, "firing", "critical"),
                      (60, "firing", "warning"), (100, "resolved", "warning")]


def test_straight_to_critical_and_none_counts_as_not_raising():
    state = atw.AlertState("vram_usage", levels(warn=90, warn_clear=85, crit=97, crit_clear=95))
    events = feed(state, [(t, 99) for t in range(0, 11)] + [(t, None) for t in range(11, 45)])
    assert events == [(10, "firing", "critical"), (41, "resolved", "critical")]


def test_below_direction_for_time_to_full():
    rules = atw.parse_alert_rules()
    state = atw.AlertState("vram_full_soon", rules["vram_full_soon"])
    events = feed(state, [(t, 600) for t in range(0, 11)] + [(t, 200) for t in range(11, 22)]
                  + [(t, None) for t in range(22, 60)])
    assert events == [(10, "firing", "warning"), (21, "firing", "critical"),
                      (52, "resolved", "critical")]


def test_change_dict_carries_start_end_value_and_previous():
    state = atw.AlertState("gpu_temperature", levels(for_s=0, clear_for_s=0))
    fired = state.update(T0, 90)
    assert fired == {"state": "firing", "severity": "warning", "started": T0, "ended": None,
                     "value": 90, "previous_severity": None}
    up = state.update(T0 + 1, 96)
    assert up["previous_severity"] == "warning" and up["started"] == T0
    done = state.update(T0 + 2, 20)
    assert (done["state"], done["severity"], done["started"], done["ended"]) == (
        "resolved", "critical", T0, T0 + 2)


# -- the rules file ------------------------------------------------------------


def test_defaults_cover_every_rule_with_hysteresis():
    rules = atw.parse_alert_rules()
    assert tuple(rules) == atw.ALERT_RULES
    assert rules["vram_usage"]["warn"] == 90 and rules["vram_usage"]["crit_clear"] == 95
    for name, rule in rules.items():
        if name == "gpu_held_idle":     # its `for` is the idle time asked for, not a flap guard
            assert rule["for_s"] == 1800 and rule["clear_for_s"] == 60
            continue
        assert rule["clear_for_s"] >= rule["for_s"], name


def test_overrides_merge_and_durations_parse():
    rules = atw.parse_alert_rules(json.dumps({
        "vram_usage": {"warn": 80, "warn_clear": 75, "for": "5s", "clear_for": 90},
        "busy_unattributed": {"enabled": False}, "gpu_temperature": {"crit": None}}))
    assert (rules["vram_usage"]["warn"], rules["vram_usage"]["for_s"],
            rules["vram_usage"]["clear_for_s"]) == (80, 5, 90)
    assert rules["busy_unattributed"]["enabled"] is False
    assert rules["gpu_temperature"]["crit"] is None


@pytest.mark.parametrize("text,key", [
    ('{"vram_usge": {}}', "vram_usge"),
    ('{"vram_usage": {"wran": 3}}', "vram_usage.wran"),
    ('{"vram_usage": {"warn": "high"}}', "vram_usage.warn"),
    ('{"vram_usage": {"warn_clear": 95}}', "vram_usage.warn_clear"),
    ('{"vram_usage": {"for": "soon"}}', "vram_usage.for"),
    ('{"vram_usage": {"enabled": "yes"}}', "vram_usage.enabled"),
    ('{"vram_full_soon": {"warn_clear": 100}}', "vram_full_soon.warn_clear"),
    ('[1]', "JSON object"), ('{', "JSON"),
])
def test_bad_overrides_name_the_key(text, key):
    with pytest.raises(ValueError) as info:
        atw.parse_alert_rules(text)
    assert key in str(info.value)


def test_bad_rules_file_exits_2_with_one_line_naming_the_key(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text('{"gpu_temperature": {"warn": 90, "warn_clear": 99}}')
    result = subprocess.run([sys.executable, PROGRAM, "--demo", "--listen", "127.0.0.1:0",
                             "--alert-rules", str(path)], capture_output=True, timeout=20,
                            env={"PATH": os.environ.get("PATH", "")})
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "APP_ALERT_RULES" in lines[0] and "gpu_temperature.warn_clear" in lines[0]
    missing = subprocess.run([sys.executable, PROGRAM, "--demo", "--alert-rules",
                              str(tmp_path / "nope.json")], capture_output=True, timeout=20)
    assert missing.returncode == 2 and b"cannot read" in missing.stderr


def test_settings_validate_the_webhook_url_and_the_switch():
    config = atw.parse_config(["--no-alerts"], {})
    assert config.alerts is False and config.alert_webhook_url is None
    assert atw.parse_config([], {"APP_ALERTS": "off"}).alerts is False
    assert atw.parse_config([], {}).alerts is True
    ok = atw.parse_config(["--alert-webhook-url", "https://hooks.example/x?y=1"], {})
    assert ok.alert_webhook_url == "https://hooks.example/x?y=1"
    for bad in ("ftp://x/", "http://", "not a url", "http://[::1"):
        with pytest.raises(atw.ConfigError) as info:
            atw.parse_config([], {"APP_ALERT_WEBHOOK_URL": bad})
        assert "APP_ALERT_WEBHOOK_URL" in str(info.value)


# -- a loopback webhook receiver ---------------------------------------------


class Receiver(object):
    """http.server on 127.0.0.1:0 in a thread, recording each POSTed JSON body."""

    def __init__(self, status=200):
        self.bodies, self.auth = [], []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append((self.path, self.headers.get("Content-Type"),
                                        json.loads(self.rfile.read(length))))
                receiver.auth.append(self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook?team=gpu" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.daemon = True
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def make_engine(rules=None, webhook_url=None, store=None):
    cache = atw.Cache(0.25, {})
    cache.set_gpus([atw.demo_gpu_infos(1)[0]])
    frames = []
    cache.add_listener(frames.append)
    webhook = atw.WebhookSender(webhook_url, cache, "box:8080", backoff_s=0.01) if webhook_url else None
    engine = atw.AlertEngine(cache, rules or atw.parse_alert_rules(), store, webhook)
    cache.add_sink(engine)
    return cache, engine, webhook, frames


def gpu_metrics(**values):
    metrics = atw.new_metrics(dict(runtime_status="active", temp_c=50.0, power_w=100.0,
                                   gpu_busy_pct=10, vram_used_bytes=2 * GiB,
                                   vram_total_bytes=16 * GiB))
    metrics.update(values)
    return metrics


def overheat_trace():
    """A card heating from 60 °C, with a short 87 °C blip (under the 10 s hold), to 90 °C
    for 20 s, then hovering 81-88 °C across the 85 raise level (flapping bait: above
    the 80 clear level), then cooling to 70 °C."""
    temps = ([60 + t for t in range(20)] + [87] * 5 + [80] * 5 + [90] * 20
             + [88 if t % 3 else 81 for t in range(60)] + [70] * 60)
    return [(T0 + i, temp) for i, temp in enumerate(temps)]


def test_an_overheating_card_raises_one_alert_one_webhook_call_and_resolves_once(receiver):
    cache, engine, webhook, frames = make_engine(webhook_url=receiver.url)
    for t, temp in overheat_trace():
        cache.publish_stats("card0", t, gpu_metrics(temp_c=temp))
    engine.drain()
    alerts = [a for a in (json.loads(f.payload) for f in frames if f.kind == "alert")
              if not a.get("update")]                 # state changes (live updates aside)
    assert [(a["rule"], a["state"], a["severity"]) for a in alerts] == [
        ("gpu_temperature", "firing", "warning"), ("gpu_temperature", "resolved", "warning")]
    assert all(f.gpu_id is None for f in frames if f.kind == "alert")   # to every client
    fired, resolved = alerts
    assert fired["gpu_id"] == "card0" and fired["ended"] is None and fired["value"] >= 85
    assert resolved["started"] == fired["started"] and resolved["ended"]
    assert set(fired) >= {"type", "rule", "gpu_id", "severity", "state", "started", "ended",
                          "value", "summary"}
    for event in webhook._queue.drain():
        webhook.deliver(event)
    assert len(receiver.bodies) == 2 and webhook.counts["sent"] == 2
    path, content_type, body = receiver.bodies[0]
    assert path == "/hook?team=gpu" and content_type == "application/json"
    assert (body["version"], body["status"], body["receiver"]) == ("4", "firing", "amdgpu_top_web")
    alert = body["alerts"][0]
    assert alert["labels"] == {"alertname": "gpu_temperature", "gpu": "card0",
                               "severity": "warning", "instance": "box:8080"}
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"] == fired["started"]
    assert alert["annotations"]["summary"] == fired["summary"]
    done = receiver.bodies[1][2]
    assert done["status"] == "resolved" and done["alerts"][0]["endsAt"] == resolved["ended"]
    assert done["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert engine.active() == [] and cache.alerts() == []


def test_escalation_resolves_the_warning_in_the_webhook_body():
    event = atw.build_alert_event("vram_usage", "card0", {
        "state": "firing", "severity": "critical", "started": T0, "ended": None, "value": 98.0,
        "previous_severity": "warning"}, "card0: VRAM 98 % used", T0 + 20)
    body = atw.build_webhook_payload(event, "box:8080")
    assert [(a["status"], a["labels"]["severity"]) for a in body["alerts"]] == [
        ("firing", "critical"), ("resolved", "warning")]
    assert body["alerts"][0]["fingerprint"] != body["alerts"][1]["fingerprint"]


def test_active_alerts_reach_hello_plain_and_prometheus(tmp_path):
    rules = atw.parse_alert_rules('{"vram_usage": {"for": 0}}')
    cache, engine, _, _ = make_engine(rules)
    cache.publish_stats("card0", T0, gpu_metrics(vram_used_bytes=int(15.5 * GiB)))
    engine.drain()
    hello = json.loads(cache.hello_payload("auto"))
    assert [(a["rule"], a["severity"]) for a in hello["alerts"]] == [("vram_usage", "warning")]
    gpus, procs = cache.snapshot()
    html_text = atw.render_plain(gpus, procs, 2, alerts=cache.alerts())
    assert "Active alerts" in html_text and "vram_usage" in html_text
    assert "No active alerts" in atw.render_plain(gpus, procs, 2, alerts=[])
    text = atw.render_prometheus(gpus, procs, {}, 0, alerts=cache.alerts())
    assert 'amdgpu_alert_active{gpu="card0",alertname="vram_usage",severity="warning"} 1' in text
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                                capture_output=True, timeout=30)
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_vram_full_seconds_only_while_a_trend_grows():
    identity = atw.identity_json(atw.demo_gpu_infos(1)[0])
    trend = atw.new_vram_forecast("trend", [20 << 20, 22 << 20], [240, 265], 1234)
    text = atw.render_prometheus([(identity, {"vram_forecast": trend})], {}, {}, 0, alerts=[])
    assert 'amdgpu_vram_full_seconds{gpu="card0"} 240' in text
    for other in (atw.new_vram_forecast("stable", [0, 1]), atw.new_vram_forecast("step"),
                  atw.new_vram_forecast("trend", [-5e6, -4e6]), None):
        text = atw.render_prometheus([(identity, {"vram_forecast": other})], {}, {}, 0, alerts=[])
        assert "vram_full_seconds" not in text


def test_the_other_rules_fire_on_their_own_signals():
    rules = atw.parse_alert_rules(json.dumps(dict(
        (name, {"for": 0, "clear_for": 0}) for name in atw.ALERT_RULES)))
    cache, engine, _, frames = make_engine(rules)
    procs_hidden = atw.build_procs_message("card0", T0, atw.build_procs_entry(
        [atw.build_proc_row(pid=5, name="Xorg", engines_pct={"gfx": 0.0})], 1,
        atw.build_capabilities("fdinfo", True, True, ["gfx"])), atw.build_visibility(False), {})
    engine.offer_procs("card0", procs_hidden)
    forecast = atw.new_vram_forecast("trend", [50 << 20, 60 << 20], [200, 240])
    engine.offer_stats("card0", T0, gpu_metrics(
        temp_c=80.0, fan_rpm=0, throttle_reasons=["SwThermalSlowdown"], gpu_busy_pct=90,
        vram_forecast=forecast))
    engine.offer_host(T0, {"mem_used_bytes": 95, "mem_total_bytes": 100})
    engine.offer_host(T0 + 1, {})                       # the host keys may be absent
    engine.offer_stats("card0", T0 + 10, gpu_metrics(temp_c=None, gpu_busy_pct=90))
    engine.offer_gpus([])                               # card0 vanished
    engine.drain()
    fired = dict(((e["rule"], e["state"]), e) for e in (
        json.loads(f.payload) for f in frames if f.kind == "alert") if not e.get("update"))
    for rule in ("fan_stopped", "gpu_throttling", "busy_unattributed", "vram_full_soon",
                 "host_memory", "gpu_lost"):
        assert (rule, "firing") in fired, rule
    assert fired[("vram_full_soon", "firing")]["severity"] == "critical"
    assert fired[("host_memory", "firing")]["gpu_id"] is None
    assert "root" in fired[("busy_unattributed", "firing")]["summary"]
    assert "temp_c" in fired[("gpu_lost", "firing")]["summary"]       # a sensor gone
    assert ("host_memory", "resolved") in fired                           # no data: clears


def test_a_busy_gpu_with_its_user_visible_is_not_unattributed():
    rules = atw.parse_alert_rules('{"busy_unattributed": {"for": 0}}')
    cache, engine, _, frames = make_engine(rules)
    engine.offer_procs("card0", atw.build_procs_message("card0", T0, atw.build_procs_entry(
        [atw.build_proc_row(pid=5, name="blender", engines_pct={"gfx": 80.0})], 1,
        atw.build_capabilities("fdinfo", True, True, ["gfx"])), atw.build_visibility(True), {}))
    engine.offer_stats("card0", T0, gpu_metrics(gpu_busy_pct=90))
    engine.drain()
    assert not [f for f in frames if f.kind == "alert"]


class FakeStore(object):
    def __init__(self):
        self.events = []

    def offer_alert(self, event):
        self.events.append(event)

    def query_alerts(self, from_s, to_s):
        return [e for e in self.events if atw.event_in_range(e, from_s, to_s)]


def test_events_go_to_the_store_and_memory_is_bounded():
    store = FakeStore()
    rules = atw.parse_alert_rules('{"vram_usage": {"for": 0, "clear_for": 0}}')
    cache, engine, _, _ = make_engine(rules, store=store)
    for i in range(atw.ALERT_EVENTS_KEPT + 10):
        used = 15.5 * GiB if i % 2 == 0 else GiB
        engine.offer_stats("card0", T0 + i, gpu_metrics(vram_used_bytes=int(used)))
        engine.drain()
    assert len(store.events) == atw.ALERT_EVENTS_KEPT + 10
    recent = engine.recent(T0, T0 + 10 ** 6)
    assert len(recent) == atw.ALERT_EVENTS_KEPT
    assert len(engine.recent(T0 + 1000, T0 + 10 ** 6)) == 10


def test_the_inbox_is_bounded_and_counts_drops():
    cache, engine, _, _ = make_engine()
    for i in range(atw.ALERT_QUEUE_ITEMS + 5):
        engine.offer_stats("card0", T0 + i, gpu_metrics())
    assert engine.dropped == 5 and len(engine._inbox) == atw.ALERT_QUEUE_ITEMS
    assert cache.health_snapshot()[("exporter_alert_inbox_dropped_total", ())] == 5


def test_a_dead_webhook_is_retried_counted_and_logged_once(caplog):
    cache = atw.Cache(0.25, {})
    webhook = atw.WebhookSender("http://127.0.0.1:%d/" % closed_port(), cache, "box",
                                timeout_s=1, backoff_s=0.001)
    event = atw.build_alert_event("gpu_lost", "card0", {
        "state": "firing", "severity": "critical", "started": T0, "ended": None, "value": 1,
        "previous_severity": None}, "card0: GPU lost", T0)
    with caplog.at_level("WARNING", logger="amdgpu_top_web"):
        assert webhook.deliver(event) is False
        assert webhook.deliver(event) is False
    assert webhook.counts == {"sent": 0, "failed": 2, "dropped": 0}
    assert cache.health_snapshot()[("exporter_alert_webhook_failed_total", ())] == 2
    assert cache.features["alerts"]["webhook_failed"] == 2
    assert len([r for r in caplog.records if "webhook_failed" in r.getMessage()]) == 1


def test_a_refusing_receiver_counts_as_failed():
    refusing = Receiver(status=500)
    try:
        webhook = atw.WebhookSender(refusing.url, atw.Cache(0.25, {}), "box", backoff_s=0.001,
                                    retries=2)
        event = atw.build_alert_event("gpu_lost", None, {
            "state": "firing", "severity": "critical", "started": T0, "ended": None, "value": 1,
            "previous_severity": None}, "x", T0)
        assert webhook.deliver(event) is False and len(refusing.bodies) == 3
    finally:
        refusing.close()


# -- /api/alerts -----------------------------------------------------------------


def test_alerts_query_parameters():
    now = T0
    assert atw.parse_alerts_query("", now) == (now - 86400, now, None, "json")
    assert atw.parse_alerts_query("range=6h&format=csv", now).from_s == now - 6 * 3600
    assert atw.parse_alerts_query("range=30d", now).from_s == now - 30 * 86400
    assert atw.parse_alerts_query("range=30m", now).from_s == now - 1800
    q = atw.parse_alerts_query("from=2025-12-02T14:00:00Z&to=1764686400", now)
    assert q.from_s == 1764684000.0 and q.to_s == 1764686400.0
    for bad, name in (("range=forever", "range"), ("format=xml", "format"),
                      ("from=yesterday", "from"), ("from=10&to=5", "from"),
                      ("range=1h&from=5", "range"), ("step=1m", "step")):
        with pytest.raises(atw.QueryError) as info:
            atw.parse_alerts_query(bad, now)
        assert "'%s'" % name in str(info.value), bad


def test_alerts_csv():
    event = atw.build_alert_event("vram_usage", "card0", {
        "state": "firing", "severity": "warning", "started": T0, "ended": None, "value": 91.5,
        "previous_severity": None}, 'card0: VRAM 91.5 % used, "quoted"', T0)
    lines = atw.records_csv([event], atw.ALERT_CSV_COLUMNS).decode("utf-8").splitlines()
    assert lines[0] == ",".join(atw.ALERT_CSV_COLUMNS)
    assert lines[1].startswith("2025-12-02T14:40:00.000Z,vram_usage,card0,warning,firing,")
    assert lines[1].endswith('"card0: VRAM 91.5 % used, ""quoted"""')


def test_api_alerts_route_in_memory_and_off(app_factory, tmp_path):
    from conftest import get_json, http_request
    rules = tmp_path / "rules.json"
    rules.write_text('{"vram_usage": {"warn": 10, "warn_clear": 5, "for": 0}}')
    app, port = app_factory(["--demo", "--listen", "127.0.0.1:0", "--alert-rules", str(rules),
                             "--interval", "100ms"])
    wait_for(lambda: app.alerts.active(), 5, message="an active alert")
    status, body = get_json(port, "/api/alerts?range=1h")
    assert status == 200 and body["source"] == "memory"
    assert body["events"][0]["rule"] == "vram_usage" and body["active"]
    csv_reply = http_request(port, "GET", "/api/alerts?format=csv")
    assert csv_reply.status == 200 and csv_reply.headers["content-type"].startswith("text/csv")
    assert b"vram_usage" in csv_reply.body
    status, body = get_json(port, "/api/alerts?range=never")
    assert status == 400 and "range" in body["error"]
    plain = http_request(port, "GET", "/plain").body.decode()
    assert "Active alerts" in plain and "vram_usage" in plain
    status, metrics = get_json(port, "/api/gpus")
    assert metrics["gpus"][0]["metrics"]["vram_forecast"]["state"] in ("unknown", "stable")
    off, off_port = app_factory(["--demo", "--listen", "127.0.0.1:0", "--no-alerts"])
    assert get_json(off_port, "/api/alerts")[0] == 404
    assert off.cache.features["alerts"] == {"enabled": False}


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="slow (webhook retries): main Python")
def test_a_real_server_with_a_dead_webhook_keeps_serving(server, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text('{"vram_usage": {"warn": 10, "warn_clear": 5, "for": 0}}')
    srv = server(env={"APP_ALERT_RULES": str(rules), "APP_ENABLE_PROMETHEUS": "true",
                      "APP_ALERT_WEBHOOK_URL": "http://127.0.0.1:%d/" % closed_port()},
                 args=["--demo"])
    wait_for(lambda: srv.get_json("/api/alerts")[1]["events"], 5, message="an alert event")
    for _ in range(5):                      # the live view answers while the webhook retries
        assert srv.get_json("/api/gpus")[0] == 200

    def failed():
        text = srv.get("/metrics").body.decode()
        return "amdgpu_exporter_alert_webhook_failed_total 1" in text
    wait_for(failed, 15, interval=0.5, message="a counted webhook failure")
    assert len([line for line in srv.log().splitlines() if "webhook_failed" in line]) == 1


# -- the card's own temperature limits -----------------------------------------


def test_temperature_limits_are_planned_from_crit_files_and_read_once():
    names = ["temp1_input", "temp1_label", "temp1_crit", "temp2_input", "temp2_label",
             "temp2_crit", "temp2_crit_hyst", "temp3_input", "temp3_label"]
    plan = atw.plan_hwmon(names, {"temp1_label": "edge", "temp2_label": "junction",
                                  "temp3_label": "mem"})
    assert atw.plan_temp_limits(plan, names) == {"temp_crit_c": "temp1_crit",
                                                 "temp_junction_crit_c": "temp2_crit"}
    assert atw.parse_temp_limits({"temp_crit_c": b"100000\n", "temp_junction_crit_c": b"-273150",
                                  "temp_mem_crit_c": b"junk"}) == {"temp_crit_c": 100.0}


def test_gpu_temperature_uses_the_card_limit_when_there_is_one():
    rules = atw.parse_alert_rules()["gpu_temperature"]
    levels, temp, limit = atw.temperature_levels(rules, {"temp_c": 70.0, "temp_junction_c": 99.0,
                                                         "temp_junction_crit_c": 110.0})
    assert (temp, limit) == (99.0, 110.0)
    assert (levels["warn"], levels["warn_clear"], levels["crit"], levels["crit_clear"]) == (
        100.0, 95.0, 110.0, 105.0)
    levels, temp, limit = atw.temperature_levels(rules, {"temp_c": 70.0, "temp_junction_c": 99.0})
    assert (temp, limit, levels["warn"]) == (70.0, None, 85.0)     # edge against the defaults
    fixed = dict(rules, card_limits=False)
    assert atw.temperature_levels(fixed, {"temp_c": 70.0, "temp_crit_c": 90.0})[2] is None


def test_the_failure_log_line_does_not_leak_the_webhook_secret(caplog):
    webhook = atw.WebhookSender("http://user:pw@127.0.0.1:%d/hooks/T000/SECRET" % closed_port(),
                                atw.Cache(0.25, {}), "box", retries=0)
    event = atw.build_alert_event("gpu_lost", None, {
        "state": "firing", "severity": "critical", "started": T0, "ended": None, "value": 1,
        "previous_severity": None}, "x", T0)
    with caplog.at_level("WARNING", logger="amdgpu_top_web"):
        webhook.deliver(event)
    text = caplog.text
    assert "webhook_failed host=127.0.0.1" in text and "SECRET" not in text and "pw" not in text


def test_credentials_in_the_url_become_basic_auth(receiver):
    url = receiver.url.replace("http://", "http://alert:s3cret@")
    webhook = atw.WebhookSender(url, atw.Cache(0.25, {}), "box")
    event = atw.build_alert_event("gpu_lost", None, {
        "state": "firing", "severity": "critical", "started": T0, "ended": None, "value": 1,
        "previous_severity": None}, "x", T0)
    assert webhook.deliver(event) is True
    assert receiver.auth == ["Basic YWxlcnQ6czNjcmV0"]


def test_alert_frames_reach_clients_of_any_subscription():
    protocol = atw.DashboardProtocol(atw.Cache(0.25, {}), "auto")

    class Client(object):
        subscription = ("nvidia0", True, "full")
    frame = atw.OutFrame(None, "alert", b"{}", b"")
    assert protocol.wants(Client(), frame)
    assert not protocol.wants(Client(), atw.OutFrame("card0", "stats", b"{}", b""))


# -- issue #15: an active alert tells today's truth ----------------------------------


def rising_then_critical():
    """4 Hz: 70 °C for 5 s, then 86 -> 93.9 °C over 40 s (a warning whose value keeps
    moving), then 97 °C for 15 s (critical), then 60 °C for 10 s (clearing, not yet resolved)."""
    temps = [70.0] * 20 + [86.0 + 0.05 * i for i in range(160)] + [97.0] * 60 + [60.0] * 40
    return [(T0 + i * 0.25, temp) for i, temp in enumerate(temps)]


def test_an_active_alert_follows_the_live_value_with_one_event_and_webhook_call_per_change(
        receiver):
    store = FakeStore()
    cache, engine, webhook, frames = make_engine(webhook_url=receiver.url, store=store)
    for t, temp in rising_then_critical():
        cache.publish_stats("card0", t, gpu_metrics(temp_c=temp))
        engine.drain()
        if t == T0 + 40:                                 # mid-warning: hello and /plain are live
            active = cache.alerts()
            assert [a["severity"] for a in active] == ["warning"]
            assert active[0]["value"] == temp and "%.1f" % temp in active[0]["summary"]
            hello = json.loads(cache.hello_payload("auto"))
            assert hello["alerts"][0]["summary"] == active[0]["summary"]
            gpus, procs = cache.snapshot()
            assert active[0]["summary"] in atw.render_plain(gpus, procs, 2, alerts=cache.alerts())
    alerts = [json.loads(f.payload) for f in frames if f.kind == "alert"]
    changes = [a for a in alerts if not a.get("update")]
    assert [(a["state"], a["severity"]) for a in changes] == [("firing", "warning"),
                                                             ("firing", "critical")]
    assert len(store.events) == 2                        # one history row per change
    for event in webhook._queue.drain():
        webhook.deliver(event)
    assert len(receiver.bodies) == 2                     # one webhook call per change
    assert receiver.bodies[0][2]["alerts"][0]["annotations"]["summary"] == changes[0]["summary"]
    updates = [a for a in alerts if a.get("update")]
    assert {frozenset(a) for a in alerts} == {frozenset(changes[0])}   # one shape: changes, updates
    warning = [u for u in updates if u["severity"] == "warning"]
    assert len(warning) >= 20 and len({u["summary"] for u in warning}) == len(warning)
    assert all(u["started"] == changes[0]["started"] and u["ts"] == changes[0]["ts"]
               for u in warning)                          # the same alert, not a new event
    stamps = [atw.parse_iso_ts(u["updated"]) for u in warning]
    assert all(b - a >= atw.ALERT_UPDATE_EVERY_S for a, b in zip(stamps, stamps[1:]))
    live = engine.active()[0]                            # cooled, within clear_for: clearing
    assert (live["severity"], live["value"]) == ("critical", 60.0)
    assert live["summary"].endswith(", clearing") and updates[-1]["summary"] == live["summary"]
    assert cache.alerts() == engine.active()
    assert engine.recent(T0, T0 + 3600) == changes       # the events themselves stay as they were


def test_the_vram_full_soon_summary_names_the_process_and_the_live_time():
    rules = atw.parse_alert_rules('{"vram_full_soon": {"for": 0}}')
    cache, engine, _, frames = make_engine(rules)
    engine.offer_procs("card0", atw.build_procs_message("card0", T0, atw.build_procs_entry(
        [atw.build_proc_row(pid=1037, name="python3", vram_bytes=GiB)], 1,
        atw.build_capabilities("fdinfo", True, True, ["gfx"])), atw.build_visibility(True), {}))
    for i, low in enumerate((85, 60, 40)):
        forecast = atw.new_vram_forecast("trend", [50 << 20, 51 << 20], [low, low + 2], 1037)
        engine.offer_stats("card0", T0 + 2 * i, gpu_metrics(vram_forecast=forecast))
    engine.offer_stats("card0", T0 + 8, gpu_metrics(vram_forecast=atw.new_vram_forecast(
        "step", None, None, None, -7 * GiB)))
    engine.drain()
    summaries = [json.loads(f.payload)["summary"] for f in frames if f.kind == "alert"]
    assert summaries[0] == "card0: VRAM full in 85 s or later (growing 50.0\u201351.0 MiB/s, " \
                           "mostly python3 (pid 1037))"
    assert summaries[1:3] == [s.replace("85 s", t) for s, t in ((summaries[0], "60 s"),
                                                                 (summaries[0], "40 s"))]
    assert summaries[3] == "card0: VRAM no longer filling (a step of -7.00 GiB), clearing"
    assert engine.active()[0]["summary"] == summaries[3]


def test_a_real_server_keeps_the_active_summary_live_and_calls_the_webhook_once_per_change(
        server, receiver, tmp_path):
    """--demo-scenario leak: card0's VRAM grows 0.3 %/s. vram_usage fires warning at
    once and critical at 54 %; afterwards only its value and summary move."""
    from wsclient import RawWebSocket
    rules = tmp_path / "rules.json"
    rules.write_text('{"vram_usage": {"warn": 10, "warn_clear": 5, "crit": 54, '
                     '"crit_clear": 53.5, "for": 0}}')
    srv = server(env={"APP_ALERT_RULES": str(rules), "APP_ALERT_WEBHOOK_URL": receiver.url},
                 args=["--demo", "--demo-gpus", "1", "--demo-scenario", "leak", "--interval", "250ms"])

    def critical():
        body = srv.get_json("/api/alerts")[1]
        active = [a for a in body["active"] if a["rule"] == "vram_usage"]
        return body if active and active[0]["severity"] == "critical" else None
    body = wait_for(critical, 20, interval=0.2, message="vram_usage critical")
    fired = [e for e in body["events"] if e["rule"] == "vram_usage"][-1]
    assert (fired["state"], fired["severity"]) == ("firing", "critical")

    def moved():
        active = [a for a in srv.get_json("/api/alerts")[1]["active"] if a["rule"] == "vram_usage"]
        return active[0] if active and active[0]["summary"] != fired["summary"] else None
    live = wait_for(moved, 10, interval=0.2, message="a live summary")
    assert live["value"] > fired["value"] and live["started"] == fired["started"]
    with RawWebSocket.connect("127.0.0.1", srv.port) as ws:
        hello = ws.recv_json()
        assert hello["type"] == "hello"
        mine = [a for a in hello["alerts"] if a["rule"] == "vram_usage"][0]
        assert mine["summary"] != fired["summary"] and mine["value"] >= live["value"]
        update, _ = ws.recv_until(lambda m: m.get("type") == "alert" and m.get("update"), timeout=10)
        assert update["rule"] == "vram_usage" and update["summary"] != fired["summary"]
    assert "VRAM" in srv.get("/plain").body.decode()
    events = [e for e in srv.get_json("/api/alerts")[1]["events"] if e["rule"] == "vram_usage"]
    assert [(e["state"], e["severity"]) for e in events] == [("firing", "warning"),
                                                            ("firing", "critical")]

    def calls():     # this rule's webhook calls (the host's RAM may raise host_memory here)
        return [b[2] for b in receiver.bodies if b[2]["groupLabels"]["alertname"] == "vram_usage"]
    wait_for(lambda: len(calls()) >= 2, 10, message="two webhook calls")
    assert [b["status"] for b in calls()] == ["firing", "firing"]   # one per change, no more
    assert [b["alerts"][0]["labels"]["severity"] for b in calls()] == ["warning", "critical"]


def test_samples_do_not_wake_the_alert_thread_each_time():
    """At rest the engine woke once per sample (4 Hz per GPU, plus procs and
    host): now its once-a-second pass takes them, unless the inbox is half
    full; a change of the GPU list still wakes it at once."""
    cache, engine, _, _ = make_engine()
    for i in range(8):
        cache.publish_stats("card0", T0 + i * 0.25, gpu_metrics())
    assert len(engine._inbox) == 8 and not engine._inbox.ready.is_set()
    for i in range(atw.ALERT_QUEUE_ITEMS // 2):
        engine.offer_host(T0 + i, {})
    assert engine._inbox.ready.is_set()
    engine.drain()
    engine._inbox.ready.clear()
    cache.set_gpus([])
    assert engine._inbox.ready.is_set()
