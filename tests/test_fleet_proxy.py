"""Issue #17, one tunnel for everything: a hub proxies each peer's page, API and
WebSocket under /hosts/{name}/ (GET/HEAD and the upgrade only), by name only.

Real servers on loopback: two --demo peers (one behind APP_AUTH_TOKEN, its token
in the hub's APP_FLEET_TOKEN_FILE), a recording peer (an HTTP server in this
process that keeps every request's path and headers and answers redirects,
cookies and hop-by-hop fields on demand), a canary that counts every request
(nothing may ever reach it), a port where nothing listens, and a real hub with
its own APP_AUTH_TOKEN. The page through the hub in a real Chromium: browser.
"""

import json
import os
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import amdgpu_top_web as atw
from conftest import http_request, response_json, wait_for
from wsclient import (ConnectionClosedByPeer, HandshakeRefused, RawWebSocket, handshake_headers, read_request_head,
                      random_key)

HUB_TOKEN = "hub-Token_0123456789abcdef"
PEER_TOKEN = "peer-b-Token_0123456789abcd"      # peer b's APP_AUTH_TOKEN
REC_TOKEN = "rec-Token_0123456789abcdefgh"      # '*' in the hub's token file
HUB_AUTH = {"Authorization": "Bearer " + HUB_TOKEN}


# ---- the recording peer and the canary ------------------------------------------------

class Recorder(object):
    """An HTTP server in this process: every request's (method, path, headers) kept."""

    def __init__(self, answer):
        self.requests = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with recorder.lock:
                    recorder.requests.append((self.command, self.path, dict(self.headers.items())))
                status, headers, body = answer(self.path, recorder)
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    def seen(self, ignore_api=True):
        """Paths asked for so far (a hub's poller asks /api/...: ignored by default)."""
        with self.lock:
            return [path for _, path, _ in self.requests
                    if not (ignore_api and path.startswith("/api/"))]

    def last(self, path):
        with self.lock:
            return next(headers for _, seen, headers in reversed(self.requests) if seen == path)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def recording_answer(canary_port):
    def answer(path, _):
        if path == "/redirect-out":
            return 302, [("Location", "http://127.0.0.1:%d/stolen" % canary_port)], b""
        if path == "/redirect-scheme-relative":
            return 301, [("Location", "//127.0.0.1:%d/stolen" % canary_port)], b""
        if path == "/redirect-in":
            return 302, [("Location", "/landing?x=1")], b""
        headers = [("Content-Type", "application/json"), ("Set-Cookie", "peer=1; Path=/"),
                   ("X-Peer", "yes"), ("Keep-Alive", "timeout=5"), ("Connection", "X-Hop"),
                   ("X-Hop", "dropped"), ("Service-Worker-Allowed", "/"),
                   ("Clear-Site-Data", '"cookies", "storage"')]
        return 200, headers, json.dumps({"path": path}).encode()
    return answer


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture(scope="module")
def fleet(server_module):
    canary = Recorder(lambda path, _: (200, [], b"canary"))
    rec = Recorder(recording_answer(canary.port))
    peer_a = server_module(args=["--demo", "--demo-gpus", "2"])
    peer_b = server_module(args=["--demo", "--demo-gpus", "4"], env={"APP_AUTH_TOKEN": PEER_TOKEN})
    tokens = tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False)
    tokens.write("# per peer\nb %s\n* %s\n" % (PEER_TOKEN, REC_TOKEN))
    tokens.close()
    peers = "a=%s,b=%s,rec=http://127.0.0.1:%d,dead=http://127.0.0.1:%d" % (
        peer_a.url, peer_b.url, rec.port, free_port())
    hub = server_module(args=["--demo", "--demo-gpus", "1"], env={
        "APP_FLEET_PEERS": peers, "APP_FLEET_TOKEN_FILE": tokens.name, "APP_AUTH_TOKEN": HUB_TOKEN})
    try:
        yield {"hub": hub, "a": peer_a, "b": peer_b, "rec": rec, "canary": canary}
    finally:
        rec.stop()
        canary.stop()
        os.unlink(tokens.name)


def hub_get(fleet, path, method="GET", headers=None):
    return http_request(fleet["hub"].port, method, path, headers=dict(HUB_AUTH, **(headers or {})))


