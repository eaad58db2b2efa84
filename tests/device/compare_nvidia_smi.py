#!/usr/bin/env python3
"""Device check (not a test): our NVIDIA figures against nvidia-smi on a machine with a real GPU.

NOT YET RUN ON REAL HARDWARE. So far it has only been dry-run here against
the stand-in libnvidia-ml.so.1 (tests/nvml/fake_nvml.c) and a throw-away
nvidia-smi double that printed CSV matching the stand-in's scenario; that
proves the parsing, matching and reporting, not the values a real driver gives.

Stdlib only, no venv: run it from the repository root with the system python3
(tests/device/README.md has the exact device-tool command):

    python3 tests/device/compare_nvidia_smi.py [--load 20] [--ticks 2000]
        [--nvidia-smi PATH] [--json-out PATH]

What it does, in this order (every subprocess has a timeout; the whole run
stops starting new steps when 170 s have passed, so it ends within 3 minutes):

 1. Environment: nvidia-smi -L, --version, the driver version, python, kernel.
 2. The nvidia-smi fields it will ask for: the wanted list below, filtered by
    what `nvidia-smi --help-query-gpu` documents on this driver (an alternative
    name where the driver has only the older one, e.g.
    clocks_throttle_reasons.active); a field the query still rejects is dropped
    and the query retried.
 3. A round ("idle"): `python3 amdgpu_top_web.py --once --json`, nvidia-smi
    --query-gpu and --query-compute-apps started at the same moment; GPUs
    matched by PCI bus id (0000:xx:yy.z, lower case); one table per GPU: each
    metric, ours, nvidia-smi's, the difference and whether it is within the
    stated tolerance (exact for static values, a small band for moving ones);
    one table of processes: PID, our VRAM MiB against nvidia-smi used_memory.
 4. Our server (--listen 127.0.0.1:0 --enable-prometheus) for a few seconds:
    /api/gpus and /metrics must carry every NVIDIA GPU nvidia-smi lists.
 5. Timing: NvidiaGpuReader.sample over --ticks ticks (default 2000, at most
    15 s) and, when `import pynvml` works here, pynvml reading the same
    metrics (each call in a try/except, as a pynvml monitor is written), in a
    child process; CPU (process_time) and wall microseconds per tick.
 6. With --load SECONDS: a GPU workload (torch matmuls when `import torch` finds
    CUDA; else a ctypes libcuda.so.1 memset loop, stdlib only; else skipped,
    and the output says so), and two more rounds while it runs, so
    utilisation, power, clocks and the process list are not trivial.

Everything printed goes to stdout and, with everything parsed, to a JSON file:
--json-out, else $OUT/compare_nvidia_smi.json when $OUT is set (the device
tool copies $OUT back); the file is rewritten after every step, so a run cut
short still leaves what it had. Exit status: 0 when every compared value is
within tolerance, 1 when one is not (the output says which), 2 on a setup
failure (no nvidia-smi, our --once failed).
"""
import argparse
import json
import os
import platform
import re
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROGRAM = os.path.join(ROOT, "amdgpu_top_web.py")
BUDGET_S = 170.0
MIB = 1024 * 1024

# nvidia-smi's "not available" spellings (nounits): any "[...]" value, or these.
SMI_MISSING = ("", "N/A", "Not Supported", "Unknown Error")

# Clock-event reason bits (nvml.h nvmlClocksEventReason*), independent of our code.
REASON_BITS = ((0x1, "GpuIdle"), (0x2, "ApplicationsClocksSetting"), (0x4, "SwPowerCap"),
               (0x8, "HwSlowdown"), (0x10, "SyncBoost"), (0x20, "SwThermalSlowdown"),
               (0x40, "HwThermalSlowdown"), (0x80, "HwPowerBrakeSlowdown"),
               (0x100, "DisplayClockSetting"), (0x200, "BoardLimit"), (0x400, "Reliability"))

# Identity fields first; name last (so a comma in a name cannot shift a column).
ID_FIELDS = (("index",), ("pci.bus_id",), ("uuid",))
NAME_FIELD = ("name",)

