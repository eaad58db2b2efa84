"""The stand-in libnvidia-ml.so.1 (tests/nvml/fake_nvml.c) checked through
NVIDIA's own Python binding, pynvml (nvidia-ml-py).

Every check runs pynvml in a fresh child process (nvml_support.run_json) that
finds the stand-in through LD_LIBRARY_PATH: pynvml loads the library with
CDLL("libnvidia-ml.so.1") and keeps it (and its init refcount) in module
globals, so a child per check gives a fresh load and state, and the loader
path pynvml really uses is the one exercised (no monkeypatching of pynvml).
Scenarios are written with nvml_support.write_scenario and every value read
back is compared with the scenario.
"""

import ctypes
import os
import re
import sys
import textwrap
import time

import pytest

import nvml_support as S
from nvml_support import fake_nvml_build, fake_nvml_lib  # noqa: F401 (fixtures)

pytest.importorskip("pynvml")

PRELUDE = """
import ctypes, json, os, sys
import pynvml as N
import nvml_support as S
out = {}
def code(fn, *a, **k):
    # the nvmlReturn_t name a pynvml call raised, or None on success
    try:
        fn(*a, **k)
        return None
    except N.NVMLError as e:
        return S.err_name(e.value)
"""


def child(lib, scen_path, body, **kwargs):
    """Run body (after PRELUDE) in a fresh pynvml process; it fills ``out``."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    return S.run_json(lib, scen_path, code, **kwargs)


@pytest.fixture
def scen(tmp_path):
    return str(tmp_path / "scenario.txt")


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "calls.log")


# ------------------------------------------------------------------ build ----
def test_every_variant_builds_with_werror_and_lacks_exactly_its_symbols(fake_nvml_build):
    fake_nvml_build("full")                     # skips without nvml.h / cc
    paths = S.build_variants()                  # cold: ~1 s of cc per variant, in parallel
    assert sorted(paths) == sorted(S.VARIANTS)
    full = ctypes.CDLL(paths["full"])
    every = set(n for names in S.VARIANT_MISSING.values() for n in names)
    for name in sorted(every):
        assert hasattr(full, name), name
    for variant in S.VARIANTS:
        lib = ctypes.CDLL(paths[variant])
        missing = sorted(n for n in every if not hasattr(lib, n))
        assert missing == sorted(S.VARIANT_MISSING[variant]), variant
        for name in ("nvmlInit_v2", "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount_v2",
                     "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetMemoryInfo",
                     "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetProcessUtilization",
                     "nvmlDeviceGetCurrentClocksThrottleReasons", "nvmlDeviceGetPcieThroughput"):
            assert hasattr(lib, name), (variant, name)


def test_build_is_cached_and_copied_on_request(fake_nvml_lib, tmp_path):
    path = S.build_fake_nvml()
    assert os.path.dirname(path) == fake_nvml_lib
    mtime = os.stat(path).st_mtime_ns
    assert S.build_fake_nvml() == path and os.stat(path).st_mtime_ns == mtime
    copy = S.build_fake_nvml(str(tmp_path / "lib"))
    assert copy == str(tmp_path / "lib" / S.LIB_NAME)
    with open(copy, "rb") as a, open(path, "rb") as b:
        assert a.read() == b.read()
    assert b"libnvidia-ml.so.1" in open(copy, "rb").read()       # the soname


def test_c_defaults_equal_python_defaults():
    """GPU_KEYS in fake_nvml.c and GPU_DEFAULTS in nvml_support.py are one table."""
    src = open(S.SOURCE).read()
    block = src[src.index("static const keydef_t GPU_KEYS[]"):]
    block = block[:block.index("};")]
    c_keys = re.findall(r'\{"(\w+)", \'([us])\', (NULL|"[^"]*")\}', block)
    assert [k for k, _, _ in c_keys] == list(S.GPU_DEFAULTS)
    for key, typ, default in c_keys:
        want = S.GPU_DEFAULTS[key]
        if default == "NULL":
            assert want is None, key
        elif typ == "u" and not default.startswith('"err:'):
            assert int(default.strip('"'), 0) == want, key
        else:
            assert default.strip('"') == want, key
    block = src[src.index("static const keydef_t OPT_KEYS[]"):]
    block = block[:block.index("};")]
    c_opts = re.findall(r'\{"(\w+)", \'([us])\', "([^"]*)"\}', block)
    assert [k for k, _, _ in c_opts] == list(S.OPTION_DEFAULTS)
    for key, typ, default in c_opts:
        want = S.OPTION_DEFAULTS[key]
        assert (int(default, 0) if typ == "u" else default) == want, key


# ---------------------------------------------------------------- scenario ----
def test_write_scenario_is_atomic_and_quotes_names(tmp_path):
    path = str(tmp_path / "s.txt")
    s = S.write_scenario(path, gpus=[{"name": "NVIDIA H100 80GB HBM3"},
                                     {"name": 'odd "name" 100%', "fan_speed": [40, 41]}],
                         procs=[{"pid": 5, "mem": None, "list": "mps"}])
    assert os.listdir(str(tmp_path)) == ["s.txt"]                 # no temp file left
    text = open(path).read()
    assert 'name="NVIDIA H100 80GB HBM3"' in text
    assert "name=odd%20%22name%22%20100%25" in text
    assert "fan_speed=40,41" in text and "proc 0 mps pid=5 mem=na" in text
    assert s.gpus[1]["uuid"] == S.default_uuid(1) and s.gpus[1]["pci"] == "00000000:2A:00.0"
    assert s.procs[0]["mem"] == S.NOT_AVAILABLE
    with pytest.raises(KeyError):
        S.write_scenario(path, gpus=[{"no_such_key": 1}])


def test_hand_written_minimal_scenario_gives_the_documented_defaults(fake_nvml_lib, scen):
    with open(scen, "w") as f:
        f.write("# just one GPU, everything default\ngpu 0\n")
    snap = S.pynvml_snapshot(fake_nvml_lib, scen)
    g = S.resolve_gpu(0)
    d = snap["devices"][0]
    assert snap["count"] == 1 and snap["driver_version"] == S.OPTION_DEFAULTS["driver_version"]
    assert d["name"] == g["name"] == "NVIDIA H100 80GB HBM3"
    assert d["uuid"] == g["uuid"] and d["pci"] == "0000:18:00.0" and d["pci_id"] == "10de:2330"
    m = d["metrics"]
    assert m["fan_pct"] is None and m["fan_rpm"] is None          # data-centre card: no fans
    assert d["errors"]["fan_pct"] == "NOT_SUPPORTED"
    assert m["power_w"] == g["power_usage_mw"] / 1000.0
    assert m["vram_total_bytes"] == g["mem_total"] and m["vram_used_source"] == "nvml_v2"
    assert m["temp_mem_c"] == g["temp_mem"] and m["throttle_reasons"] == ["GpuIdle"]


def test_scenario_problems_fail_init_like_a_driver(fake_nvml_lib, tmp_path):
    missing = str(tmp_path / "none.txt")
    assert S.pynvml_snapshot(fake_nvml_lib, missing) == {"init_error": "DRIVER_NOT_LOADED"}
    bad = str(tmp_path / "bad.txt")
    with open(bad, "w") as f:
        f.write("gpu 0 no_such_key=1\n")
    proc = S.run_python(fake_nvml_lib, bad, "import nvml_support as S, json; "
                        "print(json.dumps(S._child_snapshot()))")
    assert '"init_error": "UNKNOWN"' in proc.stdout
    assert "unknown key 'no_such_key'" in proc.stderr
    S.write_scenario(bad, options={"init": S.err("NO_PERMISSION")})
    assert S.pynvml_snapshot(fake_nvml_lib, bad) == {"init_error": "NO_PERMISSION"}
    # no FAKE_NVML_SCENARIO at all: a driver with no GPUs
    snap = S.pynvml_snapshot(fake_nvml_lib, None)
    assert snap["count"] == 0 and snap["devices"] == []


# --------------------------------------------------- init, errors, handles ----
def test_init_refcount_and_uninitialized(fake_nvml_lib, scen):
    S.write_scenario(scen)
    out = child(fake_nvml_lib, scen, """
        N._LoadNvmlLibrary()
        lib = N.nvmlLib
        h = ctypes.c_void_p()
        n = ctypes.c_uint()
        out["count_before"] = lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
        out["handle_before"] = lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h))
        out["shutdown_before"] = lib.nvmlShutdown()
        out["init1"] = lib.nvmlInit_v2()
        out["init2"] = lib.nvmlInitWithFlags(0)
        out["handle"] = lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h))
        out["shutdowns"] = [lib.nvmlShutdown(), lib.nvmlShutdown(), lib.nvmlShutdown()]
        t = ctypes.c_uint()
        out["temp_after"] = lib.nvmlDeviceGetTemperature(h, 0, ctypes.byref(t))
        out["init_v1"] = lib.nvmlInit()
        out["temp_again"] = lib.nvmlDeviceGetTemperature(h, 0, ctypes.byref(t))
        out["t"] = t.value
        lib.nvmlShutdown()
    """)
    assert out["count_before"] == out["handle_before"] == out["shutdown_before"] == 1
    assert out["init1"] == out["init2"] == out["handle"] == 0
    assert out["shutdowns"] == [0, 0, 1]
    assert out["temp_after"] == 1                          # UNINITIALIZED after the last shutdown
    assert out["init_v1"] == 0 and out["temp_again"] == 0 and out["t"] == 33


def test_error_strings_are_nvmls(fake_nvml_lib, scen):
    S.write_scenario(scen)
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        out["s"] = {str(c): N.nvmlErrorString(c) for c in (0, 1, 2, 3, 4, 6, 7, 9, 13, 15, 25, 999)}
        out["lost"] = str(N.NVMLError(N.NVML_ERROR_GPU_IS_LOST))
    """)
    assert out["s"] == {"0": "Success", "1": "Uninitialized", "2": "Invalid Argument",
                        "3": "Not Supported", "4": "Insufficient Permissions", "6": "Not Found",
                        "7": "Insufficient Size", "9": "Driver Not Loaded",
                        "13": "Function Not Found", "15": "GPU is lost",
                        "25": "Argument version mismatch", "999": "Unknown Error"}
    assert out["lost"] == "GPU is lost"


