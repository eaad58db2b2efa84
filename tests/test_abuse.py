"""Abuse and fault tests against the real program (a subprocess on loopback).

* HTTP abuse: oversized request lines and headers (414/431), malformed
  requests (400), bodies on GET, odd Host headers, slowloris and idle
  connections; nothing may crash the server or fill its log with tracebacks.
* Security of a read-only monitor: cross-origin WebSockets and DNS-rebinding
  Host headers refused, every method other than GET/HEAD on every path 405,
  no path traversal anywhere (/vendor/ included), hostile process names and
  command lines neutralised wherever they are shown.
* Filesystem faults while running: sysfs files that vanish, turn into
  directories, go empty, hold garbage or 1 MiB, and a card removed and
  re-added; the server keeps serving, the affected values become null, the
  log stays quiet.

Every wait is bounded; every socket is closed in a finally.
"""

import json
import os
import re
import shutil
import socket
import threading
import time

import pytest

import amdgpu_top_web as atw
from conftest import SYSFS, TESTDATA, response_json, wait_for
from wsclient import (
    ConnectionClosedByPeer,
    HandshakeRefused,
    RawWebSocket,
    build_request,
    handshake_headers,
    read_http_response,
)

REPO = os.path.dirname(TESTDATA)
FAST = {"APP_SAMPLE_INTERVAL": "100ms"}
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_CMD = "<script>alert(1)</script>"
CONTROL_RE = re.compile(u"[\x00-\x1f\x7f-\x9f]")


# --- raw HTTP helpers --------------------------------------------------------------

def exchange(port, data, timeout=5.0):
    """Send raw bytes on a fresh connection and read one response.

    Returns (status, headers, body); status is None when the server ended the
    connection without an answer ("eof" / "reset" in body) or sent nothing in
    ``timeout`` ("timeout")."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(data)
        try:
            status, headers, body, _ = read_http_response(
                sock, deadline=time.monotonic() + timeout)
        except ConnectionClosedByPeer:
            return None, {}, b"eof"
        except ConnectionResetError:
            return None, {}, b"reset"
        except socket.timeout:
            return None, {}, b"timeout"
        return status, headers, body
    finally:
        sock.close()


def read_all(sock, timeout):
    """Everything until EOF (or reset / timeout) on a blocking socket."""
    sock.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk
    except (socket.timeout, ConnectionResetError):
        return out


def log_mark(proc):
    """Where the server's log stands now (for checks on what a test added)."""
    return len(proc.log().splitlines())


def log_since(proc, mark):
    return "\n".join(proc.log().splitlines()[mark:])


def assert_healthy(proc, mark=None):
    """Still running, still answering, and no traceback logged since ``mark``
    (default: since the test started, for the shared servers)."""
    if mark is None:
        mark = getattr(proc, "test_mark", 0)
    assert proc.proc.poll() is None, "the server exited:\n" + proc.log()[-3000:]
    assert proc.get_json("/api/healthz")[0] == 200
    assert "Traceback" not in log_since(proc, mark), log_since(proc, mark)[-3000:]


@pytest.fixture(scope="module")
def demo_server(server_module):
    """A --demo server (with its synthetic processes, one named like HTML) at 100 ms, shared by this module."""
    proc = server_module(args=["--demo", "--demo-scenario", "hostile"], env=dict(FAST, APP_PROC_ENABLE="true"))
    proc.wait_metrics(count=3)
    wait_for(lambda: proc.get_json("/api/gpus/card0/procs")[1].get("processes"), 5.0,
             message="demo processes")
    return proc


@pytest.fixture
def demo(demo_server):
    """The shared demo server, its log position noted for this test."""
    demo_server.test_mark = log_mark(demo_server)
    return demo_server


# --- oversized and malformed requests ---------------------------------------------------
# Each request is sized so that the server has read every byte when it answers
# (a close with unread bytes would turn into a TCP reset that can destroy the
# answer before the client reads it: a transport matter, not the server's).

def test_request_line_over_64k_is_414(demo):
    line = b"GET /" + b"a" * (65537 - 5)             # http.server reads at most 65537
    status, headers, body = exchange(demo.port, line)
    assert status == 414, (status, body[:200])
    assert headers["content-type"].startswith("application/json")
    assert "error" in json.loads(body.decode())
    assert_healthy(demo)


def test_header_line_over_64k_is_431(demo):
    request = (b"GET /api/gpus HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
               + b"b" * 65537)
    status, _, body = exchange(demo.port, request)
    assert status == 431, (status, body[:200])
    assert "error" in json.loads(body.decode())
    assert_healthy(demo)


def test_more_than_100_headers_is_431(demo):
    request = b"GET /api/gpus HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(100))    # 101 header lines in all
    status, _, body = exchange(demo.port, request)
    assert status == 431, (status, body[:200])
    assert_healthy(demo)


