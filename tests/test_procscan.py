"""ProcScanner against the fixture /proc trees (testdata/proc/, made by
tests/make_proc_fixtures.py from the real fdinfo samples) and the real /proc.

The clock is injected (a callable returning monotonic ns) so engine % are exact.
"""
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading

import pytest

import amdgpu_top_web as atw
import make_proc_fixtures as mpf
from conftest import tree_listing

HERE = os.path.dirname(os.path.abspath(__file__))
PROC_DATA = os.path.join(os.path.dirname(HERE), "testdata", "proc")
A, B = mpf.GPU_A, mpf.GPU_B
KIB = 1024
NS = 10 ** 9


class Clock(object):
    """Injected monotonic clock: returns .t until a test moves it."""

    def __init__(self, t=NS):
        self.t = t

    def __call__(self):
        return self.t


def make_scanner(root, node_map, clock=None, **kw):
    """A scanner of amdgpu clients only unless drivers= says otherwise: the
    counts below were written for the AMD GPUs of the multi tree; its i915 and
    xe clients are checked by test_multi_keeps_intel_clients."""
    kw.setdefault("drivers", ("amdgpu",))
    scanner = atw.ProcScanner(root, clock_ns=clock or Clock(), **kw)
    scanner.set_node_map(node_map)
    return scanner


def tree(name):
    return os.path.join(PROC_DATA, name)


def copy_tree(tmp_path, name):
    dest = str(tmp_path / name)
    shutil.copytree(tree(name), dest, symlinks=True)
    return dest


def rows(result, pci):
    return {r["pid"]: r for r in result.by_pci[pci]["processes"]}


