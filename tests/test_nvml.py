"""The NVIDIA backend (NVML through ctypes) against the stand-in libnvidia-ml.so.1
(tests/nvml/fake_nvml.c, built from NVIDIA's nvml.h), with NVIDIA's own binding
(pynvml, nvidia-ml-py) as the oracle: every metric both read must be equal.

The program runs for real: `--once --json` and the server as subprocesses,
with APP_NVML_LIBRARY naming the stand-in and FAKE_NVML_SCENARIO its scenario;
reader-level checks load a private copy of the library in this process (a copy
per test: a fresh dlopen, so no NVML state leaks between tests).
"""

import collections
import ctypes
import json
import os
import subprocess
import sys
import time

import pytest

import amdgpu_top_web as atw
import nvml_support as S
from conftest import PROGRAM, SHARE, SYSFS, TESTDATA, get_json, wait_for
from nvml_support import fake_nvml_build, fake_nvml_lib  # noqa: F401 (fixtures)

PROC_MULTI = os.path.join(TESTDATA, "proc", "multi")      # pids 1200 gnome-shell, 1500 llama-server...
HIDDEN_PID = 777777                                       # in NVML's lists, not in that /proc

# Three GPUs, listed by NVML in an order that is NOT their PCI order, the middle
# one refused (cgroup-restricted); values chosen to differ between GPUs.
GPUS = [
    dict(name="NVIDIA H100 80GB HBM3", pci="00000000:9A:00.0", util_gpu=87, util_mem=41,
         clock_graphics=1755, clock_mem=2619, temp_gpu=71, temp_mem=78, power_usage_mw=612345,
         power_limit_mw=700000, energy_mj=987654321, mem_used=61203283968, pstate=0,
         clocks_event_reasons=0x4 | 0x40 | 0x1000, enc_util=0, dec_util=12, pcie_gen=5,
         pcie_width=16, clock_sm=1740),
    dict(name="NVIDIA H100 80GB HBM3", pci="00000000:3A:00.0", handle=S.err("NO_PERMISSION")),
    dict(name="NVIDIA GeForce RTX 4090", pci="00000000:18:00.0", pci_device_id=0x268410DE,
         util_gpu=3, util_mem=1, clock_graphics=210, clock_mem=405, temp_gpu=38,
         temp_mem=S.err("NOT_SUPPORTED"), fan_speed=31, fan_rpm=1180, power_usage_mw=21456,
         power_limit_mw=450000, mem_total=25757220864, mem_reserved=531628032,
         mem_used=1308622848, pstate=8, clocks_event_reasons=0x1, enc_util=17, dec_util=0,
         pcie_gen=1, pcie_width=16, clock_sm=225, max_clock_graphics=3105, max_clock_mem=10501),
]
OPTIONS = {"driver_version": "550.54.15", "cuda_version": 12040}
PROCS = [
    dict(gpu=0, list="compute", pid=1500, mem=40 << 30),            # llama-server
    dict(gpu=0, list="graphics", pid=1500, mem=1 << 20),            # the same PID twice: one row
    dict(gpu=0, list="compute", pid=HIDDEN_PID, mem=S.NOT_AVAILABLE),
    dict(gpu=0, list="mps", pid=1300, mem=2 << 30),                 # blender via MPS
    dict(gpu=2, list="graphics", pid=1200, mem=300 << 20),          # gnome-shell
]
UTIL = [
    dict(gpu=0, pid=1500, ts="now-200000", sm=20, mem=5),
    dict(gpu=0, pid=1500, ts="now", sm=64, mem=22, enc=0, dec=3),   # the newest wins
    dict(gpu=0, pid=424242, ts="now", sm=50),                       # a PID in no list: dropped
    dict(gpu=0, pid=1300, ts="now", sm=130, mem=1),                 # SM over 100 %: dropped
    dict(gpu=2, pid=1200, ts="now-1000", sm=5, mem=140),            # mem over 100 %: kept, older
    dict(gpu=2, pid=1200, ts="now", sm=7, mem=2, enc=0, dec=0),
]
PROCNAMES = {HIDDEN_PID: "/opt/job/bin/train-hidden"}


