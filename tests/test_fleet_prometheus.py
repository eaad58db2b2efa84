"""The fleet from Prometheus: a REAL Prometheus (Debian's package) scrapes three
real demo servers, found through a hub's /api/fleet/targets as its http_sd
source; the Prometheus fleet source then shows the same hosts, GPUs and values
(within one scrape) as the servers themselves, a killed server as down, and
/api/fleet/history from query_range. The answer parsers run against answers
saved from that Prometheus (testdata/prometheus/), error envelopes and warnings;
the query client against a small recording HTTP server (headers, statuses, caps)."""

import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

import amdgpu_top_web as atw
from conftest import PROGRAM, TESTDATA, debian_tool, get_json, server_env, wait_for

PROM_DATA = os.path.join(TESTDATA, "prometheus")
DEMO_ENV = {"APP_ENABLE_PROMETHEUS": "true", "APP_PROC_ENABLE": "true",
            "APP_PROMETHEUS_PROCESSES": "2", "APP_DEMO_PROCESSES": "3"}
DEMO_GPUS = (1, 2, 3)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prom_get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as resp:
        return json.loads(resp.read().decode("utf-8"))


def prom_query(port, query):
    return prom_get(port, "/api/v1/query?" + atw.urlencode({"query": query}))["data"]["result"]


class Prometheus(object):
    """/usr/bin/prometheus on a loopback port with a temp storage dir."""

    def __init__(self, config_text):
        self.dir = tempfile.mkdtemp(prefix="fleet-prom-")
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as fh:
            fh.write(config_text)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [debian_tool("prometheus", "prometheus"), "--config.file=" + os.path.join(self.dir, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(self.dir, "data"), "--log.level=warn",
             "--web.listen-address=127.0.0.1:%d" % self.port],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"))

        def ready():
            assert self.proc.poll() is None, open(os.path.join(self.dir, "log")).read()
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ready, 60, 0.2, "Prometheus ready")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, True)


HTTP_SD_CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: amdgpu
    http_sd_configs:
      - url: http://127.0.0.1:%d/api/fleet/targets
        refresh_interval: 1s
