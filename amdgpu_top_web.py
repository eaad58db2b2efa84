#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""amdgpu_top_web: a read-only web dashboard for live AMD GPU telemetry.

One file, Python standard library only. Copy it onto a GPU host and run::

    python3 amdgpu_top_web.py            # serve on :8080, open http://HOST:8080/
    python3 amdgpu_top_web.py --demo     # two synthetic GPUs, no AMD GPU needed
    python3 amdgpu_top_web.py --once --json   # one snapshot of every GPU, then exit
    python3 amdgpu_top_web.py --help     # every setting (APP_* variable and flag)

It shows, per GPU, load, clocks, temperatures, fan, power, VRAM/GTT and PCIe
link, pushed live over a WebSocket, and a "process top" of who uses the GPU.

Endpoints (GET/HEAD only; anything else is 405)::

    /                         the page (index.html beside this file)
    /api/gpus                 identity + latest metrics of every GPU
    /api/gpus/{id}/metrics    latest stats of one GPU
    /api/gpus/{id}/procs      latest process list of one GPU
    /api/gpus/{id}/history    rolling history (columnar) of one GPU
    /api/healthz /api/readyz /api/version
    /ws                       WebSocket: hello, stats, procs, pong, error

Threads::

    browser --HTTP--> ThreadingHTTPServer handler threads (answer from the cache)
    browser --/ws --> handshake in a handler thread, socket handed to the hub
    hub (ONE thread, selectors loop) <-- wake-up socketpair <-- cache.publish()
    cache (lock) <-- sampler thread per GPU (sysfs/hwmon, kept fds + pread)
                 <-- proc-scan thread (budgeted /proc walk, fdinfo)
                 <-- discovery thread (cards appearing / disappearing)

Contents (a section uses only the sections above it)::

     0. Header (this docstring) and the version guard
     1. Imports
     2. Constants
     3. Data types
     4. Pure parsers (sysfs, hwmon, ids files, config)
     5. WebSocket codec (sans-IO, RFC 6455)
     6. Pure HTTP helpers (routes, JSON messages, origin and host checks)
     7. Readers (thin filesystem I/O)
     8. GPU readers, samplers, discovery and the cache
     9. WebSocket hub
    10. HTTP server and handler
    11. CLI and main()

Needs CPython 3.8 or newer (the file still parses on older Pythons so that
the guard below can say so).
"""
from __future__ import print_function

import sys

if sys.version_info < (3, 8):
    sys.stderr.write("amdgpu_top_web needs Python 3.8 or newer (this is Python %d.%d).\n"
                     % tuple(sys.version_info[:2]))
    sys.exit(1)

__version__ = "0.1.0"

# ---------------------------------------------------------------------------
# 1. Imports
# ---------------------------------------------------------------------------

import argparse
import array
import base64
import codecs
import collections
import enum
import errno
import hashlib
import html
import ipaddress
import json
import logging
import math
import os
import random
import re
import selectors
import signal
import socket
import struct
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# ---------------------------------------------------------------------------
# 2. Constants
# ---------------------------------------------------------------------------

LOG = logging.getLogger("amdgpu_top_web")

AMD_DRIVER = "amdgpu"
HISTORY_WINDOW_S = 600.0        # rolling history kept per GPU (10 minutes)
REDISCOVER_INTERVAL_S = 2.0     # how often /sys/class/drm is listed again
MISSING_RECHECK_S = 30.0        # a missing sysfs file is tried again this rarely
REVALIDATE_S = 5.0              # a kept file's directory is checked this often
SLOW_FILES_EVERY_S = 2.0        # totals, caps and PCIe link change rarely
SYSFS_READ_SIZE = 4096
WS_MAX_MESSAGE_BYTES = 65536    # client messages are small JSON objects
WS_QUEUE_FRAMES = 64            # per-client outbound queue (drop-oldest past it)
WS_QUEUE_BYTES = 8 * 1024 * 1024
WS_RECV_SIZE = 65536
WS_SNDBUF_BYTES = 65536
HTTP_IDLE_TIMEOUT_S = 15.0
SHUTDOWN_GRACE_S = 0.6          # time clients get to answer our Close 1001

PCIE_GEN_BY_GTS = ((2.5, 1), (5.0, 2), (8.0, 3), (16.0, 4), (32.0, 5), (64.0, 6))

METRIC_KEYS = (
    "gpu_busy_pct", "mem_busy_pct", "sclk_mhz", "mclk_mhz",
    "temp_c", "temp_junction_c", "temp_mem_c", "fan_rpm", "fan_pct",
    "power_w", "power_cap_w", "power_fast_w", "power_fast_cap_w",
    "vddgfx_mv", "vddnb_mv",
    "vram_used_bytes", "vram_total_bytes", "vis_vram_used_bytes", "vis_vram_total_bytes",
    "gtt_used_bytes", "gtt_total_bytes",
    "pcie_gen", "pcie_speed_gts", "pcie_width", "runtime_status",
)
# The series kept in the rolling history (what the page draws as sparklines).
HISTORY_KEYS = (
    "gpu_busy_pct", "mem_busy_pct", "sclk_mhz", "temp_c", "temp_junction_c",
    "fan_rpm", "power_w", "vram_used_bytes", "gtt_used_bytes",
)

# Device attribute files: metric file key -> path relative to the device dir.
# "slow" files are re-read every SLOW_FILES_EVERY_S, the rest every tick.
DEVICE_FILES = (
    ("gpu_busy", "gpu_busy_percent", False),
    ("mem_busy", "mem_busy_percent", False),
    ("vram_used", "mem_info_vram_used", False),
    ("vis_vram_used", "mem_info_vis_vram_used", False),
    ("gtt_used", "mem_info_gtt_used", False),
    ("vram_total", "mem_info_vram_total", True),
    ("vis_vram_total", "mem_info_vis_vram_total", True),
    ("gtt_total", "mem_info_gtt_total", True),
    ("pcie_dpm", "pp_dpm_pcie", True),
    ("link_speed", "current_link_speed", True),
    ("link_width", "current_link_width", True),
)
RUNTIME_STATUS_FILE = "power/runtime_status"
DPM_FALLBACK_FILES = (("sclk_dpm", "pp_dpm_sclk"), ("mclk_dpm", "pp_dpm_mclk"))

TEMP_LABELS = {"edge": "temp_c", "junction": "temp_junction_c", "mem": "temp_mem_c"}
TEMP_INDEX_FALLBACK = {1: "temp_c", 2: "temp_junction_c", 3: "temp_mem_c"}
FREQ_LABELS = {"sclk": "sclk_mhz", "mclk": "mclk_mhz"}
FREQ_INDEX_FALLBACK = {1: "sclk_mhz", 2: "mclk_mhz"}
VOLT_LABELS = {"vddgfx": "vddgfx_mv", "vddnb": "vddnb_mv"}
POWER_PRIMARY_LABELS = ("PPT", "slowPPT")
POWER_FAST_LABEL = "fastPPT"

NAME_FILES = ("libdrm/amdgpu.ids", "hwdata/pci.ids", "misc/pci.ids")

CDN_ORIGIN = "https://cdn.jsdelivr.net"
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*$")
DPM_LINE_RE = re.compile(r"^\s*([0-9]+|[SF]):\s*([0-9]+)\s*mhz\b(.*)$", re.IGNORECASE)
PCIE_DPM_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*GT/s,\s*x([0-9]+)", re.IGNORECASE)
LINK_SPEED_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*GT/s", re.IGNORECASE)
GPU_PATH_RE = re.compile(r"^/api/gpus/([A-Za-z0-9_.:-]{1,64})/(metrics|procs|history)$")
HWMON_FILE_RE = re.compile(r"^(temp|freq|in|power|fan|pwm)([0-9]+)_([a-z_]+)$")

# ---------------------------------------------------------------------------
# 3. Data types
# ---------------------------------------------------------------------------


class ConfigError(Exception):
    """A bad setting; the message starts with the variable's name."""


# One row per setting: the APP_* variable, its flag, default, kind and help.
Setting = collections.namedtuple("Setting", "env flag field default kind help")

SETTINGS = (
    Setting("APP_LISTEN_ADDR", "--listen", "listen", ":8080", "addr",
            "address to listen on: HOST:PORT, :PORT or PORT (all interfaces)"),
    Setting("APP_SAMPLE_INTERVAL", "--interval", "interval_s", "250ms", "interval",
            "sysfs sampling interval, 100ms to 2s"),
    Setting("APP_ALLOWED_ORIGINS", "--allowed-origins", "allowed_origins", "", "origins",
            "WebSocket origins allowed: empty = same origin, * = any, or a comma list"),
    Setting("APP_DEFAULT_GPU", "--default-gpu", "default_gpu", "auto", "gpu",
            "GPU the page shows first (card id) or auto"),
    Setting("APP_ENABLE_PROMETHEUS", "--enable-prometheus", "enable_prometheus", "false", "bool",
            "serve Prometheus text at /metrics"),
    Setting("APP_LOG_LEVEL", "--log-level", "log_level", "INFO", "level",
            "DEBUG, INFO, WARNING or ERROR"),
    Setting("APP_SYSFS_ROOT", "--sysfs-root", "sysfs_root", "/sys", "path", "sysfs mount"),
    Setting("APP_PROC_ROOT", "--proc-root", "proc_root", "/proc", "path", "procfs mount"),
    Setting("APP_DEV_ROOT", "--dev-root", "dev_root", "/dev", "path", "device nodes"),
    Setting("APP_DEBUGFS_ROOT", "--debugfs-root", "debugfs_root", "/sys/kernel/debug", "path",
            "debugfs mount (optional)"),
    Setting("APP_SHARE_ROOT", "--share-root", "share_root", "/usr/share", "path",
            "where libdrm/amdgpu.ids and hwdata/pci.ids live (GPU names)"),
    Setting("APP_WS_MAX_CLIENTS", "--ws-max-clients", "ws_max_clients", "1024", "count",
            "most WebSocket clients at once"),
    Setting("APP_WS_WRITE_TIMEOUT", "--ws-write-timeout", "ws_write_timeout_s", "3s", "timeout",
            "close a WebSocket client that accepts no data for this long"),
    Setting("APP_WS_READ_TIMEOUT", "--ws-read-timeout", "ws_read_timeout_s", "30s", "timeout",
            "close a WebSocket client silent this long (pinged at half of it)"),
    Setting("APP_PROC_ENABLE", "--proc-enable", "proc_enable", "true", "bool",
            "scan /proc for processes using the GPUs"),
    Setting("APP_PROC_SCAN_INTERVAL", "--proc-scan-interval", "proc_scan_interval_s", "2s",
            "scan_interval", "full /proc walk interval, 500ms to 60s"),
    Setting("APP_PROC_MAX_PIDS", "--proc-max-pids", "proc_max_pids", "5000", "count",
            "most PIDs looked at per scan"),
    Setting("APP_PROC_MAX_FDS_PER_PID", "--proc-max-fds-per-pid", "proc_max_fds_per_pid", "64",
            "count", "most fds looked at per PID"),
    Setting("APP_DEMO_PROCESSES", "--demo-processes", "demo_processes", "8", "count",
            "with --demo: synthetic processes per GPU"),
    Setting("APP_VENDOR_DIR", "--vendor-dir", "vendor_dir", "", "optpath",
            "npm node_modules folder to serve the page's modules from (air-gapped use)"),
)

_MODE_FIELDS = ("demo", "once", "json", "show_help", "show_version")

Config = collections.namedtuple(
    "Config", ["listen_host", "listen_port"] + [s.field for s in SETTINGS if s.field != "listen"]
    + list(_MODE_FIELDS))

# What a GPU is, as the page and the API see it (plus where to read it).
GpuInfo = collections.namedtuple(
    "GpuInfo", "id pci pci_id revision name render_node driver apu demo device_dir hwmon_dir")

# One published frame: the JSON payload (bytes) and the same as a WebSocket frame.
OutFrame = collections.namedtuple("OutFrame", "gpu_id kind payload wire")

# ---------------------------------------------------------------------------
# 4. Pure parsers
# ---------------------------------------------------------------------------


