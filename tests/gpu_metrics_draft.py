"""Draft of the `gpu_metrics` parser for amdgpu_top_web.py section 4 (pure parsers).

Standalone until the lead pastes it into the program: stdlib only (struct,
collections), no I/O, no clock, no threads; Python 3.8+.

Source of every layout: drivers/gpu/drm/amd/include/kgd_pp_interface.h
(`struct gpu_metrics_vX_Y`), as transcribed in formats.md §5.3 (natural C
alignment; implicit holes spelled out as padding rows). Units: formats.md §5.1.

Public API:
    parse_gpu_metrics(data) -> dict      bytes of cardN/device/gpu_metrics
    throttle_from_residency(prev, cur)   names whose residency counter grew
    parse_smu_throttler_bits(mask)       SMU_THROTTLER_* u64 mask -> names
    GpuMetricsError(ValueError)          the one error parse_gpu_metrics raises
"""

import struct
from collections import namedtuple


class GpuMetricsError(ValueError):
    """gpu_metrics bytes that cannot be decoded: header shorter than 4 bytes,
    structure_size smaller than the header, data shorter than structure_size,
    or a format_revision other than 1 (dGPU), 2 (APU) or 3 (newer APU)."""


# -- conversions -------------------------------------------------------------
# (multiplier, divisor): value = raw * mul / div, converted once, here.
# (1, 1) keeps the integer as the kernel wrote it.
RAW = (1, 1)
CENTI = (1, 100)     # centi-degC, centi-% (APU v2.x/v3.0, v2.4 activity)
MILLI = (1, 1000)    # mW -> W (APU v2.x/v3.0)
DECI = (1, 10)       # pcie_link_speed "in 0.1 GT/s" -> GT/s
TEN = (10, 1)        # firmware_timestamp "10ns resolution" -> ns
Q16 = (1, 65536)     # energy_accumulator "15.259uJ (2^-16) units" -> J (v1.4+)

# smu_cmn_init_soft_gpu_metrics() pre-fills the table with 0xFF: a field the
# ASIC does not write reads all ones (per element for arrays) -> None.
SENTINELS = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 0xFFFFFFFFFFFFFFFF,
             "b": -1, "h": -1, "i": -1, "q": -1}

HEADER = struct.Struct("<HBB")   # struct metrics_table_header
HEADER_SIZE = HEADER.size


def _pad(nbytes):
    """A padding field or an implicit alignment hole: decoded, never output."""
    return (None, "x", nbytes, None)


# -- layouts: (output name, struct char, count, conversion) from offset 4 -----
# Names are the kernel's field names with the unit as suffix ("_frequency"
# dropped). A name is a scalar or a list in every version, never both: the
# per-XCC/AID clock arrays of v1.4+ are therefore "current_gfxclks_mhz" etc.
# (v1.0-v1.3 have one "current_gfxclk_mhz").

_V1_TEMPS = (   # v1.0-v1.3: whole degC (observed: temperature_edge*1000 == temp1_input)
    ("temperature_edge_c", "H", 1, RAW), ("temperature_hotspot_c", "H", 1, RAW),
    ("temperature_mem_c", "H", 1, RAW), ("temperature_vrgfx_c", "H", 1, RAW),
    ("temperature_vrsoc_c", "H", 1, RAW), ("temperature_vrmem_c", "H", 1, RAW))
_V1_ACTIVITY_POWER = (   # %, and W (observed: == power1_average / 1e6)
    ("average_gfx_activity_pct", "H", 1, RAW), ("average_umc_activity_pct", "H", 1, RAW),
    ("average_mm_activity_pct", "H", 1, RAW), ("average_socket_power_w", "H", 1, RAW))
_V1_CLOCKS = tuple((name + "_mhz", "H", 1, RAW) for name in (
    "average_gfxclk", "average_socclk", "average_uclk", "average_vclk0",
    "average_dclk0", "average_vclk1", "average_dclk1",
    "current_gfxclk", "current_socclk", "current_uclk", "current_vclk0",
    "current_dclk0", "current_vclk1", "current_dclk1"))

GPU_METRICS_V1_0 = (   # 80 bytes; "not naturally aligned" per the header
    _pad(4), ("system_clock_counter_ns", "Q", 1, RAW)) + _V1_TEMPS + _V1_ACTIVITY_POWER + (
    ("energy_accumulator_raw", "I", 1, RAW),) + _V1_CLOCKS + (   # energy unit undocumented
    ("throttle_status", "I", 1, RAW), ("current_fan_speed_rpm", "H", 1, RAW),
    ("pcie_link_width", "B", 1, RAW), ("pcie_link_speed_gts", "B", 1, DECI), _pad(4))

