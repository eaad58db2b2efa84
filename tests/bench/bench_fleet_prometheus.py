#!/usr/bin/env python3
"""What does a Prometheus fleet refresh cost the hub?  (A benchmark, not a test.)

A real Prometheus (/usr/bin/prometheus, Debian's package) scrapes ONE target
served by this process: the Prometheus text of --hosts synthetic hosts x 8
GPUs, written by the program's own render_prometheus (demo-like identities
and values; only the families the fleet reads, to keep Prometheus' memory
small), each sample carrying its host's own `instance` label, kept by
`honor_labels: true`. Instant queries then see fresh series of N distinct
instances (there is one `up` series: the synthetic hosts are up by presence).

Timed: FleetPrometheus.poll(now) -- every instant query (one per metric, a few
in flight), parsing, and building the host entries -- over --rounds rounds:
the median wall time and the hub's CPU (process time) per refresh, for a
10-host Prometheus (the baseline, same run) and the --hosts one; then what
Prometheus alone takes for the queries every poll asks (fetched the same way,
not decoded), and the load average before and after.
Target: a 1,000-host refresh <= 250 ms.

    python3 tests/bench/bench_fleet_prometheus.py [--hosts 1000] [--rounds 15]
"""

import argparse
import concurrent.futures
import json
import http.server
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import amdgpu_top_web as m  # noqa: E402

GPUS = 8
FAMILIES = ("build_info", "ready", "gpu_info", "gpu_busy_ratio", "memory_used_bytes", "memory_total_bytes",
            "temperature_celsius", "power_watts", "power_cap_watts", "runtime_suspended", "gpu_lost",
            "processes", "process_memory_bytes", "host_cpu_busy_ratio", "host_cpus",
            "host_memory_used_bytes", "host_memory_total_bytes")
SAMPLE_RE = re.compile(r"^(amdgpu_[a-z_0-9]+)(\{([^}]*)\})? (.*)$")


def one_host_text(index):
    gpus, procs = [], {}
    for g in range(GPUS):
        gpu_id = "card%d" % g
        identity = {"id": gpu_id, "pci": "0000:%02x:00.0" % (0x10 + g), "vendor": "amd",
                    "uuid": "", "name": "AMD Instinct MI300X", "pci_id": "1002:74a1", "revision": "00",
                    "driver": "amdgpu", "apu": False, "demo": True}
        metrics = {"gpu_busy_pct": (index * 7 + g * 13) % 100, "vram_used_bytes": (g + 1) << 33,
                   "vram_total_bytes": 192 << 30, "temp_c": 40 + (index + g) % 40,
                   "power_w": 300.0 + g, "power_cap_w": 750.0, "runtime_status": "active"}
        gpus.append((identity, metrics))
        procs[gpu_id] = {"processes": [{"pid": 1000 + g, "name": "python3", "vram_bytes": 1 << 33}]}
    host = {"cpu_busy_pct": 12.5, "cpu_count": 192, "mem_used_bytes": 200 << 30, "mem_total_bytes": 2 << 40}
    return m.render_prometheus(gpus, procs, {}, 1, host, [], True)


def fleet_text(hosts):
    """One exposition: each family once, every sample with its host's instance label."""
    families = {}
    helps = {}
    for index in range(hosts):
        instance = 'instance="host-%04d:8080"' % index
        for line in one_host_text(index).splitlines():
            if line.startswith("#"):
                if index == 0:
                    helps.setdefault(line.split()[2], []).append(line)
                continue
            match = SAMPLE_RE.match(line)
            name = match.group(1)
            if name[len("amdgpu_"):] not in FAMILIES:
                continue
            labels = instance + ("," + match.group(3) if match.group(3) else "")
            families.setdefault(name, []).append("%s{%s} %s" % (name, labels, match.group(4)))
    out = []
    for name, samples in families.items():
        out += helps[name] + samples
    return ("\n".join(out) + "\n").encode("utf-8")