@pytest.mark.parametrize("request_bytes,expected", [
    (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET / FTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.x\r\n\r\n", 400),
    (b"GET / HTTP/\r\n\r\n", 400),
    (b"GET / HTTP/1.1.1\r\n\r\n", 400),
    (b"\x00\xff\xfe\x16\x03\x01 / HTTP/1.1\r\n\r\n", 405),  # binary method: still read-only
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET /api/gpus HTTP/1.1\r\nHost: 127.0.0.1\r\n\tfolded\r\n\r\n", None),
    (b"GET /api/gpus HTTP/1.1\r\nHost: 127.0.0.1\r\nNo colon here\r\n\r\n", None),
    (b"GET /api/gpus HTTP/1.1\r\nHost: 127.0.0.1\r\n: empty name\r\n\r\n", None),
], ids=["four-words", "ftp", "bad-minor", "no-version", "three-part-version", "binary",
        "http2", "folded-header", "header-without-colon", "empty-header-name"])
def test_malformed_requests_get_an_error_answer(demo, request_bytes, expected):
    status, headers, body = exchange(demo.port, request_bytes)
    if expected is None:
        assert status in (200, 400, 403), (status, body[:200])
    else:
        assert status == expected, (status, body[:200])
    if status is not None and status >= 400:
        assert headers["content-type"].startswith("application/json")
        assert "error" in json.loads(body.decode())
    assert_healthy(demo)


@pytest.mark.parametrize("request_bytes,expected", [
    (b"GARBAGE\r\n\r\n", (400,)),
    (b"POST /\r\n\r\n", (400, 405)),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", (400,)),   # TLS-ish bytes
    (b"GET /plain\r\nHost: 127.0.0.1\r\n\r\n", (200, 400, 403, 505)),    # HTTP/0.9 GET
], ids=["one-word", "http09-post", "tls", "http09-get"])
def test_http09_style_requests_get_a_status_line_and_headers(demo, request_bytes, expected):
    """http.server treats a request line of one or two words as HTTP/0.9 and
    answers with a bare body: no status line, no Content-Type, no CSP or
    nosniff. A client cannot tell an error from a page; the security headers
    are bypassed. The answer must be a real HTTP/1.x response."""
    sock = socket.create_connection(("127.0.0.1", demo.port), timeout=5)
    try:
        sock.sendall(request_bytes)
        raw = read_all(sock, 3.0)
    finally:
        sock.close()
    assert raw.startswith(b"HTTP/1."), "answer without a status line: %r" % raw[:120]
    status = int(raw.split(b" ", 2)[1])
    assert status in expected, raw[:200]
    assert b"\r\nX-Content-Type-Options: nosniff\r\n" in raw.partition(b"\r\n\r\n")[0]
    assert_healthy(demo)


@pytest.mark.parametrize("host", [
    "127.0.0.1:\xb2",        # '²' (latin-1 0xB2): str.isdigit() is True, int() refuses it
    "127.0.0.1:\xb9\xb3",
    "[::1]:\xb2",
    "localhost:99999999999999999999999",
    "127.0.0.1:-1",
    "127.0.0.1:",
    "[::1",
    "[]:80",
    ":",
    "\x00",
])
def test_odd_host_headers_get_an_answer(demo, host):
    """Any Host header gets an HTTP answer (accepted or 4xx), never a handler
    crash that drops the connection without a response."""
    mark = log_mark(demo)
    request = ("GET /api/version HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
               % host).encode("latin-1")
    status, _, body = exchange(demo.port, request)
    time.sleep(0.1)
    assert "http_handler_error" not in log_since(demo, mark), log_since(demo, mark)
    assert status in (200, 400, 403), (status, body[:200])
    assert_healthy(demo, mark)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_get_body_is_never_answered_as_a_second_request(demo, framing):
    """A body on a GET must be read and discarded, or the connection closed:
    never parsed as the next request on the keep-alive connection (request
    smuggling through any proxy in front of the dashboard)."""
    smuggled = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    if framing == "content-length":
        head = b"Content-Length: %d\r\n" % len(smuggled)
        body = smuggled
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    request = (b"GET /api/healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % demo.port) + head + \
        b"\r\n" + body
    sock = socket.create_connection(("127.0.0.1", demo.port), timeout=5)
    try:
        sock.sendall(request)
        status, _, first, rest = read_http_response(sock, deadline=time.monotonic() + 5)
        assert status == 200 and b'"ok"' in first
        rest += read_all(sock, 1.0)
    finally:
        sock.close()
    # Read and discarded (keep-alive, nothing more said) or the connection
    # closed: either way nothing follows the one answer.
    assert rest == b"", "the GET body was answered as a request: %r" % rest[:160]
    assert_healthy(demo)


# --- idle connections and slowloris --------------------------------------------------------

IDLE_TIMEOUT_S = getattr(atw, "HTTP_IDLE_TIMEOUT_S", 15.0)
CLOSE_EXPECTED_S = IDLE_TIMEOUT_S + 5.0
PROBE_LIMIT_S = CLOSE_EXPECTED_S + 1.0    # a probe gives up (and the test fails) after this


def _probe_idle(port, request=b""):
    """Connect (optionally send one request and read its answer), then stay
    silent: seconds until the server closes the connection, or None."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if request:
            sock.sendall(request)
            read_http_response(sock, deadline=time.monotonic() + 5)
        started = time.monotonic()
        sock.settimeout(PROBE_LIMIT_S)
        try:
            while sock.recv(65536):
                pass
        except socket.timeout:
            return None
        except ConnectionResetError:
            pass
        return time.monotonic() - started
    finally:
        sock.close()


def _probe_slowloris(port, prefix):
    """Send ``prefix`` then one byte every 0.5 s, never finishing the request
    head: seconds until the server closes the connection, or None."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        started = time.monotonic()
        sock.sendall(prefix)
        sock.settimeout(0.5)
        while time.monotonic() - started < PROBE_LIMIT_S:
            try:
                sock.recv(65536)        # EOF, or an answer (e.g. 408): either ends it
                return time.monotonic() - started
            except socket.timeout:
                pass
            except ConnectionResetError:
                return time.monotonic() - started
            try:
                sock.send(b"a")
            except OSError:                            # EPIPE / ECONNRESET: closed
                return time.monotonic() - started
        return None
    finally:
        sock.close()


class Probes(object):
    """Runs every timeout probe at once in threads (one ~20 s wait for all)."""

    def __init__(self, port):
        self.results = {}
        self.threads = []
        host = b"Host: 127.0.0.1:%d\r\n" % port
        jobs = {
            "idle": lambda: _probe_idle(port),
            "idle_keepalive": lambda: _probe_idle(
                port, b"GET /api/healthz HTTP/1.1\r\n" + host + b"\r\n"),
            "slowloris_headers": lambda: _probe_slowloris(
                port, b"GET /api/gpus HTTP/1.1\r\n" + host + b"X-Slow: "),
            "slowloris_request_line": lambda: _probe_slowloris(port, b"GET /api/gpus?"),
            "slowloris_ws_handshake": lambda: _probe_slowloris(
                port, b"GET /ws HTTP/1.1\r\n" + host + b"Upgrade: websocket\r\nX-Slow: "),
        }
        for name, job in jobs.items():
            thread = threading.Thread(target=self._run, args=(name, job), name="probe-" + name)
            thread.daemon = True
            thread.start()
            self.threads.append(thread)

    def _run(self, name, job):
        try:
            self.results[name] = job()
        except Exception as exc:   # reported by the test that reads it
            self.results[name] = exc

    def result(self, name):
        for thread in self.threads:
            if thread.name == "probe-" + name:
                thread.join(PROBE_LIMIT_S + 10)
        value = self.results.get(name)
        if isinstance(value, Exception):
            raise value
        return value


@pytest.fixture(scope="module")
def probes(server_module):
    proc = server_module(args=["--demo"], env=FAST)
    proc.wait_metrics(count=3)
    started = Probes(proc.port)
    yield proc, started
    for thread in started.threads:
        thread.join(PROBE_LIMIT_S + 10)


@pytest.fixture(scope="module", autouse=True)
def probes_started_first(request):
    """Starts the probes before this module's first test when a selected test
    reads them: their ~20 s of waiting then runs alongside the other tests
    (the tests reading them are the module's last ones)."""
    if any("probes" in item.fixturenames for item in request.session.items
           if getattr(item, "module", None) is request.module):
        request.getfixturevalue("probes")


# --- WebSocket origin and Host (DNS rebinding) ------------------------------------------------

@pytest.mark.parametrize("origin", [
    "http://evil.example",
    "https://evil.example",
    "null",
    "http://127.0.0.1.evil.example:{port}",
    "http://127.0.0.1:{port}.evil.example",
    "http://evil.example@127.0.0.1:{port}/x",
    "http://127.0.0.1:1",                       # same host, another port
    "http://localhost:{port}",                  # another name for the same host is another origin
    "file://",
    "chrome-extension://abcdefghijklmnop",
    "http://[::1]:{port}",
    "",
])
def test_cross_origin_websocket_is_refused(demo, origin):
    origin = origin.format(port=demo.port)
    with pytest.raises(HandshakeRefused) as info:
        RawWebSocket.connect("127.0.0.1", demo.port, origin=origin).close()
    assert info.value.status == 403, info.value
    assert "error" in info.value.json()


def test_same_origin_websocket_is_accepted(demo):
    with RawWebSocket.connect("127.0.0.1", demo.port,
                              origin="http://127.0.0.1:%d" % demo.port) as ws:
        assert ws.recv_json()["type"] == "hello"


REBINDING_HOSTS = [
    "evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}",
    "localhost.evil.example:{port}", "127.0.0.1@evil.example", "evil.example#127.0.0.1",
    "0.0.0.0:{port}", "127.1:{port}", "2130706433:{port}", "",
]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
@pytest.mark.parametrize("path", ["/", "/api/gpus", "/api/gpus/card0/procs", "/plain"])
def test_dns_rebinding_host_is_refused(demo, host, path):
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
               % (path, host.format(port=demo.port))).encode("latin-1")
    status, _, body = exchange(demo.port, request)
    assert status in (400, 403), (status, body[:200])
    assert HOSTILE_NAME.encode() not in body and b"card0" not in body


@pytest.mark.parametrize("host", REBINDING_HOSTS)
def test_dns_rebinding_host_cannot_open_a_websocket(demo, host):
    headers = handshake_headers(host.format(port=demo.port))
    status, _, body = exchange(demo.port, build_request("GET", "/ws", headers))
    assert status in (400, 403), (status, body[:200])


def test_missing_host_header_is_refused_on_loopback(demo):
    for request in (b"GET /api/gpus HTTP/1.0\r\n\r\n",
                    b"GET /api/gpus HTTP/1.1\r\nConnection: close\r\n\r\n"):
        status, _, body = exchange(demo.port, request)
        assert status in (400, 403), (request, status, body[:200])


# --- read-only: every method but GET/HEAD on every path is 405 -----------------------------------

ALL_PATHS = ["/", "/index.html", "/plain", "/api/gpus", "/api/gpus/card0/metrics",
             "/api/gpus/card0/procs", "/api/gpus/card0/history", "/api/gpus/nope/metrics",
             "/api/healthz", "/api/readyz", "/api/version", "/ws", "/favicon.ico", "/metrics",
             "/vendor/preact/dist/preact.module.js", "/nope", "*"]
WRITE_METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
                 "get", "FOO"]


