"""Tests for the sysfs side: discovery, names, metrics, the kept-fd reader,
hot-unplug and the rolling history.

Every tree comes from testdata/sys/<fixture> (an APP_SYSFS_ROOT built from real
captures, see testdata/README.md) and testdata/share (an APP_SHARE_ROOT). The
expected values below are the oracle values of testdata/README.md, converted to
the wire units (MHz, °C, W, mV, bytes). Tests that edit a tree copy it into
tmp_path first; nothing here writes under testdata/.
"""

import array
import errno
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

import amdgpu_top_web as atw
from amdgpu_top_web import (
    METRIC_KEYS,
    MISSING_RECHECK_S,
    REVALIDATE_S,
    SLOW_FILES_EVERY_S,
    AmdGpuReader,
    AttrFile,
    Cache,
    GpuManager,
    HistoryRing,
    NameResolver,
    compute_fan_pct,
    compute_metrics,
    parse_amdgpu_ids,
    parse_config,
    parse_dpm_current_mhz,
    parse_link_speed,
    parse_pci_ids,
    parse_pcie_dpm,
    parse_uevent,
    pcie_gen_from_speed,
    plan_hwmon,
    read_gpu_info,
    readable_pci_name,
)

REPO = Path(__file__).resolve().parent.parent
SYS = REPO / "testdata" / "sys"
SHARE = REPO / "testdata" / "share"

# The metrics keys of the wire contract (DESIGN "JSON contracts").
CONTRACT_METRIC_KEYS = (
    "gpu_busy_pct", "mem_busy_pct", "sclk_mhz", "mclk_mhz", "temp_c", "temp_junction_c",
    "temp_mem_c", "fan_rpm", "fan_pct", "power_w", "power_cap_w", "vddgfx_mv", "vddnb_mv",
    "vram_used_bytes", "vram_total_bytes", "vis_vram_used_bytes", "vis_vram_total_bytes",
    "gtt_used_bytes", "gtt_total_bytes", "pcie_gen", "pcie_speed_gts", "pcie_width",
    "runtime_status",
)


# --- helpers ---------------------------------------------------------------

def config_for(sysfs_root, share_root=SHARE):
    return parse_config([], {"APP_SYSFS_ROOT": str(sysfs_root), "APP_SHARE_ROOT": str(share_root),
                             "APP_NVML_LIBRARY": "/nonexistent/libnvidia-ml.so.1"})


def card_device(root, card):
    """<root>/class/drm/<card>/device, the path the program reads through."""
    return os.path.join(str(root), "class", "drm", card, "device")


def gpu_info(root, card, share_root=SHARE):
    return read_gpu_info(card, card_device(root, card), NameResolver(str(share_root)))


def copy_fixture(name, tmp_path):
    """A writable copy of testdata/sys/<name> (relative symlinks kept)."""
    root = tmp_path / name
    shutil.copytree(str(SYS / name), str(root), symlinks=True)
    return root


def write(path, text):
    with open(str(path), "w") as handle:
        handle.write(text)


def metrics(**values):
    """A full metrics dict: every METRIC_KEYS key, None unless given."""
    unknown = set(values) - set(METRIC_KEYS)
    assert not unknown, "not metric keys: %s" % sorted(unknown)
    out = dict.fromkeys(METRIC_KEYS)
    if values.get("vram_used_bytes") is not None:      # AMD's used figure is sysfs's own
        values.setdefault("vram_used_source", "sysfs")
    out.update(values)
    return out


def table_of(root, card):
    """The fixture card's parsed gpu_metrics table, or None when it has none."""
    path = os.path.join(card_device(root, card), "gpu_metrics")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return atw.parse_gpu_metrics(handle.read())


def with_table(expected, root, card):
    """The plain-file values plus what the card's gpu_metrics table adds where
    they are missing (the table's decoding is checked against its tools'
    values in test_gpu_metrics.py; the agreement of both sources below)."""
    merged = atw.merge_gpu_metrics(dict(expected), table_of(root, card))
    merged.update(crit_limits(root, card, merged))
    return merged


def crit_limits(root, card, expected):
    """The card's temp*_crit values (°C) beside each temperature the expected
    metrics have, the sensor found by its label (edge/junction/mem) or index."""
    info = gpu_info(root, card)
    if not info.hwmon_dir:
        return {}
    names = set(os.listdir(info.hwmon_dir))
    by_label = {"edge": "temp_c", "junction": "temp_junction_c", "mem": "temp_mem_c"}
    by_index = {1: "temp_c", 2: "temp_junction_c", 3: "temp_mem_c"}
    out = {}
    for n in range(1, 4):
        label = "temp%d_label" % n
        key = (by_label.get((Path(info.hwmon_dir) / label).read_text().strip())
               if label in names else by_index[n])
        crit = "temp%d_crit" % n
        if key and crit in names and expected.get(key) is not None:
            out[key[:-2] + "_crit_c"] = int((Path(info.hwmon_dir) / crit).read_text()) / 1000.0
    return out


def sample_once(root, card):
    reader = AmdGpuReader(gpu_info(root, card))
    try:
        return reader.sample(time.monotonic())
    finally:
        reader.close()


def all_attr_files(reader):
    return list(reader._fast.values()) + list(reader._slow.values())


@pytest.fixture
def managers():
    """GpuManager factory; every manager's sampler threads are stopped at teardown."""
    made = []

    def make(sysfs_root, share_root=SHARE):
        manager = GpuManager(config_for(sysfs_root, share_root), Cache(0.25, {}))
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.stop_samplers()


# --- expected values (testdata/README.md) ------------------------------------

# Identity per fixture card. revision None = the capture has no `revision` file.
RX6900XT_ID = dict(pci="0000:0c:00.0", pci_id="1002:73bf", revision="c0", apu=False,
                   name="AMD Radeon RX 6900 XT")
PHOENIX_ID = dict(pci="0000:64:00.0", pci_id="1002:15bf", revision="dd", apu=True,
                  name="AMD Phoenix1")
RX7800XT_ID = dict(pci="0000:03:00.0", pci_id="1002:747e", revision=None, apu=False,
                   name="AMD Radeon RX 7700 XT / 7800 XT")

IDENTITY = {
    "rx580": [dict(id="card0", render_node="/dev/dri/renderD128", pci="0000:09:00.0",
                   pci_id="1002:67df", revision="e7", apu=False,
                   name="AMD Radeon RX 580 Series")],                      # amdgpu.ids
    "vega56": [dict(id="card0", render_node="/dev/dri/renderD128", pci="0000:0b:00.0",
                    pci_id="1002:687f", revision="c3", apu=False,
                    name="AMD Radeon RX Vega 56/64")],                     # pci.ids
    "navi10_rx5700xt": [dict(id="card1", render_node="/dev/dri/renderD128",
                             pci="0000:28:00.0", pci_id="1002:731f", revision=None, apu=False,
                             name="AMD Radeon RX 5600 OEM/5600 XT / 5700/5700 XT")],
    "rx6900xt": [dict(RX6900XT_ID, id="card0", render_node="/dev/dri/renderD128")],
    "rx7600s": [dict(id="card1", render_node="/dev/dri/renderD128", pci="0000:03:00.0",
                     pci_id="1002:7480", revision=None, apu=False,
                     name="AMD Radeon RX 7600/7600 XT/7600M XT/7600S/7700S / PRO W7600")],
    "rx7800xt": [dict(RX7800XT_ID, id="card1", render_node="/dev/dri/renderD128")],
    "rx9070": [dict(id="card1", render_node="/dev/dri/renderD128", pci="0000:03:00.0",
                    pci_id="1002:7550", revision=None, apu=False,
                    name="AMD Radeon RX 9070/9070 XT/9070 GRE")],
    "phoenix": [dict(PHOENIX_ID, id="card1", render_node="/dev/dri/renderD128")],
    "strixpoint": [dict(id="card1", render_node="/dev/dri/renderD128", pci="0000:c1:00.0",
                        pci_id="1002:150e", revision="c4", apu=True,
                        name="AMD Radeon 880M / 890M")],
    "steamdeck": [dict(id="card0", render_node="/dev/dri/renderD128", pci="0000:04:00.0",
                       pci_id="1002:163f", revision=None, apu=True,
                       name="AMD Custom GPU 0405")],  # amdgpu.ids has only rev AE -> pci.ids
    "r7_240": [dict(id="card1", render_node="/dev/dri/renderD128", pci="0000:01:00.0",
                    pci_id="1002:6617", revision="87", apu=False,
                    name="AMD Radeon R7 200 Series")],                     # amdgpu.ids
    "hd7870_radeon": [],                                                   # DRIVER=radeon
    # card0 is the synthetic i915 iGPU (only its PCI files: no GT or hwmon files)
    "multi_gpu": [dict(id="card0", render_node="/dev/dri/renderD128", pci="0000:00:02.0",
                       pci_id="8086:3e92", revision=None, apu=True, driver="i915",
                       vendor="intel", name="Intel GPU 8086:3e92"),
                  dict(RX6900XT_ID, id="card1", render_node="/dev/dri/renderD129"),
                  dict(PHOENIX_ID, id="card2", render_node="/dev/dri/renderD130")],
    "suspended": [dict(RX7800XT_ID, id="card1", render_node="/dev/dri/renderD128")],
}