def test_several_gpus_identity_and_lookup(fake_nvml_lib, scen):
    s = S.write_scenario(scen, gpus=[
        {"pci": "00000000:1B:00.0"},
        {"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
         "pci": "0001:C3:1F.0", "pci_device_id": 0x20B010DE, "pci_subsystem_id": 0x134F10DE},
    ])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        out["count"] = N.nvmlDeviceGetCount()
        out["dev"] = []
        for i in range(out["count"]):
            h = N.nvmlDeviceGetHandleByIndex(i)
            p = N.nvmlDeviceGetPciInfo_v3(h)
            out["dev"].append({"name": N.nvmlDeviceGetName(h), "uuid": N.nvmlDeviceGetUUID(h),
                               "index": N.nvmlDeviceGetIndex(h), "busId": p.busId,
                               "legacy": p.busIdLegacy, "domain": p.domain, "bus": p.bus,
                               "device": p.device, "id": p.pciDeviceId, "sub": p.pciSubSystemId})
        h1 = N.nvmlDeviceGetHandleByIndex(1)
        out["by_uuid"] = N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByUUID(out["dev"][1]["uuid"]))
        out["by_pci"] = [N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByPciBusId(b))
                         for b in ("00000000:1B:00.0", "0000:1b:00.0", "1b:00.0", "0001:c3:1f.0")]
        out["pci_missing"] = code(N.nvmlDeviceGetHandleByPciBusId, "0000:99:00.0")
        out["uuid_missing"] = code(N.nvmlDeviceGetHandleByUUID, "GPU-nope")
        out["bad_index"] = code(N.nvmlDeviceGetHandleByIndex, 2)
        lib = N.nvmlLib
        buf = ctypes.create_string_buffer(8)
        out["short_name"] = lib.nvmlDeviceGetName(h1, buf, 8)
        p = N.nvmlPciInfo_t()
        out["v2_pci"] = [lib.nvmlDeviceGetPciInfo_v2(h1, ctypes.byref(p)), p.busId,
                         lib.nvmlDeviceGetPciInfo(h1, ctypes.byref(p)), p.busIdLegacy]
    """)
    assert out["count"] == 2
    d0, d1 = out["dev"]
    assert d0 == {"name": "NVIDIA H100 80GB HBM3", "uuid": s.gpus[0]["uuid"], "index": 0,
                  "busId": "00000000:1B:00.0", "legacy": "0000:1B:00.0", "domain": 0,
                  "bus": 0x1B, "device": 0, "id": 0x233010DE, "sub": 0x16C110DE}
    assert d1 == {"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                  "index": 1, "busId": "00000001:C3:1F.0", "legacy": "0001:C3:1F.0", "domain": 1,
                  "bus": 0xC3, "device": 0x1F, "id": 0x20B010DE, "sub": 0x134F10DE}
    assert out["by_uuid"] == 1 and out["by_pci"] == [0, 0, 0, 1]
    assert out["pci_missing"] == out["uuid_missing"] == "NOT_FOUND"
    assert out["bad_index"] == "INVALID_ARGUMENT"
    assert out["short_name"] == 7                                  # INSUFFICIENT_SIZE
    assert out["v2_pci"] == [0, "00000001:C3:1F.0", 0, "0001:C3:1F.0"]


def test_no_permission_handle(fake_nvml_lib, scen):
    s = S.write_scenario(scen, gpus=[{}, {"handle": S.err("NO_PERMISSION")}, {}])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        lib = N.nvmlLib
        out["count_v2"] = N.nvmlDeviceGetCount()
        out["handle1"] = code(N.nvmlDeviceGetHandleByIndex, 1)
        out["pci_v2"] = code(N.nvmlDeviceGetHandleByPciBusId, "0000:2A:00.0")
        n = ctypes.c_uint()
        lib.nvmlDeviceGetCount(ctypes.byref(n))
        out["count_v1"] = n.value
        h = ctypes.c_void_p()
        out["v1_rc"] = lib.nvmlDeviceGetHandleByIndex(1, ctypes.byref(h))
        out["v1_uuid"] = N.nvmlDeviceGetUUID(h)
        out["v1_pci_rc"] = lib.nvmlDeviceGetHandleByPciBusId(b"0000:2A:00.0", ctypes.byref(h))
    """)
    snap = S.pynvml_snapshot(fake_nvml_lib, scen)
    assert out["count_v2"] == 3 and out["handle1"] == "NO_PERMISSION"
    assert out["pci_v2"] == "NO_PERMISSION"
    # the legacy v1 calls skip devices NVML may not talk to (nvml.h, GetCount_v2 note)
    assert out["count_v1"] == 2 and out["v1_rc"] == 0 and out["v1_uuid"] == s.gpus[2]["uuid"]
    assert out["v1_pci_rc"] == 6                                   # v1: NOT_FOUND
    assert [d["handle_error"] for d in snap["devices"]] == [None, "NO_PERMISSION", None]


