"""The fleet from peers: every server's GET /api/fleet/host, a hub's poller
(GET /api/fleet, the /ws fleet subscription, /plain, --once), the peer list
and token parsers. Real servers on loopback (--demo peers with their own
--demo-gpus) and, for the peers that misbehave, raw sockets served by this
process (a peer that hangs, answers garbage, redirects, lies about its
content type, sends a huge body, needs a token)."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

import amdgpu_top_web as m
from conftest import PROGRAM, REPO, server_env, wait_for
from wsclient import RawWebSocket, read_request_head

HUB_ENV = {"APP_FLEET_INTERVAL": "500ms", "APP_FLEET_TIMEOUT": "1s"}
TOKEN = "fleet-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdef"


# -- helpers -------------------------------------------------------------------

def http_answer(status, content_type, body, extra=b""):
    head = b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status, content_type.encode(), len(body), extra)
    return head + body


class FakePeer(object):
    """A peer on a loopback port served by this process: answer(path) gives the
    raw bytes to send back (then the connection is closed), an iterable of
    pieces sent one by one as it yields them, or None to hang (accept, read
    the request, never answer)."""

    def __init__(self, answer, name="fake", events=None, keep=False):
        self.answer, self.name, self.keep = answer, name, keep      # keep: serve the next request
        self.events = events if events is not None else []     # (name, "request"|"closed")
        self.paths = []
        self.conns = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, name="fake-peer")
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="fake-peer-conn")
            thread.daemon = True
            thread.start()

    def _serve(self, conn):
        try:
            while self._serve_one(conn) and self.keep:
                pass
        except OSError:
            pass

    def _serve_one(self, conn):
        data = read_request_head(conn)
        if data is None:
            return False
        self.paths.append(data.split(b" ")[1].decode())
        self.events.append((self.name, "request"))
        reply = self.answer(self.paths[-1])
        if reply is None:               # hang: silent until the hub closes its end
            while conn.recv(4096):
                pass
            self.events.append((self.name, "closed"))
            return False
        for piece in [reply] if isinstance(reply, bytes) else reply:
            conn.sendall(piece)
        if not self.keep:
            conn.close()
        return True

    def close(self):
        """close() alone does not wake a thread blocked in accept(), which
        holds a reserved fd number meanwhile (the kernel counts it in
        /proc/self/fd's st_size, which test_procscan's calibration reads):
        shutdown() does."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def fake_peer():
    made = []

    def make(answer, name="fake", events=None, keep=False):
        made.append(FakePeer(answer, name, events, keep))
        return made[-1]
    yield make
    for peer in made:
        peer.close()


@pytest.fixture(scope="module")
def peers(server_module):
    """Three --demo peers with 1, 2 and 3 GPUs."""
    procs = [server_module(args=["--demo", "--demo-gpus", str(n)]) for n in (1, 2, 3)]
    for n, proc in zip((1, 2, 3), procs):
        proc.wait_metrics(count=n)
    return procs


def start_hub(server, peers_setting, tmp_path, env=None, gpus=False):
    """A hub polling every 500 ms; without GPUs of its own unless gpus."""
    env = dict(HUB_ENV, APP_FLEET_PEERS=peers_setting, **(env or {}))
    return server(env=env, sysfs_root=None if gpus else str(tmp_path))


def fleet(hub):
    status, body = hub.get_json("/api/fleet")
    assert status == 200
    return body


def hosts(message):
    return dict((host["name"], host) for host in message["hosts"])


def wait_fleet(hub, predicate, timeout=15.0, message="the fleet"):
    """Poll /api/fleet until predicate(hosts by name) holds; -> that fleet."""
    found = []

    def check():
        body = fleet(hub)
        if predicate(hosts(body)):
            found.append(body)
            return True
        return False
    wait_for(check, timeout, interval=0.1, message=message)
    return found[-1]


def host_answer(gpus=1):
    gpu = m.build_fleet_gpu({"id": "card0", "name": "Fake", "vendor": "amd"},
                            {"gpu_busy_pct": 50, "power_w": 100.0}, None, None)
    return m.build_fleet_host("fake", "local", "/", "up", 0, None, "0.0.1", None,
                              [dict(gpu, id="card%d" % i) for i in range(gpus)], [])


# -- parsers and pure helpers ------------------------------------------------------

def test_parse_fleet_peer_forms():
    peer = m.parse_fleet_peer("gpu-a=http://10.0.0.5:8080")
    assert peer == m.FleetPeer("gpu-a", "http://10.0.0.5:8080", "http", "10.0.0.5", 8080)
    assert m.parse_fleet_peer("https://Box.Example/").name == "box.example:443"
    assert m.parse_fleet_peer("six=http://[::1]:9/pre/").url == "http://[::1]:9/pre"
    with pytest.raises(ValueError) as info:
        m.parse_fleet_peer("http://[::1]:9")        # a name, not "[::1]:9" (a path segment)
    assert "needs a name" in str(info.value)
    assert m.parse_fleet_peer("b:8080", "https").url == "https://b:8080"
    for bad in ("ftp://x:1", "http://u:p@x:1", "http://x:1/?q=1", "a b=http://x:1", "x:1",
                "http://x:99999"):
        with pytest.raises(ValueError):
            m.parse_fleet_peer(bad)


