"""End-to-end tests of the page (index.html) in a real headless Chromium.

Every test starts the real server (amdgpu_top_web.py) as a subprocess on a
loopback port, serving the page's ES modules from APP_VENDOR_DIR (an npm
install of tests/package.json; tests/run.sh makes it), and drives Debian's
/usr/bin/chromium through Playwright. Screenshots land in tests/artifacts/.

Self-contained on purpose: the server fixtures of conftest.py are not used (only its
vendor_dir and browser, shared with test_page_history.py).
"""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import fixture_env

playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = playwright_sync.expect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "amdgpu_top_web.py")
TESTDATA = os.path.join(ROOT, "testdata")
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
LISTEN_RE = re.compile(r"event=listening url=http://127\.0\.0\.1:(\d+)/")
NBSP = "\u00a0"
HOSTILE = "<img src=x onerror=alert(1)>"
NO_NVML = os.path.join(ROOT, "tests", "no-such-libnvidia-ml.so.1")
WS_FAILURE = "WebSocket connection to"      # Chromium's own console error while a server is down

pytestmark = pytest.mark.browser


# ---- fixtures: servers (vendor_dir and the one session browser are in conftest.py,
# shared with test_page_history.py: one Playwright per pytest session) ----------------

class Server(object):
    """The real server as a subprocess; stderr is drained by a thread."""

    def __init__(self, vendor, args=(), env=None, port=0):
        full_env = dict((k, v) for k, v in os.environ.items() if not k.startswith("APP_"))
        full_env["APP_VENDOR_DIR"] = vendor
        full_env["APP_NVML_LIBRARY"] = NO_NVML              # never this host's NVIDIA driver
        full_env["APP_HISTORY_PATH"] = "off"                # tests that want history name a file
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, "--listen", "127.0.0.1:%d" % port] + list(args),
            cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, universal_newlines=True)
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = self._wait_listening()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def _wait_listening(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = LISTEN_RE.search(line)
            if match:
                return int(match.group(1))
        self.stop()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.port

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def start_server(vendor_dir):
    """Factory: start_server(args=[...], env={...}, port=0) -> Server; all stopped afterwards."""
    started = []

    def start(args=("--demo",), env=None, port=0):
        server = Server(vendor_dir, args, env, port)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


class Watch(object):
    """Records what a page must never do: console errors, uncaught exceptions,
    dialogs, and requests or WebSockets to any origin but the server."""

    def __init__(self, page, server):
        self.page = page
        self.origin = server.url
        self.ws_origin = "ws://127.0.0.1:%d/" % server.port
        self.errors, self.foreign, self.dialogs, self.requests, self.sent = [], [], [], [], []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append("pageerror: %s" % exc))
        page.on("request", self._request)
        page.on("websocket", self._websocket)
        page.on("dialog", self._dialog)

    def _console(self, msg):
        if msg.type == "error":
            self.errors.append(msg.text)

    def _request(self, request):
        self.requests.append(request.url)
        if not request.url.startswith(self.origin):
            self.foreign.append(request.url)

    def _websocket(self, ws):
        if not ws.url.startswith(self.ws_origin):
            self.foreign.append(ws.url)
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))

    def subscriptions(self):
        return [m.get("gpu_id") for m in self.sent_subscribes()]

    def sent_subscribes(self):
        self.page.wait_for_timeout(20)      # Playwright's sync API delivers events only inside its calls
        return [m for m in self.sent if m.get("type") == "subscribe"]

    def requested(self, suffix):
        self.page.wait_for_timeout(20)
        return any(url.endswith(suffix) for url in self.requests)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self, allow=()):
        self.page.wait_for_timeout(200)     # deliver pending console/request events
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        assert errors == [], "console errors: %r" % errors
        assert self.foreign == [], "requests to other origins: %r" % self.foreign
        assert self.dialogs == [], "dialogs opened: %r" % self.dialogs


@pytest.fixture
def open_page(browser):
    """Factory: open_page(server, hash="", viewport=(1280, 900)) -> (page, Watch); waits for
    the connection and a GPU view or the all-GPUs overview (the default from 3 GPUs on)."""
    contexts = []

    def open_(server, hash_="", viewport=(1280, 900), wait_live=True, color_scheme="light"):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                      color_scheme=color_scheme)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10000)
        watch = Watch(page, server)
        page.goto(server.url + hash_)
        if wait_live:
            expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
            expect(page.locator("article.gpu, [data-testid=overview]").first).to_be_visible()
        return page, watch
    yield open_
    for context in contexts:
        context.close()


# ---- helpers -----------------------------------------------------------------------

def text(locator):
    return locator.inner_text().replace(NBSP, " ").strip()


def metric(page, key, gpu=None):
    scope = page.locator("article.gpu[data-gpu=%s]" % gpu) if gpu else page.locator("article.gpu").first
    return text(scope.locator("[data-metric=%s]" % key))


def wait_until(predicate, timeout=10.0, interval=0.1, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))


def row_pids(page):
    return [int(p) for p in page.locator("article.gpu >> tbody tr[data-pid]").evaluate_all(
        "rows => rows.map(r => r.dataset.pid)")]


def column_texts(page, index):
    return [t.replace(NBSP, " ") for t in page.locator("article.gpu >> tbody tr[data-pid]").evaluate_all(
        "(rows, i) => rows.map(r => r.cells[i].innerText.trim())", index)]


def header_index(page, col):
    return page.locator("article.gpu thead th").evaluate_all(
        "(ths, key) => ths.findIndex(th => th.querySelector('button').dataset.col === key)", col)


UNITS = {"MiB": 1 << 20, "GiB": 1 << 30}


def parse_bytes(s):
    number, unit = s.split()
    return float(number.lstrip("<")) * UNITS[unit]


def wait_procs(page, minimum=1):
    wait_until(lambda: page.locator("article.gpu >> tbody tr[data-pid]").count() >= minimum, 15,
               message="process rows")