def identities(answer):
    return [{k: v for k, v in gpu.items() if k != "metrics"} for gpu in answer["gpus"]]


# ---- the pure parts (section 6) ----------------------------------------------------------

@pytest.mark.parametrize("path,expected", [
    ("/hosts/a:8080/api/gpus", ("a:8080", "/api/gpus")),
    ("/hosts/a%3A8080/", ("a:8080", "/")),
    ("/hosts/a/", ("a", "/")),
    ("/hosts/a", ("a", None)),
    ("/hosts/a/api/gpus/card0/history", ("a", "/api/gpus/card0/history")),
    ("/hosts/a/x%20y", ("a", "/x%20y")),
])
def test_parse_proxy_path_accepts_a_name_and_a_path_under_it(path, expected):
    assert atw.parse_proxy_path(path) == expected


@pytest.mark.parametrize("path", [
    "/hosts/a/../../etc/passwd", "/hosts/a/%2e%2e/%2e%2e/etc/passwd", "/hosts/a/.%2E/x",
    "/hosts/a/%2E%2E%2Fetc", "/hosts/a//evil.com/x", "/hosts/a/..%5c..%5cetc", "/hosts/a/./x",
    "/hosts/a/x%00y", "/hosts/a/x%0d%0aHost:%20evil", "/hosts/http:%2f%2fevil/",
    "/hosts/a%2f..%2f../", "/hosts/../api/gpus", "/hosts//evil.com/", "/hosts/", "/hostsa/",
    "/hosts/a/%ff", "/hosts/-a/",
])
def test_parse_proxy_path_refuses_anything_that_could_leave_the_peer(path):
    assert atw.parse_proxy_path(path) is None