GPU_METRICS_V1_1 = _V1_TEMPS + _V1_ACTIVITY_POWER + (   # 96 bytes
    ("energy_accumulator_raw", "Q", 1, RAW), ("system_clock_counter_ns", "Q", 1, RAW)
) + _V1_CLOCKS + (
    ("throttle_status", "I", 1, RAW), ("current_fan_speed_rpm", "H", 1, RAW),
    ("pcie_link_width", "H", 1, RAW), ("pcie_link_speed_gts", "H", 1, DECI), _pad(2),
    ("gfx_activity_acc", "I", 1, RAW), ("mem_activity_acc", "I", 1, RAW),
    # header silent on the unit; aldebaran_ppt.c copies PMFW TemperatureAllHBM
    # beside TemperatureEdge (whole degC), so read as degC like the others.
    ("temperature_hbm_c", "H", 4, RAW))
GPU_METRICS_V1_2 = GPU_METRICS_V1_1 + (("firmware_timestamp_ns", "Q", 1, TEN),)   # 104
GPU_METRICS_V1_3 = GPU_METRICS_V1_2 + (   # 120 bytes (RDNA2-4 dGPUs)
    ("voltage_soc_mv", "H", 1, RAW), ("voltage_gfx_mv", "H", 1, RAW),
    ("voltage_mem_mv", "H", 1, RAW), _pad(2), ("indep_throttle_status", "Q", 1, RAW))

_MI_HEAD = (   # v1.4+ (MI-series): header comments say Celsius, Watts, %
    ("temperature_hotspot_c", "H", 1, RAW), ("temperature_mem_c", "H", 1, RAW),
    ("temperature_vrsoc_c", "H", 1, RAW), ("curr_socket_power_w", "H", 1, RAW),
    ("average_gfx_activity_pct", "H", 1, RAW), ("average_umc_activity_pct", "H", 1, RAW))
_MI_LINKS = (
    ("pcie_link_width", "H", 1, RAW), ("pcie_link_speed_gts", "H", 1, DECI),
    ("xgmi_link_width", "H", 1, RAW), ("xgmi_link_speed_gbps", "H", 1, RAW),
    ("gfx_activity_acc", "I", 1, RAW), ("mem_activity_acc", "I", 1, RAW))
_MI_PCIE = (
    ("pcie_bandwidth_acc", "Q", 1, RAW), ("pcie_bandwidth_inst_gb_s", "Q", 1, RAW),
    ("pcie_l0_to_recov_count_acc", "Q", 1, RAW), ("pcie_replay_count_acc", "Q", 1, RAW),
    ("pcie_replay_rover_count_acc", "Q", 1, RAW))
_MI_NAK = (("pcie_nak_sent_count_acc", "I", 1, RAW), ("pcie_nak_rcvd_count_acc", "I", 1, RAW))
_MI_XGMI = (("xgmi_read_data_acc_kb", "Q", 8, RAW), ("xgmi_write_data_acc_kb", "Q", 8, RAW))
_MI_CLOCKS = (   # MAX_GFX_CLKS 8, MAX_CLKS 4
    ("current_gfxclks_mhz", "H", 8, RAW), ("current_socclks_mhz", "H", 4, RAW),
    ("current_vclk0s_mhz", "H", 4, RAW), ("current_dclk0s_mhz", "H", 4, RAW),
    ("current_uclk_mhz", "H", 1, RAW))
_MI_ENERGY_CLOCK = (("energy_accumulator_j", "Q", 1, Q16), ("system_clock_counter_ns", "Q", 1, RAW))
_MI_LOCK = (("throttle_status", "I", 1, RAW), ("gfxclk_lock_status", "I", 1, RAW))
_MI_RESIDENCY = (   # PMFW accumulation cycles; diff two samples
    ("accumulation_counter", "I", 1, RAW), ("prochot_residency_acc", "I", 1, RAW),
    ("ppt_residency_acc", "I", 1, RAW), ("socket_thm_residency_acc", "I", 1, RAW),
    ("vr_thm_residency_acc", "I", 1, RAW), ("hbm_thm_residency_acc", "I", 1, RAW),
    ("gfxclk_lock_status", "I", 1, RAW))