def clean_text(raw):
    """bytes or str from sysfs -> stripped str (NUL padding removed) or None if empty."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    text = raw.replace("\x00", "").strip()
    return text or None


def parse_int(raw):
    """'1234\\n' -> 1234; anything else -> None."""
    text = clean_text(raw)
    if text is None:
        return None
    try:
        return int(text, 10)
    except ValueError:
        return None


def parse_uevent(raw):
    """KEY=VALUE lines (device/uevent) -> dict."""
    out = {}
    for line in (clean_text(raw) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_dpm_current_mhz(raw):
    """pp_dpm_sclk/mclk -> MHz of the current (`*`) level, or None.

    Accepts every form of formats.md §2.1: "0: 300Mhz " (trailing space),
    "1: 77Mhz *", RDNA3's "0: 500Mhz" (no trailing space) and the
    deep-sleep "S: 19Mhz *" line. When several lines carry `*` the first wins.
    """
    for line in (clean_text(raw) or "").splitlines():
        match = DPM_LINE_RE.match(line)
        if match and match.group(3).strip().endswith("*"):
            return int(match.group(2))
    return None


def parse_pcie_dpm(raw):
    """pp_dpm_pcie -> (speed GT/s, width) of the `*` line, or None."""
    for line in (clean_text(raw) or "").splitlines():
        if not line.rstrip().endswith("*"):
            continue
        match = PCIE_DPM_RE.search(line)
        if match:
            return float(match.group(1)), int(match.group(2))
    return None


def parse_link_speed(raw):
    """current_link_speed '16.0 GT/s PCIe' -> 16.0 (None for 'Unknown')."""
    match = LINK_SPEED_RE.match(clean_text(raw) or "")
    return float(match.group(1)) if match else None


def pcie_gen_from_speed(gts):
    """8.0 -> 3 (PCIe generation for a per-lane rate), None when unknown."""
    if gts is None:
        return None
    for rate, gen in PCIE_GEN_BY_GTS:
        if abs(gts - rate) < 0.05:
            return gen
    return None


def parse_amdgpu_ids(text, device_id, revision):
    """libdrm amdgpu.ids text -> marketing name for (device, revision), or None.

    Lines are "DEVICE,\\tREV,\\tNAME" in upper-case hex; like libdrm, only an
    exact (device, revision) match counts.
    """
    want = (device_id.upper(), revision.upper())
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and (parts[0].upper(), parts[1].upper()) == want:
            return parts[2]
    return None


def parse_pci_ids(text, vendor_id, device_id):
    """pci.ids text -> the device's name, made readable ("AMD Radeon RX Vega 56/64").

    pci.ids lists "VVVV  Vendor" then TAB-indented "\\tDDDD  Device" lines.
    The bracketed part is the marketing name when present.
    """
    vendor_id, device_id = vendor_id.lower(), device_id.lower()
    in_vendor = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            in_vendor = line[:4].lower() == vendor_id
        elif in_vendor and not line.startswith("\t\t") and line[1:5].lower() == device_id:
            return readable_pci_name(line[5:].strip())
    return None


def readable_pci_name(name):
    """'Vega 10 XL/XT [Radeon RX Vega 56/64]' -> 'AMD Radeon RX Vega 56/64'."""
    match = re.search(r"\[([^\]]+)\]\s*$", name)
    if match:
        name = match.group(1)
    return name if name.upper().startswith("AMD") else "AMD " + name


def parse_duration(text):
    """'250ms', '2s', '1.5s', '2' (seconds) -> seconds as float; ValueError otherwise."""
    match = DURATION_RE.match(text or "")
    if not match:
        raise ValueError("expected a duration like 250ms, 2s or 1.5s")
    value = float(match.group(1))
    return value / 1000.0 if match.group(2) == "ms" else value


def parse_bool(text):
    lowered = (text or "").strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_listen_addr(text):
    """':8080' -> ('', 8080); '127.0.0.1:80'; '[::1]:8080'; '8080'."""
    text = (text or "").strip()
    host, port = "", text
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else ""
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 address needs brackets, e.g. [::1]:8080")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, :PORT or PORT with a port 0-65535")
    return host, int(port)


def parse_origins(text):
    """'' -> None (same origin), '*' -> '*', 'https://a, http://b:8080' -> tuple."""
    text = (text or "").strip()
    if not text:
        return None
    if text == "*":
        return "*"
    origins = []
    for item in text.split(","):
        origin = normalize_origin(item.strip())
        if origin is None:
            raise ValueError("%r is not an origin like https://host[:port]" % item.strip())
        origins.append(origin)
    return tuple(origins)


def normalize_origin(origin):
    """'HTTP://Host:80' -> 'http://host'; None when it is not an http(s) origin."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = "[%s]" % host
    default_port = 80 if parts.scheme == "http" else 443
    if port is None or port == default_port:
        return "%s://%s" % (parts.scheme, host)
    return "%s://%s:%d" % (parts.scheme, host, port)


def _convert_setting(setting, raw):
    """One raw string -> the typed value for a Setting (ValueError when bad)."""
    kind = setting.kind
    if kind == "interval":
        value = parse_duration(raw)
        if not 0.1 <= value <= 2.0:
            raise ValueError("must be between 100ms and 2s")
        return value
    if kind == "scan_interval":
        value = parse_duration(raw)
        if not 0.5 <= value <= 60.0:
            raise ValueError("must be between 500ms and 60s")
        return value
    if kind == "timeout":
        value = parse_duration(raw)
        if not 0.05 <= value <= 3600.0:
            raise ValueError("must be between 50ms and 1h")
        return value
    if kind == "count":
        if not raw.strip().isdigit() or not 1 <= int(raw) <= 1000000:
            raise ValueError("must be a whole number from 1 to 1000000")
        return int(raw)
    return _convert_simple_setting(kind, raw)


def _convert_simple_setting(kind, raw):
    if kind == "bool":
        return parse_bool(raw)
    if kind == "level":
        level = raw.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level
    if kind == "origins":
        return parse_origins(raw)
    if kind == "gpu":
        value = raw.strip()
        if not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", value):
            raise ValueError("must be auto or a card id such as card1")
        return value
    if kind == "path":
        if not raw.strip():
            raise ValueError("must not be empty")
        return raw.strip()
    if kind == "optpath":
        return raw.strip() or None
    return parse_listen_addr(raw)


