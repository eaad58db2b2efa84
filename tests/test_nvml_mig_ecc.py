"""MIG instances and ECC counts of NVIDIA GPUs (issue 18 item 5), against the
stand-in libnvidia-ml.so.1 (tests/nvml/): a MIG GPU with three instances and a
hole in the MIG indices next to a plain GPU. No real NVIDIA GPU has run this:
the facts (calls, enums, return codes) are nvml.h's."""

import json
import os
import subprocess
import sys
import time

import pytest

import amdgpu_top_web as atw
import nvml_support as S
from conftest import wait_for
from nvml_support import fake_nvml_build, fake_nvml_lib  # noqa: F401 (fixtures)
from test_nvml import PROC_MULTI, once, private_nvml  # noqa: F401 (fixture)

GIB = 1 << 30
# GPU 0 (bus 18): MIG on, ECC on with errors; GPU 1 (bus 2A): no MIG, no ECC.
MIG_GPU = dict(pci="00000000:18:00.0", mig_mode=[1, 1], util_gpu=55, ecc_mode=[1, 1],
               ecc_corrected_volatile=4, ecc_uncorrected_volatile=0,
               ecc_corrected_aggregate=40, ecc_uncorrected_aggregate=2,
               fail={"nvmlDeviceGetUtilizationRates": "NOT_SUPPORTED",      # nvml.h: not on MIG
                     "nvmlDeviceGetProcessesUtilizationInfo": "NOT_SUPPORTED",
                     "nvmlDeviceGetProcessUtilization": "NOT_SUPPORTED"})
PLAIN_GPU = dict(pci="00000000:2A:00.0", util_gpu=30)
MIGS = [dict(gpu=0, index=0, gi=1, ci=0, mem_total=10200547328, mem_used=3 * GIB),
        dict(gpu=0, index=2, gi=2, ci=0, gi_slices=2, ci_slices=2, sm_count=32,
             mem_total=20937965568, mem_used=GIB),
        dict(gpu=0, index=3, gi=5, ci=0, name="NVIDIA H100 80GB HBM3 MIG 1g.10gb+me",
             mem_total=10200547328, mem_used=0)]
PROCS = [dict(gpu=0, list="compute", pid=1500, mem=3 * GIB, gi=1, ci=0),     # llama-server
         dict(gpu=0, list="compute", pid=1300, mem=GIB, gi=2, ci=0),         # blender
         dict(gpu=1, list="graphics", pid=1200, mem=300 << 20)]              # gnome-shell


def write(path, gpus=None, migs=MIGS, procs=PROCS):
    return S.write_scenario(path, gpus=gpus or [MIG_GPU, PLAIN_GPU], migs=migs, procs=procs)


def expected_instances():
    return [
        {"index": 0, "uuid": "MIG-5c1e0a3b-7d2f-4a61-9b8e-000000010000", "profile": "1g.10gb",
         "gi": 1, "ci": 0, "memory_used_bytes": 3 * GIB, "memory_total_bytes": 10200547328},
        {"index": 2, "uuid": "MIG-5c1e0a3b-7d2f-4a61-9b8e-000000020000", "profile": "2g.20gb",
         "gi": 2, "ci": 0, "memory_used_bytes": GIB, "memory_total_bytes": 20937965568},
        {"index": 3, "uuid": "MIG-5c1e0a3b-7d2f-4a61-9b8e-000000050000", "profile": "1g.10gb+me",
         "gi": 5, "ci": 0, "memory_used_bytes": 0, "memory_total_bytes": 10200547328}]