# ---------------------------------------------------------------- metrics ----
METRIC_BODY = """
N.nvmlInit()
out["driver"] = N.nvmlSystemGetDriverVersion()
out["nvml"] = N.nvmlSystemGetNVMLVersion()
out["cuda"] = [N.nvmlSystemGetCudaDriverVersion(), N.nvmlSystemGetCudaDriverVersion_v2()]
out["dev"] = []
for i in range(N.nvmlDeviceGetCount()):
    h = N.nvmlDeviceGetHandleByIndex(i)
    d = {}
    u = N.nvmlDeviceGetUtilizationRates(h)
    d["util"] = [u.gpu, u.memory]
    d["clocks"] = [N.nvmlDeviceGetClockInfo(h, t) for t in range(4)]
    d["max_clocks"] = [N.nvmlDeviceGetMaxClockInfo(h, t) for t in range(4)]
    d["bad_clock"] = code(N.nvmlDeviceGetClockInfo, h, 4)
    d["temp"] = [N.nvmlDeviceGetTemperature(h, 0), N.nvmlDeviceGetTemperature(h, 1)]
    d["temp_v"] = N.nvmlDeviceGetTemperatureV(h, 0)
    d["thresholds"] = [N.nvmlDeviceGetTemperatureThreshold(h, t) for t in range(4)]
    d["threshold_acoustic"] = code(N.nvmlDeviceGetTemperatureThreshold, h, 4)
    fv = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_MEMORY_TEMP, 308, 1])  # 308 = NVML_FI_DEV_GPU_TEMP (nvml.h 13)
    d["fields"] = [[f.nvmlReturn, f.valueType] for f in fv]
    d["mem_temp_field"] = fv[0].value.uiVal
    d["gpu_temp_field"] = fv[1].value.dVal
    for k, fn in (("fan", N.nvmlDeviceGetFanSpeed), ("num_fans", N.nvmlDeviceGetNumFans),
                  ("fan_rpm", N.nvmlDeviceGetFanSpeedRPM)):
        try:
            d[k] = fn(h)
        except N.NVMLError_NotSupported:
            d[k] = "NotSupported"
    try:
        d["fan_v2"] = [N.nvmlDeviceGetFanSpeed_v2(h, f) for f in range(d["num_fans"])]
        d["fan_v2_past"] = code(N.nvmlDeviceGetFanSpeed_v2, h, d["num_fans"])
    except (N.NVMLError_NotSupported, TypeError):
        d["fan_v2"] = code(N.nvmlDeviceGetFanSpeed_v2, h, 0)
    d["power"] = N.nvmlDeviceGetPowerUsage(h)
    d["enforced"] = N.nvmlDeviceGetEnforcedPowerLimit(h)
    d["mgmt"] = N.nvmlDeviceGetPowerManagementLimit(h)
    d["default_limit"] = N.nvmlDeviceGetPowerManagementDefaultLimit(h)
    d["constraints"] = N.nvmlDeviceGetPowerManagementLimitConstraints(h)
    d["energy"] = N.nvmlDeviceGetTotalEnergyConsumption(h)
    m1 = N.nvmlDeviceGetMemoryInfo(h)
    d["mem_v1"] = [m1.total, m1.free, m1.used]
    m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
    d["mem_v2"] = [m2.version, m2.total, m2.reserved, m2.free, m2.used]
    d["pcie"] = [N.nvmlDeviceGetCurrPcieLinkGeneration(h), N.nvmlDeviceGetCurrPcieLinkWidth(h),
                 N.nvmlDeviceGetMaxPcieLinkGeneration(h), N.nvmlDeviceGetMaxPcieLinkWidth(h)]
    d["pcie_tput"] = [N.nvmlDeviceGetPcieThroughput(h, 0), N.nvmlDeviceGetPcieThroughput(h, 1)]
    d["pstate"] = [N.nvmlDeviceGetPerformanceState(h), N.nvmlDeviceGetPowerState(h)]
    d["reasons"] = [N.nvmlDeviceGetCurrentClocksEventReasons(h),
                    N.nvmlDeviceGetCurrentClocksThrottleReasons(h),
                    N.nvmlDeviceGetSupportedClocksEventReasons(h)]
    d["enc"] = N.nvmlDeviceGetEncoderUtilization(h)
    d["dec"] = N.nvmlDeviceGetDecoderUtilization(h)
    d["jpg"] = N.nvmlDeviceGetJpgUtilization(h)
    d["mig"] = code(N.nvmlDeviceGetMigMode, h)
    out["dev"].append(d)
N.nvmlShutdown()
"""