"""


@pytest.fixture(scope="module")
def fleet(server_module):
    """Three demo servers, a peers hub whose /api/fleet/targets feeds a real
    Prometheus, and a hub reading that Prometheus."""
    debian_tool("prometheus", "prometheus")
    demos = [server_module(args=["--demo", "--demo-gpus", str(n)], env=DEMO_ENV) for n in DEMO_GPUS]
    peers = ",".join(d.url for d in demos)
    hub = server_module(env={"APP_FLEET_PEERS": peers, "APP_FLEET_INTERVAL": "500ms"})
    prom = Prometheus(HTTP_SD_CONFIG % hub.port)
    try:
        for demo in demos:
            demo.wait_metrics(timeout=15)
        wait_for(lambda: len([s for s in prom_query(prom.port, "amdgpu_build_info")]) == 3
                 and len([s for s in prom_query(prom.port, "up") if s["value"][1] == "1"]) == 3,
                 60, 0.25, "Prometheus scraping the three servers")
        # a demo GPU's first samples may lack power (a rate needs two): wait for every GPU's
        wait_for(lambda: len(prom_query(prom.port, 'amdgpu_power_watts{sensor="ppt"}')) == sum(DEMO_GPUS),
                 30, 0.25, "power series of every GPU")
        prom_hub = server_module(env={"APP_FLEET_PROMETHEUS_URL": prom.url, "APP_FLEET_INTERVAL": "500ms",
                                      "APP_FLEET_TIMEOUT": "5s"})
        yield {"demos": demos, "hub": hub, "prom": prom, "prom_hub": prom_hub}
    finally:
        prom.stop()


def source_for(prom, interval_s=1.0):
    config = atw.parse_config([], {"APP_FLEET_PROMETHEUS_URL": prom.url, "APP_FLEET_TIMEOUT": "5s",
                                   "APP_FLEET_INTERVAL": "%gs" % interval_s})
    return atw.make_fleet_prometheus(config)


def instance(demo):
    return "127.0.0.1:%d" % demo.port


# -- build_info, ready, http_sd ------------------------------------------------

def test_metrics_carry_build_info_and_ready(server):
    srv = server(args=["--demo"], env={"APP_ENABLE_PROMETHEUS": "true"})
    srv.wait_metrics()
    text = srv.get("/metrics").body.decode("utf-8")
    python = "%d.%d.%d" % tuple(__import__("sys").version_info[:3])
    assert 'amdgpu_build_info{version="%s",python="%s"} 1\n' % (atw.__version__, python) in text
    assert "\namdgpu_ready 1\n" in text
    assert "# TYPE amdgpu_ready gauge" in text and "# HELP amdgpu_build_info " in text


def test_ready_is_0_before_the_first_enumeration():
    text = atw.render_prometheus([], {}, {}, 0, ready=False)
    assert "\namdgpu_ready 0\n" in text and "amdgpu_build_info{" in text


def test_targets_are_http_sd_grouped_per_scheme_and_path(server):
    srv = server(env={"APP_FLEET_PEERS": "http://10.0.0.2:8080,b=https://gpu-b:8443,"
                                         "c=http://[fd00::1]:80,d=https://gpu-d:443/gpu"})
    response = srv.get("/api/fleet/targets")
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == [
        {"targets": ["10.0.0.2:8080", "[fd00::1]:80"],
         "labels": {"__scheme__": "http", "__metrics_path__": "/metrics"}},
        {"targets": ["gpu-b:8443"], "labels": {"__scheme__": "https", "__metrics_path__": "/metrics"}},
        {"targets": ["gpu-d:443"], "labels": {"__scheme__": "https", "__metrics_path__": "/gpu/metrics"}}]


def test_targets_without_peers_is_an_empty_list_and_follow_the_file(server, tmp_path):
    srv = server(args=["--demo"])
    status, body = get_json(srv.port, "/api/fleet/targets")
    assert (status, body) == (200, [])
    peers = tmp_path / "peers.txt"
    peers.write_text("http://10.0.0.5:8080\n")
    hub = server(env={"APP_FLEET_PEERS": "@%s" % peers})
    assert get_json(hub.port, "/api/fleet/targets")[1][0]["targets"] == ["10.0.0.5:8080"]
    peers.write_text("http://10.0.0.5:8080\nhttp://10.0.0.6:8080 # added\n")
    os.utime(str(peers), (time.time() + 5, time.time() + 5))
    # a change just written is read once two looks found it the same (a request is a look)
    wait_for(lambda: get_json(hub.port, "/api/fleet/targets")[1][0]["targets"] == [
        "10.0.0.5:8080", "10.0.0.6:8080"], 10, 0.1, "the new peer in the targets")


def test_prometheus_scrapes_the_hubs_http_sd_targets(fleet):
    targets = prom_get(fleet["prom"].port, "/api/v1/targets?state=active")["data"]["activeTargets"]
    assert sorted(t["scrapeUrl"] for t in targets) == sorted(d.url + "/metrics" for d in fleet["demos"])
    assert all(t["health"] == "up" and t["labels"]["job"] == "amdgpu" for t in targets)
    assert all(t["discoveredLabels"]["__meta_url"].endswith("/api/fleet/targets") for t in targets)


# -- the Prometheus source against the servers themselves -----------------------

def ring_values(demo, gpu_id, key, at_s):
    """The values the server published from one scrape interval before at_s to just after."""
    ring = demo.get_json("/api/gpus/%s/history" % gpu_id)[1]
    return [v for t, v in zip(ring["ts"], ring["series"][key]["avg"])
            if at_s - 1.5 <= t / 1000.0 <= at_s + 0.5 and v is not None]


def test_the_source_shows_the_same_hosts_gpus_and_values(fleet):
    source = source_for(fleet["prom"])
    try:
        entries = {e["name"]: e for e in source.poll(time.time())}
    finally:
        source.close()
    assert source.error is None
    assert sorted(entries) == sorted(instance(d) for d in fleet["demos"])
    for demo, count in zip(fleet["demos"], DEMO_GPUS):
        entry = entries[instance(demo)]
        assert (entry["source"], entry["page"], entry["state"], entry["error"]) == ("prometheus", None, "up", None)
        assert entry["version"] == atw.__version__ and entry["last_seen"].endswith("Z")
        seen_s = atw.parse_iso_ts(entry["last_seen"])
        gpus = demo.get_json("/api/gpus")[1]["gpus"]
        assert [g["id"] for g in entry["gpus"]] == sorted(g["id"] for g in gpus) and len(gpus) == count
        for gpu, own in zip(entry["gpus"], sorted(gpus, key=lambda g: g["id"])):
            assert (gpu["name"], gpu["vendor"], gpu["uuid"] or "", gpu["pci"]) == \
                (own["name"], own["vendor"], own.get("uuid") or "", own["pci"])
            assert gpu["vram_total_bytes"] == own["metrics"]["vram_total_bytes"]
            for key in ("gpu_busy_pct", "power_w", "temp_c", "vram_used_bytes"):
                if gpu[key] is not None or own["metrics"].get(key) is not None:
                    assert any(gpu[key] == pytest.approx(v, rel=1e-6)
                               for v in ring_values(demo, gpu["id"], key, seen_s)), key
            assert gpu["processes"] is not None and gpu["top_process"]["pid"] > 0
        assert entry["host"]["cpu_count"] >= 1 and entry["host"]["mem_total_bytes"] > 0


def fleet_hosts(hub, source):
    status, body = hub.get_json("/api/fleet")
    assert status == 200 and body["source"] == source
    return body, {h["name"]: h for h in body["hosts"] if h["source"] != "local"}


STATIC_KEYS = ("id", "name", "vendor", "vendor_label", "uuid", "pci", "vram_total_bytes", "power_cap_w",
               "runtime_status")


def test_the_prometheus_hub_shows_what_the_peers_hub_shows(fleet):
    """Both hubs over HTTP: the same hosts (by name), GPUs and identities; the
    moving values as the servers published them within one scrape."""
    names = sorted(instance(d) for d in fleet["demos"])

    def both_up():
        peers, prom = fleet_hosts(fleet["hub"], "peers")[1], fleet_hosts(fleet["prom_hub"], "prometheus")[1]
        ok = all(h["state"] == "up" for h in list(peers.values()) + list(prom.values()))
        return (peers, prom) if ok and sorted(peers) == sorted(prom) == names else None
    peers, prom = wait_for(both_up, 20, 0.25, "both hubs with the three hosts up")
    body = fleet_hosts(fleet["prom_hub"], "prometheus")[0]
    assert body["error"] is None and body["hosts"][0]["source"] == "local"    # the hub's own GPUs first
    for demo in fleet["demos"]:
        a, b = peers[instance(demo)], prom[instance(demo)]
        assert (a["version"], a["page"], b["page"]) == (b["version"], "/hosts/%s/" % instance(demo), None)
        assert [[g[k] for k in STATIC_KEYS] for g in a["gpus"]] == [[g[k] for k in STATIC_KEYS] for g in b["gpus"]]
        assert a["host"]["cpu_count"] == b["host"]["cpu_count"]
        assert a["host"]["mem_total_bytes"] == b["host"]["mem_total_bytes"]
        seen_s = atw.parse_iso_ts(b["last_seen"])
        for gpu in b["gpus"]:
            for key in ("gpu_busy_pct", "power_w", "temp_c", "vram_used_bytes"):
                assert gpu[key] is not None and any(
                    gpu[key] == pytest.approx(v, rel=1e-6) for v in ring_values(demo, gpu["id"], key, seen_s)), key


def test_once_json_on_a_prometheus_hub_prints_the_fleet(fleet):
    env = server_env(env={"APP_FLEET_PROMETHEUS_URL": fleet["prom"].url, "APP_FLEET_TIMEOUT": "5s"})
    out = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    fleet_message = json.loads(out.stdout)["fleet"]
    assert fleet_message["source"] == "prometheus"
    assert {h["name"] for h in fleet_message["hosts"] if h["source"] == "prometheus"} >= \
        {instance(d) for d in fleet["demos"][:2]}


def test_fleet_history_from_query_range(fleet):
    hub, demos = fleet["prom_hub"], fleet["demos"]
    status, body = hub.get_json("/api/fleet/history?range=30m&step=1s&metric=power_w")
    assert status == 200, body
    assert (body["source"], body["metric"], body["step_s"]) == ("prometheus", "power_w", 1.0)
    expected = {"%s/%s" % (instance(d), g["id"]) for d in demos for g in d.get_json("/api/gpus")[1]["gpus"]}
    assert set(body["series"]) == expected, (sorted(body["series"]), len(body["ts"]), prom_query(
        fleet["prom"].port, 'count by (instance) (amdgpu_power_watts)'), prom_query(fleet["prom"].port, "up"))
    assert all(len(v) == len(body["ts"]) for v in body["series"].values())
    assert all(any(x is not None for x in v) for v in body["series"].values())
    assert body["ts"][1] - body["ts"][0] == 1000


def test_fleet_history_refuses_a_bad_metric_and_needs_prometheus(fleet, server):
    status, body = fleet["prom_hub"].get_json("/api/fleet/history?range=1h&metric=up%7Bjob%3D%22x%22%7D")
    assert status == 400 and "'metric'" in body["error"]
    status, body = fleet["prom_hub"].get_json("/api/fleet/history?range=2h")
    assert status == 400 and "'range'" in body["error"]
    status, body = fleet["hub"].get_json("/api/fleet/history?range=1h")
    assert status == 404 and "APP_FLEET_PROMETHEUS_URL" in body["error"]


def test_parsers_on_live_answers_and_an_error_envelope(fleet):
    port = fleet["prom"].port
    for query, kind in (("up", "vector"), ("amdgpu_gpu_busy_ratio[5s]", "matrix")):
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/query?%s" % (
                port, atw.urlencode({"query": query})), timeout=10) as resp:
            result, warnings = atw.parse_prom_answer(resp.status, resp.read(), kind)
        assert result and warnings == []
    client = atw.PromClient(fleet["prom"].url, 5.0)
    with pytest.raises(atw.PromAnswerError, match=r"HTTP 400 bad_data: .*parse error"):
        client.get("query", {"query": "up{"}, "vector")
    with pytest.raises(atw.PromAnswerError, match="expected a vector"):
        client.get("query", {"query": "up[1m]"}, "vector")


def test_reading_only_the_new_scrapes_makes_the_same_fleet_as_reading_everything(fleet):
    """A source polled every 0.3 s while Prometheus scrapes every 1 s, each poll
    beside a fresh source's full read at the same evaluation time (2 s in the
    past, so every scrape up to it is in): the same entries every time, and
    polls that read fewer than all hosts happen (the servers' offsets differ)."""
    def three_up_in_the_past():
        probe = source_for(fleet["prom"])
        try:
            return [e["state"] for e in probe.poll(time.time() - 2.0)] == ["up"] * 3
        finally:
            probe.close()
    wait_for(three_up_in_the_past, 30, 0.5, "three hosts up 2 s ago")
    source = source_for(fleet["prom"])
    rebuilt = []
    try:
        for _ in range(12):
            at = time.time() - 2.0
            kept = source.poll(at)
            rebuilt.append(source.last_rebuilt)
            fresh = source_for(fleet["prom"])
            try:
                full = fresh.poll(at)
            finally:
                fresh.close()
            assert source.error is None and fresh.error is None and fresh.last_full
            assert kept == full
            time.sleep(0.3)
    finally:
        source.close()
    assert rebuilt[0] == 3 and min(rebuilt[1:]) < 3, rebuilt


class StampedTarget(http.server.BaseHTTPRequestHandler):
    """One host's /metrics with explicit sample times (as /federate writes
    them): Prometheus then writes no staleness marker for a series that goes,
    so after an upgrade the old version's amdgpu_build_info stays 5 minutes."""
    version = "1"

    def do_GET(self):
        at, version = " %d" % int(time.time() * 1000), StampedTarget.version
        text = ('amdgpu_build_info{version="%s"} 1%s\n' % (version, at) +
                'amdgpu_gpu_info{gpu="card0",name="GPU",vendor="amd",pci="0000:03:00.0",uuid="u"} 1%s\n' % at +
                'amdgpu_gpu_busy_ratio{gpu="card0"} 0.%s%s\n' % (version, at)).encode()
        self.send_response(200)
        self.send_header("Content-Type", atw.PROM_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args):
        pass


def test_hosts_with_two_versions_build_info_keep_being_read(monkeypatch):
    """An upgrade seen with explicit sample times: for 5 minutes each host has
    two amdgpu_build_info series, the old one's scrape time old; two hosts (so
    a poll may read one of them by its instance) must still be read at each
    new scrape, by their newest scrape time."""
    debian_tool("prometheus", "prometheus")
    monkeypatch.setattr(atw, "FLEET_PROM_READ_ALL", 1.0)    # both scraped in one poll: still by instance
    StampedTarget.version = "1"              # busy 0.1, then 0.2 with version 2
    servers = [http.server.ThreadingHTTPServer((address, 0), StampedTarget) for address in ("127.0.0.1", "127.0.0.2")]
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    prom = Prometheus("global: {scrape_interval: 500ms, scrape_timeout: 400ms}\nscrape_configs:\n"
                      "  - job_name: fed\n    static_configs: [{targets: [%s]}]\n"
                      % ", ".join("'%s:%d'" % httpd.server_address for httpd in servers))
    source = atw.FleetPrometheus(atw.PromClient(prom.url, 5.0), 1.0)
    try:
        def gpus():
            entries = source.poll(time.time())
            assert source.error is None
            return [(g["name"], g["gpu_busy_pct"]) for e in entries for g in e["gpus"]]
        wait_for(lambda: gpus() == [("GPU", 10.0)] * 2, 30, 0.3, "both hosts read with version 1")
        StampedTarget.version = "2"
        wait_for(lambda: len(prom_query(prom.port, "amdgpu_build_info")) == 4, 15, 0.2, "both versions' series")
        wait_for(lambda: gpus() == [("GPU", 20.0)] * 2, 15, 0.3, "both hosts read again after the upgrade")
        partial = 0
        for _ in range(8):                       # and at every scrape after it: never without their GPU
            assert gpus() == [("GPU", 20.0)] * 2 and source.last_rebuilt in (0, 1, 2)
            partial += not source.last_full
            time.sleep(0.2)
        assert partial == 8
    finally:
        source.close()
        prom.stop()
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()


@pytest.mark.browser
def test_the_fleet_view_of_a_prometheus_hub(fleet, server, browser, vendor_dir, tmp_path):
    """The page of a hub reading Prometheus, in Chromium: every server a row
    with its state, named but not a link (the hub has no tunnel to them), the
    name whole in its title, and the note saying why there is no page."""
    expect = pytest.importorskip("playwright.sync_api").expect
    hub = server(env={"APP_FLEET_PROMETHEUS_URL": fleet["prom"].url, "APP_FLEET_INTERVAL": "500ms",
                      "APP_FLEET_TIMEOUT": "5s", "APP_VENDOR_DIR": vendor_dir})
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        page = context.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(hub.url + "/")
        for demo, count in zip(fleet["demos"], DEMO_GPUS):
            row = page.locator('[data-host="%s"]' % instance(demo))
            expect(row.locator("[data-testid=fleet-state]")).to_have_text("up", timeout=20000)
            expect(row.locator("[data-testid=fleet-gpu]")).to_have_count(count)
            assert row.locator("[data-testid=fleet-link]").count() == 0
            assert row.locator("[data-testid=fleet-nolink]").get_attribute("title").startswith(instance(demo) + " · ")
        expect(page.locator("[data-testid=fleet] p.note").last).to_contain_text("have no page here")
        page.screenshot(path=str(tmp_path / "prometheus-hub.png"), full_page=True)
        assert errors == []
    finally:
        context.close()


# -- a killed server (kept last: it changes the fleet) ---------------------------

def test_a_killed_server_is_down_with_its_data_kept(fleet):
    source = source_for(fleet["prom"])
    try:
        victim = fleet["demos"][2]
        before = {e["name"]: e for e in source.poll(time.time())}[instance(victim)]
        victim.stop()
        wait_for(lambda: prom_query(fleet["prom"].port, 'up{instance="%s"} == 0' % instance(victim)),
                 30, 0.25, "up == 0 for the killed server")
        entries = {e["name"]: e for e in source.poll(time.time())}
    finally:
        source.close()
    down = entries[instance(victim)]
    assert (down["state"], down["error"]) == ("down", "scrape failing")
    assert [g["id"] for g in down["gpus"]] == [g["id"] for g in before["gpus"]] and len(down["gpus"]) == 3
    assert [e["state"] for n, e in sorted(entries.items()) if n != instance(victim)] == ["up", "up"]
    # a new source (a restarted hub) never saw it up: still listed, down, no data
    fresh = source_for(fleet["prom"])
    try:
        entry = {e["name"]: e for e in fresh.poll(time.time())}[instance(victim)]
    finally:
        fresh.close()
    assert (entry["state"], entry["gpus"], entry["last_seen"]) == ("down", [], None)
    # the Prometheus hub says so too, over HTTP
    wait_for(lambda: fleet_hosts(fleet["prom_hub"], "prometheus")[1][instance(victim)]["state"] == "down",
             20, 0.25, "the Prometheus hub showing the killed server down")


# -- parsers on answers saved from the real Prometheus (no Prometheus needed) ----

def saved(name):
    with open(os.path.join(PROM_DATA, name), "rb") as fh:
        return fh.read()


def saved_fleet():
    """fleet_instant.json: every fleet query answered by Prometheus 2.42 scraping
    two demo servers (1 and 2 GPUs, 127.0.0.1:18941/18942) and a dead target (18943)."""
    capture = json.loads(saved("fleet_instant.json"))
    answers = {}
    for name, answer in capture["answers"].items():
        result, warnings = atw.parse_prom_answer(200, json.dumps(answer).encode(), "vector")
        assert warnings == []
        answers[name] = atw.parse_prom_vector(result)
    return capture["time"], answers


def test_saved_answers_make_the_fleet():
    now, answers = saved_fleet()
    assert [name for name, _ in atw.build_prom_fleet_queries()] == sorted(answers, key=[
        name for name, _ in atw.build_prom_fleet_queries()].index)
    hosts, up = atw.compute_prom_fleet(answers)
    assert up == {("amdgpu", "127.0.0.1:18941"): 1.0, ("amdgpu", "127.0.0.1:18942"): 1.0,
                  ("amdgpu", "127.0.0.1:18943"): 0.0}
    assert sorted(hosts) == [("amdgpu", "127.0.0.1:18941"), ("amdgpu", "127.0.0.1:18942")]
    two = hosts[("amdgpu", "127.0.0.1:18942")]
    assert [g["id"] for g in two["gpus"]] == ["card0", "card1"] and two["version"] == "0.1.0"
    gpu = two["gpus"][0]
    assert set(gpu) == {"id", "name", "vendor", "vendor_label", "uuid", "pci", "gpu_busy_pct",
                        "vram_used_bytes", "vram_total_bytes", "temp_c", "power_w", "power_cap_w",
                        "throttle_reasons", "runtime_status", "top_process", "processes", "alert"}
    assert set(gpu) == set(atw.FLEET_GPU_KEYS)           # the peers' fleet GPU keys, exactly
    assert set(gpu["top_process"]) == set(atw.FLEET_TOP_PROCESS_KEYS)
    assert gpu["vendor"] == "amd" and gpu["vendor_label"] == "AMD" and gpu["runtime_status"] == "active"
    assert isinstance(gpu["vram_total_bytes"], int) and 0 <= gpu["gpu_busy_pct"] <= 100
    assert gpu["top_process"]["pid"] > 0 and gpu["top_process"]["user"] is None
    assert set(two["host"]) == {"cpu_busy_pct", "cpu_count", "mem_used_bytes", "mem_total_bytes"}
    source = atw.FleetPrometheus(None, 2.0)
    entries = {e["name"]: e for e in source._entries(now, hosts, up)}
    assert (entries["127.0.0.1:18943"]["state"], entries["127.0.0.1:18943"]["error"],
            entries["127.0.0.1:18943"]["gpus"]) == ("down", "scrape failing", [])
    assert entries["127.0.0.1:18941"]["state"] == "up" and entries["127.0.0.1:18941"]["last_seen"]


def test_prometheus_down_makes_hosts_stale_then_down_keeping_their_data():
    now, answers = saved_fleet()
    source = atw.FleetPrometheus(None, 2.0)
    source._entries(now, *atw.compute_prom_fleet(answers))
    source.error = "Prometheus: cannot connect: Connection refused"
    stale = {e["name"]: e for e in source._entries(now + 2, None, {})}
    assert stale["127.0.0.1:18942"]["state"] == "stale" and len(stale["127.0.0.1:18942"]["gpus"]) == 2
    assert stale["127.0.0.1:18942"]["error"] == source.error
    down = {e["name"]: e for e in source._entries(now + 11, None, {})}
    assert down["127.0.0.1:18942"]["state"] == "down" and len(down["127.0.0.1:18942"]["gpus"]) == 2
    assert down["127.0.0.1:18943"]["state"] == "down"      # never up: down at once


def test_a_removed_target_is_down_then_forgotten():
    now, answers = saved_fleet()
    source = atw.FleetPrometheus(None, 2.0)
    source._entries(now, *atw.compute_prom_fleet(answers))
    gone = dict((k, [s for s in v if s[0].get("instance") != "127.0.0.1:18941"]) for k, v in answers.items())
    entries = {e["name"]: e for e in source._entries(now + 2, *atw.compute_prom_fleet(gone))}
    assert (entries["127.0.0.1:18941"]["state"], entries["127.0.0.1:18941"]["error"]) == \
        ("down", "no longer scraped by Prometheus")
    later = source._entries(now + atw.FLEET_PROM_FORGET_S + 3, *atw.compute_prom_fleet(gone))
    assert "127.0.0.1:18941" not in [e["name"] for e in later]


def test_one_instance_in_two_jobs_gets_two_names():
    assert atw.prom_host_names([("a", "h:1"), ("b", "h:1"), ("a", "g:1")]) == {
        ("a", "h:1"): "h:1 (a)", ("b", "h:1"): "h:1 (b)", ("a", "g:1"): "g:1"}


def test_saved_matrix_on_the_grid():
    result, _ = atw.parse_prom_answer(200, saved("matrix_power.json"), "matrix")
    start = min(float(s["values"][0][0]) for s in result) - 1.0     # a step before the first sample
    rows = atw.parse_prom_matrix(result, start, 1.0, 5)
    by_key = {(l["instance"], l["gpu"]): v for l, v in rows}
    assert by_key[("127.0.0.1:18941", "card0")] == [None, 166.871, 167.795, 168.15, None]
    assert by_key[("127.0.0.1:18942", "card1")] == [None, 23.486, 23.146, 23.671, None]
    half = atw.parse_prom_matrix(result, start + 0.4, 1.0, 5)      # off the grid: the nearest step
    assert dict(((l["instance"], l["gpu"]), v) for l, v in half)[("127.0.0.1:18941", "card0")][1] == 166.871


@pytest.mark.parametrize("status,name,message", [
    (400, "error_400_bad_data.json", r"^HTTP 400 bad_data: invalid parameter \"query\": 1:4: parse error"),
    (422, "error_422_execution.json", r"^HTTP 422 execution: vector cannot contain metrics with the same labelset"),
])
def test_saved_error_envelopes(status, name, message):
    with pytest.raises(atw.PromAnswerError, match=message):
        atw.parse_prom_answer(status, saved(name), "vector")


@pytest.mark.parametrize("status,body,message", [
    (502, b"<html>Bad Gateway</html>", "HTTP 502, not a query API answer"),
    (200, b"{\"status\":\"success\"}", "expected a vector result"),
    (200, b"[]", "not a query API answer"),
    (200, b"\xff\xfe", "not a query API answer"),
    (200, b"{\"status\":\"error\",\"errorType\":\"timeout\",\"error\":\"query timed out\"}",
     "HTTP 200 timeout: query timed out"),
    (503, b"{\"status\":\"error\",\"errorType\":\"unavailable\",\"error\":\"too many queries\"}",
     "HTTP 503 unavailable: too many queries"),
])
def test_answers_that_are_no_result(status, body, message):
    with pytest.raises(atw.PromAnswerError, match=message.replace("(", r"\(")):
        atw.parse_prom_answer(status, body, "vector")


def test_warnings_nan_and_inf():
    body = json.dumps({"status": "success", "warnings": ["partial response: store 1 down"], "data": {
        "resultType": "vector", "result": [
            {"metric": {"instance": "a:1", "gpu": "card0"}, "value": [1, "NaN"]},
            {"metric": {"instance": "a:1", "gpu": "card1"}, "value": [1, "+Inf"]},
            {"metric": {"instance": "a:1", "gpu": "card2"}, "value": [1, "-0.5e1"]},
            {"metric": {"instance": "a:1"}, "histogram": [1, {"count": "1"}]}]}}).encode()
    result, warnings = atw.parse_prom_answer(200, body, "vector")
    assert warnings == ["partial response: store 1 down"]
    assert [(l.get("gpu"), v) for l, v, _ in atw.parse_prom_vector(result)] == [
        ("card0", None), ("card1", None), ("card2", -5.0)]



def test_gpu_values_read_straight_from_the_answer_make_the_same_fleet():
    """What the poller reads (parse_prom_gpu_values: {(job, instance, gpu): value}
    for the one-value-per-GPU answers) makes the same hosts as parse_prom_vector's form."""
    capture = json.loads(saved("fleet_instant.json"))
    _now, answers = saved_fleet()
    straight = dict(answers)
    for name in atw.FLEET_PROM_GPU_VALUES:
        result, _ = atw.parse_prom_answer(200, json.dumps(capture["answers"][name]).encode(), "vector")
        straight[name] = atw.parse_prom_gpu_values(result)
        assert straight[name] == {(l.get("job", ""), l.get("instance", ""), l.get("gpu", "")): v
                                  for l, v, _ in answers[name]}
    assert len(straight["gpu_busy_pct"]) == 3
    assert atw.compute_prom_fleet(straight) == atw.compute_prom_fleet(answers)
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"job": "j", "instance": "a:1", "gpu": "card0"}, "value": [1, "NaN"]},
        {"metric": {"job": "j", "instance": "a:1", "gpu": "card1"}, "value": [1, "0.5"]},
        {"metric": {"job": "j", "instance": "a:1", "gpu": "card2"}, "value": ["x", "1"]},
        {"metric": ["not", "labels"], "value": [1, "1"]},
        {"metric": {"instance": "a:1"}, "histogram": [1, {"count": "1"}]}]}}).encode()
    result, _ = atw.parse_prom_answer(200, body, "vector")
    assert atw.parse_prom_gpu_values(result) == {("j", "a:1", "card0"): None, ("j", "a:1", "card1"): 0.5}


