"""The Fleet view (#17) in a real headless Chromium: a real hub (APP_FLEET_PEERS)
polling real --demo servers on loopback, the page served by the hub.

Screenshots (laptop 1366x768 and phone 390 px) land in each test's tmp dir.
"""
import json
import os
import re
import signal
import time

import pytest

from conftest import ServerPool, wait_for

playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = playwright_sync.expect

pytestmark = pytest.mark.browser

NBSP = "\u00a0"
HOSTILE = "<img src=x onerror=alert(1)>"
WS_FAILURE = "WebSocket connection to"


@pytest.fixture
def pool(vendor_dir):
    servers = ServerPool()
    try:
        yield servers
    finally:
        servers.stop_all()


def start_fleet(pool, peers, hub_args=("--demo", "--demo-gpus", "1"), env=None):
    """Peers: [(name, [args...])] started as --demo servers; then a hub polling them every 0.5 s.
    Returns (hub, {name: peer})."""
    started = {}
    for name, args in peers:
        started[name] = pool.start(args=["--demo"] + list(args), env={"APP_VENDOR_DIR": os.environ["APP_VENDOR_DIR"],
                                                                      "APP_PROC_ENABLE": "true"})
    spec = ",".join("%s=http://127.0.0.1:%d" % (name, p.port) for name, p in started.items())
    hub_env = {"APP_VENDOR_DIR": os.environ["APP_VENDOR_DIR"], "APP_FLEET_PEERS": spec,
               "APP_FLEET_INTERVAL": "0.5", "APP_FLEET_TIMEOUT": "0.5"}
    hub_env.update(env or {})
    hub = pool.start(args=list(hub_args), env=hub_env)
    return hub, started


def fleet_hosts(hub):
    return wait_for(lambda: hub.get_json("/api/fleet")[1]["hosts"], 10, message="/api/fleet")


class Watch(object):
    """Console errors, page errors, dialogs and the subscribe messages the page sent."""

    def __init__(self, page):
        self.page, self.errors, self.dialogs, self.sent = page, [], [], []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append("pageerror: %s" % e))
        page.on("dialog", self._dialog)
        page.on("websocket", lambda ws: ws.on("framesent", lambda p: self.sent.append(json.loads(p))))

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def subscribes(self):
        self.page.wait_for_timeout(20)
        return [m for m in self.sent if m.get("type") == "subscribe"]

    def assert_clean(self, allow=()):
        self.page.wait_for_timeout(200)
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        assert errors == [], "console errors: %r" % errors
        assert self.dialogs == [], "dialogs: %r" % self.dialogs


@pytest.fixture
def open_page(browser):
    contexts = []

    def open_(server, hash_="", viewport=(1366, 768)):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        watch = Watch(page)
        page.goto(server.url + "/" + hash_)
        expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
        return page, watch
    yield open_
    for context in contexts:
        context.close()


def text(locator):
    return locator.inner_text().replace(NBSP, " ").strip()


def host_names(page):
    return page.locator("[data-testid=fleet-host]").evaluate_all("rows => rows.map(r => r.dataset.host)")


def wait_until(predicate, timeout=15.0, message="condition"):
    return wait_for(predicate, timeout, interval=0.1, message=message)


# ---- the tests -------------------------------------------------------------------------

def test_hub_opens_on_the_fleet_with_every_host_and_gpu(pool, open_page, tmp_path):
    hub, peers = start_fleet(pool, [("alpha", ["--demo-gpus", "2"]), ("beta", ["--demo-gpus", "3"])])
    wait_until(lambda: all(h["state"] == "up" for h in fleet_hosts(hub)) and len(fleet_hosts(hub)) == 3,
               message="every host up")
    page, watch = open_page(hub)
    fleet = page.locator("[data-testid=fleet]")
    expect(fleet).to_be_visible()
    assert {"type": "subscribe", "gpu_id": "fleet"} in watch.subscribes()
    rows = page.locator("[data-testid=fleet-host]")
    expect(rows).to_have_count(3)
    names = host_names(page)
    assert set(names) >= {"alpha", "beta"} and len(names) == 3
    expect(page.locator("[data-host=alpha] [data-testid=fleet-gpu]")).to_have_count(2)
    expect(page.locator("[data-host=beta] [data-testid=fleet-gpu]")).to_have_count(3)
    local = [n for n in names if n not in ("alpha", "beta")][0]
    expect(page.locator('[data-host="%s"] [data-testid=fleet-gpu]' % local)).to_have_count(1)
    for name in ("alpha", "beta"):
        expect(page.locator("[data-host=%s] [data-testid=fleet-state]" % name)).to_have_text("up")
        # Relative: the page works under a path prefix (and under /hosts/{name}/ itself).
        expect(page.locator("[data-host=%s] [data-testid=fleet-link]" % name)).to_have_attribute(
            "href", "./hosts/%s/" % name)
    # The local host (the hub's own GPU) opens this page's own view, not a reload of the fleet.
    expect(page.locator('[data-host="%s"] [data-testid=fleet-link]' % local)).to_have_attribute("href", "#gpu=all")
    # Values arrive: a busy % in every cell, totals on top.
    wait_until(lambda: all(re.match(r"^\d+%$", t) for t in page.locator(
        "[data-testid=fleet-gpu] [data-metric=gpu_busy_pct]").all_inner_texts()), message="busy % in every cell")
    expect(page.locator("[data-testid=fleet-totals] [data-metric=gpus]")).to_have_text("6")
    expect(page.locator("[data-testid=fleet-totals] [data-metric=hosts]")).to_have_text("3 of 3")
    page.screenshot(path=str(tmp_path / "fleet-laptop.png"), full_page=True)
    watch.assert_clean()


