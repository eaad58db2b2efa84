"""The page travels in time (#9), in a real headless Chromium.

Before the server starts, a history file is pre-filled through the program's own
HistoryStore (its write path, fed with past timestamps by an injected clock): the
last two hours of card0 with a known busy pattern (80 % for an hour, then 20 %),
a ten-minute hole in the samples, host samples, and a known process, "pastjob"
(PID 4242), on card0 from 100 to 70 minutes ago, then gone (an ended run). A
--demo server then runs on that file (APP_HISTORY_PATH), and the page is driven:
the range control and the hash, the charts (band, avg line, gap, time axis), a
click on a past point (who was on the GPU then), the process history table
(ended runs marked, filter, sort, a run's own chart) and the host line.

The browser (one per session) and vendor_dir come from conftest.py, shared with
test_page.py; the server and watch helpers are test_page.py's classes.
"""
import calendar
import json
import os
import re
import time
import urllib.request

import pytest

import amdgpu_top_web as m
from test_page import ARTIFACTS, Server, Watch, expect

pytestmark = pytest.mark.browser

GPU = "card0"
PAST_PID = 4242
PAST_NAME = "pastjob"
SPAN_S = 7200                 # the pre-filled past: the last two hours
JOB = (1200, 3000)            # pastjob's seconds after the start of the past
HOLE = (4500, 5100)           # no samples: a gap on every chart


class Clock(object):
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def _proc_row(pid, name):
    return dict(pid=pid, start_time=777, name=name, user="alice", uid=1000, cmd=name + " --epochs 3",
                container=None, kfd=True, type=None, vram_bytes=3 << 30, gtt_bytes=1 << 24,
                engines_pct={"gfx": 60.0, "compute": 5.0}, gpu_time_ms_per_s=None)


def prefill(path, start):
    """Two hours of card0 at 1 Hz (host and process samples every 10 s) through the store."""
    clock = Clock(start)
    store = m.HistoryStore(path, clock=clock, demo=True)      # a --demo server reads it
    store.open()
    for i in range(SPAN_S - 200):
        t = start + i
        if HOLE[0] <= i < HOLE[1]:
            continue
        metrics = m.new_metrics() if hasattr(m, "new_metrics") else {}
        metrics.update(gpu_busy_pct=(80.0 if i < 3600 else 20.0) + i % 5, temp_c=55.0, power_w=120.0,
                       vram_used_bytes=(4 << 30) if i < 3600 else (1 << 30), gtt_used_bytes=1 << 28,
                       sclk_mhz=2100, vram_total_bytes=16 << 30)
        store.offer_stats(GPU, t, metrics)
        if i % 10 == 0:
            store.offer_host(t, {"cpu_busy_pct": 30.0, "mem_used_bytes": 8 << 30, "mem_total_bytes": 64 << 30,
                                 "load1": 1.5, "swap_used_bytes": 0, "swap_total_bytes": 0})
            rows = [_proc_row(PAST_PID, PAST_NAME)] if JOB[0] <= i < JOB[1] else []
            store.offer_procs(GPU, {"type": "procs", "gpu_id": GPU, "ts": m.format_ts(t), "processes": rows})
        if i % 300 == 0:
            clock.now = t
            store.cycle()
    clock.now = start + SPAN_S - 200
    store.cycle(final=True)
    store.close()


@pytest.fixture(scope="module")
def past(vendor_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("past") / "history.sqlite3")
    start = time.time() - SPAN_S
    prefill(path, start)
    server = Server(vendor_dir, ["--demo"], {"APP_HISTORY_PATH": path})
    yield server, start
    server.stop()


@pytest.fixture
def open_at(browser):
    contexts = []

    def open_(server, hash_, viewport=(1280, 1000)):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10000)
        watch = Watch(page, server)
        page.goto(server.url + hash_)
        expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
        return page, watch
    yield open_
    for context in contexts:
        context.close()


