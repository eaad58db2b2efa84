"""Tests of the binary gpu_metrics parser (formats.md §5).

Runs against the program's copy once amdgpu_top_web.py has one, else against
the draft beside this file. The oracles are independent of the parser:

* real captures (testdata/gpu_metrics/*.hex) carry the values their tool
  decoded and the same-moment hwmon/LACT values in their `#` header lines;
* amdgpu_top's JSON decodings of three more GPUs are rebuilt into tables;
* synthetic tables for every other version are packed at offsets transcribed
  here from the kernel header (kgd_pp_interface.h, formats.md §5.3), not from
  the parser's own tables, so a wrong offset or unit there fails here.

Contract checked by the fuzzers: a dict or GpuMetricsError, nothing else, and
a JSON-serialisable result. No hypothesis database; no deadline (small box).
"""

import json
import math
import os
import re
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))

from amdgpu_top_web import GpuMetricsError, parse_gpu_metrics, throttle_from_residency  # noqa: E402

DATA = os.path.join(os.path.dirname(HERE), "testdata", "gpu_metrics")
FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
META = {"format_revision", "content_revision", "structure_size", "known_layout",
        "decoded_as", "newer_than_known", "size_mismatch", "throttle_reasons",
        "attr_count", "attr_table_incomplete"}

# Struct sizes of formats.md §5.3 (checked there with ctypes and real dumps).
LAYOUT_SIZES = {(1, 0): 80, (1, 1): 96, (1, 2): 104, (1, 3): 120, (1, 4): 288, (1, 5): 360,
                (1, 6): 1664, (1, 7): 2208, (1, 8): 3872, (2, 0): 120, (2, 1): 120,
                (2, 2): 128, (2, 3): 152, (2, 4): 168, (3, 0): 264}

# SMU_THROTTLER_*_BIT, amdgpu_smu.h (formats.md §5.4), transcribed again here.
THROTTLER_BITS = {
    "PPT0": 0, "PPT1": 1, "PPT2": 2, "PPT3": 3, "SPL": 4, "FPPT": 5, "SPPT": 6, "SPPT_APU": 7,
    "TDC_GFX": 16, "TDC_SOC": 17, "TDC_MEM": 18, "TDC_VDD": 19, "TDC_CVIP": 20, "EDC_CPU": 21,
    "EDC_GFX": 22, "APCC": 23, "TEMP_GPU": 32, "TEMP_CORE": 33, "TEMP_MEM": 34,
    "TEMP_EDGE": 35, "TEMP_HOTSPOT": 36, "TEMP_SOC": 37, "TEMP_VR_GFX": 38, "TEMP_VR_SOC": 39,
    "TEMP_VR_MEM0": 40, "TEMP_VR_MEM1": 41, "TEMP_LIQUID0": 42, "TEMP_LIQUID1": 43,
    "VRHOT0": 44, "VRHOT1": 45, "PROCHOT_CPU": 46, "PROCHOT_GFX": 47, "PPM": 56, "FIT": 57}


# -- sample files ---------------------------------------------------------------

def read_hex(name):
    """testdata hex dump -> (bytes, [header lines])."""
    header, chunks = [], []
    with open(os.path.join(DATA, name)) as handle:
        for line in handle:
            if line.startswith("#"):
                header.append(line.rstrip("\n"))
            elif line.strip():
                chunks.append(bytes.fromhex(line.split(":", 1)[1]))
    return b"".join(chunks), header


def read_json_sample(name):
    with open(os.path.join(DATA, name)) as handle:
        return json.loads("".join(line for line in handle if not line.startswith("#")))


HEX_SAMPLES = sorted(n for n in os.listdir(DATA) if n.endswith(".hex"))
SAMPLE_BYTES = [read_hex(n)[0] for n in HEX_SAMPLES]

_TOKEN_RE = re.compile(r"(\w+?)(?:\[(\d+)\])?(?:@\d+)?=(\[[^\]]*\]|\S+)")


def _oracle_value(text):
    """'56' / '0xFFFF(n/a)' / '[2537, 65535]' -> 56 / None / [2537, None]."""
    if text.startswith("["):
        return [None if int(v) == 0xFFFF else int(v) for v in text[1:-1].split(",")]
    if text.endswith("(n/a)"):
        return None
    value = int(text)
    return None if value in (0xFFFF, 0xFFFFFFFF) else value


def oracle_fields(header):
    """The `# decoded` block of a hex sample -> {kernel field: raw value}."""
    fields, inside = {}, False
    for line in header:
        if line.startswith("# decoded"):
            inside = True
            continue
        if inside and not line.startswith("#   "):
            break
        for name, index, text in _TOKEN_RE.findall(line) if inside else ():
            if index:
                fields.setdefault(name, [None] * 4)[int(index)] = _oracle_value(text)
            elif not name.startswith("padding"):
                fields[name] = _oracle_value(text)
    return fields