BETA = "beta-gpu-node-17.cluster.example.org"      # longer than the host column


def test_a_killed_peer_turns_stale_then_down_with_its_last_seen(pool, open_page, tmp_path):
    hub, peers = start_fleet(pool, [("alpha", ["--demo-gpus", "2"]), (BETA, ["--demo-gpus", "2"])])
    wait_until(lambda: all(h["state"] == "up" for h in fleet_hosts(hub)), message="every host up")
    page, watch = open_page(hub)
    beta = page.locator('[data-host="%s"]' % BETA)
    expect(beta.locator("[data-testid=fleet-state]")).to_have_text("up")
    expect(beta.locator("[data-testid=fleet-seen]")).to_have_count(0)
    peers[BETA].proc.send_signal(signal.SIGKILL)
    peers[BETA].proc.wait(5)
    expect(beta.locator("[data-testid=fleet-state]")).to_have_text(re.compile("^(stale|down)$"))
    expect(beta.locator("[data-testid=fleet-seen]")).to_contain_text("seen")
    expect(beta).to_have_attribute("data-state", re.compile("^(stale|down)$"))
    # Its GPUs stay on screen with their last values, dimmed.
    expect(beta.locator("[data-testid=fleet-gpu]")).to_have_count(2)
    expect(beta.locator("[data-testid=fleet-gpu].off")).to_have_count(2)
    expect(beta.locator("[data-testid=fleet-state]")).to_have_text("down", timeout=20000)
    expect(beta.locator("[data-testid=fleet-seen]")).to_contain_text(re.compile(r"seen \d+\s(s|min) ago"))
    expect(page.locator("[data-host=alpha] [data-testid=fleet-state]")).to_have_text("up")
    # A name too long for the column is cut (whole in its title), never the state badge beside it
    badge, head = beta.locator("[data-testid=fleet-state]").bounding_box(), beta.locator(".fh").bounding_box()
    assert badge["width"] > 0 and badge["x"] + badge["width"] <= head["x"] + head["width"] + 0.5, (badge, head)
    assert beta.locator("[data-testid=fleet-link]").get_attribute("title").startswith(BETA)
    page.screenshot(path=str(tmp_path / "fleet-down.png"), full_page=True)
    # Sorted by state, the host that is not up comes first.
    page.locator("[data-testid=fleet-tools] select[name=sort]").select_option("state")
    wait_until(lambda: host_names(page)[0] == BETA, message="beta first by state")
    # The "down" filter keeps the hosts that are not up.
    page.get_by_label("down", exact=True).check()
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(1)
    assert host_names(page) == [BETA]
    watch.assert_clean()


