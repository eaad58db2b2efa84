"""Intel (i915 / xe) support against the composed sysfs trees of
tests/make_intel_fixtures.py (testdata/sys/intel_*, mixed_box, proc/intel).

The trees carry kernel file names and formats with plausible-synthetic values
(see each tree's PROVENANCE); the expected values below are those written by the
generator, and the mapping is the "Intel" section of the multi-vendor contract:
sclk from the actual GT frequency, busy from the idle-residency delta, power from
the hwmon energy delta, temperatures by label, throttle reasons from the 0/1
files, xe VRAM total from tile0/physical_vram_size_bytes, VRAM used always null.

Everything runs the real program: ``--once --json`` as a subprocess, and the
server (conftest ``server`` fixture) for the two-sample values.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import PROGRAM, REPO, SHARE, SYSFS, TESTDATA, tree_listing, wait_for

import make_intel_fixtures as mif

PROC_INTEL = os.path.join(TESTDATA, "proc", "intel")
NO_NVML = "/nonexistent/libnvidia-ml.so.1"
MIB = 1 << 20
KIB = 1 << 10


def run_once(sysfs_root, proc_root=None, env=None, timeout=60):
    """python amdgpu_top_web.py --once --json -> the parsed snapshot."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    out.update({"APP_SYSFS_ROOT": sysfs_root, "APP_SHARE_ROOT": SHARE,
                "APP_NVML_LIBRARY": NO_NVML, "APP_LOG_LEVEL": "WARNING"})
    if proc_root:
        out["APP_PROC_ROOT"] = proc_root
    else:
        out["APP_PROC_ENABLE"] = "false"
    out.update(env or {})
    done = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], cwd=REPO, env=out,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return json.loads(done.stdout.decode("utf-8"))


def gpus_by_id(snapshot):
    return {gpu["id"]: gpu for gpu in snapshot["gpus"]}


def tree(name):
    return os.path.join(SYSFS, name)


def copy_tree(name, tmp_path):
    """A private copy of a fixture tree (symlinks kept as links: they are relative)."""
    dest = str(tmp_path / name)
    shutil.copytree(tree(name), dest, symlinks=True)
    return dest


def read_int(path):
    with open(path) as fh:
        return int(fh.read())


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


# -- expected values (from the generator's tables) ----------------------------------

TGL_DEV = "devices/" + mif.TGL_PCI_REL
TGL_CARD = TGL_DEV + "/drm/card0"
A770_DEV = "devices/" + mif.A770_PCI_REL
A770_CARD = A770_DEV + "/drm/card1"
BMG_DEV = "devices/" + mif.BMG_PCI_REL
BMG_HWMON = BMG_DEV + "/hwmon/" + mif.BMG_HWMON
A770_HWMON = A770_DEV + "/hwmon/" + mif.A770_HWMON

IDENTITY = {
    "intel_tgl_igpu": {
        "id": "card0", "vendor": "intel", "uuid": None, "pci": "0000:00:02.0",
        "pci_id": "8086:9a49", "revision": "01", "name": "Intel Iris Xe Graphics",
        "render_node": "/dev/dri/renderD128", "driver": "i915", "apu": True, "demo": False},
    "intel_arc_a770_i915": {
        "id": "card1", "vendor": "intel", "uuid": None, "pci": "0000:03:00.0",
        "pci_id": "8086:56a0", "revision": "08", "name": "Intel Arc A770",
        "render_node": "/dev/dri/renderD128", "driver": "i915", "apu": False, "demo": False},
    "intel_bmg_xe": {
        "id": "card1", "vendor": "intel", "uuid": None, "pci": "0000:08:00.0",
        "pci_id": "8086:e20b", "revision": "00", "name": "Intel Arc B580",
        "render_node": "/dev/dri/renderD128", "driver": "xe", "apu": False, "demo": False},
}

