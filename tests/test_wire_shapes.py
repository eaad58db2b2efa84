"""One builder per wire shape, and the README's *JSON contracts* as the truth:
every example there (a ```json block named by the word after ``json``) has
exactly the keys its builder makes, and a real server sends and answers those
shapes, the placeholders before a first sample or scan included."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

import amdgpu_top_web as m
from conftest import PROGRAM, REPO, server_env, wait_for
from wsclient import RawWebSocket

T = 1796205600.25           # 2026-12-02T10:00:00.250Z


def contract_examples():
    """{name: [example object]} from the README's JSON contracts section."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text[text.index("\n## JSON contracts\n"):]
    section = section[:section.index("\n## ", 5)]
    examples = {}
    for name, body in re.findall(r"^```json(?: +(\S+))?\n(.*?)^```$", section, re.M | re.S):
        assert name, "an unnamed json example in JSON contracts: %.80s" % body
        assert name not in examples, "two examples named %s" % name
        body = re.sub(r",\s*…", "", body).replace("…", "")       # "more of the same"
        decoder, objects, rest = json.JSONDecoder(), [], body.strip()
        while rest:
            obj, end = decoder.raw_decode(rest)
            objects.append(obj)
            rest = rest[end:].strip()
        examples[name] = objects
    return examples


EXAMPLES = contract_examples()


def keys(name, path=()):
    """The documented key set of example `name` (every object in it has the same)."""
    sets = []
    for obj in EXAMPLES[name]:
        for step in path:
            obj = obj[step]
        sets.append(set(obj))
    assert all(s == sets[0] for s in sets), (name, sets)
    return sets[0]


INFO = m.GpuInfo(id="card1", pci="0000:03:00.0", pci_id="1002:73bf", revision="c0",
                 name="AMD Radeon RX 6900 XT", render_node="/dev/dri/renderD128", driver="amdgpu",
                 apu=False, demo=False, device_dir=None, hwmon_dir=None)


def procs_message():
    row = m.build_proc_row(pid=1234, name="blender", vram_bytes=1 << 20, gtt_bytes=0)
    entry = m.build_procs_entry([row], 1, m.build_capabilities("fdinfo", True, True, ["gfx"]))
    return m.build_procs_message("card1", T, entry, m.build_visibility(True),
                                 {"cut_short": False, "duration_s": 0.004})


def test_every_shape_has_an_example():
    assert set(EXAMPLES) == {
        "identity", "stats", "procs", "host", "gpus", "alert", "hello", "hello.history", "history",
        "subscribed", "pong", "error", "api.gpus", "api.error", "api.healthz", "api.readyz",
        "api.version", "api.alerts", "api.processes", "api.run_history", "api.gpu_processes",
        "api.fleet.targets", "api.fleet.history",
        "once", "fleet", "api.fleet_host"}


def test_frame_builders_make_the_documented_keys():
    assert set(m.identity_json(INFO)) == keys("identity")
    stats = m.build_stats_message("card1", T, dict.fromkeys(m.METRIC_KEYS))
    assert set(stats) == keys("stats") and set(stats["metrics"]) == keys("stats", ["metrics"])
    host = m.build_host_message(T, m.build_host())
    assert set(host) == keys("host") and set(host["host"]) == keys("host", ["host"])
    gpus = m.build_gpus_message([INFO])
    assert set(gpus) == keys("gpus") and set(gpus["gpus"][0]) == keys("gpus", ["gpus", 0])
    change = {"severity": "warning", "state": "firing", "started": T, "ended": None, "value": 90.0}
    assert set(m.build_alert_event("gpu_temperature", "card0", change, "hot", T)) == keys("alert")
    assert set(m.build_subscribed_message("card1", True)) == keys("subscribed")
    assert set(m.build_pong_message()) == keys("pong")
    assert set(m.build_error_message("bad JSON")) == keys("error")
    ring = m.HistoryRing(4)
    ring.push(T, dict.fromkeys(m.HISTORY_KEYS, 1.0))
    assert set(ring.to_json(0.25)) == keys("hello.history")
    assert set(ring.to_json(0.25)["series"]) == keys("hello.history", ["series"])


