"""A tiny raw-socket RFC 6455 client for the server tests.

It does exactly what a test asks and nothing more: no automatic pong, no
automatic close reply, so a test can break the protocol on purpose (unmasked
frames, invalid UTF-8, oversized messages, a client that never reads).
Server frames are parsed with the module's own decoder, told not to require
a mask (servers never mask, RFC 6455 §5.1).
"""

import base64
import json
import os
import socket
import struct
import time

from amdgpu_top_web import FrameDecoder, Opcode, accept_key, encode_frame

MAX_SERVER_FRAME = 1 << 24


class HandshakeRefused(Exception):
    """The server answered the opening handshake with something else than 101."""

    def __init__(self, status, headers, body):
        Exception.__init__(self, "handshake refused: HTTP %d %r" % (status, body[:200]))
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class ConnectionClosedByPeer(Exception):
    """The TCP connection ended (EOF or reset) while a frame was expected."""


def read_request_head(sock):
    """A peer's side: one request head (up to and with the blank line, plus any
    bytes after it), or None when the connection ends before it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


def read_http_response(sock, head_only=False, deadline=None):
    """Read one HTTP/1.1 response from a blocking socket.

    Returns (status, headers {lower-name: value}, body bytes, leftover bytes).
    The body is read by Content-Length (no chunked encoding: the server does
    not use it); ``head_only`` skips it (answers to HEAD).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock, deadline)
        if not chunk:
            raise ConnectionClosedByPeer("EOF inside the response head: %r" % data)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status == 101:
        return status, headers, b"", rest
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = _recv(sock, deadline)
        if not chunk:
            raise ConnectionClosedByPeer("EOF inside the response body")
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def _recv(sock, deadline):
    if deadline is not None:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
    return sock.recv(65536)


def build_request(method, path, headers):
    lines = ["%s %s HTTP/1.1" % (method, path)]
    lines += ["%s: %s" % (name, value) for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def random_key():
    return base64.b64encode(os.urandom(16)).decode("ascii")


def handshake_headers(host_header, key=None, origin=None, version="13", upgrade=True,
                      extra=()):
    """The header list of a client opening handshake (RFC 6455 §4.1);
    ``key=""`` leaves Sec-WebSocket-Key out, ``version=None`` the version."""
    headers = [("Host", host_header)]
    if upgrade:
        headers += [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if key != "":
        headers.append(("Sec-WebSocket-Key", key or random_key()))
    if version is not None:
        headers.append(("Sec-WebSocket-Version", version))
    if origin is not None:
        headers.append(("Origin", origin))
    return headers + list(extra)


class RawWebSocket(object):
    """One client connection. ``connect()`` does the handshake; then
    ``send_*`` writes masked frames and ``recv_frame`` returns server frames."""

    def __init__(self, sock, leftover=b""):
        self.sock = sock
        self.decoder = FrameDecoder(MAX_SERVER_FRAME, require_mask=False)
        self.decoder.feed(leftover)
        self.response_headers = {}

    # -- opening ---------------------------------------------------------------

    @classmethod
    def connect(cls, host, port, path="/ws", origin=None, host_header=None, timeout=5.0,
                rcvbuf=None, headers=None):
        """Connect and complete the handshake; raise HandshakeRefused on a
        non-101 answer. ``rcvbuf`` sets SO_RCVBUF before connecting (a tiny
        window for stuck-client tests)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((host, port))
            key = random_key()
            if headers is None:
                headers = handshake_headers(host_header or "%s:%d" % (host, port), key, origin)
            else:
                key = dict(headers).get("Sec-WebSocket-Key", key)
            sock.sendall(build_request("GET", path, headers))
            status, resp_headers, body, rest = read_http_response(
                sock, deadline=time.monotonic() + timeout)
            if status != 101:
                raise HandshakeRefused(status, resp_headers, body)
            if resp_headers.get("sec-websocket-accept") != accept_key(key):
                raise AssertionError("bad Sec-WebSocket-Accept: %r" % resp_headers)
        except BaseException:
            sock.close()
            raise
        client = cls(sock, rest)
        client.response_headers = resp_headers
        return client

    # -- sending ---------------------------------------------------------------

    def send_frame(self, opcode, payload, fin=True, masked=True):
        mask = os.urandom(4) if masked else None
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, mask=mask))

    def send_text(self, text):
        self.send_frame(Opcode.TEXT, text.encode("utf-8"))

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def send_binary(self, data):
        self.send_frame(Opcode.BINARY, data)

    def send_ping(self, payload=b""):
        self.send_frame(Opcode.PING, payload)

    def send_close(self, code=1000, reason=""):
        payload = b"" if code is None else struct.pack("!H", code) + reason.encode("utf-8")
        self.send_frame(Opcode.CLOSE, payload)

    def send_raw(self, data):
        self.sock.sendall(data)

    # -- receiving -------------------------------------------------------------

    def recv_frame(self, timeout=5.0):
        """The next server frame, or None when ``timeout`` passes first.
        Raises ConnectionClosedByPeer on EOF or reset."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ConnectionClosedByPeer(repr(exc))
            if not data:
                raise ConnectionClosedByPeer("EOF")
            self.decoder.feed(data)

    def recv_json(self, timeout=5.0, skip_control=True):
        """The next TEXT message as a dict (control frames skipped), or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            if frame.opcode == Opcode.TEXT:
                return json.loads(frame.payload.decode("utf-8"))
            if not skip_control or frame.opcode == Opcode.CLOSE:
                raise AssertionError("expected a TEXT frame, got %r" % (frame,))

    def recv_until(self, predicate, timeout=5.0):
        """Read TEXT messages until predicate(msg); returns (msg, skipped messages)."""
        deadline = time.monotonic() + timeout
        skipped = []
        while time.monotonic() < deadline:
            msg = self.recv_json(max(0.0, deadline - time.monotonic()))
            if msg is None:
                break
            if predicate(msg):
                return msg, skipped
            skipped.append(msg)
        raise AssertionError("no matching message within %.1fs; got %r"
                             % (timeout, [m.get("type") for m in skipped]))

    def recv_close(self, timeout=5.0):
        """Read until a CLOSE frame; return (code or None, reason, frames before it)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise AssertionError("no Close frame within %.1fs; got %r"
                                     % (timeout, [f.opcode for f in seen]))
            if frame.opcode == Opcode.CLOSE:
                payload = frame.payload
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return code, payload[2:].decode("utf-8"), seen
            seen.append(frame)

    def wait_eof(self, timeout=5.0):
        """True when the server ends the TCP connection (EOF or reset) within
        ``timeout``; any frames still arriving are discarded."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