def test_every_other_method_on_every_path_is_405(demo):
    before = demo.get_json("/api/gpus")[1]
    failures = []
    for method in WRITE_METHODS:
        targets = ALL_PATHS + (["127.0.0.1:%d" % demo.port] if method == "CONNECT" else [])
        for path in targets:
            request = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n"
                       "Cookie: session=SECRET-COOKIE\r\n\r\n" % (method, path, demo.port))
            status, headers, body = exchange(demo.port, request.encode())
            if (status != 405 or headers.get("allow") != "GET, HEAD"
                    or b"SECRET-COOKIE" in body or "error" not in json.loads(body.decode())):
                failures.append((method, path, status, headers.get("allow"), body[:80]))
    assert not failures, failures[:10]
    after = demo.get_json("/api/gpus")[1]
    assert [g["id"] for g in after["gpus"]] == [g["id"] for g in before["gpus"]]
    assert_healthy(demo)


def test_websocket_upgrade_by_post_is_405(demo):
    headers = handshake_headers("127.0.0.1:%d" % demo.port) + [("Content-Length", "0")]
    status, _, _ = exchange(demo.port, build_request("POST", "/ws", headers))
    assert status == 405


# --- no path traversal, anywhere --------------------------------------------------------------------

SECRET = b"SECRET-MARKER-5f1c"


