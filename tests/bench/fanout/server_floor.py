#!/usr/bin/env python3
"""(d) The floor: a plain Python loop of sock.send(wire) over N connected sockets.

It accepts the connections and answers the opening handshake (so the same
client harness works), then each tick builds the frame once (JSON, then the
2+2-byte header of an unmasked text frame) and does, and nothing more:

    for sock in socks:
        sock.send(wire)

on non-blocking sockets with TCP_NODELAY. No queues, no per-client state, no
timers: what no real server can go below in Python. See common.py for the
protocol with bench_fanout.py.
"""

import argparse
import base64
import hashlib
import os
import selectors
import socket
import struct

from common import build_payload, load_metrics, parse_go, raise_nofile, realtime_us, run_ticks, say

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def text_frame(payload):
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", 0x81, length) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def upgrade_response(head):
    key = b""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    raise_nofile()
    base = load_metrics(args.metrics)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listen")
    sel.register(0, selectors.EVENT_READ, "stdin")
    socks = []
    counters = {"short": 0, "errors": 0}

    def tick():
        wire = text_frame(build_payload(base, realtime_us()))
        size = len(wire)
        for sock in socks:                      # <- the floor
            try:
                if sock.send(wire) != size:
                    counters["short"] += 1
            except OSError:
                counters["errors"] += 1

    say("PORT", listener.getsockname()[1])
    while True:
        for key, _ in sel.select():
            if key.data == "listen":
                while True:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, selectors.EVENT_READ, [b""])
            elif key.data == "stdin":
                for line in os.read(0, 4096).decode().splitlines() or [""]:
                    count = parse_go(line)
                    if count is None:
                        return
                    if count:
                        late = run_ticks(count, args.rate, tick)
                        say("DONE", count, "%.1f" % late, "short=%d errors=%d"
                            % (counters["short"], counters["errors"]))
            else:
                conn, state = key.fileobj, key.data
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    if state[0] is None:
                        socks.remove(conn)
                    conn.close()
                elif state[0] is not None:          # still in the handshake
                    state[0] += data
                    head, sep, _ = state[0].partition(b"\r\n\r\n")
                    if sep:
                        conn.sendall(upgrade_response(head))
                        state[0] = None
                        socks.append(conn)
                # an open client's frames (pongs, closes) are read and ignored


if __name__ == "__main__":
    main()
