#!/usr/bin/env python3
"""What does a Prometheus fleet refresh cost the hub?  (A benchmark, not a test.)

A real Prometheus (/usr/bin/prometheus, Debian's package) scrapes --hosts
synthetic hosts x 8 GPUs, as in a real fleet: each host is its own scrape
target (host i answers on 127.0.{i // 250}.{i % 250 + 1}:PORT; Linux routes
all of 127/8 to lo), scraped every 15 s (the README's advice) at its own
offset inside the interval (Prometheus spreads targets by a hash), so `up`
has one series per host and between two hub polls only the hosts scraped in
those 2 s have new samples. The targets are served by a SUBPROCESS (this
script with --serve: one selectors loop; its CPU is not the hub's), each
answer one host's Prometheus text written by the program's own
render_prometheus (demo-like identities; only the families the fleet reads,
to keep Prometheus' memory small; no instance label: Prometheus adds the
target's), its values moving from one scrape to the next.

--one-target: the old worst case instead: ONE target exposing every host's
series with its own `instance` label (`honor_labels: true`), so every host
changes at the same instant and `up` has one series.

Timed, for a 10-host Prometheus (the baseline, same run) and the --hosts one
(each its own Prometheus, started once every target has two scrapes):
  steady state: ONE FleetPrometheus polled every 2.0 s (the hub's default
    interval) for --rounds polls after a first (full) one: median, p90 and max
    wall ms, median hub CPU ms (process time), the hosts it rebuilt per poll
    (source.last_rebuilt, where the program has it); every poll checked: no
    error, every host up with 8 GPUs;
  full refresh: a fresh FleetPrometheus's first poll, 5 times: the old worst
    case (the hub's start, or a new host);
  Prometheus alone: the queries every poll asks, fetched the same way, not
    decoded;
and the load average before and after, Prometheus' memory and CPU.
Target: a 1,000-host refresh <= 250 ms (steady-state median).

    python3 tests/bench/bench_fleet_prometheus.py [--hosts 1000] [--rounds 20] [--one-target]
"""

import argparse
import concurrent.futures
import json
import math
import os
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
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
SCRAPE_INTERVAL_S = 15
SCRAPE_TIMEOUT_S = 10
HUB_INTERVAL_S = 2.0
FULL_REFRESHES = 5
VARIANTS = 4            # precomputed answers per host; scrape k of a host serves k % VARIANTS
BASELINE_HOSTS = 10


def one_host_text(index, tick):
    """One host's /metrics as the program writes it; tick (its scrape count)
    moves busy, VRAM, temperature, power and the host's CPU."""
    gpus, procs = [], {}
    for g in range(GPUS):
        gpu_id = "card%d" % g
        identity = {"id": gpu_id, "pci": "0000:%02x:00.0" % (0x10 + g), "vendor": "amd",
                    "uuid": "", "name": "AMD Instinct MI300X", "pci_id": "1002:74a1", "revision": "00",
                    "driver": "amdgpu", "apu": False, "demo": True}
        metrics = {"gpu_busy_pct": (index * 7 + g * 13 + tick * 11) % 100,
                   "vram_used_bytes": ((g + tick) % GPUS + 1) << 33,
                   "vram_total_bytes": 192 << 30, "temp_c": 40 + (index + g + tick) % 40,
                   "power_w": 300.0 + g + 7 * tick, "power_cap_w": 750.0, "runtime_status": "active"}
        gpus.append((identity, metrics))
        procs[gpu_id] = {"processes": [{"pid": 1000 + g, "name": "python3", "vram_bytes": 1 << 33}]}
    host = {"cpu_busy_pct": 12.5 + tick, "cpu_count": 192, "mem_used_bytes": (200 + tick) << 30,
            "mem_total_bytes": 2 << 40}
    return m.render_prometheus(gpus, procs, {}, 1, host, [], True)


