"""Helpers for tests that use the stand-in NVML library (tests/nvml/fake_nvml.c).

The library is compiled at test time against NVIDIA's nvml.h (the PyPI wheel
nvidia-nvml-dev, which tests/run.sh unpacks into .cache/nvml-dev and points
NVML_HEADER_DIR at; its licence forbids committing it).  What it reports comes
from a scenario file (format: tests/nvml/README.md) written by
``write_scenario``; the library re-reads it whenever it changes.

API (everything a test needs):
  build_fake_nvml(out_dir=None, variant="full") -> path of libnvidia-ml.so.1
  build_variants(variants=None) -> {variant: path} (compiles in parallel)
  fake_nvml_lib                  session fixture: directory of the "full" build
  fake_nvml_build                session fixture: callable variant -> directory
  VARIANTS, VARIANT_MISSING      compile flags / symbols each variant lacks
  write_scenario(path, gpus=None, procs=(), util=(), options=None,
                 procnames=None) -> Scenario (resolved values, for asserts)
  err("NOT_SUPPORTED") -> "err:NOT_SUPPORTED" (a value that makes a call fail)
  nvml_env(lib_dir, scenario_path, log_path=None, base=None) -> env dict
  run_python(lib_dir, scenario_path, code, ...) -> CompletedProcess
  pynvml_snapshot(lib_dir, scenario_path, last_seen=0, ...) -> dict (oracle)
  read_call_log(path) -> [Call(fn, args, rc)] ; count_calls(path, fn)

Runs on Python 3.8+.  A child process started with FAKE_NVML_CHILD=1 imports
this module without pytest (the snapshot code runs there).
"""

import collections
import ctypes
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

if os.environ.get("FAKE_NVML_CHILD") == "1":
    pytest = None                      # child process: no pytest import (speed)
else:
    import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SOURCE = os.path.join(TESTS, "nvml", "fake_nvml.c")
CACHE = os.path.join(REPO, ".cache")
BUILD_ROOT = os.path.join(CACHE, "nvml-build")
HEADER_CACHE = os.path.join(CACHE, "nvml-dev")
HEADER_PIN = "nvidia-nvml-dev==13.5.37"
LIB_NAME = "libnvidia-ml.so.1"

CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-O2",
          "-fPIC", "-shared", "-DNVML_NO_UNVERSIONED_FUNC_DEFS"]
LDFLAGS = ["-Wl,-soname," + LIB_NAME]

# Compile-time variants: a scenario cannot remove an exported symbol.
_R470 = ("-DFAKE_NO_MEMORY_INFO_V2", "-DFAKE_NO_PROCS_V3", "-DFAKE_NO_PROCESSES_UTILIZATION_INFO",
         "-DFAKE_NO_PROCESS_DETAIL_LIST", "-DFAKE_NO_CONF_COMPUTE", "-DFAKE_NO_TEMPERATURE_V",
         "-DFAKE_NO_FAN_SPEED_RPM", "-DFAKE_NO_NUM_FANS", "-DFAKE_NO_CLOCKS_EVENT_REASONS",
         "-DFAKE_NO_JPG_UTILIZATION")
VARIANTS = collections.OrderedDict([
    ("full", ()),                                           # a current (R580) driver
    ("mem_v1", ("-DFAKE_NO_MEMORY_INFO_V2",)),               # v1 memory only
    ("procs_v2", ("-DFAKE_NO_PROCS_V3",)),                   # _v2 process calls, 24 B
    ("procs_v1", ("-DFAKE_NO_PROCS_V3", "-DFAKE_NO_PROCS_V2")),  # unversioned, 16 B
    ("old_util", ("-DFAKE_NO_PROCESSES_UTILIZATION_INFO",)),  # nvmlDeviceGetProcessUtilization only
    ("pci_v2", ("-DFAKE_NO_PCI_INFO_V3",)),                  # no nvmlDeviceGetPciInfo_v3
    ("r535_early", ("-DFAKE_EARLY_R535",)),                  # 32-byte _v3 entries (535.54)
    ("r470", _R470),                                         # an old branch: none of the newer calls
])

_PROCS_V3 = ["nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
             "nvmlDeviceGetMPSComputeRunningProcesses_v3"]
_PROCS_V2 = [n.replace("_v3", "_v2") for n in _PROCS_V3]
VARIANT_MISSING = {
    "full": [],
    "mem_v1": ["nvmlDeviceGetMemoryInfo_v2"],
    "procs_v2": _PROCS_V3,
    "procs_v1": _PROCS_V3 + _PROCS_V2,
    "old_util": ["nvmlDeviceGetProcessesUtilizationInfo"],
    "pci_v2": ["nvmlDeviceGetPciInfo_v3"],
    "r535_early": ["nvmlDeviceGetRunningProcessDetailList", "nvmlDeviceGetProcessesUtilizationInfo",
                   "nvmlDeviceGetTemperatureV", "nvmlDeviceGetFanSpeedRPM"],
    "r470": ["nvmlDeviceGetMemoryInfo_v2"] + _PROCS_V3 + [
        "nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetRunningProcessDetailList",
        "nvmlDeviceGetConfComputeMemSizeInfo", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetFanSpeedRPM",
        "nvmlDeviceGetNumFans", "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetSupportedClocksEventReasons", "nvmlDeviceGetJpgUtilization"],
}