def user_of(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def bump_engine(path, engine, delta):
    """Rewrite one drm-engine-<engine> counter of a fixture fdinfo file."""
    with open(path) as fh:
        text = fh.read()
    pattern = r"(?m)^(drm-engine-%s:\s*)(\d+)" % re.escape(engine)
    new = re.sub(pattern, lambda m: m.group(1) + str(int(m.group(2)) + delta), text)
    assert new != text
    with open(path, "w") as fh:
        fh.write(new)


def add_fd(root, pid, fd, target, fdinfo=None):
    os.symlink(target, os.path.join(root, str(pid), "fd", str(fd)))
    if fdinfo is not None:
        with open(os.path.join(root, str(pid), "fdinfo", str(fd)), "w") as fh:
            fh.write(fdinfo)


def distinct_client_sums(root, node_map):
    """Independent oracle: parse every DRM fd's fdinfo in the tree, keep amdgpu,
    count each (pdev, client-id / pasid) once; -> {pci: (vram, gtt, clients)}."""
    seen, sums = set(), {}
    for pid in sorted(p for p in os.listdir(root) if p.isdigit()):
        fd_dir = os.path.join(root, pid, "fd")
        for fd in sorted(os.listdir(fd_dir), key=int):
            target = os.readlink(os.path.join(fd_dir, fd))
            info = os.path.join(root, pid, "fdinfo", fd)
            if not target.startswith("/dev/dri/") or not os.path.exists(info):
                continue
            with open(info) as fh:
                rec = atw.parse_fdinfo(fh.read())
            if rec.driver != "amdgpu":
                continue
            pci = rec.pdev or node_map[os.path.basename(target)]
            key = (pci, rec.client_id if rec.client_id is not None else "pasid%d" % rec.pasid)
            if key in seen:
                continue
            seen.add(key)
            vram, gtt, n = sums.get(pci, (0, 0, 0))
            sums[pci] = (vram + rec.memory["vram"], gtt + rec.memory["gtt"], n + 1)
    return sums


# -- the multi tree: who is listed, with what ------------------------------------------

# The wall clock of the multi_result scan: boot (the tree's btime) + 12 h.
WALL_NOW = mpf.BTIME + 12 * 3600


@pytest.fixture(scope="module")
def multi_result():
    return make_scanner(tree("multi"), mpf.NODE_MAP, clk_tck=mpf.CLK_TCK,
                        wall_clock=lambda: WALL_NOW).scan()


def test_multi_processes_per_gpu(multi_result):
    a, b = rows(multi_result, A), rows(multi_result, B)
    assert sorted(a) == [1200, 1300, 1301, 1400, 1500, 1600, 1700, 2100, 2400]
    assert sorted(b) == [1500, 1700, 2300]
    # never listed: non-AMD (i915, xe, radeon), NPU accel fd, no GPU fd, vanished fdinfo
    for pid in (1, 4242, 1800, 1801, 1802, 1900, 2000, 2200, 2301, 2302):
        assert pid not in a and pid not in b
    order = [r["vram_bytes"] + r["gtt_bytes"] for r in multi_result.by_pci[A]["processes"]]
    assert order == sorted(order, reverse=True)


def test_multi_row_contents(multi_result):
    a = rows(multi_result, A)
    gnome = a[1200]
    assert gnome == {
        "pid": 1200, "uid": 1000, "user": user_of(1000), "name": "gnome-shell",
        "cmd": "/usr/bin/gnome-shell", "render_node": "renderD129", "kfd": False,
        "shared": False, "vram_bytes": (2068 + 544428) * KIB, "gtt_bytes": (8192 + 22528) * KIB,
        "cpu_bytes": 0, "vram_total_bytes": 544428 * KIB, "gtt_total_bytes": 22528 * KIB,
        "engines_pct": {"gfx": None}, "engines_ns": {"gfx": 107322799 + 39456116802},
        "gpu_time_ms_per_s": None, "container": None,
        "start_time": 2200, "clients": 2,                 # dup'd fds 12/13 counted once
        "type": None, "visible": True,
        "cpu_pct": None,                                  # one scan: no CPU rate yet
        "rss_bytes": 6144 * atw.read_sysconf("SC_PAGE_SIZE", 4096),   # stat field 24
        "vram_forecast": None,
        # stat field 22 = 2200 ticks at 100 Hz = 22 s after btime 2026-12-06T08:00:00Z
        "started": "2026-12-06T08:00:22Z", "elapsed_s": 12 * 3600 - 22,
        # who (#18): the tree's default cgroup, an app scope of user 1000's manager
        "unit": "user@1000.service/app-gnome.scope", "container_name": None, "k8s": None,
        "slurm": None, "mig": None}                       # NVIDIA MIG only (#18)
    assert a[1600]["kfd"] and a[1600]["container"] == "5dace3de0735"
    assert a[1600]["cpu_bytes"] == 6200 * KIB and a[1600]["engines_pct"] == {}
    assert a[1700]["kfd"] and a[1700]["render_node"] is None and a[1700]["user"] == "root"
    assert a[1500]["container"] == "ee4b20e90ac7" and a[1500]["vram_bytes"] == 2068 * KIB
    assert rows(multi_result, B)[1500]["vram_bytes"] == 544428 * KIB      # two GPUs, one pid
    assert rows(multi_result, B)[2300]["container"] == "cf21d19260ac"
    weird = a[2100]
    assert weird["name"] == "gpu) (x y" and weird["start_time"] == 3100
    assert weird["cmd"].startswith("/opt/app/bin/gpu-app --password=*** --token ***")
    assert len(weird["cmd"]) == 512 and "hunter2" not in weird["cmd"]


def test_fdinfo_rows_carry_the_one_proc_enrichment(multi_result):
    """Every /proc field of an fdinfo row is what ProcEnricher (the one the
    NVML rows use too) gives for that PID: name, CPU and RSS, user, command
    line, container, start."""
    enricher = atw.ProcEnricher(tree("multi"), clk_tck=mpf.CLK_TCK, wall_clock=lambda: WALL_NOW)
    procfd = atw.open_dir_at(None, tree("multi"))
    try:
        checked = 0
        for pci in (A, B):
            for pid, row in rows(multi_result, pci).items():
                line = atw.read_proc_stat_at(procfd, pid)
                fields = enricher.describe(procfd, pid, line, 1.0)
                assert dict((k, row[k]) for k in fields) == fields, pid
                checked += 1
        assert checked == 12
    finally:
        os.close(procfd)


def test_proc_enricher_measures_cpu_and_forgets_unmeasured_pids():
    enricher = atw.ProcEnricher(tree("multi"), clk_tck=100, page_size=4096)
    line = atw.ProcStatLine("x", 2200, 1000, 10)
    assert enricher.measure(1200, line, 10.0) == {"name": "x", "cpu_pct": None, "rss_bytes": 40960}
    assert enricher.measure(1200, line._replace(cpu_ticks=1050), 11.0)["cpu_pct"] == 50.0
    enricher.prune()                                   # 1200 was measured: kept
    assert enricher.measure(1200, line._replace(cpu_ticks=1150), 12.0)["cpu_pct"] == 100.0
    enricher.prune()
    enricher.prune()                                   # not measured since: forgotten
    assert enricher.measure(1200, line._replace(cpu_ticks=1200), 13.0)["cpu_pct"] is None


def test_shared_clients_attributed_to_lowest_pid(multi_result):
    a = rows(multi_result, A)
    # fork: 1300 and 1301 hold client 4; SCM_RIGHTS-like: 1400 and 2400 hold client 31
    assert not a[1300]["shared"] and a[1300]["vram_bytes"] == 44564 * KIB
    assert a[1301]["shared"] and a[1301]["vram_bytes"] == 2068 * KIB and a[1301]["clients"] == 1
    assert not a[1400]["shared"] and a[1400]["vram_bytes"] == 544428 * KIB
    assert a[2400]["shared"] and a[2400]["vram_bytes"] == 2068 * KIB


def test_sum_over_processes_equals_sum_over_distinct_clients(multi_result):
    oracle = distinct_client_sums(tree("multi"), mpf.NODE_MAP)
    # and by hand from the sample oracles: 5 x issue87, 2 x mib, resident, rocmi on A
    assert oracle[A] == ((5 * 2068 + 2 * 544428 + 44564 + 76) * KIB,
                         (5 * 8192 + 2 * 22528 + 2392 + 44) * KIB, 9)
    assert oracle[B] == ((544428 + 44564) * KIB, (22528 + 2392) * KIB, 2)
    for pci in (A, B):
        gpu = multi_result.by_pci[pci]
        procs = gpu["processes"]
        vram, gtt, clients = oracle[pci]
        assert sum(p["vram_bytes"] for p in procs) == vram == gpu["totals"]["vram_bytes"]
        assert sum(p["gtt_bytes"] for p in procs) == gtt == gpu["totals"]["gtt_bytes"]
        assert sum(p["clients"] for p in procs) == clients == gpu["totals"]["clients"]
        assert gpu["totals"]["processes"] == len(procs)


def test_multi_stats_capabilities_and_json(multi_result):
    stats = multi_result.stats
    assert stats["pids_total"] == 20 and stats["pids_seen"] == 20
    assert stats["other_driver_clients"] == 3             # i915, xe, radeon (stats-less)
    assert stats["fdinfo_failed"] == 1                    # 2200's fdinfo/7 is missing
    assert stats["pids_fd_capped"] == 1                   # chrome's 1000 fds
    assert stats["cut_short"] is False and stats["full_walk"] is True
    assert stats["fd_count_mode"] == "listdir"            # plain directories, not procfs
    caps = multi_result.by_pci[A]["capabilities"]
    assert caps == {"source": "fdinfo", "vram_gtt_from_fdinfo": True,
                    "engine_time_from_fdinfo": True, "process_memory": True,
                    "process_engines": True, "engines": ["compute", "gfx"], "kfd_seen": True}
    data = json.loads(json.dumps(multi_result._asdict()))
    assert data["by_pci"][A]["totals"]["clients"] == 9


def test_an_nvidia_only_box_skips_the_fd_walk_until_a_drm_gpu_appears():
    """NVML lists its own PIDs: with NVIDIA GPUs alone the fdinfo scanner
    (every PID's fds, every 2 s: the biggest share of the idle budget) has
    nothing to find, so it lists /proc (visibility) but walks no fd; an AMD
    GPU appearing (hot-plug) starts the walk."""
    scanner = atw.ProcScanner(tree("multi"), clock_ns=Clock())
    scanner.set_gpus([atw.GpuInfo("nvidia0", "0000:18:00.0", "10de:2330", None, "H100", None,
                                  "nvidia", False, False, None, None, vendor="nvidia")])
    idle = scanner.scan()
    assert idle.stats["pids_total"] > 0 and idle.stats["pids_walked"] == 0
    assert idle.stats["gpu_fds"] == 0 and idle.visibility["visible_pids"] > 0
    scanner.set_gpus([atw.GpuInfo("card1", A, "1002:73bf", "c0", "A", "/dev/dri/renderD129",
                                  "amdgpu", False, False, None, None)])
    busy = scanner.scan()
    assert busy.stats["pids_walked"] > 0 and rows(busy, A)


def test_multi_keeps_intel_clients():
    """The default scanner keeps i915 and xe clients (the real samples' values),
    each on its own GPU by drm-pdev; the radeon node still counts as another driver."""
    scanner = atw.ProcScanner(tree("multi"), clock_ns=Clock())   # default drivers
    scanner.set_gpus([
        atw.GpuInfo("card0", mpf.INTEL, "8086:3e92", None, "iGPU", "/dev/dri/renderD128", "i915",
                    True, False, None, None, vendor="intel"),
        atw.GpuInfo("card1", A, "1002:73bf", "c0", "A", "/dev/dri/renderD129", "amdgpu",
                    False, False, None, None),
        atw.GpuInfo("card2", B, "1002:15bf", "dd", "B", "/dev/dri/renderD130", "amdgpu",
                    True, False, None, None)])
    first = scanner.scan()
    assert first.stats["other_driver_clients"] == 1            # glxinfo on the radeon node
    (glx,) = first.by_pci[mpf.INTEL]["processes"]               # rocminfo (kfd) is AMD's only
    assert glx["pid"] == 1800 and glx["name"] == "glxgears"
    assert glx["gtt_bytes"] == 125 * 1024 * 1024              # drm-resident-system 125 MiB
    assert glx["engines_ns"] == {"render": 25662044495, "copy": 0, "video": 0,
                                 "video-enhance": 0}
    assert glx["engines_pct"] == {"render": None, "copy": None, "video": None,
                                  "video-enhance": None}       # a rate needs two reads
    assert 1700 in rows(first, A) and 1700 in rows(first, B)   # kfd-only: on every AMD GPU
    (xe,) = first.by_pci["0000:03:00.0"]["processes"]
    assert xe["pid"] == 1801 and xe["vram_bytes"] == 23992 * KIB   # drm-total-vram0
    assert xe["gtt_bytes"] == 192 * KIB                         # drm-total-gtt
    for pid in (1800, 1801):
        assert pid not in rows(first, A) and pid not in rows(first, B)


def test_visibility_multi(multi_result):
    vis = multi_result.visibility
    assert vis == {"root": os.geteuid() == 0, "pid_namespace_separate": False,
                   "hidepid": False, "self_container": None, "visible_pids": 20,
                   "unreadable_pids": 0}


def test_visibility_separate_namespace(tmp_path):
    root = copy_tree(tmp_path, "multi")
    link = os.path.join(root, "4242", "ns", "pid")
    os.remove(link)
    os.symlink("pid:[4026532718]", link)                  # e.g. APP_PROC_ROOT=/host/proc
    vis = make_scanner(root, mpf.NODE_MAP).scan().visibility
    assert vis["pid_namespace_separate"] is True
    root2 = copy_tree(tmp_path / "b", "multi")
    status = os.path.join(root2, "4242", "status")
    with open(status) as fh:
        text = fh.read().replace("NSpid:\t4242\n", "NSpid:\t4242\t1\n")
    with open(status, "w") as fh:
        fh.write(text)
    assert make_scanner(root2, mpf.NODE_MAP).scan().visibility["pid_namespace_separate"] is True


def test_restricted_hidepid(tmp_path):
    result = make_scanner(tree("restricted"), mpf.NODE_MAP_SINGLE).scan()
    vis = result.visibility
    assert vis["hidepid"] == "invisible"
    assert vis["pid_namespace_separate"] is None          # pid 1 hidden: cannot tell
    assert vis["visible_pids"] == 2
    assert list(rows(result, A)) == [5001]


# -- legacy format -------------------------------------------------------------------------

def test_legacy_tree_pasid_dedupe_and_ring_pct():
    result = make_scanner(tree("legacy_5_15"), mpf.NODE_MAP_SINGLE).scan()
    a = rows(result, A)
    assert sorted(a) == [3100, 3101, 3200]
    assert a[3100]["vram_bytes"] == 17196 * KIB and a[3100]["clients"] == 1
    assert a[3100]["engines_pct"] == {"gfx": 70.59}        # given by the kernel, first sample
    assert a[3100]["gpu_time_ms_per_s"] == 705.9
    assert a[3101]["shared"] and a[3101]["vram_bytes"] == 0 and a[3101]["engines_pct"] == {}
    assert a[3200]["render_node"] == "card0"
    totals = result.by_pci[A]["totals"]
    assert totals["vram_bytes"] == 2 * 17196 * KIB and totals["clients"] == 2
    assert totals["engines_pct"] == {"gfx": 141.18} and totals["gpu_time_ms_per_s"] == 1411.8
    assert (totals["vram_bytes"], totals["gtt_bytes"], totals["clients"]) == \
        distinct_client_sums(tree("legacy_5_15"), mpf.NODE_MAP_SINGLE)[A]


# -- engine % over two reads ------------------------------------------------------------------

def test_engine_pct_exact_between_two_scans(tmp_path):
    root = copy_tree(tmp_path, "multi")
    clock = Clock(NS)
    scanner = make_scanner(root, mpf.NODE_MAP, clock)
    first = rows(scanner.scan(), A)[2100]
    assert first["engines_pct"] == {"gfx": None} and first["gpu_time_ms_per_s"] is None
    bump_engine(os.path.join(root, "2100", "fdinfo", "9"), "gfx", 250000000)
    clock.t = 2 * NS
    result = scanner.scan()
    row = rows(result, A)[2100]
    assert row["engines_pct"] == {"gfx": 25.0} and row["gpu_time_ms_per_s"] == 250.0
    totals = result.by_pci[A]["totals"]
    assert totals["engines_pct"] == {"gfx": 25.0, "compute": 0.0}
    assert totals["gpu_time_ms_per_s"] == 250.0
    assert rows(result, A)[1200]["engines_pct"] == {"gfx": 0.0}   # unchanged counters


def test_engine_pct_via_refresh_reads_only_the_watchlist(tmp_path):
    root = copy_tree(tmp_path, "multi")
    clock = Clock(NS)
    scanner = make_scanner(root, mpf.NODE_MAP, clock)
    scanner.scan()
    bump_engine(os.path.join(root, "1300", "fdinfo", "20"), "compute", 500000000)
    bump_engine(os.path.join(root, "1301", "fdinfo", "20"), "compute", 500000000)
    clock.t = 3 * NS                                          # 2 s later
    result = scanner.refresh()
    assert result.stats["kind"] == "refresh" and result.stats["pids_walked"] == 0
    assert result.stats["pids_seen"] == 11                    # the watchlist, nothing else:
    # the 9 GPU users of A, 2300 (B only) and 2200 (kept: its fdinfo read failed)
    a = rows(result, A)
    assert a[1300]["engines_pct"] == {"compute": 25.0}         # 0.5 s busy over 2 s
    assert a[1301]["engines_pct"] == {"gfx": 0.0}              # its share of client 4 is 1300's
    assert result.by_pci[A]["totals"]["engines_pct"]["compute"] == 25.0


def test_counter_backwards_is_null_then_measured_from_max(tmp_path):
    root = copy_tree(tmp_path, "multi")
    clock = Clock(NS)
    scanner = make_scanner(root, mpf.NODE_MAP, clock)
    path = os.path.join(root, "2100", "fdinfo", "9")
    scanner.scan()
    bump_engine(path, "gfx", -1000)
    clock.t = 2 * NS
    row = rows(scanner.refresh(), A)[2100]
    assert row["engines_pct"] == {"gfx": None} and row["gpu_time_ms_per_s"] is None
    bump_engine(path, "gfx", 1000 + 100000000)                 # 0.1 s above the old max
    clock.t = 3 * NS
    row = rows(scanner.refresh(), A)[2100]
    assert row["engines_pct"] == {"gfx": 10.0} and row["gpu_time_ms_per_s"] == 100.0


def test_reused_pid_gets_no_bogus_delta(tmp_path):
    root = copy_tree(tmp_path, "multi")
    clock = Clock(NS)
    scanner = make_scanner(root, mpf.NODE_MAP, clock)
    scanner.scan()
    with open(os.path.join(root, "2100", "stat"), "w") as fh:      # same pid, new process
        fh.write(mpf.stat_line(2100, "newproc", 1, 987654))
    bump_engine(os.path.join(root, "2100", "fdinfo", "9"), "gfx", 700000000)
    clock.t = 2 * NS
    row = rows(scanner.scan(), A)[2100]
    assert row["start_time"] == 987654 and row["name"] == "newproc"
    assert row["engines_pct"] == {"gfx": None} and row["gpu_time_ms_per_s"] is None
    bump_engine(os.path.join(root, "2100", "fdinfo", "9"), "gfx", 250000000)
    clock.t = 3 * NS
    assert rows(scanner.scan(), A)[2100]["engines_pct"] == {"gfx": 25.0}


def test_refresh_drops_a_reused_or_vanished_pid(tmp_path):
    root = copy_tree(tmp_path, "multi")
    scanner = make_scanner(root, mpf.NODE_MAP)
    scanner.scan()
    with open(os.path.join(root, "2100", "stat"), "w") as fh:
        fh.write(mpf.stat_line(2100, "other", 1, 55))
    shutil.rmtree(os.path.join(root, "1600"))
    result = scanner.refresh()
    assert 2100 not in rows(result, A) and 1600 not in rows(result, A)
    assert result.stats["pids_vanished"] == 2


# -- budgets ---------------------------------------------------------------------------------------

def test_budget_zero_is_cut_short_and_rotation_covers_everything():
    scanner = make_scanner(tree("multi"), mpf.NODE_MAP, budget_s=0)
    first = scanner.scan()
    assert first.stats["cut_short"] is True and first.stats["pids_seen"] == 1
    for _ in range(25):
        last = scanner.scan()
    assert last.stats["cut_short"] is True
    assert sorted(rows(last, A)) == [1200, 1300, 1301, 1400, 1500, 1600, 1700, 2100, 2400]


def test_max_pids_cut_short():
    result = make_scanner(tree("multi"), mpf.NODE_MAP, max_pids=1).scan()
    assert result.stats["cut_short"] is True and result.stats["pids_seen"] == 1
    full = make_scanner(tree("multi"), mpf.NODE_MAP, max_pids=20).scan()
    assert full.stats["cut_short"] is False


# -- the skip cache ------------------------------------------------------------------------------

def test_skip_cache_on_a_plain_tree_uses_listing_counts(tmp_path):
    root = copy_tree(tmp_path, "multi")
    scanner = make_scanner(root, mpf.NODE_MAP, full_walk_every=4)
    scanner.scan()
    assert scanner.fd_count_mode == "listdir"
    steady = scanner.scan().stats
    # skipped: 1, 4242, 1800, 1801, 1802 (non-AMD only), 1900, 2301, 2302;
    # walked: the 11 watchlist PIDs (2200 too: its fdinfo failed) and chrome's next window
    assert steady["pids_skipped_unchanged"] == 8 and steady["pids_walked"] == 12
    assert scanner.known_non_gpu(2301) and not scanner.known_non_gpu(1200)
    body = mpf.retarget(mpf.sample_body(mpf.ISSUE87), pdev=A, client_id=80)
    add_fd(root, 2301, 9, "/dev/dri/renderD129", body)           # starts using the GPU
    add_fd(root, 2302, 9, "socket:[777]")                        # one more ordinary fd
    third = scanner.scan()
    assert 2301 in rows(third, A) and not third.stats["full_walk"]
    assert third.stats["pids_skipped_unchanged"] == 6
    assert scanner.known_non_gpu(2302)
    fourth = scanner.scan()
    assert fourth.stats["pids_skipped_unchanged"] == 7
    fifth = scanner.scan()                                       # every 4th scan walks all
    assert fifth.stats["full_walk"] and fifth.stats["pids_skipped_unchanged"] == 0


def test_skip_cache_notices_a_new_process_with_the_same_pid_and_fd_count(tmp_path):
    root = copy_tree(tmp_path, "multi")
    scanner = make_scanner(root, mpf.NODE_MAP, full_walk_every=100)
    scanner.scan()
    with open(os.path.join(root, "2302", "stat"), "w") as fh:
        fh.write(mpf.stat_line(2302, "reborn", 1, 424242))
    stats = scanner.scan().stats
    assert stats["pids_skipped_unchanged"] == 7                  # 2302 walked again


def test_procfs_mode_reads_stat_only_for_gpu_users(monkeypatch):
    """On procfs a non-GPU PID is identified by its fd dir inode and its stat
    is not read; GPU users still get comm and start time. Forced here on the
    fixture tree (plain directories would otherwise select the listing mode)."""
    def as_procfs(walker, procfd):
        walker._procfs, walker.st_size = True, False
    monkeypatch.setattr(atw._PidWalker, "_calibrate", as_procfs)
    scanner = make_scanner(tree("multi"), mpf.NODE_MAP)
    reads = []
    real_read = scanner._walker.read_start
    scanner._walker.read_start = lambda procfd, pid: reads.append(pid) or real_read(procfd, pid)
    result = scanner.scan()
    a = rows(result, A)
    assert sorted(a) == [1200, 1300, 1301, 1400, 1500, 1600, 1700, 2100, 2400]
    assert a[2100]["name"] == "gpu) (x y" and a[2100]["start_time"] == 3100
    assert 2000 not in reads and 2301 not in reads and 1200 in reads
    assert scanner.known_non_gpu(2000)
    reads[:] = []
    steady = scanner.scan().stats
    assert steady["pids_skipped_unchanged"] == 8 and 2301 not in reads


def test_fd_window_rotates_through_a_process_with_many_fds(tmp_path):
    root = str(tmp_path / "proc")
    fds = {fd: ("socket:[%d]" % (9000 + fd), None) for fd in range(3, 200)}
    fds[150] = ("/dev/dri/renderD129",
                mpf.retarget(mpf.sample_body(mpf.ISSUE87), pdev=A, client_id=90))
    mpf.build_tree(root, [mpf.proc_spec(6000, "busy", ["busy"], fds=fds),
                          mpf.proc_spec(6001, "me", ["me"])], 6001, "test tree\n")
    scanner = make_scanner(root, mpf.NODE_MAP, max_fds_per_pid=64, full_walk_every=100)
    seen = []
    for _ in range(5):
        result = scanner.scan()
        seen.append(6000 in rows(result, A))
        assert result.stats["pids_fd_capped"] == 1
    assert seen == [False, False, True, True, True]             # fds 0-63, 64-127, 128-191


# -- vanishing PIDs and fds ------------------------------------------------------------------------

def test_vanished_pid_and_missing_fdinfo_are_counted_not_fatal(tmp_path):
    root = copy_tree(tmp_path, "multi")
    os.symlink("7777-gone", os.path.join(root, "7777"))          # listed, then gone
    scanner = make_scanner(root, mpf.NODE_MAP)
    result = scanner.scan()
    assert result.stats["pids_vanished"] == 1 and result.stats["fdinfo_failed"] == 1
    assert 2200 not in rows(result, A)
    shutil.rmtree(os.path.join(root, "1400"))                    # exits between scans
    result = scanner.scan()
    a = rows(result, A)
    assert 1400 not in a and not a[2400]["shared"]               # client 31 is 2400's now
    assert a[2400]["vram_bytes"] == (544428 + 2068) * KIB
    assert result.by_pci[A]["totals"]["vram_bytes"] == sum(r["vram_bytes"] for r in a.values())


def test_pdev_missing_maps_by_node_and_unknown_node_is_unmapped(tmp_path):
    root = str(tmp_path / "proc")
    body = re.sub(r"(?m)^drm-pdev:.*\n", "", mpf.sample_body(mpf.ISSUE87))
    mpf.build_tree(root, [
        mpf.proc_spec(6100, "nopdev", ["nopdev"], fds={4: ("/dev/dri/renderD129", body)}),
        mpf.proc_spec(6101, "unknown", ["unknown"], fds={4: ("/dev/dri/renderD140", body)}),
    ], 6100, "test tree\n")
    result = make_scanner(root, mpf.NODE_MAP).scan()
    assert list(rows(result, A)) == [6100]
    assert result.stats["unmapped_clients"] == 1


def test_container_remapped_node_found_by_stat(tmp_path):
    devs = tmp_path / "devs"
    devs.mkdir()
    try:
        os.mknod(str(devs / "renderD200"), 0o600 | 0o020000, os.makedev(226, 200))
        os.mknod(str(devs / "card9"), 0o600 | 0o020000, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip("cannot create device nodes here: %s" % exc)
    body = re.sub(r"(?m)^drm-pdev:.*\n", "", mpf.sample_body(mpf.ISSUE87))
    root = str(tmp_path / "proc")
    mpf.build_tree(root, [
        mpf.proc_spec(6200, "boxed", ["boxed"], fds={4: (str(devs / "renderD200"), body)}),
        mpf.proc_spec(6201, "notgpu", ["notgpu"], fds={4: (str(devs / "card9"), body)}),
    ], 6200, "test tree\n")
    result = make_scanner(root, {"renderD200": A}).scan()
    a = rows(result, A)
    assert list(a) == [6200] and a[6200]["render_node"] == "renderD200"


def test_missing_proc_root_gives_empty_tables():
    result = make_scanner("/nonexistent/proc", mpf.NODE_MAP).scan()
    assert result.by_pci[A]["processes"] == [] and result.by_pci[A]["totals"]["clients"] == 0


def test_generator_reproduces_the_committed_trees(tmp_path):
    out = str(tmp_path / "proc")
    assert mpf.main(["make_proc_fixtures.py", out]) == 0

    listing = tree_listing

    # proc/intel is tests/make_intel_fixtures.py's (checked in tests/test_intel.py)
    committed = {k: v for k, v in listing(PROC_DATA).items() if k.split(os.sep)[0] != "intel"}
    assert listing(out) == committed


# -- the real /proc of this machine ---------------------------------------------------------

CHILD = r"""
import os, sys
fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    fds.append(os.open(os.devnull, os.O_RDONLY))
    sys.stdout.write("ok\n"); sys.stdout.flush()
"""


def kernel_at_least(major, minor):
    numbers = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return numbers is not None and (int(numbers.group(1)), int(numbers.group(2))) >= (major, minor)


@pytest.fixture
def fd_child():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        yield child
    finally:
        child.kill()
        child.wait()


def walked_pids(scanner):
    """Record which PIDs the next scans fully walk (readlink every fd); a spy
    on the walker's internal per-PID walk."""
    walker = scanner._walker
    walked, real_walk = [], walker._walk

    def spy(procfd, pid, *args):
        walked.append(pid)
        return real_walk(procfd, pid, *args)
    walker._walk = spy
    return walked


@pytest.mark.parametrize("mode", ["auto", "listdir"])
def test_real_proc_non_gpu_child_is_skipped_while_unchanged(fd_child, mode):
    scanner = atw.ProcScanner("/proc", budget_s=5.0, full_walk_every=1000, fd_count=mode)
    first = scanner.scan()
    assert scanner.known_non_gpu(fd_child.pid)
    if mode == "auto" and kernel_at_least(6, 2):
        # one stat() per PID where our own fd directory's st_size matches its listing:
        # a thread blocked in accept() (another test's server left in this process)
        # holds a reserved fd that st_size counts and a listing does not: then listdir
        size, count = os.stat("/proc/self/fd").st_size, len(os.listdir("/proc/self/fd"))
        trusted = count - 1 <= size <= count
        assert scanner.fd_count_mode == ("st_size" if trusted else "listdir")
    elif mode == "listdir":
        assert scanner.fd_count_mode == "listdir"
    assert first.stats["pids_seen"] >= 2
    walked = walked_pids(scanner)
    second = scanner.scan()
    assert fd_child.pid not in walked
    assert second.stats["pids_skipped_unchanged"] >= 1
    fd_child.stdin.write(b"open one more\n")
    fd_child.stdin.flush()
    assert fd_child.stdout.readline() == b"ok\n"
    scanner.scan()
    assert fd_child.pid in walked                              # fd count changed: walked again
    assert scanner.known_non_gpu(fd_child.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_real_proc_unprivileged_counts_unreadable_pids():
    paths = [os.path.dirname(os.path.abspath(atw.__file__))]
    engine = sys.modules.get("proctop")                       # the helper's shim, if used
    if engine is not None:
        paths.append(os.path.dirname(os.path.abspath(engine.__file__)))
    code = ("import json, amdgpu_top_web as a; r = a.ProcScanner('/proc', budget_s=5).scan(); "
            "print(json.dumps({'v': r.visibility, 's': r.stats}))")

    def drop():
        os.setgid(65534)
        os.setuid(65534)
    out = None
    for python in (sys.executable, "/usr/bin/python3"):       # pyenv under /root is 0700
        try:
            out = subprocess.check_output([python, "-c", code], preexec_fn=drop, cwd="/",
                                          env={"PYTHONPATH": os.pathsep.join(paths)})
            break
        except (PermissionError, FileNotFoundError):
            continue
    if out is None:
        pytest.skip("no Python interpreter the nobody user may run")
    data = json.loads(out.decode())
    assert data["v"]["root"] is False
    assert data["v"]["unreadable_pids"] >= 1 and data["s"]["pids_unreadable"] >= 1


# -- KFD (ROCm): which AMD GPU a /dev/kfd holder is on ---------------------------------------

def run_guarded(fn, timeout=30):
    """fn() in a daemon thread: fails, rather than hangs, if it blocks (the
    fixture's sdma_<gpu_id> and cu_occupancy are FIFOs: opening one blocks)."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the scan blocked: it opened sdma_* or cu_occupancy"
    return out["value"]


def kfd_scan(tmp_path, procs, **kw):
    sysfs = str(tmp_path / "sys")
    mpf.write_kfd_tree(sysfs, procs, **kw)
    scanner = make_scanner(tree("multi"), mpf.NODE_MAP, sysfs_root=sysfs)
    first = run_guarded(scanner.scan)
    return first, run_guarded(scanner.scan)            # a second scan: the topology is kept


def test_kfd_process_is_listed_where_it_holds_vram(tmp_path):
    plain = make_scanner(tree("multi"), mpf.NODE_MAP).scan()
    assert 1700 in rows(plain, A) and 1700 in rows(plain, B)          # today: every AMD GPU
    for result in kfd_scan(tmp_path, {1700: {mpf.KFD_GPU_A: 2 << 30, mpf.KFD_GPU_B: 0},
                                      1600: {mpf.KFD_GPU_A: 0, mpf.KFD_GPU_B: 512 << 20}}):
        a, b = rows(result, A), rows(result, B)
        assert a[1700]["vram_bytes"] == 2 << 30 and a[1700]["kfd"] is True   # ROCm flag kept
        assert 1700 not in b
        # 1600 also has a DRM client on A: its fdinfo numbers stay there; its KFD VRAM on B
        # (where it has no DRM client) lists it on B too.
        assert a[1600]["vram_bytes"] == rows(plain, A)[1600]["vram_bytes"]
        assert b[1600]["vram_bytes"] == 512 << 20 and b[1600]["kfd"] is True
        assert result.by_pci[B]["totals"]["vram_bytes"] == sum(
            r["vram_bytes"] for r in result.by_pci[B]["processes"])


@pytest.mark.parametrize("procs", [
    {},                                                     # no proc/<pid> directory
    {1700: {mpf.KFD_GPU_A: 0, mpf.KFD_GPU_B: 0}},           # files, but no VRAM anywhere
    {1700: {4242: 1 << 30}},                                # a gpu_id of no node
])
def test_kfd_unknown_keeps_every_amd_gpu(tmp_path, procs):
    for result in kfd_scan(tmp_path, procs):
        a, b = rows(result, A), rows(result, B)
        assert a[1700]["vram_bytes"] == 0 and b[1700]["vram_bytes"] == 0
        assert a[1700]["kfd"] and b[1700]["kfd"]


def test_kfd_not_trusted_from_another_pid_namespace(tmp_path):
    """KFD names proc/<pid> by host PID: from a separate PID namespace the same
    number may be another process, so the per-process files are not used."""
    root = copy_tree(tmp_path, "multi")
    os.remove(os.path.join(root, "1", "ns", "pid"))
    os.symlink("pid:[4026532999]", os.path.join(root, "1", "ns", "pid"))
    sysfs = str(tmp_path / "sys")
    mpf.write_kfd_tree(sysfs, {1700: {mpf.KFD_GPU_A: 2 << 30}})
    result = run_guarded(make_scanner(root, mpf.NODE_MAP, sysfs_root=sysfs).scan)
    assert result.visibility["pid_namespace_separate"] is True
    assert 1700 in rows(result, A) and 1700 in rows(result, B)
    assert rows(result, A)[1700]["vram_bytes"] == 0


def test_kfd_gpus_found_after_a_scan_are_used_by_the_next_refresh(tmp_path):
    """A scan before discovery knows no GPU; the refresh after it maps KFD's
    gpu_ids at once instead of listing the ROCm process on every GPU until the
    next scan."""
    sysfs = str(tmp_path / "sys")
    mpf.write_kfd_tree(sysfs, {1700: {mpf.KFD_GPU_A: 2 << 30, mpf.KFD_GPU_B: 0}})
    scanner = make_scanner(tree("multi"), {}, sysfs_root=sysfs)
    first = run_guarded(scanner.scan)        # fdinfo's drm-pdev still places DRM clients
    assert all(1700 not in rows(first, pci) for pci in first.by_pci)
    scanner.set_node_map(mpf.NODE_MAP)
    result = run_guarded(scanner.refresh)
    assert rows(result, A)[1700]["vram_bytes"] == 2 << 30 and 1700 not in rows(result, B)