def expected(name, raw, family):
    """Kernel field name + raw value -> (parser key, value): the naming and unit
    contract, written from formats.md §5.1 independently of the parser."""
    if isinstance(raw, list):
        key = expected(name, 1, family)[0]
        return key, [expected(name, v, family)[1] for v in raw]
    apu = family != 1

    def scaled(div):
        return None if raw is None else (raw / div if div != 1 else raw)

    rules = (
        # v2.x only: mW or W by firmware; v3.0's header says mW
        (name == "average_socket_power" and family == 2, "average_socket_power_raw", 1),
        (name == "system_clock_counter", name + "_ns", 1),
        (name == "firmware_timestamp", name + "_ns", 0.1),        # 10 ns units
        (name == "energy_accumulator", name + "_raw", 1),         # v1.0-v1.3: unit unknown
        (name == "pcie_link_speed", name + "_gts", 10),           # 0.1 GT/s
        (name == "current_fan_speed", name + "_rpm", 1),
        ("temperature" in name, name + "_c", 100 if apu else 1),  # APU centi-degC
        (name.endswith("_frequency"), name[:-len("_frequency")] + "_mhz", 1),
        ("clk" in name or name.endswith("maxfreq"), name + "_mhz", 1),
        (name.endswith("_activity"), name + "_pct", 1),
        (name.endswith("_reads") or name.endswith("_writes"), name + "_mb_s", 1),
        (name.endswith("_power") or name.endswith("power_limit"), name + "_w", 1000 if apu else 1),
        (name.startswith("voltage_"), name + "_mv", 1),
        (name == "time_filter_alphavalue", name + "_us", 1),
    )
    for matches, key, div in rules:
        if matches:
            return key, scaled(div)
    return name, raw


def same(actual, wanted):
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(actual) == len(wanted) and all(
            same(a, w) for a, w in zip(actual, wanted))
    if isinstance(wanted, float):
        return isinstance(actual, (int, float)) and math.isclose(actual, wanted, abs_tol=1e-9)
    return actual == wanted and type(actual) is type(wanted)


def assert_contract(result):
    """A parse result: a dict of JSON-safe values with the always-present keys."""
    assert isinstance(result, dict)
    for key in ("format_revision", "content_revision", "structure_size", "known_layout",
                "decoded_as", "newer_than_known", "size_mismatch", "throttle_reasons"):
        assert key in result, key
    assert all(isinstance(k, str) for k in result)
    json.dumps(result, allow_nan=False)


def parse_or_error(data):
    try:
        result = parse_gpu_metrics(data)
    except GpuMetricsError:
        return None
    assert_contract(result)
    return result


# -- real captures against their oracles --------------------------------------

@pytest.mark.parametrize("name", HEX_SAMPLES)
def test_sample_matches_its_decoded_header(name):
    data, header = read_hex(name)
    fields = oracle_fields(header)
    result = parse_gpu_metrics(data)
    assert_contract(result)
    family = fields["format_revision"]
    assert (result["format_revision"], result["content_revision"]) == (
        family, fields["content_revision"])
    assert result["structure_size"] == fields["structure_size"]
    assert result["known_layout"] == "%d.%d" % (family, fields["content_revision"])
    assert not result["newer_than_known"] and not result["size_mismatch"]
    checked = 0
    for kernel_name, raw in fields.items():
        if kernel_name in ("structure_size", "format_revision", "content_revision"):
            continue
        key, want = expected(kernel_name, raw, family)
        assert key in result, (kernel_name, key)
        assert same(result[key], want), (kernel_name, key, result[key], want)
        checked += 1
    assert checked >= 25   # every field of the table but the header and padding


# dGPU v1.3 captures: the same-snapshot hwmon values (formats.md §5.1 cross-checks).
# RX 7600S: GFX was power-gated (freq1_input 0 while current_gfxclk 1200), skip that one.
HWMON_CHECKS = (
    ("temp1_input", "temperature_edge_c", 1000), ("temp2_input", "temperature_hotspot_c", 1000),
    ("temp3_input", "temperature_mem_c", 1000), ("power1_average", "average_socket_power_w", 10 ** 6),
    ("freq1_input", "current_gfxclk_mhz", 10 ** 6), ("freq2_input", "current_uclk_mhz", 10 ** 6),
    ("in0_input", "voltage_gfx_mv", 1), ("fan1_input", "current_fan_speed_rpm", 1))
HWMON_SKIP = {"gpu_metrics_v1_3_navi33_rx7600s.hex": {"freq1_input"}}


@pytest.mark.parametrize("name", [n for n in HEX_SAMPLES if "_v1_3_" in n])
def test_dgpu_sample_matches_same_snapshot_hwmon(name):
    data, header = read_hex(name)
    line = next(l for l in header if l.startswith("# same-snapshot"))
    hwmon = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+);", line))
    result = parse_gpu_metrics(data)
    for attr, key, scale in HWMON_CHECKS:
        if attr not in HWMON_SKIP.get(name, ()):
            assert result[key] * scale == hwmon[attr], (attr, key)
    width = re.search(r"current_link_width='(\d+)'", line).group(1)
    assert result["pcie_link_width"] == int(width)


def test_dgpu_throttle_names_from_indep_status():
    # RX 7600S: indep_throttle_status = 0x1000000000 = bit 36 (header quirk line).
    data, _ = read_hex("gpu_metrics_v1_3_navi33_rx7600s.hex")
    result = parse_gpu_metrics(data)
    assert result["throttle_status"] == 2 and result["indep_throttle_status"] == 1 << 36
    assert result["throttle_reasons"] == ["TEMP_HOTSPOT"]
    for other in HEX_SAMPLES:
        if "_v1_3_" in other and other != "gpu_metrics_v1_3_navi33_rx7600s.hex":
            assert parse_gpu_metrics(read_hex(other)[0])["throttle_reasons"] == []