def screenshot(page, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    return path


# ---- demo mode -----------------------------------------------------------------------

def test_demo_values_appear_change_and_screenshots(start_server, open_page):
    server = start_server(["--demo", "--demo-gpus", "2"])
    page, watch = open_page(server)
    article = page.locator("article.gpu")
    expect(article).to_have_count(1)                         # 2 GPUs: one shown, selector for the other
    expect(page.locator("[data-testid=overview]")).to_have_count(0)
    expect(page.get_by_label("GPU", exact=True)).to_have_value("card0")
    expect(article.locator("h2")).to_contain_text("AMD Radeon RX 7800 XT (demo)")
    expect(page.locator("[data-testid=demo-badge]")).to_have_text("demo data")
    expect(page.locator("body > footer")).to_contain_text("interval 250 ms")
    expect(page.locator("body > footer")).to_contain_text("amdgpu_top_web 0.")
    for key, pattern in [("gpu_busy_pct", r"^\d+%$"), ("sclk_mhz", r"^\d+ MHz$"), ("temp_c", r"^\d+\.\d °C$"),
                         ("power_w", r"^\d+(\.\d)? W$"), ("fan_rpm", r"^\d+ RPM$"), ("pcie", r"^Gen 4 ×16$"),
                         ("runtime_status", r"^active$"), ("vram_used", r"GiB / 16\.0 GiB")]:
        wait_until(lambda: re.search(pattern, metric(page, key)), 5, message="%s ~ %s" % (key, pattern))

    def snapshot():
        return tuple(metric(page, k) for k in ("gpu_busy_pct", "sclk_mhz", "power_w", "temp_c"))
    first = snapshot()
    wait_until(lambda: snapshot() != first, 5, message="live values to change")

    # Sparklines: drawn from hello history, then grow with live frames (bounded path).
    busy_path = article.locator("figure.spark path.a").first
    wait_until(lambda: (busy_path.get_attribute("d") or "").count("L") >= 2, 5, message="sparkline")
    before = busy_path.get_attribute("d")
    wait_until(lambda: busy_path.get_attribute("d") != before, 5, message="sparkline to move")
    assert len(re.findall(r"[ML]", busy_path.get_attribute("d"))) <= 301

    wait_procs(page, 8)
    expect(article.locator("[data-testid=headline]")).to_contain_text("is making this GPU busy")
    time.sleep(0.6)
    assert page.evaluate("document.getAnimations().length") == 0, "live values must not animate"
    time.sleep(4.0)                                           # a little history for the sparklines
    screenshot(page, "demo-desktop.png")
    watch.assert_clean()

    dark, dark_watch = open_page(server, "#gpu=all", color_scheme="dark")    # the overview, asked for
    overview_rows(dark, 2)
    time.sleep(0.5)
    screenshot(dark, "demo-desktop-dark-all.png")
    dark_watch.assert_clean()

    phone, phone_watch = open_page(server, viewport=(390, 844))
    wait_procs(phone, 8)
    time.sleep(0.5)
    screenshot(phone, "demo-phone.png")
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the page scrolls sideways on a phone (%d px)" % overflow
    phone_watch.assert_clean()


def test_gpu_selector_switches_and_updates_hash(start_server, open_page):
    server = start_server()
    page, watch = open_page(server)
    select = page.get_by_label("GPU", exact=True)
    expect(select).to_have_value("all")                      # 3 GPUs: the overview is the default
    expect(page.locator("[data-testid=ov-row]")).to_have_count(3)
    expect(select.locator("option")).to_have_count(4)        # card0, card1, nvidia0 + "all"
    select.select_option("card1")
    wait_until(lambda: page.evaluate("location.hash") == "#gpu=card1", 5, message="hash #gpu=card1")
    article = page.locator("article.gpu")
    expect(article).to_have_count(1)
    expect(article).to_have_attribute("data-gpu", "card1")
    expect(article.locator("h2")).to_contain_text("AMD Radeon 780M (demo)")
    expect(article).to_contain_text("GTT is system memory in use by the GPU")   # APU note
    expect(article.locator("[data-metric=fan_rpm]")).to_have_text("\u2014")    # null -> em dash
    select.select_option("all")
    expect(page.locator("[data-testid=ov-row]")).to_have_count(3)
    expect(page.locator("article.gpu")).to_have_count(0)
    assert page.evaluate("location.hash") == "#gpu=all"
    page.go_back()                                            # the hash is history: back = card1
    expect(page.locator("article.gpu")).to_have_count(1)
    expect(page.locator("article.gpu")).to_have_attribute("data-gpu", "card1")
    watch.assert_clean()

    # The hash is remembered: a fresh load opens on the GPU it names.
    page2, watch2 = open_page(server, "#gpu=card1")
    expect(page2.locator("article.gpu")).to_have_attribute("data-gpu", "card1")
    expect(page2.get_by_label("GPU", exact=True)).to_have_value("card1")
    watch2.assert_clean()


def test_follows_only_the_gpu_on_screen(start_server, open_page):
    """The page subscribes to the GPU it shows ("*" for all) and, switching, gets
    the history it did not follow back from /api/gpus/{id}/history."""
    server = start_server()
    page, watch = open_page(server, "#gpu=card0")
    wait_until(lambda: watch.subscriptions() == ["card0"], 5, message="subscribe card0")
    page.wait_for_timeout(4000)                              # card1 runs on, unfollowed
    assert not watch.requested("/history")
    page.get_by_label("GPU", exact=True).select_option("card1")
    wait_until(lambda: watch.subscriptions() == ["card0", "card1"], 5, message="subscribe card1")
    wait_until(lambda: watch.requested("/api/gpus/card1/history"), 5, message="card1 history fetched")
    path = page.locator("article.gpu[data-gpu=card1] figure.spark path.a").first
    # 4+ s of card1 history at 4 Hz, not only what arrived since the switch.
    wait_until(lambda: (path.get_attribute("d") or "").count("L") >= 12, 1.5, message="card1 history drawn")
    page.get_by_label("GPU", exact=True).select_option("all")
    wait_until(lambda: watch.subscriptions() == ["card0", "card1", "*"], 5, message="subscribe *")
    assert watch.sent_subscribes()[-1].get("detail") == "overview"    # the overview: thinned
    page.get_by_label("GPU", exact=True).select_option("card0")
    wait_until(lambda: watch.subscriptions() == ["card0", "card1", "*", "card0"], 5, message="subscribe card0")
    assert "detail" not in watch.sent_subscribes()[-1]                # one GPU: every frame again
    wait_until(lambda: watch.requested("/api/gpus/card0/history"), 5, message="card0 history fetched")
    watch.assert_clean()


def test_sorting_by_header_buttons(start_server, open_page):
    server = start_server()
    page, watch = open_page(server, "#gpu=card0")
    wait_procs(page, 8)
    th_total = page.locator("article.gpu thead th", has=page.locator("button[data-col=total]"))
    expect(th_total).to_have_attribute("aria-sort", "descending")       # the default
    totals = [parse_bytes(t) for t in column_texts(page, header_index(page, "total"))]
    assert totals == sorted(totals, reverse=True)

    th_pid = page.locator("article.gpu thead th", has=page.locator("button[data-col=pid]"))
    page.locator("button[data-col=pid]").click()
    expect(th_pid).to_have_attribute("aria-sort", "descending")
    expect(th_total).not_to_have_attribute("aria-sort", re.compile(".+"))
    assert row_pids(page) == sorted(row_pids(page), reverse=True)
    page.locator("button[data-col=pid]").click()
    expect(th_pid).to_have_attribute("aria-sort", "ascending")
    assert row_pids(page) == sorted(row_pids(page))

    page.locator("button[data-col=name]").click()
    th_name = page.locator("article.gpu thead th", has=page.locator("button[data-col=name]"))
    expect(th_name).to_have_attribute("aria-sort", "ascending")
    names = column_texts(page, header_index(page, "name"))
    assert names == sorted(names, key=str.lower) and len(set(names)) == 8

    # Keyboard: the headers are real buttons (focus + Enter sorts).
    page.locator("button[data-col=vram]").focus()
    page.keyboard.press("Enter")
    th_vram = page.locator("article.gpu thead th", has=page.locator("button[data-col=vram]"))
    expect(th_vram).to_have_attribute("aria-sort", "descending")
    vram = [parse_bytes(t) for t in column_texts(page, header_index(page, "vram"))]
    assert vram == sorted(vram, reverse=True)
    # Engine columns come from capabilities.engines; a null engine shows an em dash.
    for engine in ("gfx", "compute", "dma", "dec", "enc"):
        expect(page.locator("button[data-col='eng:%s']" % engine)).to_have_count(1)
    assert "\u2014" in column_texts(page, header_index(page, "eng:dec"))
    watch.assert_clean()


def test_long_process_list_shows_top_rows_then_all(start_server, open_page):
    server = start_server(["--demo", "--demo-processes", "40"])
    page, watch = open_page(server, "#gpu=card0")
    wait_procs(page, 25)
    rows = page.locator("article.gpu >> tbody tr[data-pid]")
    expect(rows).to_have_count(25)
    more = page.locator("[data-testid=more]")
    expect(more).to_have_text("Show all 40 processes")
    totals = [parse_bytes(t) for t in column_texts(page, header_index(page, "total"))]
    assert totals == sorted(totals, reverse=True)          # the top 25 by the sort column
    more.click()
    expect(rows).to_have_count(40)
    expect(more).to_have_text("Show the top 25")
    page.get_by_label("Filter processes by name, user or PID").fill("alice")
    wait_until(lambda: rows.count() < 25, 5, message="filtered rows")
    assert set(column_texts(page, header_index(page, "user"))) == {"alice"}
    watch.assert_clean()


def test_row_order_is_stable_between_frames(start_server, open_page):
    server = start_server(["--demo", "--proc-scan-interval", "500ms"])
    page, watch = open_page(server, "#gpu=card0")
    wait_procs(page, 8)
    page.locator("button[data-col=user]").click()             # ties: alice owns three processes
    order = row_pids(page)
    users = column_texts(page, header_index(page, "user"))
    alice = [pid for pid, user in zip(order, users) if user == "alice"]
    assert len(alice) == 3 and alice == sorted(alice)         # ties broken by PID
    gfx_index = header_index(page, "eng:gfx")
    for _ in range(3):                                        # across several procs frames
        seen = column_texts(page, gfx_index)
        wait_until(lambda: column_texts(page, gfx_index) != seen, 5, message="a new procs frame")
        assert row_pids(page) == order
    watch.assert_clean()


def test_offscreen_process_table_holds_then_catches_up(start_server, open_page):
    # Below the fold the table skips the process frames (a cheaper page); in view it follows them.
    server = start_server(["--demo", "--demo-processes", "50", "--proc-scan-interval", "500ms"])
    page, watch = open_page(server, "#gpu=card0", viewport=(1280, 600))
    wait_procs(page, 25)
    page.evaluate("window.scrollTo(0, 0)")
    assert page.evaluate("document.querySelector('article.gpu section.procs').getBoundingClientRect().top"
                         " > innerHeight"), "the table should start below the fold at 1280x600"
    total = header_index(page, "total")
    gfx = header_index(page, "eng:gfx")
    page.wait_for_timeout(300)                                # a render already scheduled may land
    before = column_texts(page, gfx), column_texts(page, total)
    page.wait_for_timeout(1500)                               # several procs frames arrive meanwhile
    assert (column_texts(page, gfx), column_texts(page, total)) == before, "off screen: held"
    page.locator("article.gpu section.procs").scroll_into_view_if_needed()
    wait_until(lambda: (column_texts(page, gfx), column_texts(page, total)) != before, 5,
               message="the table to catch up once in view")
    watch.assert_clean()


def test_filter_by_name_user_pid(start_server, open_page):
    server = start_server()
    page, watch = open_page(server, "#gpu=card0")
    wait_procs(page, 8)
    box = page.get_by_label("Filter processes by name, user or PID")
    box.fill("alice")
    wait_until(lambda: page.locator("article.gpu >> tbody tr[data-pid]").count() == 3, 5, message="3 alice rows")
    assert set(column_texts(page, header_index(page, "user"))) == {"alice"}
    expect(page.locator(".proc-head h3")).to_contain_text("3 of 8")
    box.fill("LLAMA")
    expect(page.locator("article.gpu >> tbody tr[data-pid]")).to_have_count(1)
    pid = row_pids(page)[0]
    box.fill(str(pid))
    expect(page.locator("article.gpu >> tbody tr[data-pid]")).to_have_count(1)
    assert row_pids(page) == [pid]
    box.fill("no-such-process")
    expect(page.locator("article.gpu >> tbody tr[data-pid]")).to_have_count(0)
    expect(page.locator("article.gpu")).to_contain_text("No process matches the filter.")
    box.fill("")
    expect(page.locator("article.gpu >> tbody tr[data-pid]")).to_have_count(8)
    watch.assert_clean()


def test_hostile_process_name_is_literal_text(start_server, open_page):
    server = start_server(["--demo", "--demo-scenario", "hostile"])
    page, watch = open_page(server, "#gpu=card0")
    wait_procs(page, 8)
    cells = page.locator("td.name .nm", has_text=HOSTILE)
    wait_until(lambda: cells.count() >= 1, 5, message="the hostile name row")
    assert text(cells.first) == HOSTILE
    assert "<script>alert(1)</script>" in cells.first.get_attribute("title")   # hover: the cmdline
    cells.first.click()                                        # expand: the command line, as text
    expect(cells.first).to_have_attribute("aria-expanded", "true")
    code = cells.first.locator("xpath=ancestor::tr/following-sibling::tr[1][contains(@class,'cmdrow')]//code")
    expect(code).to_contain_text("<script>alert(1)</script>")
    time.sleep(2.5)                                            # stays open across procs frames
    expect(code).to_contain_text("<script>alert(1)</script>")
    cells.first.click()
    expect(cells.first).to_have_attribute("aria-expanded", "false")
    page.wait_for_timeout(1000)
    assert page.locator("img").count() == 0
    assert page.locator("main script, main iframe, main object").count() == 0
    assert watch.dialogs == []
    watch.assert_clean()


def test_stale_banner_when_server_paused(start_server, open_page):
    server = start_server()
    page, watch = open_page(server)
    banner = page.locator("[data-testid=stale]")
    expect(banner).to_have_count(0)
    view = page.locator("article.gpu, [data-testid=overview]").first
    opacity = "el => Number(getComputedStyle(el).opacity)"
    assert view.evaluate(opacity) == 1
    os.kill(server.pid, signal.SIGSTOP)
    try:
        expect(banner).to_be_visible(timeout=3000)
        # the overview's frames come once a second: stale after 2 s + one 250 ms interval (the
        # banner once said "500 ms", twice the interval, while it waited 2250 ms)
        expect(banner).to_contain_text("No update for more than 2250 ms")
        assert view.evaluate(opacity) < 0.6, "the stale values are dimmed, not only announced"
    finally:
        os.kill(server.pid, signal.SIGCONT)
    expect(banner).to_have_count(0, timeout=5000)
    wait_until(lambda: view.evaluate(opacity) == 1, 5, message="the values to brighten again")
    expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
    watch.assert_clean()


def test_reconnects_after_server_restart_on_same_port(start_server, open_page):
    first = start_server()
    page, watch = open_page(first, "#gpu=card0")
    port = first.port
    first.stop()
    conn = page.locator("[data-testid=conn]")
    expect(conn).to_have_attribute("data-state", "reconnecting", timeout=5000)
    expect(page.locator("[data-testid=stale]")).to_contain_text("reconnecting")
    time.sleep(1.0)                                            # a refused attempt or two
    second = start_server(port=port)
    assert second.port == port
    expect(conn).to_have_attribute("data-state", "open", timeout=20000)
    expect(page.locator("[data-testid=stale]")).to_have_count(0)
    def snapshot():
        return tuple(metric(page, k) for k in ("gpu_busy_pct", "sclk_mhz", "power_w", "temp_c"))
    before = snapshot()
    wait_until(lambda: snapshot() != before, 5, message="live values from the new server")
    watch.assert_clean(allow=(WS_FAILURE,))


def test_hidden_tab_stops_rendering(start_server, open_page):
    server = start_server()
    page, watch = open_page(server)
    page.evaluate("""() => {
      window.__mutations = 0;
      new MutationObserver((list) => { window.__mutations += list.length; })
        .observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
      window.__setVisibility = (state) => {
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
        Object.defineProperty(document, "hidden", {configurable: true, get: () => state === "hidden"});
        document.dispatchEvent(new Event("visibilitychange"));
      };
    }""")
    wait_until(lambda: page.evaluate("window.__mutations") > 0, 3, message="renders while visible")
    page.evaluate("window.__setVisibility('hidden')")
    time.sleep(0.3)                                           # a frame already scheduled may land
    page.evaluate("window.__mutations = 0")
    time.sleep(2.0)                                           # 8 stats frames per GPU arrive meanwhile
    assert page.evaluate("window.__mutations") == 0, "a hidden tab must not render"
    page.evaluate("window.__setVisibility('visible')")
    wait_until(lambda: page.evaluate("window.__mutations") > 0, 3, message="rendering to resume")
    watch.assert_clean()


def test_no_console_errors_no_foreign_requests_and_csp(start_server, open_page):
    server = start_server()
    page, watch = open_page(server, "#gpu=card0")
    wait_procs(page, 8)
    page.locator("button[data-col=name]").click()
    page.get_by_label("Filter processes by name, user or PID").fill("a")
    page.get_by_label("GPU", exact=True).select_option("all")
    expect(page.locator("[data-testid=ov-row]")).to_have_count(3)
    time.sleep(1.5)
    assert any("/vendor/preact/" in url for url in watch.requests)
    assert all("cdn.jsdelivr.net" not in url for url in watch.requests)
    response = page.request.get(server.url)
    csp = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert "connect-src 'self'" in csp
    watch.assert_clean()


def test_module_failure_shows_plain_fallback(start_server, browser):
    server = start_server()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route(re.compile(r".*/vendor/.*\.m?js$"), lambda route: route.abort())
        page.goto(server.url)
        fail = page.locator("#boot .fail")
        expect(fail).to_be_visible(timeout=10000)                # revealed by CSS, no script needed
        expect(fail).to_contain_text("did not load")
        expect(fail.locator("a")).to_have_attribute("href", "plain")
        page.locator("#boot .fail a").click()
        expect(page.locator("h1")).to_contain_text("amdgpu_top_web")
        assert page.url == server.url + "plain"
    finally:
        context.close()


def test_tampered_module_is_refused_by_integrity(start_server, browser, vendor_dir):
    """The import map's sha384 integrity is enforced: one changed byte and the page
    does not run (it shows the static fallback instead)."""
    server = start_server()
    with open(os.path.join(vendor_dir, "htm", "dist", "htm.module.js"), "rb") as handle:
        tampered = handle.read() + b"\n// tampered\n"
    context = browser.new_context()
    try:
        page = context.new_page()
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.route(re.compile(r".*/vendor/htm/dist/htm\.module\.js$"),
                   lambda route: route.fulfill(status=200, body=tampered, content_type="text/javascript"))
        page.goto(server.url)
        expect(page.locator("#boot .fail")).to_be_visible(timeout=10000)
        expect(page.locator("article.gpu")).to_have_count(0)
        assert any("integrity" in e.lower() for e in errors), errors
    finally:
        context.close()


def test_cdn_unreachable_fallback_gives_the_air_gapped_commands(start_server, browser):
    """A browser without internet, a server in CDN mode (no APP_VENDOR_DIR): the
    unstyled fallback shows the exact commands (the server's own, from the page's
    pins) and links /plain; the server said the same, once, at start-up."""
    import amdgpu_top_web as atw
    server = start_server(env={"APP_VENDOR_DIR": ""})
    with open(os.path.join(ROOT, "index.html"), encoding="utf-8") as handle:
        install, start = atw.format_vendor_commands(atw.parse_page_pins(handle.read()))
    context = browser.new_context()
    try:
        page = context.new_page()
        cdn = []
        page.route(re.compile(r"^https://cdn\.jsdelivr\.net/"),
                   lambda route: (cdn.append(route.request.url), route.abort("internetdisconnected")))
        page.goto(server.url)
        commands = page.locator("#boot [data-testid=vendor-commands]")
        expect(commands).to_be_visible(timeout=10000)            # revealed by CSS after 6 s
        assert commands.inner_text().strip().splitlines() == [install, start]
        expect(page.locator("#boot .fail a")).to_have_attribute("href", "plain")
        expect(page.locator("#boot .fail")).to_contain_text("APP_VENDOR_DIR")
        assert cdn, "the page asked the CDN for nothing: it was not in CDN mode"
        assert page.locator("article.gpu").count() == 0
    finally:
        context.close()
    assert len([line for line in server.log if "event=cdn_mode" in line]) == 1, server.log


# ---- the all-GPUs overview: 8 demo GPUs (4 AMD, 4 NVIDIA) ----------------------------------

EIGHT = ["card0", "card1", "nvidia0", "nvidia1", "card2", "nvidia2", "card3", "nvidia3"]
LAPTOPS = [(1366, 768), (1440, 900)]
ROW_BOXES = "rs => rs.map(r => { const b = r.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; })"


def overview_rows(page, count):
    rows = page.locator("[data-testid=ov-row]")
    expect(rows).to_have_count(count)
    wait_until(lambda: rows.locator("[data-testid=top-name]").count() == count, 10,
               message="a top process in every row")
    return rows


def test_overview_is_the_default_with_eight_gpus_and_fits_a_laptop(start_server, open_page):
    server = start_server(["--demo", "--demo-gpus", "8"])
    for width, height in LAPTOPS:
        page, watch = open_page(server, viewport=(width, height))
        rows = overview_rows(page, 8)
        expect(page.get_by_label("GPU", exact=True)).to_have_value("all")
        expect(page.locator("article.gpu")).to_have_count(0)
        listed = [g["id"] for g in page.request.get(server.url + "api/gpus").json()["gpus"]]
        assert rows.evaluate_all("rs => rs.map(r => r.dataset.gpu)") == listed         # in server order
        assert sorted(listed) == sorted(EIGHT)
        assert sorted(rows.locator("[data-testid=vendor]").all_inner_texts()) == ["AMD"] * 4 + ["NVIDIA"] * 4
        for key, pattern in [("gpu_busy_pct", r"^\d+%$"), ("temp_c", r"^\d+ °C$"), ("power_w", r"^\d+ W$"),
                             ("vram_used", r"^\d+(\.\d+)? (MiB|GiB) / \d+(\.\d+)? (MiB|GiB)$")]:
            cells = rows.locator("[data-metric=%s]" % key)
            wait_until(lambda: all(re.search(pattern, t.replace(NBSP, " ")) for t in cells.all_inner_texts()), 5,
                       message="%s ~ %s in every row (got %r)" % (key, pattern, cells.all_inner_texts()))
        # Throttling: the reasons other than GpuIdle, highlighted; AMD's demo reports none (null).
        throttle = rows.locator("[data-metric=throttle_reasons]")
        assert set(throttle.all_inner_texts()[:2]) == {NA}
        assert "GpuIdle" not in rows.locator(".limit").all_inner_texts()
        assert rows.locator("[data-testid=alert]").all_inner_texts() == [""] * 8    # nothing lost or asleep
        # All eight rows on screen without scrolling, nothing sideways.
        for left, top, right, bottom in rows.evaluate_all(ROW_BOXES):
            assert 0 <= left and right <= width and 0 <= top and bottom <= height, (width, height, bottom)
        assert page.evaluate("scrollX + scrollY") == 0
        assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
        if width == 1366:
            time.sleep(0.5)
            screenshot(page, "overview-desktop.png")
        watch.assert_clean()


def test_overview_row_opens_its_gpu_and_the_selector_goes_back(start_server, open_page):
    server = start_server(["--demo", "--demo-gpus", "8"])
    page, watch = open_page(server, viewport=(1366, 768))
    overview_rows(page, 8)
    # The overview follows every GPU thinned to what it shows (stats 1/s, the top rows).
    wait_until(lambda: watch.subscriptions() == ["*"], 5, message="subscribe * overview")
    assert watch.sent_subscribes()[-1] == {"type": "subscribe", "gpu_id": "*", "detail": "overview"}
    page.locator("[data-testid=ov-row][data-gpu=nvidia1] td.c-temp").click()    # anywhere on the row
    wait_until(lambda: page.evaluate("location.hash") == "#gpu=nvidia1", 5, message="hash #gpu=nvidia1")
    article = page.locator("article.gpu")
    expect(article).to_have_attribute("data-gpu", "nvidia1")
    expect(article.locator("[data-testid=gpu-name]")).to_have_text("NVIDIA H100 80GB HBM3 (demo)")
    wait_until(lambda: re.search(r"^\d+%$", metric(page, "gpu_busy_pct")), 5, message="nvidia1 tiles")
    select = page.get_by_label("GPU", exact=True)
    expect(select).to_have_value("nvidia1")
    wait_until(lambda: watch.subscriptions() == ["*", "nvidia1"], 5, message="subscribe nvidia1")
    assert "detail" not in watch.sent_subscribes()[-1]
    select.select_option("all")
    expect(page.locator("[data-testid=ov-row]")).to_have_count(8)
    expect(page.locator("article.gpu")).to_have_count(0)
    assert page.evaluate("location.hash") == "#gpu=all"
    wait_until(lambda: watch.subscriptions() == ["*", "nvidia1", "*"], 5, message="subscribe *")
    assert watch.sent_subscribes()[-1].get("detail") == "overview"
    page.locator("[data-testid=ov-row][data-gpu=card2] a.nm").click()     # the name is a link
    wait_until(lambda: page.evaluate("location.hash") == "#gpu=card2", 5, message="hash #gpu=card2")
    expect(article).to_have_attribute("data-gpu", "card2")
    page.go_back()                                            # the hash is history: back = the overview
    expect(page.locator("[data-testid=ov-row]")).to_have_count(8)
    watch.assert_clean()


def test_overview_on_a_phone_is_a_compact_list(start_server, open_page):
    server = start_server(["--demo", "--demo-gpus", "8"])
    page, watch = open_page(server, viewport=(390, 844))
    rows = overview_rows(page, 8)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the overview scrolls sideways on a phone (%d px)" % overflow
    boxes = rows.evaluate_all(ROW_BOXES)
    for (left, top, right, bottom), previous in zip(boxes, [None] + boxes[:-1]):
        assert 0 <= left and right <= 390
        assert previous is None or top >= previous[3] - 1       # cards one under the other
        assert bottom - top < 200                               # compact: a few short lines each
    # Nothing clipped: names wrap, every cell lies inside its card.
    clipped = rows.locator("a.nm").evaluate_all("as => as.filter(a => a.scrollWidth > a.clientWidth + 1).length")
    assert clipped == 0
    outside = rows.evaluate_all("""rs => rs.flatMap(r => { const b = r.getBoundingClientRect();
        return [...r.children].filter(c => { const x = c.getBoundingClientRect();
          return x.width && (x.left < b.left - 1 || x.right > b.right + 1); }).map(c => c.className); })""")
    assert outside == []
    time.sleep(0.5)
    screenshot(page, "overview-phone.png")
    page.locator("[data-testid=ov-row][data-gpu=nvidia0] td.c-busy").click()
    expect(page.locator("article.gpu")).to_have_attribute("data-gpu", "nvidia0")
    watch.assert_clean()


# ---- fixture trees --------------------------------------------------------------------

def test_fixture_multi_gpu_values(start_server, open_page):
    server = start_server([], fixture_env("multi_gpu", "multi"))
    page, watch = open_page(server)
    select = page.get_by_label("GPU", exact=True)
    expect(select.locator("option")).to_have_count(4)         # card0 (i915), card1, card2 (amdgpu) + all
    rows = page.locator("[data-testid=ov-row]")               # 3 GPUs: the overview first
    expect(rows).to_have_count(3)
    assert rows.locator("[data-testid=vendor]").all_inner_texts() == ["Intel", "AMD", "AMD"]
    wait_until(lambda: text(rows.nth(1).locator("[data-metric=temp_c]")) == "56 °C", 5, message="card1 in the overview")
    select.select_option("card0")
    article = page.locator("article.gpu")
    expect(article).to_have_attribute("data-gpu", "card0")    # the first card: the Intel iGPU
    expect(article.locator("[data-testid=vendor]")).to_have_text("Intel")
    expect(article.locator(".ident")).to_contain_text("i915")
    expect(select.locator("option").first).to_have_text("card0: Intel GPU 8086:3e92")
    select.select_option("card1")
    expect(article).to_have_attribute("data-gpu", "card1")
    expect(article.locator("[data-testid=vendor]")).to_have_text("AMD")
    expect(article.locator("[data-testid=gpu-name]")).to_have_text("AMD Radeon RX 6900 XT")
    expect(article.locator(".ident")).to_contain_text("0000:0c:00.0")
    expected = {"gpu_busy_pct": "3%", "mem_busy_pct": "0%", "sclk_mhz": "500 MHz", "temp_c": "56.0 °C",
                "fan_rpm": "0 RPM", "power_w": "36 W", "pcie": "Gen 4 ×16", "runtime_status": "active",
                "vram_used": "637 MiB / 16.0 GiB (4%)"}
    for key, value in expected.items():
        wait_until(lambda: metric(page, key) == value, 5, message="%s == %r (got %r)" % (key, value, metric(page, key)))
    expect(article.locator(".tile", has_text="Temperature")).to_contain_text("junction 59.0")
    expect(article.locator(".tile", has_text="Power")).to_contain_text("cap 289 W")
    expect(article.locator(".tile", has_text="Shader clock")).to_contain_text("memory 1000 MHz")
    select.select_option("card2")
    expect(article).to_have_attribute("data-gpu", "card2")
    expect(article.locator("[data-testid=gpu-name]")).to_have_text("AMD Phoenix1")
    wait_until(lambda: metric(page, "temp_c") == "25.0 °C", 5, message="Phoenix edge temperature")
    assert metric(page, "fan_rpm") == "\u2014" and metric(page, "mem_busy_pct") == "\u2014"
    expect(article).to_contain_text("GTT is system memory in use by the GPU")
    watch.assert_clean()


def test_fixture_multi_gpu_processes(start_server, open_page):
    """Process top over testdata/proc/multi (see its PROVENANCE)."""
    server = start_server([], fixture_env("multi_gpu", "multi", APP_PROC_SCAN_INTERVAL="500ms"))
    page, watch = open_page(server, "#gpu=card1")
    wait_procs(page, 3)
    names = column_texts(page, header_index(page, "name"))
    for name in ("gnome-shell", "blender", "llama-server", "python3", "rocminfo"):
        assert any(n.startswith(name) for n in names), (name, names)
    for name in ("glxgears", "xe-app", "glxinfo", "npu-app", "chrome", "vanisher"):   # other GPUs / no usage
        assert not any(n.startswith(name) for n in names), (name, names)
    for name in ("python3", "rocminfo"):                      # /dev/kfd holders: ROCm marker
        row = page.locator("article.gpu tbody tr", has=page.locator(".nm", has_text=name))
        expect(row.locator(".badge.kfd")).to_have_text("kfd")
    shared = page.locator("article.gpu tbody tr[data-pid='1301']")  # fork child sharing a client
    expect(shared.locator(".badge", has_text="shared")).to_have_count(1)
    expect(page.locator("article.gpu")).to_contain_text("ROCm")
    expect(page.locator("article.gpu .nm", has_text="gpu) (x y")).to_have_count(1)   # literal comm
    expect(page.locator("[data-testid=headline]")).not_to_contain_text("Looking for processes")
    page.get_by_label("GPU", exact=True).select_option("card2")
    wait_procs(page, 1)
    podman = page.locator("article.gpu tbody tr", has=page.locator(".nm", has_text="podman-app"))
    expect(podman).to_have_count(1)
    container = podman.locator("td").nth(header_index(page, "who"))
    assert container.text_content().strip() not in ("", "\u2014")     # its column, shown from 1440 px
    assert "\ncontainer " in podman.locator(".nm").get_attribute("title")   # narrower: the name's tooltip
    watch.assert_clean()


def test_fixture_restricted_shows_visibility_notice(start_server, open_page):
    server = start_server([], fixture_env("rx6900xt", "restricted"))
    page, watch = open_page(server)
    notice = page.locator("[data-testid=visibility]")
    expect(notice).to_contain_text("hidepid", timeout=10000)
    watch.assert_clean()


def test_fixture_legacy_fdinfo_headline_by_vram(start_server, open_page):
    server = start_server([], fixture_env("rx6900xt", "legacy_5_15"))
    page, watch = open_page(server)
    wait_procs(page, 1)
    names = column_texts(page, header_index(page, "name"))
    assert any(n.startswith("glmark2") for n in names) and any(n.startswith("mpv") for n in names), names
    # Engine time from the legacy per-ring lines; glmark2 and mpv tie, the lower PID wins.
    expect(page.locator("[data-testid=headline]")).to_contain_text("glmark2 (PID 3100")
    watch.assert_clean()


def test_fixture_suspended_gpu(start_server, open_page):
    server = start_server([], fixture_env("suspended", APP_PROC_ENABLE="false"))
    page, watch = open_page(server)
    wait_until(lambda: metric(page, "runtime_status") == "suspended", 5, message="suspended tile")
    expect(page.locator(".tile", has_text="Runtime PM")).to_contain_text("not polled, so it can sleep")
    expect(page.locator("[data-testid=headline]")).to_contain_text("Suspended")
    expect(page.locator("article.gpu")).to_contain_text("The process list is off")
    page.wait_for_timeout(1500)                               # a suspended GPU still reports (no stale banner)
    expect(page.locator("[data-testid=stale]")).to_have_count(0)
    watch.assert_clean()


def test_fixture_no_gpu(start_server, open_page):
    server = start_server([], fixture_env("hd7870_radeon", APP_PROC_ENABLE="false"))
    page, watch = open_page(server, wait_live=False)
    expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
    expect(page.locator("main")).to_contain_text("No GPU found")
    expect(page.locator("main")).not_to_contain_text("No AMD GPU")
    expect(page.locator("article.gpu")).to_have_count(0)
    watch.assert_clean()


# ---- other vendors: the demo's NVIDIA GPU, contract frames, no GPU ----------------------

MIB, GIB = 1 << 20, 1 << 30
NA = "\u2014"


def test_demo_three_gpus_with_vendor_badges(start_server, open_page):
    server = start_server()
    page, watch = open_page(server, "#gpu=all")
    rows = page.locator("[data-testid=ov-row]")
    expect(rows).to_have_count(3)
    badges = {"card0": "AMD", "card1": "AMD", "nvidia0": "NVIDIA"}
    for gpu, badge in badges.items():
        row = page.locator("[data-testid=ov-row][data-gpu=%s]" % gpu)
        expect(row.locator("[data-testid=vendor]")).to_have_text(badge)
    # Names as given: the server's name, no vendor prefix added by the page.
    nvidia = page.locator("[data-testid=ov-row][data-gpu=nvidia0] [data-testid=gpu-name]")
    expect(nvidia).to_have_text("NVIDIA GeForce RTX 4090 (demo)")
    page.goto(server.url + "#gpu=nvidia0")
    expect(page.locator("article.gpu[data-gpu=nvidia0] h2")).to_contain_text("NVIDIA GeForce RTX 4090 (demo)")
    expect(page.locator("article.gpu[data-gpu=nvidia0] h2")).not_to_contain_text("AMD")
    options = [text(o) for o in page.get_by_label("GPU", exact=True).locator("option").all()]
    # The vendor in brackets only where the name does not say it (short enough for a phone).
    assert options[:3] == ["card0: AMD Radeon RX 7800 XT (demo)", "card1: AMD Radeon 780M (demo)",
                           "nvidia0: NVIDIA GeForce RTX 4090 (demo)"], options
    assert "AMD" not in page.title() and "amdgpu_top_web" in page.title()
    watch.assert_clean()


def test_demo_nvidia_gpu_values_processes_and_screenshots(start_server, open_page):
    server = start_server()
    page, watch = open_page(server, "#gpu=nvidia0")
    article = page.locator("article.gpu")
    expect(article).to_have_attribute("data-gpu", "nvidia0")
    expect(article.locator(".ident")).to_contain_text("nvidia")
    for key, pattern in [("gpu_busy_pct", r"^\d+%$"), ("sclk_mhz", r"^\d+ MHz$"), ("temp_c", r"^\d+\.\d °C$"),
                         ("power_w", r"^\d+(\.\d)? W$"), ("pstate", r"^P\d{1,2}$"), ("enc_dec", r"^\d+% / \d+%$"),
                         ("energy_j", r"^\d+(\.\d+)? k?Wh$"), ("vram_used", r" GiB / 24\.0 GiB \(\d+%\)$"),
                         ("throttle_reasons", r"^(none|GpuIdle|power cap|thermal \(SW\))$"),
                         ("vram_source", r"^used \(excl\. reserved\)$"), ("vram_reserved", r"^507 MiB$")]:
        wait_until(lambda: re.search(pattern, metric(page, key)), 5,
                   message="%s ~ %s (got %r)" % (key, pattern, metric(page, key)))
    expect(article.locator(".tile", has_text="Temperature")).to_contain_text("GPU")     # not AMD's "edge"
    expect(article.locator("[data-testid=mem-gtt]")).to_have_count(0)                   # NVIDIA has no GTT
    assert re.match(r"^\d+%$", metric(page, "fan_pct"))       # no RPM from NVML: the duty is the value
    expect(article.locator(".tile", has_text="Fan")).to_contain_text("no RPM reading")

    wait_procs(page, 8)
    for engine in ("sm", "mem", "enc", "dec"):
        expect(page.locator("button[data-col='eng:%s']" % engine)).to_have_count(1)
    expect(page.locator("button[data-col='eng:gfx']")).to_have_count(0)
    assert set(column_texts(page, header_index(page, "gtt"))) == {NA}                   # no GTT per process
    sm = column_texts(page, header_index(page, "eng:sm"))
    assert all(re.match(r"^\d+\.\d%$", v) for v in sm), sm
    expect(article.locator("[data-testid=headline]")).to_contain_text(re.compile(r"is making this\s+GPU busy: (SM|enc|dec) \d"))
    expect(article.locator("tbody .badge.ptype", has_text=re.compile(r"^C$")).first).to_be_visible()
    expect(article.locator("tbody .badge.ptype", has_text=re.compile(r"^G$")).first).to_be_visible()
    unseen = article.locator("tbody tr.unseen")
    expect(unseen.first).to_be_visible()
    expect(unseen.first.locator(".badge.unseen")).to_have_attribute("title", re.compile("PID namespace"))
    expect(unseen.first.locator(".nm")).to_have_attribute("title", re.compile("PID namespace"))
    expect(article.locator("p.note", has_text="unseen:")).to_have_count(1)
    expect(article).not_to_contain_text("kfd:")                                          # fdinfo notes only
    time.sleep(3.0)                                           # a little history for the sparklines
    screenshot(page, "nvidia-desktop.png")
    # Sorting by the all-null GTT column keeps a stable order (ties by PID).
    page.locator("button[data-col=gtt]").click()
    assert row_pids(page) == sorted(row_pids(page))
    watch.assert_clean()

    phone, phone_watch = open_page(server, "#gpu=nvidia0", viewport=(390, 844))
    wait_procs(phone, 8)
    time.sleep(0.5)
    screenshot(phone, "nvidia-phone.png")
    overflow = phone.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the page scrolls sideways on a phone (%d px)" % overflow
    phone_watch.assert_clean()


def test_no_gpu_at_all_says_so_without_stale_banner(start_server, open_page, tmp_path):
    server = start_server([], {"APP_SYSFS_ROOT": str(tmp_path), "APP_NVML_LIBRARY": "/nonexistent",
                               "APP_PROC_ENABLE": "false"})
    page, watch = open_page(server, wait_live=False)
    expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
    expect(page.locator("[data-testid=no-gpu]")).to_contain_text("No GPU found")
    expect(page.locator("main")).not_to_contain_text("AMD GPU")
    page.wait_for_timeout(1500)                               # three sampling intervals and more
    expect(page.locator("[data-testid=stale]")).to_have_count(0)
    expect(page.locator("article.gpu")).to_have_count(0)
    watch.assert_clean()


# Contract frames, sent by a mocked WebSocket (the page is served by a demo server, but
# its /ws is answered here): an Intel xe dGPU whose device VRAM use is unknown, an
# NVIDIA GPU on the NVML v1 memory call, and a lost NVIDIA GPU.

def _metrics(**values):
    keys = ("gpu_busy_pct mem_busy_pct sclk_mhz mclk_mhz temp_c temp_junction_c temp_mem_c fan_rpm fan_pct "
            "power_w power_cap_w power_fast_w power_fast_cap_w vddgfx_mv vddnb_mv vram_used_bytes vram_total_bytes "
            "vis_vram_used_bytes vis_vram_total_bytes gtt_used_bytes gtt_total_bytes pcie_gen pcie_speed_gts "
            "pcie_width runtime_status throttle_reasons pstate enc_pct dec_pct vram_reserved_bytes energy_j "
            "vram_used_source").split()
    out = dict.fromkeys(keys)
    out.update(values)
    return out


def _row(pid, name, **values):
    row = {"pid": pid, "uid": 1000, "user": "alice", "name": name, "cmd": name, "render_node": None, "kfd": False,
           "shared": False, "vram_bytes": None, "gtt_bytes": None, "cpu_bytes": None, "vram_total_bytes": None,
           "gtt_total_bytes": None, "engines_pct": {}, "engines_ns": {}, "gpu_time_ms_per_s": None,
           "container": None, "start_time": None, "clients": 1, "type": None, "visible": True}
    row.update(values)
    return row


def _identity(gpu_id, vendor, name, driver, apu=False):
    out = {"id": gpu_id, "vendor": vendor, "uuid": None, "pci": "0000:0%d:00.0" % len(gpu_id), "pci_id": None,
           "revision": None, "name": name, "render_node": None, "driver": driver, "apu": apu, "demo": False}
    import amdgpu_top_web as atw
    out.update(atw.build_identity_display(vendor, apu))     # the display keys, as the server builds them
    return out


CONTRACT_GPUS = [_identity("card0", "intel", "Intel Arc B580", "xe"),
                 _identity("nvidia0", "nvidia", "Tesla T4", "nvidia"),
                 _identity("nvidia1", "nvidia", "NVIDIA A100-SXM4-40GB", "nvidia")]
CONTRACT_STATS = {
    "card0": _metrics(gpu_busy_pct=61, sclk_mhz=2850, temp_c=58.0, power_w=95.5, power_cap_w=190.0,
                      vram_total_bytes=12 * GIB, throttle_reasons=["pl1"], energy_j=7200.0, runtime_status="active"),
    "nvidia0": _metrics(gpu_busy_pct=40, sclk_mhz=1590, temp_c=51.0, power_w=44.0, vram_used_bytes=3 * GIB,
                        vram_total_bytes=15 * GIB, vram_used_source="nvml_v1", throttle_reasons=["GpuIdle"],
                        pstate=0, enc_pct=40, dec_pct=0, energy_j=9.0e6, runtime_status="active"),
    "nvidia1": _metrics(runtime_status="lost"),
}
NVML_CAPS = {"source": "nvml", "vram_gtt_from_fdinfo": False, "engine_time_from_fdinfo": False,
             "process_memory": True, "process_engines": True,
             "engines": ["dec", "enc", "jpg", "mem", "ofa", "sm"], "kfd_seen": False}
CONTRACT_PROCS = {
    "card0": {"capabilities": {"source": "fdinfo", "vram_gtt_from_fdinfo": True, "engine_time_from_fdinfo": True,
                               "process_memory": True, "process_engines": True,
                               "engines": ["bcs", "ccs", "rcs", "vcs", "vecs"], "kfd_seen": False},
              "processes": [_row(500, "blender", vram_bytes=GIB, gtt_bytes=64 * MIB, cpu_bytes=0,
                                 engines_pct={"rcs": 55.0, "bcs": 1.0, "ccs": 0.0, "vcs": None, "vecs": None}),
                            _row(501, "ffmpeg", vram_bytes=512 * MIB, gtt_bytes=32 * MIB, cpu_bytes=0,
                                 engines_pct={"rcs": 0.0, "bcs": 0.0, "ccs": 0.0, "vcs": 20.0, "vecs": 5.0})],
              "totals": {"vram_bytes": GIB + 512 * MIB, "gtt_bytes": 96 * MIB, "cpu_bytes": 0,
                         "gpu_time_ms_per_s": 810.0, "engines_pct": {}, "clients": 2, "processes": 2},
              "visibility": {"root": True, "pid_namespace_separate": False, "hidepid": None,
                             "self_container": None, "unreadable_pids": 0, "visible_pids": 2}},
    "nvidia0": {"capabilities": NVML_CAPS,
                "processes": [_row(700, "ffmpeg", vram_bytes=300 * MIB, type="C+G",
                                   engines_pct={"sm": 0.0, "mem": 0.0, "enc": 40.0, "dec": 0.0, "jpg": 0.0, "ofa": 0.0}),
                              _row(701, None, uid=None, user=None, cmd=None, visible=False, type="C",
                                   vram_bytes=2 * GIB, engines_pct={"sm": 2.0, "mem": 1.0, "enc": 0.0, "dec": 0.0}),
                              _row(702, "sleeper", vram_bytes=None, type="C", engines_pct={"sm": 0.0})],
                "totals": {"vram_bytes": 2 * GIB + 300 * MIB, "gtt_bytes": None, "cpu_bytes": None,
                           "gpu_time_ms_per_s": 20.0, "engines_pct": {}, "clients": 3, "processes": 3},
                "visibility": {"root": True, "pid_namespace_separate": True, "hidepid": None,
                               "self_container": "abc", "unreadable_pids": 0, "visible_pids": 2}},
    "nvidia1": {"capabilities": NVML_CAPS, "processes": [],
                "totals": {"vram_bytes": None, "gtt_bytes": None, "cpu_bytes": None, "gpu_time_ms_per_s": None,
                           "engines_pct": {}, "clients": 0, "processes": 0}, "visibility": None},
}


class MockSocket(object):
    """Answers the page's /ws with the contract frames above (Playwright's route_web_socket),
    and its history requests with an empty history."""

    def __init__(self, page, gpus=None):
        self.routes = []
        self.gpus = gpus or CONTRACT_GPUS
        page.route_web_socket(re.compile(r"/ws$"), self._connect)
        # The history a GPU view fetches when it comes on screen: none (these GPUs are not the demo's).
        page.route(re.compile(r"/api/gpus/[^/]+/history$"), lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"gpu_id": None, "tier": "live", "step_s": 0.25, "from": None, "to": None,
                             "ts": [], "count": [], "series": {}})))

    def _connect(self, ws):
        ws.on_message(lambda message: None)                   # subscribe: nothing to answer
        self.routes.append(ws)
        ws.send(json.dumps({"type": "hello", "version": "test", "interval_ms": 250, "default_gpu": "card0",
                            "subscribed": "*", "gpus": self.gpus, "history": {},
                            "features": {"procs": True, "history_window_s": 600, "demo": False}}))
        self.frames()

    def frames(self):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        for ws in self.routes:
            for gpu_id, metrics in CONTRACT_STATS.items():
                ws.send(json.dumps({"type": "stats", "gpu_id": gpu_id, "ts": ts, "metrics": metrics}))
                ws.send(json.dumps(dict(CONTRACT_PROCS[gpu_id], type="procs", gpu_id=gpu_id, ts=ts)))