def test_proxy_headers_keep_the_hubs_credentials_and_hop_by_hop_fields_home():
    sent = atw.proxy_request_headers([
        ("Host", "hub:8080"), ("Authorization", "Bearer " + HUB_TOKEN), ("Cookie", "t=1"),
        ("Origin", "http://hub:8080"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
        ("Keep-Alive", "5"), ("Accept", "application/json"), ("Sec-WebSocket-Key", "k")],
        "10.0.0.2:8080", REC_TOKEN)
    assert sent == [("Accept", "application/json"), ("Host", "10.0.0.2:8080"),
                    ("Authorization", "Bearer " + REC_TOKEN)]
    assert atw.proxy_request_headers([("Accept", "*/*")], "p:1", None) == [
        ("Accept", "*/*"), ("Host", "p:1")]
    kept = atw.proxy_response_headers([
        ("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("Connection", "X-Hop"),
        ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Content-Length", "5"),
        ("Content-Security-Policy", "default-src 'none'")])
    assert kept == [("Content-Type", "text/html"), ("Content-Security-Policy", "default-src 'none'")]
    assert atw.proxy_query("a=1&token=%s&b=2" % HUB_TOKEN) == "a=1&b=2"


@pytest.mark.parametrize("location,expected", [
    ("/landing?x=1", "/hosts/p/landing?x=1"),
    ("./", "/hosts/p/api/"),
    ("http://10.0.0.2:8080/x", "/hosts/p/x"),
    ("http://10.0.0.2/x", None),                 # another port
    ("https://10.0.0.2:8080/x", None),           # another scheme
    ("http://evil.example:8080/x", None),
    ("//evil.example/x", None),
    ("http://user@10.0.0.2:8080/x", None),
    ("/%2e%2e/x", None),
])
def test_a_peers_redirect_stays_under_its_name_or_is_refused(location, expected):
    assert atw.rewrite_proxy_location(location, "http://10.0.0.2:8080",
                                      "http://10.0.0.2:8080/api/gpus", "p") == expected


def test_a_redirect_above_a_peers_base_path_is_refused():
    assert atw.rewrite_proxy_location("/other", "http://h:1/prefix", "http://h:1/prefix/x", "p") is None
    assert atw.rewrite_proxy_location("/prefix/y", "http://h:1/prefix", "http://h:1/prefix/x",
                                      "p") == "/hosts/p/y"


# ---- HTTP through a real hub ------------------------------------------------------------

def test_a_peers_api_through_the_hub_is_its_own_answer(fleet):
    direct = fleet["a"].get_json("/api/gpus")[1]
    status, proxied = response_json_of(hub_get(fleet, "/hosts/a/api/gpus"))
    assert status == 200
    assert identities(proxied) == identities(direct) and len(direct["gpus"]) == 2
    assert set(proxied) == set(direct)
    assert hub_get(fleet, "/hosts/a/api/version").body == fleet["a"].get("/api/version").body
    own = response_json(hub_get(fleet, "/api/gpus"))
    assert len(own["gpus"]) == 1, "the hub's own answer is not the peer's"


def response_json_of(response):
    return response.status, response_json(response)


def test_a_peers_page_through_the_hub_with_its_own_csp(fleet):
    direct = fleet["a"].get("/")
    proxied = hub_get(fleet, "/hosts/a/")
    assert proxied.status == 200 and proxied.body == direct.body
    assert proxied.headers["content-type"].startswith("text/html")
    assert proxied.headers["content-security-policy"] == direct.headers["content-security-policy"]
    head = hub_get(fleet, "/hosts/a/", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(direct.body))


def test_a_name_without_its_slash_is_sent_to_it(fleet):
    answer = hub_get(fleet, "/hosts/a")
    assert answer.status == 308 and answer.headers["location"] == "/hosts/a/"


def test_a_peer_behind_a_token_gets_the_one_from_the_token_file(fleet):
    assert fleet["b"].get("/api/gpus").status == 401, "peer b needs its token"
    direct = fleet["b"].get_json("/api/gpus", headers={"Authorization": "Bearer " + PEER_TOKEN})[1]
    status, proxied = response_json_of(hub_get(fleet, "/hosts/b/api/gpus"))
    assert status == 200 and identities(proxied) == identities(direct)
    assert len(direct["gpus"]) == 4


def test_the_hubs_credentials_never_reach_the_peer(fleet):
    rec = fleet["rec"]
    answer = hub_get(fleet, "/hosts/rec/echo?a=1&token=%s" % HUB_TOKEN, headers={
        "Cookie": "amdgpu_top_web_token_%d=%s" % (fleet["hub"].port, HUB_TOKEN),
        "Origin": "http://127.0.0.1:%d" % fleet["hub"].port, "X-Custom": "kept",
        "Connection": "X-Private", "X-Private": "hop"})
    assert answer.status == 200
    assert json.loads(answer.body) == {"path": "/echo?a=1"}, "the query is passed on, minus token="
    got = {k.lower(): v for k, v in rec.last("/echo?a=1").items()}
    assert got["authorization"] == "Bearer " + REC_TOKEN
    assert got["host"] == "127.0.0.1:%d" % rec.port
    assert got["x-custom"] == "kept"
    for name in ("cookie", "origin", "x-private"):
        assert name not in got, name
    assert HUB_TOKEN not in json.dumps(got)


def test_a_peers_cookies_and_hop_by_hop_fields_stay_at_the_hub(fleet):
    answer = hub_get(fleet, "/hosts/rec/anything")
    assert answer.status == 200 and answer.headers["x-peer"] == "yes"
    for name in ("set-cookie", "keep-alive", "x-hop", "service-worker-allowed", "clear-site-data"):
        assert name not in answer.headers, name
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_peers_101_is_built_anew_with_only_the_websocket_fields():
    head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: abc=\r\nSet-Cookie: s=1; Path=/\r\n"
            b"sec-websocket-protocol: v1\r\nClear-Site-Data: \"*\"\r\nX-Other: 1\r\n\r\n")
    assert atw.build_proxy_ws_answer(head) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: v1\r\n\r\n")


class LoopbackPeer(object):
    """A raw socket peer on a loopback port: every connection on its own thread,
    handed to handle(conn); close() ends the accept() thread too (shutdown: a
    thread left blocked in accept() holds a reserved fd)."""

    def __init__(self, backlog):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    read_head = staticmethod(read_request_head)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class CookieWebSocketPeer(LoopbackPeer):
    """A raw socket peer that answers one upgrade with a right 101 that also sets
    a cookie, allows a service worker everywhere and wipes the site's data."""

    def __init__(self):
        LoopbackPeer.__init__(self, 4)

    def handle(self, conn):
        """The hub's fleet poller also comes here (for /api/...): closed unanswered."""
        with conn:
            data = self.read_head(conn)
            if data is None or b"/ws" not in data.split(b"\r\n", 1)[0]:
                return
            key = next(line.split(b":", 1)[1].strip().decode() for line in data.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                          "Set-Cookie: amdgpu_top_web_token=stolen; Path=/\r\n"
                          "Service-Worker-Allowed: /\r\nClear-Site-Data: \"*\"\r\n\r\n"
                          % atw.accept_key(key)).encode())
            conn.recv(4096)                          # until the hub's side closes