def test_every_metric_through_pynvml_equals_the_scenario(fake_nvml_lib, scen, log):
    s = S.write_scenario(scen, gpus=[
        {"util_gpu": 42, "util_mem": 17, "clock_graphics": 1755, "clock_sm": 1755, "clock_mem": 2619,
         "clock_video": 1400, "temp_gpu": 61, "temp_gpu_max": 66, "temp_mem": 70,
         "power_usage_mw": 345678, "power_limit_mw": 650000, "power_mgmt_limit_mw": 690000,
         "energy_mj": 2 ** 40 + 7, "mem_total": 85520809984, "mem_reserved": 569376768,
         "mem_used": 40 * 2 ** 30, "pcie_gen": 4, "pcie_width": 8, "pstate": 2,
         "clocks_event_reasons": 0x4 | 0x40 | 0x800, "enc_util": 12, "dec_util": 34,
         "jpg_util": 5, "enc_period_us": 100000, "mig_mode": [0, 1]},
        {"name": "NVIDIA GeForce RTX 4090", "fan_speed": [40, 45], "fan_rpm": [1500, 1620],
         "num_fans": 2, "pcie_tx_kbs": 11, "pcie_rx_kbs": 22},
    ], options={"pcie_throughput_delay_ms": 0, "driver_version": "535.54.03", "cuda_version": 12020})
    out = child(fake_nvml_lib, scen, METRIC_BODY, log_path=log)
    assert out["driver"] == "535.54.03" and out["nvml"] == "13.580.95.05"
    assert out["cuda"] == [12020, 12020]
    for d, g in zip(out["dev"], s.gpus):
        assert d["util"] == [g["util_gpu"], g["util_mem"]]
        assert d["clocks"] == [g["clock_graphics"], g["clock_sm"], g["clock_mem"], g["clock_video"]]
        assert d["max_clocks"] == [g["max_clock_graphics"], g["max_clock_sm"], g["max_clock_mem"],
                                   g["max_clock_video"]]
        assert d["bad_clock"] == "INVALID_ARGUMENT"
        assert d["temp"] == [g["temp_gpu"], g["temp_gpu_max"]] and d["temp_v"] == g["temp_gpu"]
        assert d["thresholds"] == [g["temp_threshold_shutdown"], g["temp_threshold_slowdown"],
                                   g["temp_threshold_mem_max"], g["temp_threshold_gpu_max"]]
        assert d["threshold_acoustic"] == "NOT_SUPPORTED"
        # per-entry results: 82 uint, 308 double, unknown field 1 NOT_SUPPORTED
        assert d["fields"] == [[0, 1], [0, 0], [3, 1]]
        assert d["mem_temp_field"] == g["temp_mem"] and d["gpu_temp_field"] == float(g["temp_gpu"])
        assert d["power"] == g["power_usage_mw"] and d["enforced"] == g["power_limit_mw"]
        assert d["mgmt"] == g["power_mgmt_limit_mw"]
        assert d["default_limit"] == g["power_default_limit_mw"]
        assert d["constraints"] == [g["power_min_limit_mw"], g["power_max_limit_mw"]]
        assert d["energy"] == g["energy_mj"]
        assert d["mem_v1"] == [g["mem_total"], g["mem_v1_free"], g["mem_v1_used"]]
        assert d["mem_v1"][2] == g["mem_used"] + g["mem_reserved"]          # v1 used has reserved
        assert d["mem_v2"] == [0x02000028, g["mem_total"], g["mem_reserved"],
                               g["mem_total"] - g["mem_reserved"] - g["mem_used"], g["mem_used"]]
        assert d["pcie"] == [g["pcie_gen"], g["pcie_width"], g["pcie_max_gen"], g["pcie_max_width"]]
        assert d["pcie_tput"] == [g["pcie_tx_kbs"], g["pcie_rx_kbs"]]
        assert d["pstate"] == [g["pstate"]] * 2
        assert d["reasons"] == [g["clocks_event_reasons"]] * 2 + [g["supported_clocks_event_reasons"]]
        assert d["enc"] == [g["enc_util"], g["enc_period_us"]]
        assert d["dec"] == [g["dec_util"], g["dec_period_us"]]
        assert d["jpg"] == [g["jpg_util"], g["jpg_period_us"]]
    d0, d1 = out["dev"]
    assert d0["fan"] == d0["num_fans"] == d0["fan_rpm"] == "NotSupported"   # H100: no fans
    assert d0["fan_v2"] == "NOT_SUPPORTED"
    assert d0["mig"] is None and d1["mig"] == "NOT_SUPPORTED"
    assert d1["fan"] == 40 and d1["num_fans"] == 2 and d1["fan_v2"] == [40, 45]
    assert d1["fan_v2_past"] == "INVALID_ARGUMENT" and d1["fan_rpm"] == 1500
    # the oracle's conversions and throttle names for the same scenario
    m = S.pynvml_snapshot(fake_nvml_lib, scen)["devices"][0]["metrics"]
    assert m["power_w"] == 345.678 and m["power_cap_w"] == 650.0
    assert m["energy_j"] == (2 ** 40 + 7) / 1000.0
    assert m["throttle_reasons"] == ["SwPowerCap", "HwThermalSlowdown", "other"]
    assert m["pstate"] == 2 and m["temp_mem_c"] == 70 and m["enc_pct"] == 12 and m["dec_pct"] == 34
    assert m["vram_used_bytes"] == 40 * 2 ** 30 and m["vram_reserved_bytes"] == 569376768
    assert m["gpu_busy_pct"] == 42 and m["mem_busy_pct"] == 17 and m["sclk_mhz"] == 1755
    tput = [c for c in S.read_call_log(log) if c.fn == "nvmlDeviceGetPcieThroughput"]
    assert [c.args["counter"] for c in tput] == ["0", "1", "0", "1"]


def test_every_metric_can_be_an_error(fake_nvml_lib, scen):
    S.write_scenario(scen, gpus=[{
        "util_gpu": S.err("NOT_SUPPORTED"), "power_usage_mw": S.err("UNKNOWN"),
        "temp_mem": S.err("NOT_SUPPORTED"), "pstate": 32, "clocks_event_reasons": 0,
        "fail": {"nvmlDeviceGetEnforcedPowerLimit": "NO_PERMISSION",
                 "nvmlDeviceGetCurrentClocksEventReasons": "NOT_SUPPORTED"}}])
    snap = S.pynvml_snapshot(fake_nvml_lib, scen)
    d = snap["devices"][0]
    m = d["metrics"]
    assert m["gpu_busy_pct"] is None and d["errors"]["utilization"] == "NOT_SUPPORTED"
    assert m["power_w"] is None and d["errors"]["power"] == "UNKNOWN"
    assert m["power_cap_w"] is None and d["errors"]["power_cap"] == "NO_PERMISSION"
    assert m["temp_mem_c"] is None and d["errors"]["temp_mem"] == "NOT_SUPPORTED"  # per entry
    assert m["pstate"] is None                                     # 32 = unknown
    assert m["throttle_reasons"] == []                             # the ...Throttle... fallback: 0
    assert m["temp_c"] == 33 and m["runtime_status"] == "active"


def test_memory_v2_versions_and_refusals(fake_nvml_lib, fake_nvml_build, scen):
    S.write_scenario(scen, gpus=[{}, {"fail": {"nvmlDeviceGetMemoryInfo_v2": "NOT_SUPPORTED"}},
                                 {"mem_v2_bad_version": S.err("NOT_SUPPORTED")}])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = [N.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
        out["v2_bare"] = code(N.nvmlDeviceGetMemoryInfo, h[0], version=2)     # nvtop's mistake
        out["v2_other"] = code(N.nvmlDeviceGetMemoryInfo, h[0], version=0x01000028)
        out["v2_good"] = code(N.nvmlDeviceGetMemoryInfo, h[0], version=N.nvmlMemory_v2)
        out["refused"] = code(N.nvmlDeviceGetMemoryInfo, h[1], version=N.nvmlMemory_v2)
        out["refused_v1"] = code(N.nvmlDeviceGetMemoryInfo, h[1])
        out["bad_version_code"] = code(N.nvmlDeviceGetMemoryInfo, h[2], version=3)
    """)
    assert out == {"v2_bare": "FUNCTION_NOT_FOUND", "v2_other": "ARGUMENT_VERSION_MISMATCH",
                   "v2_good": None, "refused": "NOT_SUPPORTED", "refused_v1": None,
                   "bad_version_code": "NOT_SUPPORTED"}
    g = S.resolve_gpu(1)
    m = S.pynvml_snapshot(fake_nvml_lib, scen)["devices"][1]["metrics"]
    assert m["vram_used_source"] == "nvml_v1" and m["vram_reserved_bytes"] is None
    assert m["vram_used_bytes"] == g["mem_v1_used"]
    for variant in ("mem_v1", "r470"):
        m = S.pynvml_snapshot(fake_nvml_build(variant), scen)["devices"][0]["metrics"]
        assert m["vram_used_source"] == "nvml_v1" and m["vram_used_bytes"] == g["mem_v1_used"]


def test_gpu_lost_after_a_mid_run_scenario_change(fake_nvml_lib, scen, log):
    S.write_scenario(scen, gpus=[{}, {}], procs=[{"gpu": 1, "pid": 4242, "mem": 1}])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = [N.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
        out["before"] = N.nvmlDeviceGetName(h[1])
        S.write_scenario(os.environ["FAKE_NVML_SCENARIO"], gpus=[{}, {"lost": 1}])
        out["after"] = {
            "name": code(N.nvmlDeviceGetName, h[1]),
            "util": code(N.nvmlDeviceGetUtilizationRates, h[1]),
            "mem": code(N.nvmlDeviceGetMemoryInfo, h[1]),
            "mem_v2": code(N.nvmlDeviceGetMemoryInfo, h[1], version=N.nvmlMemory_v2),
            "procs": code(N.nvmlDeviceGetComputeRunningProcesses_v3, h[1]),
            "util_info": code(N.nvmlDeviceGetProcessesUtilizationInfo, h[1], 0),
            "fields": code(N.nvmlDeviceGetFieldValues, h[1], [82]),
            "handle": code(N.nvmlDeviceGetHandleByIndex, 1),
        }
        out["count"] = N.nvmlDeviceGetCount()
        out["other"] = N.nvmlDeviceGetName(h[0])
        # the GPU disappears from the scenario: its old handle is lost too
        S.write_scenario(os.environ["FAKE_NVML_SCENARIO"], gpus=[{}])
        out["gone"] = code(N.nvmlDeviceGetPowerUsage, h[1])
        out["count_gone"] = N.nvmlDeviceGetCount()
    """, log_path=log)
    assert out["before"] == "NVIDIA H100 80GB HBM3"
    assert set(out["after"].values()) == {"GPU_IS_LOST"}
    assert out["count"] == 2 and out["other"] == "NVIDIA H100 80GB HBM3"
    assert out["gone"] == "GPU_IS_LOST" and out["count_gone"] == 1
    assert S.count_calls(log, "nvmlDeviceGetName") == 3
    S.write_scenario(scen, gpus=[{}, {"lost": 1}])
    snap = S.pynvml_snapshot(fake_nvml_lib, scen)
    assert snap["devices"][1]["handle_error"] == "GPU_IS_LOST"
    assert snap["devices"][0]["metrics"]["runtime_status"] == "active"