# nvmlReturn_t names (nvml.h NVML_ERROR_*, without the prefix).
ERRORS = collections.OrderedDict([
    ("SUCCESS", 0), ("UNINITIALIZED", 1), ("INVALID_ARGUMENT", 2), ("NOT_SUPPORTED", 3),
    ("NO_PERMISSION", 4), ("ALREADY_INITIALIZED", 5), ("NOT_FOUND", 6), ("INSUFFICIENT_SIZE", 7),
    ("INSUFFICIENT_POWER", 8), ("DRIVER_NOT_LOADED", 9), ("TIMEOUT", 10), ("IRQ_ISSUE", 11),
    ("LIBRARY_NOT_FOUND", 12), ("FUNCTION_NOT_FOUND", 13), ("CORRUPTED_INFOROM", 14),
    ("GPU_IS_LOST", 15), ("RESET_REQUIRED", 16), ("OPERATING_SYSTEM", 17),
    ("LIB_RM_VERSION_MISMATCH", 18), ("IN_USE", 19), ("MEMORY", 20), ("NO_DATA", 21),
    ("VGPU_ECC_NOT_SUPPORTED", 22), ("INSUFFICIENT_RESOURCES", 23), ("FREQ_NOT_SUPPORTED", 24),
    ("ARGUMENT_VERSION_MISMATCH", 25), ("DEPRECATED", 26), ("NOT_READY", 27),
    ("GPU_NOT_FOUND", 28), ("INVALID_STATE", 29), ("RESET_TYPE_NOT_SUPPORTED", 30),
    ("UNKNOWN", 999),
])
ERROR_NAMES = {v: k for k, v in ERRORS.items()}
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF     # usedGpuMemory "N/A"

# Per-GPU defaults: an H100 80GB HBM3 (SXM) at idle; fans NOT_SUPPORTED.
# Must equal GPU_KEYS in fake_nvml.c (tests/test_nvml_stub.py checks it).
# None = computed (see resolve_gpu).
GPU_DEFAULTS = collections.OrderedDict([
    ("name", "NVIDIA H100 80GB HBM3"),
    ("uuid", None),                      # GPU-6a2e1f0c-3d4b-4e5f-8a9b-<index %012x>
    ("pci", None),                       # DGX H100 bus ids 18 2A 3A 5D 9A AB BA DB
    ("pci_device_id", 0x233010DE),
    ("pci_subsystem_id", 0x16C110DE),
    ("handle", "ok"),                    # or err("NO_PERMISSION"), ...
    ("lost", 0),                         # 1: every call on the GPU -> GPU_IS_LOST
    ("proc_util", "ok"),                 # err("NOT_SUPPORTED"): no per-process utilisation
    ("hang_ms", 0),                      # UtilizationRates sleeps this long (this GPU only)
    ("util_gpu", 0),
    ("util_mem", 0),
    ("clock_graphics", 345),
    ("clock_sm", 345),
    ("clock_mem", 2619),
    ("clock_video", 765),
    ("max_clock_graphics", 1980),
    ("max_clock_sm", 1980),
    ("max_clock_mem", 2619),
    ("max_clock_video", 1545),
    ("temp_gpu", 33),
    ("temp_gpu_max", 36),
    ("temp_mem", 41),
    ("temp_threshold_shutdown", 92),
    ("temp_threshold_slowdown", 89),
    ("temp_threshold_mem_max", 95),
    ("temp_threshold_gpu_max", 87),
    ("fan_speed", "err:NOT_SUPPORTED"),
    ("fan_rpm", "err:NOT_SUPPORTED"),
    ("num_fans", "err:NOT_SUPPORTED"),
    ("power_usage_mw", 71234),
    ("power_limit_mw", 700000),
    ("power_mgmt_limit_mw", 700000),
    ("power_default_limit_mw", 700000),
    ("power_min_limit_mw", 200000),
    ("power_max_limit_mw", 700000),
    ("energy_mj", 123456789012),
    ("mem_total", 85520809984),
    ("mem_reserved", 569376768),
    ("mem_used", 7340032),
    ("mem_v1_used", None),               # mem_used + mem_reserved
    ("mem_v1_free", None),               # mem_total - mem_v1_used
    ("mem_v2_bad_version", "err:ARGUMENT_VERSION_MISMATCH"),
    ("pcie_gen", 5),
    ("pcie_width", 16),
    ("pcie_max_gen", 5),
    ("pcie_max_width", 16),
    ("pcie_tx_kbs", 1234),
    ("pcie_rx_kbs", 5678),
    ("pstate", 0),
    ("clocks_event_reasons", 0x1),
    ("supported_clocks_event_reasons", 0x1FF),
    ("enc_util", 0),
    ("enc_period_us", 167000),
    ("dec_util", 0),
    ("dec_period_us", 167000),
    ("jpg_util", 0),
    ("jpg_period_us", 167000),
    ("mig_mode", "err:NOT_SUPPORTED"),
    ("mig_max_count", None),             # 7 while mig_mode's current is 1, else 0
    ("ecc_mode", "err:NOT_SUPPORTED"),   # "current,pending"; 0: the counts NOT_SUPPORTED
    ("ecc_corrected_volatile", 0),
    ("ecc_uncorrected_volatile", 0),
    ("ecc_corrected_aggregate", 0),
    ("ecc_uncorrected_aggregate", 0),
    ("cc_protected_kib", 0),
    ("cc_unprotected_kib", None),        # mem_total // 1024
    ("grow_after_sizing", None),         # option grow_after_sizing
    ("grow_lists", "compute,graphics,mps"),
])
OPTION_DEFAULTS = collections.OrderedDict([
    ("driver_version", "580.95.05"),
    ("nvml_version", "13.580.95.05"),
    ("cuda_version", 13000),
    ("init", "ok"),
    ("grow_after_sizing", 0),
    ("pcie_throughput_delay_ms", 20),
])
DEFAULT_BUS = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB]
LISTS = ("compute", "graphics", "mps")

