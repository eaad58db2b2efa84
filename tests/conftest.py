"""Shared fixtures for the server tests.

``server(...)`` starts amdgpu_top_web.py as a real subprocess on 127.0.0.1
port 0 (the bound port is read from its ``event=listening`` log line) with
the sysfs/share fixture trees of testdata/, and always stops it afterwards.
``app_factory(...)`` builds and starts an in-process ``App`` (for tests that
count threads and file descriptors), and always stops it.
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import time
from collections import namedtuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO, "amdgpu_top_web.py")
TESTDATA = os.path.join(REPO, "testdata")
SYSFS = os.path.join(TESTDATA, "sys")
SHARE = os.path.join(TESTDATA, "share")
NO_NVML = os.path.join(REPO, "tests", "no-such-libnvidia-ml.so.1")

# Any program a test starts without its own APP_HISTORY_PATH (the default is on)
# keeps its history under this throw-away state dir, never in the real home.
_STATE_HOME = tempfile.mkdtemp(prefix="amdgpu_top_web-test-state-")
os.environ["XDG_STATE_HOME"] = _STATE_HOME
atexit.register(shutil.rmtree, _STATE_HOME, True)

LISTENING_RE = re.compile(r"event=listening url=http://([^/]+):([0-9]+)/")
START_TIMEOUT_S = 15.0

Response = namedtuple("Response", "status headers body")


def response_json(response):
    assert response.headers.get("content-type", "").startswith("application/json"), response
    return json.loads(response.body.decode("utf-8"))


def http_request(port, method, path, headers=None, body=None, timeout=5.0, host="127.0.0.1"):
    """One request on a fresh connection -> Response(status, {lower: value}, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def get_json(port, path, **kwargs):
    response = http_request(port, "GET", path, **kwargs)
    return response.status, response_json(response)


def debian_tool(name, package):
    """The path of a program tests/run.sh installs from a Debian package: a
    skip where it is missing, a failure under CI (where it must be there)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("%s is missing (tests/run.sh installs Debian's %s package)" % (name, package))
        pytest.skip("%s not installed (Debian package %s)" % (name, package))
    return path


def wait_for(predicate, timeout, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; return it, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


class ServerProcess(object):
    """amdgpu_top_web.py running in a subprocess; stderr is drained by a
    thread into ``lines`` (the log), so the pipe never fills."""

    def __init__(self, args, env):
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, PROGRAM] + list(args), cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.host = self.port = None
        self._reader = threading.Thread(target=self._drain, name="test-stderr-reader")
        self._reader.daemon = True
        self._reader.start()

    def _drain(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            match = LISTENING_RE.search(line)
            if match and self.port is None:
                self.host, self.port = match.group(1), int(match.group(2))
                self._listening.set()
        self.proc.stderr.close()

    def wait_listening(self, timeout=START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(1.0)
                raise AssertionError("server did not start (rc=%r); log:\n%s"
                                     % (self.proc.poll(), self.log()))
        return self.port

    def log(self):
        with self._lock:
            return "\n".join(self.lines)

    def wait_log(self, pattern, timeout=5.0):
        """Wait for a log line matching the regex ``pattern``; return the line."""
        regex = re.compile(pattern)

        def find():
            with self._lock:
                return next((line for line in self.lines if regex.search(line)), None)
        return wait_for(find, timeout, message="log line %r" % pattern)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def ws_url(self):
        return "ws://127.0.0.1:%d/ws" % self.port

    def get(self, path, **kwargs):
        return http_request(self.port, "GET", path, **kwargs)

    def get_json(self, path, **kwargs):
        return get_json(self.port, path, **kwargs)

    def wait_metrics(self, count=None, timeout=5.0):
        """Wait until /api/gpus lists ``count`` GPUs (any, if None), all with metrics."""
        def ready():
            status, body = self.get_json("/api/gpus")
            gpus = body["gpus"]
            if status != 200 or (count is not None and len(gpus) != count):
                return None
            if count is None and not gpus:
                return None
            return body if all(g["metrics"] for g in gpus) else None
        return wait_for(ready, timeout, message="metrics on /api/gpus")

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self):
        """SIGTERM, then SIGKILL if it lingers; always reaps and joins the reader."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self._reader.join(5.0)


def server_env(fixture="multi_gpu", sysfs_root=None, env=None):
    """Environment for the subprocess: the parent's minus any APP_* (so a
    developer's settings cannot leak in), plus the fixture roots."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    out.update({
        "APP_SYSFS_ROOT": sysfs_root or os.path.join(SYSFS, fixture),
        "APP_SHARE_ROOT": SHARE,
        "APP_PROC_ENABLE": "false",
        # never the host's NVIDIA driver: tests that want NVML name the stand-in
        "APP_NVML_LIBRARY": NO_NVML,
        "APP_LOG_LEVEL": "INFO",
        # never the real home dir: tests that want history set a tmp path
        "APP_HISTORY_PATH": "off",
        "PYTHONUNBUFFERED": "1",
    })
    out.update(env or {})
    return out


def tree_listing(root):
    """{relative path: ("link", target) or ("file", bytes)} of a fixture tree."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    found[rel] = ("file", fh.read())
    return found


def fixture_env(sysfs, proc=None, **extra):
    """APP_* roots for a sysfs fixture (and optionally a /proc fixture), plus extras."""
    env = {"APP_SYSFS_ROOT": os.path.join(SYSFS, sysfs), "APP_SHARE_ROOT": SHARE}
    if proc:
        env["APP_PROC_ROOT"] = os.path.join(TESTDATA, "proc", proc)
    env.update(extra)
    return env


class ServerPool(object):
    """Starts servers and stops every one of them at teardown."""

    def __init__(self):
        self.servers = []

    def start(self, fixture="multi_gpu", env=None, args=(), sysfs_root=None, wait=True):
        """Start one server; ``args`` are extra command-line flags (e.g. --demo)."""
        proc = ServerProcess(["--listen", "127.0.0.1:0"] + list(args),
                             server_env(fixture, sysfs_root, env))
        self.servers.append(proc)
        if wait:
            proc.wait_listening()
        return proc

    def stop_all(self):
        for proc in self.servers:
            proc.stop()
        self.servers = []


@pytest.fixture
def server():
    """Factory: ``server(fixture="multi_gpu", env={...}, args=[...])`` -> ServerProcess."""
    pool = ServerPool()
    try:
        yield pool.start
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def server_module():
    """Like ``server`` but shared by the tests of one module."""
    pool = ServerPool()
    try:
        yield pool.start
    finally:
        pool.stop_all()


@pytest.fixture
def app_factory():
    """Factory: ``app_factory(argv, environ=None, start=True)`` -> (App, port).

    Builds Config with the real parse_config; every App made here is stopped
    at teardown (stop() on an App already stopped by the test is harmless)."""
    import amdgpu_top_web

    apps = []

    def make(argv, environ=None, start=True):
        environ = dict(environ or {})
        environ.setdefault("APP_HISTORY_PATH", "off")    # never the real home dir
        config = amdgpu_top_web.parse_config(list(argv), environ)
        app = amdgpu_top_web.App(config)
        apps.append([app, start])
        port = app.start()[1] if start else None
        return app, port

    try:
        yield make
    finally:
        for app, started in apps:
            if started:
                app.stop()


# ---- the page's browser tests (test_page.py, test_page_history.py) -------------------
# One Playwright and one Chromium per pytest session, shared by every browser module:
# a second sync_playwright() in the same process would fail ("Sync API inside the
# asyncio loop"), so no module may start its own.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def vendor_dir():
    path = os.environ.get("APP_VENDOR_DIR")
    if not path:
        pytest.skip("APP_VENDOR_DIR is not set: the page's npm packages are needed "
                    "(tests/run.sh installs tests/package.json into .cache/vendor)")
    if not os.path.isfile(os.path.join(path, "preact", "package.json")):
        pytest.skip("APP_VENDOR_DIR=%s holds no npm install of tests/package.json" % path)
    return path


@pytest.fixture(scope="session")
def browser():
    playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip("%s is missing (Debian package chromium; tests/run.sh installs it)" % CHROMIUM)
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