class _ArgParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing and exiting."""

    def error(self, message):
        raise ConfigError("command line: %s" % message)


def build_arg_parser():
    parser = _ArgParser(prog="amdgpu_top_web.py", add_help=False,
                        description="Live AMD GPU telemetry in the browser.")
    for setting in SETTINGS:
        parser.add_argument(setting.flag, dest=setting.env, default=None, metavar="VALUE",
                            help="%s (%s, default %r)" % (setting.help, setting.env, setting.default))
    parser.add_argument("--demo", action="store_true", help="serve two synthetic GPUs")
    parser.add_argument("--once", action="store_true", help="sample every GPU once and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON")
    parser.add_argument("--version", dest="show_version", action="store_true")
    parser.add_argument("-h", "--help", dest="show_help", action="store_true")
    return parser


def parse_config(argv, environ):
    """argv (without the program name) + environment -> Config. Flags win over APP_*."""
    args = build_arg_parser().parse_args(argv)
    values = {}
    for setting in SETTINGS:
        flag_value = getattr(args, setting.env)
        raw = flag_value if flag_value is not None else environ.get(setting.env, setting.default)
        try:
            values[setting.field] = _convert_setting(setting, raw)
        except ValueError as exc:
            name = setting.env if flag_value is None else setting.flag
            raise ConfigError("%s=%r: %s" % (name, raw, exc))
    values["listen_host"], values["listen_port"] = values.pop("listen")
    for field in _MODE_FIELDS:
        values[field] = bool(getattr(args, field))
    if values["json"] and not values["once"]:
        raise ConfigError("--json: only meaningful with --once")
    return Config(**values)


def format_help():
    return build_arg_parser().format_help()


# -- hwmon planning: which file gives which metric (labels read once) --------


def plan_hwmon(names, labels):
    """hwmon file names + {file: label text} -> {metric key: file name}.

    Temperatures, clocks and voltages are chosen by label (edge/junction/mem,
    sclk/mclk, vddgfx/vddnb), falling back to the index when a chip has no
    labels. Power: the PPT (Van Gogh: slowPPT) sensor's *_average, else
    *_input (many GPUs expose only one); Van Gogh's fastPPT sits on power2.
    """
    plan = {}
    by_kind = collections.defaultdict(dict)
    for name in names:
        match = HWMON_FILE_RE.match(name)
        if match:
            by_kind[match.group(1)].setdefault(int(match.group(2)), set()).add(match.group(3))
    _plan_labelled(plan, by_kind["temp"], "temp", labels, TEMP_LABELS, TEMP_INDEX_FALLBACK)
    _plan_labelled(plan, by_kind["freq"], "freq", labels, FREQ_LABELS, FREQ_INDEX_FALLBACK)
    _plan_labelled(plan, by_kind["in"], "in", labels, VOLT_LABELS, {})
    _plan_power(plan, by_kind["power"], labels)
    if "input" in by_kind["fan"].get(1, ()):
        plan["fan_rpm"] = "fan1_input"
    if "pwm1" in names:
        plan["pwm"] = "pwm1"
        if "pwm1_max" in names:
            plan["pwm_max"] = "pwm1_max"   # without it, compute_fan_pct assumes 255
    return plan


def _plan_labelled(plan, sensors, prefix, labels, by_label, by_index):
    for index in sorted(sensors):
        if "input" not in sensors[index]:
            continue
        label = (labels.get("%s%d_label" % (prefix, index)) or "").strip().lower()
        key = by_label.get(label) if label else by_index.get(index)
        if key and key not in plan:
            plan[key] = "%s%d_input" % (prefix, index)


def _plan_power(plan, sensors, labels):
    for index in sorted(sensors):
        label = (labels.get("power%d_label" % index) or "").strip()
        if label == POWER_FAST_LABEL:
            keys = ("power_fast_w", "power_fast_cap_w")
        elif label in POWER_PRIMARY_LABELS or (not label and index == 1):
            keys = ("power_w", "power_cap_w")
        else:
            continue
        if keys[0] in plan:
            continue
        kinds = sensors[index]
        for kind in ("average", "input"):
            if kind in kinds:
                plan[keys[0]] = "power%d_%s" % (index, kind)
                break
        if "cap" in kinds:
            plan[keys[1]] = "power%d_cap" % index


# -- raw file contents -> metrics --------------------------------------------


def _scaled(raw, divisor, digits):
    value = parse_int(raw)
    return None if value is None else round(value / divisor, digits)


def compute_metrics(raw, apu):
    """{file key: bytes or None} -> the stats metrics dict (units converted once).

    File keys: the DEVICE_FILES keys, 'runtime_status', 'sclk_dpm'/'mclk_dpm'
    and the plan_hwmon metric keys ('temp_c' holds temp1_input's bytes, etc.).
    """
    get = raw.get
    metrics = dict.fromkeys(METRIC_KEYS)
    metrics["runtime_status"] = clean_text(get("runtime_status"))
    metrics["gpu_busy_pct"] = _clamp_pct(parse_int(get("gpu_busy")))
    metrics["mem_busy_pct"] = _clamp_pct(parse_int(get("mem_busy")))
    for key in ("temp_c", "temp_junction_c", "temp_mem_c"):
        metrics[key] = _scaled(get(key), 1000.0, 1)
    for key in ("power_w", "power_cap_w", "power_fast_w", "power_fast_cap_w"):
        metrics[key] = _scaled(get(key), 1e6, 3)
    for key in ("vddgfx_mv", "vddnb_mv"):
        metrics[key] = parse_int(get(key))
    metrics["sclk_mhz"] = _clock_mhz(get("sclk_mhz"), get("sclk_dpm"))
    metrics["mclk_mhz"] = _clock_mhz(get("mclk_mhz"), get("mclk_dpm"))
    metrics["fan_rpm"] = parse_int(get("fan_rpm"))
    metrics["fan_pct"] = compute_fan_pct(parse_int(get("pwm")), parse_int(get("pwm_max")))
    for name in ("vram_used", "vram_total", "vis_vram_used", "vis_vram_total",
                 "gtt_used", "gtt_total"):
        metrics[name + "_bytes"] = parse_int(get(name))
    if not apu:
        metrics.update(compute_pcie(get("pcie_dpm"), get("link_speed"), get("link_width")))
    return metrics


def _clamp_pct(value):
    return None if value is None or value < 0 else min(value, 100)


def _clock_mhz(hwmon_hz, dpm_text):
    """hwmon freq*_input (Hz) first, else the `*` line of pp_dpm_*."""
    hz = parse_int(hwmon_hz)
    if hz is not None:
        return int(round(hz / 1e6))
    return parse_dpm_current_mhz(dpm_text)


def compute_fan_pct(pwm, pwm_max):
    if pwm is None:
        return None
    pwm_max = pwm_max or 255
    return round(min(max(pwm, 0), pwm_max) * 100.0 / pwm_max, 1)


def compute_pcie(pcie_dpm, link_speed, link_width):
    """PCIe link of a dGPU: the `*` line of pp_dpm_pcie first (on Vega10 and later
    the device's own current_link_* shows an internal switch link), else
    current_link_speed/width."""
    found = parse_pcie_dpm(pcie_dpm)
    if found is None:
        speed, width = parse_link_speed(link_speed), parse_int(link_width)
    else:
        speed, width = found
    return {"pcie_speed_gts": speed, "pcie_width": width, "pcie_gen": pcie_gen_from_speed(speed)}

# ---------------------------------------------------------------------------
# 5. WebSocket codec (sans-IO, RFC 6455)
# ---------------------------------------------------------------------------

# Bytes in, frames and messages out; every violation raises ProtocolError
# carrying the close code to send (RFC 6455 §7.1.7 "Fail the WebSocket
# Connection"). No sockets, clocks or threads: only the hub touches sockets.
# (The three RFC numbers below may move to section 2, "Constants".)

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3, §4.2.2
WS_VERSION = "13"                                 # RFC 6455 §4.1 item 9
WS_MAX_CONTROL_PAYLOAD = 125                      # RFC 6455 §5.5


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8); 3-7 and 11-15 are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 §7.4.1, §11.7; 1012-1015 from the IANA
    "WebSocket Close Code Number Registry")."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005       # never sent in a frame (§7.4.1)
    ABNORMAL_CLOSURE = 1006     # never sent in a frame (§7.4.1)
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015        # never sent in a frame (§7.4.1)


class ProtocolError(Exception):
    """A peer broke RFC 6455; the connection must be failed with
    ``close_code`` and ``reason`` (a short ASCII text fit for a CLOSE frame).
    """

    def __init__(self, close_code, reason):
        super().__init__(close_code, reason)
        self.close_code = CloseCode(close_code)
        self.reason = reason

    def __str__(self):
        code = self.close_code
        return "%d %s: %s" % (code, code.name, self.reason)


# One decoded frame (RFC 6455 §5.2); ``payload`` is already unmasked.
Frame = collections.namedtuple("Frame", "opcode payload fin")
Frame.__new__.__defaults__ = (True,)

# A whole message: TEXT -> str, BINARY/PING/PONG -> bytes,
# CLOSE -> (code or None, reason str).
Message = collections.namedtuple("Message", "opcode data")


def _is_control(opcode):
    """Control opcodes have the high bit of the 4-bit opcode set (§5.5)."""
    return bool(opcode & 0x8)


def _is_valid_close_code(code):
    """Codes a peer may put in a CLOSE frame (RFC 6455 §7.4.1-§7.4.2).

    1000-1003 and 1007-1011 are defined by the RFC, 1012-1014 registered
    with IANA since; 1004 is reserved and 1005/1006/1015 must never be sent;
    3000-3999 are for libraries and frameworks, 4000-4999 private use.
    """
    return (1000 <= code <= 1003 or 1007 <= code <= 1014
            or 3000 <= code <= 4999)


def _apply_mask(data, mask):
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3).

    Masking and unmasking are the same operation. One big-integer XOR runs
    in C at memory speed (tens of milliseconds for 16 MiB), where a
    per-byte Python loop would take seconds.
    """
    length = len(data)
    key = (bytes(mask) * (length // 4 + 1))[:length]
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
    return mixed.to_bytes(length, "little")


def _encode_header(first_byte, mask_bit, length):
    """Base framing header with the minimal length encoding (§5.2):
    7 bits up to 125, then 126 + 16 bits, then 127 + 64 bits."""
    if length < 126:
        return struct.pack("!BB", first_byte, mask_bit | length)
    if length < 0x10000:
        return struct.pack("!BBH", first_byte, mask_bit | 126, length)
    return struct.pack("!BBQ", first_byte, mask_bit | 127, length)


def encode_frame(opcode, payload, fin=True, mask=None):
    """Encode one frame (RFC 6455 §5.2).

    Server frames pass ``mask=None``: a server must not mask (§5.1), so the
    result is just header + payload. Tests pass a 4-byte ``mask`` to build
    client frames. Raises ValueError for a control frame that is fragmented
    or longer than 125 bytes (§5.5) or a mask that is not 4 bytes.
    """
    length = len(payload)
    if _is_control(opcode) and (not fin or length > WS_MAX_CONTROL_PAYLOAD):
        raise ValueError("control frames must be final and at most 125 bytes")
    first_byte = (0x80 if fin else 0) | opcode
    if mask is None:
        return _encode_header(first_byte, 0, length) + bytes(payload)
    if len(mask) != 4:
        raise ValueError("a frame mask is exactly 4 bytes")
    header = _encode_header(first_byte, 0x80, length)
    return header + bytes(mask) + _apply_mask(payload, mask)


def _truncate_utf8(text, limit):
    """``text`` as UTF-8, cut to ``limit`` bytes on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode_close(code, reason=""):
    """A whole server CLOSE frame (RFC 6455 §5.5.1).

    The body is the 2-byte code then the UTF-8 reason, cut on a character
    boundary so the payload stays within 125 bytes. ``code=None`` sends an
    empty body (allowed by §5.5.1; the peer then sees 1005). Raises
    ValueError for a code that may not appear on the wire (§7.4).
    """
    if code is None:
        return encode_frame(Opcode.CLOSE, b"")
    if not _is_valid_close_code(code):
        raise ValueError("close code %d may not be sent" % code)
    reason_bytes = _truncate_utf8(reason, WS_MAX_CONTROL_PAYLOAD - 2)
    return encode_frame(Opcode.CLOSE, struct.pack("!H", code) + reason_bytes)


def _as_close_code(code):
    """A CloseCode member when the code is named, else the plain int."""
    try:
        return CloseCode(code)
    except ValueError:
        return code


def parse_close_payload(payload):
    """Split a CLOSE body into ``(code or None, reason)`` (RFC 6455 §5.5.1).

    An empty body means "no status" (None, ""). A 1-byte body or a code
    outside §7.4 raises 1002; a reason that is not UTF-8 raises 1007 (§8.1).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "1-byte close payload")
    code = struct.unpack_from("!H", payload)[0]
    if not _is_valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                            "invalid close code %d" % code)
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA,
                            "close reason is not UTF-8")
    return _as_close_code(code), reason


# Extra length bytes after the 7-bit length field (§5.2 "Payload length").
_EXTENDED_LENGTH_SIZE = {126: 2, 127: 8}
_OPCODES = frozenset(Opcode)  # all others are reserved (§5.2)


class FrameDecoder:
    """Incremental frame parser (RFC 6455 §5.2): ``feed()`` bytes as they
    arrive, then call ``next_frame()`` until it returns None.

    The input lives in one bytearray with a read offset. Consumed bytes are
    dropped only once they make up at least half of the buffer, so every
    byte is copied O(1) times whatever the chunking: O(n) overall. The
    header is validated as soon as it is buffered, so an oversized frame is
    refused (1009) before its payload is read. Lengths in a longer encoding
    than needed are accepted: §5.2's "minimal number of bytes MUST be used"
    binds senders, and refusing them buys nothing. After a ProtocolError
    the decoder is unusable and the connection must be failed (§7.1.7).
    """

    def __init__(self, max_frame_size, require_mask=True):
        self.max_frame_size = max_frame_size
        self.require_mask = require_mask  # a server requires it (§5.1)
        self._buffer = bytearray()
        self._offset = 0
        self._header = None  # (fin, opcode, mask, length) awaiting payload

    def feed(self, data):
        """Append received bytes."""
        if self._offset and self._offset * 2 >= len(self._buffer):
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def next_frame(self):
        """Return the next whole Frame, or None until one is buffered."""
        if self._header is None:
            self._header = self._parse_header()
            if self._header is None:
                return None
        fin, opcode, mask, length = self._header
        end = self._offset + length
        if len(self._buffer) < end:
            return None
        chunk = self._buffer[self._offset:end]
        self._offset, self._header = end, None
        if end == len(self._buffer):  # all consumed: free it while idle
            self._buffer.clear()
            self._offset = 0
        payload = bytes(chunk) if mask is None else _apply_mask(chunk, mask)
        return Frame(Opcode(opcode), payload, fin)

    def _parse_header(self):
        """Parse and check the header at the read offset; on success move
        past it and return (fin, opcode, mask, length), else None."""
        buffer, start = self._buffer, self._offset
        if len(buffer) - start < 2:
            return None
        first, second = buffer[start], buffer[start + 1]
        self._check_first_bytes(first, second)
        length = second & 0x7F
        masked = bool(second & 0x80)
        size = 2 + _EXTENDED_LENGTH_SIZE.get(length, 0) + (4 if masked else 0)
        if len(buffer) - start < size:
            return None
        if length == 126:
            length = struct.unpack_from("!H", buffer, start + 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", buffer, start + 2)[0]
        opcode = first & 0x0F
        self._check_length(opcode, length)
        mask = bytes(buffer[start + size - 4:start + size]) if masked else None
        self._offset = start + size
        return bool(first & 0x80), opcode, mask, length

    def _check_first_bytes(self, first, second):
        """Rules decidable from the first two header bytes (§5.2, §5.5)."""
        opcode = first & 0x0F
        if first & 0x70:
            # No extension was negotiated, so RSV1-3 must be 0 (§5.2).
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if opcode not in _OPCODES:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "reserved opcode %d" % opcode)
        if _is_control(opcode) and not first & 0x80:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "fragmented control frame")
        if self.require_mask and not second & 0x80:
            # A server must close on an unmasked client frame (§5.1).
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "unmasked frame")

    def _check_length(self, opcode, length):
        """Rules on the decoded payload length (§5.2, §5.5, §10.4)."""
        if length >> 63:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "64-bit length with the high bit set")
        if _is_control(opcode) and length > WS_MAX_CONTROL_PAYLOAD:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "control frame longer than 125 bytes")
        if length > self.max_frame_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                "frame exceeds %d bytes" % self.max_frame_size)



class MessageAssembler:
    """Joins frames into messages (RFC 6455 §5.4 fragmentation).

    Control frames may arrive between fragments and come back at once as
    their own Message. Text is checked with an incremental UTF-8 decoder,
    fragment by fragment, so an invalid sequence fails (1007) without
    waiting for the final fragment (§5.6, §8.1).
    """

    def __init__(self, max_message_size):
        self.max_message_size = max_message_size
        self._opcode = None  # TEXT or BINARY while a message is open
        self._parts = []
        self._size = 0
        self._utf8 = None    # incremental decoder while a TEXT is open

    def add(self, frame):
        """Take one frame; return a Message once one is complete, else None."""
        opcode = frame.opcode
        if _is_control(opcode):
            return _control_message(frame)
        if opcode == Opcode.CONTINUATION:
            if self._opcode is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "continuation without a message")
        elif opcode not in (Opcode.TEXT, Opcode.BINARY):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "reserved opcode %d" % opcode)
        elif self._opcode is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "new message inside a fragmented one")
        else:
            self._start(opcode)
        self._append(frame.payload, frame.fin)
        return self._finish() if frame.fin else None

    def _start(self, opcode):
        self._opcode, self._parts, self._size = opcode, [], 0
        if opcode == Opcode.TEXT:
            self._utf8 = codecs.getincrementaldecoder("utf-8")()

    def _append(self, payload, final):
        self._size += len(payload)
        if self._size > self.max_message_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message exceeds "
                                "%d bytes" % self.max_message_size)
        if self._utf8 is None:
            self._parts.append(payload)
            return
        try:
            self._parts.append(self._utf8.decode(payload, final))
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_FRAME_PAYLOAD_DATA,
                                "text is not valid UTF-8")

    def _finish(self):
        joiner = "" if self._utf8 is not None else b""
        message = Message(Opcode(self._opcode), joiner.join(self._parts))
        self._opcode, self._parts, self._size, self._utf8 = None, [], 0, None
        return message


def _control_message(frame):
    """A control frame as a Message (§5.5): CLOSE bodies are parsed."""
    if frame.opcode == Opcode.CLOSE:
        return Message(Opcode.CLOSE, parse_close_payload(frame.payload))
    if frame.opcode in (Opcode.PING, Opcode.PONG):
        return Message(Opcode(frame.opcode), bytes(frame.payload))
    raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                        "reserved opcode %d" % frame.opcode)

# ---------------------------------------------------------------------------
# 6. Pure HTTP helpers: routes, JSON messages, origin and host checks
# ---------------------------------------------------------------------------

