#!/usr/bin/env python3
"""Benchmark (not a test): CPU and memory at rest, no clients, side by side.

Each round starts, at the same time and on the same stand-in NVML library
(tests/nvml_support.build_fake_nvml, --gpus GPUs, default 2): this file's
server at its default interval, the baseline file's (--baseline PATH, else
`git show --rev:amdgpu_top_web.py`), and nvitop-exporter at 1 s
(--exporter PATH: its console script, e.g. from a throw-away venv; skipped
when absent). After a settle, CPU (utime + stime of /proc/PID/stat) is
sampled over --seconds (default 60), and the sum of every thread's
/proc/PID/task/*/schedstat run time (nanoseconds: the finer figure, as
utime + stime counts 10 ms ticks), and RSS read at the end. Our servers
run with history on (a temporary SQLite file) and the process scan on.
Several rounds (--rounds, default 3); medians; the machine is shared, so
only ratios taken in the same round mean much.

Also prints this server's per-thread budget from /proc/PID/task/*/schedstat
(a small wrapper records each Python thread's native id by name).

    python3 tests/bench/bench_idle.py --exporter /tmp/nvx/bin/nvitop-exporter
        [--baseline PATH | --rev HEAD~1] [--gpus 2] [--seconds 60] [--rounds 3]
    python3 tests/bench/bench_idle.py --sysfs multi_gpu    # an AMD fixture, no NVML, no exporter
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import nvml_support as S  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
WRAPPER = r"""
import json, runpy, sys, threading, time
out, path = sys.argv[1], sys.argv[2]
def dump():
    time.sleep(8)
    with open(out, "w") as fh:
        json.dump(dict((str(t.native_id), t.name) for t in threading.enumerate()), fh)
