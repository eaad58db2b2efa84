"""A box with all three vendors in one run: AMD (RX 6900 XT capture), Intel (an i915
iGPU and an xe Arc B580: testdata/sys/mixed_box), NVIDIA (two GPUs of the stand-in
libnvidia-ml.so.1), processes from testdata/proc/multi. Every output carries all
of them: REST, WebSocket, /plain, /metrics (promtool clean), --once --json; and
the wire shapes (metrics, process rows, totals, capabilities, visibility) have
the same keys whatever the vendor, the demo included.
"""

import json
import os
import subprocess
import sys

import pytest

import amdgpu_top_web as atw
import nvml_support as S
from conftest import PROGRAM, SHARE, SYSFS, TESTDATA, wait_for
from nvml_support import fake_nvml_build, fake_nvml_lib  # noqa: F401 (fixtures)
from test_prometheus import parse, promtool, sample_value, scrape
from test_vendor_plain import w3m_dump
from wsclient import RawWebSocket

PROC_MULTI = os.path.join(TESTDATA, "proc", "multi")
IDS = ["card0", "card1", "card2", "nvidia0", "nvidia1"]
VENDORS = ["intel", "amd", "intel", "nvidia", "nvidia"]
NV_GPUS = [dict(name="NVIDIA GeForce RTX 4090", pci="00000000:1B:00.0", pci_device_id=0x268410DE,
                util_gpu=64, fan_speed=45, fan_rpm=1500, clocks_event_reasons=0x4),
           dict(pci="00000000:9A:00.0", util_gpu=12)]
NV_PROCS = [dict(gpu=0, list="graphics", pid=1200, mem=512 << 20),
            dict(gpu=1, list="compute", pid=1500, mem=30 << 30),
            dict(gpu=1, list="compute", pid=777777, mem=1 << 30)]
NV_UTIL = [dict(gpu=1, pid=1500, ts="now", sm=77, mem=30)]


def mixed_env(lib_dir, scenario):
    env = S.nvml_env(lib_dir, scenario, base={})
    return {"FAKE_NVML_SCENARIO": env["FAKE_NVML_SCENARIO"],
            "APP_NVML_LIBRARY": env["APP_NVML_LIBRARY"],
            "APP_SYSFS_ROOT": os.path.join(SYSFS, "mixed_box"), "APP_SHARE_ROOT": SHARE,
            "APP_PROC_ENABLE": "true", "APP_PROC_ROOT": PROC_MULTI,
            "APP_SAMPLE_INTERVAL": "100ms", "APP_PROC_SCAN_INTERVAL": "500ms",
            "APP_ENABLE_PROMETHEUS": "true", "APP_PROMETHEUS_PROCESSES": "5"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("nvml") / "scenario.txt")
    S.write_scenario(path, gpus=NV_GPUS, procs=NV_PROCS, util=NV_UTIL)
    return path


@pytest.fixture(scope="module")
def box(server_module, fake_nvml_lib, scenario):
    proc = server_module(sysfs_root=os.path.join(SYSFS, "mixed_box"),
                         env=mixed_env(fake_nvml_lib, scenario))
    proc.wait_metrics(count=len(IDS))

    def all_procs():
        return all(proc.get_json("/api/gpus/%s/procs" % i)[1]["processes"] is not None
                   for i in IDS)
    wait_for(all_procs, 10.0, message="a procs frame for every GPU")
    return proc


def test_rest_lists_every_vendor(box):
    gpus = box.get_json("/api/gpus")[1]["gpus"]
    assert [(g["id"], g["vendor"]) for g in gpus] == list(zip(IDS, VENDORS))
    by_id = {g["id"]: g for g in gpus}
    assert by_id["card1"]["name"] == "AMD Radeon RX 6900 XT"
    assert by_id["card2"]["driver"] == "xe" and by_id["card2"]["metrics"]["sclk_mhz"] == 2670
    assert by_id["nvidia0"]["name"] == "NVIDIA GeForce RTX 4090"
    assert by_id["nvidia0"]["metrics"]["gpu_busy_pct"] == 64
    assert by_id["nvidia0"]["metrics"]["throttle_reasons"] == ["SwPowerCap"]
    assert by_id["nvidia1"]["uuid"].startswith("GPU-")
    # the nvidia-drm card3 in sysfs is NVML's GPU, not a fourth DRM GPU
    assert "card3" not in by_id
    for gpu in gpus:
        assert list(gpu["metrics"]) == list(atw.METRIC_KEYS)