def test_sort_filters_and_the_hash(pool, open_page):
    hub, peers = start_fleet(pool, [("alpha", ["--demo-gpus", "2"]), ("beta", ["--demo-gpus", "3"]),
                                    ("gamma", ["--demo-gpus", "1"])], hub_args=("--demo", "--demo-gpus", "1"))
    wait_until(lambda: len(fleet_hosts(hub)) == 4 and all(h["state"] == "up" for h in fleet_hosts(hub)),
               message="every host up")
    local = [h["name"] for h in fleet_hosts(hub) if h["source"] == "local"][0]
    page, watch = open_page(hub)
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(4)
    assert [n for n in host_names(page) if n != local] == ["alpha", "beta", "gamma"]      # by name, the default
    # Text filter: a host name.
    search = page.locator("[data-testid=fleet-tools] input[name=q]")
    search.fill("bet")
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(1)
    assert host_names(page) == ["beta"]
    # A user of the demo's processes matches the hosts whose top process is theirs.
    search.fill("")
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(4)
    # ">= N GiB free": no demo GPU has 10 TiB free; 1 GiB: some do.
    free = page.locator("[data-testid=fleet-tools] input[name=free]")
    free.fill("10000")
    expect(page.locator("[data-testid=fleet-none]")).to_have_text("No host matches the filters.")
    free.fill("")
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(4)
    # Sort by hottest: the order follows each host's hottest GPU as the page shows it.
    page.locator("[data-testid=fleet-tools] select[name=sort]").select_option("hot")

    def hottest_order():
        rows = page.locator("[data-testid=fleet-host]").evaluate_all("""rows => rows.map(r => [r.dataset.host,
            Math.max(...[...r.querySelectorAll('[data-metric=temp_c]')].map(e => parseFloat(e.textContent)))])""")
        temps = [t for _, t in rows]
        return temps == sorted(temps, reverse=True) and rows
    wait_until(hottest_order, message="rows sorted by the hottest GPU")
    # Sort, filters in the hash: they survive a reload.
    page.locator("[data-testid=fleet-tools] select[name=sort]").select_option("name")
    page.get_by_label("idle GPUs").check()
    search.fill("a")
    wait_until(lambda: "q=a" in page.evaluate("location.hash"), message="the filters in the hash")
    assert "idle=1" in page.evaluate("location.hash")
    page.reload()
    expect(page.locator("[data-testid=fleet-tools] input[name=q]")).to_have_value("a")
    expect(page.get_by_label("idle GPUs")).to_be_checked()
    # Idle: every listed host has a GPU under 10 % busy shown bright, every other GPU dimmed
    # (a cell's class and text come from the same frame: one evaluate reads both).
    search.fill("")
    cells = page.locator("[data-testid=fleet-gpu]").evaluate_all(
        "cs => cs.map(c => [c.closest('li').dataset.host, c.classList.contains('dim'),"
        " c.querySelector('[data-metric=gpu_busy_pct]').textContent])")
    for host, dim, busy in cells:
        assert dim == (not (busy.endswith("%") and float(busy[:-1]) < 10)), (host, dim, busy)
    assert all(any(not d for h2, d, _ in cells if h2 == h) for h, _, _ in cells), "a host listed without an idle GPU"
    page.get_by_label("idle GPUs").uncheck()
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(4)
    # ">= 10 GiB free": the demo's 24 GiB GPU (beta's nvidia0, ~8 GiB used) is, its 16 GiB and
    # 512 MiB ones are not: beta is listed with its other GPUs dimmed; alpha, gamma and the hub not.
    free.fill("10")
    wait_until(lambda: host_names(page) == ["beta"], message="only beta has 10 GiB free on a GPU")
    cells = page.locator("[data-testid=fleet-gpu]").evaluate_all(
        "cs => cs.map(c => [c.dataset.gpu, c.classList.contains('dim'), c.querySelector('[data-metric=vram]').textContent])")
    assert [(gpu, dim) for gpu, dim, _ in cells] == [("card0", True), ("card1", True), ("nvidia0", False)], cells
    free.fill("")
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(4)
    watch.assert_clean()


def test_a_click_opens_the_host_through_the_hub(pool, open_page):
    hub, peers = start_fleet(pool, [("alpha", ["--demo-gpus", "2"])])
    wait_until(lambda: all(h["state"] == "up" for h in fleet_hosts(hub)), message="alpha up")
    page, watch = open_page(hub)
    link = page.locator("[data-host=alpha] [data-testid=fleet-link]")
    expect(link).to_have_attribute("href", "./hosts/alpha/")
    page.locator("[data-host=alpha] [data-testid=fleet-gpu]").first.click()      # the whole row opens it
    page.wait_for_url(re.compile(r"/hosts/alpha/$"))
    # The peer's own page, through the hub's tunnel, live over its WebSocket.
    expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
    expect(page.locator("article.gpu")).to_be_visible()
    page.go_back()
    expect(page.locator("[data-testid=fleet]")).to_be_visible()
    # The local host opens this server's own GPU, and the header leads back to the fleet.
    local = [h["name"] for h in fleet_hosts(hub) if h["source"] == "local"][0]
    page.locator('[data-host="%s"] [data-testid=fleet-link]' % local).click()
    expect(page.locator("article.gpu")).to_be_visible()
    wait_until(lambda: watch.subscribes()[-1].get("gpu_id") != "fleet", message="back to the GPU's frames")
    page.locator("[data-testid=fleet-nav]").click()
    expect(page.locator("[data-testid=fleet]")).to_be_visible()
    wait_until(lambda: watch.subscribes()[-1] == {"type": "subscribe", "gpu_id": "fleet"}, message="the fleet again")