def api(server, path):
    with urllib.request.urlopen(server.url + path, timeout=5) as res:
        return json.loads(res.read().decode())


def iso_s(text):
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


def shot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=True)


def chart(page, series):
    return page.locator("[data-testid=gpu-charts] [data-series=%s]" % series)


def test_range_switch_by_control_and_hash_and_back(past, open_at):
    server, _ = past
    page, watch = open_at(server, "#gpu=" + GPU)
    expect(page.locator("article.gpu .spark").first).to_be_visible()      # live: today's sparklines
    assert page.locator("[data-testid=range]").count() == 0
    expect(page.locator("button[data-range=live]")).to_have_attribute("aria-pressed", "true")
    page.locator("button[data-range='6h']").click()
    assert page.evaluate("location.hash") == "#gpu=%s&range=6h" % GPU
    expect(page.locator("[data-testid=range]")).to_have_attribute("data-range", "6h")
    expect(page.locator("button[data-range='6h']")).to_have_attribute("aria-pressed", "true")
    assert page.locator("article.gpu .spark").count() == 0
    busy = chart(page, "gpu_busy_pct")
    expect(busy).to_be_visible()
    for key in ("power_w", "temp_c", "sclk_mhz", "vram_used_bytes", "gtt_used_bytes"):
        expect(chart(page, key)).to_have_count(1)
    expect(page.locator("[data-testid=host-charts] [data-series=cpu_busy_pct]")).to_have_count(1)
    assert int(busy.get_attribute("data-points")) > 100
    avg = busy.locator("path.avg").get_attribute("d")
    band = busy.locator("path.band").get_attribute("d")
    assert avg.count("M") >= 2, "the hole in the samples is drawn as a gap"
    assert band.count("Z") >= 2 and band.count("M") == band.count("Z")
    ticks = busy.locator(".taxis span").all_inner_texts()
    assert 2 <= len(ticks) <= 7 and all(":" in t for t in ticks), ticks
    shot(page, "history-6h.png")
    page.go_back()                                               # back: live again
    expect(page.locator("article.gpu .spark").first).to_be_visible()
    assert page.locator("[data-testid=range]").count() == 0
    page.evaluate("location.hash = 'gpu=%s&range=1h'" % GPU)     # the hash alone switches
    expect(page.locator("[data-testid=range]")).to_have_attribute("data-range", "1h")
    expect(page.locator("button[data-range='1h']")).to_have_attribute("aria-pressed", "true")
    watch.assert_clean()


def test_click_on_a_past_point_lists_the_processes_of_that_moment(past, open_at):
    server, start = past
    page, watch = open_at(server, "#gpu=%s&range=6h" % GPU)
    busy = chart(page, "gpu_busy_pct")
    expect(busy).to_be_visible()
    data = api(server, "api/gpus/%s/history?range=6h" % GPU)
    t0, t1 = iso_s(data["from"]), iso_s(data["to"])
    when = start + (JOB[0] + JOB[1]) / 2.0                        # pastjob was on card0 then
    svg = busy.locator("svg")
    svg.scroll_into_view_if_needed()
    box = svg.bounding_box()
    x = box["x"] + (when - t0) / (t1 - t0) * box["width"]
    page.mouse.move(x, box["y"] + box["height"] / 2)
    readout = busy.locator("[data-testid=readout]")
    expect(readout).to_contain_text("%")
    assert "peak" not in readout.inner_text()                     # the hovered point: value and time
    page.mouse.click(x, box["y"] + box["height"] / 2)
    at = page.locator("[data-testid=at]")
    expect(at.locator("tr[data-pid='%d']" % PAST_PID)).to_be_visible()
    expect(at).to_contain_text(PAST_NAME)
    expect(busy.locator("line.pick")).to_have_count(1)
    shot(page, "history-at.png")
    # Long after pastjob ended, in the hour of 20 %: not listed.
    page.mouse.click(box["x"] + (start + 4000 - t0) / (t1 - t0) * box["width"], box["y"] + 10)
    expect(at.locator("tr[data-pid='%d']" % PAST_PID)).to_have_count(0)
    watch.assert_clean()