RX6900XT_METRICS = metrics(
    gpu_busy_pct=3, mem_busy_pct=0, sclk_mhz=500, mclk_mhz=1000,
    temp_c=56.0, temp_junction_c=59.0, temp_mem_c=54.0, fan_rpm=0, fan_pct=0.0,
    power_w=36.0, power_cap_w=289.0, vddgfx_mv=775,
    vram_used_bytes=668274688, vram_total_bytes=17163091968,
    vis_vram_used_bytes=668274688, vis_vram_total_bytes=17163091968,
    gtt_used_bytes=62369792, gtt_total_bytes=16786171904,
    pcie_gen=4, pcie_speed_gts=16.0, pcie_width=16, runtime_status="active")

PHOENIX_METRICS = metrics(
    gpu_busy_pct=0, sclk_mhz=800,
    mclk_mhz=400,                 # no freq2_input on APUs: the `*` line of pp_dpm_mclk
    temp_c=25.0, power_w=3.103,   # power1_average wins over power1_input (3.142)
    vddgfx_mv=814, vddnb_mv=615,
    vram_used_bytes=1272893440, vram_total_bytes=4294967296,
    vis_vram_used_bytes=1272893440, vis_vram_total_bytes=4294967296,
    gtt_used_bytes=211398656, gtt_total_bytes=31433977856,
    runtime_status="active")      # PCIe: null on APUs (internal link)

RX7800XT_METRICS = metrics(
    gpu_busy_pct=2, sclk_mhz=2011, mclk_mhz=456,
    temp_c=24.0, temp_junction_c=31.0, temp_mem_c=48.0, fan_rpm=868, fan_pct=34.9,
    power_w=32.0, power_cap_w=236.0, vddgfx_mv=985,
    pcie_gen=4, pcie_speed_gts=16.0, pcie_width=16)

EXPECTED_METRICS = {
    "rx580": metrics(
        gpu_busy_pct=11, mem_busy_pct=2,
        sclk_mhz=798,                 # freq1_input 798080000 Hz, not the `*` line (900)
        mclk_mhz=1750, temp_c=44.0, fan_rpm=595, fan_pct=13.7,  # pwm1 35 / 255
        power_w=41.045, power_cap_w=155.0, vddgfx_mv=975,
        vram_used_bytes=536870912, vram_total_bytes=4294967296,
        vis_vram_used_bytes=150302720, vis_vram_total_bytes=268435456,
        gtt_used_bytes=92377088, gtt_total_bytes=8342712320,
        pcie_gen=3, pcie_speed_gts=8.0, pcie_width=16),       # only the `*` line
    "vega56": metrics(
        gpu_busy_pct=0, sclk_mhz=26, mclk_mhz=167,
        temp_c=38.0, temp_junction_c=38.0, temp_mem_c=39.0, fan_rpm=5, fan_pct=0.0,
        power_w=8.0, power_cap_w=260.0, vddgfx_mv=762,
        vram_used_bytes=16613376, vram_total_bytes=8573157376,
        vis_vram_used_bytes=16613376, vis_vram_total_bytes=268435456,
        gtt_used_bytes=12337152, gtt_total_bytes=8342863872,
        pcie_gen=3, pcie_speed_gts=8.0, pcie_width=16, runtime_status="active"),
    "navi10_rx5700xt": metrics(
        gpu_busy_pct=0, sclk_mhz=10, mclk_mhz=875,
        temp_c=58.0, temp_junction_c=58.0, temp_mem_c=62.0, fan_rpm=29, fan_pct=25.5,
        power_w=29.0, power_cap_w=220.0, vddgfx_mv=1100,
        # current_link_speed says 16.0 GT/s; the `*` line of pp_dpm_pcie wins
        pcie_gen=3, pcie_speed_gts=8.0, pcie_width=16),
    "rx6900xt": RX6900XT_METRICS,
    "rx7600s": metrics(
        gpu_busy_pct=0, sclk_mhz=0, mclk_mhz=96,             # GFX gated: 0 MHz, 0 mV
        temp_c=53.0, temp_junction_c=54.0, temp_mem_c=60.0, fan_rpm=0, fan_pct=29.8,
        power_w=1.0, power_cap_w=95.0, vddgfx_mv=0,
        pcie_gen=4, pcie_speed_gts=16.0, pcie_width=8),
    "rx7800xt": RX7800XT_METRICS,
    "rx9070": metrics(
        gpu_busy_pct=25, sclk_mhz=900, mclk_mhz=1124,
        temp_c=48.0, temp_junction_c=52.0, temp_mem_c=72.0, fan_rpm=1944, fan_pct=45.9,
        power_w=49.0, power_cap_w=200.0, vddgfx_mv=790,
        # current_link_speed says 32.0 GT/s; the `*` line says 16.0GT/s, x16
        pcie_gen=4, pcie_speed_gts=16.0, pcie_width=16),
    "phoenix": PHOENIX_METRICS,
    "strixpoint": metrics(
        gpu_busy_pct=3, sclk_mhz=848, temp_c=38.0, power_w=9.087,
        vddgfx_mv=0, vddnb_mv=0,
        vram_used_bytes=514580480, vram_total_bytes=536870912,
        vis_vram_used_bytes=514580480, vis_vram_total_bytes=536870912,
        gtt_used_bytes=3946811392, gtt_total_bytes=16441004032,
        runtime_status="active"),
    "steamdeck": metrics(
        gpu_busy_pct=0, sclk_mhz=200, mclk_mhz=687, temp_c=56.0,
        power_w=3.218, power_cap_w=15.0,              # slowPPT: power1_average / power1_cap
        power_fast_w=3.04, power_fast_cap_w=15.0,     # fastPPT: power2_average / power2_cap
        vddgfx_mv=15, vddnb_mv=669),
    "r7_240": metrics(
        sclk_mhz=400, mclk_mhz=1150, temp_c=52.0, fan_pct=40.4,   # pwm1 103 / 255, no fan1_input
        vram_used_bytes=495321088, vram_total_bytes=2147483648,
        vis_vram_used_bytes=79491072, vis_vram_total_bytes=268435456,
        gtt_used_bytes=116916224, gtt_total_bytes=4069261312,
        pcie_gen=2, pcie_speed_gts=5.0, pcie_width=4,             # empty pp_dpm_pcie
        runtime_status="active"),
}