def test_a_poll_leaves_the_cyclic_gc_as_it_found_it():
    """poll holds the cyclic GC off while it decodes (its cost) and gives it back,
    also when Prometheus cannot be reached, and leaves it off when it was off."""
    import gc
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = "http://127.0.0.1:%d" % sock.getsockname()[1]
    source = atw.FleetPrometheus(atw.PromClient(dead, 1.0), 2.0)
    try:
        assert gc.isenabled()
        assert source.poll(time.time()) == [] and source.error.startswith("Prometheus: cannot connect")
        assert gc.isenabled()
        gc.disable()
        try:
            source.poll(time.time())
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        source.close()


# -- the client: headers, prefix, gzip, caps, timeouts (a recording server) ------

class Recorder(http.server.BaseHTTPRequestHandler):
    answers = {}
    by_query = {}
    seen = []
    posts = 0

    def do_POST(self):
        """The query API's form POST (PromClient uses it for a long query): seen as the GET it stands for."""
        form = self.rfile.read(int(self.headers["Content-Length"])).decode("ascii")
        assert self.headers["Content-Type"] == "application/x-www-form-urlencoded"
        Recorder.posts += 1
        self.path += "?" + form
        self.do_GET()

    def do_GET(self):
        Recorder.seen.append((self.path, dict(self.headers)))
        query = dict(atw.parse_qsl(self.path.partition("?")[2])).get("query")
        status, body, headers = Recorder.by_query.get(query) or Recorder.answers.get(
            self.path.split("?")[0], (404, b"nope", {}))
        if body is None:
            time.sleep(3)
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Recorder.answers, Recorder.by_query, Recorder.seen, Recorder.posts = {}, {}, [], 0
    try:
        yield "http://127.0.0.1:%d" % httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_client_sends_the_headers_under_the_prefix_and_inflates_gzip(recorder):
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
    Recorder.answers["/prometheus/api/v1/query"] = (200, gzip.compress(body), {"Content-Encoding": "gzip"})
    config = atw.parse_config([], {"APP_FLEET_PROMETHEUS_URL": recorder + "/prometheus/",
                                   "APP_FLEET_PROMETHEUS_HEADERS": "X-Scope-OrgID: team-a; Authorization: Bearer s3"})
    source = atw.make_fleet_prometheus(config)
    assert source.poll(time.time()) == [] and source.error is None
    source.close()
    assert len(Recorder.seen) == len(atw.build_prom_fleet_queries())
    path, headers = Recorder.seen[0]
    assert path.startswith("/prometheus/api/v1/query?query=") and "&time=" in path
    assert headers["X-Scope-OrgID"] == "team-a" and headers["Authorization"] == "Bearer s3"


