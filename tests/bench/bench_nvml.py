#!/usr/bin/env python3
"""Benchmark (not a test): CPU cost per sampler tick of our NVML reader, against NVIDIA's pynvml.

Both read the same metric set (the contract's "NVIDIA mapping": utilisation,
graphics and memory clocks, GPU and memory temperature, fan % and RPM, power,
power limit, energy, v2 memory, PCIe gen/width, P-state, clock-event reasons,
encoder and decoder %) through the same libnvidia-ml.so.1, in this one process,
into the same 32-key metrics dict (so the work is the same; the two results are
compared once before timing). Rows:

  ours               amdgpu_top_web.NvidiaBackend.open(config) -> discover() ->
                     open_reader(info) -> reader.sample(now), once per tick
  pynvml (naive)     one pynvml call per metric, each in its own try/except
                     NVMLError, as a typical pynvml monitor is written: on a
                     data-centre card the two fan calls raise NotSupported
                     every tick
  pynvml (caching)   the same code, but a call that raised NotSupported (or
                     FunctionNotFound) once is skipped from then on
  ctypes floor       the bound functions ours calls, with ours' prepared
                     arguments (and its argtypes), and nothing else
  ctypes floor, no argtypes   the same calls and arguments through function
                     objects without argtypes (as pynvml binds them): the
                     library's own cost plus the cheapest ctypes call; what no
                     Python reader can go below

CPU is time.process_time(), wall is time.perf_counter(); each of --repeat
rounds (default 5) runs --ticks ticks (default 20000) of every row in turn,
after a warm-up; the table shows the median round. Ratios are ours / pynvml;
"python only" subtracts the no-argtypes floor from both sides. Target: ours <= 0.5x
pynvml (CPU). When it is not met, a cProfile of reader.sample is printed.

A second table times one process-top scan (our NvmlProcSource.scan(), from
backend.proc_source()) against pynvml doing the same: the compute, graphics
and MPS lists, the per-process utilisation API ours uses
(nvmlDeviceGetProcessesUtilizationInfo, else nvmlDeviceGetProcessUtilization)
and each process's name (nvmlSystemGetProcessName when /proc does not show the
PID; /proc/PID/stat, cmdline, status and cgroup when it does, as ours reads),
merged into one row per PID ("same calls and reads": the same NVML calls and
file reads as ours, but none of ours' parsing: uid, container, cmdline
redaction, the full row key set, totals); plus "pynvml (minimal)": only
nvmlDeviceGetComputeRunningProcesses + GraphicsRunningProcesses +
nvmlDeviceGetProcessUtilization, no names, no merge (less work than ours: a
lower bound for pynvml, not a like-for-like). No target is set for it.

By default the stand-in library (tests/nvml/fake_nvml.c, compiled with
tests/nvml_support.build_fake_nvml against NVIDIA's nvml.h) plays one idle
H100 80GB (fans NOT_SUPPORTED) with --procs processes (default 20; real child
processes, so /proc shows them). In the tests the stand-in stat()s its
scenario file on every call; here it is told (FAKE_NVML_RECHECK_MS, default
1000; --recheck-ms 0 for every call) to look at most once a second, so that
its own stat() does not swamp the readers being compared. A real driver's
calls cost more (an ioctl each), so on real hardware the ratios move towards 1.

    .venv/py3.11/bin/python tests/bench/bench_nvml.py [--ticks 20000] [--repeat 5]
        [--procs 20] [--scans 2000] [--profile]
    .venv/py3.11/bin/python tests/bench/bench_nvml.py --library /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 --gpu 0

With --library: that real library and GPU --gpu (NVML index), no scenario;
the process table then times whatever runs on that GPU. pynvml
(nvidia-ml-py) must be importable; the program under test is amdgpu_top_web
(ROOT) unless PYTHONPATH provides one first.
"""
import argparse
import cProfile
import ctypes
import io
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
sys.path.append(ROOT)               # after PYTHONPATH, so a stand-in module can be tested
sys.path.append(TESTS)
os.environ.setdefault("FAKE_NVML_CHILD", "1")       # nvml_support without pytest
import amdgpu_top_web as atw  # noqa: E402
import nvml_support  # noqa: E402