def test_parse_fleet_peer_list_lines_and_file_sd():
    lines = "# the lab\na=http://h1:8080  # first\n\nhttp://h2:8080\n"
    assert [p.name for p in m.parse_fleet_peer_list(lines)] == ["a", "h2:8080"]
    file_sd = json.dumps([{"targets": ["h1:8080", "h2:8080"]},
                          {"targets": ["h3:443"], "labels": {"__scheme__": "https"}}])
    assert [p.url for p in m.parse_fleet_peer_list(file_sd)] == [
        "http://h1:8080", "http://h2:8080", "https://h3:443"]
    for bad in ("a=http://h1:1\na=http://h2:1", "[{\"targets\": 5}]", "[nope", "{}"):
        with pytest.raises(ValueError):
            m.parse_fleet_peer_list(bad)


def test_parse_fleet_peers_setting_and_tokens():
    assert m.parse_fleet_peers_setting("") is None
    spec = m.parse_fleet_peers_setting("a=http://h1:1, http://h2:2")
    assert [p.name for p in spec.peers] == ["a", "h2:2"] and spec.path is None
    assert m.parse_fleet_peers_setting("@/etc/peers") == m.FleetPeersSpec((), "/etc/peers")
    with pytest.raises(ValueError):
        m.parse_fleet_peers_setting("@")
    tokens = m.parse_fleet_tokens("# tokens\na %s\n* %s\n" % (TOKEN, WRONG))
    assert m.fleet_peer_token(tokens, "a") == TOKEN and m.fleet_peer_token(tokens, "b") == WRONG
    assert m.fleet_peer_token({}, "a") is None
    with pytest.raises(ValueError) as info:
        m.parse_fleet_tokens("a short\n")
    assert "short" not in str(info.value) and "line 1" in str(info.value)