def program_env(lib_dir, scenario, log=None, **extra):
    env = S.nvml_env(lib_dir, scenario, log, base={k: v for k, v in os.environ.items()
                                                  if not k.startswith("APP_")})
    env.update({"APP_SYSFS_ROOT": extra.pop("sysfs", os.path.join(SYSFS, "hd7870_radeon")),
                "APP_SHARE_ROOT": SHARE, "APP_PROC_ROOT": PROC_MULTI, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def once(lib_dir, scenario, log=None, **extra):
    result = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], cwd=TESTDATA,
                            env=program_env(lib_dir, scenario, log, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout), result.stderr


def nvidia(snapshot):
    return [g for g in snapshot["gpus"] if g["vendor"] == "nvidia"]


def newest_valid(samples, pids):
    """The oracle's rule for per-process utilisation (nvtop#110): the newest
    sample per listed PID, none with SM, encoder or decoder over 100 %."""
    best = {}
    for s in samples:
        values = [s[k] for k in ("sm", "enc", "dec") if s.get(k) is not None]
        if s["pid"] not in pids or any(v > 100 for v in values):
            continue
        if s["pid"] not in best or s["ts"] >= best[s["pid"]]["ts"]:
            best[s["pid"]] = s
    return best


@pytest.fixture
def scenario(tmp_path):
    path = str(tmp_path / "scenario.txt")
    S.write_scenario(path, gpus=GPUS, procs=PROCS, util=UTIL, procnames=PROCNAMES, options=OPTIONS)
    return path


# -- identity and metrics: ours == pynvml's ---------------------------------------------------

VARIANTS = ["full", "mem_v1", "procs_v2", "procs_v1", "old_util", "pci_v2", "r535_early", "r470"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_once_equals_pynvml(variant, fake_nvml_build, scenario):
    pytest.importorskip("pynvml")
    lib = fake_nvml_build(variant)
    ours, log = once(lib, scenario)
    oracle = S.pynvml_snapshot(lib, scenario)
    devices = [d for d in oracle["devices"] if d["handle_error"] is None]
    assert [d["handle_error"] for d in oracle["devices"]] == [None, "NO_PERMISSION", None]
    assert "event=nvml_gpu_skipped index=1" in log                 # one line, then runs on
    got = nvidia(ours)
    # ids in PCI order (18 before 9A), not NVML's index order
    assert [(g["id"], g["pci"]) for g in got] == [("nvidia0", "0000:18:00.0"),
                                                  ("nvidia1", "0000:9a:00.0")]
    by_pci = {d["pci"]: d for d in devices}
    for gpu in got:
        want = by_pci[gpu["pci"]]
        assert (gpu["name"], gpu["uuid"], gpu["pci_id"]) == (want["name"], want["uuid"], want["pci_id"])
        assert gpu["driver"] == "nvidia" and gpu["apu"] is False
        # the driver's versions (system-wide) and the card's maximum clocks: identity, read once
        cuda = oracle["cuda_version_v2"]
        assert (gpu["driver_version"], gpu["cuda_driver_version"]) == (
            oracle["driver_version"], "%d.%d" % (cuda // 1000, cuda % 1000 // 10))
        for key, value in want["max_clocks"].items():
            assert gpu[key] == value, (variant, gpu["id"], key)
        assert list(gpu["metrics"]) == list(atw.METRIC_KEYS)
        for key, value in want["metrics"].items():
            assert gpu["metrics"][key] == value, (variant, gpu["id"], key)
        for key in set(atw.METRIC_KEYS) - set(want["metrics"]):
            assert gpu["metrics"][key] is None, key      # AMD-only keys: null on NVIDIA
    assert (got[0]["driver_version"], got[0]["cuda_driver_version"]) == ("550.54.15", "12.4")
    assert (got[0]["sclk_max_mhz"], got[0]["mclk_max_mhz"]) == (3105, 10501)
    assert (got[0]["metrics"]["sm_clock_mhz"], got[1]["metrics"]["sm_clock_mhz"]) == (225, 1740)
    h100 = got[1]["metrics"]
    assert h100["throttle_reasons"] == ["SwPowerCap", "HwThermalSlowdown", "other"]
    assert h100["fan_pct"] is None and h100["fan_rpm"] is None      # data-centre card: no fan
    assert h100["vram_used_source"] == ("nvml_v1" if variant in ("mem_v1", "r470") else "nvml_v2")
    if h100["vram_used_source"] == "nvml_v1":                       # v1 used includes reserved
        assert h100["vram_reserved_bytes"] is None
        assert h100["vram_used_bytes"] == GPUS[0]["mem_used"] + S.GPU_DEFAULTS["mem_reserved"]
    else:
        assert h100["vram_used_bytes"] == GPUS[0]["mem_used"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_processes_equal_pynvml_lists(variant, fake_nvml_build, scenario):
    pytest.importorskip("pynvml")
    lib = fake_nvml_build(variant)
    ours, _ = once(lib, scenario)
    oracle = S.pynvml_snapshot(lib, scenario)
    by_pci = {d["pci"]: d for d in oracle["devices"] if d["handle_error"] is None}
    for gpu in nvidia(ours):
        want = by_pci[gpu["pci"]]
        listed = {}
        for kind, entries in (("C", want["processes"]["compute"]), ("G", want["processes"]["graphics"]),
                              ("M", want["processes"]["mps"])):
            for entry in entries or []:
                used, kinds = listed.get(entry["pid"], (None, []))
                mem = entry["usedGpuMemory"]
                listed[entry["pid"]] = (max(used, mem) if None not in (used, mem) else (mem if used is None else used),
                                        kinds + [kind])
        procs = gpu["procs"]
        rows = {r["pid"]: r for r in procs["processes"]}
        assert sorted(rows) == sorted(listed), gpu["id"]       # one row per PID
        for pid, (used, kinds) in listed.items():
            assert rows[pid]["vram_bytes"] == used, pid
            assert rows[pid]["type"] == "+".join(kinds), pid
        samples = newest_valid(want["util_samples"] or [], set(listed))
        for pid, row in rows.items():
            if pid in samples:
                sample = samples[pid]
                for engine, pct in row["engines_pct"].items():
                    assert pct == float(sample[engine]), (pid, engine)
            else:
                assert set(row["engines_pct"].values()) <= {0.0}, pid    # listed, idle
        assert procs["capabilities"]["source"] == "nvml"
        assert procs["totals"]["processes"] == len(rows)
        assert procs["totals"]["gtt_bytes"] is None                   # NVIDIA has no GTT


def test_rows_from_proc_and_from_nvml(fake_nvml_lib, scenario):
    ours, _ = once(fake_nvml_lib, scenario)
    h100 = nvidia(ours)[1]["procs"]["processes"]
    rows = {r["pid"]: r for r in h100}
    llama = rows[1500]
    assert (llama["name"], llama["user"] is not None, llama["visible"]) == ("llama-server", True, True)
    assert llama["cmd"] == "llama-server -m model.gguf -ngl 99"
    assert llama["container"] == "ee4b20e90ac7"                   # from /proc/1500/cgroup
    assert llama["engines_pct"]["sm"] == 64.0 and llama["gpu_time_ms_per_s"] == 640.0
    hidden = rows[HIDDEN_PID]
    assert hidden["visible"] is False and hidden["name"] == "train-hidden"
    assert hidden["vram_bytes"] is None                           # 0xFFFF...: not available
    assert (hidden["user"], hidden["cmd"], hidden["start_time"]) == (None, None, None)
    # Wall-clock start from the tree's btime (2026-12-06T08:00:00Z) + 2500 ticks / 100 Hz.
    assert llama["started"] == "2026-12-06T08:00:25Z" and isinstance(llama["elapsed_s"], int)
    assert (hidden["started"], hidden["elapsed_s"]) == (None, None)
    assert 424242 not in rows                                      # a sample for an unlisted PID
    assert rows[1300]["engines_pct"]["sm"] == 0.0                 # its only sample was over 100 %
    assert list(llama) == list(hidden) == [k for k, _ in atw.PROC_ROW_DEFAULTS]
    # --once reads twice, 0.5 s apart; the fixture's utime+stime does not move
    stat = open(os.path.join(PROC_MULTI, "1500", "stat")).read().rsplit(") ", 1)[1].split()
    assert llama["cpu_pct"] == 0.0
    assert llama["rss_bytes"] == int(stat[21]) * atw.read_sysconf("SC_PAGE_SIZE", 4096)
    assert (hidden["cpu_pct"], hidden["rss_bytes"]) == (None, None)   # not in our /proc


def test_once_text_shows_driver_cuda_and_max_clocks(fake_nvml_lib, scenario):
    result = subprocess.run([sys.executable, PROGRAM, "--once"], cwd=TESTDATA,
                            env=program_env(fake_nvml_lib, scenario), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    title = [n for n, line in enumerate(lines) if line.startswith("nvidia0  NVIDIA GeForce RTX 4090")]
    assert title and lines[title[0] + 1] == (
        "  driver 550.54.15, CUDA 12.4, max clocks: shader 3105 MHz, memory 10501 MHz")


def test_early_r535_32_byte_entries_give_the_right_pids(fake_nvml_build, scenario):
    """The 32-byte early-R535 entries scramble PIDs when read as 24-byte ones
    (nvitop#75); with nvitop's rule every PID and size comes out right."""
    ours, _ = once(fake_nvml_build("r535_early"), scenario)
    rows = {r["pid"]: r["vram_bytes"] for r in nvidia(ours)[1]["procs"]["processes"]}
    assert rows == {1500: 40 << 30, HIDDEN_PID: None, 1300: 2 << 30}


def test_list_growing_between_calls_is_read_whole(fake_nvml_lib, tmp_path):
    pytest.importorskip("pynvml")
    path = str(tmp_path / "grow.txt")
    procs = [dict(gpu=0, list="compute", pid=1200 + i, mem=(i + 1) << 20) for i in range(3)]
    S.write_scenario(path, gpus=[{}], procs=procs, options={"grow_after_sizing": 4})
    ours, _ = once(fake_nvml_lib, path)
    oracle = S.pynvml_snapshot(fake_nvml_lib, path)
    rows = nvidia(ours)[0]["procs"]["processes"]
    assert len(rows) >= 3
    # pynvml (count*2+5 as well) sees the grown list; we see at least what was listed at sizing
    assert {r["pid"] for r in rows} >= {1200, 1201, 1202}
    assert len(oracle["devices"][0]["processes"]["compute"]) >= 3


def test_each_process_list_growing_after_sizing_is_read_grown(private_nvml):
    """The compute, graphics and MPS lists each gain 4 entries after every
    sizing call: one larger buffer (count*2+5) reads each whole, the entries
    that joined after sizing included, with two calls a list a scan."""
    load, _, log = private_nvml
    lists = ("compute", "graphics", "mps")
    backend = load(gpus=[{}], options={"grow_after_sizing": 4},
                   procs=[dict(gpu=0, list=name, pid=1200 + i, mem=(i + 1) << 20)
                          for i, name in enumerate(lists)])
    source = backend.proc_source()
    for scan, grown in ((1, 4), (2, 8)):
        (entry,) = source.scan().by_pci.values()
        pids = set(r["pid"] for r in entry["processes"])
        for i, name in enumerate(lists):
            joined = set(3000000 + i * 100000 + k for k in range(grown))
            assert {1200 + i} | joined <= pids, (scan, name)
        assert len(pids) == 3 * (grown + 1), scan
    calls = collections.Counter(c.fn for c in S.read_call_log(log) if "RunningProcesses" in c.fn)
    assert sorted(calls.values()) == [4, 4, 4], calls


# -- the library is absent or refuses -------------------------------------------------------------

def test_absent_library_one_info_line_and_the_rest_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update(APP_SYSFS_ROOT=os.path.join(SYSFS, "rx6900xt"), APP_SHARE_ROOT=SHARE,
               APP_PROC_ENABLE="false", APP_NVML_LIBRARY=str(tmp_path / "libnvidia-ml.so.1"))
    result = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0
    lines = [l for l in result.stderr.splitlines() if "nvml" in l.lower()]
    assert len(lines) == 1 and "level=INFO" in lines[0] and "event=nvml_unavailable" in lines[0]
    assert [g["vendor"] for g in json.loads(result.stdout)["gpus"]] == ["amd"]


@pytest.mark.parametrize("code", ["DRIVER_NOT_LOADED", "NO_PERMISSION"])
def test_init_failure_means_no_nvidia_backend(code, fake_nvml_lib, tmp_path):
    path = str(tmp_path / "s.txt")
    S.write_scenario(path, options={"init": S.err(code)})
    ours, log = once(fake_nvml_lib, path, sysfs=os.path.join(SYSFS, "rx6900xt"))
    assert [g["vendor"] for g in ours["gpus"]] == ["amd"]
    assert "event=nvml_unavailable" in log and "nvmlInit_v2" in log


# -- reader behaviour, in process (a private copy of the library per test) ------------------------

@pytest.fixture
def private_nvml(tmp_path, monkeypatch):
    """(load(scenario gpus, ...) -> backend, log path): the stand-in copied to tmp_path,
    so this test's dlopen and NVML state are its own."""
    lib = S.build_fake_nvml(out_dir=str(tmp_path / "lib"))
    scen, log = str(tmp_path / "scenario.txt"), str(tmp_path / "calls.log")
    monkeypatch.setenv("FAKE_NVML_SCENARIO", scen)
    monkeypatch.setenv("FAKE_NVML_LOG", log)
    made = []

    def load(**scenario):
        S.write_scenario(scen, **scenario)
        config = atw.parse_config([], {"APP_NVML_LIBRARY": lib, "APP_SYSFS_ROOT": str(tmp_path),
                                       "APP_PROC_ROOT": PROC_MULTI})
        backend = atw.NvidiaBackend.open(config)
        assert backend is not None
        made.append(backend)
        return backend

    yield load, scen, log
    for backend in made:
        backend.close()


def test_not_supported_is_asked_once(private_nvml):
    load, _, log = private_nvml
    # H100 defaults: fans NOT_SUPPORTED; memory temperature's field entry too
    backend = load(gpus=[{"temp_mem": S.err("NOT_SUPPORTED")}])
    (info,) = backend.discover()
    reader = backend.open_reader(info)
    for tick in range(5):
        metrics = reader.sample(100.0 + tick)
        assert metrics["fan_pct"] is None and metrics["power_w"] == 71.234
        assert metrics["temp_mem_c"] is None and metrics["temp_c"] == 33
    assert S.count_calls(log, "nvmlDeviceGetFanSpeed") == 1
    assert S.count_calls(log, "nvmlDeviceGetFieldValues") == 1     # per-entry NOT_SUPPORTED
    assert S.count_calls(log, "nvmlDeviceGetPowerUsage") == 5
    assert S.count_calls(log, "nvmlDeviceGetPcieThroughput") == 0      # 20 ms: never


def test_a_refused_sampler_call_is_refused_for_that_gpu_only(private_nvml):
    """GPU 1 answers NOT_SUPPORTED for power, the memory-temperature field and
    the v2 memory call; GPU 0, read first and after, keeps all three."""
    load, _, log = private_nvml
    backend = load(gpus=[dict(pci="00000000:18:00.0"),
                         dict(pci="00000000:2A:00.0", temp_mem=S.err("NOT_SUPPORTED"),
                              fail={"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED",
                                    "nvmlDeviceGetMemoryInfo_v2": "NOT_SUPPORTED"})])
    readers = [backend.open_reader(info) for info in backend.discover()]
    for tick in range(3):
        first, second = [r.sample(float(tick)) for r in readers]
        assert (first["power_w"], first["temp_mem_c"], first["vram_used_source"]) == (
            71.234, 41, "nvml_v2"), tick
        assert (second["power_w"], second["temp_mem_c"], second["vram_used_source"]) == (
            None, None, "nvml_v1"), tick
    power = collections.Counter(c.args["gpu"] for c in S.read_call_log(log)
                                if c.fn == "nvmlDeviceGetPowerUsage")
    assert power == {"0": 3, "1": 1}


def test_v2_memory_refused_falls_back_to_v1_at_once(private_nvml):
    load, _, _ = private_nvml
    backend = load(gpus=[{"fail": {"nvmlDeviceGetMemoryInfo_v2": "NOT_SUPPORTED"}}])
    reader = backend.open_reader(backend.discover()[0])
    first = reader.sample(1.0)
    assert first["vram_used_source"] == "nvml_v1"                      # the same tick
    assert first["vram_used_bytes"] == 7340032 + 569376768             # v1 used includes reserved


def test_lost_gpu_goes_lost_alone_and_is_back_on_its_next_good_read(private_nvml, caplog):
    """While lost: one NVML call a sample (no 30 s wait, no storm), one WARNING
    per lost streak; healed: metrics on the very next sample."""
    load, scen, log = private_nvml
    gpus = [dict(pci="00000000:18:00.0"), dict(pci="00000000:2A:00.0", util_gpu=55)]
    backend = load(gpus=gpus)
    readers = [backend.open_reader(info) for info in backend.discover()]
    assert [r.sample(10.0)["runtime_status"] for r in readers] == ["active", "active"]
    caplog.set_level("INFO", logger="amdgpu_top_web")

    def gpu1_calls():
        return len([c for c in S.read_call_log(log) if c.args.get("gpu") == "1"])

    for streak in range(2):
        S.write_scenario(scen, gpus=[gpus[0], dict(gpus[1], lost=1)])
        for tick in range(5):
            before = gpu1_calls()
            lost = readers[1].sample(11.0 + tick * 0.25)
            assert lost == atw.new_metrics({"runtime_status": "lost"})
            assert gpu1_calls() == before + 1                       # one cheap call a sample
            assert backend.lost == {"nvidia1"}
        assert readers[0].sample(12.0)["runtime_status"] == "active"
        S.write_scenario(scen, gpus=gpus)                           # back (e.g. after a reset)
        back = readers[1].sample(12.25)                             # the next sample, not 30 s on
        assert back["runtime_status"] == "active" and back["gpu_busy_pct"] == 55
        assert backend.lost == set()
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert [r.getMessage().split()[0] for r in warnings] == ["event=gpu_lost"] * (streak + 1)


def test_a_refused_utilisation_api_is_refused_for_that_gpu_only(private_nvml):
    """GPU 0 gives per-process utilisation, GPU 1 answers NOT_SUPPORTED to both
    APIs, GPU 2 only to the new one: every scan, GPU 0 keeps its SM/mem/enc/dec
    %, GPU 2 falls back to the old API, GPU 1 has none; each asked once."""
    load, _, log = private_nvml
    pcis = ["00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0"]
    backend = load(
        gpus=[dict(pci=pcis[0]), dict(pci=pcis[1], proc_util=S.err("NOT_SUPPORTED")),
              dict(pci=pcis[2], fail={"nvmlDeviceGetProcessesUtilizationInfo": "NOT_SUPPORTED"})],
        procs=[dict(gpu=g, list="compute", pid=1500, mem=1 << 30) for g in range(3)],
        util=[dict(gpu=g, pid=1500, ts="now", sm=55 + g, mem=20, enc=1, dec=2) for g in range(3)])
    source = backend.proc_source()
    for scan in range(3):
        by_pci = source.scan().by_pci
        gpu0, gpu1, gpu2 = [by_pci[atw.nvml_pci_address(0, int(p[9:11], 16), 0)] for p in pcis]
        assert gpu0["processes"][0]["engines_pct"] == {"sm": 55.0, "mem": 20.0, "enc": 1.0,
                                                       "dec": 2.0, "jpg": 0.0, "ofa": 0.0}, scan
        assert gpu1["processes"][0]["engines_pct"] == {}                # none known
        assert gpu1["processes"][0]["gpu_time_ms_per_s"] is None
        assert gpu2["processes"][0]["engines_pct"] == {"sm": 57.0, "mem": 20.0, "enc": 1.0, "dec": 2.0}
        assert [g["capabilities"]["process_engines"] for g in (gpu0, gpu1, gpu2)] == [True, False, True]
        assert gpu0["capabilities"]["engines"] == ["dec", "enc", "jpg", "mem", "ofa", "sm"]
        assert gpu1["capabilities"]["engines"] == []
    calls = S.read_call_log(log)
    asked = collections.Counter((c.fn, c.args.get("gpu")) for c in calls if "Utilization" in c.fn)
    new, old = "nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization"
    assert asked[(new, "1")] == asked[(old, "1")] == asked[(new, "2")] == 1      # refused: once
    assert asked[(old, "0")] == 0 and asked[(new, "0")] >= 3 and asked[(old, "2")] >= 3


def test_old_utilisation_api_gets_64_bit_last_seen(private_nvml):
    """lastSeenTimeStamp is a c_ulonglong argument: a µs timestamp (> 2**32)
    must reach the library intact (plain ints without argtypes are cut to 32 bits)."""
    lib_dir = S.build_fake_nvml(variant="old_util")
    load, scen, log = private_nvml
    S.write_scenario(scen, gpus=[{}], procs=[dict(gpu=0, list="compute", pid=1500, mem=1 << 30)],
                     util=[dict(gpu=0, pid=1500, ts="now", sm=40)])
    config = atw.parse_config([], {"APP_NVML_LIBRARY": lib_dir, "APP_PROC_ROOT": PROC_MULTI})
    backend = atw.NvidiaBackend.open(config)
    try:
        source = backend.proc_source()
        before = int(time.time() * 1e6)
        result = source.scan()
        (row,) = list(result.by_pci.values())[0]["processes"]
        assert row["engines_pct"] == {"sm": 40.0, "mem": 0.0, "enc": 0.0, "dec": 0.0}
        seen = [int(c.args["lastSeen"]) for c in S.read_call_log(log)
                if c.fn == "nvmlDeviceGetProcessUtilization"]
        assert seen and all(before - 2000000 < v <= before for v in seen), seen
        assert seen[0] > 2 ** 32
    finally:
        backend.close()


def test_nothing_nvml_returns_raises_out_of_a_sampler(private_nvml):
    """Every call failing with every error code the header knows: null values, no exception."""
    load, _, _ = private_nvml
    fns = ["nvmlDeviceGetUtilizationRates", "nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperature",
           "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
           "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetMemoryInfo_v2",
           "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetCurrPcieLinkGeneration",
           "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetPerformanceState",
           "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetEncoderUtilization",
           "nvmlDeviceGetDecoderUtilization"]
    for code in [c for c in S.ERRORS if c not in ("SUCCESS", "GPU_IS_LOST", "INSUFFICIENT_SIZE")]:
        backend = load(gpus=[{"fail": dict.fromkeys(fns, code)}])
        reader = backend.open_reader(backend.discover()[0])
        for tick in range(2):
            metrics = reader.sample(float(tick))
            assert metrics["runtime_status"] == "active"
            assert all(metrics[k] is None for k in ("gpu_busy_pct", "power_w", "vram_used_bytes")), code
        backend.close()


# -- the server: lost mid-run, no slow calls, NVML shut down on exit ------------------------------

def test_server_a_hung_gpu_call_does_not_stall_the_other_gpu(server, fake_nvml_lib, tmp_path):
    """The GPUs share one sampler clock; a driver call that hangs on one GPU
    leaves the other sampled on schedule, and the hung GPU goes on, once its
    call returns, on a thread of its own."""
    path = str(tmp_path / "s.txt")
    gpus = [dict(pci="00000000:18:00.0"), dict(pci="00000000:2A:00.0")]
    S.write_scenario(path, gpus=gpus)
    env = S.nvml_env(fake_nvml_lib, path, None, base={})
    env = {k: env[k] for k in ("FAKE_NVML_SCENARIO", "APP_NVML_LIBRARY")}
    proc = server("hd7870_radeon", env=dict(env, APP_SAMPLE_INTERVAL="100ms", FAKE_NVML_RECHECK_MS="0"))
    proc.wait_metrics(count=2)
    S.write_scenario(path, gpus=[dict(gpus[0], hang_ms=8000), gpus[1]])

    def ts(gpu):
        return proc.get_json("/api/gpus/%s/metrics" % gpu)[1]["ts"]

    def new_samples(gpu, count):
        seen = set([ts(gpu)])
        wait_for(lambda: seen.add(ts(gpu)) or len(seen) > count, 20.0,
                 message="%d new samples of %s" % (count, gpu))
    new_samples("nvidia1", 3)                 # the hang has begun by now
    hung_at = ts("nvidia0")
    new_samples("nvidia1", 5)                 # sampled on, 8 s inside nvidia0's call
    assert ts("nvidia0") == hung_at
    S.write_scenario(path, gpus=gpus)
    new_samples("nvidia0", 3)                 # back, on a thread of its own
    assert proc.log().count("event=sampler_overran") == 1
    proc.stop()
    assert proc.proc.returncode == 0


def test_server_gpu_lost_mid_run(server, fake_nvml_lib, tmp_path):
    path, log = str(tmp_path / "s.txt"), str(tmp_path / "calls.log")
    gpus = [dict(pci="00000000:18:00.0", util_gpu=10), dict(pci="00000000:2A:00.0", util_gpu=20)]
    S.write_scenario(path, gpus=gpus)
    env = S.nvml_env(fake_nvml_lib, path, log, base={})
    env = {k: env[k] for k in ("FAKE_NVML_SCENARIO", "FAKE_NVML_LOG", "APP_NVML_LIBRARY")}
    proc = server("hd7870_radeon", env=dict(env, APP_SAMPLE_INTERVAL="100ms", APP_PROC_ENABLE="true",
                                             APP_PROC_ROOT=PROC_MULTI))
    proc.wait_metrics(count=2)
    S.write_scenario(path, gpus=[gpus[0], dict(gpus[1], lost=1)])

    def lost():
        gpus_now = proc.get_json("/api/gpus")[1]["gpus"]
        return [g["metrics"]["runtime_status"] for g in gpus_now] == ["active", "lost"]
    wait_for(lost, 5.0, message="nvidia1 lost")
    status, body = proc.get_json("/api/gpus/nvidia1/metrics")
    assert status == 200 and body["metrics"] == atw.new_metrics(
        {"runtime_status": "lost", "vram_forecast": atw.new_vram_forecast()})
    first = proc.get_json("/api/gpus/nvidia0/metrics")[1]["ts"]
    wait_for(lambda: proc.get_json("/api/gpus/nvidia0/metrics")[1]["ts"] != first, 2.0,
             message="nvidia0 still sampled")
    time.sleep(0.5)
    assert proc.log().count("event=gpu_lost") == 1                 # once, not per tick
    assert proc.get_json("/api/healthz")[0] == 200
    proc.stop()
    assert proc.proc.returncode == 0
    calls = S.read_call_log(log)
    assert not [c for c in calls if c.fn == "nvmlDeviceGetPcieThroughput"]
    assert calls[-1].fn == "nvmlShutdown"                           # after every other call


def test_server_mixed_support_and_driver_facts(server, fake_nvml_lib, tmp_path):
    """A 2-GPU box, GPU 0 with per-process utilisation, GPU 1 NOT_SUPPORTED:
    after several scans GPU 0 still has its per-process engine series in
    /metrics (promtool clean), capabilities stay per GPU; the driver's versions
    and the maximum clocks reach hello, /api/gpus, /plain and /metrics."""
    from test_prometheus import parse, promtool, sample_value, scrape
    from test_vendor_plain import w3m_dump
    from wsclient import RawWebSocket
    path, log = str(tmp_path / "s.txt"), str(tmp_path / "calls.log")
    S.write_scenario(path, gpus=[dict(pci="00000000:18:00.0", clock_sm=1410),
                                 dict(pci="00000000:2A:00.0", proc_util=S.err("NOT_SUPPORTED"),
                                      max_clock_graphics=1755, max_clock_mem=1593)],
                     procs=[dict(gpu=g, list="compute", pid=1500, mem=1 << 30) for g in (0, 1)],
                     util=[dict(gpu=g, pid=1500, ts="now", sm=55, mem=20) for g in (0, 1)],
                     options={"driver_version": "550.54.15", "cuda_version": 12040})
    env = S.nvml_env(fake_nvml_lib, path, log, base={})
    env = {k: env[k] for k in ("FAKE_NVML_SCENARIO", "FAKE_NVML_LOG", "APP_NVML_LIBRARY")}
    proc = server("hd7870_radeon", env=dict(
        env, APP_SAMPLE_INTERVAL="100ms", APP_PROC_ENABLE="true", APP_PROC_ROOT=PROC_MULTI,
        APP_PROC_SCAN_INTERVAL="500ms", APP_ENABLE_PROMETHEUS="true", APP_PROMETHEUS_PROCESSES="5"))
    proc.wait_metrics(count=2)

    def scans_of_gpu0():
        return len([c for c in S.read_call_log(log) if c.args.get("gpu") == "0"
                    and c.fn == "nvmlDeviceGetComputeRunningProcesses_v3"])
    wait_for(lambda: scans_of_gpu0() >= 6, 10.0, message="three scans of GPU 0")  # 2 calls a scan
    procs = [proc.get_json("/api/gpus/nvidia%d/procs" % i)[1] for i in (0, 1)]
    assert procs[0]["processes"][0]["engines_pct"]["sm"] == 55.0
    assert procs[1]["processes"][0]["engines_pct"] == {}
    assert [p["capabilities"]["process_engines"] for p in procs] == [True, False]
    text = scrape(proc)
    result = subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    families = parse(text)
    assert sample_value(families, "amdgpu_process_engine_busy_ratio", gpu="nvidia0", pid="1500",
                        engine="sm") == pytest.approx(0.55)
    assert {s.labels["gpu"] for s in families["amdgpu_process_engine_busy_ratio"].samples} == {"nvidia0"}
    for gpu in ("nvidia0", "nvidia1"):
        assert sample_value(families, "amdgpu_driver_info", gpu=gpu, driver_version="550.54.15",
                            cuda_driver_version="12.4") == 1
    assert sample_value(families, "amdgpu_clock_max_hertz", gpu="nvidia1", clock="shader") == 1755e6
    assert sample_value(families, "amdgpu_clock_max_hertz", gpu="nvidia1", clock="memory") == 1593e6
    assert sample_value(families, "amdgpu_clock_hertz", gpu="nvidia0", clock="sm") == 1410e6
    gpus = {g["id"]: g for g in proc.get_json("/api/gpus")[1]["gpus"]}
    assert (gpus["nvidia1"]["driver_version"], gpus["nvidia1"]["cuda_driver_version"],
            gpus["nvidia1"]["sclk_max_mhz"], gpus["nvidia1"]["mclk_max_mhz"]) == (
                "550.54.15", "12.4", 1755, 1593)
    with RawWebSocket.connect("127.0.0.1", proc.port) as ws:
        hello = {g["id"]: g for g in ws.recv_json()["gpus"]}
    assert hello["nvidia0"]["cuda_driver_version"] == "12.4" and hello["nvidia0"]["sclk_max_mhz"] == 1980
    dump = w3m_dump(proc.url + "/plain").replace("\u00a0", " ")   # /plain's no-break spaces
    assert "driver 550.54.15, CUDA 12.4, max clocks: shader 1755 MHz, memory 1593 MHz" in dump
    assert "SM clock" in dump and "1410 MHz" in dump


def test_pure_nvml_helpers():
    samples = [(1, 10, {"sm": 5, "mem": 140}),      # mem over 100: kept (nvtop checks sm/enc/dec)
               (2, 10, {"sm": 101, "mem": 1}),      # SM over 100: dropped
               (3, 5, {"sm": 1}), (3, 9, {"sm": 2}),  # the newest of a PID wins
               (4, 1, {"sm": 3})]                   # in no list: dropped
    assert atw.pick_nvml_util(samples, {1, 2, 3}) == {1: {"sm": 5, "mem": 140}, 3: {"sm": 2}}
    procs = [atw.NvmlProcess(7, 100, "C"), atw.NvmlProcess(7, 300, "G"),
             atw.NvmlProcess(8, S.NOT_AVAILABLE, "M"), atw.NvmlProcess(7, None, "C")]
    assert atw.merge_nvml_processes(procs) == {7: (300, "C+G"), 8: (None, "M")}
    assert atw.parse_clock_event_reasons(0) == []
    assert atw.parse_clock_event_reasons(None) is None
    assert atw.parse_clock_event_reasons(0x1 | 0x400 | 1 << 40) == ["GpuIdle", "Reliability", "other"]
    assert atw.nvml_pci_address(0, 0x1B, 0) == "0000:1b:00.0"
    assert atw.nvml_pci_id(0x233010DE) == "10de:2330"
    assert [atw.format_cuda_version(v) for v in (12040, 13000, 11080, 12090, None, 0)] == [
        "12.4", "13.0", "11.8", "12.9", None, None]
    # a vendor without these facts (AMD, Intel, the demo): null identity keys, no series, no line
    amd = atw.identity_json(atw.demo_gpu_infos(1)[0])
    assert [amd[k] for k in ("driver_version", "cuda_driver_version", "sclk_max_mhz",
                             "mclk_max_mhz")] == [None] * 4
    text = atw.render_prometheus([(amd, {"sclk_mhz": 500})], {}, {}, 0)
    assert "amdgpu_driver_info" not in text and "amdgpu_clock_max_hertz" not in text
    assert atw.format_identity_facts(amd) == ""
