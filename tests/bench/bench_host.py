#!/usr/bin/env python3
"""Benchmark (not a test): the cost of one host sample against one GPU sampler tick.

Rows (CPU time per call, time.process_time(); the median of --repeat rounds
of --ticks calls each, after a warm-up):

  host tick (/proc)       HostReader.sample() on this machine's /proc plus
                          Cache.publish_host() (the host frame encoded once)
  host, open/read/close   the same four files opened and read by path each
                          time (the naive way), parsed the same
  GPU tick (fixture)      AmdGpuReader.sample() on the rx6900xt sysfs fixture
                          plus Cache.publish_stats(): what one GPU's sampler
                          does each APP_SAMPLE_INTERVAL (250 ms)

The ratio host / GPU tick is printed, and the share of one core at the real
rates (host once a second, a GPU 4 times a second).

    python3 tests/bench/bench_host.py [--ticks 2000] [--repeat 5]
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)
import amdgpu_top_web as atw  # noqa: E402


def gpu_tick_factory():
    config = atw.parse_config([], {"APP_SYSFS_ROOT": os.path.join(ROOT, "testdata", "sys", "rx6900xt"),
                                   "APP_SHARE_ROOT": os.path.join(ROOT, "testdata", "share"),
                                   "APP_NVML_LIBRARY": "/nonexistent/libnvidia-ml.so.1"})
    cache = atw.Cache(config.interval_s, {})
    manager = atw.GpuManager(config, cache)
    manager.rediscover()
    reader = manager.readers()[0]
    clock = [1000.0]

    def tick():
        clock[0] += config.interval_s
        cache.publish_stats(reader.info.id, time.time(), reader.sample(clock[0]))
    return tick, config.interval_s


def host_tick_factory(proc_root):
    reader, cache, clock = atw.HostReader(proc_root), atw.Cache(0.25, {}), [1000.0]

    def tick():
        clock[0] += 1.0
        cache.publish_host(time.time(), reader.sample(clock[0]))
    return tick


def naive_host_factory(proc_root):
    paths = dict((key, os.path.join(proc_root, rel)) for key, rel, _ in atw.HOST_FILES)
    prev = [None]

    def tick():
        texts = dict((k, atw.read_text(p, 1 << 18)) for k, p in paths.items())
        times, count = atw.parse_proc_stat_cpu(texts["stat"])
        busy = atw.compute_cpu_busy_pct(prev[0], times)
        prev[0] = times
        atw.build_host(busy, count, atw.parse_loadavg(texts["loadavg"]),
                       atw.parse_meminfo(texts["meminfo"], atw.MEMINFO_NAMES), atw.parse_pressure(texts["pressure"]))
    return tick


def measure(tick, ticks, repeat):
    for _ in range(min(200, ticks)):
        tick()
    rounds = []
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(ticks):
            tick()
        rounds.append((time.process_time() - t0) / ticks)
    return statistics.median(rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--proc-root", default="/proc")
    args = parser.parse_args()
    gpu_tick, interval = gpu_tick_factory()
    rows = [("host tick (/proc)", measure(host_tick_factory(args.proc_root), args.ticks, args.repeat)),
            ("host, open/read/close", measure(naive_host_factory(args.proc_root), args.ticks,
                                              args.repeat)),
            ("GPU tick (fixture)", measure(gpu_tick, args.ticks, args.repeat))]
    print("python %s, %d CPUs, load %s" % (sys.version.split()[0], os.cpu_count(),
                                          " ".join("%.2f" % v for v in os.getloadavg())))
    print("%-24s %12s" % ("row", "us/call"))
    for name, cost in rows:
        print("%-24s %12.1f" % (name, cost * 1e6))
    host, naive, gpu = rows[0][1], rows[1][1], rows[2][1]
    print("host tick / GPU tick: %.2fx; open/read/close / kept fds: %.2fx" % (host / gpu, naive / host))
    print("share of one core: host at 1 Hz %.4f %%, one GPU at %.0f Hz %.4f %%" % (
        host * 100 / atw.HOST_INTERVAL_S, 1 / interval, gpu * 100 / interval))


if __name__ == "__main__":
    main()