GPU_METRICS_V1_4 = _MI_HEAD + (("vcn_activity_pct", "H", 4, RAW),) + _MI_ENERGY_CLOCK + (
    _MI_LOCK + _MI_LINKS + _MI_PCIE + _MI_XGMI + (("firmware_timestamp_ns", "Q", 1, TEN),)
    + _MI_CLOCKS + (_pad(2), _pad(4)))   # 288 bytes
GPU_METRICS_V1_5 = _MI_HEAD + (   # 360 bytes
    ("vcn_activity_pct", "H", 4, RAW), ("jpeg_activity_pct", "H", 32, RAW)) + (
    _MI_ENERGY_CLOCK + _MI_LOCK + _MI_LINKS + _MI_PCIE + _MI_NAK + _MI_XGMI
    + (("firmware_timestamp_ns", "Q", 1, TEN),) + _MI_CLOCKS + (_pad(2), _pad(4)))

# xcp_stats[NUM_XCP] element structs (kgd_pp_interface.h amdgpu_xcp_metrics*)
XCP_METRICS_V1_0 = (   # 168 bytes
    ("gfx_busy_inst_pct", "I", 8, RAW), ("jpeg_busy_pct", "H", 32, RAW),
    ("vcn_busy_pct", "H", 4, RAW), ("gfx_busy_acc", "Q", 8, RAW))
XCP_METRICS_V1_1 = XCP_METRICS_V1_0 + (("gfx_below_host_limit_acc", "Q", 8, RAW),)   # 232
XCP_METRICS_V1_2 = (   # 440 bytes, NUM_JPEG_ENG_V1 40
    ("gfx_busy_inst_pct", "I", 8, RAW), ("jpeg_busy_pct", "H", 40, RAW),
    ("vcn_busy_pct", "H", 4, RAW), ("gfx_busy_acc", "Q", 8, RAW),
    ("gfx_below_host_limit_ppt_acc", "Q", 8, RAW), ("gfx_below_host_limit_thm_acc", "Q", 8, RAW),
    ("gfx_low_utilization_acc", "Q", 8, RAW), ("gfx_below_host_limit_total_acc", "Q", 8, RAW))


def _mi_xcp_layout(head, xcp):
    """v1.6-v1.8 share everything but the head and the xcp_stats element."""
    return head + _MI_RESIDENCY + _MI_LINKS + (_pad(4),) + _MI_PCIE + _MI_NAK + _MI_XGMI + (
        xcp[0]) + (("firmware_timestamp_ns", "Q", 1, TEN),) + _MI_CLOCKS + (
        ("num_partition", "H", 1, RAW), _pad(4), ("xcp", xcp[1], 8, None),
        ("pcie_lc_perf_other_end_recovery", "I", 1, RAW), _pad(4))


_XGMI_STATUS = (("xgmi_link_status", "H", 8, RAW), _pad(2), _pad(6))
GPU_METRICS_V1_6 = _mi_xcp_layout(_MI_HEAD + _MI_ENERGY_CLOCK, ((), XCP_METRICS_V1_0))   # 1664
GPU_METRICS_V1_7 = _mi_xcp_layout(   # 2208 bytes
    _MI_HEAD + (("mem_max_bandwidth_gb_s", "Q", 1, RAW),) + _MI_ENERGY_CLOCK,
    (_XGMI_STATUS, XCP_METRICS_V1_1))
GPU_METRICS_V1_8 = _mi_xcp_layout(   # 3872 bytes (kernel comment confirms)
    _MI_HEAD + (("mem_max_bandwidth_gb_s", "Q", 1, RAW),) + _MI_ENERGY_CLOCK,
    (_XGMI_STATUS, XCP_METRICS_V1_2))

_APU_TEMPS = (   # centi-degC (v2.4/v3.0 header; observed 2500 <-> temp1_input 25000)
    ("temperature_gfx_c", "H", 1, CENTI), ("temperature_soc_c", "H", 1, CENTI),
    ("temperature_core_c", "H", 8, CENTI), ("temperature_l3_c", "H", 2, CENTI))
_APU_POWER = (
    # mW on most APUs but W on some PMFW (Renoir family, drm/amd#2321; the
    # Raphael sample): raw here, average_socket_power_w is decided afterwards.
    ("average_socket_power_raw", "H", 1, RAW),
    ("average_cpu_power_w", "H", 1, MILLI), ("average_soc_power_w", "H", 1, MILLI),
    ("average_gfx_power_w", "H", 1, MILLI), ("average_core_power_w", "H", 8, MILLI))