def test_a_broken_rewrite_keeps_the_previous_state(fake_nvml_lib, scen):
    S.write_scenario(scen, gpus=[{"util_gpu": 5}])
    proc = S.run_python(fake_nvml_lib, scen, textwrap.dedent("""
        import os, pynvml as N, nvml_support as S
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        path = os.environ["FAKE_NVML_SCENARIO"]
        with open(path + ".tmp", "w") as f:
            f.write("gpu 0 util_gpu=banana\\n")
        os.replace(path + ".tmp", path)
        print(N.nvmlDeviceGetUtilizationRates(h).gpu)
        S.write_scenario(path, gpus=[{"util_gpu": 6}])
        print(N.nvmlDeviceGetUtilizationRates(h).gpu)
    """))
    assert proc.stdout.split() == ["5", "6"]
    assert "util_gpu=banana: not a number" in proc.stderr
    assert "keeping the previous state" in proc.stderr


# -------------------------------------------------------------- processes ----
PROCS = [
    {"gpu": 0, "list": "compute", "pid": 1001, "mem": 512 * 2 ** 20},
    {"gpu": 0, "list": "compute", "pid": 1002, "mem": None},              # N/A
    {"gpu": 0, "list": "graphics", "pid": 1001, "mem": 256 * 2 ** 20},
    {"gpu": 0, "list": "graphics", "pid": 1003, "mem": 2 ** 33, "gi": 1, "ci": 0},
    {"gpu": 0, "list": "mps", "pid": 1004, "mem": 7, "cc": 4096},
    {"gpu": 1, "list": "compute", "pid": 2001, "mem": 3},
]

LIST_BODY = """
N.nvmlInit()
for i in range(N.nvmlDeviceGetCount()):
    h = N.nvmlDeviceGetHandleByIndex(i)
    for part, key in (("Compute", "compute"), ("Graphics", "graphics"), ("MPSCompute", "mps")):
        for ver in VERSIONS:
            fn = getattr(N, "nvmlDeviceGet%sRunningProcesses_%s" % (part, ver))
            out["%d/%s/%s" % (i, key, ver)] = [
                [p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in fn(h)]
"""


def expected_lists(s, gpu, lst):
    return [[p["pid"], None if p["mem"] == S.NOT_AVAILABLE else p["mem"], p["gi"], p["ci"]]
            for p in s.procs_of(gpu, lst)]


def test_three_process_lists_v3_and_v2(fake_nvml_lib, scen):
    s = S.write_scenario(scen, gpus=[{}, {}], procs=PROCS)
    out = child(fake_nvml_lib, scen, "VERSIONS = ('v3', 'v2')\n" + LIST_BODY)
    for gpu in (0, 1):
        for lst in S.LISTS:
            for ver in ("v3", "v2"):
                assert out["%d/%s/%s" % (gpu, lst, ver)] == expected_lists(s, gpu, lst), (gpu, lst, ver)
    assert out["1/graphics/v3"] == [] and out["0/compute/v3"][1][1] is None    # N/A -> None
    snap = S.pynvml_snapshot(fake_nvml_lib, scen)
    d = snap["devices"][0]
    assert d["process_struct"] == "v3"
    assert [e["pid"] for e in d["processes"]["graphics"]] == [1001, 1003]
    assert d["processes"]["compute"][1]["usedGpuMemory"] is None


def test_v1_and_v2_only_libraries(fake_nvml_build, scen):
    s = S.write_scenario(scen, gpus=[{}, {}], procs=PROCS)
    out = child(fake_nvml_build("procs_v2"), scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        out["v3"] = code(N.nvmlDeviceGetComputeRunningProcesses_v3, h)
        out["v2"] = [p.pid for p in N.nvmlDeviceGetComputeRunningProcesses_v2(h)]
    """)
    assert out == {"v3": "FUNCTION_NOT_FOUND", "v2": [1001, 1002]}
    lib = fake_nvml_build("procs_v1")
    out = child(lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        out["v2"] = code(N.nvmlDeviceGetComputeRunningProcesses_v2, h)
        out["v1"] = S.raw_process_list(N, h, "nvmlDeviceGetGraphicsRunningProcesses", S._ProcInfo16)
    """)
    assert out["v2"] == "FUNCTION_NOT_FOUND"
    assert out["v1"] == [{"pid": 1001, "usedGpuMemory": 256 * 2 ** 20},
                         {"pid": 1003, "usedGpuMemory": 2 ** 33}]
    snap = S.pynvml_snapshot(lib, scen)["devices"][0]
    assert snap["process_struct"] == "v1"
    assert [e["pid"] for e in snap["processes"]["mps"]] == [1004]
    assert snap["processes"]["compute"][1]["usedGpuMemory"] is None
    assert s.procs_of(0, "mps")[0]["mem"] == snap["processes"]["mps"][0]["usedGpuMemory"]