def test_client_caps_the_body_and_times_out(recorder, monkeypatch):
    monkeypatch.setattr(atw, "FLEET_PROM_BODY_LIMIT", 1000)
    Recorder.answers["/api/v1/query"] = (200, b" " * 1001, {})
    with pytest.raises(atw.PromAnswerError, match="an answer over"):
        atw.PromClient(recorder, 2.0).get("query", {"query": "up"}, "vector")
    Recorder.answers["/api/v1/query"] = (200, gzip.compress(b" " * 5000), {"Content-Encoding": "gzip"})
    with pytest.raises(atw.PromAnswerError, match="an answer over"):
        atw.PromClient(recorder, 2.0).get("query", {"query": "up"}, "vector")
    Recorder.answers["/api/v1/query"] = (200, None, {})
    with pytest.raises(atw.PromAnswerError, match=r"no answer within 0.5 s"):
        atw.PromClient(recorder, 0.5).get("query", {"query": "up"}, "vector")
    with pytest.raises(atw.PromAnswerError, match="cannot connect"):
        atw.PromClient("http://127.0.0.1:%d" % free_port(), 0.5).get("query", {"query": "up"}, "vector")


def test_a_small_answer_costs_no_body_limit_sized_buffer(recorder):
    """Before 3.10, HTTPResponse.read(n) allocates and zeroes n bytes first: a
    read of FLEET_PROM_BODY_LIMIT + 1 cost 64 MiB per query (and ~50 ms of CPU)
    for answers of a few KiB. Read in parts, the peak stays small (this fails
    on 3.8 and 3.9 with a single read of the limit)."""
    import tracemalloc
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
    Recorder.answers["/api/v1/query"] = (200, body, {})
    client = atw.PromClient(recorder, 5.0)
    client.get("query", {"query": "up"}, "vector")          # imports and first-use caches outside
    tracemalloc.start()
    try:
        assert client.get("query", {"query": "up"}, "vector") == ([], [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("value,message", [
    ("X-Scope-OrgID", "entry 1: expected 'Name: value'"),
    ("ok: 1; bad name: 2", "entry 2: expected 'Name: value'"),
])
def test_bad_headers_setting_names_the_entry_never_the_value(value, message):
    with pytest.raises(atw.ConfigError) as info:
        atw.parse_config([], {"APP_FLEET_PROMETHEUS_URL": "http://p:9090",
                              "APP_FLEET_PROMETHEUS_HEADERS": value})
    assert message in str(info.value) and "(hidden)" in str(info.value) and value not in str(info.value)
    with pytest.raises(atw.ConfigError, match="only meaningful with APP_FLEET_PROMETHEUS_URL"):
        atw.parse_config([], {"APP_FLEET_PROMETHEUS_HEADERS": "X-Scope-OrgID: a"})


def test_an_exporters_labels_are_cut_like_a_peers_answer():
    """A hostile target's labels: long strings cut to FLEET_TEXT_MAX, at most
    FLEET_MAX_GPUS GPUs and FLEET_MAX_ALERTS alerts per host."""
    host = {"job": "amdgpu", "instance": "evil:1"}
    long_name = "<img src=x onerror=alert(1)>" * 100
    answers = {
        "build": [(dict(host, version="v" * 5000), 1.0, 1.0)],
        "gpu_info": [(dict(host, gpu="card%d" % i, name=long_name, vendor="amd"), 1.0, 1.0) for i in range(300)],
        "gpu_busy_pct": [(dict(host, gpu="card%d" % i), 0.5, 1.0) for i in range(300)],
        "alerts": [(dict(host, gpu="card0", alertname="a%d" % i, severity="critical"), 1.0, 1.0)
                   for i in range(300)]}
    hosts, _ = atw.compute_prom_fleet(answers)
    entry = hosts[("amdgpu", "evil:1")]
    assert len(entry["gpus"]) == atw.FLEET_MAX_GPUS and len(entry["alerts"]) == atw.FLEET_MAX_ALERTS
    assert len(entry["version"]) == atw.FLEET_TEXT_MAX
    assert all(len(g["name"]) == atw.FLEET_TEXT_MAX and g["gpu_busy_pct"] == 50.0 for g in entry["gpus"])


def vector(*series):
    """A Prometheus instant-vector answer of (labels, value) pairs."""
    return (200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [1000.0, str(value)]} for labels, value in series]}}).encode(), {})