def kept_lines(text):
    """[(family, labels ("" for none; None for a # line), value or the # line)]
    of the FAMILIES the fleet reads."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            if line.split()[2][len(m.PROM_PREFIX):] in FAMILIES:
                out.append((line.split()[2], None, line))
            continue
        match = SAMPLE_RE.match(line)
        if match.group(1)[len(m.PROM_PREFIX):] in FAMILIES:
            out.append((match.group(1), match.group(3) or "", match.group(4)))
    return out


def host_body(index, tick):
    """One target's answer: one host, no instance label (Prometheus adds it)."""
    lines = [value if labels is None else
             "%s%s %s" % (name, "{%s}" % labels if labels else "", value)
             for name, labels, value in kept_lines(one_host_text(index, tick))]
    return ("\n".join(lines) + "\n").encode("utf-8")


def fleet_body(hosts, tick):
    """--one-target: one exposition, each family once, every sample with its
    host's instance label (kept by honor_labels)."""
    families, helps = {}, {}
    for index in range(hosts):
        instance = 'instance="host-%04d:8080"' % index
        for name, labels, value in kept_lines(one_host_text(index, tick)):
            if labels is None:
                if index == 0:
                    helps.setdefault(name, []).append(value)
                continue
            families.setdefault(name, []).append("%s{%s} %s" % (
                name, instance + ("," + labels if labels else ""), value))
    out = []
    for name, samples in families.items():
        out += helps[name] + samples
    return ("\n".join(out) + "\n").encode("utf-8")


