"""gpu_held_idle (#18 item 4): a process holding VRAM while its engines idle.

The pure rule (HeldIdleRule) with the times given; the engine's frames,
webhook body, Prometheus series and history rows per process run; the rules
file; and a real --demo server (--demo-scenario held_idle, a 2 s hold) whose
alert reaches /ws, /api/alerts, a real loopback webhook receiver and the page.
"""
import json
import os
import subprocess
import sys

import pytest

import amdgpu_top_web as atw
from conftest import wait_for
from test_alerts import Receiver, make_engine, gpu_metrics
from wsclient import RawWebSocket

PROGRAM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "amdgpu_top_web.py")
T0 = 1764686400.0
GiB = 1 << 30


def row(pid, vram=4 * GiB, busy=0.0, start=None, kfd=False, engines=None, **extra):
    return atw.build_proc_row(
        pid=pid, name="proc%d" % pid, user="frank", vram_bytes=vram, kfd=kfd,
        engines_pct={"gfx": busy, "compute": 0.0} if engines is None else engines,
        start_time=1000 + pid if start is None else start, **extra)


def procs(t, rows, engines_known=True, cut_short=False, gpu="card0"):
    entry = atw.build_procs_entry(rows, len(rows), atw.build_capabilities(
        "nvml" if not engines_known else "fdinfo", True, engines_known, ("gfx", "compute")))
    return atw.build_procs_message(gpu, T0 + t, entry, None,
                                   {"cut_short": cut_short, "duration_s": 0.0})


def rules(**over):
    return atw.parse_alert_rules(json.dumps({"gpu_held_idle": dict({"for": 60}, **over)}))


def run(rule, frames, busy=None):
    """[(t, rows or message)] -> the changes as (t, state, pid, detail)."""
    out = []
    for t, rows in frames:
        message = rows if isinstance(rows, dict) else procs(t, rows)
        for change, _, process, detail in rule.on_procs("card0", message, T0 + t, busy):
            if change is not None:
                out.append((t, change["state"], process["pid"], detail))
    return out


# -- the pure rule ----------------------------------------------------------------------


def test_fires_once_after_for_and_not_before():
    rule = atw.HeldIdleRule(rules()["gpu_held_idle"])
    events = run(rule, [(t, [row(42), row(7, busy=30.0)]) for t in range(0, 300, 2)])
    assert [e[:3] for e in events] == [(60, "firing", 42)]
    assert events[0][3] == "proc42, pid 42, user frank: 4.00 GiB, busy 0.0 %"


def test_resolved_when_it_works_but_not_by_a_short_burst():
    rule = atw.HeldIdleRule(rules()["gpu_held_idle"])
    frames = ([(t, [row(42)]) for t in range(0, 62, 2)]
              + [(t, [row(42, busy=40.0)]) for t in range(62, 80, 2)]        # 18 s of work
              + [(t, [row(42)]) for t in range(80, 100, 2)]
              + [(t, [row(42, busy=40.0)]) for t in range(100, 200, 2)])     # real work
    events = run(rule, frames)
    assert [e[:3] for e in events] == [(60, "firing", 42), (160, "resolved", 42)]
    assert events[1][3] == "proc42, pid 42, user frank works again"


def test_resolved_when_it_frees_its_vram():
    rule = atw.HeldIdleRule(rules()["gpu_held_idle"])
    frames = ([(t, [row(42)]) for t in range(0, 62, 2)]
              + [(t, [row(42, vram=200 << 20)]) for t in range(62, 140, 2)])
    events = run(rule, frames)
    assert [e[:3] for e in events] == [(60, "firing", 42), (122, "resolved", 42)]
    assert events[1][3].endswith("freed its VRAM")