# --once reads twice, 0.5 s apart; the fixture's counters do not move in between:
# no idle residency accrued (busy 100 %), no energy used (0 W); no energy file: null.
METRICS = {
    "intel_tgl_igpu": {
        "sclk_mhz": mif.TGL_FREQ["act"], "gpu_busy_pct": 100.0, "power_w": None,
        "energy_j": None, "power_cap_w": None, "temp_c": None, "temp_mem_c": None,
        "fan_rpm": None, "throttle_reasons": ["pl1"], "vram_total_bytes": None,
        "vram_used_bytes": None, "pcie_speed_gts": None, "pcie_gen": None,
        "pcie_width": None, "runtime_status": "active"},
    "intel_arc_a770_i915": {
        "sclk_mhz": mif.A770_FREQ["act"], "gpu_busy_pct": 100.0, "power_w": 0.0,
        "energy_j": 123456.789, "power_cap_w": 190.0, "temp_c": 52.0, "temp_mem_c": None,
        "fan_rpm": 1180, "throttle_reasons": [], "vram_total_bytes": None,
        "vram_used_bytes": None,
        # the switch's upstream port (01:00.0), not the 2.5 GT/s x1 of the endpoint
        "pcie_speed_gts": 16.0, "pcie_gen": 4, "pcie_width": 16, "runtime_status": "active"},
    "intel_bmg_xe": {
        "sclk_mhz": mif.BMG_GT0_FREQ["act"], "gpu_busy_pct": 100.0, "power_w": 0.0,
        "energy_j": 98765.432, "power_cap_w": 190.0, "temp_c": 54.0, "temp_mem_c": 62.0,
        "fan_rpm": 1210, "throttle_reasons": ["pl1", "thermal"],
        "vram_total_bytes": mif.BMG_VRAM_BYTES, "vram_used_bytes": None,
        "pcie_speed_gts": 16.0, "pcie_gen": 4, "pcie_width": 8, "runtime_status": "active"},
}

# Not given by either Intel driver: always null.
ALWAYS_NULL = ("mem_busy_pct", "mclk_mhz", "temp_junction_c", "fan_pct", "power_fast_w",
               "power_fast_cap_w", "vddnb_mv", "vis_vram_used_bytes", "vis_vram_total_bytes",
               "gtt_used_bytes", "gtt_total_bytes", "vram_used_source")


@pytest.fixture(scope="module")
def once():
    """--once --json of each tree, run once per module (subprocess start is slow)."""
    cache = {}

    def get(name, proc=False):
        key = (name, proc)
        if key not in cache:
            cache[key] = run_once(tree(name), PROC_INTEL if proc else None)
        return cache[key]
    return get


# -- identity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_identity(once, name):
    gpus = once(name)["gpus"]
    assert len(gpus) == 1, gpus
    identity = {k: v for k, v in gpus[0].items() if k not in ("metrics", "procs")}
    nvml_only = dict.fromkeys(("driver_version", "cuda_driver_version", "sclk_max_mhz", "mclk_max_mhz"))
    apu = IDENTITY[name]["apu"]
    display = {"vendor_label": "Intel", "kind": "integrated" if apu else "discrete",
               "labels": {"temp_c": "package", "sclk_mhz": "GPU clock",
                          "runtime_status": "Runtime PM", "energy_j": "cumulative counter"},
               "memory": [] if apu else ["vram"], "process_source": "fdinfo"}
    assert identity == dict(IDENTITY[name], **dict(nvml_only, **display))   # null for Intel