def test_procs_builder_makes_the_documented_keys_at_every_level():
    procs = procs_message()
    assert set(procs) == keys("procs")
    for part in ("capabilities", "totals", "visibility", "scan"):
        assert set(procs[part]) == keys("procs", [part]), part
    assert set(procs["processes"][0]) == keys("procs", ["processes", 0])


def test_answer_builders_make_the_documented_keys():
    live = m.build_live_history_answer("card1", m.HistoryRing(4).to_json(0.25), T)
    assert set(live) == keys("history")
    assert set(m.build_gpus_answer([dict(m.identity_json(INFO), metrics=None)], False)) == keys("api.gpus")
    assert set(m.build_error_answer("not found")) == keys("api.error")
    assert set(m.build_health_answer({"state": "ok"})) == keys("api.healthz")
    assert set(m.build_ready_answer(2)) == keys("api.readyz")
    assert set(m.build_version_answer("1", (3, 8, 10))) == keys("api.version")
    assert set(m.build_alerts_answer(T, T, "memory", [], [])) == keys("api.alerts")
    assert set(m.build_runs_answer(T, T, [])) == keys("api.processes")
    row = (1,) + tuple(1 for _ in m.RUN_COLUMNS)
    assert set(m.history_run_json(row, T)) == keys("api.processes", ["processes", 0])
    assert set(m.build_run_history_answer({}, [], {"vram_bytes": [], "gtt_bytes": [],
                                                   "engine_pct": []})) == keys("api.run_history")
    assert set(m.build_procs_at_answer("card1", T, None, [])) == keys("api.gpu_processes")
    assert set(m.build_once_snapshot("1", T, 0.5, None, [])) == keys("once")
    peer = m.parse_fleet_peer("http://gpu-a:8080")
    assert set(m.build_fleet_targets([peer])[0]) == keys("api.fleet.targets", [0])
    assert set(m.build_fleet_targets([peer])[0]["labels"]) == keys("api.fleet.targets", [0, "labels"])
    assert set(m.build_fleet_history_answer("gpu_busy_pct", T, 12.0, 2, {})) == keys("api.fleet.history")


def test_fleet_builders_make_the_documented_keys():
    identity = m.identity_json(INFO)
    gpu = m.build_fleet_gpu(identity, dict.fromkeys(m.METRIC_KEYS), procs_message(), None)
    host = m.build_local_fleet_host("gpu-a", T, [(identity, None)], {"card1": procs_message()},
                                    m.build_host(), [{"rule": "gpu_temperature", "gpu_id": "card1",
                                                      "severity": "warning", "summary": "hot",
                                                      "started": "x", "state": "firing"}])
    assert set(host) == keys("api.fleet_host") == keys("fleet", ["hosts", 0])
    assert set(host["host"]) == keys("fleet", ["hosts", 0, "host"])
    assert set(host["alerts"][0]) == keys("fleet", ["hosts", 0, "alerts", 0])
    assert set(gpu) == keys("fleet", ["hosts", 0, "gpus", 0]) == set(host["gpus"][0])
    assert set(gpu["top_process"]) == keys("fleet", ["hosts", 0, "gpus", 0, "top_process"])
    message = m.build_fleet_message(T, "peers", 2.0, [host])
    assert set(message) == keys("fleet") and set(message["totals"]) == keys("fleet", ["totals"])


def test_placeholders_have_the_keys_of_the_real_answers():
    """Before the first sample, scan or enumeration: the same keys, null values."""
    assert set(m.build_stats_message("card1", None, None)) == keys("stats")
    assert set(m.build_procs_message("card1", None, None, None, None)) == keys("procs")
    placeholder = m.build_procs_message("card1", None, None, None, None)
    assert set(placeholder["capabilities"]) == keys("procs", ["capabilities"])
    assert set(m.build_host_message(None, None)) == keys("host")
    assert set(m.build_ready_answer(None)) == keys("api.readyz")
    empty = m.build_live_history_answer("card1", m.HistoryRing(4).to_json(0.25), T)
    assert empty["ts"] == [] and empty["from"] == empty["to"]