def test_resolved_at_once_when_it_exits_and_a_cut_short_scan_is_no_exit():
    rule = atw.HeldIdleRule(rules()["gpu_held_idle"])
    frames = ([(t, [row(42)]) for t in range(0, 62, 2)]
              + [(t, procs(t, [], cut_short=True)) for t in range(62, 80, 2)]
              + [(80, []), (82, []), (84, [])])
    events = run(rule, frames)
    assert [e[:3] for e in events] == [(60, "firing", 42), (84, "resolved", 42)]
    assert events[1][3].endswith("exited")


def test_a_new_run_of_the_same_pid_is_a_new_alert():
    rule = atw.HeldIdleRule(rules()["gpu_held_idle"])
    frames = ([(t, [row(42)]) for t in range(0, 62, 2)]
              + [(t, [row(42, start=99999)]) for t in range(62, 200, 2)])
    out = []
    for t, rows in frames:
        for change, _, process, _ in rule.on_procs("card0", procs(t, rows), T0 + t):
            if change is not None:
                out.append((t, change["state"], process["start_time"]))
    assert out == [(60, "firing", 1042), (66, "resolved", 1042), (122, "firing", 99999)]


def test_unknown_busy_is_never_guessed():
    """No per-process engine use (NVML without it): the GPU's busy stands in for
    the only process on the GPU; beside another process there is no alert.
    A ROCm (kfd) process counts as unknown: its queues never show in the counters."""
    levels = rules()["gpu_held_idle"]
    unknown = dict(engines={})
    lonely = [(t, procs(t, [row(42, **unknown)], engines_known=False)) for t in range(0, 100, 2)]
    assert [e[:3] for e in run(atw.HeldIdleRule(levels), lonely, busy=0.0)] == [(60, "firing", 42)]
    assert run(atw.HeldIdleRule(levels), lonely, busy=35.0) == []
    assert run(atw.HeldIdleRule(levels), lonely, busy=None) == []
    pair = [(t, procs(t, [row(42, **unknown), row(7, **unknown)], engines_known=False))
            for t in range(0, 100, 2)]
    assert run(atw.HeldIdleRule(levels), pair, busy=0.0) == []
    kfd = [(t, [row(42, kfd=True), row(7, busy=20.0)]) for t in range(0, 100, 2)]
    assert run(atw.HeldIdleRule(levels), kfd, busy=0.0) == []
    assert atw.compute_proc_busy_pct(row(1, engines={"sm": 0.0, "mem": 35.0}), True) == 0.0


def test_the_rules_file_tunes_it_and_bad_values_name_the_setting(tmp_path):
    levels = atw.parse_alert_rules(json.dumps({"gpu_held_idle": {
        "min_vram": "512MiB", "for": "10m", "max_busy": 5}}))["gpu_held_idle"]
    assert (levels["min_vram"], levels["for_s"], levels["max_busy"]) == (512 << 20, 600.0, 5.0)
    assert atw.parse_alert_rules('{"gpu_held_idle": {"min_vram": 2147483648}}')[
        "gpu_held_idle"]["min_vram"] == 2 * GiB
    for bad, key in (({"min_vram": "lots"}, "gpu_held_idle.min_vram"),
                     ({"min_vram": -1}, "gpu_held_idle.min_vram"),
                     ({"max_busy": 0}, "gpu_held_idle.max_busy"),
                     ({"max_busy": "1%"}, "gpu_held_idle.max_busy"),
                     ({"for": "soon"}, "gpu_held_idle.for")):
        with pytest.raises(ValueError) as info:
            atw.parse_alert_rules(json.dumps({"gpu_held_idle": bad}))
        assert key in str(info.value)
    path = tmp_path / "rules.json"
    path.write_text('{"gpu_held_idle": {"max_busy": 200}}')
    result = subprocess.run([sys.executable, PROGRAM, "--demo", "--listen", "127.0.0.1:0",
                             "--alert-rules", str(path)], capture_output=True, timeout=20,
                            env={"PATH": os.environ.get("PATH", "")})
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "APP_ALERT_RULES" in lines[0] and "gpu_held_idle.max_busy" in lines[0]


# -- the engine: frames, webhook labels, Prometheus, history rows ------------------------