_APU_CLOCKS = tuple((name + "_mhz", "H", 1, RAW) for name in (
    "average_gfxclk", "average_socclk", "average_uclk", "average_fclk",
    "average_vclk", "average_dclk", "current_gfxclk", "current_socclk",
    "current_uclk", "current_fclk", "current_vclk", "current_dclk")) + (
    ("current_coreclk_mhz", "H", 8, RAW), ("current_l3clk_mhz", "H", 2, RAW))
_APU_TAIL = (("throttle_status", "I", 1, RAW), ("fan_pwm", "H", 1, RAW))   # fan_pwm unit undocumented


def _apu_activity(conv):
    return (("average_gfx_activity_pct", "H", 1, conv), ("average_mm_activity_pct", "H", 1, conv))


GPU_METRICS_V2_0 = (_pad(4), ("system_clock_counter_ns", "Q", 1, RAW)) + _APU_TEMPS + (
    _apu_activity(RAW) + _APU_POWER + _APU_CLOCKS + _APU_TAIL + (_pad(2),))   # 120 bytes
_V2_1_BODY = _APU_TEMPS + _apu_activity(RAW) + (("system_clock_counter_ns", "Q", 1, RAW),) + (
    _APU_POWER + _APU_CLOCKS + _APU_TAIL + (_pad(6),))
GPU_METRICS_V2_1 = _V2_1_BODY   # 120 bytes (Phoenix, Raphael)
GPU_METRICS_V2_2 = _V2_1_BODY + (("indep_throttle_status", "Q", 1, RAW),)   # 128
_APU_AVG_TEMPS = (
    ("average_temperature_gfx_c", "H", 1, CENTI), ("average_temperature_soc_c", "H", 1, CENTI),
    ("average_temperature_core_c", "H", 8, CENTI), ("average_temperature_l3_c", "H", 2, CENTI))
GPU_METRICS_V2_3 = GPU_METRICS_V2_2 + _APU_AVG_TEMPS   # 152
GPU_METRICS_V2_4 = _APU_TEMPS + _apu_activity(CENTI) + (   # 168; activity "unit: centi"
    ("system_clock_counter_ns", "Q", 1, RAW),) + _APU_POWER + _APU_CLOCKS + _APU_TAIL + (
    _pad(6), ("indep_throttle_status", "Q", 1, RAW)) + _APU_AVG_TEMPS + (
    ("average_cpu_voltage_mv", "H", 1, RAW), ("average_soc_voltage_mv", "H", 1, RAW),
    ("average_gfx_voltage_mv", "H", 1, RAW), ("average_cpu_current_ma", "H", 1, RAW),
    ("average_soc_current_ma", "H", 1, RAW), ("average_gfx_current_ma", "H", 1, RAW), _pad(4))

GPU_METRICS_V3_0 = (   # 264 bytes (Strix Point); holes at 102, 118, 226
    ("temperature_gfx_c", "H", 1, CENTI), ("temperature_soc_c", "H", 1, CENTI),
    ("temperature_core_c", "H", 16, CENTI), ("temperature_skin_c", "H", 1, CENTI),
    ("average_gfx_activity_pct", "H", 1, RAW), ("average_vcn_activity_pct", "H", 1, RAW),
    ("average_ipu_activity_pct", "H", 8, RAW), ("average_core_c0_activity_pct", "H", 16, RAW),
    ("average_dram_reads_mb_s", "H", 1, RAW), ("average_dram_writes_mb_s", "H", 1, RAW),
    ("average_ipu_reads_mb_s", "H", 1, RAW), ("average_ipu_writes_mb_s", "H", 1, RAW), _pad(2),
    ("system_clock_counter_ns", "Q", 1, RAW),
    ("average_socket_power_w", "I", 1, MILLI), ("average_ipu_power_w", "H", 1, MILLI), _pad(2),
    ("average_apu_power_w", "I", 1, MILLI), ("average_gfx_power_w", "I", 1, MILLI),
    ("average_dgpu_power_w", "I", 1, MILLI), ("average_all_core_power_w", "I", 1, MILLI),
    ("average_core_power_w", "H", 16, MILLI), ("average_sys_power_w", "H", 1, MILLI),
    ("stapm_power_limit_w", "H", 1, MILLI), ("current_stapm_power_limit_w", "H", 1, MILLI),
) + tuple((name + "_mhz", "H", 1, RAW) for name in (
    "average_gfxclk", "average_socclk", "average_vpeclk", "average_ipuclk",
    "average_fclk", "average_vclk", "average_uclk", "average_mpipu")) + (
    ("current_coreclk_mhz", "H", 16, RAW), ("current_core_maxfreq_mhz", "H", 1, RAW),
    ("current_gfx_maxfreq_mhz", "H", 1, RAW), _pad(2),
    ("throttle_residency_prochot", "I", 1, RAW), ("throttle_residency_spl", "I", 1, RAW),
    ("throttle_residency_fppt", "I", 1, RAW), ("throttle_residency_sppt", "I", 1, RAW),
    ("throttle_residency_thm_core", "I", 1, RAW), ("throttle_residency_thm_gfx", "I", 1, RAW),
    ("throttle_residency_thm_soc", "I", 1, RAW), ("time_filter_alphavalue_us", "I", 1, RAW),
    _pad(4))