class HandshakeError(Exception):
    """A refused opening handshake (RFC 6455 §4.2.1): the HTTP ``status``,
    a one-line ``message`` for the body, and extra response ``headers``."""

    def __init__(self, status, message, headers=None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def __str__(self):
        return "%d %s" % (self.status, self.message)


def accept_key(key):
    """Sec-WebSocket-Accept for a client key (RFC 6455 §4.2.2 item 5.4):
    base64 of the SHA-1 of the key followed by the GUID."""
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _header_tokens(value):
    """Lower-cased tokens of a comma-separated header (RFC 9110 §5.6.1)."""
    return {token.strip().lower() for token in value.split(",")}


def _is_valid_key(key):
    """A Sec-WebSocket-Key is base64 of exactly 16 bytes (§4.1 item 7)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error, or non-ASCII text
        return False


def check_upgrade(method, headers):
    """Check a client's opening handshake (RFC 6455 §4.2.1); return its key.

    ``headers`` maps lower-cased names to values, repeated fields joined
    with ", ". Raises HandshakeError: 405 for a method other than GET,
    426 (with ``Upgrade: websocket``) when the Upgrade or Connection tokens
    are missing, 426 (with ``Sec-WebSocket-Version: 13``, §4.4) for another
    version, 400 for a bad key. Host and Origin are checked elsewhere.
    """
    if method != "GET":
        raise HandshakeError(405, "WebSocket handshake must use GET",
                             {"Allow": "GET"})
    if "websocket" not in _header_tokens(headers.get("upgrade", "")):
        raise HandshakeError(426, "expected Upgrade: websocket",
                             {"Upgrade": "websocket"})
    if "upgrade" not in _header_tokens(headers.get("connection", "")):
        raise HandshakeError(426, "expected Connection: Upgrade",
                             {"Upgrade": "websocket"})
    if headers.get("sec-websocket-version", "").strip() != WS_VERSION:
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version",
                             {"Sec-WebSocket-Version": WS_VERSION})
    key = headers.get("sec-websocket-key", "").strip()
    if not _is_valid_key(key):
        raise HandshakeError(400, "Sec-WebSocket-Key is not base64 of "
                                  "16 bytes")
    return key


def build_upgrade_response(key):
    """The 101 answer to a valid opening handshake (RFC 6455 §4.2.2)."""
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key)).encode("ascii")

LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")
SCRIPT_BLOCK_RE = re.compile(r"<script\b[^>]*>(.*?)</script>", re.IGNORECASE | re.DOTALL)


def format_ts(epoch_s):
    """1760274425.1234 -> '2025-10-12T13:07:05.123Z' (UTC, milliseconds)."""
    millis = int(round(epoch_s * 1000))
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


def json_bytes(obj):
    """Compact UTF-8 JSON; NaN/inf are bugs upstream, so refuse them."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def identity_json(info):
    return {"id": info.id, "pci": info.pci, "pci_id": info.pci_id, "revision": info.revision,
            "name": info.name, "render_node": info.render_node, "driver": info.driver,
            "apu": info.apu, "demo": info.demo}


def build_stats_message(gpu_id, epoch_s, metrics):
    return {"type": "stats", "gpu_id": gpu_id, "ts": format_ts(epoch_s), "metrics": metrics}


EMPTY_PROCS = {"processes": [], "capabilities": {"vram_gtt_from_fdinfo": False,
                                                 "engine_time_from_fdinfo": False, "engines": []},
               "totals": {"vram_bytes": 0, "gtt_bytes": 0, "cpu_bytes": 0,
                          "gpu_time_ms_per_s": None, "clients": 0, "processes": 0}}


def build_procs_message(gpu_id, epoch_s, entry, visibility, scan_stats):
    """One GPU's slice of a scan result -> the procs frame (SPEC §5)."""
    entry = entry or EMPTY_PROCS
    return {"type": "procs", "gpu_id": gpu_id, "ts": format_ts(epoch_s),
            "capabilities": entry["capabilities"], "processes": entry["processes"],
            "totals": entry["totals"], "visibility": visibility,
            "scan": {"cut_short": bool(scan_stats.get("cut_short")),
                     "duration_s": scan_stats.get("duration_s")}}


def route(path):
    """Request path (no query) -> (route name, gpu id or None)."""
    if path in ("/", "/index.html"):
        return "page", None
    if path.startswith("/vendor/"):
        return "vendor", None
    if path.startswith("/api/gpus/"):
        match = GPU_PATH_RE.match(path)
        return ("gpu_" + match.group(2), match.group(1)) if match else ("not_found", None)
    simple = {"/api/gpus": "gpus", "/api/healthz": "healthz", "/api/readyz": "readyz",
              "/api/version": "version", "/ws": "ws", "/favicon.ico": "favicon",
              "/plain": "plain"}
    return simple.get(path, "not_found"), None


def split_host_header(host):
    """'Example.com:8080' -> ('example.com', 8080); '[::1]' -> ('::1', None)."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, (int(port) if port.isdigit() else None)


def is_loopback_name(name):
    """'localhost', '127.0.0.5', '::1' -> True; '127.0.0.1.evil.example' -> False."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host_header, listen_host, allowed_origins):
    """Stop DNS rebinding: when bound to loopback, the Host header must name
    loopback (or a host of an allowed origin). Other binds accept any Host."""
    if not is_loopback_name(listen_host.lower()):
        return True
    name, _ = split_host_header(host_header)
    if is_loopback_name(name):
        return True
    if isinstance(allowed_origins, tuple):
        return any(urlsplit(origin).hostname == name for origin in allowed_origins)
    return False


def origin_allowed(origin, host_header, allowed_origins):
    """WebSocket Origin check (SPEC §6/§7): no Origin = non-browser client, allowed;
    '*' allows any; a tuple is an allow-list; None means same origin as Host."""
    if origin is None:
        return True
    if allowed_origins == "*":
        return True
    normalized = normalize_origin(origin)
    if normalized is None:
        return False
    if isinstance(allowed_origins, tuple):
        return normalized in allowed_origins
    parts = urlsplit(normalized)
    name, port = split_host_header(host_header)
    default_port = 80 if parts.scheme == "http" else 443
    return parts.hostname == name.strip("[]") and (parts.port or default_port) == (port or default_port)


def inline_script_hashes(page_html):
    """CSP hashes ('sha256-…') of every inline <script> block, so the policy can
    forbid 'unsafe-inline' while allowing exactly our import map and module."""
    hashes = []
    for body in SCRIPT_BLOCK_RE.findall(page_html):
        if body.strip():
            digest = hashlib.sha256(body.encode("utf-8")).digest()
            hashes.append("'sha256-%s'" % base64.b64encode(digest).decode("ascii"))
    return hashes


def build_csp(script_hashes, use_cdn):
    """Content-Security-Policy allowing only self (and the pinned CDN when used)."""
    cdn = [CDN_ORIGIN] if use_cdn else []
    return ("default-src 'none'; script-src %s; style-src %s; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            % (" ".join(["'self'"] + cdn + list(script_hashes)),
               " ".join(["'self'", "'unsafe-inline'"] + cdn)))


def error_json(message):
    return json_bytes({"error": message})


CDN_URL_RE = re.compile(
    r"https://cdn\.jsdelivr\.net/npm/((?:@[a-z0-9._-]+/)?[a-z0-9._-]+)@([0-9][0-9A-Za-z.+-]*)/"
    r"([A-Za-z0-9._/-]+)")
VENDOR_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def rewrite_cdn_urls(page_html):
    """Air-gapped mode: 'https://cdn.jsdelivr.net/npm/PKG@VER/PATH' -> '/vendor/PKG/PATH'.

    Returns (new html, {"/vendor/PKG/PATH": ("PKG", "VER", "PKG/PATH")}): the
    allow-list of files /vendor/ serves. jsDelivr's /npm/ URLs mirror the npm
    package layout, so a node_modules folder holds the very same bytes (and
    the page's integrity hashes still match).
    """
    files = {}

    def local(match):
        package, version, path = match.groups()
        if ".." in path.split("/") or os.path.splitext(path)[1] not in VENDOR_TYPES:
            return match.group(0)
        url = "/vendor/%s/%s" % (package, path)
        files[url] = (package, version, "%s/%s" % (package, path))
        return url
    return CDN_URL_RE.sub(local, page_html), files


PLAIN_ROWS = (
    ("GPU busy", "gpu_busy_pct", "%"), ("Memory busy", "mem_busy_pct", "%"),
    ("Shader clock", "sclk_mhz", " MHz"), ("Memory clock", "mclk_mhz", " MHz"),
    ("Edge temperature", "temp_c", " °C"), ("Junction temperature", "temp_junction_c", " °C"),
    ("Memory temperature", "temp_mem_c", " °C"), ("Fan", "fan_rpm", " RPM"),
    ("Fan duty", "fan_pct", "%"), ("Power", "power_w", " W"), ("Power cap", "power_cap_w", " W"),
    ("VRAM used", "vram_used_bytes", "B"), ("VRAM total", "vram_total_bytes", "B"),
    ("GTT used", "gtt_used_bytes", "B"), ("GTT total", "gtt_total_bytes", "B"),
    ("PCIe generation", "pcie_gen", ""), ("PCIe width", "pcie_width", " lanes"),
    ("Runtime PM", "runtime_status", ""),
)


def format_bytes(value):
    """1845493760 -> '1.72 GiB'; None -> '—'."""
    if value is None:
        return "\u2014"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.2f %s" % (size, unit))
        size /= 1024.0
    return "%.2f GiB" % size


def format_value(value, unit):
    if value is None:
        return "\u2014"
    if unit == "B":
        return format_bytes(value)
    return "%s%s" % (value, unit)


def render_plain(gpus, procs, refresh_s, hint=None):
    """The no-JavaScript view: every GPU and its processes as HTML tables.

    gpus: [(identity dict, metrics dict or None)]; procs: {gpu id: procs message}.
    Every value goes through html.escape (process names are untrusted).
    """
    esc = html.escape
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           "<meta http-equiv=refresh content=%d>" % max(1, int(math.ceil(refresh_s))),
           "<meta name=viewport content='width=device-width, initial-scale=1'>",
           "<title>amdgpu_top_web (plain)</title></head><body>",
           "<h1>amdgpu_top_web</h1>"]
    if hint:
        out.append("<p>%s</p>" % esc(hint))
    if not gpus:
        out.append("<p>No AMD GPU found. Run with --demo to see synthetic GPUs.</p>")
    for identity, metrics in gpus:
        out.extend(_plain_gpu(identity, metrics or {}, procs.get(identity["id"])))
    out.append("<p><a href=/>Full dashboard</a> (needs JavaScript)</p></body></html>")
    return "\n".join(out)


def _plain_gpu(identity, metrics, procs):
    esc = html.escape
    title = "%s \u2014 %s (%s)%s" % (identity["id"], identity["name"], identity["pci"],
                                    " [demo]" if identity.get("demo") else "")
    rows = ["<h2>%s</h2>" % esc(title), "<table border=1><tbody>"]
    for label, key, unit in PLAIN_ROWS:
        rows.append("<tr><th>%s</th><td>%s</td></tr>" % (label, esc(format_value(metrics.get(key), unit))))
    rows.append("</tbody></table>")
    rows.extend(_plain_procs(procs))
    return rows


def _plain_procs(procs):
    esc = html.escape
    if not procs or procs.get("processes") is None:
        return ["<p>Processes: not available.</p>"]
    rows = ["<h3>Processes</h3><table border=1><thead><tr><th>PID</th><th>User</th><th>Name</th>"
            "<th>VRAM</th><th>GTT</th><th>GPU ms/s</th><th>Command</th></tr></thead><tbody>"]
    for proc in procs["processes"]:
        rows.append("<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
                    "<td>%s</td></tr>" % (
                        proc["pid"], esc(str(proc.get("user") or proc.get("uid"))),
                        esc(proc.get("name") or ""), esc(format_bytes(proc.get("vram_bytes"))),
                        esc(format_bytes(proc.get("gtt_bytes"))),
                        esc(format_value(proc.get("gpu_time_ms_per_s"), "")),
                        esc((proc.get("cmd") or "")[:200])))
    rows.append("</tbody></table>")
    return rows

# ---------------------------------------------------------------------------
# 7. Readers: thin filesystem I/O (path -> text or None)
# ---------------------------------------------------------------------------

# errno values after which a kept fd is reopened rather than trusted again.
REOPEN_ERRNOS = (errno.ENODEV, errno.ESTALE, errno.EBADF, errno.ENOENT)


def read_bytes(path, limit=1 << 20):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit)
    except OSError:
        return None


def read_text(path, limit=1 << 20):
    data = read_bytes(path, limit)
    return None if data is None else data.decode("utf-8", "replace")


def list_dir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


class DirWatch(object):
    """Notices files removed or replaced in one directory with ONE stat of the
    directory every REVALIDATE_S (its mtime changes when an entry is added,
    removed or renamed), instead of one stat per kept file.

    Real sysfs needs no help (a removed attribute answers ENODEV on the kept
    fd); this keeps plain-file trees (fixtures, bind mounts) honest too.
    """

    def __init__(self, path):
        self.path = path
        self.generation = 0
        self._signature = self._stat()
        self._check_at = 0.0

    def _stat(self):
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns)

    def poll(self, now):
        if now >= self._check_at:
            self._check_at = now + REVALIDATE_S
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                self.generation += 1
        return self.generation


class AttrFile(object):
    """A sysfs attribute kept open and re-read with one pread(fd, n, 0).

    sysfs regenerates an attribute's text on every read at offset 0, so a kept
    fd costs one syscall per read instead of open+read+close. On ENODEV/ESTALE/
    EBADF/ENOENT the fd is reopened once. A file that cannot be opened is tried
    again only every MISSING_RECHECK_S. When its directory's DirWatch reports a
    change, the file is reopened (it may have been removed or replaced).
    """

    def __init__(self, path, watch=None):
        self.path = path
        self.fd = None
        self.missing_errno = None   # errno of the last failed open, None when open
        self._retry_at = 0.0
        self._watch = watch
        self._generation = watch.generation if watch else 0

    def read(self, now):
        if self._watch is not None and self._watch.poll(now) != self._generation:
            self._generation = self._watch.generation
            self.close()
            self._retry_at = 0.0
        if self.fd is None and not self._open(now):
            return None
        try:
            return os.pread(self.fd, SYSFS_READ_SIZE, 0)
        except OSError as exc:
            if exc.errno in REOPEN_ERRNOS:
                self.close()
                self._retry_at = 0.0
                if self._open(now):
                    return self._read_once()
            return None

    def _read_once(self):
        try:
            return os.pread(self.fd, SYSFS_READ_SIZE, 0)
        except OSError:
            return None

    def _open(self, now):
        if now < self._retry_at:
            return False
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            self.missing_errno = exc.errno
            self._retry_at = now + MISSING_RECHECK_S
            return False
        self.missing_errno = None
        return True

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