# Clock-event reason bits -> names (contract "throttle_reasons").
THROTTLE_BITS = [(0x1, "GpuIdle"), (0x2, "ApplicationsClocksSetting"), (0x4, "SwPowerCap"),
                 (0x8, "HwSlowdown"), (0x10, "SyncBoost"), (0x20, "SwThermalSlowdown"),
                 (0x40, "HwThermalSlowdown"), (0x80, "HwPowerBrakeSlowdown"),
                 (0x100, "DisplayClockSetting"), (0x200, "BoardLimit"), (0x400, "Reliability")]


class FakeNvmlUnavailable(Exception):
    """No nvml.h or no C compiler: the tests that need the library skip."""


def err(name):
    """A scenario value that makes the call(s) reading it return ``name``."""
    if isinstance(name, int):
        return "err:%d" % name
    name = name[len("NVML_ERROR_"):] if name.startswith("NVML_ERROR_") else name
    if name not in ERRORS:
        raise ValueError("unknown nvmlReturn_t %r" % name)
    return "err:" + name


def default_uuid(index):
    return "GPU-6a2e1f0c-3d4b-4e5f-8a9b-%012x" % index


def default_pci(index):
    bus = DEFAULT_BUS[index] if index < len(DEFAULT_BUS) else (index * 0x10) & 0xFF
    return "00000000:%02X:00.0" % bus


# ------------------------------------------------------------------ build ----
def find_header_dir():
    """Directory holding nvml.h: $NVML_HEADER_DIR, else under .cache/nvml-dev."""
    d = os.environ.get("NVML_HEADER_DIR")
    if d and os.path.isfile(os.path.join(d, "nvml.h")):
        return d
    hits = sorted(glob.glob(os.path.join(HEADER_CACHE, "**", "nvml.h"), recursive=True))
    return os.path.dirname(hits[0]) if hits else None


_build_locks = collections.defaultdict(threading.Lock)   # one per output path


def build_fake_nvml(out_dir=None, variant="full"):
    """Compile the stand-in (cached by source/header/flags hash under
    .cache/nvml-build/) and return the path of its libnvidia-ml.so.1; with
    out_dir, a copy is placed there and that path returned.  Raises
    FakeNvmlUnavailable when nvml.h or cc is missing."""
    if variant not in VARIANTS:
        raise ValueError("unknown variant %r (one of %s)" % (variant, ", ".join(VARIANTS)))
    header_dir = find_header_dir()
    if not header_dir:
        raise FakeNvmlUnavailable(
            "nvml.h not found: set NVML_HEADER_DIR or let tests/run.sh install %s into "
            ".cache/nvml-dev" % HEADER_PIN)
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise FakeNvmlUnavailable("no C compiler (cc) on PATH")
    flags = CFLAGS + list(VARIANTS[variant])
    h = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        h.update(f.read())
    with open(os.path.join(header_dir, "nvml.h"), "rb") as f:
        h.update(f.read())
    h.update(json.dumps([cc, flags, LDFLAGS]).encode())
    build_dir = os.path.join(BUILD_ROOT, h.hexdigest()[:16], variant)
    lib = os.path.join(build_dir, LIB_NAME)
    with _build_locks[lib]:
        if not os.path.isfile(lib):
            os.makedirs(build_dir, exist_ok=True)
            tmp = os.path.join(build_dir, ".%s.%d.tmp" % (LIB_NAME, os.getpid()))
            cmd = [cc] + flags + ["-I" + header_dir] + LDFLAGS + ["-o", tmp, SOURCE]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True)
            if proc.returncode != 0:
                raise RuntimeError("building fake NVML (%s) failed:\n$ %s\n%s"
                                   % (variant, " ".join(cmd), proc.stdout))
            os.replace(tmp, lib)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        dest = os.path.join(out_dir, LIB_NAME)
        shutil.copy2(lib, dest)
        return dest
    return lib


def build_variants(variants=None, jobs=None):
    """Build several variants at once (cc runs in parallel); {variant: path}."""
    import concurrent.futures
    variants = list(variants or VARIANTS)
    jobs = jobs or min(len(variants), os.cpu_count() or 1, 4)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        paths = list(pool.map(lambda v: build_fake_nvml(variant=v), variants))
    return dict(zip(variants, paths))