def test_a_peers_101_reaches_the_browser_without_its_cookies(server):
    peer = CookieWebSocketPeer()
    try:
        hub = server(args=["--demo", "--demo-gpus", "1"],
                     env={"APP_FLEET_PEERS": "p=http://127.0.0.1:%d" % peer.port})
        ws = RawWebSocket.connect("127.0.0.1", hub.port, path="/hosts/p/ws")
        try:
            got = ws.response_headers
            assert got["upgrade"].lower() == "websocket" and "sec-websocket-accept" in got
            for name in ("set-cookie", "service-worker-allowed", "clear-site-data"):
                assert name not in got, name
        finally:
            ws.close()
    finally:
        peer.close()


def test_redirects_stay_under_the_peer_or_are_a_502(fleet):
    inside = hub_get(fleet, "/hosts/rec/redirect-in")
    assert inside.status == 302 and inside.headers["location"] == "/hosts/rec/landing?x=1"
    for path in ("/hosts/rec/redirect-out", "/hosts/rec/redirect-scheme-relative"):
        out = hub_get(fleet, path)
        assert out.status == 502, path
        assert "rec" in response_json(out)["error"]
    assert fleet["canary"].seen(ignore_api=False) == [], "a redirect was followed"


TRAVERSALS = [
    "/hosts/rec/../../etc/passwd", "/hosts/rec/%2e%2e/%2e%2e/etc/passwd",
    "/hosts/rec/.%2e/.%2e/etc", "/hosts/rec/%2E%2E%2Fetc", "/hosts/rec/..%5c..%5cetc",
    "/hosts/rec//127.0.0.1:{canary}/x", "//127.0.0.1:{canary}/", "/hosts/http:%2f%2f127.0.0.1:{canary}/",
    "/hosts/http%3A%2F%2F127.0.0.1%3A{canary}/x", "/hosts/127.0.0.1:{canary}/",
    "/hosts/nosuch/x", "/hosts/rec%2f..%2f../", "/hosts/../etc", "/hosts/rec/x%00y",
    "http://127.0.0.1:{canary}/x",
]


@pytest.mark.parametrize("template", TRAVERSALS)
def test_a_path_that_tries_to_leave_the_peer_list_is_a_404_and_fetches_nothing(fleet, template):
    before = fleet["rec"].seen()
    path = template.format(canary=fleet["canary"].port)
    answer = hub_get(fleet, path)
    assert answer.status == 404, (path, answer)
    assert "error" in response_json(answer)
    assert fleet["rec"].seen() == before, "the recording peer was asked"
    assert fleet["canary"].seen(ignore_api=False) == []


def test_only_get_and_head_are_proxied(fleet):
    before = fleet["rec"].seen()
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        answer = hub_get(fleet, "/hosts/rec/x", method=method)
        assert answer.status == 405, method
    assert fleet["rec"].seen() == before


def test_the_hubs_host_and_token_checks_come_first(fleet):
    before = fleet["rec"].seen()
    port = fleet["hub"].port
    assert http_request(port, "GET", "/hosts/rec/x").status == 401
    assert http_request(port, "GET", "/hosts/rec/x", headers={
        "Authorization": "Bearer " + PEER_TOKEN}).status == 401
    assert hub_get(fleet, "/hosts/rec/x", headers={"Host": "evil.example"}).status == 403
    assert fleet["rec"].seen() == before


def test_a_peer_down_is_a_502_json_naming_it(fleet):
    answer = hub_get(fleet, "/hosts/dead/api/gpus")
    assert answer.status == 502
    assert "dead" in response_json(answer)["error"]