# ---------------------------------------------------------------------------
# 8. GPU readers, samplers, discovery and the cache
# ---------------------------------------------------------------------------

CARD_RE = re.compile(r"^card[0-9]+$")


def find_drm_cards(sysfs_root):
    """-> [(card name, device dir)] for class/drm/cardN (connectors like card1-DP-1 skipped)."""
    base = os.path.join(sysfs_root, "class", "drm")
    return [(name, os.path.join(base, name, "device"))
            for name in list_dir(base) if CARD_RE.match(name)]


def find_hwmon_dir(device_dir):
    """The device's hwmon/hwmonN whose `name` is amdgpu (N is arbitrary)."""
    base = os.path.join(device_dir, "hwmon")
    for name in list_dir(base):
        path = os.path.join(base, name)
        if clean_text(read_bytes(os.path.join(path, "name"), 256)) == AMD_DRIVER:
            return path
    return None


def find_render_node(device_dir):
    for name in list_dir(os.path.join(device_dir, "drm")):
        if name.startswith("renderD"):
            return "/dev/dri/" + name
    return None


def read_hwmon_labels(hwmon_dir, names):
    return {name: clean_text(read_bytes(os.path.join(hwmon_dir, name), 256))
            for name in names if name.endswith("_label")}


class NameResolver(object):
    """Marketing names: product_name, else amdgpu.ids, else pci.ids, else the PCI id.
    The ids files are read lazily, once."""

    def __init__(self, share_root):
        self._share_root = share_root
        self._texts = {}

    def _text(self, rel):
        if rel not in self._texts:
            self._texts[rel] = read_text(os.path.join(self._share_root, rel), 8 << 20) or ""
        return self._texts[rel]

    def resolve(self, product_name, vendor_id, device_id, revision):
        if product_name:
            return product_name
        name = parse_amdgpu_ids(self._text(NAME_FILES[0]), device_id, revision) if revision else None
        for rel in NAME_FILES[1:]:
            name = name or parse_pci_ids(self._text(rel), vendor_id, device_id)
        return name or "AMD GPU %s:%s" % (vendor_id.lower(), device_id.lower())


def read_gpu_info(card, device_dir, names):
    """A card's identity, or None when it is not driven by amdgpu."""
    uevent = parse_uevent(read_bytes(os.path.join(device_dir, "uevent"), 4096))
    if uevent.get("DRIVER") != AMD_DRIVER:
        return None
    vendor_id, _, device_id = uevent.get("PCI_ID", "1002:0000").partition(":")
    revision = clean_text(read_bytes(os.path.join(device_dir, "revision"), 64))
    revision = revision.lower().replace("0x", "").zfill(2) if revision else None
    product = clean_text(read_bytes(os.path.join(device_dir, "product_name"), 256))
    hwmon_dir = find_hwmon_dir(device_dir)
    hwmon_names = list_dir(hwmon_dir) if hwmon_dir else []
    labels = read_hwmon_labels(hwmon_dir, hwmon_names) if hwmon_dir else {}
    apu = "vddnb" in [(label or "").lower() for label in labels.values()]
    return GpuInfo(
        id=card, pci=uevent.get("PCI_SLOT_NAME"), pci_id=("%s:%s" % (vendor_id, device_id)).lower(),
        revision=revision, name=names.resolve(product, vendor_id, device_id, revision),
        render_node=find_render_node(device_dir), driver=AMD_DRIVER, apu=apu, demo=False,
        device_dir=device_dir, hwmon_dir=hwmon_dir)


class AmdGpuReader(object):
    """Reads one amdgpu device's sysfs/hwmon into the stats metrics dict.

    The reader kind for AMD; other kinds (demo, later NVML or i915) offer the
    same two methods, sample(now) and close(), and an `info`.
    """

    def __init__(self, info):
        self.info = info
        self._watches = {}
        self._status = self._attr(info.device_dir, RUNTIME_STATUS_FILE)
        self._fast, self._slow = {}, {}
        for key, rel, slow in DEVICE_FILES:
            (self._slow if slow else self._fast)[key] = self._attr(info.device_dir, rel)
        self._plan_hwmon()
        self._slow_raw = {}
        self._slow_due = 0.0
        self._reported = set()

    def _attr(self, base, rel):
        path = os.path.join(base, rel)
        folder = os.path.dirname(path)
        if folder not in self._watches:
            self._watches[folder] = DirWatch(folder)
        return AttrFile(path, self._watches[folder])

    def _plan_hwmon(self):
        names = list_dir(self.info.hwmon_dir) if self.info.hwmon_dir else []
        plan = plan_hwmon(names, read_hwmon_labels(self.info.hwmon_dir, names) if names else {})
        slow_keys = ("power_cap_w", "power_fast_cap_w", "pwm_max")
        for key, name in plan.items():
            target = self._slow if key in slow_keys else self._fast
            target[key] = self._attr(self.info.hwmon_dir, name)
        for key, rel in DPM_FALLBACK_FILES:
            if key[:4] + "_mhz" not in plan:
                self._fast[key] = self._attr(self.info.device_dir, rel)

    def sample(self, now):
        """One tick: runtime_status first; a sleeping GPU's sensors are not read
        (a read would wake it). 'unsupported' means runtime PM is off: always on."""
        status = clean_text(self._status.read(now))
        if status not in (None, "active", "unsupported"):
            metrics = dict.fromkeys(METRIC_KEYS)
            metrics["runtime_status"] = status
            return metrics
        raw = {key: attr.read(now) for key, attr in self._fast.items()}
        if now >= self._slow_due:
            self._slow_due = now + SLOW_FILES_EVERY_S
            self._slow_raw = {key: attr.read(now) for key, attr in self._slow.items()}
            self._report_missing()
        raw.update(self._slow_raw)
        raw["runtime_status"] = status.encode() if status else None
        return compute_metrics(raw, self.info.apu)

    def _report_missing(self):
        """Log each missing capability once per GPU, not once per tick."""
        missing = []
        for attr in list(self._fast.values()) + list(self._slow.values()):
            if attr.missing_errno is not None and attr.path not in self._reported:
                self._reported.add(attr.path)
                missing.append(os.path.basename(attr.path))
        if missing:
            LOG.info("event=capability_missing gpu=%s files=%s", self.info.id, ",".join(sorted(missing)))

    def close(self):
        for attr in [self._status] + list(self._fast.values()) + list(self._slow.values()):
            attr.close()


DEMO_GPUS = (
    # id, pci, pci_id, name, apu, vram total, gtt total, power cap W, phase
    ("card0", "0000:03:00.0", "1002:747e", "AMD Radeon RX 7800 XT (demo)", False,
     17163091968, 33554432000, 263.0, 0.0),
    ("card1", "0000:64:00.0", "1002:15bf", "AMD Radeon 780M (demo)", True,
     536870912, 31433977856, None, 2.1),
)


def demo_gpu_infos():
    infos = []
    for index, row in enumerate(DEMO_GPUS):
        infos.append(GpuInfo(id=row[0], pci=row[1], pci_id=row[2], revision="c8", name=row[3],
                             render_node="/dev/dri/renderD%d" % (128 + index), driver=AMD_DRIVER,
                             apu=row[4], demo=True, device_dir=None, hwmon_dir=None))
    return infos


class DemoGpuReader(object):
    """Synthetic, plausible, moving values (--demo): busy follows slow waves,
    clocks and power follow busy, temperature lags power, the fan follows it."""

    def __init__(self, info, seed=1):
        self.info = info
        row = [r for r in DEMO_GPUS if r[0] == info.id][0]
        self._vram_total, self._gtt_total, self._cap, self._phase = row[5], row[6], row[7], row[8]
        self._rng = random.Random(seed)
        self._temp = 40.0

    def sample(self, now):
        t = now + self._phase * 10
        wave = 0.5 + 0.35 * math.sin(t / 9.0) + 0.15 * math.sin(t / 2.3)
        busy = min(100.0, max(0.0, wave * 100 + self._rng.uniform(-4, 4)))
        apu = self.info.apu
        power = (6.0 + busy * 0.5) if apu else (18.0 + busy * 2.3)
        self._temp += ((32.0 + power * (0.8 if apu else 0.2)) - self._temp) * 0.05
        metrics = dict.fromkeys(METRIC_KEYS)
        metrics.update(self._memory(t, busy))
        metrics.update({
            "runtime_status": "active", "gpu_busy_pct": int(busy),
            "sclk_mhz": int(500 + busy * (22 if apu else 19)), "mclk_mhz": 800 if apu else 1218,
            "temp_c": round(self._temp, 1), "power_w": round(power, 3),
            "vddgfx_mv": int(700 + busy * 4)})
        if apu:
            metrics["vddnb_mv"] = 615
        else:
            metrics.update(self._dgpu_extras(busy))
        return metrics

    def _memory(self, t, busy):
        vram_frac = 0.35 + 0.1 * math.sin(t / 40.0)
        return {"vram_total_bytes": self._vram_total, "vis_vram_total_bytes": self._vram_total,
                "vram_used_bytes": int(self._vram_total * (0.6 if self.info.apu else vram_frac)),
                "vis_vram_used_bytes": int(self._vram_total * 0.1),
                "gtt_total_bytes": self._gtt_total,
                "gtt_used_bytes": int(self._gtt_total * (0.05 + 0.02 * busy / 100))}

    def _dgpu_extras(self, busy):
        fan_pct = round(max(0.0, min(100.0, (self._temp - 45) * 3.0)), 1)
        return {"mem_busy_pct": int(busy * 0.4), "temp_junction_c": round(self._temp + 9, 1),
                "temp_mem_c": round(self._temp + 4, 1), "fan_pct": fan_pct,
                "fan_rpm": int(fan_pct * 33), "power_cap_w": self._cap,
                "pcie_gen": 4, "pcie_speed_gts": 16.0, "pcie_width": 16}

    def close(self):
        pass