GPU_METRICS_TABLES = {
    (1, 0): GPU_METRICS_V1_0, (1, 1): GPU_METRICS_V1_1, (1, 2): GPU_METRICS_V1_2,
    (1, 3): GPU_METRICS_V1_3, (1, 4): GPU_METRICS_V1_4, (1, 5): GPU_METRICS_V1_5,
    (1, 6): GPU_METRICS_V1_6, (1, 7): GPU_METRICS_V1_7, (1, 8): GPU_METRICS_V1_8,
    (2, 0): GPU_METRICS_V2_0, (2, 1): GPU_METRICS_V2_1, (2, 2): GPU_METRICS_V2_2,
    (2, 3): GPU_METRICS_V2_3, (2, 4): GPU_METRICS_V2_4, (3, 0): GPU_METRICS_V3_0,
}
ATTRIBUTE_ENCODED = (1, 9)   # formats.md §5.5: self-describing, decoded by _decode_attrs
# A newer content revision of a known format is decoded by this prefix.
NEWEST_FIXED = {1: (1, 8), 2: (2, 4), 3: (3, 0)}

# -- throttlers ----------------------------------------------------------------
# SMU_THROTTLER_*_BIT of drivers/gpu/drm/amd/pm/swsmu/inc/amdgpu_smu.h, prefix
# and _BIT dropped (formats.md §5.4). amdgpu_top (libdrm-amdgpu-sys) shows bit
# 47 as "PROCHOT_GPU"; the kernel name is kept here.
SMU_THROTTLER_BITS = (
    (0, "PPT0"), (1, "PPT1"), (2, "PPT2"), (3, "PPT3"), (4, "SPL"), (5, "FPPT"),
    (6, "SPPT"), (7, "SPPT_APU"), (16, "TDC_GFX"), (17, "TDC_SOC"), (18, "TDC_MEM"),
    (19, "TDC_VDD"), (20, "TDC_CVIP"), (21, "EDC_CPU"), (22, "EDC_GFX"), (23, "APCC"),
    (32, "TEMP_GPU"), (33, "TEMP_CORE"), (34, "TEMP_MEM"), (35, "TEMP_EDGE"),
    (36, "TEMP_HOTSPOT"), (37, "TEMP_SOC"), (38, "TEMP_VR_GFX"), (39, "TEMP_VR_SOC"),
    (40, "TEMP_VR_MEM0"), (41, "TEMP_VR_MEM1"), (42, "TEMP_LIQUID0"), (43, "TEMP_LIQUID1"),
    (44, "VRHOT0"), (45, "VRHOT1"), (46, "PROCHOT_CPU"), (47, "PROCHOT_GFX"),
    (56, "PPM"), (57, "FIT"))

# Residency counter -> throttler name. v1.6+: smu_v13_0_6_ppt.c maps its PMFW
# residency bits through smu_v13_0_6_throttler_map (PPT -> PPT0, THERMAL_SOCKET
# -> TEMP_GPU, THERMAL_HBM -> TEMP_MEM, THERMAL_VR -> TEMP_VR_GFX, PROCHOT ->
# PROCHOT_GFX). v3.0 (smu_v14_0_0): SPL/FPPT/SPPT are SMU_THROTTLER names;
# THM_CORE/GFX/SOC follow the APU map of renoir_ppt.c (THM_GFX -> TEMP_GPU);
# its single PROCHOT counter has no CPU/GFX split, so it is plain "PROCHOT".
RESIDENCY_THROTTLERS = (
    ("ppt_residency_acc", "PPT0"), ("socket_thm_residency_acc", "TEMP_GPU"),
    ("hbm_thm_residency_acc", "TEMP_MEM"), ("vr_thm_residency_acc", "TEMP_VR_GFX"),
    ("prochot_residency_acc", "PROCHOT_GFX"),
    ("throttle_residency_spl", "SPL"), ("throttle_residency_fppt", "FPPT"),
    ("throttle_residency_sppt", "SPPT"), ("throttle_residency_thm_core", "TEMP_CORE"),
    ("throttle_residency_thm_gfx", "TEMP_GPU"), ("throttle_residency_thm_soc", "TEMP_SOC"),
    ("throttle_residency_prochot", "PROCHOT"))