def test_contract_frames_intel_and_nvidia(start_server, browser):
    server = start_server()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(10000)
        watch = Watch(page, server)
        mock = MockSocket(page)
        page.goto(server.url + "#gpu=all")
        expect(page.locator("[data-testid=ov-row]")).to_have_count(3)
        mock.frames()

        # The overview: throttling other than GpuIdle highlighted, the top process, the lost GPU's alert.
        ov = dict((gpu, page.locator("[data-testid=ov-row][data-gpu=%s]" % gpu)) for gpu in CONTRACT_STATS)
        expect(ov["card0"].locator("[data-metric=throttle_reasons]")).to_have_text("pl1")
        expect(ov["card0"].locator("[data-metric=throttle_reasons]")).to_have_class(re.compile(r"\blimit\b"))
        expect(ov["card0"].locator("[data-metric=vram_used]")).to_have_text("%s / 12.0 GiB" % NA)
        expect(ov["card0"].locator("[data-testid=top-name]")).to_have_text("blender")
        expect(ov["card0"].locator("[data-testid=top-detail]")).to_have_text("rcs 55.0%")
        expect(ov["nvidia0"].locator("[data-metric=throttle_reasons]")).to_have_text("none")   # GpuIdle: no limit
        expect(ov["nvidia0"].locator(".limit")).to_have_count(0)
        expect(ov["nvidia0"].locator("[data-testid=top-name]")).to_have_text("ffmpeg")
        expect(ov["nvidia0"].locator("[data-testid=top-detail]")).to_have_text("enc 40.0%")
        expect(ov["nvidia1"].locator("[data-testid=alert]")).to_have_text("lost")
        expect(ov["nvidia1"]).to_have_class("is-lost")
        for gpu in ("card0", "nvidia0"):
            expect(ov[gpu].locator("[data-testid=alert]")).to_have_text("")
        screenshot(page, "contract-intel-nvidia.png")

        def show(gpu):
            page.evaluate("id => { location.hash = 'gpu=' + id; }", gpu)
            expect(page.locator("article.gpu[data-gpu=%s]" % gpu)).to_be_visible()
        show("card0")
        intel = page.locator("article.gpu[data-gpu=card0]")
        nv = page.locator("article.gpu[data-gpu=nvidia0]")
        lost = page.locator("article.gpu[data-gpu=nvidia1]")
        expect(intel.locator("[data-testid=vendor]")).to_have_text("Intel")
        expect(intel.locator("h2")).to_contain_text("Intel Arc B580")

        # Intel: the device VRAM use is unknown; the processes' sum is shown as only that.
        expect(intel.locator("[data-metric=vram_used]")).to_have_text("%s / 12.0 GiB" % NA)
        expect(intel.locator("[data-metric=vram_procs]")).to_have_text("1.50%sGiB" % NBSP)
        expect(intel.locator("[data-testid=vram-procs-only]")).to_contain_text("only their sum is known")
        expect(intel.locator(".bar[aria-label='VRAM held by visible processes']")).to_have_count(1)
        expect(intel.locator(".bar .lb")).to_have_count(2)      # VRAM and GTT: lower bounds, hatched
        expect(intel.locator("[data-metric=throttle_reasons]")).to_have_text("pl1")
        expect(intel.locator(".tile.alert", has_text="Throttling")).to_have_count(1)
        expect(intel.locator("[data-metric=energy_j]")).to_have_text("2.00%sWh" % NBSP)
        expect(intel.locator("[data-metric=pstate]")).to_have_text(NA)
        expect(intel.locator("[data-metric=enc_dec]")).to_have_text("%s / %s" % (NA, NA))
        cols = intel.locator("thead button.sort").evaluate_all("bs => bs.map(b => b.dataset.col)")
        assert [c for c in cols if c.startswith("eng:")] == ["eng:rcs", "eng:ccs", "eng:bcs", "eng:vcs", "eng:vecs"]
        expect(intel.locator("[data-testid=headline]")).to_contain_text("blender")
        expect(intel.locator("[data-testid=headline]")).to_contain_text("rcs 55.0%")

        # NVIDIA on the v1 memory call: used includes reserved, reserved unknown.
        show("nvidia0")
        expect(nv.locator("[data-metric=vram_source]")).to_have_text("used (incl. reserved)")
        expect(nv.locator("[data-metric=vram_reserved]")).to_have_text(NA)
        expect(nv.locator("[data-metric=throttle_reasons]")).to_have_text("GpuIdle")
        expect(nv.locator(".tile.alert")).to_have_count(0)
        expect(nv.locator("[data-metric=pstate]")).to_have_text("P0")
        expect(nv.locator("[data-metric=enc_dec]")).to_have_text("40% / 0%")
        expect(nv.locator("[data-metric=energy_j]")).to_have_text("2.50%skWh" % NBSP)
        expect(nv.locator("[data-testid=mem-gtt]")).to_have_count(0)
        # An encoder-only process is the busy one (NVML: its busiest unit, not SM alone).
        expect(nv.locator("[data-testid=headline]")).to_contain_text("ffmpeg (PID 700, alice) is making this")
        expect(nv.locator("[data-testid=headline]")).to_contain_text("enc 40.0%")
        cols = nv.locator("thead button.sort").evaluate_all("bs => bs.map(b => b.dataset.col)")
        assert [c for c in cols if c.startswith("eng:")] == ["eng:sm", "eng:mem", "eng:dec", "eng:enc",
                                                             "eng:jpg", "eng:ofa"]
        row = nv.locator("tbody tr[data-pid='701']")
        expect(row).to_have_class("unseen")
        expect(row.locator(".nm")).to_have_text("?")
        expect(nv.locator("tbody tr[data-pid='700'] .badge.ptype")).to_have_text("C+G")
        expect(nv.locator("[data-testid=visibility]")).to_contain_text("NVML still lists every process")
        expect(nv.locator("p.note")).to_contain_text("NVML's latest per-process utilisation")

        # null sorts lowest: last when descending, first when ascending.
        def nv_pids():
            return [int(p) for p in nv.locator("tbody tr[data-pid]").evaluate_all("rs => rs.map(r => r.dataset.pid)")]
        nv.locator("button[data-col=vram]").click()
        th_vram = nv.locator("th", has=page.locator("button[data-col=vram]"))
        expect(th_vram).to_have_attribute("aria-sort", "descending")
        assert nv_pids() == [701, 700, 702]
        nv.locator("button[data-col=vram]").click()
        expect(th_vram).to_have_attribute("aria-sort", "ascending")
        assert nv_pids() == [702, 700, 701]

        # A lost GPU says so.
        show("nvidia1")
        expect(lost.locator("[data-testid=headline]")).to_contain_text("Lost")
        expect(lost.locator("[data-metric=runtime_status]")).to_have_text("lost")
        expect(lost.locator(".tile.alert", has_text="State")).to_have_count(1)
        mock.frames()
        watch.assert_clean()
    finally:
        context.close()