# LACT's computed values for the APU captures (the `# oracle` header lines).
# LACT truncates temperatures to whole degrees.
APU_ORACLES = {
    "gpu_metrics_v2_1_apu_phoenix.hex": (
        ("average_gfx_power_w", 0.585), ("average_soc_power_w", 0.743),
        ("temperature_gfx_c", 25.0),        # == hwmon temp1_input 25000
        ("average_socket_power_w", 3.401)),  # mW on Phoenix (header "units observed")
    "gpu_metrics_v3_0_apu_strixpoint.hex": (
        ("average_apu_power_w", 9.839), ("average_all_core_power_w", 2.499),
        ("average_gfx_power_w", 1.536), ("average_gfx_activity_pct", 3)),
}
APU_TRUNCATED_TEMPS = {
    "gpu_metrics_v2_1_apu_phoenix.hex": (("temperature_soc_c", 27),),
    "gpu_metrics_v3_0_apu_strixpoint.hex": (("temperature_soc_c", 40), ("temperature_skin_c", 35)),
}


@pytest.mark.parametrize("name", sorted(APU_ORACLES))
def test_apu_sample_matches_lact(name):
    result = parse_gpu_metrics(read_hex(name)[0])
    for key, want in APU_ORACLES[name]:
        assert math.isclose(result[key], want, abs_tol=1e-9), key
    for key, degrees in APU_TRUNCATED_TEMPS[name]:
        assert int(result[key]) == degrees, key
    assert result["throttle_reasons"] is None   # v2.1 / v3.0: no indep_throttle_status


def test_padded_capture_ignores_bytes_after_structure_size():
    data, _ = read_hex("gpu_metrics_v1_3_navi21_rx6900xt.hex")
    assert len(data) > 120
    padded = data + bytes(4096 - len(data))
    assert parse_gpu_metrics(padded) == parse_gpu_metrics(data[:120])


# -- amdgpu_top's decodings, rebuilt into tables ------------------------------
# v1.3 offsets (formats.md §5.3 gpu_metrics_v1_3) for the fields amdgpu_top shows.
V1_3_OFFSETS = {
    "temperature_edge": (4, "H"), "temperature_hotspot": (6, "H"), "temperature_mem": (8, "H"),
    "temperature_vrgfx": (10, "H"), "temperature_vrsoc": (12, "H"), "temperature_vrmem": (14, "H"),
    "average_socket_power": (22, "H"), "system_clock_counter": (32, "Q"),
    "average_gfxclk_frequency": (40, "H"), "average_socclk_frequency": (42, "H"),
    "average_uclk_frequency": (44, "H"), "average_vclk0_frequency": (46, "H"),
    "average_dclk0_frequency": (48, "H"), "average_vclk1_frequency": (50, "H"),
    "average_dclk1_frequency": (52, "H"), "current_gfxclk": (54, "H"), "current_socclk": (56, "H"),
    "current_uclk": (58, "H"), "current_vclk0": (60, "H"), "current_dclk0": (62, "H"),
    "current_vclk1": (64, "H"), "current_dclk1": (66, "H"), "pcie_link_width": (74, "H"),
    "pcie_link_speed": (76, "H"), "voltage_soc": (104, "H"), "voltage_gfx": (106, "H"),
    "voltage_mem": (108, "H"), "indep_throttle_status": (112, "Q")}
# v2.1 offsets (formats.md §5.3 gpu_metrics_v2_1).
V2_1_OFFSETS = {
    "temperature_gfx": (4, "H"), "temperature_soc": (6, "H"), "temperature_core": (8, "8H"),
    "temperature_l3": (24, "2H"), "system_clock_counter": (32, "Q"),
    "average_socket_power": (40, "H"), "average_cpu_power": (42, "H"),
    "average_soc_power": (44, "H"), "average_gfx_power": (46, "H"),
    "average_core_power": (48, "8H"), "average_gfxclk_frequency": (64, "H"),
    "average_socclk_frequency": (66, "H"), "average_uclk_frequency": (68, "H"),
    "average_fclk_frequency": (70, "H"), "average_vclk_frequency": (72, "H"),
    "average_dclk_frequency": (74, "H"), "current_gfxclk": (76, "H"), "current_socclk": (78, "H"),
    "current_uclk": (80, "H"), "current_fclk": (82, "H"), "current_vclk": (84, "H"),
    "current_dclk": (86, "H"), "current_coreclk": (88, "8H"), "current_l3clk": (104, "2H"),
    "fan_pwm": (112, "H")}
# amdgpu_top's JSON spells the dGPU's first VCN instance without the 0.
AMDGPU_TOP_V1_ALIASES = {"average_vclk_frequency": "average_vclk0_frequency",
                         "average_dclk_frequency": "average_dclk0_frequency",
                         "current_vclk": "current_vclk0", "current_dclk": "current_dclk0"}
ALL_ONES = {"H": 0xFFFF, "Q": 0xFFFFFFFFFFFFFFFF}


def build_table(fmt, content, size, offsets, values):
    """0xFF-filled table with the header and {kernel field: value or None}."""
    blob = bytearray(b"\xff" * size)
    struct.pack_into("<HBB", blob, 0, size, fmt, content)
    for name, value in values.items():
        offset, code = offsets[name]
        count, char = (int(code[:-1]), code[-1]) if len(code) > 1 else (1, code)
        items = value if isinstance(value, list) else [value]
        items = [ALL_ONES[char] if v is None else v for v in items]
        struct.pack_into("<%d%s" % (count, char), blob, offset, *items)
    return bytes(blob)


def amdgpu_top_fields(metrics, offsets, aliases):
    """amdgpu_top's gpu_metrics object -> {kernel field: value} for the table."""
    fields = {}
    for key, value in metrics.items():
        name = aliases.get(key, key)
        if name in offsets:
            fields[name] = value
    return fields


@pytest.mark.parametrize("name", ["amdgpu_top_json_rx9060xt_rdna4_dump.txt",
                                  "amdgpu_top_json_rx6600_navi23_sample.txt"])