def test_insufficient_size_handshake(fake_nvml_lib, scen):
    S.write_scenario(scen, gpus=[{}, {}], procs=PROCS)
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        lib = N.nvmlLib
        h0, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        E = N.c_nvmlProcessInfo_t
        def call(fn, h, n, buf):
            c = ctypes.c_uint(n)
            rc = getattr(lib, fn)(h, ctypes.byref(c), buf)
            return [rc, c.value]
        f = "nvmlDeviceGetGraphicsRunningProcesses_v3"
        out["sizing"] = call(f, h0, 0, None)
        out["too_small"] = call(f, h0, 1, (E * 1)())
        out["exact"] = call(f, h0, 2, (E * 2)())
        out["roomy"] = call(f, h0, 9, (E * 9)())
        out["null_roomy"] = call(f, h0, 9, None)
        out["empty"] = call(f, h1, 0, None)
        out["no_count"] = getattr(lib, f)(h0, None, None)
    """)
    assert out["sizing"] == [7, 2] and out["too_small"] == [7, 2]
    assert out["exact"] == [0, 2] and out["roomy"] == [0, 2]
    assert out["null_roomy"][0] == 2 and out["empty"] == [0, 0] and out["no_count"] == 2


def test_list_growing_between_sizing_and_fetch(fake_nvml_lib, scen, log):
    S.write_scenario(scen, procs=PROCS[:2], gpus=[{"grow_after_sizing": 3, "grow_lists": "compute"}])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        out["first"] = [p.pid for p in N.nvmlDeviceGetComputeRunningProcesses_v3(h)]
        out["second"] = [p.pid for p in N.nvmlDeviceGetComputeRunningProcesses_v3(h)]
        out["graphics"] = len(N.nvmlDeviceGetGraphicsRunningProcesses_v3(h))
        lib = N.nvmlLib
        c = ctypes.c_uint(0)
        lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(c), None)
        sized = c.value
        arr = (N.c_nvmlProcessInfo_t * sized)()
        out["exact_after_growth"] = [lib.nvmlDeviceGetComputeRunningProcesses_v3(
            h, ctypes.byref(c), arr), sized, c.value]
    """, log_path=log)
    # pynvml sizes count*2+5: 2 -> 9 slots, the list grew to 5 between the calls
    assert out["first"][:2] == [1001, 1002] and len(out["first"]) == 5
    assert len(out["second"]) == 8 and out["graphics"] == 0
    # sized at 8, grown to 11 before the fetch: INSUFFICIENT_SIZE with the new count
    assert out["exact_after_growth"] == [7, 8, 11]
    sizes = [c.args["out"] for c in S.read_call_log(log)
             if c.fn == "nvmlDeviceGetComputeRunningProcesses_v3"]
    assert sizes == ["2", "5", "5", "8", "8", "11"]
    # growth beyond pynvml's slack: its second call fails with INSUFFICIENT_SIZE
    S.write_scenario(scen, procs=PROCS[:2], gpus=[{"grow_after_sizing": 100}])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        out["rc"] = code(N.nvmlDeviceGetComputeRunningProcesses_v3, N.nvmlDeviceGetHandleByIndex(0))
    """)
    assert out["rc"] == "INSUFFICIENT_SIZE"


def test_early_r535_variant_fills_32_byte_entries(fake_nvml_build, scen):
    lib = fake_nvml_build("r535_early")
    s = S.write_scenario(scen, gpus=[{}, {}], procs=PROCS)
    out = child(lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        # nvitop's heuristic: _v3 + ConfComputeMemSizeInfo, no RunningProcessDetailList
        out["heuristic"] = [S.has_symbol(N, n) for n in (
            "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetConfComputeMemSizeInfo",
            "nvmlDeviceGetRunningProcessDetailList")]
        out["r32"] = {k: S.raw_process_list(N, h, "nvmlDeviceGet%sRunningProcesses_v3" % p, S._ProcInfo32)
                      for k, p in (("compute", "Compute"), ("graphics", "Graphics"), ("mps", "MPSCompute"))}
        # what a 24-byte reader (pynvml 12.535.x+) sees on such a driver: scrambled entries
        out["p24"] = [p.pid for p in N.nvmlDeviceGetGraphicsRunningProcesses_v3(h)]
        out["v2"] = [p.pid for p in N.nvmlDeviceGetGraphicsRunningProcesses_v2(h)]
        out["cc"] = [N.nvmlDeviceGetConfComputeMemSizeInfo(h).unprotectedMemSizeKib]
    """)
    assert out["heuristic"] == [True, True, False]
    for lst in S.LISTS:
        want = [{"pid": p["pid"], "usedGpuMemory": p["mem"], "gpuInstanceId": p["gi"],
                 "computeInstanceId": p["ci"], "usedGpuCcProtectedMemory": p["cc"]}
                for p in s.procs_of(0, lst)]
        assert out["r32"][lst] == want, lst
    assert out["p24"] != [1001, 1003] and out["p24"][0] == 1001     # 2nd entry misread
    assert out["v2"] == [1001, 1003]                                # _v2 stays 24 bytes
    assert out["cc"] == [S.resolve_gpu(0)["cc_unprotected_kib"]]
    snap = S.pynvml_snapshot(lib, scen)["devices"][0]
    assert snap["process_struct"] == "v3_32"
    assert [e["pid"] for e in snap["processes"]["graphics"]] == [1001, 1003]
    assert snap["processes"]["mps"][0]["usedGpuCcProtectedMemory"] == 4096
    assert snap["util_api"] == "process_utilization"                # no new API on R535


def test_process_detail_list(fake_nvml_lib, scen):
    S.write_scenario(scen, gpus=[{}, {}], procs=PROCS)
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        lib = N.nvmlLib
        res = {}
        for mode in (0, 1, 2, 3):
            pl = N.c_nvmlProcessDetailList_v1_t()
            pl.version = N.nvmlProcessDetailList_v1
            pl.mode = mode
            rc0 = lib.nvmlDeviceGetRunningProcessDetailList(h, ctypes.byref(pl))
            arr = (N.c_nvmlProcessDetail_v1_t * pl.numProcArrayEntries)()
            pl.procArray = arr
            rc1 = lib.nvmlDeviceGetRunningProcessDetailList(h, ctypes.byref(pl))
            res[str(mode)] = [rc0, rc1, [[e.pid, e.usedGpuCcProtectedMemory] for e in arr]]
        out["modes"] = res
        pl = N.c_nvmlProcessDetailList_v1_t()
        pl.version = 1
        out["bad_version"] = lib.nvmlDeviceGetRunningProcessDetailList(h, ctypes.byref(pl))
    """)
    assert out["modes"]["0"] == [7, 0, [[1001, 0], [1002, 0]]]
    assert out["modes"]["2"] == [7, 0, [[1004, 4096]]]
    assert [p for p, _ in out["modes"]["3"][2]] == [1001, 1002, 1003, 1004]   # one per pid
    assert out["bad_version"] == 25


# --------------------------------------------------- process utilisation ----
T0 = 2 ** 32 + 1000          # timestamps past 32 bits: a truncated lastSeen shows


def test_old_process_utilization_api_honours_a_64_bit_last_seen(fake_nvml_lib, fake_nvml_build,
                                                                scen, log):
    S.write_scenario(scen, procs=PROCS[:2], util=[
        {"pid": 1001, "ts": T0 + 10, "sm": 30, "mem": 10, "enc": 1, "dec": 2},
        {"pid": 1002, "ts": T0 + 20, "sm": 250, "mem": 5},                   # > 100
        {"pid": 9999, "ts": T0 + 30, "sm": 7},                                # in no list
    ])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        def get(last):
            try:
                return [[s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil]
                        for s in N.nvmlDeviceGetProcessUtilization(h, last)]
            except N.NVMLError as e:
                return S.err_name(e.value)
        T0 = %d
        out["all"] = get(0)
        out["after_first"] = get(T0 + 10)
        out["none_newer"] = get(T0 + 30)
        lib = N.nvmlLib
        c = ctypes.c_uint(0)
        out["null_buf"] = [lib.nvmlDeviceGetProcessUtilization(h, None, ctypes.byref(c),
                                                               ctypes.c_ulonglong(0)), c.value]
        c = ctypes.c_uint(1)
        buf = (N.c_nvmlProcessUtilizationSample_t * 1)()
        out["small_buf"] = [lib.nvmlDeviceGetProcessUtilization(h, buf, ctypes.byref(c),
                                                                ctypes.c_ulonglong(0)), c.value]
    """ % T0, log_path=log)
    assert out["all"] == [[1001, T0 + 10, 30, 10, 1, 2], [1002, T0 + 20, 250, 5, 0, 0],
                          [9999, T0 + 30, 7, 0, 0, 0]]
    assert [s[0] for s in out["after_first"]] == [1002, 9999]
    assert out["none_newer"] == "NOT_FOUND"
    assert out["null_buf"] == [7, 3] and out["small_buf"] == [7, 3]
    seen = [c.args["lastSeen"] for c in S.read_call_log(log)
            if c.fn == "nvmlDeviceGetProcessUtilization"]
    assert str(T0 + 10) in seen and str(T0 + 30) in seen            # 64 bits arrived intact
    snap = S.pynvml_snapshot(fake_nvml_build("old_util"), scen, last_seen=T0 + 15)["devices"][0]
    assert snap["util_api"] == "process_utilization"
    assert [u["pid"] for u in snap["util_samples"]] == [1002, 9999]
    assert snap["util_samples"][0]["jpg"] is None