SINGLE_GPU_FIXTURES = sorted(EXPECTED_METRICS)


def test_every_fixture_is_covered():
    # the Intel trees (and the mixed box) are covered by tests/test_intel.py
    intel = {"intel_tgl_igpu", "intel_arc_a770_i915", "intel_bmg_xe", "mixed_box"}
    assert sorted(IDENTITY) == sorted(set(os.listdir(str(SYS))) - intel)
    assert set(EXPECTED_METRICS) | {"hd7870_radeon", "multi_gpu", "suspended"} == set(IDENTITY)


def test_metric_keys_cover_the_wire_contract():
    assert set(CONTRACT_METRIC_KEYS) <= set(METRIC_KEYS)
    assert len(set(METRIC_KEYS)) == len(METRIC_KEYS)


# --- discovery and identity --------------------------------------------------

def assert_identity(info, expected):
    got = atw.identity_json(info)
    for key in ("id", "pci", "pci_id", "render_node", "apu", "name"):
        assert got[key] == expected[key], key
    assert got["driver"] == expected.get("driver", "amdgpu")
    assert got["vendor"] == expected.get("vendor", "amd")
    assert got["demo"] is False
    if expected["revision"] is None:
        # the capture has no `revision` file (real sysfs always has one)
        assert got["revision"] in (None, "00")
    else:
        assert got["revision"] == expected["revision"]


@pytest.mark.parametrize("fixture", sorted(IDENTITY))
def test_discovery_finds_exactly_the_amdgpu_cards(fixture, managers):
    manager = managers(SYS / fixture)
    manager.rediscover()
    gpus = manager.cache.gpus()
    assert [g.id for g in gpus] == [e["id"] for e in IDENTITY[fixture]]
    for info, expected in zip(gpus, IDENTITY[fixture]):
        assert_identity(info, expected)
    assert manager.cache.ready.is_set()


def test_multi_gpu_finds_intel_and_amd_skips_radeon_and_connectors(managers):
    root = SYS / "multi_gpu"
    entries = os.listdir(str(root / "class" / "drm"))
    assert {"card0", "card3", "card0-DP-1", "card1-DP-1", "card3-DP-1", "version"} <= set(entries)
    manager = managers(root)
    manager.rediscover()
    assert [g.id for g in manager.cache.gpus()] == ["card0", "card1", "card2"]
    assert [g.vendor for g in manager.cache.gpus()] == ["intel", "amd", "amd"]
    assert sorted(r.info.id for r in manager.readers()) == ["card0", "card1", "card2"]


def test_rediscover_without_changes_keeps_the_same_samplers(managers):
    manager = managers(SYS / "multi_gpu")
    manager.rediscover()
    before = dict(manager._samplers)
    manager.rediscover()
    assert manager._samplers == before
    assert [g.id for g in manager.cache.gpus()] == ["card0", "card1", "card2"]


def test_empty_sysfs_root_finds_nothing(tmp_path, managers):
    manager = managers(tmp_path)
    manager.rediscover()
    assert manager.cache.gpus() == []
    assert manager.cache.ready.is_set()


@pytest.mark.parametrize("fixture,card,pci_id", [
    ("rx580", "card0", "1002:67df"),
    ("vega56", "card0", "1002:687f"),
    ("steamdeck", "card0", "1002:163f"),
    ("strixpoint", "card1", "1002:150e"),
])
def test_name_falls_back_to_the_pci_id_without_ids_files(fixture, card, pci_id, tmp_path):
    empty_share = tmp_path / "share"
    empty_share.mkdir()
    info = gpu_info(SYS / fixture, card, share_root=empty_share)
    assert info.name == "AMD GPU %s" % pci_id


def test_nonempty_product_name_wins(tmp_path):
    root = copy_fixture("rx580", tmp_path)
    # the capture's product_name is a bare newline: it must not win
    assert gpu_info(root, "card0").name == "AMD Radeon RX 580 Series"
    write(os.path.join(card_device(root, "card0"), "product_name"), "Radeon Pro Test Board\n")
    assert gpu_info(root, "card0").name == "Radeon Pro Test Board"


def test_product_name_also_wins_over_pci_ids(tmp_path):
    root = copy_fixture("vega56", tmp_path)
    write(os.path.join(card_device(root, "card0"), "product_name"), "Some FRU Name\n")
    assert gpu_info(root, "card0").name == "Some FRU Name"


# --- metrics per fixture -----------------------------------------------------

@pytest.mark.parametrize("fixture", SINGLE_GPU_FIXTURES)
def test_sample_matches_the_oracle(fixture):
    (card,) = [e["id"] for e in IDENTITY[fixture]]
    got = sample_once(SYS / fixture, card)
    missing = [key for key in METRIC_KEYS if key not in got]
    assert missing == []
    assert got == with_table(EXPECTED_METRICS[fixture], SYS / fixture, card)
    json.dumps(got, allow_nan=False)   # wire-safe


def test_multi_gpu_samples_both_cards():
    root = SYS / "multi_gpu"
    assert sample_once(root, "card1") == with_table(RX6900XT_METRICS, root, "card1")
    assert sample_once(root, "card2") == with_table(PHOENIX_METRICS, root, "card2")


def test_steamdeck_power_sensors_chosen_by_label():
    got = sample_once(SYS / "steamdeck", "card0")
    # power1 is slowPPT (average 3218000 µW, input 4057000 µW), power2 fastPPT
    assert got["power_w"] == 3.218
    assert got["power_cap_w"] == 15.0
    assert got["power_fast_w"] == 3.04
    assert got["power_fast_cap_w"] == 15.0


def test_power_input_used_when_there_is_no_average(tmp_path):
    root = copy_fixture("phoenix", tmp_path)
    info = gpu_info(root, "card1")
    os.remove(os.path.join(info.hwmon_dir, "power1_average"))
    assert sample_once(root, "card1")["power_w"] == 3.142   # power1_input


def test_missing_files_give_none_not_exceptions(tmp_path):
    root = copy_fixture("rx6900xt", tmp_path)
    info = gpu_info(root, "card0")
    for name in ("gpu_busy_percent", "mem_info_vram_used", "pp_dpm_pcie", "current_link_speed",
                 "gpu_metrics"):                    # (the table would fill some of the gaps)
        os.remove(os.path.join(info.device_dir, name))
    for name in ("temp2_input", "power1_average", "fan1_input"):
        os.remove(os.path.join(info.hwmon_dir, name))
    got = sample_once(root, "card0")
    for key in ("gpu_busy_pct", "vram_used_bytes", "temp_junction_c", "power_w", "fan_rpm",
                "pcie_speed_gts", "pcie_gen"):
        assert got[key] is None, key
    assert got["pcie_width"] == 16          # current_link_width still there
    assert got["temp_c"] == 56.0
    assert got["vram_total_bytes"] == 17163091968


def test_garbage_file_contents_give_none(tmp_path):
    root = copy_fixture("rx580", tmp_path)
    info = gpu_info(root, "card0")
    write(os.path.join(info.device_dir, "gpu_busy_percent"), "")
    write(os.path.join(info.device_dir, "mem_info_vram_used"), "lots\n")
    write(os.path.join(info.hwmon_dir, "temp1_input"), "\x00\x00")
    got = sample_once(root, "card0")
    assert got["gpu_busy_pct"] is None
    assert got["vram_used_bytes"] is None
    assert got["temp_c"] is None
    assert got["mem_busy_pct"] == 2