def http_answer(body):
    return ("HTTP/1.0 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (m.PROM_CONTENT_TYPE, len(body))).encode("ascii") + body


def target_address(index):
    return "127.0.%d.%d" % (index // 250, index % 250 + 1)


# -- the target server (the subprocess) ---------------------------------------

def bind_targets(count):
    """count listening sockets at one port on 127.0.{i // 250}.{i % 250 + 1}:
    the port picked by binding the first one to port 0 (a few tries)."""
    for _ in range(10):
        first = socket.socket()
        first.bind((target_address(0), 0))
        port, socks = first.getsockname()[1], [first]
        try:
            for index in range(1, count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind((target_address(index), port))
        except OSError:
            for sock in socks:
                sock.close()
            continue
        for sock in socks:
            sock.listen(128)
            sock.setblocking(False)
        return port, socks
    raise SystemExit("no port free on every target address")


def serve(hosts, one_target):
    """--serve: answer every scrape from precomputed answers until the parent goes."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if one_target:
        answers = [[http_answer(fleet_body(hosts, tick)) for tick in range(VARIANTS)]]
    else:
        answers = [[http_answer(host_body(index, tick)) for tick in range(VARIANTS)] for index in range(hosts)]
    port, socks = bind_targets(len(answers))
    scrapes = [0] * len(answers)
    sel = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, index)
    parent = os.getppid()
    print("PORT %d" % port, flush=True)
    while os.getppid() == parent:
        for key, _ in sel.select(1.0):
            if isinstance(key.data, int):
                try:
                    conn, _ = key.fileobj.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, [key.data, b""])
                continue
            index, conn = key.data[0], key.fileobj
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            key.data[1] += chunk
            if chunk and b"\r\n\r\n" not in key.data[1] and len(key.data[1]) < 65536:
                continue
            sel.unregister(conn)
            if chunk:
                scrapes[index] += 1
                try:
                    conn.setblocking(True)
                    conn.settimeout(5)
                    conn.sendall(answers[index][scrapes[index] % VARIANTS])
                except OSError:
                    pass
            conn.close()


# -- the bench (the hub's side) -----------------------------------------------

def start_server(hosts, one_target):
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", "--hosts", str(hosts)]
                            + (["--one-target"] if one_target else []),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline().decode("ascii", "replace").split()
    if len(line) != 2 or line[0] != "PORT":
        proc.kill()
        proc.wait()
        raise SystemExit("the target server did not start")
    return proc, int(line[1])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prometheus(targets, honor_labels, workdir):
    with open(os.path.join(workdir, "prometheus.yml"), "w") as fh:
        fh.write("global: {scrape_interval: %ds, scrape_timeout: %ds}\nscrape_configs:\n"
                 "  - job_name: amdgpu\n%s    static_configs:\n      - targets:\n"
                 % (SCRAPE_INTERVAL_S, SCRAPE_TIMEOUT_S, "    honor_labels: true\n" if honor_labels else ""))
        fh.writelines("          - '%s'\n" % target for target in targets)
    port = free_port()
    proc = subprocess.Popen(["prometheus", "--config.file=" + os.path.join(workdir, "prometheus.yml"),
                             "--storage.tsdb.path=" + os.path.join(workdir, "data"), "--log.level=warn",
                             "--web.listen-address=127.0.0.1:%d" % port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return proc, "http://127.0.0.1:%d" % port


def scalar_query(url, promql):
    """One instant query's single value (0 when none or failing)."""
    query = m.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url + "/api/v1/query?" + query, timeout=5) as resp:
            result = json.loads(resp.read())["data"]["result"]
        return float(result[0]["value"][1]) if result else 0
    except (OSError, ValueError, KeyError):
        return 0


def count_hosts(url):
    return int(scalar_query(url, "count(%sbuild_info)" % m.PROM_PREFIX))


def scrape_spread(url):
    """(series of up, seconds between the oldest and the newest last scrape)."""
    stamp = "timestamp(%sbuild_info)" % m.PROM_PREFIX
    return int(scalar_query(url, "count(up)")), scalar_query(url, "max(%s) - min(%s)" % (stamp, stamp))


def wait_ingested(url, hosts, prom, server):
    """Until Prometheus sees every host, then one more scrape interval (every
    target scraped twice at least) -> (seconds waited, Prometheus' CPU share
    meanwhile: scraping alone, no query)."""
    start = time.monotonic()
    while count_hosts(url) != hosts:
        if time.monotonic() - start > 10 * SCRAPE_INTERVAL_S or prom.poll() is not None \
                or server.poll() is not None:
            raise SystemExit("Prometheus did not ingest %d hosts" % hosts)
        time.sleep(0.5)
    cpu0, wall0 = proc_cpu_s(prom.pid), time.monotonic()
    time.sleep(SCRAPE_INTERVAL_S)
    return time.monotonic() - start, 100 * (proc_cpu_s(prom.pid) - cpu0) / (time.monotonic() - wall0)


def proc_cpu_s(pid):
    """utime + stime of a process, seconds."""
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def bare_get(url, query, at):
    """Prometheus alone: one instant query fetched (gzip, as the hub asks), not decoded."""
    req = urllib.request.Request(url + "/api/v1/query?" + m.urlencode({"query": query, "time": at}),
                                 headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return len(resp.read())


def prometheus_alone(url, rounds):
    """The median wall time of the queries every poll asks (their cadence 1),
    fetched the way a poll does (FLEET_PROM_QUERY_THREADS in flight), not decoded."""
    every = getattr(m, "FLEET_PROM_QUERY_EVERY", {})
    queries = [q for name, q in m.build_prom_fleet_queries() if every.get(name, 1) == 1]
    walls = []
    with concurrent.futures.ThreadPoolExecutor(m.FLEET_PROM_QUERY_THREADS) as pool:
        for _ in range(rounds):
            at, wall0 = "%.3f" % time.time(), time.perf_counter()
            list(pool.map(lambda q: bare_get(url, q, at), queries))
            walls.append(time.perf_counter() - wall0)
            time.sleep(0.2)
    return 1000 * statistics.median(walls)


def timed_poll(source, hosts, label):
    """One poll -> (wall s, hub CPU s), its answer checked."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    entries = source.poll(time.time())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if source.error is not None:
        raise SystemExit("%s: %s" % (label, source.error))
    bad = [e["name"] for e in entries if e["state"] != "up" or len(e["gpus"]) != GPUS]
    if len(entries) != hosts or bad:
        raise SystemExit("%s: %d hosts answered (%d expected), not up with %d GPUs: %s"
                         % (label, len(entries), hosts, GPUS, bad[:5]))
    return wall, cpu


def steady_state(url, hosts, rounds):
    """ONE source polled every HUB_INTERVAL_S: a first (full) poll, then rounds timed."""
    source = m.FleetPrometheus(m.PromClient(url, 10.0), HUB_INTERVAL_S)
    try:
        timed_poll(source, hosts, "warm-up poll")
        walls, cpus, rebuilt, fulls = [], [], [], 0
        tick0 = time.monotonic()
        for k in range(1, rounds + 1):
            time.sleep(max(0.0, tick0 + k * HUB_INTERVAL_S - time.monotonic()))
            wall, cpu = timed_poll(source, hosts, "steady poll %d" % k)
            walls.append(wall)
            cpus.append(cpu)
            if getattr(source, "last_rebuilt", None) is not None:
                rebuilt.append(source.last_rebuilt)
            fulls += bool(getattr(source, "last_full", False))
        return walls, cpus, rebuilt, fulls
    finally:
        source.close()


def full_refreshes(url, hosts):
    """A fresh source's first poll, FULL_REFRESHES times -> (walls, cpus)."""
    walls, cpus = [], []
    for k in range(FULL_REFRESHES):
        source = m.FleetPrometheus(m.PromClient(url, 10.0), HUB_INTERVAL_S)
        try:
            wall, cpu = timed_poll(source, hosts, "full refresh %d" % (k + 1))
        finally:
            source.close()
        walls.append(wall)
        cpus.append(cpu)
        time.sleep(0.5)
    return walls, cpus


def p90(values):
    ordered = sorted(values)
    return ordered[max(0, int(math.ceil(0.9 * len(ordered))) - 1)]


def measure(hosts, rounds, one_target):
    server, port = start_server(hosts, one_target)
    workdir = tempfile.mkdtemp(prefix="bench-fleet-prom-")
    prom = None
    try:
        targets = ["127.0.0.1:%d" % port] if one_target else \
            ["%s:%d" % (target_address(i), port) for i in range(hosts)]
        prom, url = start_prometheus(targets, one_target, workdir)
        waited_s, scrape_cpu_pct = wait_ingested(url, hosts, prom, server)
        up_series, spread_s = scrape_spread(url)
        cpu0 = (proc_cpu_s(prom.pid), proc_cpu_s(server.pid), time.monotonic())
        walls, cpus, rebuilt, fulls = steady_state(url, hosts, rounds)
        cpu1 = (proc_cpu_s(prom.pid), proc_cpu_s(server.pid), time.monotonic())
        full_walls, full_cpus = full_refreshes(url, hosts)
        span = cpu1[2] - cpu0[2]
        return {"hosts": hosts, "waited_s": waited_s, "wall": walls, "cpu": cpus, "rebuilt": rebuilt,
                "fulls": fulls, "full_wall": full_walls, "full_cpu": full_cpus,
                "alone_ms": prometheus_alone(url, rounds), "prom_rss_mb": proc_rss_mb(prom.pid),
                "prom_cpu_pct": 100 * (cpu1[0] - cpu0[0]) / span, "scrape_cpu_pct": scrape_cpu_pct,
                "up_series": up_series, "spread_s": spread_s,
                "server_cpu_pct": 100 * (cpu1[1] - cpu0[1]) / span}
    finally:
        for proc in (prom, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        server.stdout.close()
        shutil.rmtree(workdir, True)


def summary(r):
    ms = lambda values: [1000 * v for v in values]  # noqa: E731
    return {"hosts": r["hosts"], "med": statistics.median(ms(r["wall"])), "p90": p90(ms(r["wall"])),
            "max": max(ms(r["wall"])), "cpu": statistics.median(ms(r["cpu"])),
            "rebuilt": statistics.median(r["rebuilt"]) if r["rebuilt"] else None,
            "full": statistics.median(ms(r["full_wall"])), "full_cpu": statistics.median(ms(r["full_cpu"])),
            "alone": r["alone_ms"]}


def report(args, results, load):
    every = getattr(m, "FLEET_PROM_QUERY_EVERY", {})
    queries = m.build_prom_fleet_queries()
    print("mode: %s; scrape_interval %ds, hub polls every %.1f s, %d steady polls after a full one, "
          "%d full refreshes; Python %s" % (
              "ONE target, honor_labels (every host changes at once: the worst case)" if args.one_target
              else "one scrape target per host (127.0.x.y:PORT)", SCRAPE_INTERVAL_S, HUB_INTERVAL_S,
              args.rounds, FULL_REFRESHES, sys.version.split()[0]))
    print("queries: %d (one per metric; %d of them every poll%s), %d in flight" % (
        len(queries), sum(1 for name, _ in queries if every.get(name, 1) == 1),
        ", the others every 3rd or 15th" if every else
        "; a poll asks the metric queries only for the hosts scraped since their last read", m.FLEET_PROM_QUERY_THREADS))
    print("load average before: %s" % " ".join("%.2f" % x for x in load))
    rows = [summary(r) for r in results]
    base = rows[0]
    print("%6s | %-26s | %7s | %8s | %-17s | %9s | %s" % (
        "hosts", "steady wall ms med/p90/max", "CPU ms", "rebuilt", "full wall/CPU ms", "Prom alone",
        "x baseline (steady, full)"))
    for row, r in zip(rows, results):
        print("%6d | %8.1f %8.1f %8.1f | %7.1f | %8s | %8.1f %8.1f | %9.1f | %.1fx, %.1fx" % (
            row["hosts"], row["med"], row["p90"], row["max"], row["cpu"],
            "n/a" if row["rebuilt"] is None else "%g" % row["rebuilt"], row["full"], row["full_cpu"],
            row["alone"], row["med"] / base["med"], row["full"] / base["full"]))
    for r in results:
        print("%6d hosts: ingested and scraped twice after %.0f s (%d series of up, the last scrapes "
              "%.1f s apart at most); Prometheus %.0f MB RSS, %.0f %% of a core scraping alone, %.0f %% "
              "while polled (the target server %.1f %%); %s" % (
                  r["hosts"], r["waited_s"], r["up_series"], r["spread_s"], r["prom_rss_mb"],
                  r["scrape_cpu_pct"], r["prom_cpu_pct"], r["server_cpu_pct"],
                  "last_full on %d of %d steady polls" % (r["fulls"], len(r["wall"]))
                  if r["rebuilt"] else "no last_rebuilt/last_full (every poll reads everything)"))
    print("load average after: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    last = rows[-1]
    verdict = ("met" if last["med"] <= 250 else "NOT met") if last["hosts"] >= 1000 else \
        "not judged (--hosts %d)" % last["hosts"]
    print("target: <= 250 ms at 1,000 hosts (steady-state median) -> %s: %.1f ms at %d hosts; "
          "a full refresh (a fresh source's first poll) takes %.1f ms wall, %.1f ms hub CPU" % (
              verdict, last["med"], last["hosts"], last["full"], last["full_cpu"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--one-target", action="store_true",
                        help="one honor_labels target exposing every host (the old worst case)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.hosts, args.one_target)
    if shutil.which("prometheus") is None:
        raise SystemExit("needs /usr/bin/prometheus (Debian package prometheus)")
    if args.hosts > 250 * 256:
        raise SystemExit("--hosts: at most %d" % (250 * 256))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = os.getloadavg()
    results = [measure(BASELINE_HOSTS, args.rounds, args.one_target),
               measure(args.hosts, args.rounds, args.one_target)]
    report(args, results, load)


if __name__ == "__main__":
    main()