# (label, our metrics key or identity key, nvidia-smi field and its older
#  names, kind, tolerance). kind: how to read both sides (see compare_value);
# tolerance: ("exact",), ("abs", x) or ("band", relative, absolute) = within
# max(relative * |nvidia-smi|, absolute).
COMPARED = (
    ("uuid", "uuid", ("uuid",), "text", ("exact",)),
    ("name", "name", ("name",), "text", ("exact",)),
    ("driver version", "driver_version", ("driver_version",), "text", ("exact",)),
    ("max graphics clock MHz", "sclk_max_mhz", ("clocks.max.graphics", "clocks.max.gr"), "num",
     ("exact",)),
    ("max memory clock MHz", "mclk_max_mhz", ("clocks.max.memory", "clocks.max.mem"), "num",
     ("exact",)),
    ("gpu busy %", "gpu_busy_pct", ("utilization.gpu",), "num", ("abs", 10)),
    ("memory busy %", "mem_busy_pct", ("utilization.memory",), "num", ("abs", 10)),
    ("graphics clock MHz", "sclk_mhz", ("clocks.current.graphics", "clocks.gr"), "num",
     ("band", 0.10, 30)),
    ("memory clock MHz", "mclk_mhz", ("clocks.current.memory", "clocks.mem"), "num",
     ("band", 0.10, 30)),
    ("SM clock MHz", "sm_clock_mhz", ("clocks.current.sm", "clocks.sm"), "num", ("band", 0.10, 30)),
    ("temperature C", "temp_c", ("temperature.gpu",), "num", ("abs", 3)),
    ("memory temperature C", "temp_mem_c", ("temperature.memory",), "num", ("abs", 3)),
    ("fan %", "fan_pct", ("fan.speed",), "num", ("abs", 5)),
    ("power W", "power_w", ("power.draw",), "num", ("band", 0.10, 10)),
    ("power limit W", "power_cap_w", ("enforced.power.limit",), "num", ("abs", 0.01)),
    ("VRAM total MiB", "vram_total_bytes", ("memory.total",), "mib", ("abs", 1)),
    ("VRAM used MiB", "vram_used_bytes", ("memory.used",), "mib", ("band", 0.02, 64)),
    ("VRAM reserved MiB", "vram_reserved_bytes", ("memory.reserved",), "mib", ("abs", 1)),
    ("PCIe gen", "pcie_gen", ("pcie.link.gen.current",), "num", ("exact",)),
    ("PCIe width", "pcie_width", ("pcie.link.width.current",), "num", ("exact",)),
    ("P-state", "pstate", ("pstate",), "pstate", ("exact",)),
    ("clock-event reasons", "throttle_reasons",
     ("clocks_event_reasons.active", "clocks_throttle_reasons.active"), "reasons", ("exact",)),
    ("encoder %", "enc_pct", ("utilization.encoder",), "num", ("abs", 10)),
    ("decoder %", "dec_pct", ("utilization.decoder",), "num", ("abs", 10)),
)
INFO_FIELDS = (("encoder.stats.sessionCount",),)
IDENTITY_KEYS = ("uuid", "name", "driver_version", "sclk_max_mhz", "mclk_max_mhz")
PROC_FIELDS = ("gpu_bus_id", "pid", "used_gpu_memory", "process_name")   # name last
PROC_TOLERANCE = (0.02, 4)        # our VRAM within max(2 %, 4 MiB) of used_memory

TOLERANCE_TEXT = {"exact": "exact", "abs": "+-%g", "band": "+-max(%g%%, %g)"}


# -- output ----------------------------------------------------------------------------

class Report(object):
    """stdout, a copy of every line, and the JSON record (rewritten on save())."""

    def __init__(self, json_path):
        self.t0 = time.monotonic()
        self.json_path = json_path
        self.record = {"script": "tests/device/compare_nvidia_smi.py", "lines": [],
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.failures = []

    def say(self, line=""):
        print(line, flush=True)
        self.record["lines"].append(line)

    def left(self):
        return BUDGET_S - (time.monotonic() - self.t0)

    def fail(self, what):
        self.failures.append(what)

    def save(self):
        if not self.json_path:
            return
        self.record["failures"] = self.failures
        self.record["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        tmp = self.json_path + ".tmp"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.json_path)), exist_ok=True)
            with open(tmp, "w") as fh:
                json.dump(self.record, fh, indent=1, sort_keys=True, default=str)
            os.replace(tmp, self.json_path)
        except OSError as exc:
            print("(cannot write %s: %s)" % (self.json_path, exc), flush=True)
            self.json_path = None


def run(cmd, timeout, env=None):
    """A finished command: {cmd, rc, out, err, wall_s} (rc None: could not run or timed out)."""
    t0 = time.monotonic()
    res = {"cmd": cmd, "rc": None, "out": "", "err": ""}
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=max(1.0, timeout), env=env,
                              universal_newlines=True)
        res.update(rc=proc.returncode, out=proc.stdout, err=proc.stderr)
    except subprocess.TimeoutExpired as exc:
        res["err"] = "timed out after %.0f s" % exc.timeout
    except OSError as exc:
        res["err"] = str(exc)
    res["wall_s"] = round(time.monotonic() - t0, 3)
    return res


def started(cmd, env=None):
    t = time.time()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env, universal_newlines=True)
    except OSError as exc:
        return {"cmd": cmd, "proc": None, "err": str(exc), "t_start": t}
    return {"cmd": cmd, "proc": proc, "t_start": t}


def finished(job, timeout):
    """Wait for a started() job -> the run() shape plus t_start / t_end (epoch s)."""
    res = {"cmd": job["cmd"], "rc": None, "out": "", "err": job.get("err", ""),
           "t_start": job["t_start"]}
    proc = job["proc"]
    if proc is not None:
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout))
            res.update(rc=proc.returncode, out=out, err=err)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            res.update(out=out, err=(err or "") + "\n[timed out after %.0f s]" % timeout)
    res["t_end"] = time.time()
    res["wall_s"] = round(res["t_end"] - res["t_start"], 3)
    return res