@pytest.mark.parametrize("fixture,card", [("rx580", "card0"), ("r7_240", "card1")])
def test_fan_pct_without_pwm1_max_assumes_255(fixture, card, tmp_path):
    """pwm1 alone is enough for fan %: compute_fan_pct defaults pwm_max to 255."""
    root = copy_fixture(fixture, tmp_path)
    info = gpu_info(root, card)
    expected = sample_once(root, card)["fan_pct"]
    assert expected is not None
    os.remove(os.path.join(info.hwmon_dir, "pwm1_max"))
    assert sample_once(root, card)["fan_pct"] == expected


# --- runtime suspend ---------------------------------------------------------

def test_suspended_gpu_is_reported_and_not_read():
    reader = AmdGpuReader(gpu_info(SYS / "suspended", "card1"))
    try:
        got = reader.sample(time.monotonic())
        assert got == metrics(runtime_status="suspended")
        opened = [attr.path for attr in all_attr_files(reader) if attr.fd is not None]
        assert opened == []
        assert all_attr_files(reader)      # there were sensors to (not) read
    finally:
        reader.close()


def test_suspended_gpu_stays_unread_over_many_ticks():
    reader = AmdGpuReader(gpu_info(SYS / "suspended", "card1"))
    try:
        start = time.monotonic()
        for step in range(5):
            now = start + step * (SLOW_FILES_EVERY_S + REVALIDATE_S)
            assert reader.sample(now)["runtime_status"] == "suspended"
        assert [a.path for a in all_attr_files(reader) if a.fd is not None] == []
    finally:
        reader.close()


def test_gpu_waking_up_is_read_again(tmp_path):
    root = copy_fixture("suspended", tmp_path)
    reader = AmdGpuReader(gpu_info(root, "card1"))
    try:
        now = time.monotonic()
        assert reader.sample(now) == metrics(runtime_status="suspended")
        write(os.path.join(card_device(root, "card1"), "power", "runtime_status"), "active\n")
        assert reader.sample(now + 0.25) == with_table(
            dict(RX7800XT_METRICS, runtime_status="active"), root, "card1")
    finally:
        reader.close()


def test_runtime_pm_unsupported_means_always_on(tmp_path):
    root = copy_fixture("suspended", tmp_path)
    write(os.path.join(card_device(root, "card1"), "power", "runtime_status"), "unsupported\n")
    got = sample_once(root, "card1")
    assert got == with_table(dict(RX7800XT_METRICS, runtime_status="unsupported"), root, "card1")


# --- pure parsers ------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    # classic levels: trailing space on the non-current lines
    ("0: 300Mhz \n1: 600Mhz \n2: 900Mhz *\n3: 1366Mhz \n", 900),
    (b"0: 300Mhz \n1: 600Mhz \n2: 900Mhz *\n3: 1366Mhz \n", 900),
    # RDNA3/4: no trailing space, the middle line is the current clock
    ("0: 500Mhz\n1: 0Mhz *\n2: 2124Mhz\n", 0),
    ("0: 500Mhz\n1: 1843Mhz *\n2: 2124Mhz", 1843),
    # deep-sleep line, with and without the `*` on it
    ("S: 19Mhz *\n0: 500Mhz\n1: 2124Mhz\n", 19),
    ("S: 500Mhz\n1: 789Mhz *\n2: 2070Mhz\n", 789),
    ("F: 1200Mhz *\n0: 500Mhz\n1: 2124Mhz\n", 1200),
    # several `*`: the first one
    ("0: 400Mhz \n1: 600Mhz \n2: 687Mhz *\n3: 687Mhz *\n", 687),
    ("0: 400Mhz *\n1: 1600Mhz *\n", 400),
    # no `*` at all, bare newline, empty, absent
    ("0: 300Mhz \n1: 1900Mhz \n", None),
    ("\n", None),
    ("", None),
    (b"", None),
    (None, None),
    # NUL padding as some capture tools write it
    (b"0: 500Mhz *\n1: 2660Mhz \n" + b"\x00" * 4000, 500),
    (b"0: 500Mhz \n1: 2660Mhz *\x00\x00\x00", 2660),
    # not a clock line
    ("garbage *\n", None),
])
def test_parse_dpm_current_mhz(raw, expected):
    assert parse_dpm_current_mhz(raw) == expected


# The `*` lines of the real pp_dpm_sclk / pp_dpm_mclk files (testdata/README.md).
DPM_STAR = {
    "rx580": (900, 1750), "vega56": (852, 167), "navi10_rx5700xt": (None, 875),
    "rx6900xt": (500, 1000), "rx7600s": (0, 96), "rx7800xt": (77, 456), "rx9070": (789, 1124),
    "phoenix": (800, 400), "strixpoint": (848, None), "steamdeck": (200, 687),
    "r7_240": (None, None),
}


@pytest.mark.parametrize("fixture", sorted(DPM_STAR))
def test_parse_dpm_current_mhz_on_real_files(fixture):
    (card,) = [e["id"] for e in IDENTITY[fixture]]
    device = card_device(SYS / fixture, card)
    got = []
    for name in ("pp_dpm_sclk", "pp_dpm_mclk"):
        path = os.path.join(device, name)
        got.append(parse_dpm_current_mhz(atw.read_bytes(path)) if os.path.exists(path) else None)
    assert tuple(got) == DPM_STAR[fixture]


@pytest.mark.parametrize("raw,expected", [
    ("0: 2.5GT/s, x8 \n1: 8.0GT/s, x16 *\n", (8.0, 16)),                  # old
    ("0: 2.5GT/s, x1 310Mhz \n1: 16.0GT/s, x16 619Mhz *\n", (16.0, 16)),  # RDNA2+, lclk
    (b"0: 2.5GT/s, x1 81Mhz \n1: 16.0GT/s, x8 306Mhz *\n2: 16.0GT/s, x8 306Mhz *\n", (16.0, 8)),
    ("0: 8.0GT/s, x16 *\n1: 8.0GT/s, x16 *\n", (8.0, 16)),
    ("0: 2.5GT/s, x8 *\n1: 8.0GT/s, x16 \n", (2.5, 8)),
    ("0: 2.5GT/s, x8 \n1: 8.0GT/s, x16 \n", None),                        # no `*`
    ("\n", None),
    (b"", None),
    (None, None),
])
def test_parse_pcie_dpm(raw, expected):
    assert parse_pcie_dpm(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("16.0 GT/s PCIe\n", 16.0),
    (b"2.5 GT/s PCIe\n", 2.5),
    ("32.0 GT/s PCIe", 32.0),
    ("8 GT/s", 8.0),            # old kernels
    ("Unknown\n", None),
    ("Unknown speed", None),
    ("", None),
    (None, None),
])
def test_parse_link_speed(raw, expected):
    assert parse_link_speed(raw) == expected


@pytest.mark.parametrize("gts,gen", [
    (2.5, 1), (5.0, 2), (8.0, 3), (16.0, 4), (32.0, 5), (64.0, 6),
    (None, None), (3.0, None), (0.0, None),
])
def test_pcie_gen_from_speed(gts, gen):
    assert pcie_gen_from_speed(gts) == gen


def test_parse_uevent_real_file():
    raw = atw.read_bytes(os.path.join(card_device(SYS / "rx580", "card0"), "uevent"))
    assert parse_uevent(raw) == {
        "DRIVER": "amdgpu",
        "PCI_CLASS": "30000",
        "PCI_ID": "1002:67DF",
        "PCI_SUBSYS_ID": "1DA2:E387",
        "PCI_SLOT_NAME": "0000:09:00.0",
        "MODALIAS": "pci:v00001002d000067DFsv00001DA2sd0000E387bc03sc00i00",
    }


@pytest.mark.parametrize("raw,expected", [
    ("DRIVER=radeon\nPCI_ID=1002:6818\n", {"DRIVER": "radeon", "PCI_ID": "1002:6818"}),
    (b"PCI_ID=1002:150E\n\nno equals sign\nPCI_CLASS=38000\n\x00\x00",
     {"PCI_ID": "1002:150E", "PCI_CLASS": "38000"}),
    ("", {}),
    (None, {}),
])
def test_parse_uevent(raw, expected):
    assert parse_uevent(raw) == expected


