"""The page's pinned CDN modules, the air-gapped /vendor/ route and the no-JS /plain view.

No browser: index.html is read as text, the real server runs as a subprocess
on a loopback port, and /plain is rendered by w3m (a real text browser).
APP_VENDOR_DIR is an npm install of tests/package.json (tests/run.sh makes it
in .cache/vendor/node_modules); tests that need it skip without it.
"""
import base64
import hashlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import amdgpu_top_web as atw
from conftest import fixture_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "amdgpu_top_web.py")
PAGE = os.path.join(ROOT, "index.html")
TESTDATA = os.path.join(ROOT, "testdata")
LISTEN_RE = re.compile(r"event=listening url=http://127\.0\.0\.1:(\d+)/")
CDN_RE = re.compile(r"^https://cdn\.jsdelivr\.net/npm/((?:@[a-z0-9._-]+/)?[a-z0-9._-]+)@([0-9][^/]*)/(.+)$")
CDN_ANY_RE = re.compile(r"https://cdn\.jsdelivr\.net/npm/[^\"'\s]+")
IMPORTMAP_RE = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)
MODULE_RE = re.compile(r'<script type="module">(.*?)</script>', re.DOTALL)
SCRIPT_RE = re.compile(r"<script\b[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
LINK_RE = re.compile(r"<link\b[^>]*>", re.DOTALL)
ATTR_RE = re.compile(r'([a-z-]+)="([^"]*)"')
# Static and dynamic ES-module imports/re-exports of a bare or relative specifier.
IMPORT_RE = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']""")
HOSTILE = "<img src=x onerror=alert(1)>"
REQUIRED_SPECIFIERS = ("preact", "preact/hooks", "htm", "zustand/vanilla")


# ---- helpers -----------------------------------------------------------------------

def read_page():
    with open(PAGE, encoding="utf-8") as handle:
        return handle.read()


def pinned_versions():
    with open(os.path.join(ROOT, "tests", "package.json"), encoding="utf-8") as handle:
        return json.load(handle)["dependencies"]


def import_map(page):
    blocks = IMPORTMAP_RE.findall(page)
    assert len(blocks) == 1, "exactly one import map"
    return json.loads(blocks[0])


def stylesheet_links(page):
    links = [dict(ATTR_RE.findall(tag)) for tag in LINK_RE.findall(page)]
    return [link for link in links if link.get("rel") == "stylesheet"]


def sri(data):
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def csp_hashes(page):
    return sorted("'sha256-%s'" % base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
                  for body in SCRIPT_RE.findall(page) if body.strip())


@pytest.fixture(scope="session")
def vendor_dir():
    path = os.environ.get("APP_VENDOR_DIR")
    if not path:
        pytest.skip("APP_VENDOR_DIR is not set: the page's npm packages are needed "
                    "(tests/run.sh installs tests/package.json into .cache/vendor)")
    if not os.path.isfile(os.path.join(path, "preact", "package.json")):
        pytest.skip("APP_VENDOR_DIR=%s holds no npm install of tests/package.json" % path)
    return path


class Server(object):
    """The real server as a subprocess (stderr drained by a thread)."""

    def __init__(self, args, env, script=SCRIPT, cwd=ROOT):
        full_env = dict((k, v) for k, v in os.environ.items() if not k.startswith("APP_"))
        full_env["APP_HISTORY_PATH"] = "off"
        full_env.update(env)
        self.proc = subprocess.Popen([sys.executable, script, "--listen", "127.0.0.1:0"] + list(args),
                                     cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     universal_newlines=True)
        self.lines, self.log = queue.Queue(), []
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
                match = LISTEN_RE.search(self.lines.get(timeout=0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if match:
                return int(match.group(1))
        self.stop()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.port

    def get(self, path, headers=None):
        """Raw GET: the path goes on the request line exactly as given (no normalising)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, dict((k.lower(), v) for k, v in response.getheaders()), response.read()
        finally:
            conn.close()

    def wait_procs(self, gpu_id, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _, body = self.get("/api/gpus/%s/procs" % gpu_id)
            if status == 200 and json.loads(body.decode()).get("processes"):
                return json.loads(body.decode())
            time.sleep(0.2)
        raise AssertionError("no process list for %s within %.0fs" % (gpu_id, timeout))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stderr.close()


@pytest.fixture
def start_server():
    started = []

    def start(args=("--demo",), env=None, **kwargs):
        server = Server(args, env or {}, **kwargs)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


def plain_row(dump, name):
    """A table row of w3m's dump whose cells are a PID, a user and exactly `name`."""
    cell = r"[\s\u2502|]+"
    return re.search(r"^[\s\u2502|]*\d+%s[^\u2502|\n]+%s%s(?:[\s\u2502|]|$)" % (cell, cell, re.escape(name)),
                     dump, re.MULTILINE)


def w3m_dump(url):
    if shutil.which("w3m") is None:
        pytest.skip("w3m is not installed (Debian package w3m; tests/run.sh installs it)")
    env = dict((k, v) for k, v in os.environ.items() if "proxy" not in k.lower())
    env["HOME"] = os.environ.get("TMPDIR", "/tmp")            # no user ~/.w3m settings
    result = subprocess.run(["w3m", "-dump", "-cols", "400", "-T", "text/html", url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                            universal_newlines=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---- the page's pinned modules (index.html as text + the npm install) -------------------

def test_page_pins_exact_versions_on_the_cdn_only():
    page = read_page()
    pins = pinned_versions()
    imports = import_map(page)["imports"]
    for specifier in REQUIRED_SPECIFIERS:
        assert specifier in imports, "import map lacks %r" % specifier
    urls = list(imports.values()) + [link["href"] for link in stylesheet_links(page)]
    for url in urls:
        match = CDN_RE.match(url)
        assert match, "not a pinned jsDelivr npm URL: %s" % url
        package, version, _ = match.groups()
        assert pins.get(package) == version, "%s@%s but tests/package.json pins %s" % (package, version, pins.get(package))
    assert set(CDN_ANY_RE.findall(page)) <= set(urls) | set(import_map(page).get("integrity", {})), \
        "a CDN URL outside the import map and the stylesheet link"
    assert "standalone" not in page, "htm/preact/standalone bundles a second Preact"
    assert len(MODULE_RE.findall(page)) == 1, "exactly one module script"
    assert len(stylesheet_links(page)) == 1, "exactly one (Pico) stylesheet"
    assert "@picocss/pico" in stylesheet_links(page)[0]["href"]
    assert not re.search(r"\son[a-z]+=", page), "inline event handlers break the CSP"
    assert "innerHTML" not in page and "dangerouslySetInnerHTML" not in page


def page_script():
    return MODULE_RE.findall(read_page())[0]


def test_page_never_branches_on_a_vendor():
    """What a vendor's sensors, clock and memory are called comes with its identity
    (build_identity_display): the page names no vendor and compares none."""
    script = page_script()
    assert not re.search(r"vendor\s*[!=]==?", script), "the page compares a vendor"
    for name in ("amd", "nvidia", "intel"):
        assert '"%s"' % name not in script, "the page names the vendor %r" % name


def test_page_state_lives_in_the_store():
    """No module-level mutable variable, no component state: the Zustand store only."""
    script = page_script()
    assert not re.findall(r"(?m)^(?:let|var)\s", script), "a module-level let/var"
    assert "useState" not in script
    components = script[script.index("// ---- leaf components"):script.index("// ---- render")]
    assert "store.setState" not in components, "a component sets the store: use an action"


def test_identity_tells_the_page_what_a_vendor_is_called():
    gpus = dict((info.id, atw.identity_json(info)) for info in atw.demo_gpu_infos(3))
    amd, apu, nv = gpus["card0"], gpus["card1"], gpus["nvidia0"]
    assert (amd["vendor_label"], amd["kind"], amd["memory"], amd["process_source"]) == ("AMD", "discrete", ["vram", "gtt"], "fdinfo")
    assert amd["labels"] == {"temp_c": "edge", "sclk_mhz": "Shader clock", "runtime_status": "Runtime PM",
                             "energy_j": "cumulative counter"}
    assert (apu["kind"], apu["memory"]) == ("APU", ["vram", "gtt"])
    assert (nv["vendor_label"], nv["kind"], nv["memory"], nv["process_source"]) == ("NVIDIA", "discrete", ["vram"], "nvml")
    assert (nv["labels"]["sclk_mhz"], nv["labels"]["temp_c"], nv["labels"]["runtime_status"]) == ("Graphics clock", "GPU", "State")
    igpu = atw.build_identity_display("intel", True)                 # an Intel iGPU: no VRAM of its own
    assert (igpu["vendor_label"], igpu["kind"], igpu["memory"], igpu["labels"]["temp_c"]) == ("Intel", "integrated", [], "package")
    other = atw.build_identity_display("acme", False)                # an unknown vendor: its name, AMD's words
    assert (other["vendor_label"], other["memory"], other["labels"]["sclk_mhz"]) == ("acme", ["vram"], "Shader clock")


def test_cdn_urls_exist_in_the_npm_install_and_integrity_matches(vendor_dir):
    page = read_page()
    imap = import_map(page)
    integrity = imap.get("integrity", {})
    for specifier, url in imap["imports"].items():
        package, version, path = CDN_RE.match(url).groups()
        local = os.path.join(vendor_dir, package, path)
        assert os.path.isfile(local), "%s -> %s is not in the npm package" % (specifier, local)
        with open(os.path.join(vendor_dir, package, "package.json"), encoding="utf-8") as handle:
            assert json.load(handle)["version"] == version
        with open(local, "rb") as handle:
            assert integrity.get(url) == sri(handle.read()), "integrity of %s" % url
    assert set(integrity) == set(imap["imports"].values()), "every module (and nothing else) has an integrity"
    (link,) = stylesheet_links(page)
    package, version, path = CDN_RE.match(link["href"]).groups()
    with open(os.path.join(vendor_dir, package, path), "rb") as handle:
        assert link.get("integrity") == sri(handle.read())
    assert link.get("crossorigin") == "anonymous"


def test_every_bare_specifier_is_mapped(vendor_dir):
    """htm/preact imports "preact" and "htm", preact/hooks imports "preact": whatever
    the page and each mapped module import must resolve through the import map."""
    page = read_page()
    imports = import_map(page)["imports"]
    sources = {"<inline module>": MODULE_RE.findall(page)[0]}
    for url in imports.values():
        package, _, path = CDN_RE.match(url).groups()
        with open(os.path.join(vendor_dir, package, path), encoding="utf-8") as handle:
            sources[url] = handle.read()
    for where, source in sources.items():
        for specifier in IMPORT_RE.findall(source):
            assert not specifier.startswith((".", "/", "http")), \
                "%s imports %r, which the vendor route does not serve" % (where, specifier)
            assert specifier in imports, "%s imports %r, missing from the import map" % (where, specifier)
    assert set(IMPORT_RE.findall(sources["<inline module>"])) == set(REQUIRED_SPECIFIERS)


# ---- /vendor/ (air-gapped mode) and CDN mode ---------------------------------------------

def test_vendor_mode_serves_the_referenced_files(start_server, vendor_dir):
    server = start_server(env={"APP_VENDOR_DIR": vendor_dir})
    status, headers, body = server.get("/")
    assert status == 200
    served = body.decode("utf-8")
    assert "https://cdn.jsdelivr.net" not in served
    imap = import_map(served)
    urls = list(imap["imports"].values()) + [link["href"] for link in stylesheet_links(served)]
    # relative to the page ("./", a valid import map address), so the page works under a
    # hub's /hosts/{name}/ as well as at /
    assert all(url.startswith("./vendor/") for url in urls), urls
    assert set(imap["integrity"]) == set(imap["imports"].values()), "integrity keys follow the rewrite"
    for url in urls:
        status, headers, data = server.get(url[1:])
        assert status == 200, url
        expected_type = "text/css" if url.endswith(".css") else "text/javascript"
        assert headers["content-type"].split(";")[0] == expected_type, (url, headers["content-type"])
        assert "cache-control" in headers
        assert headers.get("x-content-type-options") == "nosniff"
        with open(os.path.join(vendor_dir, url[len("./vendor/"):]), "rb") as handle:
            assert data == handle.read(), url
        integrity = imap["integrity"].get(url) or stylesheet_links(served)[0]["integrity"]
        assert integrity == sri(data), "SRI of %s no longer matches the served bytes" % url
    csp = headers_of(server, "/")["content-security-policy"]
    assert "cdn.jsdelivr.net" not in csp
    assert sorted(re.findall(r"'sha256-[^']+'", csp)) == csp_hashes(served)


def headers_of(server, path):
    return server.get(path)[1]


@pytest.mark.parametrize("path", [
    "/vendor/../amdgpu_top_web.py",
    "/vendor/preact/../../amdgpu_top_web.py",
    "/vendor/preact/../../x",
    "/vendor/%2e%2e/amdgpu_top_web.py",
    "/vendor/preact/%2e%2e/%2e%2e/amdgpu_top_web.py",
    "/vendor/preact/%2E%2E/package.json",
    "/vendor/preact/dist/..%2f..%2fpackage.json",
    "/vendor/preact/package.json",                   # exists, not referenced by the page
    "/vendor/preact/dist/preact.js",                 # exists, not referenced by the page
    "/vendor/preact/dist/preact.module.js.map",
    "/vendor/preact/dist/preact.module.js/",
    "/vendor/preact/dist/./preact.module.js",
    "/vendor//preact/dist/preact.module.js",
    "/vendor/%70react/dist/preact.module.js",
    "/vendor/preact/dist/preact.module.js%00",
    "/vendor/",
    "/vendor",
])
def test_vendor_refuses_traversal_and_unreferenced_files(start_server, vendor_dir, path):
    server = start_server(env={"APP_VENDOR_DIR": vendor_dir})
    status, headers, body = server.get(path)
    assert status in (400, 404), "%s answered %d" % (path, status)
    assert b"__version__" not in body and b"\"version\"" not in body and b"preact" not in body.lower()


def test_cdn_mode_has_no_vendor_route_and_keeps_cdn_urls(start_server):
    server = start_server()                          # no APP_VENDOR_DIR
    status, headers, body = server.get("/")
    assert status == 200
    with open(PAGE, "rb") as handle:
        assert body == handle.read(), "CDN mode serves index.html unchanged"
    csp = headers["content-security-policy"]
    script_src = csp.split("script-src", 1)[1].split(";", 1)[0]
    style_src = csp.split("style-src", 1)[1].split(";", 1)[0]
    assert "https://cdn.jsdelivr.net" in script_src and "https://cdn.jsdelivr.net" in style_src
    assert "'unsafe-inline'" not in script_src
    assert sorted(re.findall(r"'sha256-[^']+'", csp)) == csp_hashes(body.decode("utf-8"))
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for url in list(import_map(body.decode())["imports"].values()):
        local = "/vendor/" + "/".join(CDN_RE.match(url).group(1, 3))
        assert server.get(local)[0] == 404, local


# ---- /plain (no JavaScript) ---------------------------------------------------------------

def test_plain_demo_in_w3m(start_server):
    server = start_server(["--demo", "--demo-scenario", "hostile"])
    server.wait_procs("card0")
    server.wait_procs("card1")
    status, headers, body = server.get("/plain")
    assert status == 200 and headers["content-type"].startswith("text/html")
    html_text = body.decode("utf-8")
    assert re.search(r"<meta http-equiv=\"?refresh\"?", html_text)
    assert "<script" not in html_text.lower()
    dump = w3m_dump(server.url + "plain")
    for name in ("AMD Radeon RX 7800 XT (demo)", "AMD Radeon 780M (demo)"):
        assert name in dump
    for row in ("blender", "llama-server", "python3", "firefox"):
        assert plain_row(dump, row), row
    assert HOSTILE in dump                            # shown as text ...


def test_plain_escapes_a_hostile_process_name(start_server):
    server = start_server(["--demo", "--demo-scenario", "hostile"])
    server.wait_procs("card0")
    html_text = server.get("/plain")[2].decode("utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in html_text
    assert "<img" not in html_text.lower()            # ... never as markup
    assert "<script>alert" not in html_text


def test_plain_fixture_tree_in_w3m(start_server):
    server = start_server([], fixture_env("multi_gpu", "multi", APP_PROC_SCAN_INTERVAL="500ms"))
    server.wait_procs("card1")
    dump = w3m_dump(server.url + "plain")
    assert "AMD Radeon RX 6900 XT" in dump and "AMD Phoenix1" in dump
    assert "Intel GPU 8086:3e92" in dump and "HD 7870" not in dump   # i915 yes, radeon no
    for row in ("gnome-shell", "blender", "llama-server"):
        assert plain_row(dump, row), row


def test_missing_index_html_serves_plain_with_a_hint(start_server, tmp_path):
    script = tmp_path / "amdgpu_top_web.py"
    shutil.copy(SCRIPT, str(script))
    server = start_server(script=str(script), cwd=str(tmp_path))
    status, headers, body = server.get("/")
    assert status == 200
    dump = w3m_dump(server.url)
    assert "index.html" in dump                        # the one-line hint
    assert "AMD Radeon RX 7800 XT (demo)" in dump
    assert "Full dashboard" not in dump and "href=/>" not in body.decode()   # it would loop to /


def test_plain_values_are_rounded_and_rows_flagged():
    """Values rounded like the page; kfd/shared/container/NVML flags; what cannot be seen."""
    identity = {"id": "card0", "vendor": "amd", "name": "GPU", "pci": "0000:03:00.0", "demo": False}
    metrics = atw.new_metrics({"power_w": 24.499, "gpu_busy_pct": 0.0, "temp_c": 56.0,
                               "sclk_mhz": 2100, "throttle_reasons": [], "energy_j": 7.2e6})
    rows = [atw.build_proc_row(pid=7, name="python3", kfd=True, container="5dace3de0735",
                               vram_bytes=1 << 30, gtt_bytes=0, cpu_bytes=0),
            atw.build_proc_row(pid=8, name="x", shared=True, vram_bytes=0, gtt_bytes=0),
            atw.build_proc_row(pid=9, name=None, visible=False, type="C")]
    procs = {"processes": rows, "visibility": atw.build_visibility(
        False, True, "invisible", None, unreadable_pids=3)}
    text = atw.render_plain([(identity, metrics)], {"card0": procs}, 2.0)
    assert "24.5\u00a0W" in text and "24.499" not in text
    assert "<td>0%</td>" in text and "0.0%" not in text
    assert "56\u00a0°C" in text and "2100\u00a0MHz" in text and "<td>none</td>" in text
    assert "2.00\u00a0kWh" in text
    assert "ROCm (kfd), container 5dace3de0735" in text
    assert "<td>shared</td>" in text and "C, not in this PID namespace" in text
    assert ("Not everything is visible: only this container&#x27;s processes are visible "
            "(run with --pid=host); other users&#x27; processes are hidden (not running as root); "
            "/proc is mounted with hidepid=invisible; 3 processes could not be read.") in text
    assert "Full dashboard" in text
    assert "Full dashboard" not in atw.render_plain([], {}, 2.0, page=False)


def test_plain_speaks_the_page_units_and_never_splits_a_number_from_its_unit():
    """/plain said "PCIe generation 4.0" and "0.002 kWh", let a narrow screen wrap
    "GiB" away from its number, and had no VRAM forecast: now "Gen 4", Wh below
    1 kWh (as the page), a no-break space before every unit, the forecast's row."""
    identity = {"id": "card0", "vendor": "amd", "name": "GPU", "pci": "0000:03:00.0", "demo": False}
    metrics = atw.new_metrics({"pcie_gen": 4, "pcie_width": 16, "energy_j": 7200.0, "temp_c": 56.0,
                               "vram_used_bytes": 3 << 30, "vram_total_bytes": 16 << 30,
                               "vram_forecast": atw.new_vram_forecast(
                                   "trend", [18 << 20, 22 << 20], [240, 300], driver_pid=1037)})
    procs = {"processes": [atw.build_proc_row(pid=1037, name="python3", vram_bytes=1 << 30, gtt_bytes=0,
                                              rss_bytes=300 << 20)], "visibility": None}
    text = atw.render_plain([(identity, metrics)], {"card0": procs}, 2.0)
    assert "<th>PCIe generation</th><td>Gen\u00a04</td>" in text and "4.0" not in text
    assert "<td>16\u00a0lanes</td>" in text
    assert "<th>Energy</th><td>2.00\u00a0Wh</td>" in text
    assert "<th>VRAM used</th><td>3.00\u00a0GiB</td>" in text
    assert "<th>VRAM forecast</th><td>growing 18\u201322\u00a0MiB/s, full in 4\u00a0min\u20135\u00a0min, " \
        "mostly python3 (1037)</td>" in text
    assert "<td>1.00\u00a0GiB</td>" in text and "<td>300.00\u00a0MiB</td>" in text      # the process row
    for number_unit in re.findall(r"\d[ \u00a0](?:GiB|MiB|°C|W|MHz|RPM|Wh|kWh|lanes)\b", text):
        assert " " not in number_unit, number_unit
    calm = atw.render_plain([(identity, atw.new_metrics({"vram_forecast": None}))], {}, 2.0)
    assert "<th>VRAM forecast</th><td>\u2014</td>" in calm


def test_plain_demo_units_in_w3m(start_server):
    """In a text browser: "Gen 4", Wh or kWh, and each number on the line of its unit."""
    server = start_server(["--demo", "--demo-gpus", "3"])
    server.wait_procs("card0")
    dump = w3m_dump(server.url + "plain").replace("\u00a0", " ")
    assert re.search(r"PCIe generation\s*[\u2502|]?\s*Gen 4", dump), dump[:3000]
    assert re.search(r"Energy\s*[\u2502|]?\s*\d+(\.\d+)? k?Wh", dump), dump[:3000]
    assert "VRAM forecast" in dump
    assert "generation" in dump and not re.search(r"PCIe generation\s*[\u2502|]?\s*4\.0", dump)