WHO = dict(unit="slurmstepd.scope", slurm={"job": 4242, "step": "0"}, container=None)


def test_the_engine_names_the_process_in_frames_webhook_and_prometheus():
    cache, engine, _, frames = make_engine(rules(**{"for": 10}))
    who = dict(WHO) if "slurm" in dict(atw.PROC_ROW_DEFAULTS) else {}   # with #18 item 1's keys
    for t in range(0, 14, 2):
        cache.publish_stats("card0", T0 + t, gpu_metrics(gpu_busy_pct=3.0))
        cache.publish_procs("card0", procs(t, [row(42, **who), row(43, **who), row(7, busy=50.0)]))
        engine.drain()
    alerts = [a for a in (json.loads(f.payload) for f in frames if f.kind == "alert")
              if not a["update"]]
    assert [(a["state"], a["process"]["pid"]) for a in alerts] == [("firing", 42), ("firing", 43)]
    event = alerts[0]
    assert event["rule"] == "gpu_held_idle" and event["severity"] == "warning"
    assert event["process"]["name"] == "proc42" and event["process"]["user"] == "frank"
    assert "proc42, pid 42, user frank" in event["summary"]
    assert len(cache.alerts()) == 2          # two runs on one GPU: two active alerts
    labels = atw.build_webhook_payload(event, "box:8080")["alerts"][0]["labels"]
    assert labels["pid"] == "42" and labels["process"] == "proc42" and labels["user"] == "frank"
    if who:
        assert labels["slurm_job"] == "4242" and labels["unit"] == "slurmstepd.scope"
        assert "proc42, pid 42, user frank, job 4242 step 0: 4.00 GiB" in event["summary"]
    gpus, procs_now = cache.snapshot()
    text = atw.render_prometheus(gpus, procs_now, {}, 0, alerts=cache.alerts())
    assert ('amdgpu_alert_active{gpu="card0",alertname="gpu_held_idle",severity="warning",'
            'pid="42"} 1') in text and 'pid="43"} 1' in text
    cache.publish_procs("card0", procs(14, [row(43, vram=1 << 20), row(7, busy=50.0)]))
    for t in (16, 18):
        cache.publish_procs("card0", procs(t, [row(7, busy=50.0)]))
    engine.drain()
    alerts = [a for a in (json.loads(f.payload) for f in frames if f.kind == "alert")
              if not a["update"]]
    assert [(a["state"], a["process"]["pid"]) for a in alerts[2:]] == [("resolved", 42)]
    assert cache.alerts() and cache.alerts()[0]["process"]["pid"] == 43


def test_a_vanished_gpu_resolves_its_runs_alerts():
    cache, engine, _, frames = make_engine(rules(**{"for": 0}))
    cache.publish_stats("card0", T0, gpu_metrics())
    cache.publish_procs("card0", procs(0, [row(42)]))
    engine.drain()
    engine.offer_gpus([])
    engine.drain()
    states = [json.loads(f.payload)["state"] for f in frames if f.kind == "alert"
              and json.loads(f.payload)["rule"] == "gpu_held_idle"]
    assert states == ["firing", "resolved"]


def test_history_keeps_two_runs_alerts_started_in_the_same_second(tmp_path):
    store = atw.HistoryStore(str(tmp_path / "h.sqlite3"), clock=lambda: T0,
                             proc_root=str(tmp_path))
    store.open()
    change = {"severity": "warning", "state": "firing", "started": T0, "ended": None, "value": 1}
    for pid in (42, 43):
        process = atw.build_alert_process(row(pid))
        store.offer_alert(atw.build_alert_event("gpu_held_idle", "card0", change, "idle", T0,
                                                process))
    store.offer_alert(atw.build_alert_event("vram_usage", "card0", dict(change, value=91.0),
                                            "VRAM", T0))
    store.cycle()
    events = store.reader.query_alerts(T0 - 1, T0 + 60)
    assert sorted((e["rule"], (e["process"] or {}).get("pid")) for e in events) == [
        ("gpu_held_idle", 42), ("gpu_held_idle", 43), ("vram_usage", None)]
    store.close()