def test_process_history_table_marks_ended_runs_and_opens_a_run(past, open_at):
    server, _ = past
    deadline = time.monotonic() + 12        # the demo's own runs: in the file from the first commit on
    while not api(server, "api/processes?range=1h&active=true&gpu=" + GPU)["processes"]:
        assert time.monotonic() < deadline, "the demo's processes never reached the store"
        time.sleep(0.25)
    page, watch = open_at(server, "#gpu=%s&range=6h" % GPU)
    runs = page.locator("[data-testid=runs]")
    past_row = runs.locator("tr[data-pid='%d']" % PAST_PID)
    expect(past_row).to_have_class("ended")
    expect(past_row.locator("[data-testid=ended]")).to_have_text("ended")
    expect(runs.locator("tr.running").first).to_be_visible()      # the demo's processes: running
    runs.locator("input[type=search]").fill(PAST_NAME)
    expect(runs.locator("tbody tr")).to_have_count(1)
    runs.locator("input[type=search]").fill("")
    runs.locator("button.sort[data-col=pid]").click()             # sortable like the live table
    pids = [int(p) for p in runs.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.pid)")]
    assert pids == sorted(pids, reverse=True)
    runs.locator("button.sort[data-col=pid]").click()
    pids = [int(p) for p in runs.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.pid)")]
    assert pids == sorted(pids)
    past_row.locator("button.nm").click()
    run_chart = page.locator("[data-testid=run-chart]")
    expect(run_chart).to_contain_text(PAST_NAME)
    vram = run_chart.locator("[data-series=vram_bytes]")
    assert int(vram.get_attribute("data-points")) >= 100
    shot(page, "history-runs.png")
    watch.assert_clean()


def test_host_line_live_and_history_state(past, open_at, vendor_dir, tmp_path):
    server, _ = past
    page, watch = open_at(server, "#gpu=" + GPU)
    host = page.locator("[data-testid=host]")
    expect(host.locator("[data-metric=cpu_busy_pct]")).to_have_text(re.compile(r"^\d+%$"))
    expect(host.locator("[data-metric=mem_used]")).to_contain_text("/")
    assert host.locator("[data-testid=history-state]").count() == 0          # history ok: no word
    box = host.bounding_box()
    assert box["height"] < 40, "the host line stays compact"
    watch.assert_clean()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    memory = Server(vendor_dir, ["--demo"], {"APP_HISTORY_PATH": str(blocked / "h.sqlite3")})
    try:
        page2, watch2 = open_at(memory, "")
        expect(page2.locator("[data-testid=history-state]")).to_contain_text("history in memory only")
        shot(page2, "history-memory-only.png")
        watch2.assert_clean()
    finally:
        memory.stop()


# ---- #10: the alert banner, the forecast in words, the mark on the VRAM chart ----------
# The real server's frames pass through Playwright's WebSocket route, which adds a known
# vram_forecast to card0's stats and an active alert to hello (a real forecast needs a
# minute of leaking first), then pushes alert frames of its own.
FORECAST = {"state": "trend", "rate_bytes_per_s": [18 << 20, 22 << 20], "full_in_s": [240, 300],
            "driver_pid": 1037, "step_bytes": None}
HOT = {"type": "alert", "rule": "gpu_temperature", "gpu_id": GPU, "severity": "warning", "state": "firing",
       "started": "2026-01-01T10:00:00.000Z", "ended": None, "value": 91.0, "summary": "card0 at 91 °C"}
HOST_RAM = {"type": "alert", "rule": "host_memory", "gpu_id": None, "severity": "critical", "state": "firing",
            "started": "2026-01-01T10:01:00.000Z", "ended": None, "value": 97.0, "summary": "host RAM 97 % used"}