HOSTS4 = dict((name, {"job": "amdgpu", "instance": "%s:1" % name}) for name in "abcd")


def four_hosts(stamps):
    """Recorder answers of four hosts a-d scraped at these times: up, the scrape
    times, and each host's GPU (named after it) 25 % busy, for the whole fleet."""
    queries = dict(atw.build_prom_fleet_queries())
    Recorder.answers["/api/v1/query"] = vector()
    Recorder.by_query = {
        queries["up"]: vector(*[(HOSTS4[n], 1) for n in stamps]),
        queries["build"]: vector(*[(dict(HOSTS4[n], version="1"), at) for n, at in stamps.items()]),
        queries["gpu_info"]: vector(*[(dict(HOSTS4[n], gpu="card0", name=n.upper()), 1) for n in stamps]),
        queries["gpu_busy_pct"]: vector(*[(dict(HOSTS4[n], gpu="card0"), 0.25) for n in stamps])}
    return queries


def answer_for(names, gpu_info, busy):
    """The answers of the queries that read only these hosts (by instance)."""
    only = dict(atw.build_prom_fleet_queries(set(HOSTS4[n]["instance"] for n in names)))
    Recorder.by_query[only["gpu_info"]] = vector(*gpu_info)
    Recorder.by_query[only["gpu_busy_pct"]] = vector(*busy)
    return sorted(q for name, q in only.items() if name not in ("up", "build"))