def test_pci_ids_subset_has_the_intel_devices():
    """The names above come from share/hwdata/pci.ids (real upstream lines)."""
    with open(os.path.join(SHARE, "hwdata", "pci.ids"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert "8086  Intel Corporation" in lines
    for line in ("\t56a0  DG2 [Arc A770]", "\t9a49  TigerLake-LP GT2 [Iris Xe Graphics]",
                 "\te20b  Battlemage G21 [Arc B580]"):
        assert line in lines


def test_name_falls_back_to_the_pci_id(tmp_path):
    """A device id that pci.ids (the subset) lacks -> "Intel GPU 8086:xxxx"."""
    root = copy_tree("intel_tgl_igpu", tmp_path)
    uevent = os.path.join(root, TGL_DEV, "uevent")
    with open(uevent) as fh:
        text = fh.read()
    write(uevent, text.replace("PCI_ID=8086:9A49", "PCI_ID=8086:9A60"))
    write(os.path.join(root, TGL_DEV, "device"), "0x9a60\n")
    gpu = run_once(root)["gpus"][0]
    assert gpu["name"] == "Intel GPU 8086:9a60"
    assert gpu["pci_id"] == "8086:9a60"


# -- metrics of one sample ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics(once, name):
    metrics = once(name)["gpus"][0]["metrics"]
    got = {key: metrics[key] for key in METRICS[name]}
    assert got == METRICS[name]
    for key in ALWAYS_NULL:
        assert metrics[key] is None, key


def test_same_metric_keys_as_amd(once):
    """One key set for every vendor (mixed_box: i915, amdgpu and xe side by side)."""
    gpus = once("mixed_box")["gpus"]
    keys = [sorted(gpu["metrics"]) for gpu in gpus]
    assert keys[0] == keys[1] == keys[2]
    for new in ("throttle_reasons", "pstate", "enc_pct", "dec_pct", "vram_reserved_bytes",
                "energy_j", "vram_used_source"):
        assert new in keys[0]


def test_xe_reads_the_render_gt_not_the_media_gt(once):
    """tile0/gt1 (media GT: act_freq 0, no throttle flags) must not be used."""
    metrics = once("intel_bmg_xe")["gpus"][0]["metrics"]
    assert metrics["sclk_mhz"] == mif.BMG_GT0_FREQ["act"] != mif.BMG_GT1_FREQ["act"]
    assert metrics["throttle_reasons"] == ["pl1", "thermal"]


def test_i915_old_kernel_without_per_gt_files(tmp_path):
    """Before the per-GT sysfs (gt/gt0/) only the card-level legacy files exist:
    sclk from gt_act_freq_mhz, no throttle_reason_* files -> throttle_reasons null."""
    root = copy_tree("intel_tgl_igpu", tmp_path)
    shutil.rmtree(os.path.join(root, TGL_CARD, "gt"))
    write(os.path.join(root, TGL_CARD, "gt_act_freq_mhz"), "700\n")
    metrics = run_once(root)["gpus"][0]["metrics"]
    assert metrics["sclk_mhz"] == 700
    assert metrics["throttle_reasons"] is None
    assert metrics["gpu_busy_pct"] == 100.0         # card-level rc6 counter, frozen in the fixture


def test_i915_prefers_the_per_gt_frequency(tmp_path):
    root = copy_tree("intel_tgl_igpu", tmp_path)
    write(os.path.join(root, TGL_CARD, "gt_act_freq_mhz"), "1300\n")
    assert run_once(root)["gpus"][0]["metrics"]["sclk_mhz"] == mif.TGL_FREQ["act"]


def test_xe_without_physical_vram_size_bytes(tmp_path):
    """tile0/physical_vram_size_bytes is version-dependent: absent -> null."""
    root = copy_tree("intel_bmg_xe", tmp_path)
    os.remove(os.path.join(root, BMG_DEV, "tile0", "physical_vram_size_bytes"))
    metrics = run_once(root)["gpus"][0]["metrics"]
    assert metrics["vram_total_bytes"] is None
    assert metrics["vram_used_bytes"] is None


def test_xe_energy_and_cap_fall_back_to_channel_2(tmp_path):
    """energy1_input reading 0 is skipped -> energy2_input; power1_max 0 (limit
    disabled) -> power2_max."""
    root = copy_tree("intel_bmg_xe", tmp_path)
    write(os.path.join(root, BMG_HWMON, "energy1_input"), "0\n")
    write(os.path.join(root, BMG_HWMON, "power1_max"), "0\n")
    metrics = run_once(root)["gpus"][0]["metrics"]
    assert metrics["energy_j"] == 76543.211
    assert metrics["power_cap_w"] == 150.0


def test_xe_package_channel_only_like_dg2_on_xe(tmp_path):
    """DG2 under xe has only the pkg channel: no power1_* / energy1_* at all."""
    root = copy_tree("intel_bmg_xe", tmp_path)
    hwmon = os.path.join(root, BMG_HWMON)
    for name in os.listdir(hwmon):
        if name.startswith(("power1_", "energy1_")):
            os.remove(os.path.join(hwmon, name))
    metrics = run_once(root)["gpus"][0]["metrics"]
    assert metrics["energy_j"] == 76543.211
    assert metrics["power_cap_w"] == 150.0
    assert metrics["temp_c"] == 54.0 and metrics["temp_mem_c"] == 62.0


def test_i915_power_limit_disabled_gives_null_cap(tmp_path):
    root = copy_tree("intel_arc_a770_i915", tmp_path)
    write(os.path.join(root, A770_HWMON, "power1_max"), "0\n")
    assert run_once(root)["gpus"][0]["metrics"]["power_cap_w"] is None


def test_suspended_dgpu_reads_nothing_else(tmp_path):
    root = copy_tree("intel_bmg_xe", tmp_path)
    write(os.path.join(root, BMG_DEV, "power", "runtime_status"), "suspended\n")
    metrics = run_once(root)["gpus"][0]["metrics"]
    assert metrics["runtime_status"] == "suspended"
    assert [k for k, v in metrics.items() if v is not None] == ["runtime_status"]


# -- mixed_box ------------------------------------------------------------------------------


def test_mixed_box_cards_and_drivers(once):
    gpus = gpus_by_id(once("mixed_box"))
    assert sorted(gpus) == ["card0", "card1", "card2"]          # nvidia-drm card3 ignored
    summary = {gid: (g["vendor"], g["driver"], g["pci"], g["render_node"])
               for gid, g in gpus.items()}
    assert summary == {
        "card0": ("intel", "i915", "0000:00:02.0", "/dev/dri/renderD128"),
        "card1": ("amd", "amdgpu", "0000:0c:00.0", "/dev/dri/renderD129"),
        "card2": ("intel", "xe", "0000:08:00.0", "/dev/dri/renderD130"),
    }
    assert gpus["card0"]["name"] == IDENTITY["intel_tgl_igpu"]["name"]
    assert gpus["card2"]["name"] == IDENTITY["intel_bmg_xe"]["name"]


def test_mixed_box_values_match_the_single_trees(once):
    """Each card reads as it does alone (the AMD card is the real RX 6900 XT capture)."""
    mixed = gpus_by_id(once("mixed_box"))
    alone = {"card0": once("intel_tgl_igpu")["gpus"][0],
             "card1": once("rx6900xt")["gpus"][0],
             "card2": once("intel_bmg_xe")["gpus"][0]}
    for gid, single in alone.items():
        assert mixed[gid]["metrics"] == single["metrics"], gid
        for key in ("pci", "pci_id", "revision", "name", "driver", "apu"):
            assert mixed[gid][key] == single[key], (gid, key)


def test_mixed_box_tree_has_the_ignored_nvidia_card():
    """Guard for the test above: card3 really is there, bound to nvidia."""
    with open(os.path.join(tree("mixed_box"), "class", "drm", "card3", "device",
                           "uevent")) as fh:
        assert "DRIVER=nvidia\n" in fh.read()


# -- process top --------------------------------------------------------------------------

I915_ENGINES = {"render", "copy", "video", "video-enhance"}
XE_ENGINES = {"rcs", "bcs", "vcs", "vecs", "ccs"}


def rows_by_pid(gpu):
    return {row["pid"]: row for row in gpu["procs"]["processes"]}


def test_procs_of_the_intel_gpus(once):
    gpus = gpus_by_id(once("mixed_box", proc=True))
    igpu, amd, xe = (rows_by_pid(gpus[card]) for card in ("card0", "card1", "card2"))
    assert sorted(igpu) == [5100, 5101]
    assert sorted(amd) == [5400]
    assert sorted(xe) == [5200]                     # 5300 (pdev 0000:03:00.0) matches no card here

    shell = igpu[5100]
    assert shell["name"] == "gnome-shell" and shell["render_node"] == "renderD128"
    assert shell["clients"] == 1                    # fds 10 and 11 are one client (id 18)
    assert set(shell["engines_pct"]) == I915_ENGINES
    assert all(v == 0.0 for v in shell["engines_pct"].values())      # two reads, frozen counters
    assert shell["engines_ns"] == {"render": 25662044495, "copy": 0, "video": 0,
                                   "video-enhance": 0}
    assert shell["type"] is None and shell["visible"] is True and shell["kfd"] is False

    mpv = igpu[5101]
    assert mpv["engines_ns"] == {"render": 9288864723, "copy": 2035071108, "video": 0,
                                 "video-enhance": 0}

    blender = xe[5200]
    assert blender["render_node"] == "renderD130"
    assert set(blender["engines_pct"]) == XE_ENGINES
    assert blender["vram_bytes"] == 23992 * KIB          # drm-resident-vram0
    assert blender["vram_total_bytes"] == 23992 * KIB    # drm-total-vram0
    assert blender["gtt_bytes"] == 192 * KIB             # drm-*-gtt (system regions are 0)
    assert gpus["card2"]["procs"]["totals"]["vram_bytes"] == 23992 * KIB
    assert gpus["card2"]["procs"]["capabilities"]["source"] == "fdinfo"
    # VRAM used stays null in the metrics: the fdinfo sum is only in the procs totals.
    assert gpus["card2"]["metrics"]["vram_used_bytes"] is None


def test_i915_system_memory_is_reported_as_gtt(once):
    """Contract: Intel memory region drm-*-local0 / -vram0 -> vram, system -> gtt.
    The i915 sample has 125 MiB in "system" (total = resident)."""
    gpus = gpus_by_id(once("mixed_box", proc=True))
    shell = rows_by_pid(gpus["card0"])[5100]
    assert shell["gtt_bytes"] == 125 * MIB
    assert gpus["card0"]["procs"]["totals"]["gtt_bytes"] == 125 * MIB


def test_procs_of_the_a770(once):
    gpu = once("intel_arc_a770_i915", proc=True)["gpus"][0]
    rows = rows_by_pid(gpu)
    assert sorted(rows) == [5300]
    assert set(rows[5300]["engines_pct"]) == I915_ENGINES
    assert rows[5300]["engines_ns"]["render"] == 25662044495


# -- two samples: the server ---------------------------------------------------------------


class CounterWriter(threading.Thread):
    """Advances an idle-residency counter (ms) and an energy counter (uJ) in place,
    like sysfs does: the same inode, rewritten at offset 0 with fixed-width text, so
    the program's kept fd reads the new value. Every `period` s the counters are set
    from the elapsed monotonic time: idle grows at idle_rate ms per ms, energy at
    watts. max_gap records the longest pause between two writes (it bounds how stale
    a value the program can read)."""

    def __init__(self, idle_paths, energy_path, idle_rate, watts, period=0.01):
        threading.Thread.__init__(self, name="counter-writer")
        self.daemon = True
        self.idle_rate, self.watts, self.period = idle_rate, watts, period
        self.idle_fds = [os.open(p, os.O_WRONLY) for p in idle_paths]
        self.energy_fd = os.open(energy_path, os.O_WRONLY)
        self.idle0 = read_int(idle_paths[0])
        self.energy0 = read_int(energy_path)
        self.width_idle = len(str(self.idle0))
        self.width_energy = len(str(self.energy0))
        self.stop_event = threading.Event()
        self.max_gap = 0.0

    def _put(self, fd, value, width):
        text = b"%d\n" % value
        assert len(text) == width + 1, "counter changed width; pick other start values"
        os.pwrite(fd, text, 0)

    def put_energy(self, value):
        self._put(self.energy_fd, value, self.width_energy)

    def run(self):
        start = last = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            elapsed = now - start
            for fd in self.idle_fds:
                self._put(fd, self.idle0 + int(self.idle_rate * elapsed * 1000), self.width_idle)
            self.put_energy(self.energy0 + int(self.watts * elapsed * 1e6))
            self.stop_event.wait(self.period)

    def stop(self):
        self.stop_event.set()
        self.join(5.0)

    def close(self):
        for fd in self.idle_fds + [self.energy_fd]:
            os.close(fd)


SERVER_CASES = {
    # tree: (card id, idle-residency files the program may read, energy file)
    "intel_arc_a770_i915": ("card1", [A770_CARD + "/gt/gt0/rc6_residency_ms",
                                      A770_CARD + "/power/rc6_residency_ms"],
                            A770_HWMON + "/energy1_input"),
    "intel_bmg_xe": ("card1", [BMG_DEV + "/tile0/gt0/gtidle/idle_residency_ms"],
                     BMG_HWMON + "/energy1_input"),
}
IDLE_RATE = 0.4          # 40 % of wall time idle -> 60 % busy
WATTS = 42.5


def history(proc, card):
    status, body = proc.get_json("/api/gpus/%s/history" % card)
    assert status == 200, body
    return body


def samples(hist):
    """[(ts ms, busy, power)] in time order."""
    series = hist["series"]
    return list(zip(hist["ts"], series["gpu_busy_pct"]["avg"], series["power_w"]["avg"]))


@pytest.mark.parametrize("name", sorted(SERVER_CASES))
def test_server_busy_and_power_from_counter_deltas(server, tmp_path, name):
    card, idle_files, energy_file = SERVER_CASES[name]
    root = copy_tree(name, tmp_path)
    writer = CounterWriter([os.path.join(root, p) for p in idle_files],
                           os.path.join(root, energy_file), IDLE_RATE, WATTS)
    writer.start()
    try:
        proc = server(sysfs_root=root, env={"APP_NVML_LIBRARY": NO_NVML,
                                            "APP_SAMPLE_INTERVAL": "250ms"})
        proc.wait_metrics(count=1, timeout=15.0)     # discovered: /api/gpus/<id>/ exists
        wait_for(lambda: sum(1 for _, b, p in samples(history(proc, card))
                             if b is not None and p is not None) >= 8,
                 timeout=15.0, interval=0.1, message="8 samples with busy and power")
        hist = history(proc, card)
        rows = samples(hist)
        # The very first sample has no previous one: null busy and power.
        assert rows[0][1] is None and rows[0][2] is None
        checked = 0
        for (ts0, _, _), (ts1, busy, power) in zip(rows, rows[1:]):
            assert busy is not None and power is not None, rows
            dt = (ts1 - ts0) / 1000.0
            # A read value is at most max_gap (+ scheduling slack) stale at either end;
            # ts (ms) and the program's own clock differ by a few ms; busy is rounded
            # to 0.1 and the idle counter is whole ms.
            stale = writer.max_gap + 0.005
            busy_tol = 100.0 * IDLE_RATE * stale / (dt - 0.005) + 0.1 + 100.0 * 0.002 / dt
            power_tol = WATTS * stale / (dt - 0.005) + 0.01
            assert abs(busy - 100.0 * (1 - IDLE_RATE)) <= busy_tol, (busy, busy_tol, dt)
            assert abs(power - WATTS) <= power_tol, (power, power_tol, dt)
            checked += 1
        assert checked >= 7

        # Freeze the counters, then make the energy counter go backwards (driver
        # reload): that sample's power_w is null, not negative; later ones are 0 W.
        writer.stop()
        stop_ms = time.time() * 1000.0
        writer.put_energy(writer.energy0 - 1000000000)
        interval_ms = hist["step_s"] * 1000

        def settled():
            after = [r for r in samples(history(proc, card)) if r[0] > stop_ms]
            return after if len(after) >= 4 else None
        after = wait_for(settled, timeout=10.0, interval=0.1, message="4 samples after the drop")
        window = [r for r in samples(history(proc, card)) if r[0] > stop_ms - interval_ms]
        powers = [p for _, _, p in window]
        assert powers.count(None) == 1, window
        assert all(p is None or p >= 0 for p in powers), window
        assert after[-1][2] == 0.0 and after[-2][2] == 0.0, after
        assert after[-1][1] == 100.0, after          # idle counter frozen: never idle
    finally:
        writer.stop()
        writer.close()


def test_generator_reproduces_the_committed_trees(tmp_path):
    """tests/make_intel_fixtures.py is deterministic and the committed trees are its output."""
    assert mif.main(["--out", str(tmp_path)]) == 0

    listing = tree_listing
    for kind, trees in (("sys", mif.SYS_TREES), ("proc", mif.PROC_TREES)):
        for tree in trees:
            assert listing(str(tmp_path / kind / tree)) == listing(
                os.path.join(TESTDATA, kind, tree)), tree