def finished_all(jobs, timeout):
    """finished() for several jobs at once, one thread each, so every t_end is
    when that command really ended."""
    results = [None] * len(jobs)

    def wait(n):
        results[n] = finished(jobs[n], timeout)
    threads = [threading.Thread(target=wait, args=(n,), name="wait-%d" % n) for n in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def read_line(stream, timeout):
    """One line from a child's pipe, or "" after timeout s (or at EOF)."""
    ready, _, _ = select.select([stream], [], [], max(0.0, timeout))
    return stream.readline() if ready else ""


def clock(epoch):
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + (".%03d" % (epoch % 1 * 1000))


def table(rep, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        rep.say("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


# -- nvidia-smi ------------------------------------------------------------------------

def normalise_pci(text):
    """'00000000:1B:00.0' (or 4-digit domain) -> '0000:1b:00.0'; None if unparsable."""
    m = re.match(r"^\s*([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-7])\s*$", text or "")
    if not m:
        return None
    return "%04x:%02x:%02x.%x" % tuple(int(g, 16) for g in m.groups())


def smi_value(text):
    text = (text or "").strip()
    if text.startswith("[") or text in SMI_MISSING:
        return None
    return text


def parse_help_fields(text):
    """Every quoted property name --help-query-gpu documents."""
    names = set()
    for line in (text or "").splitlines():
        if line.startswith('"'):
            names.update(re.findall(r'"([^"]+)"', line))
    return names


def choose_fields(known):
    """(fields to ask for, {wanted first name: field used}, [wanted but absent])."""
    wanted = list(ID_FIELDS) + [c[2] for c in COMPARED if c[2] not in (("uuid",), ("name",))] \
        + list(INFO_FIELDS) + [NAME_FIELD]
    fields, used, absent = [], {}, []
    for names in wanted:
        pick = names[0] if not known else next((n for n in names if n in known), None)
        if pick is None:
            absent.append(names[0])
        elif pick not in fields:
            fields.append(pick)
            used[names[0]] = pick
    return fields, used, absent


def query_gpus(rep, smi, fields, used):
    """nvidia-smi --query-gpu with fields; a field the tool rejects is dropped and the
    query retried (at most 5 times). -> (rows as dicts, fields used, raw run)."""
    fields = list(fields)
    for _ in range(6):
        res = run([smi, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"],
                  min(20, rep.left()))
        bad = re.findall(r'Field "([^"]+)" is not a valid field', res["out"] + res["err"])
        if res["rc"] == 0 or not bad:
            break
        rep.say("  nvidia-smi rejects field(s) %s: dropped, asking again" % ", ".join(bad))
        fields = [f for f in fields if f not in bad]
        for key in [k for k, v in used.items() if v in bad]:
            del used[key]
    return parse_csv(res["out"], fields) if res["rc"] == 0 else [], fields, res


def parse_csv(text, fields):
    rows = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",", len(fields) - 1)]
        if len(parts) == len(fields):
            rows.append(dict(zip(fields, parts)))
    return rows


def proc_fields(rep, smi):
    """--query-compute-apps names: used_gpu_memory, or the older used_memory."""
    res = run([smi, "--help-query-compute-apps"], min(10, rep.left()))
    known = parse_help_fields(res["out"])
    fields = list(PROC_FIELDS)
    if known and "used_gpu_memory" not in known and "used_memory" in known:
        fields[fields.index("used_gpu_memory")] = "used_memory"
    return fields


# -- comparing ---------------------------------------------------------------------------

def reason_names(mask):
    names = [name for bit, name in REASON_BITS if mask & bit]
    known = 0
    for bit, _ in REASON_BITS:
        known |= bit
    if mask & ~known:
        names.append("other")
    return names


def read_sides(kind, ours, smi):
    """(ours, nvidia-smi) as comparable values (None = not given)."""
    s = smi_value(smi)
    if kind == "text":
        return ours, s
    if kind == "mib":
        return (None if ours is None else ours / float(MIB)), (None if s is None else float(s))
    if kind == "pstate":
        return ours, (int(s[1:]) if s and s[:1] == "P" and s[1:].isdigit() else None)
    if kind == "reasons":
        return ours, (None if s is None else reason_names(int(s, 16)))
    return ours, (None if s is None else float(s))


def within(ours, smi, tolerance):
    """(difference text, verdict) for two read values."""
    if ours is None and smi is None:
        return "", "ok (both n/a)"
    if ours is None or smi is None:
        return "", "DIFF (one side n/a)"
    if tolerance[0] == "exact" or not isinstance(ours, (int, float)):
        return "", "ok" if ours == smi else "DIFF"
    diff = float(ours) - float(smi)
    limit = tolerance[1] if tolerance[0] == "abs" else max(tolerance[1] * abs(smi), tolerance[2])
    return "%+.2f" % diff, "ok" if abs(diff) <= limit + 1e-9 else "DIFF"


def tolerance_text(tolerance):
    kind = tolerance[0]
    if kind == "band":
        return TOLERANCE_TEXT[kind] % (tolerance[1] * 100, tolerance[2])
    return TOLERANCE_TEXT[kind] % tolerance[1:] if kind == "abs" else "exact"


def show(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return ("%.2f" % value).rstrip("0").rstrip(".")
    if isinstance(value, list):
        return ",".join(value) or "[]"
    return str(value)


def compare_gpu(rep, label, gpu, row, used):
    """One table: our figures for gpu against nvidia-smi's row."""
    out = []
    rows = []
    for name, key, names, kind, tol in COMPARED:
        field = used.get(names[0])
        if field is None:
            rows.append([name, show(gpu.get(key, gpu["metrics"].get(key))), "(no field)", "",
                         tolerance_text(tol), "skipped"])
            continue
        ours = gpu.get(key) if key in IDENTITY_KEYS else gpu["metrics"].get(key)
        a, b = read_sides(kind, ours, row.get(field))
        diff, verdict = within(a, b, tol)
        rows.append([name, show(a), show(b), diff, tolerance_text(tol), verdict])
        out.append({"metric": name, "ours_key": key, "smi_field": field, "ours": a, "smi": b,
                    "smi_raw": row.get(field), "tolerance": tol, "verdict": verdict})
        if verdict.startswith("DIFF"):
            rep.fail("%s %s %s: ours %s, nvidia-smi %s" % (label, gpu["id"], name, show(a), show(b)))
    rep.say("\n  %s (ours %s) = nvidia-smi GPU %s, %s:" % (gpu["pci"], gpu["id"],
                                                          row.get("index"), row.get("name")))
    table(rep, ["metric", "ours", "nvidia-smi", "diff", "tolerance", "verdict"], rows)
    m = gpu["metrics"]
    rep.say("  ours only: energy_j %s, fan_rpm %s, runtime %s, VRAM source %s; nvidia-smi only: "
            "encoder sessions %s" % (show(m.get("energy_j")), show(m.get("fan_rpm")),
                                     m.get("runtime_status"), m.get("vram_used_source"),
                                     smi_value(row.get("encoder.stats.sessionCount")) or "n/a"))
    return out


def compare_cuda(rep, label, ours_gpus):
    """Our cuda_driver_version against the "CUDA Version" nvidia-smi --version
    prints (no --query-gpu field has it); skipped where that line is absent."""
    smi = (rep.record.get("environment") or {}).get("smi_cuda")
    ours = sorted(set(str(g.get("cuda_driver_version")) for g in ours_gpus))
    if smi is None:
        rep.say("  CUDA driver version: ours %s, nvidia-smi --version has none: skipped" % ours)
        return
    verdict = "ok" if ours == [smi] else "DIFF"
    rep.say("  CUDA driver version: ours %s, nvidia-smi %s: %s" % (ours, smi, verdict))
    if verdict == "DIFF":
        rep.fail("%s CUDA driver version: ours %s, nvidia-smi %s" % (label, ours, smi))


def compare_procs(rep, label, ours_gpus, smi_procs):
    """PID by PID: our rows (every NVIDIA GPU) against --query-compute-apps."""
    ours = {}
    for gpu in ours_gpus:
        for p in ((gpu.get("procs") or {}).get("processes") or []):
            ours[(gpu["pci"], p["pid"])] = p
    theirs = {}
    for p in smi_procs:
        pid = smi_value(p.get("pid"))
        if pid and pid.isdigit():
            theirs[(normalise_pci(p.get("gpu_bus_id")), int(pid))] = p
    rows, out = [], []
    rel, floor = PROC_TOLERANCE
    for key in sorted(set(ours) | set(theirs), key=lambda k: (k[0] or "", k[1])):
        o, t = ours.get(key), theirs.get(key)
        o_mib = None if not o or o.get("vram_bytes") is None else o["vram_bytes"] / float(MIB)
        mem = smi_value((t or {}).get("used_gpu_memory", (t or {}).get("used_memory")))
        t_mib = float(mem) if mem else None
        kind = o.get("type") if o else None
        if o and not t and kind and "C" not in kind and "M" not in kind:
            verdict = "ok (graphics only: not a compute app)"
        elif o is None or t is None:
            verdict = "DIFF (only in %s)" % ("ours" if t is None else "nvidia-smi")
        else:
            verdict = within(o_mib, t_mib, ("band", rel, floor))[1]
        diff = "" if o_mib is None or t_mib is None else "%+.1f" % (o_mib - t_mib)
        rows.append([key[0], key[1], kind or "", (o or {}).get("name") or "",
                     smi_value((t or {}).get("process_name")) or "", show(o_mib), show(t_mib),
                     diff, verdict])
        out.append({"pci": key[0], "pid": key[1], "type": kind, "ours_mib": o_mib, "smi_mib": t_mib,
                    "ours_name": (o or {}).get("name"), "visible": (o or {}).get("visible"),
                    "verdict": verdict})
        if verdict.startswith("DIFF"):
            rep.fail("%s process %s on %s: %s" % (label, key[1], key[0], verdict))
    rep.say("\n  processes (ours: every list; nvidia-smi --query-compute-apps: compute only), "
            "VRAM tolerance +-max(%g%%, %g MiB):" % (rel * 100, floor))
    if rows:
        table(rep, ["pci", "pid", "type", "ours name", "nvidia-smi name", "ours MiB",
                    "nvidia-smi MiB", "diff", "verdict"], rows)
    else:
        rep.say("  (no process on any NVIDIA GPU, in either)")
    return out


def sample_round(rep, label, smi, fields, used, pfields):
    """Ours --once --json and both nvidia-smi queries started together; compared."""
    rep.say("\n== round: %s ==" % label)
    jobs = [started([sys.executable, PROGRAM, "--once", "--json"]),
            started([smi, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]),
            started([smi, "--query-compute-apps=" + ",".join(pfields),
                     "--format=csv,noheader,nounits"])]
    ours_run, gpu_run, app_run = finished_all(jobs, min(45, rep.left()))
    record = {"label": label, "ours_run": ours_run, "smi_gpu_run": gpu_run, "smi_apps_run": app_run}
    for name, res in (("ours --once", ours_run), ("nvidia-smi --query-gpu", gpu_run),
                      ("nvidia-smi --query-compute-apps", app_run)):
        rep.say("  %-32s %s - %s (%.2f s) rc %s" % (name, clock(res["t_start"]), clock(res["t_end"]),
                                                    res["wall_s"], res["rc"]))
    try:
        snapshot = json.loads(ours_run["out"])
    except ValueError:
        rep.say("  our --once --json gave no JSON; stderr:\n" + ours_run["err"][-2000:])
        rep.fail("%s: our --once failed" % label)
        return record
    ours_gpus = [g for g in snapshot.get("gpus", []) if g.get("vendor") == "nvidia"]
    smi_rows = parse_csv(gpu_run["out"], fields) if gpu_run["rc"] == 0 else []
    smi_by_pci = dict((normalise_pci(r.get("pci.bus_id")), r) for r in smi_rows)
    record["ours"], record["smi_rows"] = snapshot, smi_rows
    rep.say("  ours: %d NVIDIA GPU(s) %s; nvidia-smi: %d GPU(s) %s" % (
        len(ours_gpus), [g["pci"] for g in ours_gpus], len(smi_rows), sorted(smi_by_pci)))
    for pci in sorted(set(g["pci"] for g in ours_gpus) ^ set(smi_by_pci)):
        rep.fail("%s: GPU %s only in %s" % (label, pci, "nvidia-smi" if pci in smi_by_pci else "ours"))
        rep.say("  GPU %s is only in %s" % (pci, "nvidia-smi" if pci in smi_by_pci else "ours"))
    compare_cuda(rep, label, ours_gpus)
    record["gpus"] = []
    for gpu in ours_gpus:
        if gpu["pci"] in smi_by_pci:
            record["gpus"].append({"pci": gpu["pci"], "metrics": compare_gpu(
                rep, label, gpu, smi_by_pci[gpu["pci"]], used)})
    smi_procs = parse_csv(app_run["out"], pfields) if app_run["rc"] == 0 else []
    if app_run["rc"] != 0:
        rep.say("  --query-compute-apps failed (rc %s): %s" % (app_run["rc"], app_run["err"][-300:]))
    record["processes"] = compare_procs(rep, label, ours_gpus, smi_procs)
    return record


# -- steps -----------------------------------------------------------------------------

def environment(rep, smi):
    rep.say("== environment ==")
    env = {"python": sys.version.split()[0], "executable": sys.executable,
           "platform": platform.platform(), "program": PROGRAM,
           "APP_NVML_LIBRARY": os.environ.get("APP_NVML_LIBRARY")}
    listing = run([smi, "-L"], min(15, rep.left()))
    version = run([smi, "--version"], min(10, rep.left()))
    driver = run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], min(10, rep.left()))
    env.update(smi_L=listing, smi_version=version, driver=driver)
    rep.say("python %s (%s), %s" % (env["python"], sys.executable, env["platform"]))
    rep.say("nvidia-smi: %s" % smi)
    for line in (listing["out"] or listing["err"]).strip().splitlines():
        rep.say("  " + line)
    for line in version["out"].strip().splitlines():
        rep.say("  " + line)
    rep.say("  driver version: %s" % (sorted(set(driver["out"].split())) or driver["err"].strip()))
    cuda = re.search(r"CUDA Version\s*:\s*([0-9.]+)", version["out"])
    env["smi_cuda"] = cuda.group(1) if cuda else None
    rep.record["environment"] = env
    return listing["rc"] == 0


def check_server(rep, smi_pcis):
    """Our server on 127.0.0.1:0 for a few seconds: /api/gpus and /metrics."""
    rep.say("\n== our server ==")
    out = {"ok": False}
    rep.record["server"] = out
    if rep.left() < 20:
        rep.say("  skipped: not enough time left")
        return
    proc = subprocess.Popen([sys.executable, PROGRAM, "--listen", "127.0.0.1:0",
                             "--enable-prometheus"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            universal_newlines=True)
    port, lines = None, []
    try:
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            line = read_line(proc.stderr, deadline - time.monotonic())
            if not line:
                break
            lines.append(line.rstrip())
            m = re.search(r"event=listening url=http://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        out["log"] = lines[-20:]
        if port is None:
            rep.say("  did not report listening within 15 s; its log:\n    " + "\n    ".join(lines[-10:]))
            rep.fail("server: not listening")
            return
        time.sleep(3)                                    # a few sampler ticks
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        base = "http://127.0.0.1:%d" % port
        api = json.loads(opener.open(base + "/api/gpus", timeout=10).read().decode())
        metrics = opener.open(base + "/metrics", timeout=10).read().decode()
        gpus = [g for g in api.get("gpus", []) if g.get("vendor") == "nvidia"]
        api_pcis = set(g["pci"] for g in gpus)
        prom = set(re.findall(r'gpu_info\{[^}]*pci="([^"]+)"[^}]*vendor="nvidia"', metrics))
        prom |= set(re.findall(r'gpu_info\{[^}]*vendor="nvidia"[^}]*pci="([^"]+)"', metrics))
        live = [g["id"] for g in gpus if (g.get("metrics") or {}).get("runtime_status") == "active"]
        out.update(port=port, api_pcis=sorted(api_pcis), prom_pcis=sorted(prom), active=live,
                   api_gpus=gpus, metrics_lines=[l for l in metrics.splitlines()
                                                 if "nvidia" in l][:40])
        out["ok"] = api_pcis >= smi_pcis and prom >= smi_pcis and bool(gpus)
        rep.say("  port %d; /api/gpus NVIDIA: %s (active: %s); /metrics gpu_info vendor=nvidia: %s"
                % (port, sorted(api_pcis), live, sorted(prom)))
        rep.say("  every nvidia-smi GPU %s in both: %s" % (sorted(smi_pcis), "yes" if out["ok"] else "NO"))
        if not out["ok"]:
            rep.fail("server: /api/gpus or /metrics lacks an NVIDIA GPU")
    except (OSError, ValueError) as exc:
        rep.say("  request failed: %s" % exc)
        rep.fail("server: %s" % exc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timing(rep, ticks):
    rep.say("\n== timing: NvidiaGpuReader.sample vs pynvml (child process) ==")
    if rep.left() < 45:
        rep.say("  skipped: not enough time left")
        return
    res = run([sys.executable, os.path.abspath(__file__), "--timing-child", str(ticks)],
              min(60, rep.left()))
    rep.record["timing_run"] = res
    try:
        data = json.loads(res["out"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        rep.say("  the timing child failed (rc %s): %s" % (res["rc"], res["err"][-1500:]))
        return
    rep.record["timing"] = data
    rows = []
    for name in ("ours", "pynvml"):
        d = data.get(name)
        if isinstance(d, dict):
            rows.append([name, d["ticks"], "%.1f" % d["cpu_us"], "%.1f" % d["wall_us"], d["calls"]])
        else:
            rows.append([name, "-", "-", "-", d or "not run"])
    rep.say("  GPU %s; ticks capped at 15 s each" % data.get("gpu"))
    table(rep, ["reader", "ticks", "CPU us/tick", "wall us/tick", "NVML calls/tick"], rows)
    if isinstance(data.get("pynvml"), dict) and isinstance(data.get("ours"), dict):
        rep.say("  ours/pynvml CPU %.2fx, wall %.2fx" % (
            data["ours"]["cpu_us"] / data["pynvml"]["cpu_us"],
            data["ours"]["wall_us"] / data["pynvml"]["wall_us"]))


TORCH_LOAD = r"""
import sys, time, torch
secs = float(sys.argv[1])
xs = [torch.randn(4096, 4096, device="cuda:%d" % d) for d in range(torch.cuda.device_count())]
for x in xs:
    (x @ x).sum().item()
print("ready torch %s on %d GPU(s)" % (torch.__version__, len(xs)), flush=True)
end = time.time() + secs
while time.time() < end:
    for x in xs:
        y = x @ x
    torch.cuda.synchronize()
"""

# Stdlib only: the driver API through ctypes; 1 GiB on GPU 0, memset over and over.
CUDA_LOAD = r"""
import ctypes, sys, time
secs = float(sys.argv[1])
cu = ctypes.CDLL("libcuda.so.1")
def ck(rc, what):
    if rc != 0:
        print("cuda error %d in %s" % (rc, what), flush=True)
        sys.exit(3)
cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_size_t]
cu.cuMemsetD32_v2.argtypes = [ctypes.c_ulonglong, ctypes.c_uint, ctypes.c_size_t]
ck(cu.cuInit(0), "cuInit")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_ulonglong()
ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ck(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ck(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
size = 1 << 30
ck(cu.cuMemAlloc_v2(ctypes.byref(ptr), size), "cuMemAlloc_v2")
ck(cu.cuMemsetD32_v2(ptr, 0, size // 4), "cuMemsetD32_v2")
ck(cu.cuCtxSynchronize(), "cuCtxSynchronize")
print("ready libcuda memset on GPU 0 (1 GiB)", flush=True)
end, n = time.time() + secs, 0
while time.time() < end:
    ck(cu.cuMemsetD32_v2(ptr, n & 0xFFFFFFFF, size // 4), "cuMemsetD32_v2")
    n += 1
    if n % 8 == 0:
        ck(cu.cuCtxSynchronize(), "cuCtxSynchronize")
"""


def start_load(rep, seconds):
    """The workload process (stdout: 'ready ...'), or None (and why, printed)."""
    probe = run([sys.executable, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() "
                 "else 3)"], min(60, rep.left()))
    if probe["rc"] == 0:
        kind, code = "torch", TORCH_LOAD
    else:
        rep.say("  torch: %s" % ("no CUDA device" if probe["rc"] == 3 else
                                 (probe["err"].strip().splitlines() or ["not importable"])[-1]))
        kind, code = "libcuda", CUDA_LOAD
    rep.say("  starting a %s load for %d s" % (kind, seconds))
    proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            universal_newlines=True)
    line = read_line(proc.stdout, min(90, rep.left() - 30))     # "ready ...", or "" on timeout
    if not line.startswith("ready"):
        try:                                     # let it finish printing why
            rest = proc.communicate(timeout=5)[0] or ""
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[0] or ""
        said = [l.strip() for l in (line + rest).splitlines() if l.strip()]
        rep.say("  no load: %s failed: %s" % (kind, said[-1] if said else "no output, rc %s"
                                              % proc.returncode))
        return None, kind
    rep.say("  " + line.strip())
    return proc, kind


def load_rounds(rep, seconds, smi, fields, used, pfields):
    rep.say("\n== load ==")
    info = {"seconds": seconds}
    rep.record["load"] = info
    if rep.left() < seconds + 40:
        seconds = int(max(0, rep.left() - 40))
        rep.say("  shortened to %d s to stay within the time budget" % seconds)
    if seconds < 5:
        rep.say("  skipped: not enough time left")
        return []
    proc, kind = start_load(rep, seconds)
    info["kind"] = kind
    if proc is None:
        info["skipped"] = True
        rep.say("  skipped: no GPU workload could be started here (torch and libcuda both failed)")
        return []
    rounds = []
    try:
        time.sleep(min(3, seconds / 4.0))
        rounds.append(sample_round(rep, "under load (%s, early)" % kind, smi, fields, used, pfields))
        time.sleep(max(0, min(3, seconds / 4.0)))
        if proc.poll() is None and rep.left() > 30:
            rounds.append(sample_round(rep, "under load (%s, later)" % kind, smi, fields, used, pfields))
        rep.save()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return rounds


# -- the timing child ------------------------------------------------------------------

def timing_child(ticks):
    """Runs in a child: {"gpu", "ours": {...}, "pynvml": {...} or why not} as JSON."""
    sys.path.insert(0, ROOT)
    import amdgpu_top_web as atw
    config = atw.parse_config([], os.environ)
    backend = atw.NvidiaBackend.open(config)
    if backend is None or not backend.discover():
        print(json.dumps({"ours": "no NVIDIA GPU through our backend"}))
        return 0
    info = backend.discover()[0]
    reader = backend.open_reader(info)
    out = {"gpu": "%s %s" % (info.pci, info.name)}
    for n in range(20):
        reader.sample(float(n))
    out["ours"] = loop(reader.sample, ticks)
    out["ours"]["calls"] = sum(1 for c in reader._calls if c is not None)
    try:
        import pynvml as N
    except ImportError as exc:
        out["pynvml"] = "not importable (%s)" % exc
        print(json.dumps(out))
        return 0
    import ctypes
    if os.environ.get("APP_NVML_LIBRARY"):
        N.nvmlLib = ctypes.CDLL(os.environ["APP_NVML_LIBRARY"])
    N.nvmlInit()
    handle = None
    for i in range(N.nvmlDeviceGetCount()):
        h = N.nvmlDeviceGetHandleByIndex(i)
        p = N.nvmlDeviceGetPciInfo(h)
        if "%04x:%02x:%02x.0" % (p.domain, p.bus, p.device) == info.pci:
            handle = h
    if handle is None:
        out["pynvml"] = "pynvml lists no GPU at %s" % info.pci
        print(json.dumps(out))
        return 0
    calls = [lambda: N.nvmlDeviceGetUtilizationRates(handle),
             lambda: N.nvmlDeviceGetClockInfo(handle, N.NVML_CLOCK_GRAPHICS),
             lambda: N.nvmlDeviceGetClockInfo(handle, N.NVML_CLOCK_MEM),
             lambda: N.nvmlDeviceGetTemperature(handle, N.NVML_TEMPERATURE_GPU),
             lambda: N.nvmlDeviceGetFieldValues(handle, [N.NVML_FI_DEV_MEMORY_TEMP]),
             lambda: N.nvmlDeviceGetFanSpeed(handle),
             lambda: N.nvmlDeviceGetFanSpeedRPM(handle),
             lambda: N.nvmlDeviceGetPowerUsage(handle) / 1000.0,
             lambda: N.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
             lambda: N.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0,
             lambda: N.nvmlDeviceGetMemoryInfo(handle, version=N.nvmlMemory_v2),
             lambda: N.nvmlDeviceGetCurrPcieLinkGeneration(handle),
             lambda: N.nvmlDeviceGetCurrPcieLinkWidth(handle),
             lambda: N.nvmlDeviceGetPerformanceState(handle),
             lambda: N.nvmlDeviceGetCurrentClocksEventReasons(handle),
             lambda: N.nvmlDeviceGetEncoderUtilization(handle),
             lambda: N.nvmlDeviceGetDecoderUtilization(handle)]

    def tick(now):
        values = []
        for call in calls:
            try:
                values.append(call())
            except N.NVMLError:
                values.append(None)
        return values

    for n in range(20):
        tick(n)
    out["pynvml"] = loop(tick, ticks)
    out["pynvml"]["calls"] = len(calls)
    N.nvmlShutdown()
    print(json.dumps(out))
    return 0


def loop(fn, ticks, cap_s=15.0):
    c0, w0 = time.process_time(), time.perf_counter()
    n = 0
    while n < ticks and time.perf_counter() - w0 < cap_s:
        fn(1000.0 + n * 0.25)
        n += 1
    c1, w1 = time.process_time(), time.perf_counter()
    return {"ticks": n, "cpu_us": (c1 - c0) / n * 1e6, "wall_us": (w1 - w0) / n * 1e6}


# -- main ------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi to compare with")
    parser.add_argument("--load", type=int, default=0, metavar="SECONDS",
                        help="also compare under a GPU workload this long (0: no load)")
    parser.add_argument("--ticks", type=int, default=2000, help="reader ticks to time")
    parser.add_argument("--json-out", help="JSON result file (default $OUT/compare_nvidia_smi.json)")
    parser.add_argument("--timing-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timing_child:
        return timing_child(args.timing_child)
    json_out = args.json_out or (os.path.join(os.environ["OUT"], "compare_nvidia_smi.json")
                                 if os.environ.get("OUT") else None)
    rep = Report(json_out)
    smi = shutil.which(args.nvidia_smi) or args.nvidia_smi
    try:
        if not environment(rep, smi):
            rep.say("nvidia-smi -L failed: is there an NVIDIA GPU and driver here?")
            rep.fail("setup: nvidia-smi -L failed")
            return 2
        rep.save()
        rep.say("\n== fields ==")
        help_run = run([smi, "--help-query-gpu"], min(15, rep.left()))
        known = parse_help_fields(help_run["out"])
        fields, used, absent = choose_fields(known)
        rep.say("  --help-query-gpu documents %d fields%s" % (
            len(known), "" if known else " (could not read it: asking for every wanted field)"))
        renamed = ["%s -> %s" % (k, v) for k, v in sorted(used.items()) if k != v]
        rep.say("  asking for %d: %s" % (len(fields), ",".join(fields)))
        if renamed:
            rep.say("  older names used: " + ", ".join(renamed))
        if absent:
            rep.say("  not on this driver (compared as skipped): " + ", ".join(absent))
        rows, fields, res = query_gpus(rep, smi, fields, used)
        pfields = proc_fields(rep, smi)
        rep.record["fields"] = {"known": sorted(known), "asked": fields, "used": used,
                                "absent": absent, "proc_fields": pfields, "first_query": res}
        if not rows:
            rep.say("  nvidia-smi --query-gpu gave nothing (rc %s): %s" % (res["rc"], res["err"][-500:]))
            rep.fail("setup: nvidia-smi --query-gpu failed")
            return 2
        smi_pcis = set(normalise_pci(r.get("pci.bus_id")) for r in rows)
        rounds = [sample_round(rep, "idle", smi, fields, used, pfields)]
        rep.record["rounds"] = rounds
        rep.save()
        check_server(rep, smi_pcis)
        rep.save()
        timing(rep, args.ticks)
        rep.save()
        if args.load:
            rounds.extend(load_rounds(rep, args.load, smi, fields, used, pfields))
        else:
            rep.say("\n== load ==\n  not asked for (--load SECONDS)")
    finally:
        rep.say("\n== summary ==")
        if rep.failures:
            rep.say("  %d outside tolerance or failed:" % len(rep.failures))
            for line in rep.failures:
                rep.say("    " + line)
        else:
            rep.say("  every compared value within tolerance")
        rep.say("  elapsed %.1f s%s" % (time.monotonic() - rep.t0,
                                         "; JSON: %s" % json_out if json_out else ""))
        rep.save()
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
