#!/usr/bin/env python3
"""Benchmark (not a test): the cost of a WebSocket hello at connect.

Fills 8 GPUs' 10-minute rings at 250 ms (demo readers, injected time), then
measures, for this file and a baseline (the previous commit's file or
--baseline PATH): the hello's size, the time one build takes, and how long
it holds the cache lock (the samplers' publish_stats waits that long).
Several rounds; medians. The lock is timed by a probe thread that keeps
taking it while a build runs.

    python3 tests/bench/bench_hello.py [--gpus 8] [--rounds 7] [--baseline PATH | --rev HEAD~1]

Targets (#16): <= 5 ms holding the lock, <= 300 KB at 8 GPUs, built at most once per tick.
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def filled_cache(atw, gpus):
    infos = atw.demo_gpu_infos(gpus)
    cache = atw.Cache(0.25, {})
    cache.set_gpus(infos)
    backend = atw.DemoBackend(8, gpus, None)
    readers = [backend.open_reader(info) for info in infos]
    for k in range(int(atw.HISTORY_WINDOW_S / 0.25)):
        for reader in readers:
            cache.publish_stats(reader.info.id, 1764686400 + k * 0.25, reader.sample(1000 + k * 0.25))
    return cache


def longest_lock_wait(cache, build):
    """(build seconds, the longest a lock acquisition waited during it)."""
    waits, done = [], threading.Event()

    def probe():
        while not done.is_set():
            t = time.perf_counter()
            with cache._lock:
                pass
            waits.append(time.perf_counter() - t)
            time.sleep(0.0002)
    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.005)
    started = time.perf_counter()
    build()
    took = time.perf_counter() - started
    done.set()
    thread.join()
    return took, max(waits or [0.0])


def measure(atw, gpus, rounds):
    cache = filled_cache(atw, gpus)
    builds, locks, size = [], [], 0
    for i in range(rounds):
        cache.set_feature("bench_round", i)            # invalidates hello
        took, lock = longest_lock_wait(cache, lambda: cache.hello_payload(None))
        builds.append(took)
        locks.append(lock)
        size = len(cache.hello_payload(None))
    cache.set_feature("bench_round", -1)
    first = cache.hello_payload(None)
    reused = sum(cache.hello_payload(None) is first for _ in range(20))
    return size, statistics.median(builds), statistics.median(locks), reused


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline", help="a path to the baseline amdgpu_top_web.py")
    parser.add_argument("--rev", default="HEAD~1", help="else this git revision's file")
    args = parser.parse_args()
    baseline = args.baseline
    if baseline is None:
        text = subprocess.check_output(["git", "-C", ROOT, "show", args.rev + ":amdgpu_top_web.py"])
        handle = tempfile.NamedTemporaryFile(suffix=".py", delete=False)
        handle.write(text)
        handle.close()
        baseline = handle.name
    rows = []
    for label, path in (("baseline", baseline), ("this", os.path.join(ROOT, "amdgpu_top_web.py"))):
        rows.append((label,) + measure(load(path, "atw_" + label), args.gpus, args.rounds))
    print("hello at %d GPUs, full 10-minute rings at 250 ms; medians of %d rounds" % (
        args.gpus, args.rounds))
    for label, size, build, lock, reused in rows:
        print("%-8s %8.1f KB  build %6.1f ms  longest lock wait %6.2f ms  reused %d/20" % (
            label, size / 1024.0, build * 1e3, lock * 1e3, reused))
    base, this = rows
    print("ratio this/baseline: size %.3f  build %.3f  lock %.3f" % (
        this[1] / base[1], this[2] / base[2], this[3] / max(base[3], 1e-9)))


if __name__ == "__main__":
    main()