def test_the_live_ring_is_the_finest_tier():
    """min = avg = max = the sample, count 1 per sample, ts and step from the ring."""
    ring = m.HistoryRing(4)
    ring.push(T, {"gpu_busy_pct": 42})
    ring.push(T + 0.25, {"gpu_busy_pct": None})
    live = m.build_live_history_answer("card1", ring.to_json(0.25), T + 1)
    assert live["tier"] == "live" and live["step_s"] == 0.25 and live["gpu_id"] == "card1"
    assert live["ts"] == [1796205600250, 1796205600500] and live["count"] == [1, 1]
    assert live["series"]["gpu_busy_pct"] == {"min": [42, None], "avg": [42, None],
                                              "max": [42, None]}
    assert live["from"] == "2026-12-02T10:00:00.250Z" and live["to"] == "2026-12-02T10:00:00.750Z"


# -- a real server sends and answers these shapes ------------------------------

@pytest.fixture(scope="module")
def demo(server_module):
    """--demo with history in memory and the process scan on."""
    proc = server_module(args=["--demo", "--demo-gpus", "2", "--proc-enable",
                               "--proc-scan-interval", "500ms"],
                         env={"APP_SAMPLE_INTERVAL": "100ms", "APP_HISTORY_PATH": "memory"})
    proc.wait_metrics(count=2)
    return proc


def answer(proc, path, status=200):
    got, body = proc.get_json(path)
    assert got == status, (path, body)
    return body


def test_server_history_answers_have_one_shape(demo):
    """Without a query (the live ring) and with one (the store): the same keys."""
    live = answer(demo, "/api/gpus/card0/history")
    assert set(live) == keys("history") and live["tier"] == "live" and live["ts"]
    assert set(live["series"]["gpu_busy_pct"]) == keys("history", ["series", "gpu_busy_pct"])

    def stored():
        got, body = demo.get_json("/api/gpus/card0/history?range=30m")
        return body if got == 200 else None
    body = wait_for(stored, 10, message="the store open")
    assert set(body) == keys("history") and body["tier"] != "live"
    assert set(answer(demo, "/api/host/history?range=30m")) == keys("history") - {"gpu_id"}


def test_server_answers_have_the_documented_keys(demo):
    assert set(answer(demo, "/api/gpus")) == keys("api.gpus")
    assert set(answer(demo, "/api/gpus")["gpus"][0]) == keys("api.gpus", ["gpus", 0])
    assert set(answer(demo, "/api/gpus/card9/metrics", 404)) == keys("api.error")
    assert set(answer(demo, "/api/healthz")) == keys("api.healthz")
    assert set(answer(demo, "/api/readyz")) == keys("api.readyz")
    assert set(answer(demo, "/api/version")) == keys("api.version")
    assert set(answer(demo, "/api/alerts")) == keys("api.alerts")
    wait_for(lambda: demo.get_json("/api/processes?range=30m")[0] == 200, 10, message="store open")
    assert set(answer(demo, "/api/processes?range=30m")) == keys("api.processes")
    assert set(answer(demo, "/api/gpus/card0/processes?at=%d" % time.time())) == \
        keys("api.gpu_processes")
    assert set(answer(demo, "/api/gpus/card0/metrics")) == keys("stats")
    assert set(answer(demo, "/api/host")) == keys("host")
    assert set(answer(demo, "/api/fleet/host")) == keys("api.fleet_host")
    assert set(answer(demo, "/api/fleet/host")["gpus"][0]) == keys("fleet", ["hosts", 0, "gpus", 0])
    assert set(answer(demo, "/api/fleet")) == keys("fleet")