@pytest.fixture(scope="module")
def vendored(server_module, tmp_path_factory):
    """A server with APP_VENDOR_DIR: a fake node_modules holding exactly the files
    the page references, plus secrets beside and inside it that must never be served."""
    base = tmp_path_factory.mktemp("vendor")
    modules = base / "node_modules"
    with open(os.path.join(REPO, "index.html"), encoding="utf-8") as fh:
        _, files = atw.rewrite_cdn_urls(fh.read())
    if not files:
        pytest.skip("index.html references no CDN files to vendor")
    for url, (package, version, rel) in files.items():
        target = modules / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("/* %s */\n" % url)
        (modules / package / "package.json").write_text(json.dumps({"version": version}))
        (modules / package / "secret.js").write_bytes(SECRET)      # not referenced by the page
    (base / "secret.txt").write_bytes(SECRET)
    (modules / "secret.txt").write_bytes(SECRET)
    proc = server_module(args=["--demo"], env=dict(FAST, APP_VENDOR_DIR=str(modules)))
    proc.wait_metrics(count=3)
    return proc, sorted(files)


TRAVERSALS = [
    "/vendor/../secret.txt", "/vendor/../../secret.txt", "/vendor/%2e%2e/secret.txt",
    "/vendor/%2E%2E%2Fsecret.txt", "/vendor/..%2fsecret.txt", "/vendor/..%5csecret.txt",
    "/vendor//secret.txt", "/vendor/secret.txt", "/vendor/preact/secret.js",
    "/vendor/preact/dist/../secret.js", "/vendor/preact/dist/preact.module.js/../../secret.js",
    "/vendor/preact/dist/preact.module.js%00.js", "/vendor/%00/../secret.txt",
    "/vendor/preact/package.json", "/vendor/./secret.txt",
    "//etc/passwd", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd", "/api/gpus/../../etc", "/api/gpus/../../etc/passwd",
    "/api/gpus/card0/../../../etc/passwd", "/api/gpus/..%2f..%2fetc%2fpasswd/metrics",
    "/api/gpus/%2e%2e/metrics", "/index.html/../amdgpu_top_web.py", "/amdgpu_top_web.py",
    "/./amdgpu_top_web.py", "/.git/config", "/testdata/sys/rx6900xt/PROVENANCE",
    "/static/../../etc/passwd", "/plain/../amdgpu_top_web.py", "/\\..\\..\\etc\\passwd",
    "/proc/self/environ", "/sys/class/drm",
]