def test_new_processes_utilization_info_api(fake_nvml_lib, scen, log):
    S.write_scenario(scen, procs=PROCS[:1], util=[
        {"pid": 1001, "ts": T0 + 5, "sm": 31, "mem": 11, "enc": 3, "dec": 4, "jpg": 5, "ofa": 6},
        {"pid": 1001, "ts": "now-500000", "sm": 40},
    ])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        got = N.nvmlDeviceGetProcessesUtilizationInfo(h, 0)
        out["all"] = [[s.timeStamp, s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil, s.jpgUtil,
                       s.ofaUtil] for s in got]
        out["since"] = [s.smUtil for s in N.nvmlDeviceGetProcessesUtilizationInfo(h, %d)]
        lib = N.nvmlLib
        pu = N.c_nvmlProcessesUtilizationInfo_v1_t()
        pu.version = 0x01000020
        out["bad_version"] = lib.nvmlDeviceGetProcessesUtilizationInfo(h, ctypes.byref(pu))
        pu.version = N.ProcessesUtilizationInfo_v1
        pu.processSamplesCount = 1
        pu.procUtilArray = (N.c_nvmlProcessUtilizationInfo_v1_t * 1)()
        out["small"] = [lib.nvmlDeviceGetProcessesUtilizationInfo(h, ctypes.byref(pu)),
                        pu.processSamplesCount]
        pu.lastSeenTimeStamp = 2 ** 63
        out["none"] = [lib.nvmlDeviceGetProcessesUtilizationInfo(h, ctypes.byref(pu)),
                       pu.processSamplesCount]
    """ % (T0 + 5), log_path=log)
    now_us = int(time.time() * 1e6)
    assert out["all"][0] == [T0 + 5, 1001, 31, 11, 3, 4, 5, 6]
    assert abs(out["all"][1][0] - (now_us - 500000)) < 30 * 10 ** 6   # "now-500000"
    assert out["since"] == [40]
    assert out["bad_version"] == 25 and out["small"] == [7, 2] and out["none"] == [6, 0]
    seen = [c.args["lastSeen"] for c in S.read_call_log(log)
            if c.fn == "nvmlDeviceGetProcessesUtilizationInfo"]
    assert str(T0 + 5) in seen and str(2 ** 63) in seen


def test_gpus_that_differ_in_what_they_support(fake_nvml_lib, scen):
    """proc_util=err:NOT_SUPPORTED on one GPU: both per-process utilisation APIs
    refuse there, while the other GPU (and every other call) answers."""
    S.write_scenario(scen, gpus=[{}, {"proc_util": S.err("NOT_SUPPORTED")}],
                     procs=[dict(gpu=g, pid=1001) for g in (0, 1)],
                     util=[dict(gpu=g, pid=1001, sm=30 + g) for g in (0, 1)])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        for i in range(2):
            h = N.nvmlDeviceGetHandleByIndex(i)
            for name in ("nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization"):
                try:
                    out["%d %s" % (i, name)] = [s.smUtil for s in getattr(N, name)(h, 0)]
                except N.NVMLError as e:
                    out["%d %s" % (i, name)] = S.err_name(e.value)
            out["%d clock" % i] = N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_SM)
    """)
    assert out == {"0 nvmlDeviceGetProcessesUtilizationInfo": [30],
                   "0 nvmlDeviceGetProcessUtilization": [30], "0 clock": 345,
                   "1 nvmlDeviceGetProcessesUtilizationInfo": "NOT_SUPPORTED",
                   "1 nvmlDeviceGetProcessUtilization": "NOT_SUPPORTED", "1 clock": 345}


# ------------------------------------------------------------ call log, misc ----
def test_call_log_counts_calls_and_the_oracle_never_samples_pcie(fake_nvml_lib, scen, log):
    S.write_scenario(scen, gpus=[{}, {}, {}])
    S.pynvml_snapshot(fake_nvml_lib, scen, log_path=log)
    calls = S.read_call_log(log)
    assert calls[0].fn == "nvmlInitWithFlags" and calls[-1].fn == "nvmlShutdown"
    assert S.count_calls(log, "nvmlDeviceGetPcieThroughput") == 0
    assert S.count_calls(log, "nvmlDeviceGetUtilizationRates") == 3
    per_gpu = [sum(1 for c in calls if c.args.get("gpu") == str(i)) for i in range(3)]
    assert per_gpu[0] == per_gpu[1] == per_gpu[2] > 20
    fan = [c for c in calls if c.fn == "nvmlDeviceGetFanSpeed"]
    assert [c.rc for c in fan] == [3, 3, 3]