# ---- #15: what the page says when it cannot show what was asked; the table's columns;
# nothing cut or overlapping at laptop and phone widths --------------------------------

def test_vendor_words_come_from_the_identity(start_server, browser):
    """The page names no vendor itself: the badge, the clock's, sensor's and power state's
    names, the memory rows and where process rows come from are the identity's."""
    gpus = [dict(g) for g in CONTRACT_GPUS]
    gpus[0].update(vendor_label="Intel Arc", kind="integrated", memory=["gtt"], process_source="fdinfo",
                   labels={"temp_c": "die", "sclk_mhz": "Xe clock", "runtime_status": "PM state", "energy_j": "since boot"})
    gpus[2].update(memory=["vram", "gtt"])
    server = start_server()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(10000)
        mock = MockSocket(page, gpus)
        page.goto(server.url + "#gpu=card0")
        card = page.locator("article.gpu[data-gpu=card0]")
        expect(card).to_be_visible()
        mock.frames()
        expect(card.locator("[data-testid=vendor]")).to_have_text("Intel Arc")
        expect(card.locator(".ident")).to_contain_text("integrated")
        expect(card.locator(".tile", has=page.locator("[data-metric=sclk_mhz]")).locator("dt")).to_have_text("Xe clock")
        expect(card.locator(".tile", has=page.locator("[data-metric=temp_c]")).locator("dd.s")).to_have_text("die")
        expect(card.locator(".tile", has=page.locator("[data-metric=runtime_status]")).locator("dt")).to_have_text("PM state")
        expect(card.locator(".tile", has=page.locator("[data-metric=energy_j]")).locator("dd.s")).to_have_text("since boot")
        # The memory rows shown before any value: the identity's pools (here GTT for an NVIDIA GPU).
        page.evaluate("() => { location.hash = 'gpu=nvidia1'; }")
        expect(page.locator("article.gpu[data-gpu=nvidia1] [data-testid=mem-gtt]")).to_have_count(1)
        page.evaluate("() => { location.hash = 'gpu=all'; }")
        expect(page.locator("[data-testid=ov-row][data-gpu=card0] [data-testid=vendor]")).to_have_text("Intel Arc")
        expect(page.locator("[data-testid=overview] h2")).to_contain_text("1 Intel Arc, 2 NVIDIA")
    finally:
        context.close()