def test_amdgpu_top_v1_3_decoding_agrees(name):
    doc = read_json_sample(name)
    metrics = (doc.get("device[0]") or doc)["gpu_metrics"]
    assert metrics["header"] == {"content_revision": 3, "format_revision": 1, "structure_size": 120}
    fields = amdgpu_top_fields(metrics, V1_3_OFFSETS, AMDGPU_TOP_V1_ALIASES)
    assert len(fields) >= 25
    mask = 0
    for reason in metrics["Throttle Status"]:
        mask |= 1 << THROTTLER_BITS[reason]
    fields["indep_throttle_status"] = mask
    result = parse_gpu_metrics(build_table(1, 3, 120, V1_3_OFFSETS, fields))
    for kernel_name, raw in fields.items():
        key, want = expected(kernel_name, raw, 1)
        assert same(result[key], want), (kernel_name, result[key], want)
    assert result["throttle_reasons"] == metrics["Throttle Status"]   # ["PPT0"] / []


def test_amdgpu_top_raphael_socket_power_is_watts():
    # Raphael: average_socket_power 27 beside Sensors "Input Power" 27 W, while
    # gfx/soc power are 4803/12846 mW (header "oracle use" line).
    doc = read_json_sample("amdgpu_top_json_raphael_apu_sample.txt")
    metrics = doc["device[0]"]["gpu_metrics"]
    fields = amdgpu_top_fields(metrics, V2_1_OFFSETS, {})
    result = parse_gpu_metrics(build_table(2, 1, 120, V2_1_OFFSETS, fields))
    assert result["average_socket_power_raw"] == 27
    assert result["average_socket_power_w"] == 27.0
    sensors = doc["device[0]"]["Sensors"]
    assert result["average_socket_power_w"] == sensors["Input Power"]["value"]
    assert math.isclose(result["temperature_gfx_c"], sensors["Edge Temperature"]["value"])
    assert math.isclose(result["average_gfx_power_w"], 4.803)
    assert result["temperature_core_c"] == [None] * 8 and result["current_gfxclk_mhz"] is None
    assert result["average_gfxclk_mhz"] == metrics["average_gfxclk_frequency"] == 600


def test_apu_socket_power_unit_needs_a_rail():
    fields = {"average_socket_power": 27, "average_cpu_power": None,
              "average_soc_power": None, "average_gfx_power": None}
    result = parse_gpu_metrics(build_table(2, 1, 120, V2_1_OFFSETS, fields))
    assert result["average_socket_power_raw"] == 27 and result["average_socket_power_w"] is None