@pytest.fixture(scope="module")
def amdgpu_ids_text():
    return (SHARE / "libdrm" / "amdgpu.ids").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pci_ids_text():
    return (SHARE / "hwdata" / "pci.ids").read_text(encoding="utf-8")


@pytest.mark.parametrize("device,revision,expected", [
    ("67DF", "E7", "AMD Radeon RX 580 Series"),
    ("67df", "e7", "AMD Radeon RX 580 Series"),
    ("67DF", "C0", "AMD Radeon Pro 580X"),
    ("73BF", "C0", "AMD Radeon RX 6900 XT"),
    ("6617", "87", "AMD Radeon R7 200 Series"),
    ("163F", "AE", "AMD Custom GPU 0405"),
    ("163F", "00", None),          # exact (device, revision) only, like libdrm
    ("687F", "C3", None),          # absent from the subset
    ("731F", "00", None),
])
def test_parse_amdgpu_ids_real_file(amdgpu_ids_text, device, revision, expected):
    assert parse_amdgpu_ids(amdgpu_ids_text, device, revision) == expected


@pytest.mark.parametrize("vendor,device,expected", [
    ("1002", "687f", "AMD Radeon RX Vega 56/64"),
    ("1002", "687F", "AMD Radeon RX Vega 56/64"),
    ("1002", "731f", "AMD Radeon RX 5600 OEM/5600 XT / 5700/5700 XT"),
    ("1002", "73bf", "AMD Radeon RX 6800/6800 XT / 6900 XT"),
    ("1002", "747e", "AMD Radeon RX 7700 XT / 7800 XT"),
    ("1002", "7550", "AMD Radeon RX 9070/9070 XT/9070 GRE"),
    ("1002", "150e", "AMD Radeon 880M / 890M"),
    ("1002", "163f", "AMD Custom GPU 0405"),
    ("1002", "15bf", "AMD Phoenix1"),
    ("1002", "6818", "AMD Radeon HD 7870 GHz Edition"),
    ("1002", "67df", None),        # not in the subset
    ("1002", "0201", None),        # a device of the next vendor (1003 ULSI)
    ("1002", "1043", None),        # only a subsystem vendor id, never a device
    ("1002", "1da2", None),
])
def test_parse_pci_ids_real_file(pci_ids_text, vendor, device, expected):
    assert parse_pci_ids(pci_ids_text, vendor, device) == expected


@pytest.mark.parametrize("name,expected", [
    ("Vega 10 XL/XT [Radeon RX Vega 56/64]", "AMD Radeon RX Vega 56/64"),
    ("VanGogh [AMD Custom GPU 0405]", "AMD Custom GPU 0405"),
    ("Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]", "AMD Radeon RX 6800/6800 XT / 6900 XT"),
    ("Phoenix1", "AMD Phoenix1"),
    ("AMD Instinct MI300X", "AMD Instinct MI300X"),
])
def test_readable_pci_name(name, expected):
    assert readable_pci_name(name) == expected


def hwmon_names_and_labels(fixture):
    (card,) = [e["id"] for e in IDENTITY[fixture]]
    info = gpu_info(SYS / fixture, card)
    names = sorted(os.listdir(info.hwmon_dir))
    return names, atw.read_hwmon_labels(info.hwmon_dir, names)


def test_plan_hwmon_by_label_rdna2():
    names, labels = hwmon_names_and_labels("rx6900xt")
    plan = plan_hwmon(names, labels)
    assert plan == {
        "temp_c": "temp1_input", "temp_junction_c": "temp2_input", "temp_mem_c": "temp3_input",
        "sclk_mhz": "freq1_input", "mclk_mhz": "freq2_input", "vddgfx_mv": "in0_input",
        "power_w": "power1_average", "power_cap_w": "power1_cap",
        "fan_rpm": "fan1_input", "pwm": "pwm1", "pwm_max": "pwm1_max",
    }


def test_plan_hwmon_label_beats_index():
    names = ["temp1_input", "temp1_label", "temp2_input", "temp2_label",
             "freq1_input", "freq1_label", "in0_input", "in0_label", "in1_input", "in1_label"]
    labels = {"temp1_label": "junction", "temp2_label": "edge", "freq1_label": "mclk",
              "in0_label": "vddnb", "in1_label": "vddgfx"}
    plan = plan_hwmon(names, labels)
    assert plan["temp_c"] == "temp2_input"
    assert plan["temp_junction_c"] == "temp1_input"
    assert plan["mclk_mhz"] == "freq1_input"
    assert "sclk_mhz" not in plan
    assert plan["vddnb_mv"] == "in0_input"
    assert plan["vddgfx_mv"] == "in1_input"


def test_plan_hwmon_index_fallback_without_labels():
    names = ["temp1_input", "temp2_input", "temp3_input", "freq1_input", "freq2_input",
             "power1_average", "power1_cap", "fan1_input", "pwm1", "pwm1_max", "name"]
    plan = plan_hwmon(names, {})
    assert plan["temp_c"] == "temp1_input"
    assert plan["temp_junction_c"] == "temp2_input"
    assert plan["temp_mem_c"] == "temp3_input"
    assert plan["sclk_mhz"] == "freq1_input"
    assert plan["mclk_mhz"] == "freq2_input"
    assert plan["power_w"] == "power1_average"
    assert plan["power_cap_w"] == "power1_cap"
    assert plan["fan_rpm"] == "fan1_input"


def test_plan_hwmon_label_without_input_is_skipped():
    plan = plan_hwmon(["temp1_label", "temp1_crit", "power1_label"],
                      {"temp1_label": "edge", "power1_label": "PPT"})
    assert plan == {}


@pytest.mark.parametrize("names,expected", [
    (["power1_average", "power1_input", "power1_label"], "power1_average"),
    (["power1_input", "power1_label"], "power1_input"),
    (["power1_average", "power1_label"], "power1_average"),
    (["power1_label"], None),                                  # SI: label only
])
def test_plan_hwmon_power_average_else_input(names, expected):
    plan = plan_hwmon(names, {"power1_label": "PPT"})
    assert plan.get("power_w") == expected


def test_plan_hwmon_unlabelled_power1_input():
    assert plan_hwmon(["power1_input"], {})["power_w"] == "power1_input"


def test_plan_hwmon_van_gogh_slow_and_fast_ppt():
    names, labels = hwmon_names_and_labels("steamdeck")
    plan = plan_hwmon(names, labels)
    assert plan["power_w"] == "power1_average"
    assert plan["power_cap_w"] == "power1_cap"
    assert plan["power_fast_w"] == "power2_average"
    assert plan["power_fast_cap_w"] == "power2_cap"
    assert plan["vddgfx_mv"] == "in0_input"
    assert plan["vddnb_mv"] == "in1_input"
    assert "fan_rpm" not in plan and "pwm" not in plan


def test_plan_hwmon_fast_ppt_found_by_label_not_index():
    names = ["power1_average", "power1_label", "power2_average", "power2_cap", "power2_label"]
    plan = plan_hwmon(names, {"power1_label": "fastPPT", "power2_label": "slowPPT"})
    assert plan["power_w"] == "power2_average"
    assert plan["power_cap_w"] == "power2_cap"
    assert plan["power_fast_w"] == "power1_average"


def test_plan_hwmon_pwm1_without_pwm1_max():
    """A bare pwm1 is enough for fan % (compute_fan_pct assumes pwm_max 255)."""
    plan = plan_hwmon(["pwm1"], {})
    assert plan.get("pwm") == "pwm1"


