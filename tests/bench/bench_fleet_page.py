#!/usr/bin/env python3
"""How much CPU does watching the Fleet view cost?  (A benchmark, not a test.)

A real hub (amdgpu_top_web.py with APP_FLEET_PEERS, the default 2 s interval) polls
--hosts (50) simulated peers served by this process on as many loopback ports: each
answers GET /api/fleet/host with --gpus (8) GPUs whose values all move at every
request (busy, temperature, power, VRAM, the top process now and then), the worst
case for the page: every cell changes every round. The hub's page opens on the Fleet
view (--hosts x --gpus GPUs, plus the hub's own demo GPU) in headless Chromium
(Debian's /usr/bin/chromium through Playwright), and the renderer's CPU time is read
from /proc over --seconds (30), as tests/bench/bench_page_cpu.py does, against, in
the same run:

  baseline   about:blank (an idle renderer)
  default    the default view of a --demo server (2 GPUs, 50 processes a GPU, 250 ms):
             the figure every other page change is held to
  fleet      the Fleet view, 400 GPUs

Target (issue #17): the 400-GPU Fleet view <= 5 % of one core.

  APP_VENDOR_DIR=.cache/vendor/node_modules python3 tests/bench/bench_fleet_page.py --repeat 3
"""
import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_page_cpu as pagecpu    # noqa: E402  (its process accounting and phases)

TARGET_PCT = 5.0
GIB = 1 << 30
USERS = ("alice", "bob", "carol", "dave", "erin")
NAMES = ("python3", "llama-server", "torchrun", "blender", "ollama")


class Peer(object):
    """One simulated peer: its GPUs' state, moved a little at every answer."""

    def __init__(self, index, gpus, rng):
        self.index, self.rng, self.lock = index, rng, threading.Lock()
        self.gpus = [{"busy": rng.uniform(0, 100), "temp": rng.uniform(35, 85), "vram": rng.uniform(0, 0.95),
                      "proc": rng.randrange(len(NAMES))} for _ in range(gpus)]

    def answer(self):
        with self.lock:
            out = []
            for i, g in enumerate(self.gpus):
                g["busy"] = min(100.0, max(0.0, g["busy"] + self.rng.uniform(-15, 15)))
                g["temp"] = min(95.0, max(30.0, g["temp"] + self.rng.uniform(-2, 2)))
                g["vram"] = min(0.99, max(0.0, g["vram"] + self.rng.uniform(-0.02, 0.02)))
                if self.rng.random() < 0.05:
                    g["proc"] = self.rng.randrange(len(NAMES))
                out.append({"id": "card%d" % i, "name": "AMD Instinct MI300X (simulated)", "vendor": "amd",
                            "vendor_label": "AMD", "uuid": None, "pci": "0000:%02x:00.0" % (i + 1),
                            "gpu_busy_pct": round(g["busy"]), "vram_used_bytes": int(g["vram"] * 192 * GIB),
                            "vram_total_bytes": 192 * GIB, "temp_c": round(g["temp"], 1),
                            "power_w": round(150 + g["busy"] * 5.5, 1), "power_cap_w": 750.0,
                            "throttle_reasons": [], "runtime_status": "active",
                            "top_process": {"pid": 1000 + i, "name": NAMES[g["proc"]], "user": USERS[g["proc"]],
                                            "vram_bytes": int(g["vram"] * 180 * GIB), "gpu_pct": round(g["busy"])},
                            "processes": 1 + g["proc"], "alert": None})
        return {"name": "sim-%02d" % self.index, "source": "local", "page": "/", "state": "up",
                "last_seen": None, "error": None, "version": "sim", "alerts": [],
                "host": {"cpu_busy_pct": round(self.rng.uniform(0, 100), 1), "cpu_count": 128,
                         "mem_used_bytes": int(self.rng.uniform(100, 900) * GIB), "mem_total_bytes": 1024 * GIB},
                "gpus": out}