def test_a_server_without_peers_shows_itself_from_the_header(pool, open_page):
    server = pool.start(args=["--demo", "--demo-gpus", "2"], env={"APP_VENDOR_DIR": os.environ["APP_VENDOR_DIR"]})
    page, watch = open_page(server)
    expect(page.locator("article.gpu")).to_be_visible()            # not a hub: its own GPUs first
    page.locator("[data-testid=fleet-nav]").click()
    expect(page.locator("[data-testid=fleet-host]")).to_have_count(1)
    expect(page.locator("[data-testid=fleet-gpu]")).to_have_count(2)
    expect(page.locator("[data-testid=fleet-link]")).to_have_attribute("href", "#gpu=all")
    watch.assert_clean()


def test_phone_width_wraps_the_cells(pool, open_page, tmp_path):
    hub, peers = start_fleet(pool, [("alpha", ["--demo-gpus", "8"]), ("beta", ["--demo-gpus", "3"])])
    wait_until(lambda: all(h["state"] == "up" for h in fleet_hosts(hub)), message="every host up")
    page, watch = open_page(hub, viewport=(390, 844))
    expect(page.locator("[data-host=alpha] [data-testid=fleet-gpu]")).to_have_count(8)
    page.wait_for_timeout(500)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the Fleet view scrolls sideways on a phone (%d px)" % overflow
    tops = page.locator("[data-host=alpha] [data-testid=fleet-gpu]").evaluate_all(
        "cells => cells.map(c => Math.round(c.getBoundingClientRect().top))")
    assert len(set(tops)) >= 2, "the 8 cells should wrap on a phone"
    page.screenshot(path=str(tmp_path / "fleet-phone.png"), full_page=True)
    watch.assert_clean()


def test_a_hostile_process_name_is_literal_text(pool, open_page):
    # One process per GPU: the fifth GPU's is the demo's hostile one (DEMO_HOSTILE_SLOT), so it is on top.
    hub, peers = start_fleet(pool, [("evil", ["--demo-gpus", "5", "--demo-scenario", "hostile",
                                              "--demo-processes", "1"])])
    peers["evil"].wait_metrics()

    def hostile_top():
        for h in fleet_hosts(hub):
            for g in h["gpus"]:
                if (g.get("top_process") or {}).get("name") == HOSTILE:
                    return True
        return False
    page, watch = open_page(hub)
    expect(page.locator("[data-host=evil] [data-testid=fleet-gpu]")).to_have_count(5)
    wait_until(hostile_top, 30, message="the hostile process on top of a GPU")
    wait_until(lambda: HOSTILE in page.locator("[data-host=evil]").inner_text(), 15, message="the hostile name on screen")
    assert page.locator("[data-testid=fleet] img").count() == 0
    watch.assert_clean()


def test_a_paused_hub_dims_the_fleet_and_says_so(pool, open_page):
    hub, peers = start_fleet(pool, [("alpha", ["--demo-gpus", "2"])])
    wait_until(lambda: all(h["state"] == "up" for h in fleet_hosts(hub)), message="alpha up")
    page, watch = open_page(hub)
    fleet = page.locator("ul.fleet")
    expect(page.locator("[data-host=alpha] [data-testid=fleet-gpu]")).to_have_count(2)
    opacity = "el => Number(getComputedStyle(el).opacity)"
    assert fleet.evaluate(opacity) == 1
    hub.signal(signal.SIGSTOP)
    try:
        expect(page.locator("[data-testid=stale]")).to_be_visible(timeout=6000)
        # the fleet's frames come once a second: stale after 2 s + one 250 ms interval, and it says so
        expect(page.locator("[data-testid=stale]")).to_contain_text("No update for more than 2250 ms")
        assert fleet.evaluate(opacity) < 0.6, "the stale fleet is dimmed, not only announced"
    finally:
        hub.signal(signal.SIGCONT)
    expect(page.locator("[data-testid=stale]")).to_have_count(0, timeout=10000)
    wait_until(lambda: fleet.evaluate(opacity) == 1, 5, message="the fleet to brighten again")
    watch.assert_clean()