# -- synthetic tables for every version, offsets from formats.md §5.3 ----------
# (version, [(offset, struct code, raw value(s), parser key, expected value)])
SYNTHETIC = {
    (1, 0): [(8, "Q", 123456789, "system_clock_counter_ns", 123456789),
             (16, "H", 56, "temperature_edge_c", 56), (34, "H", 150, "average_socket_power_w", 150),
             (36, "I", 777, "energy_accumulator_raw", 777), (54, "H", 2100, "current_gfxclk_mhz", 2100),
             (68, "I", 5, "throttle_status", 5), (72, "H", 1500, "current_fan_speed_rpm", 1500),
             (74, "B", 16, "pcie_link_width", 16), (75, "B", 80, "pcie_link_speed_gts", 8.0)],
    (1, 1): [(4, "H", 60, "temperature_edge_c", 60), (24, "Q", 999, "energy_accumulator_raw", 999),
             (32, "Q", 42, "system_clock_counter_ns", 42), (76, "H", 160, "pcie_link_speed_gts", 16.0),
             (80, "I", 1234, "gfx_activity_acc", 1234),
             (88, "4H", [70, 71, 72, 0xFFFF], "temperature_hbm_c", [70, 71, 72, None])],
    (1, 2): [(58, "H", 1000, "current_uclk_mhz", 1000), (96, "Q", 5, "firmware_timestamp_ns", 50)],
    (1, 3): [(106, "H", 900, "voltage_gfx_mv", 900),
             (112, "Q", 1 | 1 << 16 | 1 << 36 | 1 << 47, "throttle_reasons",
              ["PPT0", "TDC_GFX", "TEMP_HOTSPOT", "PROCHOT_GFX"])],
    (1, 4): [(4, "H", 70, "temperature_hotspot_c", 70), (10, "H", 500, "curr_socket_power_w", 500),
             (16, "4H", [1, 2, 3, 4], "vcn_activity_pct", [1, 2, 3, 4]),
             (24, "Q", 3 * 65536, "energy_accumulator_j", 3.0), (40, "I", 7, "throttle_status", 7),
             (54, "H", 32, "xgmi_link_speed_gbps", 32),
             (104, "8Q", list(range(8)), "xgmi_read_data_acc_kb", list(range(8))),
             (232, "Q", 10, "firmware_timestamp_ns", 100),
             (240, "8H", [2100] * 7 + [0xFFFF], "current_gfxclks_mhz", [2100] * 7 + [None]),
             (280, "H", 1300, "current_uclk_mhz", 1300), (0, "", None, "throttle_reasons", None)],
    (1, 5): [(24, "32H", [9] * 32, "jpeg_activity_pct", [9] * 32),
             (88, "Q", 65536, "energy_accumulator_j", 1.0), (168, "I", 3, "pcie_nak_sent_count_acc", 3),
             (312, "8H", [1500] * 8, "current_gfxclks_mhz", [1500] * 8),
             (352, "H", 1200, "current_uclk_mhz", 1200)],
    (1, 6): [(32, "I", 1000, "accumulation_counter", 1000), (40, "I", 800, "ppt_residency_acc", 800),
             (306, "H", 2, "num_partition", 2),
             (312, "8I", [10] * 8, "xcp_gfx_busy_inst_pct", [[10] * 8, [20] * 8]),
             (480, "8I", [20] * 8, None, None),
             (408, "4H", [1, 2, 3, 4], "xcp_vcn_busy_pct", [[1, 2, 3, 4], [None] * 4]),
             (1656, "I", 11, "pcie_lc_perf_other_end_recovery", 11)],
    (1, 7): [(16, "Q", 5300, "mem_max_bandwidth_gb_s", 5300), (44, "I", 6, "prochot_residency_acc", 6),
             (264, "8H", [1] * 8, "xgmi_link_status", [1] * 8), (288, "Q", 3, "firmware_timestamp_ns", 30),
             (338, "H", 1, "num_partition", 1),
             (512, "8Q", [7] * 8, "xcp_gfx_below_host_limit_acc", [[7] * 8]),
             (2200, "I", 12, "pcie_lc_perf_other_end_recovery", 12)],
    (1, 8): [(336, "H", 1900, "current_uclk_mhz", 1900), (338, "H", 2, "num_partition", 2),
             (376, "40H", [5] * 40, "xcp_jpeg_busy_pct", [[5] * 40, [None] * 40]),
             (720, "8Q", [8] * 8, "xcp_gfx_below_host_limit_total_acc", [[8] * 8, [None] * 8]),
             (784, "8I", [99] * 8, "xcp_gfx_busy_inst_pct", [[None] * 8, [99] * 8]),
             (3864, "I", 13, "pcie_lc_perf_other_end_recovery", 13)],
    (2, 0): [(8, "Q", 77, "system_clock_counter_ns", 77), (16, "H", 4550, "temperature_gfx_c", 45.5),
             (40, "H", 33, "average_gfx_activity_pct", 33), (44, "H", 8000, "average_socket_power_raw", 8000),
             (50, "H", 2500, "average_gfx_power_w", 2.5), (80, "H", 1800, "current_gfxclk_mhz", 1800),
             (112, "I", 0x600, "throttle_status", 0x600), (116, "H", 40, "fan_pwm", 40),
             (0, "", None, "average_socket_power_w", 8.0), (0, "", None, "throttle_reasons", None)],
    (2, 2): [(4, "H", 6000, "temperature_gfx_c", 60.0),
             (120, "Q", 1 << 4 | 1 << 46, "throttle_reasons", ["SPL", "PROCHOT_CPU"])],
    (2, 3): [(128, "H", 5000, "average_temperature_gfx_c", 50.0),
             (132, "8H", [4000] * 8, "average_temperature_core_c", [40.0] * 8)],
    (2, 4): [(28, "H", 5025, "average_gfx_activity_pct", 50.25),
             (120, "Q", 1 << 0, "throttle_reasons", ["PPT0"]),
             (152, "H", 1100, "average_cpu_voltage_mv", 1100), (162, "H", 900, "average_gfx_current_ma", 900)],
    (3, 0): [(40, "H", 3598, "temperature_skin_c", 35.98), (104, "Q", 5, "system_clock_counter_ns", 5),
             (112, "I", 15000, "average_socket_power_w", 15.0), (116, "H", 0xFFFF, "average_ipu_power_w", None),
             (120, "I", 9839, "average_apu_power_w", 9.839), (168, "H", 2000, "average_sys_power_w", 2.0),
             (222, "H", 5050, "current_core_maxfreq_mhz", 5050),
             (228, "I", 28, "throttle_residency_prochot", 28),
             (256, "I", 1000000, "time_filter_alphavalue_us", 1000000),
             (0, "", None, "throttle_reasons", None)],
}


def synthetic_blob(version, content=None, extra=0):
    size = LAYOUT_SIZES[version] + extra
    blob = bytearray(b"\xff" * size)
    struct.pack_into("<HBB", blob, 0, size, version[0], version[1] if content is None else content)
    for offset, code, raw, _, _ in SYNTHETIC[version]:
        if code:
            items = raw if isinstance(raw, list) else [raw]
            struct.pack_into("<" + code, blob, offset, *items)
    return bytes(blob)


@pytest.mark.parametrize("version", sorted(SYNTHETIC), ids=lambda v: "v%d.%d" % v)
def test_synthetic_table_per_version(version):
    result = parse_gpu_metrics(synthetic_blob(version))
    assert_contract(result)
    assert result["known_layout"] == result["decoded_as"] == "%d.%d" % version
    assert not result["size_mismatch"] and not result["newer_than_known"]
    for _, _, _, key, want in SYNTHETIC[version]:
        if key is not None:
            assert same(result[key], want), (key, result[key], want)


@pytest.mark.parametrize("version", sorted(LAYOUT_SIZES), ids=lambda v: "v%d.%d" % v)
def test_layout_size_is_the_kernel_sizeof(version):
    full = parse_gpu_metrics(synthetic_blob(version) if version in SYNTHETIC else
                             struct.pack("<HBB", LAYOUT_SIZES[version], *version)
                             + b"\xff" * (LAYOUT_SIZES[version] - 4))
    assert not full["size_mismatch"]
    short = bytearray(b"\xff" * (LAYOUT_SIZES[version] - 8))
    struct.pack_into("<HBB", short, 0, len(short), *version)
    assert parse_gpu_metrics(bytes(short))["size_mismatch"]