def test_reader_lists_mig_instances_and_ecc_counts(private_nvml):
    """The MIG GPU: its three instances (the hole at MIG index 1 skipped) with
    memory, whole-GPU utilisation null (NVML refuses it under MIG), the four
    ECC counts; the plain GPU: mig and ECC null."""
    load, scen, log = private_nvml
    backend = load(gpus=[MIG_GPU, PLAIN_GPU], migs=MIGS, procs=PROCS)
    readers = [backend.open_reader(info) for info in backend.discover()]
    assert [r.info.id for r in readers] == ["nvidia0", "nvidia1"]
    for tick in range(3):
        mig, plain = [r.sample(100.0 + 0.5 * tick) for r in readers]
    assert mig["mig"] == expected_instances()
    assert mig["gpu_busy_pct"] is None and plain["gpu_busy_pct"] == 30
    assert (mig["ecc_corrected_volatile"], mig["ecc_uncorrected_volatile"],
            mig["ecc_corrected_aggregate"], mig["ecc_uncorrected_aggregate"]) == (4, 0, 40, 2)
    assert plain["mig"] is None
    assert [plain[k] for k in ("ecc_corrected_volatile", "ecc_uncorrected_volatile",
                               "ecc_corrected_aggregate", "ecc_uncorrected_aggregate")] == [None] * 4
    # slow cadence: 3 samples within 2 s -> the ECC counts and the MIG list read once per GPU
    assert S.count_calls(log, "nvmlDeviceGetTotalEccErrors") == 4
    assert S.count_calls(log, "nvmlDeviceGetEccMode") == 2
    assert S.count_calls(log, "nvmlDeviceGetMaxMigDeviceCount") == 1
    assert S.count_calls(log, "nvmlDeviceGetMemoryInfo_v2") == 3 * 3 + 3 + 3   # instances + GPUs
    # the plain GPU's refusals are for good: later slow reads do not ask again
    for tick in range(3):
        readers[1].sample(110.0 + 3 * tick)
    assert S.count_calls(log, "nvmlDeviceGetEccMode") == 2
    procs = backend.proc_source().scan().by_pci
    rows = dict((r["pid"], r) for r in procs["0000:18:00.0"]["processes"])
    assert rows[1500]["mig"] == {"gi": 1, "ci": 0, "profile": "1g.10gb"}
    assert rows[1300]["mig"] == {"gi": 2, "ci": 0, "profile": "2g.20gb"}
    assert procs["0000:2a:00.0"]["processes"][0]["mig"] is None


def test_stale_mig_handles_are_enumerated_again(private_nvml):
    """An instance destroyed (and another created) between slow reads: the
    stale handle's memory query fails, the list is read again at once."""
    load, scen, log = private_nvml
    backend = load(gpus=[MIG_GPU], migs=MIGS)
    (info,) = backend.discover()
    reader = backend.open_reader(info)
    assert [i["gi"] for i in reader.sample(100.0)["mig"]] == [1, 2, 5]
    write(scen, gpus=[MIG_GPU], migs=[MIGS[0], dict(MIGS[1], index=1, gi=3, mem_used=7 * GIB)],
          procs=())
    time.sleep(0.05)             # a new mtime for the stand-in's re-read
    metrics = reader.sample(100.5)                  # before the next slow read is due
    assert [(i["index"], i["gi"], i["memory_used_bytes"]) for i in metrics["mig"]] == [
        (0, 1, 3 * GIB), (1, 3, 7 * GIB)]
    write(scen, gpus=[dict(MIG_GPU, mig_mode=[0, 0])], migs=[], procs=())
    time.sleep(0.05)
    assert reader.sample(101.0)["mig"] is None      # MIG turned off (after a GPU reset)


def test_pure_mig_and_ecc_helpers():
    assert atw.parse_mig_profile("NVIDIA A100-SXM4-40GB MIG 1g.5gb") == "1g.5gb"
    assert atw.parse_mig_profile("NVIDIA H100 80GB HBM3 MIG 1c.2g.20gb") == "1c.2g.20gb"
    assert atw.parse_mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me") == "1g.10gb+me"
    # no profile in the name: spelt from the attributes (slices, MiB rounded to GiB)
    assert atw.parse_mig_profile("MIG device", 1, 1, 9728) == "1g.10gb"
    assert atw.parse_mig_profile(None, 2, 1, 19968) == "1c.2g.20gb"
    assert atw.parse_mig_profile("NVIDIA H100", None, None, None) is None
    instances = expected_instances()
    assert atw.nvml_proc_mig(2, 0, instances) == {"gi": 2, "ci": 0, "profile": "2g.20gb"}
    assert atw.nvml_proc_mig(9, 0, instances) == {"gi": 9, "ci": 0, "profile": None}
    assert atw.nvml_proc_mig(0xFFFFFFFF, 0xFFFFFFFF, instances) is None
    assert atw.nvml_proc_mig(None, None, None) is None
    assert atw.compute_ecc_new(None, 5) == 0          # the first reading is a baseline
    assert atw.compute_ecc_new(5, 7) == 2
    assert atw.compute_ecc_new(7, 0) == 0             # driver reloaded: volatile reset
    assert atw.compute_ecc_new(7, None) is None