try:
    import pynvml as N
except ImportError:                 # pragma: no cover - reported in main()
    N = None

TARGET = 0.5


# -- the stand-in machine --------------------------------------------------------------

class Children(object):
    """count `cat` processes reading a pipe from us: they exit when we close it
    or die, so none outlives the benchmark; close() also kills and reaps them."""

    def __init__(self, count):
        self.procs = []
        try:
            for _ in range(count):
                self.procs.append(subprocess.Popen(["cat"], stdin=subprocess.PIPE,
                                                   stdout=subprocess.DEVNULL))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def close(self):
        for p in self.procs:
            p.stdin.close()
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def write_machine(scenario, pids):
    """One default (H100) GPU; pids: the first two thirds compute, then
    graphics, every fifth in both lists; each with VRAM and a utilisation
    sample stamped "now" (so every scan sees new samples)."""
    procs, util, names = [], [], {}
    for n, pid in enumerate(pids):
        mem = (n + 1) * 256 * 1024 * 1024
        lists = ["compute"] if n < len(pids) * 2 // 3 else ["graphics"]
        if n % 5 == 4:
            lists = ["compute", "graphics"]
        for lst in lists:
            procs.append({"list": lst, "pid": pid, "mem": mem})
        util.append({"pid": pid, "sm": (n * 7) % 100, "mem": (n * 3) % 100, "enc": 0, "dec": 0})
        names[pid] = "/usr/bin/python3"
    return nvml_support.write_scenario(scenario, gpus=[{"util_gpu": 37, "util_mem": 12,
                                                        "clock_graphics": 1755}],
                                       procs=procs, util=util, procnames=names)


# -- ours -------------------------------------------------------------------------------

def open_ours(library, sysfs_root, proc_root, pci):
    config = atw.parse_config([], {"APP_NVML_LIBRARY": library, "APP_SYSFS_ROOT": sysfs_root,
                                   "APP_PROC_ROOT": proc_root})
    backend = atw.NvidiaBackend.open(config)
    if backend is None:
        sys.exit("our NvidiaBackend could not open %s" % library)
    infos = [i for i in backend.discover() if i.pci == pci]
    if not infos:
        sys.exit("our backend does not list the GPU at %s" % pci)
    return backend, infos[0]


# -- pynvml ------------------------------------------------------------------------------

def pynvml_version():
    try:
        from importlib import metadata
        return metadata.version("nvidia-ml-py")
    except Exception:               # Python < 3.8, or not installed as a distribution
        return "?"


def pynvml_open(library, index):
    """pynvml on the very library ours loaded (nvmlLib set before nvmlInit)."""
    N.nvmlLib = ctypes.CDLL(library)
    N.nvmlInit()
    handle = N.nvmlDeviceGetHandleByIndex(index)
    pci = N.nvmlDeviceGetPciInfo(handle)
    return handle, "%04x:%02x:%02x.0" % (pci.domain, pci.bus, pci.device)