# -- v1.9 attribute encoding (formats.md §5.5) --------------------------------
ATTR_COUNT = struct.Struct("<i")     # int attr_count, after the header
ATTR_ENCODING = struct.Struct("<Q")  # unit 24-31, type 20-23, id 10-19, instances 0-9
ATTR_TYPES = "BbHhIiQq"              # enum amdgpu_metrics_attr_type, U8 .. S64
ATTR_UNITS = {   # enum amdgpu_metrics_attr_unit -> (name suffix, conversion)
    0: ("", RAW), 1: ("_mhz", RAW), 2: ("_c", RAW), 3: ("_w", RAW), 4: ("_ns", RAW),
    5: ("_ns", TEN), 6: ("_gts", RAW), 7: ("_gts", DECI), 8: ("_gb_s", RAW),
    9: ("_kb", RAW), 10: ("_pct", RAW)}
# enum amdgpu_metrics_attr_id 0..47 (formats.md §5.5), names as the fixed
# layouts use them; True = an array in v1.4-v1.8, so always a list here too.
# 48 TEMPERATURE_HBM was appended in 2026; later ids moved between patch
# revisions (TEMPERATURE_MID was inserted before AID), so they stay "attr_<id>".
ATTR_IDS = tuple((name, False) for name in (
    "temperature_hotspot", "temperature_mem", "temperature_vrsoc", "curr_socket_power",
    "average_gfx_activity", "average_umc_activity", "mem_max_bandwidth",
    "energy_accumulator", "system_clock_counter", "accumulation_counter",
    "prochot_residency_acc", "ppt_residency_acc", "socket_thm_residency_acc",
    "vr_thm_residency_acc", "hbm_thm_residency_acc", "gfxclk_lock_status",
    "pcie_link_width", "pcie_link_speed", "xgmi_link_width", "xgmi_link_speed",
    "gfx_activity_acc", "mem_activity_acc", "pcie_bandwidth_acc", "pcie_bandwidth_inst",
    "pcie_l0_to_recov_count_acc", "pcie_replay_count_acc", "pcie_replay_rover_count_acc",
    "pcie_nak_sent_count_acc", "pcie_nak_rcvd_count_acc")) + tuple(
    (name, True) for name in (
    "xgmi_read_data_acc", "xgmi_write_data_acc", "xgmi_link_status")) + (
    ("firmware_timestamp", False), ("current_gfxclks", True), ("current_socclks", True),
    ("current_vclk0s", True), ("current_dclk0s", True), ("current_uclk", False),
    ("num_partition", False), ("pcie_lc_perf_other_end_recovery", False)) + tuple(
    (name, True) for name in (
    "gfx_busy_inst", "jpeg_busy", "vcn_busy", "gfx_busy_acc", "gfx_below_host_limit_ppt_acc",
    "gfx_below_host_limit_thm_acc", "gfx_low_utilization_acc",
    "gfx_below_host_limit_total_acc", "temperature_hbm"))

# -- compiled layouts ---------------------------------------------------------
_Slot = namedtuple("_Slot", "name offset codec count conv sentinel sub")
_Layout = namedtuple("_Layout", "version slots size")


def _compile(rows, start):
    """Table rows -> (slots with absolute offsets, end offset). Holes are
    explicit rows, so offsets are plain running sums (no auto-alignment)."""
    slots, offset = [], start
    for name, fmt, count, conv in rows:
        if fmt == "x":
            offset += count
        elif isinstance(fmt, tuple):   # an array of element structs
            elem, elem_end = _compile(fmt, 0)
            slots.append(_Slot(name, offset, None, count, None, None, (tuple(elem), elem_end)))
            offset += count * elem_end
        else:
            codec = struct.Struct("<%d%s" % (count, fmt))
            slots.append(_Slot(name, offset, codec, count, conv, SENTINELS[fmt], None))
            offset += codec.size
    return slots, offset