def serve_bytes(body):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", m.PROM_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prometheus(target_port, workdir):
    with open(os.path.join(workdir, "prometheus.yml"), "w") as fh:
        fh.write("global: {scrape_interval: 10s, scrape_timeout: 9s}\nscrape_configs:\n"
                 "  - job_name: amdgpu\n    honor_labels: true\n"
                 "    static_configs: [{targets: ['127.0.0.1:%d']}]\n" % target_port)
    port = free_port()
    proc = subprocess.Popen(["prometheus", "--config.file=" + os.path.join(workdir, "prometheus.yml"),
                             "--storage.tsdb.path=" + os.path.join(workdir, "data"), "--log.level=warn",
                             "--web.listen-address=127.0.0.1:%d" % port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, "http://127.0.0.1:%d" % port


def count_hosts(url):
    query = m.urlencode({"query": "count(%sbuild_info)" % m.PROM_PREFIX})
    try:
        with urllib.request.urlopen(url + "/api/v1/query?" + query, timeout=5) as resp:
            result = json.loads(resp.read())["data"]["result"]
        return int(result[0]["value"][1]) if result else 0
    except OSError:
        return 0


def bare_get(url, query, at):
    """Prometheus alone: one instant query fetched (gzip, as the hub asks), not decoded."""
    req = urllib.request.Request(url + "/api/v1/query?" + m.urlencode({"query": query, "time": at}),
                                 headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return len(resp.read())


def prometheus_alone(url, rounds):
    """The median wall time of the queries every poll asks (their cadence 1),
    fetched the way a poll does (FLEET_PROM_QUERY_THREADS in flight), not decoded."""
    every = m.FLEET_PROM_QUERY_EVERY
    queries = [q for name, q in m.build_prom_fleet_queries() if every.get(name, 1) == 1]
    walls = []
    with concurrent.futures.ThreadPoolExecutor(m.FLEET_PROM_QUERY_THREADS) as pool:
        for _ in range(rounds):
            at, wall0 = "%.3f" % time.time(), time.perf_counter()
            list(pool.map(lambda q: bare_get(url, q, at), queries))
            walls.append(time.perf_counter() - wall0)
            time.sleep(0.2)
    return 1000 * statistics.median(walls)


def measure(hosts, rounds):
    body = fleet_text(hosts)
    httpd = serve_bytes(body)
    workdir = tempfile.mkdtemp(prefix="bench-fleet-prom-")
    proc, url = start_prometheus(httpd.server_address[1], workdir)
    try:
        deadline = time.monotonic() + 120
        while count_hosts(url) != hosts:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("Prometheus did not ingest %d hosts" % hosts)
            time.sleep(0.5)
        source = m.FleetPrometheus(m.PromClient(url, 10.0), 2.0)
        walls, cpus = [], []
        for _ in range(rounds + 1):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            entries = source.poll(time.time())
            walls.append(time.perf_counter() - wall0)
            cpus.append(time.process_time() - cpu0)
            assert source.error is None, source.error
            assert len(entries) == hosts and sum(len(e["gpus"]) for e in entries) == hosts * GPUS
            time.sleep(0.2)
        source.close()
        alone_ms = prometheus_alone(url, rounds)
        return {"hosts": hosts, "alone_ms": alone_ms, "bytes": len(body), "wall_ms": 1000 * statistics.median(walls[1:]),
                "cpu_ms": 1000 * statistics.median(cpus[1:]), "mean_ms": 1000 * statistics.mean(walls[1:]),
                "max_ms": 1000 * max(walls[1:]), "mean_cpu_ms": 1000 * statistics.mean(cpus[1:])}
    finally:
        proc.terminate()
        proc.wait(30)
        httpd.shutdown()
        shutil.rmtree(workdir, True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        raise SystemExit("needs /usr/bin/prometheus (Debian package prometheus)")
    load = os.getloadavg()
    results = [measure(10, args.rounds), measure(args.hosts, args.rounds)]
    base = results[0]
    every = m.FLEET_PROM_QUERY_EVERY
    print("queries: %d (one per metric; %d of them every poll, the others every 3rd or 15th), "
          "%d in flight" % (len(m.build_prom_fleet_queries()), sum(
              1 for name, _ in m.build_prom_fleet_queries() if every.get(name, 1) == 1),
              m.FLEET_PROM_QUERY_THREADS))
    print("load average before: %s" % " ".join("%.2f" % x for x in load))
    for r in results:
        print("%5d hosts x %d GPUs (scrape %.1f MB): refresh median %.1f ms wall (%.2fx the 10-host "
              "baseline; mean %.1f, max %.1f), hub CPU median %.1f ms (mean %.1f)"
              % (r["hosts"], GPUS, r["bytes"] / 1e6, r["wall_ms"], r["wall_ms"] / base["wall_ms"],
                 r["mean_ms"], r["max_ms"], r["cpu_ms"], r["mean_cpu_ms"]))
        print("      Prometheus alone (the every-poll queries, same concurrency, fetched, not "
              "decoded): median %.1f ms wall" % r["alone_ms"])
    print("load average after: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    print("target: <= 250 ms at 1,000 hosts -> %s" % ("met" if results[1]["wall_ms"] <= 250 else "NOT met"))


if __name__ == "__main__":
    main()