def test_a_hash_that_names_nothing_says_so(start_server, open_page):
    """#gpu=nope and #range=999y used to fall back silently to a default view."""
    server = start_server()
    page, watch = open_page(server, "#gpu=nope")
    notice = page.locator("[data-testid=hash-notice]")
    expect(notice).to_contain_text("No GPU \u201cnope\u201d on this server: showing all GPUs.")
    expect(page.locator("[data-testid=overview]")).to_be_visible()
    page.evaluate("location.hash = 'gpu=card0'")
    expect(notice).to_have_count(0)
    page.evaluate("location.hash = 'gpu=card0&range=999y'")
    expect(notice).to_contain_text("No range \u201c999y\u201d: showing live data.")
    expect(page.locator("article.gpu[data-gpu=card0]")).to_be_visible()
    screenshot(page, "hash-notice.png")
    watch.assert_clean()


def test_without_history_no_range_control_and_no_404s(start_server, open_page):
    """APP_HISTORY_PATH=off (these servers' default): the range buttons are not offered,
    and a range in the hash shows live data with a notice, without asking for a history
    the server does not have (no 404 in the console)."""
    server = start_server()
    page, watch = open_page(server, "#gpu=card0&range=1h")
    expect(page.locator("[data-testid=hash-notice]")).to_contain_text("keeps no history")
    expect(page.locator("[data-testid=ranges]")).to_have_count(0)
    expect(page.locator("[data-testid=conn]")).to_have_text("live")
    expect(page.locator("article.gpu .spark").first).to_be_visible()
    wait_procs(page, 8)
    page.wait_for_timeout(1000)
    assert not any("history" in url or "api/processes" in url for url in watch.requests), watch.requests
    watch.assert_clean()                                          # a 404 would be a console error