if pytest is not None:
    @pytest.fixture(scope="session")
    def fake_nvml_build():
        """variant -> directory holding that variant's libnvidia-ml.so.1 (skips
        the test when the header or compiler is missing)."""
        def get(variant="full"):
            try:
                return os.path.dirname(build_fake_nvml(variant=variant))
            except FakeNvmlUnavailable as e:
                pytest.skip(str(e))
        return get

    @pytest.fixture(scope="session")
    def fake_nvml_lib(fake_nvml_build):
        """Directory of the "full" stand-in libnvidia-ml.so.1."""
        return fake_nvml_build("full")


# --------------------------------------------------------------- scenario ----
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            "!$&'()*+,-./:;<=>?@[\\]^_`{|}~#")


def _encode(value):
    if value is True or value is False:
        return "1" if value else "0"
    if value is None:
        return "na"
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative value %r" % value)
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_encode(v) for v in value)
    s = str(value)
    if s and all(c in _SAFE or c == " " for c in s) and " " in s:
        return '"%s"' % s
    out = []
    for ch in s:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend("%%%02X" % b for b in ch.encode("utf-8"))
    return "".join(out) if out else '""'


class Scenario(object):
    """What write_scenario wrote, with every default resolved (for asserts)."""

    def __init__(self, path, gpus, procs, util, options, procnames):
        self.path = path
        self.gpus = gpus              # [dict key -> value], all GPU_DEFAULTS keys + "fail"
        self.procs = procs            # [dict gpu list pid mem gi ci cc]
        self.util = util              # [dict gpu pid ts sm mem enc dec jpg ofa]
        self.options = options        # dict, all OPTION_DEFAULTS keys
        self.procnames = procnames    # {pid: name}

    def procs_of(self, gpu, lst):
        return [p for p in self.procs if p["gpu"] == gpu and p["list"] == lst]


def resolve_gpu(index, overrides=None, options=None):
    """All keys of GPU ``index`` with defaults filled in, as the library sees them."""
    overrides = dict(overrides or {})
    fail = overrides.pop("fail", {}) or {}
    unknown = [k for k in overrides if k not in GPU_DEFAULTS]
    if unknown:
        raise KeyError("unknown GPU scenario key(s) %s (see GPU_DEFAULTS)" % unknown)
    g = collections.OrderedDict()
    for k, v in GPU_DEFAULTS.items():
        g[k] = overrides[k] if overrides.get(k) is not None else v
    opts = dict(OPTION_DEFAULTS, **(options or {}))
    if g["uuid"] is None:
        g["uuid"] = default_uuid(index)
    if g["pci"] is None:
        g["pci"] = default_pci(index)

    def num(v):
        return v if isinstance(v, int) else None

    if g["mem_v1_used"] is None:
        a, b = num(g["mem_used"]), num(g["mem_reserved"])
        g["mem_v1_used"] = a + b if a is not None and b is not None else g["mem_used"]
    if g["mem_v1_free"] is None:
        t, u = num(g["mem_total"]), num(g["mem_v1_used"])
        g["mem_v1_free"] = max(t - u, 0) if t is not None and u is not None else g["mem_total"]
    if g["cc_unprotected_kib"] is None:
        t = num(g["mem_total"])
        g["cc_unprotected_kib"] = t // 1024 if t is not None else g["mem_total"]
    if g["grow_after_sizing"] is None:
        g["grow_after_sizing"] = opts["grow_after_sizing"]
    if g["mig_max_count"] is None:
        mode = g["mig_mode"]
        first = mode[0] if isinstance(mode, (list, tuple)) else str(mode).split(",")[0]
        g["mig_max_count"] = 7 if str(first) == "1" else 0
    g["fail"] = {fn: (v if isinstance(v, int) else ERRORS[v.replace("NVML_ERROR_", "")])
                 for fn, v in fail.items()}
    return g


