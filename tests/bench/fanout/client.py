#!/usr/bin/env python3
"""The WebSocket client harness of bench_fanout.py: many connections, ONE process.

One epoll loop drives every connection (raw non-blocking sockets, no thread
per client): it connects them (a bounded number of handshakes in flight),
does the RFC 6455 opening handshake, then reads every frame as soon as it is
readable. For each text frame carrying the bench's "sent_us" field (the
server's CLOCK_REALTIME in microseconds, taken at the tick) it records:

  kern_us  when the data reached this socket (SO_TIMESTAMPNS, kernel clock)
  user_us  when this process read it (time.time_ns() right after recvmsg)

so the parent can report tick-to-receive latency independent of how fast the
harness itself runs (kern) and as a plain reader sees it (user). PINGs get a
masked PONG, a CLOSE gets a CLOSE back (RFC 6455 §5.5); the same harness is
used against every server.

Protocol with the parent (bench_fanout.py):
  argv     --port P --count N --out PREFIX [--path /ws] [--inflight 32]
  stdout   "READY <open> <failed>" once every connection is open or failed,
           then, after "stop" on stdin, one JSON summary line
  files    PREFIX.sent / .kern / .user: int64 arrays (one entry per frame)
"""

import argparse
import array
import base64
import errno
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)     # asm-generic value
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
ANC_SIZE = socket.CMSG_SPACE(16)
MARKER = b'"sent_us":"'
RECV_SIZE = 65536
CONNECT_LIMIT_S = 120.0


class Conn(object):
    __slots__ = ("sock", "fd", "state", "key", "buf", "frames", "closed")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.state = "connecting"
        self.key = base64.b64encode(os.urandom(16))
        self.buf = b""
        self.frames = 0
        self.closed = False