# -- a real server ---------------------------------------------------------------------


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def start_idle_demo(server, tmp_path, receiver, vendor=None):
    path = tmp_path / "rules.json"
    path.write_text('{"gpu_held_idle": {"for": "2s"}}')
    env = {"APP_DEMO_GPUS": "1", "APP_PROC_ENABLE": "true", "APP_PROC_SCAN_INTERVAL": "500ms",
           "APP_ALERT_RULES": str(path), "APP_ALERT_WEBHOOK_URL": receiver.url,
           "APP_HISTORY_PATH": str(tmp_path / "history.sqlite3")}
    if vendor:
        env["APP_VENDOR_DIR"] = vendor
    return server(args=["--demo", "--demo-scenario", "held_idle"], env=env)


def test_a_real_demo_server_raises_it_over_ws_api_and_webhook(server, tmp_path, receiver):
    srv = start_idle_demo(server, tmp_path, receiver)
    with RawWebSocket.connect("127.0.0.1", srv.port) as ws:
        msg, _ = ws.recv_until(lambda m: m.get("type") == "alert" and m["rule"] == "gpu_held_idle"
                               or m.get("type") == "hello" and any(
                                   a["rule"] == "gpu_held_idle" for a in m["alerts"]), timeout=20)
    event = msg if msg["type"] == "alert" else [a for a in msg["alerts"]
                                                 if a["rule"] == "gpu_held_idle"][0]
    assert event["gpu_id"] == "card0" and event["state"] == "firing"
    assert event["process"]["name"] == "jupyter" and event["process"]["user"] == "frank"
    assert "jupyter, pid %d, user frank" % event["process"]["pid"] in event["summary"]
    status, body = srv.get_json("/api/alerts")
    assert status == 200
    assert [a["process"]["name"] for a in body["active"] if a["rule"] == "gpu_held_idle"] == [
        "jupyter"]

    def hooked():
        return [b for _, _, b in receiver.bodies if b["groupLabels"]["alertname"] == "gpu_held_idle"]
    body = wait_for(hooked, 15, message="the held-idle webhook call")[0]
    labels = body["alerts"][0]["labels"]
    assert labels["process"] == "jupyter" and labels["user"] == "frank"
    assert labels["pid"] == str(event["process"]["pid"]) and labels["gpu"] == "card0"
    assert labels["slurm_job"] == "81723" and labels["unit"] == "slurmstepd.scope"
    assert event["process"]["slurm"] == {"job": 81723, "step": "0"}
    assert "user frank, job 81723 step 0: " in event["summary"]

    def stored():
        _, answer = srv.get_json("/api/alerts")
        return [e for e in answer["events"] if e["rule"] == "gpu_held_idle"]
    assert wait_for(stored, 15, message="the stored event")[0]["process"]["name"] == "jupyter"


@pytest.mark.browser
def test_the_page_marks_the_idle_holders_row(server, tmp_path, receiver, browser, vendor_dir):
    srv = start_idle_demo(server, tmp_path, receiver, vendor_dir)
    page = browser.new_page()
    try:
        page.goto(srv.url + "/")
        marker = page.locator('[data-testid="held-idle"]')
        marker.first.wait_for(timeout=20000)
        assert marker.count() == 1
        row_text = page.locator("tr", has=marker).inner_text()
        assert "jupyter" in row_text
        assert "idle" in (marker.get_attribute("title") or "")
    finally:
        page.close()


def test_disabled_it_keeps_no_state_and_sends_nothing():
    cache, engine, _, frames = make_engine(atw.parse_alert_rules(
        '{"gpu_held_idle": {"enabled": false, "for": 0}}'))
    for t in range(0, 10, 2):
        cache.publish_procs("card0", procs(t, [row(42)]))
    engine.drain()
    assert [f for f in frames if f.kind == "alert"] == [] and cache.alerts() == []