def write_scenario(path, gpus=None, procs=(), util=(), options=None, procnames=None, migs=()):
    """Write a scenario atomically (temp file + os.replace, so the library never
    reads half a file) and return the resolved Scenario.

    gpus:  list of dicts (index = position; default one default GPU); keys from
           GPU_DEFAULTS, values int / str / list (per fan) / err("NAME"), plus
           "fail": {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED", ...}.
    procs: dicts {gpu=0, list="compute"|"graphics"|"mps", pid, mem=0 (None or
           NOT_AVAILABLE -> N/A), gi=0xFFFFFFFF, ci=0xFFFFFFFF, cc=0}.
    util:  dicts {gpu=0, pid, ts="now" (int µs, "now", "now-N"), sm, mem, enc,
           dec, jpg, ofa (0)}.
    options: OPTION_DEFAULTS keys, plus "fail": {fn: code} for any call.
    procnames: {pid: name} for nvmlSystemGetProcessName.
    migs:  dicts {gpu=0, index, gi, ci, name, uuid, mem_total, mem_used,
           gi_slices, ci_slices, sm_count} (all but gpu and index optional):
           MIG devices, listed while the GPU's mig_mode is 1.
    """
    if gpus is None:
        gpus = [{}]
    options = dict(options or {})
    opt_fail = options.pop("fail", {}) or {}
    unknown = [k for k in options if k not in OPTION_DEFAULTS]
    if unknown:
        raise KeyError("unknown scenario option(s) %s" % unknown)
    lines = ["# fake NVML scenario (tests/nvml/README.md), written by nvml_support.write_scenario"]
    if options or opt_fail:
        words = ["%s=%s" % (k, _encode(v)) for k, v in options.items()]
        words += ["fail.%s=%s" % (fn, _encode(v)) for fn, v in opt_fail.items()]
        lines.append("option " + " ".join(words))
    resolved = []
    for i, g in enumerate(gpus):
        resolved.append(resolve_gpu(i, g, options))
        words = ["gpu %d" % i]
        for k, v in g.items():
            if k == "fail":
                words += ["fail.%s=%s" % (fn, _encode(c)) for fn, c in (v or {}).items()]
            elif v is not None:
                words.append("%s=%s" % (k, _encode(v)))
        lines.append(" ".join(words))
    norm_procs = []
    for p in procs:
        p = dict(p)
        q = {"gpu": p.pop("gpu", 0), "list": p.pop("list", p.pop("type", "compute")),
             "pid": p.pop("pid"), "mem": p.pop("mem", 0), "gi": p.pop("gi", 0xFFFFFFFF),
             "ci": p.pop("ci", 0xFFFFFFFF), "cc": p.pop("cc", 0)}
        if p:
            raise KeyError("unknown proc key(s) %s" % sorted(p))
        if q["list"] not in LISTS:
            raise ValueError("proc list must be one of %s" % (LISTS,))
        if q["mem"] is None:
            q["mem"] = NOT_AVAILABLE
        norm_procs.append(q)
        lines.append("proc %d %s pid=%d mem=%s gi=%d ci=%d cc=%d" % (
            q["gpu"], q["list"], q["pid"], "na" if q["mem"] == NOT_AVAILABLE else q["mem"],
            q["gi"], q["ci"], q["cc"]))
    norm_util = []
    for u in util:
        u = dict(u)
        q = {"gpu": u.pop("gpu", 0), "pid": u.pop("pid"), "ts": u.pop("ts", "now")}
        for k in ("sm", "mem", "enc", "dec", "jpg", "ofa"):
            q[k] = u.pop(k, 0)
        if u:
            raise KeyError("unknown util key(s) %s" % sorted(u))
        norm_util.append(q)
        lines.append("util %d pid=%d ts=%s sm=%d mem=%d enc=%d dec=%d jpg=%d ofa=%d" % (
            q["gpu"], q["pid"], q["ts"], q["sm"], q["mem"], q["enc"], q["dec"], q["jpg"], q["ofa"]))
    for m in migs:
        m = dict(m)
        words = ["mig %d index=%d" % (m.pop("gpu", 0), m.pop("index"))]
        words += ["%s=%s" % (k, _encode(v)) for k, v in m.items()]
        lines.append(" ".join(words))
    for pid, name in (procnames or {}).items():
        lines.append("procname pid=%d name=%s" % (pid, _encode(name)))
    data = "\n".join(lines) + "\n"
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".scenario.", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    opts = dict(OPTION_DEFAULTS, **options)
    opts["fail"] = dict(opt_fail)
    return Scenario(path, resolved, norm_procs, norm_util, opts, dict(procnames or {}))


# ---------------------------------------------------------- subprocesses ----
def nvml_env(lib_dir, scenario_path, log_path=None, base=None):
    """Environment for a process that should load the stand-in: the loader
    finds libnvidia-ml.so.1 in lib_dir (LD_LIBRARY_PATH), the program's
    APP_NVML_LIBRARY names it by path, and the library reads scenario_path."""
    env = dict(os.environ if base is None else base)
    env["FAKE_NVML_SCENARIO"] = os.path.abspath(scenario_path) if scenario_path else ""
    env["LD_LIBRARY_PATH"] = lib_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env["APP_NVML_LIBRARY"] = os.path.join(lib_dir, LIB_NAME)
    if log_path:
        env["FAKE_NVML_LOG"] = os.path.abspath(log_path)
    else:
        env.pop("FAKE_NVML_LOG", None)
    return env