def test_plan_hwmon_no_fan_on_apus():
    names, labels = hwmon_names_and_labels("phoenix")
    plan = plan_hwmon(names, labels)
    assert "fan_rpm" not in plan and "pwm" not in plan and "pwm_max" not in plan
    assert plan["power_w"] == "power1_average"
    assert "power_cap_w" not in plan


@pytest.mark.parametrize("pwm,pwm_max,expected", [
    (35, 255, 13.7), (0, 255, 0.0), (255, 255, 100.0), (128, 255, 50.2),
    (117, 255, 45.9), (300, 255, 100.0), (-5, 255, 0.0),
    (128, None, 50.2), (128, 0, 50.2),         # no usable pwm1_max: 255
    (50, 100, 50.0),
    (None, 255, None), (None, None, None),
])
def test_compute_fan_pct(pwm, pwm_max, expected):
    assert compute_fan_pct(pwm, pwm_max) == expected


@pytest.mark.parametrize("apu", [False, True])
def test_compute_metrics_empty_raw_is_all_none(apu):
    got = compute_metrics({}, apu)
    assert list(got) == list(METRIC_KEYS)
    assert set(got.values()) == {None}


def test_compute_metrics_apu_has_no_pcie():
    raw = {"pcie_dpm": b"0: 2.5GT/s, x8 \n1: 16.0GT/s, x16 *\n",
           "link_speed": b"16.0 GT/s PCIe\n", "link_width": b"16\n"}
    assert compute_metrics(raw, False)["pcie_gen"] == 4
    apu = compute_metrics(raw, True)
    assert (apu["pcie_gen"], apu["pcie_speed_gts"], apu["pcie_width"]) == (None, None, None)


def test_compute_metrics_pcie_falls_back_to_current_link():
    raw = {"pcie_dpm": b"\n", "link_speed": b"8.0 GT/s PCIe\n", "link_width": b"4\n"}
    got = compute_metrics(raw, False)
    assert (got["pcie_gen"], got["pcie_speed_gts"], got["pcie_width"]) == (3, 8.0, 4)
    unknown = compute_metrics({"link_speed": b"Unknown\n", "link_width": b"0\n"}, False)
    assert unknown["pcie_gen"] is None and unknown["pcie_speed_gts"] is None


def test_compute_metrics_clock_prefers_hwmon_over_dpm():
    raw = {"sclk_mhz": b"798080000\n", "sclk_dpm": b"0: 300Mhz \n2: 900Mhz *\n",
           "mclk_dpm": b"0: 400Mhz *\n"}
    got = compute_metrics(raw, False)
    assert got["sclk_mhz"] == 798
    assert got["mclk_mhz"] == 400


def test_compute_metrics_busy_is_clamped():
    got = compute_metrics({"gpu_busy": b"250\n", "mem_busy": b"-3\n"}, False)
    assert got["gpu_busy_pct"] == 100
    assert got["mem_busy_pct"] is None


# --- AttrFile: kept fd, pread, revalidation -----------------------------------

def settled_dir(path):
    """Give a directory an mtime in the past, as a sysfs tree that has not
    changed for a while has. (File timestamps are coarse, ~1-4 ms: a change in
    the same tick as the directory's creation would leave its mtime unchanged.)"""
    old = time.time() - 3600
    os.utime(str(path), (old, old))


def watched_attr(path):
    """An AttrFile of `path` with a DirWatch on its directory, as AmdGpuReader makes them."""
    settled_dir(os.path.dirname(str(path)))
    return AttrFile(str(path), atw.DirWatch(os.path.dirname(str(path))))


def test_attrfile_kept_fd_sees_in_place_rewrites(tmp_path):
    path = tmp_path / "gpu_busy_percent"
    write(path, "1\n")
    attr = watched_attr(path)
    try:
        assert attr.read(0.0) == b"1\n"
        fd = attr.fd
        assert fd is not None
        write(path, "100\n")                  # same inode, rewritten
        assert attr.read(1.0) == b"100\n"
        write(path, "7\n")                    # shorter: no stale tail
        assert attr.read(2.0) == b"7\n"
        assert attr.read(REVALIDATE_S + 1.0) == b"7\n"
        assert attr.fd == fd                  # never reopened
    finally:
        attr.close()
    assert attr.fd is None


def test_attrfile_without_watch_reads_too(tmp_path):
    path = tmp_path / "gpu_busy_percent"
    write(path, "1\n")
    attr = AttrFile(str(path))
    try:
        assert attr.read(0.0) == b"1\n"
        write(path, "2\n")
        assert attr.read(100.0) == b"2\n"
    finally:
        attr.close()


def test_attrfile_missing_file_is_retried_only_after_the_recheck_delay(tmp_path):
    path = tmp_path / "mem_busy_percent"
    attr = AttrFile(str(path))
    try:
        t0 = 1000.0
        assert attr.read(t0) is None
        assert attr.fd is None
        assert attr.missing_errno == errno.ENOENT
        write(path, "5\n")
        assert attr.read(t0 + 1.0) is None
        assert attr.read(t0 + MISSING_RECHECK_S - 0.5) is None
        assert attr.fd is None                # not even tried
        assert attr.read(t0 + MISSING_RECHECK_S) == b"5\n"
        assert attr.missing_errno is None
    finally:
        attr.close()


def test_attrfile_missing_file_appearing_is_seen_at_revalidation(tmp_path):
    path = tmp_path / "mem_busy_percent"
    attr = watched_attr(path)
    try:
        t0 = 1000.0
        assert attr.read(t0) is None
        write(path, "5\n")                    # the directory changes
        assert attr.read(t0 + REVALIDATE_S) == b"5\n"
    finally:
        attr.close()


def test_attrfile_removed_file_is_noticed_at_revalidation(tmp_path):
    path = tmp_path / "temp1_input"
    write(path, "44000\n")
    attr = watched_attr(path)
    try:
        t0 = 50.0
        assert attr.read(t0) == b"44000\n"
        os.remove(str(path))
        assert attr.read(t0 + REVALIDATE_S) is None
        assert attr.fd is None
        assert attr.read(t0 + REVALIDATE_S + 1.0) is None
    finally:
        attr.close()


def test_attrfile_replaced_file_is_reopened(tmp_path):
    path = tmp_path / "pp_dpm_sclk"
    write(path, "0: 500Mhz *\n")
    attr = watched_attr(path)
    try:
        t0 = 7.0
        assert attr.read(t0) == b"0: 500Mhz *\n"
        old_ino = os.fstat(attr.fd).st_ino
        new = tmp_path / "pp_dpm_sclk.new"
        write(new, "1: 2660Mhz *\n")
        os.replace(str(new), str(path))     # a new inode under the same name
        assert attr.read(t0 + REVALIDATE_S) == b"1: 2660Mhz *\n"
        assert os.fstat(attr.fd).st_ino != old_ino
        assert os.fstat(attr.fd).st_ino == os.stat(str(path)).st_ino
    finally:
        attr.close()


def test_attrfile_directory_is_none(tmp_path):
    folder = tmp_path / "power1_average"
    folder.mkdir()
    attr = watched_attr(folder)
    try:
        assert attr.read(0.0) is None
        assert attr.read(MISSING_RECHECK_S + REVALIDATE_S) is None
    finally:
        attr.close()


def test_attrfile_file_replaced_by_directory_is_none(tmp_path):
    path = tmp_path / "fan1_input"
    write(path, "868\n")
    attr = watched_attr(path)
    try:
        assert attr.read(0.0) == b"868\n"
        os.remove(str(path))
        path.mkdir()
        assert attr.read(REVALIDATE_S) is None
    finally:
        attr.close()