def test_processes_of_every_vendor(box):
    procs = {i: box.get_json("/api/gpus/%s/procs" % i)[1] for i in IDS}
    assert procs["card0"]["capabilities"]["source"] == "fdinfo"
    assert [r["name"] for r in procs["card0"]["processes"]] == ["glxgears"]     # i915 client
    assert 1200 in [r["pid"] for r in procs["card1"]["processes"]]            # amdgpu client
    assert procs["nvidia0"]["capabilities"]["source"] == "nvml"
    nv1 = {r["pid"]: r for r in procs["nvidia1"]["processes"]}
    assert nv1[1500]["name"] == "llama-server" and nv1[1500]["engines_pct"]["sm"] == 77.0
    assert nv1[777777]["visible"] is False
    # kfd-only rocminfo (pid 1700) is shown on the AMD GPU only
    assert 1700 in [r["pid"] for r in procs["card1"]["processes"]]
    for other in ("card0", "card2", "nvidia0", "nvidia1"):
        assert 1700 not in [r["pid"] for r in procs[other]["processes"]]


def test_wire_shapes_have_the_same_keys_for_every_vendor(box, server_module):
    demo = server_module(args=["--demo"], env={"APP_SAMPLE_INTERVAL": "100ms",
                                               "APP_PROC_ENABLE": "true"})
    demo.wait_metrics(count=3)
    wait_for(lambda: all(demo.get_json("/api/gpus/%s/procs" % i)[1]["processes"] is not None
                         for i in ("card0", "card1", "nvidia0")), 10.0, message="demo procs")
    messages = [box.get_json("/api/gpus/%s/procs" % i)[1] for i in IDS]
    messages += [demo.get_json("/api/gpus/%s/procs" % i)[1] for i in ("card0", "card1", "nvidia0")]
    row_keys = [k for k, _ in atw.PROC_ROW_DEFAULTS]
    for message in messages:
        assert set(message) == set(messages[0]), message["gpu_id"]
        assert set(message["totals"]) == set(messages[0]["totals"])
        assert set(message["capabilities"]) == set(messages[0]["capabilities"])
        assert set(message["visibility"]) == set(messages[0]["visibility"])
        for row in message["processes"]:
            assert list(row) == row_keys, (message["gpu_id"], row["pid"])
    sources = {m["gpu_id"] + "/" + m["capabilities"]["source"] for m in messages}
    assert {"card1/fdinfo", "nvidia0/nvml", "nvidia0/demo"} <= sources
    empty = atw.build_procs_message("x", 0, None, messages[0]["visibility"], {})
    assert set(empty) == set(messages[0]) and set(empty["totals"]) == set(messages[0]["totals"])
    assert set(empty["capabilities"]) == set(messages[0]["capabilities"])
    for gpu in demo.get_json("/api/gpus")[1]["gpus"]:
        assert list(gpu["metrics"]) == list(atw.METRIC_KEYS)


def test_websocket_hello_and_frames_carry_every_vendor(box):
    with RawWebSocket.connect("127.0.0.1", box.port) as ws:
        hello = ws.recv_json()
        assert [g["vendor"] for g in hello["gpus"]] == VENDORS
        seen = set()

        def all_seen(message):
            if message.get("type") == "stats":
                seen.add(message["gpu_id"])
            return seen == set(IDS)
        ws.recv_until(all_seen, timeout=5.0)


def test_plain_view_shows_every_gpu(box):
    dump = w3m_dump(box.url + "/plain")
    for text in ("Intel Iris Xe Graphics [Intel]", "AMD Radeon RX 6900 XT [AMD]",
                 "Intel Arc B580 [Intel]", "NVIDIA GeForce RTX 4090 [NVIDIA]", "SwPowerCap"):
        assert text in dump, text


def test_metrics_promtool_clean_with_every_vendor(box):
    text = scrape(box)
    result = subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    findings = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and findings.strip() == "", findings
    families = parse(text)
    vendors = {s.labels["gpu"]: s.labels["vendor"] for s in families["amdgpu_gpu_info"].samples}
    assert vendors == dict(zip(IDS, VENDORS))
    assert sample_value(families, "amdgpu_gpu_busy_ratio", gpu="nvidia0") == pytest.approx(0.64)
    assert sample_value(families, "amdgpu_throttled", gpu="nvidia0") == 1
    assert sample_value(families, "amdgpu_throttle_reason_active", gpu="nvidia0",
                        reason="SwPowerCap") == 1
    assert sample_value(families, "amdgpu_clock_hertz", gpu="card2", clock="shader") == 2670e6
    assert families["amdgpu_energy_joules"].type == "counter"


def test_once_json_carries_every_vendor(fake_nvml_lib, scenario):
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update(mixed_env(fake_nvml_lib, scenario))
    result = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    gpus = json.loads(result.stdout)["gpus"]
    assert [(g["id"], g["vendor"]) for g in gpus] == list(zip(IDS, VENDORS))
    assert all(g["procs"]["type"] == "procs" for g in gpus)
    table = subprocess.run([sys.executable, PROGRAM, "--once"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60).stdout
    for gpu_id, vendor in zip(IDS, VENDORS):
        assert "%s  " % gpu_id in table and "[%s, " % vendor in table
