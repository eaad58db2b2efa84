"""Issue #15, the HTTP/WebSocket safety items, through real servers:

- the Host check holds on every bind (DNS rebinding), with APP_ALLOWED_HOSTS;
- the optional access token (APP_AUTH_TOKEN / APP_AUTH_TOKEN_FILE): Bearer
  header, the page's /?token= cookie, open probes, never in the log;
- every request gets an HTTP answer: the route table walked with bad
  parameters, unknown GPU ids, strict times.
"""

import os
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

import amdgpu_top_web as atw
from conftest import PROGRAM, http_request, response_json, server_env, wait_for
from wsclient import HandshakeRefused, RawWebSocket, build_request, handshake_headers, \
    read_http_response

TOKEN = "s3cret-Token_0123456789abcdef"
AUTH = {"Authorization": "Bearer " + TOKEN}


def raw_exchange(port, request, timeout=5.0):
    """Raw request bytes -> (status, headers, body); status None when the server
    closed the connection without an answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(request)
        try:
            status, headers, body, _ = read_http_response(sock, deadline=time.monotonic() + timeout)
        except Exception:           # EOF before a status line: no answer at all
            return None, {}, b""
        return status, headers, body
    finally:
        sock.close()


def ws_status(port, host_header, origin=None, extra=()):
    request = build_request("GET", "/ws", handshake_headers(host_header, origin=origin, extra=extra))
    return raw_exchange(port, request)[0]


# --- 1. DNS rebinding: the Host check on every bind ------------------------------------------

@pytest.fixture(scope="module")
def wildcard(server_module):
    """The default bind: all interfaces (here on a free port)."""
    return server_module(args=["--demo", "--listen", ":0"])


def test_foreign_host_refused_on_the_all_interfaces_bind(wildcard):
    for host in ("evil.example", "evil.example:%d" % wildcard.port, "127.0.0.1.nip.io",
                 "0.0.0.0:%d" % wildcard.port, "localhost.evil.example"):
        for path in ("/api/processes?range=1h", "/api/gpus", "/", "/plain"):
            response = wildcard.get(path, headers={"Host": host})
            assert response.status == 403, (host, path, response.status)
            assert "APP_ALLOWED_HOSTS" in response_json(response)["error"]
        assert ws_status(wildcard.port, host, origin="http://%s" % host) == 403, host
    # the refusal's log line names the setting that admits a name
    line = wildcard.wait_log(r"event=http_error status=403 .*host='evil\.example")
    assert "APP_ALLOWED_HOSTS" in line


def test_this_machines_names_are_served_on_the_all_interfaces_bind(wildcard):
    port = wildcard.port
    names = ["127.0.0.1:%d" % port, "localhost", "LOCALHOST.:%d" % port, "[::1]:%d" % port,
             socket.gethostname(), socket.gethostname().upper() + ".",
             # an address is nobody's name to rebind: browsing by address (NAT, Docker) works
             "192.0.2.99:%d" % port, "[2001:db8::7]:%d" % port]
    for host in names:
        assert wildcard.get("/api/gpus", headers={"Host": host}).status == 200, host
    host = "127.0.0.1:%d" % port
    assert ws_status(port, host, origin="http://" + host) == 101
    # an allowed Host with a foreign Origin is still a cross-site WebSocket: refused
    assert ws_status(port, host, origin="http://evil.example") == 403


def test_allowed_hosts_list_and_suffix(server):
    proc = server(args=["--demo", "--listen", ":0"],
                  env={"APP_ALLOWED_HOSTS": "GPU.example., .lan"})
    for host in ("gpu.example", "gpu.example:%d" % proc.port, "box.lan", "a.b.lan:80"):
        assert proc.get("/api/gpus", headers={"Host": host}).status == 200, host
    for host in ("evil.example", "lan", "evillan", "gpu.example.evil"):
        assert proc.get("/api/gpus", headers={"Host": host}).status == 403, host
    assert ws_status(proc.port, "gpu.example", origin="http://gpu.example") == 101
    assert ws_status(proc.port, "gpu.example", origin="http://evil.example") == 403


def test_allowed_hosts_star_for_a_reverse_proxy(server):
    proc = server(args=["--demo"], env={"APP_ALLOWED_HOSTS": "*"})
    assert proc.get("/api/gpus", headers={"Host": "anything.example"}).status == 200


@pytest.mark.parametrize("raw", ["evil example", "a/b", "http://x", "*, a.example", "ex_ample.com:80"])
def test_bad_allowed_hosts_is_a_config_error(raw):
    with pytest.raises(atw.ConfigError) as info:
        atw.parse_config([], {"APP_ALLOWED_HOSTS": raw})
    assert str(info.value).startswith("APP_ALLOWED_HOSTS")


def test_host_check_is_pure_and_normalises():
    machine = frozenset(["box", "192.0.2.2", "fd00::2"])
    ok = lambda host, allowed=(): atw.host_allowed(host, machine, allowed)   # noqa: E731
    assert ok("Box.:8080") and ok("192.0.2.2:1") and ok("[FD00:0::2]:8080") and ok("[::1]")
    assert not ok("") and not ok(None) and not ok("box.evil") and not ok("0.0.0.0:80")
    assert not ok("[::]") and not ok("127.1") and not ok("2130706433") and ok("192.0.2.3")
    assert ok("x.lan", (".lan",)) and not ok("xlan", (".lan",)) and ok("evil", "*")


# --- 2. the access token -------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(server_module):
    return server_module(args=["--demo"], env={"APP_AUTH_TOKEN": TOKEN, "APP_LOG_LEVEL": "DEBUG",
                                               "APP_ENABLE_PROMETHEUS": "true"})


@pytest.mark.parametrize("path", ["/api/gpus", "/api/gpus/card0/metrics", "/api/host", "/metrics",
                                  "/api/version", "/api/alerts", "/vendor/preact/dist/preact.module.js"])
def test_no_token_is_401_json(guarded, path):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": "Bearer " + TOKEN[:-1]},
                    {"Authorization": "Bearer " + TOKEN + "x"},
                    {"Authorization": "Basic " + TOKEN},
                    {"Authorization": "Bearer \u00e9" + TOKEN[1:]},
                    {"Cookie": "%s=%s" % (atw.auth_cookie_name(guarded.port + 1), TOKEN)}):
        response = guarded.get(path, headers=headers)
        assert response.status == 401, (path, headers, response.status)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "APP_AUTH_TOKEN" in response_json(response)["error"]


def test_bearer_token_opens_api_metrics_and_websocket(guarded):
    status, body = guarded.get_json("/api/gpus", headers=AUTH)
    assert status == 200 and body["gpus"]
    assert guarded.get("/metrics", headers={"authorization": "bearer " + TOKEN}).status == 200
    host = "127.0.0.1:%d" % guarded.port
    assert ws_status(guarded.port, host) == 401
    with RawWebSocket.connect("127.0.0.1", guarded.port, headers=handshake_headers(
            host, extra=[("Authorization", "Bearer " + TOKEN)])) as ws:
        assert ws.recv_json()["type"] == "hello"


def test_page_without_token_says_how_to_pass_it(guarded):
    for path in ("/", "/plain", "/?token=wrong-token-0123456789"):
        response = guarded.get(path)
        assert response.status == 401, path
        assert response.headers["content-type"].startswith("text/html")
        assert b"/?token=" in response.body and b"Authorization: Bearer" in response.body


def test_token_in_the_address_sets_a_cookie_and_redirects(guarded):
    response = guarded.get("/?token=" + quote(TOKEN, safe=""))
    assert response.status == 303
    assert response.headers["location"] == "./"        # the token leaves the address bar
    cookie = response.headers["set-cookie"]
    for part in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert part in cookie, cookie
    pair = cookie.split(";")[0]
    assert pair.split("=", 1)[0] == atw.auth_cookie_name(guarded.port)
    headers = {"Cookie": "other=1; " + pair}
    page = guarded.get("/", headers=headers)
    assert page.status == 200 and b"<script" in page.body
    assert guarded.get("/api/gpus", headers=headers).status == 200
    assert guarded.get("/plain", headers=headers).status == 200
    host = "127.0.0.1:%d" % guarded.port
    with RawWebSocket.connect("127.0.0.1", guarded.port, headers=handshake_headers(
            host, origin="http://" + host, extra=[("Cookie", pair)])) as ws:
        assert ws.recv_json()["type"] == "hello"


def test_probes_stay_open(guarded):
    assert guarded.get_json("/api/healthz")[0] == 200
    assert guarded.get("/api/readyz").status in (200, 503)
    env = server_env(env={"APP_AUTH_TOKEN": TOKEN})
    result = subprocess.run([sys.executable, PROGRAM, "--healthcheck", "--listen",
                             "127.0.0.1:%d" % guarded.port], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_token_never_in_the_log(guarded):
    guarded.get("/?token=" + TOKEN)
    guarded.get("/?token=" + TOKEN[:-1] + "x")          # a near miss is as secret
    guarded.get("/api/gpus?token=" + TOKEN)
    guarded.get("/api/gpus", headers=AUTH)
    guarded.wait_log(r"event=http .*token=\(redacted\)")
    assert TOKEN not in guarded.log() and TOKEN[:-1] not in guarded.log()


def test_token_file(server, tmp_path):
    path = tmp_path / "token"
    path.write_text("  %s\n" % TOKEN)
    proc = server(args=["--demo"], env={"APP_AUTH_TOKEN_FILE": str(path)})
    assert proc.get("/api/gpus").status == 401
    assert proc.get("/api/gpus", headers=AUTH).status == 200


@pytest.mark.parametrize("env,setting", [
    ({"APP_AUTH_TOKEN_FILE": "/nonexistent/token"}, "APP_AUTH_TOKEN_FILE"),
    ({"APP_AUTH_TOKEN_FILE": "EMPTY"}, "APP_AUTH_TOKEN_FILE"),
    ({"APP_AUTH_TOKEN_FILE": "SHORT"}, "APP_AUTH_TOKEN_FILE"),
    ({"APP_AUTH_TOKEN": "short-secret"}, "APP_AUTH_TOKEN"),
    ({"APP_AUTH_TOKEN": TOKEN, "APP_AUTH_TOKEN_FILE": "GOOD"}, "APP_AUTH_TOKEN_FILE"),
])
def test_bad_token_settings_exit_2_with_one_line(tmp_path, env, setting):
    files = {"EMPTY": " \n", "SHORT": "short-secret\n", "GOOD": TOKEN}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = dict((k, str(tmp_path / v) if v in files else v) for k, v in env.items())
    result = subprocess.run([sys.executable, PROGRAM, "--demo", "--listen", "127.0.0.1:0"],
                            env=server_env(env=env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], lines
    assert "short-secret" not in result.stderr and TOKEN not in result.stderr


def test_exposure_line_when_listening_beyond_loopback_without_token(wildcard, server):
    line = wildcard.wait_log(r"event=no_auth_token")
    assert "user names and command lines" in line and "APP_AUTH_TOKEN" in line
    local = server(args=["--demo"])                     # 127.0.0.1: no line (it comes first)
    assert "no_auth_token" not in local.log()


def test_token_compare_unit():
    assert atw.token_matches(TOKEN, TOKEN)
    for guess in (None, "", TOKEN[:-1], TOKEN + "x", "\u00e9" * 20, TOKEN.upper()):
        assert not atw.token_matches(guess, TOKEN), guess
    assert atw.parse_bearer("bearer  abc ") == "abc" and atw.parse_bearer("Basic abc") is None
    assert atw.parse_cookie('a=1; t="x y"; t2=3', "t") == "x y"
    assert atw.redact_token("/?a=1&token=abc&b=2") == "/?a=1&token=(redacted)&b=2"
    assert atw.parse_token_query("a=1&token=ab+c%3D%3D") == "ab+c=="
    assert atw.parse_token_query("tokens=1") is None


def test_a_base64_token_pasted_into_the_address_bar(server):
    token = "AbC+dEf/GhI+jKl/MnO="                      # openssl rand -base64 15
    proc = server(args=["--demo"], env={"APP_AUTH_TOKEN": token})
    assert proc.get("/?token=" + token).status == 303  # '+' is not a space here
    assert proc.get("/?token=" + quote(token, safe="")).status == 303
    assert proc.get("/api/gpus", headers={"Authorization": "Bearer " + token}).status == 200


@pytest.mark.browser
def test_browser_opens_the_page_with_the_token_once(server, browser, vendor_dir):
    """Chromium: /?token= once, then the page, its /vendor modules and /ws all pass
    on the cookie; the address bar ends without the token."""
    proc = server(args=["--demo"], env={"APP_AUTH_TOKEN": TOKEN, "APP_VENDOR_DIR": vendor_dir})
    context = browser.new_context()
    try:
        page = context.new_page()
        failed = []
        page.on("response", lambda r: failed.append(r.url) if r.status == 401 else None)
        page.goto(proc.url + "/?token=" + TOKEN)
        assert page.url == proc.url + "/"
        page.wait_for_selector("[data-testid=conn][data-state=open]", timeout=10000)
        assert not failed, failed
        cookies = context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True] and cookies[0]["sameSite"] == "Strict"
    finally:
        context.close()


# --- 3. every request gets an HTTP answer --------------------------------------------------

@pytest.fixture(scope="module")
def hist(server_module, tmp_path_factory):
    """A demo server with history and processes, and one process run recorded."""
    path = str(tmp_path_factory.mktemp("hist") / "history.sqlite3")
    proc = server_module(args=["--demo", "--demo-gpus", "2", "--proc-enable",
                               "--proc-scan-interval", "500ms"],
                         env={"APP_HISTORY_PATH": path, "APP_ENABLE_PROMETHEUS": "true"})
    proc.wait_metrics(count=2)

    def a_run():
        status, body = proc.get_json("/api/processes?range=1h")
        return status == 200 and body["processes"] and body["processes"][0]["run_id"]
    proc.run_id = wait_for(a_run, 30, interval=0.5, message="a process run in history")
    return proc


def example_paths(gpu_id, run_id):
    """A path for every route: the route table itself, walked (a new route is in it)."""
    paths = {"/": "page", "/vendor/preact/dist/preact.module.js": "vendor",
             "/api/processes/%d/history" % run_id: "run_history"}
    paths.update(atw.SIMPLE_ROUTES)
    for kind in atw.GPU_ROUTE_KINDS:
        paths["/api/gpus/%s/%s" % (gpu_id, kind)] = "gpu_" + kind
    paths["/no/such/path"] = "not_found"
    paths["/hosts/a:8080/api/gpus"] = "proxy"       # a hub's peer (404 on a server without peers)
    return paths


def test_the_walk_reaches_every_route():
    handled = set(name[6:] for cls in (atw.DashboardHandler, atw.Routes) for name in dir(cls)
                  if name.startswith("route_"))
    paths = example_paths("card0", 1)
    assert set(paths.values()) == handled == set(atw.ROUTE_PARAMS)
    for path, name in paths.items():
        assert atw.route(path)[0] == name, path


GOOD_VALUES = {"at": "1796205600", "from": "1796000000"}     # so the bad one is what is named
BAD_VALUES = {"from": "yesterday", "to": "0", "at": "\uff11\uff12\uff13", "range": "2w",
              "step": "fast", "format": "xml", "gpu": "../etc", "active": "maybe"}


def test_every_route_answers_bad_parameters_with_a_4xx_naming_them(hist):
    for path, name in sorted(example_paths("card0", hist.run_id).items()):
        allowed = atw.ROUTE_PARAMS[name]
        if allowed is not None:
            response = hist.get(path + "?bogus=1")
            assert response.status == 400, (path, response.status)
            assert "'bogus'" in response_json(response)["error"], path
        for param in allowed or ():
            query = "%s=%s" % (param, quote(BAD_VALUES[param]))
            query += "".join("&%s=%s" % (other, value) for other, value in GOOD_VALUES.items()
                             if other in allowed and other != param and
                             not (param == "range" and other == "from"))
            response = hist.get(path + "?" + query)
            assert 400 <= response.status < 500, (path, query, response.status)
            assert "'%s'" % param in response_json(response)["error"], (path, query)
        # whatever the query, an answer, never a closed connection or a 500
        request = ("GET %s?format=xml&at=%%00&from=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Connection: close\r\n\r\n" % path).encode("latin-1")
        status = raw_exchange(hist.port, request)[0]
        assert status is not None and status < 500, (path, status)


def test_run_history_format_xml_is_a_400(hist):
    response = hist.get("/api/processes/%d/history?format=xml" % hist.run_id)
    assert response.status == 400 and "'format'" in response_json(response)["error"]
    assert hist.get("/api/processes/%d/history?format=csv" % hist.run_id).status == 200


@pytest.mark.parametrize("path", ["/api/gpus/nope/history?range=1h", "/api/gpus/nope/history",
                                  "/api/gpus/nope/processes?at=1796205600",
                                  "/api/gpus/nope/metrics", "/api/gpus/nope/procs"])
def test_unknown_gpu_is_404_on_every_per_gpu_endpoint(hist, path):
    response = hist.get(path)
    assert response.status == 404, (path, response.status)
    assert "nope" in response_json(response)["error"]


@pytest.mark.parametrize("value,words", [
    ("0", "before 1970"), ("\uff11\uff17\uff19\uff16\uff12\uff10\uff15\uff16\uff10\uff10",
                           "expected unix seconds"),
    ("1_796_205_600", "expected unix seconds"), ("1900-01-01", "before 1970"),
    ("1e9", "expected unix seconds"), (" 1796205600", "expected unix seconds"),
    ("\uff12\uff10\uff12\uff16-12-02", "expected unix seconds"),
])
def test_times_are_strict(hist, value, words):
    response = hist.get("/api/host/history?from=1796000000&to=" + quote(value))
    assert response.status == 400, value
    error = response_json(response)["error"]
    assert "'to'" in error and words in error, error


def test_a_bug_in_a_route_is_a_500_not_a_dropped_connection(app_factory, caplog):
    """The last line of defence (the real fix is the 4xx): an exception no route
    expected is logged and answered 500 JSON; the server keeps serving."""
    app, port = app_factory(["--demo", "--listen", "127.0.0.1:0"])

    def broken():
        raise RuntimeError("a bug")
    app.gpus_json = broken            # fault injection: no route raises on purpose
    response = http_request(port, "GET", "/api/gpus")
    assert response.status == 500 and "RuntimeError" in response_json(response)["error"]
    assert "event=http_handler_exception" in caplog.text
    assert http_request(port, "GET", "/api/version").status == 200