def test_attrfile_reopens_after_enodev(tmp_path, monkeypatch):
    """A kept fd whose device went away (ENODEV) is reopened at once, not at the
    next revalidation."""
    path = tmp_path / "gpu_busy_percent"
    write(path, "9\n")
    attr = watched_attr(path)
    try:
        assert attr.read(0.0) == b"9\n"
        real_pread = os.pread
        failures = []

        def pread_failing_once(fd, n, offset):
            if not failures:
                failures.append(fd)
                raise OSError(errno.ENODEV, "No such device")
            return real_pread(fd, n, offset)

        monkeypatch.setattr(atw.os, "pread", pread_failing_once)
        write(path, "10\n")
        assert attr.read(1.0) == b"10\n"
        assert failures and attr.fd is not None
    finally:
        monkeypatch.undo()
        attr.close()


def test_attrfile_eperm_is_none_without_exception(tmp_path, monkeypatch):
    """EPERM (device suspended on newer kernels, or in reset) reads as None."""
    path = tmp_path / "gpu_busy_percent"
    write(path, "9\n")
    attr = watched_attr(path)
    try:
        assert attr.read(0.0) == b"9\n"

        def pread(fd, n, offset):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(atw.os, "pread", pread)
        assert attr.read(1.0) is None
    finally:
        monkeypatch.undo()
        attr.close()


# --- hot-unplug --------------------------------------------------------------

PHOENIX_SLOT = os.path.join("devices", "pci0000:00", "0000:00:01.1", "0000:64:00.0")
CARD2_LINKS = {
    "card2": "../../devices/pci0000:00/0000:00:01.1/0000:64:00.0/drm/card2",
    "renderD130": "../../devices/pci0000:00/0000:00:01.1/0000:64:00.0/drm/renderD130",
}


def unplug_card2(root):
    for name in CARD2_LINKS:
        os.unlink(os.path.join(str(root), "class", "drm", name))
    shutil.rmtree(os.path.join(str(root), PHOENIX_SLOT))


def replug_card2(root):
    shutil.copytree(str(SYS / "multi_gpu" / PHOENIX_SLOT), os.path.join(str(root), PHOENIX_SLOT),
                    symlinks=True)
    for name, target in CARD2_LINKS.items():
        os.symlink(target, os.path.join(str(root), "class", "drm", name))


def sampler_of(manager, gpu_id):
    (sampler,) = [s for s in manager._samplers.values() if s.reader.info.id == gpu_id]
    return sampler


def test_hot_unplug_and_replug(tmp_path, managers):
    root = copy_fixture("multi_gpu", tmp_path)
    for name, target in CARD2_LINKS.items():   # the helper's links match the fixture's
        assert os.readlink(os.path.join(str(root), "class", "drm", name)) == target
    manager = managers(root)
    manager.rediscover()
    assert [g.id for g in manager.cache.gpus()] == ["card0", "card1", "card2"]
    old = sampler_of(manager, "card2")
    assert old.running()

    unplug_card2(root)
    manager.rediscover()
    assert [g.id for g in manager.cache.gpus()] == ["card0", "card1"]
    assert [r.info.id for r in manager.readers()] == ["card0", "card1"]
    assert old.stopping.is_set()
    assert not old.running()
    assert [a.path for a in all_attr_files(old.reader) if a.fd is not None] == []
    assert manager.cache.stats("card2") is None
    assert manager.cache.history("card2") is None
    assert sampler_of(manager, "card1").running()

    replug_card2(root)
    manager.rediscover()
    assert [g.id for g in manager.cache.gpus()] == ["card0", "card1", "card2"]
    new = sampler_of(manager, "card2")
    assert new is not old
    assert new.running()
    assert_identity(manager.cache.gpu("card2"), IDENTITY["multi_gpu"][2])


def test_reader_of_a_vanished_device_gives_none(tmp_path):
    root = copy_fixture("rx6900xt", tmp_path)
    reader = AmdGpuReader(gpu_info(root, "card0"))
    try:
        t0 = time.monotonic()
        assert reader.sample(t0) == with_table(RX6900XT_METRICS, SYS / "rx6900xt", "card0")
        shutil.rmtree(os.path.realpath(card_device(root, "card0")))
        later = t0 + REVALIDATE_S + SLOW_FILES_EVERY_S
        got = reader.sample(later)
        assert list(got) == list(METRIC_KEYS)
        assert set(got.values()) == {None}
        assert reader.sample(later + MISSING_RECHECK_S + 1.0) == metrics()
    finally:
        reader.close()


def test_sampler_tick_on_a_vanished_device_publishes_nones(tmp_path):
    root = copy_fixture("phoenix", tmp_path)
    info = gpu_info(root, "card1")
    cache = Cache(0.25, {})
    cache.set_gpus([info])
    clock = [100.0]
    sampler = atw.Sampler(AmdGpuReader(info), cache, 0.25, clock=lambda: clock[0])
    try:
        sampler.tick()
        unknown = {"vram_forecast": atw.new_vram_forecast()}      # the cache adds the forecast
        assert cache.stats("card1")[1] == dict(with_table(PHOENIX_METRICS, SYS / "phoenix", "card1"),
                                               **unknown)
        shutil.rmtree(os.path.realpath(info.device_dir))
        clock[0] += REVALIDATE_S + SLOW_FILES_EVERY_S
        sampler.tick()
        assert cache.stats("card1")[1] == dict(metrics(), **unknown)
    finally:
        sampler.reader.close()


# --- HistoryRing -------------------------------------------------------------

def ring_arrays(ring):
    """Every array.array the ring holds (directly or in a list/tuple/dict)."""
    found = []
    for value in vars(ring).values():
        items = value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else [value])
        found.extend(item for item in items if isinstance(item, array.array))
    return found


def test_history_ring_keeps_the_newest_capacity_entries():
    capacity = 8
    ring = HistoryRing(capacity)
    for i in range(capacity + 10):
        ring.push(1700000000 + i * 0.25, {"gpu_busy_pct": i, "temp_c": 40.5 + i})
    out = ring.to_json(0.25)
    assert out["interval_ms"] == 250
    first = 10
    assert out["ts"] == [1700000000000 + (first + k) * 250 for k in range(capacity)]
    assert out["series"]["gpu_busy_pct"] == list(range(first, first + capacity))
    assert out["series"]["temp_c"] == [40.5 + first + k for k in range(capacity)]
    assert set(out["series"]) == set(atw.HISTORY_KEYS)
    for key in atw.HISTORY_KEYS:
        assert len(out["series"][key]) == capacity
    assert out["series"]["power_w"] == [None] * capacity


def test_history_ring_partial_fill_is_oldest_to_newest():
    ring = HistoryRing(5)
    assert ring.to_json(1.0) == {"interval_ms": 1000, "ts": [],
                                 "series": {k: [] for k in atw.HISTORY_KEYS}}
    for i in range(3):
        ring.push(10.0 + i, {"fan_rpm": 100 * i})
    out = ring.to_json(2.0)
    assert out["interval_ms"] == 2000
    assert out["ts"] == [10000, 11000, 12000]
    assert out["series"]["fan_rpm"] == [0, 100, 200]


