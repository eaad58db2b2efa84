"""Start/stop behaviour: signals close every WebSocket with 1001 and exit 0
quickly (a real subprocess), and an in-process App leaves no thread or file
descriptor behind after many clients came and went."""

import gc
import http.client
import inspect
import os
import signal
import socket
import struct
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import amdgpu_top_web as atw
from wsclient import RawWebSocket, build_request, handshake_headers

FAST = {"APP_SAMPLE_INTERVAL": "100ms"}
EXIT_LIMIT_S = 2.5          # SPEC §2: exit within 2 s (plus a little scheduling slack)


def _websockets_kwargs():
    params = inspect.signature(ws_connect).parameters
    kwargs = {"proxy": None} if "proxy" in params else {}
    if "legacy" in params:
        kwargs["legacy"] = True
    return kwargs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_websockets_1001_and_exits_0(server, signum):
    proc = server("multi_gpu", env=FAST)
    proc.wait_metrics(count=3)
    raw = RawWebSocket.connect("127.0.0.1", proc.port)
    lib = ws_connect(proc.ws_url, open_timeout=5, close_timeout=2, max_size=1 << 24,
                     **_websockets_kwargs())
    try:
        assert raw.recv_json()["type"] == "hello"
        assert '"type":"hello"' in lib.recv(timeout=3)
        sent_at = time.monotonic()
        proc.signal(signum)
        code, _, _ = raw.recv_close(timeout=EXIT_LIMIT_S)
        raw.send_close(code)                          # answer it, as a browser would
        lib_code = None
        deadline = time.monotonic() + EXIT_LIMIT_S
        while time.monotonic() < deadline:
            try:
                lib.recv(timeout=max(0.01, deadline - time.monotonic()))
            except ConnectionClosed as exc:
                lib_code = exc.rcvd.code if exc.rcvd is not None else None
                break
            except TimeoutError:
                break
        rc = proc.proc.wait(timeout=5)
        elapsed = time.monotonic() - sent_at
        print("%s: exit %d after %.3f s" % (signal.Signals(signum).name, rc, elapsed))
        assert code == 1001
        assert lib_code == 1001
        assert rc == 0
        assert elapsed < EXIT_LIMIT_S
        assert raw.wait_eof(1.0)
    finally:
        raw.close()
        lib.close()


# --- no leaks (in-process) -------------------------------------------------------

def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def _ws_clean_close(port):
    ws = RawWebSocket.connect("127.0.0.1", port)
    assert ws.recv_json()["type"] == "hello"
    ws.send_close(1000)
    code, _, _ = ws.recv_close()
    assert code == 1000
    assert ws.wait_eof(3.0)
    ws.close()


def _ws_drop_tcp(port):
    ws = RawWebSocket.connect("127.0.0.1", port)
    assert ws.recv_json()["type"] == "hello"
    ws.close()                                     # FIN, no Close frame


def _ws_reset(port):
    ws = RawWebSocket.connect("127.0.0.1", port)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()                                     # RST, unread hello pending


def _ws_mid_handshake(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    request = build_request("GET", "/ws", handshake_headers("127.0.0.1:%d" % port))
    sock.sendall(request[:len(request) // 2])      # half the request, then gone
    sock.close()


CLIENT_PATTERNS = (_ws_clean_close, _ws_drop_tcp, _ws_reset, _ws_mid_handshake)


def _http_keepalive(port, requests, keep_open):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for index in range(requests):
        path = ("/api/gpus", "/api/healthz", "/api/gpus/card0/history", "/nope",
                "/api/version")[index % 5]
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status in (200, 404)
        assert not response.will_close
    if keep_open:
        return conn
    conn.close()
    return None


def _wait_equal(probe, expected, timeout):
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        value = probe()
        if value == expected or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def test_no_thread_or_fd_leaks(app_factory):
    gc.collect()
    threads_before = set(threading.enumerate())
    fds_before = _fd_count()
    app, port = app_factory(["--listen", "127.0.0.1:0", "--demo"])
    assert app.cache.ready.wait(5)

    for index in range(50):
        CLIENT_PATTERNS[index % len(CLIENT_PATTERNS)](port)
    leftovers = []
    for index in range(10):                          # 50 keep-alive requests
        conn = _http_keepalive(port, 5, keep_open=index < 2)
        if conn is not None:
            leftovers.append(conn)
    # Still connected while stopping: WebSocket clients and half handshakes.
    open_ws = [RawWebSocket.connect("127.0.0.1", port) for _ in range(3)]
    for ws in open_ws:
        assert ws.recv_json()["type"] == "hello"
    half = socket.create_connection(("127.0.0.1", port), timeout=5)
    half.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    time.sleep(0.3)                                  # let the hub drop the dropped ones
    assert app.hub.client_count() == 3

    started = time.monotonic()
    app.stop()
    stop_s = time.monotonic() - started
    print("app.stop() took %.3f s" % stop_s)
    assert stop_s < 2.5
    for ws in open_ws:
        code, _, _ = ws.recv_close(timeout=1.0)
        assert code == 1001
        assert ws.wait_eof(1.0)
        ws.close()
    for conn in leftovers:
        conn.close()
    half.close()

    threads_after = _wait_equal(lambda: set(threading.enumerate()), threads_before, 3.0)
    assert sorted(t.name for t in threads_after - threads_before) == []
    assert threads_after == threads_before
    fds_after = _wait_equal(_fd_count, fds_before, 3.0)
    if fds_after != fds_before:
        print(os.listdir("/proc/self/fd"))
    assert fds_after == fds_before


def test_http_shutdown_does_not_wait_out_the_poll_interval():
    """The accept loop polls rarely (HTTP_POLL_S, no wake-up at rest);
    shutdown() wakes it with a connection of its own: with an hour-long
    poll, stop still returns."""
    server = atw.DashboardServer(("127.0.0.1", 0), None)
    thread = threading.Thread(target=server.serve_forever, args=(3600.0,))
    thread.daemon = True
    thread.start()
    done = threading.Thread(target=server.shutdown)
    done.daemon = True
    done.start()
    done.join(30.0)
    thread.join(30.0)
    server.server_close()
    assert not done.is_alive() and not thread.is_alive()