def test_a_peer_that_never_answers_is_a_502_after_the_timeout(app_factory):
    """A peer whose port accepts (the kernel's backlog) but never answers:
    cut at the per-read timeout (FLEET_PROXY_READ_TIMEOUT_S, 10 s; 0.5 s here)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        app, port = app_factory(["--demo", "--demo-gpus", "1"], {
            "APP_FLEET_PEERS": "silent=http://127.0.0.1:%d" % silent.getsockname()[1]})
        assert app.fleet_proxy.read_timeout_s == atw.FLEET_PROXY_READ_TIMEOUT_S
        app.fleet_proxy.read_timeout_s = 0.5
        answer = http_request(port, "GET", "/hosts/silent/api/gpus", timeout=20.0)
        assert answer.status == 502
        assert response_json(answer)["error"] == "peer silent: timed out"
    finally:
        silent.close()


def test_a_server_without_peers_has_no_hosts(server):
    plain = server(args=["--demo"])
    answer = plain.get("/hosts/a/")
    assert answer.status == 404 and "APP_FLEET_PEERS" in response_json(answer)["error"]


# ---- the WebSocket through the hub ------------------------------------------------------

def hub_ws(fleet, name, origin=None, token=HUB_TOKEN):
    port = fleet["hub"].port
    headers = handshake_headers("127.0.0.1:%d" % port, random_key(), origin,
                                extra=[("Authorization", "Bearer " + token)])
    return RawWebSocket.connect("127.0.0.1", port, path="/hosts/%s/ws" % name, headers=headers)


@pytest.mark.parametrize("name,gpus", [("a", 2), ("b", 4)])
def test_a_peers_websocket_is_live_through_the_hub(fleet, name, gpus):
    ws = hub_ws(fleet, name, origin="http://127.0.0.1:%d" % fleet["hub"].port)
    try:
        hello = ws.recv_until(lambda m: m.get("type") == "hello", timeout=10.0)[0]
        assert len(hello["gpus"]) == gpus, "the peer's GPUs, not the hub's one"
        ids = {gpu["id"] for gpu in hello["gpus"]}
        ws.send_json({"type": "subscribe", "gpu_id": sorted(ids)[0]})
        seen = [ws.recv_until(lambda m: m.get("type") == "stats", timeout=10.0)[0] for _ in range(2)]
        assert all(frame["gpu_id"] in ids for frame in seen)
        ws.send_close()
    finally:
        ws.sock.close()


def test_a_bad_origin_on_a_proxied_websocket_is_a_403(fleet):
    with pytest.raises(HandshakeRefused) as refused:
        hub_ws(fleet, "a", origin="http://evil.example")
    assert refused.value.status == 403
    with pytest.raises(HandshakeRefused) as unauthorized:
        hub_ws(fleet, "a", token=PEER_TOKEN)
    assert unauthorized.value.status == 401


def test_a_websocket_to_a_peer_down_is_a_502(fleet):
    with pytest.raises(HandshakeRefused) as refused:
        hub_ws(fleet, "dead")
    assert refused.value.status == 502 and "dead" in refused.value.json()["error"]


# ---- the page through the hub in a real Chromium ------------------------------------------

@pytest.mark.browser
def test_a_peers_page_is_live_in_chromium_through_the_hub(server, browser, vendor_dir):
    """The hub serves no modules (no APP_VENDOR_DIR): every URL of the peer's page
    must resolve under /hosts/a/, its WebSocket included."""
    from playwright.sync_api import expect
    peer = server(args=["--demo", "--demo-gpus", "2"], env={"APP_VENDOR_DIR": vendor_dir})
    hub = server(args=["--demo", "--demo-gpus", "1"], env={"APP_FLEET_PEERS": "a=" + peer.url})
    base = "http://127.0.0.1:%d/hosts/a/" % hub.port
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15000)
        requests, sockets, frames, errors = [], [], [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

        def on_socket(ws):
            sockets.append(ws.url)
            ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))
        page.on("websocket", on_socket)
        page.goto(base)
        expect(page.locator("[data-testid=conn]")).to_have_attribute("data-state", "open")
        # the peer's two GPUs + "all" (the hub has one GPU)
        expect(page.get_by_label("GPU", exact=True).locator("option")).to_have_count(3)
        wait_for(lambda: page.wait_for_timeout(100) or
                 sum(1 for f in frames if f.get("type") == "stats") >= 3, 15.0,
                 message="stats frames through the hub")
        assert sockets == ["ws://127.0.0.1:%d/hosts/a/ws" % hub.port]
        assert any("/hosts/a/vendor/preact/" in url for url in requests), requests
        assert all(url.startswith(base) for url in requests), requests
        assert errors == []
    finally:
        context.close()


def test_a_proxied_websocket_ends_when_the_peer_goes(server):
    peer = server(args=["--demo", "--demo-gpus", "1"])
    hub = server(args=["--demo", "--demo-gpus", "1"], env={"APP_FLEET_PEERS": "p=" + peer.url})
    ws = RawWebSocket.connect("127.0.0.1", hub.port, path="/hosts/p/ws")
    try:
        ws.recv_until(lambda m: m.get("type") == "hello", timeout=10.0)
        peer.stop()                                 # the peer says goodbye: Close 1001
        try:
            code = ws.recv_close(timeout=10.0)[0]
        except ConnectionClosedByPeer:              # a peer slow to stop (a loaded machine) may
            code = None                             # be gone before its goodbye: EOF alone
        assert code in (1001, None)
        assert code is None or ws.wait_eof(timeout=10.0), "the hub keeps the browser's side open"
        assert http_request(hub.port, "GET", "/api/version").status == 200
    finally:
        ws.close()


def test_the_peer_list_file_is_read_again_for_each_name(server, fleet, tmp_path):
    """APP_FLEET_PEERS=@FILE: a peer added to the file is reachable without a restart,
    a peer removed from it is a 404 again."""
    peers = tmp_path / "peers.txt"
    peers.write_text("a=%s\n" % fleet["a"].url)
    hub = server(args=["--demo", "--demo-gpus", "1"], env={"APP_FLEET_PEERS": "@%s" % peers})
    assert http_request(hub.port, "GET", "/hosts/a/api/version").status == 200
    assert http_request(hub.port, "GET", "/hosts/c/api/version").status == 404
    peers.write_text("# a is gone\nc=%s\n" % fleet["a"].url)
    os.utime(str(peers), (1, 1))                    # another mtime, whatever the clock's grain
    answer = http_request(hub.port, "GET", "/hosts/c/api/version")
    assert answer.status == 200 and answer.body == fleet["a"].get("/api/version").body
    assert http_request(hub.port, "GET", "/hosts/a/api/version").status == 404


def test_proxied_websockets_are_bounded_and_a_slot_comes_back_when_one_closes(server):
    peer = server(args=["--demo", "--demo-gpus", "1"])
    hub = server(args=["--demo", "--demo-gpus", "1"], env={"APP_FLEET_PEERS": "p=" + peer.url})
    held = []
    try:
        for _ in range(atw.FLEET_PROXY_WS_MAX):
            held.append(RawWebSocket.connect("127.0.0.1", hub.port, path="/hosts/p/ws"))
        with pytest.raises(HandshakeRefused) as refused:
            RawWebSocket.connect("127.0.0.1", hub.port, path="/hosts/p/ws")
        assert refused.value.status == 503
        assert "proxied" in refused.value.json()["error"]
        own = RawWebSocket.connect("127.0.0.1", hub.port)      # the hub's own /ws: its own count
        own.close()
        held.pop().close()

        def reconnect():
            try:
                held.append(RawWebSocket.connect("127.0.0.1", hub.port, path="/hosts/p/ws"))
                return True
            except HandshakeRefused:
                return False
        wait_for(reconnect, 10.0, interval=0.1, message="a proxied slot back")
    finally:
        for ws in held:
            ws.close()


# ---- proxied HTTP: streamed, bounded, within a deadline ----------------------------------

class RawPeer(LoopbackPeer):
    """A raw socket peer: every request on its own thread, answered by
    answer(conn, path) as raw bytes (the hub's poller, /api/...: closed unanswered)."""

    def __init__(self, answer):
        self.answer, self.paths, self.release = answer, [], threading.Event()
        self.lock = threading.Lock()
        LoopbackPeer.__init__(self, 64)

    def handle(self, conn):
        with conn:
            data = self.read_head(conn)
            if data is None:
                return
            path = data.split(b" ", 2)[1].decode()
            if path.startswith("/api/"):
                return
            with self.lock:
                self.paths.append(path)
            try:
                self.answer(self, conn, path)
            except OSError:
                pass

    def seen(self, path):
        with self.lock:
            return self.paths.count(path)

    def close(self):
        self.release.set()
        LoopbackPeer.close(self)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


def raw_get(port, path, timeout=20.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode())
    return sock


def read_until(sock, predicate):
    """Bytes from sock until predicate(data) or EOF -> (data, at EOF)."""
    data = b""
    while not predicate(data):
        chunk = sock.recv(65536)
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_a_body_without_length_is_streamed_as_it_comes(server):
    def answer(peer, conn, path):
        conn.sendall(CHUNKED_HEAD + b"5\r\nhello\r\n")
        peer.release.wait(30.0)                      # the rest only once the browser saw hello
        conn.sendall(b"6\r\n world\r\n0\r\n\r\n")
    peer = RawPeer(answer)
    try:
        hub = server(args=["--demo", "--demo-gpus", "1"],
                     env={"APP_FLEET_PEERS": "p=http://127.0.0.1:%d" % peer.port})
        sock = raw_get(hub.port, "/hosts/p/stream")
        try:
            data, eof = read_until(sock, lambda d: b"hello" in d)
            assert not eof and b"transfer-encoding: chunked" in data.lower()
            peer.release.set()
            data, eof = read_until(sock, lambda d: d.endswith(b"0\r\n\r\n"))
            assert not eof and b" world" in data
        finally:
            sock.close()
        whole = http_request(hub.port, "GET", "/hosts/p/stream")
        assert whole.status == 200 and whole.body == b"hello world"
    finally:
        peer.close()


def test_proxied_requests_are_bounded_and_a_slot_comes_back(server):
    def answer(peer, conn, path):
        if path == "/hold":
            peer.release.wait(30.0)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    peer = RawPeer(answer)
    held = []
    try:
        hub = server(args=["--demo", "--demo-gpus", "1"],
                     env={"APP_FLEET_PEERS": "p=http://127.0.0.1:%d" % peer.port})
        for _ in range(atw.FLEET_PROXY_HTTP_MAX):
            held.append(raw_get(hub.port, "/hosts/p/hold"))
        wait_for(lambda: peer.seen("/hold") == atw.FLEET_PROXY_HTTP_MAX, 20.0,
                 message="every slot held")
        refused = http_request(hub.port, "GET", "/hosts/p/other")
        assert refused.status == 503 and "proxied" in response_json(refused)["error"]
        assert peer.seen("/other") == 0
        assert http_request(hub.port, "GET", "/api/version").status == 200   # the hub's own
        peer.release.set()
        for sock in held:
            assert read_until(sock, lambda d: d.endswith(b"ok"))[0].startswith(b"HTTP/1.1 200")
        wait_for(lambda: http_request(hub.port, "GET", "/hosts/p/other").status == 200, 10.0,
                 message="a slot back")
    finally:
        for sock in held:
            sock.close()
        peer.close()


def test_a_peer_that_trickles_is_cut_at_the_deadline(app_factory):
    """Each read within the per-read timeout, forever: the whole request has a deadline."""
    def answer(peer, conn, path):
        conn.sendall(CHUNKED_HEAD if path == "/body" else b"HTTP/1.1 200 OK\r\n")
        while not peer.release.wait(0.05):
            conn.sendall(b"1\r\nx\r\n" if path == "/body" else b"X-Slow: 1\r\n")
    peer = RawPeer(answer)
    try:
        app, port = app_factory(["--demo", "--demo-gpus", "1"],
                                {"APP_FLEET_PEERS": "p=http://127.0.0.1:%d" % peer.port})
        app.fleet_proxy.deadline_s = 0.5
        head = http_request(port, "GET", "/hosts/p/head", timeout=20.0)
        assert head.status == 502 and response_json(head)["error"] == "peer p: timed out"
        sock = raw_get(port, "/hosts/p/body")
        try:
            data, eof = read_until(sock, lambda d: False)
        finally:
            sock.close()
        assert eof and data.startswith(b"HTTP/1.1 200") and b"1\r\nx\r\n" in data
        assert not data.endswith(b"0\r\n\r\n"), "a cut body has no final chunk"
    finally:
        peer.close()
