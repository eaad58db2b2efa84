#!/usr/bin/env python3
"""Benchmark (not a test): cost of the process-top /proc walk, against the naive way.

(a) The real /proc of this machine with N extra processes (default 1500), each
    holding ~20 ordinary fds: one Python parent opens 20 fds and forks; each
    child blocks reading a "lifeline" pipe and exits when it reads EOF, i.e.
    when the parent closes it or dies (so no child outlives the benchmark even
    if it is killed); the parent also SIGKILLs and reaps them at the end.
(b) A synthetic tree of 5,000 PIDs x 64 fds (symlinks + fdinfo files) in a
    temporary directory (tmpfs /dev/shm when present), removed at the end.

Compared: "naive" = the seed pseudocode (for every PID, list fdinfo/ and read
every fdinfo file, looking for drm-driver), ProcScanner's first (full) scan,
and its steady state (later scans: unchanged non-GPU PIDs are skipped). Naive and
full walk run --repeat times, interleaved, in this one process (steady state
4x as often); the table shows the best run (the timeit convention: slower runs
are other load on the machine, which the load average line shows) and the
median, microseconds per process and the ratios naive/scanner of the best runs.

    python3 tests/bench/bench_procscan.py [--procs 1500] [--pids 5000] [--fds 64] [--repeat 5]

The program under test is amdgpu_top_web (ROOT) unless PYTHONPATH provides one
first. Targets: full walk >= 2.5x cheaper than naive; steady state <= 1 ms per
100 processes and >= 10x cheaper than naive.
"""
import argparse
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)               # after PYTHONPATH, so a stand-in module can be tested
import amdgpu_top_web as atw  # noqa: E402

FDINFO_PLAIN = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t%d\n"


# -- the naive baseline ---------------------------------------------------------------