ELAPSED = {1000: 3 * 3600 + 12 * 60 + 7, 1037: 45, 1074: None}  # the rest: no elapsed_s at all


def _with_elapsed(text):
    """The server's procs frames, with elapsed_s as the "procs" part of #15 builds it."""
    msg = json.loads(text)
    if msg.get("type") != "procs" or not msg.get("processes"):
        return text
    for row in msg["processes"]:
        if row["pid"] in ELAPSED:
            row["elapsed_s"] = ELAPSED[row["pid"]]
        else:
            row.pop("elapsed_s", None)
    return json.dumps(msg)


def _proxied(browser, server, viewport, rewrite):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.set_default_timeout(10000)

    def route(ws):
        upstream = ws.connect_to_server()
        upstream.on_message(lambda text: ws.send(rewrite(text)))
    page.route_web_socket(re.compile(r"/ws$"), route)
    return context, page, Watch(page, server)


def test_process_table_cpu_rss_elapsed_and_engine_on_a_phone(start_server, browser):
    """The README promises CPU %, RSS and elapsed columns; on a 1366 px laptop the table
    fits without scrolling; on a phone the busiest engine's % stays on screen."""
    server = start_server()
    context, page, watch = _proxied(browser, server, (1366, 768), _with_elapsed)
    try:
        page.goto(server.url + "#gpu=card0")
        wait_procs(page, 8)
        table = page.locator("article.gpu section.procs table")
        table.scroll_into_view_if_needed()
        for col in ("cpu", "rss", "elapsed"):
            expect(table.locator("thead button[data-col=%s]" % col)).to_be_visible()
        elapsed = header_index(page, "elapsed")
        cells = dict(zip(row_pids(page), column_texts(page, elapsed)))
        assert cells[1000] == "3h 12m" and cells[1037] == "45s" and cells[1074] == NA and cells[1111] == NA, cells
        assert all(re.match(r"^\d+(\.\d)?%$", t) for t in column_texts(page, header_index(page, "cpu")))
        assert all(re.match(r"^\d+(\.\d+)? (MiB|GiB)$", t) for t in column_texts(page, header_index(page, "rss")))
        wide = table.evaluate("t => t.getBoundingClientRect().width - t.parentElement.clientWidth")
        assert wide <= 0, "the process table scrolls sideways on a 1366 px laptop (%d px)" % wide
        screenshot(page, "procs-laptop.png")
        watch.assert_clean()

        page.set_viewport_size({"width": 390, "height": 844})
        engine = page.locator("article.gpu thead th", has=page.locator("button[data-col=busiest]"))
        expect(engine).to_be_visible()
        table.scroll_into_view_if_needed()
        right = page.evaluate("document.documentElement.clientWidth")
        assert engine.bounding_box()["x"] + engine.bounding_box()["width"] <= right
        texts = column_texts(page, header_index(page, "busiest"))
        assert len(texts) == 8 and all(re.match(r"^(gfx|compute|dma|dec|enc) \d+\.\d%$", t) for t in texts), texts
        cut = page.locator("article.gpu tbody td.oph").evaluate_all(
            "tds => tds.filter(td => td.scrollWidth > td.clientWidth).map(td => td.textContent)")
        assert cut == [], "engine cells cut on a phone: %r" % cut
        wide = table.evaluate("t => t.getBoundingClientRect().width - t.parentElement.clientWidth")
        assert wide <= 0, "the phone's process table scrolls sideways (%d px)" % wide
        screenshot(page, "procs-phone.png")
        watch.assert_clean()
    finally:
        context.close()