def _no_leak(body):
    assert SECRET not in body
    assert b"root:" not in body
    assert b"import " not in body and b"def " not in body      # this program's source
    assert b"[core]" not in body                                # .git/config


def test_vendor_serves_the_referenced_files(vendored):
    proc, urls = vendored
    for url in urls:
        response = proc.get(url)
        assert response.status == 200, url
        assert response.body.startswith(b"/* " + url.encode())


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_traversal(vendored, path):
    proc, _ = vendored
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
               % (path, proc.port)).encode("latin-1")
    status, _, body = exchange(proc.port, request)
    assert status in (400, 404), (path, status, body[:200])
    _no_leak(body)


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/../../etc/passwd", "http://127.0.0.1:{port}/vendor/../secret.txt",
    "http://127.0.0.1:{port}/vendor/%2e%2e/secret.txt", "file:///etc/passwd",
    "file:///{secret}", "http://127.0.0.1:{port}//etc/passwd", "../../etc/passwd",
])
def test_no_traversal_by_absolute_uri_request_line(vendored, target):
    proc, _ = vendored
    target = target.format(port=proc.port, secret="secret.txt")
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
               % (target, proc.port)).encode("latin-1")
    status, _, body = exchange(proc.port, request)
    assert status in (400, 404), (target, status, body[:200])
    _no_leak(body)
    assert_healthy(proc)


# --- hostile process names and command lines ---------------------------------------------------------