def test_the_ecc_alert_fires_once_on_a_rise_and_resolves_after_its_hold():
    """gpu_ecc_uncorrected: the first reading is a baseline (2 errors from
    before: no alert); a rise fires critical at once, a further rise while it
    fires changes nothing, clear_for (600 s) without a new error resolves it;
    a driver reload (the count drops to 0) is no rise; a GPU without ECC
    (null counts) never fires."""
    from test_alerts import gpu_metrics, make_engine
    cache, engine, _, frames = make_engine()
    t0 = 1764000000.0
    counts = [(0, 2), (2, 2), (5, 3), (10, 3), (20, 4), (30, 4), (400, 4), (629, 4), (630, 4),
              (700, 0), (710, 0)]
    for dt, count in counts:
        engine.offer_stats("card0", t0 + dt, gpu_metrics(ecc_uncorrected_volatile=count))
        engine.offer_stats("card1", t0 + dt, gpu_metrics())            # no ECC: null
        engine.drain()
    events = [json.loads(f.payload) for f in frames if f.kind == "alert"]
    events = [e for e in events if e["rule"] == "gpu_ecc_uncorrected"]
    assert {e["gpu_id"] for e in events} == {"card0"}
    # one firing (at the first rise: t0+5), one resolved: 600 s after the last rise's
    # next reading (t0+30, the first without a new error)
    recent = [(e["state"], e["severity"], atw.parse_iso_ts(e["started"]) - t0,
               None if e["ended"] is None else atw.parse_iso_ts(e["ended"]) - t0)
              for e in engine.recent(t0, t0 + 3600) if e["rule"] == "gpu_ecc_uncorrected"]
    assert recent == [("firing", "critical", 5, None), ("resolved", "critical", 5, 630)]
    assert [e["summary"] for e in events if e["state"] == "firing"][0] == (
        "card0: new uncorrected ECC errors (3 since the driver loaded)")
    assert not engine.active()


def test_the_ecc_alert_is_tunable_and_can_be_off():
    rules = atw.parse_alert_rules('{"gpu_ecc_uncorrected": {"crit": 3, "clear_for": "1m"}}')
    assert (rules["gpu_ecc_uncorrected"]["crit"], rules["gpu_ecc_uncorrected"]["clear_for_s"]) == (
        3, 60)
    off = atw.parse_alert_rules('{"gpu_ecc_uncorrected": {"enabled": false}}')
    from test_alerts import gpu_metrics, make_engine
    for rules, fired in ((rules, [False, True]), (off, [False, False])):
        _, engine, _, _ = make_engine(rules)
        seen = []
        for dt, count in ((0, 0), (1, 2), (2, 6)):      # +2: under crit 3; +4: over
            engine.offer_stats("card0", 1764000000.0 + dt, gpu_metrics(ecc_uncorrected_volatile=count))
            engine.drain()
            seen.append(bool(engine.active()))
        assert seen[1:] == fired


def test_once_json_and_text_show_instances_ecc_and_the_process_instance(fake_nvml_lib, tmp_path):
    path = str(tmp_path / "s.txt")
    write(path)
    snapshot, _ = once(fake_nvml_lib, path)
    gpus = dict((g["id"], g) for g in snapshot["gpus"] if g["vendor"] == "nvidia")
    mig = gpus["nvidia0"]["metrics"]
    assert mig["mig"] == expected_instances() and mig["gpu_busy_pct"] is None
    assert (mig["ecc_corrected_volatile"], mig["ecc_uncorrected_aggregate"]) == (4, 2)
    assert gpus["nvidia1"]["metrics"]["mig"] is None
    assert gpus["nvidia1"]["metrics"]["ecc_uncorrected_volatile"] is None
    rows = dict((r["pid"], r) for r in gpus["nvidia0"]["procs"]["processes"])
    assert rows[1500]["mig"] == {"gi": 1, "ci": 0, "profile": "1g.10gb"}
    assert gpus["nvidia1"]["procs"]["processes"][0]["mig"] is None
    env = dict(os.environ, **{k: v for k, v in S.nvml_env(fake_nvml_lib, path, base={}).items()})
    from test_nvml import program_env
    from conftest import PROGRAM, TESTDATA
    text = subprocess.run([sys.executable, PROGRAM, "--once"], cwd=TESTDATA,
                          env=program_env(fake_nvml_lib, path), stdout=subprocess.PIPE,
                          universal_newlines=True, timeout=60).stdout
    assert "  Memory ECC errors: corrected 4 (40 total), uncorrected 0 (2 total)" in text
    assert "  MIG instance 2: 2g.20gb (GI 2, CI 0): 1.00 GiB / 19.50 GiB" in text
    assert "  GPU busy under MIG: not reported" in text
    assert text.count("Memory ECC errors") == 1 and text.count("MIG instance") == 3