def _rewrite(text):
    msg = json.loads(text)
    if msg.get("type") == "hello":
        msg["alerts"] = [HOT]
    elif msg.get("type") == "stats" and msg.get("gpu_id") == GPU and msg.get("metrics"):
        msg["metrics"]["vram_forecast"] = FORECAST
    else:
        return text
    return json.dumps(msg)


def test_alert_banner_forecast_words_and_vram_mark(past, browser):
    server, _ = past
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(10000)
        routes = []

        def route(ws):
            upstream = ws.connect_to_server()
            upstream.on_message(lambda text: ws.send(_rewrite(text)))
            routes.append(ws)
        page.route_web_socket(re.compile(r"/ws$"), route)
        watch = Watch(page, server)
        page.goto(server.url + "#gpu=" + GPU)
        active = page.locator("[data-testid=alerts-active]")
        expect(active.locator("li[data-rule=gpu_temperature]")).to_contain_text("card0 at 91 °C")
        words = page.locator("[data-testid=forecast]")
        expect(words).to_have_text("VRAM growing 18–22\u00a0MiB/s → full in 4–5\u00a0min, mostly python3 (1037)")
        expect(page.locator("[data-testid=forecast-mark]")).to_have_count(1)
        routes[0].send(json.dumps(HOST_RAM))                      # a host alert: to everyone
        expect(active.locator("li")).to_have_count(2)
        expect(active).to_have_attribute("data-severity", "critical")
        expect(active.locator("li").first).to_have_attribute("data-rule", "host_memory")
        # an active alert's live update (#15): the banner follows it, no new recent entry
        routes[0].send(json.dumps(dict(HOST_RAM, value=98.5, summary="host RAM 98.5 % used", update=True)))
        expect(active.locator("li[data-rule=host_memory]")).to_contain_text("host RAM 98.5 % used")
        routes[0].send(json.dumps(dict(HOT, state="resolved", ended="2026-01-01T10:05:00.000Z")))
        expect(active.locator("li")).to_have_count(1)
        recent = page.locator("[data-testid=alerts-recent]")
        expect(recent.locator("summary")).to_contain_text("Recent alerts (2)")
        recent.locator("summary").click()
        expect(recent.locator("li[data-state=resolved]")).to_contain_text("resolved")
        shot(page, "alerts-forecast.png")
        watch.assert_clean()
    finally:
        context.close()


# ---- #15: the range says which, where the history starts, the y scale, resolved alerts,
# the run table's cells --------------------------------------------------------------------

def test_the_header_says_which_range_and_where_the_history_starts(past, open_at):
    """While a range is on screen the header says so (not "● live"); a range that starts
    before the history (24 h of a 2-hour file) says where it starts; one inside it does not."""
    server, start = past
    page, watch = open_at(server, "#gpu=%s&range=24h" % GPU)
    conn = page.locator("[data-testid=conn]")
    expect(conn).to_have_text("the last 24h")
    note = page.locator("[data-testid=history-start]")
    expect(note).to_contain_text("The history starts")
    first = page.evaluate("t => new Date(t).toLocaleDateString([], {month: 'short', day: 'numeric'})", start * 1000)
    expect(note).to_contain_text(first)
    page.locator("button[data-range='1h']").click()
    expect(page.locator("[data-testid=range]")).to_have_attribute("data-range", "1h")
    expect(conn).to_have_text("the last 1h")
    expect(note).to_have_count(0)                                 # the file covers the last hour
    page.locator("button[data-range=live]").click()
    expect(conn).to_have_text("live")
    watch.assert_clean()


def test_range_charts_have_a_y_scale(past, open_at):
    server, _ = past
    page, watch = open_at(server, "#gpu=%s&range=6h" % GPU)
    busy = chart(page, "gpu_busy_pct")
    expect(busy).to_be_visible()
    expect(busy.locator("[data-testid=yaxis] span")).to_have_text(["100%", "50%", "0%"])
    power = chart(page, "power_w").locator("[data-testid=yaxis] span").all_inner_texts()
    assert [t.replace("\u00a0", " ") for t in power] == ["200 W", "100 W", "0 W"], power   # 120 W -> a round 200
    charts = page.locator("[data-testid=gpu-charts] [data-series], [data-testid=host-charts] [data-series]")
    assert charts.count() == page.locator("[data-testid=yaxis]").count() >= 6
    shot(page, "history-yaxis.png")
    watch.assert_clean()