def run_python(lib_dir, scenario_path, code, log_path=None, env=None, timeout=30, check=True):
    """Run ``code`` in a fresh Python (this interpreter) that finds the stand-in
    as libnvidia-ml.so.1 and can ``import nvml_support`` (without pytest).
    Returns the CompletedProcess (text); check=True raises on a non-zero exit."""
    e = nvml_env(lib_dir, scenario_path, log_path)
    e.update(env or {})
    e["FAKE_NVML_CHILD"] = "1"
    e["PYTHONPATH"] = TESTS + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError("child failed (exit %d)\n--- stdout\n%s\n--- stderr\n%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return proc


def run_json(lib_dir, scenario_path, code, **kwargs):
    """run_python whose code prints one JSON document last; returns it parsed."""
    proc = run_python(lib_dir, scenario_path, code, **kwargs)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pynvml_snapshot(lib_dir, scenario_path, last_seen=0, log_path=None, env=None, timeout=30):
    """The oracle: read, through NVIDIA's pynvml in a fresh process, every
    device's identity, the contract's metric set ("NVIDIA mapping", same
    conversions), the three process lists and the process-utilisation samples.
    Returns {"init_error": name} or {"driver_version", "count", "devices": [...]}.
    """
    code = ("import json, nvml_support; "
            "print(json.dumps(nvml_support._child_snapshot(%d)))" % int(last_seen))
    return run_json(lib_dir, scenario_path, code, log_path=log_path, env=env, timeout=timeout)


# ------------------------------------------------------------ call log ----
Call = collections.namedtuple("Call", "fn args rc")


def read_call_log(path):
    """FAKE_NVML_LOG lines -> [Call(fn, {key: str}, rc:int)]."""
    calls = []
    if not os.path.exists(path):
        return calls
    with open(path) as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            args = collections.OrderedDict()
            for w in words[1:]:
                k, _, v = w.partition("=")
                args[k] = v
            rc = int(args.pop("rc", "-1"))
            calls.append(Call(words[0], args, rc))
    return calls


def count_calls(path, fn=None):
    """Calls in the log (of function ``fn`` only, when given)."""
    return sum(1 for c in read_call_log(path) if fn is None or c.fn == fn)


# ---------------------------------------------- in the child: the oracle ----
def err_name(code):
    return ERROR_NAMES.get(code, str(code))


class _Lost(Exception):
    pass


class _ProcInfo32(ctypes.Structure):
    """The early-R535 32-byte "_v3" entry (nvitop's heuristic)."""
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint),
                ("usedGpuCcProtectedMemory", ctypes.c_ulonglong)]