def test_server_metrics_plain_and_the_ecc_alert(server, fake_nvml_lib, tmp_path):
    """A real server on the stand-in: /metrics (promtool clean) has the ECC
    counters and each instance's memory; /plain shows the instances, the ECC
    line and the process's instance; a rise of the volatile uncorrected count
    on the MIG GPU raises one critical gpu_ecc_uncorrected, none on the other."""
    from test_prometheus import parse, promtool, sample_value, scrape
    from test_vendor_plain import w3m_dump
    path = str(tmp_path / "s.txt")
    write(path)
    env = S.nvml_env(fake_nvml_lib, path, None, base={})
    env = {k: env[k] for k in ("FAKE_NVML_SCENARIO", "APP_NVML_LIBRARY")}
    proc = server("hd7870_radeon", env=dict(
        env, APP_SAMPLE_INTERVAL="100ms", APP_PROC_ENABLE="true", APP_PROC_ROOT=PROC_MULTI,
        APP_PROC_SCAN_INTERVAL="500ms", APP_ENABLE_PROMETHEUS="true"))
    proc.wait_metrics(count=2)

    def procs_with_mig():     # a scan before the reader's first MIG read: profile null
        rows = proc.get_json("/api/gpus/nvidia0/procs")[1].get("processes") or []
        return [r for r in rows if r.get("mig") and r["mig"]["profile"]]
    wait_for(lambda: len(procs_with_mig()) == 2, 20.0, message="nvidia0's rows with mig")
    text = scrape(proc)
    result = subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    families = parse(text)
    assert sample_value(families, "amdgpu_ecc_errors", gpu="nvidia0", type="corrected",
                        counter="aggregate") == 40
    assert {s.labels["gpu"] for s in families["amdgpu_ecc_errors"].samples} == {"nvidia0"}
    assert sample_value(families, "amdgpu_mig_memory_used_bytes", gpu="nvidia0", gi="1", ci="0",
                        profile="1g.10gb") == 3 * GIB
    assert len(families["amdgpu_mig_memory_total_bytes"].samples) == 3
    dump = w3m_dump(proc.url + "/plain").replace("\u00a0", " ")
    lines = dump.splitlines()

    def row(label):      # a th/td row of the GPU table, as w3m draws it
        return [" ".join(line.replace("\u2502", " ").split()) for line in lines
                if line.replace("\u2502", " ").split()[:len(label.split())] == label.split()]
    assert row("Memory ECC errors") == [
        "Memory ECC errors corrected 4 (40 total), uncorrected 0 (2 total)"]
    assert row("MIG instance 3") == ["MIG instance 3 1g.10gb+me (GI 5, CI 0): 0 B / 9.50 GiB"]
    assert len(row("GPU busy under MIG")) == 1
    assert "MIG 1g.10gb (GI 1, CI 0)" in dump and "MIG 2g.20gb (GI 2, CI 0)" in dump
    assert not proc.get_json("/api/alerts")[1]["active"]       # the 0 at start is a baseline
    write(path, gpus=[dict(MIG_GPU, ecc_uncorrected_volatile=1, ecc_uncorrected_aggregate=3),
                      PLAIN_GPU])

    def active():
        return proc.get_json("/api/alerts")[1]["active"]
    wait_for(lambda: active(), 20.0, message="gpu_ecc_uncorrected firing")
    time.sleep(0.5)
    (alert,) = active()
    assert (alert["rule"], alert["gpu_id"], alert["severity"], alert["state"]) == (
        "gpu_ecc_uncorrected", "nvidia0", "critical", "firing")
    assert alert["summary"].startswith("nvidia0: new uncorrected ECC errors (1 since the driver")

