#!/usr/bin/env python3
"""Benchmark (not a test): a hub's cost at --peers simulated peers (default 100).

This process serves every peer itself: one asyncio loop listening on --peers
loopback ports, each answering GET /api/fleet/host with a canned fleet host
entry of --gpus GPUs (default 8; keep-alive HTTP/1.1, the values moving a
little each answer, like a live peer). Two hubs run side by side on the same
machine at the same time, neither with GPUs of its own, history and process
scan off: one with APP_FLEET_PEERS naming every peer (APP_FLEET_INTERVAL
--interval, default 2s), the other with no peers (the baseline). After a
settle, CPU (utime + stime of /proc/PID/stat) is sampled over --seconds
(default 40) and RSS read at the end; the hub's /api/fleet is checked to
show every peer up. With --subscribers N, N WebSocket clients subscribed to
the fleet ("gpu_id": "fleet", host frames off) read the hub's fleet frames
(one per round: the values move). Target: the hub with 100 peers at 2 s costs
<= 2 % of a core more than the baseline.

    python3 tests/bench/bench_fleet_peers.py [--peers 100] [--gpus 8] [--seconds 40]
        [--subscribers 1]
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
import amdgpu_top_web as m  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tests"))
from wsclient import RawWebSocket  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(TICK)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def canned_answers(gpus, variants=8):
    """A few bodies of one fleet host entry (--gpus GPUs), values moving between them."""
    bodies = []
    for v in range(variants):
        entries = []
        for i in range(gpus):
            identity = {"id": "card%d" % i, "name": "AMD Instinct MI300X", "vendor": "amd",
                        "vendor_label": "AMD", "uuid": "GPU-%08d" % i, "pci": "0000:%02x:00.0" % i}
            metrics = {"gpu_busy_pct": (37 * i + 11 * v) % 100, "vram_used_bytes": (i + v) << 30,
                       "vram_total_bytes": 192 << 30, "temp_c": 40.0 + v + i,
                       "power_w": 300.0 + 10 * v + i, "power_cap_w": 750.0,
                       "throttle_reasons": [], "runtime_status": "active"}
            procs = {"processes": [m.build_proc_row(pid=4000 + i, name="python3", user="alice",
                                                    vram_bytes=(i + 1) << 30, gtt_bytes=0,
                                                    gpu_time_ms_per_s=10.0 * v)]}
            entries.append(m.build_fleet_gpu(identity, metrics, procs, None))
        host = {"cpu_busy_pct": 12.5 + v, "cpu_count": 64, "mem_used_bytes": 80 << 30,
                "mem_total_bytes": 512 << 30}
        body = json.dumps(m.build_fleet_host("sim", "local", "/", "up", time.time(), None,
                                             m.__version__, host, entries, [])).encode()
        bodies.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return bodies


def serve_peers(count, bodies, ready):
    """One asyncio loop: count listening ports, keep-alive answers. Fills ready[0] with ports."""
    counter = [0]

    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                counter[0] += 1
                writer.write(bodies[counter[0] % len(bodies)])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()

    async def main():
        servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(count)]
        ready.append([s.sockets[0].getsockname()[1] for s in servers])
        ready.append(counter)
        while True:
            await asyncio.sleep(3600)
    asyncio.run(main())


def start_hub(env, tmp, label):
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("APP_"))
    env.update(APP_HISTORY_PATH="off", APP_PROC_ENABLE="false",
               APP_SYSFS_ROOT=os.path.join(tmp, "nosys"),
               APP_NVML_LIBRARY=os.path.join(tmp, "no-libnvidia-ml.so.1"),
               APP_LOG_LEVEL="WARNING", **env_extra.get(label, {}))
    log = open(os.path.join(tmp, label + ".log"), "w")
    port = {"peers": 18870, "baseline": 18871}[label]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "amdgpu_top_web.py"),
                             "--listen", "127.0.0.1:%d" % port], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    return proc, port


env_extra = {}


def subscribe(port, frames):
    """A WebSocket client of the fleet: reads frames, counts the fleet ones."""
    with RawWebSocket.connect("127.0.0.1", port) as ws:
        ws.recv_json()
        ws.send_json({"type": "subscribe", "gpu_id": "fleet", "host": False})
        while True:
            message = ws.recv_json(30)
            if message is not None and message.get("type") == "fleet":
                frames[0] += 1
                if frames[0] % 4 == 0:
                    ws.send_json({"type": "ping"})    # not silent: the hub closes silent clients


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--interval", default="2s")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--settle", type=float, default=8)
    parser.add_argument("--subscribers", type=int, default=0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_fleet.")
    os.makedirs(os.path.join(tmp, "nosys"))
    bodies = canned_answers(args.gpus)
    ready = []
    threading.Thread(target=serve_peers, args=(args.peers, bodies, ready), daemon=True).start()
    while len(ready) < 2:
        time.sleep(0.05)
    ports, counter = ready
    env_extra["peers"] = {"APP_FLEET_PEERS": ",".join(
        "p%03d=http://127.0.0.1:%d" % (i, p) for i, p in enumerate(ports)),
        "APP_FLEET_INTERVAL": args.interval}
    hubs = dict((label, start_hub({}, tmp, label)) for label in ("peers", "baseline"))
    frames = [0]
    try:
        time.sleep(2)
        for _ in range(args.subscribers):
            threading.Thread(target=subscribe, args=(hubs["peers"][1], frames), daemon=True).start()
        time.sleep(args.settle)
        frames[0] = 0
        before = dict((k, cpu_s(p.pid)) for k, (p, _) in hubs.items())
        asked = counter[0]
        time.sleep(args.seconds)
        result = dict((k, ((cpu_s(p.pid) - before[k]) / args.seconds * 100, rss_mib(p.pid)))
                      for k, (p, _) in hubs.items())
        asked = counter[0] - asked
        with urllib.request.urlopen("http://127.0.0.1:%d/api/fleet" % hubs["peers"][1]) as resp:
            fleet = json.load(resp)
    finally:
        for proc, _ in hubs.values():
            proc.terminate()
            proc.wait()
    totals = fleet["totals"]
    print("peers %d x %d GPUs, answer %d bytes, interval %s, %.0f s: %d requests (%.1f per round)"
          % (args.peers, args.gpus, len(bodies[0]), args.interval, args.seconds, asked,
             asked / (args.seconds / m.parse_duration(args.interval))))
    print("fleet: %d hosts, %d up, %d GPUs; %d subscribers got %d fleet frames"
          % (totals["hosts"], totals["hosts_up"], totals["gpus"], args.subscribers, frames[0]))
    for label in ("baseline", "peers"):
        print("%-9s CPU %5.2f %% of a core   RSS %6.1f MiB" % ((label,) + result[label]))
    print("hub cost of the peers: %+.2f %% of a core, %+.1f MiB RSS (target <= 2 %% at 100 peers / 2 s)"
          % (result["peers"][0] - result["baseline"][0], result["peers"][1] - result["baseline"][1]))


if __name__ == "__main__":
    main()