def _make_layout(version, rows):
    slots, end = _compile(rows, HEADER_SIZE)
    return _Layout("%d.%d" % version, tuple(slots), end)


GPU_METRICS_LAYOUTS = dict((v, _make_layout(v, rows)) for v, rows in GPU_METRICS_TABLES.items())


# -- decoding -----------------------------------------------------------------

def _convert(raw, conv, sentinel):
    """One raw element -> None (all ones) or its value in the named unit."""
    if raw == sentinel:
        return None
    mul, div = conv
    if div == 1:
        return raw * mul
    return raw * mul / div


def _decode_slot(buf, limit, slot, base=0):
    """One field (scalar, or list per element) -> value; None if it lies past limit."""
    offset = base + slot.offset
    if offset + slot.codec.size > limit:
        return None
    raws = slot.codec.unpack_from(buf, offset)
    values = [_convert(raw, slot.conv, slot.sentinel) for raw in raws]
    return values[0] if slot.count == 1 else values


def _decode_struct_array(buf, limit, slot, out):
    """xcp_stats[8] -> out["xcp_<field>"] = [per partition value, ...]."""
    elem, elem_size = slot.sub
    for field in elem:
        out["%s_%s" % (slot.name, field.name)] = [
            _decode_slot(buf, limit, field, slot.offset + i * elem_size)
            for i in range(slot.count)]


def _decode_fixed(buf, limit, layout):
    """Every named field of a fixed layout, decoded within buf[:limit]."""
    out = {}
    for slot in layout.slots:
        if slot.sub is not None:
            _decode_struct_array(buf, limit, slot, out)
        else:
            out[slot.name] = _decode_slot(buf, limit, slot)
    _trim_partitions(out)
    return out


def _trim_partitions(out):
    """Only the first num_partition xcp_stats entries are meaningful."""
    count = out.get("num_partition")
    if not isinstance(count, int) or not 1 <= count <= 8:
        return
    for key in out:
        if key.startswith("xcp_") and isinstance(out[key], list):
            out[key] = out[key][:count]


def _attr_value(buf, offset, type_char, count, unit):
    """Values of one v1.9 attribute -> (suffix, scalar-or-list)."""
    suffix, conv = ATTR_UNITS.get(unit, ("_unit%d" % unit, RAW))
    raws = struct.unpack_from("<%d%s" % (count, type_char), buf, offset)
    return suffix, [_convert(raw, conv, SENTINELS[type_char]) for raw in raws]


def _decode_attrs(buf, limit):
    """v1.9: header, int attr_count, then attr_count packed (u64 encoding,
    values) entries; the walk stops at structure_size (formats.md §5.5)."""
    if limit < HEADER_SIZE + ATTR_COUNT.size:
        raise GpuMetricsError("gpu_metrics v1.9: structure_size %d has no attr_count" % limit)
    attr_count = ATTR_COUNT.unpack_from(buf, HEADER_SIZE)[0]
    out = {"attr_count": attr_count}
    offset, seen = HEADER_SIZE + ATTR_COUNT.size, 0
    while seen < attr_count and offset + ATTR_ENCODING.size <= limit:
        enc = ATTR_ENCODING.unpack_from(buf, offset)[0]
        unit, type_code = (enc >> 24) & 0xFF, (enc >> 20) & 0xF
        attr_id, count = (enc >> 10) & 0x3FF, enc & 0x3FF
        if type_code >= len(ATTR_TYPES):   # unknown width: nothing after it can be read
            break
        type_char = ATTR_TYPES[type_code]
        end = offset + ATTR_ENCODING.size + count * struct.calcsize("<" + type_char)
        if end > limit:
            break
        name, is_array = ATTR_IDS[attr_id] if attr_id < len(ATTR_IDS) else ("attr_%d" % attr_id, True)
        suffix, values = _attr_value(buf, offset + ATTR_ENCODING.size, type_char, count, unit)
        out[name + suffix] = values if is_array or count != 1 else values[0]
        offset, seen = end, seen + 1
    out["attr_table_incomplete"] = seen < max(attr_count, 0)
    return out


def parse_smu_throttler_bits(mask):
    """ASIC-independent SMU_THROTTLER_* u64 mask -> names in bit order; bits
    amdgpu_smu.h does not name become one "other". None stays None."""
    if mask is None:
        return None
    names = [name for bit, name in SMU_THROTTLER_BITS if mask >> bit & 1]
    known = 0
    for bit, _ in SMU_THROTTLER_BITS:
        known |= 1 << bit
    if mask & ~known:
        names.append("other")
    return names