def asked():
    out, Recorder.seen = [dict(atw.parse_qsl(path.split("?", 1)[1]))["query"] for path, _ in Recorder.seen], []
    return out


def busy_of(entries):
    return [(e["name"], e["state"], [(g["name"], g["gpu_busy_pct"]) for g in e["gpus"]]) for e in entries]


def test_a_poll_reads_again_only_the_hosts_scraped_since_their_last_read(recorder):
    """Four hosts: the first poll reads all; with no new scrape only `up` and
    the scrape times are asked; once b is scraped again the metric queries
    select b's instance only (a long query is POSTed), b shows its new values
    and the others keep what was read from their last scrape."""
    stamps = {"a": 100.0, "b": 100.5, "c": 101.0, "d": 101.5}
    queries = four_hosts(stamps)
    whole = [("%s:1" % n, "up", [(n.upper(), 25.0)]) for n in "abcd"]
    source = atw.FleetPrometheus(atw.PromClient(recorder, 2.0), 2.0)
    try:
        assert busy_of(source.poll(time.time())) == whole
        assert (source.last_full, source.last_rebuilt) == (True, 4)
        assert sorted(asked()) == sorted(queries.values())          # everything, whole
        assert busy_of(source.poll(time.time())) == whole            # nothing scraped since
        assert sorted(asked()) == sorted([queries["up"], queries["build"]])
        assert (source.last_full, source.last_rebuilt) == (False, 0)
        # b scraped again at 102.0: its new answers only under b's queries
        stamps["b"] = 102.0
        four_hosts(stamps)
        only_b = answer_for("b", [(dict(HOSTS4["b"], gpu="card0", name="B2"), 1)], [(dict(HOSTS4["b"], gpu="card0"), 0.75)])
        third = source.poll(time.time())
        assert busy_of(third) == [whole[0], ("b:1", "up", [("B2", 75.0)]), whole[2], whole[3]]
        assert (source.last_full, source.last_rebuilt) == (False, 1)
        assert sorted(q for q in asked() if q not in (queries["up"], queries["build"])) == only_b
        assert all('instance=~"b:1"' in q for q in only_b) and source.error is None
        # a scraped at 103.0, but its answers are empty (another replica answered, or the
        # scrape is still being stored): a keeps what it had, with its new scrape time, asked again
        stamps["a"] = 103.0
        four_hosts(stamps)
        Recorder.by_query.update((q, vector()) for q in answer_for("a", [], []))
        fourth = {e["name"]: e for e in source.poll(time.time())}
        assert busy_of([fourth["a:1"]]) == [whole[0]] and source.last_rebuilt == 0
        assert fourth["a:1"]["last_seen"] == atw.format_ts(103.0)
        assert len(asked()) == len(queries)
        fifth = {e["name"]: e for e in source.poll(time.time())}   # asked again; missed twice: taken as answered
        assert len(asked()) == len(queries) and busy_of([fifth["a:1"]]) == [("a:1", "up", [])]
        assert busy_of([e for e in source.poll(time.time()) if e["name"] == "a:1"]) == [("a:1", "up", [])]
        assert sorted(asked()) == sorted([queries["up"], queries["build"]])   # not a third time
        # d's target removed (gone from up and the scrape times): asked once more, then down
        del stamps["d"]
        four_hosts(stamps)
        entries = {e["name"]: e for e in source.poll(time.time())}
        assert (entries["d:1"]["state"], entries["d:1"]["error"]) == ("down", "no longer scraped by Prometheus")
        assert all('instance=~"d:1"' in q for q in asked() if q not in (queries["up"], queries["build"]))
        source.poll(time.time())
        assert sorted(asked()) == sorted([queries["up"], queries["build"]])
        # every FLEET_PROM_READ_ALL_EVERY_S a poll reads every host, scraped since or not
        source.poll(time.time() + atw.FLEET_PROM_READ_ALL_EVERY_S)
        assert sorted(asked()) == sorted(queries.values()) and source.last_full
    finally:
        source.close()