class PynvmlReader(object):
    """The contract's metric set through pynvml, written as a pynvml monitor
    would be: one try/except per call. cache=True skips, from then on, a call
    that raised NotSupported / FunctionNotFound once."""

    KEYS = ("util", "sclk", "mclk", "temp", "temp_mem", "fan_pct", "fan_rpm", "power",
            "power_cap", "energy", "memory", "pcie_gen", "pcie_width", "pstate", "reasons",
            "enc", "dec")

    def __init__(self, handle, cache):
        self.h = handle
        self.cache = cache
        self.ok = dict.fromkeys(self.KEYS, True)
        self.mem_v2 = True

    def _failed(self, key, exc):
        if self.cache and exc.value in (N.NVML_ERROR_NOT_SUPPORTED, N.NVML_ERROR_FUNCTION_NOT_FOUND):
            self.ok[key] = False

    def sample(self, now):
        h, ok, NVMLError = self.h, self.ok, N.NVMLError
        m = dict.fromkeys(atw.METRIC_KEYS)
        m["runtime_status"] = "active"
        if ok["util"]:
            try:
                u = N.nvmlDeviceGetUtilizationRates(h)
                m["gpu_busy_pct"], m["mem_busy_pct"] = u.gpu, u.memory
            except NVMLError as e:
                self._failed("util", e)
        if ok["sclk"]:
            try:
                m["sclk_mhz"] = N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_GRAPHICS)
            except NVMLError as e:
                self._failed("sclk", e)
        if ok["mclk"]:
            try:
                m["mclk_mhz"] = N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_MEM)
            except NVMLError as e:
                self._failed("mclk", e)
        if ok["temp"]:
            try:
                m["temp_c"] = N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU)
            except NVMLError as e:
                self._failed("temp", e)
        if ok["temp_mem"]:
            try:
                fv = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_MEMORY_TEMP])[0]
                if fv.nvmlReturn == N.NVML_SUCCESS:
                    m["temp_mem_c"] = atw._nv_field_value(fv)
            except NVMLError as e:
                self._failed("temp_mem", e)
        if ok["fan_pct"]:
            try:
                m["fan_pct"] = N.nvmlDeviceGetFanSpeed(h)
            except NVMLError as e:
                self._failed("fan_pct", e)
        if ok["fan_rpm"]:
            try:
                m["fan_rpm"] = N.nvmlDeviceGetFanSpeedRPM(h)
            except NVMLError as e:
                self._failed("fan_rpm", e)
        if ok["power"]:
            try:
                m["power_w"] = N.nvmlDeviceGetPowerUsage(h) / 1000.0
            except NVMLError as e:
                self._failed("power", e)
        if ok["power_cap"]:
            try:
                m["power_cap_w"] = N.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            except NVMLError as e:
                self._failed("power_cap", e)
        if ok["energy"]:
            try:
                m["energy_j"] = N.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
            except NVMLError as e:
                self._failed("energy", e)
        if ok["memory"]:
            try:
                if self.mem_v2:
                    mem = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
                    m["vram_total_bytes"], m["vram_used_bytes"] = mem.total, mem.used
                    m["vram_reserved_bytes"], m["vram_used_source"] = mem.reserved, "nvml_v2"
                else:
                    mem = N.nvmlDeviceGetMemoryInfo(h)
                    m["vram_total_bytes"], m["vram_used_bytes"] = mem.total, mem.used
                    m["vram_used_source"] = "nvml_v1"
            except NVMLError as e:
                if self.mem_v2:
                    self.mem_v2 = False          # every pynvml user needs this fallback
                else:
                    self._failed("memory", e)
        if ok["pcie_gen"]:
            try:
                m["pcie_gen"] = N.nvmlDeviceGetCurrPcieLinkGeneration(h)
            except NVMLError as e:
                self._failed("pcie_gen", e)
        if ok["pcie_width"]:
            try:
                m["pcie_width"] = N.nvmlDeviceGetCurrPcieLinkWidth(h)
            except NVMLError as e:
                self._failed("pcie_width", e)
        if ok["pstate"]:
            try:
                ps = N.nvmlDeviceGetPerformanceState(h)
                m["pstate"] = None if ps == N.NVML_PSTATE_UNKNOWN else ps
            except NVMLError as e:
                self._failed("pstate", e)
        if ok["reasons"]:
            try:
                m["throttle_reasons"] = atw.parse_clock_event_reasons(
                    N.nvmlDeviceGetCurrentClocksEventReasons(h))
            except NVMLError as e:
                self._failed("reasons", e)
        if ok["enc"]:
            try:
                m["enc_pct"] = N.nvmlDeviceGetEncoderUtilization(h)[0]
            except NVMLError as e:
                self._failed("enc", e)
        if ok["dec"]:
            try:
                m["dec_pct"] = N.nvmlDeviceGetDecoderUtilization(h)[0]
            except NVMLError as e:
                self._failed("dec", e)
        return m


def floor_tick(reader, plain=False):
    """The calls ours makes (after its warm-up dropped the unsupported ones),
    with its prepared arguments, and nothing else; plain=True: through
    pynvml's function objects (no argtypes, so ctypes checks nothing)."""
    calls = [(getattr(N.nvmlLib, c.name) if plain else c.fn, c.args)
             for c in reader._calls if c is not None]

    def tick(now):
        for fn, args in calls:
            fn(*args)
    return tick


