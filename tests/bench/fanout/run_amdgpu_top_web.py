#!/usr/bin/env python3
"""(a) This program: amdgpu_top_web's own App (HTTP server, Cache, Hub,
DashboardProtocol) in its own process, with the GPU manager swapped for one
that declares a single GPU and publishes nothing by itself.

Everything between a sample and the sockets is the production path: on
"go N" this process's main thread (standing in for a Sampler thread) calls
cache.publish_stats() at --rate Hz with a fixed ~1 KB metrics dict plus the
bench's sent_us, so the frame is JSON-encoded once, framed once
(encode_frame), pushed to the history ring, handed to Hub.on_frame and fanned
out by the hub thread to every client. Clients connect through the real
/ws handshake (DashboardHandler.route_ws -> Hub.add_client) and get the real
hello. The process scanner is off and --ws-read-timeout is 3600s, so there are
no procs frames and no keepalive pings in the window (the peers have neither);
everything else is the default configuration. See common.py for the protocol
with bench_fanout.py.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

import amdgpu_top_web as atw  # noqa: E402  (the module under test)

from common import load_metrics, parse_go, raise_nofile, realtime_us, run_ticks, say, tick_metrics  # noqa: E402

BENCH_GPU = atw.GpuInfo(id="card0", pci="0000:03:00.0", pci_id="1002:747e", revision="c8",
                        name="bench GPU", render_node="/dev/dri/renderD128", driver="amdgpu",
                        apu=False, demo=True, device_dir=None, hwmon_dir=None)


class BenchManager(atw.StoppableThread):
    """Stands in for GpuManager/DemoManager: one GPU, no samplers."""

    def __init__(self, cache):
        atw.StoppableThread.__init__(self, "discovery")
        self.cache = cache

    def run(self):
        self.cache.set_gpus([BENCH_GPU])
        self.cache.ready.set()
        self.stopping.wait()

    def readers(self):
        return []

    def close_backends(self):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--max-clients", type=int, default=2048)
    parser.add_argument("--profile", help="cProfile the hub thread's run() into this file")
    args = parser.parse_args()
    raise_nofile()
    base = load_metrics(args.metrics)
    config = atw.parse_config(["--listen", "127.0.0.1:0", "--proc-enable", "false",
                               "--ws-max-clients", str(args.max_clients),
                               "--ws-read-timeout", "3600s", "--interval", "%gms" % (1000.0 / args.rate),
                               "--log-level", "WARNING"], {})
    atw.setup_logging(config.log_level)
    app = atw.App(config)
    app.manager = BenchManager(app.cache)      # before start(): App builds a real GpuManager
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        hub_run = app.hub.run
        app.hub.run = lambda: profiler.runcall(hub_run)
    _, port = app.start()
    app.cache.ready.wait(10)
    cache = app.cache

    def tick():
        now_us = realtime_us()
        cache.publish_stats("card0", now_us / 1e6, tick_metrics(base, now_us))

    say("PORT", port)
    try:
        for line in sys.stdin:
            count = parse_go(line)
            if count is None:
                break
            if count:
                late = run_ticks(count, args.rate, tick)
                say("DONE", count, "%.1f" % late, "dropped=%d clients=%d"
                    % (app.hub.stats["dropped_frames"], app.hub.client_count()))
    finally:
        app.stop()
        if profiler is not None:
            profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