def start_peers(hosts, gpus):
    """hosts simulated peers on loopback ports -> [(port, server)]."""
    rng = random.Random(17)
    servers = []
    for index in range(hosts):
        peer = Peer(index, gpus, rng)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self, peer=peer):
                body = json.dumps(peer.answer()).encode() if self.path == "/api/fleet/host" else b"{}"
                self.send_response(200 if self.path == "/api/fleet/host" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server.server_address[1], server))
    return servers


def start_hub(ports):
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("APP_"))
    env["APP_VENDOR_DIR"] = os.path.abspath(os.environ["APP_VENDOR_DIR"])
    env["APP_HISTORY_PATH"] = "off"
    env["APP_FLEET_PEERS"] = ",".join("sim-%02d=http://127.0.0.1:%d" % (i, port) for i, port in enumerate(ports))
    proc = subprocess.Popen([sys.executable, pagecpu.SCRIPT, "--demo", "--demo-gpus", "1", "--listen", "127.0.0.1:0",
                             "--log-level", "WARNING"], cwd=pagecpu.ROOT, env=env, stderr=subprocess.PIPE,
                            universal_newlines=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        port = pagecpu.listening_port(proc.pid)
        if port:
            return proc, port
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("hub did not start: " + proc.stderr.read())


def run_fleet(browser, port, cells, seconds):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    page.goto("http://127.0.0.1:%d/" % port)
    page.wait_for_function("n => document.querySelectorAll('[data-testid=fleet-gpu]').length >= n", arg=cells,
                           timeout=30000)
    time.sleep(4.0)                                   # settle: the first rounds, the first layout
    result = pagecpu.measure(page, cdp, seconds)
    shown = page.evaluate("document.querySelectorAll('[data-testid=fleet-gpu]').length")
    context.close()
    return result, shown


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per simulated host")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs; the median is reported")
    args = parser.parse_args()
    if not os.environ.get("APP_VENDOR_DIR"):
        raise SystemExit("set APP_VENDOR_DIR to an npm install of tests/package.json")
    peers = start_peers(args.hosts, args.gpus)
    hub, port = start_hub([p for p, _ in peers])
    runs = {"default": [], "fleet": []}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=pagecpu.CHROMIUM, args=pagecpu.CHROMIUM_ARGS)
            print("fleet: %d simulated hosts x %d GPUs (+1 hub GPU), the hub's 2 s rounds, every value moving; "
                  "%.0f s per phase, %d repeat(s)" % (args.hosts, args.gpus, args.seconds, args.repeat))
            baseline = pagecpu.run_phase(browser, "about:blank", args.seconds)
            for _ in range(args.repeat):
                runs["default"].append(pagecpu.run_page_phase(browser, argparse.Namespace(procs=50, seconds=args.seconds),
                                                              None, "visible", {}, 2))
                runs["fleet"].append(run_fleet(browser, port, args.hosts * args.gpus, args.seconds))
            browser.close()
    finally:
        hub.terminate()
        hub.wait(5)
        for _, server in peers:
            server.shutdown()
    if args.repeat > 1:
        for name in runs:
            print("%s runs, renderer %%: %s" % (name, ", ".join("%.2f" % r[0][0]["renderer"] for r in runs[name])))
    pagecpu.report([("baseline", baseline)] + [(name, pagecpu.median_run(runs[name])) for name in ("default", "fleet")])
    fleet = pagecpu.median_run(runs["fleet"])[0][0]["renderer"]
    default = pagecpu.median_run(runs["default"])[0][0]["renderer"]
    print("\nFleet view, %d GPUs, renderer CPU: %.2f %% of one core (target <= %.1f %%): %s; the default view %.2f %% (%.2f x)"
          % (args.hosts * args.gpus, fleet, TARGET_PCT, "OK" if fleet <= TARGET_PCT else "OVER TARGET", default,
             fleet / default if default else float("nan")))


if __name__ == "__main__":
    main()