def test_plain_view_escapes_hostile_process_names(demo):
    response = demo.get("/plain")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers.get("x-content-type-options") == "nosniff"
    body = response.body.decode("utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<img" not in body.lower() and "<script" not in body.lower()
    assert "onerror=alert(1)>" not in body


def test_json_carries_hostile_names_as_plain_strings(demo):
    response = demo.get("/api/gpus/card0/procs")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-content-type-options") == "nosniff"
    processes = response_json(response)["processes"]
    names = [p["name"] for p in processes]
    assert HOSTILE_NAME in names
    hostile = [p for p in processes if p["name"] == HOSTILE_NAME][0]
    assert hostile["cmd"].startswith(HOSTILE_CMD)
    assert "alert(1)" not in json.dumps(hostile.get("user"))


def test_websocket_carries_hostile_names_as_plain_strings(demo):
    with RawWebSocket.connect("127.0.0.1", demo.port) as ws:
        ws.recv_json()
        msg, _ = ws.recv_until(lambda m: m.get("type") == "procs" and m["gpu_id"] == "card0",
                               timeout=5.0)
    assert HOSTILE_NAME in [p["name"] for p in msg["processes"]]


def _has_real_proc_scanner():
    return hasattr(atw, "ProcScanner")


HOSTILE_COMM = u"<b>\x1b[31mX\x07\x7f"          # 13 characters (comm holds 15)


def _hostile_proc_tree(dest):
    """testdata/proc/multi with pid 2100's comm made hostile (its cmdline already
    carries ANSI escapes, BEL, a newline and secrets)."""
    shutil.copytree(os.path.join(TESTDATA, "proc", "multi"), dest, symlinks=True)
    pid_dir = os.path.join(dest, "2100")
    with open(os.path.join(pid_dir, "comm"), "wb") as fh:
        fh.write(HOSTILE_COMM.encode("utf-8") + b"\n")
    with open(os.path.join(pid_dir, "stat"), "rb") as fh:
        stat = fh.read()
    start, end = stat.index(b"("), stat.rindex(b")")
    with open(os.path.join(pid_dir, "stat"), "wb") as fh:
        fh.write(stat[:start + 1] + HOSTILE_COMM.encode("utf-8") + stat[end:])
    with open(os.path.join(pid_dir, "status"), "rb") as fh:
        status = fh.read().split(b"\n", 1)
    with open(os.path.join(pid_dir, "status"), "wb") as fh:
        fh.write(b"Name:\t" + HOSTILE_COMM.encode("utf-8") + b"\n" + status[1])


def test_ansi_and_control_characters_are_neutralised(server, tmp_path):
    if not _has_real_proc_scanner():
        pytest.skip("no /proc scanner (ProcScanner) in amdgpu_top_web yet")
    if not os.path.isdir(os.path.join(TESTDATA, "proc", "multi")):
        pytest.skip("testdata/proc/multi is missing")
    root = str(tmp_path / "proc")
    _hostile_proc_tree(root)
    proc = server("multi_gpu", env=dict(FAST, APP_PROC_ENABLE="true", APP_PROC_ROOT=root,
                                        APP_DEV_ROOT=str(tmp_path / "dev")))
    proc.wait_metrics()
    status, hello_gpus = proc.get_json("/api/gpus")
    with RawWebSocket.connect("127.0.0.1", proc.port) as ws:
        hello = ws.recv_json()
        if not hello["features"].get("procs"):
            pytest.skip("the server does not scan /proc yet (hello.features.procs is false)")

        def found():
            for gpu in hello_gpus["gpus"]:
                body = proc.get_json("/api/gpus/%s/procs" % gpu["id"])[1]
                for entry in body.get("processes") or []:
                    if entry["pid"] == 2100:
                        return gpu["id"], entry
            return None
        gpu_id, entry = wait_for(found, 10.0, message="pid 2100 in a procs list")
        msg, _ = ws.recv_until(lambda m: m.get("type") == "procs" and m["gpu_id"] == gpu_id
                               and any(p["pid"] == 2100 for p in m["processes"]), timeout=10.0)
    ws_entry = [p for p in msg["processes"] if p["pid"] == 2100][0]
    for where, item in (("api", entry), ("ws", ws_entry)):
        for key in ("name", "cmd"):
            assert not CONTROL_RE.search(item[key] or ""), (where, key, item[key])
        assert "X" in item["name"], item["name"]
        for secret in ("hunter2", "tok-123", "sk-abc", "s3cret"):
            assert secret not in item["cmd"]
    plain = proc.get("/plain").body.decode("utf-8")
    assert not CONTROL_RE.search(plain.replace("\n", "")), "control characters in /plain"
    assert "<b>" not in plain and "&lt;b&gt;" in plain
    assert_healthy(proc)


# --- filesystem faults while running ------------------------------------------------------------------

DEVICE = os.path.join("devices", "pci0000:00", "0000:00:01.1", "0000:0c:00.0")
HWMON = os.path.join(DEVICE, "hwmon", "hwmon5")
REVALIDATE_S = getattr(atw, "REVALIDATE_S", 5.0)
SLOW_FILES_EVERY_S = getattr(atw, "SLOW_FILES_EVERY_S", 2.0)
NULL_WITHIN_S = REVALIDATE_S + 3.0
# The end-to-end fault runs below but the huge numbers run on the main Python only
# (main_python, tests/run.sh): each fault's code path is tested on every Python by
# test_sysfs.py (AttrFile on a file removed, replaced, turned into a directory;
# garbage and missing files give None; a vanished device gives None; a hot
# unplug stops the sampler and closes its fds, a replug starts a new one) and
# test_fuzz.py (compute_metrics + json_bytes on these very values, float('inf')
# included). The huge numbers (int and float limits) run everywhere.


class StatsWatcher(object):
    """A WebSocket client that keeps reading stats frames in a thread, so the
    test sees every frame (and their timing) while it edits the tree."""

    def __init__(self, port, gpu_id):
        self.ws = RawWebSocket.connect("127.0.0.1", port)
        self.gpu_id = gpu_id
        self.lock = threading.Lock()
        self.frames = []          # (monotonic, metrics)
        self.gpus_messages = []
        self.error = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stats-watcher")
        self.thread.daemon = True
        self.thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                msg = self.ws.recv_json(0.2)
                if msg is None:
                    continue
                with self.lock:
                    if msg.get("type") == "stats" and msg["gpu_id"] == self.gpu_id:
                        self.frames.append((time.monotonic(), msg["metrics"]))
                    elif msg.get("type") == "gpus":
                        self.gpus_messages.append([g["id"] for g in msg["gpus"]])
        except Exception as exc:   # reported by the test
            self.error = exc

    def latest(self):
        with self.lock:
            return self.frames[-1][1] if self.frames else None

    def frames_since(self, when):
        with self.lock:
            return [t for t, _ in self.frames if t >= when]

    def stop(self):
        self._stop.set()
        self.thread.join(3.0)
        self.ws.close()


def _copy_rx6900xt(tmp_path):
    root = str(tmp_path / "sys")
    shutil.copytree(os.path.join(SYSFS, "rx6900xt"), root, symlinks=True)
    return root


def _write(path, data):
    with open(path, "wb") as fh:
        fh.write(data)


def _log_lines(proc):
    return proc.log().splitlines()


@pytest.mark.slow
@pytest.mark.main_python
def test_sysfs_file_faults_give_null_keep_serving_and_log_quietly(server, tmp_path):
    root = _copy_rx6900xt(tmp_path)
    # Without the binary gpu_metrics table, which would fill these gaps from its
    # own copy of the values (test_sysfs.py checks that fallback).
    os.unlink(os.path.join(root, DEVICE, "gpu_metrics"))
    proc = server(sysfs_root=root, env=FAST)
    proc.wait_metrics(count=1)
    watcher = StatsWatcher(proc.port, "card0")
    try:
        baseline = wait_for(watcher.latest, 3.0, message="first stats frame")
        faulted = {"gpu_busy_pct": None, "vram_used_bytes": None, "temp_c": None,
                   "fan_rpm": None, "power_w": None}
        untouched = ["mem_busy_pct", "sclk_mhz", "gtt_used_bytes", "temp_mem_c", "fan_pct"]
        for key in list(faulted) + untouched:
            assert baseline[key] is not None, (key, baseline)
        lines_before = len(_log_lines(proc))

        dev, hw = os.path.join(root, DEVICE), os.path.join(root, HWMON)
        os.unlink(os.path.join(dev, "gpu_busy_percent"))                 # vanishes
        os.unlink(os.path.join(dev, "mem_info_vram_used"))               # becomes a directory
        os.mkdir(os.path.join(dev, "mem_info_vram_used"))
        _write(os.path.join(hw, "temp1_input"), b"")                     # empty
        _write(os.path.join(hw, "fan1_input"), b"garbage\x00\xff text\n")  # garbage
        _write(os.path.join(hw, "power1_average"), b"x" * (1 << 20))     # huge (1 MiB)
        changed_at = time.monotonic()

        def all_null():
            latest = watcher.latest()
            return latest if all(latest[k] is None for k in faulted) else None
        metrics = wait_for(all_null, NULL_WITHIN_S, interval=0.1,
                           message="faulted metrics to become null: %r" % (watcher.latest(),))
        null_after = time.monotonic() - changed_at
        for key in untouched:
            assert metrics[key] == baseline[key] or metrics[key] is not None, key

        # Keeps serving and keeps ticking; the log stays quiet.
        quiet_from = len(_log_lines(proc))
        window_start = time.monotonic()
        time.sleep(3.0)
        ticks = len(watcher.frames_since(window_start))
        assert watcher.error is None, watcher.error
        assert proc.get_json("/api/healthz")[0] == 200
        status, body = proc.get_json("/api/gpus/card0/metrics")
        assert status == 200 and all(body["metrics"][k] is None for k in faulted)
        # A sensor gone is an alert (gpu_lost): one line per state change, by design.
        new_lines = [l for l in _log_lines(proc)[lines_before:] if "event=alert " not in l]
        window_lines = [l for l in _log_lines(proc)[quiet_from:] if "event=alert " not in l]
        print("\nfaulted metrics null after %.2f s; %d stats frames in 3 s; %d log lines since "
              "the faults, %d in the last 3 s:\n%s" % (
                  null_after, ticks, len(new_lines), len(window_lines), "\n".join(new_lines)))
        assert ticks >= 20, "stats frames stopped or slowed: %d in 3 s at 100 ms" % ticks
        assert len(new_lines) <= 5, new_lines
        assert len(window_lines) <= 1, window_lines
        assert not [l for l in new_lines if "Traceback" in l or "level=ERROR" in l]
    finally:
        watcher.stop()
    assert_healthy(proc)


@pytest.mark.slow
@pytest.mark.parametrize("name,digit,count,slow", [
    ("temp2_input", b"9", 1 << 20, False),   # 1 MiB of digits: 4096 are read, a 4096-digit int
    ("freq1_input", b"1", 400, False),       # Hz -> MHz
    ("power1_cap", b"7", 400, True),         # a slow file (re-read every 2 s)
], ids=["temp2_input-1MiB", "freq1_input-400-digits", "power1_cap-400-digits"])
def test_huge_number_in_a_sysfs_file_does_not_stop_the_stats(server, tmp_path, name, digit,
                                                             count, slow):
    """One absurd value (more digits than a float holds) must null that
    metric, not make every stats frame of the GPU vanish. The count starts
    once the file was read: after 0.5 s (5 ticks) for a file read every
    tick, SLOW_FILES_EVERY_S more for a slow one."""
    content = digit * count + b"\n"
    root = _copy_rx6900xt(tmp_path)
    proc = server(sysfs_root=root, env=FAST)
    proc.wait_metrics(count=1)
    watcher = StatsWatcher(proc.port, "card0")
    try:
        wait_for(watcher.latest, 3.0, message="first stats frame")
        _write(os.path.join(root, HWMON, name), content)
        time.sleep((SLOW_FILES_EVERY_S if slow else 0.0) + 0.5)
        window_start = time.monotonic()
        time.sleep(2.0)
        ticks = len(watcher.frames_since(window_start))
        print("\n%s with %d digits: %d stats frames in 2 s; log:\n%s" % (
            name, count, ticks, "\n".join(l for l in _log_lines(proc)
                                          if "event=" in l or "Error" in l)))
        assert ticks >= 12, "stats stopped (%d frames in 2 s at 100 ms)" % ticks
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
    finally:
        watcher.stop()
    assert_healthy(proc)


@pytest.mark.slow
@pytest.mark.main_python
def test_sampler_survives_an_infinite_value_and_recovers(server, tmp_path):
    """A PCIe speed with 400 digits parses as float('inf'), which the JSON
    encoder (allow_nan=False) refuses when the frame is published. The GPU's
    stats must carry on (that value null) and come back to normal once the
    file does; the sampler thread must not die for good."""
    root = _copy_rx6900xt(tmp_path)
    proc = server(sysfs_root=root, env=FAST)
    proc.wait_metrics(count=1)
    path = os.path.join(root, DEVICE, "pp_dpm_pcie")
    with open(path, "rb") as fh:
        original = fh.read()
    threads_before = len(os.listdir("/proc/%d/task" % proc.proc.pid))
    watcher = StatsWatcher(proc.port, "card0")
    try:
        wait_for(watcher.latest, 3.0, message="first stats frame")
        _write(path, b"0: " + b"1" * 400 + b"GT/s, x16 619Mhz *\n")
        time.sleep(SLOW_FILES_EVERY_S + 0.5)        # pp_dpm_pcie is a slow file
        during_start = time.monotonic()
        time.sleep(1.0)
        during = len(watcher.frames_since(during_start))
        _write(path, original)
        time.sleep(SLOW_FILES_EVERY_S + 0.5)
        after_start = time.monotonic()
        time.sleep(1.0)
        after = len(watcher.frames_since(after_start))
        threads_after = len(os.listdir("/proc/%d/task" % proc.proc.pid))
        print("\nstats frames per second: %d with the infinite speed, %d after the file was "
              "restored; server threads %d before, %d after" % (
                  during, after, threads_before, threads_after))
        assert after >= 6, "the GPU's stats never came back (sampler thread dead?)"
        assert during >= 6, "stats stopped while the file held an absurd value"
        assert watcher.latest()["pcie_speed_gts"] is not None
    finally:
        watcher.stop()


@pytest.mark.slow
@pytest.mark.main_python
def test_card_removed_and_readded_keeps_serving_without_leaks(server, tmp_path):
    root = _copy_rx6900xt(tmp_path)
    proc = server(sysfs_root=root, env=FAST)
    pid = proc.proc.pid
    proc.wait_metrics(count=1)
    link = os.path.join(root, "class", "drm", "card0")
    target = os.readlink(link)
    watcher = StatsWatcher(proc.port, "card0")

    def counts():
        return (len(os.listdir("/proc/%d/fd" % pid)),
                len(os.listdir("/proc/%d/task" % pid)))
    try:
        wait_for(watcher.latest, 3.0, message="first stats frame")
        base = counts()
        for cycle in range(2):
            os.unlink(link)
            wait_for(lambda: proc.get_json("/api/gpus")[1]["gpus"] == [], 5.0,
                     message="card0 to go (cycle %d)" % cycle)
            assert proc.get_json("/api/healthz")[0] == 200
            assert proc.get("/api/gpus/card0/metrics").status == 404
            assert wait_for(lambda: counts()[0] < base[0], 3.0, message="kept fds closed")
            os.symlink(target, link)
            proc.wait_metrics(count=1)
        # The device directory replaced under a running sampler (driver rebind).
        device = os.path.join(root, DEVICE)
        shutil.rmtree(device)
        shutil.copytree(os.path.join(SYSFS, "rx6900xt", DEVICE), device, symlinks=True)
        replaced_at = time.monotonic()

        def fresh_values():
            with watcher.lock:
                frames = [m for t, m in watcher.frames if t > replaced_at + REVALIDATE_S]
            return frames and frames[-1]["gpu_busy_pct"] is not None
        wait_for(fresh_values, NULL_WITHIN_S, message="values after the device came back")
        def back_to_base():
            now = counts()
            return now if now[0] <= base[0] and now[1] <= base[1] else None
        after = wait_for(back_to_base, 5.0,
                         message="fds/threads back to %r (now %r)" % (base, counts()))
        print("\nserver fds/threads: %r before, %r after 2 remove/re-add cycles and a device "
              "replacement; gpus messages seen: %r" % (base, after, watcher.gpus_messages))
        assert [] in watcher.gpus_messages and ["card0"] in watcher.gpus_messages
        assert watcher.error is None, watcher.error
        lines = _log_lines(proc)
        assert not [l for l in lines if "Traceback" in l or "level=ERROR" in l], lines
        assert len(lines) < 30, lines
    finally:
        watcher.stop()
    assert_healthy(proc)


# --- the timeout probes' results (last: their wait ran alongside the tests above) ----------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["idle", "idle_keepalive"])
def test_idle_connection_is_closed_by_the_timeout(probes, name):
    proc, found = probes
    closed_after = found.result(name)
    print("%s: closed after %s s (HTTP_IDLE_TIMEOUT_S=%s)" % (name, closed_after, IDLE_TIMEOUT_S))
    assert closed_after is not None, "still open after %.0f s" % PROBE_LIMIT_S
    assert IDLE_TIMEOUT_S - 1.0 <= closed_after <= CLOSE_EXPECTED_S
    assert_healthy(proc)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slowloris_headers", "slowloris_request_line",
                                  "slowloris_ws_handshake"])
def test_slowloris_is_closed_by_a_timeout(probes, name):
    """A request head dribbled one byte per 0.5 s must not hold a handler
    thread for ever: the idle timeout (per recv) never fires on it, so a
    deadline for the whole request head is needed."""
    proc, found = probes
    closed_after = found.result(name)
    print("%s: closed after %s s" % (name, closed_after))
    assert closed_after is not None, (
        "a request head dribbled 1 byte/0.5 s was still accepted after %.0f s "
        "(no deadline for the whole request head)" % PROBE_LIMIT_S)
    assert closed_after <= CLOSE_EXPECTED_S
    assert_healthy(proc)
