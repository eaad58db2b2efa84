#!/usr/bin/env python3
"""Benchmark (not a test): syscalls per GPU per tick, kept fds + pread vs open/read/close.

Runs the real AmdGpuReader against a fixture sysfs tree for a fixed number of
ticks (a simulated clock advancing by the sample interval, so the slow files
and the fd revalidation run at their real rates) under `strace -f -c`, and the
same ticks reading every planned file with open/read/close (the naive way).
A zero-tick run of each mode is subtracted, so start-up costs cancel out.

    python3 tests/bench/bench_syscalls.py [--fixture rx6900xt] [--ticks 2000]
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import amdgpu_top_web as atw  # noqa: E402


def make_reader(fixture):
    config = atw.parse_config([], {"APP_SYSFS_ROOT": os.path.join(ROOT, "testdata", "sys", fixture),
                                   "APP_SHARE_ROOT": os.path.join(ROOT, "testdata", "share")})
    manager = atw.GpuManager(config, atw.Cache(config.interval_s, {}))
    manager.rediscover()
    readers = manager.readers()
    if not readers:
        sys.exit("no AMD GPU in fixture %s" % fixture)
    return readers[0], config.interval_s


def planned_paths(reader):
    attrs = [reader._status] + list(reader._fast.values()) + list(reader._slow.values())
    return [a.path for a in attrs]


def run_ticks(mode, fixture, ticks):
    """The measured body (runs inside strace)."""
    reader, interval = make_reader(fixture)
    paths = planned_paths(reader)
    now = 1000.0
    for _ in range(ticks):
        now += interval
        if mode == "kept":
            reader.sample(now)
        else:
            for path in paths:
                atw.read_bytes(path, atw.SYSFS_READ_SIZE)
    reader.close()


def count_syscalls(mode, fixture, ticks):
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        subprocess.run(["strace", "-f", "-c", "-o", out.name, sys.executable, __file__,
                        "--child", mode, "--fixture", fixture, "--ticks", str(ticks)], check=True)
        text = open(out.name).read()
    # strace -c ends with "100.00 SECONDS USECS/CALL CALLS [ERRORS] total".
    total = [line.split() for line in text.splitlines() if line.rstrip().endswith(" total")][-1]
    return int(total[3])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixture", default="rx6900xt")
    parser.add_argument("--ticks", type=int, default=2000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        run_ticks(args.child, args.fixture, args.ticks)
        return
    reader, interval = make_reader(args.fixture)
    files_fast = 1 + len(reader._fast)
    files_slow = len(reader._slow)
    slow_per_tick = files_slow * interval / atw.SLOW_FILES_EVERY_S
    reader.close()
    results = {}
    for mode in ("kept", "naive"):
        base = count_syscalls(mode, args.fixture, 0)
        total = count_syscalls(mode, args.fixture, args.ticks)
        results[mode] = (total - base) / float(args.ticks)
    print("fixture %s, %d ticks at %.0f ms; files read per tick: %d every tick + %d slow (every %.0f s)"
          % (args.fixture, args.ticks, interval * 1000, files_fast, files_slow, atw.SLOW_FILES_EVERY_S))
    print("%-28s %10s" % ("mode", "syscalls/tick"))
    print("%-28s %10.2f" % ("kept fd + pread (ours)", results["kept"]))
    print("%-28s %10.2f" % ("open/read/close (naive)", results["naive"]))
    per_file = results["kept"] / (files_fast + slow_per_tick)
    print("ratio naive/ours: %.2fx; ours per metric file read: %.3f syscalls (target <= 1)"
          % (results["naive"] / results["kept"], per_file))


if __name__ == "__main__":
    main()