# -- process top through pynvml -------------------------------------------------------------

class PynvmlProcs(object):
    """One scan: the three lists (pynvml's own wrappers, all _v3), the per-process utilisation API ours uses, a name
    per PID, one row per PID (full=True); or the minimal Compute + Graphics +
    nvmlDeviceGetProcessUtilization (full=False)."""

    def __init__(self, handle, proc_root, full):
        self.h, self.root, self.full = handle, proc_root, full
        self.last_seen = 0
        self.new_api = full and nvml_support.has_symbol(N, "nvmlDeviceGetProcessesUtilizationInfo")

    def scan(self):
        h, NVMLError = self.h, N.NVMLError
        found = []
        lists = [("C", N.nvmlDeviceGetComputeRunningProcesses),
                 ("G", N.nvmlDeviceGetGraphicsRunningProcesses)]
        if self.full:
            lists.append(("M", N.nvmlDeviceGetMPSComputeRunningProcesses))
        for kind, fn in lists:
            try:
                found.extend((p.pid, p.usedGpuMemory, kind) for p in fn(h))
            except NVMLError:
                pass
        last = self.last_seen or int(time.time() * 1e6) - 1000000
        try:
            if self.new_api:
                samples = [(s.pid, s.timeStamp, {"sm": s.smUtil, "mem": s.memUtil, "enc": s.encUtil,
                                                 "dec": s.decUtil, "jpg": s.jpgUtil, "ofa": s.ofaUtil})
                           for s in N.nvmlDeviceGetProcessesUtilizationInfo(h, last)]
            else:
                samples = [(s.pid, s.timeStamp, {"sm": s.smUtil, "mem": s.memUtil, "enc": s.encUtil,
                                                 "dec": s.decUtil})
                           for s in N.nvmlDeviceGetProcessUtilization(h, last)]
        except NVMLError:
            samples = []
        if samples:
            self.last_seen = max(s[1] for s in samples)
        if not self.full:
            return found, samples
        rows = {}
        for pid, used, kind in found:
            row = rows.get(pid)
            if row is None:
                rows[pid] = row = {"pid": pid, "vram_bytes": used, "type": kind}
            else:
                row["type"] += "+" + kind
                if used is not None and (row["vram_bytes"] or 0) < used:
                    row["vram_bytes"] = used
        for pid, _, engines in samples:
            if pid in rows:
                rows[pid]["engines_pct"] = engines
        for pid, row in rows.items():
            base = "%s/%d/" % (self.root, pid)
            try:
                with open(base + "stat", "rb") as f:
                    stat = f.read()
            except OSError:
                try:
                    row["name"] = N.nvmlSystemGetProcessName(pid)
                except NVMLError:
                    row["name"] = None
                continue
            row["name"] = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode("utf-8", "replace")
            for leaf in ("cmdline", "status", "cgroup"):
                try:
                    with open(base + leaf, "rb") as f:
                        row[leaf] = f.read()
                except OSError:
                    row[leaf] = None
        return rows


# -- measurement ------------------------------------------------------------------------------

def timed(rows, count, repeat):
    """rows: [(label, fn(now))]. Every row runs `count` calls per round, rows
    interleaved, `repeat` rounds -> {label: (median cpu s, median wall s)} per call."""
    cpu = dict((label, []) for label, _ in rows)
    wall = dict((label, []) for label, _ in rows)
    now = 1000.0
    for _ in range(repeat):
        for label, fn in rows:
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(count):
                now += 0.25
                fn(now)
            w1, c1 = time.perf_counter(), time.process_time()
            cpu[label].append((c1 - c0) / count)
            wall[label].append((w1 - w0) / count)
    return dict((label, (statistics.median(cpu[label]), statistics.median(wall[label])))
                for label, _ in rows)


def warm(rows, count):
    for _, fn in rows:
        for n in range(count):
            fn(float(n))