def test_a_host_that_loses_its_build_info_is_read_as_an_older_server(recorder):
    """A server downgraded to a version without amdgpu_build_info keeps its
    gpu_info and stays up: read by its instance at every poll, as a target up
    in the fleet's job without a scrape time."""
    stamps = {"a": 100.0, "b": 100.5, "c": 101.0, "d": 101.5}
    queries = four_hosts(stamps)
    source = atw.FleetPrometheus(atw.PromClient(recorder, 2.0), 2.0)
    try:
        assert [e["state"] for e in source.poll(time.time())] == ["up"] * 4
        del stamps["b"]
        four_hosts(stamps)
        Recorder.by_query[queries["up"]] = vector(*[(HOSTS4[n], 1) for n in "abcd"])
        only_b = answer_for("b", [(dict(HOSTS4["b"], gpu="card0", name="B"), 1)], [])
        asked()
        for _ in range(2):
            entries = {e["name"]: e for e in source.poll(time.time())}
            assert (entries["b:1"]["state"], [g["name"] for g in entries["b:1"]["gpus"]]) == ("up", ["B"])
            assert (entries["a:1"]["state"], [g["name"] for g in entries["a:1"]["gpus"]]) == ("up", ["A"])
            assert sorted(q for q in asked() if q not in (queries["up"], queries["build"])) == only_b
    finally:
        source.close()