class HistoryRing(object):
    """Fixed-size rolling history: one array('d') per series, NaN for null.

    Memory is exactly (len(HISTORY_KEYS) + 1) * 8 bytes * capacity.
    """

    def __init__(self, capacity, keys=HISTORY_KEYS):
        self.capacity = capacity
        self.keys = keys
        self._ts = array.array("d", [0.0]) * capacity
        self._series = [array.array("d", [0.0]) * capacity for _ in keys]
        self._next = 0
        self._count = 0

    def push(self, epoch_s, metrics):
        index = self._next
        self._ts[index] = epoch_s
        for key, series in zip(self.keys, self._series):
            value = metrics.get(key)
            series[index] = float("nan") if value is None else float(value)
        self._next = (index + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def _order(self):
        start = (self._next - self._count) % self.capacity
        return [(start + i) % self.capacity for i in range(self._count)]

    def to_json(self, interval_s):
        """Columnar: {"interval_ms", "ts": [unix ms], "series": {key: [value or null]}}."""
        order = self._order()
        series = {}
        for key, values in zip(self.keys, self._series):
            series[key] = [None if values[i] != values[i] else _compact(values[i]) for i in order]
        return {"interval_ms": int(round(interval_s * 1000)),
                "ts": [int(round(self._ts[i] * 1000)) for i in order], "series": series}


def _compact(value):
    return int(value) if value.is_integer() else value


class Cache(object):
    """The latest snapshot, procs and history per GPU, behind one lock.

    publish_* encode each frame ONCE (JSON and WebSocket frame) and hand the
    same bytes to every listener (the hub), outside the lock.
    """

    def __init__(self, interval_s, features):
        self.interval_s = interval_s
        self.features = dict(features)
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._gpus = collections.OrderedDict()
        self._stats = {}
        self._procs = {}
        self._history = {}
        self._listeners = []
        self._hello = None
        self._capacity = int(math.ceil(HISTORY_WINDOW_S / interval_s))

    def add_listener(self, callback):
        self._listeners.append(callback)

    def _notify(self, frame):
        for callback in self._listeners:
            callback(frame)

    def set_gpus(self, infos):
        """Replace the GPU list (discovery); drops the state of vanished GPUs."""
        with self._lock:
            self._gpus = collections.OrderedDict((info.id, info) for info in infos)
            for table in (self._stats, self._procs, self._history):
                for gpu_id in list(table):
                    if gpu_id not in self._gpus:
                        del table[gpu_id]
            for gpu_id in self._gpus:
                self._history.setdefault(gpu_id, HistoryRing(self._capacity))
            self._hello = None
        payload = json_bytes({"type": "gpus", "gpus": [identity_json(i) for i in infos]})
        self._notify(OutFrame(None, "gpus", payload, encode_frame(Opcode.TEXT, payload)))

    def publish_stats(self, gpu_id, epoch_s, metrics):
        payload = json_bytes(build_stats_message(gpu_id, epoch_s, metrics))
        frame = OutFrame(gpu_id, "stats", payload, encode_frame(Opcode.TEXT, payload))
        with self._lock:
            if gpu_id not in self._gpus:
                return
            self._stats[gpu_id] = (epoch_s, metrics, frame)
            self._history[gpu_id].push(epoch_s, metrics)
            self._hello = None
        self._notify(frame)

    def publish_procs(self, gpu_id, message):
        payload = json_bytes(message)
        frame = OutFrame(gpu_id, "procs", payload, encode_frame(Opcode.TEXT, payload))
        with self._lock:
            if gpu_id not in self._gpus:
                return
            self._procs[gpu_id] = (message, frame)
        self._notify(frame)

    def set_feature(self, key, value):
        with self._lock:
            self.features[key] = value
            self._hello = None

    def gpus(self):
        with self._lock:
            return list(self._gpus.values())

    def gpu(self, gpu_id):
        with self._lock:
            return self._gpus.get(gpu_id)

    def stats(self, gpu_id):
        """(epoch_s, metrics, OutFrame) or None."""
        with self._lock:
            return self._stats.get(gpu_id)

    def procs(self, gpu_id):
        """(message dict, OutFrame) or None."""
        with self._lock:
            return self._procs.get(gpu_id)

    def history(self, gpu_id):
        with self._lock:
            ring = self._history.get(gpu_id)
            return None if ring is None else ring.to_json(self.interval_s)

    def latest_frames(self, gpu_id):
        """The latest stats and procs frames of one GPU ('*' = all), for a new subscriber."""
        with self._lock:
            ids = list(self._gpus) if gpu_id == "*" else [gpu_id]
            frames = [self._stats[i][2] for i in ids if i in self._stats]
            return frames + [self._procs[i][1] for i in ids if i in self._procs]

    def hello_payload(self, default_gpu):
        """The hello message (JSON bytes), rebuilt at most once per tick and shared."""
        with self._lock:
            if self._hello is None:
                gpus = [identity_json(info) for info in self._gpus.values()]
                default = default_gpu if default_gpu in self._gpus else (
                    gpus[0]["id"] if gpus else None)
                self._hello = json_bytes({
                    "type": "hello", "version": __version__,
                    "interval_ms": int(round(self.interval_s * 1000)), "default_gpu": default,
                    "subscribed": "*", "gpus": gpus, "features": self.features,
                    "history": {i: ring.to_json(self.interval_s) for i, ring in self._history.items()}})
            return self._hello


class StoppableThread(threading.Thread):
    """A named daemon thread whose loop waits on an Event, so stop() is immediate."""

    def __init__(self, name):
        threading.Thread.__init__(self, name=name)
        self.daemon = True
        self.stopping = threading.Event()

    def stop(self):
        self.stopping.set()


class Sampler(StoppableThread):
    """One per GPU: read, publish, wait; on a fixed schedule that skips missed ticks."""

    def __init__(self, reader, cache, interval_s, clock=time.monotonic):
        StoppableThread.__init__(self, "sampler-" + reader.info.id)
        self.reader, self.cache, self.interval_s, self.clock = reader, cache, interval_s, clock
        self._errors = 0

    def run(self):
        next_at = self.clock()
        while not self.stopping.is_set():
            self.tick()
            next_at += self.interval_s
            now = self.clock()
            if next_at < now:
                next_at = now + self.interval_s
            self.stopping.wait(next_at - now)
        self.reader.close()

    def tick(self):
        try:
            metrics = self.reader.sample(self.clock())
        except Exception:  # a sampler must never die; log the first few, quietly
            self._errors += 1
            if self._errors <= 3:
                LOG.exception("event=sample_failed gpu=%s", self.reader.info.id)
            return
        self.cache.publish_stats(self.reader.info.id, time.time(), metrics)


class GpuManager(StoppableThread):
    """Discovery: lists class/drm every REDISCOVER_INTERVAL_S, starts a sampler
    for each amdgpu card that appears and stops the one of a card that goes."""

    def __init__(self, config, cache, reader_factory=AmdGpuReader):
        StoppableThread.__init__(self, "discovery")
        self.config, self.cache, self.reader_factory = config, cache, reader_factory
        self._names = NameResolver(config.share_root)
        self._samplers = collections.OrderedDict()   # (card, device realpath) -> Sampler
        self._ignored = set()

    def run(self):
        while not self.stopping.is_set():
            self.rediscover()
            self.stopping.wait(REDISCOVER_INTERVAL_S)
        self.stop_samplers()

    def rediscover(self):
        found = [(card, os.path.realpath(path), path)
                 for card, path in find_drm_cards(self.config.sysfs_root)]
        keys = set((card, real) for card, real, _ in found)
        changed = self._remove_gone(keys)
        for card, real, path in found:
            if (card, real) not in self._samplers and (card, real) not in self._ignored:
                changed = self._add_card(card, real, path) or changed
        if changed or not self.cache.ready.is_set():
            self._publish_gpus()

    def _add_card(self, card, real, path):
        info = read_gpu_info(card, path, self._names)
        if info is None:
            self._ignored.add((card, real))
            return False
        sampler = Sampler(self.reader_factory(info), self.cache, self.config.interval_s)
        self._samplers[(card, real)] = sampler
        LOG.info("event=gpu_found gpu=%s pci=%s name=%r apu=%s", info.id, info.pci, info.name, info.apu)
        return True

    def _remove_gone(self, keys):
        self._ignored &= keys
        gone = [key for key in self._samplers if key not in keys]
        for key in gone:
            sampler = self._samplers.pop(key)
            sampler.stop()
            LOG.info("event=gpu_gone gpu=%s", sampler.reader.info.id)
        return bool(gone)

    def _publish_gpus(self):
        infos = sorted((s.reader.info for s in self._samplers.values()), key=_card_order)
        self.cache.set_gpus(infos)
        for sampler in self._samplers.values():
            if not sampler.is_alive() and not sampler.stopping.is_set():
                sampler.start()
        if not infos and not self.cache.ready.is_set():
            LOG.warning("event=no_gpu sysfs_root=%s hint=%r", self.config.sysfs_root,
                        "no amdgpu card found; run with --demo to see the dashboard")
        self.cache.ready.set()

    def stop_samplers(self):
        for sampler in self._samplers.values():
            sampler.stop()
        for sampler in self._samplers.values():
            if sampler.is_alive():
                sampler.join(2.0)

    def readers(self):
        return [s.reader for s in self._samplers.values()]


def _card_order(info):
    digits = re.sub(r"[^0-9]", "", info.id)
    return (int(digits) if digits else 0, info.id)



class ProcScanThread(StoppableThread):
    """Publishes a procs frame per GPU: a full, budgeted /proc walk every
    scan_interval_s and, in between, a cheap re-read of the watchlist (PIDs
    known to use a GPU) every refresh_interval_s so engine % stays fresh."""

    def __init__(self, source, cache, scan_interval_s, refresh_interval_s, clock=time.monotonic):
        StoppableThread.__init__(self, "proc-scan")
        self.source, self.cache, self.clock = source, cache, clock
        self.scan_interval_s, self.refresh_interval_s = scan_interval_s, refresh_interval_s
        self._visibility = None
        self._errors = 0

    def run(self):
        next_scan = self.clock()
        while not self.stopping.is_set():
            now = self.clock()
            full = now >= next_scan
            if full:
                next_scan = now + self.scan_interval_s
            self.tick(full)
            self.stopping.wait(max(0.0, min(self.refresh_interval_s, next_scan - self.clock())))

    def tick(self, full):
        gpus = self.cache.gpus()
        self.source.set_node_map(node_map_for(gpus))
        try:
            result = self.source.scan() if full else self.source.refresh()
        except Exception:  # the scanner must never take the server down
            self._errors += 1
            if self._errors <= 3:
                LOG.exception("event=proc_scan_failed")
            return
        epoch = time.time()
        for info in gpus:
            message = build_procs_message(info.id, epoch, result.by_pci.get(info.pci),
                                          result.visibility, result.stats)
            self.cache.publish_procs(info.id, message)
        if result.visibility != self._visibility:
            self._visibility = result.visibility
            self.cache.set_feature("visibility", result.visibility)


def node_map_for(gpus):
    """{"renderD128": pci, "card1": pci} for mapping fds without drm-pdev."""
    mapping = {}
    for info in gpus:
        if info.render_node:
            mapping[os.path.basename(info.render_node)] = info.pci
        mapping[info.id] = info.pci
    return mapping


ScanResult = collections.namedtuple("ScanResult", "by_pci visibility stats")

DEMO_PROCS = (
    # name, user, cmd, container, kfd, engines (name -> base %), vram MiB, gtt MiB
    ("blender", "alice", "blender --background scene.blend --render-anim", None, False,
     {"gfx": 55.0, "compute": 8.0}, 5200, 310),
    ("python3", "bob", "python3 train.py --epochs 40 --api-key=[redacted]", "3f2a9c1d7e4b", True,
     {"gfx": 0.0, "compute": 30.0, "dma": 4.0}, 7400, 900),
    ("Xorg", "root", "/usr/lib/xorg/Xorg :0 -seat seat0 -auth /run/lightdm/root/:0", None, False,
     {"gfx": 2.5}, 180, 60),
    ("firefox", "alice", "/usr/lib/firefox/firefox -contentproc -isForBrowser", None, False,
     {"gfx": 4.0, "dec": 6.0}, 420, 220),
    ("<img src=x onerror=alert(1)>", "mallory", "<script>alert(1)</script> --token=[redacted]",
     None, False, {"gfx": 1.0}, 64, 16),
    ("obs", "alice", "obs --startstreaming", None, False, {"gfx": 7.0, "enc": 18.0}, 610, 140),
    ("mpv", "carol", "mpv --hwdec=vaapi movie.mkv", None, False, {"dec": 12.0}, 150, 40),
    ("llama-server", "dave", "llama-server -m model.gguf --port 8081", "k8s-llm-7d9f", False,
     {"gfx": 0.0, "compute": 44.0}, 2300, 8100),
)


class DemoProcSource(object):
    """--demo: synthetic processes per demo GPU, with moving engine %."""

    def __init__(self, infos, per_gpu, clock=time.monotonic):
        self.infos, self.per_gpu, self.clock = infos, per_gpu, clock
        self._start = clock()

    def set_node_map(self, mapping):
        pass

    def refresh(self):
        return self.scan()

    def scan(self):
        t = self.clock() - self._start
        by_pci = {}
        for gpu_index, info in enumerate(self.infos):
            procs = [self._process(gpu_index, i, t) for i in range(self.per_gpu)]
            procs.sort(key=lambda p: -(p["vram_bytes"] + p["gtt_bytes"]))
            by_pci[info.pci] = {"processes": procs, "capabilities": {
                "vram_gtt_from_fdinfo": True, "engine_time_from_fdinfo": True,
                "engines": ["gfx", "compute", "dma", "dec", "enc"]}, "totals": _demo_totals(procs)}
        visibility = {"root": True, "pid_namespace_separate": False, "hidepid": False,
                      "unreadable_pids": 0}
        return ScanResult(by_pci, visibility, {"cut_short": False, "duration_s": 0.0})

    def _process(self, gpu_index, index, t):
        row = DEMO_PROCS[(index + gpu_index * 3) % len(DEMO_PROCS)]
        name, user, cmd, container, kfd, engines, vram_mib, gtt_mib = row
        wave = 0.6 + 0.4 * math.sin(t / (5.0 + index) + index)
        pct = dict((e, round(min(100.0, base * wave), 1) if e in engines else None)
                   for e, base in [(e, engines.get(e, 0.0)) for e in ("gfx", "compute", "dma", "dec", "enc")])
        pid = 1000 + gpu_index * 5000 + index * 37
        return {"pid": pid, "uid": 1000 + index, "user": user, "name": name, "cmd": cmd,
                "render_node": "renderD%d" % (128 + gpu_index), "kfd": kfd, "shared": False,
                "vram_bytes": vram_mib << 20, "gtt_bytes": gtt_mib << 20, "cpu_bytes": 0,
                "vram_total_bytes": None, "gtt_total_bytes": None, "engines_pct": pct,
                "gpu_time_ms_per_s": round(sum(v for v in pct.values() if v) * 10.0, 1),
                "container": container, "start_time": 100000 + pid}


def _demo_totals(procs):
    return {"vram_bytes": sum(p["vram_bytes"] for p in procs),
            "gtt_bytes": sum(p["gtt_bytes"] for p in procs), "cpu_bytes": 0,
            "gpu_time_ms_per_s": round(sum(p["gpu_time_ms_per_s"] for p in procs), 1),
            "clients": len(procs), "processes": len(procs)}

# ---------------------------------------------------------------------------
# 9. WebSocket hub: one thread, one selectors loop over every WebSocket
# ---------------------------------------------------------------------------


class WsClient(object):
    """One WebSocket connection as the hub sees it (touched by the hub thread only)."""

    def __init__(self, sock, addr, now, max_message_bytes):
        self.sock = sock
        self.addr = addr
        self.decoder = FrameDecoder(max_message_bytes)
        self.assembler = MessageAssembler(max_message_bytes)
        self.queue = collections.deque()    # wire bytes; queue[0] may be partly sent
        self.queued_bytes = 0
        self.head_sent = 0
        self.dropped = 0                    # frames dropped since the client was last told
        self.subscription = "*"
        self.last_recv = now
        self.stalled_since = None           # queue non-empty and no progress since
        self.ping_sent = False
        self.closing = False                # our Close frame is queued or sent
        self.close_deadline = None
        self.close_when_flushed = False
        self.writing = False                # EVENT_WRITE registered
        self.open = True


class DashboardProtocol(object):
    """The application side of /ws: hello on open, subscribe/ping messages.

    The hub is generic (any object with on_open/on_text/on_binary works: the
    conformance tests plug in an echo protocol); this one speaks SPEC §5.
    """

    def __init__(self, cache, default_gpu):
        self.cache = cache
        self.default_gpu = default_gpu

    def on_open(self, client):
        return [encode_frame(Opcode.TEXT, self.cache.hello_payload(self.default_gpu))]

    def on_binary(self, client, data):
        raise ProtocolError(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")

    def on_text(self, client, text):
        try:
            message = json.loads(text)
        except ValueError:
            return [self._error("bad JSON")]
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            return [self._json({"type": "pong"})]
        if kind == "subscribe":
            return self._subscribe(client, message.get("gpu_id"))
        return [self._error("unknown message type: %.40r" % (kind,))]

    def _subscribe(self, client, gpu_id):
        if gpu_id != "*" and (not isinstance(gpu_id, str) or self.cache.gpu(gpu_id) is None):
            return [self._error("unknown gpu_id: %.64r" % (gpu_id,))]
        client.subscription = gpu_id
        reply = [self._json({"type": "subscribed", "gpu_id": gpu_id})]
        return reply + [frame.wire for frame in self.cache.latest_frames(gpu_id)]

    def wants(self, client, frame):
        return frame.gpu_id is None or client.subscription in ("*", frame.gpu_id)

    @staticmethod
    def _json(obj):
        return encode_frame(Opcode.TEXT, json_bytes(obj))

    def _error(self, message):
        return self._json({"type": "error", "message": message})


class Hub(StoppableThread):
    """Every WebSocket lives here: reads, writes, timeouts and the broadcast.

    Other threads only call reserve_slot/add_client (HTTP handlers) and
    on_frame (the cache); both append to a thread-safe deque and wake the loop
    through a socketpair. The hub never blocks on a client: sockets are
    non-blocking, each client has a bounded queue (drop-oldest, counted), and
    a client that accepts nothing for write_timeout_s is closed.
    """

    def __init__(self, protocol, max_clients, write_timeout_s, read_timeout_s,
                 max_message_bytes=WS_MAX_MESSAGE_BYTES, clock=time.monotonic):
        StoppableThread.__init__(self, "ws-hub")
        self.protocol = protocol
        self.max_clients, self.clock = max_clients, clock
        self.write_timeout_s, self.read_timeout_s = write_timeout_s, read_timeout_s
        self.max_message_bytes = max_message_bytes
        self.stats = {"clients": 0, "dropped_frames": 0, "stuck_closed": 0, "refused": 0,
                      "protocol_errors": 0}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._inbox = collections.deque()
        self._clients = set()
        self._slots = 0
        self._slots_lock = threading.Lock()
        self._timers_due = 0.0

    # -- called from other threads -----------------------------------------

    def reserve_slot(self):
        with self._slots_lock:
            if self._slots >= self.max_clients or self.stopping.is_set():
                self.stats["refused"] += 1
                return False
            self._slots += 1
            return True

    def release_slot(self):
        with self._slots_lock:
            self._slots -= 1

    def add_client(self, sock, addr, leftover=b""):
        self._inbox.append(("client", (sock, addr, leftover)))
        self._wake()

    def on_frame(self, frame):
        self._inbox.append(("frame", frame))
        self._wake()

    def stop(self):
        StoppableThread.stop(self)
        self._wake()

    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass          # already full of wake-ups: the loop will run anyway
        except OSError:
            pass          # closed during shutdown

    # -- the loop ------------------------------------------------------------

    def run(self):
        try:
            while not self.stopping.is_set():
                self._loop_once(self._timeout())
            self._close_all()
        finally:
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _timeout(self):
        return 0.25 if self._clients else 1.0

    def _loop_once(self, timeout):
        for key, mask in self._selector.select(timeout):
            client = key.data
            if client is None:
                self._drain_wake()
                continue
            now = self.clock()
            if mask & selectors.EVENT_READ:
                self._on_readable(client, now)
            if client.open and mask & selectors.EVENT_WRITE:
                self._flush(client, now)
        now = self.clock()
        self._drain_inbox(now)
        if now >= self._timers_due:
            self._timers_due = now + 0.25
            self._check_timers(now)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _drain_inbox(self, now):
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "frame":
                self._broadcast(item, now)
            else:
                self._open_client(item, now)

    def _open_client(self, item, now):
        sock, addr, leftover = item
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A small kernel buffer keeps a stuck client's backlog in OUR bounded
            # queue, where the write timeout sees it (Linux would grow it to MiBs).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SNDBUF_BYTES)
        except OSError:
            pass
        client = WsClient(sock, addr, now, self.max_message_bytes)
        self._selector.register(sock, selectors.EVENT_READ, client)
        self._clients.add(client)
        self.stats["clients"] = len(self._clients)
        for wire in self.protocol.on_open(client):
            self._enqueue(client, wire)
        if leftover:
            self._on_data(client, leftover, now)
        if client.open:
            self._flush(client, now)

    # -- outbound --------------------------------------------------------------

    def _broadcast(self, frame, now):
        for client in list(self._clients):
            if client.closing or not self.protocol.wants(client, frame):
                continue
            wire = frame.wire
            if client.dropped and frame.payload.startswith(b"{"):
                # Tell the client what it missed, on this frame (the shared
                # bytes stay untouched; only a lagging client pays for a copy).
                payload = b'{"dropped":%d,' % client.dropped + frame.payload[1:]
                wire = encode_frame(Opcode.TEXT, payload)
                client.dropped = 0
            self._enqueue(client, wire)
            self._flush(client, now)

    def _enqueue(self, client, wire):
        queue = client.queue
        while queue and (len(queue) >= WS_QUEUE_FRAMES
                         or client.queued_bytes + len(wire) > WS_QUEUE_BYTES):
            index = 1 if client.head_sent else 0   # never cut a frame half sent
            if index >= len(queue):
                break
            client.queued_bytes -= len(queue[index])
            del queue[index]
            client.dropped += 1
            self.stats["dropped_frames"] += 1
        queue.append(wire)
        client.queued_bytes += len(wire)

    def _flush(self, client, now):
        queue = client.queue
        progressed = False
        while queue:
            data = queue[0]
            view = memoryview(data)[client.head_sent:] if client.head_sent else data
            try:
                sent = client.sock.send(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            progressed = True
            if sent < len(view):
                client.head_sent += sent
                break
            queue.popleft()
            client.queued_bytes -= len(data)
            client.head_sent = 0
        if not queue and client.close_when_flushed:
            self._drop(client)
            return
        if not queue:
            client.stalled_since = None
        elif progressed or client.stalled_since is None:
            client.stalled_since = now
        self._want_write(client, bool(queue))

    def _want_write(self, client, wanted):
        if client.writing != wanted:
            client.writing = wanted
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            self._selector.modify(client.sock, events, client)

    # -- inbound ---------------------------------------------------------------

    def _on_readable(self, client, now):
        try:
            data = client.sock.recv(WS_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        self._on_data(client, data, now)

    def _on_data(self, client, data, now):
        client.last_recv = now
        client.ping_sent = False
        client.decoder.feed(data)
        try:
            while client.open:
                frame = client.decoder.next_frame()
                if frame is None:
                    break
                message = client.assembler.add(frame)
                if message is not None:
                    self._on_message(client, message, now)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            self._start_close(client, exc.close_code, exc.reason, now, wait_reply=False)
        if client.open:
            self._flush(client, now)

    def _on_message(self, client, message, now):
        opcode, data = message
        if opcode == Opcode.CLOSE:
            self._on_close_frame(client, data, now)
        elif opcode == Opcode.PING:
            self._enqueue(client, encode_frame(Opcode.PONG, data))
        elif opcode == Opcode.TEXT and not client.closing:
            for wire in self.protocol.on_text(client, data):
                self._enqueue(client, wire)
        elif opcode == Opcode.BINARY and not client.closing:
            for wire in self.protocol.on_binary(client, data):
                self._enqueue(client, wire)

    def _on_close_frame(self, client, data, now):
        """RFC 6455 §5.5.1: answer a Close with a Close (echoing the code), then
        close the TCP connection; if we started the close, this is the answer."""
        if client.closing:
            self._drop(client)
            return
        code = data[0] if data[0] is not None else CloseCode.NORMAL_CLOSURE
        self._start_close(client, code, "", now, wait_reply=False)

    def _start_close(self, client, code, reason, now, wait_reply=True):
        """Queue our Close frame in place of any pending data frames (a frame
        already half sent is finished first, or the stream would be corrupt)."""
        if client.closing:
            return
        client.closing = True
        head = client.queue[0] if client.head_sent else None
        client.queue.clear()
        client.queued_bytes = 0
        if head is not None:
            client.queue.append(head)
            client.queued_bytes = len(head)
        close = encode_close(code, reason)
        client.queue.append(close)
        client.queued_bytes += len(close)
        client.close_deadline = now + 2.0
        client.close_when_flushed = not wait_reply
        self._flush(client, now)

    # -- timers ------------------------------------------------------------------

    def _check_timers(self, now):
        for client in list(self._clients):
            if client.closing and now >= client.close_deadline:
                self._drop(client)
            elif (client.stalled_since is not None
                  and now - client.stalled_since > self.write_timeout_s):
                self.stats["stuck_closed"] += 1
                LOG.info("event=ws_stuck_client addr=%s queued=%d", client.addr, len(client.queue))
                self._try_close_frame(client, CloseCode.POLICY_VIOLATION, "write timeout")
                self._drop(client)
            elif now - client.last_recv > self.read_timeout_s:
                self._start_close(client, CloseCode.INTERNAL_ERROR, "keepalive timeout", now)
            elif not client.ping_sent and now - client.last_recv > self.read_timeout_s / 2:
                client.ping_sent = True
                self._enqueue(client, encode_frame(Opcode.PING, b"keepalive"))
                self._flush(client, now)

    def _try_close_frame(self, client, code, reason):
        """Best effort Close before dropping a stuck client (only at a frame boundary)."""
        if not client.head_sent:
            try:
                client.sock.send(encode_close(code, reason))
            except OSError:
                pass

    def _drop(self, client):
        if not client.open:
            return
        client.open = False
        self._clients.discard(client)
        self.stats["clients"] = len(self._clients)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        self.release_slot()

    def _close_all(self):
        """Shutdown: Close 1001 to everyone, a short grace for their answers, then close."""
        now = self.clock()
        for client in list(self._clients):
            self._start_close(client, CloseCode.GOING_AWAY, "server shutting down", now)
        deadline = self.clock() + SHUTDOWN_GRACE_S
        while self._clients and self.clock() < deadline:
            self._loop_once(0.05)
        for client in list(self._clients):
            self._drop(client)
        while self._inbox:      # a hand-over that raced with shutdown
            kind, item = self._inbox.popleft()
            if kind == "client":
                item[0].close()
                self.release_slot()

    def client_count(self):
        return len(self._clients)

# ---------------------------------------------------------------------------
# 10. HTTP server and handler
# ---------------------------------------------------------------------------

MISSING_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>amdgpu_top_web</title>"
    "<h1>amdgpu_top_web</h1><p>index.html was not found beside amdgpu_top_web.py, "
    "so the dashboard page cannot be shown. Fetch it from the same place as the script, "
    "or use the JSON API: <a href=/api/gpus>/api/gpus</a>.</p></html>")


class DashboardServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows the App and can close idle keep-alive
    connections at shutdown (their threads would otherwise linger)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, app):
        self.app = app
        self._conns = set()
        self._conns_lock = threading.Lock()
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
        if host == "" and not socket.has_ipv6:
            self.address_family, address = socket.AF_INET, ("0.0.0.0", address[1])
        ThreadingHTTPServer.__init__(self, address, DashboardHandler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        ThreadingHTTPServer.server_bind(self)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        ThreadingHTTPServer.process_request(self, request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        ThreadingHTTPServer.shutdown_request(self, request)

    def handle_error(self, request, client_address):
        """A client that vanished mid-request is routine: one debug line, no traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            LOG.debug("event=http_client_gone client=%s error=%r", client_address[0], exc)
        else:
            LOG.error("event=http_handler_error client=%s error=%r", client_address[0], exc)

    def close_idle_connections(self):
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DashboardHandler(BaseHTTPRequestHandler):
    """Answers every route from the cache; /ws is upgraded here and handed to the hub."""

    server_version = "amdgpu_top_web/" + __version__
    protocol_version = "HTTP/1.1"
    timeout = HTTP_IDLE_TIMEOUT_S

    def do_GET(self):
        self._dispatch(True)

    def do_HEAD(self):
        self._dispatch(False)

    def __getattr__(self, name):
        # Any other method (POST, PUT, DELETE, PATCH, OPTIONS, ...): 405, not 501.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self):
        # The body (if any) is never read, so the connection must not be reused:
        # its bytes would be parsed as the next request.
        self.close_connection = True
        self._send_json(405, {"error": "method not allowed: this server is read-only"},
                        [("Allow", "GET, HEAD"), ("Connection", "close")])

    def _dispatch(self, send_body):
        self._send_body = send_body
        app = self.server.app
        if len(self.headers.get_all("Host") or ()) > 1:
            self.send_error(400, "more than one Host header")   # RFC 9112 §3.2
            return
        if not host_allowed(self.headers.get("Host"), app.config.listen_host,
                            app.config.allowed_origins):
            self._send_json(403, {"error": "Host header not allowed (DNS rebinding protection)"})
            return
        name, gpu_id = route(urlsplit(self.path).path)
        getattr(self, "route_" + name)(gpu_id)

    # -- responses -------------------------------------------------------------

    def _send(self, status, content_type, body, headers=(), cache="no-store"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for key, value in SECURITY_HEADERS:
            self.send_header(key, value)
        self.send_header("Content-Security-Policy", self.server.app.csp)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if getattr(self, "_send_body", True):
            self.wfile.write(body)

    def _send_json(self, status, obj, headers=()):
        self._send(status, "application/json", json_bytes(obj), headers)

    def send_error(self, code, message=None, explain=None):
        """Errors the base class raises itself (400, 414, 431, 501) as JSON too."""
        self.close_connection = True
        try:
            self._send(code, "application/json", error_json(message or HTTPStatus(code).phrase),
                       [("Connection", "close")])
        except OSError:
            pass

    def log_message(self, fmt, *args):
        LOG.debug("event=http client=%s %s", self.client_address[0], fmt % args)

    # -- routes ------------------------------------------------------------------

    def route_page(self, _):
        app = self.server.app
        if app.page_bytes is None:
            hint = "index.html was not found beside amdgpu_top_web.py: showing the plain view."
            self._send(200, "text/html; charset=utf-8", app.plain_html(hint).encode("utf-8"))
        else:
            self._send(200, "text/html; charset=utf-8", app.page_bytes)

    def route_plain(self, _):
        self._send(200, "text/html; charset=utf-8", self.server.app.plain_html().encode("utf-8"))

    def route_vendor(self, _):
        """Only the files the page references; the request never becomes a path."""
        body, content_type = self.server.app.vendor_file(urlsplit(self.path).path)
        if body is None:
            self._send_json(404, {"error": "not found"})
        else:
            self._send(200, content_type, body, cache="public, max-age=86400")

    def route_favicon(self, _):
        self._send(204, "image/x-icon", b"", cache="max-age=86400")

    def route_not_found(self, _):
        self._send_json(404, {"error": "not found"})

    def route_gpus(self, _):
        self._send_json(200, self.server.app.gpus_json())

    def route_healthz(self, _):
        self._send_json(200, {"status": "ok"})

    def route_readyz(self, _):
        cache = self.server.app.cache
        if cache.ready.is_set():
            self._send_json(200, {"status": "ready", "gpus": len(cache.gpus())})
        else:
            self._send_json(503, {"status": "starting"}, [("Retry-After", "1")])

    def route_version(self, _):
        self._send_json(200, {"version": __version__, "python": "%d.%d.%d" % sys.version_info[:3]})

    def route_gpu_metrics(self, gpu_id):
        found = self._gpu_or_404(gpu_id)
        if found is not None:
            stats = self.server.app.cache.stats(gpu_id)
            self._send(200, "application/json", stats[2].payload if stats else json_bytes(
                {"type": "stats", "gpu_id": gpu_id, "ts": None, "metrics": None}))

    def route_gpu_history(self, gpu_id):
        if self._gpu_or_404(gpu_id) is not None:
            self._send_json(200, dict(self.server.app.cache.history(gpu_id), gpu_id=gpu_id))

    def route_gpu_procs(self, gpu_id):
        if self._gpu_or_404(gpu_id) is not None:
            procs = self.server.app.cache.procs(gpu_id)
            self._send(200, "application/json", procs[1].payload if procs else json_bytes(
                {"type": "procs", "gpu_id": gpu_id, "ts": None, "processes": None}))

    def _gpu_or_404(self, gpu_id):
        info = self.server.app.cache.gpu(gpu_id)
        if info is None:
            self._send_json(404, {"error": "unknown GPU: %s" % gpu_id})
        return info

    def route_ws(self, _):
        app = self.server.app
        headers = dict((k.lower(), v) for k, v in self.headers.items())
        try:
            key = check_upgrade(self.command, headers)
        except HandshakeError as exc:
            self._send_json(exc.status, {"error": exc.message}, list(exc.headers.items()))
            return
        if not origin_allowed(headers.get("origin"), headers.get("host"), app.config.allowed_origins):
            self._send_json(403, {"error": "WebSocket Origin not allowed"})
            return
        if not app.hub.reserve_slot():
            self._send_json(503, {"error": "too many WebSocket clients"}, [("Retry-After", "5")])
            return
        self._hand_over(key)

    def _hand_over(self, key):
        """Send 101, then detach the socket from socketserver (which would close
        it when this handler returns) and give it to the hub."""
        hub = self.server.app.hub
        try:
            self.connection.sendall(build_upgrade_response(key))
            self.connection.setblocking(False)
            leftover = self.rfile.read1(WS_RECV_SIZE) or b""
        except OSError:
            hub.release_slot()
            self.close_connection = True
            return
        self.close_connection = True
        sock = socket.socket(fileno=self.connection.detach())
        hub.add_client(sock, "%s:%s" % self.client_address[:2], leftover)

# ---------------------------------------------------------------------------
# 11. CLI and main()
# ---------------------------------------------------------------------------


class App(object):
    """Owns every thread: discovery (and samplers), hub, HTTP server; start()/stop()."""

    def __init__(self, config, page_path=None):
        self.config = config
        features = {"procs": False, "prometheus": config.enable_prometheus,
                    "demo": config.demo, "history_window_s": HISTORY_WINDOW_S}
        self.cache = Cache(config.interval_s, features)
        self.manager = self._make_manager()
        self.hub = Hub(DashboardProtocol(self.cache, config.default_gpu), config.ws_max_clients,
                       config.ws_write_timeout_s, config.ws_read_timeout_s)
        self.cache.add_listener(self.hub.on_frame)
        self.page_bytes, self.vendor_files = self._load_page(page_path, config.vendor_dir)
        self.csp = build_csp(inline_script_hashes(self.page_bytes.decode("utf-8"))
                             if self.page_bytes else [], use_cdn=not config.vendor_dir)
        self.procs_thread = self._make_procs_thread()
        self.server = None
        self._serve_thread = None

    def _make_procs_thread(self):
        config = self.config
        if not config.proc_enable:
            return None
        if config.demo:
            source = DemoProcSource(demo_gpu_infos(), config.demo_processes)
        else:
            return None   # the /proc scanner arrives with process top
        self.cache.set_feature("procs", True)
        return ProcScanThread(source, self.cache, config.proc_scan_interval_s, config.interval_s * 4)

    def _make_manager(self):
        if self.config.demo:
            return DemoManager(self.cache, self.config.interval_s)
        return GpuManager(self.config, self.cache)

    @staticmethod
    def _load_page(page_path, vendor_dir):
        """index.html (None when missing), rewritten to /vendor/ URLs in air-gapped mode."""
        if page_path is None:
            page_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "index.html")
        page = read_bytes(page_path, 4 << 20)
        if page is None or not vendor_dir:
            return page, {}
        text, files = rewrite_cdn_urls(page.decode("utf-8"))
        for url, (package, version, rel) in sorted(files.items()):
            meta = read_text(os.path.join(vendor_dir, package, "package.json"), 1 << 20)
            found = (json.loads(meta).get("version") if meta else None)
            if found != version:
                LOG.warning("event=vendor_mismatch package=%s pinned=%s found=%s dir=%s",
                            package, version, found, vendor_dir)
        return text.encode("utf-8"), files

    def vendor_file(self, url_path):
        """(bytes, content type) of an allow-listed vendor file, else (None, None)."""
        entry = self.vendor_files.get(url_path)
        if entry is None or not self.config.vendor_dir:
            return None, None
        body = read_bytes(os.path.join(self.config.vendor_dir, entry[2]), 8 << 20)
        return body, VENDOR_TYPES[os.path.splitext(entry[2])[1]]

    def plain_html(self, hint=None):
        gpus, procs = [], {}
        for info in self.cache.gpus():
            stats = self.cache.stats(info.id)
            gpus.append((identity_json(info), stats[1] if stats else None))
            found = self.cache.procs(info.id)
            if found:
                procs[info.id] = found[0]
        return render_plain(gpus, procs, max(2.0, self.config.interval_s), hint)

    def gpus_json(self):
        gpus = []
        for info in self.cache.gpus():
            stats = self.cache.stats(info.id)
            gpus.append(dict(identity_json(info), metrics=stats[1] if stats else None))
        out = {"gpus": gpus, "demo": self.config.demo}
        if not gpus:
            out["message"] = ("No AMD GPU (amdgpu driver) found under %s/class/drm. "
                              "Run with --demo to see the dashboard with synthetic GPUs."
                              % self.config.sysfs_root)
        return out

    def start(self):
        """Bind, then start every thread. Returns the bound (host, port)."""
        self.server = DashboardServer((self.config.listen_host, self.config.listen_port), self)
        self.hub.start()
        self.manager.start()
        if self.procs_thread is not None:
            self.procs_thread.start()
        self._serve_thread = threading.Thread(target=self.server.serve_forever, args=(0.2,),
                                              name="http-server")
        self._serve_thread.daemon = True
        self._serve_thread.start()
        return self.server.server_address[:2]

    def stop(self):
        """Stop within about a second: HTTP first, then Close 1001 to every WebSocket."""
        if self.server is not None:
            self.server.shutdown()
            self.server.close_idle_connections()
        self.hub.stop()
        self.manager.stop()
        if self.procs_thread is not None:
            self.procs_thread.stop()
        for thread in (self.hub, self.manager, self.procs_thread, self._serve_thread):
            if thread is not None and thread.is_alive():
                thread.join(2.0)
        if self.server is not None:
            self.server.server_close()


class DemoManager(StoppableThread):
    """--demo: a fixed pair of synthetic GPUs with the same sampler machinery."""

    def __init__(self, cache, interval_s):
        StoppableThread.__init__(self, "discovery")
        self.cache = cache
        self._samplers = [Sampler(DemoGpuReader(info, seed=i + 1), cache, interval_s)
                          for i, info in enumerate(demo_gpu_infos())]

    def run(self):
        self.cache.set_gpus([s.reader.info for s in self._samplers])
        for sampler in self._samplers:
            sampler.tick()          # values at once, not one interval later
            sampler.start()
        self.cache.ready.set()
        self.stopping.wait()
        for sampler in self._samplers:
            sampler.stop()
        for sampler in self._samplers:
            sampler.join(2.0)

    def readers(self):
        return [s.reader for s in self._samplers]


def setup_logging(level):
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s thread=%(threadName)s %(message)s")


def run_once(config):
    """--once: sample every GPU once; print JSON (--json) or a short table."""
    if config.demo:
        readers = [DemoGpuReader(info) for info in demo_gpu_infos()]
    else:
        names = NameResolver(config.share_root)
        infos = [read_gpu_info(card, path, names) for card, path in find_drm_cards(config.sysfs_root)]
        readers = [AmdGpuReader(info) for info in infos if info is not None]
    now, epoch = time.monotonic(), time.time()
    gpus = []
    for reader in readers:
        gpus.append(dict(identity_json(reader.info), metrics=reader.sample(now)))
        reader.close()
    snapshot = {"version": __version__, "ts": format_ts(epoch), "gpus": gpus}
    if config.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(format_once_table(gpus))
    return 0


def format_once_table(gpus):
    if not gpus:
        return "No AMD GPU found. Try --demo."
    lines = []
    for gpu in gpus:
        m = gpu["metrics"]
        lines.append("%s  %s  [%s]" % (gpu["id"], gpu["name"], gpu["pci"]))
        lines.append("  busy %s%%  sclk %s MHz  temp %s C  power %s W  vram %s/%s bytes  %s" % (
            m["gpu_busy_pct"], m["sclk_mhz"], m["temp_c"], m["power_w"],
            m["vram_used_bytes"], m["vram_total_bytes"], m["runtime_status"] or ""))
    return "\n".join(lines)


def serve(config):
    app = App(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        host, port = app.start()
    except OSError as exc:
        print("amdgpu_top_web: error: cannot listen on %s:%d: %s"
              % (config.listen_host, config.listen_port, exc.strerror), file=sys.stderr)
        return 2
    LOG.info("event=listening url=http://%s:%d/ demo=%s", host or "0.0.0.0", port, config.demo)
    while not stop.wait(1.0):
        pass
    LOG.info("event=shutdown")
    app.stop()
    return 0


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        config = parse_config(argv, environ)
    except ConfigError as exc:
        print("amdgpu_top_web: error: %s" % exc, file=sys.stderr)
        return 2
    if config.show_help:
        print(format_help())
        return 0
    if config.show_version:
        print(__version__)
        return 0
    setup_logging(config.log_level)
    if config.once:
        return run_once(config)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