@pytest.mark.parametrize("name, bit", sorted(THROTTLER_BITS.items()))
def test_each_indep_throttler_bit_has_its_kernel_name(name, bit):
    blob = bytearray(synthetic_blob((1, 3)))
    struct.pack_into("<Q", blob, 112, 1 << bit)
    assert parse_gpu_metrics(bytes(blob))["throttle_reasons"] == [name]


def test_unnamed_throttler_bits_are_other():
    blob = bytearray(synthetic_blob((1, 3)))
    struct.pack_into("<Q", blob, 112, 1 << 8 | 1 << 60 | 1 << 35)
    assert parse_gpu_metrics(bytes(blob))["throttle_reasons"] == ["TEMP_EDGE", "other"]


def test_asic_dependent_throttle_status_is_not_named():
    # v1.0-v1.2, v1.4, v1.5, v2.0, v2.1: only the raw, ASIC-dependent u32 (formats.md §5.4).
    for version in ((1, 0), (1, 1), (1, 2), (1, 4), (1, 5), (2, 0), (2, 1)):
        blob = bytearray(b"\x00" * LAYOUT_SIZES[version])
        struct.pack_into("<HBB", blob, 0, len(blob), *version)
        result = parse_gpu_metrics(bytes(blob))
        assert result["throttle_status"] == 0 and result["throttle_reasons"] is None, version


# -- sentinels ------------------------------------------------------------------

def _all_none(value):
    if isinstance(value, list):
        return all(_all_none(v) for v in value)
    return value is None


@pytest.mark.parametrize("version", sorted(LAYOUT_SIZES), ids=lambda v: "v%d.%d" % v)
def test_all_ones_table_is_all_none(version):
    blob = struct.pack("<HBB", LAYOUT_SIZES[version], *version) + b"\xff" * (LAYOUT_SIZES[version] - 4)
    result = parse_gpu_metrics(blob)
    fields = [k for k in result if k not in META]
    assert len(fields) >= 20
    for key in fields:
        assert _all_none(result[key]), (key, result[key])
    assert result["throttle_reasons"] is None


def test_zero_table_is_zero_not_none():
    blob = struct.pack("<HBB", 120, 1, 3) + bytes(116)
    result = parse_gpu_metrics(blob)
    assert result["temperature_edge_c"] == 0 and result["throttle_reasons"] == []
    assert result["temperature_hbm_c"] == [0, 0, 0, 0]


def test_sentinel_per_element_and_per_width():
    data, _ = read_hex("gpu_metrics_v2_1_apu_phoenix.hex")
    result = parse_gpu_metrics(data)
    assert result["temperature_l3_c"] == [25.25, None]          # 65535 in the second slot
    assert result["current_l3clk_mhz"] == [1400, None]
    assert result["average_cpu_power_w"] is None and result["fan_pwm"] is None
    v10 = bytearray(synthetic_blob((1, 0)))
    v10[74:76] = b"\xff\xff"                                     # u8 pcie fields: 0xFF
    assert parse_gpu_metrics(bytes(v10))["pcie_link_width"] is None
    assert parse_gpu_metrics(bytes(v10))["pcie_link_speed_gts"] is None
    v13 = bytearray(synthetic_blob((1, 3)))
    struct.pack_into("<Q", v13, 112, 0xFFFFFFFFFFFFFFFF)         # u64
    assert parse_gpu_metrics(bytes(v13))["throttle_reasons"] is None
    struct.pack_into("<I", v13, 68, 0xFFFFFFFF)                  # u32
    assert parse_gpu_metrics(bytes(v13))["throttle_status"] is None


# -- errors, truncation, sizes, newer revisions --------------------------------

@pytest.mark.parametrize("data", [
    b"", b"\x78", b"\x78\x00\x01",                          # shorter than the header
    struct.pack("<HBB", 2, 1, 3) + bytes(116),             # structure_size < header
    struct.pack("<HBB", 0, 2, 1) + bytes(116),
    struct.pack("<HBB", 120, 1, 3) + bytes(100),           # shorter than structure_size
    struct.pack("<HBB", 120, 0, 0) + bytes(116),           # unknown format_revision
    struct.pack("<HBB", 120, 4, 0) + bytes(116),
    struct.pack("<HBB", 120, 255, 255) + bytes(116),
    struct.pack("<HBB", 6, 1, 9) + bytes(2),               # v1.9 without attr_count
])
def test_documented_errors(data):
    with pytest.raises(GpuMetricsError):
        parse_gpu_metrics(data)
    assert issubclass(GpuMetricsError, ValueError)


@pytest.mark.parametrize("index", range(len(HEX_SAMPLES)), ids=HEX_SAMPLES)
def test_truncation_at_every_offset(index):
    data = SAMPLE_BYTES[index]
    size = struct.unpack_from("<H", data)[0]
    full = parse_gpu_metrics(data)
    for cut in range(len(data) + 1):
        if cut < size:
            with pytest.raises(GpuMetricsError):
                parse_gpu_metrics(data[:cut])
        else:
            assert parse_gpu_metrics(data[:cut]) == full


@pytest.mark.parametrize("index", range(len(HEX_SAMPLES)), ids=HEX_SAMPLES)
def test_smaller_structure_size_decodes_the_prefix(index):
    data = SAMPLE_BYTES[index]
    size = struct.unpack_from("<H", data)[0]
    full = parse_gpu_metrics(data)
    previous = -1
    for cut in range(4, size):
        short = struct.pack("<H", cut) + data[2:cut]
        result = parse_or_error(short)
        assert result is not None and result["size_mismatch"], cut
        assert set(result) == set(full)
        for key in set(full) - META:
            assert result[key] == full[key] or _all_none(result[key]), (cut, key)
        known = sum(1 for k in full if k not in META and not _all_none(result[k]))
        assert known >= previous
        previous = known