def test_hello_rings_are_downsampled_to_the_sparkline_columns_keeping_each_bucket_max():
    ring = HistoryRing(1000)
    for i in range(1000):
        busy = None if 100 <= i < 110 else (90 if i == 503 else i % 7)
        ring.push(1700000000 + i * 0.25, {"gpu_busy_pct": busy, "power_w": 100.5})
    ts, columns = ring.ordered(("gpu_busy_pct", "power_w"))
    out = atw.encode_ring_json(0.25, ts, columns, 300)
    assert list(out["series"]) == ["gpu_busy_pct", "power_w"]
    assert len(out["ts"]) == 250 and out["interval_ms"] == 1000     # 4 samples a point
    assert out["ts"][-1] == 1700000000000 + 999 * 250                  # ends at the newest
    busy = out["series"]["gpu_busy_pct"]
    assert busy[503 // 4] == 90                                        # a spike survives (max)
    assert busy[25] is None and busy[26] is None and busy[27] == 6     # all-null -> null
    assert set(out["series"]["power_w"]) == {100.5}
    assert atw.encode_ring_json(0.25, ts[:3], dict((k, v[:3]) for k, v in columns.items()),
                                300)["ts"] == [1700000000000, 1700000000250, 1700000000500]


def test_hello_at_8_gpus_is_small_and_shared_between_connections():
    """A full 10-minute ring at 250 ms on 8 GPUs: the hello frame was 1.26 MB
    (every sample of every series); now the sparklines' series at one point
    a column, and the same bytes for every connection until a change."""
    infos = atw.demo_gpu_infos(8)
    cache = atw.Cache(0.25, {})
    cache.set_gpus(infos)
    backend = atw.DemoBackend(8, 8, None)
    readers = [backend.open_reader(info) for info in infos]
    for k in range(2400):
        for reader in readers:
            cache.publish_stats(reader.info.id, 1764686400 + k * 0.25, reader.sample(1000 + k * 0.25))
    hello = cache.hello_payload(None)
    assert len(hello) <= 300 * 1024, len(hello)
    assert cache.hello_payload(None) is hello
    ring = json.loads(hello)["history"]["card3"]
    assert len(ring["ts"]) == atw.HELLO_HISTORY_POINTS and set(ring["series"]) == set(
        atw.HELLO_HISTORY_KEYS)
    cache.set_feature("note", "changed")
    fresh = cache.hello_payload(None)
    assert fresh is not hello and json.loads(fresh)["features"]["note"] == "changed"


def test_history_ring_none_round_trips_as_null():
    ring = HistoryRing(4)
    ring.push(1.0, {"gpu_busy_pct": None, "temp_c": 44.5, "vram_used_bytes": 17163091968})
    ring.push(2.0, {"gpu_busy_pct": 3, "temp_c": None, "vram_used_bytes": None})
    out = ring.to_json(0.1)
    assert out["interval_ms"] == 100
    assert out["series"]["gpu_busy_pct"] == [None, 3]
    assert out["series"]["temp_c"] == [44.5, None]
    assert out["series"]["vram_used_bytes"] == [17163091968, None]
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text)["series"]["gpu_busy_pct"] == [None, 3]


def test_history_ring_memory_is_fixed_size_arrays():
    capacity = 16
    ring = HistoryRing(capacity)
    arrays = ring_arrays(ring)
    assert len(arrays) == len(atw.HISTORY_KEYS) + 1       # one per series + timestamps
    assert all(len(a) == capacity for a in arrays)
    before = [a.buffer_info()[0] for a in arrays]
    for i in range(capacity * 3):
        ring.push(float(i), dict.fromkeys(atw.HISTORY_KEYS, i))
    after = ring_arrays(ring)
    assert all(len(a) == capacity for a in after)
    assert [a.buffer_info()[0] for a in after] == before   # never reallocated


def test_cache_history_capacity_covers_the_window():
    cache = Cache(0.25, {})
    info = atw.demo_gpu_infos()[0]
    cache.set_gpus([info])
    capacity = int(atw.HISTORY_WINDOW_S / 0.25)          # 10 minutes at 4 Hz
    assert all(len(a) == capacity for a in ring_arrays(cache._history[info.id]))


# --- gpu_metrics beside the plain files ----------------------------------------

GPU_METRICS_FIXTURES = [("rx6900xt", "card0"), ("rx7800xt", "card1"), ("rx7600s", "card1"),
                        ("rx9070", "card1"), ("phoenix", "card1"), ("strixpoint", "card1")]
# plain metric <- table field, and how close the two must be. Busy % is left out:
# gpu_busy_percent is an instant reading, average_gfx_activity a firmware average.
AGREE = (("temp_c", ("temperature_edge_c", "temperature_gfx_c"), 1.0),
         ("temp_junction_c", ("temperature_hotspot_c",), 1.0),
         ("temp_mem_c", ("temperature_mem_c",), 1.0),
         ("power_w", ("average_socket_power_w",), 1.0),
         ("sclk_mhz", ("current_gfxclk_mhz",), 1.0),
         ("mclk_mhz", ("current_uclk_mhz",), 1.0),
         ("fan_rpm", ("current_fan_speed_rpm",), 1.0),
         ("pcie_width", ("pcie_link_width",), 0.0))


@pytest.mark.parametrize("fixture,card", GPU_METRICS_FIXTURES)
def test_gpu_metrics_and_plain_files_agree(fixture, card):
    plain = EXPECTED_METRICS[fixture]
    table = table_of(SYS / fixture, card)
    compared = 0
    for key, fields, tolerance in AGREE:
        value = next((table[f] for f in fields if table.get(f) is not None), None)
        if plain.get(key) is None or value is None:
            continue
        if fixture == "rx7600s" and key == "sclk_mhz":
            assert plain[key] == 0 and value == 1200     # GFX powered off: hwmon says 0
            continue
        assert abs(plain[key] - value) <= tolerance, (fixture, key, plain[key], value)
        compared += 1
    assert compared >= (2 if table["format_revision"] > 1 else 5), compared


def test_gpu_metrics_fills_what_the_plain_files_lack(tmp_path):
    root = copy_fixture("rx6900xt", tmp_path)
    hwmon = atw.find_hwmon_dir(card_device(root, "card0"))
    os.remove(os.path.join(hwmon, "temp2_input"))          # junction (hotspot) gone
    got = sample_once(root, "card0")
    assert got["temp_junction_c"] == 59                     # from temperature_hotspot
    assert got["temp_vrgfx_c"] == 49 and got["socclk_mhz"] == 800
    assert got["throttle_reasons"] == []                    # indep_throttle_status 0
    assert got["temp_c"] == 56.0                            # plain file kept (agrees)


def test_gpu_metrics_throttle_names():
    assert sample_once(SYS / "rx7600s", "card1")["throttle_reasons"] == ["TEMP_HOTSPOT"]


def test_gpu_metrics_residency_growth_names_the_reason(tmp_path):
    """v3.0 (Strix Point) has no throttle bits, only residency counters: the
    reasons are those whose counter grew since the previous sample."""
    root = copy_fixture("strixpoint", tmp_path)
    path = os.path.join(card_device(root, "card1"), "gpu_metrics")
    reader = AmdGpuReader(gpu_info(root, "card1"))
    try:
        assert reader.sample(1.0)["throttle_reasons"] is None       # nothing to compare yet
        assert reader.sample(2.0)["throttle_reasons"] == []         # counters unchanged
        (slot,) = [s for s in atw.GPU_METRICS_LAYOUTS[(3, 0)].slots
                   if s.name == "throttle_residency_spl"]
        with open(path, "rb") as handle:
            data = bytearray(handle.read())
        value = struct.unpack_from("<I", data, slot.offset)[0]
        struct.pack_into("<I", data, slot.offset, value + 500)
        with open(path, "wb") as handle:
            handle.write(bytes(data))
        assert reader.sample(3.0)["throttle_reasons"] == ["SPL"]
    finally:
        reader.close()


def test_garbled_gpu_metrics_is_ignored_and_logged_once(tmp_path, caplog):
    root = copy_fixture("rx6900xt", tmp_path)
    with open(os.path.join(card_device(root, "card0"), "gpu_metrics"), "wb") as handle:
        handle.write(b"\x01\x00")                           # shorter than the header
    reader = AmdGpuReader(gpu_info(root, "card0"))
    try:
        with caplog.at_level("INFO", logger="amdgpu_top_web"):
            for tick in range(3):
                got = reader.sample(float(tick))
        assert got["temp_c"] == 56.0 and got["throttle_reasons"] is None
        assert sum("gpu_metrics_unreadable" in r.getMessage() for r in caplog.records) == 1
    finally:
        reader.close()
