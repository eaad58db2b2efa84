"""A WebSocket echo server built from amdgpu_top_web's OWN pieces, for the
Autobahn|Testsuite conformance run (tests/test_autobahn.py).

Nothing here speaks WebSocket by itself: the opening handshake goes through
the module's ``check_upgrade``/``build_upgrade_response``, and every byte
after it through the production ``Hub`` (FrameDecoder, MessageAssembler,
encode_frame, the close handshake, the queues). The only stand-in is the
application object: ``EchoProtocol`` sends every message back, where the
real server plugs in ``DashboardProtocol``.

The accept loop mirrors ``DashboardHandler.route_ws``/``_hand_over``: read
the request head, check it, reserve a hub slot, send 101, hand the socket
and any bytes read past the head to ``hub.add_client``.

Run by hand (prints the URL, Ctrl-C stops):
    python tests/autobahn/echo_server.py [port]
"""

import os
import socket
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import amdgpu_top_web as atw  # noqa: E402  (after the sys.path tweak)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024     # Autobahn 9.* sends up to 16 MiB
MAX_HEAD_BYTES = 16 * 1024               # an HTTP request head larger is refused
HANDSHAKE_TIMEOUT_S = 10.0


class EchoProtocol(object):
    """The hub's application side: echo every message (Autobahn's testee)."""

    def on_open(self, client):
        return []

    def on_text(self, client, text):
        return [atw.encode_frame(atw.Opcode.TEXT, text.encode("utf-8"))]

    def on_binary(self, client, data):
        return [atw.encode_frame(atw.Opcode.BINARY, data)]

    def wants(self, client, frame):
        return False          # no broadcast frames in an echo server


def make_hub():
    return atw.Hub(EchoProtocol(), max_clients=64, write_timeout_s=30, read_timeout_s=60,
                   max_message_bytes=MAX_MESSAGE_BYTES)


def parse_request_head(head):
    """``b"GET / HTTP/1.1\\r\\nName: v..."`` -> (method, {lower name: value}).

    Repeated fields are joined with ", " (what check_upgrade expects)."""
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0]
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    return method, headers


def _http_error(sock, status, message, extra=()):
    body = (message + "\n").encode("utf-8")
    lines = ["HTTP/1.1 %d %s" % (status, message), "Content-Type: text/plain",
             "Content-Length: %d" % len(body), "Connection: close"]
    lines += ["%s: %s" % item for item in extra]
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    except OSError:
        pass


class EchoServer(object):
    """Listening socket on ``host:port`` (0: any free port) + the hub thread.

    ``start()`` returns self; ``url`` is ``ws://host:port``; ``stop()`` closes
    the listener and stops (joins) the hub. ``handshake_errors`` counts
    refused handshakes, for the test to report.
    """

    def __init__(self, host="127.0.0.1", port=0):
        self.hub = make_hub()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(64)
        self.host, self.port = self.listener.getsockname()[:2]
        self.url = "ws://%s:%d" % (self.host, self.port)
        self.handshake_errors = []
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="autobahn-accept")
        self._acceptor.daemon = True

    def start(self):
        self.hub.start()
        self._acceptor.start()
        return self

    def stop(self):
        self._stopping.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self._acceptor.join(5.0)
        self.hub.stop()
        self.hub.join(10.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, addr = self.listener.accept()
            except OSError:
                return      # listener closed by stop()
            worker = threading.Thread(target=self._handshake, args=(sock, addr),
                                      name="autobahn-handshake")
            worker.daemon = True
            worker.start()

    def _handshake(self, sock, addr):
        """One connection: the opening handshake, then hand it to the hub."""
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk or len(buf) > MAX_HEAD_BYTES:
                    self.handshake_errors.append((addr, "no complete request head"))
                    sock.close()
                    return
                buf += chunk
            head, _, leftover = buf.partition(b"\r\n\r\n")
            method, headers = parse_request_head(head)
            try:
                key = atw.check_upgrade(method, headers)
            except atw.HandshakeError as exc:
                self.handshake_errors.append((addr, str(exc)))
                _http_error(sock, exc.status, exc.message, exc.headers.items())
                sock.close()
                return
            if not self.hub.reserve_slot():
                self.handshake_errors.append((addr, "no hub slot"))
                _http_error(sock, 503, "Service Unavailable")
                sock.close()
                return
            try:
                sock.sendall(atw.build_upgrade_response(key))
            except OSError:
                self.hub.release_slot()
                sock.close()
                return
            sock.settimeout(None)
            self.hub.add_client(sock, "%s:%s" % addr[:2], leftover)
        except OSError as exc:
            self.handshake_errors.append((addr, "socket error: %s" % exc))
            sock.close()


def main(argv):
    port = int(argv[1]) if len(argv) > 1 else 9001
    server = EchoServer(port=port).start()
    print("echo server (amdgpu_top_web hub) on %s" % server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv)