def _apu_socket_power_w(out):
    """v2.x average_socket_power is mW on most APUs, W on some PMFW (Renoir
    family, drm/amd#2321; Raphael reads 27 beside a 27 W sensor). The socket
    includes the GFX/SoC/CPU rails, so as mW it cannot be far below their
    mW sum: below half of it, the firmware reported W. No rail known -> None."""
    raw = out.get("average_socket_power_raw")
    parts = [out.get(k) for k in ("average_cpu_power_w", "average_soc_power_w", "average_gfx_power_w")]
    rails_w = sum(p for p in parts if p is not None)
    if raw is None or rails_w <= 0:
        return None
    return raw / 1000.0 if raw / 1000.0 >= rails_w / 2 else float(raw)


def _add_derived(fmt, out):
    """Throttle names and the APU socket power, after the table decode.

    throttle_status (u32) is the raw, ASIC-dependent PMFW mask (formats.md
    §5.4): its bits differ per ASIC, so it is reported raw and never named.
    Names come only from indep_throttle_status (v1.3, v2.2-v2.4); the other
    versions get None (v1.6+/v3.0: see throttle_from_residency)."""
    out["throttle_reasons"] = parse_smu_throttler_bits(out.get("indep_throttle_status"))
    if fmt == 2:
        out["average_socket_power_w"] = _apu_socket_power_w(out)


def _read_header(data):
    """-> (buf, structure_size, format_revision, content_revision) or raise."""
    buf = bytes(data)
    if len(buf) < HEADER_SIZE:
        raise GpuMetricsError("gpu_metrics: %d bytes, shorter than the 4-byte header" % len(buf))
    size, fmt, content = HEADER.unpack_from(buf, 0)
    if size < HEADER_SIZE:
        raise GpuMetricsError("gpu_metrics: structure_size %d is smaller than the header" % size)
    if len(buf) < size:
        raise GpuMetricsError("gpu_metrics: %d bytes, structure_size says %d" % (len(buf), size))
    if fmt not in NEWEST_FIXED:
        raise GpuMetricsError("gpu_metrics: unknown format_revision %d" % fmt)
    return buf, size, fmt, content


def parse_gpu_metrics(data):
    """gpu_metrics bytes -> flat dict of values in the units their names say.

    Always present: format_revision, content_revision, structure_size,
    known_layout and decoded_as ("1.3", ...), newer_than_known (a content
    revision past the newest known one, decoded by that layout's prefix),
    size_mismatch (structure_size differs from the layout: only fields that
    fit are decoded, the rest are None) and throttle_reasons (list or None).
    Unsupported fields (all ones) are None, per element in lists. Bytes after
    structure_size are ignored. Raises GpuMetricsError, and nothing else."""
    buf, size, fmt, content = _read_header(data)
    version = (fmt, content)
    # Every content revision up to the newest of each format is known, so an
    # unknown one is newer: decode it by the newest fixed layout's prefix.
    newer = version != ATTRIBUTE_ENCODED and version not in GPU_METRICS_LAYOUTS
    if version == ATTRIBUTE_ENCODED:
        out, name, mismatch = _decode_attrs(buf, size), "1.9", False
    else:
        layout = GPU_METRICS_LAYOUTS[NEWEST_FIXED[fmt] if newer else version]
        out, name = _decode_fixed(buf, size, layout), layout.version
        mismatch = not newer and size != layout.size
    _add_derived(fmt, out)
    out.update(format_revision=fmt, content_revision=content, structure_size=size,
               known_layout=name, decoded_as=name, newer_than_known=newer,
               size_mismatch=mismatch)
    return out


def throttle_from_residency(prev, cur):
    """Two parsed samples (v1.6+ or v3.0) -> names of the throttlers whose
    residency counter grew between them, in RESIDENCY_THROTTLERS order.

    A counter that went down (driver reload, wrap) counts as not grown. None
    when no counter is present in both samples (first sample, or a version
    without residency counters: use throttle_reasons there)."""
    if not prev or not cur:
        return None
    names, compared = [], False
    for key, name in RESIDENCY_THROTTLERS:
        before, after = prev.get(key), cur.get(key)
        if isinstance(before, int) and isinstance(after, int):
            compared = True
            if after > before and name not in names:
                names.append(name)
    return names if compared else None