def _throttled(text):
    msg = json.loads(text)
    if msg.get("type") != "stats" or not msg.get("metrics"):
        return text
    msg["metrics"]["throttle_reasons"] = (["SwThermalSlowdown", "SwPowerCap", "HwPowerBrakeSlowdown"]
                                          if msg["gpu_id"].startswith("nvidia") else ["TEMP_HOTSPOT", "PPT0"])
    return json.dumps(msg)


SELECT_FITS = """sel => {
  const cs = getComputedStyle(sel), ctx = document.createElement('canvas').getContext('2d');
  ctx.font = cs.font;
  const text = ctx.measureText(sel.selectedOptions[0].text).width;
  return sel.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight) - text;
}"""


def test_overview_throttle_names_and_the_phone_gpu_selector_are_not_cut(start_server, browser):
    """The overview cut NVML's "SwThermalSlowdown" to "SwThermal…"; a phone cut the GPU
    selector's name of the GPU on screen."""
    server = start_server(["--demo", "--demo-gpus", "8"])
    context, page, watch = _proxied(browser, server, (1366, 768), _throttled)
    try:
        page.goto(server.url)
        rows = overview_rows(page, 8)
        cells = rows.locator("[data-metric=throttle_reasons]")
        expect(cells.first).to_have_text("TEMP_HOTSPOT")
        expect(page.locator("[data-testid=ov-row][data-gpu=nvidia0] [data-metric=throttle_reasons]")).to_have_text(
            "thermal (SW)")
        cut = cells.evaluate_all("cs => cs.filter(c => c.scrollWidth > c.clientWidth).map(c => c.textContent)")
        assert cut == [], "throttle names cut: %r" % cut
        assert "SwThermalSlowdown" in page.locator("[data-testid=ov-row][data-gpu=nvidia0] .c-thr").get_attribute("title")
        screenshot(page, "overview-throttled.png")
        watch.assert_clean()

        page.set_viewport_size({"width": 390, "height": 844})
        page.evaluate("location.hash = 'gpu=card0'")
        select = page.get_by_label("GPU", exact=True)
        expect(select).to_have_value("card0")
        room = select.evaluate(SELECT_FITS)
        assert room >= 0, "the GPU selector cuts %r by %d px" % (select.evaluate("s => s.selectedOptions[0].text"), -room)
        screenshot(page, "selector-phone.png")
        watch.assert_clean()
    finally:
        context.close()