class _ProcInfo16(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def has_symbol(N, name):
    try:
        N._nvmlGetFunctionPointer(name)
        return True
    except N.NVMLError:
        return False


def raw_process_list(N, handle, fn_name, struct):
    """count 0/NULL, then count*2+5 entries (pynvml's and the contract's
    procedure) with an arbitrary entry struct."""
    fn = N._nvmlGetFunctionPointer(fn_name)
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == N.NVML_SUCCESS:
        return []
    if ret != N.NVML_ERROR_INSUFFICIENT_SIZE:
        raise N.NVMLError(ret)
    count.value = count.value * 2 + 5
    arr = (struct * count.value)()
    ret = fn(handle, ctypes.byref(count), arr)
    if ret != N.NVML_SUCCESS:
        raise N.NVMLError(ret)
    out = []
    for e in arr[:count.value]:
        d = {"pid": e.pid, "usedGpuMemory": e.usedGpuMemory}
        for k in ("gpuInstanceId", "computeInstanceId", "usedGpuCcProtectedMemory"):
            if hasattr(e, k):
                d[k] = getattr(e, k)
        out.append(d)
    return out


def _text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _proc_entry(obj):
    d = {"pid": obj.pid, "usedGpuMemory": obj.usedGpuMemory,
         "gpuInstanceId": obj.gpuInstanceId, "computeInstanceId": obj.computeInstanceId}
    return d


def _field_value(N, fv):
    t = fv.valueType
    v = fv.value
    if t == N.NVML_VALUE_TYPE_DOUBLE:
        return v.dVal
    if t == N.NVML_VALUE_TYPE_UNSIGNED_INT:
        return v.uiVal
    if t == N.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return v.ulVal
    if t == N.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return v.ullVal
    if t == N.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return v.sllVal
    if t == N.NVML_VALUE_TYPE_SIGNED_INT:
        return v.siVal
    return v.uiVal


def throttle_names(mask):
    names = [n for bit, n in THROTTLE_BITS if mask & bit]
    known = 0
    for bit, _ in THROTTLE_BITS:
        known |= bit
    if mask & ~known:
        names.append("other")
    return names


NULL_METRICS = ("temp_junction_c", "power_fast_w", "power_fast_cap_w", "vddgfx_mv", "vddnb_mv",
                "vis_vram_used_bytes", "vis_vram_total_bytes", "gtt_used_bytes",
                "gtt_total_bytes", "pcie_speed_gts")
METRIC_KEYS = ("gpu_busy_pct", "mem_busy_pct", "sclk_mhz", "mclk_mhz", "temp_c", "temp_junction_c",
               "temp_mem_c", "fan_rpm", "fan_pct", "power_w", "power_cap_w", "power_fast_w",
               "power_fast_cap_w", "vddgfx_mv", "vddnb_mv", "vram_used_bytes", "vram_total_bytes",
               "vis_vram_used_bytes", "vis_vram_total_bytes", "gtt_used_bytes", "gtt_total_bytes",
               "pcie_gen", "pcie_speed_gts", "pcie_width", "runtime_status", "throttle_reasons",
               "pstate", "enc_pct", "dec_pct", "vram_reserved_bytes", "energy_j", "vram_used_source",
               "sm_clock_mhz", "temp_crit_c", "temp_mem_crit_c")


def _read_device(N, h, last_seen):
    errors = collections.OrderedDict()

    def call(key, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except N.NVMLError as e:
            errors[key] = err_name(e.value)
            if e.value == N.NVML_ERROR_GPU_IS_LOST:
                raise _Lost()
            return None

    dev = {"errors": errors}
    m = collections.OrderedDict((k, None) for k in METRIC_KEYS)
    try:
        dev["name"] = call("name", N.nvmlDeviceGetName, h)
        dev["uuid"] = call("uuid", N.nvmlDeviceGetUUID, h)
        pci = None
        for fn in ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo_v2", "nvmlDeviceGetPciInfo"):
            if has_symbol(N, fn):
                info = N.nvmlPciInfo_t()
                ret = N._nvmlGetFunctionPointer(fn)(h, ctypes.byref(info))
                if ret == N.NVML_ERROR_GPU_IS_LOST:
                    errors["pci"] = err_name(ret)
                    raise _Lost()
                if ret == N.NVML_SUCCESS:
                    pci = info
                    dev["pci_call"] = fn
                    break
                errors["pci"] = err_name(ret)
        if pci is not None:
            dev["pci_info"] = {"busId": _text(pci.busId), "busIdLegacy": _text(pci.busIdLegacy),
                               "domain": pci.domain, "bus": pci.bus, "device": pci.device,
                               "pciDeviceId": pci.pciDeviceId, "pciSubSystemId": pci.pciSubSystemId}
            dev["pci"] = "%04x:%02x:%02x.0" % (pci.domain, pci.bus, pci.device)
            dev["pci_id"] = "%04x:%04x" % (pci.pciDeviceId & 0xFFFF, pci.pciDeviceId >> 16)

        u = call("utilization", N.nvmlDeviceGetUtilizationRates, h)
        if u is not None:
            m["gpu_busy_pct"], m["mem_busy_pct"] = u.gpu, u.memory
        m["sclk_mhz"] = call("sclk", N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_GRAPHICS)
        m["mclk_mhz"] = call("mclk", N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_MEM)
        m["sm_clock_mhz"] = call("sm_clock", N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_SM)
        dev["max_clocks"] = {
            "sclk_max_mhz": call("sclk_max", N.nvmlDeviceGetMaxClockInfo, h, N.NVML_CLOCK_GRAPHICS),
            "mclk_max_mhz": call("mclk_max", N.nvmlDeviceGetMaxClockInfo, h, N.NVML_CLOCK_MEM)}
        m["temp_c"] = call("temp", N.nvmlDeviceGetTemperature, h, N.NVML_TEMPERATURE_GPU)
        m["temp_crit_c"] = call("temp_crit", N.nvmlDeviceGetTemperatureThreshold, h,
                                N.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
        m["temp_mem_crit_c"] = call("temp_mem_crit", N.nvmlDeviceGetTemperatureThreshold, h,
                                    N.NVML_TEMPERATURE_THRESHOLD_MEM_MAX)
        fv = call("temp_mem", N.nvmlDeviceGetFieldValues, h, [N.NVML_FI_DEV_MEMORY_TEMP])
        if fv is not None:
            if fv[0].nvmlReturn == N.NVML_SUCCESS:
                m["temp_mem_c"] = _field_value(N, fv[0])
            else:
                errors["temp_mem"] = err_name(fv[0].nvmlReturn)
        m["fan_pct"] = call("fan_pct", N.nvmlDeviceGetFanSpeed, h)
        if has_symbol(N, "nvmlDeviceGetFanSpeedRPM"):
            m["fan_rpm"] = call("fan_rpm", N.nvmlDeviceGetFanSpeedRPM, h)
        p = call("power", N.nvmlDeviceGetPowerUsage, h)
        m["power_w"] = p / 1000.0 if p is not None else None
        p = call("power_cap", N.nvmlDeviceGetEnforcedPowerLimit, h)
        m["power_cap_w"] = p / 1000.0 if p is not None else None
        e = call("energy", N.nvmlDeviceGetTotalEnergyConsumption, h)
        m["energy_j"] = e / 1000.0 if e is not None else None

        mem = None
        if has_symbol(N, "nvmlDeviceGetMemoryInfo_v2"):
            mem = call("memory_v2", N.nvmlDeviceGetMemoryInfo, h, version=N.nvmlMemory_v2)
        if mem is not None:
            m["vram_total_bytes"], m["vram_used_bytes"] = mem.total, mem.used
            m["vram_reserved_bytes"], m["vram_used_source"] = mem.reserved, "nvml_v2"
        else:
            mem = call("memory_v1", N.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                m["vram_total_bytes"], m["vram_used_bytes"] = mem.total, mem.used
                m["vram_used_source"] = "nvml_v1"

        m["pcie_gen"] = call("pcie_gen", N.nvmlDeviceGetCurrPcieLinkGeneration, h)
        m["pcie_width"] = call("pcie_width", N.nvmlDeviceGetCurrPcieLinkWidth, h)
        ps = call("pstate", N.nvmlDeviceGetPerformanceState, h)
        m["pstate"] = ps if ps is not None and ps != N.NVML_PSTATE_UNKNOWN else None
        reasons = None
        if has_symbol(N, "nvmlDeviceGetCurrentClocksEventReasons"):
            reasons = call("clocks_event_reasons", N.nvmlDeviceGetCurrentClocksEventReasons, h)
        if reasons is None:
            reasons = call("clocks_throttle_reasons", N.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        m["throttle_reasons"] = throttle_names(reasons) if reasons is not None else None
        enc = call("enc", N.nvmlDeviceGetEncoderUtilization, h)
        m["enc_pct"] = enc[0] if enc is not None else None
        dec = call("dec", N.nvmlDeviceGetDecoderUtilization, h)
        m["dec_pct"] = dec[0] if dec is not None else None
        m["runtime_status"] = "active"
        dev["metrics"] = m

        # Process lists: the contract's (and nvitop's) choice of call and struct.
        v3 = has_symbol(N, "nvmlDeviceGetComputeRunningProcesses_v3")
        if v3 and has_symbol(N, "nvmlDeviceGetConfComputeMemSizeInfo") and \
                not has_symbol(N, "nvmlDeviceGetRunningProcessDetailList"):
            dev["process_struct"] = "v3_32"
        elif v3:
            dev["process_struct"] = "v3"
        elif has_symbol(N, "nvmlDeviceGetComputeRunningProcesses_v2"):
            dev["process_struct"] = "v2"
        else:
            dev["process_struct"] = "v1"
        names = {"compute": "Compute", "graphics": "Graphics", "mps": "MPSCompute"}
        lists = collections.OrderedDict()
        for lst, part in names.items():
            base = "nvmlDeviceGet%sRunningProcesses" % part
            kind = dev["process_struct"]
            if kind == "v3_32":
                entries = call("procs_" + lst, raw_process_list, N, h, base + "_v3", _ProcInfo32)
            elif kind == "v1":
                entries = call("procs_" + lst, raw_process_list, N, h, base, _ProcInfo16)
            else:
                objs = call("procs_" + lst, getattr(N, base + "_" + kind), h)
                entries = None if objs is None else [_proc_entry(o) for o in objs]
            if entries is not None:
                for en in entries:
                    if en["usedGpuMemory"] in (None, NOT_AVAILABLE):
                        en["usedGpuMemory"] = None
            lists[lst] = entries
        dev["processes"] = lists

        samples = None
        if has_symbol(N, "nvmlDeviceGetProcessesUtilizationInfo"):
            dev["util_api"] = "processes_utilization_info"
            try:
                got = N.nvmlDeviceGetProcessesUtilizationInfo(h, last_seen)
                samples = [{"pid": s.pid, "ts": s.timeStamp, "sm": s.smUtil, "mem": s.memUtil,
                            "enc": s.encUtil, "dec": s.decUtil, "jpg": s.jpgUtil, "ofa": s.ofaUtil}
                           for s in got]
            except N.NVMLError as e:
                if e.value == N.NVML_ERROR_GPU_IS_LOST:
                    errors["util"] = err_name(e.value)
                    raise _Lost()
                if e.value == N.NVML_ERROR_NOT_FOUND:
                    samples = []
                else:
                    errors["util"] = err_name(e.value)
        else:
            dev["util_api"] = "process_utilization"
            try:
                got = N.nvmlDeviceGetProcessUtilization(h, last_seen)
                samples = [{"pid": s.pid, "ts": s.timeStamp, "sm": s.smUtil, "mem": s.memUtil,
                            "enc": s.encUtil, "dec": s.decUtil, "jpg": None, "ofa": None}
                           for s in got]
            except N.NVMLError as e:
                if e.value == N.NVML_ERROR_GPU_IS_LOST:
                    errors["util"] = err_name(e.value)
                    raise _Lost()
                if e.value == N.NVML_ERROR_NOT_FOUND:
                    samples = []
                else:
                    errors["util"] = err_name(e.value)
        dev["util_samples"] = samples
        pids = sorted({en["pid"] for ents in lists.values() for en in (ents or [])})
        pnames = {}
        for pid in pids:
            try:
                pnames[str(pid)] = N.nvmlSystemGetProcessName(pid)
            except N.NVMLError:
                pnames[str(pid)] = None
        dev["process_names"] = pnames
    except _Lost:
        m = collections.OrderedDict((k, None) for k in METRIC_KEYS)
        m["runtime_status"] = "lost"
        dev["metrics"] = m
        dev["lost"] = True
    dev.setdefault("lost", False)
    return dev


def _child_snapshot(last_seen=0):
    """Runs in the child (run by pynvml_snapshot): pynvml must be importable
    and libnvidia-ml.so.1 findable (LD_LIBRARY_PATH)."""
    import pynvml as N
    try:
        N.nvmlInit()
    except N.NVMLError as e:
        return {"init_error": err_name(e.value)}
    out = collections.OrderedDict()
    try:
        out["driver_version"] = N.nvmlSystemGetDriverVersion()
        out["nvml_version"] = N.nvmlSystemGetNVMLVersion()
        out["cuda_version"] = N.nvmlSystemGetCudaDriverVersion()
        out["cuda_version_v2"] = N.nvmlSystemGetCudaDriverVersion_v2()
        count = N.nvmlDeviceGetCount()
        out["count"] = count
        devices = []
        for i in range(count):
            try:
                h = N.nvmlDeviceGetHandleByIndex(i)
            except N.NVMLError as e:
                devices.append({"index": i, "handle_error": err_name(e.value)})
                continue
            d = collections.OrderedDict([("index", i), ("handle_error", None)])
            d.update(_read_device(N, h, last_seen))
            devices.append(d)
        out["devices"] = devices
    finally:
        N.nvmlShutdown()
    return out