threading.Thread(target=dump, daemon=True).start()
sys.argv = [path] + sys.argv[3:]
runpy.run_path(path, run_name="__main__")
"""


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


def thread_ns(pid):
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as fh:
                out[tid] = int(fh.read().split()[0])
        except OSError:
            pass
    return out


def start_ours(path, env, tmp, label):
    names = os.path.join(tmp, label + "-threads.json")
    wrapper = os.path.join(tmp, "wrapper.py")
    with open(wrapper, "w") as fh:
        fh.write(WRAPPER)
    env = dict(env, APP_LISTEN_ADDR="127.0.0.1:0",
               APP_HISTORY_PATH=os.path.join(tmp, label + "-history.sqlite"))
    with open(os.path.join(tmp, label + "-stderr.txt"), "a") as log:   # the logs, for a post-mortem
        proc = subprocess.Popen([sys.executable, wrapper, names, path], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    return proc, names


def one_round(args, baseline, env, tmp, port):
    procs = {}
    procs["this"] = start_ours(os.path.join(ROOT, "amdgpu_top_web.py"), env, tmp, "this")
    procs["baseline"] = start_ours(baseline, env, tmp, "baseline")
    if args.exporter and os.path.exists(args.exporter):
        procs["exporter@1s"] = (subprocess.Popen(
            [args.exporter, "--interval", "1", "--port", str(port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), None)
    time.sleep(args.settle)
    before = dict((k, cpu_s(p.pid)) for k, (p, _) in procs.items())
    sched_before = dict((k, sum(thread_ns(p.pid).values())) for k, (p, _) in procs.items())
    threads_before = thread_ns(procs["this"][0].pid)
    time.sleep(args.seconds)
    result = {}
    for key, (proc, _) in procs.items():
        sched = (sum(thread_ns(proc.pid).values()) - sched_before[key]) / 1e9 / args.seconds * 100
        result[key] = ((cpu_s(proc.pid) - before[key]) / args.seconds * 100, rss_mib(proc.pid), sched)
    threads_after = thread_ns(procs["this"][0].pid)
    with open(procs["this"][1]) as fh:
        names = json.load(fh)
    budget = collections.Counter()
    for tid, ns in threads_after.items():
        name = names.get(tid, "other")
        if name.startswith("sampler-clock"):
            name = "clock"              # the shared clock: GPUs, and host, procs, alerts if on it
        elif name.startswith("sampler-"):
            name = "samplers"
        budget[name] += (ns - threads_before.get(tid, 0)) / 1e9 / args.seconds * 100
    for key, (proc, _) in procs.items():
        if proc.poll() is not None:
            print("round: %s exited early with status %s" % (key, proc.returncode))
        proc.terminate()
        proc.wait()
    return result, budget


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporter", default="/tmp/nvx/bin/nvitop-exporter")
    parser.add_argument("--baseline")
    parser.add_argument("--rev", default="HEAD~1")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sysfs", help="a testdata/sys fixture instead of the stand-in NVML")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_idle.")
    print("logs and history files in", tmp)
    baseline = args.baseline
    if baseline is None:
        baseline = os.path.join(tmp, "baseline.py")
        with open(baseline, "wb") as fh:
            fh.write(subprocess.check_output(["git", "-C", ROOT, "show",
                                              args.rev + ":amdgpu_top_web.py"]))
    lib = S.build_fake_nvml()
    scenario = os.path.join(tmp, "scenario.txt")
    S.write_scenario(scenario, gpus=[{} for _ in range(args.gpus)])
    env = S.nvml_env(os.path.dirname(lib), scenario, base=dict(
        (k, v) for k, v in os.environ.items() if not k.startswith("APP_")))
    env.update({"APP_SYSFS_ROOT": os.path.join(tmp, "nosys"), "FAKE_NVML_RECHECK_MS": "1000"})
    os.makedirs(env["APP_SYSFS_ROOT"])
    if args.sysfs:
        env.update({"APP_SYSFS_ROOT": os.path.join(ROOT, "testdata", "sys", args.sysfs),
                    "APP_SHARE_ROOT": os.path.join(ROOT, "testdata", "share"),
                    "APP_NVML_LIBRARY": os.path.join(tmp, "no-libnvidia-ml.so.1")})
        args.exporter = None
    results, budgets = collections.defaultdict(list), collections.defaultdict(list)
    for r in range(args.rounds):
        result, budget = one_round(args, baseline, env, tmp, 18000 + r)
        for key, value in result.items():
            results[key].append(value)
        for key, value in budget.items():
            budgets[key].append(value)
        print("round %d: %s" % (r + 1, ", ".join("%s %.2f %% (schedstat %.3f %%) %.1f MiB" % (
            k, c, s, m) for k, (c, m, s) in sorted(result.items()))))
    print("\n%s, no clients, %d s x %d rounds, medians:" % (
        "fixture " + args.sysfs if args.sysfs else "%d GPUs (stand-in NVML)" % args.gpus,
        args.seconds, args.rounds))
    med = dict((k, tuple(statistics.median(row[i] for row in v) for i in range(3)))
               for k, v in results.items())
    for key, (cpu, mem, sched) in sorted(med.items()):
        print("  %-12s %5.2f %% of a core (schedstat %.3f %%)  RSS %5.1f MiB" % (
            key, cpu, sched, mem))
    for other in ("baseline", "exporter@1s"):
        if other in med:
            ratios = [a[2] / b[2] for a, b in zip(results["this"], results[other])]
            print("  this / %-12s CPU %.2f (schedstat %.2f; per round %s)  RSS %.2f" % (
                other, med["this"][0] / med[other][0], med["this"][2] / med[other][2],
                ", ".join("%.2f" % x for x in ratios), med["this"][1] / med[other][1]))
    print("\nthis server, per thread (schedstat), % of a core, median:")
    for name, values in sorted(budgets.items(), key=lambda kv: -statistics.median(kv[1])):
        print("  %-16s %6.3f" % (name, statistics.median(values)))


if __name__ == "__main__":
    main()
