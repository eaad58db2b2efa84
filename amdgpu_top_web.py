#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""amdgpu_top_web: a read-only web dashboard for live GPU telemetry.

AMD (amdgpu sysfs/hwmon), NVIDIA (NVML through ctypes, no install) and Intel
(i915/xe sysfs) GPUs, side by side. One file, Python standard library only.
Copy it onto a GPU host and run::

    python3 amdgpu_top_web.py            # serve on :8080, open http://HOST:8080/
    python3 amdgpu_top_web.py --demo     # synthetic AMD and NVIDIA GPUs, no GPU needed
    python3 amdgpu_top_web.py --once --json   # one snapshot of every GPU, then exit
    python3 amdgpu_top_web.py --healthcheck   # exit 0 when the server answers /api/healthz
    python3 amdgpu_top_web.py --help     # every setting (APP_* variable and flag)

It shows, per GPU, load, clocks, temperatures, fan, power, VRAM/GTT and PCIe
link, pushed live over a WebSocket, and a "process top" of who uses the GPU.

Endpoints (GET/HEAD only; anything else is 405)::

    /                         the page (index.html beside this file)
    /api/gpus                 identity + latest metrics of every GPU
    /api/gpus/{id}/metrics    latest stats of one GPU
    /api/gpus/{id}/procs      latest process list of one GPU
    /api/gpus/{id}/history    the live 10-minute ring of one GPU as the finest tier
                              ("live"); with ?range= or ?from=&to=&step=: the
                              stored history, in the same shape
    /api/gpus/{id}/processes  ?at=T: who was on the GPU then (stored samples)
    /api/host                 latest host frame: CPU, load, RAM, swap, memory pressure
    /api/host/history         the host's stored history (?range=, from/to/step)
    /api/processes            process runs (?range=, from/to, gpu=, active=, by=&key=)
    /api/usage                who used how much GPU, VRAM, energy (?range=, from/to, by=, gpu=)
    /api/processes/{run}/history   one run's VRAM, GTT and engine % over time
    /api/alerts               alert events (?range=30m|1h|6h|24h|7d|30d|1y, from/to)
                              (every history and alert endpoint: &format=csv)
    /api/healthz /api/readyz /api/version
    /api/fleet                the fleet: a hub's hosts (APP_FLEET_PEERS or
                              APP_FLEET_PROMETHEUS_URL), else this one
    /api/fleet/host           this server's own fleet host entry (what a hub asks)
    /api/fleet/targets        a hub's peers as Prometheus http_sd target groups
    /api/fleet/history        one GPU metric of the whole fleet (?metric=&range=;
                              APP_FLEET_PROMETHEUS_URL only: query_range)
    /plain                    server-rendered tables (no JavaScript needed)
    /metrics                  Prometheus text (APP_ENABLE_PROMETHEUS=true)
    /vendor/...               the page's ES modules (APP_VENDOR_DIR, air-gapped)
    /debug/threads /debug/memory   (APP_ENABLE_PPROF=true)
    /ws                       WebSocket: hello, stats, procs, host, gpus, alert, fleet,
                              pong, error
    /hosts/{name}/...         a hub's peer (APP_FLEET_PEERS) by name: its page, API and
                              /ws through this server (GET/HEAD and the upgrade only)

Every request's Host must be loopback, this machine, an address or in
APP_ALLOWED_HOSTS (403: DNS rebinding); with APP_AUTH_TOKEN, all but
/api/healthz and /api/readyz need the token (Bearer, or the cookie that
/?token= sets; 401 otherwise).

Threads::

    browser --HTTP--> ThreadingHTTPServer handler threads (answer from the cache)
    browser --/ws --> handshake in a handler thread, socket handed to the hub
    browser --/hosts/{name}/...--> a handler thread relays it to that peer; for
                     /hosts/{name}/ws it stays, splicing bytes both ways (at most 64)
    hub (ONE thread, selectors loop) <-- wake-up socketpair <-- cache.publish()
    cache (lock) <-- the sampler clock (SamplerClock: two threads taking turns, one
                     wake-up per tick) runs what is due: each GPU's sampler (a
                     backend's reader: sysfs/hwmon with kept fds + pread, or NVML
                     calls prepared once; a GPU whose read overran gets a thread
                     of its own), the process scan (budgeted /proc walk + fdinfo;
                     NVML's lists), the host sample (/proc/stat, meminfo, loadavg,
                     pressure; 1 Hz) and the alert engine's pass (1 Hz)
                 <-- discovery (asks every backend: AMD, Intel, NVIDIA, demo; the
                     first time in its thread, then every 2 s on the clock)
    cache --sinks--> Inbox (drop-oldest) --> history-writer (ONE thread, SQLite file,
                     a transaction every 5 s); handler threads read it through
                     its HistoryReader, with their own connections
    cache --offer_*--> sinks: alert engine thread (its Inbox) --> cache.publish_alert
                       (a frame to every client) and --> webhook thread (its Inbox;
                       POST, retries)
    hub of a fleet: fleet-poller thread, one round per APP_FLEET_INTERVAL --> a few
                    fleet-worker threads (GET each peer's /api/fleet/host, kept
                    connections) --> cache.publish_fleet (the fleet's subscribers)

Contents (a section uses only the sections above it)::

     0. Header (this docstring: usage, endpoints, threads, Contents, Paths)
     1. Imports
     2. Constants
        general; WebSocket and HTTP limits, headers, route patterns; metrics,
        AMD sysfs files and hwmon labels; NVIDIA; Intel; process top; host
        metrics; history store; VRAM forecast, alerts and the webhook; the fleet
     3. Data types
        configuration; a GPU and a published frame; NVML structs; process top;
        the fleet
     4. Pure parsers and maths
        sysfs values, PCIe, the ids files; configuration; hwmon planning; raw
        file contents -> metrics; gpu_metrics; NVIDIA and Intel values ->
        metrics; process top; host metrics; command lines; history; VRAM
        forecast; alerts; fleet
     5. WebSocket codec (sans-IO, RFC 6455)
        frames; decoding
     6. Pure HTTP helpers
        the WebSocket handshake; routes and query parameters; checks; the
        fleet proxy; one builder per wire shape; the Alertmanager webhook
        body, alert events in a time range; CSV answers; texts; Prometheus
        text; the fleet from Prometheus; debug pages; the page's ES modules
        from APP_VENDOR_DIR; the plain view
     7. Readers: thin I/O (path -> text or None), /proc, NVML
        files; DRM cards, hwmon dirs and names; /proc; NVIDIA; the thread base
     8. Process top: the fdinfo scanner (AMD and Intel GPUs; KFD VRAM)
        /proc enrichment of a process row; the /proc walk; KFD; the scanner
     9. Backends: each vendor's reader, backend and process source
        the backend seam; AMD; Intel; NVIDIA; demo; every backend, and one
        process source over theirs
    10. Insight: the VRAM forecaster, the alert engine, the webhook
        VRAM forecaster; alert engine; alert webhook
    11. The live cache and its threads
        the cache; samplers; the host; discovery
    12. Fleet: a hub's peers, Prometheus and the proxy
        the peer list; the peers poller; Prometheus; the proxy
    13. History store (SQLite: the only code that speaks SQL)
        schema and SQL text; opening the file; run rows and source ids; the
        reader; the writer
    14. WebSocket hub: one thread, one selectors loop over every WebSocket
        the hub's bookkeeping; one connection and the application protocol; the
        hub thread
    15. HTTP server and handler
        the server; the GET routes; the handler
    16. CLI and main()
        the application; --once, --healthcheck and serving

Paths (the names to visit, place by place; "§N" is the section of that place)::

    Every live frame ends the same way: Cache.publish_* (§11) builds it with
    its §6 builder (build_stats_message, build_procs_message, ...) and hands
    it to Hub.on_frame (§13), which sends it to every page subscribed to it.

    A metric end to end (NVIDIA's power, NVML -> the page's power_w)
      §9   NvidiaBackend.open, NvidiaGpuReader._plan, NvidiaGpuReader._scalar,
           NvidiaGpuReader.sample
      §11  Sampler.tick, Cache.publish_stats
      §6   build_stats_message
    An alert to its webhook (a temperature over its rule)
      §4   parse_alert_rules, temperature_levels, AlertState
      §6   build_alert_event, format_alert_summary, build_webhook_payload
      §10  AlertEngine.offer_stats, AlertEngine._on_stats, AlertEngine._emit,
           WebhookSender.send, WebhookSender.deliver
    A process run's alert (a process holding VRAM idle: gpu_held_idle)
      §4   compute_held_idle, compute_proc_busy_pct, build_alert_process, alert_row_subject
      §6   format_held_idle, build_alert_event, build_webhook_payload
      §10  AlertEngine._on_procs, HeldIdleRule.on_procs, AlertEngine._emit
    A history query (/api/gpus/{id}/history?range=1h)
      §6   route, parse_history_query, build_series_answer, series_csv
      §13  HistoryReader.query_series, _series_select
      §15  Routes.route_gpu_history, Routes._series, Routes._prepare
    The fleet from Prometheus (a hub with APP_FLEET_PROMETHEUS_URL)
      §4   parse_prom_answer, parse_prom_vector
      §6   prom_scrape_stamps, prom_fleet_to_read, build_prom_fleet_queries,
           prom_instance_matcher, compute_prom_fleet, build_prom_fleet_host,
           build_fleet_message
      §12  FleetThread.run, FleetPrometheus.poll, FleetPrometheus._query_all,
           PromClient.get, FleetPrometheus._merge, FleetPrometheus._entries,
           FleetPrometheus._state
    A process row, AMD (fdinfo, KFD VRAM)
      §4   parse_fdinfo, compute_client_usage, compute_procs_by_pci, build_proc_row,
           build_procs_entry
      §8   ProcEnricher.describe, _PidWalker.walk, KfdReader.read_vram, ProcScanner.scan
      §11  ProcScanThread.tick, Cache.publish_procs
    A process row, NVIDIA (NVML's process lists)
      §4   merge_nvml_processes, pick_nvml_util, build_proc_row, build_procs_entry
      §9   NvidiaBackend.proc_source, read_nvml_list, NvmlProcSource.refresh,
           NvmlProcSource._row
      §11  ProcScanThread.tick, Cache.publish_procs
    A process row, Intel (fdinfo drm-cycles; the scanner AMD shares)
      §4   parse_fdinfo, compute_cycles_pct, compute_client_usage, build_proc_row
      §8   ProcScanner.scan
      §11  ProcScanThread.tick, Cache.publish_procs
    Who a process belongs to (/proc/<pid>/cgroup -> unit, container, k8s, slurm)
      §4   parse_cgroup_who, parse_systemd_unit, parse_cgroup_runtime, parse_rootless_runtime,
           parse_k8s_pod_uid, parse_slurm_cgroup, compute_who_columns
      §8   ProcEnricher.who, WhoNames.fields, make_who_names
      §13  HistoryReader.query_runs, history_run_json
    What a run cost (energy split by engine time, #18)
      §4   compute_energy_interval_j, EnergyLedger, compute_energy_split, RunTracker.feed
      §13  HistoryBatch._add_sample, HistoryBatch._add_procs
    The usage report (/api/usage?range=7d&by=user)
      §4   compute_run_clip, compute_usage_rows, compute_usage_totals
      §6   parse_usage_query, build_usage_answer, usage_csv
      §13  HistoryReader.query_usage, HistoryReader._edge_samples, HistoryReader._usage_gpus
    Adding a vendor (a checklist: the page shows what the server sends)
      §2   INTEL_DRIVERS, VENDOR_LABELS, VENDOR_DISPLAY, INTEL_LAYOUT
      §4   plan_intel_hwmon, parse_throttle_flags, compute_energy_power_w
      §9   IntelGpuReader, IntelBackend, make_backends, make_proc_source

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
import bisect
import calendar
import codecs
import collections
import concurrent.futures
import csv
import enum
import errno
import fcntl
import gc
import hashlib
import hmac
import html
import io
import http.client
import ipaddress
import itertools
import json
import logging
import math
import os
import pwd
import random
import re
import selectors
import signal
import socket
import stat
import statistics
import struct
import threading
import time
import traceback
import tracemalloc
import zlib
from http import HTTPStatus
try:
    import ssl                  # https peers of a hub; a Python built without it has none
except ImportError:             # pragma: no cover
    ssl = None
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit

try:                    # stdlib, but a minimal Python may be built without SQLite:
    import sqlite3      # then history is off
except ImportError:     # pragma: no cover
    sqlite3 = None

try:                    # stdlib, but a minimal Python may be built without libffi:
    import ctypes       # then there is simply no NVIDIA backend
except ImportError:     # pragma: no cover
    ctypes = None


# ---------------------------------------------------------------------------
# 2. Constants
# ---------------------------------------------------------------------------

# -- general: logging, drivers and vendors, intervals, limits ---------------

LOG = logging.getLogger("amdgpu_top_web")

AMD_DRIVER = "amdgpu"
INTEL_DRIVERS = ("i915", "xe")


VENDOR_LABELS = {"amd": "AMD", "nvidia": "NVIDIA", "intel": "Intel"}


# What the page shows of a vendor, so that it never branches on one: the badge, what its
# temp_c sensor, sclk_mhz clock, runtime_status and energy_j counter are called, the memory
# pools it always has (a row is shown for these even before any value), and where its
# process rows come from ("nvml" or "fdinfo"; the demo imitates its vendor's).
VENDOR_DISPLAY = {
    "amd": ("AMD", {"temp_c": "edge", "sclk_mhz": "Shader clock", "runtime_status": "Runtime PM",
                    "energy_j": "cumulative counter"}, ("vram", "gtt"), "fdinfo"),
    "nvidia": ("NVIDIA", {"temp_c": "GPU", "sclk_mhz": "Graphics clock", "runtime_status": "State",
                          "energy_j": "since driver load"}, ("vram",), "nvml"),
    "intel": ("Intel", {"temp_c": "package", "sclk_mhz": "GPU clock", "runtime_status": "Runtime PM",
                        "energy_j": "cumulative counter"}, ("vram",), "fdinfo"),
}
FDINFO_DRIVERS = (AMD_DRIVER,) + INTEL_DRIVERS    # DRM clients process top keeps
HISTORY_WINDOW_S = 600.0        # rolling history kept per GPU (10 minutes)
REDISCOVER_INTERVAL_S = 2.0     # how often /sys/class/drm is listed again
MISSING_RECHECK_S = 30.0        # a missing sysfs file is tried again this rarely
REVALIDATE_S = 5.0              # a kept file's directory is checked this often
SLOW_FILES_EVERY_S = 2.0        # totals, caps and PCIe link change rarely
SYSFS_READ_SIZE = 4096
DEMO_MAX_GPUS = 8               # --demo shows up to this many synthetic GPUs
DEMO_SCENARIOS = ("none", "leak", "hostile", "held_idle")
ONCE_RATE_WAIT_S = 0.5          # --once reads twice this far apart (rates need two reads)
SHUTDOWN_GRACE_S = 0.6          # time clients get to answer our Close 1001
PROC_SCAN_BUDGET_S = 0.5        # wall-clock budget of one /proc walk (then resumed next scan)

DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}


# -- WebSocket and HTTP limits, headers, route patterns ---------------------

WS_MAX_MESSAGE_BYTES = 65536    # client messages are small JSON objects
WS_QUEUE_FRAMES = 64            # per-client outbound queue (drop-oldest past it)
WS_QUEUE_BYTES = 8 * 1024 * 1024
WS_RECV_SIZE = 65536
WS_SNDBUF_BYTES = 65536
WS_SEND_BUFFERS = 64            # buffers per sendmsg() of a queue (Linux IOV_MAX is 1024)
WS_TIMER_TICK_S = 0.25          # close deadlines and stuck writers are checked this often
WS_IDLE_WAKE_S = 1.0            # the hub loop wakes at least this often
HTTP_POLL_S = 5.0               # the HTTP accept loop's poll (shutdown() wakes it at once)
WS_CLOSE_TIMEOUT_S = 2.0        # a peer gets this long to answer our Close
WS_PING_AFTER = 0.5             # a silent client is pinged after this part of the read timeout
WS_PING_PAYLOAD = b"keepalive"
WS_WAKE_READ_SIZE = 4096
WS_SHUTDOWN_POLL_S = 0.05       # the hub loop's tick while shutdown waits for Close answers
# {"type":"subscribe",...,"detail":"overview"}: each GPU's stats at most once per
# period (the newest), and procs frames cut to the rows the overview's "top
# process" may pick; "full" (the default) is every frame.
WS_SUBSCRIBE_DETAILS = ("full", "overview")
WS_OVERVIEW_STATS_PERIOD_S = 1.0
HTTP_IDLE_TIMEOUT_S = 15.0
HTTP_ERROR_LOG_PER_S = 20       # error lines logged per second at most (the rest counted)

CDN_ORIGIN = "https://cdn.jsdelivr.net"
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
GPU_ROUTE_KINDS = ("metrics", "procs", "history", "processes")    # /api/gpus/{id}/<kind>
GPU_PATH_RE = re.compile(r"^/api/gpus/([A-Za-z0-9_.:-]{1,64})/(%s)$" % "|".join(GPU_ROUTE_KINDS))
GPU_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MACHINE_NAMES_DNS_WAIT_S = 2.0     # the start waits this long for getfqdn at most
HOST_NAME_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*$")
# RFC 6750 b64token, also a valid cookie value (RFC 6265 cookie-octet).
AUTH_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
RUN_PATH_RE = re.compile(r"^/api/processes/([0-9]{1,18})/history$")


# -- metrics, AMD sysfs files and hwmon labels ------------------------------

PCIE_GEN_BY_GTS = ((2.5, 1), (5.0, 2), (8.0, 3), (16.0, 4), (32.0, 5), (64.0, 6))

METRIC_KEYS = (
    "gpu_busy_pct", "mem_busy_pct", "sclk_mhz", "mclk_mhz",
    "temp_c", "temp_junction_c", "temp_mem_c", "fan_rpm", "fan_pct",
    "power_w", "power_cap_w", "power_fast_w", "power_fast_cap_w",
    "vddgfx_mv", "vddnb_mv",
    "vram_used_bytes", "vram_total_bytes", "vis_vram_used_bytes", "vis_vram_total_bytes",
    "gtt_used_bytes", "gtt_total_bytes",
    "pcie_gen", "pcie_speed_gts", "pcie_width", "runtime_status",
    # added with the other vendors; null where a vendor lacks them
    "throttle_reasons", "pstate", "enc_pct", "dec_pct", "vram_reserved_bytes", "energy_j",
    "vram_used_source", "sm_clock_mhz",
    # NVIDIA: memory ECC error counts (null without ECC) and MIG instances (null: MIG off)
    "ecc_corrected_volatile", "ecc_uncorrected_volatile", "ecc_corrected_aggregate",
    "ecc_uncorrected_aggregate", "mig",
    # from AMD's binary gpu_metrics table where the plain files lack them
    "socclk_mhz", "vclk_mhz", "dclk_mhz", "mm_busy_pct", "power_gfx_w", "power_soc_w",
    "temp_vrgfx_c", "temp_vrsoc_c", "temp_vrmem_c", "cpu_core_power_w", "cpu_core_temp_c",
    # the card's own temperature limits (hwmon temp*_crit, read once; alert levels)
    "temp_crit_c", "temp_junction_crit_c", "temp_mem_crit_c",
    # the VRAM forecast (a dict: compute_vram_forecast; set by the cache, null in --once)
    "vram_forecast",
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
GPU_METRICS_FILE = "gpu_metrics"             # binary; at most a few KiB (v1.8: 3872 bytes)
GPU_METRICS_READ_SIZE = 16384
# Metric key <- gpu_metrics fields (first one present wins), used only where the
# plain sysfs/hwmon files gave nothing: the two sources agree where both exist.
GPU_METRICS_FILL = (
    ("temp_c", ("temperature_edge_c", "temperature_gfx_c")),
    ("temp_junction_c", ("temperature_hotspot_c",)),
    ("temp_mem_c", ("temperature_mem_c",)),
    ("gpu_busy_pct", ("average_gfx_activity_pct",)),
    ("mem_busy_pct", ("average_umc_activity_pct",)),
    ("sclk_mhz", ("current_gfxclk_mhz", "average_gfxclk_mhz")),
    ("mclk_mhz", ("current_uclk_mhz", "average_uclk_mhz")),
    ("fan_rpm", ("current_fan_speed_rpm",)),
    ("power_w", ("average_socket_power_w", "curr_socket_power_w")),
    ("energy_j", ("energy_accumulator_j",)),
    ("socclk_mhz", ("current_socclk_mhz", "average_socclk_mhz")),
    ("vclk_mhz", ("current_vclk0_mhz", "average_vclk0_mhz", "average_vclk_mhz")),
    ("dclk_mhz", ("current_dclk0_mhz", "average_dclk0_mhz", "average_dclk_mhz")),
    ("mm_busy_pct", ("average_mm_activity_pct", "average_vcn_activity_pct")),
    ("power_gfx_w", ("average_gfx_power_w",)),
    ("power_soc_w", ("average_soc_power_w",)),
    ("temp_vrgfx_c", ("temperature_vrgfx_c",)),
    ("temp_vrsoc_c", ("temperature_vrsoc_c",)),
    ("temp_vrmem_c", ("temperature_vrmem_c",)),
    ("cpu_core_power_w", ("average_core_power_w",)),
    ("cpu_core_temp_c", ("temperature_core_c",)),
)
DPM_FALLBACK_FILES = (("sclk_dpm", "pp_dpm_sclk"), ("mclk_dpm", "pp_dpm_mclk"))

TEMP_LABELS = {"edge": "temp_c", "junction": "temp_junction_c", "mem": "temp_mem_c"}
TEMP_INDEX_FALLBACK = {1: "temp_c", 2: "temp_junction_c", 3: "temp_mem_c"}
FREQ_LABELS = {"sclk": "sclk_mhz", "mclk": "mclk_mhz"}
FREQ_INDEX_FALLBACK = {1: "sclk_mhz", 2: "mclk_mhz"}
VOLT_LABELS = {"vddgfx": "vddgfx_mv", "vddnb": "vddnb_mv"}
POWER_PRIMARY_LABELS = ("PPT", "slowPPT")
POWER_FAST_LABEL = "fastPPT"

NAME_FILES = ("libdrm/amdgpu.ids", "hwdata/pci.ids", "misc/pci.ids")

NO_GPU_MESSAGE = ("No GPU found: no amdgpu, i915 or xe card under %s/class/drm, and NVML (%s) "
                  "found none. Run with --demo to see the dashboard with synthetic GPUs.")
DPM_LINE_RE = re.compile(r"^\s*([0-9]+|[SF]):\s*([0-9]+)\s*mhz\b(.*)$", re.IGNORECASE)
PCIE_DPM_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*GT/s,\s*x([0-9]+)", re.IGNORECASE)
LINK_SPEED_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*GT/s", re.IGNORECASE)
HWMON_FILE_RE = re.compile(r"^(temp|freq|in|power|fan|pwm)(0|[1-9][0-9]*)_([a-z_]+)$")


# -- NVIDIA (NVML, nvml.h) --------------------------------------------------

NVML_DEFAULT_LIBRARY = "libnvidia-ml.so.1"
NVML_SUCCESS = 0                       # nvmlReturn_t values (nvml.h)
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
# A call answering one of these will never work on this GPU: stop asking.
NVML_DISABLING_ERRORS = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND,
                         NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_THRESHOLDS = ((1, "temp_crit_c"), (2, "temp_mem_crit_c"))   # SLOWDOWN, MEM_MAX
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_PSTATE_UNKNOWN = 32
NVML_MEMORY_V2_VERSION = 40 | 2 << 24            # nvmlMemory_v2: sizeof | version << 24
NVML_FAN_SPEED_INFO_VERSION = 12 | 1 << 24       # nvmlFanSpeedInfo_v1
NVML_PROC_UTIL_INFO_VERSION = 24 | 1 << 24       # nvmlProcessesUtilizationInfo_v1
NVML_MEMORY_NA = 0xFFFFFFFFFFFFFFFF              # usedGpuMemory "not available"
NVML_NAME_BUFFER = 96                            # NVML_DEVICE_NAME_V2_BUFFER_SIZE
NVML_UUID_BUFFER = 96
NVML_PROCESS_NAME_BUFFER = 1024                  # a path (pynvml uses 1024 too)
NVML_DRIVER_VERSION_BUFFER = 80                  # NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE
NVML_LIST_ATTEMPTS = 3                           # process lists may grow between calls
# nvmlClocksEventReason* bits (nvml.h), in bit order; other bits read as "other".
NVML_CLOCK_EVENT_REASONS = (
    (0x1, "GpuIdle"), (0x2, "ApplicationsClocksSetting"), (0x4, "SwPowerCap"),
    (0x8, "HwSlowdown"), (0x10, "SyncBoost"), (0x20, "SwThermalSlowdown"),
    (0x40, "HwThermalSlowdown"), (0x80, "HwPowerBrakeSlowdown"),
    (0x100, "DisplayClockSetting"), (0x200, "BoardLimit"), (0x400, "Reliability"),
)
NVML_CLOCK_EVENT_KNOWN = sum(bit for bit, _ in NVML_CLOCK_EVENT_REASONS)
NVML_UTIL_LIMITED = ("sm", "enc", "dec")     # a sample over 100 % here is bogus (nvtop#110)
NVML_UTIL_ENGINES = ("sm", "mem", "enc", "dec", "jpg", "ofa")   # the old API has the first four
# MIG (nvml.h "Multi Instance GPU Management"): the current mode's value when on,
# the GI/CI ids of a process entry when MIG is off, and a MIG name's profile
# ("NVIDIA A100-SXM4-40GB MIG 1g.5gb" -> "1g.5gb"; compute-instance profiles
# read like "1c.2g.20gb", media extensions "1g.10gb+me").
NVML_DEVICE_MIG_ENABLE = 1
NVML_NO_INSTANCE_ID = 0xFFFFFFFF
MIG_BUSY_NOTE = ("not reported: NVML gives no whole-GPU or per-instance utilisation "
                 "under MIG; the memory per instance is shown instead")
MIG_PROFILE_RE = re.compile(r"\bMIG\s+((?:\d+c\.)?\d+g\.\d+gb(?:\+\w+)?)\s*$")
# ECC: (nvmlMemoryErrorType_t, nvmlEccCounterType_t) -> metric key. Corrected =
# single-bit; volatile counts since the driver loaded, aggregate for the card's life.
NVML_ECC_COUNTERS = ((0, 0, "ecc_corrected_volatile"), (1, 0, "ecc_uncorrected_volatile"),
                     (0, 1, "ecc_corrected_aggregate"), (1, 1, "ecc_uncorrected_aggregate"))
NVML_PROCESS_LISTS = (("C", "nvmlDeviceGetComputeRunningProcesses"),
                      ("G", "nvmlDeviceGetGraphicsRunningProcesses"),
                      ("M", "nvmlDeviceGetMPSComputeRunningProcesses"))


# -- Intel (i915 / xe sysfs: Documentation/ABI/testing/sysfs-driver-intel-*) --

INTEL_HWMON_NAMES = ("i915", "xe")
INTEL_THROTTLE_NAMES = ("pl1", "pl2", "pl4", "thermal", "prochot", "ratl",
                        "vr_thermalert", "vr_tdc")
# Per driver: (GT frequency files, idle-residency files, throttle file pattern),
# each list tried in order; paths relative to the DRM card dir ("card:") or
# the PCI device dir ("dev:").
INTEL_LAYOUT = {
    "i915": (("card:gt/gt0/rps_act_freq_mhz", "card:gt_act_freq_mhz"),
             ("card:gt/gt0/rc6_residency_ms", "card:power/rc6_residency_ms"),
             ("card:gt/gt0/throttle_reason_%s",)),
    "xe": (("dev:tile0/gt0/freq0/act_freq",),
           ("dev:tile0/gt0/gtidle/idle_residency_ms",),
           ("dev:tile0/gt0/freq0/throttle/reason_%s",)),
}
INTEL_TEMP_LABELS = {"pkg": "temp_c", "vram": "temp_mem_c"}


# -- process top (fdinfo, /proc, command lines) -----------------------------

DRM_CHAR_MAJOR = 226                 # Linux DRM character devices (card*, renderD*)
DRM_RENDER_MINOR_BASE = 128          # renderD<minor> for minors >= 128
PROC_STAT_READ_LIMIT = 4096          # /proc/<pid>/stat is one short line
PROC_STATUS_READ_LIMIT = 16384
PROC_CGROUP_READ_LIMIT = 16384
PROC_MOUNTINFO_READ_LIMIT = 1 << 20
FDINFO_READ_LIMIT = 65536            # amdgpu fdinfo is ~1.5 KiB; newest kernels ~3 KiB
CMDLINE_READ_LIMIT = 8192            # read a bit more than CMD_MAX_LEN to redact correctly
CMD_MAX_LEN = 512
WHO_NAMES_TTL_S = 10.0               # container/pod names from runtime files: re-read after this
WHO_DIR_MAX_ENTRIES = 20000          # most entries read of a kubelet log directory
DOCKER_CONFIG_READ_LIMIT = 1 << 20   # <docker root>/containers/<id>/config.v2.json
CONTAINERS_JSON_READ_LIMIT = 16 << 20   # containers/storage's overlay-containers/containers.json
ELLIPSIS = "\u2026"
REDACTED = "***"
# Targets under /dev that are never a GPU: skip the stat() of the remap check.
_NOT_GPU_DEV_PREFIXES = (
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
    "/dev/pts/", "/dev/ptmx", "/dev/tty", "/dev/console", "/dev/shm/",
    "/dev/snd/", "/dev/input/", "/dev/net/", "/dev/log", "/dev/kmsg",
    "/dev/fuse", "/dev/kvm", "/dev/vhost", "/dev/hugepages", "/dev/mqueue/",
    "/dev/accel/", "/dev/hidraw", "/dev/video", "/dev/media", "/dev/bus/",
    "/dev/uinput", "/dev/rfkill", "/dev/autofs", "/dev/loop", "/dev/nvidia",
)


# -- host metrics (/proc: man 5 proc; Documentation/accounting/psi.rst) -----

HOST_INTERVAL_S = 1.0       # host frames: once a second (see HostSampler for why)
HOST_KEYS = (
    "cpu_busy_pct", "cpu_count", "load1", "load5", "load15",
    "mem_total_bytes", "mem_used_bytes", "mem_available_bytes",
    "swap_total_bytes", "swap_used_bytes",
    "mem_pressure_some_avg10", "mem_pressure_full_avg10",
)
# The host series kept in the rolling history (totals and the CPU count hardly move).
HOST_HISTORY_KEYS = (
    "cpu_busy_pct", "load1", "mem_used_bytes", "mem_available_bytes", "swap_used_bytes",
    "mem_pressure_some_avg10", "mem_pressure_full_avg10",
)
# key, path under the proc root, read size. /proc/stat: the cpu lines come first
# (~100 bytes per CPU), the long intr line after them is not needed.
HOST_FILES = (
    ("stat", "stat", 1 << 18),
    ("meminfo", "meminfo", 16384),
    ("loadavg", "loadavg", 256),
    ("pressure", "pressure/memory", 1024),     # kernel >= 4.20 with CONFIG_PSI
)
MEMINFO_NAMES = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")   # what build_host uses
PROC_CPU_MIN_INTERVAL_S = 0.1   # a process read again sooner keeps its last CPU %
PROC_BTIME_READ_LIMIT = 1 << 20  # /proc/stat: btime comes after the long intr line
MEMINFO_LINE_RE = re.compile(r"^([A-Za-z0-9_()]+):[ \t]*([0-9]+)( kB)?[ \t]*$", re.MULTILINE | re.ASCII)


# -- history store (history-insight.md) -------------------------------------

HISTORY_APP_ID = 0x61677477          # PRAGMA application_id: "agtw"
HISTORY_DEMO_APP_ID = 0x61677464     # "agtd": a --demo history (synthetic GPUs); never read as real
HISTORY_MEMORY = ":memory:"          # Config.history_path: kept in memory (the --demo default)
HISTORY_SCHEMA_VERSION = 1           # PRAGMA user_version: a newer file is refused, never touched
HISTORY_DEFAULT_MAX_BYTES = 256 << 20
HISTORY_MEMORY_MAX_BYTES = 32 << 20  # the in-memory fallback is bounded too
HISTORY_MIN_FREE_BYTES = 50 << 20    # writing pauses while the filesystem has less free
HISTORY_COMMIT_S = 5.0               # one transaction this often
HISTORY_QUEUE_MAX = 8192             # samples waiting for the writer (drop-oldest past it)
HISTORY_MAINTAIN_S = 60.0            # retention (age and size) is enforced this often
HISTORY_DELETE_SLICE = 2000          # rows per DELETE, so no statement runs long
HISTORY_TRIM_SLICES = 1000           # oldest slices cut per maintenance while over the cap
HISTORY_VACUUM_PAGES = 2000          # PRAGMA incremental_vacuum(N) after deletes, until none free
# The WAL counts against max_bytes too: it is checkpointed at a 16th of the cap
# (16 to 1000 pages), truncated back to that size, and the rows get the rest.
HISTORY_WAL_SHARE = 16
HISTORY_WAL_PAGES = (16, 1000)
HISTORY_SIDECARS = ("-wal", "-shm", "-journal")   # SQLite's files next to the database
# (name, step in seconds, kept for seconds): 1 s means, then min/avg/max/count roll-ups.
# Measured (tests/bench/bench_history.py, 22 metrics of a dGPU): a raw row ~110 B,
# a roll-up row ~295 B; 1 min rows for 90 days alone would be 38 MB per GPU, so
# they are kept 14 days and a 10 min tier carries 90 days (7-day charts read it).
HISTORY_TIERS = (("raw", 1, 48 * 3600), ("1m", 60, 14 * 86400), ("10m", 600, 90 * 86400),
                 ("1h", 3600, 2 * 365 * 86400))
HISTORY_MIN_POINTS = 300             # a chart gets about 300 to 1500 points
HISTORY_MAX_POINTS = 1500
HISTORY_NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                      21600, 43200, 86400, 172800, 604800)
HISTORY_PROC_SAMPLE_S = 10           # per-process samples ("who was on this GPU at T")
HISTORY_PROC_KEEP_S = 7 * 86400
HISTORY_RUN_KEEP_S = 365 * 86400     # process runs and alert events
HISTORY_RUN_MISSING_SCANS = 3        # a run ends after this many scans without it
HISTORY_RUN_MAX_GAP_S = 30.0         # a longer gap between sightings does not count as time
HISTORY_QUERY_MAX_ROWS = 5000        # runs / alerts answered at most
HISTORY_NOT_NUMERIC = ("runtime_status", "throttle_reasons", "vram_used_source", "vram_forecast",
                       "mig")
HISTORY_HOST_KEYS = HOST_KEYS        # the store keeps a column per host key
# Stored as integers in fixed units (facts sheet §3): value * scale, by name suffix.
HISTORY_SCALES = (("_bytes", 1.0 / (1 << 20)), ("_pct", 10.0), ("_c", 10.0), ("_w", 10.0),
                  ("_gts", 10.0), ("_avg10", 100.0), ("throttled", 1000.0))
HISTORY_LOAD_SCALE = 100.0
# What each GPU sample cost, added by the writer as series columns whose stored avg x n
# is their sum over any row (#18): energy measured over the interval (counter, else
# power x time), the part of it no process's engine time accounts for, busy GPU-seconds.
HISTORY_INTERVAL_KEYS = ("energy_used_j", "energy_idle_j", "busy_s")
HISTORY_INTERVAL_SCALE = 1000.0      # stored in thousandths (mJ, ms): sums stay exact
ENERGY_MAX_W = 100000.0              # a counter step above this is a glitch, not energy (all-smi)


# -- VRAM forecast, alerts and the webhook (history-insight.md §6-7) --------

FORECAST_WINDOW_S = 120.0       # the slope is fitted over the last 2 minutes...
FORECAST_MIN_POINTS = 30        # ...with at least this many points...
FORECAST_MIN_SPAN_S = 60.0      # ...spanning at least this long
FORECAST_STEP_S = 1.0           # the window keeps one point per second (O(n^2) fit)
FORECAST_EVERY_S = 1.0          # recomputed at most this often per GPU
FORECAST_CONFIDENCE = 0.95      # Sen's interval (scipy.stats.theilslopes' alpha)
FORECAST_NOISE_FLOOR_BPS = float(1 << 20)   # 1 MiB/s: below it nothing is claimed
FORECAST_MIN_USED = 0.5         # nor below half-full VRAM
FORECAST_STEP_SHARE = 0.5       # one jump carrying more of the rise: a step
FORECAST_STEP_MIN_BYTES = 64 << 20          # smaller jumps are never called steps
FORECAST_JUMP_S = 2.0           # a jump may take this long (a free caught mid-way)
FORECAST_HISTORY_S = 2 * FORECAST_WINDOW_S  # kept: a jump is judged against the window before it
FORECAST_LEVEL_S = 5.0          # the current level lies within these last seconds' samples
FORECAST_PROC_MAX = 64          # process series kept per GPU (largest VRAM first)

ALERT_RULES = ("gpu_temperature", "vram_usage", "vram_full_soon", "gpu_throttling",
               "fan_stopped", "gpu_lost", "busy_unattributed", "host_memory", "gpu_held_idle",
               "gpu_ecc_uncorrected")
ALERT_SEVERITIES = ("warning", "critical")
# Per rule: raise (warn/crit) and clear levels, the hold before firing (for_s)
# and the longer one before stepping down or resolving (clear_for_s); None =
# no such severity. Units: °C, %, seconds (vram_full_soon: time to full,
# "below"), 0/1 flags. Documented as a table in README.md.
ALERT_RULE_DEFAULTS = (
    ("gpu_temperature", {"enabled": True, "warn": 85.0, "warn_clear": 80.0, "crit": 95.0,
                         "crit_clear": 90.0, "for_s": 10.0, "clear_for_s": 30.0,
                         "card_limits": True}),
    ("vram_usage", {"enabled": True, "warn": 90.0, "warn_clear": 85.0, "crit": 97.0,
                    "crit_clear": 95.0, "for_s": 10.0, "clear_for_s": 30.0}),
    ("vram_full_soon", {"enabled": True, "direction": "below", "warn": 900.0,
                        "warn_clear": 1200.0, "crit": 300.0, "crit_clear": 420.0,
                        "for_s": 10.0, "clear_for_s": 30.0}),
    ("gpu_throttling", {"enabled": True, "warn": 1.0, "warn_clear": 0.0, "crit": None,
                        "crit_clear": None, "for_s": 60.0, "clear_for_s": 60.0}),
    ("fan_stopped", {"enabled": True, "warn": None, "warn_clear": None, "crit": 1.0,
                     "crit_clear": 0.0, "for_s": 15.0, "clear_for_s": 30.0, "hot_c": 70.0}),
    ("gpu_lost", {"enabled": True, "warn": None, "warn_clear": None, "crit": 1.0,
                  "crit_clear": 0.0, "for_s": 0.0, "clear_for_s": 30.0}),
    ("busy_unattributed", {"enabled": True, "warn": 50.0, "warn_clear": 20.0, "crit": None,
                           "crit_clear": None, "for_s": 60.0, "clear_for_s": 60.0}),
    ("host_memory", {"enabled": True, "warn": 90.0, "warn_clear": 80.0, "crit": 98.0,
                     "crit_clear": 90.0, "for_s": 30.0, "clear_for_s": 60.0}),
    # one alert per process run (1/0): >= min_vram bytes held, engine busy < max_busy %
    ("gpu_held_idle", {"enabled": True, "warn": 1.0, "warn_clear": 0.0, "crit": None,
                       "crit_clear": None, "for_s": 1800.0, "clear_for_s": 60.0,
                       "min_vram": float(1 << 30), "max_busy": 1.0}),
    # new uncorrected ECC errors in one reading (the volatile count's rise; NVIDIA):
    # fires at once, resolves after clear_for without another.
    ("gpu_ecc_uncorrected", {"enabled": True, "warn": None, "warn_clear": None, "crit": 1.0,
                             "crit_clear": 0.0, "for_s": 0.0, "clear_for_s": 600.0}),
)
ALERT_RULE_KEYS = ("enabled", "warn", "warn_clear", "crit", "crit_clear", "for", "clear_for")
# A process alert's "process" object: the run key, the names, who it belongs to.
ALERT_PROCESS_KEYS = ("pid", "start_time", "name", "user", "unit", "container", "container_name",
                      "k8s", "slurm")
# Throttle reasons that are no power or thermal limit (NVML clock events).
THROTTLE_BENIGN_REASONS = ("GpuIdle", "ApplicationsClocksSetting", "SyncBoost",
                           "DisplayClockSetting")
SENSOR_KEYS = ("temp_c", "power_w", "vram_used_bytes", "gpu_busy_pct")   # "a sensor gone"
ALERT_EVENTS_KEPT = 1000        # recent events kept in memory (history off)
ALERT_UPDATE_EVERY_S = 1.0      # an active alert's live summary goes out at most this often
ALERT_QUEUE_ITEMS = 512         # the engine's inbox (drop-oldest past it)
ALERT_LOST_AFTER_S = 5.0        # a sensor null this long (GPU active) counts as gone
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_RETRIES = 3             # attempts per event after the first: backoff 1, 2, 4 s
WEBHOOK_BACKOFF_S = 1.0
WEBHOOK_QUEUE_ITEMS = 64
WEBHOOK_RECEIVER = "amdgpu_top_web"
ALERTMANAGER_ZERO_TIME = "0001-01-01T00:00:00Z"   # endsAt of a firing alert (Alertmanager)
ALERTS_DEFAULT_RANGE_S = 86400.0
# hello carries each GPU's ring as the page's sparklines draw it: their series,
# and at most one point (the max) per column of their 300 (SPARK_W in index.html).
HELLO_HISTORY_KEYS = ("gpu_busy_pct", "mem_busy_pct", "power_w", "temp_c", "temp_junction_c",
                      "vram_used_bytes")
HELLO_HISTORY_POINTS = 300
# the latest of each is kept in the cache; "procs_top" is the overview's cut of "procs";
# "fleet": a hub's fleet after a poll round
SAMPLE_FRAME_KINDS = ("stats", "procs", "procs_top", "host", "fleet")


# -- the fleet: peers, Prometheus, the proxy (attribution-fleet.md §5) ------

FLEET_MAX_PEERS = 1000          # most peers one list may name
FLEET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$")   # a peer's name: a path segment
FLEET_PEERS_FILE_LIMIT = 1 << 20   # an @FILE peer list is read up to this many bytes
FLEET_PEERS_SETTLE_S = 1.0         # a peer file's change read at once when written this long ago
FLEET_TOKENS_FILE_LIMIT = 1 << 16
FLEET_HOST_PATH = "/api/fleet/host"   # what a hub asks each peer, once a round
FLEET_BUSY_PCT = 10             # a GPU at or above this gpu_busy_pct is busy, below idle
FLEET_STALE_INTERVALS = 5       # a peer's kept data younger than this many rounds: stale, else down
FLEET_MAX_ANSWER_BYTES = 4 << 20   # a peer's answer past this is refused, never read
FLEET_WORKERS = 8               # peer requests at once (threads, started as needed)
FLEET_BACKOFF_MAX_S = 30.0      # a failing peer is asked again after 1, 2, 4... rounds, up to
FLEET_BACKOFF_MAX_INTERVALS = 8     # this many rounds (and never more than FLEET_BACKOFF_MAX_S)
FLEET_LEGACY_RECHECK = 30      # an older peer (404): asked /api/fleet/host again after this many polls
FLEET_DEADLINE_GRACE_S = 0.25   # a round waits this past the timeout, then cuts what is left
FLEET_MAX_GPUS = 64             # a peer's answer: at most this many GPUs and alerts kept
FLEET_MAX_ALERTS = 64
FLEET_STATUS_RE = re.compile(br"^HTTP/1\.([01]) ([0-9]{3})(?: |$)")   # a peer's status line
FLEET_HEAD_MAX = 1 << 16        # a peer's answer head (status line and headers) at most
FLEET_TEXT_MAX = 200            # a string from a peer is cut to this many characters
FLEET_NUMBER_MAX = 2 ** 53      # a peer's number beyond this is null (floats hold integers to here)
FLEET_GPU_KEYS = ("id", "name", "vendor", "vendor_label", "uuid", "pci", "gpu_busy_pct",
                  "vram_used_bytes", "vram_total_bytes", "temp_c", "power_w", "power_cap_w",
                  "throttle_reasons", "runtime_status", "top_process", "processes", "alert")
FLEET_METRIC_KEYS = ("gpu_busy_pct", "vram_used_bytes", "vram_total_bytes", "temp_c", "power_w",
                     "power_cap_w", "throttle_reasons", "runtime_status")
FLEET_TOP_PROCESS_KEYS = ("pid", "name", "user", "vram_bytes", "gpu_pct", "who")
FLEET_HOST_KEYS = ("cpu_busy_pct", "cpu_count", "mem_used_bytes", "mem_total_bytes")
FLEET_ALERT_KEYS = ("rule", "gpu_id", "severity", "summary", "started")
FLEET_NUMERIC_KEYS = frozenset(("gpu_busy_pct", "vram_used_bytes", "vram_total_bytes", "temp_c",
                                "power_w", "power_cap_w", "processes", "pid", "vram_bytes",
                                "gpu_pct") + FLEET_HOST_KEYS)
FLEET_PROXY_PREFIX = "/hosts/"     # /hosts/{name}/...: a peer's page and API through the hub
FLEET_PROXY_READ_TIMEOUT_S = 10.0  # a proxied answer's head (connecting: APP_FLEET_TIMEOUT)
FLEET_PROXY_BODY_LIMIT = 64 << 20  # a proxied body is relayed up to this, then cut
FLEET_PROXY_HTTP_MAX = 32          # proxied HTTP requests at once (a handler thread each); 503 past
FLEET_PROXY_DEADLINE_S = 60.0      # a proxied HTTP request, head and body, all in all
FLEET_PROXY_CHUNK_BYTES = 65536
FLEET_PROXY_HEAD_LIMIT = 16384     # a peer's answer head to a proxied WebSocket upgrade
FLEET_PROXY_WS_MAX = 64            # proxied WebSockets at once (a handler thread each)
FLEET_PROXY_WS_IDLE_S = 120.0      # a proxied WebSocket silent both ways this long is closed
# RFC 9110 §7.6.1 hop-by-hop fields, never relayed either way
HOP_BY_HOP_HEADERS = frozenset(("connection", "keep-alive", "proxy-authenticate",
                                "proxy-authorization", "proxy-connection", "te", "trailer",
                                "transfer-encoding", "upgrade"))
# the browser's credentials for the hub and its Host/Origin stay at the hub
FLEET_PROXY_REQUEST_DROP = HOP_BY_HOP_HEADERS | frozenset((
    "host", "authorization", "cookie", "origin", "referer", "content-length", "forwarded",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"))
# (a proxied page runs in the hub's origin: nothing that reaches past it, a service
# worker's scope, a wipe of the origin's storage, a cookie)
FLEET_PROXY_RESPONSE_DROP = HOP_BY_HOP_HEADERS | frozenset((
    "set-cookie", "set-cookie2", "content-length", "server", "date", "service-worker-allowed",
    "clear-site-data"))
# the only fields of a peer's 101 relayed to the browser (its head is built anew)
FLEET_PROXY_WS_ANSWER_KEEP = ("Upgrade", "Connection", "Sec-WebSocket-Accept",
                              "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions")
# RFC 3986 pchar without '%': what a re-encoded path segment keeps as it is
FLEET_PROXY_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
# The Prometheus source (attribution-fleet.md §5.1-5.3): one answer is read up
# to this many bytes (1,000 hosts x 8 GPUs of one metric is ~1 MiB); a host
# seen once and then gone from every answer is dropped after FORGET_S.
FLEET_PROM_BODY_LIMIT = 64 << 20
FLEET_PROM_FORGET_S = 3600.0
FLEET_PROM_QUERY_THREADS = 4       # instant queries in flight at once (one per metric)
FLEET_PROM_HISTORY_POINTS = 300    # /api/fleet/history's default points per series
FLEET_PROM_MAX_POINTS = 11000      # Prometheus refuses more points per series
FLEET_PROM_HEADERS_MAX = 8


# ---------------------------------------------------------------------------
# 3. Data types
# ---------------------------------------------------------------------------

# -- configuration: the SETTINGS table and Config ---------------------------

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
    Setting("APP_ALLOWED_HOSTS", "--allowed-hosts", "allowed_hosts", "", "hosts",
            "Host names served besides loopback and this machine's names and addresses "
            "(DNS rebinding protection): a comma list, .example.com = any name under it, "
            "* = any (behind a reverse proxy that checks Host)"),
    Setting("APP_AUTH_TOKEN", "--auth-token", "auth_token", "", "secret",
            "access token: the page, API, /ws and /metrics ask for it (Authorization: Bearer, "
            "or open /?token=... once for a cookie); empty = no token"),
    Setting("APP_AUTH_TOKEN_FILE", "--auth-token-file", "auth_token_file", "", "optpath",
            "file holding the access token (read once at start), instead of APP_AUTH_TOKEN"),
    Setting("APP_DEFAULT_GPU", "--default-gpu", "default_gpu", "auto", "gpu",
            "GPU the page shows first (card id) or auto"),
    Setting("APP_ENABLE_PROMETHEUS", "--enable-prometheus", "enable_prometheus", "false", "bool",
            "serve Prometheus text at /metrics"),
    Setting("APP_PROMETHEUS_PROCESSES", "--prometheus-processes", "prometheus_processes", "0",
            "count0", "per-process series on /metrics: the top N processes per GPU, 0 = none"),
    Setting("APP_ENABLE_PPROF", "--enable-pprof", "enable_pprof", "false", "bool",
            "serve /debug/threads (thread stacks) and /debug/memory (tracemalloc)"),
    Setting("APP_LOG_LEVEL", "--log-level", "log_level", "INFO", "level",
            "DEBUG, INFO, WARNING or ERROR"),
    Setting("APP_SYSFS_ROOT", "--sysfs-root", "sysfs_root", "/sys", "path", "sysfs mount"),
    Setting("APP_PROC_ROOT", "--proc-root", "proc_root", "/proc", "path", "procfs mount"),
    Setting("APP_NVML_LIBRARY", "--nvml-library", "nvml_library", NVML_DEFAULT_LIBRARY, "path",
            "NVIDIA's NVML library, a name or a path (not found: no NVIDIA backend, all else runs)"),
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
    Setting("APP_DOCKER_ROOT", "--docker-root", "docker_root", "/var/lib/docker", "optpath",
            "Docker's data root: a process's container name from containers/<id>/config.v2.json "
            "(root-only files: else the id alone); empty = not looked at"),
    Setting("APP_CONTAINERS_STORAGE", "--containers-storage", "containers_storage",
            "/var/lib/containers/storage", "optpath",
            "Podman's and CRI-O's storage root: a container's name from "
            "overlay-containers/containers.json; empty = not looked at"),
    Setting("APP_K8S_PODS_DIR", "--k8s-pods-dir", "k8s_pods_dir", "/var/log/pods", "optpath",
            "the kubelet's pod log directory: a pod's namespace and name from its "
            "<namespace>_<pod>_<uid> entries; empty = not looked at"),
    Setting("APP_K8S_CONTAINERS_DIR", "--k8s-containers-dir", "k8s_containers_dir",
            "/var/log/containers", "optpath",
            "the kubelet's container log links: a pod container's name from "
            "<pod>_<namespace>_<container>-<id>.log; empty = not looked at"),
    Setting("APP_DEMO_PROCESSES", "--demo-processes", "demo_processes", "8", "count",
            "with --demo: synthetic processes per GPU"),
    Setting("APP_DEMO_GPUS", "--demo-gpus", "demo_gpus", "3", "demo_gpus",
            "with --demo: how many synthetic GPUs, 1 to 8 (AMD and NVIDIA)"),
    Setting("APP_DEMO_SCENARIO", "--demo-scenario", "demo_scenario", "none", "scenario",
            "with --demo: none; leak (card0's VRAM leaks to 98 percent, then frees: "
            "a forecast and alerts to look at); hostile (a process named like HTML, "
            "for escaping tests); or held_idle (card0's first process holds ~3.4 GiB of VRAM "
            "idle: a gpu_held_idle alert after its hold)"),
    Setting("APP_ALERTS", "--alerts", "alerts", "on", "bool",
            "built-in alert rules (frames, /api/alerts, webhook); --no-alerts turns them off"),
    Setting("APP_ALERT_RULES", "--alert-rules", "alert_rules", "", "optpath",
            "JSON file overriding alert rules: {rule: {enabled, warn, warn_clear, crit, "
            "crit_clear, for, clear_for}}"),
    Setting("APP_ALERT_WEBHOOK_URL", "--alert-webhook-url", "alert_webhook_url", "", "url",
            "http(s) URL receiving each alert change as Alertmanager webhook JSON"),
    Setting("APP_VENDOR_DIR", "--vendor-dir", "vendor_dir", "", "optpath",
            "npm node_modules folder to serve the page's modules from (air-gapped use)"),
    Setting("APP_FLEET_PEERS", "--fleet-peers", "fleet_peers", "", "peers",
            "hub: the other servers its Fleet view shows: a comma list of "
            "[NAME=]http(s)://HOST:PORT, or @FILE (one per line, or Prometheus file_sd "
            "JSON; re-read when it changes); empty = no peers"),
    Setting("APP_FLEET_PROMETHEUS_URL", "--fleet-prometheus-url", "fleet_prometheus_url", "",
            "url", "hub: read the fleet from this Prometheus-compatible query API instead of "
            "peers (the base URL, e.g. http://prometheus:9090)"),
    Setting("APP_FLEET_PROMETHEUS_HEADERS", "--fleet-prometheus-headers", "fleet_prometheus_headers",
            "", "headers", "hub: extra headers for every Prometheus query, 'Name: value' separated "
            "by ';' (e.g. X-Scope-OrgID: tenant for Mimir/Cortex)"),
    Setting("APP_FLEET_INTERVAL", "--fleet-interval", "fleet_interval_s", "2s", "scan_interval",
            "hub: how often the fleet is read again, 500ms to 60s"),
    Setting("APP_FLEET_TIMEOUT", "--fleet-timeout", "fleet_timeout_s", "1500ms", "timeout",
            "hub: how long one peer (or one Prometheus query) may take to answer"),
    Setting("APP_FLEET_TOKEN_FILE", "--fleet-token-file", "fleet_token_file", "", "optpath",
            "hub: tokens for peers that ask for one (their APP_AUTH_TOKEN): lines "
            "'NAME TOKEN', or '* TOKEN' for every peer (read once at start)"),
    Setting("APP_HISTORY_PATH", "--history-path", "history_path", "auto", "history_path",
            "SQLite history file; auto = $XDG_STATE_HOME/amdgpu_top_web/history.sqlite3 "
            "(else ~/.local/state/...; with --demo: memory), memory = kept in memory only, "
            "off = no history"),
    Setting("APP_HISTORY_MAX_BYTES", "--history-max-bytes", "history_max_bytes", "256MiB",
            "bytes", "most bytes of history kept (oldest rows go first), at least 1MiB"),
)

_MODE_FIELDS = ("demo", "once", "json", "healthcheck", "show_help", "show_version")
DEMO_ONLY_FIELDS = ("demo_processes", "demo_gpus", "demo_scenario")   # refused without --demo

Config = collections.namedtuple(
    "Config", ["listen_host", "listen_port"] + [s.field for s in SETTINGS if s.field != "listen"]
    + list(_MODE_FIELDS) + ["fleet_tokens"])     # fleet_tokens: load_fleet_tokens at start


# -- a GPU and a published frame --------------------------------------------

# What a GPU is, as the page and the API see it (plus where to read it).
#
#     vendor "amd" / "nvidia" / "intel"; uuid where the driver has one; card_dir
#     the DRM card dir (Intel's GT files live there); handle is the backend's own
#     key (NVML: the index of the handle), never shown. driver_version,
#     cuda_driver_version ("12.4"), sclk_max_mhz and mclk_max_mhz (the card's
#     maximum graphics and memory clocks): NVML's, read once; null elsewhere.
GpuInfo = collections.namedtuple(
    "GpuInfo", "id pci pci_id revision name render_node driver apu demo device_dir hwmon_dir "
    "vendor uuid card_dir handle driver_version cuda_driver_version sclk_max_mhz mclk_max_mhz",
    defaults=("amd", None, None, None, None, None, None, None))

# One published frame: the JSON payload (bytes) and the same as a WebSocket frame.
OutFrame = collections.namedtuple("OutFrame", "gpu_id kind payload wire")


# -- NVML structs (nvml.h; sizes checked against gcc in tests/nvml/) --------

if ctypes is not None:
    _U32, _U64 = ctypes.c_uint, ctypes.c_ulonglong

    class NvmlPciInfo(ctypes.Structure):          # nvmlPciInfo_t, 68 bytes
        _fields_ = [("busIdLegacy", ctypes.c_char * 16), ("domain", _U32), ("bus", _U32),
                    ("device", _U32), ("pciDeviceId", _U32), ("pciSubSystemId", _U32),
                    ("busId", ctypes.c_char * 32)]

    class NvmlUtilization(ctypes.Structure):      # nvmlUtilization_t, 8 bytes
        _fields_ = [("gpu", _U32), ("memory", _U32)]

    class NvmlMemory(ctypes.Structure):           # nvmlMemory_t (v1: used includes reserved)
        _fields_ = [("total", _U64), ("free", _U64), ("used", _U64)]

    class NvmlMemoryV2(ctypes.Structure):         # nvmlMemory_v2_t, 40 bytes
        _fields_ = [("version", _U32), ("total", _U64), ("reserved", _U64), ("free", _U64),
                    ("used", _U64)]

    class NvmlFanSpeedInfo(ctypes.Structure):     # nvmlFanSpeedInfo_v1_t, 12 bytes
        _fields_ = [("version", _U32), ("fan", _U32), ("speed", _U32)]

    class NvmlFieldValueUnion(ctypes.Union):
        _fields_ = [("dVal", ctypes.c_double), ("uiVal", _U32), ("ulVal", ctypes.c_ulong),
                    ("ullVal", _U64), ("sllVal", ctypes.c_longlong), ("siVal", ctypes.c_int),
                    ("usVal", ctypes.c_ushort)]

    class NvmlFieldValue(ctypes.Structure):       # nvmlFieldValue_t, 40 bytes
        _fields_ = [("fieldId", _U32), ("scopeId", _U32), ("timestamp", ctypes.c_longlong),
                    ("latencyUsec", ctypes.c_longlong), ("valueType", _U32),
                    ("nvmlReturn", _U32), ("value", NvmlFieldValueUnion)]

    class NvmlProcessInfoV1(ctypes.Structure):    # nvmlProcessInfo_v1_t, 16 bytes
        _fields_ = [("pid", _U32), ("usedGpuMemory", _U64)]

    class NvmlProcessInfoV2(ctypes.Structure):    # nvmlProcessInfo_v2_t = nvmlProcessInfo_t, 24
        _fields_ = [("pid", _U32), ("usedGpuMemory", _U64), ("gpuInstanceId", _U32),
                    ("computeInstanceId", _U32)]

    class NvmlProcessInfoR535(ctypes.Structure):  # early-R535 drivers' 32-byte entries
        _fields_ = [("pid", _U32), ("usedGpuMemory", _U64), ("gpuInstanceId", _U32),
                    ("computeInstanceId", _U32), ("usedGpuCcProtectedMemory", _U64)]

    class NvmlProcessUtilizationSample(ctypes.Structure):   # 32 bytes (the old API)
        _fields_ = [("pid", _U32), ("timeStamp", _U64), ("smUtil", _U32), ("memUtil", _U32),
                    ("encUtil", _U32), ("decUtil", _U32)]

    class NvmlProcessUtilizationInfo(ctypes.Structure):     # ..._v1_t, 40 bytes (R550+)
        _fields_ = [("timeStamp", _U64), ("pid", _U32), ("smUtil", _U32), ("memUtil", _U32),
                    ("encUtil", _U32), ("decUtil", _U32), ("jpgUtil", _U32), ("ofaUtil", _U32)]

    class NvmlProcessesUtilizationInfo(ctypes.Structure):   # ..._v1_t, 24 bytes
        _fields_ = [("version", _U32), ("processSamplesCount", _U32),
                    ("lastSeenTimeStamp", _U64),
                    ("procUtilArray", ctypes.POINTER(NvmlProcessUtilizationInfo))]

    class NvmlDeviceAttributes(ctypes.Structure):  # nvmlDeviceAttributes_t (MIG handles)
        _fields_ = [("multiprocessorCount", _U32), ("sharedCopyEngineCount", _U32),
                    ("sharedDecoderCount", _U32), ("sharedEncoderCount", _U32),
                    ("sharedJpegCount", _U32), ("sharedOfaCount", _U32),
                    ("gpuInstanceSliceCount", _U32), ("computeInstanceSliceCount", _U32),
                    ("memorySizeMB", _U64)]

# One process as an NVML list reports it (already converted from the struct);
# gi/ci: its MIG GPU and compute instance ids (NVML_NO_INSTANCE_ID without MIG).
NvmlProcess = collections.namedtuple("NvmlProcess", "pid used_bytes kind gi ci")
NvmlProcess.__new__.__defaults__ = (NVML_NO_INSTANCE_ID, NVML_NO_INSTANCE_ID)


# -- process top: fdinfo records, scan results, /proc/<pid>/stat ------------

# One parsed /proc/<pid>/fdinfo/<fd> of a DRM file (formats.md section 6).
#
#     memory/total map "vram", "gtt", "cpu" to bytes (None for a region the file
#     does not mention); the whole dict is None when the file has no such keys.
#     legacy is True for the amdgpu 5.14-5.18 format (pdev/pasid/"vram mem").
FdinfoRecord = collections.namedtuple(
    "FdinfoRecord", "driver pdev client_id pasid legacy memory total engines_ns capacity cycles "
    "total_cycles legacy_pct")


# What is kept of one client between two reads (all counters are maxima).
EngineSample = collections.namedtuple("EngineSample", "t_ns engines_ns cycles total_cycles")

# Plain, JSON-serialisable result of ProcScanner.scan()/refresh() (and DemoProcSource).
ScanResult = collections.namedtuple("ScanResult", "by_pci visibility stats")

# What process top keeps of one /proc/<pid>/stat line (man 5 proc): comm,
# starttime (field 22, clock ticks since boot), utime + stime (fields 14 and
# 15, clock ticks) and rss (field 24, pages); None where the line lacks them.
ProcStatLine = collections.namedtuple("ProcStatLine", "comm start_time cpu_ticks rss_pages")
NO_PROC_STAT = ProcStatLine(None, None, None, None)

# Who a process belongs to, from its /proc/<pid>/cgroup alone (parse_cgroup_who):
# unit (systemd's own name), container (today's short id or name), container_id
# (64 hex) and runtime ("docker", "podman", "containerd", "cri-o") where the path
# says, pod_uid (Kubernetes, dashed), slurm ({"job": int, "step": str or None}).
CgroupWho = collections.namedtuple("CgroupWho",
                                   "unit container container_id runtime pod_uid slurm")
NO_CGROUP_WHO = CgroupWho(None, None, None, None, None, None)


# -- the fleet: a peer and the peer setting ---------------------------------

# One peer of a hub: its name (a path segment of /hosts/{name}/; by default the
# URL's host:port, as Prometheus names an instance), its base URL without a
# trailing slash (scheme://host:port[/prefix]), scheme, host and port.
FleetPeer = collections.namedtuple("FleetPeer", "name url scheme host port")

# APP_FLEET_PEERS once parsed: the peers written inline (a tuple of FleetPeer),
# or the path of an @FILE read (and re-read when it changes) at run time.
FleetPeersSpec = collections.namedtuple("FleetPeersSpec", "peers path")


# ---------------------------------------------------------------------------
# 4. Pure parsers and maths
# ---------------------------------------------------------------------------

# -- sysfs values, PCIe, the ids files --------------------------------------

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
        value = int(text, 10)
    except ValueError:
        return None
    return value if -(1 << 63) <= value < (1 << 64) else None   # sysfs values are 64-bit


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
            speed = float(match.group(1))
            return (speed, int(match.group(2))) if math.isfinite(speed) else None
    return None


def parse_link_speed(raw):
    """current_link_speed '16.0 GT/s PCIe' -> 16.0 (None for 'Unknown')."""
    match = LINK_SPEED_RE.match(clean_text(raw) or "")
    speed = float(match.group(1)) if match else None
    return speed if speed is not None and math.isfinite(speed) else None


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


def parse_pci_ids(text, vendor_id, device_id, vendor_label="AMD"):
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
            return readable_pci_name(line[5:].strip(), vendor_label)
    return None


def readable_pci_name(name, vendor_label="AMD"):
    """'Vega 10 XL/XT [Radeon RX Vega 56/64]' -> 'AMD Radeon RX Vega 56/64'
    (the vendor's own word is added only when the name lacks it)."""
    match = re.search(r"\[([^\]]+)\]\s*$", name)
    if match:
        name = match.group(1)
    if name.upper().startswith(vendor_label.upper()):
        return name
    return "%s %s" % (vendor_label, name)


# -- configuration: values, addresses, the SETTINGS table to Config ---------

def parse_duration(text):
    """'250ms', '2s', '1.5s', '2' (seconds), '5m', '1h' -> seconds as float; ValueError otherwise."""
    match = DURATION_RE.match(text or "")
    if not match:
        raise ValueError("expected a duration like 250ms, 2s or 1.5s")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


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


def parse_allowed_hosts(text):
    """'' -> () (loopback and this machine only), '*' -> '*', 'a.example, .b.example,
    [::1]' -> ('a.example', '.b.example', '::1'): lower case, no trailing dot."""
    text = (text or "").strip()
    if text == "*":
        return "*"
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name = normalize_host_name(item)
        if not (HOST_NAME_RE.match(name.lstrip(".")) or _ip_text(name)):
            raise ValueError("%r is not a host name or address (or .domain, or *)" % item)
        hosts.append(name)
    return tuple(hosts)


def _ip_text(name):
    """'::0001' -> '::1' (the one spelling of an address); None when not an address."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def normalize_host_name(name):
    """'Example.COM.' -> 'example.com'; '[::0001]' -> '::1' (names compare as this)."""
    name = (name or "").strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.endswith("."):              # 'localhost.' is the same name, fully qualified
        name = name[:-1]
    return _ip_text(name) or name


def parse_auth_token(text):
    """'' -> None (no token); else the token, stripped: 16 to 256 characters a
    cookie and an Authorization header carry as they are (RFC 6750 b64token)."""
    token = (text or "").strip()
    if not token:
        return None
    if not AUTH_TOKEN_RE.match(token):
        raise ValueError("must be 16 to 256 characters of A-Z a-z 0-9 - . _ ~ + / = "
                         "(e.g. the output of: openssl rand -hex 32)")
    return token


def parse_webhook_url(text):
    """'' -> None; an http(s) URL with a host -> itself; ValueError otherwise."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        parts.port
    except ValueError:
        raise ValueError("not a valid URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return text


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
    if kind == "demo_gpus":
        if not raw.strip().isdigit() or not 1 <= int(raw) <= DEMO_MAX_GPUS:
            raise ValueError("must be a whole number from 1 to %d" % DEMO_MAX_GPUS)
        return int(raw)
    if kind in ("count", "count0"):
        low = 0 if kind == "count0" else 1
        if not raw.strip().isdigit() or not low <= int(raw) <= 1000000:
            raise ValueError("must be a whole number from %d to 1000000" % low)
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
    if kind == "hosts":
        return parse_allowed_hosts(raw)
    if kind == "secret":
        return parse_auth_token(raw)
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
    if kind == "history_path":
        if not raw.strip():
            raise ValueError("must be auto, memory, off or a file path")
        return raw.strip()
    if kind == "bytes":
        value = parse_byte_size(raw)
        if value < 1 << 20:
            raise ValueError("must be at least 1MiB")
        return value
    if kind == "url":
        return parse_webhook_url(raw)
    if kind == "peers":
        return parse_fleet_peers_setting(raw)
    if kind == "headers":
        return parse_prom_headers(raw)
    if kind == "scenario":
        if raw.strip() not in DEMO_SCENARIOS:
            raise ValueError("must be one of %s" % ", ".join(DEMO_SCENARIOS))
        return raw.strip()
    return parse_listen_addr(raw)


class _ArgParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing and exiting."""

    def error(self, message):
        raise ConfigError("command line: %s" % message)


def build_arg_parser():
    parser = _ArgParser(prog="amdgpu_top_web.py", add_help=False,
                        description="Live GPU telemetry (AMD, NVIDIA, Intel) in the browser.")
    for setting in SETTINGS:
        help_text = "%s (%s, default %r)" % (setting.help, setting.env, setting.default)
        if setting.kind != "bool":
            parser.add_argument(setting.flag, dest=setting.env, default=None, metavar="VALUE",
                                help=help_text)
            continue
        # A switch: bare means true; "--x false" and "--no-x" turn it off.
        parser.add_argument(setting.flag, dest=setting.env, default=None, nargs="?",
                            const="true", metavar="BOOL", help=help_text)
        parser.add_argument("--no-" + setting.flag[2:], dest=setting.env, action="store_const",
                            const="false", help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help="serve two synthetic GPUs")
    parser.add_argument("--once", action="store_true", help="sample every GPU once and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON")
    parser.add_argument("--healthcheck", action="store_true",
                        help="ask the server at the configured address for /api/healthz; exit 0 or 1")
    parser.add_argument("--version", dest="show_version", action="store_true")
    parser.add_argument("-h", "--help", dest="show_help", action="store_true")
    return parser


def parse_config(argv, environ):
    """argv (without the program name) + environment -> Config. Flags win over APP_*."""
    args = build_arg_parser().parse_args(argv)
    values, given = {}, []
    for setting in SETTINGS:
        flag_value = getattr(args, setting.env)
        raw = flag_value if flag_value is not None else environ.get(setting.env, setting.default)
        name = setting.env if flag_value is None else setting.flag
        if flag_value is not None or setting.env in environ:
            given.append((setting, name))
        try:
            values[setting.field] = _convert_setting(setting, raw)
        except ValueError as exc:
            shown = "(hidden)" if setting.kind in ("secret", "headers") else repr(raw)   # never log a token
            raise ConfigError("%s=%s: %s" % (name, shown, exc))
    values["listen_host"], values["listen_port"] = values.pop("listen")
    values["history_path"] = resolve_history_path(values["history_path"], environ, args.demo)
    for field in _MODE_FIELDS:
        values[field] = bool(getattr(args, field))
    values["fleet_tokens"] = {}
    if values["json"] and not values["once"]:
        raise ConfigError("--json: only meaningful with --once")
    _refuse_idle_settings(values, given)
    if values["fleet_peers"] is not None and values["fleet_prometheus_url"]:
        raise ConfigError("APP_FLEET_PROMETHEUS_URL: set it or APP_FLEET_PEERS, not both")
    if values["fleet_prometheus_headers"] and not values["fleet_prometheus_url"]:
        raise ConfigError("APP_FLEET_PROMETHEUS_HEADERS: only meaningful with APP_FLEET_PROMETHEUS_URL")
    return Config(**values)


def _refuse_idle_settings(values, given):
    """A setting that would do nothing is a mistake, not a default: the demo's
    settings (flag or APP_*, e.g. from a container's environment) need --demo.
    --healthcheck, --help and --version run beside the server with its
    environment (a container's HEALTHCHECK has no --demo): not refused there."""
    if values["demo"] or values["healthcheck"] or values["show_help"] or values["show_version"]:
        return
    for setting, name in given:
        if setting.field in DEMO_ONLY_FIELDS:
            raise ConfigError("%s: only meaningful with --demo" % name)


def format_help():
    return build_arg_parser().format_help()


# -- hwmon planning: which file gives which metric (labels read once) -------

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


def plan_temp_limits(plan, names):
    """{metric key: file} of plan_hwmon -> {limit key: temp*_crit file} where present
    (kernel Documentation/gpu/amdgpu/thermal.rst: temp[1-3]_crit)."""
    present = set(names)
    limits = {}
    for key in ("temp_c", "temp_junction_c", "temp_mem_c"):
        name = plan.get(key, "").replace("_input", "_crit")
        if name and name in present:
            limits[key[:-2] + "_crit_c"] = name
    return limits


def parse_temp_limits(raw):
    """{limit key: file bytes} -> {limit key: °C} (implausible values dropped)."""
    out = {}
    for key, data in raw.items():
        value = _scaled(data, 1000.0, 1)
        if value is not None and 30 <= value <= 200:
            out[key] = value
    return out


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


def plan_intel_hwmon(names, labels):
    """i915/xe hwmon files + labels -> {key: file name or [files]}.

    energy: energy1_input then energy2_input (xe: channel 1 "card", 2 "pkg";
    DG2 under xe has only pkg); power cap: power1_max then power2_max;
    temperatures by label (xe "pkg", "vram"; i915 may have an unlabelled
    temp1); fan1_input. Sources: sysfs-driver-intel-{i915,xe}-hwmon.
    """
    present = set(names)
    plan = {"energy": [n for n in ("energy1_input", "energy2_input") if n in present],
            "power_cap": [n for n in ("power1_max", "power2_max") if n in present]}
    for name in sorted(present):
        match = HWMON_FILE_RE.match(name)
        if not match or match.group(1) != "temp" or match.group(3) != "input":
            continue
        label = (labels.get("temp%s_label" % match.group(2)) or "").strip().lower()
        key = INTEL_TEMP_LABELS.get(label) if label else ("temp_c" if match.group(2) == "1" else None)
        if key and key not in plan:
            plan[key] = name
    if "fan1_input" in present:
        plan["fan_rpm"] = "fan1_input"
    return plan


# -- raw file contents -> metrics -------------------------------------------

def _scaled(raw, divisor, digits):
    value = parse_int(raw)
    return None if value is None else round(value / divisor, digits)


def compute_metrics(raw, apu):
    """{file key: bytes or None} -> the stats metrics dict (units converted once).

    File keys: the DEVICE_FILES keys, 'runtime_status', 'sclk_dpm'/'mclk_dpm'
    and the plan_hwmon metric keys ('temp_c' holds temp1_input's bytes, etc.).
    """
    get = raw.get
    metrics = new_metrics({"vram_used_source": "sysfs" if get("vram_used") else None})
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


def merge_gpu_metrics(metrics, table, previous=None):
    """Fill the gaps of a sysfs metrics dict from a parsed gpu_metrics table
    (parse_gpu_metrics), and set throttle_reasons: the SMU_THROTTLER_* names
    of indep_throttle_status, else (v1.6+/v3.0) the reasons whose residency
    counter grew since the previous table. Pure; returns metrics."""
    if not table:
        return metrics
    for key, fields in GPU_METRICS_FILL:
        if metrics.get(key) is not None:
            continue
        for field in fields:
            value = table.get(field)
            if value is not None and not (isinstance(value, list) and
                                          all(v is None for v in value)):
                metrics[key] = value
                break
    reasons = table.get("throttle_reasons")
    if reasons is None:
        reasons = throttle_from_residency(previous, table)
    metrics["throttle_reasons"] = reasons
    return metrics


def new_metrics(values=None):
    """The one stats-metrics builder: every key of METRIC_KEYS (null unless given)."""
    metrics = dict.fromkeys(METRIC_KEYS)
    if values:
        metrics.update(values)
    return metrics


# -- gpu_metrics: AMD's binary metrics table --------------------------------

#
# cardN/device/gpu_metrics is a `struct gpu_metrics_vX_Y` from the kernel's
# drivers/gpu/drm/amd/include/kgd_pp_interface.h: a 4-byte header
# (structure_size, format_revision, content_revision), then fields by
# version (1.x dGPUs, 2.x/3.0 APUs; 1.9 is attribute-encoded). Each layout is
# a table, natural C alignment spelled out as padding; units are converted
# once, here; all-ones values mean "not supported" and read as None.

class GpuMetricsError(ValueError):
    """gpu_metrics bytes that cannot be decoded: header shorter than 4 bytes,
    structure_size smaller than the header, data shorter than structure_size,
    or a format_revision other than 1 (dGPU), 2 (APU) or 3 (newer APU)."""


# -- gpu_metrics: conversions -----------------------------------------------

# (multiplier, divisor): value = raw * mul / div, converted once, here.
# (1, 1) keeps the integer as the kernel wrote it.
GM_RAW = (1, 1)
GM_CENTI = (1, 100)     # centi-degC, centi-% (APU v2.x/v3.0, v2.4 activity)
GM_MILLI = (1, 1000)    # mW -> W (APU v2.x/v3.0)
GM_DECI = (1, 10)       # pcie_link_speed "in 0.1 GT/s" -> GT/s
GM_TEN = (10, 1)        # firmware_timestamp "10ns resolution" -> ns
GM_Q16 = (1, 65536)     # energy_accumulator "15.259uJ (2^-16) units" -> J (v1.4+)

# smu_cmn_init_soft_gpu_metrics() pre-fills the table with 0xFF: a field the
# ASIC does not write reads all ones (per element for arrays) -> None.
GM_SENTINELS = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 0xFFFFFFFFFFFFFFFF,
             "b": -1, "h": -1, "i": -1, "q": -1}

GM_HEADER = struct.Struct("<HBB")   # struct metrics_table_header
GM_HEADER_SIZE = GM_HEADER.size


def _gm_pad(nbytes):
    """A padding field or an implicit alignment hole: decoded, never output."""
    return (None, "x", nbytes, None)


# -- gpu_metrics: layouts (output name, struct char, count, conversion) -----

# Names are the kernel's field names with the unit as suffix ("_frequency"
# dropped). A name is a scalar or a list in every version, never both: the
# per-XCC/AID clock arrays of v1.4+ are therefore "current_gfxclks_mhz" etc.
# (v1.0-v1.3 have one "current_gfxclk_mhz").

_GM_V1_TEMPS = (   # v1.0-v1.3: whole degC (observed: temperature_edge*1000 == temp1_input)
    ("temperature_edge_c", "H", 1, GM_RAW), ("temperature_hotspot_c", "H", 1, GM_RAW),
    ("temperature_mem_c", "H", 1, GM_RAW), ("temperature_vrgfx_c", "H", 1, GM_RAW),
    ("temperature_vrsoc_c", "H", 1, GM_RAW), ("temperature_vrmem_c", "H", 1, GM_RAW))
_GM_V1_ACTIVITY_POWER = (   # %, and W (observed: == power1_average / 1e6)
    ("average_gfx_activity_pct", "H", 1, GM_RAW), ("average_umc_activity_pct", "H", 1, GM_RAW),
    ("average_mm_activity_pct", "H", 1, GM_RAW), ("average_socket_power_w", "H", 1, GM_RAW))
_GM_V1_CLOCKS = tuple((name + "_mhz", "H", 1, GM_RAW) for name in (
    "average_gfxclk", "average_socclk", "average_uclk", "average_vclk0",
    "average_dclk0", "average_vclk1", "average_dclk1",
    "current_gfxclk", "current_socclk", "current_uclk", "current_vclk0",
    "current_dclk0", "current_vclk1", "current_dclk1"))

GPU_METRICS_V1_0 = (   # 80 bytes; "not naturally aligned" per the header
    _gm_pad(4), ("system_clock_counter_ns", "Q", 1, GM_RAW)) + _GM_V1_TEMPS + _GM_V1_ACTIVITY_POWER + (
    ("energy_accumulator_raw", "I", 1, GM_RAW),) + _GM_V1_CLOCKS + (   # energy unit undocumented
    ("throttle_status", "I", 1, GM_RAW), ("current_fan_speed_rpm", "H", 1, GM_RAW),
    ("pcie_link_width", "B", 1, GM_RAW), ("pcie_link_speed_gts", "B", 1, GM_DECI), _gm_pad(4))

GPU_METRICS_V1_1 = _GM_V1_TEMPS + _GM_V1_ACTIVITY_POWER + (   # 96 bytes
    ("energy_accumulator_raw", "Q", 1, GM_RAW), ("system_clock_counter_ns", "Q", 1, GM_RAW)
) + _GM_V1_CLOCKS + (
    ("throttle_status", "I", 1, GM_RAW), ("current_fan_speed_rpm", "H", 1, GM_RAW),
    ("pcie_link_width", "H", 1, GM_RAW), ("pcie_link_speed_gts", "H", 1, GM_DECI), _gm_pad(2),
    ("gfx_activity_acc", "I", 1, GM_RAW), ("mem_activity_acc", "I", 1, GM_RAW),
    # header silent on the unit; aldebaran_ppt.c copies PMFW TemperatureAllHBM
    # beside TemperatureEdge (whole degC), so read as degC like the others.
    ("temperature_hbm_c", "H", 4, GM_RAW))
GPU_METRICS_V1_2 = GPU_METRICS_V1_1 + (("firmware_timestamp_ns", "Q", 1, GM_TEN),)   # 104
GPU_METRICS_V1_3 = GPU_METRICS_V1_2 + (   # 120 bytes (RDNA2-4 dGPUs)
    ("voltage_soc_mv", "H", 1, GM_RAW), ("voltage_gfx_mv", "H", 1, GM_RAW),
    ("voltage_mem_mv", "H", 1, GM_RAW), _gm_pad(2), ("indep_throttle_status", "Q", 1, GM_RAW))

_GM_MI_HEAD = (   # v1.4+ (MI-series): header comments say Celsius, Watts, %
    ("temperature_hotspot_c", "H", 1, GM_RAW), ("temperature_mem_c", "H", 1, GM_RAW),
    ("temperature_vrsoc_c", "H", 1, GM_RAW), ("curr_socket_power_w", "H", 1, GM_RAW),
    ("average_gfx_activity_pct", "H", 1, GM_RAW), ("average_umc_activity_pct", "H", 1, GM_RAW))
_GM_MI_LINKS = (
    ("pcie_link_width", "H", 1, GM_RAW), ("pcie_link_speed_gts", "H", 1, GM_DECI),
    ("xgmi_link_width", "H", 1, GM_RAW), ("xgmi_link_speed_gbps", "H", 1, GM_RAW),
    ("gfx_activity_acc", "I", 1, GM_RAW), ("mem_activity_acc", "I", 1, GM_RAW))
_GM_MI_PCIE = (
    ("pcie_bandwidth_acc", "Q", 1, GM_RAW), ("pcie_bandwidth_inst_gb_s", "Q", 1, GM_RAW),
    ("pcie_l0_to_recov_count_acc", "Q", 1, GM_RAW), ("pcie_replay_count_acc", "Q", 1, GM_RAW),
    ("pcie_replay_rover_count_acc", "Q", 1, GM_RAW))
_GM_MI_NAK = (("pcie_nak_sent_count_acc", "I", 1, GM_RAW), ("pcie_nak_rcvd_count_acc", "I", 1, GM_RAW))
_GM_MI_XGMI = (("xgmi_read_data_acc_kb", "Q", 8, GM_RAW), ("xgmi_write_data_acc_kb", "Q", 8, GM_RAW))
_GM_MI_CLOCKS = (   # MAX_GFX_CLKS 8, MAX_CLKS 4
    ("current_gfxclks_mhz", "H", 8, GM_RAW), ("current_socclks_mhz", "H", 4, GM_RAW),
    ("current_vclk0s_mhz", "H", 4, GM_RAW), ("current_dclk0s_mhz", "H", 4, GM_RAW),
    ("current_uclk_mhz", "H", 1, GM_RAW))
_GM_MI_ENERGY_CLOCK = (("energy_accumulator_j", "Q", 1, GM_Q16), ("system_clock_counter_ns", "Q", 1, GM_RAW))
_GM_MI_LOCK = (("throttle_status", "I", 1, GM_RAW), ("gfxclk_lock_status", "I", 1, GM_RAW))
_GM_MI_RESIDENCY = (   # PMFW accumulation cycles; diff two samples
    ("accumulation_counter", "I", 1, GM_RAW), ("prochot_residency_acc", "I", 1, GM_RAW),
    ("ppt_residency_acc", "I", 1, GM_RAW), ("socket_thm_residency_acc", "I", 1, GM_RAW),
    ("vr_thm_residency_acc", "I", 1, GM_RAW), ("hbm_thm_residency_acc", "I", 1, GM_RAW),
    ("gfxclk_lock_status", "I", 1, GM_RAW))

GPU_METRICS_V1_4 = _GM_MI_HEAD + (("vcn_activity_pct", "H", 4, GM_RAW),) + _GM_MI_ENERGY_CLOCK + (
    _GM_MI_LOCK + _GM_MI_LINKS + _GM_MI_PCIE + _GM_MI_XGMI + (("firmware_timestamp_ns", "Q", 1, GM_TEN),)
    + _GM_MI_CLOCKS + (_gm_pad(2), _gm_pad(4)))   # 288 bytes
GPU_METRICS_V1_5 = _GM_MI_HEAD + (   # 360 bytes
    ("vcn_activity_pct", "H", 4, GM_RAW), ("jpeg_activity_pct", "H", 32, GM_RAW)) + (
    _GM_MI_ENERGY_CLOCK + _GM_MI_LOCK + _GM_MI_LINKS + _GM_MI_PCIE + _GM_MI_NAK + _GM_MI_XGMI
    + (("firmware_timestamp_ns", "Q", 1, GM_TEN),) + _GM_MI_CLOCKS + (_gm_pad(2), _gm_pad(4)))

# xcp_stats[NUM_XCP] element structs (kgd_pp_interface.h amdgpu_xcp_metrics*)
XCP_METRICS_V1_0 = (   # 168 bytes
    ("gfx_busy_inst_pct", "I", 8, GM_RAW), ("jpeg_busy_pct", "H", 32, GM_RAW),
    ("vcn_busy_pct", "H", 4, GM_RAW), ("gfx_busy_acc", "Q", 8, GM_RAW))
XCP_METRICS_V1_1 = XCP_METRICS_V1_0 + (("gfx_below_host_limit_acc", "Q", 8, GM_RAW),)   # 232
XCP_METRICS_V1_2 = (   # 440 bytes, NUM_JPEG_ENG_V1 40
    ("gfx_busy_inst_pct", "I", 8, GM_RAW), ("jpeg_busy_pct", "H", 40, GM_RAW),
    ("vcn_busy_pct", "H", 4, GM_RAW), ("gfx_busy_acc", "Q", 8, GM_RAW),
    ("gfx_below_host_limit_ppt_acc", "Q", 8, GM_RAW), ("gfx_below_host_limit_thm_acc", "Q", 8, GM_RAW),
    ("gfx_low_utilization_acc", "Q", 8, GM_RAW), ("gfx_below_host_limit_total_acc", "Q", 8, GM_RAW))


def _gm_mi_xcp_layout(head, xcp):
    """v1.6-v1.8 share everything but the head and the xcp_stats element."""
    return head + _GM_MI_RESIDENCY + _GM_MI_LINKS + (_gm_pad(4),) + _GM_MI_PCIE + _GM_MI_NAK + _GM_MI_XGMI + (
        xcp[0]) + (("firmware_timestamp_ns", "Q", 1, GM_TEN),) + _GM_MI_CLOCKS + (
        ("num_partition", "H", 1, GM_RAW), _gm_pad(4), ("xcp", xcp[1], 8, None),
        ("pcie_lc_perf_other_end_recovery", "I", 1, GM_RAW), _gm_pad(4))


_GM_XGMI_STATUS = (("xgmi_link_status", "H", 8, GM_RAW), _gm_pad(2), _gm_pad(6))
GPU_METRICS_V1_6 = _gm_mi_xcp_layout(_GM_MI_HEAD + _GM_MI_ENERGY_CLOCK, ((), XCP_METRICS_V1_0))   # 1664
GPU_METRICS_V1_7 = _gm_mi_xcp_layout(   # 2208 bytes
    _GM_MI_HEAD + (("mem_max_bandwidth_gb_s", "Q", 1, GM_RAW),) + _GM_MI_ENERGY_CLOCK,
    (_GM_XGMI_STATUS, XCP_METRICS_V1_1))
GPU_METRICS_V1_8 = _gm_mi_xcp_layout(   # 3872 bytes (kernel comment confirms)
    _GM_MI_HEAD + (("mem_max_bandwidth_gb_s", "Q", 1, GM_RAW),) + _GM_MI_ENERGY_CLOCK,
    (_GM_XGMI_STATUS, XCP_METRICS_V1_2))

_GM_APU_TEMPS = (   # centi-degC (v2.4/v3.0 header; observed 2500 <-> temp1_input 25000)
    ("temperature_gfx_c", "H", 1, GM_CENTI), ("temperature_soc_c", "H", 1, GM_CENTI),
    ("temperature_core_c", "H", 8, GM_CENTI), ("temperature_l3_c", "H", 2, GM_CENTI))
_GM_APU_POWER = (
    # mW on most APUs but W on some PMFW (Renoir family, drm/amd#2321; the
    # Raphael sample): raw here, average_socket_power_w is decided afterwards.
    ("average_socket_power_raw", "H", 1, GM_RAW),
    ("average_cpu_power_w", "H", 1, GM_MILLI), ("average_soc_power_w", "H", 1, GM_MILLI),
    ("average_gfx_power_w", "H", 1, GM_MILLI), ("average_core_power_w", "H", 8, GM_MILLI))
_GM_APU_CLOCKS = tuple((name + "_mhz", "H", 1, GM_RAW) for name in (
    "average_gfxclk", "average_socclk", "average_uclk", "average_fclk",
    "average_vclk", "average_dclk", "current_gfxclk", "current_socclk",
    "current_uclk", "current_fclk", "current_vclk", "current_dclk")) + (
    ("current_coreclk_mhz", "H", 8, GM_RAW), ("current_l3clk_mhz", "H", 2, GM_RAW))
_GM_APU_TAIL = (("throttle_status", "I", 1, GM_RAW), ("fan_pwm", "H", 1, GM_RAW))   # fan_pwm unit undocumented


def _gm_apu_activity(conv):
    return (("average_gfx_activity_pct", "H", 1, conv), ("average_mm_activity_pct", "H", 1, conv))


GPU_METRICS_V2_0 = (_gm_pad(4), ("system_clock_counter_ns", "Q", 1, GM_RAW)) + _GM_APU_TEMPS + (
    _gm_apu_activity(GM_RAW) + _GM_APU_POWER + _GM_APU_CLOCKS + _GM_APU_TAIL + (_gm_pad(2),))   # 120 bytes
_GM_V2_1_BODY = _GM_APU_TEMPS + _gm_apu_activity(GM_RAW) + (("system_clock_counter_ns", "Q", 1, GM_RAW),) + (
    _GM_APU_POWER + _GM_APU_CLOCKS + _GM_APU_TAIL + (_gm_pad(6),))
GPU_METRICS_V2_1 = _GM_V2_1_BODY   # 120 bytes (Phoenix, Raphael)
GPU_METRICS_V2_2 = _GM_V2_1_BODY + (("indep_throttle_status", "Q", 1, GM_RAW),)   # 128
_GM_APU_AVG_TEMPS = (
    ("average_temperature_gfx_c", "H", 1, GM_CENTI), ("average_temperature_soc_c", "H", 1, GM_CENTI),
    ("average_temperature_core_c", "H", 8, GM_CENTI), ("average_temperature_l3_c", "H", 2, GM_CENTI))
GPU_METRICS_V2_3 = GPU_METRICS_V2_2 + _GM_APU_AVG_TEMPS   # 152
GPU_METRICS_V2_4 = _GM_APU_TEMPS + _gm_apu_activity(GM_CENTI) + (   # 168; activity "unit: centi"
    ("system_clock_counter_ns", "Q", 1, GM_RAW),) + _GM_APU_POWER + _GM_APU_CLOCKS + _GM_APU_TAIL + (
    _gm_pad(6), ("indep_throttle_status", "Q", 1, GM_RAW)) + _GM_APU_AVG_TEMPS + (
    ("average_cpu_voltage_mv", "H", 1, GM_RAW), ("average_soc_voltage_mv", "H", 1, GM_RAW),
    ("average_gfx_voltage_mv", "H", 1, GM_RAW), ("average_cpu_current_ma", "H", 1, GM_RAW),
    ("average_soc_current_ma", "H", 1, GM_RAW), ("average_gfx_current_ma", "H", 1, GM_RAW), _gm_pad(4))

GPU_METRICS_V3_0 = (   # 264 bytes (Strix Point); holes at 102, 118, 226
    ("temperature_gfx_c", "H", 1, GM_CENTI), ("temperature_soc_c", "H", 1, GM_CENTI),
    ("temperature_core_c", "H", 16, GM_CENTI), ("temperature_skin_c", "H", 1, GM_CENTI),
    ("average_gfx_activity_pct", "H", 1, GM_RAW), ("average_vcn_activity_pct", "H", 1, GM_RAW),
    ("average_ipu_activity_pct", "H", 8, GM_RAW), ("average_core_c0_activity_pct", "H", 16, GM_RAW),
    ("average_dram_reads_mb_s", "H", 1, GM_RAW), ("average_dram_writes_mb_s", "H", 1, GM_RAW),
    ("average_ipu_reads_mb_s", "H", 1, GM_RAW), ("average_ipu_writes_mb_s", "H", 1, GM_RAW), _gm_pad(2),
    ("system_clock_counter_ns", "Q", 1, GM_RAW),
    ("average_socket_power_w", "I", 1, GM_MILLI), ("average_ipu_power_w", "H", 1, GM_MILLI), _gm_pad(2),
    ("average_apu_power_w", "I", 1, GM_MILLI), ("average_gfx_power_w", "I", 1, GM_MILLI),
    ("average_dgpu_power_w", "I", 1, GM_MILLI), ("average_all_core_power_w", "I", 1, GM_MILLI),
    ("average_core_power_w", "H", 16, GM_MILLI), ("average_sys_power_w", "H", 1, GM_MILLI),
    ("stapm_power_limit_w", "H", 1, GM_MILLI), ("current_stapm_power_limit_w", "H", 1, GM_MILLI),
) + tuple((name + "_mhz", "H", 1, GM_RAW) for name in (
    "average_gfxclk", "average_socclk", "average_vpeclk", "average_ipuclk",
    "average_fclk", "average_vclk", "average_uclk", "average_mpipu")) + (
    ("current_coreclk_mhz", "H", 16, GM_RAW), ("current_core_maxfreq_mhz", "H", 1, GM_RAW),
    ("current_gfx_maxfreq_mhz", "H", 1, GM_RAW), _gm_pad(2),
    ("throttle_residency_prochot", "I", 1, GM_RAW), ("throttle_residency_spl", "I", 1, GM_RAW),
    ("throttle_residency_fppt", "I", 1, GM_RAW), ("throttle_residency_sppt", "I", 1, GM_RAW),
    ("throttle_residency_thm_core", "I", 1, GM_RAW), ("throttle_residency_thm_gfx", "I", 1, GM_RAW),
    ("throttle_residency_thm_soc", "I", 1, GM_RAW), ("time_filter_alphavalue_us", "I", 1, GM_RAW),
    _gm_pad(4))

GPU_METRICS_TABLES = {
    (1, 0): GPU_METRICS_V1_0, (1, 1): GPU_METRICS_V1_1, (1, 2): GPU_METRICS_V1_2,
    (1, 3): GPU_METRICS_V1_3, (1, 4): GPU_METRICS_V1_4, (1, 5): GPU_METRICS_V1_5,
    (1, 6): GPU_METRICS_V1_6, (1, 7): GPU_METRICS_V1_7, (1, 8): GPU_METRICS_V1_8,
    (2, 0): GPU_METRICS_V2_0, (2, 1): GPU_METRICS_V2_1, (2, 2): GPU_METRICS_V2_2,
    (2, 3): GPU_METRICS_V2_3, (2, 4): GPU_METRICS_V2_4, (3, 0): GPU_METRICS_V3_0,
}
GM_ATTRIBUTE_ENCODED = (1, 9)   # formats.md §5.5: self-describing, decoded by _gm_decode_attrs
# A newer content revision of a known format is decoded by this prefix.
GM_NEWEST_FIXED = {1: (1, 8), 2: (2, 4), 3: (3, 0)}


# -- gpu_metrics: throttlers ------------------------------------------------

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


# -- gpu_metrics: v1.9 attribute encoding (formats.md §5.5) -----------------

GM_ATTR_COUNT = struct.Struct("<i")     # int attr_count, after the header
GM_ATTR_ENCODING = struct.Struct("<Q")  # unit 24-31, type 20-23, id 10-19, instances 0-9
GM_ATTR_TYPES = "BbHhIiQq"              # enum amdgpu_metrics_attr_type, U8 .. S64
GM_ATTR_UNITS = {   # enum amdgpu_metrics_attr_unit -> (name suffix, conversion)
    0: ("", GM_RAW), 1: ("_mhz", GM_RAW), 2: ("_c", GM_RAW), 3: ("_w", GM_RAW), 4: ("_ns", GM_RAW),
    5: ("_ns", GM_TEN), 6: ("_gts", GM_RAW), 7: ("_gts", GM_DECI), 8: ("_gb_s", GM_RAW),
    9: ("_kb", GM_RAW), 10: ("_pct", GM_RAW)}
# enum amdgpu_metrics_attr_id 0..47 (formats.md §5.5), names as the fixed
# layouts use them; True = an array in v1.4-v1.8, so always a list here too.
# 48 TEMPERATURE_HBM was appended in 2026; later ids moved between patch
# revisions (TEMPERATURE_MID was inserted before AID), so they stay "attr_<id>".
GM_ATTR_IDS = tuple((name, False) for name in (
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


# -- gpu_metrics: compiled layouts ------------------------------------------

_GmSlot = collections.namedtuple("GmSlot", "name offset codec count conv sentinel sub")
_GmLayout = collections.namedtuple("GmLayout", "version slots size")


def _gm_compile(rows, start):
    """Table rows -> (slots with absolute offsets, end offset). Holes are
    explicit rows, so offsets are plain running sums (no auto-alignment)."""
    slots, offset = [], start
    for name, fmt, count, conv in rows:
        if fmt == "x":
            offset += count
        elif isinstance(fmt, tuple):   # an array of element structs
            elem, elem_end = _gm_compile(fmt, 0)
            slots.append(_GmSlot(name, offset, None, count, None, None, (tuple(elem), elem_end)))
            offset += count * elem_end
        else:
            codec = struct.Struct("<%d%s" % (count, fmt))
            slots.append(_GmSlot(name, offset, codec, count, conv, GM_SENTINELS[fmt], None))
            offset += codec.size
    return slots, offset


def _gm_make_layout(version, rows):
    slots, end = _gm_compile(rows, GM_HEADER_SIZE)
    return _GmLayout("%d.%d" % version, tuple(slots), end)


GPU_METRICS_LAYOUTS = dict((v, _gm_make_layout(v, rows)) for v, rows in GPU_METRICS_TABLES.items())


# -- gpu_metrics: decoding --------------------------------------------------

def _gm_convert(raw, conv, sentinel):
    """One raw element -> None (all ones) or its value in the named unit."""
    if raw == sentinel:
        return None
    mul, div = conv
    if div == 1:
        return raw * mul
    return raw * mul / div


def _gm_decode_slot(buf, limit, slot, base=0):
    """One field (scalar, or list per element) -> value; None if it lies past limit."""
    offset = base + slot.offset
    if offset + slot.codec.size > limit:
        return None
    raws = slot.codec.unpack_from(buf, offset)
    values = [_gm_convert(raw, slot.conv, slot.sentinel) for raw in raws]
    return values[0] if slot.count == 1 else values


def _gm_decode_struct_array(buf, limit, slot, out):
    """xcp_stats[8] -> out["xcp_<field>"] = [per partition value, ...]."""
    elem, elem_size = slot.sub
    for field in elem:
        out["%s_%s" % (slot.name, field.name)] = [
            _gm_decode_slot(buf, limit, field, slot.offset + i * elem_size)
            for i in range(slot.count)]


def _gm_decode_fixed(buf, limit, layout):
    """Every named field of a fixed layout, decoded within buf[:limit]."""
    out = {}
    for slot in layout.slots:
        if slot.sub is not None:
            _gm_decode_struct_array(buf, limit, slot, out)
        else:
            out[slot.name] = _gm_decode_slot(buf, limit, slot)
    _gm_trim_partitions(out)
    return out


def _gm_trim_partitions(out):
    """Only the first num_partition xcp_stats entries are meaningful."""
    count = out.get("num_partition")
    if not isinstance(count, int) or not 1 <= count <= 8:
        return
    for key in out:
        if key.startswith("xcp_") and isinstance(out[key], list):
            out[key] = out[key][:count]


def _gm_attr_value(buf, offset, type_char, count, unit):
    """Values of one v1.9 attribute -> (suffix, scalar-or-list)."""
    suffix, conv = GM_ATTR_UNITS.get(unit, ("_unit%d" % unit, GM_RAW))
    raws = struct.unpack_from("<%d%s" % (count, type_char), buf, offset)
    return suffix, [_gm_convert(raw, conv, GM_SENTINELS[type_char]) for raw in raws]


def _gm_decode_attrs(buf, limit):
    """v1.9: header, int attr_count, then attr_count packed (u64 encoding,
    values) entries; the walk stops at structure_size (formats.md §5.5)."""
    if limit < GM_HEADER_SIZE + GM_ATTR_COUNT.size:
        raise GpuMetricsError("gpu_metrics v1.9: structure_size %d has no attr_count" % limit)
    attr_count = GM_ATTR_COUNT.unpack_from(buf, GM_HEADER_SIZE)[0]
    out = {"attr_count": attr_count}
    offset, seen = GM_HEADER_SIZE + GM_ATTR_COUNT.size, 0
    while seen < attr_count and offset + GM_ATTR_ENCODING.size <= limit:
        enc = GM_ATTR_ENCODING.unpack_from(buf, offset)[0]
        unit, type_code = (enc >> 24) & 0xFF, (enc >> 20) & 0xF
        attr_id, count = (enc >> 10) & 0x3FF, enc & 0x3FF
        if type_code >= len(GM_ATTR_TYPES):   # unknown width: nothing after it can be read
            break
        type_char = GM_ATTR_TYPES[type_code]
        end = offset + GM_ATTR_ENCODING.size + count * struct.calcsize("<" + type_char)
        if end > limit:
            break
        name, is_array = GM_ATTR_IDS[attr_id] if attr_id < len(GM_ATTR_IDS) else ("attr_%d" % attr_id, True)
        suffix, values = _gm_attr_value(buf, offset + GM_ATTR_ENCODING.size, type_char, count, unit)
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


def _gm_apu_socket_power_w(out):
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


def _gm_add_derived(fmt, out):
    """Throttle names and the APU socket power, after the table decode.

    throttle_status (u32) is the raw, ASIC-dependent PMFW mask (formats.md
    §5.4): its bits differ per ASIC, so it is reported raw and never named.
    Names come only from indep_throttle_status (v1.3, v2.2-v2.4); the other
    versions get None (v1.6+/v3.0: see throttle_from_residency)."""
    out["throttle_reasons"] = parse_smu_throttler_bits(out.get("indep_throttle_status"))
    if fmt == 2:
        out["average_socket_power_w"] = _gm_apu_socket_power_w(out)


def _gm_read_header(data):
    """-> (buf, structure_size, format_revision, content_revision) or raise."""
    buf = bytes(data)
    if len(buf) < GM_HEADER_SIZE:
        raise GpuMetricsError("gpu_metrics: %d bytes, shorter than the 4-byte header" % len(buf))
    size, fmt, content = GM_HEADER.unpack_from(buf, 0)
    if size < GM_HEADER_SIZE:
        raise GpuMetricsError("gpu_metrics: structure_size %d is smaller than the header" % size)
    if len(buf) < size:
        raise GpuMetricsError("gpu_metrics: %d bytes, structure_size says %d" % (len(buf), size))
    if fmt not in GM_NEWEST_FIXED:
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
    buf, size, fmt, content = _gm_read_header(data)
    version = (fmt, content)
    # Every content revision up to the newest of each format is known, so an
    # unknown one is newer: decode it by the newest fixed layout's prefix.
    newer = version != GM_ATTRIBUTE_ENCODED and version not in GPU_METRICS_LAYOUTS
    if version == GM_ATTRIBUTE_ENCODED:
        out, name, mismatch = _gm_decode_attrs(buf, size), "1.9", False
    else:
        layout = GPU_METRICS_LAYOUTS[GM_NEWEST_FIXED[fmt] if newer else version]
        out, name = _gm_decode_fixed(buf, size, layout), layout.version
        mismatch = not newer and size != layout.size
    _gm_add_derived(fmt, out)
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


# -- NVIDIA and Intel values -> metrics -------------------------------------

def parse_clock_event_reasons(mask):
    """nvmlClocksEventReason bitmask -> NVML's names without the prefix, in
    bit order; bits nvml.h does not name become one "other"."""
    if mask is None:
        return None
    names = [name for bit, name in NVML_CLOCK_EVENT_REASONS if mask & bit]
    if mask & ~NVML_CLOCK_EVENT_KNOWN:
        names.append("other")
    return names


def nvml_pci_address(domain, bus, device):
    """NVML's PCI fields -> the kernel's lower-case form, e.g. 0000:1b:00.0
    (NVML's busId strings are upper-case and 8- or 4-digit domains)."""
    return "%04x:%02x:%02x.0" % (domain, bus, device)


def nvml_pci_id(pci_device_id):
    """pciDeviceId (device << 16 | vendor) -> '10de:2330'."""
    return "%04x:%04x" % (pci_device_id & 0xFFFF, (pci_device_id >> 16) & 0xFFFF)


def format_cuda_version(version):
    """nvmlSystemGetCudaDriverVersion's 1000 * major + 10 * minor -> '12.4'
    (12040), as nvidia-smi prints it; None stays None."""
    if version is None or version <= 0:
        return None
    return "%d.%d" % (version // 1000, version % 1000 // 10)


def compute_idle_busy_pct(prev, cur):
    """Busy % from an idle-residency counter (i915 RC6, xe gtidle):
    100 * (1 - d(idle ms) / d(wall ms)), clamped; prev/cur are
    (monotonic s, residency ms). None on the first sample or a reset."""
    if prev is None or cur is None or None in prev or None in cur:
        return None
    wall_ms = (cur[0] - prev[0]) * 1000.0
    idle_ms = cur[1] - prev[1]
    if wall_ms <= 0 or idle_ms < 0:
        return None
    return round(max(0.0, min(100.0, 100.0 * (1.0 - idle_ms / wall_ms))), 1)


def compute_energy_power_w(prev, cur):
    """Watts from an energy counter: prev/cur are (monotonic s, µJ). None on
    the first sample and for a negative delta (driver reload)."""
    if prev is None or cur is None or None in prev or None in cur:
        return None
    dt = cur[0] - prev[0]
    de = cur[1] - prev[1]
    if dt <= 0 or de < 0:
        return None
    return round(de / 1e6 / dt, 3)


def parse_throttle_flags(flags):
    """{reason: raw '0'/'1' bytes or None} -> names of the set ones (in the
    given order), or None when no file answered."""
    seen = False
    names = []
    for name, raw in flags:
        value = parse_int(raw)
        if value is None:
            continue
        seen = True
        if value:
            names.append(name)
    return names if seen else None


def merge_nvml_processes(lists):
    """[NvmlProcess] from the compute/graphics/MPS lists -> {pid: (bytes or
    None, type)}: one entry per PID; type "C", "G", "M" or e.g. "C+G"."""
    merged = {}
    for proc in lists:
        used = None if proc.used_bytes in (None, NVML_MEMORY_NA) else proc.used_bytes
        old_used, kinds = merged.get(proc.pid, (None, ""))
        if proc.kind not in kinds.split("+"):
            kinds = proc.kind if not kinds else kinds + "+" + proc.kind
        if old_used is not None and (used is None or old_used > used):
            used = old_used
        merged[proc.pid] = (used, kinds)
    return merged


def pick_nvml_util(samples, pids):
    """[(pid, timestamp µs, {engine: %})] -> {pid: {engine: %}}: the newest
    sample per listed PID; samples of unlisted PIDs, or with SM, encoder or
    decoder over 100 %, are dropped (the driver reports both, nvtop#110)."""
    best = {}
    for pid, stamp, engines in samples:
        if pid not in pids or any(engines.get(k, 0) > 100 for k in NVML_UTIL_LIMITED):
            continue
        if pid not in best or stamp >= best[pid][0]:
            best[pid] = (stamp, engines)
    return dict((pid, entry[1]) for pid, entry in best.items())


def parse_mig_profile(name, gi_slices=None, ci_slices=None, memory_mib=None):
    """A MIG device's profile: from its NVML name ("... MIG 1g.10gb"), else
    spelt from its attributes as nvidia-smi spells profiles ("2g.20gb"; a
    smaller compute instance "1c.2g.20gb"; GiB rounded), else None."""
    match = MIG_PROFILE_RE.search(name or "")
    if match:
        return match.group(1)
    if not gi_slices or memory_mib is None:
        return None
    prefix = "%dc." % ci_slices if ci_slices and ci_slices != gi_slices else ""
    return "%s%dg.%dgb" % (prefix, gi_slices, int(round(memory_mib / 1024.0)))


def build_mig_instance(index, uuid, profile, gi, ci, used, total):
    """One MIG instance (a compute instance) of a stats frame's metrics.mig."""
    return {"index": index, "uuid": uuid, "profile": profile, "gi": gi, "ci": ci,
            "memory_used_bytes": used, "memory_total_bytes": total}


def nvml_proc_mig(gi, ci, instances):
    """A process row's `mig`: {"gi", "ci", "profile"} of the instance its NVML
    entry names (profile null when that instance is not listed), or None when
    the entry carries no instance ids (MIG off, or a 16-byte v1 entry)."""
    if gi is None or gi == NVML_NO_INSTANCE_ID:
        return None
    ci = None if ci == NVML_NO_INSTANCE_ID else ci
    profile = next((i["profile"] for i in instances or () if i["gi"] == gi and i["ci"] == ci),
                   None)
    return {"gi": gi, "ci": ci, "profile": profile}


def compute_ecc_new(prev, cur):
    """New errors between two readings of a volatile ECC count: cur - prev; 0
    on the first reading (a baseline: errors from before are not new) and when
    the count drops (the driver reloaded); None when unknown."""
    if cur is None:
        return None
    if prev is None or cur < prev:
        return 0
    return cur - prev


# -- process top: fdinfo text -> records ------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,      # legacy amdgpu "kB" is KiB
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,      # GiB: defensive, not seen
}
# Legacy ring lines "<ip><ring>:\t<int>.<int>%"; "enc_1" must win over "enc".
_LEGACY_RING_RE = re.compile(r"^(gfx|compute|dma|dec|enc_1|enc|jpeg|vpe|[a-z][a-z_]*?)(\d+)$")
_LEGACY_PCT_RE = re.compile(r"^(\d+)\.(\d+)\s*%$")
_LEGACY_MEM_KEYS = {"vram mem": "vram", "gtt mem": "gtt", "cpu mem": "cpu"}
_REGION_VRAM_RE = re.compile(r"^(?:vram|local)\d*$")
_REGION_CPU_RE = re.compile(r"^(?:cpu|system\d*)$")


def parse_size(value_text):
    """'22 MiB' / '8192 KiB' / '17196 kB' / '0' -> bytes; None if not a size.

    No unit means bytes (drm-usage-stats.rst); the legacy amdgpu "kB" is KiB.
    """
    m = _SIZE_RE.match(value_text or "")
    if m is None:
        return None
    mult = _SIZE_UNITS.get(m.group(2).lower())
    return None if mult is None else int(m.group(1)) * mult


def _parse_uint(value_text):
    """Leading unsigned integer of '107322799 ns' -> 107322799; None if none."""
    parts = value_text.split(None, 1)
    return int(parts[0]) if parts and parts[0].isdecimal() else None


def region_class(region):
    """Map a DRM memory region name to "vram", "gtt", "cpu" or None.

    amdgpu: vram/gtt/cpu; xe: vram0/vram1/gtt/system; i915: local0/system0.
    Other regions (stolen, gds, gws, oa, doorbell, mmioremap, memory) are
    not counted.
    """
    if region == "gtt":
        return "gtt"
    if _REGION_VRAM_RE.match(region):
        return "vram"
    if _REGION_CPU_RE.match(region):
        return "cpu"
    return None


def _add_region(bucket, region, value_text):
    cls, size = region_class(region), parse_size(value_text)
    if cls is not None and size is not None:
        bucket[cls] = bucket.get(cls, 0) + size


def _region_dict(bucket, driver=None):
    if not bucket:
        return None
    if driver == "i915":
        # i915's system0 holds GPU objects in system RAM, mapped through the
        # GTT (amdgpu's "gtt"); i915 has no region of that name. xe keeps
        # "gtt" (TTM_PL_TT) and "system" (not GPU-mapped) apart itself.
        return {"vram": bucket.get("vram"), "gtt": bucket.get("cpu"), "cpu": None}
    return {cls: bucket.get(cls) for cls in ("vram", "gtt", "cpu")}


def parse_legacy_pct(value_text):
    """Legacy ring busy '70.59%' -> 70.59; '5.7%' -> 5.07.

    The 5.14-5.18 kernel prints perc/100 "." perc%100 with "%d" (no zero
    padding), so the digits after the dot are hundredths as an integer.
    """
    m = _LEGACY_PCT_RE.match(value_text.strip())
    if m is None:
        return None
    return int(m.group(1)) + int(m.group(2)) / 100.0


class _FdinfoAcc(object):
    """Mutable accumulator used only inside parse_fdinfo."""

    def __init__(self):
        self.fields = {"driver": None, "pdev": None, "client_id": None, "pasid": None}
        self.legacy = False
        self.resident, self.alias, self.total, self.legacy_mem = {}, {}, {}, {}
        self.engines, self.capacity, self.cycles, self.total_cycles = {}, {}, {}, {}
        self.rings = {}  # ip -> [ring percentages]


def _take_drm_key(acc, key, value):
    """Handle one 'drm-*' key; order of tests matters (cycles before total)."""
    if key.startswith("drm-engine-capacity-"):
        _store_uint(acc.capacity, key[20:], value)
    elif key.startswith("drm-engine-"):
        _store_uint(acc.engines, key[11:], value)
    elif key.startswith("drm-total-cycles-"):      # before drm-total-<region>
        _store_uint(acc.total_cycles, key[17:], value)
    elif key.startswith("drm-cycles-"):
        _store_uint(acc.cycles, key[11:], value)
    elif key.startswith("drm-resident-"):
        _add_region(acc.resident, key[13:], value)
    elif key.startswith("drm-memory-"):           # deprecated alias of resident
        _add_region(acc.alias, key[11:], value)
    elif key.startswith("drm-total-"):
        _add_region(acc.total, key[10:], value)
    elif key == "drm-driver":
        acc.fields["driver"] = value or None
    elif key == "drm-pdev":
        acc.fields["pdev"] = value or None
    elif key == "drm-client-id":
        acc.fields["client_id"] = _parse_uint(value)


def _store_uint(target, name, value):
    number = _parse_uint(value)
    if name and number is not None:
        target[name] = number


def _take_other_key(acc, key, value):
    """Keys without the drm- prefix: pasid, and the legacy 5.14-5.18 lines."""
    if key == "pasid":
        acc.fields["pasid"] = _parse_uint(value)
    elif key == "pdev":
        acc.fields["pdev"] = value or None
        acc.legacy = True
    elif key in _LEGACY_MEM_KEYS:
        size = parse_size(value)
        if size is not None:
            acc.legacy_mem[_LEGACY_MEM_KEYS[key]] = size
            acc.legacy = True
    elif value.endswith("%"):
        m, pct = _LEGACY_RING_RE.match(key), parse_legacy_pct(value)
        if m is not None and pct is not None:
            acc.rings.setdefault(m.group(1), []).append(pct)


def _legacy_pct(rings):
    """Sum the rings of each ip, each ring capped at 100 (so <= 100 x rings)."""
    return {ip: round(sum(min(p, 100.0) for p in pcts), 2) for ip, pcts in rings.items()}


def parse_fdinfo(text):
    """Parse fdinfo text (str or bytes) of a DRM fd; never raises.

    Keys may come in any order; whitespace after the colon is skipped (amdgpu
    prints "drm-memory-gtt: \\t"). Memory prefers drm-resident-* over the
    drm-memory-* alias; drm-total-* is reported separately.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    acc = _FdinfoAcc()
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key.startswith("drm-"):
            _take_drm_key(acc, key, value)
        else:
            _take_other_key(acc, key, value)
    return _finish_record(acc)


def _finish_record(acc):
    legacy = acc.legacy and acc.fields["driver"] is None
    memory = dict(acc.alias)
    memory.update(acc.resident)
    if legacy:
        memory = acc.legacy_mem
    return FdinfoRecord(
        driver=AMD_DRIVER if legacy else acc.fields["driver"],
        pdev=acc.fields["pdev"], client_id=acc.fields["client_id"],
        pasid=acc.fields["pasid"], legacy=legacy,
        memory=_region_dict(memory, acc.fields["driver"]),
        total=_region_dict(acc.total, acc.fields["driver"]),
        engines_ns=acc.engines, capacity=acc.capacity, cycles=acc.cycles,
        total_cycles=acc.total_cycles,
        legacy_pct=_legacy_pct(acc.rings) if legacy else {})


def record_has_engine_data(rec):
    """True when this kind of record reports engine time at all.

    amdgpu (5.19+) prints drm-engine-* only once non-zero and the legacy
    format prints a ring line only with activity, so for amdgpu an absent
    key means 0, not "unsupported".
    """
    if rec.engines_ns or rec.cycles or rec.legacy_pct or rec.legacy:
        return True
    return rec.driver == AMD_DRIVER and rec.client_id is not None


def client_key(rec, pci, pid, fd_name):
    """Dedupe key of one DRM client: (pdev, client-id), legacy (pdev, pasid).

    Without either there is nothing to dedupe on: the (pid, fd) is unique.
    """
    if rec.client_id is not None:
        return "%s/client/%d" % (pci, rec.client_id)
    if rec.legacy and rec.pasid is not None:
        return "%s/pasid/%d" % (pci, rec.pasid)
    return "%s/fd/%d/%s" % (pci, pid, fd_name)


# -- process top: fd targets, KFD topology and per-process VRAM -------------

_DRM_NODE_RE = re.compile(r"^(?:renderD|card)\d+$")


_NOT_GPU = (None, None)


def classify_fd_target(target):
    """readlink() text of /proc/<pid>/fd/<n> -> (kind, node).

    kind: "drm" (node = "renderD128"/"card1"), "kfd", "maybe_drm" (a device
    path that might be a DRM node remapped by a container: stat it), or None.
    Cheap for the common cases (socket:[..], pipe:[..], regular files).
    """
    if not target.startswith("/"):
        return _NOT_GPU                          # socket:[..], pipe:[..], anon_inode:..
    if target.endswith(" (deleted)"):
        target = target[:-10]
    if target.startswith("/dev/"):
        return _classify_dev(target)
    if _DRM_NODE_RE.match(target[target.rfind("/") + 1:]):
        return ("maybe_drm", None)               # e.g. /host-dev/dri/renderD128
    return _NOT_GPU


# /sys/class/kfd/kfd/topology/nodes/<n>/{gpu_id,properties} (kfd_topology.c
# node_show: "%s %u\n" / "%s %llu\n" lines, every value decimal) and
# /sys/class/kfd/kfd/proc/<pid>/vram_<gpu_id> ("%llu\n" bytes, kfd_process.c).

def parse_kfd_properties(text):
    """A KFD node's properties text -> {name: int}; lines that are not
    "name <decimal>" are skipped (keys come and go between kernels)."""
    props = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdecimal():
            props[parts[0]] = int(parts[1])
    return props


def parse_kfd_int(text):
    """"%u\n" / "%llu\n" (gpu_id, vram_<gpu_id>) -> int, or None."""
    text = (text or "").strip()
    return int(text) if text.isdecimal() else None


def kfd_node_pci(props, function=True):
    """A KFD node's PCI address from domain and location_id (pci_dev_id():
    bus << 8 | slot << 3 | function), e.g. 8960 -> "0000:23:00.0"; function=False
    zeroes the low 3 bits (a partition index on partitioned boards); None if absent."""
    loc = props.get("location_id")
    if loc is None:
        return None
    return "%04x:%02x:%02x.%x" % (props.get("domain", 0), (loc >> 8) & 0xFF, (loc >> 3) & 0x1F,
                                  loc & 0x7 if function else 0)


def compute_kfd_gpu_pcis(nodes, node_map, amd_pcis):
    """{gpu_id: pci of one of our AMD GPUs} from KFD nodes [(gpu_id, props)]:
    by drm_render_minor (renderD<minor> in node_map), else by PCI address,
    else by that address with function 0. gpu_id 0 (a CPU node) and nodes of
    no known GPU are left out."""
    amd, out = set(amd_pcis), {}
    for gpu_id, props in nodes:
        if not gpu_id:
            continue
        minor = props.get("drm_render_minor")
        for pci in (node_map.get("renderD%d" % minor) if minor else None,
                    kfd_node_pci(props), kfd_node_pci(props, function=False)):
            if pci in amd:
                out[gpu_id] = pci
                break
    return out


def compute_kfd_vram(vram_by_gpu_id, gpu_pcis):
    """{gpu_id: bytes} of one process -> {pci: bytes}, or None when it tells
    nothing (no file read, or no VRAM on any GPU: which GPU is then unknown)."""
    out = {}
    for gpu_id, used in vram_by_gpu_id.items():
        if gpu_id in gpu_pcis and used is not None:
            out[gpu_pcis[gpu_id]] = out.get(gpu_pcis[gpu_id], 0) + used
    return out if any(out.values()) else None


def _classify_dev(target):
    if target.startswith("/dev/dri/"):
        base = target[9:]
        return ("drm", base) if _DRM_NODE_RE.match(base) else ("maybe_drm", None)
    if target == "/dev/kfd":
        return ("kfd", None)
    if target.startswith(_NOT_GPU_DEV_PREFIXES):
        return _NOT_GPU
    return ("maybe_drm", None)


def drm_node_from_rdev(mode, rdev):
    """st_mode/st_rdev of a stat() -> "renderD<minor>"/"card<minor>" or None."""
    if not stat.S_ISCHR(mode) or os.major(rdev) != DRM_CHAR_MAJOR:
        return None
    minor = os.minor(rdev)
    return ("renderD%d" if minor >= DRM_RENDER_MINOR_BASE else "card%d") % minor


# -- process top: /proc text (stat, start times, status, cgroup, mounts) ----

def parse_proc_stat(text):
    """/proc/<pid>/stat -> (comm, start_time in clock ticks); (None, None) if bad."""
    line = parse_proc_stat_line(text)
    return (line.comm, line.start_time)


def parse_proc_stat_line(text):
    """/proc/<pid>/stat -> ProcStatLine; NO_PROC_STAT if bad.

    comm may contain spaces and ')' : it is everything between the first '('
    and the LAST ')'. Field N of man 5 proc is rest[N - 3] after the comm:
    utime 14, stime 15, starttime 22, rss 24.
    """
    lp, rp = text.find("("), text.rfind(")")
    if lp < 0 or rp < lp:
        return NO_PROC_STAT
    comm, rest = text[lp + 1:rp], text[rp + 1:].split()
    if len(rest) < 20 or not rest[19].isdecimal():
        return ProcStatLine(comm, None, None, None)
    ticks = (int(rest[11]) + int(rest[12])) if rest[11].isdecimal() and rest[12].isdecimal() else None
    rss = int(rest[21]) if len(rest) > 21 and rest[21].isdecimal() else None
    return ProcStatLine(comm, int(rest[19]), ticks, rss)


def parse_proc_btime(text):
    """The 'btime <epoch s>' line of /proc/stat (boot time, whole seconds) -> int or None."""
    for line in (text or "").splitlines():
        if line.startswith("btime "):
            value = line[6:].strip()
            return int(value) if value.isdecimal() else None
    return None


def format_utc_s(epoch_s):
    """Epoch seconds -> '2026-12-06T19:58:01Z' (ISO 8601 UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_s)))


def parse_utc_s(text):
    """'2026-12-06T19:58:01Z' (format_utc_s) -> epoch seconds; None if not that shape."""
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


def compute_proc_start_s(start_ticks, boot_s, clk_tck):
    """A process's start (stat field 22, clock ticks after boot) -> epoch
    seconds; None when a part is unknown."""
    if start_ticks is None or boot_s is None or not clk_tck:
        return None
    return boot_s + start_ticks / float(clk_tck)


def compute_proc_times(start_s, now_s):
    """-> {"started": ISO 8601 UTC or None, "elapsed_s": whole seconds or None}.
    btime has one-second resolution, so elapsed is whole seconds too; a start
    after now (clock stepped back) reads 0."""
    if start_s is None or now_s is None:
        return {"started": None, "elapsed_s": None}
    return {"started": format_utc_s(start_s), "elapsed_s": max(0, int(now_s - start_s))}


def parse_status_uid(text):
    """Real uid from the 'Uid:\\t<real>\\t<eff>\\t<saved>\\t<fs>' line of status."""
    for line in (text or "").splitlines():
        if line.startswith("Uid:"):
            fields = line[4:].split()
            return int(fields[0]) if fields and fields[0].isdecimal() else None
    return None


def parse_status_nspid(text):
    """'NSpid:\\t812\\t1' -> [812, 1] (one pid per nested pid namespace)."""
    for line in (text or "").splitlines():
        if line.startswith("NSpid:"):
            return [int(f) for f in line[6:].split() if f.isdecimal()]
    return []


_CGROUP_ID_RE = re.compile(r"(?:^|[/:-])([0-9a-f]{64})(?:\.scope)?(?=$|[/:])")
_CGROUP_NAME_RES = (
    re.compile(r"/lxc\.payload\.([^/]+)"),
    re.compile(r"/lxc/([^/]+)"),
    re.compile(r"/machine-([^/]+)\.scope"),
    re.compile(r"/systemd-nspawn@([^/]+)\.service"),
)


def parse_cgroup_container(text):
    """/proc/<pid>/cgroup -> short container id (12 hex) or name; None if none.

    Handles docker (/docker/<id>, docker-<id>.scope), podman (libpod-<id>.scope),
    containerd/CRI (cri-containerd-<id>.scope, ...slice:cri-containerd:<id>),
    CRI-O (crio-<id>.scope), kubepods cgroupfs (/kubepods/.../<id>), LXC and
    systemd-nspawn names. The last id on a line wins (nested runtimes).
    """
    best = None
    for line in (text or "").splitlines():
        path = line.split(":", 2)[-1]
        ids = _CGROUP_ID_RE.findall(path)
        if ids:
            return ids[-1][:12]
        if best is None:
            best = _cgroup_name(path)
    return best


def _cgroup_name(path):
    for regex in _CGROUP_NAME_RES:
        m = regex.search(path)
        if m:
            return m.group(1).replace("\\x2d", "-")
    return None


# Who a process belongs to, from its cgroup path (systemd, runtimes, kubelet, Slurm).
_USER_MANAGER_RE = re.compile(r"^user@\d+\.service$")
_RUNTIME_SCOPE_RE = re.compile(r"^(docker|libpod|cri-containerd|crio)-([0-9a-f]{64})(?:\.scope)?$")
_RUNTIME_CGROUPS_PATH_RE = re.compile(r":(docker|cri-containerd|crio):([0-9a-f]{64})$")
_RUNTIME_NAMES = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd",
                  "crio": "cri-o"}
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_K8S_UID = (r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
            r"|[0-9a-f]{32}")                  # a UUID; a static pod's is an md5 in hex
# Pods and Slurm jobs only where the kubelet and slurmd put them, from the cgroup
# root (or, read from a cgroup namespace, from the ancestor a "/.." run leads to):
# never below a cgroup that is delegated to a user (user@UID.service) or a container.
_K8S_POD_RE = re.compile(
    r"^(?:/kubepods(?:/[a-z]+)?/pod(%s)(?=/|$)"                      # cgroupfs driver
    r"|/kubepods\.slice/(?:kubepods-[a-z]+\.slice/)?kubepods(?:-[a-z]+)?-pod(%s)\.slice(?=/|$)"
    r"|(?:/system\.slice/containerd\.service)?/kubepods(?:-[a-z]+)?-pod(%s)\.slice:)"  # v1 literal
    % (_K8S_UID, _K8S_UID, _K8S_UID))
_K8S_UID_RE = re.compile(r"^(?:%s)$" % _K8S_UID.replace("[-_]", "-"))
_SLURM_RES = (re.compile(r"^/(?:system\.slice/)?(?:[^/]+_)?slurmstepd\.scope/job_(\d+)"
                         r"(?:/step_([^/]+))?(?=/|$)"),
              re.compile(r"^/slurm(?:_[^/]+)?/uid_\d+/job_(\d+)(?:/step_([^/]+))?(?=/|$)"))
_CGROUP_UP_RE = re.compile(r"^(?:/\.\.)+(?=/)")
# a rootless container in a user manager: its own scope right under user.slice
# (Docker, Podman) or machine.slice; nothing else below user@UID.service is trusted
_ROOTLESS_SCOPE_RE = re.compile(r"^(?:/\.\.)*(?:/[^/]+\.slice)*/user@\d+\.service/"
                                r"(?:user|machine)\.slice/(docker|libpod)-([0-9a-f]{64})\.scope(?=/|$)")
_SLURM_STEP_RE = re.compile(r"^(?:\d+|batch|extern|interactive)$")
_K8S_LINK_RE = re.compile(r"^([^_/]+)_([^_/]+)_([^_/]+)-([0-9a-f]{64})\.log$")


def parse_cgroup_paths(text):
    """/proc/<pid>/cgroup -> its paths: the v2 line's ("0::") first, then the v1
    name=systemd line's, then the v1 controllers' in file order; a zombie's
    " (deleted)" cut off; the root "/" (nothing to say) left out."""
    ranked = []
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        path = parts[2][:-10] if parts[2].endswith(" (deleted)") else parts[2]
        rank = 0 if parts[:2] == ["0", ""] else (1 if parts[1] == "name=systemd" else 2)
        if path.strip("/"):
            ranked.append((rank, len(ranked), path))
    return [path for _, _, path in sorted(ranked)]


def parse_systemd_unit(path):
    """The systemd unit (service or scope) a cgroup path is in, spelt as systemd
    spells it ("\\x2d" escapes kept: what `systemctl status` takes). Only slices
    may lead to it; inside a user manager: "user@1000.service/app-x.scope".
    Below the unit (a delegated tree: slurmstepd's jobs, a container's own
    systemd) nothing counts. None when no unit heads the path (/docker/..., /)."""
    units = []
    for comp in path.strip("/").split("/"):
        if comp.endswith(".slice"):
            continue
        if not comp.endswith((".service", ".scope")):
            break
        units.append(comp)
        if not _USER_MANAGER_RE.match(comp):
            break
    return "/".join(units) or None


def parse_cgroup_runtime(path):
    """(runtime, 64-hex id) of the innermost container a cgroup path names:
    <prefix>-<id>.scope of the systemd driver (docker, libpod, cri-containerd,
    crio; their conmon scopes are not containers), the v1 "slice:prefix:id"
    literal, or a bare id (docker's cgroupfs /docker/<id>; under kubepods the
    runtime is not said: None). (None, None) when there is none."""
    comps = path.split("/")
    for i in range(len(comps) - 1, 0, -1):
        m = _RUNTIME_SCOPE_RE.match(comps[i]) or _RUNTIME_CGROUPS_PATH_RE.search(comps[i])
        if m:
            return _RUNTIME_NAMES[m.group(1)], m.group(2)
        if _HEX64_RE.match(comps[i]):
            return ("docker" if comps[i - 1] == "docker" else None), comps[i]
    return None, None


def _cgroup_from_root(path):
    """A cgroup path without its leading "/.." run (a path outside the reader's
    cgroup namespace: what follows hangs off one of the reader's ancestors)."""
    return _CGROUP_UP_RE.sub("", path)


def _cgroup_user_owned(path):
    """True for a path below a user manager (user@UID.service: delegated, the
    user may make any cgroup there, named like anything)."""
    return any(_USER_MANAGER_RE.match(comp) for comp in path.split("/"))


def parse_k8s_pod_uid(path):
    """The pod UID (dashed) of a kubepods cgroup path from the root: the cgroupfs
    driver's /kubepods/<qos>/pod<uid>/, the systemd driver's
    /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice,
    v1's "...-pod<uid>.slice:cri-containerd:<id>" literal. None anywhere else."""
    m = _K8S_POD_RE.match(_cgroup_from_root(path))
    uid = m and (m.group(1) or m.group(2) or m.group(3))
    return uid.replace("_", "-") if uid else None


def parse_slurm_cgroup(path):
    """{"job": int, "step": str or None} of slurmstepd's cgroup v2 tree
    (/system.slice/slurmstepd.scope/job_<N>/step_<S>/...) or of Slurm's v1
    one (/slurm/uid_<U>/job_<N>/step_<S>/...), from the root; step: a number,
    batch, extern or interactive (else None); None outside a job (or a look-alike
    deeper down, e.g. a user's own cgroup below user@UID.service)."""
    path = _cgroup_from_root(path)
    for regex in _SLURM_RES:
        m = regex.match(path)
        if m:
            step = m.group(2)
            return {"job": int(m.group(1)),
                    "step": step if step and _SLURM_STEP_RE.match(step) else None}
    return None


def parse_rootless_runtime(path):
    """(runtime, 64-hex id) of a rootless container in a user manager
    (user@UID.service/user.slice/docker-<id>.scope, libpod-<id>.scope), the
    user's own; (None, None) for anything else below a user manager."""
    m = _ROOTLESS_SCOPE_RE.match(path)
    return (_RUNTIME_NAMES[m.group(1)], m.group(2)) if m else (None, None)


def parse_cgroup_who(text):
    """/proc/<pid>/cgroup -> CgroupWho; each part from the first path (v2 first)
    that says it; NO_CGROUP_WHO's nulls for every shape not known. Below a user
    manager only the unit and a rootless container's own scope count."""
    unit = runtime = cid = pod = slurm = None
    for path in parse_cgroup_paths(text):
        unit = unit or parse_systemd_unit(path)
        owned = _cgroup_user_owned(path)
        if cid is None:
            runtime, cid = (parse_rootless_runtime if owned else parse_cgroup_runtime)(path)
        pod = pod or parse_k8s_pod_uid(path)
        slurm = slurm or parse_slurm_cgroup(path)
    system = "\n".join(line for line in (text or "").splitlines()
                       if not _cgroup_user_owned(line.split(":", 2)[-1]))
    container = parse_cgroup_container(system) or (cid[:12] if cid else None)
    return CgroupWho(unit, container, cid, runtime, pod, slurm)


def parse_k8s_pod_dir(name):
    """A kubelet pod log directory name "<namespace>_<pod>_<uid>" -> (namespace,
    pod, uid); None for any other name (older kubelets: "<uid>" alone)."""
    parts = name.split("_")
    if len(parts) != 3 or not parts[0] or not parts[1] or not _K8S_UID_RE.match(parts[2]):
        return None
    return tuple(parts)


def parse_k8s_container_link(name):
    """A /var/log/containers name "<pod>_<namespace>_<container>-<64 hex id>.log"
    -> (pod, namespace, container, id); None otherwise (a name the kubelet cut
    to 255 bytes loses its id: None)."""
    m = _K8S_LINK_RE.match(name)
    return m.groups() if m else None


def parse_docker_config_name(text):
    """Docker's config.v2.json -> its "Name" without the leading "/"; None if none."""
    try:
        doc = json.loads(text or "")
    except ValueError:
        return None
    name = doc.get("Name") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name.strip("/"):
        return None
    return sanitize_text(name.lstrip("/"))[:128]


def parse_containers_storage_names(text):
    """containers/storage's containers.json (Podman, CRI-O: a list of {"id",
    "names": [...]}) -> {64-hex id: its first name}; {} when not that shape."""
    try:
        doc = json.loads(text or "")
    except ValueError:
        return {}
    names = {}
    for item in doc if isinstance(doc, list) else ():
        if not isinstance(item, dict) or not _HEX64_RE.match(str(item.get("id"))):
            continue
        found = item.get("names")
        if isinstance(found, list) and found and isinstance(found[0], str) and found[0]:
            names[item["id"]] = sanitize_text(found[0])[:128]
    return names


def compute_who_label(row):
    """The most specific owner of a process row, as one short text: Kubernetes
    pod > Slurm job > container > systemd unit; None when none is known."""
    k8s, slurm = row.get("k8s"), row.get("slurm")
    if k8s:
        pod = "%s/%s" % (k8s.get("namespace"), k8s.get("pod")) if k8s.get("pod") else (
            "pod " + k8s["pod_uid"])
        return pod + (" " + k8s["container"] if k8s.get("container") else "")
    if slurm:
        step = slurm.get("step")
        return "job %d" % slurm["job"] + ("" if step is None else " step " + step)
    if row.get("container_name") or row.get("container"):
        return "container " + (row.get("container_name") or row["container"])
    return row.get("unit")


def _unescape_mount(field):
    """mountinfo/mounts escape space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _proc_mount_entry(line):
    """One mountinfo or /proc/mounts line -> (mount point, options) of a proc mount."""
    if " - " in line:                               # mountinfo (proc(5))
        pre, _, post = line.partition(" - ")
        pre_f, post_f = pre.split(), post.split()
        if len(pre_f) < 6 or len(post_f) < 3 or post_f[0] != "proc":
            return None
        return (_unescape_mount(pre_f[4]), pre_f[5] + "," + post_f[2])
    fields = line.split()                           # /proc/mounts (fstab(5))
    if len(fields) < 4 or fields[2] != "proc":
        return None
    return (_unescape_mount(fields[1]), fields[3])


def _hidepid_value(options):
    for opt in options.split(","):
        if opt.startswith("hidepid="):
            value = opt[8:]
            return False if value in ("0", "off") else value
    return False


def parse_hidepid(mountinfo_text, mount_point="/proc"):
    """hidepid of the proc mount at mount_point (else at /proc, else any proc).

    Returns the option value ("1", "2", "invisible", "noaccess", "ptraceable"),
    False when that proc mount has no hidepid, None when no proc mount is
    listed. Accepts /proc/self/mountinfo or /proc/mounts text.
    """
    found = {}
    for line in (mountinfo_text or "").splitlines():
        entry = _proc_mount_entry(line)
        if entry is None:
            continue
        point = entry[0]
        rank = 0 if point == mount_point else (1 if point == "/proc" else 2)
        found[rank] = _hidepid_value(entry[1])      # later (stacked) mounts win
    for rank in (0, 1, 2):
        if rank in found:
            return found[rank]
    return None


# -- host metrics (/proc/stat, meminfo, loadavg, pressure; per-process CPU %) --

def parse_proc_stat_cpu(text):
    """/proc/stat -> (the aggregate "cpu" line's times as ints, number of
    "cpuN" lines); (None, None) when there is no cpu line.

    The times are USER_HZ ticks in the order of man 5 proc: user nice system
    idle iowait irq softirq steal guest guest_nice (older kernels have fewer).
    """
    times, count = None, 0
    for line in (text or "").splitlines():
        if not line.startswith("cpu"):
            break                                   # the cpu lines come first
        name, _, values = line.partition(" ")
        if name == "cpu":
            fields = values.split()
            if len(fields) >= 4 and all(f.isdecimal() for f in fields):
                times = tuple(int(f) for f in fields[:10])   # psutil's 10 too
        elif name[3:].isdecimal():
            count += 1
    return (times, count or None) if times is not None else (None, None)


def _cpu_total_busy(times):
    """psutil's _cpu_tot_time/_cpu_busy_time: guest and guest_nice are already
    counted in user and nice, so they leave the total; busy = total - idle - iowait."""
    total = sum(times) - sum(times[8:10])
    return total, total - times[3] - (times[4] if len(times) > 4 else 0)


def compute_cpu_busy_pct(prev, cur):
    """CPU busy % between two /proc/stat cpu-line readings, as psutil's
    cpu_percent(): 0.0 when busy time did not grow, None without two readings."""
    if prev is None or cur is None:
        return None
    total0, busy0 = _cpu_total_busy(prev)
    total1, busy1 = _cpu_total_busy(cur)
    if total1 <= total0:
        return None
    if busy1 <= busy0:
        return 0.0
    return round(min(100.0, 100.0 * (busy1 - busy0) / (total1 - total0)), 1)


def parse_meminfo(text, names=None):
    """/proc/meminfo -> {name: bytes} ("kB" lines times 1024; HugePages_* counts
    as is): every line, or only those names (found directly: a tenth of the cost)."""
    text = text or ""
    if names is None:
        return dict((name, int(value) * (1024 if unit else 1))
                    for name, value, unit in MEMINFO_LINE_RE.findall(text))
    out, text = {}, "\n" + text
    for name in names:
        at = text.find("\n%s:" % name)
        if at < 0:
            continue
        end = text.find("\n", at + 1)
        match = MEMINFO_LINE_RE.match(text[at + 1:end if end > 0 else len(text)])
        if match:
            out[name] = int(match.group(2)) * (1024 if match.group(3) else 1)
    return out


def parse_loadavg(text):
    """/proc/loadavg '0.52 0.40 0.33 2/812 12345' -> (0.52, 0.40, 0.33) or None."""
    fields = (text or "").split()
    try:
        values = tuple(float(f) for f in fields[:3])
    except ValueError:
        return None
    return values if len(values) == 3 and all(math.isfinite(v) for v in values) else None


def parse_pressure(text):
    """/proc/pressure/* (psi.rst: 'some avg10=0.00 avg60=0.00 avg300=0.00
    total=0', then a 'full' line) -> {"some": {"avg10": 0.0, ..., "total": 0},
    "full": {...}}; avg* are percent, total is microseconds."""
    out = {}
    for line in (text or "").splitlines():
        kind, _, rest = line.partition(" ")
        values = {}
        for item in rest.split():
            key, sep, value = item.partition("=")
            try:
                number = int(value) if key == "total" else float(value)
            except ValueError:
                continue
            if sep and math.isfinite(number):
                values[key] = number
        if kind in ("some", "full") and values:
            out[kind] = values
    return out


def _difference(a, b):
    return a - b if a is not None and b is not None else None


def build_host(cpu_busy_pct=None, cpu_count=None, loadavg=None, meminfo=None, pressure=None):
    """The one host-dict builder: every HOST_KEYS key, null where unknown.
    used = MemTotal - MemAvailable (proc.txt: MemAvailable estimates what new
    programs can get without swapping; null on kernels before 3.14)."""
    mem, psi, load = meminfo or {}, pressure or {}, loadavg or (None, None, None)
    total, available = mem.get("MemTotal"), mem.get("MemAvailable")
    swap_total = mem.get("SwapTotal")
    host = {
        "cpu_busy_pct": cpu_busy_pct, "cpu_count": cpu_count,
        "load1": load[0], "load5": load[1], "load15": load[2],
        "mem_total_bytes": total, "mem_used_bytes": _difference(total, available),
        "mem_available_bytes": available, "swap_total_bytes": swap_total,
        "swap_used_bytes": _difference(swap_total, mem.get("SwapFree")),
        "mem_pressure_some_avg10": psi.get("some", {}).get("avg10"),
        "mem_pressure_full_avg10": psi.get("full", {}).get("avg10"),
    }
    return dict((key, host[key]) for key in HOST_KEYS)


def compute_proc_cpu_pct(prev, cur, clk_tck):
    """CPU % of one process between two (t_s, utime+stime ticks) readings, as
    top shows it: 100 = one CPU busy (4 busy threads: 400). None without two
    readings, a zero interval or a counter that went back."""
    if prev is None or cur is None or prev[1] is None or cur[1] is None or clk_tck <= 0:
        return None
    dt, dticks = cur[0] - prev[0], cur[1] - prev[1]
    if dt <= 0 or dticks < 0:
        return None
    return round(100.0 * dticks / clk_tck / dt, 1)


class ProcCpuMeter(object):
    """Per-process CPU % and RSS from successive /proc/<pid>/stat lines, keyed
    by (pid, start_time) so a reused PID starts fresh. Time is given; the
    owner prunes the keys it no longer sees."""

    def __init__(self, clk_tck, page_size):
        self.clk_tck, self.page_size = clk_tck, page_size
        self._prev = {}              # (pid, start_time) -> (t_s, ticks, cpu_pct)

    def measure(self, pid, line, now_s):
        """-> (cpu_pct, rss_bytes) for one stat line read at now_s."""
        rss = line.rss_pages * self.page_size if line.rss_pages is not None else None
        if line.start_time is None or line.cpu_ticks is None:
            return None, rss
        key = (pid, line.start_time)
        prev = self._prev.get(key)
        if prev is not None and now_s - prev[0] < PROC_CPU_MIN_INTERVAL_S:
            return prev[2], rss                     # read twice in one scan (2 GPUs)
        pct = compute_proc_cpu_pct(prev, (now_s, line.cpu_ticks), self.clk_tck)
        self._prev[key] = (now_s, line.cpu_ticks, pct)
        return pct, rss

    def prune(self, alive):
        """Forget every (pid, start_time) not in alive."""
        for key in [k for k in self._prev if k not in alive]:
            del self._prev[key]


# -- command lines: cleaning and redaction ----------------------------------

_ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"                  # CSI ... final byte
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"      # OSC ... BEL / ST
    r"|\x1b[@-Z\\-_]"                           # two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]")                  # 8-bit CSI
_SPACE_CTRL_RE = re.compile("[\t\n\r\x0b\x0c\u2028\u2029]")
_CTRL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# A flag is secret when its last name part says so: --password, --db-password,
# --hf-token, --api-key, --client-secret; not --max-tokens, --tokenizer,
# --password-file, --bypass (values there are not secrets, and are useful);
# --auth / --basic-auth (httpie, many CLIs) take user:password or a token.
_SECRET_FLAG_NAME_RE = re.compile(
    r"(?:^|[-_.])(?:passw(?:or)?d|passphrase|pass|pwd|secret|token|api[-_]?key|apikey"
    r"|access[-_]?key|private[-_]?key|secret[-_]?key|credentials?|auth|authorization)$", re.I)
_FLAG_VALUE_RE = re.compile(r"(^|\s)(-{1,2}[A-Za-z0-9][A-Za-z0-9_.-]*)(=|\s+)(\S+)")
_SECRET_ENV_RE = re.compile(
    r"(^|[\s=:;,'\"])([A-Za-z0-9_]*_(?:KEY|TOKEN|SECRET)|[A-Za-z0-9_]*PASSW(?:OR)?D[A-Za-z0-9_]*"
    r"|SECRET|TOKEN)=([^\s'\"]+)", re.I)
_URL_CRED_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")
_QUERY_SECRET_RE = re.compile(
    r"([?&](?:access_token|token|api_?key|password|secret|sig|signature)=)[^&\s]+", re.I)
# HTTP headers that carry credentials (curl -H / --header, wget --header, httpie):
# the scheme word stays (Bearer, Basic), the credential goes, up to a quote (sh -c).
_HEADER_SECRET_RE = re.compile(
    r"(^|[\s'\"=])((?:proxy-)?authorization|cookie|x-[a-z0-9-]*(?:key|token|secret|auth)"
    r"|[a-z0-9-]*api-?key|[a-z0-9-]*-token)(\s*:\s*)"
    r"((?:bearer|basic|token|digest|negotiate|ntlm|apikey)\s+)?[^'\"]+", re.I)
# Flags whose value is user:password (curl -u/--user/--proxy-user/-U, wget, psql):
# the user stays, the password goes; a URL value is left to _URL_CRED_RE.
USER_PASSWORD_FLAGS = ("-u", "--user", "-U", "--proxy-user")
_SHORT_USER_RE = re.compile(r"^(-u)([^\s:=-][^\s:]*:)(\S+)$")


def is_secret_flag(flag):
    """'--password' / '-token' / '--api-key' (no '=value') -> True."""
    return flag.startswith("-") and bool(_SECRET_FLAG_NAME_RE.search(flag.lstrip("-")))


def sanitize_text(text):
    """Drop ANSI escapes and control/bidi characters; line breaks become spaces."""
    text = _ANSI_RE.sub("", text)
    return _CTRL_RE.sub("", _SPACE_CTRL_RE.sub(" ", text))


def redact_user_password(value):
    """'alice:pw' -> 'alice:***' (the value of -u / --user); a URL, a value
    without ':' (just a user name) or a numeric uid:gid stays."""
    user, colon, password = value.partition(":")
    if not colon or "://" in value or not password or (user.isdigit() and password.isdigit()):
        return value
    return user + ":" + REDACTED


def _redact_flag_value(m):
    if m.group(2) in USER_PASSWORD_FLAGS:
        return m.group(1) + m.group(2) + m.group(3) + redact_user_password(m.group(4))
    if not is_secret_flag(m.group(2)) or (m.group(3) != "=" and m.group(4).startswith("-")):
        return m.group(0)
    return m.group(1) + m.group(2) + m.group(3) + REDACTED


def _redact_header(m):
    return m.group(1) + m.group(2) + m.group(3) + (m.group(4) or "") + REDACTED


def _redact_inline(arg):
    arg = _SHORT_USER_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, arg)
    arg = _FLAG_VALUE_RE.sub(_redact_flag_value, arg)
    arg = _HEADER_SECRET_RE.sub(_redact_header, arg)
    arg = _SECRET_ENV_RE.sub(lambda m: m.group(1) + m.group(2) + "=" + REDACTED, arg)
    arg = _URL_CRED_RE.sub(lambda m: m.group(1) + ":" + REDACTED + "@", arg)
    return _QUERY_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, arg)


def redact_argv(argv):
    """Redact secret-looking values in a list of arguments (already sanitized).

    '--password x' / '--token x' (flag then value), '--api-key=x', 'X_KEY=x',
    'X_TOKEN=x', 'X_SECRET=x', '*PASSWORD*=x', 'scheme://user:pass@',
    '?token=x' query parameters, '--auth=x', credential headers ('-H
    "Authorization: Bearer x"', 'X-Api-Key: x') and the password of '-u
    user:pass' / '--user=user:pass'. Also applied inside one argument (sh -c '...').
    """
    out, hide_next, user_next = [], False, False
    for arg in argv:
        if hide_next and arg and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        if user_next and not arg.startswith("-"):
            arg = redact_user_password(arg)
        hide_next, user_next = is_secret_flag(arg), arg in USER_PASSWORD_FLAGS
        out.append(_redact_inline(arg))
    return out


def redact_cmdline(raw_bytes, max_len=CMD_MAX_LEN):
    """/proc/<pid>/cmdline bytes -> one safe display string of <= max_len chars.

    NUL separators become spaces, escapes/control characters are stripped
    before redaction (so they cannot hide a keyword), secrets are redacted,
    whitespace runs collapse to one space, and an over-long result ends with
    an ellipsis.
    """
    if isinstance(raw_bytes, str):
        raw_bytes = raw_bytes.encode("utf-8", "replace")
    parts = (raw_bytes or b"").split(b"\0")
    while parts and parts[-1] == b"":
        parts.pop()
    argv = [sanitize_text(p.decode("utf-8", "replace")) for p in parts]
    text = " ".join(" ".join(redact_argv(argv)).split())     # one space between words
    if len(text) > max_len:
        text = text[:max(0, max_len - 1)] + ELLIPSIS
    return text


# -- process top: rate maths (engine busy) ----------------------------------

def compute_engine_pct(prev_ns, cur_ns, dt_ns, capacity=None):
    """Per-engine busy % = delta ns / delta wall ns / capacity x 100.

    prev_ns None (first sample) or dt_ns <= 0 gives None for every engine; an
    engine whose counter went backwards gives None. An engine missing from
    one side counts as 0 there (amdgpu prints an engine once it is non-zero).
    """
    names = set(cur_ns) | set(prev_ns or ())
    if prev_ns is None or dt_ns <= 0:
        return {name: None for name in names}
    out = {}
    for name in names:
        delta = cur_ns.get(name, 0) - prev_ns.get(name, 0)
        cap = max(1, (capacity or {}).get(name, 1))
        out[name] = None if delta < 0 else round(delta * 100.0 / dt_ns / cap, 2)
    return out


def compute_cycles_pct(prev, cur, capacity=None):
    """xe: busy % = delta drm-cycles / delta drm-total-cycles / capacity x 100.

    prev and cur are (cycles, total_cycles) dict pairs; prev None -> all None.
    """
    cur_cycles, cur_total = cur
    if prev is None:
        return {name: None for name in cur_cycles}
    out = {}
    for name in cur_cycles:
        d_busy = cur_cycles[name] - prev[0].get(name, 0)
        d_total = cur_total.get(name, 0) - prev[1].get(name, 0)
        cap = max(1, (capacity or {}).get(name, 1))
        ok = name in prev[1] and d_total > 0 and d_busy >= 0
        out[name] = round(d_busy * 100.0 / d_total / cap, 2) if ok else None
    return out


def _busy_ms_per_s(prev, rec, dt_ns):
    """Sum of engine busy milliseconds per second (not divided by capacity)."""
    ms = 0.0
    for name, value in rec.engines_ns.items():
        ms += max(0, value - prev.engines_ns.get(name, 0)) * 1000.0 / dt_ns
    for name, value in rec.cycles.items():
        d_total = rec.total_cycles.get(name, 0) - prev.total_cycles.get(name, 0)
        if d_total > 0:
            ms += max(0, value - prev.cycles.get(name, 0)) * 1000.0 / d_total
    return round(ms, 2)


def _max_merge(prev, cur):
    """drm-usage-stats.rst: on a lower value keep the previous larger one."""
    merged = dict(prev)
    for name, value in cur.items():
        merged[name] = max(value, merged.get(name, 0))
    return merged


def compute_client_usage(prev, rec, now_ns):
    """One client's engine usage since its previous sample.

    Returns (engines_pct {engine: pct or None}, gpu_time_ms_per_s or None,
    new EngineSample to keep). Legacy records carry their own ring % (the
    kernel's window), used as-is: ms/s = sum of % x 10. An amdgpu client
    with no engine line yet is idle (0 ms/s) from its second sample on.
    """
    if rec.legacy:
        pct = dict(rec.legacy_pct)
        return pct, round(sum(pct.values()) * 10.0, 2), EngineSample(now_ns, {}, {}, {})
    base = prev or EngineSample(now_ns, {}, {}, {})
    sample = EngineSample(now_ns, _max_merge(base.engines_ns, rec.engines_ns),
                          _max_merge(base.cycles, rec.cycles),
                          _max_merge(base.total_cycles, rec.total_cycles))
    dt_ns = now_ns - base.t_ns
    pct = compute_engine_pct(prev.engines_ns if prev else None, rec.engines_ns, dt_ns,
                             rec.capacity)
    pct.update(compute_cycles_pct((prev.cycles, prev.total_cycles) if prev else None,
                                  (rec.cycles, rec.total_cycles), rec.capacity))
    if prev is None or dt_ns <= 0 or None in pct.values() or not record_has_engine_data(rec):
        return pct, None, sample
    return pct, _busy_ms_per_s(prev, rec, dt_ns), sample


# -- process top: per-GPU tables (rows, totals, capabilities, visibility) ---

def _sum_field(clients, field):
    """Sum of a client field; None when no client has it."""
    values = [c[field] for c in clients if c[field] is not None]
    return sum(values) if values else None


def _sum_engines(clients):
    """Per-engine sum over clients; an engine is None if any client's is None."""
    out = {}
    for client in clients:
        for name, pct in client["engines_pct"].items():
            if name in out and out[name] is None:
                continue
            out[name] = None if pct is None else round(out.get(name, 0.0) + pct, 2)
    return out


def _sum_engine_ns(clients):
    """Cumulative busy ns per engine (drm-engine-*), for Prometheus counters."""
    total = {}
    for client in clients:
        for name, value in (client.get("engines_ns") or {}).items():
            total[name] = total.get(name, 0) + value
    return total


def _sum_ms(clients):
    values = [c["ms_per_s"] for c in clients]
    if not values or None in values:
        return None
    return round(sum(values), 2)


def _pick_node(clients):
    nodes = sorted({c["node"] for c in clients if c["node"]})
    render = [n for n in nodes if n.startswith("renderD")]
    return (render or nodes or [None])[0]


PROC_ROW_DEFAULTS = (
    ("pid", None), ("uid", None), ("user", None), ("name", None), ("cmd", None),
    ("render_node", None), ("kfd", False), ("shared", False), ("vram_bytes", None),
    ("gtt_bytes", None), ("cpu_bytes", None), ("vram_total_bytes", None),
    ("gtt_total_bytes", None), ("engines_pct", None), ("engines_ns", None),
    ("gpu_time_ms_per_s", None), ("container", None), ("start_time", None), ("clients", 0),
    ("type", None), ("visible", True), ("cpu_pct", None), ("rss_bytes", None),
    ("vram_forecast", None), ("started", None), ("elapsed_s", None),
    ("unit", None), ("container_name", None), ("k8s", None), ("slurm", None), ("mig", None),
)


def build_proc_row(**fields):
    """The one process-row builder (fdinfo, NVML and demo rows): every key,
    null where the source has no value. type is NVML's C/G/M; visible is False
    for a PID that /proc does not show (another PID namespace)."""
    row = collections.OrderedDict(PROC_ROW_DEFAULTS)
    unknown = set(fields) - set(row)
    if unknown:
        raise ValueError("unknown process row keys: %s" % ", ".join(sorted(unknown)))
    row.update(fields)
    row["engines_pct"] = row["engines_pct"] or {}
    row["engines_ns"] = row["engines_ns"] or {}
    return dict(row)


def _proc_row(proc, clients, owned, kfd_bytes=None):
    """The JSON row of one process on one GPU (usage = its owned clients; on
    a GPU where it has none, kfd_bytes: its KFD VRAM there)."""
    meta = proc["meta"]
    return build_proc_row(
        pid=proc["pid"], uid=meta.get("uid"), user=meta.get("user"),
        name=proc["name"], cmd=meta.get("cmd", ""),
        render_node=_pick_node(clients), kfd=proc["kfd"],
        shared=len(owned) < len(clients),
        vram_bytes=kfd_bytes if kfd_bytes is not None else _sum_field(owned, "vram") or 0,
        gtt_bytes=_sum_field(owned, "gtt") or 0,
        cpu_bytes=_sum_field(owned, "cpu") or 0,
        vram_total_bytes=_sum_field(owned, "vram_total"),
        gtt_total_bytes=_sum_field(owned, "gtt_total"),
        engines_pct=_sum_engines(owned), engines_ns=_sum_engine_ns(owned),
        gpu_time_ms_per_s=_sum_ms(owned) if clients else None,
        container=meta.get("container"), start_time=proc["start_time"], clients=len(owned),
        unit=meta.get("unit"), container_name=meta.get("container_name"),
        k8s=meta.get("k8s"), slurm=meta.get("slurm"),
        cpu_pct=proc.get("cpu_pct"), rss_bytes=proc.get("rss_bytes"),
        started=proc.get("started"), elapsed_s=proc.get("elapsed_s"))


def _sum_known(rows, key):
    """Sum of a row field over the rows that have it; None when none has."""
    values = [row[key] for row in rows if row[key] is not None]
    return sum(values) if values or not rows else None


def build_totals(rows, clients):
    """The one per-GPU totals builder, over process rows and distinct clients."""
    engines = {}
    for row in rows:                  # null only while no process has a value yet
        for name, pct in row["engines_pct"].items():
            if pct is not None:
                engines[name] = round((engines.get(name) or 0.0) + pct, 2)
            else:
                engines.setdefault(name, None)
    ms = [row["gpu_time_ms_per_s"] for row in rows if row["gpu_time_ms_per_s"] is not None]
    return {
        "vram_bytes": _sum_known(rows, "vram_bytes"),
        "gtt_bytes": _sum_known(rows, "gtt_bytes"),
        "cpu_bytes": _sum_known(rows, "cpu_bytes"),
        "gpu_time_ms_per_s": round(sum(ms), 2) if ms else None,
        "engines_pct": engines, "clients": clients, "processes": len(rows),
    }


def build_capabilities(source, memory, engine_time, engines, kfd_seen=False):
    """The one capabilities builder. source: "fdinfo", "nvml" or "demo";
    memory/engine_time: whether per-process memory and engine use are known
    (None: no client seen yet to tell)."""
    fdinfo = source == "fdinfo"
    return {"source": source, "vram_gtt_from_fdinfo": memory if fdinfo else False,
            "engine_time_from_fdinfo": engine_time if fdinfo else False,
            "process_memory": memory, "process_engines": engine_time,
            "engines": sorted(engines), "kfd_seen": kfd_seen}


def build_procs_entry(rows, clients, capabilities):
    """One GPU's slice of a scan result: rows (sorted), totals, capabilities."""
    rows = sorted(rows, key=lambda r: (-((r["vram_bytes"] or 0) + (r["gtt_bytes"] or 0)), r["pid"]))
    return {"processes": rows, "totals": build_totals(rows, clients), "capabilities": capabilities}


def build_visibility(root, pid_namespace_separate=None, hidepid=None, self_container=None,
                     unreadable_pids=0, visible_pids=None):
    """The one visibility builder (what this process can see of the others)."""
    return {"root": root, "pid_namespace_separate": pid_namespace_separate, "hidepid": hidepid,
            "self_container": self_container, "unreadable_pids": unreadable_pids,
            "visible_pids": visible_pids}


def _empty_gpu():
    return {"processes": [], "clients": {}, "kfd": False}


def _kfd_gpus(per_pci, kfd_vram, kfd_pcis):
    """Where a /dev/kfd holder is listed besides its DRM clients' GPUs: the
    GPUs it holds KFD VRAM on ({pci: bytes}); where that is unknown (None),
    a process with no DRM client goes on every AMD GPU."""
    if kfd_vram is None:
        if not per_pci:
            per_pci.update((pci, []) for pci in kfd_pcis)
        return
    for pci, used in kfd_vram.items():
        if used:
            per_pci.setdefault(pci, [])


def _group_clients(procs, gpu_pcis, kfd_pcis):
    """pci -> {"processes": [(proc, clients)], "clients": {key: client}}."""
    groups = {pci: _empty_gpu() for pci in gpu_pcis}
    for proc in procs:
        per_pci = {}
        for client in proc["clients"]:
            per_pci.setdefault(client["pci"], []).append(client)
        if proc["kfd"]:
            _kfd_gpus(per_pci, proc.get("kfd_vram"), kfd_pcis)
        for pci, clients in per_pci.items():
            group = groups.setdefault(pci, _empty_gpu())
            group["processes"].append((proc, clients))
            group["kfd"] = group["kfd"] or proc["kfd"]
            for client in clients:
                group["clients"].setdefault(client["key"], client)
    return groups


def _fdinfo_capabilities(clients, kfd):
    values = list(clients.values())
    return build_capabilities(
        "fdinfo", any(c["has_memory"] for c in values) if values else None,
        any(c["engine_capable"] for c in values) if values else None,
        {n for c in values for n in c["engines_pct"]}, kfd)   # ROCm queues never show in DRM counters


def compute_procs_by_pci(procs, gpu_pcis, kfd_pcis=None):
    """Per-GPU process tables from scanner state (pure).

    procs: [{"pid", "name", "start_time", "kfd", "meta": {...}, "clients":
    [client dicts], "kfd_vram": {pci: bytes} or None}]. A /dev/kfd holder is
    listed where it holds KFD VRAM (that VRAM on a GPU where it has no DRM
    client), else, with no DRM client, on every AMD GPU (kfd_pcis). Each
    distinct client key is attributed to the lowest PID holding it; other
    holders get shared=True and none of its usage, so per-GPU sums over
    processes equal sums over distinct clients.
    """
    procs = sorted(procs, key=lambda p: p["pid"])
    owner = {}
    for proc in procs:
        for client in proc["clients"]:
            owner.setdefault(client["key"], proc["pid"])
    by_pci = {}
    kfd_pcis = gpu_pcis if kfd_pcis is None else kfd_pcis
    for pci, group in _group_clients(procs, gpu_pcis, kfd_pcis).items():
        rows = [_proc_row(proc, clients,
                          [c for c in clients if owner[c["key"]] == proc["pid"]],
                          None if clients else (proc.get("kfd_vram") or {}).get(pci))
                for proc, clients in group["processes"]]
        by_pci[pci] = build_procs_entry(rows, len(group["clients"]),
                                        _fdinfo_capabilities(group["clients"], group["kfd"]))
    return by_pci


def make_client_row(rec, key, pci, node, engines_pct, ms_per_s):
    """One distinct client's numbers, as compute_procs_by_pci consumes them."""
    mem, total = rec.memory or {}, rec.total or {}
    return {"key": key, "pci": pci, "node": node, "engines_pct": engines_pct,
            "ms_per_s": ms_per_s, "vram": mem.get("vram"), "gtt": mem.get("gtt"),
            "cpu": mem.get("cpu"), "vram_total": total.get("vram"),
            "gtt_total": total.get("gtt"), "has_memory": rec.memory is not None,
            "engines_ns": rec.engines_ns,
            "engine_capable": record_has_engine_data(rec)}


def compute_visibility(euid, ns_self, ns_init, nspid, hidepid, self_container):
    """What this process can see of the others (pure; inputs read from /proc).

    pid_namespace_separate: True when NSpid has several levels or our pid
    namespace differs from pid 1's, False when both links agree, None when
    pid 1 is not visible (hidepid, or the link is unreadable).
    """
    separate = None
    if len(nspid) > 1 or (ns_self and ns_init and ns_self != ns_init):
        separate = True
    elif ns_self and ns_init:
        separate = False
    return build_visibility(euid == 0, separate, hidepid, self_container)


def is_gpu_client(rec, node, node_map, drivers=FDINFO_DRIVERS):
    """Keep clients of the drivers we report (amdgpu, i915, xe); a DRM fd
    without usage stats counts when its node belongs to a known GPU, e.g.
    amdgpu on kernels before 5.14."""
    if rec.driver is not None:
        return rec.driver in drivers
    return node in node_map


def select_fd_window(names, cap, resume_fd, keep):
    """Which fd names to readlink this time: at most cap, in numeric order,
    starting at fd number resume_fd (rotating through a process with more fds
    than cap over several scans), plus the names in keep (known GPU fds).

    Returns (names, next_resume_fd or None when the walk is complete).
    """
    if len(names) <= cap:
        return names, None
    numbers = sorted(int(n) for n in names if n.isdigit())
    start = bisect.bisect_left(numbers, resume_fd or 0)
    if start >= len(numbers):
        start = 0
    window = numbers[start:start + cap]
    nxt = numbers[start + cap] if start + cap < len(numbers) else None
    chosen = [str(n) for n in window]
    present = set(names)
    chosen.extend(k for k in keep if k in present and k not in set(chosen))
    return chosen, nxt


# -- history: columns, roll-ups, tier choice and process runs ---------------

def history_scale(key):
    """The fixed unit a history column is stored in: stored = round(value * scale)."""
    if key.startswith("load"):
        return HISTORY_LOAD_SCALE
    if key in HISTORY_INTERVAL_KEYS:
        return HISTORY_INTERVAL_SCALE
    for suffix, scale in HISTORY_SCALES:
        if key.endswith(suffix):
            return scale
    return 1.0


def history_columns(kind):
    """(key, scale) per stored column: every numeric GPU metric plus `throttled`,
    or the host keys."""
    keys = HISTORY_HOST_KEYS if kind == "host" else tuple(
        k for k in METRIC_KEYS if k not in HISTORY_NOT_NUMERIC) + ("throttled",) + \
        HISTORY_INTERVAL_KEYS
    return tuple((key, history_scale(key)) for key in keys)


def history_values(columns, metrics):
    """One sample -> scaled floats (None where unknown), in column order. `throttled`
    is 1 for a sample with throttle reasons, 0 without, None where not reported."""
    out = []
    for key, scale in columns:
        if key == "throttled":
            reasons = metrics.get("throttle_reasons")
            out.append(None if reasons is None else (scale if reasons else 0.0))
            continue
        value = metrics.get(key)
        out.append(value * scale if isinstance(value, (int, float))
                   and not isinstance(value, bool) and value == value else None)
    return out


def _round_or_none(total, count):
    return int(round(total / count)) if count else None


class SeriesRollup(object):
    """Folds the samples of one source into 1 s rows (means) and 1 min rows
    (min/avg/max per column and the sample count n), written as they close.

    add() returns the rows it closed: ("raw", (ts, n, v...)) and ("1m", (ts, n,
    min, avg, max, ...)); flush() the open ones (on stop). Times are given.
    """

    def __init__(self, width):
        self.width = width
        self._sec = None        # [ts, n, sums, counts]
        self._min = None        # [ts, n, mins, sums, counts, maxs]

    def add(self, epoch_s, values):
        closed = []
        second = int(epoch_s)
        minute = second - second % 60
        if self._sec is not None and self._sec[0] != second:
            closed.append(("raw", self._sec_row()))
        if self._min is not None and self._min[0] != minute:
            closed.append(("1m", self._min_row()))
        if self._sec is None:
            self._sec = [second, 0, [0.0] * self.width, [0] * self.width]
        if self._min is None:
            self._min = [minute, 0, [None] * self.width, [0.0] * self.width, [0] * self.width,
                         [None] * self.width]
        self._fold(values)
        return closed

    def _fold(self, values):
        sec, mnt = self._sec, self._min
        sec[1] += 1
        mnt[1] += 1
        s_sum, s_cnt, mins, m_sum, m_cnt, maxs = sec[2], sec[3], mnt[2], mnt[3], mnt[4], mnt[5]
        for i, value in enumerate(values):
            if value is None:
                continue
            s_sum[i] += value
            s_cnt[i] += 1
            m_sum[i] += value
            m_cnt[i] += 1
            if mins[i] is None or value < mins[i]:
                mins[i] = value
            if maxs[i] is None or value > maxs[i]:
                maxs[i] = value

    def _sec_row(self):
        ts, n, sums, counts = self._sec
        self._sec = None
        return (ts, n) + tuple(_round_or_none(s, c) for s, c in zip(sums, counts))

    def _min_row(self):
        ts, n, mins, sums, counts, maxs = self._min
        self._min = None
        row = [ts, n]
        for lo, total, count, hi in zip(mins, sums, counts, maxs):
            row.extend((None if lo is None else int(round(lo)), _round_or_none(total, count),
                        None if hi is None else int(round(hi))))
        return tuple(row)

    def bump(self, index, value):
        """Add value to column `index` of the open rows (a sum that arrives
        between samples: their count stays); False when none is open."""
        if self._sec is None or self._min is None or self._sec[3][index] == 0:
            return False
        self._sec[2][index] += value
        self._min[3][index] += value
        return True

    def flush(self):
        rows = []
        if self._sec is not None:
            rows.append(("raw", self._sec_row()))
        if self._min is not None:
            rows.append(("1m", self._min_row()))
        return rows


def choose_history_step(from_s, to_s, now_s, points=None, tiers=HISTORY_TIERS):
    """(tier name, tier step, bucket step) for a chart of [from_s, to_s): the
    coarsest tier that still gives HISTORY_MIN_POINTS (or whose step fits
    `points`), buckets for at most HISTORY_MAX_POINTS (or `points`), and a tier
    that still holds from_s (a finer one past its retention has no rows)."""
    span = max(1.0, float(to_s) - float(from_s))
    want = span / float(points or HISTORY_MAX_POINTS)
    index = 0
    for i, (_, tier_step, _) in enumerate(tiers):
        if (tier_step <= want) if points else (span / tier_step >= HISTORY_MIN_POINTS):
            index = i
    while index < len(tiers) - 1 and now_s - tiers[index][2] > from_s:
        index += 1
    name, tier_step, _ = tiers[index]
    step = next((s for s in HISTORY_NICE_STEPS if s >= want and s % tier_step == 0),
                int(math.ceil(max(want, tier_step) / 86400.0)) * 86400)
    return name, tier_step, max(step, tier_step)


def parse_iso_ts(text):
    """'2025-10-12T13:07:05.123Z' -> epoch seconds (format_ts's output), or None."""
    try:
        head, _, frac = str(text).rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, TypeError):
        return None
    return seconds + (float("0." + frac) if frac.isdigit() else 0.0)


def parse_byte_size(text):
    """'256MiB', '1G', '1048576' -> bytes (binary units; ValueError when bad)."""
    match = re.match(r"^\s*([0-9]+)\s*([kmgt]?)(i?b)?\s*$", text, re.IGNORECASE)
    if not match:
        raise ValueError("must be a size such as 256MiB, 1GiB or a number of bytes")
    power = " kmgt".index(match.group(2).lower() or " ")
    return int(match.group(1)) << (10 * power)


def resolve_history_path(raw, environ, demo=False):
    """APP_HISTORY_PATH -> a path, None for `off`, HISTORY_MEMORY for `memory`;
    `auto` is $XDG_STATE_HOME/amdgpu_top_web/history.sqlite3 (else
    ~/.local/state/...), and memory with --demo: a demo never writes real history."""
    value = raw.strip()
    if value.lower() in ("off", "none", "false", "0"):
        return None
    if value.lower() == "memory" or (demo and value.lower() in ("", "auto")):
        return HISTORY_MEMORY
    if value and value.lower() != "auto":
        return value
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "amdgpu_top_web", "history.sqlite3")


def history_wal_pages(max_bytes, page_bytes=4096):
    """Pages the history's WAL holds before a checkpoint: its share of the cap."""
    low, high = HISTORY_WAL_PAGES
    return max(low, min(high, max_bytes // HISTORY_WAL_SHARE // page_bytes))


def _engine_pct(row):
    engines = row.get("engines_pct") or {}
    values = [v for v in engines.values() if isinstance(v, (int, float))]
    return (max(values) if values else None), (sum(values) if values else None)


def compute_energy_interval_j(prev, cur, max_gap_s=HISTORY_RUN_MAX_GAP_S):
    """The GPU's energy between two samples (#18), in joules, or None when it has
    neither a counter nor a power reading. prev/cur: (epoch_s, energy_j counter or
    None, power_w or None). The counter's step where both readings have one; a
    counter that went back (driver reload, reset, wrap) or jumped past
    ENERGY_MAX_W falls back to the mean power x the time; 0.0 over a gap longer
    than max_gap_s or a clock that went back: that time is not measured, so it
    is neither counted nor attributed."""
    if prev is None:
        return None
    dt = cur[0] - prev[0]
    if not 0 < dt <= max_gap_s:
        return 0.0
    if _is_number(prev[1]) and _is_number(cur[1]):
        step = cur[1] - prev[1]
        if 0 <= step <= ENERGY_MAX_W * dt:
            return float(step)
    powers = [p for p in (prev[2], cur[2]) if _is_number(p) and p >= 0]
    if not powers:
        return None
    return min(ENERGY_MAX_W, sum(powers) / len(powers)) * dt


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def compute_engine_s_per_s(row):
    """Engine-seconds per second of a process row: gpu_time_ms_per_s / 1000, else
    the sum of its engines' % / 100 (as runs' gpu_s counts it), None when unknown."""
    ms_per_s = row.get("gpu_time_ms_per_s")
    if _is_number(ms_per_s):
        return max(0.0, ms_per_s / 1000.0)
    return None if _engine_pct(row)[1] is None else max(0.0, _engine_pct(row)[1] / 100.0)


def compute_energy_split(energy_j, shares):
    """One interval's GPU energy split among its processes (#18, an estimate):
    -> ([joules per process], idle joules); the parts add up to energy_j.

    shares: per process (engine-seconds per second or None, VRAM bytes or None).
    With engine time known for any process, the GPU counts as busy for the
    fraction b = min(1, sum of engine-s/s) of the interval; energy_j x b is
    split by engine time, the rest is idle: energy no process's engine time
    accounts for. With no engine time known at all,
    the whole of it is split by VRAM share. No processes, or nothing to weigh
    them by: all idle."""
    if not energy_j or energy_j <= 0:
        return [0.0 if energy_j is not None else None] * len(shares), energy_j
    engine = [e for e, _ in shares]
    if any(e is not None for e in engine):
        weights = [e or 0.0 for e in engine]
        busy = min(1.0, sum(weights))
    else:
        weights = [v if _is_number(v) and v > 0 else 0.0 for _, v in shares]
        busy = 1.0
    total = sum(weights)
    if total <= 0 or busy <= 0:
        return [0.0] * len(shares), energy_j
    parts = [energy_j * busy * w / total for w in weights]
    return parts, energy_j - sum(parts)


WHO_RUN_COLUMNS = ("k8s_namespace", "k8s_pod", "k8s_container", "k8s_pod_uid", "slurm_job",
                   "slurm_step")


def compute_who_columns(row):
    """A process row's k8s and slurm objects as the runs table's flat columns."""
    k8s, slurm = row.get("k8s") or {}, row.get("slurm") or {}
    return {"k8s_namespace": k8s.get("namespace"), "k8s_pod": k8s.get("pod"),
            "k8s_container": k8s.get("container"), "k8s_pod_uid": k8s.get("pod_uid"),
            "slurm_job": slurm.get("job"), "slurm_step": slurm.get("step")}


def compute_who_json(columns):
    """The runs table's flat columns -> the row's k8s and slurm (null when unknown)."""
    k8s = None
    if columns.get("k8s_pod_uid") or columns.get("k8s_pod"):
        k8s = {"namespace": columns.get("k8s_namespace"), "pod": columns.get("k8s_pod"),
               "container": columns.get("k8s_container"), "pod_uid": columns.get("k8s_pod_uid")}
    slurm = None
    if columns.get("slurm_job") is not None:
        slurm = {"job": columns["slurm_job"], "step": columns.get("slurm_step")}
    return {"k8s": k8s, "slurm": slurm}


class RunTracker(object):
    """Process runs from successive process lists (pure: rows and times in).

    A run is keyed (gpu_id, pid, start_time): a reused PID is a new run. It
    ends when missing for HISTORY_RUN_MISSING_SCANS scans of its GPU, or at once
    when its PID shows up with another start time. take() hands out what
    changed since the last take: peaks, and the sums added (time, VRAM x time,
    GTT x time, engine % x time, GPU-engine seconds, energy: its share of each
    interval's GPU energy, compute_energy_split), so the store can merge them
    into a row that survives restarts. take_sample() hands out each run's
    energy and GPU-seconds since the last process sample.
    """

    INFO = ("pid", "start_time", "name", "user", "uid", "cmd", "container", "kfd", "type",
            "started", "unit", "container_name")

    def __init__(self, missing_scans=HISTORY_RUN_MISSING_SCANS, max_gap_s=HISTORY_RUN_MAX_GAP_S):
        self.missing_scans, self.max_gap_s = missing_scans, max_gap_s
        self._runs = {}

    def seed(self, gpu_id, pid, start_time, last_seen):
        """A run left open by an earlier server on this boot: ended if not seen again."""
        key = (gpu_id, pid, start_time)
        if key not in self._runs:
            run = self._new(gpu_id, {"pid": pid, "start_time": start_time}, last_seen)
            run["seeded"], run["dirty"] = True, False
            self._runs[key] = run

    def _new(self, gpu_id, row, epoch_s):
        run = dict((k, row.get(k)) for k in self.INFO)
        run["started"] = parse_utc_s(run["started"])      # stored as epoch seconds
        run.update(compute_who_columns(row))
        run.update(gpu_id=gpu_id, first_seen=epoch_s, last_seen=epoch_s, ended=None, missing=0,
                   peak_vram=None, peak_gtt=None, peak_engine=None, dirty=True, seeded=False,
                   sample_energy_j=None, sample_gpu_s=0.0)
        run.update(self._zero_sums())
        return run

    @staticmethod
    def _zero_sums():
        return {"time_s": 0.0, "vram_s": 0.0, "gtt_s": 0.0, "engine_s": 0.0, "gpu_s": 0.0,
                "samples": 0, "energy_j": None}

    def feed(self, gpu_id, epoch_s, rows, energy_j=None):
        """One process list of a GPU and the GPU's energy since its last list
        (None: unknown) -> the idle joules (the part no process accounts for)."""
        seen = set()
        pids = {}
        parts, idle_j = compute_energy_split(energy_j, [
            (compute_engine_s_per_s(row), row.get("vram_bytes")) for row in rows])
        for row, part in zip(rows, parts):
            key = (gpu_id, row.get("pid"), row.get("start_time") or 0)
            seen.add(key)
            pids[key[1]] = key[2]
            run = self._runs.get(key)
            if run is None or run["ended"] is not None:
                run = self._runs[key] = self._new(gpu_id, row, epoch_s)
            self._update(run, row, epoch_s, part)
        for key, run in self._runs.items():
            if key[0] != gpu_id or key in seen or run["ended"] is not None:
                continue
            run["missing"] += 1
            if run["missing"] >= self.missing_scans or pids.get(key[1], key[2]) != key[2]:
                run["ended"], run["dirty"] = run["last_seen"], True
        return idle_j

    def _update(self, run, row, epoch_s, energy_j=None):
        dt = epoch_s - run["last_seen"]
        dt = dt if 0 < dt <= self.max_gap_s else 0.0
        if run["seeded"]:
            run.update((k, row.get(k)) for k in self.INFO)
            run["started"] = parse_utc_s(run["started"])
            run.update(compute_who_columns(row))
            run["seeded"] = False
        vram, gtt = row.get("vram_bytes"), row.get("gtt_bytes")
        busiest, engine_sum = _engine_pct(row)
        ms_per_s = row.get("gpu_time_ms_per_s")
        run["peak_vram"] = _max_known(run["peak_vram"], vram)
        run["peak_gtt"] = _max_known(run["peak_gtt"], gtt)
        run["peak_engine"] = _max_known(run["peak_engine"], busiest)
        run["time_s"] += dt
        run["vram_s"] += (vram or 0) * dt
        run["gtt_s"] += (gtt or 0) * dt
        run["engine_s"] += (busiest or 0) * dt
        gpu_s = (ms_per_s / 1000.0 if isinstance(ms_per_s, (int, float))
                 else (engine_sum or 0) / 100.0) * dt
        run["gpu_s"] += gpu_s
        run["sample_gpu_s"] += gpu_s
        if energy_j is not None:
            run["energy_j"] = (run["energy_j"] or 0.0) + energy_j
            run["sample_energy_j"] = (run["sample_energy_j"] or 0.0) + energy_j
        run["samples"] += 1
        run["last_seen"], run["missing"], run["dirty"] = epoch_s, 0, True
        run["last"] = (vram, gtt, busiest)

    def dirty(self):
        return any(run["dirty"] for run in self._runs.values())

    def take(self):
        """The runs changed since the last take (copies); ended runs are forgotten."""
        out = []
        for key in list(self._runs):
            run = self._runs[key]
            if not run["dirty"]:
                continue
            out.append(dict(run))
            run.update(self._zero_sums())
            run["dirty"] = False
            if run["ended"] is not None:
                del self._runs[key]
        return out

    def take_sample(self, gpu_id):
        """[(key, (vram, gtt, engine %, energy J, GPU-seconds))] of the runs of one GPU
        seen in the last feed: energy and GPU-seconds since their last sample."""
        out = []
        for key, run in self._runs.items():
            if key[0] == gpu_id and run["ended"] is None and run["missing"] == 0 and "last" in run:
                out.append((key, run["last"] + (run["sample_energy_j"], run["sample_gpu_s"])))
                run["sample_energy_j"], run["sample_gpu_s"] = None, 0.0
        return out


class EnergyLedger(object):
    """Each GPU's energy between its samples and its process lists (#18; pure:
    values and times in). on_stats() measures a sample's interval
    (compute_energy_interval_j) -> the sample's HISTORY_INTERVAL_KEYS, and pools
    the energy until the GPU's next process list takes it (take(), to split among
    its processes; the writer adds the idle part the split leaves to the open
    rows, SeriesRollup.bump). A pool no list takes within max_gap_s (no process
    scan) is the sample's idle. A GPU with a counter or a power reading gets
    numbers (0.0, never null, so a stored row's avg x n is its sum); one with
    neither gets None."""

    def __init__(self, max_gap_s=HISTORY_RUN_MAX_GAP_S):
        self.max_gap_s = max_gap_s
        self._gpus = {}

    def _gpu(self, gpu_id, epoch_s):
        return self._gpus.setdefault(gpu_id, {"prev": None, "pool": None, "fed": epoch_s})

    def on_stats(self, gpu_id, epoch_s, metrics):
        gpu = self._gpu(gpu_id, epoch_s)
        cur = (epoch_s, metrics.get("energy_j"), metrics.get("power_w"))
        energy = compute_energy_interval_j(gpu["prev"], cur, self.max_gap_s)
        dt = 0.0 if gpu["prev"] is None else epoch_s - gpu["prev"][0]
        gpu["prev"] = cur
        if energy is None and (_is_number(cur[1]) or _is_number(cur[2])):
            energy = 0.0                    # the first sample, or a reset with no power
        if energy is not None:
            gpu["pool"] = (gpu["pool"] or 0.0) + energy
        idle = 0.0
        if gpu["pool"] is not None and epoch_s - gpu["fed"] > self.max_gap_s:
            idle, gpu["pool"], gpu["fed"] = gpu["pool"], None, epoch_s
        busy = metrics.get("gpu_busy_pct")
        return {"energy_used_j": energy, "energy_idle_j": None if energy is None else idle,
                "busy_s": None if not _is_number(busy) else (
                    max(0.0, busy) / 100.0 * dt if 0 < dt <= self.max_gap_s else 0.0)}

    def take(self, gpu_id, epoch_s):
        """The energy pooled since the GPU's last process list (None: unknown)."""
        gpu = self._gpu(gpu_id, epoch_s)
        pool, gpu["pool"], gpu["fed"] = gpu["pool"], None, epoch_s
        return pool


def compute_run_clip(run, inside, from_s, to_s, sample_s=HISTORY_PROC_SAMPLE_S):
    """The part of a run (its totals: gpu_s, vram_s, energy_j) inside [from_s, to_s]
    (#18 usage): the sums of its process samples in the range (inside: energy J,
    GPU-s, VRAM MiB, count; each sample holds the 10 s before it), no more than
    the run's totals; without samples there (older than their 7 days, none
    taken) or for a quantity they lack, the total x the share of its time inside."""
    first, last = run["first_seen"], run["last_seen"]
    lo, hi = max(first, from_s), min(last, to_s)
    time_share = 1.0 if last <= first else max(0.0, hi - lo) / (last - first)
    out = dict(run, first_seen=lo, last_seen=hi)
    found = inside is not None and inside[3] > 0
    for i, name in enumerate(("energy_j", "gpu_s", "vram_s")):
        if run.get(name) is None:
            continue
        value = None if not found or inside[i] is None else (
            inside[i] * (1 << 20) * sample_s if name == "vram_s" else inside[i])
        out[name] = run[name] * time_share if value is None else min(run[name], value)
    return out


def compute_usage_rows(groups):
    """Per-key parts (dicts: key, runs, gpu_s, vram_s, energy_j or None,
    peak_vram, first_seen, last_seen) -> one merged dict per key, busiest first."""
    merged = collections.OrderedDict()
    for part in groups:
        row = merged.get(part["key"])
        if row is None:
            merged[part["key"]] = dict(part)
            continue
        for name in ("runs", "gpu_s", "vram_s"):
            row[name] = (row[name] or 0) + (part[name] or 0)
        if part["energy_j"] is not None:
            row["energy_j"] = (row["energy_j"] or 0.0) + part["energy_j"]
        row["peak_vram"] = _max_known(row["peak_vram"], part["peak_vram"])
        row["first_seen"] = min(row["first_seen"], part["first_seen"])
        row["last_seen"] = max(row["last_seen"], part["last_seen"])
    return sorted(merged.values(), key=lambda r: (-(r["gpu_s"] or 0), str(r["key"])))


def compute_usage_totals(rows, gpus):
    """(totals of the rows, the GPUs' own totals, unattributed = the GPUs' less the
    rows'): gpu_s and energy_j add up by construction; energy_j None where no
    GPU measured any. unattributed's gpu_s is negative where the processes'
    engine time exceeds the GPU's busy time (several engines at once)."""
    totals = {"runs": sum(r["runs"] for r in rows), "gpu_s": sum(r["gpu_s"] or 0 for r in rows),
              "vram_s": sum(r["vram_s"] or 0 for r in rows),
              "energy_j": sum(r["energy_j"] or 0.0 for r in rows), "peak_vram": None}
    for row in rows:
        totals["peak_vram"] = _max_known(totals["peak_vram"], row["peak_vram"])
    known = [g for g in gpus if g["energy_j"] is not None]
    own = {"busy_s": sum(g["busy_s"] or 0.0 for g in gpus),
           "energy_j": sum(g["energy_j"] for g in known) if known else None,
           "idle_j": sum(g["idle_j"] or 0.0 for g in known) if known else None}
    unattributed = {"gpu_s": own["busy_s"] - totals["gpu_s"],
                    "energy_j": None if own["energy_j"] is None else
                    own["energy_j"] - totals["energy_j"], "idle_j": own["idle_j"]}
    return totals, own, unattributed


def _max_known(old, new):
    if not isinstance(new, (int, float)):
        return old
    return new if old is None or new > old else old


# -- VRAM forecast: Theil-Sen slope with Sen's interval (history-insight §6) --

def _median_sorted(values):
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2.0


def _tie_term(values):
    """sum k(k-1)(2k+5) over groups of k equal values (Kendall's variance ties)."""
    if len(set(values)) == len(values):     # no ties (times, noisy bytes): no Counter
        return 0
    counts = collections.Counter(values)
    return sum(k * (k - 1) * (2 * k + 5) for k in counts.values() if k > 1)


def compute_theil_sen(xs, ys, confidence=FORECAST_CONFIDENCE):
    """(slope, low, high): the median of pairwise slopes and Sen's (1968)
    rank-based confidence interval, as scipy.stats.theilslopes computes them.
    O(n^2) pairs: call it on a few hundred points at most. None below 2 points."""
    n = len(xs)
    slopes = []
    for i in range(n):
        xi, yi = xs[i], ys[i]
        for j in range(i + 1, n):
            dx = xs[j] - xi
            if dx > 0:
                slopes.append((ys[j] - yi) / dx)
            elif dx < 0:
                slopes.append((yi - ys[j]) / -dx)
    slopes.sort()
    return _theil_sen_from_sorted(slopes, xs, ys, confidence)


_NORMAL_QUANTILES = {}


def _normal_quantile(p):
    """statistics.NormalDist().inv_cdf(p), kept per p (the fit asks the same one each second)."""
    z = _NORMAL_QUANTILES.get(p)
    if z is None:
        z = _NORMAL_QUANTILES[p] = statistics.NormalDist().inv_cdf(p)
    return z


def _theil_sen_from_sorted(slopes, xs, ys, confidence=FORECAST_CONFIDENCE):
    """compute_theil_sen's answer from the sorted pairwise slopes of xs, ys."""
    if not slopes:
        return None
    n = len(xs)
    nt = len(slopes)
    z = _normal_quantile(0.5 + confidence / 2.0)
    var = (n * (n - 1) * (2 * n + 5) - _tie_term(xs) - _tie_term(ys)) / 18.0
    sigma = math.sqrt(max(var, 0.0))
    upper = min(int(round((nt + z * sigma) / 2.0)), nt - 1)
    lower = max(int(round((nt - z * sigma) / 2.0)) - 1, 0)
    return _median_sorted(slopes), slopes[lower], slopes[upper]


class TheilSenWindow(object):
    """compute_theil_sen for a sliding window, incrementally: the sorted
    pairwise slopes are kept between calls; when the new (xs, ys) is the
    previous one with points dropped at the front and added at the end, only
    the dropped points' slopes leave and the new points' slopes join (O(n)
    per new point instead of the O(n^2) refit). The slopes are the same
    floats, so the answer is exactly compute_theil_sen's; anything else (a
    step, a reset, unsorted xs) refits from scratch."""

    def __init__(self):
        self._xs, self._ys, self._slopes = [], [], []
        self._ascending = False             # the kept xs strictly ascending

    def fit(self, xs, ys, confidence=FORECAST_CONFIDENCE):
        xs, ys = list(xs), list(ys)
        if not self._slide(xs, ys):
            self._slopes = _pair_slopes_sorted(xs, ys)
            self._ascending = not any(b <= a for a, b in zip(xs, xs[1:]))
        self._xs, self._ys = xs, ys
        return _theil_sen_from_sorted(self._slopes, xs, ys, confidence)

    def _slide(self, xs, ys):
        """Update the slopes in place if xs, ys slid from the last window."""
        old_xs, old_ys = self._xs, self._ys
        if not self._ascending or not old_xs or not xs or xs[0] < old_xs[0]:
            return False
        drop = bisect.bisect_left(old_xs, xs[0])
        keep = len(old_xs) - drop
        if keep < len(old_xs) // 2 or keep > len(xs) or (
                xs[:keep] != old_xs[drop:] or ys[:keep] != old_ys[drop:]):
            return False
        if any(b <= a for a, b in zip(xs[keep - 1:], xs[keep:])):
            return False                        # new slopes below assume ascending xs
        gone = []
        for i in range(drop):                   # ascending: every dx > 0
            xi, yi = old_xs[i], old_ys[i]
            gone.extend([(yj - yi) / (xj - xi) for xj, yj in zip(old_xs[i + 1:], old_ys[i + 1:])])
        gone.sort()
        slopes = _remove_sorted(self._slopes, gone)
        if slopes is None:
            return False
        for j in range(keep, len(xs)):
            xj, yj = xs[j], ys[j]
            slopes.extend([(yj - yi) / (xj - xi) for xi, yi in zip(xs[:j], ys[:j])])
        slopes.sort()                           # two runs: timsort merges them in O(n)
        self._slopes = slopes
        return True


def _slopes_from(xs, ys, i):
    """The slopes of pairs (i, j > i), exactly as compute_theil_sen forms them."""
    xi, yi = xs[i], ys[i]
    out = []
    for xj, yj in zip(xs[i + 1:], ys[i + 1:]):
        dx = xj - xi
        if dx > 0:
            out.append((yj - yi) / dx)
        elif dx < 0:
            out.append((yi - yj) / -dx)
    return out


def _pair_slopes_sorted(xs, ys):
    slopes = list(itertools.chain.from_iterable(_slopes_from(xs, ys, i) for i in range(len(xs))))
    slopes.sort()
    return slopes


def _remove_sorted(values, gone):
    """Sorted values less the sorted multiset gone (all present), or None if one is missing."""
    out, start = [], 0
    for value in gone:
        at = bisect.bisect_left(values, value, start)
        if at >= len(values) or values[at] != value:
            return None
        out.extend(values[start:at])
        start = at + 1
    out.extend(values[start:])
    return out


def compute_current_level(xs, ys, slope):
    """The level now: the robust line's value at the last x (intercept = median
    of y - slope*x, as scipy's theilslopes), so a noisy last sample does not
    move the time to full, but kept within the samples of the last
    FORECAST_LEVEL_S (plus one step's growth, for noise): a growth that
    stopped (a plateau) is not carried on past the data, nor a rise left behind."""
    fitted = statistics.median(y - slope * x for x, y in zip(xs, ys)) + slope * xs[-1]
    recent = ys[bisect.bisect_left(xs, xs[-1] - FORECAST_LEVEL_S):]
    return min(max(fitted, min(recent)), max(recent) + max(slope, 0.0) * FORECAST_STEP_S)


def compute_full_in(free_bytes, low, high):
    """[earliest, latest] seconds to fill free_bytes at a rate in [low, high]
    (both > 0): at least 1 s while anything is free, [0, 0] only when full."""
    if free_bytes <= 0:
        return [0, 0]
    earliest, latest = _round_range(free_bytes / high, free_bytes / low)
    return [max(1, earliest), max(1, latest)]


def new_vram_forecast(state="unknown", rate=None, full_in=None, driver_pid=None, step=None):
    """The one vram_forecast builder: always ranges, never points."""
    return {"state": state, "rate_bytes_per_s": rate, "full_in_s": full_in,
            "driver_pid": driver_pid, "step_bytes": step}


def forecast_window(ts, values, window_s=FORECAST_WINDOW_S):
    """The samples of the last window_s seconds (ts ascending) as two lists."""
    if not ts:
        return [], []
    start = bisect.bisect_left(ts, ts[-1] - window_s)
    return list(ts[start:]), list(values[start:])


def _enough_points(ts):
    return len(ts) >= FORECAST_MIN_POINTS and ts[-1] - ts[0] >= FORECAST_MIN_SPAN_S


def _round_range(low, high):
    """Whole numbers, rounded outwards (a range never shrinks by rounding)."""
    return [int(math.floor(low)), int(math.ceil(high))]


def find_vram_step(ts, used, since_s, seen=None):
    """The last big change of the level at or after since_s -> (index of the
    first sample after it, signed bytes), or None.

    A change (a jump over at most FORECAST_JUMP_S) is big when it is at least
    FORECAST_STEP_MIN_BYTES, carries more than FORECAST_STEP_SHARE of the way
    from the far end of the range of the FORECAST_WINDOW_S before it, and
    lands outside that range by more than FORECAST_STEP_MIN_BYTES: new
    ground. So the frees and allocations of a periodic allocate-then-free,
    whose levels were all seen before, are never big; a leak's final free is.
    A change with fewer than FORECAST_MIN_POINTS samples before it is not judged.
    seen: a dict kept between calls on the same growing series, {(ts of the
    window's start, of the jump's start, of its end): big?}: a sliding window
    judges each change once (the samples at those times do not change).
    """
    bisect_left, jump_s, step_min = bisect.bisect_left, FORECAST_JUMP_S, FORECAST_STEP_MIN_BYTES
    for i in range(len(ts) - 1, 0, -1):         # the hot loop: most changes are small
        ts_i = ts[i]
        if ts_i < since_s:
            break
        j = bisect_left(ts, ts_i - jump_s, 0, i)
        if j == i:
            j -= 1
        delta = used[i] - used[j]
        if -step_min < delta < step_min:
            continue
        start = bisect.bisect_left(ts, ts[j] - FORECAST_WINDOW_S)
        if j + 1 - start < FORECAST_MIN_POINTS:
            continue
        key = (ts[start], ts[j], ts[i])
        big = None if seen is None else seen.get(key)
        if big is None:
            big = _is_big_step(used, start, j, i)
            if seen is not None:
                seen[key] = big
        if big:
            return j + 1, int(delta)
    return None


def _is_big_step(used, start, j, i):
    """find_vram_step's test of the change j -> i against used[start..j]."""
    delta = used[i] - used[j]
    low, high = min(used[start:j + 1]), max(used[start:j + 1])
    if delta > 0:
        return used[i] > high + FORECAST_STEP_MIN_BYTES and delta > FORECAST_STEP_SHARE * (
            used[i] - low)
    return used[i] < low - FORECAST_STEP_MIN_BYTES and -delta > FORECAST_STEP_SHARE * (
        high - used[i])


def compute_vram_forecast(ts, used, total, proc_series=None, theil_sen=compute_theil_sen,
                          steps_seen=None):
    """Device VRAM samples (ts seconds ascending, used bytes; up to
    FORECAST_HISTORY_S of them) -> vram_forecast.

    Gates (history-insight §6): >= FORECAST_MIN_POINTS over >= FORECAST_MIN_SPAN_S
    of the last FORECAST_WINDOW_S, else "unknown"; below FORECAST_MIN_USED of
    total nothing is claimed ("stable"). A big change (find_vram_step: a big
    free or allocation) starts a new window: the verdict is that "step" until
    the samples after it show a trend of their own (or it leaves the window).
    A "trend" needs the interval's low end past the noise floor; a growing
    one gets full_in_s = free/high .. free/low, free from the current level.
    proc_series {pid: (ts, vram)} names the process that grew most (driver_pid);
    theil_sen is compute_theil_sen or a TheilSenWindow's fit (the same answer, incremental);
    steps_seen find_vram_step's memo (its seen) for a forecaster's growing series.
    """
    history_ts, history_used = ts, used
    ts, used = forecast_window(ts, used)
    if not total or not _enough_points(ts):
        return new_vram_forecast()
    if used[-1] < FORECAST_MIN_USED * total:       # no claim, and no O(n^2) fit either
        return new_vram_forecast("stable")
    step = find_vram_step(history_ts, history_used, ts[0], steps_seen)
    if step is not None:
        ts, used = list(history_ts[step[0]:]), list(history_used[step[0]:])
    fit = theil_sen(ts, used) if _enough_points(ts) else None
    if fit is not None and fit[1] > FORECAST_NOISE_FLOOR_BPS:
        free = total - compute_current_level(ts, used, fit[0])
        return new_vram_forecast("trend", _round_range(fit[1], fit[2]),
                                 compute_full_in(free, fit[1], fit[2]),
                                 compute_driver_pid(proc_series, ts[0]))
    if fit is not None and fit[2] < -FORECAST_NOISE_FLOOR_BPS:
        return new_vram_forecast("trend", _round_range(fit[1], fit[2]))
    if step is not None:
        driver = compute_driver_pid(proc_series, history_ts[step[0] - 1]) if step[1] > 0 else None
        return new_vram_forecast("step", None, None, driver, step[1])
    if fit is None:
        return new_vram_forecast()
    return new_vram_forecast("stable", _round_range(fit[1], fit[2]))


def compute_driver_pid(proc_series, since_s):
    """The pid whose VRAM grew most since since_s (> the noise floor over the
    window), or None. proc_series: {pid: (ts list, vram list)}."""
    best, best_growth = None, 0.0
    for pid, (ts, vram) in (proc_series or {}).items():
        start = bisect.bisect_left(ts, since_s)
        if len(ts) - start < 2:
            continue
        growth = vram[-1] - min(vram[start:])
        span = ts[-1] - ts[start]
        if growth > best_growth and growth > FORECAST_NOISE_FLOOR_BPS * span:
            best, best_growth = pid, growth
    return best


def compute_proc_vram_forecast(ts, vram, free_bytes):
    """One process's own VRAM trend -> {"state", "rate_bytes_per_s",
    "full_in_s"} while it grows past the noise floor, else None. The cheap
    pre-check (net growth) keeps the O(n^2) fit off idle processes."""
    ts, vram = forecast_window(ts, vram)
    if not _enough_points(ts) or vram[-1] - vram[0] < FORECAST_NOISE_FLOOR_BPS * (ts[-1] - ts[0]):
        return None
    fit = compute_theil_sen(ts, vram)
    if fit is None or fit[1] <= FORECAST_NOISE_FLOOR_BPS:
        return None
    slope, low, high = fit
    if free_bytes is not None:      # the device's free VRAM, from this process's current level on
        free_bytes = free_bytes - (compute_current_level(ts, vram, slope) - vram[-1])
    full = None if free_bytes is None else compute_full_in(free_bytes, low, high)
    return {"state": "trend", "rate_bytes_per_s": _round_range(low, high), "full_in_s": full}


# -- alerts: rules with hysteresis and holds (history-insight §7) -----------

def _severity_rank(severity):
    return ALERT_SEVERITIES.index(severity) if severity in ALERT_SEVERITIES else -1


class AlertState(object):
    """One rule on one subject (a GPU or the host): values and timestamps in,
    one event dict per state change out (pure: no clock, no I/O).

    Raise and clear levels differ (hysteresis); a higher severity must hold
    for_s before it fires, a lower one clear_for_s before the alert steps down
    or resolves. A value of None counts as "not raising" (no data).
    """

    def __init__(self, rule, levels):
        self.rule = rule
        self.below = levels.get("direction") == "below"
        self.levels = levels
        self.severity = None            # the severity now firing, or None
        self.started = None
        self.value = None
        self._pending = None            # (since_s, direction) of a change waiting on its hold
        self._bands_of, self._bands_list = None, []

    def _past(self, value, level):
        return value <= level if self.below else value >= level

    def _beyond(self, value, level):
        return value < level if self.below else value > level

    def _bands(self):
        """[(severity, its rank, raise at, clear at)] of the current levels,
        worked out again only when the engine hands over another levels dict."""
        levels = self.levels
        if self._bands_of is not levels:
            self._bands_of = levels
            self._bands_list = [(severity, _severity_rank(severity), levels.get(severity[:4]),
                                 levels.get(severity[:4] + "_clear"))
                                for severity in ("critical", "warning")
                                if levels.get(severity[:4]) is not None]
        return self._bands_list

    def target(self, value):
        """The severity this value asks for, given the one now firing."""
        return self._target(value)[0]

    def _target(self, value):
        """(target(value), its rank)."""
        if value is None:
            return None, -1
        rank = _severity_rank(self.severity)
        for severity, severity_rank, raise_at, clear_at in self._bands():
            if self._past(value, raise_at) or (
                    rank >= severity_rank and self._beyond(value, clear_at)):
                return severity, severity_rank
        return None, -1

    def clearing(self):
        """Firing, but the latest value no longer asks for any severity."""
        return self.severity is not None and self.target(self.value) is None

    def update(self, now_s, value):
        """Feed one observation; returns an event (see build_alert_event's
        arguments as a dict) or None."""
        self.value = value
        if value is None and self.severity is None:     # the common case: no data, none firing
            self._pending = None
            return None
        want, want_rank = self._target(value)
        direction = want_rank - _severity_rank(self.severity)
        if direction == 0:
            self._pending = None
            return None
        step = "up" if direction > 0 else "down"
        if self._pending is None or self._pending[1] != step:
            self._pending = (now_s, step)
        hold = self.levels["for_s"] if step == "up" else self.levels["clear_for_s"]
        if now_s - self._pending[0] < hold:
            return None
        self._pending = None
        return self._change(now_s, want, value)

    def _change(self, now_s, severity, value):
        previous = self.severity
        self.severity = severity
        if severity is None:
            started, self.started = self.started, None
            return {"state": "resolved", "severity": previous, "started": started,
                    "ended": now_s, "value": value, "previous_severity": None}
        if previous is None:
            self.started = now_s
        return {"state": "firing", "severity": severity, "started": self.started,
                "ended": None, "value": value, "previous_severity": previous}

    def end(self, now_s):
        """Its subject is gone (a process exited): resolved at once, no
        clear_for; the resolved event, or None when it was not firing."""
        self._pending = None
        return None if self.severity is None else self._change(now_s, None, None)


def _alert_number(rule, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("%s.%s: expected a number" % (rule, key))
    return float(value)


def _alert_duration(rule, key, value):
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise ValueError("%s.%s: expected seconds or a duration like 30s" % (rule, key))
    seconds = _alert_number(rule, key, value)
    if not 0 <= seconds <= 86400:
        raise ValueError("%s.%s: must be between 0 and 86400 seconds" % (rule, key))
    return seconds


def _alert_bytes(rule, key, value):
    """gpu_held_idle.min_vram: bytes, or a size such as "512MiB" or "1GiB"."""
    if isinstance(value, str):
        try:
            return float(parse_byte_size(value))
        except ValueError:
            raise ValueError("%s.%s: expected bytes or a size like 1GiB" % (rule, key))
    size = _alert_number(rule, key, value)
    if size < 0:
        raise ValueError("%s.%s: must not be negative" % (rule, key))
    return size


def _check_alert_levels(rule, levels):
    below = levels.get("direction") == "below"
    for severity in ("warn", "crit"):
        raise_at, clear_at = levels.get(severity), levels.get(severity + "_clear")
        if raise_at is None:
            continue
        if clear_at is None:
            raise ValueError("%s.%s_clear: needed beside %s" % (rule, severity, severity))
        if (clear_at < raise_at) if below else (clear_at > raise_at):
            raise ValueError("%s.%s_clear: must be %s %s (hysteresis)"
                             % (rule, severity, "at or above" if below else "at or below", severity))


def _merge_alert_rule(rule, base, override):
    if not isinstance(override, dict):
        raise ValueError("%s: expected an object" % rule)
    levels = dict(base)
    for key, value in override.items():
        if key not in ALERT_RULE_KEYS and key not in base:
            raise ValueError("%s.%s: unknown key" % (rule, key))
        if key in ("enabled", "card_limits"):
            if not isinstance(value, bool):
                raise ValueError("%s.%s: expected true or false" % (rule, key))
            levels[key] = value
        elif key in ("for", "clear_for"):
            levels[key + "_s"] = _alert_duration(rule, key, value)
        elif key == "direction":
            raise ValueError("%s.direction: cannot be changed" % rule)
        elif key == "min_vram":
            levels[key] = _alert_bytes(rule, key, value)
        elif key == "max_busy":
            levels[key] = _alert_number(rule, key, value)
            if not 0 < levels[key] <= 100:
                raise ValueError("%s.max_busy: must be above 0 and at most 100 (%%)" % rule)
        else:
            levels[key] = None if value is None and key in ("warn", "crit") else (
                _alert_number(rule, key, value))
    _check_alert_levels(rule, levels)
    return levels


def parse_alert_rules(text=None):
    """The override file's JSON text (or None) -> {rule: levels}, the defaults
    (ALERT_RULE_DEFAULTS) with the file's values on top. ValueError naming the
    key: unknown rules or keys, wrong types, clear levels on the wrong side."""
    rules = dict((name, dict(levels)) for name, levels in ALERT_RULE_DEFAULTS)
    if text is None:
        return rules
    try:
        overrides = json.loads(text)
    except ValueError as exc:
        raise ValueError("not valid JSON: %s" % exc)
    if not isinstance(overrides, dict):
        raise ValueError("expected a JSON object of rule names")
    for rule, override in overrides.items():
        if rule not in rules:
            raise ValueError("%s: unknown rule (known: %s)" % (rule, ", ".join(ALERT_RULES)))
        rules[rule] = _merge_alert_rule(rule, rules[rule], override)
    return rules


def temperature_levels(levels, metrics):
    """gpu_temperature against the card's own limit when it reports one
    (hwmon temp*_crit; history-insight §7: warn at crit-10, clear -15;
    critical at crit, clear -5), else the configured levels.
    -> (levels, temperature, limit or None)."""
    for temp_key, crit_key in (("temp_junction_c", "temp_junction_crit_c"), ("temp_c", "temp_crit_c")):
        crit = metrics.get(crit_key)
        if levels.get("card_limits") and crit and metrics.get(temp_key) is not None:
            return (dict(levels, warn=crit - 10, warn_clear=crit - 15, crit=crit,
                         crit_clear=crit - 5), metrics[temp_key], crit)
    temps = [metrics.get(k) for k in ("temp_c", "temp_junction_c") if metrics.get(k) is not None]
    return levels, (temps[0] if temps else None), None


def compute_throttled(metrics):
    """1 while a power or thermal limit holds clocks down, 0 if not, None unknown."""
    reasons = metrics.get("throttle_reasons")
    if reasons is None:
        return None
    return int(any(r not in THROTTLE_BENIGN_REASONS for r in reasons))


def compute_fan_stopped(metrics, hot_c):
    """1 when the fan reads 0 (rpm, else duty) while the GPU is at least hot_c."""
    fan = metrics.get("fan_rpm")
    if fan is None:
        fan = metrics.get("fan_pct")
    temp = metrics.get("temp_c")
    if fan is None or temp is None:
        return None
    return int(fan == 0 and temp >= hot_c)


def compute_vram_pct(metrics):
    used, total = metrics.get("vram_used_bytes"), metrics.get("vram_total_bytes")
    if used is None or not total:
        return None
    return round(100.0 * used / total, 2)


def compute_full_in_s(forecast):
    """The earliest time to full of a growing trend, else None."""
    if not forecast or forecast.get("state") != "trend" or not forecast.get("full_in_s"):
        return None
    return forecast["full_in_s"][0]


def proc_attributed(message):
    """Whether a procs frame shows a visible process that could explain the
    load: with engine data, one using an engine (or a ROCm/KFD one, whose
    queues never show in DRM counters); without, any visible process."""
    rows = [r for r in message.get("processes") or () if r.get("visible", True)]
    if not (message.get("capabilities") or {}).get("process_engines"):
        return bool(rows)
    for row in rows:
        busy = sum(v for v in (row.get("engines_pct") or {}).values() if v)
        if busy >= 1.0 or (row.get("gpu_time_ms_per_s") or 0) >= 10 or row.get("kfd"):
            return True
    return False


def unattributed_hint(visibility):
    """Where to look for the hidden user of a busy GPU."""
    visibility = visibility or {}
    places = []
    if not visibility.get("root"):
        places.append("another user's processes (run as root to see them)")
    if visibility.get("pid_namespace_separate") or visibility.get("self_container"):
        places.append("processes outside this container (run it with --pid=host)")
    places.append("other containers or VMs, or a kernel/firmware job")
    return "look for " + ", ".join(places)


def compute_proc_busy_pct(row, engines_known):
    """A process row's engine busy % (gpu_held_idle): its busiest engine (NVML's
    "mem", the memory controller, aside), else its GPU time (ms/s / 10). None
    when not known: the source has no per-process engine use (capabilities'
    process_engines not true), a ROCm (kfd) process, whose compute queues
    never show in the DRM counters, or no value yet."""
    if not engines_known or row.get("kfd"):
        return None
    values = [v for k, v in (row.get("engines_pct") or {}).items()
              if k != "mem" and isinstance(v, (int, float))]
    if values:
        return max(values)
    ms = row.get("gpu_time_ms_per_s")
    return ms / 10.0 if isinstance(ms, (int, float)) else None


def compute_held_idle(message, gpu_busy_pct, levels):
    """One procs frame -> [(row, value, busy %)] for gpu_held_idle: value 1 when
    the process holds >= min_vram bytes of VRAM while busy < max_busy, 0 when it
    holds less or works, None when its busy is unknown. Unknown busy is never
    guessed: the GPU's own busy stands in only when the process is the only one
    on the GPU (then all of the GPU's use is its own), else None (no alert)."""
    rows = message.get("processes") or ()
    known = (message.get("capabilities") or {}).get("process_engines") is True
    out = []
    for row in rows:
        vram = row.get("vram_bytes")
        busy = compute_proc_busy_pct(row, known)
        if busy is None and len(rows) == 1 and isinstance(gpu_busy_pct, (int, float)):
            busy = gpu_busy_pct
        if not isinstance(vram, (int, float)) or vram < levels["min_vram"]:
            value = 0
        else:
            value = None if busy is None else (1 if busy < levels["max_busy"] else 0)
        out.append((row, value, busy))
    return out


def alert_row_subject(event):
    """The history alerts table's gpu_id column: the GPU id ("" for the host);
    a process's alert adds "/pid/start_time", so two runs' alerts started in
    the same second are two rows (the file's schema and old rows unchanged)."""
    process = event.get("process")
    subject = event.get("gpu_id") or ""
    if process:
        subject += "/%s/%s" % (process.get("pid"), process.get("start_time"))
    return subject


def build_alert_process(row):
    """The process an alert names (gpu_held_idle): its run key (pid, start_time),
    name, user and who it belongs to (null where unknown)."""
    return dict((key, row.get(key)) for key in ALERT_PROCESS_KEYS)


def alert_subject(rule, gpu_id, process=None):
    """An alert's identity: (rule, GPU id) for a GPU's or the host's rule, with
    the process run's (pid, start_time) for a process's."""
    if process is None:
        return (rule, gpu_id)
    return (rule, gpu_id, process.get("pid"), process.get("start_time"))


# -- fleet: peer lists (inline, one per line, file_sd JSON) and tokens -----

def parse_fleet_peer(text, scheme_default=None):
    """'[NAME=]http(s)://HOST:PORT[/prefix]' -> FleetPeer; with scheme_default
    (file_sd's bare 'HOST:PORT' targets) the scheme may be left out. ValueError
    naming what is wrong otherwise. No user:password@ (tokens go in
    APP_FLEET_TOKEN_FILE), no query or fragment."""
    text = text.strip()
    name, sep, rest = text.partition("=")
    if not sep or "://" in name:
        name, rest = None, text
    if scheme_default and "://" not in rest:
        rest = "%s://%s" % (scheme_default, rest)
    try:
        parts = urlsplit(rest)
        port = parts.port
    except ValueError:
        raise ValueError("%.80r is not a valid URL" % (rest,))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("%.80r: expected http(s)://HOST:PORT" % (rest,))
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError("%.80r: no user, query or fragment (tokens go in "
                         "APP_FLEET_TOKEN_FILE)" % (rest,))
    host = parts.hostname.lower()
    port = port or (443 if parts.scheme == "https" else 80)
    netloc = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    name = (name or netloc).strip()
    if name.startswith("["):
        raise ValueError("%.80r: an IPv6 peer needs a name: NAME=%s" % (rest, rest))
    if not FLEET_NAME_RE.match(name):
        raise ValueError("%.80r: a peer's name is letters, digits and . _ : - "
                         "(at most 63)" % (name,))
    url = "%s://%s%s" % (parts.scheme, netloc, parts.path.rstrip("/"))
    return FleetPeer(name, url, parts.scheme, host, port)


def parse_fleet_peer_list(text):
    """An @FILE's text -> a tuple of FleetPeer: Prometheus file_sd JSON (a
    list of {"targets": ["HOST:PORT", ...], "labels": {...}}; the label
    __scheme__ picks https) or one peer per line ('#' starts a comment).
    ValueError naming the first bad entry; a name used twice is one."""
    if text.lstrip().startswith("["):
        peers = _parse_file_sd(text)
    else:
        peers = [parse_fleet_peer(line.split("#", 1)[0])
                 for line in text.splitlines() if line.split("#", 1)[0].strip()]
    return check_fleet_peers(peers)


def _parse_file_sd(text):
    try:
        groups = json.loads(text)
    except ValueError as exc:
        raise ValueError("not valid file_sd JSON: %s" % exc)
    if not isinstance(groups, list):
        raise ValueError("file_sd JSON must be a list of target groups")
    peers = []
    for group in groups:
        targets = group.get("targets") if isinstance(group, dict) else None
        labels = group.get("labels") or {} if isinstance(group, dict) else {}
        if not isinstance(targets, list) or not isinstance(labels, dict):
            raise ValueError("a file_sd group needs \"targets\": [...] and optional \"labels\": {...}")
        scheme = labels.get("__scheme__", "http")
        peers += [parse_fleet_peer(str(target), scheme) for target in targets]
    return peers


def check_fleet_peers(peers):
    """A list of FleetPeer -> a tuple; ValueError for a name used twice or too many."""
    if len(peers) > FLEET_MAX_PEERS:
        raise ValueError("%d peers: at most %d" % (len(peers), FLEET_MAX_PEERS))
    seen = set()
    for peer in peers:
        if peer.name in seen:
            raise ValueError("the peer name %r is used twice" % peer.name)
        seen.add(peer.name)
    return tuple(peers)


def parse_fleet_peers_setting(text):
    """APP_FLEET_PEERS -> None (no peers), FleetPeersSpec(peers, None) for a
    comma list, or FleetPeersSpec((), path) for '@FILE'."""
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith("@"):
        if not text[1:].strip():
            raise ValueError("@FILE needs a file name")
        return FleetPeersSpec((), text[1:].strip())
    return FleetPeersSpec(check_fleet_peers(
        [parse_fleet_peer(item) for item in text.split(",") if item.strip()]), None)


def parse_fleet_tokens(text):
    """APP_FLEET_TOKEN_FILE's text -> {peer name or "*": token}: one 'NAME TOKEN'
    per line, '* TOKEN' for every peer without its own, '#' comments. ValueError
    naming the line (never the token) otherwise."""
    tokens = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or not (fields[0] == "*" or FLEET_NAME_RE.match(fields[0])):
            raise ValueError("line %d: expected 'NAME TOKEN' or '* TOKEN'" % number)
        try:
            tokens[fields[0]] = parse_auth_token(fields[1])
        except ValueError as exc:
            raise ValueError("line %d: the token %s" % (number, exc))
    return tokens


def fleet_peer_token(tokens, name):
    """The token to send to one peer (its own, else '*'), or None."""
    return tokens.get(name, tokens.get("*"))


# -- fleet: a peer's answer, checked (a hostile peer gets nothing else through) --

def _fleet_value(key, value):
    """A peer's value kept only when it is of its key's kind: a finite number
    within +-FLEET_NUMBER_MAX (FLEET_NUMERIC_KEYS), a string (cut), a list of
    strings (throttle_reasons); anything else (a bool, an object, a number
    where a name goes, a huge integer that no float holds) is null."""
    kind = type(value)
    if kind is int or kind is float:
        return value if key in FLEET_NUMERIC_KEYS and -FLEET_NUMBER_MAX <= value <= FLEET_NUMBER_MAX \
            else None       # NaN fails both comparisons; the bound also rules out the infinities
    if kind is str:
        return None if key in FLEET_NUMERIC_KEYS or key == "throttle_reasons" else value[:FLEET_TEXT_MAX]
    if kind is list and key == "throttle_reasons" and all(type(v) is str for v in value):
        return [v[:FLEET_TEXT_MAX] for v in value[:32]]
    return None


def _fleet_pick(obj, keys):
    """obj cut to keys, each value checked (_fleet_value)."""
    return dict((key, _fleet_value(key, obj.get(key))) for key in keys)


def parse_fleet_gpu(obj):
    """One GPU of a peer's answer -> a fleet GPU with exactly its keys."""
    if not isinstance(obj, dict):
        raise ValueError("a GPU is not an object")
    gpu = _fleet_pick(obj, FLEET_GPU_KEYS)
    top = obj.get("top_process")
    gpu["top_process"] = _fleet_pick(top, FLEET_TOP_PROCESS_KEYS) if isinstance(top, dict) else None
    gpu["alert"] = gpu["alert"] if gpu["alert"] in ALERT_SEVERITIES else None
    return gpu


def parse_fleet_json(status, content_type, body, token_sent):
    """A peer's HTTP answer -> its JSON; ValueError saying in a few words why
    it is refused (401/403, a redirect, another status, body None: over
    FLEET_MAX_ANSWER_BYTES, a wrong content type, bad JSON). Never a token."""
    if status == 401:
        raise ValueError("token refused (401)" if token_sent else "token needed (401)")
    if status == 403:
        raise ValueError("token refused (403)" if token_sent else "forbidden (403)")
    if 300 <= status < 400:
        raise ValueError("redirect (%d): not followed" % status)
    if status != 200:
        raise ValueError("HTTP %d" % status)
    if body is None:
        raise ValueError("answer over %d MiB" % (FLEET_MAX_ANSWER_BYTES >> 20))
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ValueError("wrong content type %.40r" % (media or "none",))
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ValueError("bad JSON")


def parse_http_head(head):
    """A peer's answer head (bytes up to the blank line) -> (status, {lower
    name: value}, keep_alive); ValueError("not an HTTP answer") otherwise."""
    lines = head.split(b"\r\n")
    match = FLEET_STATUS_RE.match(lines[0])
    if not match:
        raise ValueError("not an HTTP answer")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise ValueError("not an HTTP answer")
        fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    connection = fields.get("connection", "").lower()
    keep = "close" not in connection if match.group(1) == b"1" else "keep-alive" in connection
    return int(match.group(2)), fields, keep


def compute_fleet_peer_state(outcome, age_s, interval_s):
    """A peer's state from its last poll's outcome ("ok", "refused" or
    "failed") and the age of its last good data (None: never): up, refused,
    stale (data younger than FLEET_STALE_INTERVALS rounds) or down. A peer
    not asked for that long (every worker held up) is stale, even if its
    last answer was good."""
    fresh = age_s is not None and age_s < FLEET_STALE_INTERVALS * interval_s
    if outcome == "ok":
        return "up" if fresh else "stale"
    if outcome == "refused":
        return "refused"
    return "stale" if fresh else "down"


def compute_fleet_backoff_s(failures, interval_s):
    """How long after a failed poll a peer is asked again: one round, then
    doubling up to FLEET_BACKOFF_MAX_INTERVALS rounds or FLEET_BACKOFF_MAX_S."""
    rounds = min(2 ** min(max(failures - 1, 0), 16), FLEET_BACKOFF_MAX_INTERVALS)
    return min(rounds * interval_s, max(interval_s, FLEET_BACKOFF_MAX_S))


def parse_fleet_host_answer(obj):
    """A peer's GET /api/fleet/host (parsed JSON) -> {"version", "host",
    "gpus", "alerts"}, every value checked and cut to its keys; ValueError
    ("not a fleet answer") for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("gpus"), list) or \
            not isinstance(obj.get("alerts", []), list):
        raise ValueError("not a fleet answer")
    host = obj.get("host")
    return {"version": _fleet_value("version", obj.get("version")),
            "host": _fleet_pick(host, FLEET_HOST_KEYS) if isinstance(host, dict) else None,
            "gpus": [parse_fleet_gpu(gpu) for gpu in obj["gpus"][:FLEET_MAX_GPUS]],
            "alerts": [_fleet_pick(a, FLEET_ALERT_KEYS) for a in obj.get("alerts", [])[:FLEET_MAX_ALERTS]
                       if isinstance(a, dict)]}
# -- fleet: Prometheus answers (the query API's envelope, §5.2 of the facts) --

class PromAnswerError(ValueError):
    """A query answer that is no usable result: the message says why in a few words."""


def parse_prom_headers(text):
    """APP_FLEET_PROMETHEUS_HEADERS ('Name: value; Name2: value2') -> a tuple of
    (name, value). ValueError naming the entry (never its value) otherwise."""
    headers = []
    for number, item in enumerate((text or "").split(";"), 1):
        if not item.strip():
            continue
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not re.match(r"^[A-Za-z0-9-]{1,64}$", name) or not value \
                or any(c in value for c in "\r\n"):
            raise ValueError("entry %d: expected 'Name: value'" % number)
        headers.append((name, value))
    if len(headers) > FLEET_PROM_HEADERS_MAX:
        raise ValueError("at most %d headers" % FLEET_PROM_HEADERS_MAX)
    return tuple(headers)


def parse_prom_value(text):
    """A sample value (a string: "1", "0.25", "NaN", "+Inf") -> a finite float or None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_prom_answer(status, body, result_type):
    """(HTTP status, body bytes, "vector" or "matrix") -> (result list, warnings).
    PromAnswerError for an error envelope (4xx/5xx with errorType/error, or
    status "error" on a 200), a body that is no JSON, or another resultType."""
    try:
        answer = json.loads(body)         # bytes: UTF-8 (or -16/-32) detected, one copy less
    except (UnicodeDecodeError, ValueError):
        answer = None
    if not isinstance(answer, dict) or answer.get("status") not in ("success", "error"):
        raise PromAnswerError("HTTP %d, not a query API answer" % status
                              if status != 200 else "not a query API answer")
    if answer["status"] == "error" or status != 200:
        raise PromAnswerError("HTTP %d %s: %s" % (status, str(answer.get("errorType") or "error")[:40],
                                                  str(answer.get("error") or "")[:200]))
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") != result_type \
            or not isinstance(data.get("result"), list):
        raise PromAnswerError("expected a %s result" % result_type)
    warnings = answer.get("warnings")
    warnings = [str(w)[:200] for w in warnings[:5]] if isinstance(warnings, list) else []
    return data["result"], warnings


def parse_prom_vector(result):
    """An instant vector -> [(labels dict, value or None, sample time s)]; a
    series with a histogram or a malformed value is skipped."""
    out = []
    append = out.append
    for series in result:
        try:
            labels, (at_s, text) = series["metric"], series["value"]
            at_s, value = float(at_s), float(text)
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(labels, dict):
            append((labels, value if value - value == 0 else None, at_s))   # NaN, +-Inf: None
    return out


def parse_prom_gpu_values(result):
    """An instant vector of one value per GPU -> {(job, instance, gpu): value
    or None}, straight from the decoded JSON (no tuple per sample: the fleet
    reads 8,000-series answers); a malformed series is skipped, and of two
    series of one GPU the last wins."""
    out = {}
    for series in result:
        try:
            labels, (at_s, text) = series["metric"], series["value"]
            float(at_s)
            value = float(text)
            get = labels.get
            key = (get("job", ""), get("instance", ""), get("gpu", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if type(key[0]) is str and type(key[1]) is str and type(key[2]) is str:
            out[key] = value if value - value == 0 else None
    return out


def parse_prom_matrix(result, start_s, step_s, points):
    """A range matrix -> [(labels, [value or None] * points)] on the grid
    start_s + i * step_s (a sample off the grid goes to its nearest step)."""
    out = []
    for series in result:
        if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
            continue
        values = [None] * points
        for pair in series.get("values") or ():
            try:
                index = int(round((float(pair[0]) - start_s) / step_s))
            except (TypeError, ValueError, IndexError):
                continue
            if 0 <= index < points:
                values[index] = parse_prom_value(pair[1])
        out.append((series["metric"], values))
    return out


# ---------------------------------------------------------------------------
# 5. WebSocket codec (sans-IO, RFC 6455)
# ---------------------------------------------------------------------------

# -- frames: opcodes, close codes, encoding ---------------------------------

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


# -- decoding: FrameDecoder and MessageAssembler ----------------------------

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
# 6. Pure HTTP helpers
# ---------------------------------------------------------------------------

# -- the WebSocket handshake (RFC 6455 §4) ----------------------------------

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


# -- routes and query parameters (400 naming the parameter) -----------------

SIMPLE_ROUTES = {"/api/gpus": "gpus", "/api/host": "host", "/api/healthz": "healthz",
                 "/api/readyz": "readyz", "/api/alerts": "alerts",
                 "/api/version": "version", "/ws": "ws", "/favicon.ico": "favicon",
                 "/plain": "plain", "/metrics": "metrics", "/debug/threads": "debug_threads",
                 "/debug/memory": "debug_memory", "/api/host/history": "host_history",
                 "/api/processes": "processes", "/api/usage": "usage",
                 "/api/fleet": "fleet", "/api/fleet/host": "fleet_host",
                 "/api/fleet/targets": "fleet_targets", "/api/fleet/history": "fleet_history"}


def route(path):
    """Request path (no query) -> (route name, gpu id or None)."""
    if path in ("/", "/index.html"):
        return "page", None
    if path.startswith("/vendor/"):
        return "vendor", None
    if path.startswith("/api/gpus/"):
        match = GPU_PATH_RE.match(path)
        return ("gpu_" + match.group(2), match.group(1)) if match else ("not_found", None)
    if path.startswith("/api/processes/"):
        match = RUN_PATH_RE.match(path)
        return ("run_history", int(match.group(1))) if match else ("not_found", None)
    if path.startswith(FLEET_PROXY_PREFIX):
        return "proxy", None
    return SIMPLE_ROUTES.get(path, "not_found"), None


HISTORY_RANGES_S = {"30m": 1800, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400,
                    "30d": 30 * 86400, "1y": 365 * 86400}
HISTORY_MAX_SPAN_S = 3 * 366 * 86400     # beyond the longest tier: refused, never scanned
QUERY_MAX_VALUE = 64                     # characters of one query value
QUERY_MAX_PARAMS = 16
ISO_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE | re.ASCII)
# Unix seconds as digits only: float() would also take '1_000', '１２３', '1e9', 'nan'.
UNIX_TIME_RE = re.compile(r"^[0-9]{1,11}(?:\.[0-9]{1,9})?$", re.ASCII)
UNIX_TIME_MAX_S = 1e11                   # the year 5138: a typo, never a time with history

HISTORY_PARAMS = ("from", "to", "range", "step", "format")
RUNS_PARAMS = ("from", "to", "range", "gpu", "active", "by", "key", "format")
# /api/usage (#18): one row per `by` key (USAGE_BY: the run fields each groups by)
USAGE_PARAMS = ("from", "to", "range", "by", "gpu", "format")
USAGE_BY = ("user", "unit", "container", "pod", "namespace", "job", "name")
ALERTS_PARAMS = ("from", "to", "range", "format")
AT_PARAMS = ("at", "format")
RUN_PARAMS = ("format",)
# The query parameters of each route (the handler refuses any other with a 400);
# None: the route takes whatever comes (the page's ?token=, Prometheus' params).
ROUTE_PARAMS = {
    "page": None, "vendor": None, "plain": None, "metrics": None, "ws": None, "favicon": None,
    "debug_threads": None, "debug_memory": None, "not_found": None, "proxy": None,
    "gpus": (), "host": (), "healthz": (), "readyz": (), "version": (),
    "gpu_metrics": (), "gpu_procs": (), "gpu_history": HISTORY_PARAMS,
    "gpu_processes": AT_PARAMS, "host_history": HISTORY_PARAMS, "processes": RUNS_PARAMS,
    "run_history": RUN_PARAMS, "alerts": ALERTS_PARAMS, "usage": USAGE_PARAMS,
    "fleet": (), "fleet_host": (),
    "fleet_targets": (), "fleet_history": ("from", "to", "range", "step", "metric"),
}

HistoryQuery = collections.namedtuple("HistoryQuery", "from_s to_s step_s format")
RunsQuery = collections.namedtuple("RunsQuery", "from_s to_s gpu_id active format by key",
                                   defaults=(None, None))
UsageQuery = collections.namedtuple("UsageQuery", "from_s to_s by gpu_id format")
AtQuery = collections.namedtuple("AtQuery", "at_s format")


class QueryError(ValueError):
    """A bad query parameter: the message names it (the body of a 400)."""


def parse_query_string(query, allowed):
    """'a=1&b=2' -> {name: value}. Unknown or repeated names, too many or
    too long values are QueryErrors (a typo must not silently mean "default")."""
    pairs = parse_qsl(query or "", keep_blank_values=True)
    if len(pairs) > QUERY_MAX_PARAMS:
        raise QueryError("too many query parameters")
    params = {}
    for name, value in pairs:
        if name not in allowed:
            raise QueryError("unknown parameter %r (allowed: %s)" % (name[:32], ", ".join(allowed)))
        if name in params:
            raise QueryError("parameter %r given twice" % name)
        if len(value) > QUERY_MAX_VALUE:
            raise QueryError("parameter %r is too long" % name)
        params[name] = value
    return params


def _iso_to_epoch(match):
    year, month, day, hour, minute, second, frac, zone = match.groups()
    fields = [int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)]
    if not (1 <= fields[1] <= 12 and 1 <= fields[2] <= 31 and fields[3] <= 23
            and fields[4] <= 59 and fields[5] <= 60):
        raise ValueError("out of range")
    epoch = float(calendar.timegm(fields)) + (float(frac) if frac else 0.0)
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "+" else 1          # 10:00+02:00 is 08:00Z
        digits = zone[1:].replace(":", "")
        epoch += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return epoch


def parse_time_param(name, text):
    """Unix seconds ('1764669600', '1764669600.5') or ISO 8601 ('2026-12-02',
    '2026-12-02T10:00Z', '...T10:00:00.250+01:00'; no zone = UTC) -> seconds."""
    text = text or ""
    value = None
    if UNIX_TIME_RE.match(text):
        value = float(text)
    elif ISO_TIME_RE.match(text):
        try:
            value = _iso_to_epoch(ISO_TIME_RE.match(text))
        except ValueError:
            value = None
    if value is None:
        raise QueryError("parameter %r: expected unix seconds or an ISO 8601 time, got %r"
                         % (name, text[:32]))
    if value <= 0:
        raise QueryError("parameter %r: %r is before 1970 (or at its first second): no "
                         "history is that old" % (name, text[:32]))
    if value >= UNIX_TIME_MAX_S:
        raise QueryError("parameter %r: %r is too far in the future" % (name, text[:32]))
    return value


def parse_window(params, now_s, default_range):
    """range= (a key of HISTORY_RANGES_S), or from= [to=] -> (from_s, to_s)."""
    if "range" in params:
        if "from" in params or "to" in params:
            raise QueryError("parameter 'range' cannot be combined with 'from'/'to'")
        span = HISTORY_RANGES_S.get(params["range"])
        if span is None:
            raise QueryError("parameter 'range': expected one of %s" % ", ".join(HISTORY_RANGES_S))
        return now_s - span, now_s
    to_s = parse_time_param("to", params["to"]) if "to" in params else now_s
    if "from" in params:
        from_s = parse_time_param("from", params["from"])
    else:
        from_s = to_s - HISTORY_RANGES_S[default_range]
    if from_s >= to_s:
        raise QueryError("parameter 'from' must be before 'to'")
    if to_s - from_s > HISTORY_MAX_SPAN_S:
        raise QueryError("parameters 'from'/'to': at most %d days" % (HISTORY_MAX_SPAN_S // 86400))
    return from_s, to_s


def _parse_format(params):
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise QueryError("parameter 'format': expected json or csv")
    return fmt


def parse_history_query(query, now_s):
    """?from=&to=&step= or ?range= (and format=) of a history endpoint."""
    params = parse_query_string(query, HISTORY_PARAMS)
    from_s, to_s = parse_window(params, now_s, "1h")
    step_s = None
    if "step" in params:
        try:
            step_s = parse_duration(params["step"])
        except ValueError:
            step_s = None
        if not step_s or not 1.0 <= step_s <= to_s - from_s:
            raise QueryError("parameter 'step': expected a duration from 1s to the range "
                             "(e.g. 60, 60s, 5m)")
    return HistoryQuery(from_s, to_s, step_s, _parse_format(params))


def parse_runs_query(query, now_s):
    """?range=|from=&to= &gpu= &active=true|false &format= of /api/processes."""
    params = parse_query_string(query, RUNS_PARAMS)
    from_s, to_s = parse_window(params, now_s, "24h")
    active = None
    if "active" in params:
        try:
            active = parse_bool(params["active"])
        except ValueError:
            raise QueryError("parameter 'active': expected true or false")
    by, key = params.get("by"), params.get("key")
    if (by is None) != (key is None):
        raise QueryError("parameters 'by' and 'key' go together (key= empty: runs without one)")
    if by is not None:
        _parse_usage_by(params)
    return RunsQuery(from_s, to_s, _parse_gpu(params), active, _parse_format(params), by,
                     key if key else None)


def _parse_gpu(params):
    gpu_id = params.get("gpu") or None
    if gpu_id is not None and not GPU_ID_RE.match(gpu_id):
        raise QueryError("parameter 'gpu': not a GPU id")
    return gpu_id


def _parse_usage_by(params):
    by = params.get("by", "user")
    if by not in USAGE_BY:
        raise QueryError("parameter 'by': expected one of %s" % ", ".join(USAGE_BY))
    return by


def parse_usage_query(query, now_s):
    """?range=|from=&to= (default the last 7 days) &by= &gpu= &format= of /api/usage."""
    params = parse_query_string(query, USAGE_PARAMS)
    from_s, to_s = parse_window(params, now_s, "7d")
    return UsageQuery(from_s, to_s, _parse_usage_by(params), _parse_gpu(params),
                      _parse_format(params))


def parse_alerts_query(query, now_s):
    """?range=|from=&to= (default the last 24 h) &format= of /api/alerts."""
    params = parse_query_string(query, ALERTS_PARAMS)
    from_s, to_s = parse_window(params, now_s, "24h")
    return HistoryQuery(from_s, to_s, None, _parse_format(params))


def parse_at_query(query, now_s, default_now=False):
    """?at=T (&format=) of /api/gpus/{id}/processes and a run's history."""
    params = parse_query_string(query, AT_PARAMS)
    if "at" not in params:
        if not default_now:
            raise QueryError("parameter 'at' is required (unix seconds or ISO 8601)")
        return AtQuery(now_s, _parse_format(params))
    return AtQuery(parse_time_param("at", params["at"]), _parse_format(params))


def parse_run_query(query, _now_s=None):
    """?format= of /api/processes/{run}/history -> 'json' or 'csv'."""
    return _parse_format(parse_query_string(query, RUN_PARAMS))


# -- checks: Host (DNS rebinding), Origin, the access token, the CSP --------

LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


def split_host_header(host):
    """'Example.com:8080' -> ('example.com', 8080); '[::1]' -> ('::1', None)."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, (int(port) if port.isdecimal() else None)


def is_loopback_name(name):
    """'localhost', '127.0.0.5', '::1' -> True; '127.0.0.1.evil.example' -> False."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host_header, machine_names, allowed_hosts, allowed_origins=None):
    """Stop DNS rebinding, whatever the bind: the Host header must name loopback,
    this machine (machine_names: its host names, found at start), an
    APP_ALLOWED_HOSTS entry ('.example.com' = any name under it, '*' = any) or
    the host of an allowed origin, or be an IP address (a page can only read
    a response of its own origin, and an address is nobody's name to rebind:
    browsing by address works behind NAT and Docker's port mapping too).
    The port is not checked."""
    if allowed_hosts == "*":
        return True
    name = normalize_host_name(split_host_header(host_header)[0])
    if not name:
        return False
    if is_loopback_name(name) or name in machine_names:
        return True
    if _ip_text(name) not in (None, "0.0.0.0", "::"):     # 0.0.0.0 names no host
        return True
    for allowed in allowed_hosts or ():
        if name == allowed or (allowed.startswith(".") and name.endswith(allowed)):
            return True
    if isinstance(allowed_origins, tuple):
        return any(normalize_host_name(urlsplit(origin).hostname) == name
                   for origin in allowed_origins)
    return False


AUTH_OPEN_ROUTES = ("healthz", "readyz", "favicon")     # probes; nothing to read there
AUTH_COOKIE_MAX_AGE_S = 30 * 86400


def auth_cookie_name(port):
    """One cookie per port: cookies ignore ports, two dashboards on one host must not clash."""
    return "amdgpu_top_web_token_%d" % port


def token_matches(candidate, token):
    """Constant-time comparison (hmac.compare_digest): the time taken says
    nothing about how much of a guess was right."""
    if candidate is None or token is None:
        return False
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), token.encode("utf-8"))


def parse_bearer(authorization):
    """'Bearer abc' -> 'abc' (RFC 6750 §2.1; the scheme is case-insensitive); else None."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def parse_cookie(cookie_header, name):
    """The value of cookie `name` in a Cookie header (RFC 6265 §4.2), else None."""
    for part in (cookie_header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def parse_token_query(query):
    """'a=1&token=ab+c%3D' -> 'ab+c=': '+' stays '+' (a base64 token pasted into the
    address bar must still match); None when there is no token parameter."""
    for part in (query or "").split("&"):
        if part.startswith("token="):
            return unquote(part[6:])
    return None


def request_authorized(headers, token, cookie_name):
    """Whether a request carries the token: Authorization: Bearer, or the cookie."""
    return (token_matches(parse_bearer(headers.get("Authorization")), token)
            or token_matches(parse_cookie(headers.get("Cookie"), cookie_name), token))


def build_auth_cookie(cookie_name, token):
    return "%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Strict" % (
        cookie_name, token, AUTH_COOKIE_MAX_AGE_S)


TOKEN_QUERY_RE = re.compile(r"([?&]token=)[^&\s\"#]*")


def redact_token(text):
    """'/?token=abc&x=1' -> '/?token=(redacted)&x=1': no token in any log line."""
    return TOKEN_QUERY_RE.sub(r"\1(redacted)", text)


AUTH_HELP = ("this dashboard asks for its access token (APP_AUTH_TOKEN): send "
             "'Authorization: Bearer <token>', or open /?token=<token> once in the browser")


def render_auth_page():
    """The 401 page of / and /plain: how to pass the token."""
    return ("<!doctype html><html lang=en><meta charset=utf-8><title>amdgpu_top_web: token "
            "needed</title><h1>Access token needed</h1><p>This dashboard is protected by an "
            "access token (<code>APP_AUTH_TOKEN</code> or <code>APP_AUTH_TOKEN_FILE</code> where "
            "it runs). Open <code>/?token=&lt;token&gt;</code> once: the browser then keeps it "
            "in a cookie and the address bar forgets it. Scripts and Prometheus send "
            "<code>Authorization: Bearer &lt;token&gt;</code>.</p></html>")


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


SCRIPT_BLOCK_RE = re.compile(r"<script\b[^>]*>(.*?)</script>", re.IGNORECASE | re.DOTALL)


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


# -- the fleet proxy: /hosts/{name}/ paths, headers, redirects ---------------

def parse_proxy_path(path):
    """A request path under /hosts/ (still percent-encoded) -> (peer name,
    the path to ask the peer for, re-encoded): '/hosts/a:80/api/gpus' ->
    ('a:80', '/api/gpus'); (name, None) for '/hosts/NAME' (no slash yet).
    None when the name is no peer name or the rest could leave the peer:
    a '.' or '..' segment (encoded too), '//', a backslash, a control
    character. Names, not URLs: nothing here ever picks a host."""
    if not path.startswith(FLEET_PROXY_PREFIX):
        return None
    raw_name, slash, rest = path[len(FLEET_PROXY_PREFIX):].partition("/")
    try:
        name = unquote(raw_name, errors="strict")
        segments = [unquote(segment, errors="strict") for segment in rest.split("/")]
    except UnicodeDecodeError:
        return None
    if not FLEET_NAME_RE.match(name):
        return None
    if not slash:
        return name, None
    for index, segment in enumerate(segments):
        if segment in (".", "..") or (not segment and index != len(segments) - 1):
            return None
        if any(ch in "/\\" or ord(ch) < 0x20 or ord(ch) == 0x7f for ch in segment):
            return None
    return name, "/" + "/".join(quote(segment, safe=FLEET_PROXY_SEGMENT_SAFE)
                                for segment in segments)


def proxy_query(query):
    """The query string passed on to a peer: the hub's own ?token= never is."""
    return "&".join(part for part in (query or "").split("&")
                    if part and part.split("=", 1)[0] != "token")


def _connection_named(headers):
    """Lower-cased names a Connection header lists (hop-by-hop for this hop too)."""
    return set().union(*[_header_tokens(value) for key, value in headers
                         if key.lower() == "connection"] or [set()])


def proxy_request_headers(headers, peer_netloc, token):
    """The browser's [(name, value)] -> the ones sent to a peer: no hop-by-hop
    field, none of the hub's credentials (Authorization, Cookie), no Origin;
    Host is the peer's and Authorization the peer's own token, if any."""
    named = _connection_named(headers)
    out = [(key, value) for key, value in headers
           if key.lower() not in FLEET_PROXY_REQUEST_DROP and key.lower() not in named
           and not key.lower().startswith("sec-websocket-")]
    out.append(("Host", peer_netloc))
    if token:
        out.append(("Authorization", "Bearer " + token))
    return out


def proxy_response_headers(headers):
    """A peer's answer [(name, value)] -> the ones relayed to the browser: no
    hop-by-hop field, no Set-Cookie (the hub's origin is not the peer's)."""
    named = _connection_named(headers)
    return [(key, value) for key, value in headers
            if key.lower() not in FLEET_PROXY_RESPONSE_DROP and key.lower() not in named]


def rewrite_proxy_location(location, peer_url, request_url, name):
    """A peer's redirect -> the same place under /hosts/{name}/, or None when
    it leaves the peer (another host, port or scheme, or above its base path)."""
    try:
        target = urlsplit(urljoin(request_url, location.strip()))
        base = urlsplit(peer_url)
        port = target.port or (443 if target.scheme == "https" else 80)
    except ValueError:
        return None
    if (target.scheme != base.scheme or target.username is not None
            or (target.hostname or "") != base.hostname or port != base.port):
        return None
    if target.path != base.path and not target.path.startswith(base.path + "/"):
        return None
    path = "%s%s%s" % (FLEET_PROXY_PREFIX, name, target.path[len(base.path):] or "/")
    found = parse_proxy_path(path)
    if found is None or found[1] is None:
        return None
    return path + ("?" + target.query if target.query else "")


def build_proxy_ws_request(path, peer_netloc, headers, token):
    """The opening handshake sent to a peer for a browser's /hosts/{name}/ws:
    the browser's key and version (so the peer's 101 answers the browser),
    the peer's Host, no Origin (a non-browser client to the peer), its token."""
    lines = ["GET %s HTTP/1.1" % path, "Host: %s" % peer_netloc, "Upgrade: websocket",
             "Connection: Upgrade"]
    for key in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
                "User-Agent"):
        value = headers.get(key)
        if value:
            lines.append("%s: %s" % (key, value))
    if token:
        lines.append("Authorization: Bearer %s" % token)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def build_proxy_ws_answer(head):
    """A peer's 101 head (bytes, up to its blank line) -> the one sent to the
    browser: its status line and only FLEET_PROXY_WS_ANSWER_KEEP (no Set-Cookie
    or anything else of the peer's reaches the hub's origin)."""
    lines = head.decode("latin-1").split("\r\n")
    keep = {key.lower(): key for key in FLEET_PROXY_WS_ANSWER_KEEP}
    out = [lines[0]]
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keep:
            out.append("%s: %s" % (keep[key.strip().lower()], value.strip()))
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def parse_status_line(head):
    """b'HTTP/1.1 101 Switching Protocols\\r\\n...' -> 101; None when it is no status line."""
    match = re.match(br"HTTP/1\.[01] ([1-5][0-9]{2})(?: |\r|$)", head)
    return int(match.group(1)) if match else None


# -- one builder per wire shape: frames and JSON answers --------------------

def format_ts(epoch_s):
    """1760274425.1234 -> '2025-10-12T13:07:05.123Z' (UTC, milliseconds)."""
    millis = int(round(epoch_s * 1000))
    seconds, millis = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


def json_bytes(obj):
    """Compact UTF-8 JSON; NaN/inf are bugs upstream, so refuse them."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def replace_non_finite(obj):
    """A copy of obj (dicts, lists, tuples) with NaN/inf floats as None: the
    last resort of a frame whose encoding was refused (json_bytes)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return dict((key, replace_non_finite(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return [replace_non_finite(value) for value in obj]
    return obj


def build_identity_display(vendor, apu):
    """The identity's display keys: vendor_label, kind ("APU" for an AMD APU, "integrated"
    for another vendor's, else "discrete"), labels, memory (the pools always shown) and
    process_source."""
    label, labels, memory, source = (VENDOR_DISPLAY.get(vendor)
                                     or (str(vendor), VENDOR_DISPLAY["amd"][1], ("vram",), "fdinfo"))
    if apu and vendor != "amd":
        memory = tuple(m for m in memory if m != "vram")          # an iGPU has no VRAM of its own
    return {"vendor_label": label, "kind": ("APU" if vendor == "amd" else "integrated") if apu else "discrete",
            "labels": dict(labels), "memory": list(memory), "process_source": source}


def identity_json(info):
    out = {"id": info.id, "vendor": info.vendor, "uuid": info.uuid, "pci": info.pci,
           "pci_id": info.pci_id, "revision": info.revision, "name": info.name,
           "render_node": info.render_node, "driver": info.driver, "apu": info.apu,
           "demo": info.demo, "driver_version": info.driver_version,
           "cuda_driver_version": info.cuda_driver_version, "sclk_max_mhz": info.sclk_max_mhz,
           "mclk_max_mhz": info.mclk_max_mhz}
    out.update(build_identity_display(info.vendor, info.apu))
    return out


def build_stats_message(gpu_id, epoch_s, metrics):
    """The stats frame (also GET /api/gpus/{id}/metrics); ts and metrics are
    null before the GPU's first sample (epoch_s None)."""
    return {"type": "stats", "gpu_id": gpu_id,
            "ts": None if epoch_s is None else format_ts(epoch_s), "metrics": metrics}


def build_host_message(epoch_s, host):
    """The host frame (also GET /api/host); ts and host are null before the first sample."""
    return {"type": "host", "ts": None if epoch_s is None else format_ts(epoch_s), "host": host}


EMPTY_PROCS = build_procs_entry([], 0, build_capabilities(None, False, False, ()))


def build_procs_message(gpu_id, epoch_s, entry, visibility, scan_stats):
    """One GPU's slice of a scan result -> the procs frame (SPEC §5); also
    GET /api/gpus/{id}/procs before the first scan (epoch_s None): ts,
    processes, totals, visibility and scan null, capabilities not known yet."""
    if epoch_s is None:
        return {"type": "procs", "gpu_id": gpu_id, "ts": None,
                "capabilities": build_capabilities(None, None, None, ()), "processes": None,
                "totals": None, "visibility": None, "scan": None}
    entry = entry or EMPTY_PROCS
    return {"type": "procs", "gpu_id": gpu_id, "ts": format_ts(epoch_s),
            "capabilities": entry["capabilities"], "processes": entry["processes"],
            "totals": entry["totals"], "visibility": visibility,
            "scan": {"cut_short": bool(scan_stats.get("cut_short")),
                     "duration_s": scan_stats.get("duration_s")}}


def _engine_ms(row, nvml):
    """A row's engine use in ms per s, as the page's procEngineMs reckons it
    (NVML: the busiest engine, else gpu_time; fdinfo: gpu_time, else the sum)."""
    engines = [v for k, v in (row.get("engines_pct") or {}).items()
               if isinstance(v, (int, float)) and (k != "mem" or not nvml)]
    time_ms = row.get("gpu_time_ms_per_s")
    time_ms = time_ms if isinstance(time_ms, (int, float)) else None
    if nvml:
        return max(engines) * 10 if engines else time_ms
    return time_ms if time_ms is not None else (sum(engines) * 10 if engines else None)


def _argmax_row(rows, value):
    """The row with the largest value (None ignored), the first one on ties."""
    best, best_value = None, None
    for row in rows:
        v = value(row)
        if v is not None and (best_value is None or v > best_value):
            best, best_value = row, v
    return best


def select_top_rows(rows):
    """The rows the overview's "top process" may pick, in their order: the
    busiest by engine use (either reckoning; lowest PID on ties), the largest
    VRAM user, the largest KFD one; the first row when none of these is known."""
    picks = [_argmax_row(sorted(rows, key=lambda r: r.get("pid") or 0),
                         lambda r, nvml=nvml: _engine_ms(r, nvml)) for nvml in (True, False)]
    vram = lambda r: r.get("vram_bytes") if isinstance(r.get("vram_bytes"), (int, float)) else None
    picks += [_argmax_row(rows, vram),
              _argmax_row([r for r in rows if r.get("kfd")], lambda r: vram(r) or 0)]
    keep = set(id(r) for r in picks if r is not None) or set(id(r) for r in rows[:1])
    return [r for r in rows if id(r) in keep]


def build_procs_top_message(message):
    """The procs frame of an overview subscription: the same keys, processes
    cut to select_top_rows (totals still count every process)."""
    if not message.get("processes"):
        return message
    return dict(message, processes=select_top_rows(message["processes"]))


def build_gpus_message(infos):
    """The gpus frame: the GPU set changed (discovery); identities in order."""
    return {"type": "gpus", "gpus": [identity_json(info) for info in infos]}


def build_subscribed_message(gpu_id, host, detail="full"):
    """The answer to a subscribe: what the client now gets."""
    return {"type": "subscribed", "gpu_id": gpu_id, "host": host, "detail": detail}


def build_pong_message():
    return {"type": "pong"}


def build_error_message(message):
    """A client message the hub refused; the connection stays open."""
    return {"type": "error", "message": message}


def build_gpus_answer(gpus, demo, message=None):
    """GET /api/gpus: identities each with its latest "metrics" (null before
    the first sample); a message (how to try --demo) when there is no GPU."""
    out = {"gpus": gpus, "demo": demo}
    if message is not None:
        out["message"] = message
    return out


def build_once_snapshot(version, epoch_s, rates_over_s, host, gpus):
    """--once --json: the host and every GPU (identity, "metrics", "procs")."""
    return {"version": version, "ts": format_ts(epoch_s), "rates_over_s": rates_over_s,
            "host": host, "gpus": gpus}


def fleet_top_process(procs, nvml):
    """A procs message's top process for the fleet: the row with the most
    engine use (lowest PID on ties), else the most VRAM; None without rows."""
    rows = (procs or {}).get("processes") or []
    best = _argmax_row(sorted(rows, key=lambda r: r.get("pid") or 0),
                       lambda r: _engine_ms(r, nvml))
    best = best or _argmax_row(rows, lambda r: r.get("vram_bytes")
                               if isinstance(r.get("vram_bytes"), (int, float)) else None)
    if best is None:
        return None
    engine_ms = _engine_ms(best, nvml)
    return {"pid": best.get("pid"), "name": best.get("name"), "user": best.get("user"),
            "vram_bytes": best.get("vram_bytes"),
            "gpu_pct": None if engine_ms is None else round(min(100.0, engine_ms / 10.0), 1),
            "who": compute_who_label(best)}


def build_fleet_gpu(identity, metrics, procs, alert):
    """One GPU in a fleet host entry: identity, the headline metrics (the stats
    frame's keys, null when unknown), the top process, the process count (null
    before a scan or with the scan off) and its worst active alert severity."""
    metrics = metrics or {}
    out = dict((key, identity.get(key)) for key in ("id", "name", "vendor", "vendor_label",
                                                     "uuid", "pci"))
    out.update((key, metrics.get(key)) for key in FLEET_METRIC_KEYS)
    rows = (procs or {}).get("processes")
    out.update(top_process=fleet_top_process(procs, identity.get("vendor") == "nvidia"),
               processes=len(rows) if rows is not None else None, alert=alert)
    return out


def build_fleet_legacy_answer(gpus_answer, host_answer):
    """An older peer without /api/fleet/host: its /api/gpus and /api/host
    answers -> the shape of a fleet host answer (no processes, no alerts)."""
    gpus = gpus_answer.get("gpus") if isinstance(gpus_answer, dict) else None
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        raise ValueError("not a fleet answer")
    host = host_answer.get("host") if isinstance(host_answer, dict) else None
    return {"version": None, "host": host if isinstance(host, dict) else None, "alerts": [],
            "gpus": [build_fleet_gpu(g, g.get("metrics") if isinstance(g.get("metrics"), dict)
                                     else None, None, None) for g in gpus[:FLEET_MAX_GPUS]]}


def build_fleet_alert(event):
    """An active alert event -> the fleet's short form."""
    return dict((key, event.get(key)) for key in FLEET_ALERT_KEYS)


def build_fleet_host(name, source, page, state, last_seen, error, version, host, gpus, alerts):
    """One host of the fleet (GET /api/fleet/host answers its own): last_seen
    epoch seconds or None; host a host frame dict or None (cut to its CPU and
    RAM); gpus fleet GPUs; alerts active events in their fleet form."""
    return {"name": name, "source": source, "page": page, "state": state,
            "last_seen": None if last_seen is None else format_ts(last_seen), "error": error,
            "version": version,
            "host": None if host is None else dict((k, host.get(k)) for k in FLEET_HOST_KEYS),
            "gpus": gpus, "alerts": alerts}


def build_local_fleet_host(name, epoch_s, gpus, procs, host, alerts):
    """This server's own host entry: gpus [(identity, metrics or None)], procs
    {gpu id: procs message}, host dict or None, alerts the active events."""
    worst = {}
    for event in alerts:
        rank = ALERT_SEVERITIES.index(event["severity"]) if event.get("severity") in \
            ALERT_SEVERITIES else -1
        if rank > worst.get(event.get("gpu_id"), -1):
            worst[event.get("gpu_id")] = rank
    entries = [build_fleet_gpu(identity, metrics, procs.get(identity["id"]),
                               ALERT_SEVERITIES[worst[identity["id"]]]
                               if identity["id"] in worst else None)
               for identity, metrics in gpus]
    return build_fleet_host(name, "local", "/", "up", epoch_s, None, __version__, host, entries,
                            [build_fleet_alert(event) for event in alerts])


def compute_fleet_totals(hosts):
    """The fleet's totals: a GPU is down on a host not up or when its
    runtime_status is "lost", else busy at gpu_busy_pct >= FLEET_BUSY_PCT and
    idle otherwise (unknown included); power_w sums the known values of the
    GPUs not down (null when none is known)."""
    totals = dict.fromkeys(("hosts_up", "gpus", "gpus_busy", "gpus_idle", "gpus_down"), 0)
    power = []
    for host in hosts:
        up = host["state"] == "up"
        totals["hosts_up"] += up
        for gpu in host["gpus"]:
            totals["gpus"] += 1
            busy = gpu.get("gpu_busy_pct")
            if not up or gpu.get("runtime_status") == "lost":
                totals["gpus_down"] += 1
                continue
            if isinstance(busy, (int, float)) and busy >= FLEET_BUSY_PCT:
                totals["gpus_busy"] += 1
            else:
                totals["gpus_idle"] += 1
            if isinstance(gpu.get("power_w"), (int, float)):
                power.append(gpu["power_w"])
    return {"hosts": len(hosts), "hosts_up": totals["hosts_up"],
            "hosts_down": len(hosts) - totals["hosts_up"], "gpus": totals["gpus"],
            "gpus_busy": totals["gpus_busy"], "gpus_idle": totals["gpus_idle"],
            "gpus_down": totals["gpus_down"], "power_w": round(sum(power), 1) if power else None}


def build_fleet_message(epoch_s, source, interval_s, hosts, error=None):
    """The fleet (the /ws frame and GET /api/fleet): source "local" (a server
    without a fleet source: itself only), "peers" or "prometheus"; error says
    why the peer list could not be read (the last good one is used), else null."""
    return {"type": "fleet", "ts": format_ts(epoch_s), "source": source, "interval_s": interval_s,
            "error": error, "hosts": hosts, "totals": compute_fleet_totals(hosts)}


def fleet_content(message):
    """A fleet message without its ts: what a round compares to push only changes."""
    return dict(message, ts=None)


def _compact(value):
    return int(value) if value.is_integer() else value


def encode_ring_json(interval_s, ts, columns, points_max=None):
    """Ordered ring columns (ts and {key: values}, NaN for null) -> the ring
    json {"interval_ms", "ts": [unix ms], "series": {key: [value or null]}};
    with points_max, buckets of k consecutive samples (the newest bucket
    ends at the newest sample) become one point each: the bucket's last ts
    and each series' max, interval_ms then k times the sampling interval."""
    n = len(ts)
    k = max(1, -(-n // points_max)) if points_max else 1
    ends = list(range(n, 0, -k))[::-1]
    series = {}
    for key, values in columns.items():
        series[key] = [_bucket_max(values, max(0, end - k), end) for end in ends]
    return {"interval_ms": int(round(interval_s * k * 1000)),
            "ts": [int(round(ts[end - 1] * 1000)) for end in ends], "series": series}


def _bucket_max(values, lo, hi):
    """max of values[lo:hi] ignoring NaN (None if all NaN), compacted."""
    if hi - lo == 1:
        value = values[lo]
    else:
        segment = values[lo:hi]
        total = sum(segment)                  # NaN-free (the common case) in C
        value = max(segment) if total == total else max(
            (v for v in segment if v == v), default=float("nan"))
    return None if value != value else _compact(value)


def build_hello_message(interval_s, default_gpu, gpus, features, history, host, host_history,
                        alerts):
    """The hello frame: gpus (identity dicts), history {gpu id: ring json},
    host (dict or None), host_history (ring json), alerts (active events)."""
    ids = [g["id"] for g in gpus]
    return {"type": "hello", "version": __version__,
            "interval_ms": int(round(interval_s * 1000)),
            "default_gpu": default_gpu if default_gpu in ids else (ids[0] if ids else None),
            "subscribed": "*", "gpus": gpus, "features": features, "history": history,
            "host": host, "host_history": host_history, "alerts": alerts}


def build_alert_event(rule, gpu_id, change, summary, now_s, process=None):
    """One state change of AlertState -> the alert frame dict (SPEC: type
    "alert"); times as ISO strings; ts is when the change happened. A live
    update of an active one is the same dict with update true and updated its
    time (AlertEngine._refresh): one key set either way. process: the process
    a per-process rule names (build_alert_process), else None."""
    return {"type": "alert", "rule": rule, "gpu_id": gpu_id, "severity": change["severity"],
            "state": change["state"], "started": format_ts(change["started"]),
            "ended": None if change["ended"] is None else format_ts(change["ended"]),
            "value": change["value"], "summary": summary, "ts": format_ts(now_s),
            "previous_severity": change.get("previous_severity"), "update": False,
            "updated": None, "process": process}


def error_json(message):
    return json_bytes(build_error_answer(message))


def build_error_answer(message):
    """Every HTTP error answer (4xx, 5xx): one line saying what to do."""
    return {"error": message}


def build_health_answer(history_status):
    """GET /api/healthz: up, and the history store's state."""
    return {"status": "ok", "history": history_status}


def build_ready_answer(gpu_count):
    """GET /api/readyz: gpu_count None until the first enumeration ("starting", a 503)."""
    return {"status": "starting" if gpu_count is None else "ready", "gpus": gpu_count}


def build_version_answer(version, python_version):
    return {"version": version, "python": "%d.%d.%d" % tuple(python_version[:3])}


def build_alerts_answer(from_s, to_s, source, active, events):
    """GET /api/alerts: the window, where the events come from, the active ones."""
    return {"from": format_ts(from_s), "to": format_ts(to_s), "source": source,
            "active": active, "events": events}


def build_runs_answer(from_s, to_s, runs):
    """GET /api/processes: the window and its process runs, newest first."""
    return {"from": format_ts(from_s), "to": format_ts(to_s), "processes": runs}


def build_series_answer(gpu_id, tier, step_s, from_s, to_s, ts_ms, count, series):
    """The one history answer (/api/gpus/{id}/history, /api/host/history with
    gpu_id None: no gpu_id key): per point its ts (unix ms) and sample count,
    per series {"min": [...], "avg": [...], "max": [...]}."""
    out = {"tier": tier, "step_s": step_s, "from": format_ts(from_s), "to": format_ts(to_s),
           "ts": ts_ms, "count": count, "series": series}
    if gpu_id is not None:
        out["gpu_id"] = gpu_id
    return out


def build_live_history_answer(gpu_id, ring, now_s):
    """The live ring (HistoryRing.to_json) as the finest tier, "live": one
    point per sample (count 1) whose min, avg and max are the sample."""
    step_s = ring["interval_ms"] / 1000.0
    ts_ms = ring["ts"]
    series = dict((key, {"min": values, "avg": values, "max": values})
                  for key, values in ring["series"].items())
    from_s = ts_ms[0] / 1000.0 if ts_ms else now_s
    to_s = ts_ms[-1] / 1000.0 + step_s if ts_ms else now_s
    return build_series_answer(gpu_id, "live", step_s, from_s, to_s, ts_ms, [1] * len(ts_ms),
                               series)


def _kwh(joules):
    return None if joules is None else round(joules / 3.6e6, 6)


def _usage_json(row):
    return {"key": row["key"], "gpu_hours": round((row["gpu_s"] or 0) / 3600.0, 6),
            "vram_gib_hours": round((row["vram_s"] or 0) / float(1 << 30) / 3600.0, 6),
            "energy_kwh": _kwh(row["energy_j"]), "runs": row["runs"],
            "peak_vram_bytes": row["peak_vram"],
            "first_seen": None if row.get("first_seen") is None else format_ts(row["first_seen"]),
            "last_seen": None if row.get("last_seen") is None else format_ts(row["last_seen"])}


def build_usage_answer(from_s, to_s, by, gpu_id, rows, gpus):
    """GET /api/usage: one row per key (compute_usage_rows), their totals, the
    GPUs' own totals from their series and the unattributed rest, so that
    totals + unattributed = gpu_totals (GPU-hours, energy)."""
    totals, own, rest = compute_usage_totals(rows, gpus)
    total = _usage_json(dict(totals, key=None,
                             first_seen=min(r["first_seen"] for r in rows) if rows else None,
                             last_seen=max(r["last_seen"] for r in rows) if rows else None))
    return {"from": format_ts(from_s), "to": format_ts(to_s), "by": by, "gpu": gpu_id,
            "rows": [_usage_json(r) for r in rows], "totals": total,
            "unattributed": {"gpu_hours": round(rest["gpu_s"] / 3600.0, 6),
                             "energy_kwh": _kwh(rest["energy_j"]),
                             "idle_energy_kwh": _kwh(rest["idle_j"])},
            "gpu_totals": {"gpu_hours": round(own["busy_s"] / 3600.0, 6),
                           "energy_kwh": _kwh(own["energy_j"]),
                           "idle_energy_kwh": _kwh(own["idle_j"])},
            "gpus": [{"gpu_id": g["gpu_id"], "tier": g["tier"],
                      "gpu_hours": round((g["busy_s"] or 0.0) / 3600.0, 6),
                      "energy_kwh": _kwh(g["energy_j"]), "idle_energy_kwh": _kwh(g["idle_j"])}
                     for g in gpus],
            "estimate": "energy: each interval's GPU energy split by engine time (README)"}


def build_run_history_answer(run, ts_ms, series):
    """GET /api/processes/{run_id}/history: the run, then its samples (every 10 s)."""
    return {"run": run, "ts": ts_ms, "series": series}


def build_procs_at_answer(gpu_id, at_s, sample_ts, processes):
    """GET /api/gpus/{id}/processes?at=: the process sample used (ISO, or null) and its runs."""
    return {"gpu_id": gpu_id, "at": format_ts(at_s), "ts": sample_ts, "processes": processes}


# -- the Alertmanager webhook body, alert events in a time range ------------

def _am_labels(event, severity, instance):
    labels = {"alertname": event["rule"], "gpu": event["gpu_id"] or "", "severity": severity,
              "instance": instance}
    process = event.get("process")
    if process:     # a process's alert: pid, name, user, owners (known ones, as /metrics names them)
        for key, value in (("pid", process.get("pid")), ("process", process.get("name")),
                           ("user", process.get("user"))) + prom_who_labels(process):
            if value is not None:
                labels[key] = str(value)
    return labels


def _am_fingerprint(labels):
    text = "\xff".join("%s\xfe%s" % item for item in sorted(labels.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _am_alert(event, severity, status, instance, ends_at, external_url):
    labels = _am_labels(event, severity, instance)
    return {"status": status, "labels": labels, "annotations": {"summary": event["summary"]},
            "startsAt": event["started"], "endsAt": ends_at or ALERTMANAGER_ZERO_TIME,
            "generatorURL": external_url, "fingerprint": _am_fingerprint(labels)}


def build_webhook_payload(event, instance, external_url=""):
    """An alert event -> Alertmanager's webhook JSON (version 4), so existing
    receivers accept it. An escalation (warning -> critical) also resolves the
    warning: severity is a label, so they are two alerts to Alertmanager."""
    firing = event["state"] == "firing"
    alerts = [_am_alert(event, event["severity"], event["state"], instance,
                        None if firing else event["ended"], external_url)]
    previous = event.get("previous_severity")
    if firing and previous:
        alerts.append(_am_alert(event, previous, "resolved", instance, event["ts"], external_url))
    group = {"alertname": event["rule"]}
    common = _am_labels(event, event["severity"], instance) if len(alerts) == 1 else dict(
        group, gpu=event["gpu_id"] or "", instance=instance)
    return {"version": "4", "groupKey": '{}:{alertname="%s"}' % event["rule"],
            "truncatedAlerts": 0, "status": "firing" if firing else "resolved",
            "receiver": WEBHOOK_RECEIVER, "groupLabels": group, "commonLabels": common,
            "commonAnnotations": {"summary": event["summary"]}, "externalURL": external_url,
            "alerts": alerts}


def event_in_range(event, from_s, to_s):
    """Whether an event's change time (ts, ISO) lies in [from_s, to_s]."""
    when = parse_iso_ts(event.get("ts") or event.get("started")) or 0.0
    return from_s <= when <= to_s


# -- CSV answers (&format=csv) ----------------------------------------------

# A CSV cell that a spreadsheet would run as a formula (OWASP "CSV injection").
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


ALERT_CSV_COLUMNS = ("ts", "rule", "gpu_id", "severity", "state", "started", "ended", "value",
                     "summary")
RUN_CSV_COLUMNS = (
    "run_id", "gpu_id", "pid", "start_time", "started", "elapsed_s", "name", "user", "cmd",
    "container", "kfd", "type", "first_seen", "last_seen", "ended", "peak_vram_bytes", "avg_vram_bytes", "peak_gtt_bytes",
    "avg_gtt_bytes", "peak_engine_pct", "avg_engine_pct", "gpu_seconds", "unit", "container_name"
) + WHO_RUN_COLUMNS + ("energy_j", "vram_gib_hours")
PROC_AT_CSV_COLUMNS = ("pid", "name", "user", "started", "elapsed_s", "vram_bytes", "gtt_bytes",
                       "engine_pct", "run_id")


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        value = " ".join(str(item) for item in value)
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_bytes(header, rows):
    """RFC 4180 CSV (CRLF, quoted where needed), UTF-8; None -> empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
    return out.getvalue().encode("utf-8")


def series_csv(result):
    """A query_series result -> one row per point: ts, count, then min/avg/max per series."""
    names = sorted(result["series"])
    header = ["ts", "count"] + ["%s_%s" % (name, part) for name in names
                                for part in ("min", "avg", "max")]
    columns = [result["series"][name][part] for name in names for part in ("min", "avg", "max")]
    counts = result.get("count") or [None] * len(result["ts"])
    rows = ([format_ts(ts_ms / 1000.0), counts[i]] + [column[i] for column in columns]
            for i, ts_ms in enumerate(result["ts"]))
    return csv_bytes(header, rows)


def columns_csv(ts_ms, series):
    """Columnar series ({name: [value per ts]}) -> CSV: ts, then one column per name."""
    names = sorted(series)
    return csv_bytes(["ts"] + names, ([format_ts(t / 1000.0)] + [series[n][i] for n in names]
                                      for i, t in enumerate(ts_ms)))


def runs_csv(runs):
    """The runs answer as CSV: k8s and slurm as their flat columns (k8s_pod, slurm_job...)."""
    return records_csv([dict(run, **compute_who_columns(run)) for run in runs], RUN_CSV_COLUMNS)


USAGE_CSV_COLUMNS = ("key", "gpu_hours", "vram_gib_hours", "energy_kwh", "runs",
                     "peak_vram_bytes", "first_seen", "last_seen")


def usage_csv(answer):
    """The usage answer as CSV: a row per key, then "(unattributed)" and "(all GPUs)"
    (the GPUs' own totals: the column sums of the rows above)."""
    extra = [dict(answer["unattributed"], key="(unattributed)"),
             dict(answer["gpu_totals"], key="(all GPUs)")]
    return records_csv(answer["rows"] + extra, USAGE_CSV_COLUMNS)


def records_csv(records, columns):
    """Dicts -> CSV with the given columns (a missing key -> empty cell)."""
    return csv_bytes(columns, ([record.get(name) for name in columns] for record in records))


# -- texts: values, durations, forecasts and alert summaries ----------------

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


# Digits after the point per unit, as the page rounds them.
PLAIN_DIGITS = {"%": 0, " W": 1, " °C": 0, " MHz": 0, " RPM": 0, " lanes": 0, "": 1}


def format_energy(joules):
    """Joules in Wh below 1 kWh, else kWh, 3 significant digits (as the page)."""
    wh = joules / 3600.0
    value, unit = (wh / 1000.0, "kWh") if wh >= 1000 else (wh, "Wh")
    return "%.*f %s" % (0 if value >= 100 else 1 if value >= 10 else 2, value, unit)


# A space after a number (or %) and before its unit: never a line break there.
_PLAIN_UNIT_SPACE_RE = re.compile(r"(?<=\d) (?=[A-Za-z\u00b0])|(?<=Gen) (?=\d)")


def plain_nowrap(text):
    """'1.72 GiB / 16.00 GiB' -> the same with a no-break space between each
    number and its unit, so a narrow screen never puts "GiB" on a line alone."""
    return _PLAIN_UNIT_SPACE_RE.sub("\u00a0", text)


def format_value(value, unit):
    """A metric for people: rounded like the page, "—" for null."""
    if value is None:
        return "\u2014"
    if unit == "B":
        return format_bytes(value)
    if unit == "list":
        return ", ".join(value) if value else "none"
    if unit == "P":
        return "P%d" % value
    if unit == "energy":
        return format_energy(value)
    if unit == "gen":
        return "Gen %d" % value
    if unit == "load":
        return "%.2f" % value
    if unit == "%d":
        return "%d" % value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "%.*f%s" % (PLAIN_DIGITS.get(unit, 1), value, unit)
    return "%s%s" % (value, unit)


def format_ecc(metrics):
    """The ECC counts in one line (None without ECC): "corrected 4 (40 total),
    uncorrected 0 (2 total)": since the driver loaded, then over the card's life."""
    keys = ("ecc_corrected_volatile", "ecc_corrected_aggregate", "ecc_uncorrected_volatile",
            "ecc_uncorrected_aggregate")
    if all(metrics.get(key) is None for key in keys):
        return None
    return "corrected %s (%s total), uncorrected %s (%s total)" % tuple(
        format_value(metrics.get(key), "%d") for key in keys)


def format_mig_instance(instance):
    """One MIG instance: "1g.10gb (GI 1, CI 0): 3.0 GiB / 9.5 GiB"."""
    return "%s (GI %s, CI %s): %s / %s" % (
        instance["profile"] or "?", format_value(instance["gi"], "%d"),
        format_value(instance["ci"], "%d"), format_bytes(instance["memory_used_bytes"]),
        format_bytes(instance["memory_total_bytes"]))


def format_proc_mig(mig):
    """A process row's MIG instance: "MIG 1g.10gb (GI 1, CI 0)", or "" without."""
    if not mig:
        return ""
    return "MIG %s (GI %s, CI %s)" % (mig["profile"] or "?", format_value(mig["gi"], "%d"),
                                      format_value(mig["ci"], "%d"))


def format_elapsed(seconds):
    """Elapsed seconds as ps(1) prints etime: "[[dd-]hh:]mm:ss"; "—" for null."""
    if seconds is None:
        return "\u2014"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return "%d-%02d:%02d:%02d" % (days, hours, minutes, secs)
    return "%02d:%02d:%02d" % (hours, minutes, secs) if hours else "%02d:%02d" % (minutes, secs)


def format_identity_facts(identity):
    """Driver and CUDA versions and maximum clocks in one line ('' when the
    vendor gives none): 'driver 580.95.05, CUDA 13.0, max clocks: shader
    1980 MHz, memory 2619 MHz'."""
    parts = ["%s %s" % (label, identity[key]) for label, key in (
        ("driver", "driver_version"), ("CUDA", "cuda_driver_version")) if identity.get(key)]
    clocks = ["%s %s" % (label, format_value(identity[key], " MHz")) for label, key in (
        ("shader", "sclk_max_mhz"), ("memory", "mclk_max_mhz")) if identity.get(key) is not None]
    if clocks:
        parts.append("max clocks: " + ", ".join(clocks))
    return ", ".join(parts)


def _format_duration(seconds):
    if seconds >= 3600:
        return "%.1f h" % (seconds / 3600.0)
    if seconds >= 120:
        return "%d min" % int(round(seconds / 60.0))
    return "%d s" % int(round(seconds))


def format_forecast(forecast, with_full=True, names=None):
    """vram_forecast -> words: 'growing 18-22 MiB/s, full in 4 min-5 min, mostly pid 1234'
    ('mostly python3 (pid 1234)' where names {pid: name} knows it)."""
    forecast = forecast or {}
    state, rate = forecast.get("state"), forecast.get("rate_bytes_per_s")
    if state == "step":
        text = "a step of %s" % format_bytes(forecast.get("step_bytes"))
    elif state == "trend" and rate:
        mib = sorted(abs(r) / float(1 << 20) for r in rate)
        digits = 0 if mib[1] - mib[0] >= 2 else 1
        text = "%s %.*f\u2013%.*f MiB/s" % ("growing" if rate[0] > 0 else "shrinking",
                                           digits, mib[0], digits, mib[1])
        full = forecast.get("full_in_s")
        if full and with_full:
            text += ", full in %s\u2013%s" % (_format_duration(full[0]), _format_duration(full[1]))
    else:
        return state or "unknown"
    pid = forecast.get("driver_pid")
    if pid is not None:
        name = (names or {}).get(pid)
        text += (", mostly %s (pid %d)" % (name, pid)) if name else ", mostly pid %d" % pid
    return text


ALERT_TITLES = {
    "gpu_temperature": "temperature %s °C", "vram_usage": "VRAM %s %% used",
    "vram_full_soon": "VRAM full in %s or later", "gpu_throttling": "throttled",
    "fan_stopped": "fan stopped while hot", "gpu_lost": "GPU lost",
    "busy_unattributed": "busy %s %% with no visible process", "host_memory": "host RAM %s %% used",
    "gpu_held_idle": "VRAM held by an idle process",
    "gpu_ecc_uncorrected": "new uncorrected ECC errors",
}


def format_alert_summary(rule, gpu_id, change, detail=""):
    """One line for an alert event (frames, webhook annotations, /plain), or
    for an active alert's live value (change["clearing"]: firing, but the
    value no longer asks for it; it resolves after its clear_for)."""
    value = change.get("value")
    title = ALERT_TITLES[rule]
    if rule == "vram_full_soon" and value is None:
        title = "VRAM no longer filling"
    elif "%s" in title:
        shown = _format_duration(value) if rule == "vram_full_soon" and value is not None else (
            format_value(value, "") if value is not None else "\u2014")
        title = title % shown
    subject = gpu_id or "host"
    if change["state"] == "resolved":
        return "%s: resolved (%s was %s)%s" % (subject, rule, change.get("severity"), (
            ": " + detail) if detail and rule == "gpu_held_idle" else "")
    return "%s: %s%s%s" % (subject, title, " (%s)" % detail if detail else "",
                           ", clearing" if change.get("clearing") else "")


def format_held_idle(process, vram_bytes, busy_pct, why=""):
    """gpu_held_idle's detail: 'jupyter, pid 4242, user frank, job 42 step 0:
    4.00 GiB, busy 0.0 %' (firing; who: its most specific owner), or why it
    resolved ('works again', ...)."""
    names = ["%s" % (process.get("name") or "?"), "pid %s" % process.get("pid")]
    if process.get("user"):
        names.append("user %s" % process["user"])
    who = compute_who_label(process)
    if who:
        names.append(who)
    if why:
        return "%s %s" % (", ".join(names), why)
    return "%s: %s, busy %s %%" % (", ".join(names), format_bytes(vram_bytes),
                                  format_value(busy_pct, ""))


# -- Prometheus text (opt-in /metrics) --------------------------------------

PROM_PREFIX = "amdgpu_"
PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# the labels prom_who_labels may give a process's series (who it belongs to)
PROM_WHO_LABELS = ("unit", "container_id", "container_name", "namespace", "pod", "container",
                   "slurm_job", "slurm_step")
PROM_BUILD_INFO_HELP = ("A metric with a constant '1' value labeled by the version of "
                        "amdgpu_top_web and of Python.")
PROM_READY_HELP = "1 once the first GPU enumeration is done (as /api/readyz answers 200), 0 before."
# family, type, help, [(metric key, scale, extra labels)]
PROM_GPU_FAMILIES = (
    ("gpu_busy_ratio", "gauge", "GPU busy (gpu_busy_percent / 100).", [("gpu_busy_pct", 0.01, ())]),
    ("memory_controller_busy_ratio", "gauge", "Memory controller busy (mem_busy_percent / 100).",
     [("mem_busy_pct", 0.01, ())]),
    ("clock_hertz", "gauge", "Current clock.",
     [("sclk_mhz", 1e6, (("clock", "shader"),)), ("mclk_mhz", 1e6, (("clock", "memory"),)),
      ("socclk_mhz", 1e6, (("clock", "soc"),)), ("vclk_mhz", 1e6, (("clock", "video"),)),
      ("dclk_mhz", 1e6, (("clock", "decode"),)), ("sm_clock_mhz", 1e6, (("clock", "sm"),))]),
    ("temperature_celsius", "gauge", "Temperature by hwmon sensor label.",
     [("temp_c", 1, (("sensor", "edge"),)), ("temp_junction_c", 1, (("sensor", "junction"),)),
      ("temp_mem_c", 1, (("sensor", "mem"),)), ("temp_vrgfx_c", 1, (("sensor", "vr_gfx"),)),
      ("temp_vrsoc_c", 1, (("sensor", "vr_soc"),)), ("temp_vrmem_c", 1, (("sensor", "vr_mem"),))]),
    ("temperature_limit_celsius", "gauge", "The card's own critical temperature (hwmon "
     "temp*_crit; NVIDIA: slowdown and memory-max thresholds).",
     [("temp_crit_c", 1, (("sensor", "edge"),)), ("temp_junction_crit_c", 1, (("sensor", "junction"),)),
      ("temp_mem_crit_c", 1, (("sensor", "mem"),))]),
    ("fan_rpm", "gauge", "Fan speed in revolutions per minute.", [("fan_rpm", 1, ())]),
    ("fan_duty_ratio", "gauge", "Fan PWM duty (pwm1 / pwm1_max).", [("fan_pct", 0.01, ())]),
    ("power_watts", "gauge", "Package power (PPT; Van Gogh: slow and fast PPT).",
     [("power_w", 1, (("sensor", "ppt"),)), ("power_fast_w", 1, (("sensor", "fast_ppt"),)),
      ("power_gfx_w", 1, (("sensor", "gfx"),)), ("power_soc_w", 1, (("sensor", "soc"),))]),
    ("power_cap_watts", "gauge", "Power cap.",
     [("power_cap_w", 1, (("sensor", "ppt"),)), ("power_fast_cap_w", 1, (("sensor", "fast_ppt"),))]),
    ("voltage_volts", "gauge", "Rail voltage.",
     [("vddgfx_mv", 0.001, (("rail", "vddgfx"),)), ("vddnb_mv", 0.001, (("rail", "vddnb"),))]),
    ("memory_used_bytes", "gauge", "Memory in use by pool (vram, vis_vram, gtt).",
     [("vram_used_bytes", 1, (("pool", "vram"),)), ("vis_vram_used_bytes", 1, (("pool", "vis_vram"),)),
      ("gtt_used_bytes", 1, (("pool", "gtt"),))]),
    ("memory_total_bytes", "gauge", "Memory size by pool (vram, vis_vram, gtt).",
     [("vram_total_bytes", 1, (("pool", "vram"),)), ("vis_vram_total_bytes", 1, (("pool", "vis_vram"),)),
      ("gtt_total_bytes", 1, (("pool", "gtt"),))]),
    ("pcie_link_generation", "gauge", "PCIe link generation (dGPUs).", [("pcie_gen", 1, ())]),
    ("pcie_link_width_lanes", "gauge", "PCIe link width (dGPUs).", [("pcie_width", 1, ())]),
    ("memory_reserved_bytes", "gauge", "VRAM the driver reserves for itself (NVML v2 memory).",
     [("vram_reserved_bytes", 1, (("pool", "vram"),))]),
    ("energy_joules_total", "counter", "Energy used since the driver loaded (NVML; Intel hwmon).",
     [("energy_j", 1, ())]),
    ("performance_state", "gauge", "Performance state (NVIDIA P-state: 0 fastest .. 15 slowest).",
     [("pstate", 1, ())]),
    ("video_busy_ratio", "gauge", "Video encoder and decoder busy.",
     [("enc_pct", 0.01, (("engine", "encoder"),)), ("dec_pct", 0.01, (("engine", "decoder"),)),
      ("mm_busy_pct", 0.01, (("engine", "multimedia"),))]),
    ("ecc_errors_total", "counter", "Memory ECC errors (NVML, while ECC is on): corrected "
     "(single-bit) or uncorrected (double-bit); volatile since the driver loaded, aggregate "
     "over the card's life.",
     [(key, 1, (("type", "uncorrected" if error_type else "corrected"),
                ("counter", "aggregate" if counter else "volatile")))
      for error_type, counter, key in NVML_ECC_COUNTERS]),
)
# family, help, host key, scale. amdgpu_host_cpus, not ..._cpu_count: promtool
# lint keeps the _count suffix for histograms and summaries.
PROM_HOST_FAMILIES = (
    ("host_cpu_busy_ratio", "Host CPU busy over the last second (/proc/stat, as psutil).",
     "cpu_busy_pct", 0.01),
    ("host_cpus", "CPUs the host kernel lists in /proc/stat.", "cpu_count", 1),
    ("host_load1", "Host load average over 1 minute (/proc/loadavg).", "load1", 1),
    ("host_load5", "Host load average over 5 minutes (/proc/loadavg).", "load5", 1),
    ("host_load15", "Host load average over 15 minutes (/proc/loadavg).", "load15", 1),
    ("host_memory_total_bytes", "Host RAM (MemTotal).", "mem_total_bytes", 1),
    ("host_memory_used_bytes", "Host RAM in use (MemTotal - MemAvailable).", "mem_used_bytes", 1),
    ("host_memory_available_bytes", "Host RAM available without swapping (MemAvailable).",
     "mem_available_bytes", 1),
    ("host_swap_total_bytes", "Host swap (SwapTotal).", "swap_total_bytes", 1),
    ("host_swap_used_bytes", "Host swap in use (SwapTotal - SwapFree).", "swap_used_bytes", 1),
    ("host_memory_pressure_some_ratio", "Share of the last 10 s some task stalled on memory "
     "(/proc/pressure/memory some avg10 / 100).", "mem_pressure_some_avg10", 0.01),
    ("host_memory_pressure_full_ratio", "Share of the last 10 s all tasks stalled on memory "
     "(/proc/pressure/memory full avg10 / 100).", "mem_pressure_full_avg10", 0.01),
)
# Throttle reasons that only say the GPU is idle (not a limit being hit).
IDLE_THROTTLE_REASONS = ("GpuIdle",)


def prom_escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prom_labels(pairs):
    return "{%s}" % ",".join('%s="%s"' % (k, prom_escape(v)) for k, v in pairs) if pairs else ""


def prom_number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class PromWriter(object):
    """Collects families (HELP/TYPE once each, then samples) into exposition text."""

    def __init__(self):
        self._families = collections.OrderedDict()

    def add(self, name, kind, help_text, labels, value):
        if value is None:
            return
        family = self._families.setdefault(PROM_PREFIX + name, (kind, help_text, []))
        family[2].append("%s%s%s %s" % (PROM_PREFIX, name, prom_labels(labels), prom_number(value)))

    def text(self):
        out = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append("# HELP %s %s" % (name, help_text))
            out.append("# TYPE %s %s" % (name, kind))
            out.extend(samples)
        return "\n".join(out) + "\n"


def render_prometheus(gpus, procs, health, max_procs, host=None, alerts=None, ready=True):
    """gpus: [(identity, metrics)], procs: {gpu id: procs message}, health: the
    monitor's own numbers, host: the host dict or None, alerts: the active
    alert events, ready: the first enumeration is done -> Prometheus text (one
    prefix, base units, a gpu label; build_info and ready first)."""
    writer = PromWriter()
    writer.add("build_info", "gauge", PROM_BUILD_INFO_HELP, (
        ("version", __version__), ("python", "%d.%d.%d" % tuple(sys.version_info[:3]))), 1)
    writer.add("ready", "gauge", PROM_READY_HELP, (), int(bool(ready)))
    for family, help_text, key, scale in PROM_HOST_FAMILIES:
        value = (host or {}).get(key)
        if value is not None:
            writer.add(family, "gauge", help_text, (), round(value * scale, 9) if scale != 1 else value)
    for identity, metrics in gpus:
        base = (("gpu", identity["id"]), ("pci", identity["pci"] or ""))
        info = base + (("vendor", identity["vendor"]), ("uuid", identity.get("uuid") or ""),
                       ("name", identity["name"]), ("pci_id", identity["pci_id"]),
                       ("revision", identity.get("revision") or ""), ("driver", identity["driver"]),
                       ("apu", str(identity["apu"]).lower()), ("demo", str(identity["demo"]).lower()))
        writer.add("gpu_info", "gauge", "GPU identity; always 1.", info, 1)
        _prom_identity_facts(writer, base, identity)
        _prom_gpu(writer, base, metrics or {})
        if identity["id"] in procs:
            writer.add("processes", "gauge", "Processes using the GPU that this monitor sees (PID "
                       "shown by /proc); only while process scanning is on.", base,
                       sum(1 for p in procs[identity["id"]].get("processes") or ()
                           if p.get("visible") is not False))
        if max_procs and identity["id"] in procs:
            _prom_procs(writer, base, procs[identity["id"]], max_procs)
    _prom_alerts(writer, gpus, alerts)
    _prom_health(writer, health)
    return writer.text()


def _prom_identity_facts(writer, base, identity):
    """The driver's versions (an info series) and the card's maximum clocks,
    where the vendor gives them (NVML)."""
    if identity.get("driver_version") or identity.get("cuda_driver_version"):
        writer.add("driver_info", "gauge", "The GPU driver's version and the CUDA version it "
                   "supports (NVML); always 1.", base + (
                       ("driver_version", identity.get("driver_version") or ""),
                       ("cuda_driver_version", identity.get("cuda_driver_version") or "")), 1)
    for key, clock in (("sclk_max_mhz", "shader"), ("mclk_max_mhz", "memory")):
        value = identity.get(key)
        writer.add("clock_max_hertz", "gauge", "The card's maximum clock (NVML max clock).",
                   base + (("clock", clock),), None if value is None else value * 1e6)


def _prom_gpu(writer, base, metrics):
    status = metrics.get("runtime_status")
    if status:
        writer.add("runtime_suspended", "gauge",
                   "1 while the GPU is runtime-suspended (its sensors are then not read).",
                   base, int(status not in ("active", "unsupported", "lost")))
        writer.add("gpu_lost", "gauge", "1 while the driver reports the GPU lost (NVML "
                   "GPU_IS_LOST); its other values are then absent.", base, int(status == "lost"))
    for family, kind, help_text, series in PROM_GPU_FAMILIES:
        for key, scale, extra in series:
            value = metrics.get(key)
            if value is not None:
                writer.add(family, kind, help_text, base + extra, round(value * scale, 9)
                           if scale != 1 else value)
    _prom_mig(writer, base, metrics.get("mig"))
    reasons = metrics.get("throttle_reasons")
    if reasons is not None:
        writer.add("throttled", "gauge", "1 while clocks are held down by a limit (any throttle "
                   "reason but idle).", base, int(any(r not in IDLE_THROTTLE_REASONS for r in reasons)))
        for reason in reasons:
            writer.add("throttle_reason_active", "gauge", "1 for each throttle (clock event) "
                       "reason now active, by its driver's name.", base + (("reason", reason),), 1)


def _prom_mig(writer, base, instances):
    """Memory per MIG instance (NVML MIG device handles), labelled by its GPU
    and compute instance ids and profile."""
    for instance in instances or ():
        labels = base + tuple((key, "" if instance[key] is None else instance[key])
                              for key in ("gi", "ci", "profile"))
        writer.add("mig_memory_used_bytes", "gauge", "Memory in use in a MIG instance.", labels,
                   instance["memory_used_bytes"])
        writer.add("mig_memory_total_bytes", "gauge", "Memory size of a MIG instance.", labels,
                   instance["memory_total_bytes"])


def prom_who_label(labels):
    """A process series' who-labels (prom_who_labels) -> compute_who_label's
    short text, or None: the fleet's top process read from Prometheus."""
    text = lambda key: (labels.get(key) or "")[:FLEET_TEXT_MAX] or None
    job = labels.get("slurm_job") or ""
    row = {"unit": text("unit"), "container": text("container_id"),
           "container_name": text("container_name"),
           "k8s": {"namespace": text("namespace"), "pod": text("pod"), "container": text("container"),
                   "pod_uid": None} if text("pod") else None,
           "slurm": {"job": int(job), "step": text("slurm_step")} if job.isdigit() else None}
    return compute_who_label(row)


def prom_who_labels(proc):
    """The who-labels of a process's series, only those known: unit, container_id,
    container_name, namespace, pod, container (Kubernetes' name, as dcgm-exporter
    calls it), slurm_job, slurm_step. Fixed for a process's life: no extra series."""
    k8s, slurm = proc.get("k8s") or {}, proc.get("slurm") or {}
    pairs = (("unit", proc.get("unit")), ("container_id", proc.get("container")),
             ("container_name", proc.get("container_name")),
             ("namespace", k8s.get("namespace")), ("pod", k8s.get("pod")),
             ("container", k8s.get("container")), ("slurm_job", slurm.get("job")),
             ("slurm_step", slurm.get("step")))
    return tuple((key, value) for key, value in pairs if value is not None)


def _prom_procs(writer, base, message, max_procs):
    procs = sorted(message.get("processes") or [], key=lambda p: -((p.get("vram_bytes") or 0)
                                                                    + (p.get("gtt_bytes") or 0)))
    for proc in procs[:max_procs]:
        labels = base + (("pid", proc["pid"]), ("name", proc.get("name") or "")) + prom_who_labels(proc)
        for pool in ("vram", "gtt", "cpu"):
            writer.add("process_memory_bytes", "gauge", "GPU memory of a process by pool (top processes only).",
                       labels + (("pool", pool),), proc.get(pool + "_bytes"))
        for engine, ns in sorted((proc.get("engines_ns") or {}).items()):
            writer.add("process_engine_seconds_total", "counter",
                       "Busy time of a process on a GPU engine (fdinfo drm-engine-*).",
                       labels + (("engine", engine),), ns / 1e9)
        for engine, pct in sorted((proc.get("engines_pct") or {}).items()):
            writer.add("process_engine_busy_ratio", "gauge",
                       "Share of an engine a process uses (fdinfo rate; NVML sm/mem/enc/dec).",
                       labels + (("engine", engine),), None if pct is None else round(pct / 100.0, 6))


HEALTH_HELP = {
    "exporter_sample_duration_seconds": ("gauge", "Duration of the last sysfs sample of a GPU."),
    "exporter_sample_errors_total": ("counter", "Samples that raised an error."),
    "exporter_proc_scan_duration_seconds": ("gauge", "Duration of the last /proc scan."),
    "exporter_proc_scans_total": ("counter", "Process scans run (full walks and watchlist refreshes)."),
    "exporter_proc_scans_cut_short_total": ("counter", "Process scans stopped by their time or PID budget."),
    "exporter_proc_scan_errors_total": ("counter", "Process scans that raised an error."),
    "exporter_websocket_clients": ("gauge", "Connected WebSocket clients."),
    "exporter_websocket_dropped_frames_total": ("counter", "Frames dropped for slow WebSocket clients."),
    "exporter_websocket_stuck_closed_total": ("counter", "WebSocket clients closed by the write timeout."),
    "exporter_websocket_refused_total": ("counter", "WebSocket upgrades refused at the client cap."),
    "exporter_alert_events_total": ("counter", "Alert state changes (firing, escalated, resolved)."),
    "exporter_alert_inbox_dropped_total": ("counter", "Samples the alert engine dropped (inbox full)."),
    "exporter_alert_webhook_sent_total": ("counter", "Alert webhook deliveries accepted (2xx)."),
    "exporter_alert_webhook_failed_total": ("counter", "Alert webhook deliveries given up after retries."),
    "exporter_alert_webhook_dropped_total": ("counter", "Alert webhook events dropped (queue full)."),
}


def _prom_health(writer, health):
    for (name, labels), value in sorted(health.items()):
        kind, help_text = HEALTH_HELP[name]
        writer.add(name, kind, help_text, labels, value)


def _prom_alerts(writer, gpus, alerts):
    for identity, metrics in gpus:
        full = compute_full_in_s((metrics or {}).get("vram_forecast"))
        writer.add("vram_full_seconds", "gauge", "Earliest time until VRAM is full at its "
                   "current growth (lower end of the forecast's range; only while it grows).",
                   (("gpu", identity["id"]),), full)
    for event in alerts or ():
        process = event.get("process")
        writer.add("alert_active", "gauge", "1 per active built-in alert (host rules: gpu=\"\"; "
                   "a process's rule: its pid).",
                   (("gpu", event["gpu_id"] or ""), ("alertname", event["rule"]),
                    ("severity", event["severity"])) + (
                        (("pid", process.get("pid")),) if process else ()), 1)


# -- the fleet from Prometheus: our own names read back, targets, history ---

# The fleet GPU keys read from Prometheus, and the host keys (stats/host keys).
FLEET_PROM_GPU_KEYS = ("gpu_busy_pct", "vram_used_bytes", "vram_total_bytes", "temp_c", "power_w",
                       "power_cap_w")
FLEET_PROM_INT_KEYS = ("vram_used_bytes", "vram_total_bytes", "cpu_count", "mem_used_bytes",
                       "mem_total_bytes", "processes")
# /api/fleet/history's metric=: every GPU stats key /metrics exports.
FLEET_HISTORY_METRICS = tuple(key for family in PROM_GPU_FAMILIES for key, _scale, _extra in family[3])
FLEET_PROM_GPU_FLAGS = (("throttled", "throttled"), ("processes", "processes"))
# The answers of one value per GPU (read with parse_prom_gpu_values).
FLEET_PROM_GPU_VALUES = FLEET_PROM_GPU_KEYS + ("throttled", "processes", "status")
# A poll reads only the hosts scraped since their last read (their
# amdgpu_build_info sample time says when), by their instance label; all of
# them at once when more than this share changed (federation: all at once).
FLEET_PROM_READ_ALL = 0.5
# ...and when the hosts' names make a longer matcher (it is in every selector, twice
# in one query; VictoriaMetrics refuses queries over 16 KiB by default)
FLEET_PROM_MATCHER_MAX = 6000
# ...and every 5 minutes anyway: a new server too old for amdgpu_build_info shows then
FLEET_PROM_READ_ALL_EVERY_S = 300.0
FLEET_PROM_GET_MAX = 4096           # a longer query is POSTed (a proxy may refuse long URLs)
# A host scraped since its last read but in none of the cut answers (another
# replica answered, a remote-write backend still storing the scrape) keeps its
# data and is asked again, until this many polls missed it: then taken as it is.
FLEET_PROM_UNANSWERED_POLLS = 2


def prom_gpu_selector(key):
    """A stats key -> (the series selector /metrics writes it as, its scale), or None."""
    for family, _kind, _help, series in PROM_GPU_FAMILIES:
        for series_key, scale, extra in series:
            if series_key == key:
                return PROM_PREFIX + family + prom_labels(extra), scale
    return None


def prom_host_selector(key):
    for family, _help, host_key, scale in PROM_HOST_FAMILIES:
        if host_key == key:
            return PROM_PREFIX + family, scale
    return None


def build_prom_fleet_queries(instances=None):
    """[(name, PromQL)]: one instant query per metric for the whole fleet, each
    cut down to the labels the fleet needs (smaller answers to parse); with
    instances (a set), every metric query selects only the series of those
    instances (`up` and the scrape times stay whole)."""
    only = "" if instances is None else prom_instance_matcher(instances)

    def sel(selector):
        return prom_with_matcher(selector, only)
    by_gpu = "max by (job, instance, gpu) (%s)"
    queries = [("up", "up"), ("build", "timestamp(%sbuild_info)" % PROM_PREFIX),
               ("gpu_info", "max by (job, instance, gpu, pci, vendor, uuid, name) (%s)"
                % sel(PROM_PREFIX + "gpu_info"))]
    queries += [(key, by_gpu % sel(prom_gpu_selector(key)[0])) for key in FLEET_PROM_GPU_KEYS]
    queries += [(name, by_gpu % sel(PROM_PREFIX + family)) for name, family in FLEET_PROM_GPU_FLAGS]
    # 0 active, 1 runtime-suspended, 2 lost (/metrics writes both flags together)
    queries.append(("status", by_gpu % ("%s + 2 * %s" % (sel(PROM_PREFIX + "runtime_suspended"),
                                                         sel(PROM_PREFIX + "gpu_lost")))))
    queries += [
        ("throttle_reasons", "max by (job, instance, gpu, reason) (%s)" % sel(PROM_PREFIX + "throttle_reason_active")),
        ("top_process", 'max by (job, instance, gpu, pid, name, %s) (topk by (job, instance, gpu) '
         '(1, %s))' % (", ".join(PROM_WHO_LABELS), sel(PROM_PREFIX + 'process_memory_bytes{pool="vram"}'))),
        ("alerts", "max by (job, instance, gpu, alertname, severity) (%s)" % sel(PROM_PREFIX + "alert_active"))]
    queries += [(key, "max by (job, instance) (%s)" % sel(prom_host_selector(key)[0]))
                for key in FLEET_HOST_KEYS]
    return queries


def prom_with_matcher(selector, matcher):
    """A series selector (name, optionally {labels}) with one more label matcher."""
    if not matcher:
        return selector
    return selector[:-1] + "," + matcher + "}" if selector.endswith("}") else selector + "{" + matcher + "}"


def prom_instance_matcher(instances):
    """instance=~"a|b": the instances as an alternation of RE2 literals (every
    regex metacharacter escaped; Prometheus anchors the match), in a PromQL string."""
    alternation = "|".join(re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value) for value in sorted(instances))
    return 'instance=~"%s"' % prom_escape(alternation)


def prom_scrape_stamps(build):
    """The "build" answer (timestamp(amdgpu_build_info)) -> {(job, instance):
    the sample time of its last scrape, s} (the latest of two versions' series)."""
    stamps = {}
    for labels, value, _ in build:
        key = (labels.get("job", ""), labels.get("instance", ""))
        if value is not None and (key not in stamps or value > stamps[key]):
            stamps[key] = value
    return stamps


def prom_fleet_to_read(stamps, last_read, kept):
    """The hosts a poll reads: ({(job, instance): scrape time now}, {...: the
    scrape time its data was read at}, the hosts kept from earlier polls) ->
    None (all: the first poll; over FLEET_PROM_READ_ALL of the hosts scraped
    since; or their instance matcher over FLEET_PROM_MATCHER_MAX bytes), else
    a set, maybe empty: the hosts scraped since their last read, and the kept
    hosts without amdgpu_build_info (an older server; or one that lost it)."""
    if not last_read:
        return None
    keys = set(key for key, at in stamps.items() if last_read.get(key) != at)
    if len(keys) > FLEET_PROM_READ_ALL * len(stamps):
        return None
    keys.update(key for key in kept if key not in stamps)
    if keys and len(prom_instance_matcher(set(instance for _job, instance in keys))) > FLEET_PROM_MATCHER_MAX:
        return None
    return keys


def prom_answered_hosts(answers):
    """{(job, instance)} with a GPU (amdgpu_gpu_info) or a host series in these answers."""
    out = set()
    for name in ("gpu_info",) + FLEET_HOST_KEYS:
        out.update((l.get("job", ""), l.get("instance", "")) for l, _, _ in answers.get(name, ()))
    return out


def _prom_scaled(key, value, scale):
    if value is None:
        return None
    value = round(value / scale, 6) if scale != 1 else value
    return int(value) if key in FLEET_PROM_INT_KEYS else value


def compute_prom_fleet(answers):
    """{query name: [(labels, value, at_s)]} (build_prom_fleet_queries' names)
    -> ({(job, instance): host data}, {(job, instance): up value}). A host is
    an instance that exports amdgpu_build_info or amdgpu_gpu_info now."""
    up = {(l.get("job", ""), l.get("instance", "")): v for l, v, _ in answers.get("up", ())}
    hosts = {}

    def host(labels):
        key = (labels.get("job", ""), labels.get("instance", ""))
        if key not in hosts:
            hosts[key] = {"version": None, "last_seen_s": None, "host": None, "gpus": {}, "alerts": []}
        return hosts[key]
    for labels, value, _ in answers.get("build", ()):
        entry = host(labels)
        entry["version"], entry["last_seen_s"] = _prom_text(labels, "version"), value
    index = {}      # (job, instance, gpu) -> (gpu entry, host): one lookup per series
    for labels, _, _ in answers.get("gpu_info", ()):
        entry = host(labels)
        gpu = _prom_gpu_entry(entry, labels)
        if gpu is not None:
            index[(labels.get("job", ""), labels.get("instance", ""), labels.get("gpu", ""))] = (gpu, entry)
    for key in FLEET_HOST_KEYS:
        scale = prom_host_selector(key)[1]
        for labels, value, _ in answers.get(key, ()):
            entry = host(labels)
            if entry["host"] is None:
                entry["host"] = dict.fromkeys(FLEET_HOST_KEYS)
            entry["host"][key] = _prom_scaled(key, value, scale)
    _prom_fill_gpus(hosts, answers, index)
    return hosts, up


def _prom_text(labels, key):
    """A label's value as a fleet string: None when empty, cut to FLEET_TEXT_MAX
    (an exporter's labels are as untrusted as a peer's answer)."""
    value = labels.get(key)
    return value[:FLEET_TEXT_MAX] if value else None


def _prom_gpu_entry(host, labels):
    """The host's GPU of these labels, made on first sight; None past FLEET_MAX_GPUS."""
    gpu_id = (labels.get("gpu") or "")[:FLEET_TEXT_MAX]
    gpu = host["gpus"].get(gpu_id)
    if gpu is None:
        if len(host["gpus"]) >= FLEET_MAX_GPUS:
            return None
        vendor = _prom_text(labels, "vendor")
        gpu = host["gpus"][gpu_id] = {
            "id": gpu_id, "name": _prom_text(labels, "name"), "vendor": vendor,
            "vendor_label": VENDOR_LABELS.get(vendor, vendor), "uuid": _prom_text(labels, "uuid"),
            "pci": _prom_text(labels, "pci"), "gpu_busy_pct": None, "vram_used_bytes": None,
            "vram_total_bytes": None, "temp_c": None, "power_w": None, "power_cap_w": None,
            "throttle_reasons": None, "runtime_status": None, "top_process": None,
            "processes": None, "alert": None, "_flags": {}}
    return gpu


def _prom_gpus_of(answers, name, hosts, index):
    """[(labels, value, gpu, host)] of one per-GPU answer with labels to read."""
    out = []
    for labels, value, _ in answers.get(name, ()):
        found = _prom_gpu_at(hosts, index, (labels.get("job", ""), labels.get("instance", ""),
                                            labels.get("gpu", "")), labels)
        if found is not None:
            out.append((labels, value, found[0], found[1]))
    return out


def _prom_gpu_at(hosts, index, key, labels=None):
    """index[(job, instance, gpu)] -> (gpu, host); a GPU with a value but no
    gpu_info series still gets its entry. None: no such host, or too many GPUs."""
    found = index.get(key)
    if found is None:
        host = hosts.get(key[:2])
        gpu = None if host is None else _prom_gpu_entry(host, labels or {"gpu": key[2]})
        if gpu is None:
            return None
        found = index[key] = (gpu, host)
    return found


def _prom_gpu_values(answers, name):
    """{(job, instance, gpu): value} of one answer (parse_prom_gpu_values' or
    parse_prom_vector's form)."""
    answer = answers.get(name, ())
    if isinstance(answer, dict):
        return answer
    return dict(((l.get("job", ""), l.get("instance", ""), l.get("gpu", "")), v) for l, v, _ in answer)


def _prom_fill_gpus(hosts, answers, index):
    """The per-GPU answers into the hosts' GPUs; then each GPU's derived keys."""
    lookup = index.get
    for key in FLEET_PROM_GPU_VALUES:
        flag = key not in FLEET_PROM_GPU_KEYS          # throttled, processes, status
        scale, integral = 1 if flag else prom_gpu_selector(key)[1], key in FLEET_PROM_INT_KEYS
        for gpu_key, value in _prom_gpu_values(answers, key).items():
            found = lookup(gpu_key) or _prom_gpu_at(hosts, index, gpu_key)
            if found is None:
                continue
            if flag:
                found[0]["_flags"][key] = value
                continue
            if value is not None:
                if scale != 1:
                    value = round(value / scale, 6)
                if integral:
                    value = int(value)
            found[0][key] = value
    for labels, value, gpu, _host in _prom_gpus_of(answers, "throttle_reasons", hosts, index):
        if value:
            gpu["_flags"].setdefault("reasons", []).append((labels.get("reason") or "")[:FLEET_TEXT_MAX])
    for labels, value, gpu, _host in _prom_gpus_of(answers, "top_process", hosts, index):
        gpu["top_process"] = {"pid": int(labels["pid"]) if labels.get("pid", "").isdigit() else None,
                              "name": _prom_text(labels, "name"), "user": None,
                              "vram_bytes": None if value is None else int(value), "gpu_pct": None,
                              "who": prom_who_label(labels)}
    for labels, value, gpu, host in _prom_gpus_of(answers, "alerts", hosts, index):
        _prom_alert(host, gpu if labels.get("gpu") else None, labels, value)
    for host in hosts.values():
        for gpu in host["gpus"].values():
            _prom_gpu_flags(gpu, gpu.pop("_flags"))
        host["gpus"] = sorted(host["gpus"].values(), key=lambda g: g["id"])


def _prom_alert(host, gpu, labels, value):
    if not value:
        return
    severity = _prom_text(labels, "severity")
    if len(host["alerts"]) < FLEET_MAX_ALERTS:
        host["alerts"].append({"rule": _prom_text(labels, "alertname"), "gpu_id": _prom_text(labels, "gpu"),
                               "severity": severity, "summary": None, "started": None})
    if gpu is not None and severity in ("warning", "critical") and gpu["alert"] != "critical":
        gpu["alert"] = severity


def _prom_gpu_flags(gpu, flags):
    reasons = sorted(flags.get("reasons") or ())
    gpu["throttle_reasons"] = reasons if reasons or flags.get("throttled") is not None else None
    status = flags.get("status")
    if status is not None:
        gpu["runtime_status"] = "lost" if status >= 2 else "suspended" if status >= 1 else "active"
    if flags.get("processes") is not None:
        gpu["processes"] = int(flags["processes"])


def prom_host_names(keys):
    """{(job, instance): the host's name}: the instance, or 'instance (job)'
    where one instance is scraped by several jobs."""
    counts = collections.Counter(instance for _job, instance in keys)
    return {(job, instance): instance if counts[instance] == 1 else "%s (%s)" % (instance, job)
            for job, instance in keys}


def build_prom_fleet_host(name, state, last_seen_s, error, data):
    """A fleet host entry (source "prometheus", no page: it is no configured peer)."""
    data = data or {}
    return build_fleet_host(name, "prometheus", None, state, last_seen_s, error, data.get("version"),
                            data.get("host"), data.get("gpus") or [], data.get("alerts") or [])


def build_fleet_targets(peers):
    """GET /api/fleet/targets: the peers as Prometheus http_sd target groups,
    one per scheme and path prefix ([] without peers)."""
    groups = collections.OrderedDict()
    for peer in peers:
        parts = urlsplit(peer.url)
        labels = (parts.scheme, parts.path + "/metrics")
        groups.setdefault(labels, []).append(parts.netloc)
    return [{"targets": targets, "labels": {"__scheme__": scheme, "__metrics_path__": path}}
            for (scheme, path), targets in groups.items()]


def parse_fleet_history_query(query, now_s, metrics):
    """?range=|from=&to= &step= &metric= of /api/fleet/history -> (HistoryQuery, metric)."""
    params = parse_query_string(query, ("from", "to", "range", "step", "metric"))
    history = parse_history_query(urlencode([(k, v) for k, v in params.items() if k != "metric"]),
                                  now_s)
    metric = params.get("metric", "gpu_busy_pct")
    if metric not in metrics:
        raise QueryError("parameter 'metric': expected a GPU stats key such as gpu_busy_pct, "
                         "power_w, temp_c or vram_used_bytes")
    step_s = history.step_s or max(1.0, math.ceil((history.to_s - history.from_s)
                                                  / FLEET_PROM_HISTORY_POINTS))
    if (history.to_s - history.from_s) / step_s > FLEET_PROM_MAX_POINTS:
        raise QueryError("parameter 'step': at most %d points per series" % FLEET_PROM_MAX_POINTS)
    return history._replace(step_s=step_s), metric


def build_fleet_history_answer(metric, start_s, step_s, points, series):
    """GET /api/fleet/history: {"<host>/<gpu id>": [value or None per ts]}."""
    return {"source": "prometheus", "metric": metric, "step_s": step_s,
            "ts": [int(round((start_s + i * step_s) * 1000)) for i in range(points)],
            "series": series}


# -- debug pages (/debug/threads, /debug/memory) ----------------------------

def format_thread_stacks(frames, threads):
    """sys._current_frames() + threading.enumerate() -> one text block per thread."""
    names = dict((t.ident, t.name) for t in threads)
    out = []
    for ident, frame in sorted(frames.items(), key=lambda item: names.get(item[0], "")):
        out.append("--- thread %s (%s)" % (names.get(ident, "?"), ident))
        out.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    return "\n".join(out) + "\n"


def format_memory_top(statistics, limit=30):
    """tracemalloc statistics -> the top allocation sites as text."""
    total = sum(stat.size for stat in statistics)
    out = ["total traced: %d bytes in %d sites" % (total, len(statistics))]
    out.extend(str(stat) for stat in statistics[:limit])
    return "\n".join(out) + "\n"


# -- the page's ES modules from APP_VENDOR_DIR (CDN URL rewriting) ----------

CDN_URL_RE = re.compile(
    r"https://cdn\.jsdelivr\.net/npm/((?:@[a-z0-9._-]+/)?[a-z0-9._-]+)@([0-9][0-9A-Za-z.+-]*)/"
    r"([A-Za-z0-9._/-]+)")
VENDOR_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def rewrite_cdn_urls(page_html):
    """Air-gapped mode: 'https://cdn.jsdelivr.net/npm/PKG@VER/PATH' -> './vendor/PKG/PATH'
    (relative to the page, so it works under a hub's /hosts/{name}/ too).

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
        return "." + url
    return CDN_URL_RE.sub(local, page_html), files


VENDOR_PREFIX = "~/atw-vendor"      # the folder the air-gapped commands install into


def parse_page_pins(page_html):
    """The page's CDN URLs -> {package: pinned version}, in the page's order."""
    pins = collections.OrderedDict()
    for package, version, _ in rewrite_cdn_urls(page_html)[1].values():
        pins.setdefault(package, version)
    return pins


def format_vendor_commands(pins):
    """{package: version} -> (npm install line, start line): the two commands
    that serve the page's modules from this server (browsers without internet).
    The page's fallback, the README and the start-up hint show exactly these."""
    install = "npm install --prefix %s %s" % (
        VENDOR_PREFIX, " ".join("%s@%s" % item for item in pins.items()))
    start = "APP_VENDOR_DIR=%s/node_modules python3 amdgpu_top_web.py" % VENDOR_PREFIX
    return install, start


# -- the plain view (/plain: tables, no JavaScript) -------------------------

PLAIN_ROWS = (
    ("GPU busy", "gpu_busy_pct", "%"), ("Memory busy", "mem_busy_pct", "%"),
    ("Shader clock", "sclk_mhz", " MHz"), ("Memory clock", "mclk_mhz", " MHz"),
    ("SM clock", "sm_clock_mhz", " MHz"),
    ("Temperature", "temp_c", " °C"), ("Junction temperature", "temp_junction_c", " °C"),
    ("Memory temperature", "temp_mem_c", " °C"), ("Fan", "fan_rpm", " RPM"),
    ("Fan duty", "fan_pct", "%"), ("Power", "power_w", " W"), ("Power cap", "power_cap_w", " W"),
    ("VRAM used", "vram_used_bytes", "B"), ("VRAM total", "vram_total_bytes", "B"),
    ("VRAM reserved", "vram_reserved_bytes", "B"),
    ("GTT used", "gtt_used_bytes", "B"), ("GTT total", "gtt_total_bytes", "B"),
    ("PCIe generation", "pcie_gen", "gen"), ("PCIe width", "pcie_width", " lanes"),
    ("Throttle reasons", "throttle_reasons", "list"), ("Performance state", "pstate", "P"),
    ("Encoder", "enc_pct", "%"), ("Decoder", "dec_pct", "%"),
    ("Energy", "energy_j", "energy"),
    ("Runtime PM", "runtime_status", ""),
)


def fleet_host_summary(host):
    """(GPUs busy, idle, down, power W or None) of one fleet host, counted as
    the fleet's totals count them (compute_fleet_totals: every GPU of a host
    not up, and a lost one, is down; power sums the known values of the rest)."""
    totals = compute_fleet_totals([host])
    return totals["gpus_busy"], totals["gpus_idle"], totals["gpus_down"], totals["power_w"]


def format_fleet_gpu(gpu):
    """One GPU of the fleet in a compact cell: id, busy, temperature, power,
    VRAM, the top process (user), the alert."""
    parts = [sanitize_text(gpu["id"] or "?"), format_value(gpu["gpu_busy_pct"], "%"),
             format_value(gpu["temp_c"], " °C"), format_value(gpu["power_w"], " W"),
             "%s / %s" % (format_bytes(gpu["vram_used_bytes"]), format_bytes(gpu["vram_total_bytes"]))]
    top = gpu.get("top_process") or {}
    if top.get("name"):
        parts.append("%s (%s%s)" % (sanitize_text(top["name"])[:24], sanitize_text(top.get("user") or "?"),
                                    ", " + sanitize_text(top["who"])[:40] if top.get("who") else ""))
    if gpu.get("alert"):
        parts.append("[%s]" % gpu["alert"])
    return "  ".join(parts)


def format_fleet_host(host):
    """One fleet host's cells: name, state (and why), last seen, GPUs busy / idle / down, power."""
    busy, idle, down, power = fleet_host_summary(host)
    state = host["state"] + (" (%s)" % sanitize_text(host["error"]) if host["error"] else "")
    return [sanitize_text(host["name"]), state, host["last_seen"] or "never",
            "%d / %d / %d" % (busy, idle, down), format_value(power, " W")]


def format_fleet_totals(fleet):
    totals = fleet["totals"]
    return "%d hosts (%d up, %d not)  %d GPUs: %d busy, %d idle, %d down  power %s%s" % (
        totals["hosts"], totals["hosts_up"], totals["hosts_down"], totals["gpus"],
        totals["gpus_busy"], totals["gpus_idle"], totals["gpus_down"],
        format_value(totals["power_w"], " W"),
        "  (peer list: %s)" % fleet["error"] if fleet.get("error") else "")


def _plain_fleet(fleet):
    """A hub's fleet: one row per host, a compact cell per GPU."""
    esc = html.escape
    rows = ["<h2>Fleet</h2><p>%s</p>" % esc(format_fleet_totals(fleet)),
            "<table border=1><thead><tr><th>host</th><th>state</th><th>last seen</th>"
            "<th>GPUs busy / idle / down</th><th>power</th><th>GPUs</th></tr></thead><tbody>"]
    for host in fleet["hosts"]:
        cells = [esc(cell) for cell in format_fleet_host(host)]
        if host.get("page"):
            cells[0] = "<a href=\"%s\">%s</a>" % (esc(host["page"]), cells[0])
        cells.append("<br>".join(esc(format_fleet_gpu(gpu)) for gpu in host["gpus"]))
        rows.append("<tr>%s</tr>" % "".join("<td>%s</td>" % cell for cell in cells))
    rows.append("</tbody></table>")
    return rows


def render_plain(gpus, procs, refresh_s, hint=None, page=True, host=None, alerts=None,
                 fleet=None):
    """The no-JavaScript view: the host, every GPU and its processes as HTML tables.

    gpus: [(identity dict, metrics dict or None)]; procs: {gpu id: procs message};
    host: the host dict (HOST_KEYS) or None before its first sample.
    Every value goes through html.escape (process names are untrusted);
    page=False (index.html missing) leaves out the link to the dashboard;
    alerts: the active alert events (None: alerts are off); fleet: a hub's
    fleet message, shown first (None: not a hub).
    """
    esc = html.escape
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           "<meta http-equiv=refresh content=%d>" % max(1, int(math.ceil(refresh_s))),
           "<meta name=viewport content='width=device-width, initial-scale=1'>",
           "<title>amdgpu_top_web (plain)</title></head><body>",
           "<h1>amdgpu_top_web</h1>"]
    if hint:
        out.append("<p>%s</p>" % esc(hint))
    if fleet is not None:
        out.extend(_plain_fleet(fleet))
    if host:
        out.extend(_plain_host(host))
    if not gpus:
        out.append("<p>No GPU found. Run with --demo to see synthetic GPUs.</p>")
    out.extend(_plain_alerts(alerts))
    for identity, metrics in gpus:
        out.extend(_plain_gpu(identity, metrics or {}, procs.get(identity["id"])))
    if page:
        out.append("<p><a href=/>Full dashboard</a> (needs JavaScript)</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _plain_host(host):
    """One compact row: CPU, load, RAM, swap, memory pressure."""
    cells = (("CPU", "%s of %s CPUs" % (format_value(host["cpu_busy_pct"], "%"),
                                         format_value(host["cpu_count"], "%d"))),
             ("Load 1 / 5 / 15 min", " / ".join(format_value(host[k], "load")
                                                for k in ("load1", "load5", "load15"))),
             ("RAM used / total", "%s / %s" % (format_bytes(host["mem_used_bytes"]),
                                                format_bytes(host["mem_total_bytes"]))),
             ("Swap used / total", "%s / %s" % (format_bytes(host["swap_used_bytes"]),
                                                 format_bytes(host["swap_total_bytes"]))),
             ("Memory pressure some / full (10 s)", "%s / %s" % (
                 format_value(host["mem_pressure_some_avg10"], "%"),
                 format_value(host["mem_pressure_full_avg10"], "%"))))
    esc = html.escape
    return ["<h2>Host</h2><table border=1><thead><tr>%s</tr></thead>" % "".join(
                "<th>%s</th>" % esc(label) for label, _ in cells),
            "<tbody><tr>%s</tr></tbody></table>" % "".join(
                "<td>%s</td>" % esc(plain_nowrap(value)) for _, value in cells)]


def _plain_gpu(identity, metrics, procs):
    esc = html.escape
    title = "%s \u2014 %s [%s] (%s)%s" % (identity["id"], identity["name"],
                                         VENDOR_LABELS.get(identity["vendor"], identity["vendor"]),
                                         identity["pci"], " [demo]" if identity.get("demo") else "")
    rows = ["<h2>%s</h2>" % esc(title)]
    facts = format_identity_facts(identity)
    if facts:
        rows.append("<p>%s</p>" % esc(facts))
    rows.append("<table border=1><tbody>")
    for label, key, unit in PLAIN_ROWS:
        rows.append("<tr><th>%s</th><td>%s</td></tr>" % (label, esc(plain_nowrap(format_value(metrics.get(key), unit)))))
    if "vram_forecast" in metrics:
        rows.append("<tr><th>VRAM forecast</th><td>%s</td></tr>" % esc(plain_nowrap(
            plain_forecast(metrics.get("vram_forecast"), procs))))
    rows.extend("<tr><th>%s</th><td>%s</td></tr>" % (esc(label), esc(value))
                for label, value in plain_nvidia_facts(metrics))
    rows.append("</tbody></table>")
    rows.extend(_plain_procs(procs))
    return rows


def plain_nvidia_facts(metrics):
    """[(label, text)]: the ECC counts and each MIG instance, where known. Under
    MIG, NVML gives no utilisation for the GPU or its instances: said once."""
    facts = []
    ecc = format_ecc(metrics)
    if ecc:
        facts.append(("Memory ECC errors", ecc))
    for instance in metrics.get("mig") or ():
        facts.append(("MIG instance %d" % instance["index"], format_mig_instance(instance)))
    if metrics.get("mig") is not None:
        facts.append(("GPU busy under MIG", MIG_BUSY_NOTE))
    return facts


def plain_forecast(forecast, procs):
    """The VRAM forecast row: the words of format_forecast, its process named."""
    if not forecast:
        return "\u2014"
    text = format_forecast(forecast)
    pid = forecast.get("driver_pid")
    names = dict((p["pid"], p.get("name")) for p in (procs or {}).get("processes") or ())
    if pid is not None and names.get(pid):
        text = text.replace("mostly pid %d" % pid, "mostly %s (%d)" % (names[pid], pid))
    return text


def _plain_procs(procs):
    esc = html.escape
    if not procs or procs.get("processes") is None:
        return ["<p>Processes: not available.</p>"]
    rows = ["<h3>Processes</h3><table border=1><thead><tr><th>PID</th><th>User</th><th>Name</th>"
            "<th>VRAM</th><th>GTT</th><th>GPU ms/s</th><th>CPU</th><th>RSS</th><th>Started</th>"
            "<th>Elapsed</th><th>Flags</th><th>Who</th><th>Command</th></tr></thead><tbody>"]
    for proc in procs["processes"]:
        rows.append("<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
                    "<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
                    "<td>%s</td></tr>" % (
                        proc["pid"], esc(str(proc.get("user") or proc.get("uid") or "?")),
                        esc(proc.get("name") or "?"), esc(plain_nowrap(format_bytes(proc.get("vram_bytes")))),
                        esc(plain_nowrap(format_bytes(proc.get("gtt_bytes")))),
                        esc(format_value(proc.get("gpu_time_ms_per_s"), "")),
                        esc(format_value(proc.get("cpu_pct"), "%")),
                        esc(plain_nowrap(format_bytes(proc.get("rss_bytes")))),
                        esc(proc.get("started") or "\u2014"), esc(plain_nowrap(format_elapsed(proc.get("elapsed_s")))),
                        esc(plain_flags(proc)), esc(format_who(proc)),
                        esc((proc.get("cmd") or "")[:200])))
    rows.append("</tbody></table>")
    note = plain_visibility_note(procs.get("visibility"))
    if note:
        rows.append("<p>%s</p>" % esc(note))
    return rows


def format_who(proc):
    """Every owner a process row names, most specific first ("pod inference/llama
    (container llama-server); unit cri-containerd-….scope"); "" when none."""
    parts, k8s, slurm = [], proc.get("k8s"), proc.get("slurm")
    if k8s:
        parts.append("pod %s/%s" % (k8s.get("namespace") or "?", k8s.get("pod") or k8s["pod_uid"])
                     + (" (container %s)" % k8s["container"] if k8s.get("container") else ""))
    if slurm:
        parts.append("Slurm job %d" % slurm["job"]
                     + (" step %s" % slurm["step"] if slurm.get("step") else ""))
    if proc.get("container_name"):
        parts.append("container %s (%s)" % (proc["container_name"], proc.get("container") or "?"))
    if proc.get("unit"):
        parts.append("unit " + proc["unit"])
    return "; ".join(parts)


def plain_flags(proc):
    """kfd / shared / container / type / not-visible, as short words."""
    flags = []
    if proc.get("kfd"):
        flags.append("ROCm (kfd)")
    if proc.get("shared"):
        flags.append("shared")
    if proc.get("type"):
        flags.append(proc["type"])
    if proc.get("container"):
        flags.append("container " + proc["container"])
    if proc.get("visible") is False:
        flags.append("not in this PID namespace")
    if proc.get("mig"):
        flags.append(format_proc_mig(proc["mig"]))
    return ", ".join(flags)


def plain_visibility_note(visibility):
    """What the monitor cannot see, in one sentence (None when it sees all)."""
    if not visibility:
        return None
    notes = []
    if visibility.get("pid_namespace_separate"):
        notes.append("only this container's processes are visible (run with --pid=host)")
    if visibility.get("root") is False:
        notes.append("other users' processes are hidden (not running as root)")
    if visibility.get("hidepid"):
        notes.append("/proc is mounted with hidepid=%s" % visibility["hidepid"])
    if visibility.get("unreadable_pids"):
        notes.append("%d processes could not be read" % visibility["unreadable_pids"])
    return ("Not everything is visible: " + "; ".join(notes) + ".") if notes else None


def _plain_alerts(alerts):
    if alerts is None:
        return []
    if not alerts:
        return ["<p>No active alerts.</p>"]
    rows = ["<h2>Active alerts</h2>", "<table border=1><thead><tr><th>severity</th><th>rule</th>"
            "<th>GPU</th><th>since</th><th>summary</th></tr></thead><tbody>"]
    for event in alerts:
        rows.append("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % tuple(
            html.escape(str(event.get(k) or "")) for k in ("severity", "rule", "gpu_id", "started",
                                                           "summary")))
    rows.append("</tbody></table>")
    return rows


# ---------------------------------------------------------------------------
# 7. Readers: thin I/O (path -> text or None), /proc, NVML
# ---------------------------------------------------------------------------

# -- files: whole reads, kept fds (pread), directory watches ----------------

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
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns)

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

    def __init__(self, path, watch=None, size=SYSFS_READ_SIZE):
        self.path = path
        self.size = size
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
            return os.pread(self.fd, self.size, 0)
        except OSError as exc:
            if exc.errno in REOPEN_ERRNOS:
                self.close()
                self._retry_at = 0.0
                if self._open(now):
                    return self._read_once()
            return None

    def _read_once(self):
        try:
            return os.pread(self.fd, self.size, 0)
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


# -- DRM cards, hwmon dirs and names ----------------------------------------

CARD_RE = re.compile(r"^card[0-9]+$")


def find_drm_cards(sysfs_root):
    """-> [(card name, device dir)] for class/drm/cardN (connectors like card1-DP-1 skipped)."""
    base = os.path.join(sysfs_root, "class", "drm")
    return [(name, os.path.join(base, name, "device"))
            for name in list_dir(base) if CARD_RE.match(name)]


def find_hwmon_dir(device_dir, chips=(AMD_DRIVER,)):
    """The device's hwmon/hwmonN whose `name` is one of chips (N is arbitrary)."""
    base = os.path.join(device_dir, "hwmon")
    for name in list_dir(base):
        path = os.path.join(base, name)
        if clean_text(read_bytes(os.path.join(path, "name"), 256)) in chips:
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

    def resolve(self, product_name, vendor_id, device_id, revision, vendor_label="AMD"):
        if product_name:
            return product_name
        name = None
        if revision and vendor_label == "AMD":
            name = parse_amdgpu_ids(self._text(NAME_FILES[0]), device_id, revision)
        for rel in NAME_FILES[1:]:
            name = name or parse_pci_ids(self._text(rel), vendor_id, device_id, vendor_label)
        return name or "%s GPU %s:%s" % (vendor_label, vendor_id.lower(), device_id.lower())


# -- /proc: fd-relative reads, process meta and start times -----------------

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_O_FILE = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def read_at(dir_fd, rel_path, limit):
    """Up to limit bytes of rel_path under dir_fd (one read: procfs seq files
    return a whole small record at once); None on any OSError."""
    try:
        fd = os.open(rel_path, _O_FILE, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text_at(dir_fd, rel_path, limit):
    data = read_at(dir_fd, rel_path, limit)
    return None if data is None else data.decode("utf-8", "replace")


def readlink_at(dir_fd, rel_path):
    try:
        return os.readlink(rel_path, dir_fd=dir_fd)
    except OSError:
        return None


def open_dir_at(dir_fd, rel_path):
    """Directory fd, or the OSError (callers tell ENOENT/ESRCH from EACCES)."""
    try:
        return os.open(rel_path, _O_DIR, dir_fd=dir_fd)
    except OSError as exc:
        return exc


def stat_at(dir_fd, rel_path):
    """stat() following links (never opens the target); None on OSError."""
    try:
        return os.stat(rel_path, dir_fd=dir_fd)
    except OSError:
        return None


def read_user_name(uid):
    """pwd lookup (may hit NSS); the scanner caches it per uid."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def read_sysconf(name, default):
    """os.sysconf(name) (SC_CLK_TCK, SC_PAGE_SIZE), default where unknown."""
    try:
        value = os.sysconf(name)
    except (ValueError, OSError):
        return default
    return value if value > 0 else default


def read_boot_s(proc_root):
    """Boot time (epoch s) from the btime line of <proc_root>/stat, or None."""
    return parse_proc_btime(read_text(os.path.join(proc_root, "stat"), PROC_BTIME_READ_LIMIT))


class ProcStartClock(object):
    """Process start times as wall clock: boot time and clock ticks read
    once; stamp() gives a row's started (ISO 8601 UTC) and elapsed_s."""

    def __init__(self, proc_root, clk_tck=None, wall_clock=time.time):
        self.boot_s = read_boot_s(proc_root)
        self.clk_tck = clk_tck or read_sysconf("SC_CLK_TCK", 100)
        self.wall_clock = wall_clock

    def times(self, start_ticks, now_s=None):
        """{"started", "elapsed_s"} of a process started start_ticks after boot."""
        return compute_proc_times(compute_proc_start_s(start_ticks, self.boot_s, self.clk_tck),
                                  self.wall_clock() if now_s is None else now_s)


def read_proc_meta(procfd, pid, users):
    """cmd (redacted), uid and user of a PID under a /proc dir fd; users caches
    uid -> name (NSS can be slow). Its cgroup: ProcEnricher.who."""
    cmd = read_at(procfd, "%d/cmdline" % pid, CMDLINE_READ_LIMIT) or b""
    uid = parse_status_uid(read_text_at(procfd, "%d/status" % pid, PROC_STATUS_READ_LIMIT))
    if uid is not None and uid not in users:
        users[uid] = read_user_name(uid) or str(uid)
    return {"cmd": redact_cmdline(cmd, CMD_MAX_LEN), "uid": uid,
            "user": users.get(uid) if uid is not None else None}


def read_proc_stat_at(procfd, pid):
    """ProcStatLine of <pid>/stat under a /proc dir fd (comm, start_time, CPU
    ticks, RSS pages); NO_PROC_STAT (start_time None) if gone or torn."""
    text = read_text_at(procfd, "%d/stat" % pid, PROC_STAT_READ_LIMIT)
    return parse_proc_stat_line(text) if text else NO_PROC_STAT


# -- NVIDIA: the NVML library through ctypes --------------------------------

class NvmlLibrary(object):
    """libnvidia-ml loaded with ctypes. Symbols are bound by their versioned
    names (nvml.h only #defines nvmlInit to nvmlInit_v2 at compile time), each
    with restype and argtypes so a 64-bit argument is never truncated; a symbol
    the library lacks is probed once and remembered as None. NVML is
    thread-safe (nvml.h), so samplers call it concurrently."""

    def __init__(self, path):
        self.path = path
        self.lib = ctypes.CDLL(path)          # OSError when absent: the caller decides
        self._functions = {}
        self._initialised = False

    def function(self, name, *argtypes):
        """The bound symbol, or None when this library does not export it."""
        if name not in self._functions:
            try:
                fn = getattr(self.lib, name)
            except AttributeError:
                fn = None
            else:
                fn.restype = ctypes.c_int
                fn.argtypes = list(argtypes)
            self._functions[name] = fn
        return self._functions[name]

    def has(self, name):
        """Whether the library exports name (probing alone, nothing bound)."""
        return hasattr(self.lib, name)

    def unchecked(self, name):
        """A separate pointer to name without argtypes (returns int), for calls
        whose every argument is already a ctypes object of the C type; None
        when the library lacks it."""
        if not self.has(name):
            return None
        return self.lib._FuncPtr((name, self.lib))

    def init(self):
        """nvmlInit_v2 -> its nvmlReturn_t (0 on success)."""
        fn = self.function("nvmlInit_v2")
        if fn is None:
            return NVML_ERROR_FUNCTION_NOT_FOUND
        rc = fn()
        self._initialised = rc == NVML_SUCCESS
        return rc

    def shutdown(self):
        fn = self.function("nvmlShutdown")
        if self._initialised and fn is not None:
            self._initialised = False
            fn()

    def error_string(self, rc):
        fn = self.function("nvmlErrorString", ctypes.c_int)
        if fn is None:
            return "error %d" % rc
        fn.restype = ctypes.c_char_p
        text = fn(rc)
        return text.decode("utf-8", "replace") if text else "error %d" % rc

    def text(self, name, handle, size):
        """A char-buffer query (name, UUID): str, or None when refused."""
        fn = self.function(name, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint)
        if fn is None:
            return None
        buf = ctypes.create_string_buffer(size)
        if fn(handle, buf, size) != NVML_SUCCESS:
            return None
        return buf.value.decode("utf-8", "replace") or None

    def system_text(self, name, size):
        """A system char-buffer query (the driver version): str, or None."""
        fn = self.function(name, ctypes.c_char_p, ctypes.c_uint)
        buf = ctypes.create_string_buffer(size)
        if fn is None or fn(buf, size) != NVML_SUCCESS:
            return None
        return buf.value.decode("utf-8", "replace") or None

    def uint(self, name, *args):
        """A query whose last argument is one unsigned int out (a clock, the
        CUDA version), every other argument a ctypes object: int, or None."""
        fn, out = self.unchecked(name), ctypes.c_uint()
        if fn is None or fn(*(args + (ctypes.byref(out),))) != NVML_SUCCESS:
            return None
        return out.value


def load_nvml(path):
    """(NvmlLibrary, None) with NVML initialised, or (None, why not)."""
    if ctypes is None:
        return None, "this Python has no ctypes"
    try:
        nvml = NvmlLibrary(path)
    except OSError as exc:
        return None, str(exc)
    rc = nvml.init()
    if rc != NVML_SUCCESS:
        return None, "nvmlInit_v2: %s (%d)" % (nvml.error_string(rc), rc)
    return nvml, None


# -- the thread base (every long-lived thread stops on one Event) and a sink's inbox --

class StoppableThread(threading.Thread):
    """A named daemon thread whose loop waits in pause() (or on an Event), so
    stop() is immediate. pause() waits on a bare lock that stop() releases:
    half the CPU of Event.wait per wake-up (no Condition, no new lock), which
    is most of an idle sampler's cost at 4 Hz."""

    def __init__(self, name):
        threading.Thread.__init__(self, name=name)
        self.daemon = True
        self.stopping = threading.Event()
        self._stop_gate = threading.Lock()
        self._stop_gate.acquire()

    def stop(self):
        self.stopping.set()
        try:
            self._stop_gate.release()
        except RuntimeError:                # stopped before, and no pause took the gate since
            pass

    def pause(self, timeout_s):
        """Sleep timeout_s or until stop(); -> stopping.is_set()."""
        if not self.stopping.is_set():
            self._stop_gate.acquire(True, max(0.0, timeout_s))   # taken only once stopped
        return self.stopping.is_set()


class Inbox(object):
    """A sink thread's inbox (history writer, alert engine, webhook sender):
    put() never blocks; when full the oldest item is dropped, counted in
    `dropped` and told to on_drop(); `ready` is set by each put (and by
    wake(), e.g. on stop) for the thread that waits on it."""

    def __init__(self, maxlen, on_drop=None):
        self.maxlen, self.on_drop, self.dropped = maxlen, on_drop, 0
        self._items = collections.deque(maxlen=maxlen)
        self.ready = threading.Event()

    def __len__(self):
        return len(self._items)

    def put(self, item, wake=True):
        """wake=False leaves the thread asleep until its next timed pass."""
        if len(self._items) == self.maxlen:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
        self._items.append(item)
        if wake:
            self.ready.set()

    def wait(self, timeout_s):
        """Until an item (or a wake) comes, at most timeout_s; then unset `ready`."""
        self.ready.wait(timeout_s)
        self.ready.clear()

    def wake(self):
        self.ready.set()

    def drain(self, stopping=None):
        """The items, oldest first, until none is left (or `stopping` is set);
        items put meanwhile come too."""
        while stopping is None or not stopping.is_set():
            try:
                item = self._items.popleft()
            except IndexError:
                return
            yield item

    def clear(self):
        self._items.clear()


# ---------------------------------------------------------------------------
# 8. Process top: the fdinfo scanner (AMD and Intel GPUs; KFD VRAM)
# ---------------------------------------------------------------------------

# -- /proc enrichment of a process row (stat, CPU, user, command line, container) --

def make_who_names(config):
    """The WhoNames of this config (APP_DOCKER_ROOT, APP_CONTAINERS_STORAGE,
    APP_K8S_PODS_DIR, APP_K8S_CONTAINERS_DIR)."""
    return WhoNames(config.docker_root, config.k8s_pods_dir, config.k8s_containers_dir,
                    storage_root=config.containers_storage)


class WhoNames(object):
    """Container and pod names from files the runtimes leave on disk (never a
    socket call): Docker's <docker_root>/containers/<id>/config.v2.json "Name"
    (a root-only file: unreadable, the id alone stays), Podman's and CRI-O's
    <storage_root>/overlay-containers/containers.json, the kubelet's pod log
    directories (<namespace>_<pod>_<uid>) and its container log links
    (<pod>_<namespace>_<container>-<id>.log). Each answer is kept ttl_s; a
    root of None is never looked at."""

    def __init__(self, docker_root=None, pods_dir=None, containers_dir=None,
                 ttl_s=WHO_NAMES_TTL_S, clock=time.monotonic, storage_root=None):
        self._docker_root, self._pods_dir, self._containers_dir = (
            docker_root, pods_dir, containers_dir)
        self._storage_root = storage_root
        self._ttl_s, self._clock = ttl_s, clock
        self._cache = {}                 # key -> (read at, value)

    def _cached(self, key, read):
        now, hit = self._clock(), self._cache.get(key)
        if hit is None or now - hit[0] >= self._ttl_s:
            if len(self._cache) > WHO_DIR_MAX_ENTRIES:
                self._cache.clear()
            hit = self._cache[key] = (now, read())
        return hit[1]

    def docker_name(self, container_id):
        if not self._docker_root or not container_id:
            return None
        path = os.path.join(self._docker_root, "containers", container_id, "config.v2.json")
        return self._cached(("docker", container_id), lambda: parse_docker_config_name(
            read_text(path, DOCKER_CONFIG_READ_LIMIT)))

    def storage_name(self, container_id):
        """Podman's or CRI-O's name of a container, from containers/storage's
        overlay-containers/containers.json and volatile-containers.json (--rm)."""
        if not self._storage_root or not container_id:
            return None
        return self._cached(("storage",), self._read_storage).get(container_id)

    def _read_storage(self):
        names = {}
        for name in ("containers.json", "volatile-containers.json"):
            names.update(parse_containers_storage_names(read_text(os.path.join(
                self._storage_root, "overlay-containers", name), CONTAINERS_JSON_READ_LIMIT)))
        return names

    def _listing(self, path, parse):
        found = (parse(name) for name in list_dir(path)[:WHO_DIR_MAX_ENTRIES]) if path else ()
        return [item for item in found if item is not None]

    def pods(self):
        """{pod uid: (namespace, pod)} from the kubelet's pod log directories."""
        return self._cached(("pods",), lambda: dict(
            (uid, (ns, pod)) for ns, pod, uid in self._listing(self._pods_dir, parse_k8s_pod_dir)))

    def k8s_containers(self):
        """{container id: (pod, namespace, container)} from the container log links."""
        return self._cached(("links",), lambda: dict(
            (cid, (pod, ns, name)) for pod, ns, name, cid
            in self._listing(self._containers_dir, parse_k8s_container_link)))

    def fields(self, who):
        """CgroupWho -> the row's unit, container, container_name, k8s and slurm."""
        name = (self.docker_name(who.container_id) if who.runtime == "docker" else
                self.storage_name(who.container_id) if who.runtime in ("podman", "cri-o") else None)
        return {"unit": who.unit, "container": who.container, "container_name": name,
                "k8s": self._k8s(who) if who.pod_uid else None,
                "slurm": dict(who.slurm) if who.slurm else None}

    def _k8s(self, who):
        namespace, pod = self.pods().get(who.pod_uid, (None, None))
        link = self.k8s_containers().get(who.container_id) if who.container_id else None
        container = None
        if link is not None and pod in (None, link[0]) and namespace in (None, link[1]):
            pod, namespace, container = link      # the link names this very container
        return {"namespace": namespace, "pod": pod, "container": container,
                "pod_uid": who.pod_uid}


class ProcEnricher(object):
    """The /proc side of a process row, one place for every process source
    (the fdinfo scanner's rows and NVML's): name from stat, CPU % and RSS
    (ProcCpuMeter), uid, user and command line (read_proc_meta, user names
    cached), who it belongs to (who: unit, container, container_name, k8s,
    slurm), started and elapsed_s (ProcStartClock)."""

    def __init__(self, proc_root, clk_tck=None, page_size=None, wall_clock=time.time,
                 names=None):
        self._users = {}             # uid -> name
        self._names = names or WhoNames()
        self._who = {}               # (pid, start_time) -> CgroupWho: read once per process
        self._cpu = ProcCpuMeter(clk_tck or read_sysconf("SC_CLK_TCK", 100),
                                 page_size or read_sysconf("SC_PAGE_SIZE", 4096))
        self._start_clock = ProcStartClock(proc_root, clk_tck, wall_clock)
        self._measured = set()       # (pid, start_time) measured since the last prune

    def measure(self, pid, line, now_s):
        """{"name", "cpu_pct", "rss_bytes"} from a stat line read at now_s (monotonic)."""
        self._measured.add((pid, line.start_time))
        cpu_pct, rss_bytes = self._cpu.measure(pid, line, now_s)
        return {"name": sanitize_text(line.comm or ""), "cpu_pct": cpu_pct, "rss_bytes": rss_bytes}

    def meta(self, procfd, pid, start_time=None):
        """{"cmd", "uid", "user"} (read_proc_meta) and who() of the process."""
        meta = read_proc_meta(procfd, pid, self._users)
        meta.update(self.who(procfd, pid, start_time))
        return meta

    def who(self, procfd, pid, start_time):
        """unit, container, container_name, k8s, slurm: its cgroup file is read
        once per (pid, start_time); names come from WhoNames (kept ttl_s)."""
        key = (pid, start_time)
        who = self._who.get(key)
        if who is None:
            who = parse_cgroup_who(read_text_at(procfd, "%d/cgroup" % pid, PROC_CGROUP_READ_LIMIT))
            if start_time is not None:
                self._who[key] = who
        return self._names.fields(who)

    def times(self, start_ticks, now_s=None):
        """{"started", "elapsed_s"} (ProcStartClock)."""
        return self._start_clock.times(start_ticks, now_s)

    def wall_clock(self):
        return self._start_clock.wall_clock()

    def describe(self, procfd, pid, line, now_s):
        """Every /proc field of a row at once: measure(), meta(), start_time, times()."""
        fields = self.measure(pid, line, now_s)
        fields.update(self.meta(procfd, pid, line.start_time), start_time=line.start_time)
        fields.update(self.times(line.start_time))
        return fields

    def prune(self, alive=None):
        """Forget the CPU readings of PIDs not in alive (default: those measured
        since the last prune)."""
        alive = self._measured if alive is None else alive
        self._cpu.prune(alive)
        for key in [k for k in self._who if k not in alive]:
            del self._who[key]
        self._measured = set()


# -- the /proc walk ---------------------------------------------------------

def _vanished(exc):
    """ENOENT/ESRCH: the PID exited (or its fd closed) while we looked."""
    return isinstance(exc, (FileNotFoundError, ProcessLookupError))


# A PID last seen NOT using a GPU (or unreadable), skipped while unchanged.
#
#     start_time is None when it was not needed: on procfs the fd dir inode
#     identifies the process (see _PidWalker._unchanged).
_PidMark = collections.namedtuple("_PidMark", "start_time fd_count fd_ino resume_fd unreadable")


_STAT_KEYS = ("pids_total", "pids_seen", "pids_walked", "pids_skipped_unchanged",
              "pids_unreadable", "pids_vanished", "pids_fd_capped", "gpu_fds",
              "fdinfo_reads", "fdinfo_failed", "other_driver_clients", "unmapped_clients")


def _new_stats(kind, full):
    stats = dict.fromkeys(_STAT_KEYS, 0)
    stats.update(kind=kind, full_walk=full, cut_short=False, duration_s=0.0)
    return stats


class _PidWalker(object):
    """The budgeted walk of <proc>/<pid>/fd, and the skip cache of PIDs found
    NOT using a GPU (skipped while their fd count and identity are unchanged).

    Shares the watchlist dict (pid -> entry) with ProcScanner: it visits those
    PIDs first, drops them when they vanish or stop using a GPU, and hands
    every PID holding a DRM or /dev/kfd fd to on_gpu(procfd, pid, ProcStatLine,
    (drm {fd: node}, kfd [fd]), stats, full) -> kept (bool).
    """

    def __init__(self, watch, on_gpu, clock, limits, fd_count):
        self._watch, self._on_gpu, self._clock = watch, on_gpu, clock
        self._max_pids, self._max_fds, self._budget_ns = limits
        self._choice = {"auto": None, "st_size": True, "listdir": False}[fd_count]
        self.st_size = None          # count fds by st_size (procfs, Linux >= 6.2)?
        self._procfs = False         # is the root a real procfs (inode shortcut)?
        self._marks = {}             # pid -> _PidMark
        self._resume_after = None

    def is_marked(self, pid):
        return pid in self._marks and not self._marks[pid].unreadable

    def unreadable_count(self):
        return sum(1 for m in self._marks.values() if m.unreadable)

    def walk(self, procfd, pids, full, stats, t0):
        """Visit pids (sorted): the watchlist first, then the rest from where
        the last cut-short scan stopped, within max_pids and the time budget."""
        self._forget_missing(set(pids))
        if self.st_size is None:
            self._calibrate(procfd)
        watch, rest = self._visit_order(pids)
        for pid in watch:
            if self._over_budget(stats["pids_seen"], t0):
                stats["cut_short"] = True
                break
            stats["pids_seen"] += 1
            self._visit(procfd, pid, full, stats)
        for index, pid in enumerate(rest):
            # At least one other PID per scan, so a tiny budget still progresses.
            if index and self._over_budget(stats["pids_seen"], t0):
                stats["cut_short"] = True
                self._resume_after = rest[index - 1]   # the next scan continues here
                return
            stats["pids_seen"] += 1
            self._visit(procfd, pid, full, stats)
        self._resume_after = None

    def forget(self, pid, stats, counter="pids_vanished"):
        stats[counter] += 1
        self._marks.pop(pid, None)
        self._watch.pop(pid, None)

    def read_start(self, procfd, pid):
        """ProcStatLine of <pid>/stat (comm, start_time, CPU ticks, RSS pages);
        start_time None if gone or torn."""
        return read_proc_stat_at(procfd, pid)

    def _over_budget(self, seen, t0):
        return seen >= self._max_pids or self._clock() - t0 >= self._budget_ns

    def _visit_order(self, pids):
        watch = [p for p in pids if p in self._watch]
        rest = [p for p in pids if p not in self._watch]
        if self._resume_after is not None:
            cut = bisect.bisect_right(rest, self._resume_after)
            rest = rest[cut:] + rest[:cut]
        return watch, rest

    def _forget_missing(self, present):
        for cache in (self._marks, self._watch):
            for pid in [p for p in cache if p not in present]:
                del cache[pid]

    def _calibrate(self, procfd):
        """Look at our own fd directory once: on procfs >= 6.2 its st_size is
        the fd count (trusted only if it matches a listing); procfs < 6.2
        reports 0; a plain directory (a fixture tree) reports neither."""
        fd = open_dir_at(procfd, "self/fd")
        size = count = -1
        if not isinstance(fd, OSError):
            try:
                size, count = os.fstat(fd).st_size, len(os.listdir(fd))
            except OSError:
                pass
            finally:
                os.close(fd)
        matches = size > 0 and count - 1 <= size <= count   # listdir() dups the fd
        self._procfs = matches or (size == 0 and count > 0)
        self.st_size = matches if self._choice is None else (self._choice and matches)

    def _probe_fds(self, procfd, pid):
        """(fd count, fd dir inode): one stat() on procfs >= 6.2, else a
        listing too; the OSError if stat() fails; count -1 if unlistable."""
        try:
            st = os.stat("%d/fd" % pid, dir_fd=procfd)
        except OSError as exc:
            return exc
        if self.st_size:
            return (st.st_size, st.st_ino)
        fd = open_dir_at(procfd, "%d/fd" % pid)
        if isinstance(fd, OSError):
            return (-1, st.st_ino)
        try:
            return (len(os.listdir(fd)), st.st_ino)
        except OSError:
            return (-1, st.st_ino)
        finally:
            os.close(fd)

    def _unchanged(self, procfd, pid, mark, probe):
        """Same fd count and same process (start time) as when marked.

        On procfs the fd dir's inode lives as long as the process's dentry;
        a reused PID gets a new inode (new process, new dentry), so an
        unchanged inode proves the start time unchanged without reading stat:
        one stat() per PID in the steady state. Any inode change (or a plain
        directory tree, where inodes are reused) re-reads the start time.
        """
        if probe[0] != mark.fd_count:
            return False
        if self._procfs and probe[1] == mark.fd_ino:
            return True
        start = self.read_start(procfd, pid)[1]
        if start is None or start != mark.start_time:   # a None mark never matches
            return False
        self._marks[pid] = mark._replace(fd_ino=probe[1])
        return True

    def _visit(self, procfd, pid, full, stats):
        probe = self._probe_fds(procfd, pid)
        if isinstance(probe, OSError):
            self.forget(pid, stats, "pids_vanished" if _vanished(probe) else "pids_unreadable")
            return
        mark = None if pid in self._watch else self._marks.get(pid)
        resume = None
        if mark is not None and self._unchanged(procfd, pid, mark, probe):
            if not full and (mark.resume_fd is None or mark.unreadable):
                stats["pids_skipped_unchanged"] += 1
                stats["pids_unreadable"] += int(mark.unreadable)
                return
            resume = mark.resume_fd
        self._walk(procfd, pid, probe, resume, stats, full)

    def _walk(self, procfd, pid, probe, resume, stats, full):
        # On procfs a non-GPU PID is identified by its fd dir inode, so its
        # stat is read only if it holds a GPU fd (saves ~8% of a full walk).
        # A GPU user's stat line is read once a scan and kept (CPU %, RSS).
        line = NO_PROC_STAT
        if not self._procfs or pid in self._watch:
            line = self.read_start(procfd, pid)
            if line.start_time is None:                # gone, or half-written stat
                self.forget(pid, stats)
                return
        stats["pids_walked"] += 1
        found = self._list_gpu_fds(procfd, pid, resume, stats)
        if isinstance(found, OSError):
            self._mark_unreadable(pid, line.start_time, probe, found, stats)
            return
        drm, kfd, next_resume = found
        if drm or kfd:
            if line.start_time is None:
                line = self.read_start(procfd, pid)
                if line.start_time is None:
                    self.forget(pid, stats)
                    return
            self._marks.pop(pid, None)
            if self._on_gpu(procfd, pid, line, (drm, kfd), stats, full):
                return
        # No GPU fd, or only other drivers' clients (i915, xe, radeon): skip while unchanged.
        self._watch.pop(pid, None)
        self._marks[pid] = _PidMark(line.start_time, probe[0], probe[1], next_resume, False)

    def _mark_unreadable(self, pid, start, probe, exc, stats):
        if _vanished(exc):
            self.forget(pid, stats)
            return
        stats["pids_unreadable"] += 1                  # EACCES: other user, non-dumpable
        self._watch.pop(pid, None)
        self._marks[pid] = _PidMark(start, probe[0], probe[1], None, True)

    def _list_gpu_fds(self, procfd, pid, resume, stats):
        """readlink() the fds of pid -> ({fd: node}, [kfd fds], next_resume) or OSError."""
        fdd = open_dir_at(procfd, "%d/fd" % pid)
        if isinstance(fdd, OSError):
            return fdd
        try:
            names = os.listdir(fdd)
            known = self._watch.get(pid)
            keep = list(known["drm_fds"]) + known["kfd_fds"] if known else []
            window, next_resume = select_fd_window(names, self._max_fds, resume, keep)
            if len(names) > self._max_fds:
                stats["pids_fd_capped"] += 1
            drm, kfd = self._classify_fds(fdd, window)
        except OSError as exc:
            return exc
        finally:
            os.close(fdd)
        stats["gpu_fds"] += len(drm)
        return drm, kfd, next_resume

    @staticmethod
    def _classify_fds(fdd, names):
        """The hot loop of a full walk: one readlink() per fd, never an open()."""
        drm, kfd, readlink = {}, [], os.readlink
        for name in names:
            try:
                target = readlink(name, dir_fd=fdd)
            except OSError:
                continue                               # closed meanwhile
            if target[:1] != "/":
                continue                               # socket:[..], pipe:[..]: most fds
            kind, node = classify_fd_target(target)
            if kind == "maybe_drm":                    # container-remapped path: stat only
                st = stat_at(fdd, name)
                node = drm_node_from_rdev(st.st_mode, st.st_rdev) if st else None
                kind = "drm" if node else None
            if kind == "drm":
                drm[name] = node
            elif kind == "kfd":
                kfd.append(name)
        return drm, kfd


# -- KFD: per-process VRAM (ROCm) -------------------------------------------

class KfdReader(object):
    """Which AMD GPU a /dev/kfd holder is on: KFD's topology (read when the
    GPUs or KFD's generation_id change) maps gpu_id -> our GPU's PCI address;
    read_vram(pid) reads /sys/class/kfd/kfd/proc/<pid>/vram_<gpu_id> only.
    Never sdma_<gpu_id>: reading it schedules work on the GPU (kfd_process.c
    kfd_sdma_activity_worker), and never stats_/cu_occupancy (it asks the
    hardware)."""

    def __init__(self, sysfs_root):
        self._base = os.path.join(sysfs_root, "class", "kfd", "kfd")
        self._key = None
        self.gpu_pcis = {}            # gpu_id -> pci

    def refresh(self, node_map, amd_pcis):
        """Re-read the topology if the GPUs or generation_id changed."""
        key = (read_text(os.path.join(self._base, "topology", "generation_id"), 64),
               sorted(node_map.items()), sorted(amd_pcis))
        if key != self._key:
            self._key = key
            self.gpu_pcis = compute_kfd_gpu_pcis(self._read_nodes(), node_map, amd_pcis)

    def stale(self, node_map, amd_pcis):
        """The GPUs changed since the last refresh (no I/O)."""
        return self._key is None or self._key[1:] != (sorted(node_map.items()), sorted(amd_pcis))

    def _read_nodes(self):
        nodes_dir = os.path.join(self._base, "topology", "nodes")
        try:
            names = sorted(n for n in os.listdir(nodes_dir) if n.isdigit())
        except OSError:
            return []
        nodes = []
        for name in names:             # EPERM on GPUs outside our device cgroup: skipped
            gpu_id = parse_kfd_int(read_text(os.path.join(nodes_dir, name, "gpu_id"), 64))
            props = read_text(os.path.join(nodes_dir, name, "properties"), 8192)
            if gpu_id and props:
                nodes.append((gpu_id, parse_kfd_properties(props)))
        return nodes

    def read_vram(self, pid):
        """{pci: bytes} of pid's KFD VRAM, or None when unknown (no topology
        match, no readable proc/<pid> or vram_* file, no VRAM anywhere)."""
        if not self.gpu_pcis:
            return None
        base = os.path.join(self._base, "proc", str(pid))
        used = {}
        for gpu_id in self.gpu_pcis:
            value = parse_kfd_int(read_text(os.path.join(base, "vram_%d" % gpu_id), 64))
            if value is not None:
                used[gpu_id] = value
        return compute_kfd_vram(used, self.gpu_pcis)


# -- the scanner ------------------------------------------------------------

def node_map_for(gpus):
    """{"renderD128": pci, "card1": pci} for mapping fds without drm-pdev."""
    mapping = {}
    for info in gpus:
        if info.render_node:
            mapping[os.path.basename(info.render_node)] = info.pci
        mapping[info.id] = info.pci
    return mapping


class ProcScanner(object):
    """Finds the processes that hold amdgpu DRM clients and measures them.

    scan() walks <proc_root> within max_pids and budget_s; PIDs found not
    using a GPU are skipped while their fd count and start time are unchanged
    (a full walk every full_walk_every scans). refresh() re-reads only the
    fdinfo of known GPU users (the watchlist). clock_ns returns monotonic ns.
    fd_count: "auto", or force "listdir" (tests). Call from one thread.
    """

    def __init__(self, proc_root, max_pids=5000, max_fds_per_pid=64, budget_s=0.5,
                 clock_ns=time.monotonic_ns, full_walk_every=5, fd_count="auto",
                 drivers=FDINFO_DRIVERS, clk_tck=None, page_size=None, wall_clock=time.time,
                 sysfs_root=None, names=None):
        self._root = proc_root
        self._kfd = KfdReader(sysfs_root) if sysfs_root else None
        self._drivers = tuple(drivers)
        self._clock = clock_ns
        self._full_every = max(1, int(full_walk_every))
        self._node_map = {}          # "renderD128" -> "0000:03:00.0"
        self._kfd_pcis = None        # AMD GPUs (None: every GPU of the node map)
        self._drm = True             # a GPU whose clients show in fdinfo is known
        self._watch = {}             # pid -> dict (GPU users)
        self._prev = {}              # (pid, start_time, client key) -> EngineSample
        self._proc = ProcEnricher(proc_root, clk_tck, page_size, wall_clock, names)
        self._scans = 0
        self._first_walk = False     # the next walk is full (a DRM GPU after NVIDIA alone)
        self._visibility = {}
        limits = (max(1, int(max_pids)), max(1, int(max_fds_per_pid)), int(budget_s * 1e9))
        self._walker = _PidWalker(self._watch, self._update_gpu_proc, clock_ns, limits, fd_count)

    def set_node_map(self, mapping):
        """{"renderD128": pci, "card1": pci, ...} from sysfs discovery."""
        self._node_map = dict(mapping)

    def set_gpus(self, infos):
        """The GPUs now known: their nodes, and which are AMD (a process
        holding only /dev/kfd is shown on those, never on other vendors')."""
        self.set_node_map(node_map_for(infos))
        self._kfd_pcis = sorted(info.pci for info in infos if info.vendor == "amd")
        self._drm = not infos or any(info.vendor in ("amd", "intel") for info in infos)

    def _amd_pcis(self):
        return sorted(set(self._node_map.values())) if self._kfd_pcis is None else self._kfd_pcis

    @property
    def fd_count_mode(self):
        """"st_size" (kernel >= 6.2 procfs), "listdir", or None before a scan."""
        mode = self._walker.st_size
        return None if mode is None else ("st_size" if mode else "listdir")

    def known_non_gpu(self, pid):
        """True if pid is in the skip cache (seen, not a GPU user)."""
        return self._walker.is_marked(pid)

    def scan(self):
        """The budgeted /proc walk (+ fdinfo reads of GPU fds) -> ScanResult."""
        t0 = self._clock()
        self._scans += 1
        full = (self._scans - 1) % self._full_every == 0 or (self._drm and self._first_walk)
        stats = _new_stats("scan", full)
        procfd = open_dir_at(None, self._root)
        if isinstance(procfd, OSError):
            return self._result(stats, t0)
        try:
            pids = sorted(int(n) for n in os.listdir(procfd) if n.isdigit())
            stats["pids_total"] = len(pids)
            if full or not self._visibility:           # before the walk: KFD files trust it
                self._visibility = self._read_visibility(procfd)
            if self._kfd is not None:
                self._kfd.refresh(self._node_map, self._amd_pcis())
            if self._drm:
                self._first_walk = False
                self._walker.walk(procfd, pids, full, stats, t0)
            else:                    # NVIDIA alone: NVML lists its PIDs; no fd to look at,
                self._first_walk = True    # and the first walk once a DRM GPU shows is a full one
            self._visibility["visible_pids"] = len(pids)
        except OSError:
            pass                                       # the root itself went away
        finally:
            os.close(procfd)
        return self._result(stats, t0)

    def refresh(self):
        """Re-read fdinfo of the known GPU users only (cheap, between scans)."""
        t0 = self._clock()
        stats = _new_stats("refresh", False)
        procfd = open_dir_at(None, self._root)
        if isinstance(procfd, OSError):
            return self._result(stats, t0)
        try:
            self._refresh_kfd()
            for pid in sorted(self._watch):
                stats["pids_seen"] += 1
                self._refresh_pid(procfd, pid, stats)
        finally:
            os.close(procfd)
        return self._result(stats, t0)

    # -- GPU users --------------------------------------------------------------

    def _update_gpu_proc(self, procfd, pid, line, fds, stats, full):
        """Refresh (or create) the watchlist entry; False if pid holds no
        amdgpu client, no /dev/kfd and every fdinfo read succeeded."""
        start = line.start_time
        entry = self._watch.get(pid)
        if entry is None or entry["start_time"] != start:
            entry = {"pid": pid, "start_time": start, "meta": None}
        entry["drm_fds"], entry["kfd_fds"] = fds
        entry["kfd"] = bool(fds[1])
        if entry["meta"] is None or full:
            entry["meta"] = self._proc.meta(procfd, pid, start)
        entry["clients"], failed = self._read_clients(procfd, pid, start, entry["drm_fds"], stats)
        entry.update(self._proc.measure(pid, line, self._clock() / 1e9))
        entry["kfd_vram"] = self._read_kfd_vram(pid) if entry["kfd"] else None
        if not entry["clients"] and not entry["kfd"] and not failed:
            return False
        self._watch[pid] = entry
        return True

    def _refresh_kfd(self):
        """GPUs found since the last scan: map KFD's again and re-read the KFD
        VRAM of the /dev/kfd holders now, not one scan later."""
        if self._kfd is None or not self._kfd.stale(self._node_map, self._amd_pcis()):
            return
        self._kfd.refresh(self._node_map, self._amd_pcis())
        for pid, entry in self._watch.items():
            if entry["kfd"]:
                entry["kfd_vram"] = self._read_kfd_vram(pid)

    def _read_kfd_vram(self, pid):
        """KFD's per-process files are named by host PID: not trusted from
        another PID namespace (the same number may be another process)."""
        if self._kfd is None or self._visibility.get("pid_namespace_separate"):
            return None
        return self._kfd.read_vram(pid)

    def _read_clients(self, procfd, pid, start, drm_fds, stats):
        """-> ([distinct amdgpu clients], number of fdinfo reads that failed)."""
        clients, failed = {}, 0
        for fd_name in sorted(drm_fds, key=lambda n: int(n) if n.isdigit() else -1):
            raw = read_at(procfd, "%d/fdinfo/%s" % (pid, fd_name), FDINFO_READ_LIMIT)
            now = self._clock()
            stats["fdinfo_reads"] += 1
            if raw is None:                            # fd closed / pid gone meanwhile
                stats["fdinfo_failed"] += 1
                failed += 1
                continue
            client = self._client(pid, start, fd_name, drm_fds[fd_name], raw, now, stats)
            if client is not None and client["key"] not in clients:   # dup'd fd: once
                clients[client["key"]] = client
        return list(clients.values()), failed

    def _client(self, pid, start, fd_name, node, raw, now, stats):
        rec = parse_fdinfo(raw)
        if not is_gpu_client(rec, node, self._node_map, self._drivers):
            stats["other_driver_clients"] += 1
            return None
        pci = rec.pdev or self._node_map.get(node)
        if pci is None:
            stats["unmapped_clients"] += 1
            return None
        key = client_key(rec, pci, pid, fd_name)
        prev_key = (pid, start, key)                   # a reused PID never inherits counters
        pct, ms, sample = compute_client_usage(self._prev.get(prev_key), rec, now)
        self._prev[prev_key] = sample
        return make_client_row(rec, key, pci, node, pct, ms)

    def _refresh_pid(self, procfd, pid, stats):
        entry = self._watch[pid]
        line = self._walker.read_start(procfd, pid)
        if line.start_time is None or line.start_time != entry["start_time"]:
            self._walker.forget(pid, stats)            # gone or reused: next scan finds it
            return
        entry.update(self._proc.measure(pid, line, self._clock() / 1e9))
        live = {}
        for fd_name, node in entry["drm_fds"].items():  # fd reused for another file?
            target = readlink_at(procfd, "%d/fd/%s" % (pid, fd_name))
            if target is not None and classify_fd_target(target)[0] in ("drm", "maybe_drm"):
                live[fd_name] = node
        entry["drm_fds"] = live
        stats["gpu_fds"] += len(live)
        entry["clients"] = self._read_clients(procfd, pid, line.start_time, live, stats)[0]

    # -- results --------------------------------------------------------------

    def _read_visibility(self, procfd):
        status = read_text_at(procfd, "self/status", PROC_STATUS_READ_LIMIT)
        mounts = (read_text_at(procfd, "self/mountinfo", PROC_MOUNTINFO_READ_LIMIT)
                  or read_text_at(procfd, "mounts", PROC_MOUNTINFO_READ_LIMIT))
        return compute_visibility(
            os.geteuid(), readlink_at(procfd, "self/ns/pid"), readlink_at(procfd, "1/ns/pid"),
            parse_status_nspid(status),
            parse_hidepid(mounts, os.path.abspath(self._root)) if mounts else None,
            parse_cgroup_container(read_text_at(procfd, "self/cgroup", PROC_CGROUP_READ_LIMIT)))

    def _result(self, stats, t0):
        alive = {(pid, e["start_time"]) for pid, e in self._watch.items()}
        for key in [k for k in self._prev if (k[0], k[1]) not in alive]:
            del self._prev[key]
        self._proc.prune(alive)
        stats["duration_s"] = round((self._clock() - t0) / 1e9, 6)
        stats["fd_count_mode"] = self.fd_count_mode
        visibility = dict(self._visibility, unreadable_pids=self._walker.unreadable_count())
        now_s = self._proc.wall_clock()
        procs = [dict(e, **self._proc.times(e["start_time"], now_s))
                 for e in self._watch.values()]
        by_pci = compute_procs_by_pci(procs, sorted(set(self._node_map.values())), self._amd_pcis())
        return ScanResult(by_pci, visibility, stats)


# ---------------------------------------------------------------------------
# 9. Backends: each vendor's reader, backend and process source
# ---------------------------------------------------------------------------

# -- the backend seam -------------------------------------------------------

#
# A backend is one kind of device: discover() -> [GpuInfo] (what is there now),
# open_reader(info) -> a reader with info, sample(now) -> metrics dict (all of
# METRIC_KEYS, see new_metrics) and close(); proc_source() -> its process
# source or None (scan()/refresh() -> ScanResult, set_gpus(infos)); close().
# GpuManager, run_once and the cache know nothing else about vendors.


class DrmCardList(object):
    """class/drm/cardN (connectors skipped), listed once per discovery round
    for all the DRM backends (AMD and Intel): a backend that asks again has
    started a new round, so the directory is listed anew."""

    def __init__(self, sysfs_root):
        self.sysfs_root = sysfs_root
        self._cards = None
        self._served = set()

    def cards(self, asker):
        """[(card, device realpath, device path)] for asker (any hashable)."""
        if self._cards is None or asker in self._served:
            self._served = set()
            self._cards = [(card, os.path.realpath(path), path)
                           for card, path in find_drm_cards(self.sysfs_root)]
        self._served.add(asker)
        return self._cards


class _DrmBackend(object):
    """Discovery shared by the sysfs backends: a card's identity is read once,
    when (card name, device realpath) first appears; cards of other drivers
    are remembered as None so they cost nothing afterwards."""

    vendor = None

    def __init__(self, cards, names, fdinfo_source=None):
        self._cards, self._names, self._fdinfo = cards, names, fdinfo_source
        self._known = {}                 # (card, realpath) -> GpuInfo or None

    def discover(self):
        found = self._cards.cards(self.vendor)
        keys = set((card, real) for card, real, _ in found)
        for key in [k for k in self._known if k not in keys]:
            del self._known[key]
        for card, real, path in found:
            if (card, real) not in self._known:
                self._known[(card, real)] = self.read_info(card, path)
        return [info for info in self._known.values() if info is not None]

    def read_info(self, card, device_dir):
        raise NotImplementedError

    def proc_source(self):
        return self._fdinfo

    def close(self):
        pass


# -- AMD (sysfs/hwmon, gpu_metrics; its processes: section 8) ---------------

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
        self._fast["gpu_metrics"] = self._attr(info.device_dir, GPU_METRICS_FILE,
                                               GPU_METRICS_READ_SIZE)
        self._slow_raw = {}
        self._slow_due = 0.0
        self._reported = set()
        self._table = None               # the previous parsed gpu_metrics (residency deltas)

    def _attr(self, base, rel, size=SYSFS_READ_SIZE):
        path = os.path.join(base, rel)
        folder = os.path.dirname(path)
        if folder not in self._watches:
            self._watches[folder] = DirWatch(folder)
        return AttrFile(path, self._watches[folder], size)

    def _plan_hwmon(self):
        names = list_dir(self.info.hwmon_dir) if self.info.hwmon_dir else []
        plan = plan_hwmon(names, read_hwmon_labels(self.info.hwmon_dir, names) if names else {})
        slow_keys = ("power_cap_w", "power_fast_cap_w", "pwm_max")
        for key, name in plan.items():
            target = self._slow if key in slow_keys else self._fast
            target[key] = self._attr(self.info.hwmon_dir, name)
        self._limits = parse_temp_limits(dict(   # fixed by the card: read once
            (key, read_bytes(os.path.join(self.info.hwmon_dir, name), SYSFS_READ_SIZE))
            for key, name in plan_temp_limits(plan, names).items()))
        for key, rel in DPM_FALLBACK_FILES:
            if key[:4] + "_mhz" not in plan:
                self._fast[key] = self._attr(self.info.device_dir, rel)

    def sample(self, now):
        """One tick: runtime_status first; a sleeping GPU's sensors are not read
        (a read would wake it). 'unsupported' means runtime PM is off: always on."""
        status = clean_text(self._status.read(now))
        if status not in (None, "active", "unsupported"):
            self._table = None
            return new_metrics({"runtime_status": status})
        raw = {key: attr.read(now) for key, attr in self._fast.items()}
        if now >= self._slow_due:
            self._slow_due = now + SLOW_FILES_EVERY_S
            self._slow_raw = {key: attr.read(now) for key, attr in self._slow.items()}
            self._report_missing()
        raw.update(self._slow_raw)
        raw["runtime_status"] = status.encode() if status else None
        table = self._parse_table(raw.pop("gpu_metrics"))
        metrics = merge_gpu_metrics(compute_metrics(raw, self.info.apu), table, self._table)
        for key, value in self._limits.items():     # a limit beside its temperature only
            if metrics[key.replace("_crit", "")] is not None:
                metrics[key] = value
        self._table = table
        return metrics

    def _parse_table(self, data):
        """The gpu_metrics table, or None (absent, or bytes no layout explains)."""
        if not data:
            return None
        try:
            return parse_gpu_metrics(data)
        except GpuMetricsError as exc:
            if "gpu_metrics" not in self._reported:
                self._reported.add("gpu_metrics")
                LOG.info("event=gpu_metrics_unreadable gpu=%s reason=%r", self.info.id, str(exc))
            return None

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


class AmdBackend(_DrmBackend):
    """amdgpu cards from sysfs/hwmon (AmdGpuReader); processes from fdinfo."""

    vendor = "amd"

    def read_info(self, card, device_dir):
        return read_gpu_info(card, device_dir, self._names)

    def open_reader(self, info):
        return AmdGpuReader(info)


# -- Intel (i915/xe sysfs; its processes: section 8) ------------------------

def read_intel_gpu_info(card, device_dir, names):
    """An i915/xe card's identity, or None for other drivers."""
    uevent = parse_uevent(read_bytes(os.path.join(device_dir, "uevent"), 4096))
    driver = uevent.get("DRIVER")
    if driver not in INTEL_DRIVERS:
        return None
    vendor_id, _, device_id = uevent.get("PCI_ID", "8086:0000").partition(":")
    pci = (uevent.get("PCI_SLOT_NAME") or "").lower() or None
    revision = clean_text(read_bytes(os.path.join(device_dir, "revision"), 64))
    revision = revision.lower().replace("0x", "").zfill(2) if revision else None
    return GpuInfo(
        id=card, pci=pci, pci_id=("%s:%s" % (vendor_id, device_id)).lower(), revision=revision,
        name=names.resolve(None, vendor_id, device_id, revision, "Intel"),
        render_node=find_render_node(device_dir), driver=driver,
        # The integrated GPU sits at 00:02.0 on every Intel platform.
        apu=bool(pci and pci.endswith(":00:02.0")), demo=False, device_dir=device_dir,
        hwmon_dir=find_hwmon_dir(device_dir, INTEL_HWMON_NAMES), vendor="intel",
        card_dir=os.path.dirname(device_dir))


def find_intel_link_dir(device_dir):
    """Where an Arc card's real PCIe link is: its endpoint reports the link to
    the card's own Intel switch (e.g. 2.5 GT/s x1), so walk up through at most
    two Intel bridges (vendor 0x8086, class 0x0604xx), as nvtop does."""
    here = os.path.realpath(device_dir)
    for _ in range(2):
        parent = os.path.dirname(here)
        vendor = clean_text(read_bytes(os.path.join(parent, "vendor"), 64))
        klass = clean_text(read_bytes(os.path.join(parent, "class"), 64)) or ""
        if vendor != "0x8086" or not klass.startswith("0x0604"):
            break
        here = parent
    return here


class IntelGpuReader(object):
    """Reads one i915/xe GPU: GT frequency, busy from idle residency, power
    from the hwmon energy counter, temperatures/fan where hwmon has them,
    throttle reasons. VRAM used has no sysfs file: it stays null (the procs
    frame's totals are the fdinfo sum of visible processes)."""

    def __init__(self, info):
        self.info = info
        self._watches = {}
        self._status = self._attr(self._path("dev:" + RUNTIME_STATUS_FILE))
        freq_files, idle_files, throttle_pattern = INTEL_LAYOUT[info.driver]
        self._freq = self._first(freq_files)
        self._idle = self._first(idle_files)
        self._throttle = []
        for pattern in throttle_pattern:
            found = [(n, self._attr(self._path(pattern % n))) for n in INTEL_THROTTLE_NAMES
                     if self._exists(pattern % n)]
            if found:
                self._throttle = found
                break
        self._plan_hwmon()
        self._slow_due = 0.0
        self._slow = {}
        self._prev_idle = self._prev_energy = None

    def _path(self, rel):
        kind, _, rest = rel.partition(":")
        return os.path.join(self.info.card_dir if kind == "card" else self.info.device_dir, rest)

    def _exists(self, rel):
        return os.path.exists(self._path(rel))

    def _attr(self, path):
        folder = os.path.dirname(path)
        if folder not in self._watches:
            self._watches[folder] = DirWatch(folder)
        return AttrFile(path, self._watches[folder])

    def _first(self, rels):
        for rel in rels:
            if self._exists(rel):
                return self._attr(self._path(rel))
        return None

    def _plan_hwmon(self):
        hwmon = self.info.hwmon_dir
        names = list_dir(hwmon) if hwmon else []
        plan = plan_intel_hwmon(names, read_hwmon_labels(hwmon, names) if names else {})
        self._energy_candidates = [self._attr(os.path.join(hwmon, n)) for n in plan.pop("energy")]
        self._energy = None
        self._cap_files = [self._attr(os.path.join(hwmon, n)) for n in plan.pop("power_cap")]
        self._hwmon = dict((key, self._attr(os.path.join(hwmon, name))) for key, name in plan.items())
        link_dir = find_intel_link_dir(self.info.device_dir) if not self.info.apu else None
        self._slow_files = {
            "vram_total": self._attr(self._path("dev:tile0/physical_vram_size_bytes")),
            "link_speed": self._attr(os.path.join(link_dir, "current_link_speed")) if link_dir else None,
            "link_width": self._attr(os.path.join(link_dir, "current_link_width")) if link_dir else None}

    def _energy_uj(self, now):
        """energy1_input, else energy2_input; a counter reading 0 is skipped (nvtop)."""
        if self._energy is None:
            for attr in self._energy_candidates:
                if parse_int(attr.read(now)):
                    self._energy = attr
                    break
            else:
                return None
        return parse_int(self._energy.read(now))

    def sample(self, now):
        status = clean_text(self._status.read(now))
        if status not in (None, "active", "unsupported"):
            self._prev_idle = self._prev_energy = None
            return new_metrics({"runtime_status": status})
        if now >= self._slow_due:
            self._slow_due = now + SLOW_FILES_EVERY_S
            self._slow = dict((k, a.read(now) if a else None) for k, a in self._slow_files.items())
            caps = [parse_int(a.read(now)) for a in self._cap_files]
            self._slow["power_cap_w"] = next((c for c in caps if c), None)   # 0 = disabled
        idle = (now, parse_int(self._idle.read(now)) if self._idle else None)
        energy = (now, self._energy_uj(now))
        metrics = new_metrics({
            "runtime_status": status, "sclk_mhz": parse_int(self._freq.read(now)) if self._freq else None,
            "gpu_busy_pct": compute_idle_busy_pct(self._prev_idle, idle),
            "power_w": compute_energy_power_w(self._prev_energy, energy),
            "energy_j": None if energy[1] is None else round(energy[1] / 1e6, 3),
            "power_cap_w": None if self._slow["power_cap_w"] is None else round(self._slow["power_cap_w"] / 1e6, 3),
            "fan_rpm": parse_int(self._hwmon["fan_rpm"].read(now)) if "fan_rpm" in self._hwmon else None,
            "throttle_reasons": parse_throttle_flags([(n, a.read(now)) for n, a in self._throttle]),
            "vram_total_bytes": parse_int(self._slow["vram_total"])})
        for key in ("temp_c", "temp_mem_c"):
            if key in self._hwmon:
                metrics[key] = _scaled(self._hwmon[key].read(now), 1000.0, 1)
        if not self.info.apu:
            speed = parse_link_speed(self._slow["link_speed"])
            metrics.update(pcie_speed_gts=speed, pcie_width=parse_int(self._slow["link_width"]),
                           pcie_gen=pcie_gen_from_speed(speed))
        self._prev_idle, self._prev_energy = idle, energy
        return metrics

    def close(self):
        attrs = [self._status, self._freq, self._idle] + [a for _, a in self._throttle]
        attrs += self._energy_candidates + self._cap_files + list(self._hwmon.values())
        attrs += list(self._slow_files.values())
        for attr in attrs:
            if attr is not None:
                attr.close()


class IntelBackend(_DrmBackend):
    """i915 and xe cards from sysfs/hwmon (IntelGpuReader); processes from fdinfo."""

    vendor = "intel"

    def read_info(self, card, device_dir):
        return read_intel_gpu_info(card, device_dir, self._names)

    def open_reader(self, info):
        return IntelGpuReader(info)


# -- NVIDIA (NVML): the reader, NvmlProcSource, the backend -----------------

class _NvmlCall(object):
    """One prepared NVML query of a sampler: the function, its argument tuple
    (the out-structs made once) and put(metrics), which stores the answer
    (and returns False when the answer says the metric will never come)."""

    __slots__ = ("name", "fn", "args", "put", "fallback")

    def __init__(self, name, fn, args, put, fallback=None):
        self.name, self.fn, self.args, self.put, self.fallback = name, fn, args, put, fallback


def _nv_field_value(field):
    """An nvmlFieldValue_t's value by its valueType (nvml.h nvmlValueType_t)."""
    if field.nvmlReturn != NVML_SUCCESS:
        return None
    kind, value = field.valueType, field.value
    return (value.dVal, value.uiVal, value.ulVal, value.ullVal, value.sllVal, value.siVal,
            value.usVal)[kind] if 0 <= kind <= 6 else None


def _nv_put_field(metrics, key, field):
    """A field value into metrics; False when NVML says the field is not
    supported on this GPU (the per-entry nvmlReturn), so it is not asked again."""
    metrics[key] = _nv_field_value(field)
    return field.nvmlReturn not in NVML_DISABLING_ERRORS


class NvmlMigEcc(object):
    """The MIG instances and ECC counts of one NVIDIA GPU. The ECC counts and
    the MIG mode change rarely: read every SLOW_FILES_EVERY_S; ECC that is off
    or refused (NOT_SUPPORTED) is not asked again. MIG device handles go stale
    when an instance is destroyed (and may be reused for another): they are
    enumerated again at that slow cadence, and at once when a MIG handle's
    memory query fails; each instance's memory is read every sample."""

    def __init__(self, nvml, handle):
        self._nvml, self._handle = nvml, handle
        self._slow_due = 0.0
        self._ecc_ok = nvml.has("nvmlDeviceGetTotalEccErrors") and nvml.has("nvmlDeviceGetEccMode")
        self._mig_ok = nvml.has("nvmlDeviceGetMigMode") and nvml.has(
            "nvmlDeviceGetMigDeviceHandleByIndex")
        self.ecc = dict.fromkeys(key for _, _, key in NVML_ECC_COUNTERS)
        self._mig = None          # [(MIG handle, instance dict)] while MIG is on, else None
        self._mem2 = NvmlMemoryV2(version=NVML_MEMORY_V2_VERSION)
        self._mem1 = NvmlMemory()

    def sample(self, now, metrics):
        if now >= self._slow_due:
            self._slow_due = now + SLOW_FILES_EVERY_S
            self._read_ecc()
            self._enumerate()
        metrics.update(self.ecc)
        if self._mig is not None:
            instances = self._mig_memory()
            if instances is None:                # a stale handle: enumerate again now
                self._enumerate()
                instances = self._mig_memory() if self._mig is not None else None
            metrics["mig"] = instances

    def _read_ecc(self):
        if not self._ecc_ok:
            return
        current, pending = ctypes.c_int(), ctypes.c_int()
        rc = self._nvml.unchecked("nvmlDeviceGetEccMode")(self._handle, ctypes.byref(current),
                                                         ctypes.byref(pending))
        if rc in NVML_DISABLING_ERRORS or (rc == NVML_SUCCESS and not current.value):
            self._ecc_ok = False                 # no ECC, or off (a change needs a reboot)
        if rc != NVML_SUCCESS or not current.value:
            self.ecc = dict.fromkeys(self.ecc)   # unknown this time (or for good)
            return
        fn, count = self._nvml.unchecked("nvmlDeviceGetTotalEccErrors"), ctypes.c_ulonglong()
        for error_type, counter, key in NVML_ECC_COUNTERS:
            rc = fn(self._handle, ctypes.c_int(error_type), ctypes.c_int(counter),
                    ctypes.byref(count))
            self.ecc[key] = count.value if rc == NVML_SUCCESS else None

    def _enumerate(self):
        """The MIG devices now: [(handle, instance)], or None while MIG is off."""
        if not self._mig_ok:
            return
        current, pending = ctypes.c_uint(), ctypes.c_uint()
        rc = self._nvml.unchecked("nvmlDeviceGetMigMode")(self._handle, ctypes.byref(current),
                                                         ctypes.byref(pending))
        if rc in NVML_DISABLING_ERRORS:
            self._mig_ok = False                 # no MIG on this GPU
        if rc != NVML_SUCCESS or current.value != NVML_DEVICE_MIG_ENABLE:
            self._mig = None
            return
        get, found = self._nvml.unchecked("nvmlDeviceGetMigDeviceHandleByIndex"), []
        for index in range(self._nvml.uint("nvmlDeviceGetMaxMigDeviceCount", self._handle) or 0):
            mig = ctypes.c_void_p()
            if get(self._handle, ctypes.c_uint(index), ctypes.byref(mig)) == NVML_SUCCESS:
                found.append((mig, self._describe(index, mig)))   # else NOT_FOUND: a hole
        self._mig = found

    def _describe(self, index, mig):
        name = self._nvml.text("nvmlDeviceGetName", mig, NVML_NAME_BUFFER)
        attrs, fn = NvmlDeviceAttributes(), self._nvml.unchecked("nvmlDeviceGetAttributes_v2")
        if fn is not None and fn(mig, ctypes.byref(attrs)) == NVML_SUCCESS:
            profile = parse_mig_profile(name, attrs.gpuInstanceSliceCount,
                                        attrs.computeInstanceSliceCount, attrs.memorySizeMB)
        else:
            profile = parse_mig_profile(name)
        return build_mig_instance(
            index, self._nvml.text("nvmlDeviceGetUUID", mig, NVML_UUID_BUFFER), profile,
            self._nvml.uint("nvmlDeviceGetGpuInstanceId", mig),
            self._nvml.uint("nvmlDeviceGetComputeInstanceId", mig), None, None)

    def _mig_memory(self):
        """The instances with their memory now, or None when a handle failed."""
        v2, v1 = (self._nvml.unchecked("nvmlDeviceGetMemoryInfo_v2"),
                  self._nvml.unchecked("nvmlDeviceGetMemoryInfo"))
        out = []
        for mig, instance in self._mig:
            if v2 is not None and v2(mig, ctypes.byref(self._mem2)) == NVML_SUCCESS:
                used, total = self._mem2.used, self._mem2.total
            elif v1 is not None and v1(mig, ctypes.byref(self._mem1)) == NVML_SUCCESS:
                used, total = self._mem1.used, self._mem1.total
            else:
                return None
            out.append(dict(instance, memory_used_bytes=used, memory_total_bytes=total))
        return out


class NvidiaGpuReader(object):
    """Reads one NVIDIA GPU through NVML: each metric is one prepared call,
    disabled for good on this GPU after NOT_SUPPORTED; GPU_IS_LOST makes the
    GPU "lost" (metrics null). A lost GPU costs one call a sample (the first
    call answers GPU_IS_LOST again), so it is back on its first good read, as
    in nvidia-smi or nvitop. Never raises for an NVML answer, and never calls
    the 20 ms nvmlDeviceGetPcieThroughput.

    Every argument of a prepared call is a ctypes object of the C type (the
    handle a c_void_p, enums c_int, outputs byref), so the calls go through
    pointers without argtypes: nothing can be truncated, and the per-call
    argument check (a quarter of a microsecond) is saved on the 4 Hz path."""

    def __init__(self, nvml, info, handle, lost=None, mig=None):
        self.info = info
        self._nvml, self._handle = nvml, handle
        self._lost_ids = lost if lost is not None else set()
        self._facts = NvmlMigEcc(nvml, handle)   # MIG instances, ECC counts
        self._mig_of = mig if mig is not None else {}   # gpu id -> metrics.mig (for NvmlProcSource)
        self._is_lost = False                 # in a lost streak (logged once at its start)
        self._calls = self._plan()
        self._active = new_metrics(dict(self._read_limits(), runtime_status="active"))

    def _read_limits(self):
        """The card's slowdown and memory-max temperatures (nvml.h
        nvmlDeviceGetTemperatureThreshold), asked once: alert levels."""
        fn, out = self._nvml.unchecked("nvmlDeviceGetTemperatureThreshold"), {}
        for kind, key in NVML_TEMPERATURE_THRESHOLDS if fn is not None else ():
            value = ctypes.c_uint()
            if fn(self._handle, ctypes.c_int(kind), ctypes.byref(value)) == NVML_SUCCESS and (
                    30 <= value.value <= 200):
                out[key] = value.value
        return out

    def _bind(self, name, args, put, fallback=None):
        fn = self._nvml.unchecked(name)
        if fn is None:
            return fallback
        return _NvmlCall(name, fn, (self._handle,) + args, put, fallback)

    def _scalar(self, name, ctype, key, scale=None, prefix=()):
        out = ctype()
        if scale is None:
            put = lambda m, o=out: m.__setitem__(key, o.value)          # noqa: E731
        else:
            put = lambda m, o=out: m.__setitem__(key, o.value / scale)  # noqa: E731
        return self._bind(name, tuple(prefix) + (ctypes.byref(out),), put)

    def _plan(self):
        util = NvmlUtilization()
        fan = NvmlFanSpeedInfo(version=NVML_FAN_SPEED_INFO_VERSION, fan=0)
        field = (NvmlFieldValue * 1)()
        field[0].fieldId = NVML_FI_DEV_MEMORY_TEMP
        pstate, reasons = ctypes.c_int(), ctypes.c_ulonglong()
        enc, dec, period = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
        reasons_fn = ("nvmlDeviceGetCurrentClocksEventReasons"
                      if self._nvml.has("nvmlDeviceGetCurrentClocksEventReasons")
                      else "nvmlDeviceGetCurrentClocksThrottleReasons")
        calls = [
            self._bind("nvmlDeviceGetUtilizationRates", (ctypes.byref(util),),
                       lambda m: m.update(gpu_busy_pct=util.gpu, mem_busy_pct=util.memory)),
            self._scalar("nvmlDeviceGetClockInfo", ctypes.c_uint, "sclk_mhz",
                         prefix=(ctypes.c_int(NVML_CLOCK_GRAPHICS),)),
            self._scalar("nvmlDeviceGetClockInfo", ctypes.c_uint, "mclk_mhz",
                         prefix=(ctypes.c_int(NVML_CLOCK_MEM),)),
            self._scalar("nvmlDeviceGetClockInfo", ctypes.c_uint, "sm_clock_mhz",
                         prefix=(ctypes.c_int(NVML_CLOCK_SM),)),
            self._scalar("nvmlDeviceGetTemperature", ctypes.c_uint, "temp_c",
                         prefix=(ctypes.c_int(NVML_TEMPERATURE_GPU),)),
            self._bind("nvmlDeviceGetFieldValues", (ctypes.c_int(1), field),
                       lambda m: _nv_put_field(m, "temp_mem_c", field[0])),
            self._scalar("nvmlDeviceGetFanSpeed", ctypes.c_uint, "fan_pct"),
            self._bind("nvmlDeviceGetFanSpeedRPM", (ctypes.byref(fan),),
                       lambda m: m.__setitem__("fan_rpm", fan.speed)),
            self._scalar("nvmlDeviceGetPowerUsage", ctypes.c_uint, "power_w", 1000.0),
            self._scalar("nvmlDeviceGetEnforcedPowerLimit", ctypes.c_uint, "power_cap_w", 1000.0),
            self._scalar("nvmlDeviceGetTotalEnergyConsumption", ctypes.c_ulonglong, "energy_j",
                         1000.0),
            self._memory_call(),
            self._scalar("nvmlDeviceGetCurrPcieLinkGeneration", ctypes.c_uint, "pcie_gen"),
            self._scalar("nvmlDeviceGetCurrPcieLinkWidth", ctypes.c_uint, "pcie_width"),
            self._bind("nvmlDeviceGetPerformanceState", (ctypes.byref(pstate),),
                       lambda m: m.__setitem__("pstate", None if pstate.value == NVML_PSTATE_UNKNOWN
                                               else pstate.value)),
            self._bind(reasons_fn, (ctypes.byref(reasons),),
                       lambda m: m.__setitem__("throttle_reasons",
                                               parse_clock_event_reasons(reasons.value))),
            self._bind("nvmlDeviceGetEncoderUtilization", (ctypes.byref(enc), ctypes.byref(period)),
                       lambda m: m.__setitem__("enc_pct", enc.value)),
            self._bind("nvmlDeviceGetDecoderUtilization", (ctypes.byref(dec), ctypes.byref(period)),
                       lambda m: m.__setitem__("dec_pct", dec.value)),
        ]
        return [call for call in calls if call is not None]

    def _memory_call(self):
        """VRAM from nvmlDeviceGetMemoryInfo_v2 (reserved too), else the v1 call."""
        mem1, mem2 = NvmlMemory(), NvmlMemoryV2(version=NVML_MEMORY_V2_VERSION)
        v1 = self._bind("nvmlDeviceGetMemoryInfo", (ctypes.byref(mem1),),
                        lambda m: m.update(vram_total_bytes=mem1.total, vram_used_bytes=mem1.used,
                                           vram_used_source="nvml_v1"))
        return self._bind("nvmlDeviceGetMemoryInfo_v2", (ctypes.byref(mem2),),
                          lambda m: m.update(vram_total_bytes=mem2.total, vram_used_bytes=mem2.used,
                                             vram_reserved_bytes=mem2.reserved,
                                             vram_used_source="nvml_v2"), fallback=v1)

    def sample(self, now):
        metrics = dict(self._active)
        for call in self._calls:              # the hot path: one C call and one store each
            rc = call.fn(*call.args)
            if rc == NVML_SUCCESS and call.put(metrics) is not False:
                continue
            if rc == NVML_ERROR_GPU_IS_LOST:  # while lost: the first call, nothing more
                return self._lost()
            if rc in NVML_DISABLING_ERRORS or rc == NVML_SUCCESS:   # SUCCESS: put() refused
                self._disable(call, rc, metrics)
        self._facts.sample(now, metrics)
        self._mig_of[self.info.id] = metrics["mig"]
        if self._is_lost:
            LOG.info("event=gpu_back gpu=%s", self.info.id)
            self._is_lost = False
            self._lost_ids.discard(self.info.id)
        return metrics

    def _lost(self):
        if not self._is_lost:                 # one WARNING per lost streak, not per sample
            LOG.warning("event=gpu_lost gpu=%s pci=%s", self.info.id, self.info.pci)
            self._is_lost = True
        self._lost_ids.add(self.info.id)
        return new_metrics({"runtime_status": "lost"})

    def _disable(self, call, rc, metrics):
        """NOT_SUPPORTED (or the like) is for good: the call is replaced by its
        fallback (asked at once, for this tick), or dropped."""
        LOG.info("event=capability_missing gpu=%s call=%s rc=%d fallback=%s", self.info.id,
                 call.name, rc, call.fallback.name if call.fallback else None)
        index = self._calls.index(call)
        fallback = call.fallback
        if fallback is None:
            self._calls = self._calls[:index] + self._calls[index + 1:]   # a new list: the
            return                                                       # loop keeps its own
        self._calls = self._calls[:index] + [fallback] + self._calls[index + 1:]
        if fallback.fn(*fallback.args) == NVML_SUCCESS:
            fallback.put(metrics)

    def close(self):
        self._calls = []


def read_nvml_list(ask, struct):
    """NVML's "ask, grow the buffer, ask again" for a list whose length it sets:
    ask(None, 0) for the size, then a buffer of struct twice that (+5) while it
    answers INSUFFICIENT_SIZE (the list may grow between calls), at most
    NVML_LIST_ATTEMPTS times. ask(entries, size) -> (rc, count).
    -> (rc, the filled entries): rc NVML_SUCCESS with [] when the list is empty."""
    rc, count = ask(None, 0)
    for _ in range(NVML_LIST_ATTEMPTS):
        if rc != NVML_ERROR_INSUFFICIENT_SIZE:
            break
        size = count * 2 + 5
        entries = (struct * size)()
        rc, count = ask(entries, size)
        if rc == NVML_SUCCESS:
            return rc, entries[:count]
    return rc, []


class NvmlProcSource(object):
    """Process top of the NVIDIA GPUs: the compute, graphics and MPS lists
    (one row per PID), per-process SM/mem/enc/dec % from the newest
    utilisation API, names and users from /proc where the PID is visible.
    A utilisation API one GPU refuses is dropped for that GPU only (one box
    may mix GPUs that give per-process utilisation and GPUs that do not)."""

    def __init__(self, nvml, devices, proc_root, lost=None, clock_us=None, names=None,
                 mig=None):
        self._nvml, self._devices, self._root = nvml, devices, proc_root
        self._lost = lost if lost is not None else set()
        self._mig_of = mig if mig is not None else {}   # gpu id -> its readers' metrics.mig
        self._clock_us = clock_us or (lambda: int(time.time() * 1e6))
        self._proc = ProcEnricher(proc_root, names=names)
        self._last_seen = {}              # gpu id -> newest utilisation sample timestamp (µs)
        self._util_refused = {}           # gpu id -> {utilisation APIs it refused for good}
        self._lists = [self._list_function(kind, base) for kind, base in NVML_PROCESS_LISTS]
        self._util_new = nvml.function("nvmlDeviceGetProcessesUtilizationInfo", ctypes.c_void_p,
                                       ctypes.POINTER(NvmlProcessesUtilizationInfo))
        self._util_old = nvml.function("nvmlDeviceGetProcessUtilization", ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint),
                                       ctypes.c_ulonglong)
        self._name_fn = nvml.function("nvmlSystemGetProcessName", ctypes.c_uint, ctypes.c_char_p,
                                      ctypes.c_uint)

    def _list_function(self, kind, base):
        """(kind, bound function, entry struct): _v3, else _v2, else v1; the
        32-byte early-R535 entries by nvitop's rule (ConfComputeMemSizeInfo
        present, RunningProcessDetailList absent)."""
        r535 = (self._nvml.has("nvmlDeviceGetConfComputeMemSizeInfo")
                and not self._nvml.has("nvmlDeviceGetRunningProcessDetailList"))
        for suffix, struct in (("_v3", NvmlProcessInfoR535 if r535 else NvmlProcessInfoV2),
                               ("_v2", NvmlProcessInfoV2), ("", NvmlProcessInfoV1)):
            fn = self._nvml.function(base + suffix, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.c_void_p)
            if fn is not None:
                return kind, fn, struct
        return kind, None, None

    def set_gpus(self, infos):
        pass

    def refresh(self):
        return self.scan()

    def scan(self):
        t0 = time.monotonic()
        procfd = open_dir_at(None, self._root)
        procfd = None if isinstance(procfd, OSError) else procfd
        by_pci = {}
        try:
            for info, handle in self._devices:
                if info.id not in self._lost:
                    by_pci[info.pci] = self._gpu_entry(info, handle, procfd)
        finally:
            if procfd is not None:
                os.close(procfd)
        self._proc.prune()
        return ScanResult(by_pci, None, {"cut_short": False,
                                         "duration_s": round(time.monotonic() - t0, 6)})

    def _gpu_entry(self, info, handle, procfd):
        found = []
        for kind, fn, struct in self._lists:
            found.extend(self._read_list(fn, struct, handle, kind))
        procs = merge_nvml_processes(found)
        util = self._utilisation(info.id, handle, set(procs))
        instances = self._mig_of.get(info.id)
        ids = dict((p.pid, (p.gi, p.ci)) for p in found if p.gi != NVML_NO_INSTANCE_ID)
        rows = [self._row(procfd, pid, used, kind, util,
                          nvml_proc_mig(*(ids.get(pid, (None, None)) + (instances,))))
                for pid, (used, kind) in procs.items()]
        engines = set()
        for row in rows:
            engines.update(row["engines_pct"])
        return build_procs_entry(rows, len(rows),
                                 build_capabilities("nvml", True, util is not None, engines))

    def _read_list(self, fn, struct, handle, kind):
        """One process list: sized with count 0 first, re-read while it grows."""
        if fn is None:
            return []

        def ask(entries, size):
            count = ctypes.c_uint(size)
            return fn(handle, ctypes.byref(count), entries), count.value
        return [NvmlProcess(e.pid, e.usedGpuMemory, kind, getattr(e, "gpuInstanceId", None),
                            getattr(e, "computeInstanceId", None))
                for e in read_nvml_list(ask, struct)[1]]

    def _utilisation(self, gpu_id, handle, pids):
        """{pid: {engine: %}} (0 % for listed PIDs without a new sample), or
        None when the GPU gives no per-process utilisation (or not this time).
        The newest API is used while it answers; the old one only once the
        new one is refused for good on this GPU, so one frame never mixes
        their engines."""
        last = self._last_seen.get(gpu_id) or self._clock_us() - 1000000
        refused = self._util_refused.setdefault(gpu_id, set())
        for fn, read, engines in ((self._util_new, self._util_samples_new, NVML_UTIL_ENGINES),
                                  (self._util_old, self._util_samples_old, NVML_UTIL_ENGINES[:4])):
            if fn is None or fn.__name__ in refused:
                continue
            samples = read(handle, last)
            if samples is not False:
                break
            LOG.info("event=capability_missing gpu=%s call=%s", gpu_id, fn.__name__)
            refused.add(fn.__name__)
        else:
            return None
        if samples is None:
            return None
        if samples:
            self._last_seen[gpu_id] = max(stamp for _, stamp, _ in samples)
        picked = pick_nvml_util(samples, pids)
        zero = dict.fromkeys(engines, 0)
        return dict((pid, picked.get(pid, zero)) for pid in pids)

    def _util_samples_new(self, handle, last):
        info = NvmlProcessesUtilizationInfo(version=NVML_PROC_UTIL_INFO_VERSION, lastSeenTimeStamp=last)

        def ask(entries, size):
            info.processSamplesCount, info.procUtilArray = size, entries
            return self._util_new(handle, ctypes.byref(info)), info.processSamplesCount
        rc, entries = read_nvml_list(ask, NvmlProcessUtilizationInfo)
        if rc != NVML_SUCCESS:
            return self._util_empty(rc)
        return [(e.pid, e.timeStamp, {"sm": e.smUtil, "mem": e.memUtil, "enc": e.encUtil,
                                      "dec": e.decUtil, "jpg": e.jpgUtil, "ofa": e.ofaUtil})
                for e in entries]

    def _util_samples_old(self, handle, last):
        def ask(entries, size):
            count = ctypes.c_uint(size)
            return (self._util_old(handle, entries, ctypes.byref(count), ctypes.c_ulonglong(last)),
                    count.value)
        rc, entries = read_nvml_list(ask, NvmlProcessUtilizationSample)
        if rc != NVML_SUCCESS:
            return self._util_empty(rc)
        return [(e.pid, e.timeStamp, {"sm": e.smUtil, "mem": e.memUtil, "enc": e.encUtil,
                                      "dec": e.decUtil}) for e in entries]

    @staticmethod
    def _util_empty(rc):
        """No samples: [] when NVML has none newer (every process idle), False
        when this GPU refuses the API for good, None otherwise (not this time)."""
        if rc in (NVML_SUCCESS, NVML_ERROR_NOT_FOUND):
            return []
        if rc in NVML_DISABLING_ERRORS:
            return False
        return None

    def _row(self, procfd, pid, used, kind, util, mig=None):
        engines = None if util is None else dict((k, float(v)) for k, v in util[pid].items())
        sm = engines.get("sm") if engines else None
        common = dict(pid=pid, vram_bytes=used, engines_pct=engines, type=kind, clients=1, mig=mig,
                      gpu_time_ms_per_s=None if sm is None else round(sm * 10.0, 1))
        line = NO_PROC_STAT if procfd is None else read_proc_stat_at(procfd, pid)
        if line.start_time is None:      # another PID namespace (or gone): NVML's name only
            return build_proc_row(name=self._nvml_name(pid), visible=False, **common)
        return build_proc_row(**dict(common, **self._proc.describe(procfd, pid, line,
                                                                   time.monotonic())))

    def _nvml_name(self, pid):
        if self._name_fn is None:
            return None
        buf = ctypes.create_string_buffer(NVML_PROCESS_NAME_BUFFER)
        if self._name_fn(pid, buf, NVML_PROCESS_NAME_BUFFER) != NVML_SUCCESS:
            return None
        return sanitize_text(os.path.basename(buf.value.decode("utf-8", "replace"))) or None


class NvidiaBackend(object):
    """Every GPU NVML lets us open, enumerated once (NVML has no hot-plug to
    follow): ids nvidia0.. in PCI-address order, so a reboot that reorders
    NVML's indices does not swap two GPUs' ids (nor their histories)."""

    vendor = "nvidia"

    def __init__(self, nvml, sysfs_root, proc_root, names=None):
        self._nvml, self._sysfs_root, self._proc_root = nvml, sysfs_root, proc_root
        self._names = names              # WhoNames for the process rows (None: no lookups)
        self._devices = None             # [(GpuInfo, handle)]
        self.lost = set()                # ids of GPUs that answered GPU_IS_LOST
        self.mig = {}                    # gpu id -> its MIG instances (readers write, rows read)

    @classmethod
    def open(cls, config):
        """The backend, or None (one INFO line) when NVML cannot be used here."""
        nvml, why = load_nvml(config.nvml_library)
        if nvml is None:
            LOG.info("event=nvml_unavailable library=%s reason=%r", config.nvml_library, why)
            return None
        return cls(nvml, config.sysfs_root, config.proc_root, make_who_names(config))

    def discover(self):
        if self._devices is None:
            self._devices = self._enumerate()
        return [info for info, _ in self._devices]

    def _versions(self):
        """(driver version, CUDA driver version "12.4"), asked once: system-wide."""
        cuda = self._nvml.uint("nvmlSystemGetCudaDriverVersion_v2")
        if cuda is None:
            cuda = self._nvml.uint("nvmlSystemGetCudaDriverVersion")
        return (self._nvml.system_text("nvmlSystemGetDriverVersion", NVML_DRIVER_VERSION_BUFFER),
                format_cuda_version(cuda))

    def _enumerate(self):
        count = ctypes.c_uint(0)
        count_fn = self._nvml.function("nvmlDeviceGetCount_v2", ctypes.POINTER(ctypes.c_uint))
        if count_fn is None or count_fn(ctypes.byref(count)) != NVML_SUCCESS:
            LOG.warning("event=nvml_count_failed")
            return []
        get = self._nvml.function("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint,
                                  ctypes.POINTER(ctypes.c_void_p))
        found = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            rc = get(index, ctypes.byref(handle))
            if rc != NVML_SUCCESS:
                LOG.info("event=nvml_gpu_skipped index=%d reason=%r", index, self._nvml.error_string(rc))
                continue
            info = self._identity(index, handle)
            if info is not None:
                found.append((info, handle))
        found.sort(key=lambda item: item[0].pci)
        driver, cuda = self._versions()
        return [(info._replace(id="nvidia%d" % n, driver_version=driver, cuda_driver_version=cuda),
                 handle) for n, (info, handle) in enumerate(found)]

    def _identity(self, index, handle):
        pci = NvmlPciInfo()
        for name in ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo_v2", "nvmlDeviceGetPciInfo"):
            fn = self._nvml.function(name, ctypes.c_void_p, ctypes.POINTER(NvmlPciInfo))
            if fn is not None and fn(handle, ctypes.byref(pci)) == NVML_SUCCESS:
                break
        else:
            LOG.info("event=nvml_gpu_skipped index=%d reason='no PCI info'", index)
            return None
        address = nvml_pci_address(pci.domain, pci.bus, pci.device)
        device_dir = os.path.join(self._sysfs_root, "bus", "pci", "devices", address)
        return GpuInfo(
            id=None, pci=address, pci_id=nvml_pci_id(pci.pciDeviceId), revision=None,
            name=self._nvml.text("nvmlDeviceGetName", handle, NVML_NAME_BUFFER) or "NVIDIA GPU",
            render_node=find_render_node(device_dir), driver="nvidia", apu=False, demo=False,
            device_dir=None, hwmon_dir=None, vendor="nvidia",
            uuid=self._nvml.text("nvmlDeviceGetUUID", handle, NVML_UUID_BUFFER), handle=index,
            sclk_max_mhz=self._nvml.uint("nvmlDeviceGetMaxClockInfo", handle,
                                         ctypes.c_int(NVML_CLOCK_GRAPHICS)),
            mclk_max_mhz=self._nvml.uint("nvmlDeviceGetMaxClockInfo", handle,
                                         ctypes.c_int(NVML_CLOCK_MEM)))

    def open_reader(self, info):
        handle = dict((i.id, h) for i, h in self._devices)[info.id]
        return NvidiaGpuReader(self._nvml, info, handle, self.lost, self.mig)

    def proc_source(self):
        self.discover()
        return NvmlProcSource(self._nvml, self._devices, self._proc_root, self.lost,
                              names=self._names, mig=self.mig)

    def close(self):
        self._nvml.shutdown()


# -- demo: synthetic GPUs and their processes -------------------------------

DEMO_GPUS = (
    # id, pci, pci_id, name, apu, vram total, gtt total, power cap W, phase
    ("card0", "0000:03:00.0", "1002:747e", "AMD Radeon RX 7800 XT (demo)", False,
     17163091968, 33554432000, 263.0, 0.0),
    ("card1", "0000:64:00.0", "1002:15bf", "AMD Radeon 780M (demo)", True,
     536870912, 31433977856, None, 2.1),
    ("card2", "0000:0c:00.0", "1002:744c", "AMD Radeon RX 7900 XTX (demo)", False,
     25753026560, 33554432000, 327.0, 4.4),
    ("card3", "0000:2d:00.0", "1002:740f", "AMD Instinct MI210 (demo)", False,
     68702699520, 33554432000, 300.0, 6.3),
)
DEMO_NVIDIA = (
    # id, pci, pci_id, name, uuid, VRAM, reserved, power cap W, phase, has a fan
    ("nvidia0", "0000:c1:00.0", "10de:2684", "NVIDIA GeForce RTX 4090 (demo)",
     "GPU-5e1d2c3b-9a0f-4e7d-8b6a-1c2d3e4f5a6b", 25757220864, 531628032, 450.0, 7.0, True),
    ("nvidia1", "0000:18:00.0", "10de:2330", "NVIDIA H100 80GB HBM3 (demo)",
     "GPU-0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e", 85520809984, 569376768, 700.0, 13.0, False),
    ("nvidia2", "0000:2a:00.0", "10de:2330", "NVIDIA H100 80GB HBM3 (demo)",
     "GPU-1c0d9e8f-7a6b-4c5d-8e3f-2a1b0c9d8e7f", 85520809984, 569376768, 700.0, 19.0, False),
    ("nvidia3", "0000:3a:00.0", "10de:2330", "NVIDIA H100 80GB HBM3 (demo)",
     "GPU-2d1e0f9a-8b7c-4d6e-9f4a-3b2c1d0e9f8a", 85520809984, 569376768, 700.0, 23.0, False),
)
# Which synthetic GPUs --demo shows, in order, for APP_DEMO_GPUS = 1..8.
DEMO_ORDER = ("card0", "card1", "nvidia0", "nvidia1", "card2", "nvidia2", "card3", "nvidia3")


DEMO_LEAK_GPU = "card0"         # --demo-scenario leak: this GPU's VRAM leaks...
DEMO_LEAK_PERIOD_S = 220.0      # ...in cycles: grows 145 s (51 % -> 98 %), holds, frees
DEMO_LEAK_GROW_S = 145.0
DEMO_LEAK_HOLD_S = 45.0
DEMO_LEAK_SHARE = 0.47          # of total VRAM, on top of the processes' usual 51 %


def demo_leak_fraction(elapsed_s):
    """--demo-scenario leak: the share of VRAM leaked after elapsed_s (a sawtooth)."""
    phase = elapsed_s % DEMO_LEAK_PERIOD_S
    if phase < DEMO_LEAK_GROW_S:
        return DEMO_LEAK_SHARE * phase / DEMO_LEAK_GROW_S
    return DEMO_LEAK_SHARE if phase < DEMO_LEAK_GROW_S + DEMO_LEAK_HOLD_S else 0.0


def demo_gpu_infos(count=3):
    """The first count synthetic GPUs of DEMO_ORDER (AMD dGPU, APU, NVIDIA, ...)."""
    amd = dict((row[0], row) for row in DEMO_GPUS)
    nvidia = dict((row[0], row) for row in DEMO_NVIDIA)
    infos = []
    for gpu_id in DEMO_ORDER[:count]:
        if gpu_id in amd:
            row = amd[gpu_id]
            infos.append(GpuInfo(id=row[0], pci=row[1], pci_id=row[2], revision="c8", name=row[3],
                                 render_node="/dev/dri/renderD%d" % (128 + DEMO_GPUS.index(row)),
                                 driver=AMD_DRIVER, apu=row[4], demo=True, device_dir=None,
                                 hwmon_dir=None))
        else:
            row = nvidia[gpu_id]
            infos.append(GpuInfo(id=row[0], pci=row[1], pci_id=row[2], revision=None, name=row[3],
                                 render_node=None, driver="nvidia", apu=False, demo=True,
                                 device_dir=None, hwmon_dir=None, vendor="nvidia", uuid=row[4]))
    return infos


DEMO_PROCS = (
    # name, user, cmd, container, kfd, engines (name -> base %), vram MiB, gtt MiB
    ("blender", "alice", "blender --background scene.blend --render-anim", None, False,
     {"gfx": 55.0, "compute": 8.0}, 2600, 310),
    ("python3", "bob", "python3 train.py --epochs 40 --api-key=[redacted]", "3f2a9c1d7e4b", True,
     {"gfx": 0.0, "compute": 0.0}, 3100, 900),   # ROCm: its queues never show in DRM counters
    ("Xorg", "root", "/usr/lib/xorg/Xorg :0 -seat seat0 -auth /run/lightdm/root/:0", None, False,
     {"gfx": 2.5}, 180, 60),
    ("firefox", "alice", "/usr/lib/firefox/firefox -contentproc -isForBrowser", None, False,
     {"gfx": 4.0, "dec": 6.0}, 420, 220),
    ("code", "erin", "/usr/share/code/code --type=gpu-process", None, False, {"gfx": 1.0}, 96, 24),
    ("obs", "alice", "obs --startstreaming", None, False, {"gfx": 7.0, "enc": 18.0}, 610, 140),
    ("mpv", "carol", "mpv --hwdec=vaapi movie.mkv", None, False, {"dec": 12.0}, 150, 40),
    ("llama-server", "dave", "llama-server -m model.gguf --port 8081", "9c4e07b1a2d5", False,
     {"gfx": 0.0, "compute": 44.0}, 900, 2100),
)
# Who each demo process belongs to (by name; the row fields of WhoNames.fields).
DEMO_WHO = {
    "blender": {"unit": "slurmstepd.scope", "slurm": {"job": 48213, "step": "0"}},
    "python3": {"unit": "docker-3f2a9c1d7e4b25b0315ff17bd1ebad3d95c15a3f8b764eaadb936"
                        "12d9b61a54e.scope", "container_name": "trainer"},
    "Xorg": {"unit": "display-manager.service"},
    "jupyter": {"unit": "slurmstepd.scope", "slurm": {"job": 81723, "step": "0"}},
    "firefox": {"unit": "user@1000.service/app-firefox@4711.service"},
    "code": {"unit": "user@1003.service/app-code-2318.scope"},
    "obs": {"unit": "session-3.scope"},
    "llama-server": {"unit": "cri-containerd-9c4e07b1a2d59892fcdf8aa79ea5d6bb6531b5c176"
                             "939ef0110906cb225941c1.scope",
                     "k8s": {"namespace": "inference", "pod": "llama-7d9f5c6b8-xk2lp",
                             "container": "llama-server",
                             "pod_uid": "5f0c2a7e-1b3d-4c8e-9a6f-2d4b8e1c7a93"}},
}
# --demo-scenario hostile: this process takes slot 4 ("code"); the escaping tests use it,
# a new user's first look at the demo does not.
DEMO_HOSTILE_PROC = ("<img src=x onerror=alert(1)>", "mallory", "<script>alert(1)</script> --token=[redacted]",
                     None, False, {"gfx": 1.0}, 64, 16)
DEMO_HOSTILE_SLOT = 4
# --demo-scenario held_idle: card0's first process holds VRAM and never works.
DEMO_IDLE_PROC = ("jupyter", "frank", "python3 -m ipykernel_launcher -f kernel-7f3a.json", None,
                  False, {"gfx": 0.0, "compute": 0.0}, 4096, 64)
DEMO_ENGINES = ("gfx", "compute", "dma", "dec", "enc")
DEMO_ENGINE_BUDGET_PCT = 72.0   # all of a GPU's processes at their peak: its busy has room above
DEMO_KFD_LOAD_PCT = 12.0        # a ROCm process's load: in the GPU's busy, not in DRM counters
DEMO_VRAM_RESERVE_MIB = 288     # what amdgpu keeps for itself (firmware, page tables, display)
DEMO_APU_RESERVE_MIB = 48
DEMO_GTT_RESERVE_MIB = 96
DEMO_NVIDIA_CONTEXT_MIB = 320   # NVML's used beyond its processes' (the driver's own)


def demo_proc_spec(gpu_index, index, hostile=False):
    """The DEMO_PROCS row of a demo GPU's index-th process; hostile: True (the
    hostile scenario's process in its slot) or "held_idle" (DEMO_IDLE_PROC first on card0)."""
    if hostile == "held_idle":
        return DEMO_IDLE_PROC if gpu_index == index == 0 else demo_proc_spec(gpu_index, index)
    slot = (index + gpu_index * 3) % len(DEMO_PROCS)
    return DEMO_HOSTILE_PROC if hostile and slot == DEMO_HOSTILE_SLOT else DEMO_PROCS[slot]


def demo_vram_total_bytes(gpu_id):
    for row in DEMO_GPUS:
        if row[0] == gpu_id:
            return row[5]
    return [row[5] for row in DEMO_NVIDIA if row[0] == gpu_id][0]


def _demo_peak_pct(spec):
    return sum(spec[5].values()) + (DEMO_KFD_LOAD_PCT if spec[4] else 0.0)


def demo_workload(info, gpu_index, per_gpu, t, leak=False, hostile=False):
    """One demo GPU's processes at t seconds: [{spec, wave, pct, busy_pct,
    vram_mib, gtt_mib}], the one model behind its process rows and its own
    busy and memory. Engine % are scaled so that all the processes at their
    peak stay within DEMO_ENGINE_BUDGET_PCT; busy_pct (the process's share
    of the GPU's busy, kfd load included) sums to at most that."""
    nvidia = info.vendor == "nvidia"
    specs = [demo_proc_spec(gpu_index, i, hostile) for i in range(per_gpu)]
    peak = sum(_demo_peak_pct(spec) for spec in specs)
    scale = min(1.0, DEMO_ENGINE_BUDGET_PCT / peak) if peak else 1.0
    vram_scale = 1.0 if info.apu else min(1.0, 0.5 * (demo_vram_total_bytes(info.id) >> 20)
                                          / max(1, sum(spec[6] for spec in specs)))
    out = []
    for index, spec in enumerate(specs):
        wave = 0.6 + 0.4 * math.sin(t / ((12.0 if nvidia else 14.0) + index) + index)
        base = dict((e, spec[5].get(e, 0.0) * scale * wave) for e in DEMO_ENGINES)
        hidden = (DEMO_KFD_LOAD_PCT if spec[4] else 0.0) * scale * wave
        vram_mib, gtt_mib = int(spec[6] * vram_scale), spec[7]
        if leak and index == 1 and info.id == DEMO_LEAK_GPU:
            vram_mib += int(demo_leak_fraction(t) * demo_vram_total_bytes(info.id)) >> 20
        if info.apu:      # an APU's carve-out is tiny: it all lives in GTT
            cap = min(24, int(0.6 * (demo_vram_total_bytes(info.id) >> 20)) // max(1, per_gpu))
            vram_mib, gtt_mib = min(vram_mib, cap), gtt_mib + max(0, vram_mib - cap)
        if nvidia:
            sm = round(min(100.0, base["gfx"] + base["compute"] + hidden), 1)
            pct = {"sm": sm, "mem": round(sm * 0.4, 1), "enc": round(base["enc"], 1), "dec": round(base["dec"], 1)}
            busy = sm + pct["enc"] + pct["dec"]
        else:
            pct = dict((e, round(base[e], 1) if e in spec[5] else None) for e in DEMO_ENGINES)
            busy = sum(v for v in pct.values() if v) + hidden
        out.append({"spec": spec, "wave": wave, "pct": pct, "busy_pct": busy, "vram_mib": vram_mib,
                    "gtt_mib": 0 if nvidia else gtt_mib})
    return out


def demo_gpu_busy_pct(load, t, rng):
    """A demo GPU's busy: its processes' share plus 3-10 % of the kernel's and
    the display's, so a process is never busier than its GPU."""
    extra = 3.0 + 3.0 * (1.0 + math.sin(t / 2.3)) + rng.uniform(0.0, 1.0)
    return min(100.0, sum(p["busy_pct"] for p in load) + extra)


class DemoGpuReader(object):
    """Synthetic, plausible, moving values (--demo): busy is the demo processes'
    engine time plus a little of the kernel's and display's, memory their sum
    plus a driver reserve (demo_workload); clocks and power follow busy,
    temperature lags power, the fan follows it."""

    def __init__(self, info, seed=1, leak=False, index=0, per_gpu=8, hostile=False):
        self.info = info
        self._leak, self._started = leak, None
        self._index, self._per_gpu, self._hostile = index, per_gpu, hostile
        row = [r for r in DEMO_GPUS if r[0] == info.id][0]
        self._vram_total, self._gtt_total, self._cap, self._phase = row[5], row[6], row[7], row[8]
        self._rng = random.Random(seed)
        self._temp = 40.0

    def sample(self, now):
        if self._started is None:
            self._started = now
        elapsed_s = now - self._started
        load = demo_workload(self.info, self._index, self._per_gpu, elapsed_s, self._leak, self._hostile)
        busy = demo_gpu_busy_pct(load, now + self._phase * 10, self._rng)
        apu = self.info.apu
        power = (6.0 + busy * 0.5) if apu else (18.0 + busy * 2.3)
        self._temp += ((32.0 + power * (0.8 if apu else 0.2)) - self._temp) * 0.05
        metrics = new_metrics(self._memory(load))
        metrics.update({
            "runtime_status": "active", "gpu_busy_pct": int(math.ceil(busy)), "vram_used_source": "sysfs",
            "sclk_mhz": int(500 + busy * (22 if apu else 19)), "mclk_mhz": 800 if apu else 1218,
            "temp_c": round(self._temp, 1), "power_w": round(power, 3),
            "vddgfx_mv": int(700 + busy * 4)})
        if apu:
            metrics["vddnb_mv"] = 615
        else:
            metrics.update(self._dgpu_extras(busy))
        return metrics

    def _memory(self, load):
        # The processes' memory plus what the driver keeps for itself (firmware,
        # page tables, the display): the "other" of the memory bars stays small.
        reserve = DEMO_APU_RESERVE_MIB if self.info.apu else DEMO_VRAM_RESERVE_MIB
        return {"vram_total_bytes": self._vram_total, "vis_vram_total_bytes": self._vram_total,
                "vram_used_bytes": (sum(p["vram_mib"] for p in load) + reserve) << 20,
                "vis_vram_used_bytes": int(self._vram_total * 0.1),
                "gtt_total_bytes": self._gtt_total,
                "gtt_used_bytes": (sum(p["gtt_mib"] for p in load) + DEMO_GTT_RESERVE_MIB) << 20}

    def _dgpu_extras(self, busy):
        fan_pct = round(max(0.0, min(100.0, (self._temp - 45) * 3.0)), 1)
        return {"mem_busy_pct": int(busy * 0.4), "temp_junction_c": round(self._temp + 9, 1),
                "temp_mem_c": round(self._temp + 4, 1), "fan_pct": fan_pct,
                "fan_rpm": int(fan_pct * 33), "power_cap_w": self._cap,
                "pcie_gen": 4, "pcie_speed_gts": 16.0, "pcie_width": 16}

    def close(self):
        pass


class DemoNvidiaReader(object):
    """--demo's NVIDIA GPU: NVML-shaped values (SM clock, P-states, power
    capping and a thermal slowdown now and then, encoder/decoder use); busy
    and memory follow its processes (demo_workload), as on the AMD ones."""

    def __init__(self, info, seed=3, index=0, per_gpu=8, hostile=False):
        self.info = info
        self._row = [row for row in DEMO_NVIDIA if row[0] == info.id][0]
        self._index, self._per_gpu, self._hostile = index, per_gpu, hostile
        self._rng = random.Random(seed)
        self._temp, self._energy_j = 38.0, 1.5e6
        self._last = self._started = None

    def sample(self, now):
        _, _, _, _, _, vram, reserved, cap, phase, fan = self._row
        if self._started is None:
            self._started = now
        load = demo_workload(self.info, self._index, self._per_gpu, now - self._started, False, self._hostile)
        t = now + phase
        busy = demo_gpu_busy_pct(load, t, self._rng)
        power = cap * (0.08 + busy * 0.0089)
        self._temp += ((30.0 + 45.0 * power / cap) - self._temp) * 0.05     # <= 75 °C: calm
        if self._last is not None:
            self._energy_j += power * max(0.0, now - self._last)
        self._last = now
        # Clock events as NVML reports them: idle below 30 % busy, the power cap and a
        # thermal slowdown in the busy phases (most of the time, some GPU has one).
        reasons = ["GpuIdle"] if busy < 30 else []
        if power > 0.6 * cap:
            reasons.append("SwPowerCap")
        if self._temp > 62:
            reasons.append("SwThermalSlowdown")
        used_mib = sum(p["vram_mib"] for p in load) + DEMO_NVIDIA_CONTEXT_MIB
        return new_metrics({
            "runtime_status": "active", "gpu_busy_pct": int(math.ceil(busy)), "mem_busy_pct": int(busy * 0.45),
            "sclk_mhz": int(210 + busy * 25.2), "sm_clock_mhz": int(210 + busy * 25.2),
            "mclk_mhz": 10501 if busy > 5 else 405,
            "temp_c": int(self._temp), "temp_mem_c": None if fan else int(self._temp + 6),
            "fan_pct": int(max(30.0, (self._temp - 30) * 1.6)) if fan else None,
            "fan_rpm": None, "power_w": round(power, 3), "power_cap_w": cap,
            "energy_j": round(self._energy_j, 3), "vram_total_bytes": vram,
            "vram_reserved_bytes": reserved, "vram_used_bytes": used_mib << 20,
            "vram_used_source": "nvml_v2", "pcie_gen": 4 if busy > 5 else 1, "pcie_width": 16,
            "pstate": 2 if busy > 5 else 8, "throttle_reasons": reasons,
            "enc_pct": int(math.ceil(sum(p["pct"]["enc"] or 0.0 for p in load))),
            "dec_pct": int(math.ceil(sum(p["pct"]["dec"] or 0.0 for p in load)))})

    def close(self):
        pass


class DemoProcSource(object):
    """--demo: synthetic processes per demo GPU, with moving engine %; every
    row, total and capability goes through the same builders as real ones.
    The numbers come from demo_workload, as the GPUs' own busy and memory."""

    def __init__(self, infos, per_gpu, clock=time.monotonic, leak=False, wall_clock=time.time,
                 hostile=False):
        self.infos, self.per_gpu, self.clock, self.leak = infos, per_gpu, clock, leak
        self.wall_clock, self.hostile = wall_clock, hostile
        self._start = clock()
        self._wall_start = wall_clock()

    def _times(self, gpu_index, index):
        """started/elapsed_s: demo process i began i x 47 minutes (and a bit) before the demo."""
        start_s = self._wall_start - 600 - 2820 * index - 180 * gpu_index
        return compute_proc_times(start_s, self.wall_clock())

    def set_gpus(self, infos):
        pass

    def refresh(self):
        return self.scan()

    def scan(self):
        t = self.clock() - self._start
        by_pci = {}
        for gpu_index, info in enumerate(self.infos):
            nvidia = info.vendor == "nvidia"
            load = demo_workload(info, gpu_index, self.per_gpu, t, self.leak, self.hostile)
            rows = [(self._nvidia_process if nvidia else self._process)(gpu_index, i, p, t)
                    for i, p in enumerate(load)]
            engines = ("sm", "mem", "enc", "dec") if nvidia else DEMO_ENGINES
            by_pci[info.pci] = build_procs_entry(
                rows, len(rows), build_capabilities("demo", True, True, engines,
                                                    any(r["kfd"] for r in rows)))
        visibility = build_visibility(True, False, False, None, 0, None)
        return ScanResult(by_pci, visibility, {"cut_short": False, "duration_s": 0.0})

    def _process(self, gpu_index, index, load, t):
        name, user, cmd, container, kfd, engines, _, _ = load["spec"]
        pct, wave, vram_mib = load["pct"], load["wave"], load["vram_mib"]
        pid = 1000 + gpu_index * 5000 + index * 37
        busy_ns = dict((e, int(v * 1e7 * t)) for e, v in pct.items() if v is not None)
        return build_proc_row(
            pid=pid, uid=1000 + index, user=user, name=name, cmd=cmd,
            render_node="renderD%d" % (128 + gpu_index), kfd=kfd, vram_bytes=vram_mib << 20,
            gtt_bytes=load["gtt_mib"] << 20, cpu_bytes=0, engines_pct=pct, engines_ns=busy_ns,
            gpu_time_ms_per_s=round(sum(v for v in pct.values() if v) * 10.0, 1),
            container=container, start_time=100000 + pid, clients=1,
            cpu_pct=_demo_cpu_pct(index, wave), rss_bytes=_demo_rss_bytes(vram_mib, index),
            **dict(self._times(gpu_index, index), **_demo_who(name)))

    def _nvidia_process(self, gpu_index, index, load, t):
        """NVML-shaped: SM/mem/enc/dec %, C/G types, no GTT, one PID from
        another PID namespace (NVML lists it, /proc does not show it)."""
        name, user, cmd, container = load["spec"][:4]
        pct, wave, vram_mib = load["pct"], load["wave"], load["vram_mib"]
        pid = 1000 + gpu_index * 5000 + index * 37
        kind = "G" if name in ("Xorg", "firefox", "obs", "mpv", "code") else "C"
        common = dict(pid=pid, vram_bytes=vram_mib << 20, engines_pct=pct, type=kind, clients=1,
                      gpu_time_ms_per_s=round(pct["sm"] * 10.0, 1))
        if index == self.per_gpu - 1:
            return build_proc_row(name=name, visible=False, **common)
        return build_proc_row(uid=1000 + index, user=user, name=name, cmd=cmd,
                              container=container, start_time=100000 + pid,
                              cpu_pct=_demo_cpu_pct(index, wave),
                              rss_bytes=_demo_rss_bytes(vram_mib, index),
                              **dict(common, **dict(self._times(gpu_index, index),
                                                    **_demo_who(name))))


def _demo_who(name):
    """A demo process's unit, container_name, k8s and slurm (copies: rows are mutable)."""
    return json.loads(json.dumps(DEMO_WHO.get(name, {})))


def _demo_cpu_pct(index, wave):
    """A feeding thread or two per demo process: 3 % to ~180 % (top's scale)."""
    return round((3.0 + 60.0 * (index % 3)) * wave, 1)


def _demo_rss_bytes(vram_mib, index):
    return (180 + vram_mib // 8 + 37 * index) << 20


class DemoBackend(object):
    """--demo: two AMD GPUs (a dGPU and an APU) and an NVIDIA one, with
    synthetic processes; the same seam as the real backends."""

    vendor = "demo"

    def __init__(self, processes_per_gpu, gpus=3, scenario="none"):
        self._infos = demo_gpu_infos(gpus)
        self._per_gpu = processes_per_gpu
        self._scenario = scenario

    def discover(self):
        return list(self._infos)

    def open_reader(self, info):
        index, hostile = self._infos.index(info), self._swap()
        if info.vendor == "nvidia":
            return DemoNvidiaReader(info, index=index, per_gpu=self._per_gpu, hostile=hostile)
        return DemoGpuReader(info, seed=index + 1, leak=self._scenario == "leak" and info.id == DEMO_LEAK_GPU,
                             index=index, per_gpu=self._per_gpu, hostile=hostile)

    def proc_source(self):
        return DemoProcSource(self._infos, self._per_gpu, leak=self._scenario == "leak",
                              hostile=self._swap())

    def _swap(self):
        """demo_proc_spec's hostile argument for this scenario."""
        return {"hostile": True, "held_idle": "held_idle"}.get(self._scenario, False)

    def close(self):
        pass


# -- every backend, and one process source over theirs ----------------------

def make_backends(config):
    """The backends of this config: the demo alone with --demo; else AMD and
    Intel (sysfs, sharing one card listing and one fdinfo scanner) and NVIDIA
    when its library loads."""
    if config.demo:
        return [DemoBackend(config.demo_processes, config.demo_gpus, config.demo_scenario)]
    names, cards = NameResolver(config.share_root), DrmCardList(config.sysfs_root)
    fdinfo = None
    if config.proc_enable:
        fdinfo = ProcScanner(config.proc_root, config.proc_max_pids, config.proc_max_fds_per_pid,
                             budget_s=PROC_SCAN_BUDGET_S, sysfs_root=config.sysfs_root,
                             names=make_who_names(config))
    backends = [AmdBackend(cards, names, fdinfo), IntelBackend(cards, names, fdinfo)]
    nvidia = NvidiaBackend.open(config)
    return backends + ([nvidia] if nvidia is not None else [])


def make_proc_source(config, backends):
    """One process source over every backend's own (the fdinfo scanner is
    shared by AMD and Intel), or None when process top is off."""
    if not config.proc_enable:
        return None
    sources = []
    for backend in backends:
        source = backend.proc_source()
        if source is not None and all(source is not known for known in sources):
            sources.append(source)
    return MergedProcSource(sources) if sources else None


class MergedProcSource(object):
    """Several process sources as one: per-GPU entries of later sources win
    for the GPUs they report (the fdinfo scanner reports every GPU it was told
    of, NVML only its own); visibility from the first that has one."""

    def __init__(self, sources):
        self.sources = list(sources)

    def set_gpus(self, infos):
        for source in self.sources:
            source.set_gpus(infos)

    def scan(self):
        return self._merge([source.scan() for source in self.sources])

    def refresh(self):
        return self._merge([source.refresh() for source in self.sources])

    @staticmethod
    def _merge(results):
        by_pci, visibility, stats = {}, None, {}
        for result in results:
            by_pci.update(result.by_pci)
            visibility = visibility or result.visibility
            for key, value in result.stats.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    stats[key] = stats.get(key) or value
                else:
                    stats[key] = stats.get(key, 0) + value
        return ScanResult(by_pci, visibility, stats)


# ---------------------------------------------------------------------------
# 10. Insight: the VRAM forecaster, the alert engine, the webhook
# ---------------------------------------------------------------------------

# -- VRAM forecaster (per GPU; the maths is compute_vram_forecast) ----------

class VramForecaster(object):
    """One GPU's VRAM windows, one point per second, and its latest forecast.

    The sampler thread feeds the device (on_stats, every tick; the fit runs
    at most once per FORECAST_EVERY_S and is reused between ticks), the
    proc-scan thread the processes (on_procs); a small lock between them.
    """

    def __init__(self):
        points = int(FORECAST_HISTORY_S / FORECAST_STEP_S) + 2   # jumps are judged on the window before
        self._proc_points = int(FORECAST_WINDOW_S / FORECAST_STEP_S) + 2
        self._lock = threading.Lock()
        self._ts = collections.deque(maxlen=points)
        self._used = collections.deque(maxlen=points)
        self._procs = {}                 # (pid, start_time) -> (deque ts, deque vram)
        self._forecast = new_vram_forecast()
        self._computed_at = None
        self._free = None
        self._fit = TheilSenWindow()       # the sampler thread's alone: used outside the lock
        self._steps = {}                   # find_vram_step's memo (likewise)

    @staticmethod
    def _push(ts, values, epoch_s, value):
        """Keep the first sample of each second; a clock stepping back restarts."""
        if ts and epoch_s < ts[-1]:
            ts.clear()
            values.clear()
        if not ts or int(epoch_s / FORECAST_STEP_S) != int(ts[-1] / FORECAST_STEP_S):
            ts.append(epoch_s)
            values.append(value)

    def on_stats(self, epoch_s, metrics):
        """-> the vram_forecast dict for this stats frame."""
        used, total = metrics.get("vram_used_bytes"), metrics.get("vram_total_bytes")
        with self._lock:
            if used is None or not total:
                self._ts.clear()
                self._used.clear()
                self._forecast, self._computed_at = new_vram_forecast(), None
                return self._forecast
            self._free = max(0, total - used)
            self._push(self._ts, self._used, epoch_s, used)
            if len(self._ts) == 1:          # a fresh series (a reset, a clock stepped back)
                self._steps = {}
            if self._computed_at is not None and 0 <= epoch_s - self._computed_at < FORECAST_EVERY_S:
                return self._forecast
            self._computed_at = epoch_s
            ts, values = list(self._ts), list(self._used)
            growing = self._growing_procs()
        if len(self._steps) > 4 * len(ts):
            self._steps = dict((k, v) for k, v in self._steps.items() if k[0] >= ts[0])
        forecast = compute_vram_forecast(ts, values, total, growing, self._fit.fit, self._steps)
        with self._lock:
            self._forecast = forecast
        return forecast

    def _growing_procs(self):
        out = {}
        for (pid, _), (ts, vram) in self._procs.items():
            if len(vram) > 1 and vram[-1] > min(vram):
                out[pid] = (list(ts), list(vram))
        return out

    def on_procs(self, epoch_s, rows):
        """Process rows -> the same rows, each with its own vram_forecast (or None)."""
        out = []
        with self._lock:
            seen = set()
            for row in sorted(rows, key=lambda r: -(r.get("vram_bytes") or 0))[:FORECAST_PROC_MAX]:
                if row.get("vram_bytes") is None or not row.get("visible", True):
                    continue
                key = (row["pid"], row.get("start_time"))
                seen.add(key)
                ts, vram = self._procs.setdefault(key, (collections.deque(maxlen=self._proc_points),
                                                        collections.deque(maxlen=self._proc_points)))
                self._push(ts, vram, epoch_s, row["vram_bytes"])
            for key in [k for k in self._procs if k not in seen]:
                del self._procs[key]
            series = dict((k, (list(v[0]), list(v[1]))) for k, v in self._procs.items())
            free = self._free
        for row in rows:
            key = (row.get("pid"), row.get("start_time"))
            forecast = None
            if key in series:
                forecast = compute_proc_vram_forecast(series[key][0], series[key][1], free)
            out.append(row if forecast is None else dict(row, vram_forecast=forecast))
        return out


# -- alert engine (a sink: its own inbox and thread) ------------------------

class HeldIdleRule(object):
    """gpu_held_idle over procs frames (pure: frames and times in, changes
    out). An AlertState per process run (GPU, pid, start_time) only while it
    holds idle VRAM or fires; a run missing from HISTORY_RUN_MISSING_SCANS
    whole scans (or its GPU gone) has exited: resolved at once.
    Each call returns [(change or None, state, process, detail)]: a change
    to emit, or None for a firing alert's live refresh."""

    def __init__(self, levels):
        self.levels = levels
        self._held = {}          # gpu id -> {(pid, start_time): [AlertState, misses, process]}

    def on_procs(self, gpu_id, message, now_s, gpu_busy_pct=None):
        held, out, seen = self._held.setdefault(gpu_id, {}), [], set()
        for row, value, busy in compute_held_idle(message, gpu_busy_pct, self.levels):
            key = (row.get("pid"), row.get("start_time"))
            seen.add(key)
            if key not in held and value != 1:
                continue
            entry = held.setdefault(key, [AlertState("gpu_held_idle", self.levels), 0, None])
            entry[1], entry[2] = 0, build_alert_process(row)
            out.extend(self._update(entry, now_s, value, row.get("vram_bytes"), busy))
            if entry[0].severity is None and value != 1:
                del held[key]
        if not (message.get("scan") or {}).get("cut_short"):
            for key in [k for k in held if k not in seen]:
                held[key][1] += 1
                if held[key][1] >= HISTORY_RUN_MISSING_SCANS:
                    out.extend(self._end(held.pop(key), now_s, "exited"))
        return out

    def gone(self, gpu_id, now_s):
        """The GPU vanished: its runs' alerts resolve."""
        out = []
        for entry in (self._held.pop(gpu_id, None) or {}).values():
            out.extend(self._end(entry, now_s, "is gone with its GPU"))
        return out

    def _update(self, entry, now_s, value, vram, busy):
        state, process = entry[0], entry[2]
        change = state.update(now_s, value)
        if change is None:
            return [(None, state, process, format_held_idle(process, vram, busy))] if (
                state.severity is not None) else []
        why = "" if change["state"] == "firing" else (
            "works again" if value == 0 and (vram or 0) >= self.levels["min_vram"] else
            "freed its VRAM" if value == 0 else "has no known busy any more")
        return [(change, state, process, format_held_idle(process, vram, busy, why))]

    @staticmethod
    def _end(entry, now_s, why):
        change = entry[0].end(now_s)
        return [] if change is None else [(change, entry[0], entry[2],
                                           format_held_idle(entry[2], None, None, why))]


class AlertEngine(StoppableThread):
    """Evaluates the rules on every sample it is offered: a pass once a
    second on the sampler clock (run_on; else its own thread's timed pass),
    and in its own thread when woken.

    offer_* (called by the cache from the publishing threads) only append to
    a bounded inbox (drop-oldest, counted). Each state change becomes one
    alert frame (cache.publish_alert), one history row (store.offer_alert)
    and one webhook call. Between changes an active alert's value and summary
    follow the live value (_refresh): the cache's active list always, and an
    alert frame marked "update": true when the summary changed, at most every
    ALERT_UPDATE_EVERY_S per alert; no row, no webhook call.
    Tests call drain() instead of starting the thread.
    """

    def __init__(self, cache, rules, store=None, webhook=None, clock=time.time):
        StoppableThread.__init__(self, "alerts")
        self.cache, self.rules, self.store, self.webhook, self.clock = (
            cache, rules, store, webhook, clock)
        self._inbox = Inbox(ALERT_QUEUE_ITEMS, self._count_drop)
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()     # the thread's and the clock's passes
        self._timed_elsewhere = False
        self._events = collections.deque(maxlen=ALERT_EVENTS_KEPT)
        self._active = collections.OrderedDict()     # alert_subject -> firing event, live values
        self._pushed = {}                             # alert_subject -> (s, summary) last sent
        self._states = {}
        self._procs = {}                              # gpu id -> procs message
        self._sensors = {}                            # gpu id -> {sensor key: last seen s}
        self._ecc_seen = {}                           # gpu id -> last volatile uncorrected count
        self._known = set()
        self._busy = {}                               # gpu id -> its latest gpu_busy_pct
        self._held = HeldIdleRule(rules["gpu_held_idle"]) if rules["gpu_held_idle"].get(
            "enabled", True) else None

    # -- the sink side (never blocks) --

    @property
    def dropped(self):
        return self._inbox.dropped

    def _count_drop(self):
        self.cache.record("exporter_alert_inbox_dropped_total", (), 1, add=True)

    def _put(self, item, wake=False):
        """Samples wait for the thread's once-a-second pass (holds are whole
        seconds; a wake-up per sample cost more than the rules), unless the
        inbox is half full; a GPU list change wakes it at once."""
        self._inbox.put(item, wake=wake or (len(self._inbox) + 1) * 2 >= self._inbox.maxlen)

    def offer_stats(self, gpu_id, epoch_s, metrics):
        self._put(("stats", gpu_id, epoch_s, metrics))

    def offer_procs(self, gpu_id, message):
        self._put(("procs", gpu_id, message))

    def offer_host(self, epoch_s, host):
        self._put(("host", None, epoch_s, host))

    def offer_gpus(self, gpu_ids):
        self._put(("gpus", tuple(gpu_ids), self.clock()), wake=True)

    # -- the thread --

    def stop(self):
        StoppableThread.stop(self)
        self._inbox.wake()

    def run(self):
        while not self.stopping.is_set():
            self._inbox.wait(None if self._timed_elsewhere else 1.0)
            self.drain()

    def run_on(self, clock):
        """The once-a-second pass on the SamplerClock; the thread then wakes
        only when woken (a GPU list change, a half-full inbox)."""
        self._timed_elsewhere = True
        clock.every(1.0, lambda at: self.drain())

    def drain(self):
        with self._drain_lock:
            for item in self._inbox.drain():
                try:
                    getattr(self, "_on_" + item[0])(*item[1:])
                except Exception:   # one bad sample must not stop the alerts
                    LOG.exception("event=alert_eval_failed kind=%s", item[0])

    # -- evaluation --

    def _observe(self, rule, gpu_id, now_s, value, levels=None, detail=""):
        config = self.rules[rule]
        if not config.get("enabled", True):
            return
        state = self._states.get((rule, gpu_id))
        if state is None:
            state = self._states[(rule, gpu_id)] = AlertState(rule, levels or config)
        state.levels = levels or config
        change = state.update(now_s, value)
        if change is not None:
            self._emit(rule, gpu_id, change, now_s, detail() if callable(detail) else detail)
        elif state.severity is not None:
            self._refresh(rule, gpu_id, state, now_s, detail() if callable(detail) else detail)

    def _on_stats(self, gpu_id, now_s, metrics):
        self._known.add(gpu_id)
        self._busy[gpu_id] = metrics.get("gpu_busy_pct")
        # Details are callables: formatted only for a change or a firing alert.
        levels, temp, limit = temperature_levels(self.rules["gpu_temperature"], metrics)
        self._observe("gpu_temperature", gpu_id, now_s, temp, levels,
                      lambda: "limit %s °C" % format_value(limit, "") if limit else "")
        self._observe("vram_usage", gpu_id, now_s, compute_vram_pct(metrics))
        forecast = metrics.get("vram_forecast") or {}
        procs = self._procs.get(gpu_id) or {}
        self._observe("vram_full_soon", gpu_id, now_s, compute_full_in_s(forecast),
                      detail=lambda: format_forecast(forecast, with_full=False, names=dict(
                          (r.get("pid"), r.get("name")) for r in procs.get("processes") or ())))
        self._observe("gpu_throttling", gpu_id, now_s, compute_throttled(metrics),
                      detail=lambda: ", ".join(metrics.get("throttle_reasons") or ()))
        self._observe("fan_stopped", gpu_id, now_s, compute_fan_stopped(
            metrics, self.rules["fan_stopped"].get("hot_c", 70.0)),
            detail=lambda: "%s °C" % format_value(metrics.get("temp_c"), ""))
        lost, why = self._lost(gpu_id, now_s, metrics)
        self._observe("gpu_lost", gpu_id, now_s, lost, detail=why)
        self._observe("busy_unattributed", gpu_id, now_s, self._unattributed(gpu_id, metrics),
                      detail=lambda: unattributed_hint(procs.get("visibility")))
        self._observe("gpu_ecc_uncorrected", gpu_id, now_s, self._ecc_new(gpu_id, metrics),
                      detail=lambda: "%s since the driver loaded" % format_value(
                          metrics.get("ecc_uncorrected_volatile"), "%d"))

    def _ecc_new(self, gpu_id, metrics):
        """Uncorrected ECC errors new since the GPU's previous reading."""
        count = metrics.get("ecc_uncorrected_volatile")
        new = compute_ecc_new(self._ecc_seen.get(gpu_id), count)
        if count is not None:
            self._ecc_seen[gpu_id] = count
        return new

    def _lost(self, gpu_id, now_s, metrics):
        status = metrics.get("runtime_status")
        if status == "lost":
            return 1, "the driver reports the GPU lost"
        seen = self._sensors.setdefault(gpu_id, {})
        gone = []
        for key in SENSOR_KEYS:
            if metrics.get(key) is not None:
                seen[key] = now_s
            elif key in seen and status in (None, "active", "unsupported") and (
                    now_s - seen[key] >= ALERT_LOST_AFTER_S):
                gone.append(key)
        return (1, "sensor gone: " + ", ".join(gone)) if gone else (0, "")

    def _unattributed(self, gpu_id, metrics):
        message = self._procs.get(gpu_id)
        busy = metrics.get("gpu_busy_pct")
        if message is None or busy is None:
            return None
        return 0 if proc_attributed(message) else busy

    def _on_procs(self, gpu_id, message):
        self._procs[gpu_id] = message
        now_s = parse_iso_ts(message.get("ts"))
        if self._held is not None and now_s is not None:
            self._held_out(gpu_id, now_s, self._held.on_procs(
                gpu_id, message, now_s, self._busy.get(gpu_id)))

    def _held_out(self, gpu_id, now_s, items):
        for change, state, process, detail in items:
            if change is not None:
                self._emit("gpu_held_idle", gpu_id, change, now_s, detail, process)
            else:
                self._refresh("gpu_held_idle", gpu_id, state, now_s, detail, process)


    def _on_host(self, _, now_s, host):
        used, total = (host or {}).get("mem_used_bytes"), (host or {}).get("mem_total_bytes")
        pct = round(100.0 * used / total, 2) if used is not None and total else None
        self._observe("host_memory", None, now_s, pct)

    def _on_gpus(self, gpu_ids, now_s):
        current = set(gpu_ids)
        for gpu_id in sorted(self._known - current):
            self._observe("gpu_lost", gpu_id, now_s, 1, detail="it vanished from the GPU list")
            self._procs.pop(gpu_id, None)
            if self._held is not None:
                self._held_out(gpu_id, now_s, self._held.gone(gpu_id, now_s))
        self._known &= current

    # -- events --

    def _emit(self, rule, gpu_id, change, now_s, detail, process=None):
        event = build_alert_event(rule, gpu_id, change, format_alert_summary(
            rule, gpu_id, change, detail), now_s, process)
        key = alert_subject(rule, gpu_id, process)
        with self._lock:
            self._events.append(event)
            if event["state"] == "firing":
                self._active[key] = event
                self._pushed[key] = (now_s, event["summary"])
            else:
                self._active.pop(key, None)
                self._pushed.pop(key, None)
            active = list(self._active.values())
        LOG.info("event=alert rule=%s gpu=%s state=%s severity=%s value=%s", rule, gpu_id,
                 event["state"], event["severity"], event["value"])
        self.cache.record("exporter_alert_events_total", (), 1, add=True)
        self.cache.publish_alert(event, active)
        if self.store is not None:
            self.store.offer_alert(event)
        if self.webhook is not None:
            self.webhook.send(event)

    def _refresh(self, rule, gpu_id, state, now_s, detail, process=None):
        """A firing alert between changes: its value and summary from this
        evaluation (a copy: the event as it happened stays in the history)."""
        key = alert_subject(rule, gpu_id, process)
        summary = format_alert_summary(rule, gpu_id, {"state": "firing", "value": state.value,
                                                      "clearing": state.clearing()}, detail)
        with self._lock:
            event = self._active.get(key)
            if event is None:
                return
            fresh = summary != event["summary"] or state.value != event["value"]
            if fresh:
                event = self._active[key] = dict(event, value=state.value, summary=summary,
                                                 updated=format_ts(now_s))
            sent_s, sent = self._pushed.get(key, (None, None))
            push = summary != sent and not (
                sent_s is not None and 0 <= now_s - sent_s < ALERT_UPDATE_EVERY_S)
            if push:
                self._pushed[key] = (now_s, summary)
            active = list(self._active.values())
        if push:
            self.cache.publish_alert(dict(event, update=True), active)
        elif fresh:
            self.cache.set_alerts(active)

    def active(self):
        with self._lock:
            return list(self._active.values())

    def recent(self, from_s, to_s):
        """Events in memory whose change time lies in [from_s, to_s], oldest first."""
        with self._lock:
            events = list(self._events)
        return [e for e in events if event_in_range(e, from_s, to_s)]


# -- alert webhook (Alertmanager's JSON; its own thread) --------------------

class WebhookSender(StoppableThread):
    """POSTs each alert event to APP_ALERT_WEBHOOK_URL from its own thread:
    bounded queue (drop-oldest, counted), a timeout, capped retries with
    backoff; failures counted (/metrics, hello.features) and logged once
    per streak."""

    def __init__(self, url, cache, instance="", external_url="", timeout_s=WEBHOOK_TIMEOUT_S,
                 retries=WEBHOOK_RETRIES, backoff_s=WEBHOOK_BACKOFF_S):
        StoppableThread.__init__(self, "alert-webhook")
        self.url, self.cache, self.instance, self.external_url = url, cache, instance, external_url
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._queue = Inbox(WEBHOOK_QUEUE_ITEMS, lambda: self._count("dropped"))
        self.counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._streak = 0

    def send(self, event):
        self._queue.put(event)

    def stop(self):
        StoppableThread.stop(self)
        self._queue.wake()

    def run(self):
        while not self.stopping.is_set():
            self._queue.wait(1.0)
            for event in self._queue.drain(self.stopping):
                self.deliver(event)

    def deliver(self, event):
        """Send one event, retrying; True when the receiver took it."""
        body = json_bytes(build_webhook_payload(event, self.instance, self.external_url))
        error = None
        for attempt in range(self.retries + 1):
            if attempt and self.stopping.wait(self.backoff_s * 2 ** (attempt - 1)):
                break
            error = self._post(body)
            if error is None:
                if self._streak:
                    LOG.info("event=webhook_recovered after_failures=%d", self._streak)
                self._streak = 0
                self._count("sent")
                return True
        if not self._streak:     # the host only: a webhook URL's path is often its secret
            LOG.warning("event=webhook_failed host=%s error=%s (further failures are only counted)",
                        urlsplit(self.url).netloc.rpartition("@")[2], error)
        self._streak += 1
        self._count("failed")
        return False

    def _post(self, body):
        """One POST; None on a 2xx answer, else the error text."""
        parts = urlsplit(self.url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.timeout_s)
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        headers = {"Content-Type": "application/json", "User-Agent": "amdgpu_top_web/" + __version__}
        if parts.username is not None:      # https://user:password@host/...: HTTP Basic
            token = "%s:%s" % (parts.username, parts.password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read(65536)
            return None if 200 <= response.status < 300 else "HTTP %d" % response.status
        except (OSError, http.client.HTTPException) as exc:
            return str(exc) or exc.__class__.__name__
        finally:
            conn.close()

    def _count(self, what):
        self.counts[what] += 1
        self.cache.record("exporter_alert_webhook_%s_total" % what, (), 1, add=True)
        self.cache.update_feature("alerts", webhook_sent=self.counts["sent"],
                                  webhook_failed=self.counts["failed"],
                                  webhook_dropped=self.counts["dropped"])


# ---------------------------------------------------------------------------
# 11. The live cache and its threads
# ---------------------------------------------------------------------------

# -- the cache: latest frames, the rolling ring, the forecasts --------------

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

    def ordered(self, keys=None):
        """(ts, {key: values}): copies, oldest first (cheap: array slices, for
        taking under a lock and encoding outside it)."""
        start = (self._next - self._count) % self.capacity
        def span(values):
            return values[start:start + self._count] if start + self._count <= self.capacity else (
                values[start:] + values[:self._next])
        return span(self._ts), dict((key, span(values)) for key, values in zip(self.keys, self._series)
                                    if keys is None or key in keys)

    def to_json(self, interval_s):
        """Columnar: {"interval_ms", "ts": [unix ms], "series": {key: [value or null]}}."""
        return encode_ring_json(interval_s, *self.ordered())


class LazyFrame(object):
    """A sample frame (stats, procs, host) whose JSON and WebSocket bytes are
    built on first use: with no client connected it is kept, never encoded,
    until a new client, a REST route or a subscriber asks. The attributes of
    an OutFrame (gpu_id, kind, payload, wire); two threads encoding at once
    build the same bytes, so no lock. A value the encoder refuses (NaN/inf)
    goes out as null rather than raising in the thread that asked."""

    __slots__ = ("gpu_id", "kind", "_build", "_args", "_payload", "_wire")

    def __init__(self, gpu_id, kind, build, *args):
        self.gpu_id, self.kind, self._build, self._args = gpu_id, kind, build, args
        self._payload = self._wire = None

    @property
    def payload(self):
        payload = self._payload
        if payload is None:
            message = self._build(*self._args)
            try:
                payload = json_bytes(message)
            except ValueError:
                LOG.warning("event=frame_not_finite kind=%s gpu=%s", self.kind, self.gpu_id)
                payload = json_bytes(replace_non_finite(message))
            self._payload = payload
        return payload

    @property
    def wire(self):
        wire = self._wire
        if wire is None:
            wire = self._wire = encode_frame(Opcode.TEXT, self.payload)
        return wire


def _same(message):
    return message


class Cache(object):
    """The latest snapshot, procs and history per GPU, behind one lock.

    publish_* build each frame ONCE (JSON and WebSocket frame, a LazyFrame
    for samples: encoded on first use, never while no one asks) and hand the
    same bytes to every listener (the hub), outside the lock.
    """

    def __init__(self, interval_s, features, clock=time.time):
        self.interval_s = interval_s
        self.clock = clock              # wall clock of procs frames (the forecast's windows)
        self.features = dict(features)
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._gpus = collections.OrderedDict()
        self._stats = {}
        self._procs = {}
        self._procs_top = {}            # gpu id -> OutFrame: the overview's cut of procs
        self._history = {}
        self._listeners = []
        self._sinks = []
        self._hello = None              # (seq, meta seq, monotonic s, bytes): the last hello
        self._seq = self._meta_seq = 0  # bumped by every change / by all but a new sample
        self._health = {}
        self._forecasters = {}
        self._alerts = []               # the active alert events (the engine's list)
        self._capacity = int(math.ceil(HISTORY_WINDOW_S / interval_s))
        self._host = None                   # (epoch_s, host dict, OutFrame)
        self._host_history = HistoryRing(int(math.ceil(HISTORY_WINDOW_S / HOST_INTERVAL_S)),
                                         HOST_HISTORY_KEYS)
        self._fleet = None                  # (message, frame): the hub's latest fleet

    def record(self, name, labels, value, add=False):
        """The monitor's own health numbers (for /metrics): set a gauge or add to a counter."""
        key = (name, labels)
        with self._lock:
            self._health[key] = (self._health.get(key, 0) + value) if add else value

    def health_snapshot(self):
        with self._lock:
            return dict(self._health)

    def add_listener(self, callback):
        self._listeners.append(callback)

    def _changed(self, meta=False):
        """Under the lock: hello is out of date (meta: by more than a sample)."""
        self._seq += 1
        if meta:
            self._meta_seq += 1

    def _notify(self, frame):
        for callback in self._listeners:
            callback(frame)

    def add_sink(self, sink):
        """A consumer of samples besides the live view (history writer, alert
        engine): offer_stats(gpu_id, epoch_s, metrics), offer_procs(gpu_id,
        message) (the procs frame dict) and offer_host(epoch_s, host) are called from the
        publishing thread and must never block (a bounded queue of their own)."""
        self._sinks.append(sink)

    def _offer(self, method, *args):
        for sink in self._sinks:
            offer = getattr(sink, method, None)
            if offer is not None:
                offer(*args)

    def set_gpus(self, infos):
        """Replace the GPU list (discovery); drops the state of vanished GPUs."""
        with self._lock:
            self._gpus = collections.OrderedDict((info.id, info) for info in infos)
            for table in (self._stats, self._procs, self._procs_top, self._history):
                for gpu_id in list(table):
                    if gpu_id not in self._gpus:
                        del table[gpu_id]
            for gpu_id in self._gpus:
                self._history.setdefault(gpu_id, HistoryRing(self._capacity))
            self._forecasters = dict((gpu_id, self._forecasters.get(gpu_id) or VramForecaster())
                                     for gpu_id in self._gpus)
            self._changed(meta=True)
        self._offer("offer_gpus", [info.id for info in infos])
        payload = json_bytes(build_gpus_message(infos))
        self._notify(OutFrame(None, "gpus", payload, encode_frame(Opcode.TEXT, payload)))

    def publish_stats(self, gpu_id, epoch_s, metrics):
        forecaster = self._forecasters.get(gpu_id)
        if forecaster is not None:
            metrics = dict(metrics, vram_forecast=forecaster.on_stats(epoch_s, metrics))
        frame = LazyFrame(gpu_id, "stats", build_stats_message, gpu_id, epoch_s, metrics)
        with self._lock:
            if gpu_id not in self._gpus:
                return
            self._stats[gpu_id] = (epoch_s, metrics, frame)
            self._history[gpu_id].push(epoch_s, metrics)
            self._changed()
        self._notify(frame)
        self._offer("offer_stats", gpu_id, epoch_s, metrics)

    def publish_procs(self, gpu_id, message):
        forecaster = self._forecasters.get(gpu_id)
        if forecaster is not None and message.get("processes"):
            message = dict(message, processes=forecaster.on_procs(self.clock(),
                                                                  message["processes"]))
        frame = LazyFrame(gpu_id, "procs", _same, message)
        top_frame = LazyFrame(gpu_id, "procs_top", build_procs_top_message, message)
        with self._lock:
            if gpu_id not in self._gpus:
                return
            self._procs[gpu_id] = (message, frame)
            self._procs_top[gpu_id] = top_frame
        self._notify(frame)
        self._notify(top_frame)
        self._offer("offer_procs", gpu_id, message)

    def publish_host(self, epoch_s, host):
        """The host frame (HOST_KEYS): latest + history, to every listener and sink."""
        frame = LazyFrame(None, "host", build_host_message, epoch_s, host)
        with self._lock:
            self._host = (epoch_s, host, frame)
            self._host_history.push(epoch_s, host)
            self._changed()
        self._notify(frame)
        self._offer("offer_host", epoch_s, host)

    def host(self):
        """(epoch_s, host dict, OutFrame) or None before the first sample."""
        with self._lock:
            return self._host

    def host_history(self):
        with self._lock:
            return self._host_history.to_json(HOST_INTERVAL_S)

    def set_feature(self, key, value):
        with self._lock:
            self.features[key] = value
            self._changed(meta=True)

    def update_feature(self, key, **values):
        """Update some fields of a dict-valued feature (e.g. alert counters)."""
        with self._lock:
            self.features[key] = dict(self.features.get(key) or {}, **values)
            self._changed(meta=True)

    def publish_alert(self, event, active):
        """An alert state change -> one frame for every client (gpu_id None);
        active (the engine's list of firing events) goes into hello."""
        payload = json_bytes(event)
        frame = OutFrame(None, "alert", payload, encode_frame(Opcode.TEXT, payload))
        with self._lock:
            self._alerts = list(active)
            self._changed(meta=True)
        self._notify(frame)

    def set_alerts(self, active):
        """The active alerts with fresh values and summaries, without a frame
        (hello, /plain, /api/alerts)."""
        with self._lock:
            self._alerts = list(active)
            self._changed(meta=True)

    def alerts(self):
        with self._lock:
            return list(self._alerts)

    def publish_fleet(self, message):
        """A hub's fleet after a round: kept; pushed only when it changed (ts aside)."""
        frame = LazyFrame(None, "fleet", _same, message)
        with self._lock:
            previous, self._fleet = self._fleet, (message, frame)
        if previous is not None and fleet_content(previous[0]) == fleet_content(message):
            return False
        self._notify(frame)
        return True

    def fleet(self):
        with self._lock:
            return self._fleet        # (message, frame) of the last published fleet, or None

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

    def snapshot(self):
        """([(identity dict, metrics or None)], {gpu id: procs message}), one lock."""
        with self._lock:
            gpus = [(identity_json(info), self._stats[gpu_id][1] if gpu_id in self._stats else None)
                    for gpu_id, info in self._gpus.items()]
            procs = dict((gpu_id, entry[0]) for gpu_id, entry in self._procs.items())
        return gpus, procs

    def history(self, gpu_id):
        with self._lock:
            ring = self._history.get(gpu_id)
            return None if ring is None else ring.to_json(self.interval_s)

    def latest_frames(self, gpu_id, host=False, detail="full"):
        """The latest stats and procs frames of one GPU ('*' = all, None = none;
        detail "overview": procs cut to the top rows) and the latest host
        frame if host, for a new subscriber."""
        with self._lock:
            ids = list(self._gpus) if gpu_id == "*" else [gpu_id] if gpu_id is not None else []
            frames = [self._stats[i][2] for i in ids if i in self._stats]
            if detail == "overview":
                frames += [self._procs_top[i] for i in ids if i in self._procs_top]
            else:
                frames += [self._procs[i][1] for i in ids if i in self._procs]
            return frames + ([self._host[2]] if host and self._host is not None else [])

    def hello_payload(self, default_gpu):
        """The hello message (JSON bytes), shared by every connection: rebuilt
        after a change, but after new samples alone at most once per tick.
        Under the lock only references and ring copies are taken; the
        encoding (rings downsampled to HELLO_HISTORY_POINTS) runs outside it."""
        now = time.monotonic()
        with self._lock:
            cached = self._hello
            if cached is not None and cached[1] == self._meta_seq and (
                    cached[0] == self._seq or 0 <= now - cached[2] < self.interval_s):
                return cached[3]
            seq, meta_seq = self._seq, self._meta_seq
            gpus = [identity_json(info) for info in self._gpus.values()]
            rings = [(gpu_id, ring.ordered(HELLO_HISTORY_KEYS)) for gpu_id, ring in self._history.items()]
            host_ring = self._host_history.ordered()
            features, alerts = dict(self.features), list(self._alerts)
            host = self._host[1] if self._host is not None else None
        history = dict((gpu_id, encode_ring_json(self.interval_s, ts, columns, HELLO_HISTORY_POINTS))
                       for gpu_id, (ts, columns) in rings)
        payload = json_bytes(build_hello_message(
            self.interval_s, default_gpu, gpus, features, history, host,
            encode_ring_json(HOST_INTERVAL_S, *host_ring), alerts))
        with self._lock:
            if self._hello is None or self._hello[0] <= seq:
                self._hello = (seq, meta_seq, now, payload)
        return payload


def local_fleet_host(cache, epoch_s=None):
    """This server's own fleet host entry (GET /api/fleet/host), from the
    cache's latest identities, stats, procs, host frame and active alerts."""
    gpus, procs = cache.snapshot()
    latest = cache.host()
    return build_local_fleet_host(socket.gethostname(), time.time() if epoch_s is None else epoch_s,
                                  gpus, procs, latest[1] if latest else None, cache.alerts())


def current_fleet(cache):
    """(message, OutFrame): a hub's latest fleet, or on a server without a
    fleet source (nothing published) itself only, built now."""
    latest = cache.fleet()
    if latest is not None:
        return latest
    now = time.time()
    message = build_fleet_message(now, "local", cache.interval_s, [local_fleet_host(cache, now)])
    payload = json_bytes(replace_non_finite(message))
    return message, OutFrame(None, "fleet", payload, encode_frame(Opcode.TEXT, payload))


# -- samplers: one per GPU on a shared clock, the process scan --------------

class Sampler(StoppableThread):
    """One GPU: read, publish. It ticks on the shared SamplerClock with the
    other GPUs; once a read of it overran a tick (a slow or hung driver
    call) it runs on a thread of its own (start()): read, publish, wait, on
    a fixed schedule that skips missed ticks."""

    def __init__(self, reader, cache, interval_s, clock=time.monotonic):
        StoppableThread.__init__(self, "sampler-" + reader.info.id)
        self.reader, self.cache, self.interval_s, self.clock = reader, cache, interval_s, clock
        self._errors = 0
        self._ticked = False
        self.on_clock = None        # the SamplerClock it ticks on, while it does
        self.reading = None         # the clock worker inside its tick, while one is
        self.due_at = None          # its first clock tick: not before this
        self.moving = False         # off the clock (an overrun), its own thread not yet started

    def running(self):
        """On the shared clock, moving off it, or on a thread of its own."""
        return self.on_clock is not None or self.moving or self.is_alive()

    def stop(self):
        StoppableThread.stop(self)
        clock = self.on_clock       # read once: a clock worker may clear it meanwhile
        if clock is not None:
            clock.remove(self)

    def run(self):
        next_at = self.clock() + (self.interval_s if self._ticked else 0.0)
        if self._ticked:
            self.pause(self.interval_s)
        while not self.stopping.is_set():
            self.tick()
            next_at += self.interval_s
            now = self.clock()
            if next_at < now:
                next_at = now + self.interval_s
            self.pause(next_at - now)
        self.reader.close()

    def tick(self):
        self._ticked = True
        gpu = (("gpu", self.reader.info.id),)
        started = self.clock()
        try:
            metrics = self.reader.sample(started)
        except Exception:  # a sampler must never die; log the first few, quietly
            self._errors += 1
            self.cache.record("exporter_sample_errors_total", gpu, 1, add=True)
            if self._errors <= 3:
                LOG.exception("event=sample_failed gpu=%s", self.reader.info.id)
            return
        self.cache.record("exporter_sample_duration_seconds", gpu, round(self.clock() - started, 6))
        try:
            self.cache.publish_stats(self.reader.info.id, time.time(), metrics)
        except Exception:  # e.g. a value json_bytes refuses: never kill the sampler
            self._errors += 1
            if self._errors <= 3:
                LOG.exception("event=publish_failed gpu=%s", self.reader.info.id)


class ClockJob(object):
    """A periodic job on the SamplerClock: job(at) every period_s."""

    def __init__(self, period_s, job, close, next_at):
        self.period_s, self.job, self.close, self.next_at = period_s, job, close, next_at
        self.running = None         # the worker inside it, while one is


class SamplerClock(object):
    """The shared clock of the periodic work: the GPU samplers every
    interval, and jobs (host sample, process scan, alert pass) every period
    of their own, aligned to the GPU ticks. Each tick one thread wakes and
    runs whatever is due, GPUs first: one wake-up for all, and the second
    GPU's read runs on warm caches. Two worker threads take turns, so the
    next tick always finds one asleep: a GPU whose tick is still running
    then (a slow or hung driver call) is skipped, and leaves the clock for a
    thread of its own (Sampler.start) once that call returns; a job still
    running when due again is skipped. The worker caught in either is
    replaced at once and ends there. A hung GPU costs the GPUs after it in
    that one tick their sample, never more."""

    WORKERS = 2
    ALIGN_S = 0.001                 # due within this of a tick: run in it

    def __init__(self, interval_s, clock=time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self._lock = threading.Lock()
        self._samplers = []         # in the order they tick
        self._jobs = []
        self._workers = []          # the threads taking turns
        self._next_at = None        # the first GPU tick no worker has claimed
        self._phase = 0             # bumped when the first GPU sets the ticks' phase
        self._count = 0
        self._stopped = False

    def add(self, sampler):
        """Ticks from the next tick at least half an interval away (the caller
        gave it its first); the first GPU sets the phase: its next sample
        comes one interval after that first one (the jobs move onto it).
        Once the clock stopped, the sampler is stopped and closed instead."""
        with self._lock:
            stopped = self._stopped
        if stopped:
            StoppableThread.stop(sampler)
            sampler.reader.close()
            return
        with self._lock:
            now = self.clock()
            if not self._samplers and self._next_at is not None:
                self._phase += 1            # ticks claimed before are the jobs' alone
                self._next_at = now + self.interval_s
                for job in self._jobs:
                    job.next_at = self._due(self._next_at, self.interval_s, job.next_at)
            sampler.on_clock, sampler.due_at = self, now + self.interval_s / 2.0
            self._samplers.append(sampler)
            self._start()

    def every(self, period_s, job, close=None):
        """job(at) every period_s from the next tick on (at: its time on the
        clock); close() once the clock stops (at once when it has)."""
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._start()
                self._jobs.append(ClockJob(period_s, job, close, self._next_at))
        if stopped and close is not None:
            close()

    def _start(self):
        """Under the lock."""
        if self._next_at is None:
            self._next_at = self.clock() + self.interval_s
        while len(self._workers) < self.WORKERS:
            self._start_worker()

    def remove(self, sampler):
        """Off the clock; its reader is closed here, or by the worker inside its tick."""
        with self._lock:
            if sampler in self._samplers:
                self._samplers.remove(sampler)
            sampler.on_clock = None
            close = sampler.reading is None
        if close:
            sampler.reader.close()

    def stop(self):
        """Stop the samplers on it and the workers; -> the workers, to join."""
        with self._lock:
            self._stopped = True
            workers, self._workers = list(self._workers), []
            samplers = list(self._samplers)
        for sampler in samplers:
            sampler.stop()
        for worker in workers:
            worker.stop()
        return workers

    def close_jobs(self):
        """After stop() and the join: each job's close()."""
        with self._lock:
            jobs, self._jobs = list(self._jobs), []
        for job in jobs:
            if job.close is not None:
                job.close()

    def _start_worker(self):
        """Under the lock."""
        self._count += 1
        worker = StoppableThread("sampler-clock-%d" % self._count)
        worker.run = lambda: self._work(worker)
        self._workers.append(worker)
        worker.start()

    @staticmethod
    def _due(next_at, period_s, now):
        """next_at, or the first time on its grid after now when it was missed."""
        return next_at if next_at >= now else next_at + math.ceil(
            (now - next_at) / period_s) * period_s

    def _claim(self):
        """-> (at, the phase of its GPU tick or None, [jobs due]) for the
        calling worker: the next tick, missed ones skipped; its GPU tick and
        jobs are its alone."""
        with self._lock:
            now = self.clock()
            gpu_at = self._due(self._next_at, self.interval_s, now)
            for job in self._jobs:
                job.next_at = self._due(job.next_at, job.period_s, now)
            times = [job.next_at for job in self._jobs]
            at = min(times + [gpu_at]) if self._samplers else min(times or [gpu_at])
            gpus = gpu_at <= at + self.ALIGN_S
            self._next_at = gpu_at + self.interval_s if gpus else gpu_at
            due = [job for job in self._jobs if job.next_at <= at + self.ALIGN_S]
            for job in due:
                job.next_at += job.period_s
            return at, (self._phase if gpus else None), due

    def _work(self, worker):
        while True:
            at, phase, jobs = self._claim()
            if worker.pause(at - self.clock()):
                return
            ticked = phase != self._phase or self.tick(worker, at)
            if not self._run_jobs(at, jobs, worker) or not ticked:
                return

    def tick(self, worker=None, at=None):
        """Tick every GPU not inside an earlier tick (nor due after at); ->
        False when this worker was caught in an overrun and replaced (it ends)."""
        with self._lock:
            samplers = list(self._samplers)
        for sampler in samplers:
            with self._lock:
                if sampler.on_clock is not self or at is not None and at < sampler.due_at:
                    continue
                if sampler.reading is not None:       # overran into this tick
                    self._overran(sampler)
                    continue
                sampler.reading = worker
            started = self.clock()
            try:
                sampler.tick()
            finally:
                if not self._done(sampler, worker, self.clock() - started >= self.interval_s):
                    with self._lock:
                        return worker in self._workers
        return True

    def _run_jobs(self, at, jobs, worker):
        """Every job it claimed, late rather than never (no other worker runs
        them in this period); -> False when this worker was replaced (it ends)."""
        for job in jobs:
            with self._lock:
                if job.running is not None:            # still in its last run: skipped
                    self._replace(job.running)
                    continue
                job.running = worker
            try:
                job.job(at)
            except Exception:   # a job must never take the clock down
                LOG.exception("event=clock_job_failed job=%r", job.job)
            finally:
                with self._lock:
                    job.running = None
        with self._lock:
            return worker is None or worker in self._workers

    def _replace(self, worker):
        """Under the lock: a worker caught in a tick past its time; a new one takes its turns."""
        if worker in self._workers:
            self._workers.remove(worker)
            self._start_worker()

    def _overran(self, sampler):
        """Under the lock: its tick outlived the interval; its worker is replaced."""
        self._samplers.remove(sampler)
        sampler.on_clock, sampler.moving = None, True
        self._replace(sampler.reading)

    def _done(self, sampler, worker, slow):
        """After a GPU's tick -> False when it overran (the rest of this tick is stale)."""
        with self._lock:
            sampler.reading = None
            if slow and sampler.on_clock is self:
                self._samplers.remove(sampler)
                sampler.on_clock, sampler.moving = None, True
            moved = sampler.on_clock is None and not sampler.stopping.is_set()
            stopped = sampler.on_clock is None and sampler.stopping.is_set()
        if stopped:
            sampler.moving = False
            sampler.reader.close()
        elif moved:
            LOG.warning("event=sampler_overran gpu=%s interval_s=%s: it samples on a thread of"
                        " its own from now on", sampler.reader.info.id, self.interval_s)
            sampler.start()
            sampler.moving = False      # running() sees is_alive() from here
        return not moved


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
            self.pause(min(self.refresh_interval_s, next_scan - self.clock()))

    def run_on(self, clock):
        """Run on the SamplerClock instead of a thread of its own: one run
        every refresh (or scan) interval, the full scan when due."""
        next_scan = [None]

        def run(at):
            full = next_scan[0] is None or at >= next_scan[0] - clock.ALIGN_S
            if full:
                next_scan[0] = at + self.scan_interval_s
            self.tick(full)
        clock.every(min(self.refresh_interval_s, self.scan_interval_s), run)

    def tick(self, full):
        gpus = self.cache.gpus()
        self.source.set_gpus(gpus)
        try:
            result = self.source.scan() if full else self.source.refresh()
        except Exception:  # the scanner must never take the server down
            self._errors += 1
            self.cache.record("exporter_proc_scan_errors_total", (), 1, add=True)
            if self._errors <= 3:
                LOG.exception("event=proc_scan_failed")
            return
        kind = (("kind", "full" if full else "refresh"),)
        self.cache.record("exporter_proc_scans_total", kind, 1, add=True)
        self.cache.record("exporter_proc_scan_duration_seconds", kind, result.stats.get("duration_s") or 0.0)
        if result.stats.get("cut_short"):
            self.cache.record("exporter_proc_scans_cut_short_total", (), 1, add=True)
        epoch = time.time()
        for info in gpus:
            message = build_procs_message(info.id, epoch, result.by_pci.get(info.pci),
                                          result.visibility, result.stats)
            self.cache.publish_procs(info.id, message)
        if result.visibility != self._visibility:
            self._visibility = result.visibility
            self.cache.set_feature("visibility", result.visibility)


# -- the host: its reader and sampler (1 Hz) --------------------------------

class HostReader(object):
    """The host's /proc files (HOST_FILES) kept open: one pread each per sample.

    A sample costs four preads and the parsing, 0.6-0.8 of one GPU sampler
    tick, once a second (tests/bench/bench_host.py: 50-75 us, under 0.01 %
    of a core); /proc/pressure/memory is absent before Linux 4.20 (and
    unreadable with psi=0): its keys are then null.
    """

    def __init__(self, proc_root):
        watch = DirWatch(proc_root)                # fixture trees whose files are replaced
        self._files = [(key, AttrFile(os.path.join(proc_root, rel), watch, size))
                       for key, rel, size in HOST_FILES]
        self._prev_cpu = None

    def sample(self, now):
        """-> the host dict (build_host); CPU % is over the time since the last sample."""
        texts = {}
        for key, attr in self._files:
            raw = attr.read(now)
            texts[key] = None if raw is None else raw.decode("ascii", "replace")
        times, count = parse_proc_stat_cpu(texts["stat"])
        busy = compute_cpu_busy_pct(self._prev_cpu, times)
        if times is not None:
            self._prev_cpu = times
        return build_host(busy, count, parse_loadavg(texts["loadavg"]),
                          parse_meminfo(texts["meminfo"], MEMINFO_NAMES),
                          parse_pressure(texts["pressure"]))

    def close(self):
        for _, attr in self._files:
            attr.close()


class HostSampler(StoppableThread):
    """Reads the host once per HOST_INTERVAL_S and publishes it.

    Once a second, not every GPU tick: the load average moves every 5 s and
    PSI's avg10 every 2 s in the kernel, a CPU % over less than a second is
    noise, and /proc/stat is generated whole on each read (a line per CPU plus
    every interrupt counter), so a big box pays for it per read.
    """

    def __init__(self, reader, cache, interval_s=HOST_INTERVAL_S, clock=time.monotonic):
        StoppableThread.__init__(self, "host-sampler")
        self.reader, self.cache, self.interval_s, self.clock = reader, cache, interval_s, clock
        self._errors = 0

    def run(self):
        while not self.stopping.is_set():
            self.tick()
            self.pause(self.interval_s)
        self.reader.close()

    def run_on(self, clock):
        """Run on the SamplerClock instead of a thread of its own."""
        clock.every(self.interval_s, lambda at: self.tick(), self.reader.close)

    def tick(self):
        try:
            host = self.reader.sample(self.clock())
            self.cache.publish_host(time.time(), host)
        except Exception:  # never die; log the first few
            self._errors += 1
            if self._errors <= 3:
                LOG.exception("event=host_sample_failed")


# -- discovery: asks every backend, one sampler per GPU ---------------------

class GpuManager(StoppableThread):
    """Discovery: asks every backend what it sees every REDISCOVER_INTERVAL_S,
    starts a sampler for each GPU that appears and stops the one of a GPU
    that goes. The backends are closed by close_backends(), after every
    thread that uses them has stopped."""

    def __init__(self, config, cache, backends=None):
        StoppableThread.__init__(self, "discovery")
        self.config, self.cache = config, cache
        self.backends = make_backends(config) if backends is None else list(backends)
        self._samplers = collections.OrderedDict()   # (backend index, GpuInfo) -> Sampler
        self.sampler_clock = SamplerClock(config.interval_s)
        self._failed = set()

    def run(self):
        """The first discovery, then one every REDISCOVER_INTERVAL_S on the
        sampler clock (no wake-up of its own); this thread waits for stop()."""
        self.rediscover()
        self.sampler_clock.every(REDISCOVER_INTERVAL_S, lambda at: self.rediscover())
        while not self.pause(3600.0):
            pass
        self.stop_samplers()

    def rediscover(self):
        found = collections.OrderedDict()
        for index, backend in enumerate(self.backends):
            for info in self._discover(index, backend):
                found[(index, info)] = backend
        changed = self._remove_gone(found)
        for key, backend in found.items():
            if key not in self._samplers:
                changed = self._add(key, backend) or changed
        if changed or not self.cache.ready.is_set():
            self._publish_gpus()

    def _discover(self, index, backend):
        try:
            return backend.discover()
        except Exception:   # one broken backend must not hide the others' GPUs
            if index not in self._failed:
                self._failed.add(index)
                LOG.exception("event=discovery_failed backend=%s", backend.vendor)
            return []

    def _add(self, key, backend):
        info = key[1]
        try:
            reader = backend.open_reader(info)
        except Exception:
            LOG.exception("event=reader_failed gpu=%s", info.id)
            return False
        self._samplers[key] = Sampler(reader, self.cache, self.config.interval_s)
        LOG.info("event=gpu_found gpu=%s vendor=%s pci=%s name=%r apu=%s", info.id, info.vendor,
                 info.pci, info.name, info.apu)
        return True

    def _remove_gone(self, found):
        gone = [key for key in self._samplers if key not in found]
        for key in gone:
            sampler = self._samplers.pop(key)
            sampler.stop()
            LOG.info("event=gpu_gone gpu=%s", sampler.reader.info.id)
        return bool(gone)

    def _publish_gpus(self):
        infos = sorted((s.reader.info for s in self._samplers.values()), key=_card_order)
        self.cache.set_gpus(infos)
        for sampler in self._samplers.values():
            if not sampler.running() and not sampler.stopping.is_set():
                sampler.tick()           # values at once, not one interval later
                self.sampler_clock.add(sampler)
        hub = self.config.fleet_peers is not None or bool(self.config.fleet_prometheus_url)
        if not infos and not self.cache.ready.is_set():
            LOG.log(logging.INFO if hub else logging.WARNING,
                    "event=no_gpu sysfs_root=%s nvml=%s hint=%r", self.config.sysfs_root,
                    any(b.vendor == "nvidia" for b in self.backends),
                    "no GPU on this hub itself; its Fleet view shows the fleet" if hub else
                    "no GPU found; run with --demo to see the dashboard")
        if infos and not self.cache.ready.is_set():
            self._check_default_gpu([info.id for info in infos])
        self.cache.ready.set()

    def _check_default_gpu(self, ids):
        """Once, at the first discovery: APP_DEFAULT_GPU naming no GPU here."""
        default = self.config.default_gpu
        if default != "auto" and default not in ids:
            LOG.warning("event=default_gpu_unknown default_gpu=%s gpus=%s hint=%r", default,
                        ",".join(ids), "APP_DEFAULT_GPU names no GPU here; the page opens on %s"
                        % ids[0])

    def stop_samplers(self):
        workers = self.sampler_clock.stop()
        for sampler in self._samplers.values():
            sampler.stop()
        for thread in workers + list(self._samplers.values()):
            if thread.is_alive():
                thread.join(2.0)
        self.sampler_clock.close_jobs()

    def close_backends(self):
        for backend in self.backends:
            backend.close()

    def readers(self):
        return sorted((s.reader for s in self._samplers.values()), key=lambda r: _card_order(r.info))


def _card_order(info):
    """DRM cards by number, then NVIDIA's nvidiaN (and the like) by number."""
    digits = re.sub(r"[^0-9]", "", info.id)
    return (0 if info.id.startswith("card") else 1, int(digits) if digits else 0, info.id)


# ---------------------------------------------------------------------------
# 12. Fleet: a hub's peers, Prometheus and the proxy
# ---------------------------------------------------------------------------

# -- the peer list: inline, or an @FILE read again when it changes ----------

class FleetPeerList(object):
    """The hub's peers now: APP_FLEET_PEERS' inline list, or its @FILE, which
    current() stats (one stat per call) and reads again when its mtime or size
    changed, once the change has settled: the same at two looks in a row, or
    written FLEET_PEERS_SETTLE_S ago (a file rewritten in place, empty or
    half-written for a moment, drops no peer). A file that turns bad keeps the
    last good list (error says why, logged once per change); a missing file
    is an empty list, stated."""

    def __init__(self, spec):
        self.spec = spec
        self.error = None
        self._peers = spec.peers if spec is not None else ()
        self._stamp = self._seen = None     # the stamp read, the one the last look saw

    def current(self):
        if self.spec is None or self.spec.path is None:
            return self._peers
        try:
            st = os.stat(self.spec.path)
            stamp = (st.st_mtime_ns, st.st_size)
            settled = time.time() - st.st_mtime >= FLEET_PEERS_SETTLE_S
        except OSError as exc:
            stamp, settled = ("missing", exc.strerror), False
        if stamp != self._stamp and (settled or stamp == self._seen or self._stamp is None):
            self._stamp = stamp
            self._reload(stamp)
        self._seen = stamp
        return self._peers

    def _reload(self, stamp):
        text = read_text(self.spec.path, FLEET_PEERS_FILE_LIMIT) if stamp[0] != "missing" else None
        try:
            if text is None:
                raise ValueError("cannot read the file")
            self._peers, self.error = parse_fleet_peer_list(text), None
            LOG.info("event=fleet_peers path=%r peers=%d", self.spec.path, len(self._peers))
        except ValueError as exc:
            self.error = "APP_FLEET_PEERS=@%s: %s" % (self.spec.path, exc)
            LOG.warning("event=fleet_peers_bad message=%r kept=%d", self.error, len(self._peers))


# -- the peers poller: one round per interval, each due peer's /api/fleet/host --

def _fleet_failure(exc):
    """A few words for a connection that failed (never a URL or a token)."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
    return str(text)[:80]


class FleetConnection(object):
    """One peer's keep-alive HTTP/1.1 connection, GET only: a few reads and
    one parse per answer (http.client costs about five times as much CPU,
    which is most of a hub's cost at 100 peers). Content-Length, chunked or
    until-close bodies, cut past FLEET_MAX_ANSWER_BYTES. Every wait ends at
    the request's deadline (a peer that sends a byte now and then holds a
    worker no longer). Raises OSError for the connection (socket.timeout past
    the deadline, ConnectionAbortedError: it closed early), ValueError for an
    answer that is not HTTP."""

    def __init__(self, peer, timeout_s):
        self.peer, self.timeout_s = peer, timeout_s
        self.sock = None
        self._buf = b""
        self.deadline = None        # monotonic s: the request in flight ends by then

    def _left_s(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

    def open(self, deadline):
        self.deadline = deadline
        sock = socket.create_connection((self.peer.host, self.peer.port), self._left_s())
        if self.peer.scheme == "https":
            if ssl is None:
                sock.close()
                raise OSError(errno.EPROTONOSUPPORT, "no TLS in this Python")
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.peer.host)
        self.sock, self._buf = sock, b""

    def get(self, path, headers, deadline):
        """-> (status, fields, body); body None: over the cap, or not read (status not 200)."""
        host = "[%s]" % self.peer.host if ":" in self.peer.host else self.peer.host
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, self.peer.port)]
        lines += ["%s: %s" % item for item in headers]
        self.deadline = deadline
        self.sock.settimeout(self._left_s())
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, fields, keep = parse_http_head(self._read_head())
        body = self._read_body(fields) if status == 200 else None
        if not keep or body is None or self._buf:
            self.close()
        return status, fields, body

    def _more(self):
        self.sock.settimeout(self._left_s())
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionAbortedError(errno.ECONNABORTED, "closed the connection")
        self._buf += data

    def _read_head(self):
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                head, self._buf = self._buf[:end], self._buf[end + 4:]
                return head
            if len(self._buf) > FLEET_HEAD_MAX:
                raise ValueError("not an HTTP answer")
            self._more()

    def _read_exact(self, count):
        while len(self._buf) < count:
            self._more()
        data, self._buf = self._buf[:count], self._buf[count:]
        return data

    def _read_body(self, fields):
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = fields.get("content-length")
        if length is None:          # until the peer closes
            try:
                while len(self._buf) <= FLEET_MAX_ANSWER_BYTES:
                    self._more()
            except ConnectionAbortedError:
                pass
            self._buf, body = b"", self._buf
            return body if len(body) <= FLEET_MAX_ANSWER_BYTES else None
        if not length.isdigit():
            raise ValueError("not an HTTP answer")
        return self._read_exact(int(length)) if int(length) <= FLEET_MAX_ANSWER_BYTES else None

    def _read_chunked(self):
        parts, total = [], 0
        while True:
            end = self._buf.find(b"\r\n")
            while end < 0 and len(self._buf) < 1024:
                self._more()
                end = self._buf.find(b"\r\n")
            try:
                size = int(self._buf[:end].split(b";")[0].strip(), 16) if end >= 0 else -1
            except ValueError:
                size = -1
            if size < 0:
                raise ValueError("not an HTTP answer")
            self._buf = self._buf[end + 2:]
            total += size
            if total > FLEET_MAX_ANSWER_BYTES:
                return None
            if size == 0:       # no trailers: one CRLF; else trailers up to the blank line
                while len(self._buf) < 2:
                    self._more()
                if self._buf.startswith(b"\r\n"):
                    self._buf = self._buf[2:]
                else:
                    self._read_head()
                return b"".join(parts)
            parts.append(self._read_exact(size))
            self._read_exact(2)

    def close(self):
        sock, self.sock, self._buf = self.sock, None, b""
        if sock is not None:
            sock.close()


class FleetPeerState(object):
    """What the poller knows of one peer: its keep-alive connection, its last
    good data and how its last poll went. The poller thread owns it; while a
    request is in flight (busy) only that worker touches the connection, and
    the poller only cuts its socket at the deadline (cut_off: no retry then)."""

    def __init__(self, peer, now):
        self.peer = peer
        self.prefix = urlsplit(peer.url).path
        self.conn = self.sock = None          # FleetConnection, and its socket (cut())
        self.busy = self.cut_off = False     # cut_off: the poller cut this request
        self.data = None                    # parse_fleet_host_answer of the last good answer
        self.last_ok = None                 # (epoch s, monotonic s) of it
        self.outcome, self.error = None, "not asked yet"
        self.failures = 0
        self.due = now
        self.removed = False                # no longer listed: closed once its request ends
        self.legacy = 0                     # polls left that skip /api/fleet/host (an older peer)

    def get(self, path, token, timeout_s):
        """One GET on the kept connection (once more on a fresh one when the
        kept one was closed meanwhile, unless cut), all within timeout_s ->
        (status, content type, body or None when over FLEET_MAX_ANSWER_BYTES
        or not read). Never follows a redirect."""
        deadline = time.monotonic() + timeout_s
        headers = [("Accept", "application/json"), ("User-Agent", "amdgpu_top_web/" + __version__)]
        if token:
            headers.append(("Authorization", "Bearer " + token))
        for attempt in (0, 1):
            reused = self.conn is not None and self.conn.sock is not None
            if self.cut_off:
                raise socket.timeout("timed out")
            if not reused:              # none yet, or the last answer closed it
                self.conn = FleetConnection(self.peer, timeout_s)
                self.conn.open(deadline)
            self.sock = self.conn.sock
            try:
                status, fields, body = self.conn.get(self.prefix + path, headers, deadline)
                return status, fields.get("content-type", ""), body
            except ConnectionError:
                self.close()
                if not reused or attempt or self.cut_off:
                    raise
            except Exception:
                self.close()
                raise

    def cut(self):
        """From the poller: end a request past the round's deadline (not retried)."""
        self.cut_off = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        conn, self.conn, self.sock = self.conn, None, None
        if conn is not None:
            conn.close()

    def record(self, outcome, value, epoch_s, now, interval_s):
        """A poll's outcome ("ok" with the data, else "refused"/"failed" with why)."""
        changed = outcome != self.outcome
        self.outcome = outcome
        if outcome == "ok":
            self.data, self.last_ok, self.error, self.failures = value, (epoch_s, now), None, 0
            self.due = now
        else:
            self.error = value
            self.failures += 1
            self.due = now + compute_fleet_backoff_s(self.failures, interval_s) - interval_s / 2
        if changed:
            LOG.info("event=fleet_peer name=%s outcome=%s error=%r", self.peer.name, outcome,
                     self.error)

    def entry(self, now, interval_s):
        """This peer's fleet host entry: the last good data, in every state."""
        data = self.data or {"version": None, "host": None, "gpus": [], "alerts": []}
        age = None if self.last_ok is None else now - self.last_ok[1]
        return build_fleet_host(self.peer.name, "peer", "/hosts/%s/" % self.peer.name,
                                compute_fleet_peer_state(self.outcome, age, interval_s),
                                self.last_ok[0] if self.last_ok else None, self.error,
                                data["version"], data["host"], data["gpus"], data["alerts"])


def ask_fleet_peer(state, token, timeout_s):
    """One peer's fleet host entry data: ("ok", data), ("refused", why) or
    ("failed", why). A peer that answers 404 (an older version) is asked its
    /api/gpus and /api/host instead, for its next FLEET_LEGACY_RECHECK polls."""
    try:
        if state.legacy:
            state.legacy -= 1
        else:
            status, content_type, body = state.get(FLEET_HOST_PATH, token, timeout_s)
            if status != 404:
                return "ok", parse_fleet_host_answer(
                    parse_fleet_json(status, content_type, body, token is not None))
            state.legacy = FLEET_LEGACY_RECHECK
        answers = [parse_fleet_json(*(state.get(path, token, timeout_s) + (token is not None,)))
                   for path in ("/api/gpus", "/api/host")]
        return "ok", parse_fleet_host_answer(build_fleet_legacy_answer(*answers))
    except ValueError as exc:       # it answered, not usably (parse_http_head, parse_fleet_json)
        return "refused", str(exc)
    except OSError as exc:
        return "failed", _fleet_failure(exc)


class FleetRound(object):
    """One round's work: the due peers (the workers take them in turn, so a
    peer that hangs holds one worker, never a queue behind it) and the
    answers, (state, outcome) in the order they came; finished is set by the
    worker that adds the last one."""

    def __init__(self, states):
        self.todo = collections.deque(states)
        self.done = []
        self.expected = len(states)
        self.finished = threading.Event()
        if not states:
            self.finished.set()


class FleetThread(StoppableThread):
    """A hub's fleet source on its own thread: every interval_s one
    poll_round() (-> the fleet message) to Cache.publish_fleet, which pushes
    it only when something changed; close() when stopped. A round that fails
    is logged and the next one tries again."""

    def run(self):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.cache.publish_fleet(self.poll_round())
            except Exception:       # never die: the next round tries again
                LOG.exception("event=fleet_round_failed")
            self.pause(self.interval_s - (time.monotonic() - started))
        self.close()


class FleetPoller(FleetThread):
    """A hub's peers: every fleet_interval_s one round asks each due peer its
    GET /api/fleet/host (keep-alive, the peer's token, fleet_timeout_s) on a
    few worker threads, waits at most the timeout (then cuts what is left:
    one slow peer never holds the others or the round), and publishes the
    fleet (Cache.publish_fleet). No lock of the cache is held while waiting.
    A failing peer is asked again after a backoff (compute_fleet_backoff_s)."""

    def __init__(self, config, cache, peer_list, local=None):
        FleetThread.__init__(self, "fleet-poller")
        self.cache, self.peer_list = cache, peer_list
        self.local = local or (lambda epoch_s: local_fleet_host(cache, epoch_s))   # -> host entry
        self.interval_s, self.timeout_s = config.fleet_interval_s, config.fleet_timeout_s
        self.tokens = config.fleet_tokens
        self._states = collections.OrderedDict()    # peer name -> FleetPeerState
        self._round = None                          # the FleetRound the workers take from
        self._wake = threading.Semaphore(0)         # one release per worker wanted
        self._workers = []
        self._hosts = None          # the peer count hello's features.fleet says

    def start(self):
        """The fleet as configured (every peer down, not asked yet) before the first round."""
        self._sync(self.peer_list.current(), time.monotonic())
        self.cache.publish_fleet(self.message(time.time()))
        StoppableThread.start(self)

    def poll_round(self):
        """Ask every due peer once; -> the fleet message."""
        now = time.monotonic()
        self._sync(self.peer_list.current(), now)
        due = [st for st in self._states.values() if not st.busy and st.due <= now]
        for _ in range(len(self._workers), min(FLEET_WORKERS, len(due))):
            worker = threading.Thread(target=self._work, name="fleet-worker")
            worker.daemon = True
            worker.start()
            self._workers.append(worker)
        for state in due:
            state.busy, state.cut_off = True, False
        work = self._round = FleetRound(due)
        for _ in range(min(len(self._workers), len(due))):
            self._wake.release()
        work.finished.wait(max(0.0, now + self.timeout_s + FLEET_DEADLINE_GRACE_S - time.monotonic()))
        self._collect(work, due)
        return self.message(time.time())

    def _collect(self, work, due):
        """Record this round's answers; a peer not asked yet is left for the
        next round, one still in flight is cut (a timeout)."""
        while True:
            try:
                work.todo.popleft().busy = False    # not started: asked next round
            except IndexError:
                break
        answered = list(work.done)
        now, epoch = time.monotonic(), time.time()
        for state, outcome in answered:
            state.record(outcome[0], outcome[1], epoch, now, self.interval_s)
        for state in set(due) - set(state for state, _ in answered):
            if state.busy:
                state.cut()
                state.record("failed", "timed out", epoch, now, self.interval_s)

    def _work(self):
        while True:
            self._wake.acquire()
            work = self._round
            if self.stopping.is_set() or work is None:
                return
            while True:
                try:
                    state = work.todo.popleft()
                except IndexError:
                    break
                outcome = ask_fleet_peer(state, fleet_peer_token(self.tokens, state.peer.name),
                                         self.timeout_s)
                state.busy = False
                if state.removed:
                    state.close()
                work.done.append((state, outcome))
                if len(work.done) >= work.expected:
                    work.finished.set()

    def _sync(self, peers, now):
        """The states follow the peer list (a peer whose URL changed starts anew)."""
        old = self._states
        self._states = collections.OrderedDict()
        for peer in peers:
            state = old.pop(peer.name, None)
            if state is None or state.peer != peer:
                state = FleetPeerState(peer, now)
            self._states[peer.name] = state
        for state in old.values():
            state.removed = True
            if not state.busy:
                state.close()
        if self._hosts != len(self._states) and self.cache is not None:
            self._hosts = len(self._states)
            self.cache.set_feature("fleet", {"source": "peers", "interval_s": self.interval_s,
                                             "hosts": self._hosts})

    def stop(self):
        StoppableThread.stop(self)
        work = self._round
        if work is not None:
            work.finished.set()     # the round ends now, its answers so far recorded

    def poll_once(self):
        """One round without the thread (--once): -> the fleet message."""
        try:
            return self.poll_round()
        finally:
            self.close()

    def message(self, epoch_s):
        """The fleet now: this server first when it has GPUs, then every peer."""
        now = time.monotonic()
        local = self.local(epoch_s)
        hosts = ([local] if local["gpus"] else []) + [
            state.entry(now, self.interval_s) for state in self._states.values()]
        return build_fleet_message(epoch_s, "peers", self.interval_s, hosts,
                                   self.peer_list.error)

    def close(self):
        """The workers end (each at its next wake-up), the connections close."""
        self.stopping.set()
        for _ in self._workers:
            self._wake.release()
        for state in self._states.values():
            state.cut()
            state.close()


# -- Prometheus: the query API client and the fleet source ------------------

class PromClient(object):
    """Queries to a Prometheus-compatible query API at a base URL (any prefix:
    /prometheus for Mimir, /select/0/prometheus for VictoriaMetrics cluster):
    a GET, or a form POST when long; each with the fleet timeout, a size cap,
    gzip, and the configured extra headers (a tenant's X-Scope-OrgID, an
    Authorization); one connection each."""

    def __init__(self, base_url, timeout_s, headers=()):
        parts = urlsplit(base_url)
        self.scheme, self.netloc, self.prefix = parts.scheme, parts.netloc, parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers)
        self.headers.update({"Accept": "application/json", "Accept-Encoding": "gzip"})

    def get(self, endpoint, params, result_type):
        """('query' or 'query_range', params, 'vector' or 'matrix') -> (result,
        warnings); PromAnswerError saying what failed (never a header's value)."""
        factory = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = factory(self.netloc, timeout=self.timeout_s)
        try:
            path, query = "%s/api/v1/%s" % (self.prefix, endpoint), urlencode(params)
            if len(query) > FLEET_PROM_GET_MAX:         # the API takes the same form in a POST
                conn.request("POST", path, body=query.encode("ascii"), headers=dict(
                    self.headers, **{"Content-Type": "application/x-www-form-urlencoded"}))
            else:
                conn.request("GET", path + "?" + query, headers=self.headers)
            response = conn.getresponse()
            body = self._read_body(response)
            gzipped = (response.getheader("Content-Encoding") or "").lower() == "gzip"
        except socket.timeout:
            raise PromAnswerError("no answer within %.1f s" % self.timeout_s)
        except (OSError, http.client.HTTPException) as exc:
            raise PromAnswerError("cannot connect: %s" % (getattr(exc, "strerror", None) or exc))
        finally:
            conn.close()
        if gzipped:
            try:
                body = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, FLEET_PROM_BODY_LIMIT + 1)
            except zlib.error:
                raise PromAnswerError("a gzip body that does not inflate")
        if len(body) > FLEET_PROM_BODY_LIMIT:
            raise PromAnswerError("an answer over %d MiB" % (FLEET_PROM_BODY_LIMIT >> 20))
        return parse_prom_answer(response.status, body, result_type)

    @staticmethod
    def _read_body(response):
        """The body, up to FLEET_PROM_BODY_LIMIT + 1 bytes, read in 64 KiB parts
        (before 3.10 read(n) allocates and zeroes n bytes first: 64 MiB a query)."""
        parts, size = [], 0
        while size <= FLEET_PROM_BODY_LIMIT:
            part = response.read(min(FLEET_PROXY_CHUNK_BYTES, FLEET_PROM_BODY_LIMIT + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)


class FleetPrometheus(object):
    """The fleet read from Prometheus: poll(now) asks `up` and every host's
    last scrape time, then one instant query per metric (build_prom_fleet_queries)
    for the hosts scraped since their last read only (the others kept as read),
    all at one evaluation time, a few in flight, and answers the fleet host
    entries. Hosts are (job, instance) pairs that
    export amdgpu_build_info or amdgpu_gpu_info; up == 0 -> down ("scrape
    failing"), also for a target of the same jobs never seen with data; a host
    seen before and gone from `up` and every answer (its target removed) stays
    down for FLEET_PROM_FORGET_S. Prometheus itself failing: every host stale,
    then down after FLEET_STALE_INTERVALS intervals, data kept."""

    def __init__(self, client, interval_s):
        self.client, self.interval_s = client, interval_s
        self.queries = build_prom_fleet_queries()
        self.error, self.warnings = None, []
        self._known = {}        # (job, instance) -> {"data", "seen_s", "ok_s"}
        self._pool = None
        self._data, self._read_at = {}, {}  # (job, instance) -> host data as read; its scrape time
        self._unanswered = {}               # (job, instance) -> polls in a row it was read, unanswered
        self._all_read_s = float("-inf")    # when a poll last read every host
        self.last_rebuilt, self.last_full = 0, False    # the last poll's work (for benchmarks)

    def poll(self, now):
        """-> [fleet host entry], sorted by name (self.error says why a poll failed).
        The cyclic GC waits meanwhile: decoding 8,000-series answers makes ~100k
        short-lived containers (no cycles; reference counting frees them), which
        otherwise start one full collection or two per poll, most of its CPU."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._poll(now)
        finally:
            if enabled:
                gc.enable()

    def _poll(self, now):
        try:
            hosts, up = self._read_fleet(now)
        except PromAnswerError as exc:
            if self.error != "Prometheus: %s" % exc:
                LOG.warning("event=fleet_prometheus_failed error=%r", str(exc))
            self.error = "Prometheus: %s" % exc
            return self._entries(now, None, {})
        self.error = None
        return self._entries(now, hosts, up)

    def _read_fleet(self, now):
        """compute_prom_fleet of this poll's answers, merged with the hosts kept
        as read; PromAnswerError for anything that fails, an answer of an odd
        shape too (never an exception that ends the round)."""
        try:
            answers, stamps, to_read = self._query_all(now)
            hosts, up = compute_prom_fleet(answers)
            answered = prom_answered_hosts(answers)
        except PromAnswerError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
            raise PromAnswerError("an answer of an odd shape (%s)" % type(exc).__name__)
        return self._merge(hosts, stamps, to_read, answered), up

    def _query_all(self, now):
        """({query name: parsed answer}, the hosts' scrape times, the hosts read:
        None for all): `up` and the scrape times every poll, the metric queries
        for the hosts prom_fleet_to_read names (none when it names none)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(FLEET_PROM_QUERY_THREADS, "fleet-prom")
        at = "%.3f" % now
        answers, warnings = self._ask([(name, query) for name, query in self.queries
                                       if name in ("up", "build")], at)
        stamps = prom_scrape_stamps(answers["build"])
        to_read = prom_fleet_to_read(stamps, self._read_at, self._data)
        if to_read is None or now - self._all_read_s >= FLEET_PROM_READ_ALL_EVERY_S:
            to_read, self._all_read_s = None, now
        if to_read is None or to_read:
            queries = self.queries if to_read is None else \
                build_prom_fleet_queries(set(instance for _job, instance in to_read))
            more, more_warnings = self._ask([(name, query) for name, query in queries
                                             if name not in ("up", "build")], at)
            answers.update(more)
            warnings += more_warnings
        if warnings and warnings != self.warnings:
            LOG.warning("event=fleet_prometheus_warnings warnings=%r", warnings[:3])
        self.warnings = warnings
        return answers, stamps, to_read

    def _ask(self, queries, at):
        """({name: parsed answer}, [warning]) of these instant queries at one time,
        a few in flight; the first failure raised, the queued queries cancelled with it."""
        futures = [(name, self._pool.submit(self.client.get, "query", {"query": query, "time": at},
                                            "vector")) for name, query in queries]
        answers, warnings = {}, []
        try:
            for name, future in futures:
                result, more = future.result()
                answers[name] = parse_prom_gpu_values(result) if name in FLEET_PROM_GPU_VALUES \
                    else parse_prom_vector(result)
                warnings += more
        except Exception:
            for _, future in futures:   # the queued queries go too: none pile up while it fails
                future.cancel()
            raise
        return answers, warnings

    def _merge(self, hosts, stamps, to_read, answered):
        """This poll's hosts: those read (to_read's instances; None: all) as
        answered; a host read but in no answer keeps its last data and is asked
        again, until FLEET_PROM_UNANSWERED_POLLS polls missed it (then taken as
        answered); every other host still exporting amdgpu_build_info with its
        data as last read. Remembers which scrape each host's data came from."""
        instances = None if to_read is None else set(instance for _job, instance in to_read)
        cut = set(key for key in hosts if instances is None or key[1] in instances)
        merged, read_at, unanswered = {}, {}, {}
        for key, at in stamps.items():
            if key not in cut and key in self._data:
                merged[key], read_at[key] = self._data[key], at
        for key in cut:
            tries = 0 if key in answered else self._unanswered.get(key, 0) + 1
            old = self._data.get(key) if 0 < tries < FLEET_PROM_UNANSWERED_POLLS else None
            merged[key] = hosts[key] if old is None else dict(old, last_seen_s=hosts[key]["last_seen_s"])
            if old is not None:
                unanswered[key] = tries
                if key in self._read_at:
                    read_at[key] = self._read_at[key]
            elif key in stamps:
                read_at[key] = stamps[key]
        self._data, self._read_at, self._unanswered = merged, read_at, unanswered
        self.last_rebuilt, self.last_full = len(cut & answered), to_read is None
        return merged

    def _entries(self, now, hosts, up):
        """Known hosts (and up == 0 targets of their jobs) -> host entries."""
        if hosts is not None:
            for key, data in hosts.items():
                self._known.setdefault(key, {}).update(data=data, seen_s=now, ok_s=now)
            jobs = set(job for job, _ in self._known)
            for key, value in up.items():
                if value == 0 and key[0] in jobs and key not in self._known:
                    self._known[key] = {"data": None, "seen_s": now, "ok_s": None}
        names = prom_host_names(self._known)
        entries = []
        for key, known in list(self._known.items()):
            state, error = self._state(now, key, known, hosts, up)
            if state is None:
                del self._known[key]
                continue
            made = known.get("made")        # (name, state, error, data, entry): unchanged -> reused
            if made is None or made[:3] != (names[key], state, error) or made[3] is not known["data"]:
                data = known["data"] or {}
                made = known["made"] = (names[key], state, error, known["data"], build_prom_fleet_host(
                    names[key], state, data.get("last_seen_s"), error, known["data"]))
            entries.append(made[4])
        return sorted(entries, key=lambda entry: entry["name"])

    def _state(self, now, key, known, hosts, up):
        """(state, error) of one known host; (None, None) to forget it."""
        if hosts is None:
            young = known["ok_s"] is not None and \
                now - known["ok_s"] < FLEET_STALE_INTERVALS * self.interval_s
            return ("stale" if young else "down"), self.error
        if up.get(key) == 0:
            known["seen_s"] = now
            return "down", "scrape failing"
        if key in hosts:
            return "up", None
        if key in up:
            known["seen_s"] = now
            return "refused", "scraped, but no amdgpu_ series (APP_ENABLE_PROMETHEUS off?)"
        if now - known["seen_s"] > FLEET_PROM_FORGET_S:
            return None, None
        return "down", "no longer scraped by Prometheus"

    def history(self, metric, from_s, to_s, step_s):
        """/api/fleet/history: one query_range of a GPU stats key for the whole fleet."""
        selector, scale = prom_gpu_selector(metric)
        start_s = math.floor(from_s / step_s) * step_s
        points = int((to_s - start_s) // step_s) + 1
        result, _warnings = self.client.get("query_range", {
            "query": "max by (job, instance, gpu) (%s)" % selector, "start": "%.3f" % start_s,
            "end": "%.3f" % (start_s + (points - 1) * step_s), "step": "%g" % step_s}, "matrix")
        rows = parse_prom_matrix(result, start_s, step_s, points)
        names = prom_host_names(set((l.get("job", ""), l.get("instance", "")) for l, _ in rows))
        series = {}
        for labels, values in rows:
            name = names[(labels.get("job", ""), labels.get("instance", ""))]
            series["%s/%s" % (name, labels.get("gpu", ""))] = [_prom_scaled(metric, v, scale)
                                                               for v in values]
        return build_fleet_history_answer(metric, start_s, step_s, points, series)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class FleetPrometheusPoller(FleetThread):
    """A hub's Prometheus source on its own thread: every fleet_interval_s one
    FleetPrometheus.poll, this server first when it has GPUs, then
    Cache.publish_fleet (pushed only when something changed); the fleet's
    error is Prometheus' while it fails."""

    def __init__(self, config, cache, source, local=None):
        FleetThread.__init__(self, "fleet-prometheus")
        self.cache, self.source, self.interval_s = cache, source, config.fleet_interval_s
        self.local = local or (lambda epoch_s: local_fleet_host(cache, epoch_s))   # -> host entry
        self._hosts = None

    def start(self):
        self.cache.publish_fleet(self.message(time.time(), []))
        StoppableThread.start(self)

    def close(self):
        self.source.close()

    def poll_round(self):
        epoch = time.time()
        return self.message(epoch, self.source.poll(epoch))

    def poll_once(self):
        """One round without the thread (--once): -> the fleet message."""
        try:
            return self.poll_round()
        finally:
            self.source.close()

    def message(self, epoch_s, hosts):
        if self._hosts != len(hosts) and self.cache is not None:
            self._hosts = len(hosts)
            self.cache.set_feature("fleet", {"source": "prometheus", "interval_s": self.interval_s,
                                             "hosts": self._hosts})
        local = self.local(epoch_s)
        return build_fleet_message(epoch_s, "prometheus", self.interval_s,
                                   ([local] if local["gpus"] else []) + hosts, self.source.error)


def make_fleet_prometheus(config):
    """The Prometheus fleet source of a hub with APP_FLEET_PROMETHEUS_URL, else None."""
    if not config.fleet_prometheus_url:
        return None
    client = PromClient(config.fleet_prometheus_url, config.fleet_timeout_s,
                        config.fleet_prometheus_headers)
    return FleetPrometheus(client, config.fleet_interval_s)


# -- the proxy: /hosts/{name}/ ----------------------------------------------

class FleetProxy(object):
    """/hosts/{name}/...: GET and HEAD relayed to the peer of that name in the
    current list, and /hosts/{name}/ws spliced to its /ws. The target is
    always a configured peer (never a URL from the request); the peer gets
    its own token from APP_FLEET_TOKEN_FILE, never the browser's for the hub."""

    def __init__(self, peers, tokens, timeout_s):
        self.peers = peers
        self.tokens = tokens or {}
        self.timeout_s = timeout_s
        self.deadline_s = FLEET_PROXY_DEADLINE_S
        self.read_timeout_s = FLEET_PROXY_READ_TIMEOUT_S
        self._ws_slots = threading.BoundedSemaphore(FLEET_PROXY_WS_MAX)
        self._http_slots = threading.BoundedSemaphore(FLEET_PROXY_HTTP_MAX)

    def find(self, name):
        return next((peer for peer in self.peers.current() if peer.name == name), None)

    def _connect(self, peer):
        """An open connection to the peer (within APP_FLEET_TIMEOUT), then
        read_timeout_s (FLEET_PROXY_READ_TIMEOUT_S) per read; OSError otherwise."""
        cls = http.client.HTTPSConnection if peer.scheme == "https" else http.client.HTTPConnection
        conn = cls(peer.host, peer.port, timeout=self.timeout_s)
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout_s)
        except Exception:
            conn.close()
            raise
        return conn

    def relay_http(self, handler, peer, rest, query):
        """One GET/HEAD to the peer, its answer streamed back (a 502 naming the
        peer when it cannot be reached, fails, or redirects elsewhere); at most
        FLEET_PROXY_HTTP_MAX at once (503 past), each cut at deadline_s."""
        if not self._http_slots.acquire(False):
            handler._send_json(503, build_error_answer("too many proxied requests"),
                               [("Retry-After", "5")])
            return
        try:
            self._relay_http(handler, peer, rest, query)
        finally:
            self._http_slots.release()

    @staticmethod
    def _cut(sock, expired):
        """At the deadline: the peer's socket shut down (a read blocked on it returns)."""
        expired.set()
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)      # the TCP socket under any TLS
        except OSError:
            pass

    def _relay_http(self, handler, peer, rest, query):
        base = urlsplit(peer.url)
        query = proxy_query(query)
        target = base.path + rest + ("?" + query if query else "")
        headers = proxy_request_headers(list(handler.headers.items()), base.netloc,
                                        fleet_peer_token(self.tokens, peer.name))
        conn = timer = None
        expired = threading.Event()
        try:
            conn = self._connect(peer)
            timer = threading.Timer(self.deadline_s, self._cut, (conn.sock, expired))
            timer.daemon = True
            timer.start()
            conn.putrequest(handler.command, target, skip_host=True, skip_accept_encoding=True)
            for key, value in headers:
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            if expired.is_set():                # its head cut short: not an answer
                raise socket.timeout()
            self._answer(handler, peer, peer.url[:len(peer.url) - len(base.path)] + target, response,
                         expired)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.bad_gateway(handler, peer, socket.timeout() if expired.is_set() else exc)
        finally:
            if timer is not None:
                timer.cancel()
            if conn is not None:
                conn.close()

    def _answer(self, handler, peer, request_url, response, expired):
        headers = proxy_response_headers(response.getheaders())
        location = response.getheader("Location")
        if location is not None:
            moved = rewrite_proxy_location(location, peer.url, request_url, peer.name)
            if moved is None:
                raise ValueError("it redirects outside itself (HTTP %d)" % response.status)
            headers = [(k, moved if k.lower() == "location" else v) for k, v in headers]
        length, bodyless = response.length, handler.command == "HEAD" or response.status in (204, 304)
        if bodyless:
            length = response.getheader("Content-Length") if handler.command == "HEAD" else None
        if length is not None and int(length) > FLEET_PROXY_BODY_LIMIT:
            raise ValueError("its answer is over %d bytes" % FLEET_PROXY_BODY_LIMIT)
        chunked = not bodyless and length is None and handler.request_version == "HTTP/1.1"
        if not bodyless and length is None and not chunked:
            handler.close_connection = True     # an HTTP/1.0 browser: the body ends with the connection
        framing = ([("Content-Length", str(length))] if length is not None else
                   [("Transfer-Encoding", "chunked")] if chunked else [])
        self._send_head(handler, response.status, headers + framing)
        if not bodyless:
            self._copy(handler, response, None if length is None else int(length), chunked, expired)

    @staticmethod
    def _send_head(handler, status, headers):
        handler._answered = True
        handler.send_response(status)
        present = {key.lower() for key, _ in headers}
        extra = [(k, v) for k, v in SECURITY_HEADERS if k.lower() not in present]
        if "content-security-policy" not in present:
            extra.append(("Content-Security-Policy", handler.server.app.csp))
        for key, value in headers + extra:
            handler.send_header(key, value)
        handler.end_headers()

    @staticmethod
    def _copy(handler, response, length, chunked, expired):
        """The body as it comes (length None: until the peer's end, re-chunked for
        an HTTP/1.1 browser); a peer that stops short, or the deadline or the size
        limit, closes the browser's connection (no final chunk: it sees the cut)."""
        left, sent = length, 0
        while left is None or left > 0:
            want = FLEET_PROXY_CHUNK_BYTES if left is None else min(FLEET_PROXY_CHUNK_BYTES, left)
            try:
                chunk = response.read1(want)
            except (OSError, http.client.HTTPException):
                chunk = None
            sent += len(chunk or b"")
            if not chunk or sent > FLEET_PROXY_BODY_LIMIT:
                if chunk == b"" and left is None and not expired.is_set() and chunked:
                    handler.wfile.write(b"0\r\n\r\n")        # the peer's body ended well
                else:
                    handler.close_connection = True
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if left is not None:
                left -= len(chunk)

    @staticmethod
    def bad_gateway(handler, peer, exc):
        if getattr(handler, "_answered", False):
            handler.close_connection = True
            return
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, socket.timeout):
            reason = "timed out"
        handler._send_json(502, build_error_answer("peer %s: %s" % (peer.name, reason[:200])),
                           reason="peer=%s" % peer.name)

    def relay_ws(self, handler, peer, query):
        """The browser's upgrade (its checks passed) sent on to the peer's /ws;
        the peer's 101 relayed, then bytes both ways until either side closes."""
        if not self._ws_slots.acquire(False):
            handler._send_json(503, build_error_answer("too many proxied WebSockets"),
                               [("Retry-After", "5")])
            return
        upstream = None
        try:
            upstream, head, extra = self._ws_open(peer, query, handler.headers)
            status = parse_status_line(head)
            if status != 101:
                raise ValueError("it answered the WebSocket upgrade with HTTP %s%s" % (
                    status, " (its token: APP_FLEET_TOKEN_FILE)" if status in (401, 403) else ""))
            self._ws_splice(handler, upstream, build_proxy_ws_answer(head) + extra)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.bad_gateway(handler, peer, exc)
        finally:
            if upstream is not None:
                upstream.close()
            self._ws_slots.release()

    def _ws_open(self, peer, query, headers):
        """(socket, the peer's answer head, bytes read past it)."""
        base = urlsplit(peer.url)
        query = proxy_query(query)
        path = base.path + "/ws" + ("?" + query if query else "")
        conn = self._connect(peer)
        sock, conn.sock = conn.sock, None       # the socket is ours now (an SSL one for https)
        try:
            sock.sendall(build_proxy_ws_request(path, base.netloc, headers,
                                                fleet_peer_token(self.tokens, peer.name)))
            data = b""
            while b"\r\n\r\n" not in data:
                if len(data) > FLEET_PROXY_HEAD_LIMIT:
                    raise ValueError("its answer head is over %d bytes" % FLEET_PROXY_HEAD_LIMIT)
                chunk = sock.recv(4096)
                if not chunk:
                    raise ValueError("it closed the connection during the upgrade")
                data += chunk
        except Exception:
            sock.close()
            raise
        head, _, extra = data.partition(b"\r\n\r\n")
        return sock, head + b"\r\n\r\n", extra

    @staticmethod
    def _ws_splice(handler, upstream, answer):
        handler._answered = True
        handler.close_connection = True
        client = handler.connection
        client.sendall(answer)
        client.setblocking(False)
        leftover = handler.rfile.read1(WS_RECV_SIZE) or b""    # sent after the head, already read
        if leftover:
            upstream.sendall(leftover)
        splice_sockets(client, upstream, FLEET_PROXY_WS_IDLE_S)


def splice_sockets(left, right, idle_s):
    """Copy bytes both ways until either side closes or fails, or both stay
    silent idle_s (frames are not decoded). Returns why it stopped."""
    other = {left: right, right: left}
    for sock in other:
        sock.settimeout(idle_s)
    with selectors.DefaultSelector() as selector:
        for sock in other:
            selector.register(sock, selectors.EVENT_READ)
        while True:
            ready = {sock for sock in other if getattr(sock, "pending", lambda: 0)()}
            ready.update(key.fileobj for key, _ in selector.select(0 if ready else idle_s))
            if not ready:
                return "idle"
            for sock in ready:
                try:
                    data = sock.recv(WS_RECV_SIZE)
                    if not data:
                        return "closed"
                    other[sock].sendall(data)
                except OSError:
                    return "failed"


# ---------------------------------------------------------------------------
# 13. History store (SQLite: the only code that speaks SQL)
# ---------------------------------------------------------------------------

# -- schema and SQL text ----------------------------------------------------

#
# The only code that speaks SQL. Samplers hand samples to ONE writer thread
# through a bounded deque (drop-oldest, counted); the writer folds them into
# 1 s and 1 min rows in memory (SeriesRollup) and runs one transaction every
# HISTORY_COMMIT_S; hour rows are built from the minute rows in SQL, so a
# restart never loses them. WAL + synchronous=NORMAL: a crash loses at most
# the open batch, never the file (facts sheet §4). Readers open their own
# connection per query.

HISTORY_SERIES_TABLES = tuple((kind, tier) for kind in ("gpu", "host")
                              for tier, _, _ in HISTORY_TIERS)


def _history_table(kind, tier):
    return "%s_%s" % (kind, {"raw": "raw", "1m": "m1", "10m": "m10", "1h": "h1"}[tier])


# The tiers built from minute rows in SQL: (tier, step).
HISTORY_BUILT_TIERS = tuple((name, step) for name, step, _ in HISTORY_TIERS if step > 60)


def _history_column_names(kind, tier):
    names = [key for key, _ in history_columns(kind)]
    if tier == "raw":
        return names
    return [name + suffix for name in names for suffix in ("_min", "_avg", "_max")]


def history_schema():
    """CREATE statements of schema version 1."""
    stmts = ["CREATE TABLE sources(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL,"
             " columns TEXT NOT NULL DEFAULT '', UNIQUE(kind, key))"]
    for kind, tier in HISTORY_SERIES_TABLES:
        cols = "".join(", %s INTEGER" % name for name in _history_column_names(kind, tier))
        stmts.append("CREATE TABLE %s(src INTEGER NOT NULL, ts INTEGER NOT NULL, n INTEGER NOT NULL"
                     "%s, PRIMARY KEY(src, ts)) WITHOUT ROWID" % (_history_table(kind, tier), cols))
    stmts += [
        "CREATE TABLE runs(id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL, pid INTEGER NOT NULL,"
        " start_time INTEGER NOT NULL, gpu_id TEXT NOT NULL, name TEXT, user TEXT, uid INTEGER,"
        " cmd TEXT, container TEXT, kfd INTEGER, type TEXT, first_seen REAL, last_seen REAL,"
        " ended REAL, peak_vram INTEGER, peak_gtt INTEGER, peak_engine REAL, time_s REAL,"
        " vram_s REAL, gtt_s REAL, engine_s REAL, gpu_s REAL, samples INTEGER, started REAL,"
        " unit TEXT, container_name TEXT, k8s_namespace TEXT, k8s_pod TEXT, k8s_container TEXT,"
        " k8s_pod_uid TEXT, slurm_job INTEGER, slurm_step TEXT, energy_j REAL,"
        " UNIQUE(boot_id, pid, start_time, gpu_id))",
        "CREATE INDEX runs_last_seen ON runs(last_seen)",
        "CREATE TABLE proc_samples(src INTEGER NOT NULL, ts INTEGER NOT NULL, run INTEGER NOT NULL,"
        " vram_mib INTEGER, gtt_mib INTEGER, engine_pct10 INTEGER, energy_mj INTEGER,"
        " gpu_ms INTEGER, PRIMARY KEY(src, ts, run)) WITHOUT ROWID",
        "CREATE TABLE alerts(id INTEGER PRIMARY KEY, rule TEXT NOT NULL, gpu_id TEXT NOT NULL,"
        " started REAL NOT NULL, ended REAL, event TEXT NOT NULL, UNIQUE(rule, gpu_id, started))",
        "CREATE INDEX alerts_started ON alerts(started)",
    ]
    return stmts + history_usage_index_sql()


# Indexes for /api/usage (#18), made with the tables and added to older files: the
# roll-up tiers' interval sums, narrow (a GPU's row has ~200 columns), covering its query.
HISTORY_USAGE_INDEXES = tuple("gpu_%s_usage" % t for t in ("m1", "m10", "h1"))


def history_usage_index_sql():
    return ["CREATE INDEX IF NOT EXISTS %s ON %s(src, ts, n, %s)" % (
        name, name[:-len("_usage")], ", ".join(k + "_avg" for k in HISTORY_INTERVAL_KEYS))
        for name in HISTORY_USAGE_INDEXES]


def _merge_sql(table, names):
    """INSERT of a minute row that merges into one already there (a restart within the minute)."""
    sets = ["n = n + excluded.n"]
    for name in names:
        if name.endswith("_min") or name.endswith("_max"):
            fn = "min" if name.endswith("_min") else "max"
            sets.append("%s = %s(coalesce(%s, excluded.%s), coalesce(excluded.%s, %s))"
                        % (name, fn, name, name, name, name))
        else:
            sets.append("%s = coalesce(CAST(round((coalesce(%s, excluded.%s) * n + coalesce("
                        "excluded.%s, %s) * excluded.n) * 1.0 / (n + excluded.n)) AS INTEGER), %s)"
                        % (name, name, name, name, name, name))
    return ("INSERT INTO %s(src, ts, n, %s) VALUES (%s) ON CONFLICT(src, ts) DO UPDATE SET %s"
            % (table, ", ".join(names), ", ".join("?" * (len(names) + 3)), ", ".join(sets)))


def _rebuild_sql(kind, tier):
    """Rebuild one 10 min or hour row of a source from its minute rows."""
    names = [key for key, _ in history_columns(kind)]
    aggs = []
    for name in names:
        aggs += ["min(%s_min)" % name, "CAST(round(sum(%s_avg * n) * 1.0 / sum(n * (%s_avg IS NOT "
                 "NULL))) AS INTEGER)" % (name, name), "max(%s_max)" % name]
    return ("INSERT OR REPLACE INTO %s(src, ts, n, %s) SELECT src, ?, sum(n), %s FROM %s"
            " WHERE src = ? AND ts >= ? AND ts < ? GROUP BY src"
            % (_history_table(kind, tier), ", ".join(_history_column_names(kind, tier)),
               ", ".join(aggs), _history_table(kind, "1m")))


def _series_select(kind, tier, names, direct):
    """Buckets of `step` seconds: min of mins, count-weighted mean, max of maxes;
    `direct` (one row per bucket) reads the columns as they are."""
    aggs = []
    for name in names:
        lo, mid, hi = (name, name, name) if tier == "raw" else (
            name + "_min", name + "_avg", name + "_max")
        # raw rows are means of ~equal sample counts: a plain avg() is a third cheaper
        mean = ("avg(%s)" % mid if tier == "raw" else
                "sum(%s * n) * 1.0 / sum(n * (%s IS NOT NULL))" % (mid, mid))
        aggs += [lo, mid, hi] if direct else ["min(%s)" % lo, mean, "max(%s)" % hi]
    return ("SELECT (ts - ?) / ? AS b, %s%s FROM %s WHERE src = ? AND ts >= ? AND ts < ?%s" % (
        "n" if direct else "sum(n)", "".join(", " + a for a in aggs), _history_table(kind, tier),
        "" if direct else " GROUP BY b"))


# -- opening the file: ownership, lock, identity, refusals ------------------

def read_boot_id(proc_root):
    text = read_text(os.path.join(proc_root, "sys", "kernel", "random", "boot_id"), 256)
    return text.strip() if text and text.strip() else "unknown"


class HistoryUnavailable(Exception):
    """The file cannot be used: the store keeps history in memory (message says why)."""


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _history_refusal(path, st, one_link=True):
    """Why the thing at `path` (its lstat) is no history file of ours, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "%s is a symbolic link: never followed (the target is left untouched)" % path
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        return "%s is %s: left untouched" % (path, kind)
    if one_link and st.st_nlink != 1:       # writes would land in the other name too
        return "%s has %d hard links: left untouched" % (path, st.st_nlink)
    return None


def _history_open_own(path, one_link=True):
    """(fd, created) of the regular file at `path`, never through a link: a missing
    one is made 0600 (O_EXCL, whatever the umask); a link, directory, FIFO, device
    or (one_link) hard-linked file is refused (HistoryUnavailable). Only a file
    made here is ever chmod'ed."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:             # O_EXCL: also a dangling link, a FIFO, a directory
        pass
    else:
        os.fchmod(fd, 0o600)
        return fd, True
    refusal = _history_refusal(path, os.lstat(path), one_link)
    if refusal:
        raise HistoryUnavailable(refusal)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise HistoryUnavailable("%s: %s" % (path, exc.strerror))
    st, now = os.fstat(fd), os.lstat(path)
    same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
    refusal = _history_refusal(path, st, one_link) or (
        None if same else "%s changed while opened" % path)
    if refusal:
        os.close(fd)
        raise HistoryUnavailable(refusal)
    return fd, False


def _history_mkdirs(directory):
    """The missing folders above the file, each 0700 whatever the umask (os.makedirs
    would give the ones between 0777 & ~umask); folders already there are left alone."""
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)        # made just now: the umask may have taken bits
        finally:
            os.close(fd)


def _history_lock(path):
    """An exclusive flock on <path>.lock (one server per file), or HistoryUnavailable."""
    lock_path = path + ".lock"
    fd, _ = _history_open_own(lock_path, one_link=False)   # never written: a link is harmless
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise HistoryUnavailable("another amdgpu_top_web uses %s (it holds %s)" % (path, lock_path))
    return fd


def _history_check(conn, app_id=HISTORY_APP_ID):
    """'new', 'ok', or raise: foreign/corrupt (sqlite3.DatabaseError), newer or the
    other kind, demo or real (HistoryUnavailable: the file is left untouched)."""
    found = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if found == 0 and version == 0 and tables == 0:
        return "new"
    if found == HISTORY_DEMO_APP_ID and app_id != found:
        raise HistoryUnavailable("it holds --demo history (synthetic GPUs), never read by a real "
                                 "server: left untouched")
    if found == HISTORY_APP_ID and app_id != found:
        raise HistoryUnavailable("it holds a real server's history, never written by --demo: "
                                 "left untouched")
    if found != app_id:
        raise sqlite3.DatabaseError("not an amdgpu_top_web history file (application_id %d)"
                                    % found)
    if version > HISTORY_SCHEMA_VERSION:
        raise HistoryUnavailable("schema version %d is newer than this program's %d: left untouched"
                                 % (version, HISTORY_SCHEMA_VERSION))
    if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        raise sqlite3.DatabaseError("PRAGMA quick_check failed")
    return "ok"


def _history_create(conn, app_id=HISTORY_APP_ID):
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")      # before the first table
    conn.execute("BEGIN")
    for stmt in history_schema():
        conn.execute(stmt)
    conn.execute("PRAGMA application_id = %d" % app_id)
    conn.execute("PRAGMA user_version = %d" % HISTORY_SCHEMA_VERSION)
    conn.execute("COMMIT")


def _history_add_columns(conn):
    """A metric added to METRIC_KEYS (or a host key) since the file was made
    becomes a column (ADD COLUMN: old rows read it as null); nothing is dropped."""
    for kind, tier in HISTORY_SERIES_TABLES:
        table = _history_table(kind, tier)
        have = set(row[1] for row in conn.execute("PRAGMA table_info(%s)" % table))
        for name in _history_column_names(kind, tier):
            if name not in have:
                conn.execute("ALTER TABLE %s ADD COLUMN %s INTEGER" % (table, name))
    have = set(row[1] for row in conn.execute("PRAGMA table_info(runs)"))
    if "started" not in have:            # the process's wall-clock start (files before it: null)
        conn.execute("ALTER TABLE runs ADD COLUMN started REAL")
    for name, kind in HISTORY_WHO_COLUMN_TYPES + (("energy_j", "REAL"),):  # #18: null before
        if name not in have:
            conn.execute("ALTER TABLE runs ADD COLUMN %s %s" % (name, kind))
    have = set(row[1] for row in conn.execute("PRAGMA table_info(proc_samples)"))
    for name in ("energy_mj", "gpu_ms"):    # what each sample's interval cost (#18)
        if name not in have:
            conn.execute("ALTER TABLE proc_samples ADD COLUMN %s INTEGER" % name)
    for stmt in history_usage_index_sql():
        conn.execute(stmt)


def _history_claim(path):
    """(dev, ino) of the database file, checked (or made) without following a link,
    its sidecars too: SQLite then opens this very file by name (it has no O_NOFOLLOW)."""
    for suffix in HISTORY_SIDECARS:
        try:
            refusal = _history_refusal(path + suffix, os.lstat(path + suffix))
        except FileNotFoundError:
            continue
        if refusal:
            raise HistoryUnavailable(refusal)
    fd, _ = _history_open_own(path)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)                    # before SQLite locks it: a close drops a process's locks
    return st.st_dev, st.st_ino


def history_identity(path):
    """(dev, ino) of the regular file at `path` itself (a link is not followed)."""
    st = os.lstat(path)
    return None if _history_refusal(path, st) else (st.st_dev, st.st_ino)


def _history_connect(path, app_id=HISTORY_APP_ID, wal_pages=HISTORY_WAL_PAGES[1]):
    """(connection, (dev, ino)) of the file at `path`, made ready."""
    identity = _history_claim(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
    try:
        if history_identity(path) != identity:
            raise HistoryUnavailable("%s was replaced while it was opened: left untouched" % path)
        try:
            kind = _history_check(conn, app_id)
        except HistoryUnavailable as exc:
            raise HistoryUnavailable("%s: %s" % (path, exc))
        if kind == "new":
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")     # before anything is written
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise HistoryUnavailable("%s: WAL mode refused" % path)
        conn.execute("PRAGMA synchronous = NORMAL")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_autocheckpoint = %d" % wal_pages)
        conn.execute("PRAGMA journal_size_limit = %d" % (wal_pages * page))
        if kind == "new":
            _history_create(conn, app_id)
        else:
            _history_add_columns(conn)
    except BaseException:
        conn.close()
        raise
    return conn, identity


def _move_aside(path, epoch_s):
    """Rename the file (and its sidecars) to <path>.corrupt-<time>: rename moves a
    link itself, never its target, and no name already there is replaced."""
    aside = base = "%s.corrupt-%s" % (path, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_s)))
    count = 0
    while any(os.path.lexists(aside + s) for s in ("",) + HISTORY_SIDECARS):
        count += 1
        aside = "%s.%d" % (base, count)
    os.rename(path, aside)
    for suffix in HISTORY_SIDECARS:
        if os.path.lexists(path + suffix):
            os.rename(path + suffix, aside + suffix)
    return aside


def open_history_file(path, epoch_s, demo=False, wal_pages=HISTORY_WAL_PAGES[1]):
    """(connection, lock fd, (dev, ino)) of the history file, made ready; a corrupt
    or foreign file is moved aside (one WARNING naming both paths) and a fresh one
    started. demo: a --demo history (its own application_id: a real server never
    reads one, a demo never writes into a real one). Nothing is opened through a
    link, nor anything but a regular file. Raises HistoryUnavailable or OSError:
    the caller goes memory-only."""
    path = os.path.abspath(path)
    _history_mkdirs(os.path.dirname(path))
    app_id = HISTORY_DEMO_APP_ID if demo else HISTORY_APP_ID
    lock_fd = _history_lock(path)
    try:
        try:
            conn, identity = _history_connect(path, app_id, wal_pages)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_io_error(exc):
                raise HistoryUnavailable("%s: %s" % (path, exc))
            aside = _move_aside(path, epoch_s)
            LOG.warning("event=history_corrupt path=%s moved_to=%s reason=%r: a fresh file is "
                        "started", path, aside, str(exc))
            conn, identity = _history_connect(path, app_id, wal_pages)
        return conn, lock_fd, identity
    except BaseException:
        os.close(lock_fd)
        raise


def _is_io_error(exc):
    text = str(exc).lower()
    return any(word in text for word in ("readonly", "read-only", "unable to open", "disk i/o",
                                         "disk is full", "locked"))


def _is_full_error(exc):
    return "full" in str(exc).lower()


# -- run rows and source ids (shared by the reader and the writer) ----------

HISTORY_WHO_COLUMN_TYPES = (("unit", "TEXT"), ("container_name", "TEXT"),
                            ("k8s_namespace", "TEXT"), ("k8s_pod", "TEXT"),
                            ("k8s_container", "TEXT"), ("k8s_pod_uid", "TEXT"),
                            ("slurm_job", "INTEGER"), ("slurm_step", "TEXT"))
RUN_COLUMNS = ("boot_id", "pid", "start_time", "gpu_id", "name", "user", "uid", "cmd", "container",
               "kfd", "type", "first_seen", "last_seen", "ended", "peak_vram", "peak_gtt",
               "peak_engine", "time_s", "vram_s", "gtt_s", "engine_s", "gpu_s", "samples",
               "started") + tuple(name for name, _ in HISTORY_WHO_COLUMN_TYPES) + ("energy_j",)
_RUN_UPSERT = (
    "INSERT INTO runs(%s) VALUES (%s) ON CONFLICT(boot_id, pid, start_time, gpu_id) DO UPDATE SET "
    % (", ".join(RUN_COLUMNS), ", ".join("?" * len(RUN_COLUMNS)))
    + ", ".join(["%s = coalesce(excluded.%s, %s)" % (c, c, c)
                 for c in ("name", "user", "uid", "cmd", "container", "kfd", "type", "started")
                 + tuple(name for name, _ in HISTORY_WHO_COLUMN_TYPES)]
                + ["first_seen = min(first_seen, excluded.first_seen)",
                   "last_seen = max(last_seen, excluded.last_seen)", "ended = excluded.ended"]
                + ["%s = max(coalesce(%s, excluded.%s), coalesce(excluded.%s, %s))" % ((c,) * 5)
                   for c in ("peak_vram", "peak_gtt", "peak_engine")]
                + ["%s = %s + excluded.%s" % ((c,) * 3)
                   for c in ("time_s", "vram_s", "gtt_s", "engine_s", "gpu_s", "samples")]
                + ["energy_j = CASE WHEN excluded.energy_j IS NULL THEN energy_j"
                   " ELSE coalesce(energy_j, 0) + excluded.energy_j END"]))


# /api/usage's keys (USAGE_BY) as SQL over the runs table's columns.
USAGE_KEY_SQL = {"user": "user", "unit": "unit", "container": "coalesce(container_name, container)",
                 "pod": "CASE WHEN k8s_pod IS NULL THEN NULL ELSE coalesce(k8s_namespace, '') ||"
                        " '/' || k8s_pod END",
                 "namespace": "k8s_namespace", "job": "slurm_job", "name": "name"}
_USAGE_PART = ("key", "runs", "gpu_s", "vram_s", "energy_j", "peak_vram", "first_seen", "last_seen")
_USAGE_EDGE = ("id", "gpu_id", "key", "first_seen", "last_seen", "gpu_s", "vram_s", "energy_j",
               "peak_vram")


def _runs_where(from_s, to_s, gpu_id=None, by=None, key=None):
    """The runs seen in [from_s, to_s] (of one GPU; whose `by` is key, None: none)."""
    sql, args = "last_seen >= ? AND first_seen <= ?", [from_s, to_s]
    if gpu_id is not None:
        sql += " AND gpu_id = ?"
        args.append(gpu_id)
    if by is not None:
        sql += " AND %s %s" % (USAGE_KEY_SQL[by], "IS NULL" if key is None else "= ?")
        args += [] if key is None else [key]
    return sql, args


def _unscale_all(values, scale, exact):
    """Stored integers (exact) or SQL means (floats) -> the metric's own unit,
    a whole column at once (a chart has ~60 of them: no call per value)."""
    if scale < 1.0:
        shift = int(round(math.log(1.0 / scale, 2)))
        if exact:
            return [None if v is None else v << shift for v in values]
        return [None if v is None else int(v * (1 << shift)) for v in values]
    if exact:
        return list(values) if scale == 1.0 else [None if v is None else v / scale for v in values]
    return [None if v is None else round(v / scale, 3) for v in values]


def _scatter(values, buckets, count, full, empty):
    if full:
        return list(values)
    out = [empty] * count
    for bucket, value in zip(buckets, values):
        if 0 <= bucket < count:
            out[bucket] = value
    return out


def history_run_json(row, now_s):
    """A runs row (RUN_COLUMNS after the id) -> the run dict of the API (#9).
    started: the process's start, or first_seen where that is unknown (another
    PID namespace, files from before it was kept); elapsed_s: to its end or now_s."""
    run = dict(zip(("run_id",) + RUN_COLUMNS, row))
    time_s = run.pop("time_s") or 0.0
    sums = dict((k, run.pop(k)) for k in ("vram_s", "gtt_s", "engine_s"))
    out = dict((k, run[k]) for k in ("run_id", "boot_id", "pid", "start_time", "gpu_id", "name",
                                     "user", "uid", "cmd", "container", "type", "unit",
                                     "container_name"))
    out.update(compute_who_json(run))
    out["kfd"] = bool(run["kfd"])
    out.update(first_seen=format_ts(run["first_seen"]), last_seen=format_ts(run["last_seen"]),
               ended=None if run["ended"] is None else format_ts(run["ended"]),
               active=run["ended"] is None, duration_s=round(run["last_seen"] - run["first_seen"], 1),
               peak_vram_bytes=run["peak_vram"], peak_gtt_bytes=run["peak_gtt"],
               peak_engine_pct=run["peak_engine"], gpu_seconds=round(run["gpu_s"] or 0.0, 3),
               samples=run["samples"],
               energy_j=None if run["energy_j"] is None else round(run["energy_j"], 3),
               vram_gib_hours=round((sums["vram_s"] or 0.0) / (1 << 30) / 3600.0, 6))
    start_s = run["first_seen"] if run["started"] is None else run["started"]
    out.update(compute_proc_times(start_s, now_s if run["ended"] is None else run["ended"]))
    for name, key, peak in (("avg_vram_bytes", "vram_s", "peak_vram"),
                            ("avg_gtt_bytes", "gtt_s", "peak_gtt")):
        out[name] = (run[peak] if run[peak] is None or time_s <= 0
                     else int(round(sums[key] / time_s)))
    out["avg_engine_pct"] = (run["peak_engine"] if run["peak_engine"] is None or time_s <= 0
                             else round(sums["engine_s"] / time_s, 1))
    return out


def read_history_source(conn, kind, key):
    """(id, [column names]) of a source (kind "gpu" and its id, or "host" and
    ""), or None: the one lookup of the sources table, readers' and writer's."""
    row = conn.execute("SELECT id, columns FROM sources WHERE kind = ? AND key = ?",
                       (kind, key)).fetchone()
    return None if row is None else (row[0], [c for c in row[1].split(",") if c])


# -- the reader (handler threads, their own connections) --------------------

class HistoryReader(object):
    """The query side, used by the handler threads: each query opens its own
    read connection (never the writer's) on the file the writer opened (its
    identity checked) or its shared memory database; until the writer has
    opened one (attach), every query answers empty."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.path = self._uri = self._identity = None

    def attach(self, path, uri, identity):
        """The writer opened `path` ((dev, ino) identity), or the memory database `uri`."""
        self.path, self._uri, self._identity = path, uri, identity

    def _reader(self):
        if self._uri is not None:
            conn = sqlite3.connect(self._uri, uri=True, timeout=2.0)
            conn.execute("PRAGMA read_uncommitted = 1")
        else:
            self._check_identity()
            conn = sqlite3.connect(self.path, timeout=2.0)
            try:
                self._check_identity()          # the very file the writer opened, not a link
                conn.execute("PRAGMA query_only = 1")
            except BaseException:
                conn.close()
                raise
        return conn

    def _check_identity(self):
        try:
            same = history_identity(self.path) == self._identity
        except OSError:
            same = False
        if not same:
            raise sqlite3.OperationalError("%s is no longer the file history was opened on"
                                           % self.path)

    def _read(self, work, empty):
        if self._uri is None and self._identity is None:
            return empty
        try:
            conn = self._reader()
        except sqlite3.Error as exc:
            LOG.warning("event=history_read_error reason=%r", str(exc))
            return empty
        try:
            return work(conn)
        except sqlite3.Error as exc:
            LOG.warning("event=history_read_error reason=%r", str(exc))
            return empty
        finally:
            conn.close()

    def query_series(self, kind, key, from_s, to_s, points=None):
        """Chart data of one GPU (kind "gpu", key its id) or of the host (key None)."""
        tier, tier_step, step = choose_history_step(from_s, to_s, self.clock(), points)
        start = int(from_s // step * step)
        count = max(1, int(math.ceil((to_s - start) / float(step))))
        out = build_series_answer(key if kind == "gpu" else None, tier, step, start,
                                  start + count * step,
                                  [(start + i * step) * 1000 for i in range(count)],
                                  [0] * count, {})
        self._read(lambda conn: self._fill_series(conn, out, kind, key, tier, start, count,
                                                  step == tier_step), None)
        return out

    def _fill_series(self, conn, out, kind, key, tier, start, count, direct):
        source = read_history_source(conn, kind, key or "")
        if source is None:
            return
        src, names = source
        scales = dict(history_columns(kind))
        step = out["step_s"]
        rows = conn.execute(_series_select(kind, tier, names, direct),
                            (start, step, src, start, start + count * step)).fetchall()
        if not rows:
            return
        columns = list(zip(*rows))       # column-wise: one comprehension per series
        buckets = columns[0]
        full = len(buckets) == count and buckets[0] == 0 and buckets[-1] == count - 1
        out["count"] = _scatter(columns[1], buckets, count, full, 0)
        series = {}
        for j, name in enumerate(names):
            entry = series[name] = {}
            for k, part in enumerate(("min", "avg", "max")):
                values = _unscale_all(columns[2 + 3 * j + k], scales[name], direct or k != 1)
                entry[part] = _scatter(values, buckets, count, full, None)
        out["series"] = series

    def query_runs(self, from_s, to_s, gpu_id=None, active=None, by=None, key=None):
        """Runs seen in [from_s, to_s] (newest first), of one GPU or all; active
        True/False keeps only running/ended ones; by (USAGE_BY): those whose key
        is `key` (None: those without one), the runs behind a usage row."""
        where, args = _runs_where(from_s, to_s, gpu_id, by, key)
        sql = "SELECT id, %s FROM runs WHERE %s" % (", ".join(RUN_COLUMNS), where)
        if active is not None:
            sql += " AND ended IS NULL" if active else " AND ended IS NOT NULL"
        sql += " ORDER BY last_seen DESC LIMIT %d" % HISTORY_QUERY_MAX_ROWS
        now_s = self.clock()
        return self._read(lambda conn: [history_run_json(r, now_s) for r in conn.execute(sql, args)],
                          [])

    def query_run_history(self, run_id):
        """{"run": run, "ts": [unix ms], "series": {vram_bytes, gtt_bytes, engine_pct}} or None."""
        def work(conn):
            row = conn.execute("SELECT id, %s FROM runs WHERE id = ?" % ", ".join(RUN_COLUMNS),
                               (run_id,)).fetchone()
            if row is None:
                return None
            out = build_run_history_answer(history_run_json(row, self.clock()), [], {
                "vram_bytes": [], "gtt_bytes": [], "engine_pct": []})
            series = out["series"]
            src = read_history_source(conn, "gpu", row[4])
            rows = conn.execute(
                "SELECT ts, vram_mib, gtt_mib, engine_pct10 FROM proc_samples WHERE src = ? AND"
                " ts >= ? AND ts <= ? AND run = ? ORDER BY ts",
                (src[0] if src else -1, int(row[12]), row[13], run_id))   # first/last seen
            for ts, vram, gtt, engine in rows:
                out["ts"].append(ts * 1000)
                series["vram_bytes"].append(None if vram is None else vram << 20)
                series["gtt_bytes"].append(None if gtt is None else gtt << 20)
                series["engine_pct"].append(None if engine is None else engine / 10.0)
            return out
        return self._read(work, None)

    def query_procs_at(self, gpu_id, at_s):
        """Who was on this GPU at at_s: the process sample at or before it (or just after)."""
        out = build_procs_at_answer(gpu_id, at_s, None, [])

        def work(conn):
            row = read_history_source(conn, "gpu", gpu_id)
            if row is None:
                return out
            found = conn.execute(
                "SELECT ts FROM proc_samples WHERE src = ? AND ts <= ? AND ts >= ? ORDER BY ts DESC"
                " LIMIT 1", (row[0], at_s, at_s - 3 * HISTORY_PROC_SAMPLE_S)).fetchone() or \
                conn.execute("SELECT ts FROM proc_samples WHERE src = ? AND ts > ? AND ts <= ?"
                             " ORDER BY ts LIMIT 1",
                             (row[0], at_s, at_s + HISTORY_PROC_SAMPLE_S)).fetchone()
            if found is None:
                return out
            out["ts"] = format_ts(found[0])
            for r in conn.execute(
                    "SELECT s.vram_mib, s.gtt_mib, s.engine_pct10, r.id, %s FROM proc_samples s"
                    " JOIN runs r ON r.id = s.run WHERE s.src = ? AND s.ts = ? ORDER BY"
                    " s.vram_mib DESC" % ", ".join("r." + c for c in RUN_COLUMNS),
                    (row[0], found[0])):
                run = history_run_json(r[3:], self.clock())
                run.update(vram_bytes=None if r[0] is None else r[0] << 20,
                           gtt_bytes=None if r[1] is None else r[1] << 20,
                           engine_pct=None if r[2] is None else r[2] / 10.0)
                out["processes"].append(run)
            return out
        return self._read(work, out)

    def query_usage(self, from_s, to_s, by, gpu_id=None):
        """GET /api/usage (#18): the runs seen in [from_s, to_s] grouped by `by`
        (those crossing an edge clipped, compute_run_clip), and each GPU's own
        totals from its series (build_usage_answer)."""
        def work(conn):
            rows = compute_usage_rows(self._usage_parts(conn, from_s, to_s, by, gpu_id))
            return build_usage_answer(from_s, to_s, by, gpu_id, rows,
                                      self._usage_gpus(conn, from_s, to_s, gpu_id))
        return self._read(work, build_usage_answer(from_s, to_s, by, gpu_id, [], []))

    def _usage_parts(self, conn, from_s, to_s, by, gpu_id):
        where, args = _runs_where(from_s, to_s, gpu_id)
        key = USAGE_KEY_SQL[by]
        parts = [dict(zip(_USAGE_PART, r)) for r in conn.execute(
            "SELECT %s AS k, count(*), sum(gpu_s), sum(vram_s), sum(energy_j), max(peak_vram),"
            " min(first_seen), max(last_seen) FROM runs WHERE %s AND first_seen >= ? AND"
            " last_seen <= ? GROUP BY k" % (key, where), args + [from_s, to_s])]
        edges = [dict(zip(_USAGE_EDGE, r)) for r in conn.execute(
            "SELECT id, gpu_id, %s, first_seen, last_seen, gpu_s, vram_s, energy_j, peak_vram"
            " FROM runs WHERE %s AND (first_seen < ? OR last_seen > ?)" % (key, where),
            args + [from_s, to_s])]
        inside = self._edge_samples(conn, edges, from_s, to_s)
        return parts + [dict(compute_run_clip(run, inside.get(run["id"]), from_s, to_s), runs=1)
                        for run in edges]

    def _edge_samples(self, conn, edges, from_s, to_s):
        """{run id: (energy J, GPU-s, VRAM MiB, count)} of the runs that cross one edge of
        the range, from their samples inside it: one grouped scan per GPU and edge, over
        the stretch those runs spend inside. None where the samples (7 days) do not
        reach back to from_s, and for runs crossing both edges (their share of time)."""
        if from_s < self.clock() - HISTORY_PROC_KEEP_S + 2 * HISTORY_PROC_SAMPLE_S:
            return {}
        windows = {}
        for run in edges:
            if (run["first_seen"] < from_s) == (run["last_seen"] > to_s):
                continue                              # both edges
            lo, hi = ((from_s, run["last_seen"]) if run["first_seen"] < from_s
                      else (run["first_seen"] - 1, to_s))     # its first sample: at int(first)
            w = windows.setdefault((run["gpu_id"], run["first_seen"] < from_s), [lo, hi, set()])
            w[0], w[1] = min(w[0], lo), max(w[1], hi)
            w[2].add(run["id"])
        out = {}
        for (gpu_id, _), (lo, hi, ids) in windows.items():
            src = read_history_source(conn, "gpu", gpu_id)
            for r in conn.execute("SELECT run, sum(energy_mj) / 1000.0, sum(gpu_ms) / 1000.0,"
                                  " sum(vram_mib), count(*) FROM proc_samples WHERE src = ? AND"
                                  " ts > ? AND ts <= ? GROUP BY run",
                                  (src[0] if src else -1, lo, hi)):
                if r[0] in ids:
                    out[r[0]] = r[1:]
        return out

    def _usage_gpus(self, conn, from_s, to_s, gpu_id):
        """Each GPU's own energy, idle share and busy seconds in the range: the
        finest roll-up tier that still holds from_s, then (1 min tier) the
        1 s rows after its last row (the open minute)."""
        now = self.clock()
        tier = next((name for name, step, keep in HISTORY_TIERS if step >= 60 and now - keep <= from_s),
                    HISTORY_TIERS[-1][0])
        sums = ("SELECT sum(energy_used_j%s * n), sum(energy_idle_j%s * n), sum(busy_s%s * n),"
                " count(energy_used_j%s), max(ts) FROM %s WHERE src = ? AND ts >= ? AND ts < ?")
        out = []
        for src, key in conn.execute("SELECT id, key FROM sources WHERE kind = 'gpu' ORDER BY key"
                                     ).fetchall():
            if gpu_id is not None and key != gpu_id:
                continue
            row = conn.execute(sums % (("_avg",) * 4 + (_history_table("gpu", tier),)),
                               (src, from_s, to_s)).fetchone()
            parts = [row]
            if tier == "1m":
                tail = from_s if row[4] is None else max(from_s, row[4] + 60)
                parts.append(conn.execute(sums % (("",) * 4 + (_history_table("gpu", "raw"),)),
                                          (src, tail, to_s)).fetchone())
            known = sum(p[3] for p in parts)
            total = [sum(p[i] or 0 for p in parts) / HISTORY_INTERVAL_SCALE for i in range(3)]
            out.append({"gpu_id": key, "tier": tier, "busy_s": total[2],
                        "energy_j": total[0] if known else None,
                        "idle_j": total[1] if known else None})
        return out

    def query_alerts(self, from_s, to_s):
        """Alert events active at some time in [from_s, to_s], oldest first."""
        sql = ("SELECT event FROM alerts WHERE started <= ? AND coalesce(ended, ?) >= ?"
               " ORDER BY started LIMIT %d" % HISTORY_QUERY_MAX_ROWS)
        return self._read(lambda conn: [json.loads(r[0]) for r in
                                        conn.execute(sql, (to_s, to_s, from_s))], [])


# -- the writer: source ids, the open batch, retention, the writer thread ---

class HistorySources(object):
    """The writer's source ids: (kind, key) -> [id, {columns that had a value}],
    a source made on its first row; a raw row with a value in a column not
    yet listed widens the list the readers go by."""

    def __init__(self, columns):
        self._columns = columns              # kind -> history_columns(kind)
        self._entries = {}

    def load(self, conn):
        for row in conn.execute("SELECT id, kind, key, columns FROM sources"):
            self._entries[(row[1], row[2])] = [row[0], set(c for c in row[3].split(",") if c)]

    def ids(self):
        return [entry[0] for entry in self._entries.values()]

    def clear(self):
        """Ids handed out inside a rolled-back transaction are gone: ask again."""
        self._entries.clear()

    def id(self, conn, kind, key, row=None):
        entry = self._entries.get((kind, key))
        if entry is None:
            conn.execute("INSERT OR IGNORE INTO sources(kind, key) VALUES (?, ?)", (kind, key))
            src, names = read_history_source(conn, kind, key)
            entry = self._entries[(kind, key)] = [src, set(names)]
        if row is not None:
            names = [c for (c, _), v in zip(self._columns[kind], row[2:]) if v is not None]
            if not entry[1].issuperset(names):
                entry[1].update(names)
                order = [c for c, _ in self._columns[kind] if c in entry[1]]
                conn.execute("UPDATE sources SET columns = ? WHERE id = ?",
                             (",".join(order), entry[0]))
        return entry[0]


class HistoryBatch(object):
    """The writer's open batch (writer thread only): samples folded into 1 s
    and 1 min rows (SeriesRollup), the 10 min and hour rows to rebuild,
    process runs and samples, alert events; write() puts it all into the
    open transaction."""

    def __init__(self, boot_id, clock):
        self.boot_id, self.clock, self._conn = boot_id, clock, None
        self._columns = {"gpu": history_columns("gpu"), "host": history_columns("host")}
        self.sources = HistorySources(self._columns)
        self._rollups, self._run_ids, self._proc_due = {}, {}, {}
        self._tracker = RunTracker()
        self._energy = EnergyLedger()
        self._idle_column = [k for k, _ in self._columns["gpu"]].index("energy_idle_j")
        self.reset()

    def reset(self):
        self._pending = dict((t, []) for t in HISTORY_SERIES_TABLES)
        self._hours, self._proc_rows, self._alerts = set(), [], []

    def resume(self, conn):
        """Bind to the opened database: its sources, and its runs still open
        (those of an earlier boot end at their last sighting)."""
        self._conn = conn
        self.sources.load(conn)
        conn.execute("UPDATE runs SET ended = last_seen WHERE ended IS NULL AND boot_id != ?",
                     (self.boot_id,))
        for gpu_id, pid, start, last in conn.execute(
                "SELECT gpu_id, pid, start_time, last_seen FROM runs WHERE ended IS NULL"):
            self._tracker.seed(gpu_id, pid, start, last)

    def add(self, kind, key, epoch_s, payload):
        """One item of the writer's queue."""
        if kind in ("gpu", "host"):
            self._add_sample(kind, key, epoch_s, payload)
        elif kind == "procs":
            self._add_procs(key, payload)
        else:
            self._alerts.append(payload)

    def flush(self):
        """The rollups' open rows too (the last batch before closing)."""
        for (kind, key), rollup in self._rollups.items():
            self._queue_rows(kind, key, rollup.flush())

    def _add_sample(self, kind, key, epoch_s, values):
        rollup = self._rollups.get((kind, key))
        if rollup is None:
            rollup = self._rollups[(kind, key)] = SeriesRollup(len(self._columns[kind]))
        if kind == "gpu":
            values = dict(values, **self._energy.on_stats(key, epoch_s, values))
        self._queue_rows(kind, key, rollup.add(epoch_s, history_values(self._columns[kind], values)))

    def _queue_rows(self, kind, key, rows):
        for tier, row in rows:
            self._pending[(kind, tier)].append((key, row))
            if tier == "1m":
                for built, step in HISTORY_BUILT_TIERS:
                    self._hours.add((kind, key, built, step, row[0] - row[0] % step))

    def _add_procs(self, gpu_id, message):
        epoch_s = parse_iso_ts(message.get("ts"))
        epoch_s = self.clock() if epoch_s is None else epoch_s
        idle_j = self._tracker.feed(gpu_id, epoch_s, message.get("processes") or [],
                                    self._energy.take(gpu_id, epoch_s))
        rollup = self._rollups.get(("gpu", gpu_id))
        if idle_j and rollup is not None:        # the idle share lands in the open rows
            rollup.bump(self._idle_column, idle_j * HISTORY_INTERVAL_SCALE)
        if epoch_s >= self._proc_due.get(gpu_id, 0.0):
            self._proc_due[gpu_id] = epoch_s + HISTORY_PROC_SAMPLE_S - 0.5
            self._proc_rows.append((gpu_id, int(epoch_s), self._tracker.take_sample(gpu_id)))

    def has_pending(self):
        return bool(any(self._pending.values()) or self._proc_rows or self._alerts
                    or self._tracker.dirty())

    def write(self):
        self._write_series()
        self._write_runs_and_samples()
        self._write_alerts()

    def rolled_back(self):
        self.sources.clear()
        self._run_ids.clear()

    def drop(self):
        """Forget the batch; -> how many rows it had."""
        count = sum(len(rows) for rows in self._pending.values()) + len(self._proc_rows)
        self.reset()
        self._tracker.take()
        return count

    def _source_id(self, kind, key, row=None):
        return self.sources.id(self._conn, kind, key, row)

    def _write_series(self):
        conn = self._conn
        for (kind, tier), rows in self._pending.items():
            if not rows:
                continue
            table = _history_table(kind, tier)
            names = _history_column_names(kind, tier)
            values = [(self._source_id(kind, key, row if tier == "raw" else None),) + row
                      for key, row in rows]
            if tier == "raw":
                conn.executemany("INSERT OR REPLACE INTO %s(src, ts, n, %s) VALUES (%s)" % (
                    table, ", ".join(names), ", ".join("?" * (len(names) + 3))), values)
            else:
                conn.executemany(_merge_sql(table, names), values)
        for kind, key, tier, step, bucket in self._hours:
            src = self._source_id(kind, key)
            conn.execute(_rebuild_sql(kind, tier), (bucket, src, bucket, bucket + step))

    def _write_runs_and_samples(self):
        conn = self._conn
        for run in self._tracker.take():
            key = (self.boot_id, run["pid"], run["start_time"] or 0, run["gpu_id"])
            conn.execute(_RUN_UPSERT, key + tuple(run[c] for c in RUN_COLUMNS[4:]))
            if run["ended"] is not None:
                self._run_ids.pop(key, None)
        rows = []
        for gpu_id, ts, active in self._proc_rows:
            src = self._source_id("gpu", gpu_id)
            rows.append((src, ts, 0, None, None, None, None, None))   # run 0: a sample was taken
            for (_, pid, start), (vram, gtt, engine, energy, gpu_s) in active:
                rows.append((src, ts, self._run_id(gpu_id, pid, start),
                             None if vram is None else int(vram) >> 20,
                             None if gtt is None else int(gtt) >> 20,
                             None if engine is None else int(round(engine * 10)),
                             None if energy is None else int(round(energy * 1000)),
                             int(round(gpu_s * 1000))))
        conn.executemany("INSERT OR REPLACE INTO proc_samples(src, ts, run, vram_mib, gtt_mib,"
                         " engine_pct10, energy_mj, gpu_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [r for r in rows if r[2] is not None])

    def _run_id(self, gpu_id, pid, start):
        key = (self.boot_id, pid, start or 0, gpu_id)
        if key not in self._run_ids:
            row = self._conn.execute("SELECT id FROM runs WHERE boot_id = ? AND pid = ? AND"
                                     " start_time = ? AND gpu_id = ?", key).fetchone()
            if row is None:
                return None
            self._run_ids[key] = row[0]
        return self._run_ids[key]

    def _write_alerts(self):
        for event in self._alerts:
            started = event.get("started")
            started_s = started if isinstance(started, (int, float)) else parse_iso_ts(started)
            ended = event.get("ended")
            ended_s = ended if isinstance(ended, (int, float)) or ended is None else parse_iso_ts(ended)
            self._conn.execute(
                "INSERT INTO alerts(rule, gpu_id, started, ended, event) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(rule, gpu_id, started) DO UPDATE SET ended = excluded.ended,"
                " event = excluded.event",
                (str(event.get("rule")), alert_row_subject(event),
                 self.clock() if started_s is None else started_s, ended_s,
                 json.dumps(event, sort_keys=True)))


class HistoryRetention(object):
    """Retention by age, then by size, in slices; freed pages given back
    (writer thread). `bytes`: what history takes, measured at each pass."""

    def __init__(self, conn, path, max_bytes, clock, memory):
        self._conn, self.path, self.max_bytes, self.clock = conn, path, max_bytes, clock
        self._memory, self.bytes = memory, 0

    def maintain(self, srcs):
        """One retention pass over the sources with these ids (failures logged)."""
        self._guarded(lambda: self._maintain(srcs))

    def _guarded(self, work):
        try:
            work()
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            LOG.warning("event=history_maintenance_failed reason=%r", str(exc))

    def measure(self):
        """Bytes the rows take (pages in use); status "bytes" is what history takes:
        on disk (the database and its WAL) or in memory."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        used = (pages - free) * size
        self.bytes = used if self._memory else self._disk_bytes()
        return used

    def _disk_bytes(self):
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.lstat(self.path + suffix).st_size
            except OSError:
                pass
        return total

    def _row_budget(self):
        """max_bytes less the WAL's share (a file): the cap holds on disk."""
        if self._memory:
            return self.max_bytes
        size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return self.max_bytes - history_wal_pages(self.max_bytes, size) * size

    def _vacuum(self):
        """Give freed pages back to the filesystem, then shrink the WAL. executescript
        steps PRAGMA incremental_vacuum to its end; execute() steps it once, which
        frees one page on Python 3.11. In WAL mode the database file shrinks only at
        a checkpoint: TRUNCATE also empties the WAL (a reader may hold it off: next time)."""
        conn = self._conn
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        while free:
            conn.executescript("PRAGMA incremental_vacuum(%d);" % HISTORY_VACUUM_PAGES)
            free, before = conn.execute("PRAGMA freelist_count").fetchone()[0], free
            if free >= before:          # auto_vacuum off (a file made elsewhere): no use
                break
        if not self._memory:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _tables_by_keep(self):
        tables = [(_history_table(kind, tier), step, keep) for kind, tier in HISTORY_SERIES_TABLES
                  for name, step, keep in HISTORY_TIERS if name == tier]
        return tables + [("proc_samples", HISTORY_PROC_SAMPLE_S, HISTORY_PROC_KEEP_S)]

    def _maintain(self, srcs):
        now = self.clock()
        for table, step, keep in self._tables_by_keep():
            for src in srcs:
                self._delete_before(table, src, now - keep, step)
        conn = self._conn
        for sql in ("DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE ended IS NOT NULL"
                    " AND last_seen < ? LIMIT %d)" % HISTORY_DELETE_SLICE,
                    "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE started < ?"
                    " AND ended IS NOT NULL LIMIT %d)" % HISTORY_DELETE_SLICE):
            conn.execute(sql, (now - HISTORY_RUN_KEEP_S,))
        budget = self._row_budget()
        for _ in range(HISTORY_TRIM_SLICES):
            if self.measure() <= budget or not self._trim_oldest(now, srcs):
                break
        self._vacuum()
        self.measure()

    def _delete_before(self, table, src, cutoff, step):
        """Delete a source's rows older than cutoff, HISTORY_DELETE_SLICE rows a statement."""
        oldest = self._conn.execute("SELECT min(ts) FROM %s WHERE src = ?" % table,
                                    (src,)).fetchone()[0]
        while oldest is not None and oldest < cutoff:
            bound = min(cutoff, oldest + HISTORY_DELETE_SLICE * step)
            self._conn.execute("DELETE FROM %s WHERE src = ? AND ts < ?" % table, (src, bound))
            oldest = bound

    def _trim_oldest(self, now, srcs):
        """Over max_bytes: cut the oldest slice of the table that is furthest into
        its retention (so every tier shrinks alike). False when nothing is left."""
        worst = None
        for table, step, keep in self._tables_by_keep():
            mins = [self._conn.execute("SELECT min(ts) FROM %s WHERE src = ?" % table,
                                       (src,)).fetchone()[0] for src in srcs]   # the key's order
            oldest = min([t for t in mins if t is not None] or [None])
            if oldest is not None and (worst is None or (now - oldest) / keep > worst[0]):
                worst = ((now - oldest) / keep, table, step, oldest)
        if worst is None:
            return False
        _, table, step, oldest = worst
        for src in srcs:
            self._delete_before(table, src, oldest + max(step * 60, 600), step)
        return True


class HistoryStore(StoppableThread):
    """The history sink and its writer thread: offer_* queue (never block);
    the thread owns the connection, the batch (HistoryBatch) and retention
    (HistoryRetention); `reader` (HistoryReader) answers the handler threads'
    queries. path None = memory only from the start (tests, fallback).
    Faults leave the live view alone: a file that cannot be used -> memory
    only (said once); disk full or free space under the floor -> paused,
    resumed by itself when a later batch commits."""

    def __init__(self, path, max_bytes=HISTORY_DEFAULT_MAX_BYTES, proc_root="/proc",
                 clock=time.time, statvfs=os.statvfs, min_free_bytes=HISTORY_MIN_FREE_BYTES,
                 commit_s=HISTORY_COMMIT_S, queue_max=HISTORY_QUEUE_MAX, on_change=None,
                 demo=False):
        StoppableThread.__init__(self, "history-writer")
        self.path, self.max_bytes, self.clock, self.statvfs = path, max_bytes, clock, statvfs
        self.demo = demo
        self.min_free_bytes, self.commit_s, self.on_change = min_free_bytes, commit_s, on_change
        self.boot_id = read_boot_id(proc_root)
        self._queue = Inbox(queue_max)
        self._dropped = 0                   # rows of batches never written (the queue counts its own)
        self._state, self._reason = "starting", None
        self._memory_reason = None          # why history is in memory (kept across pauses)
        self._conn = self._uri = self._lock_fd = self._retention = None
        self._commits = 0
        self._last_commit = None
        self._next_maintain = 0.0
        self._batch = HistoryBatch(self.boot_id, self._now)
        self.reader = HistoryReader(self._now)

    def _now(self):
        """self.clock, as it is at the call (a benchmark or test may swap it)."""
        return self.clock()

    # -- the sink side (publishing threads) --

    def _put(self, item):
        self._queue.put(item, wake=False)   # the writer wakes on its own, every commit_s

    def offer_stats(self, gpu_id, epoch_s, metrics):
        self._put(("gpu", gpu_id, epoch_s, metrics))

    def offer_host(self, epoch_s, host):
        self._put(("host", "", epoch_s, host))

    def offer_procs(self, gpu_id, message):
        self._put(("procs", gpu_id, None, message))

    def offer_alert(self, event):
        self._put(("alert", None, None, event))

    def status(self):
        return {"state": self._state, "path": self.path, "reason": self._reason,
                "dropped": self._dropped + self._queue.dropped, "queued": len(self._queue),
                "bytes": 0 if self._retention is None else self._retention.bytes,
                "max_bytes": self.max_bytes, "commits": self._commits,
                "last_commit": None if self._last_commit is None else format_ts(self._last_commit),
                "tiers": dict((n, {"step_s": s, "keep_s": k}) for n, s, k in HISTORY_TIERS)}

    def _set_state(self, state, reason):
        if (state, reason) == (self._state, self._reason):
            return
        self._state, self._reason = state, reason
        if self.on_change is not None:
            self.on_change(self.status())

    # -- opening --

    def open(self):
        """Open (or create) the file, else fall back to memory and say so once."""
        if sqlite3 is None:
            self._set_state("off", "this Python has no sqlite3 module")
            return
        if self.path is not None:
            try:
                self._conn, self._lock_fd, identity = open_history_file(
                    self.path, self.clock(), self.demo, history_wal_pages(self.max_bytes))
                self._after_open("ok", None, identity)
                return
            except (HistoryUnavailable, OSError, sqlite3.Error) as exc:
                reason = str(exc)
            LOG.warning("event=history_memory_only path=%s reason=%r: history is kept in memory"
                        " only and lost on restart", self.path, reason)
        else:
            reason = ("--demo keeps it out of the real history file (APP_HISTORY_PATH may name "
                      "a file of its own)" if self.demo else "APP_HISTORY_PATH=memory")
        # A name of its own: id(self) is reused once a store is freed, and a shared-cache
        # memory database lives on while any connection to it is still open.
        self._uri = ("file:amdgpu_top_web-history-%d-%s?mode=memory&cache=shared"
                     % (os.getpid(), os.urandom(8).hex()))
        self._conn = sqlite3.connect(self._uri, uri=True, isolation_level=None,
                                     check_same_thread=False)
        _history_create(self._conn)
        self.max_bytes = min(self.max_bytes, HISTORY_MEMORY_MAX_BYTES)
        self._memory_reason = reason
        self._after_open("memory", reason)

    def _after_open(self, state, reason, identity=None):
        now = self.clock()
        self._batch.resume(self._conn)
        self._retention = HistoryRetention(self._conn, self.path, self.max_bytes, self._now,
                                           self._uri is not None)
        self._retention.measure()
        self._next_maintain = now
        self.reader.attach(self.path, self._uri, identity)
        self._set_state(state, reason)

    # -- the writer thread --

    def run(self):
        if self._state == "starting":
            self.open()         # here, not in start(): quick_check of a big file takes ~1 s
        while not self.pause(self.commit_s):
            self.cycle()
        self.cycle(final=True)
        self.close()

    def close(self):
        if self._conn is not None and self._uri is None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def cycle(self, final=False):
        """Drain the queue, commit one batch, enforce retention when due (the
        writer thread's loop body; tests call it directly with their clock)."""
        if self._conn is None:
            self._queue.clear()
            return
        for item in self._queue.drain():
            self._batch.add(*item)
        if final:
            self._batch.flush()
        self._commit()
        if final or self.clock() >= self._next_maintain:
            self._next_maintain = self.clock() + HISTORY_MAINTAIN_S
            self._retention.maintain(self._batch.sources.ids())

    def _free_bytes(self):
        if self._uri is not None:
            return None
        try:
            st = self.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _commit(self):
        if not self._batch.has_pending():
            return
        free = self._free_bytes()
        if free is not None and free < self.min_free_bytes:
            self._drop_batch("free space %d MiB is under the floor of %d MiB"
                             % (free >> 20, self.min_free_bytes >> 20))
            return
        conn = self._conn
        try:
            conn.execute("BEGIN")
            self._batch.write()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._batch.rolled_back()       # ids handed out inside it are gone: ask again
            self._drop_batch(("disk full: %s" if _is_full_error(exc) else "write failed: %s")
                             % exc)
            return
        self._batch.reset()
        self._commits += 1
        self._last_commit = self.clock()
        self._set_state("memory" if self._uri is not None else "ok", self._memory_reason)

    def _drop_batch(self, reason):
        """A batch that cannot be written is dropped (counted): pausing must not grow memory."""
        self._dropped += self._batch.drop()
        if self._state != "paused":
            LOG.warning("event=history_paused path=%s reason=%r: the live view is unaffected;"
                        " writing resumes by itself", self.path, reason)
        self._set_state("paused", reason)


def make_history_store(config, on_change=None):
    """The store for this config, or None when APP_HISTORY_PATH is off."""
    if config.history_path is None:
        return None
    path = None if config.history_path == HISTORY_MEMORY else config.history_path
    return HistoryStore(path, config.history_max_bytes, config.proc_root, on_change=on_change,
                        demo=config.demo)


# ---------------------------------------------------------------------------
# 14. WebSocket hub: one thread, one selectors loop over every WebSocket
# ---------------------------------------------------------------------------

# -- the hub's bookkeeping (pure: no sockets, times are given) --------------

class OutQueue(object):
    """One client's outbound WebSocket bytes, bounded, drop-oldest, counted.

    ``push()`` appends one whole wire frame. While the queue already holds
    ``max_frames`` frames, or the new one would take it past ``max_bytes``,
    the oldest frames are dropped first (SPEC §2), except a frame already
    partly sent: its rest must follow, or the byte stream is corrupt. Frames
    dropped and not yet told are counted in ``dropped``; the next frame pushed
    with its JSON object ``payload`` (a broadcast frame) carries the count,
    re-encoded as ``{"dropped":N,...}``. Should that carrier be dropped in
    turn, its N is owed again, so every loss is told.

    ``buffers()`` is what is due, oldest first, for one ``sendmsg()``;
    ``advance(sent, now)`` forgets what the socket took, at any offset.
    ``close()`` queues our Close frame; nothing is queued after it (RFC 6455
    §5.5.1). ``stalled_for(now)`` is how long output has waited with no
    progress: the write timeout's measure.
    """

    __slots__ = ("max_frames", "max_bytes", "_frames", "_owed", "queued_bytes", "head_sent",
                 "dropped", "closing", "_stalled_since")

    def __init__(self, max_frames=WS_QUEUE_FRAMES, max_bytes=WS_QUEUE_BYTES):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._frames = collections.deque()  # wire bytes; [0] may be partly sent
        # id(carrier) -> the dropped count it carries. A carrier is a bytes object
        # of this queue's own, alive while queued, so its id names it (and a dict
        # costs nothing until the first drop, unlike a second deque per client).
        self._owed = {}
        self.queued_bytes = 0               # every queued frame, all of [0] included
        self.head_sent = 0                  # bytes of [0] already sent
        self.dropped = 0                    # frames dropped and not yet told
        self.closing = False                # our Close frame is queued (or sent)
        self._stalled_since = None          # output queued, no progress since

    def __len__(self):
        return len(self._frames)

    @property
    def idle(self):
        """Nothing queued, nothing owed, not closing: a direct send may bypass it."""
        return not self._frames and not self.dropped and not self.closing

    @property
    def unsent_bytes(self):
        return self.queued_bytes - self.head_sent

    def push(self, wire, now, payload=None):
        """Queue one frame (ignored once closing); returns how many frames it dropped."""
        if self.closing:
            return 0
        carried = 0
        if self.dropped and payload is not None and payload[:1] == b"{":
            wire, carried, self.dropped = self._carrier(payload, self.dropped), self.dropped, 0
        dropped = self._make_room(len(wire))
        self._append(wire, carried, now)
        return dropped

    def push_frames(self, frames, now, sent=0):
        """Queue broadcast frames (OutFrames: .wire, .payload) of which a direct
        send of their joined wires already took the first ``sent`` bytes (only
        on an idle queue); the frame it cut is the head, never dropped.
        Returns how many frames were dropped."""
        if sent and not self.idle:
            raise ValueError("a direct send may bypass an idle queue only")
        dropped = 0
        for frame in frames:
            if sent >= len(frame.wire):
                sent -= len(frame.wire)
                continue
            dropped += self.push(frame.wire, now, frame.payload)
            self.advance(sent, now)
            sent = 0
        return dropped

    @staticmethod
    def _carrier(payload, count):
        rest = payload[1:]
        comma = b"," if rest[:1] != b"}" else b""
        return encode_frame(Opcode.TEXT, b'{"dropped":%d' % count + comma + rest)

    def _make_room(self, size):
        frames, first, count = self._frames, 1 if self.head_sent else 0, 0
        while len(frames) > first and (len(frames) >= self.max_frames
                                       or self.queued_bytes + size > self.max_bytes):
            self.dropped += 1 + self._forget(frames[first])
            del frames[first]
            count += 1
        return count

    def _append(self, wire, carried, now):
        if not self._frames:
            self._stalled_since = now
        self._frames.append(wire)
        self.queued_bytes += len(wire)
        if carried:
            self._owed[id(wire)] = carried

    def _forget(self, wire):
        """Account for a frame leaving the queue; returns the count it carried."""
        self.queued_bytes -= len(wire)
        return self._owed.pop(id(wire), 0) if self._owed else 0

    def buffers(self, limit=WS_SEND_BUFFERS):
        """What is due, for one sendmsg(): the rest of the head, then whole frames."""
        due = [wire for wire, _ in zip(self._frames, range(limit))]
        if self.head_sent:
            due[0] = memoryview(due[0])[self.head_sent:]
        return due

    def advance(self, sent, now):
        """The socket took ``sent`` bytes of buffers(): forget them."""
        if sent <= 0:
            return
        if sent > self.unsent_bytes:
            raise ValueError("advance(%d) past the %d bytes queued" % (sent, self.unsent_bytes))
        frames, sent = self._frames, sent + self.head_sent
        while frames and sent >= len(frames[0]):
            sent -= len(frames[0])
            self._forget(frames.popleft())
        self.head_sent = sent
        self._stalled_since = now if frames else None

    def close(self, wire, now, keep_queued):
        """Queue our Close frame ``wire`` (once: False when already closing).

        ``keep_queued`` when the peer provoked it (its Close, a protocol
        error): the replies already queued are its due and go first. Else (a
        timeout, shutdown) the Close replaces them, but a frame half sent is
        finished first. The frames given up are not counted as dropped: the
        connection ends."""
        if self.closing:
            return False
        self.closing = True
        keep = len(self._frames) if keep_queued else (1 if self.head_sent else 0)
        while len(self._frames) > keep:
            self._forget(self._frames.pop())
        self._append(wire, 0, now)
        return True

    def stalled_for(self, now):
        """Seconds that queued output has waited with no byte taken (0.0 when empty)."""
        return 0.0 if self._stalled_since is None else now - self._stalled_since


class Deadlines(object):
    """Items by due time, each at most once: ``set()``, ``discard()``,
    ``pop_due(now)`` (oldest first) and ``next_due()``. A sorted list: the
    hub's keepalive needs one entry per client and O(log n) per ping, not a
    scan over every client every second."""

    def __init__(self):
        self._entries = []          # sorted (due, seq, item)
        self._keys = {}             # item -> (due, seq)
        self._seq = 0

    def __len__(self):
        return len(self._entries)

    def set(self, item, due):
        self.discard(item)
        self._seq += 1
        self._keys[item] = (due, self._seq)
        bisect.insort(self._entries, (due, self._seq, item))

    def discard(self, item):
        key = self._keys.pop(item, None)
        if key is not None:
            del self._entries[bisect.bisect_left(self._entries, key)]

    def next_due(self):
        return self._entries[0][0] if self._entries else None

    def pop_due(self, now):
        """The items due at ``now`` or before, removed, oldest first."""
        count = bisect.bisect_right(self._entries, (now, math.inf))
        due = [item for _, _, item in self._entries[:count]]
        del self._entries[:count]
        for item in due:
            del self._keys[item]
        return due


class RateGate(object):
    """Frames of one key (a GPU) let through at most once per ``period_s`` in
    the long run: a frame passes once its key is due, and the next due time
    moves on by the period (never less than half a period after now, so a
    late frame does not bring a burst). ``admit(key, frame, now)`` decides
    once per frame: asked again about the same frame, it answers the same,
    so every subscriber of the thinned stream gets the same frames."""

    def __init__(self, period_s):
        self.period_s = period_s
        self._due = {}              # key -> monotonic s the next frame may pass
        self._last = {}             # key -> (frame, passed): the last decision

    def admit(self, key, frame, now):
        last = self._last.get(key)
        if last is not None and last[0] is frame:
            return last[1]
        due = self._due.get(key)
        passed = due is None or now >= due
        if passed:
            self._due[key] = max((due or now) + self.period_s, now + self.period_s / 2)
        self._last[key] = (frame, passed)
        return passed


# -- one connection and the application protocol ----------------------------

class WsClient(object):
    """One WebSocket connection: the socket (only the Hub calls it) and the
    session, which does no I/O: bytes in through receive(), frames out into
    ``out`` (an OutQueue) for the hub to flush; the close handshake and the
    keepalive, with time given. Touched by the hub thread only.
    """

    __slots__ = ("sock", "addr", "stats", "decoder", "assembler", "out", "subscription",
                 "last_recv", "ping_sent", "close_deadline", "close_when_flushed", "finished",
                 "writing", "open")

    def __init__(self, sock, addr, now, max_message_bytes, stats):
        self.sock = sock
        self.addr = addr
        self.stats = stats                  # the hub's counters
        self.decoder = FrameDecoder(max_message_bytes)
        self.assembler = MessageAssembler(max_message_bytes)
        self.out = OutQueue()
        self.subscription = ("*", True, "full")   # the protocol's routing key (see Hub)
        self.last_recv = now
        self.ping_sent = False
        self.close_deadline = None
        self.close_when_flushed = False     # the peer provoked our Close: end once it is out
        self.finished = False               # the peer answered our Close: end now
        self.writing = False                # EVENT_WRITE registered (the hub's business)
        self.open = True

    def push(self, wires, now):
        for wire in wires:
            self.stats["dropped_frames"] += self.out.push(wire, now)

    def receive(self, data, now, protocol):
        """Bytes from the peer: every whole message is dispatched, until the
        close handshake ends what the peer may still say."""
        if self.finished or self.close_when_flushed:
            return                  # nothing more is read after the peer's Close
        self.last_recv = now
        self.ping_sent = False
        self.decoder.feed(data)
        try:
            while not (self.finished or self.close_when_flushed):
                frame = self.decoder.next_frame()
                if frame is None:
                    break
                message = self.assembler.add(frame)
                if message is not None:
                    self._on_message(message, now, protocol)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            self.start_close(exc.close_code, exc.reason, now, wait_reply=False, keep_queued=True)

    def _on_message(self, message, now, protocol):
        opcode, data = message
        if opcode == Opcode.CLOSE:
            self._on_close_frame(data, now)
        elif self.out.closing:
            return                  # after our Close, only its answer matters
        elif opcode == Opcode.PING:
            self.push([encode_frame(Opcode.PONG, data)], now)
        elif opcode == Opcode.TEXT:
            self.push(protocol.on_text(self, data), now)
        elif opcode == Opcode.BINARY:
            self.push(protocol.on_binary(self, data), now)

    def _on_close_frame(self, data, now):
        """RFC 6455 §5.5.1: answer a Close with a Close (echoing the code), then
        close the TCP connection; if we started the close, this is the answer."""
        if self.out.closing:
            self.finished = True
            return
        code = data[0] if data[0] is not None else CloseCode.NORMAL_CLOSURE
        self.start_close(code, "", now, wait_reply=False, keep_queued=True)

    def start_close(self, code, reason, now, wait_reply=True, keep_queued=False):
        """Queue our Close frame, once (OutQueue.close: after the queued replies
        when the peer provoked it, in their place when we close on our own)."""
        if self.out.closing:
            return False
        self.out.close(encode_close(code, reason), now, keep_queued)
        self.close_deadline = now + WS_CLOSE_TIMEOUT_S
        self.close_when_flushed = not wait_reply
        return True

    def keepalive(self, now, read_timeout_s):
        """At this client's keepalive deadline (RFC 6455 §5.5.2): a ping once
        silent for WS_PING_AFTER of the read timeout, our Close once silent for
        all of it. Returns the next deadline (a message meanwhile moved it
        later), or None once closing."""
        if self.out.closing:
            return None
        if now >= self.last_recv + read_timeout_s:
            self.start_close(CloseCode.INTERNAL_ERROR, "keepalive timeout", now)
            return None
        if not self.ping_sent and now >= self.last_recv + read_timeout_s * WS_PING_AFTER:
            self.ping_sent = True
            self.push([encode_frame(Opcode.PING, WS_PING_PAYLOAD)], now)
        return self.last_recv + read_timeout_s * (1.0 if self.ping_sent else WS_PING_AFTER)


class DashboardProtocol(object):
    """The application side of /ws: hello on open, subscribe/ping messages.

    The hub is generic (any object with on_open/on_text/on_binary/wants works:
    the conformance tests plug in an echo protocol); this one speaks SPEC §5.
    """

    def __init__(self, cache, default_gpu, clock=time.monotonic):
        self.cache = cache
        self.default_gpu = default_gpu
        self.clock = clock
        self.overview_gate = RateGate(WS_OVERVIEW_STATS_PERIOD_S)

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
            return [self._json(build_pong_message())]
        if kind == "subscribe":
            return self._subscribe(client, message.get("gpu_id"), message.get("host", True),
                                   message.get("detail", "full"))
        return [self._error("unknown message type: %.40r" % (kind,))]

    def _subscribe(self, client, gpu_id, host, detail):
        """gpu_id "*" (every GPU), a GPU id, "host" (host frames only) or
        "fleet" (the fleet frames, no GPU's); host: false leaves the host frames
        out (they come by default); detail "overview": stats thinned and procs
        cut (WS_SUBSCRIBE_DETAILS)."""
        if not isinstance(host, bool):
            return [self._error("host must be true or false")]
        if not isinstance(detail, str) or detail not in WS_SUBSCRIBE_DETAILS:
            return [self._error("detail must be \"full\" or \"overview\"")]
        if gpu_id == "host" and not host:
            return [self._error("gpu_id \"host\" with host false subscribes to nothing")]
        if gpu_id not in ("*", "host", "fleet") and (not isinstance(gpu_id, str)
                                            or self.cache.gpu(gpu_id) is None):
            return [self._error("unknown gpu_id: %.64r" % (gpu_id,))]
        gpus = None if gpu_id == "host" else gpu_id
        client.subscription = (gpus, host, detail)
        reply = [self._json(build_subscribed_message(gpu_id, host, detail))]
        if gpu_id == "fleet":
            reply.append(current_fleet(self.cache)[1].wire)
            gpus = None                 # the latest host frame only, no GPU's
        return reply + [frame.wire for frame in self.cache.latest_frames(gpus, host, detail)]

    def wants(self, client, frame):
        """Host frames to every client that did not turn them off; fleet
        frames to the fleet's subscribers; other frames without a GPU (gpus,
        alerts) to all; a GPU's to its subscribers: with detail "overview", its
        stats through the gate and the procs_top frames instead of procs."""
        gpus, host, detail = client.subscription
        if frame.kind == "host":
            return host
        if frame.kind == "fleet":
            return gpus == "fleet"
        if frame.gpu_id is None:
            return True
        if gpus not in ("*", frame.gpu_id):
            return False
        if detail != "overview":
            return frame.kind != "procs_top"
        if frame.kind == "stats":
            return self.overview_gate.admit(frame.gpu_id, frame, self.clock())
        return frame.kind != "procs"

    @staticmethod
    def _json(obj):
        return encode_frame(Opcode.TEXT, json_bytes(obj))

    def _error(self, message):
        return self._json(build_error_message(message))


# -- the hub thread: mailbox, client slots, the loop ------------------------

class Mailbox(object):
    """How other threads reach the hub: a thread-safe deque, and a socketpair
    whose read end sits in the hub's selector so that post() wakes it."""

    def __init__(self):
        self.items = collections.deque()
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def post(self, item):
        self.items.append(item)
        self.wake()

    def wake(self):
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass          # already full of wake-ups: the loop will run anyway
        except OSError:
            pass          # closed during shutdown

    def drain_wake(self):
        try:
            while self.reader.recv(WS_WAKE_READ_SIZE):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def batches(self):
        """Takes what was posted, in order: ("frames", [frame, ...]) for the frames
        between two hand-overs (broadcast together), ("client", item) for each."""
        frames = []
        while self.items:
            kind, item = self.items.popleft()
            if kind == "frame":
                frames.append(item)
                continue
            if frames:
                yield "frames", frames
                frames = []
            yield kind, item
        if frames:
            yield "frames", frames

    def close(self):
        self.reader.close()
        self._writer.close()


class ClientSlots(object):
    """The WebSocket client cap: a handler thread reserves a slot before the
    hand-over; the hub releases it when that client is gone (any thread)."""

    def __init__(self, max_clients, stats, stopping):
        self.max_clients, self._stats, self._stopping = max_clients, stats, stopping
        self.taken = 0
        self._lock = threading.Lock()

    def reserve(self):
        with self._lock:
            if self.taken >= self.max_clients or self._stopping.is_set():
                self._stats["refused"] += 1
                return False
            self.taken += 1
            return True

    def release(self):
        with self._lock:
            self.taken -= 1


def tune_client_socket(sock):
    """Non-blocking, no Nagle, and a small kernel send buffer: a stuck client's
    backlog stays in OUR bounded queue, where the write timeout sees it (Linux
    would grow the buffer to MiBs)."""
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SNDBUF_BYTES)
    except OSError:
        pass


def try_close_frame(client, code, reason):
    """Best effort Close before dropping a stuck client (only at a frame boundary)."""
    if not client.out.head_sent:
        try:
            client.sock.send(encode_close(code, reason))
        except OSError:
            pass


class Hub(StoppableThread):
    """Every WebSocket lives here: reads, writes, timeouts and the broadcast.

    Other threads only call reserve_slot/add_client (HTTP handlers) and
    on_frame (the cache), through a Mailbox. The hub never blocks on a
    client: sockets are non-blocking, each client has a bounded OutQueue
    (drop-oldest, counted), and one that accepts nothing for write_timeout_s
    is closed.

    A client is ready (its queue idle) or pending (output queued, a dropped
    count owed, or closing: the timers look at these only). The broadcast
    frames in the mailbox go out together: to a ready client in ONE send() of
    their joined bytes, joined once per subscription (so the protocol's
    wants(client, frame) may depend on the client only through
    client.subscription); to a pending one through its queue.
    """

    def __init__(self, protocol, max_clients, write_timeout_s, read_timeout_s,
                 max_message_bytes=WS_MAX_MESSAGE_BYTES, clock=time.monotonic):
        StoppableThread.__init__(self, "ws-hub")
        self.protocol = protocol
        self.clock = clock
        self.write_timeout_s, self.read_timeout_s = write_timeout_s, read_timeout_s
        self.max_message_bytes = max_message_bytes
        self.stats = {"clients": 0, "dropped_frames": 0, "stuck_closed": 0, "refused": 0,
                      "protocol_errors": 0}
        self._selector = selectors.DefaultSelector()
        self._mailbox = Mailbox()
        self._selector.register(self._mailbox.reader, selectors.EVENT_READ, None)
        self._clients = set()
        self._ready = set()         # queue idle: a broadcast is one direct send()
        self._pending = set()       # the other open ones: timer-checked
        self._keepalive = Deadlines()
        self._timers_due = 0.0
        self.slots = ClientSlots(max_clients, self.stats, self.stopping)
        self.reserve_slot, self.release_slot = self.slots.reserve, self.slots.release

    # -- called from other threads -----------------------------------------

    def add_client(self, sock, addr, leftover=b""):
        self._mailbox.post(("client", (sock, addr, leftover)))

    def on_frame(self, frame):
        """A frame for the clients, encoded here (not on the hub thread). With no
        client connected or arriving (no slot reserved) a sample frame is neither
        encoded nor posted, nor wakes the hub: a new client starts from the cache."""
        if self.slots.taken or frame.kind not in SAMPLE_FRAME_KINDS:
            frame.wire  # noqa: B018 (a LazyFrame encodes on first use)
            self._mailbox.post(("frame", frame))

    def stop(self):
        StoppableThread.stop(self)
        self._mailbox.wake()

    # -- the loop ------------------------------------------------------------

    def run(self):
        try:
            while not self.stopping.is_set():
                self._loop_once(self._timeout(self.clock()))
            self._close_all()
        finally:
            self._selector.close()
            self._mailbox.close()

    def _timeout(self, now):
        due = now + WS_IDLE_WAKE_S
        if self._pending:
            due = min(due, self._timers_due)
        if self._keepalive:
            due = min(due, self._keepalive.next_due())
        return max(0.0, due - now)

    def _loop_once(self, timeout):
        for key, mask in self._selector.select(timeout):
            client = key.data
            if client is None:
                self._mailbox.drain_wake()
                continue
            now = self.clock()
            if mask & selectors.EVENT_READ:
                self._on_readable(client, now)
            if client.open and mask & selectors.EVENT_WRITE:
                self._flush(client, now)
        now = self.clock()
        self._drain_mailbox(now)
        if self._pending and now >= self._timers_due:
            self._timers_due = now + WS_TIMER_TICK_S
            self._check_pending(now)
        for client in self._keepalive.pop_due(now):
            due = client.keepalive(now, self.read_timeout_s)
            if due is not None:
                self._keepalive.set(client, due)
            self._flush(client, now)

    def _drain_mailbox(self, now):
        for kind, item in self._mailbox.batches():
            if kind == "frames":
                self._broadcast(item, now)
            else:
                self._open_client(item, now)

    def _open_client(self, item, now):
        sock, addr, leftover = item
        tune_client_socket(sock)
        client = WsClient(sock, addr, now, self.max_message_bytes, self.stats)
        self._selector.register(sock, selectors.EVENT_READ, client)
        self._clients.add(client)
        self.stats["clients"] = len(self._clients)
        self._keepalive.set(client, now + self.read_timeout_s * WS_PING_AFTER)
        client.push(self.protocol.on_open(client), now)
        if leftover:
            client.receive(leftover, now, self.protocol)
        self._flush(client, now)

    # -- outbound --------------------------------------------------------------

    def _broadcast(self, frames, now):
        """Fan shared frames out (their bytes are never copied per client). The
        ready clients are the hot loop: one send() each and nothing else; a
        short send queues the rest."""
        wanted, joined, short = {}, {}, []
        ready = list(self._ready)
        for client in [c for c in self._pending if not c.out.closing]:
            self.stats["dropped_frames"] += client.out.push_frames(
                self._wanted(client, frames, wanted), now)
            self._flush(client, now)
        for client in ready:
            data = joined.get(client.subscription)
            if data is None:
                data = b"".join(f.wire for f in self._wanted(client, frames, wanted))
                joined[client.subscription] = data
            if not data:
                continue
            try:
                sent = client.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                continue
            if sent != len(data):
                short.append((client, sent))
        for client, sent in short:
            self.stats["dropped_frames"] += client.out.push_frames(
                self._wanted(client, frames, wanted), now, sent)
            self._refile(client)

    def _wanted(self, client, frames, cache):
        """The frames for this client's subscription (wants() asked once per
        subscription and batch)."""
        result = cache.get(client.subscription)
        if result is None:
            result = [frame for frame in frames if self.protocol.wants(client, frame)]
            cache[client.subscription] = result
        return result

    def _flush(self, client, now):
        """One sendmsg() of what is due; then ends a finished close handshake."""
        out = client.out
        if out and not client.finished:
            try:
                sent = client.sock.sendmsg(out.buffers())
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            out.advance(sent, now)
        if client.finished or (client.close_when_flushed and not out):
            self._drop(client)
            return
        self._refile(client)

    def _refile(self, client):
        """Ready or pending, after its queue changed; EVENT_WRITE while bytes wait."""
        if client.out.idle:
            self._ready.add(client)
            self._pending.discard(client)
        else:
            self._pending.add(client)
            self._ready.discard(client)
        wanted = bool(client.out)
        if client.writing != wanted:
            client.writing = wanted
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            self._selector.modify(client.sock, events, client)

    # -- inbound, timers, ending -------------------------------------------------

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
        client.receive(data, now, self.protocol)
        self._flush(client, now)

    def _check_pending(self, now):
        """Every WS_TIMER_TICK_S, over the pending clients only: close deadlines
        and stuck writers."""
        for client in list(self._pending):
            if client.out.closing:
                if now >= client.close_deadline:
                    self._drop(client)
            elif client.out.stalled_for(now) > self.write_timeout_s:
                self.stats["stuck_closed"] += 1
                LOG.info("event=ws_stuck_client addr=%s queued=%d", client.addr, len(client.out))
                try_close_frame(client, CloseCode.POLICY_VIOLATION, "write timeout")
                self._drop(client)

    def _drop(self, client):
        if not client.open:
            return
        client.open = False
        for registry in (self._clients, self._ready, self._pending):
            registry.discard(client)
        self._keepalive.discard(client)
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
            if client.start_close(CloseCode.GOING_AWAY, "server shutting down", now):
                self._flush(client, now)
        deadline = self.clock() + SHUTDOWN_GRACE_S
        while self._clients and self.clock() < deadline:
            self._loop_once(WS_SHUTDOWN_POLL_S)
        for client in list(self._clients):
            self._drop(client)
        while self._mailbox.items:      # a hand-over that raced with shutdown
            kind, item = self._mailbox.items.popleft()
            if kind == "client":
                item[0].close()
                self.release_slot()

    def client_count(self):
        return len(self._clients)


# ---------------------------------------------------------------------------
# 15. HTTP server and handler
# ---------------------------------------------------------------------------

# -- the server: error log, machine names, keep-alive bookkeeping -----------

MISSING_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>amdgpu_top_web</title>"
    "<h1>amdgpu_top_web</h1><p>index.html was not found beside amdgpu_top_web.py, "
    "so the dashboard page cannot be shown. Fetch it from the same place as the script, "
    "or use the JSON API: <a href=/api/gpus>/api/gpus</a>.</p></html>")


class ErrorLog(object):
    """One key=value line per HTTP error, with a request id also sent to the
    client (X-Request-Id); at most HTTP_ERROR_LOG_PER_S lines a second."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._second, self._count, self._suppressed = 0, 0, 0

    def line(self, handler, status, reason=None):
        request_id = "%016x" % random.getrandbits(64)
        if not self._admit():
            return request_id
        LOG.info("event=http_error status=%d method=%s path=%r client=%s request_id=%s%s", status,
                 sanitize_text(str(getattr(handler, "command", "") or "")),
                 redact_token(sanitize_text(str(getattr(handler, "path", "") or "")))[:200],
                 handler.client_address[0], request_id, " " + reason if reason else "")
        return request_id

    def _admit(self):
        now = int(self._clock())
        with self._lock:
            if now != self._second:
                if self._suppressed:
                    LOG.info("event=http_error_lines_suppressed count=%d", self._suppressed)
                self._second, self._count, self._suppressed = now, 0, 0
            self._count += 1
            if self._count > HTTP_ERROR_LOG_PER_S:
                self._suppressed += 1
                return False
            return True


def lookup_machine_names(hostname):
    """This machine's names for the Host check: the host name, and (DNS, so it
    may wait on a resolver: run it on its own thread) the fully qualified one."""
    names = {normalize_host_name(hostname)}
    try:
        names.add(normalize_host_name(socket.getfqdn(hostname)))
    except (OSError, UnicodeError):
        pass
    names.discard("")
    return frozenset(names)


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
        try:
            ThreadingHTTPServer.__init__(self, address, DashboardHandler)
        except OSError as exc:
            if host != "" or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            # IPv6 disabled in this kernel (ipv6.disable=1): all interfaces = IPv4 only.
            self.address_family = socket.AF_INET
            ThreadingHTTPServer.__init__(self, ("0.0.0.0", address[1]), DashboardHandler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        ThreadingHTTPServer.server_bind(self)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        ThreadingHTTPServer.process_request(self, request, client_address)

    def shutdown(self):
        """BaseServer.shutdown without waiting out serve_forever's poll
        interval (HTTP_POLL_S, long: no wake-up at rest): the stop flag is
        set, then a connection to the listening socket wakes its select()
        at once, and the loop ends before accepting it."""
        self._BaseServer__shutdown_request = True
        host, port = self.server_address[:2]
        if host in ("", "0.0.0.0", "::"):
            host = "::1" if self.address_family == socket.AF_INET6 else "127.0.0.1"
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            pass                            # the loop ends at its next poll instead
        ThreadingHTTPServer.shutdown(self)

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


class _HeadDeadlineReader(io.RawIOBase):
    """The handler's raw socket reader: the whole request head must arrive
    within a deadline (slowloris), not just each recv within the idle timeout."""

    def __init__(self, sock, idle):
        self._sock, self._idle, self.deadline = sock, idle, None

    def readable(self):
        return True

    def readinto(self, buf):
        if self._sock.gettimeout() != 0.0:          # the WebSocket hand-over reads non-blocking
            left = self._idle if self.deadline is None else self.deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("request head too slow")
            self._sock.settimeout(min(self._idle, left))
        try:
            return self._sock.recv_into(buf)
        except BlockingIOError:
            return None


# -- the GET routes (one short method each) ---------------------------------

class Routes(object):
    """The answers of the GET routes for one request: route_<name>(gpu_id) for
    each name route() gives (the WebSocket upgrade stays on the handler). It
    reads the request and answers through the handler's _send/_send_json."""

    def __init__(self, handler):
        self.server, self.path, self.headers = handler.server, handler.path, handler.headers
        self._send, self._send_json = handler._send, handler._send_json

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
            self._send_json(404, build_error_answer("not found"))
        else:
            self._send(200, content_type, body, cache="public, max-age=86400")

    def route_metrics(self, _):
        app = self.server.app
        if not app.config.enable_prometheus:
            self._send_json(404, build_error_answer("Prometheus metrics are off; turn them on with "
                                                    "--enable-prometheus or APP_ENABLE_PROMETHEUS=true"))
            return
        self._send(200, PROM_CONTENT_TYPE, app.prometheus_text().encode("utf-8"))

    def route_debug_threads(self, _):
        if self._debug_enabled():
            text = format_thread_stacks(sys._current_frames(), threading.enumerate())
            self._send(200, "text/plain; charset=utf-8", text.encode("utf-8"))

    def route_debug_memory(self, _):
        if self._debug_enabled():
            if not tracemalloc.is_tracing():
                self._send_json(503, build_error_answer("tracemalloc is not tracing"))
                return
            stats = tracemalloc.take_snapshot().statistics("lineno")
            self._send(200, "text/plain; charset=utf-8", format_memory_top(stats).encode("utf-8"))

    def _debug_enabled(self):
        if not self.server.app.config.enable_pprof:
            self._send_json(404, build_error_answer("debug endpoints are off; turn them on with "
                                                    "--enable-pprof or APP_ENABLE_PPROF=true"))
            return False
        return True

    def route_favicon(self, _):
        self._send(204, "image/x-icon", b"", cache="max-age=86400")

    def route_not_found(self, _):
        self._send_json(404, build_error_answer("not found"))

    def route_gpus(self, _):
        self._send_json(200, self.server.app.gpus_json())

    def route_host(self, _):
        latest = self.server.app.cache.host()
        self._send(200, "application/json", latest[2].payload if latest else json_bytes(
            build_host_message(None, None)))

    def route_fleet(self, _):
        """The hub's latest fleet; on a server without a fleet source, itself only."""
        self._send(200, "application/json", current_fleet(self.server.app.cache)[1].payload)

    def route_fleet_host(self, _):
        """This server's own fleet host entry: what a hub asks every peer."""
        self._send_json(200, replace_non_finite(local_fleet_host(self.server.app.cache)))

    def route_healthz(self, _):
        self._send_json(200, build_health_answer(self.server.app.history_status()))

    def route_readyz(self, _):
        cache = self.server.app.cache
        if cache.ready.is_set():
            self._send_json(200, build_ready_answer(len(cache.gpus())))
        else:
            self._send_json(503, build_ready_answer(None), [("Retry-After", "1")])

    def route_version(self, _):
        self._send_json(200, build_version_answer(__version__, sys.version_info))

    def route_alerts(self, _):
        """From the history store when there is one, else the engine's memory."""
        app = self.server.app
        if app.alerts is None:
            self._send_json(404, build_error_answer("alerts are off; turn them on with --alerts or "
                                                    "APP_ALERTS=on"))
            return
        try:
            query = parse_alerts_query(urlsplit(self.path).query, time.time())
        except QueryError as exc:
            self._send_json(400, build_error_answer(str(exc)))
            return
        source, events = app.alert_events(query.from_s, query.to_s)
        self._answer(query.format, build_alerts_answer(query.from_s, query.to_s, source,
                                                       app.cache.alerts(), events),
                     lambda: records_csv(events, ALERT_CSV_COLUMNS), "alerts")

    def route_fleet_targets(self, _):
        """Prometheus http_sd: the peer list now ([] without peers)."""
        self._send_json(200, build_fleet_targets(self.server.app.fleet_peers.current()))

    def route_fleet_history(self, _):
        """The parameters first (400 naming a bad one), then the source (404 without one)."""
        try:
            query, metric = parse_fleet_history_query(urlsplit(self.path).query, time.time(),
                                                      FLEET_HISTORY_METRICS)
        except QueryError as exc:
            self._send_json(400, build_error_answer(str(exc)))
            return
        source = self.server.app.fleet_prometheus
        if source is None:
            self._send_json(404, build_error_answer("fleet history needs a Prometheus source: set "
                                                    "APP_FLEET_PROMETHEUS_URL"))
            return
        try:
            answer = source.history(metric, query.from_s, query.to_s, query.step_s)
        except PromAnswerError as exc:
            self._send_json(502, build_error_answer("Prometheus: %s" % exc))
            return
        self._send_json(200, answer)

    def route_gpu_metrics(self, gpu_id):
        found = self._gpu_or_404(gpu_id)
        if found is not None:
            stats = self.server.app.cache.stats(gpu_id)
            self._send(200, "application/json", stats[2].payload if stats else json_bytes(
                build_stats_message(gpu_id, None, None)))

    def route_gpu_history(self, gpu_id):
        """No query: the live ring as the finest tier. With range/from/to/step: the store."""
        if self._gpu_or_404(gpu_id) is None:
            return
        if urlsplit(self.path).query:
            self._series("gpu", gpu_id)
        else:
            self._send_json(200, build_live_history_answer(
                gpu_id, self.server.app.cache.history(gpu_id), time.time()))

    def route_host_history(self, _):
        self._series("host", None)

    def route_processes(self, _):
        query, store = self._prepare(parse_runs_query)
        if store is not None:
            runs = store.query_runs(query.from_s, query.to_s, query.gpu_id, query.active,
                                    query.by, query.key)
            self._answer(query.format, build_runs_answer(query.from_s, query.to_s, runs),
                         lambda: runs_csv(runs), "processes")

    def route_usage(self, _):
        query, store = self._prepare(parse_usage_query)
        if store is not None:
            result = store.query_usage(query.from_s, query.to_s, query.by, query.gpu_id)
            self._answer(query.format, result, lambda: usage_csv(result), "usage-" + query.by)

    def route_run_history(self, run_id):
        fmt, store = self._prepare(parse_run_query)
        if store is None:
            return
        result = store.query_run_history(run_id)
        if result is None:
            self._send_json(404, build_error_answer("unknown process run: %d" % run_id))
            return
        self._answer(fmt, result, lambda: columns_csv(result["ts"], result["series"]),
                     "run-%d" % run_id)

    def route_gpu_processes(self, gpu_id):
        if self._gpu_or_404(gpu_id) is None:
            return
        query, store = self._prepare(parse_at_query)
        if store is not None:
            result = store.query_procs_at(gpu_id, query.at_s)
            self._answer(query.format, result, lambda: records_csv(
                result["processes"], PROC_AT_CSV_COLUMNS), "%s-processes" % gpu_id)

    def _series(self, kind, key):
        query, store = self._prepare(parse_history_query)
        if store is not None:
            points = int(math.ceil((query.to_s - query.from_s) / query.step_s)) if query.step_s else None
            result = store.query_series(kind, key, query.from_s, query.to_s, points)
            self._answer(query.format, result, lambda: series_csv(result),
                         "%s-history" % (key or kind))

    def _prepare(self, parser):
        """(query, the store's reader) for a history endpoint, or (None, None) once a 400
        (parser(query, now) raised QueryError) or a 404 (history off) is sent."""
        try:
            query = parser(urlsplit(self.path).query, time.time())
        except QueryError as exc:
            self._send_json(400, build_error_answer(str(exc)))
            return None, None
        store = self.server.app.history
        if store is None:
            self._send_json(404, build_error_answer("history is off (APP_HISTORY_PATH=off); set "
                                                    "APP_HISTORY_PATH or --history-path to keep it"))
            return None, None
        if store.status()["state"] == "starting":     # the writer is still opening the file
            self._send_json(503, build_error_answer("history is opening its file; try again"),
                            [("Retry-After", "1")])
            return None, None
        return query, store.reader

    def _answer(self, fmt, obj, make_csv, name):
        if fmt == "csv":
            self._send(200, "text/csv; charset=utf-8", make_csv(), [
                ("Content-Disposition", 'attachment; filename="%s.csv"' % name)])
        else:
            self._send_json(200, obj)

    def route_gpu_procs(self, gpu_id):
        if self._gpu_or_404(gpu_id) is not None:
            procs = self.server.app.cache.procs(gpu_id)
            self._send(200, "application/json", procs[1].payload if procs else json_bytes(
                build_procs_message(gpu_id, None, None, None, None)))

    def _gpu_or_404(self, gpu_id):
        info = self.server.app.cache.gpu(gpu_id)
        if info is None:
            self._send_json(404, build_error_answer("unknown GPU: %s" % gpu_id))
        return info


# -- the handler: checks, dispatch, responses, the WebSocket upgrade --------

class DashboardHandler(BaseHTTPRequestHandler):
    """Answers every route from the cache; /ws is upgraded here and handed to the hub."""

    server_version = "amdgpu_top_web/" + __version__
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"   # never answer HTTP/0.9-style (bare body, no headers)
    timeout = HTTP_IDLE_TIMEOUT_S

    def setup(self):
        BaseHTTPRequestHandler.setup(self)
        self._head_reader = _HeadDeadlineReader(self.connection, self.timeout)
        if isinstance(self.connection, socket.socket):
            self.rfile = io.BufferedReader(self._head_reader, 65536)

    def handle_one_request(self):
        self._head_reader.deadline = time.monotonic() + HTTP_IDLE_TIMEOUT_S
        BaseHTTPRequestHandler.handle_one_request(self)

    def parse_request(self):
        try:
            return BaseHTTPRequestHandler.parse_request(self)
        finally:
            self._head_reader.deadline = None       # the head is in: no deadline for the rest

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
        self._send_json(405, build_error_answer("method not allowed: this server is read-only"),
                        [("Allow", "GET, HEAD"), ("Connection", "close")])

    def _dispatch(self, send_body):
        self._send_body = send_body
        self._answered = False
        app = self.server.app
        if self.headers.get("Transfer-Encoding") or (
                self.headers.get("Content-Length") or "0").strip() != "0":
            self.close_connection = True     # the body is never read: never parse it as a request
        if len(self.headers.get_all("Host") or ()) > 1:
            self.send_error(400, "more than one Host header")   # RFC 9112 §3.2
            return
        if not host_allowed(self.headers.get("Host"), app.machine_names, app.config.allowed_hosts,
                            app.config.allowed_origins):
            self._refuse_host()
            return
        parts = urlsplit(self.path)
        name, gpu_id = route(parts.path)
        if not self._authorized(name, parts.query) or not self._params_known(name, parts.query):
            return
        try:
            answer = getattr(self, "route_" + name, None) or getattr(Routes(self), "route_" + name)
            answer(gpu_id)
        except OSError:
            raise                        # the client went away: handle_error logs it
        except Exception as exc:         # a bug: still an answer, never a dropped connection
            self._internal_error(exc)

    def _refuse_host(self):
        host = sanitize_text(self.headers.get("Host") or "")[:100]
        reason = "host=%r hint=%r" % (host, "a name this server answers to? add it to "
                                      "APP_ALLOWED_HOSTS (--allowed-hosts)")
        self._send_json(403, build_error_answer("Host %r not allowed (DNS rebinding protection); the "
                                                "server's APP_ALLOWED_HOSTS setting admits it" % host),
                        reason=reason)

    def _authorized(self, name, query):
        """True when no token is set, the route is open, or the request carries the
        token; otherwise the answer (a 401, or the /?token= cookie redirect) is sent."""
        app = self.server.app
        token = app.config.auth_token
        if token is None or name in AUTH_OPEN_ROUTES:
            return True
        cookie_name = auth_cookie_name(self.server.server_address[1])
        offered = parse_token_query(query)
        if name == "page" and offered is not None and token_matches(offered, token):
            self._send(303, "text/plain; charset=utf-8", b"", [
                ("Location", "./"), ("Set-Cookie", build_auth_cookie(cookie_name, token))])
            return False
        if request_authorized(self.headers, token, cookie_name):
            return True
        headers = [("WWW-Authenticate", 'Bearer realm="amdgpu_top_web"')]
        if name in ("page", "plain"):
            self._send(401, "text/html; charset=utf-8", render_auth_page().encode("utf-8"), headers)
        else:
            self._send_json(401, build_error_answer(AUTH_HELP), headers)
        return False

    def _params_known(self, name, query):
        """A parameter the route does not take is a 400 naming it, never ignored."""
        allowed = ROUTE_PARAMS.get(name)
        if allowed is None:
            return True
        try:
            parse_query_string(query, allowed)
        except QueryError as exc:
            self._send_json(400, build_error_answer(str(exc)))
            return False
        return True

    def _internal_error(self, exc):
        LOG.error("event=http_handler_exception path=%r error=%r",
                  redact_token(sanitize_text(self.path))[:200], exc, exc_info=True)
        self.close_connection = True
        if not self._answered:
            self._send_json(500, build_error_answer("internal error: %s (see the server log)"
                                                    % type(exc).__name__), [("Connection", "close")])

    # -- responses -------------------------------------------------------------

    def _send(self, status, content_type, body, headers=(), cache="no-store", reason=None):
        if status >= 400:
            headers = list(headers) + [("X-Request-Id", self.server.app.error_log.line(
                self, status, reason))]
        self._answered = True
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

    def _send_json(self, status, obj, headers=(), reason=None):
        self._send(status, "application/json", json_bytes(obj), headers, reason=reason)

    def send_error(self, code, message=None, explain=None):
        """Errors the base class raises itself (400, 414, 431, 501) as JSON too."""
        self.close_connection = True
        try:
            self._send(code, "application/json", error_json(message or HTTPStatus(code).phrase),
                       [("Connection", "close")])
        except OSError:
            pass

    def log_message(self, fmt, *args):
        LOG.debug("event=http client=%s %s", self.client_address[0], redact_token(fmt % args))

    # -- the WebSocket upgrade (the other routes: Routes) ---------------------------

    def route_ws(self, _):
        app = self.server.app
        key = self._upgrade_key()
        if key is None:
            return
        if not app.hub.reserve_slot():
            self._send_json(503, build_error_answer("too many WebSocket clients"), [("Retry-After", "5")])
            return
        self._hand_over(key)

    def _upgrade_key(self):
        """The key of a valid opening handshake from an allowed Origin; else None, answered."""
        headers = dict((k.lower(), v) for k, v in self.headers.items())
        try:
            key = check_upgrade(self.command, headers)
        except HandshakeError as exc:
            self._send_json(exc.status, build_error_answer(exc.message), list(exc.headers.items()))
            return None
        if not origin_allowed(headers.get("origin"), headers.get("host"),
                              self.server.app.config.allowed_origins):
            self._send_json(403, build_error_answer("WebSocket Origin not allowed"))
            return None
        return key

    def route_proxy(self, _):
        """/hosts/{name}/...: a configured peer's page, API and /ws (FleetProxy)."""
        proxy = self.server.app.fleet_proxy
        parts = urlsplit(self.path)
        found = parse_proxy_path(parts.path)
        peer = proxy.find(found[0]) if found is not None and proxy is not None else None
        if peer is None:
            self._send_json(404, build_error_answer(
                "no such peer: /hosts/{name}/ names a peer of this hub's APP_FLEET_PEERS"
                if proxy is not None else "not a hub: /hosts/ needs APP_FLEET_PEERS"))
        elif found[1] is None:
            self._send(308, "text/plain; charset=utf-8", b"", [
                ("Location", "%s%s/" % (FLEET_PROXY_PREFIX, peer.name))])
        elif found[1] == "/ws":
            if self._upgrade_key() is not None:
                proxy.relay_ws(self, peer, parts.query)
        else:
            proxy.relay_http(self, peer, found[1], parts.query)

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
# 16. CLI and main()
# ---------------------------------------------------------------------------

# -- the application: wiring every thread -----------------------------------

def default_page_path():
    """index.html beside this file: the page (without it, only /plain and the API)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "index.html")


class App(object):
    """Owns every thread: discovery (and samplers), hub, HTTP server; start()/stop()."""

    def __init__(self, config, page_path=None, alert_rules=None):
        self.config = config
        features = {"procs": False, "prometheus": config.enable_prometheus,
                    "demo": config.demo, "history_window_s": HISTORY_WINDOW_S}
        self.cache = Cache(config.interval_s, features)
        self.manager = GpuManager(config, self.cache)
        self.hub = Hub(DashboardProtocol(self.cache, config.default_gpu), config.ws_max_clients,
                       config.ws_write_timeout_s, config.ws_read_timeout_s)
        self.cache.add_listener(self.hub.on_frame)
        self.page_bytes, self.vendor_files = self._load_page(page_path, config.vendor_dir)
        self.csp = build_csp(inline_script_hashes(self.page_bytes.decode("utf-8"))
                             if self.page_bytes else [], use_cdn=not config.vendor_dir)
        self.procs_thread = self._make_procs_thread()
        self.history = make_history_store(config, self._history_changed)
        self.cache.set_feature("history", self.history_status())
        if self.history is not None:
            self.cache.add_sink(self.history)
        self.host_thread = HostSampler(HostReader(config.proc_root), self.cache)
        self.webhook, self.alerts = self._make_alerts(alert_rules)
        self.fleet_peers = FleetPeerList(config.fleet_peers)    # one list: the poller's, the proxy's
        self.fleet_prometheus = make_fleet_prometheus(config)
        self.fleet = self._make_fleet()
        self.fleet_proxy = (FleetProxy(self.fleet_peers, config.fleet_tokens, config.fleet_timeout_s)
                            if config.fleet_peers is not None else None)
        self.error_log = ErrorLog()
        self.machine_names = frozenset()        # filled by start() (the Host check)
        self.server = None
        self._serve_thread = None

    def _make_procs_thread(self):
        config = self.config
        source = make_proc_source(config, self.manager.backends)
        if source is None:
            return None
        self.cache.set_feature("procs", True)
        return ProcScanThread(source, self.cache, config.proc_scan_interval_s, config.interval_s * 4)

    def _make_fleet(self):
        """The peers poller on a hub with APP_FLEET_PEERS, the Prometheus poller
        with APP_FLEET_PROMETHEUS_URL, else None (features.fleet null)."""
        config = self.config
        self.cache.set_feature("fleet", None)
        if self.fleet_prometheus is not None:
            return FleetPrometheusPoller(config, self.cache, self.fleet_prometheus)
        if config.fleet_peers is None:
            return None
        return FleetPoller(config, self.cache, self.fleet_peers)

    def _history_changed(self, status):
        self.cache.set_feature("history", status)

    def history_status(self):
        """hello.features["history"] and /api/healthz's "history"."""
        if self.history is None:
            return {"state": "off", "path": None, "reason": "APP_HISTORY_PATH=off"}
        return self.history.status()
    def _make_alerts(self, rules):
        """(WebhookSender or None, AlertEngine or None) for this config."""
        config = self.config
        if not config.alerts:
            self.cache.set_feature("alerts", {"enabled": False})
            return None, None
        rules = rules if rules is not None else load_alert_rules(config)
        webhook = None
        if config.alert_webhook_url:
            webhook = WebhookSender(config.alert_webhook_url, self.cache, socket.gethostname())
        engine = AlertEngine(self.cache, rules, self.history, webhook)
        self.cache.add_sink(engine)
        self.cache.set_feature("alerts", {
            "enabled": True, "rules": [r for r in ALERT_RULES if rules[r].get("enabled", True)],
            "webhook": webhook is not None, "webhook_sent": 0, "webhook_failed": 0,
            "webhook_dropped": 0})
        return webhook, engine

    def alert_events(self, from_s, to_s):
        """(source, events): the history store's when there is one, else memory."""
        if self.history is not None:
            return "history", self.history.reader.query_alerts(from_s, to_s)
        return "memory", self.alerts.recent(from_s, to_s)

    @staticmethod
    def _load_page(page_path, vendor_dir):
        """index.html (None when missing), rewritten to /vendor/ URLs in air-gapped mode."""
        page = read_bytes(page_path or default_page_path(), 4 << 20)
        if page is None or not vendor_dir:
            return page, {}
        html = page.decode("utf-8")
        text, files = rewrite_cdn_urls(html)
        for package, version in parse_page_pins(html).items():   # one line per package
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

    def prometheus_text(self):
        gpus, procs = self.cache.snapshot()
        health = self.cache.health_snapshot()
        hub = self.hub.stats
        for name, key in (("websocket_clients", "clients"), ("websocket_dropped_frames_total", "dropped_frames"),
                          ("websocket_stuck_closed_total", "stuck_closed"),
                          ("websocket_refused_total", "refused")):
            health[("exporter_" + name, ())] = hub[key]
        latest = self.cache.host()
        return render_prometheus(gpus, procs, health, self.config.prometheus_processes,
                                 latest[1] if latest else None, self.cache.alerts(),
                                 self.cache.ready.is_set())

    def plain_html(self, hint=None):
        gpus, procs = self.cache.snapshot()
        latest = self.cache.host()
        fleet = self.cache.fleet()
        return render_plain(gpus, procs, max(2.0, self.config.interval_s), hint,
                            page=self.page_bytes is not None, host=latest[1] if latest else None,
                            alerts=self.cache.alerts() if self.alerts is not None else None,
                            fleet=fleet[0] if fleet else None)

    def gpus_json(self):
        gpus = [dict(identity, metrics=metrics) for identity, metrics in self.cache.snapshot()[0]]
        message = None if gpus else NO_GPU_MESSAGE % (self.config.sysfs_root,
                                                      self.config.nvml_library)
        return build_gpus_answer(gpus, self.config.demo, message)

    def start(self):
        """Bind, then start every thread. Returns the bound (host, port)."""
        self.server = DashboardServer((self.config.listen_host, self.config.listen_port), self)
        self._tracing = self.config.enable_pprof and not tracemalloc.is_tracing()
        if self._tracing:
            tracemalloc.start(10)
        if self.history is not None:
            self.history.start()            # opens the file (or falls back to memory)
        host, port = self.server.server_address[:2]
        self._find_machine_names()
        for thread in (self.webhook, self.alerts):
            if thread is not None:
                thread.start()
        if self.webhook is not None:
            self.webhook.instance = "%s:%d" % (socket.gethostname(), port)
            self.webhook.external_url = format_listen_url(
                socket.gethostname() if host in ("", "0.0.0.0", "::") else host, port)
        self.hub.start()
        self.manager.start()
        clock = self.manager.sampler_clock        # one wake-up for the periodic work
        if self.procs_thread is not None:
            self.procs_thread.run_on(clock)
        self.host_thread.run_on(clock)
        if self.alerts is not None:
            self.alerts.run_on(clock)
        if self.fleet is not None:
            self.fleet.start()
        self._serve_thread = threading.Thread(target=self.server.serve_forever, args=(HTTP_POLL_S,),
                                              name="http-server")
        self._serve_thread.daemon = True
        self._serve_thread.start()
        return self.server.server_address[:2]

    def _find_machine_names(self):
        """The Host check's names: the host name at once; getfqdn (DNS) on a
        thread, waited for MACHINE_NAMES_DNS_WAIT_S at most (a dead resolver must
        not hold the start), added whenever it answers."""
        hostname = socket.gethostname()
        self.machine_names = frozenset([normalize_host_name(hostname)])

        def lookup():
            self.machine_names = self.machine_names | lookup_machine_names(hostname)
        thread = threading.Thread(target=lookup, name="machine-names")
        thread.daemon = True
        thread.start()
        thread.join(MACHINE_NAMES_DNS_WAIT_S)

    def stop(self):
        """Stop within about a second: HTTP first, then Close 1001 to every WebSocket."""
        if self.server is not None:
            self.server.shutdown()
            self.server.close_idle_connections()
        self.hub.stop()
        self.manager.stop()
        if self.procs_thread is not None:
            self.procs_thread.stop()
        self.host_thread.stop()
        for thread in (self.alerts, self.webhook, self.fleet):
            if thread is not None:
                thread.stop()
        for thread in (self.hub, self.manager, self.procs_thread, self.host_thread,
                       self._serve_thread, self.alerts, self.webhook, self.fleet):
            if thread is not None and thread.is_alive():
                thread.join(2.0)
        if self.fleet_prometheus is not None:
            self.fleet_prometheus.close()
        self.manager.close_backends()       # nvmlShutdown once nothing calls NVML
        if self.history is not None and self.history.is_alive():
            self.history.stop()             # the writer flushes its last batch, then closes
            self.history.join(10.0)
        if self.server is not None:
            self.server.server_close()
        if getattr(self, "_tracing", False):
            tracemalloc.stop()


# -- --once, --healthcheck and serving --------------------------------------

def setup_logging(level):
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s thread=%(threadName)s %(message)s")


def run_once(config):
    """--once: every GPU and its processes; print JSON (--json) or a short table.

    Rates (engine %, Intel busy and power) need two readings of a counter, so
    everything is read twice, ONCE_RATE_WAIT_S apart, and the second is shown.
    """
    backends = make_backends(config)
    readers = []
    for backend in backends:
        readers.extend(backend.open_reader(info) for info in backend.discover())
    readers.sort(key=lambda reader: _card_order(reader.info))
    source = make_proc_source(config, backends)
    if source is not None:
        source.set_gpus([reader.info for reader in readers])
        source.scan()
    host_reader = HostReader(config.proc_root)
    host_reader.sample(time.monotonic())
    for reader in readers:
        reader.sample(time.monotonic())
    time.sleep(ONCE_RATE_WAIT_S)
    procs = source.refresh() if source is not None else None
    now, epoch = time.monotonic(), time.time()
    host = host_reader.sample(now)
    host_reader.close()
    gpus = []
    for reader in readers:
        entry = procs.by_pci.get(reader.info.pci) if procs else None
        gpus.append(dict(identity_json(reader.info), metrics=reader.sample(now),
                         procs=build_procs_message(reader.info.id, epoch, entry, procs.visibility,
                                                   procs.stats) if procs else None))
        reader.close()
    for backend in backends:
        backend.close()
    snapshot = build_once_snapshot(__version__, epoch, ONCE_RATE_WAIT_S, host, gpus)
    fleet = once_fleet(config, host, gpus) if config.fleet_peers is not None \
        or config.fleet_prometheus_url else None
    if config.json:
        print(json.dumps(dict(snapshot, fleet=fleet) if fleet else snapshot, indent=2))
    else:
        print(format_once_table(gpus, host) + ("\n" + format_once_fleet(fleet) if fleet else ""))
    return 0


def once_fleet(config, host, gpus):
    """--once on a hub: every peer asked once (or Prometheus' queries run
    once) -> the fleet message (this
    machine first when it has GPUs, as a hub shows it)."""
    def local(epoch_s):
        return build_local_fleet_host(socket.gethostname(), epoch_s,
                                      [(gpu, gpu["metrics"]) for gpu in gpus],
                                      dict((gpu["id"], gpu["procs"]) for gpu in gpus), host, [])
    if config.fleet_prometheus_url:
        return FleetPrometheusPoller(config, None, make_fleet_prometheus(config), local).poll_once()
    poller = FleetPoller(config, None, FleetPeerList(config.fleet_peers), local)
    return poller.poll_once()


def format_once_fleet(fleet):
    """The --once table of a hub's fleet: a line per host, one per GPU under it."""
    lines = ["fleet  " + format_fleet_totals(fleet)]
    for host in fleet["hosts"]:
        lines.append("%-20s %-8s last seen %s  GPUs busy / idle / down %s  power %s" % tuple(
            format_fleet_host(host)))
        lines.extend("  " + format_fleet_gpu(gpu) for gpu in host["gpus"])
    return "\n".join(lines)


def format_once_host(host):
    """The --once table's host line."""
    return "host  cpu %s of %s CPUs  load %s  mem %s / %s  swap %s / %s  mem pressure %s" % (
        format_value(host["cpu_busy_pct"], " %"), format_value(host["cpu_count"], "%d"),
        " ".join(format_value(host[k], "load") for k in ("load1", "load5", "load15")),
        format_bytes(host["mem_used_bytes"]), format_bytes(host["mem_total_bytes"]),
        format_bytes(host["swap_used_bytes"]), format_bytes(host["swap_total_bytes"]),
        format_value(host["mem_pressure_some_avg10"], " %"))


def format_once_table(gpus, host=None):
    lines = [format_once_host(host)] if host else []
    if not gpus:
        return "\n".join(lines + ["No GPU found. Try --demo."])
    for gpu in gpus:
        m = gpu["metrics"]
        lines.append("%s  %s  [%s, %s]" % (gpu["id"], gpu["name"], gpu["vendor"], gpu["pci"]))
        facts = format_identity_facts(gpu)
        if facts:
            lines.append("  " + facts)
        lines.append("  busy %s  sclk %s  temp %s  power %s  vram %s / %s  %s" % (
            format_value(m["gpu_busy_pct"], "%"), format_value(m["sclk_mhz"], " MHz"),
            format_value(m["temp_c"], " °C"), format_value(m["power_w"], " W"),
            format_bytes(m["vram_used_bytes"]), format_bytes(m["vram_total_bytes"]),
            m["runtime_status"] or ""))
        lines.extend("  %s: %s" % fact for fact in plain_nvidia_facts(m))
        for proc in (gpu.get("procs") or {}).get("processes") or []:
            who = compute_who_label(proc)
            lines.append("    pid %-7d %-16s vram %s  gtt %s  cpu %s  rss %s  started %s (%s)%s" % (
                proc["pid"], sanitize_text(proc["name"] or "")[:16],
                format_bytes(proc["vram_bytes"]), format_bytes(proc["gtt_bytes"]),
                format_value(proc["cpu_pct"], "%"), format_bytes(proc["rss_bytes"]),
                proc.get("started") or "\u2014", format_elapsed(proc.get("elapsed_s")),
                "  who " + who if who else ""))
    return "\n".join(lines)


def healthcheck_target(config):
    """Where --healthcheck connects: the listen address, loopback for wildcards."""
    host = config.listen_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, config.listen_port


def run_healthcheck(config):
    """--healthcheck (the container's HEALTHCHECK): GET /api/healthz directly
    (never through a proxy); exit 0 when it answers 200, else 1."""
    host, port = healthcheck_target(config)
    conn = http.client.HTTPConnection(host, port, timeout=4)
    try:
        conn.request("GET", "/api/healthz", headers={"Host": "localhost"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print("amdgpu_top_web: healthcheck: %s:%d: %s" % (host, port, exc), file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status != 200:
        print("amdgpu_top_web: healthcheck: HTTP %d" % status, file=sys.stderr)
    return 0 if status == 200 else 1


def format_listen_url(host, port):
    shown = host or "0.0.0.0"
    return "http://%s:%d/" % ("[%s]" % shown if ":" in shown else shown, port)


def load_alert_rules(config):
    """APP_ALERT_RULES' file -> the rules table; ConfigError (one line naming
    the setting and the key) when it cannot be read or is wrong."""
    text = None
    if config.alert_rules:
        text = read_text(config.alert_rules, 1 << 20)
        if text is None:
            raise ConfigError("APP_ALERT_RULES=%r: cannot read the file" % config.alert_rules)
    try:
        return parse_alert_rules(text)
    except ValueError as exc:
        raise ConfigError("APP_ALERT_RULES=%r: %s" % (config.alert_rules, exc))


def check_vendor_dir(config, page_path=None):
    """Serving with APP_VENDOR_DIR: ConfigError (one line) when it is not a folder
    or holds none of the page's packages (e.g. the --prefix folder, not the
    node_modules inside it). A package at another version: App warns, per package."""
    folder = config.vendor_dir
    if not folder or config.once or config.healthcheck or config.show_help or config.show_version:
        return
    page = read_text(page_path or default_page_path(), 4 << 20)
    pins = parse_page_pins(page) if page else {}
    install, start = format_vendor_commands(pins)
    if not os.path.isdir(folder):
        raise ConfigError("APP_VENDOR_DIR=%r: no such folder; make one and use it: %s && %s"
                          % (folder, install, start))
    if pins and not any(os.path.isfile(os.path.join(folder, package, "package.json"))
                        for package in pins):
        raise ConfigError("APP_VENDOR_DIR=%r: holds none of the page's packages (%s); it must "
                          "be the node_modules folder of: %s" % (folder, ", ".join(pins), install))


def load_auth_token(config):
    """APP_AUTH_TOKEN_FILE's token (read once, stripped) into config.auth_token;
    ConfigError (one line naming the setting, never the token) when it cannot be."""
    path = config.auth_token_file
    if not path:
        return config
    if config.auth_token is not None:
        raise ConfigError("APP_AUTH_TOKEN_FILE=%r: set it or APP_AUTH_TOKEN, not both" % path)
    text = read_text(path, 1 << 16)
    if text is None or not text.strip():
        raise ConfigError("APP_AUTH_TOKEN_FILE=%r: %s" % (
            path, "cannot read the file" if text is None else "the file is empty"))
    try:
        return config._replace(auth_token=parse_auth_token(text))
    except ValueError as exc:
        raise ConfigError("APP_AUTH_TOKEN_FILE=%r: the token %s" % (path, exc))


def load_fleet_tokens(config):
    """APP_FLEET_TOKEN_FILE into config.fleet_tokens, {peer name or "*": token}
    (read once at start); ConfigError naming the setting and line, never a token."""
    path = config.fleet_token_file
    if not path:
        return config
    text = read_text(path, FLEET_TOKENS_FILE_LIMIT)
    if text is None:
        raise ConfigError("APP_FLEET_TOKEN_FILE=%r: cannot read the file" % path)
    try:
        return config._replace(fleet_tokens=parse_fleet_tokens(text))
    except ValueError as exc:
        raise ConfigError("APP_FLEET_TOKEN_FILE=%r: %s" % (path, exc))


def check_fleet_peers_file(config):
    """An @FILE peer list must be readable and valid at start (ConfigError,
    exit 2); later changes that break it keep the last good list."""
    spec = config.fleet_peers
    if spec is None or spec.path is None:
        return
    text = read_text(spec.path, FLEET_PEERS_FILE_LIMIT)
    try:
        if text is None:
            raise ValueError("cannot read the file")
        parse_fleet_peer_list(text)
    except ValueError as exc:
        raise ConfigError("APP_FLEET_PEERS=@%s: %s" % (spec.path, exc))


def log_exposure(config, host):
    """One line at start when anyone on the network may read the dashboard."""
    if config.auth_token is None and not is_loopback_name(normalize_host_name(host)):
        LOG.warning("event=no_auth_token listen=%s message=%r", format_listen_url(
            host, config.listen_port).rstrip("/"), "anyone who can reach this port sees the "
            "GPU processes' user names and command lines; set APP_AUTH_TOKEN (or "
            "APP_AUTH_TOKEN_FILE), or listen on 127.0.0.1 only")


def release_free_heap():
    """Hand the C heap's free pages back to the system (glibc's malloc_trim;
    a no-op elsewhere). Run as a script, this file is compiled at every start
    (no .pyc) and the compiler's ~20 MiB of syntax tree, freed at once, stays
    in the process's RSS until trimmed."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def serve(config, alert_rules=None):
    release_free_heap()
    app = App(config, alert_rules=alert_rules)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        host, port = app.start()
    except OSError as exc:
        print("amdgpu_top_web: error: cannot listen on %s:%d: %s"
              % (config.listen_host, config.listen_port, exc.strerror), file=sys.stderr)
        return 2
    log_exposure(config, host)          # before "listening": a test that waits for it sees both
    LOG.info("event=listening url=%s demo=%s", format_listen_url(host, port), config.demo)
    if not config.vendor_dir and app.page_bytes:
        LOG.info("event=cdn_mode hint=%r", "the page loads its scripts from cdn.jsdelivr.net; "
                 "for browsers without internet, serve them from here: %s && %s"
                 % format_vendor_commands(parse_page_pins(app.page_bytes.decode("utf-8"))))
    stop.wait()                         # a signal interrupts the wait and runs the handler
    LOG.info("event=shutdown")
    app.stop()
    return 0


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        config = load_fleet_tokens(load_auth_token(parse_config(argv, environ)))
        rules = load_alert_rules(config) if config.alerts else None
        check_vendor_dir(config)
        check_fleet_peers_file(config)
    except ConfigError as exc:
        print("amdgpu_top_web: error: %s" % exc, file=sys.stderr)
        return 2
    if config.show_help:
        print(format_help())
        return 0
    if config.show_version:
        print(__version__)
        return 0
    if config.healthcheck:
        return run_healthcheck(config)
    setup_logging(config.log_level)
    if config.once:
        return run_once(config)
    return serve(config, rules)


if __name__ == "__main__":
    sys.exit(main())