def test_hellos_downsampled_ring_draws_one_unbroken_sparkline(start_server, browser):
    """hello carries each ring at one point per sparkline column (here 2 s
    apart at a 250 ms interval): the page must not take every gap between
    those points for a hole (3 sampling intervals), which would draw 300
    separate dots instead of a line; a real hole inside them still breaks it."""
    server = start_server()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    now_ms = int(time.time() * 1000)
    ts = [now_ms - 2000 * (299 - i) for i in range(300)]
    ts = [t - 60000 if i < 100 else t for i, t in enumerate(ts)]   # one real hole (60 s)
    ring = {"interval_ms": 2000, "ts": ts, "series": {
        "gpu_busy_pct": [40 + i % 7 for i in range(300)], "mem_busy_pct": [0] * 300,
        "power_w": [50] * 300, "temp_c": [40] * 300, "temp_junction_c": [None] * 300,
        "vram_used_bytes": [GIB] * 300}}
    hello = {"type": "hello", "version": "test", "interval_ms": 250, "default_gpu": "nvidia0",
             "subscribed": "*", "gpus": [CONTRACT_GPUS[1]], "history": {"nvidia0": ring},
             "features": {"procs": False, "history_window_s": 900, "demo": False}}

    def connect(ws):
        ws.on_message(lambda message: None)
        ws.send(json.dumps(hello))
        ws.send(json.dumps({"type": "stats", "gpu_id": "nvidia0", "metrics": CONTRACT_STATS["nvidia0"],
                            "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}))
    try:
        page = context.new_page()
        page.set_default_timeout(10000)
        page.route_web_socket(re.compile(r"/ws$"), connect)
        page.goto(server.url + "#gpu=nvidia0")
        path = page.locator("article.gpu[data-gpu=nvidia0] figure.spark path.a").first
        wait_until(lambda: (path.get_attribute("d") or "").count("L") > 50, 10, message="sparkline")
        assert path.get_attribute("d").count("M") == 2, path.get_attribute("d")[:300]
    finally:
        context.close()