def masked(opcode, payload):
    """A client frame (masked, §5.3) of a short control payload."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class Harness(object):
    def __init__(self, args):
        self.args = args
        self.ep = select.epoll()
        self.conns = {}
        self.sent = array.array("q")
        self.kern = array.array("q")
        self.user = array.array("q")
        self.stats = {"open": 0, "failed": 0, "pings": 0, "closes": 0, "eof": 0,
                      "bad_frames": 0, "other_text": 0, "binary": 0, "lengths": {},
                      "no_kernel_ts": 0, "recv_calls": 0}
        self.request_tail = ("Host: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             % args.port).encode("ascii")

    # -- connect phase ------------------------------------------------------------

    def start_one(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        err = sock.connect_ex(("127.0.0.1", self.args.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.stats["failed"] += 1
            return
        conn = Conn(sock)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLOUT)

    def connect_all(self):
        todo, inflight = self.args.count, 0
        deadline = time.monotonic() + CONNECT_LIMIT_S
        while (todo or inflight) and time.monotonic() < deadline:
            while todo and inflight < self.args.inflight:
                self.start_one()
                todo -= 1
                inflight += 1
            for fd, ev in self.ep.poll(0.5):
                conn = self.conns.get(fd)
                if conn is not None:
                    self.advance(conn, ev)
            inflight = sum(1 for c in self.conns.values() if c.state in ("connecting", "upgrading"))
        for conn in list(self.conns.values()):
            if conn.state != "open":
                self.fail(conn)

    def advance(self, conn, ev):
        """Move a connecting socket on (to "open", or dropped as failed)."""
        if conn.state == "connecting":
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.fail(conn)
                return
            request = (b"GET %s HTTP/1.1\r\n" % self.args.path.encode("ascii") + self.request_tail
                       + b"Sec-WebSocket-Key: " + conn.key + b"\r\n\r\n")
            conn.sock.send(request)
            conn.state = "upgrading"
            self.ep.modify(conn.fd, select.EPOLLIN)
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.fail(conn)
            return
        conn.buf += data
        head, sep, rest = conn.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        expect = base64.b64encode(hashlib.sha1(conn.key + GUID).digest())
        if not head.startswith(b"HTTP/1.1 101") or expect not in head:
            self.fail(conn)
            return
        conn.state, conn.buf = "open", b""
        self.stats["open"] += 1
        if rest:
            self.on_data(conn, rest, time.time_ns() // 1000, None)

    def fail(self, conn):
        self.stats["failed"] += 1
        self.drop(conn)

    def drop(self, conn):
        if conn.fd in self.conns:
            del self.conns[conn.fd]
            try:
                self.ep.unregister(conn.fd)
            except OSError:
                pass
            conn.sock.close()

    # -- receive phase ------------------------------------------------------------

    def receive_until_stop(self):
        stdin = sys.stdin.fileno()
        self.ep.register(stdin, select.EPOLLIN)
        conns, ep = self.conns, self.ep
        unpack_ts = struct.Struct("qq").unpack
        stop = False
        while not stop:
            for fd, _ in ep.poll(1.0):
                if fd == stdin:
                    line = os.read(stdin, 4096)
                    if not line or b"stop" in line:
                        stop = True
                    continue
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    data, anc, _, _ = conn.sock.recvmsg(RECV_SIZE, ANC_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data, anc = b"", ()
                user_us = time.time_ns() // 1000
                self.stats["recv_calls"] += 1
                if not data:
                    self.stats["eof"] += 1
                    self.drop(conn)
                    continue
                kern_us = None
                for level, kind, cdata in anc:
                    if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(cdata) >= 16:
                        sec, nsec = unpack_ts(cdata[:16])
                        kern_us = sec * 1000000 + nsec // 1000
                self.on_data(conn, data, user_us, kern_us)

    def on_data(self, conn, data, user_us, kern_us):
        buf = conn.buf + data if conn.buf else data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if end - pos - head < length:
                break
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            self.on_frame(conn, b0, b1, payload, user_us, kern_us)
            if conn.closed:
                return
        conn.buf = buf[pos:]

    def on_frame(self, conn, b0, b1, payload, user_us, kern_us):
        opcode = b0 & 0x0F
        if b0 & 0x70 or b1 & 0x80 or not b0 & 0x80:    # RSV, masked or fragmented
            self.stats["bad_frames"] += 1
        if opcode == 0x1:
            at = payload.find(MARKER)
            if at < 0:
                self.stats["other_text"] += 1
                return
            conn.frames += 1
            start = at + len(MARKER)
            self.sent.append(int(payload[start:start + 16]))
            self.user.append(user_us)
            if kern_us is None:
                self.stats["no_kernel_ts"] += 1
                kern_us = user_us
            self.kern.append(kern_us)
            lengths = self.stats["lengths"]
            lengths[len(payload)] = lengths.get(len(payload), 0) + 1
        elif opcode == 0x9:
            self.stats["pings"] += 1
            self.send_quietly(conn, masked(0xA, payload))
        elif opcode == 0x8:
            self.stats["closes"] += 1
            self.send_quietly(conn, masked(0x8, payload[:2]))
            conn.closed = True
            self.drop(conn)
        elif opcode == 0x2:
            self.stats["binary"] += 1

    @staticmethod
    def send_quietly(conn, data):
        try:
            conn.sock.send(data)
        except OSError:
            pass

    def finish(self):
        prefix = self.args.out
        for name in ("sent", "kern", "user"):
            with open("%s.%s" % (prefix, name), "wb") as handle:
                getattr(self, name).tofile(handle)
        counts = [c.frames for c in self.conns.values()]
        self.stats["still_open"] = len(counts)
        self.stats["frames_min"] = min(counts) if counts else 0
        self.stats["frames_max"] = max(counts) if counts else 0
        self.stats["lengths"] = {str(k): v for k, v in self.stats["lengths"].items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.stats["cpu_s"] = usage.ru_utime + usage.ru_stime
        for conn in list(self.conns.values()):
            self.drop(conn)
        print(json.dumps(self.stats), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    harness = Harness(args)
    harness.connect_all()
    print("READY %d %d" % (harness.stats["open"], harness.stats["failed"]), flush=True)
    try:
        harness.receive_until_stop()
    finally:
        harness.finish()


if __name__ == "__main__":
    main()