def print_table(title, rows, res, base_labels, floor_label=None):
    print("\n" + title)
    print("  %-34s %12s %12s" % ("", "CPU us/call", "wall us/call")
          + "".join("  %16s" % ("ours/" + short) for short in base_labels.values()))
    ours = res[rows[0][0]][0]
    for label, _ in rows:
        c, w = res[label]
        line = "  %-34s %12.2f %12.2f" % (label, c * 1e6, w * 1e6)
        if label == rows[0][0]:
            line += "".join("  %16s" % "" for _ in base_labels)
        else:
            line += "".join("  %16s" % ("%.2fx" % (ours / res[b][0]) if label == b else "")
                            for b in base_labels)
        print(line)
    if floor_label:
        fl = res[floor_label][0]
        parts = []
        for b, short in base_labels.items():
            denom = res[b][0] - fl
            parts.append("ours/%s %s" % (short, "%.2fx" % ((ours - fl) / denom) if denom > 0 else "n/a"))
        print("  python only (minus the no-argtypes floor): " + "; ".join(parts))


def profile_sample(reader, ticks):
    prof = cProfile.Profile()
    now = 5000.0
    prof.enable()
    for _ in range(ticks):
        now += 0.25
        reader.sample(now)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    print("\ncProfile of %d x reader.sample (sorted by own time; cProfile has no entry for a "
          "ctypes foreign call, so sample's own time includes its NVML calls):" % ticks)
    print("\n".join("  " + line for line in out.getvalue().strip().splitlines()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=20000, help="sampler ticks per round")
    parser.add_argument("--scans", type=int, default=2000, help="process scans per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the median is shown)")
    parser.add_argument("--procs", type=int, default=20, help="processes on the stand-in GPU")
    parser.add_argument("--library", help="a real libnvidia-ml.so.1 (default: the stand-in)")
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU (with --library)")
    parser.add_argument("--profile", action="store_true", help="print the cProfile of reader.sample")
    parser.add_argument("--recheck-ms", type=int, default=1000,
                        help="stand-in: look at the scenario at most every N ms (0: every call)")
    args = parser.parse_args(argv)
    if N is None:
        sys.exit("pynvml is not importable: pip install nvidia-ml-py==13.615.71")
    print("python %s, kernel %s, %d CPUs, load average %.2f %.2f %.2f, pynvml %s"
          % ((platform.python_version(), platform.release(), os.cpu_count() or 0)
             + os.getloadavg() + (pynvml_version(),)))
    tmp = tempfile.mkdtemp(prefix="bench_nvml_")
    children = None
    try:
        if args.library:
            library, index = args.library, args.gpu
            print("library: %s (real), NVML index %d" % (library, index))
        else:
            library, index = nvml_support.build_fake_nvml(), 0
            children = Children(args.procs)
            scenario = os.path.join(tmp, "scenario")
            write_machine(scenario, children.pids)
            os.environ["FAKE_NVML_SCENARIO"] = scenario
            os.environ.pop("FAKE_NVML_LOG", None)
            if args.recheck_ms:
                os.environ["FAKE_NVML_RECHECK_MS"] = str(args.recheck_ms)
            print("library: the stand-in %s\n  scenario: 1 x %s (fans NOT_SUPPORTED), %d processes"
                  % (os.path.relpath(library, ROOT), nvml_support.GPU_DEFAULTS["name"], args.procs))
        sysfs = os.path.join(tmp, "sys")
        os.makedirs(sysfs)
        handle, pci = pynvml_open(library, index)
        backend, info = open_ours(library, sysfs, "/proc", pci)
        print("  GPU: %s %s (ours: %s), driver %s" % (pci, info.name, info.id,
                                                     N.nvmlSystemGetDriverVersion()))
        reader = backend.open_reader(info)
        naive, caching = PynvmlReader(handle, False), PynvmlReader(handle, True)

        warm([("", reader.sample), ("", naive.sample), ("", caching.sample)], 500)
        ours_m, naive_m, cach_m = reader.sample(1.0), naive.sample(1.0), caching.sample(1.0)
        moving = ("power_w", "energy_j", "gpu_busy_pct", "mem_busy_pct", "sclk_mhz", "temp_c",
                  "temp_mem_c", "vram_used_bytes", "enc_pct", "dec_pct", "throttle_reasons", "pstate")
        diff = sorted(k for k in atw.METRIC_KEYS if ours_m[k] != naive_m[k] and not
                      (args.library and k in moving))
        diff += sorted(k for k in atw.METRIC_KEYS if naive_m[k] != cach_m[k] and not
                       (args.library and k in moving) and k not in diff)
        print("  same metrics from ours and both pynvml readers: %s"
              % ("yes" if not diff else "NO, they differ in " + ", ".join(diff)))
        skipped = [k for k, v in caching.ok.items() if not v]
        print("  NVML calls per tick: ours %d, pynvml naive %d (%s raise every tick), "
              "pynvml caching %d" % (sum(1 for c in reader._calls if c is not None),
                                     len(PynvmlReader.KEYS), ", ".join(skipped) or "none",
                                     len(PynvmlReader.KEYS) - len(skipped)))

        rows = [("ours (NvidiaGpuReader.sample)", reader.sample),
                ("pynvml (naive try/except)", naive.sample),
                ("pynvml (caching NotSupported)", caching.sample),
                ("ctypes floor (ours' calls only)", floor_tick(reader)),
                ("ctypes floor, no argtypes", floor_tick(reader, plain=True))]
        res = timed(rows, args.ticks, args.repeat)
        bases = {"pynvml (naive try/except)": "naive", "pynvml (caching NotSupported)": "caching"}
        print_table("Sampler tick: %d ticks x %d rounds, median round" % (args.ticks, args.repeat),
                    rows, res, bases, "ctypes floor, no argtypes")
        ours = res[rows[0][0]][0]
        verdicts = ["%s %.2fx -> %s" % (short, ours / res[b][0],
                                         "met" if ours / res[b][0] <= TARGET else "NOT met")
                    for b, short in bases.items()]
        met = all(ours / res[b][0] <= TARGET for b in bases)
        print("  target ours <= %.1fx pynvml (CPU): %s" % (TARGET, "; ".join(verdicts)))
        if not args.library:
            n_calls = sum(1 for c in reader._calls if c is not None)
            st = min(timeit.repeat(lambda: os.stat(scenario), number=2000, repeat=5)) / 2000
            if args.recheck_ms:
                print("  the stand-in looks at its scenario at most every %d ms (FAKE_NVML_RECHECK_MS)"
                      % args.recheck_ms)
            else:
                print("  the stand-in stat()s its scenario on every call: os.stat here %.2f us, x %d "
                      "calls = ~%.0f us of the floor" % (st * 1e6, n_calls, st * 1e6 * n_calls))
        if args.profile or not met:
            profile_sample(reader, min(args.ticks, 20000))

        # -- process top -----------------------------------------------------------------------
        empty = os.path.join(tmp, "proc_empty")
        os.makedirs(empty)
        cases = [("/proc shows the PIDs", "/proc")]
        if not args.library:
            cases.append(("PIDs not in /proc (names from NVML)", empty))
        for title, proc_root in cases:
            pbackend, _ = open_ours(library, sysfs, proc_root, pci)
            source = pbackend.proc_source()
            full, minimal = PynvmlProcs(handle, proc_root, True), PynvmlProcs(handle, proc_root, False)
            entry = source.scan().by_pci[pci]
            seen = len(entry["processes"])
            visible = sum(1 for r in entry["processes"] if r["visible"])
            prow = [("ours (NvmlProcSource.scan)", lambda now: source.scan()),
                    ("pynvml (same calls and reads)", lambda now: full.scan()),
                    ("pynvml (minimal: C+G lists, util)", lambda now: minimal.scan())]
            warm(prow, 50)
            pres = timed(prow, args.scans, args.repeat)
            print_table("Process scan, %s: %d processes (%d visible), %d scans x %d rounds"
                        % (title, seen, visible, args.scans, args.repeat), prow, pres,
                        {"pynvml (same calls and reads)": "same", "pynvml (minimal: C+G lists, util)": "minimal"})
            pbackend.close()
        N.nvmlShutdown()
        backend.close()
    finally:
        if children is not None:
            children.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