def test_newer_content_revision_is_decoded_by_the_newest_prefix():
    apu, _ = read_hex("gpu_metrics_v2_1_apu_phoenix.hex")
    v21 = parse_gpu_metrics(apu)
    newer = parse_gpu_metrics(apu[:3] + b"\x09" + apu[4:])
    assert newer["decoded_as"] == newer["known_layout"] == "2.4" and newer["newer_than_known"]
    assert newer["content_revision"] == 9
    for key in ("temperature_core_c", "average_gfxclk_mhz", "current_coreclk_mhz", "system_clock_counter_ns"):
        assert newer[key] == v21[key]
    assert newer["indep_throttle_status"] is None and newer["average_gfx_voltage_mv"] is None

    mi = parse_gpu_metrics(synthetic_blob((1, 8), content=12, extra=64))
    assert mi["decoded_as"] == "1.8" and mi["newer_than_known"] and not mi["size_mismatch"]
    assert mi["current_uclk_mhz"] == 1900 and mi["pcie_lc_perf_other_end_recovery"] == 13

    strix, _ = read_hex("gpu_metrics_v3_0_apu_strixpoint.hex")
    v31 = parse_gpu_metrics(strix[:3] + b"\x01" + strix[4:])
    assert v31["decoded_as"] == "3.0" and v31["newer_than_known"]
    assert dict((k, v) for k, v in v31.items() if k not in META) == dict(
        (k, v) for k, v in parse_gpu_metrics(strix).items() if k not in META)


# -- v1.9 attribute table (formats.md §5.5) ------------------------------------

def attr(unit, type_code, attr_id, char, values):
    """One packed entry: u64 encoding (unit<<24 | type<<20 | id<<10 | count), values."""
    encoding = unit << 24 | type_code << 20 | attr_id << 10 | len(values)
    return struct.pack("<Q", encoding) + struct.pack("<%d%s" % (len(values), char), *values)


def v19_table(entries, count=None):
    body = b"".join(entries)
    size = 8 + len(body)
    return struct.pack("<HBBi", size, 1, 9, len(entries) if count is None else count) + body


V19_ENTRIES = [
    attr(2, 2, 0, "H", [42]),                                  # TEMPERATURE_HOTSPOT, degC, U16
    attr(2, 2, 1, "H", [0xFFFF]),                              # TEMPERATURE_MEM not supported
    attr(3, 2, 3, "H", [194]),                                 # CURR_SOCKET_POWER, W
    attr(10, 2, 4, "H", [7]),                                  # AVERAGE_GFX_ACTIVITY, %
    attr(4, 6, 8, "Q", [123456789]),                           # SYSTEM_CLOCK_COUNTER, ns
    attr(0, 4, 9, "I", [54536484]),                            # ACCUMULATION_COUNTER
    attr(0, 4, 11, "I", [633093]),                             # PPT_RESIDENCY_ACC
    attr(7, 2, 17, "H", [320]),                                # PCIE_LINK_SPEED, 0.1 GT/s
    attr(5, 6, 32, "Q", [7]),                                  # FIRMWARE_TIMESTAMP, 10 ns
    attr(1, 2, 33, "H", [2098, 2100, 0xFFFF, 2115]),           # CURRENT_GFXCLK, MHz, per XCC
    attr(1, 2, 37, "H", [1300]),                               # CURRENT_UCLK
    attr(2, 3, 200, "h", [-5]),                                # unknown id, S16
]


def test_v19_attribute_table():
    result = parse_gpu_metrics(v19_table(V19_ENTRIES))
    assert_contract(result)
    assert result["known_layout"] == "1.9" and not result["newer_than_known"]
    assert result["attr_count"] == len(V19_ENTRIES) and not result["attr_table_incomplete"]
    want = {"temperature_hotspot_c": 42, "temperature_mem_c": None, "curr_socket_power_w": 194,
            "average_gfx_activity_pct": 7, "system_clock_counter_ns": 123456789,
            "accumulation_counter": 54536484, "ppt_residency_acc": 633093,
            "pcie_link_speed_gts": 32.0, "firmware_timestamp_ns": 70,
            "current_gfxclks_mhz": [2098, 2100, None, 2115], "current_uclk_mhz": 1300,
            "attr_200_c": [-5]}
    for key, value in want.items():
        assert same(result[key], value), (key, result[key])
    assert result["throttle_reasons"] is None


def test_v19_single_instance_array_stays_a_list_and_trailing_bytes_are_ignored():
    table = v19_table([attr(1, 2, 33, "H", [1700])]) + b"\x00" * 32
    assert parse_gpu_metrics(table)["current_gfxclks_mhz"] == [1700]


@pytest.mark.parametrize("table", [
    v19_table(V19_ENTRIES[:3], count=5),                                 # fewer entries than counted
    v19_table(V19_ENTRIES[:3] + [attr(2, 9, 0, "H", [1])]),              # unknown type: width unknown
    v19_table(V19_ENTRIES[:3] + [V19_ENTRIES[4][:12]]),                  # last entry cut by structure_size
])
def test_v19_incomplete_table_keeps_what_it_read(table):
    result = parse_gpu_metrics(table)
    assert result["attr_table_incomplete"]
    assert result["temperature_hotspot_c"] == 42 and result["curr_socket_power_w"] == 194