def test_server_frames_have_the_documented_keys(demo):
    with RawWebSocket.connect("127.0.0.1", demo.port) as ws:
        hello = ws.recv_json()
        assert set(hello) == keys("hello")
        assert {"procs", "prometheus", "demo", "history_window_s"} <= set(hello["features"])
        assert set(hello["features"]) <= keys("hello", ["features"])
        assert set(hello["history"]["card0"]) == keys("hello.history")
        ws.send_json({"type": "subscribe", "gpu_id": "card0"})
        assert set(ws.recv_until(lambda f: f.get("type") == "subscribed")[0]) == keys("subscribed")
        ws.send_json({"type": "ping"})
        assert set(ws.recv_until(lambda f: f.get("type") == "pong")[0]) == keys("pong")
        ws.send_json({"type": "subscribe", "gpu_id": "card9"})
        assert set(ws.recv_until(lambda f: f.get("type") == "error")[0]) == keys("error")


def test_procs_placeholder_has_the_keys_of_a_scan(server):
    """With the process scan off, GET …/procs is the placeholder for good: the
    procs keys (capabilities, totals, visibility and scan too), null values."""
    proc = server("multi_gpu", env={"APP_PROC_ENABLE": "false"})
    proc.wait_metrics()
    body = answer(proc, "/api/gpus/card1/procs")
    assert set(body) == keys("procs") and body["ts"] is None and body["processes"] is None
    assert set(body["capabilities"]) == keys("procs", ["capabilities"])


def test_once_json_has_the_documented_keys():
    done = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], cwd=REPO,
                          env=server_env("multi_gpu"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)
    assert set(snapshot) == keys("once")
    identity = set(m.identity_json(INFO))
    assert set(snapshot["gpus"][0]) == identity | {"metrics", "procs"}
    assert keys("once", ["gpus", 0]) <= identity | {"metrics", "procs"}


def test_overview_procs_keep_the_rows_the_top_process_may_be():
    """build_procs_top_message: the procs frame's keys, processes cut to the rows the
    page's busiest() may pick (engine use by either reckoning, lowest PID on a tie;
    the largest VRAM user; the largest KFD one); the first row when none is known."""
    row = lambda pid, **kw: m.build_proc_row(pid=pid, name="p%d" % pid, **kw)
    rows = [row(10, vram_bytes=8 << 30, gtt_bytes=0),                      # VRAM
            row(11, vram_bytes=1 << 30, gtt_bytes=0, kfd=True),            # KFD
            row(12, vram_bytes=2 << 30, gtt_bytes=0, kfd=True),            # KFD, larger
            row(13, vram_bytes=0, gtt_bytes=0, gpu_time_ms_per_s=400.0),   # engine (fdinfo)
            row(9, vram_bytes=0, gtt_bytes=0, gpu_time_ms_per_s=400.0),    # tie: lower PID
            row(14, vram_bytes=0, gtt_bytes=0, engines_pct={"gfx": 30.0, "mem": 90.0}),
            row(15, vram_bytes=1, gtt_bytes=0)]
    entry = m.build_procs_entry(rows, 7, m.build_capabilities("fdinfo", True, True, ["gfx"]))
    full = m.build_procs_message("card1", T, entry, m.build_visibility(True), {})
    cut = m.build_procs_top_message(full)
    assert set(cut) == set(full) and cut["totals"] == full["totals"]
    assert sorted(r["pid"] for r in cut["processes"]) == [9, 10, 12, 14]
    assert [r["pid"] for r in cut["processes"]] == [r["pid"] for r in full["processes"]
                                                    if r["pid"] in (9, 10, 12, 14)]
    unknown = [row(20), row(21)]
    entry = m.build_procs_entry(unknown, 2, m.build_capabilities("fdinfo", None, None, []))
    message = m.build_procs_message("card1", T, entry, m.build_visibility(True), {})
    assert [r["pid"] for r in m.build_procs_top_message(message)["processes"]] == [20]
    empty = m.build_procs_message("card1", None, None, None, {})
    assert m.build_procs_top_message(empty) == empty
