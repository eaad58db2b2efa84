"""Shared by the Python servers of bench_fanout.py: the payload and the command protocol.

Every server (this program's runner, the websockets peer, the floor, and the
Node peer in server_ws.js, which mirrors this file) speaks the same tiny
protocol with the parent:

  stdout  "PORT <n>" once listening; "DONE <ticks> <max lateness ms>" after a run
  stdin   "go <count>": broadcast <count> stats frames at --rate Hz, then DONE;
          "quit" (or EOF): exit

and sends the same stats frame, SPEC §5's shape (as Cache.publish_stats builds it):

  {"type":"stats","gpu_id":"card0","ts":"<ISO ms>","metrics":{"sent_us":"<16 digits>",...}}

where sent_us is CLOCK_REALTIME in microseconds taken at the tick (fixed width,
so every frame of every server has the same size) and the rest of "metrics"
comes from the parent's --metrics file, padded so the payload is --size bytes.
"""

import json
import resource
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def say(*words):
    print(" ".join(str(w) for w in words), flush=True)


def load_metrics(path):
    with open(path) as handle:
        return json.load(handle)


def realtime_us():
    return time.time_ns() // 1000


def format_ts(epoch_s):
    """Same text as amdgpu_top_web.format_ts: '2025-10-12T13:07:05.123Z'."""
    millis = int(round(epoch_s * 1000))
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


def tick_metrics(base, now_us):
    metrics = {"sent_us": "%016d" % now_us}
    metrics.update(base)
    return metrics


def build_payload(base, now_us):
    """The stats frame's JSON, byte for byte what Cache.publish_stats would encode."""
    message = {"type": "stats", "gpu_id": "card0", "ts": format_ts(now_us / 1e6),
               "metrics": tick_metrics(base, now_us)}
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")


def run_ticks(count, rate, tick):
    """Call tick() count times on a fixed schedule (first at once); return the
    worst lateness in ms (a tick that starts late is not made up for)."""
    period = 1.0 / rate
    start = time.monotonic()
    late = 0.0
    for index in range(count):
        delay = start + index * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late = max(late, -delay)
        tick()
    return late * 1000.0


def parse_go(line):
    """'go 120' -> 120; 'quit' or EOF -> None; anything else -> 0."""
    words = line.split()
    if not words or words[0] == "quit":
        return None
    if words[0] == "go" and len(words) == 2 and words[1].isdigit():
        return int(words[1])
    return 0