def naive_scan(proc_root):
    """Seed pseudocode: every fdinfo file of every PID, opened by path."""
    pids = drm = 0
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        pids += 1
        info_dir = os.path.join(proc_root, name, "fdinfo")
        try:
            fds = os.listdir(info_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                with open(os.path.join(info_dir, fd), "rb") as fh:
                    if b"drm-driver" in fh.read():
                        drm += 1
            except OSError:
                pass
    return pids, drm


# -- measurement --------------------------------------------------------------------------

def timed(fns, repeat):
    """Run the callables in turn, repeat rounds (interleaved, so a burst of
    other load does not hit only one of them) -> [(best, median) seconds]."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for slot, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - t0)
    return [(min(t), statistics.median(t)) for t in times]


def measure(proc_root, repeat, node_map):
    """-> dict of (best, median) seconds for naive/full/steady, and counts."""
    naive_scan(proc_root)                                  # warm the dentry cache

    def fresh_full():
        scanner = atw.ProcScanner(proc_root, max_pids=10 ** 6, max_fds_per_pid=64,
                                  budget_s=600, full_walk_every=10 ** 6)
        scanner.set_node_map(node_map)
        return scanner, scanner.scan()

    naive, full = timed([lambda: naive_scan(proc_root), fresh_full], repeat)
    scanner, first = fresh_full()
    scanner.scan()
    steady, = timed([scanner.scan], repeat * 4)
    last = scanner.scan()
    return {"naive": naive, "full": full, "steady": steady, "pids": first.stats["pids_total"],
            "skipped": last.stats["pids_skipped_unchanged"], "mode": scanner.fd_count_mode,
            "gpu_procs": sum(len(g["processes"]) for g in last.by_pci.values())}


# -- (a) real processes -------------------------------------------------------------------------

class Children(object):
    """N forked children holding the parent's 20 open fds, each blocked on a
    lifeline pipe; always reaped by close()."""

    def __init__(self, count, fds_each=20):
        self.pids = []
        self._fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(fds_each - 2)]
        self._r, self._w = os.pipe()
        try:
            for _ in range(count):
                self._spawn()
        except BaseException:
            self.close()
            raise

    def _spawn(self):
        pid = os.fork()
        if pid == 0:                                       # child: wait for EOF, then exit
            try:
                os.close(self._w)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.read(self._r, 1)
            finally:
                os._exit(0)
        self.pids.append(pid)

    def close(self):
        os.close(self._w)                                  # EOF: every child exits
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os.close(self._r)
        for fd in self._fds:
            os.close(fd)
        self.pids = []


# -- (b) synthetic tree ---------------------------------------------------------------------------

def build_synthetic(root, pids, fds, gpu_every=100):
    """pids x fds symlinks + fdinfo files; 1 PID in gpu_every holds renderD128."""
    gpu_body = open_sample()
    for index in range(pids):
        pid = 10000 + index
        base = os.path.join(root, str(pid))
        os.makedirs(os.path.join(base, "fd"))
        os.makedirs(os.path.join(base, "fdinfo"))
        with open(os.path.join(base, "stat"), "w") as fh:
            fh.write("%d (synthetic) S 1 %d %d 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 %d "
                     "1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 17 1 0 0 0 0 0 1 1 1 1 1 1 1 0\n"
                     % (pid, pid, pid, 5000 + pid))
        for fd in range(fds):
            gpu = index % gpu_every == 0 and fd == 5
            target = "/dev/dri/renderD128" if gpu else ("socket:[%d]" % (pid * 100 + fd))
            os.symlink(target, os.path.join(base, "fd", str(fd)))
            with open(os.path.join(base, "fdinfo", str(fd)), "w") as fh:
                fh.write(gpu_body if gpu else FDINFO_PLAIN % fd)
    os.symlink("10001", os.path.join(root, "self"))


def open_sample():
    path = os.path.join(ROOT, "testdata", "proc", "fdinfo_samples",
                        "fdinfo_amdgpu_drm_6.x_issue87.txt")
    with open(path) as fh:
        return "".join(line for line in fh if not line.startswith("#"))


# -- report --------------------------------------------------------------------------------

def report(title, res):
    per = lambda key: res[key][0] / res["pids"] * 1e6
    ratio = lambda key: res["naive"][0] / res[key][0]
    print("\n%s: %d PIDs, fd count via %s, %d GPU processes found, %d skipped when steady"
          % (title, res["pids"], res["mode"], res["gpu_procs"], res["skipped"]))
    print("  %-26s %9s %10s %11s %13s %8s" % ("approach", "best ms", "median ms", "us/process",
                                               "ms/100 procs", "naive/x"))
    for label, key in (("naive (read every fdinfo)", "naive"), ("ProcScanner full walk", "full"),
                       ("ProcScanner steady state", "steady")):
        best, median = res[key]
        print("  %-26s %9.2f %10.2f %11.2f %13.3f %7.1fx" % (label, best * 1e3, median * 1e3,
                                                            per(key), per(key) / 10.0,
                                                            ratio(key)))
    print("  targets: full >= 2.5x -> %s; steady <= 1 ms/100 procs -> %s; steady >= 10x -> %s"
          % (ok(ratio("full") >= 2.5), ok(per("steady") <= 10.0), ok(ratio("steady") >= 10.0)))


def ok(flag):
    return "met" if flag else "NOT met"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=1500, help="extra real processes (a)")
    parser.add_argument("--pids", type=int, default=5000, help="synthetic PIDs (b)")
    parser.add_argument("--fds", type=int, default=64, help="fds per synthetic PID (b)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print("python %s, kernel %s, %d CPUs, load average %.2f %.2f %.2f"
          % ((platform.python_version(), platform.release(), os.cpu_count() or 0)
             + os.getloadavg()))
    t0 = time.perf_counter()
    children = Children(args.procs)
    try:
        print("(a) forked %d children with ~20 fds each in %.1f s"
              % (len(children.pids), time.perf_counter() - t0))
        report("(a) real /proc", measure("/proc", args.repeat, {}))
    finally:
        children.close()
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix="bench_procscan_", dir=base)
    try:
        t0 = time.perf_counter()
        build_synthetic(tmp, args.pids, args.fds)
        print("\n(b) built %d PIDs x %d fds under %s in %.1f s"
              % (args.pids, args.fds, tmp, time.perf_counter() - t0))
        report("(b) synthetic tree", measure(tmp, max(1, args.repeat // 2),
                                             {"renderD128": "0000:0c:00.0"}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