def test_which_hosts_a_poll_reads():
    j = "amdgpu"
    stamps = {(j, "a"): 100.0, (j, "b"): 100.5, (j, "c"): 101.0, (j, "d"): 101.5}
    assert atw.prom_fleet_to_read(stamps, {}, {}) is None                      # the first poll: all
    assert atw.prom_fleet_to_read(stamps, dict(stamps), stamps) == set()       # nothing new
    older = dict(stamps)
    older[(j, "a")] = 99.0
    assert atw.prom_fleet_to_read(stamps, older, stamps) == {(j, "a")}
    assert atw.prom_fleet_to_read(stamps, {(j, "a"): 100.0, (j, "b"): 100.5}, {}) == {(j, "c"), (j, "d")}
    assert atw.prom_fleet_to_read(stamps, {(j, "a"): 100.0}, {}) is None       # 3 of 4: all at once
    # a kept host without a scrape time (an older server, or one that lost amdgpu_build_info):
    # read every poll, and not counted as scraped
    kept = dict(stamps)
    kept[(j, "old")] = kept[(j, "old2")] = kept[(j, "old3")] = {}
    assert atw.prom_fleet_to_read(stamps, dict(stamps), kept) == {(j, "old"), (j, "old2"), (j, "old3")}
    # many hosts with long names: a matcher over FLEET_PROM_MATCHER_MAX bytes reads all instead
    names = dict(((j, "gpu-node-%04d.cluster.example.com:9100" % i), 100.0 + i) for i in range(1000))

    def scraped(count):             # the last `count` hosts scraped since their last read
        last = dict(names)
        last.update((key, at - 1) for key, at in list(names.items())[-count:])
        return last
    assert len(atw.prom_fleet_to_read(names, scraped(100), names)) == 100      # a 4.5 kB matcher
    assert atw.prom_fleet_to_read(names, scraped(200), names) is None          # 9.0 kB: all instead
    build = [({"job": "j", "instance": "a", "version": "1"}, 5.0, 9.0),
             ({"job": "j", "instance": "a", "version": "2"}, 7.0, 9.0), ({"job": "j", "instance": "b"}, None, 9.0)]
    assert atw.prom_scrape_stamps(build) == {("j", "a"): 7.0}


def test_the_instance_matcher_escapes_every_regex_and_string_character():
    """The matcher's PromQL string, read back as PromQL reads it, is an anchored
    regex matching exactly the instances (RE2 and Python's re agree on these
    escapes), never a near miss."""
    import re
    instances = {"10.0.0.2:8080", "gpu-b.example:443", 'x"y\\z(1)|*', "[::1]:9100"}
    matcher = atw.prom_instance_matcher(instances)
    assert matcher.startswith('instance=~"') and matcher.endswith('"')
    literal = re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), matcher[len('instance=~"'):-1])
    assert '"' not in re.sub(r'\\.', "", matcher[len('instance=~"'):-1])     # no quote left unescaped
    for value in instances:
        assert re.fullmatch(literal, value), value
    for miss in ("10x0.0.2:8080", "10.0.0.2:80801", "gpu-b.example", "x", "", "[::1]:910", "(1)"):
        assert not re.fullmatch(literal, miss), miss
    assert atw.prom_with_matcher('m{pool="vram"}', matcher) == 'm{pool="vram",%s}' % matcher
    assert atw.prom_with_matcher("m", matcher) == "m{%s}" % matcher
    assert atw.prom_with_matcher("m", "") == "m"


def test_a_hub_whose_prometheus_is_down_says_so(server):
    """Nothing listens at the URL: /api/fleet carries the error (this server
    still first), the history answers 502 naming Prometheus."""
    hub = server(args=["--demo", "--demo-gpus", "1"], env={
        "APP_FLEET_PROMETHEUS_URL": "http://127.0.0.1:%d/prometheus" % free_port(),
        "APP_FLEET_INTERVAL": "500ms"})
    body = wait_for(lambda: (lambda b: b if b["error"] else None)(hub.get_json("/api/fleet")[1]),
                    10, 0.1, "the fleet's error")
    assert body["source"] == "prometheus" and body["error"].startswith("Prometheus: cannot connect")
    assert [h["source"] for h in body["hosts"]] == ["local"]
    status, answer = hub.get_json("/api/fleet/history?range=1h&metric=temp_c")
    assert status == 502 and answer["error"].startswith("Prometheus: cannot connect")
    hub.wait_log(r"event=fleet_prometheus_failed")


def test_queries_do_not_pile_up_while_prometheus_does_not_answer(recorder):
    """Prometheus accepts and never answers: a poll fails at its first query's
    timeout and drops its other queries, so once it answers again at most the
    few queries that were already on their way (FLEET_PROM_QUERY_THREADS) come
    with an old time=; the next poll's own queries are not queued behind them."""
    empty = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
    Recorder.answers["/api/v1/query"] = (200, None, {})         # hang
    source = atw.FleetPrometheus(atw.PromClient(recorder, 0.3), 2.0)
    for at in (1000.0, 1002.0, 1004.0):
        assert source.poll(at) == [] and source.error == "Prometheus: no answer within 0.3 s"
    mark = len(Recorder.seen)
    Recorder.answers["/api/v1/query"] = (200, empty, {})
    assert source.poll(1006.0) == [] and source.error is None
    source.close()
    times = [dict(atw.parse_qsl(path.split("?", 1)[1]))["time"] for path, _ in Recorder.seen[mark:]]
    assert times.count("1006.000") == len(atw.build_prom_fleet_queries())
    assert len(times) - times.count("1006.000") <= atw.FLEET_PROM_QUERY_THREADS, times


def test_odd_answers_are_a_failed_poll_never_an_exception(recorder):
    """warnings that are no list, label values that are no strings: the poll
    reads what it can, or fails saying so; it never raises (every round failed,
    the fleet was never published)."""
    queries = dict(atw.build_prom_fleet_queries())

    def vector(result, **extra):
        return (200, json.dumps(dict({"status": "success", "data": {
            "resultType": "vector", "result": result}}, **extra)).encode(), {})
    Recorder.answers["/api/v1/query"] = vector([], warnings={"not": "a list"})
    source = atw.FleetPrometheus(atw.PromClient(recorder, 2.0), 2.0)
    assert source.poll(time.time()) == [] and source.error is None and source.warnings == []
    Recorder.by_query[queries["gpu_busy_pct"]] = vector([
        {"metric": {"job": {"a": 1}, "instance": "x:1", "gpu": "card0"}, "value": [1, "5"]},
        {"metric": {"job": "amdgpu", "instance": ["x"], "gpu": "card0"}, "value": [1, "5"]}])
    assert source.poll(time.time()) == [] and source.error is None
    Recorder.by_query[queries["build"]] = vector([
        {"metric": {"job": ["amdgpu"], "instance": "x:1", "version": "1"}, "value": [1, "1"]}])
    assert source.poll(time.time()) == []
    assert source.error == "Prometheus: an answer of an odd shape (TypeError)"
    source.close()