def test_process_names(fake_nvml_lib, scen):
    S.write_scenario(scen, procnames={4242: "/usr/bin/python3 train.py"})
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        out["named"] = N.nvmlSystemGetProcessName(4242)
        out["self"] = N.nvmlSystemGetProcessName(os.getpid())
        out["missing"] = code(N.nvmlSystemGetProcessName, 2 ** 31 - 2)
        buf = ctypes.create_string_buffer(5)
        out["cropped"] = [N.nvmlLib.nvmlSystemGetProcessName(4242, buf, 5), buf.value.decode()]
    """)
    assert out["named"] == "/usr/bin/python3 train.py"
    assert out["self"] == sys.executable                     # argv[0] from /proc/<pid>/cmdline
    assert out["missing"] == "NOT_FOUND" and out["cropped"] == [0, "/usr"]


def test_calls_from_many_threads_while_the_scenario_changes(fake_nvml_lib, scen):
    """NVML is thread-safe (nvml.h); the stand-in serialises on one mutex."""
    S.write_scenario(scen, gpus=[{"util_gpu": 1}], procs=PROCS[:2])
    out = child(fake_nvml_lib, scen, """
        import threading
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        seen, errors, done = set(), [], threading.Event()
        def reader():
            try:
                n = 0
                while not done.is_set() or n < 50:
                    n += 1
                    seen.add(N.nvmlDeviceGetUtilizationRates(h).gpu)
                    assert [p.pid for p in N.nvmlDeviceGetComputeRunningProcesses_v3(h)] == [1001, 1002]
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(2, 40):
            S.write_scenario(os.environ["FAKE_NVML_SCENARIO"], gpus=[{"util_gpu": i}], procs=S_PROCS)
        done.set()
        for t in threads:
            t.join()
        out["errors"] = errors
        out["seen_many"] = len(seen) > 1 and seen <= set(range(1, 40))
    """.replace("S_PROCS", repr(PROCS[:2])))
    assert out == {"errors": [], "seen_many": True}


# ------------------------------------------------------------------ MIG, ECC ----
MIG_GPU = {"mig_mode": [1, 1], "ecc_mode": [1, 1], "ecc_corrected_volatile": 3,
           "ecc_uncorrected_volatile": 1, "ecc_corrected_aggregate": 30,
           "ecc_uncorrected_aggregate": 2}
MIGS = [dict(gpu=0, index=0, gi=1, ci=0, mem_total=10200547328, mem_used=1048576),
        dict(gpu=0, index=2, gi=2, ci=0, name="NVIDIA H100 80GB HBM3 MIG 2g.20gb",
             gi_slices=2, ci_slices=2, sm_count=32, mem_total=20401094656, mem_used=0),
        dict(gpu=0, index=3, gi=5, ci=1, uuid="MIG-0b3c6f58-1d43-5b9e-a3a1-7f0e8d2c4b11")]


def test_mig_devices_through_pynvml(fake_nvml_lib, scen):
    """A MIG GPU (three instances, a NOT_FOUND hole at index 1) next to a plain
    GPU: mode, count, handles by index, parent, GI/CI ids, attributes, the
    MIG handles' names, UUIDs and memory; the process structs' GI/CI ids."""
    S.write_scenario(scen, gpus=[MIG_GPU, {}], migs=MIGS,
                     procs=[dict(gpu=0, pid=71, gi=1, ci=0, mem=4096),
                            dict(gpu=0, pid=72, gi=5, ci=1, mem=8192)])
    out = child(fake_nvml_lib, scen, """
        def v(x):    # some pynvml wrappers return the c_uint itself
            return int(getattr(x, "value", x))
        N.nvmlInit()
        for i in range(2):
            h = N.nvmlDeviceGetHandleByIndex(i)
            try:
                out["%d mode" % i] = [v(x) for x in N.nvmlDeviceGetMigMode(h)]
            except N.NVMLError as e:
                out["%d mode" % i] = S.err_name(e.value)
            out["%d max" % i] = v(N.nvmlDeviceGetMaxMigDeviceCount(h))
            out["%d is_mig" % i] = v(N.nvmlDeviceIsMigDeviceHandle(h))
            out["%d gi on gpu" % i] = code(N.nvmlDeviceGetGpuInstanceId, h)
            out["%d by index 0" % i] = code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 0)
        h = N.nvmlDeviceGetHandleByIndex(0)
        out["past max"] = code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 7)
        found = {}
        for idx in range(v(N.nvmlDeviceGetMaxMigDeviceCount(h))):
            try:
                m = N.nvmlDeviceGetMigDeviceHandleByIndex(h, idx)
            except N.NVMLError as e:
                found[idx] = S.err_name(e.value)
                continue
            a = N.nvmlDeviceGetAttributes(m)
            mem = N.nvmlDeviceGetMemoryInfo(m)
            mem2 = N.nvmlDeviceGetMemoryInfo(m, version=N.nvmlMemory_v2)
            found[idx] = {
                "is_mig": v(N.nvmlDeviceIsMigDeviceHandle(m)),
                "gi": v(N.nvmlDeviceGetGpuInstanceId(m)),
                "ci": v(N.nvmlDeviceGetComputeInstanceId(m)),
                "name": N.nvmlDeviceGetName(m), "uuid": N.nvmlDeviceGetUUID(m),
                "parent_is_gpu0": v(N.nvmlDeviceGetIndex(
                    N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m))) == 0,
                "attrs": [a.gpuInstanceSliceCount, a.computeInstanceSliceCount,
                          a.multiprocessorCount, a.memorySizeMB],
                "mem": [mem.total, mem.used, mem.free], "mem2": [mem2.total, mem2.used]}
        out["found"] = found
        out["procs"] = [[p.pid, p.gpuInstanceId, p.computeInstanceId]
                        for p in N.nvmlDeviceGetComputeRunningProcesses(h)]
        out["parent of gpu"] = code(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, h)
    """)
    assert out["0 mode"] == [1, 1] and out["1 mode"] == "NOT_SUPPORTED"
    assert out["0 max"] == 7 and out["1 max"] == 0
    assert out["0 is_mig"] == 0 and out["1 is_mig"] == 0
    assert out["0 gi on gpu"] == out["1 gi on gpu"] == "INVALID_ARGUMENT"
    assert out["0 by index 0"] is None and out["1 by index 0"] == "NOT_SUPPORTED"
    assert out["past max"] == "INVALID_ARGUMENT"
    assert out["parent of gpu"] == "INVALID_ARGUMENT"
    found = out["found"]
    assert sorted(found) == [str(i) for i in range(7)]
    assert [found[str(i)] for i in (1, 4, 5, 6)] == ["NOT_FOUND"] * 4
    first, second, third = found["0"], found["2"], found["3"]
    assert first == {"is_mig": 1, "gi": 1, "ci": 0, "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                     "uuid": "MIG-5c1e0a3b-7d2f-4a61-9b8e-000000010000", "parent_is_gpu0": True,
                     "attrs": [1, 1, 16, 9728], "mem": [10200547328, 1048576, 10199498752],
                     "mem2": [10200547328, 1048576]}
    assert second["name"] == "NVIDIA H100 80GB HBM3 MIG 2g.20gb"
    assert second["attrs"] == [2, 2, 32, 19456] and (second["gi"], second["ci"]) == (2, 0)
    assert third["uuid"] == "MIG-0b3c6f58-1d43-5b9e-a3a1-7f0e8d2c4b11"
    assert (third["gi"], third["ci"]) == (5, 1)
    assert out["procs"] == [[71, 1, 0], [72, 5, 1]]


def test_a_removed_mig_instance_leaves_a_stale_handle(fake_nvml_lib, scen):
    S.write_scenario(scen, gpus=[MIG_GPU], migs=MIGS)
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        m = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 2)
        out["before"] = N.nvmlDeviceGetMemoryInfo(m).total
        S.write_scenario(os.environ["FAKE_NVML_SCENARIO"], gpus=[%r], migs=[%r])
        out["after"] = code(N.nvmlDeviceGetMemoryInfo, m)
        out["again"] = code(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 2)
    """ % (MIG_GPU, MIGS[0]))
    assert out == {"before": 20401094656, "after": "INVALID_ARGUMENT", "again": "NOT_FOUND"}


def test_ecc_counts_through_pynvml(fake_nvml_lib, scen):
    """ECC on: the four counters by (type, counter); ECC off: NOT_SUPPORTED;
    no ECC (the default): the mode itself NOT_SUPPORTED."""
    S.write_scenario(scen, gpus=[MIG_GPU, {"ecc_mode": [0, 1]}, {}])
    out = child(fake_nvml_lib, scen, """
        N.nvmlInit()
        for i in range(3):
            h = N.nvmlDeviceGetHandleByIndex(i)
            try:
                out["%d mode" % i] = [int(getattr(x, "value", x)) for x in N.nvmlDeviceGetEccMode(h)]
            except N.NVMLError as e:
                out["%d mode" % i] = S.err_name(e.value)
            counts = []
            for t in (N.NVML_MEMORY_ERROR_TYPE_CORRECTED, N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED):
                for c in (N.NVML_VOLATILE_ECC, N.NVML_AGGREGATE_ECC):
                    try:
                        counts.append(int(N.nvmlDeviceGetTotalEccErrors(h, t, c)))
                    except N.NVMLError as e:
                        counts.append(S.err_name(e.value))
            out["%d counts" % i] = counts
    """)
    assert out["0 mode"] == [1, 1] and out["0 counts"] == [3, 30, 1, 2]
    assert out["1 mode"] == [0, 1] and out["1 counts"] == ["NOT_SUPPORTED"] * 4
    assert out["2 mode"] == "NOT_SUPPORTED" and out["2 counts"] == ["NOT_SUPPORTED"] * 4