def test_a_resolved_alert_loses_its_critical_badge(past, browser):
    server, _ = past
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(10000)
        routes = []

        def route(ws):
            upstream = ws.connect_to_server()
            upstream.on_message(lambda text: ws.send(text))
            routes.append(ws)
        page.route_web_socket(re.compile(r"/ws$"), route)
        watch = Watch(page, server)
        page.goto(server.url + "#gpu=" + GPU)
        expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
        routes[0].send(json.dumps(HOST_RAM))
        active = page.locator("[data-testid=alerts-active]")
        expect(active.locator("li[data-rule=host_memory] .badge")).to_have_class(re.compile(r"\bsev-critical\b"))
        routes[0].send(json.dumps(dict(HOST_RAM, state="resolved", ended="2026-01-01T10:09:00.000Z")))
        recent = page.locator("[data-testid=alerts-recent]")
        recent.locator("summary").click()
        badge = recent.locator("li[data-state=resolved] .badge")
        expect(badge).to_have_text("resolved")
        expect(badge).not_to_have_class(re.compile(r"\bsev-critical\b"))
        colors = page.evaluate("""() => {
          const probe = document.createElement('span'); probe.style.color = 'var(--pico-del-color)';
          document.body.append(probe); const del = getComputedStyle(probe).color; probe.remove();
          return [del, getComputedStyle(document.querySelector('[data-testid=alerts-recent] li[data-state=resolved] .badge')).color];
        }""")
        assert colors[0] != colors[1], "a resolved alert's badge is not red"
        watch.assert_clean()
    finally:
        context.close()


CELL_OVERFLOW = """table => {
  const out = [];
  for (const cell of table.querySelectorAll('th, td')) {
    const box = cell.getBoundingClientRect();
    if (!box.width || getComputedStyle(cell).overflowX === 'hidden') continue;   // clipped: stays inside
    const range = document.createRange();
    range.selectNodeContents(cell);
    const content = range.getBoundingClientRect();
    if (content.width && (content.right > box.right + 0.5 || content.left < box.left - 0.5)) {
      out.push(cell.textContent.trim() + ' ' + Math.round(content.right - box.right));
    }
  }
  return out;
}"""


def test_run_table_cells_keep_to_their_column_and_the_run_title_is_spaced(past, open_at):
    """"Peak VRAMAvg VRAM": headers ran into each other, and a long name or user into
    the next column; the run's title read "on card0,Dec 6"."""
    server, _ = past
    runs_json = api(server, "api/processes?range=6h&gpu=" + GPU)
    first = next(r for r in runs_json["processes"] if r["pid"] == PAST_PID)
    first["name"] = "a-very-long-process-name-with-no-spaces-to-break-at-all"
    first["user"] = "systemd-timesync-and-more"
    page, watch = open_at(server, "#gpu=%s&range=6h" % GPU, viewport=(1366, 768))
    page.route(re.compile(r"/api/processes\?range=6h"), lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(runs_json)))
    page.reload()
    runs = page.locator("[data-testid=runs]")
    expect(runs.locator("tr[data-pid='%d'] button.nm" % PAST_PID)).to_have_text(first["name"])
    runs.scroll_into_view_if_needed()
    assert runs.locator("table").evaluate(CELL_OVERFLOW) == []
    runs.locator("tr[data-pid='%d'] button.nm" % PAST_PID).click()
    title = page.locator("[data-testid=run-chart] h3 small")
    expect(title).to_contain_text("on %s, " % GPU)
    shot(page, "history-runs-laptop.png")
    watch.assert_clean()