def test_v19_negative_count_reads_nothing():
    result = parse_gpu_metrics(v19_table(V19_ENTRIES, count=-1))
    assert result["attr_count"] == -1 and "temperature_hotspot_c" not in result


# -- throttle_from_residency ------------------------------------------------------

def test_residency_growth_names_mi_throttlers():
    before = parse_gpu_metrics(synthetic_blob((1, 8)))
    blob = bytearray(synthetic_blob((1, 8)))
    # v1.8 offsets: accumulation_counter 40, prochot 44, ppt 48, socket_thm 52, vr 56, hbm 60
    struct.pack_into("<6I", blob, 40, 1000, 0, 800, 0, 0, 0)
    prev = parse_gpu_metrics(bytes(blob))
    struct.pack_into("<6I", blob, 40, 2000, 0, 900, 0, 0, 0)
    cur = parse_gpu_metrics(bytes(blob))
    assert throttle_from_residency(prev, cur) == ["PPT0"]
    struct.pack_into("<6I", blob, 40, 3000, 5, 900, 1, 2, 3)
    hot = parse_gpu_metrics(bytes(blob))
    assert sorted(throttle_from_residency(cur, hot)) == sorted(
        ["PROCHOT_GFX", "TEMP_GPU", "TEMP_VR_GFX", "TEMP_MEM"])
    assert throttle_from_residency(hot, hot) == []
    assert throttle_from_residency(hot, cur) == []        # every counter went down or stayed
    assert throttle_from_residency(before, cur) is None   # 0xFFFFFFFF = not supported before


def test_residency_counter_going_down_is_not_growth():
    blob = bytearray(synthetic_blob((1, 6)))
    struct.pack_into("<6I", blob, 32, 10, 0, 500, 0, 0, 0)
    prev = parse_gpu_metrics(bytes(blob))
    struct.pack_into("<6I", blob, 32, 20, 0, 100, 0, 0, 0)   # driver reload reset it
    assert throttle_from_residency(prev, parse_gpu_metrics(bytes(blob))) == []


def test_residency_growth_names_apu_throttlers():
    strix, _ = read_hex("gpu_metrics_v3_0_apu_strixpoint.hex")
    prev = parse_gpu_metrics(strix)
    later = bytearray(strix)
    struct.pack_into("<I", later, 232, 1868 + 10)    # throttle_residency_spl
    struct.pack_into("<I", later, 244, 1795 + 1)     # throttle_residency_thm_core
    struct.pack_into("<I", later, 228, 28 + 3)       # throttle_residency_prochot
    names = throttle_from_residency(prev, parse_gpu_metrics(bytes(later)))
    assert sorted(names) == ["PROCHOT", "SPL", "TEMP_CORE"]
    assert throttle_from_residency(prev, prev) == []


def test_residency_without_counters_is_unknown():
    dgpu = parse_gpu_metrics(SAMPLE_BYTES[0])
    assert throttle_from_residency(dgpu, dgpu) is None
    assert throttle_from_residency(None, dgpu) is None
    assert throttle_from_residency({}, {}) is None


def test_v19_residency_matches_v18_names():
    prev = parse_gpu_metrics(v19_table(V19_ENTRIES))
    later = list(V19_ENTRIES)
    later[6] = attr(0, 4, 11, "I", [633093 + 4342])
    assert throttle_from_residency(prev, parse_gpu_metrics(v19_table(later))) == ["PPT0"]


# -- fuzzing ------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=4200))
def test_fuzz_arbitrary_bytes(data):
    parse_or_error(data)


VERSIONS = sorted(LAYOUT_SIZES) + [(1, 9), (1, 10), (1, 255), (2, 5), (3, 1), (0, 0), (4, 0)]


@FUZZ
@given(st.sampled_from(VERSIONS), st.integers(0, 4200), st.binary(max_size=4200))
def test_fuzz_valid_headers_random_bodies(version, size, body):
    data = struct.pack("<HBB", size, *version) + body
    result = parse_or_error(data)
    if result is None:
        return
    assert result["structure_size"] == size <= len(data)
    assert (result["format_revision"], result["content_revision"]) == version


@FUZZ
@given(st.sampled_from(range(len(SAMPLE_BYTES))),
       st.lists(st.tuples(st.integers(0, 263), st.integers(0, 255)), max_size=12))
def test_fuzz_mutated_real_samples(index, edits):
    data = bytearray(SAMPLE_BYTES[index])
    for position, value in edits:
        if position < len(data):
            data[position] = value
    parse_or_error(bytes(data))


_ATTR_ENTRY = st.builds(
    lambda unit, type_code, attr_id, payload: struct.pack(
        "<Q", unit << 24 | type_code << 20 | attr_id << 10 | (len(payload) % 1024)) + payload,
    st.integers(0, 12), st.integers(0, 9), st.integers(0, 1023), st.binary(max_size=64))


@FUZZ
@given(st.lists(_ATTR_ENTRY, max_size=20), st.integers(-3, 30))
def test_fuzz_v19_attribute_tables(entries, count):
    body = b"".join(entries)
    data = struct.pack("<HBBi", 8 + len(body), 1, 9, count) + body
    result = parse_or_error(data)
    assert result is not None and result["known_layout"] == "1.9"


@FUZZ
@given(st.sampled_from(range(len(SAMPLE_BYTES))), st.sampled_from(range(len(SAMPLE_BYTES))))
def test_fuzz_residency_on_any_two_samples(first, second):
    result = throttle_from_residency(parse_gpu_metrics(SAMPLE_BYTES[first]),
                                     parse_gpu_metrics(SAMPLE_BYTES[second]))
    assert result is None or isinstance(result, list)
