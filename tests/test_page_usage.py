"""The Usage view (#18 item 3) in a real headless Chromium: a history file pre-filled
through the program's own HistoryStore (card0 at 150 W for two hours, a known run of
"zoe" with Slurm job 777 for the first hour), a --demo server on it, the nav entry,
the table with its bars, the `by` picker, and a click that lists the runs behind a row.
"""
import json
import time
import urllib.request

import pytest

import amdgpu_top_web as m
from test_page import Server, Watch, expect
from test_page_history import Clock, open_at, shot  # noqa: F401  (open_at: the fixture)

pytestmark = pytest.mark.browser

GPU = "card0"
SPAN_S = 7200


def prefill(path, start):
    clock = Clock(start)
    store = m.HistoryStore(path, clock=clock, demo=True)
    store.open()
    for i in range(SPAN_S - 300):
        t = start + i
        store.offer_stats(GPU, t, dict(gpu_busy_pct=60.0, power_w=150.0, vram_used_bytes=4 << 30))
        if i % 5 == 0:
            rows = [dict(pid=4343, start_time=99, name="zoejob", user="zoe", uid=1001, cmd="zoejob",
                         container=None, kfd=False, type=None, vram_bytes=4 << 30, gtt_bytes=0,
                         engines_pct={"gfx": 50.0}, gpu_time_ms_per_s=500.0,
                         slurm={"job": 777, "step": "0"})] if i < 3600 else []
            store.offer_procs(GPU, {"type": "procs", "gpu_id": GPU, "ts": m.format_ts(t),
                                    "processes": rows})
        if i % 300 == 0:
            clock.now = t
            store.cycle()
    clock.now = start + SPAN_S - 300
    store.cycle(final=True)
    store.close()


@pytest.fixture(scope="module")
def filled(vendor_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("usage") / "history.sqlite3")
    prefill(path, time.time() - SPAN_S)
    server = Server(vendor_dir, ["--demo"], {"APP_HISTORY_PATH": path})
    yield server
    server.stop()


def api(server, path):
    with urllib.request.urlopen(server.url + path, timeout=5) as res:
        return json.loads(res.read().decode())


def test_usage_view_table_picker_and_the_runs_behind_a_row(filled, open_at):  # noqa: F811
    page, watch = open_at(filled, "#range=6h")
    page.locator("[data-testid=nav-usage]").click()
    usage = page.locator("[data-testid=usage]")
    zoe = usage.locator("tbody tr[data-key=zoe]")
    expect(zoe).to_be_visible()
    expect(zoe.locator("td").nth(0)).to_have_text("zoe")
    expect(zoe.locator("td").nth(4)).to_have_text("1")                    # one run
    answer = api(filled, "api/usage?range=6h&by=user")
    row = [r for r in answer["rows"] if r["key"] == "zoe"][0]
    assert row["energy_kwh"] == pytest.approx(150 * 3600 * 0.5 / 3.6e6, rel=0.05)  # 50 % of 150 W x 1 h
    widths = usage.locator("tbody tr[data-key] .ubar > span").evaluate_all(
        "spans => spans.map(s => parseFloat(s.style.width))")
    assert max(widths) == 100 and all(0 <= w <= 100 for w in widths)     # the busiest: a full bar
    expect(usage.locator("[data-testid=usage-unattributed]")).to_be_visible()
    expect(usage.locator("[data-testid=usage-total]")).to_contain_text("all GPUs")
    zoe.locator("button.nm").click()                                      # the runs behind it
    runs = usage.locator("[data-testid=usage-runs]")
    expect(runs.locator("tbody tr")).to_have_count(1)
    expect(runs.locator("tbody tr td").first).to_have_text("zoejob")
    assert watch.requested("by=user&key=zoe")
    shot(page, "usage.png")
    usage.locator("[data-testid=usage-by]").select_option("job")          # the picker
    expect(usage.locator("tbody tr[data-key='777']")).to_be_visible()
    usage.locator("tbody tr[data-key='777'] button.nm").click()
    expect(usage.locator("[data-testid=usage-runs] tbody tr td").first).to_have_text("zoejob")
    page.locator("[data-range='1h']").click()                             # the range control
    expect(usage.locator("h3")).to_contain_text("last 1h")
    expect(usage.locator("tbody tr[data-key='777']")).to_have_count(0)    # zoe left 1 h ago+
    page.locator("[data-testid=nav-usage]").click()                       # back to the GPUs
    expect(usage).to_have_count(0)
    watch.assert_clean()