def run_program(args, tmp_path, **env):
    return subprocess.run([sys.executable, PROGRAM] + list(args), cwd=REPO,
                          env=server_env(sysfs_root=str(tmp_path), env=env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=60)


@pytest.mark.parametrize("env,name", [
    ({"APP_FLEET_PEERS": "ftp://x:1"}, "APP_FLEET_PEERS"),
    ({"APP_FLEET_PEERS": "a=http://x:1,a=http://y:1"}, "APP_FLEET_PEERS"),
    ({"APP_FLEET_PEERS": "@/no/such/peers"}, "APP_FLEET_PEERS"),
    ({"APP_FLEET_INTERVAL": "100ms"}, "APP_FLEET_INTERVAL"),
    ({"APP_FLEET_TIMEOUT": "nope"}, "APP_FLEET_TIMEOUT"),
    ({"APP_FLEET_TOKEN_FILE": "/no/such/tokens"}, "APP_FLEET_TOKEN_FILE"),
    ({"APP_FLEET_PEERS": "http://x:1", "APP_FLEET_PROMETHEUS_URL": "http://p:9090"},
     "APP_FLEET_PROMETHEUS_URL"),
])
def test_bad_fleet_settings_exit_2_with_one_line_naming_them(env, name, tmp_path):
    result = run_program(["--listen", "127.0.0.1:0"], tmp_path, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("amdgpu_top_web: error: " + name), result.stderr


def test_a_bad_token_file_line_is_named_without_its_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a %s\nb secretive\n" % TOKEN)
    result = run_program(["--listen", "127.0.0.1:0"], tmp_path, APP_FLEET_TOKEN_FILE=str(path),
                         APP_FLEET_PEERS="a=http://127.0.0.1:1")
    assert result.returncode == 2 and "line 2" in result.stderr
    assert TOKEN not in result.stderr and "secretive" not in result.stderr


def test_peer_states_and_backoff():
    assert m.compute_fleet_peer_state("ok", 0.0, 2.0) == "up"
    assert m.compute_fleet_peer_state("ok", 10.0, 2.0) == "stale"     # not asked for 5 rounds
    assert m.compute_fleet_peer_state("refused", 0.0, 2.0) == "refused"
    assert m.compute_fleet_peer_state("failed", 9.9, 2.0) == "stale"
    assert m.compute_fleet_peer_state("failed", 10.0, 2.0) == "down"
    assert m.compute_fleet_peer_state("failed", None, 2.0) == "down"
    assert m.compute_fleet_peer_state(None, None, 2.0) == "down"
    assert [m.compute_fleet_backoff_s(n, 2.0) for n in (1, 2, 3, 4, 5, 9)] == [2, 4, 8, 16, 16, 16]
    assert m.compute_fleet_backoff_s(9, 10.0) == 30.0 and m.compute_fleet_backoff_s(9, 60.0) == 60.0


def test_peer_answers_refused_with_a_reason():
    ok = json.dumps(host_answer()).encode()
    assert m.parse_fleet_json(200, "application/json; charset=utf-8", ok, False)["gpus"]
    cases = [((401, "application/json", b"{}", False), "token needed"),
             ((401, "application/json", b"{}", True), "token refused"),
             ((403, "application/json", b"{}", True), "token refused"),
             ((302, "text/html", b"", False), "redirect"),
             ((500, "application/json", b"{}", False), "HTTP 500"),
             ((200, "application/json", None, False), "over 4 MiB"),
             ((200, "text/html", ok, False), "wrong content type"),
             ((200, "application/json", b"{nope", False), "bad JSON"),
             ((200, "application/json", b"[" * 100000, False), "bad JSON"),
             ((200, "application/json", b"\xff", False), "bad JSON")]
    for args, reason in cases:
        with pytest.raises(ValueError) as info:
            m.parse_fleet_json(*args)
        assert reason in str(info.value), args


def test_a_hostile_answer_keeps_only_the_fleet_keys():
    answer = host_answer()
    answer["gpus"][0].update(name="x" * 5000, power_w=[1, 2], extra="no", alert="fire",
                             top_process={"pid": 1, "name": {"a": 1}, "cmd": "secret"})
    answer["host"] = {"cpu_busy_pct": 5, "evil": 1}
    parsed = m.parse_fleet_host_answer(json.loads(json.dumps(answer)))
    gpu = parsed["gpus"][0]
    assert set(gpu) == set(m.FLEET_GPU_KEYS) and len(gpu["name"]) == m.FLEET_TEXT_MAX
    assert gpu["power_w"] is None and gpu["alert"] is None
    assert gpu["top_process"] == {"pid": 1, "name": None, "user": None, "vram_bytes": None,
                                  "gpu_pct": None, "who": None}
    assert set(parsed["host"]) == set(m.FLEET_HOST_KEYS)
    for bad in ([], {"gpus": {}}, {"gpus": [1]}, {"gpus": [], "alerts": 3}):
        with pytest.raises(ValueError):
            m.parse_fleet_host_answer(bad)


def test_the_top_process_and_totals():
    rows = [m.build_proc_row(pid=5, name="big", vram_bytes=8 << 30, gtt_bytes=0),
            m.build_proc_row(pid=7, name="busy", user="bob", vram_bytes=1 << 30, gtt_bytes=0,
                             gpu_time_ms_per_s=420.0, slurm={"job": 48213, "step": "0"})]
    gpu = m.build_fleet_gpu({"id": "card0", "vendor": "amd"}, {"gpu_busy_pct": 42},
                            {"processes": rows}, "critical")
    assert gpu["top_process"] == {"pid": 7, "name": "busy", "user": "bob", "vram_bytes": 1 << 30,
                                  "gpu_pct": 42.0, "who": "job 48213 step 0"}   # the fleet row's job
    assert gpu["processes"] == 2 and gpu["alert"] == "critical"
    by_vram = m.build_fleet_gpu({"id": "card0", "vendor": "amd"}, None, {"processes": rows[:1]}, None)
    assert by_vram["top_process"]["pid"] == 5 and by_vram["gpu_busy_pct"] is None
    assert m.build_fleet_gpu({"id": "c"}, None, None, None)["processes"] is None

    def host(state, *gpus):
        return {"state": state, "gpus": [dict(g) for g in gpus]}
    busy, idle = {"gpu_busy_pct": 10, "power_w": 100.0}, {"gpu_busy_pct": 9.9, "power_w": None}
    lost = {"gpu_busy_pct": 99, "runtime_status": "lost", "power_w": 50.0}
    totals = m.compute_fleet_totals([host("up", busy, idle, lost), host("stale", busy),
                                     host("refused"), host("down", idle)])
    assert totals == {"hosts": 4, "hosts_up": 1, "hosts_down": 3, "gpus": 5, "gpus_busy": 1,
                      "gpus_idle": 1, "gpus_down": 3, "power_w": 100.0}
    assert m.compute_fleet_totals([])["power_w"] is None


def test_a_top_process_read_from_prometheus_says_who_from_its_labels():
    assert m.prom_who_label({"pod": "trainer-0", "namespace": "ml", "container": "main",
                             "unit": "x.scope"}) == "ml/trainer-0 main"
    assert m.prom_who_label({"slurm_job": "48213", "slurm_step": "batch"}) == "job 48213 step batch"
    assert m.prom_who_label({"container_id": "0123456789ab"}) == "container 0123456789ab"
    assert m.prom_who_label({"unit": "ollama.service"}) == "ollama.service"
    assert m.prom_who_label({"slurm_job": "x"}) is None and m.prom_who_label({}) is None
    queries = dict(m.build_prom_fleet_queries())
    assert all(label in queries["top_process"] for label in m.PROM_WHO_LABELS)


def test_plain_counts_each_hosts_gpus_as_the_totals_do():
    """/plain's and --once's per-host busy / idle / down: a lost GPU, and every
    GPU of a host not up, is down (not idle), as in the fleet's totals."""
    busy, idle = {"gpu_busy_pct": 10, "power_w": 100.0}, {"gpu_busy_pct": 9.9, "power_w": 20.0}
    lost = {"gpu_busy_pct": 99, "runtime_status": "lost", "power_w": 50.0}
    hosts_in = [m.build_fleet_host("up", "peer", "/hosts/up/", "up", 0, None, None, None,
                                   [dict(host_answer()["gpus"][0], **g) for g in (busy, idle, lost)], []),
                m.build_fleet_host("stale", "peer", "/hosts/stale/", "stale", 0, "timed out", None,
                                   None, [dict(host_answer()["gpus"][0], **g) for g in (busy, idle)], [])]
    message = m.build_fleet_message(0, "peers", 2.0, hosts_in)
    summaries = [m.fleet_host_summary(host) for host in message["hosts"]]
    assert summaries == [(1, 1, 1, 120.0), (0, 0, 2, None)]
    totals = message["totals"]
    assert [sum(column) for column in list(zip(*summaries))[:3]] == [
        totals["gpus_busy"], totals["gpus_idle"], totals["gpus_down"]]
    assert [m.format_fleet_host(host)[3] for host in message["hosts"]] == ["1 / 1 / 1", "0 / 0 / 2"]
    plain = "".join(m._plain_fleet(message))
    assert "GPUs busy / idle / down" in plain and "<td>0 / 0 / 2</td>" in plain
    assert "GPUs busy / idle / down 0 / 0 / 2" in m.format_once_fleet(message)


def test_parse_http_head():
    status, fields, keep = m.parse_http_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                             b"Content-Length:  12 ")
    assert (status, fields, keep) == (200, {"content-type": "application/json",
                                            "content-length": "12"}, True)
    assert m.parse_http_head(b"HTTP/1.1 204 \r\nConnection: close")[2] is False
    assert m.parse_http_head(b"HTTP/1.0 200 OK")[2] is False
    assert m.parse_http_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive")[2] is True
    for bad in (b"garbage", b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 200 OK\r\nno colon",
                b"HTTP/1.1 200 OK\r\n: empty name", b"ICY 200 OK"):
        with pytest.raises(ValueError):
            m.parse_http_head(bad)


def test_a_fleet_frame_goes_out_only_when_the_fleet_changed():
    """publish_fleet keeps every round's message but pushes a frame only when
    something besides ts changed."""
    cache = m.Cache(0.25, {})
    frames = []
    cache.add_listener(frames.append)
    host = host_answer()
    assert cache.publish_fleet(m.build_fleet_message(1000.0, "peers", 2.0, [host]))
    assert not cache.publish_fleet(m.build_fleet_message(1002.0, "peers", 2.0, [host]))
    assert cache.fleet()[0]["ts"] == m.format_ts(1002.0)      # the newest kept all the same
    moved = dict(host, gpus=[dict(host["gpus"][0], gpu_busy_pct=51)])
    assert cache.publish_fleet(m.build_fleet_message(1004.0, "peers", 2.0, [moved]))
    assert [f.kind for f in frames] == ["fleet", "fleet"]
    assert json.loads(frames[-1].payload)["hosts"][0]["gpus"][0]["gpu_busy_pct"] == 51


# -- every server: its own host entry ------------------------------------------------

def test_every_server_answers_its_own_fleet_host(peers):
    # its host frame comes with the first CPU sample (null before: a busy machine's first test)
    status, body = wait_for(lambda: (lambda answer: answer[1]["host"] and answer)(
        peers[1].get_json("/api/fleet/host")), 15, 0.1, "the peer's host frame")
    assert status == 200
    assert body["name"] == socket.gethostname() and body["source"] == "local"
    assert body["page"] == "/" and body["state"] == "up" and body["error"] is None
    assert body["version"] == m.__version__ and body["last_seen"].endswith("Z")
    assert [g["id"] for g in body["gpus"]] == ["card0", "card1"]
    assert set(body["gpus"][0]) == set(m.FLEET_GPU_KEYS)
    assert body["gpus"][0]["gpu_busy_pct"] is not None and body["host"]["cpu_count"] >= 1


def test_a_server_without_a_fleet_source_is_its_own_fleet(peers):
    body = fleet(peers[2])
    assert body["type"] == "fleet" and body["source"] == "local"
    assert [h["source"] for h in body["hosts"]] == ["local"] and len(body["hosts"][0]["gpus"]) == 3
    assert body["totals"]["hosts"] == 1 and body["totals"]["gpus"] == 3
    with RawWebSocket.connect("127.0.0.1", peers[2].port) as ws:
        assert ws.recv_json()["features"]["fleet"] is None
        ws.send_json({"type": "subscribe", "gpu_id": "fleet", "host": False})
        reply, _ = ws.recv_until(lambda f: f.get("type") == "subscribed")
        assert reply["gpu_id"] == "fleet"
        frame, skipped = ws.recv_until(lambda f: f.get("type") == "fleet")
        assert frame["source"] == "local" and not [f for f in skipped if f["type"] == "stats"]


# -- a hub and its peers ----------------------------------------------------------------

def test_a_hub_shows_its_peers_over_http_ws_and_plain(server, peers, tmp_path):
    setting = ",".join("p%d=%s" % (n, proc.url) for n, proc in zip((1, 2, 3), peers))
    hub = start_hub(server, setting, tmp_path)
    body = wait_fleet(hub, lambda h: all(h["p%d" % n]["state"] == "up" for n in (1, 2, 3)))
    assert body["source"] == "peers" and body["interval_s"] == 0.5 and body["error"] is None
    assert [h["name"] for h in body["hosts"]] == ["p1", "p2", "p3"]    # no local host: no GPU
    assert [len(h["gpus"]) for h in body["hosts"]] == [1, 2, 3]
    assert all(h["source"] == "peer" and h["page"] == "/hosts/%s/" % h["name"] for h in body["hosts"])
    assert body["totals"]["hosts"] == 3 and body["totals"]["hosts_up"] == 3
    assert body["totals"]["gpus"] == 6 and body["totals"]["gpus_down"] == 0
    with RawWebSocket.connect("127.0.0.1", hub.port) as ws, \
            RawWebSocket.connect("127.0.0.1", hub.port) as other:
        hello = ws.recv_json()
        assert hello["features"]["fleet"] == {"source": "peers", "interval_s": 0.5, "hosts": 3}
        other.recv_json()
        other.send_json({"type": "subscribe", "gpu_id": "*"})
        ws.send_json({"type": "subscribe", "gpu_id": "fleet"})
        first, _ = ws.recv_until(lambda f: f.get("type") == "fleet")
        assert [h["name"] for h in first["hosts"]] == ["p1", "p2", "p3"]
        pushed, _ = ws.recv_until(lambda f: f.get("type") == "fleet" and f["ts"] != first["ts"])
        assert pushed["hosts"][0]["last_seen"] != first["hosts"][0]["last_seen"]
        _, seen = other.recv_until(lambda f: f.get("type") == "subscribed")
        frames = [other.recv_json(0.3) for _ in range(5)]
        assert "fleet" not in [f and f.get("type") for f in seen + frames]
    page = hub.get("/plain").body.decode()
    assert page.index("Fleet") < page.index("p1") < page.index("p2") < page.index("p3")
    line = hub.wait_log(r"event=no_gpu")     # a hub without GPUs of its own is no mistake
    assert "level=INFO" in line and "Fleet view" in line and "--demo" not in line


def test_the_hub_lists_its_own_gpus_first(server, peers, tmp_path):
    hub = start_hub(server, "p1=" + peers[0].url, tmp_path, gpus=True)
    hub.wait_metrics()
    body = wait_fleet(hub, lambda h: h.get("p1", {}).get("state") == "up" and len(h) == 2)
    local = body["hosts"][0]
    assert local["source"] == "local" and local["page"] == "/" and local["gpus"]
    assert [h["name"] for h in body["hosts"][1:]] == ["p1"]
    assert body["totals"]["gpus"] == len(local["gpus"]) + 1


def test_a_killed_peer_goes_stale_then_down_and_comes_back(server, tmp_path):
    peer = server(args=["--demo", "--demo-gpus", "1"])
    port = peer.port
    # 1 s rounds: stale for 5 s after the kill, ample time to see it
    hub = start_hub(server, "p=" + peer.url, tmp_path, {"APP_FLEET_INTERVAL": "1s"})
    up = wait_fleet(hub, lambda h: h["p"]["state"] == "up")["hosts"][0]
    peer.stop()
    stale = wait_fleet(hub, lambda h: h["p"]["state"] != "up")["hosts"][0]
    assert stale["state"] == "stale" and stale["error"]
    assert len(stale["gpus"]) == 1 and stale["last_seen"] >= up["last_seen"]   # kept data
    down = wait_fleet(hub, lambda h: h["p"]["state"] == "down")["hosts"][0]
    assert down["gpus"] == stale["gpus"] and down["last_seen"] == stale["last_seen"]
    assert fleet(hub)["totals"]["gpus_down"] == 1
    server(args=["--demo", "--demo-gpus", "1", "--listen", "127.0.0.1:%d" % port])
    again = wait_fleet(hub, lambda h: h["p"]["state"] == "up", 25)["hosts"][0]
    assert again["error"] is None and again["last_seen"] > down["last_seen"]


def test_a_hanging_peer_never_holds_the_others(server, peers, fake_peer, tmp_path):
    """Listed first, a peer that accepts and never answers: the peers after it
    are asked while it still hangs (not after the hub gave up on it), the
    rounds go on, and it is cut at the timeout."""
    events = []
    hang = fake_peer(lambda path: None, "hang", events)
    body = json.dumps(host_answer(2)).encode()
    good = fake_peer(lambda path: http_answer(200, "application/json", body), "good", events)
    hub = start_hub(server, "hang=%s,good=%s,p2=%s" % (hang.url, good.url, peers[1].url), tmp_path)
    first = wait_fleet(hub, lambda h: h["good"]["state"] == "up" and h["p2"]["state"] == "up")
    assert hosts(first)["hang"]["state"] == "down"
    wait_for(lambda: ("hang", "closed") in events, 10, message="the hub cutting the hang")
    # asked at once (either first), and the good one before the hub gave up on the hang
    assert events.index(("good", "request")) < events.index(("hang", "closed"))
    assert events.index(("hang", "request")) < events.index(("hang", "closed"))
    for _ in range(3):      # round after round, the others are seen again
        seen = hosts(first)["p2"]["last_seen"]
        first = wait_fleet(hub, lambda h: h["p2"]["last_seen"] != seen and h["p2"]["state"] == "up")
        assert hosts(first)["good"]["state"] == "up"
    assert wait_fleet(hub, lambda h: h["hang"]["error"] == "timed out")["hosts"][0]["gpus"] == []
    assert hang.paths and all(p == "/api/fleet/host" for p in hang.paths)


def test_a_huge_number_from_a_peer_is_null_and_the_fleet_goes_on(server, peers, fake_peer,
                                                                  tmp_path):
    """An integer no float holds (sum() with a float raised OverflowError and
    every round failed) or past 2**53 is null, like any value of the wrong kind."""
    answer = host_answer(2)
    answer["gpus"][0].update(power_w=10 ** 400, gpu_busy_pct=-10 ** 300, temp_c=2 ** 53 + 1)
    answer["host"] = {"mem_total_bytes": 2 ** 53, "cpu_count": 10 ** 30}
    body = json.dumps(answer).encode()
    huge = fake_peer(lambda path: http_answer(200, "application/json", body))
    hub = start_hub(server, "huge=%s,p1=%s" % (huge.url, peers[0].url), tmp_path)
    body = wait_fleet(hub, lambda h: h["huge"]["state"] == "up" and h["p1"]["state"] == "up")
    gpus = hosts(body)["huge"]["gpus"]
    assert (gpus[0]["power_w"], gpus[0]["gpu_busy_pct"], gpus[0]["temp_c"]) == (None, None, None)
    assert gpus[1]["power_w"] == 100.0 and gpus[1]["gpu_busy_pct"] == 50
    assert hosts(body)["huge"]["host"]["mem_total_bytes"] == 2 ** 53
    assert hosts(body)["huge"]["host"]["cpu_count"] is None
    assert body["totals"]["gpus"] == 3 and body["totals"]["power_w"] is not None
    assert "p1" in hub.get("/plain").body.decode()


def drip(stop):
    """An answer that never ends: its head, then one body byte every 0.2 s
    (each read gets something well within the timeout) until stop is set or
    the hub closes its end."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    while not stop.wait(0.2):
        yield b" "


def test_peers_that_drip_their_answers_hold_no_worker(server, peers, fake_peer, tmp_path):
    """FLEET_WORKERS peers answer once, then send a byte now and then on the
    kept connection: each request ends at its timeout and is not sent again
    on a fresh connection after the cut, so the workers come back and the
    peer listed with them stays up round after round."""
    body = json.dumps(host_answer(1)).encode()
    stop = threading.Event()

    def dripper():      # the first request answered, every later one dripped
        asked = []

        def answer(path):
            asked.append(path)
            return http_answer(200, "application/json", body) if len(asked) == 1 else drip(stop)
        return answer
    drips = [fake_peer(dripper(), "d%d" % i, keep=True) for i in range(m.FLEET_WORKERS)]
    setting = ",".join(["p1=" + peers[0].url] + ["d%d=%s" % (i, d.url) for i, d in enumerate(drips)])
    hub = start_hub(server, setting, tmp_path)
    try:
        wait_fleet(hub, lambda h: all(h[n]["error"] == "timed out" for n in h if n != "p1"), 20,
                   "every dripping peer cut")
        for _ in range(4):      # every worker held: p1 is never asked again, stale, then down
            seen = hosts(fleet(hub))["p1"]["last_seen"]
            wait_fleet(hub, lambda h: h["p1"]["last_seen"] != seen and h["p1"]["state"] == "up",
                       10, "p1 asked again")
        wait_for(lambda: all(len(d.paths) >= 3 for d in drips), 20, message="the drips asked again")
    finally:
        stop.set()


def test_a_peer_connection_is_kept_from_round_to_round(server, fake_peer, tmp_path):
    body = json.dumps(host_answer(1)).encode()
    peer = fake_peer(lambda path: http_answer(200, "application/json", body), keep=True)
    hub = start_hub(server, "kept=" + peer.url, tmp_path)
    wait_for(lambda: len(peer.paths) >= 4, 15, message="four rounds")
    assert fleet(hub)["hosts"][0]["state"] == "up"
    assert len(peer.conns) == 1         # one connection, every request on it


def test_a_chunked_answer_without_trailers_is_read_at_once(server, fake_peer, tmp_path):
    """'0\\r\\n\\r\\n' ends a chunked body with no trailers (nginx's default): the
    answer is read without waiting for more, and the connection is kept."""
    body = json.dumps(host_answer(2)).encode()
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    peer = fake_peer(lambda path: chunked, keep=True)
    hub = start_hub(server, "nginx=" + peer.url, tmp_path)
    entry = wait_fleet(hub, lambda h: h["nginx"]["state"] == "up")["hosts"][0]
    assert entry["error"] is None and len(entry["gpus"]) == 2
    wait_for(lambda: len(peer.paths) >= 3, 15, message="three rounds")
    assert fleet(hub)["hosts"][0]["state"] == "up" and len(peer.conns) == 1


def test_lying_peers_are_refused_with_the_reason(server, peers, fake_peer, tmp_path):
    good = json.dumps(host_answer(2)).encode()
    answers = {
        "garbage": lambda path: b"garbage\r\n\r\nmore garbage",
        "redirect": lambda path: http_answer(302, "text/html", b"", b"Location: %s/api/fleet/host\r\n"
                                             % peers[0].url.encode()),
        "html": lambda path: http_answer(200, "text/html", good),
        "huge": lambda path: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\n\r\n[" + b"0," * (3 << 20),
        "biglength": lambda path: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 9999999999\r\n\r\n",
        "badjson": lambda path: http_answer(200, "application/json", b"{nope"),
        "badchunks": lambda path: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "hugechunks": lambda path: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n" + (b"100000\r\n" + b" " * (1 << 20) + b"\r\n") * 5,
        "notfleet": lambda path: http_answer(200, "application/json", b'{"hello": 1}'),
    }
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"%x;x=1\r\n%s\r\n" % (len(good[i:i + 700]), good[i:i + 700])
                        for i in range(0, len(good), 700)) + b"0\r\nX-Trailer: 1\r\n\r\n"
    answers.update(chunked=lambda path: chunked,
                   untilclose=lambda path: b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + good)
    fakes = dict((name, fake_peer(answer)) for name, answer in answers.items())
    setting = ",".join(["p1=" + peers[0].url] + ["%s=%s" % (n, f.url) for n, f in fakes.items()])
    hub = start_hub(server, setting, tmp_path)
    body = wait_fleet(hub, lambda h: all(h[n]["state"] != "down" for n in h))
    found = hosts(body)
    assert found["p1"]["state"] == "up" and found["chunked"]["state"] == "up"
    assert found["untilclose"]["state"] == "up" and len(found["chunked"]["gpus"]) == 2
    reasons = {"garbage": "not an HTTP answer", "redirect": "redirect (302): not followed",
               "html": "wrong content type", "huge": "answer over 4 MiB",
               "biglength": "answer over 4 MiB", "badjson": "bad JSON",
               "badchunks": "not an HTTP answer", "hugechunks": "answer over 4 MiB",
               "notfleet": "not a fleet answer"}
    for name, reason in reasons.items():
        assert found[name]["state"] == "refused", found[name]
        assert reason in found[name]["error"], (name, found[name]["error"])
        assert found[name]["gpus"] == [] and found[name]["last_seen"] is None
    assert body["totals"]["hosts_up"] == 3 and body["totals"]["hosts_down"] == len(reasons)


def test_an_older_peer_without_fleet_host_is_read_from_its_gpus_and_host(server, peers,
                                                                          fake_peer, tmp_path):
    gpus = peers[1].get_json("/api/gpus")[1]
    host = peers[1].get_json("/api/host")[1]

    def answer(path):
        if path == "/api/gpus":
            return http_answer(200, "application/json", json.dumps(gpus).encode())
        if path == "/api/host":
            return http_answer(200, "application/json", json.dumps(host).encode())
        return http_answer(404, "application/json", b'{"error": "not found"}')
    old = fake_peer(answer)
    hub = start_hub(server, "old=" + old.url, tmp_path)
    entry = wait_fleet(hub, lambda h: h["old"]["state"] == "up")["hosts"][0]
    assert [g["id"] for g in entry["gpus"]] == ["card0", "card1"]
    assert entry["gpus"][0]["processes"] is None and entry["host"]["cpu_count"] >= 1
    wait_for(lambda: len(old.paths) >= 5, 10, message="a second poll")
    assert old.paths[:5] == ["/api/fleet/host", "/api/gpus", "/api/host", "/api/gpus", "/api/host"]


def test_a_peer_behind_a_token(server, fake_peer, tmp_path):
    peer = server(args=["--demo", "--demo-gpus", "1"], env={"APP_AUTH_TOKEN": TOKEN})
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("tok %s\n" % TOKEN)
    wrong.write_text("* %s\n" % WRONG)
    hubs = [start_hub(server, "tok=" + peer.url, tmp_path, {"APP_FLEET_TOKEN_FILE": str(right)}),
            start_hub(server, "tok=" + peer.url, tmp_path),
            start_hub(server, "tok=" + peer.url, tmp_path, {"APP_FLEET_TOKEN_FILE": str(wrong)})]
    expected = [("up", None), ("refused", "token needed (401)"), ("refused", "token refused (401)")]
    for hub, (state, error) in zip(hubs, expected):
        entry = wait_fleet(hub, lambda h: h["tok"]["state"] != "down")["hosts"][0]
        assert (entry["state"], entry["error"]) == (state, error)
    assert len(fleet(hubs[0])["hosts"][0]["gpus"]) == 1
    for proc in hubs + [peer]:
        texts = [proc.get("/plain").body, proc.get("/api/fleet").body, proc.log().encode()]
        for text in texts:
            assert TOKEN.encode() not in text and WRONG.encode() not in text


def test_the_peer_file_is_read_again_and_a_broken_edit_keeps_the_last_list(server, peers, tmp_path):
    path = tmp_path / "peers.txt"
    path.write_text("p1=%s\n" % peers[0].url)
    hub = start_hub(server, "@" + str(path), tmp_path)
    wait_fleet(hub, lambda h: list(h) == ["p1"] and h["p1"]["state"] == "up")
    sd = [{"targets": [peers[0].url.split("//")[1], peers[1].url.split("//")[1]]}]
    path.write_text(json.dumps(sd))        # file_sd JSON, names from the targets
    names = [p.url.split("//")[1] for p in peers[:2]]
    wait_fleet(hub, lambda h: list(h) == names and all(x["state"] == "up" for x in h.values()))
    with RawWebSocket.connect("127.0.0.1", hub.port) as ws:
        assert ws.recv_json()["features"]["fleet"]["hosts"] == 2
    path.write_text("p1=%s\np1=%s\n" % (peers[0].url, peers[1].url))      # a name used twice
    broken = wait_for(lambda: (lambda body: body if body["error"] else None)(fleet(hub)), 15,
                      message="the fleet's error")
    assert "used twice" in broken["error"] and str(path) in broken["error"]
    assert [h["name"] for h in broken["hosts"]] == names
    hub.wait_log("event=fleet_peers_bad")
    path.write_text("p3=%s\n" % peers[2].url)
    fixed = wait_fleet(hub, lambda h: list(h) == ["p3"] and h["p3"]["state"] == "up")
    assert fleet(hub)["error"] is None and fixed["hosts"][0]["name"] == "p3"


def test_a_peer_file_rewritten_in_place_drops_no_peer_while_it_is_written(tmp_path):
    """A file truncated and written again in place: a look that finds it empty
    or half-written keeps the last list; a change is read once the same at two
    looks in a row, or at once when written FLEET_PEERS_SETTLE_S ago. (mtimes
    set ahead of the clock stand for 'just written', however slow the test.)"""
    path = tmp_path / "peers.txt"
    path.write_text("a=http://127.0.0.1:1\n")
    later = os.stat(str(path)).st_mtime + 3600

    def stamp(delta_s):
        os.utime(str(path), (later + delta_s, later + delta_s))
    stamp(0)
    peers = m.FleetPeerList(m.parse_fleet_peers_setting("@" + str(path)))
    assert [p.name for p in peers.current()] == ["a"]       # the first look reads it at once
    with open(str(path), "w") as fh:                        # truncated: an editor writing it
        stamp(1)
        assert [p.name for p in peers.current()] == ["a"]
        fh.write("a=http://127.0.0.1:1\nb=http://127.0.0.1:2\n")
        fh.flush()
        stamp(2)
        assert [p.name for p in peers.current()] == ["a"]   # changed since the last look
        assert [p.name for p in peers.current()] == ["a", "b"] and peers.error is None
    path.write_text("c=http://127.0.0.1:3\n")
    os.utime(str(path), (later - 7200, later - 7200))         # written long ago: read at once
    assert [p.name for p in peers.current()] == ["c"]
    path.write_text("")
    stamp(3)
    assert [p.name for p in peers.current()] == ["c"]
    assert peers.current() == () and peers.error is None    # emptied for good: seen twice


def test_once_on_a_hub_prints_the_fleet(peers, tmp_path):
    env = {"APP_FLEET_PEERS": "p1=%s,p2=%s,dead=http://127.0.0.1:1" % (peers[0].url, peers[1].url)}
    done = run_program(["--once", "--json"], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)
    assert snapshot["gpus"] == [] and snapshot["fleet"]["source"] == "peers"
    found = hosts(snapshot["fleet"])
    assert [found[n]["state"] for n in ("p1", "p2", "dead")] == ["up", "up", "down"]
    assert len(found["p2"]["gpus"]) == 2 and found["dead"]["error"] == "connection refused"
    text = run_program(["--once"], tmp_path, **env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(line.startswith("p2 ") and " up " in line for line in lines), text.stdout
    assert any(line.startswith("dead ") and "down" in line for line in lines), text.stdout
