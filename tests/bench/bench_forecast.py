#!/usr/bin/env python3
"""Benchmark (not a test): CPU cost of the VRAM forecast and the alert engine.

Simulates --gpus GPUs (default 8) sampled at --hz (default 4) for --seconds
(default 300) of injected time, each with a noisy VRAM leak: every tick goes
through Cache.publish_stats (VramForecaster.on_stats: one point per second,
the Theil-Sen fit at most once per second per GPU) and the AlertEngine sink
(drained every second, as its thread would). Prints the CPU time per
simulated second (= the share of one core the live server would spend) and
the cost of one 120-point fit. Every --scan-s (default 2, the process scan's
default) each GPU also publishes a procs frame of --procs processes (default 8;
one holds 4 GiB idle, the rest work): the forecaster's process series and the
alert engine's per-process rule (gpu_held_idle) run on them.

    python3 tests/bench/bench_forecast.py [--gpus 8] [--hz 4] [--seconds 300] [--procs 8]
                                          [--baseline PATH]
        [--repeat 3]    # each row: the least CPU of this many runs (a shared machine's noise)

With --baseline (e.g. `git show HEAD~3:amdgpu_top_web.py > /tmp/base.py`), the
same rows for that file follow, in the same run.

Target: forecast + alerts < 2 % of one core for 8 GPUs at 4 Hz.
"""
import argparse
import importlib.util
import os
import random
import sys
import time
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)
import amdgpu_top_web as atw  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20


def procs_message(gpu_id, t, count):
    rows = [atw.build_proc_row(pid=1000 + i, name="p%d" % i, user="u", start_time=5000 + i,
                               vram_bytes=(4 if i == 0 else 1) * GiB,
                               engines_pct={"gfx": 0.0 if i == 0 else 20.0 + i, "compute": 0.0})
            for i in range(count)]
    entry = atw.build_procs_entry(rows, count, atw.build_capabilities(
        "fdinfo", True, True, ("gfx", "compute")))
    return atw.build_procs_message(gpu_id, t, entry, None, {"cut_short": False, "duration_s": 0})


def run(gpus, hz, seconds, alerts, procs=8, scan_s=2):
    infos = atw.demo_gpu_infos(min(gpus, atw.DEMO_MAX_GPUS))
    cache = atw.Cache(1.0 / hz, {})
    cache.set_gpus(infos)
    engine = atw.AlertEngine(cache, atw.parse_alert_rules()) if alerts else None
    if engine:
        cache.add_sink(engine)
    rng = random.Random(1)
    t0 = 1764686400.0
    base = atw.new_metrics({"runtime_status": "active", "temp_c": 60.0, "power_w": 200.0,
                            "gpu_busy_pct": 70, "vram_total_bytes": 24 * GiB})
    started = time.process_time()
    for tick in range(int(seconds * hz)):
        t = t0 + tick / float(hz)
        for i, info in enumerate(infos):
            used = int(14 * GiB + (i + 1) * 5 * MiB * (t - t0) + rng.gauss(0, 4 * MiB))
            cache.publish_stats(info.id, t, dict(base, vram_used_bytes=min(used, 24 * GiB)))
            if procs and tick % (scan_s * hz) == 0:
                cache.publish_procs(info.id, procs_message(info.id, t, procs))
        if engine and tick % hz == hz - 1:
            engine.drain()
    return time.process_time() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hz", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--procs", type=int, default=8, help="processes per GPU (0: no procs frames)")
    parser.add_argument("--scan-s", type=int, default=2, help="seconds between procs frames")
    parser.add_argument("--baseline", help="another amdgpu_top_web.py, measured after this one")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each row; the least CPU is kept (others' load only adds)")
    args = parser.parse_args()
    report(args, "this")
    if args.baseline:
        global atw
        spec = importlib.util.spec_from_file_location("atw_baseline", args.baseline)
        atw = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(atw)
        report(args, "baseline")


def report(args, label):
    print("-- %s: %s" % (label, atw.__file__))
    ts = [float(i) for i in range(120)]
    used = [14 * GiB + 20 * MiB * i + random.gauss(0, MiB) for i in range(120)]
    fit = min(timeit.repeat(lambda: atw.compute_vram_forecast(ts, used, 24 * GiB),
                            number=50, repeat=5)) / 50
    print("one forecast (120 points, Theil-Sen + Sen's interval): %.2f ms" % (fit * 1e3))
    for label, alerts in (("publish_stats without forecast", None), ("forecast", False),
                          ("forecast + alert engine", True)):
        if alerts is None:
            saved, atw.VramForecaster.on_stats = atw.VramForecaster.on_stats, (
                lambda self, t, m: atw.new_vram_forecast())
            cpu = min(run(args.gpus, args.hz, args.seconds, False, args.procs, args.scan_s)
                      for _ in range(args.repeat))
            atw.VramForecaster.on_stats = saved
            plain = cpu
        else:
            cpu = min(run(args.gpus, args.hz, args.seconds, alerts, args.procs, args.scan_s)
                      for _ in range(args.repeat))
        print("%-32s %d GPUs at %d Hz: %.2f ms CPU per second = %.2f %% of a core "
              "(%.2f %% over plain publishing)" % (
                  label, args.gpus, args.hz, cpu / args.seconds * 1e3, cpu / args.seconds * 100,
                  (cpu - plain) / args.seconds * 100))


if __name__ == "__main__":
    main()
