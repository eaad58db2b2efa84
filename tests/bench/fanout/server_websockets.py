#!/usr/bin/env python3
"""(b) The websockets peer: an asyncio server on the `websockets` package
(the new asyncio API) that broadcasts each tick's frame with
websockets.asyncio.server.broadcast() to every open connection.

Compression is off (the clients offer none anyway) and so is its keepalive
ping, like every server in this bench. See common.py for the protocol with
bench_fanout.py.
"""

import argparse
import asyncio
import sys
import time

from websockets.asyncio.server import broadcast, serve

from common import build_payload, load_metrics, parse_go, raise_nofile, realtime_us, say


async def handler(connection):
    await connection.wait_closed()


async def run_ticks(server, base, count, rate):
    period, start, late = 1.0 / rate, time.monotonic(), 0.0
    for index in range(count):
        delay = start + index * period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
        broadcast(server.connections, build_payload(base, realtime_us()), text=True)
    return late * 1000.0


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    raise_nofile()
    base = load_metrics(args.metrics)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                     max_size=65536, backlog=1024) as server:
        say("PORT", server.sockets[0].getsockname()[1])
        while True:
            count = parse_go((await reader.readline()).decode())
            if count is None:
                break
            if count:
                late = await run_ticks(server, base, count, args.rate)
                say("DONE", count, "%.1f" % late)


if __name__ == "__main__":
    asyncio.run(main())
