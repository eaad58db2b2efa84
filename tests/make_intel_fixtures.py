#!/usr/bin/env python3
"""Regenerate the Intel (i915 / xe) fixture trees under testdata/.

    python3 tests/make_intel_fixtures.py            # (re)write the trees below
    python3 tests/make_intel_fixtures.py --out DIR  # write them under DIR/sys, DIR/proc

Writes (each deleted and recreated; nothing else is touched):

    sys/intel_tgl_igpu        i915, Tiger Lake-LP iGPU at 0000:00:02.0 (card0, renderD128)
    sys/intel_arc_a770_i915   i915, Arc A770 (DG2) at 0000:03:00.0 behind its own Intel
                              PCIe switch (card1, renderD128)
    sys/intel_bmg_xe          xe, Arc B580 (Battlemage) at 0000:08:00.0 behind its own
                              Intel PCIe switch (card1, renderD128)
    sys/mixed_box             card0 = the TGL iGPU, card1 = the RX 6900 XT of
                              make_fixtures.py, card2 = the B580 on xe, card3 = an
                              nvidia-drm card that the sysfs backends must ignore
    proc/intel                an APP_PROC_ROOT with i915 and xe DRM clients (real
                              fdinfo samples, drm-pdev / drm-client-id edited only)

No real capture of an Intel sysfs tree exists in the sample bundles, so unlike
make_fixtures.py the Intel *values* here are plausible-synthetic. What is not
invented is the set of files and their text format: every file name and every
printf format comes from the kernel's ABI documents and driver sources, cited per
file in each tree's PROVENANCE (SOURCES below). PCI identities and the switch
topology come from public lspci captures (also cited). The RX 6900 XT files in
mixed_box are the real LACT capture, laid out by make_fixtures.add_card().

Deterministic (no clock, no randomness); stdlib only, Python 3.8+. The module is
importable: tests use the *_FILES tables and the VALUES constants.
"""

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import make_fixtures as mf          # noqa: E402  (AMD layout helpers, rx6900xt sample)
import make_proc_fixtures as mpf    # noqa: E402  (proc tree writer, fdinfo samples)

DEFAULT_OUT = os.path.join(REPO, "testdata")
SYS_TREES = ("intel_tgl_igpu", "intel_arc_a770_i915", "intel_bmg_xe", "mixed_box")
PROC_TREES = ("intel",)

# -- sources (cited in PROVENANCE; upstream paths, commits as read) -------------

LINUX = "torvalds/linux"
SOURCES = {
    "pci-sysfs": "%s drivers/pci/pci-sysfs.c: vendor/device/subsystem_vendor/"
                 "subsystem_device \"0x%%04x\\n\", class \"0x%%06x\\n\", revision "
                 "\"0x%%02x\\n\", boot_vga/enable \"%%u\\n\", current_/max_link_speed "
                 "\"%%s\\n\" of pci_speed_string() (drivers/pci/probe.c: \"2.5 GT/s "
                 "PCIe\" ... \"16.0 GT/s PCIe\", \"Unknown\"), current_/max_link_width "
                 "\"%%u\\n\"" % LINUX,
    "pci-uevent": "%s drivers/pci/pci-driver.c pci_uevent (PCI_CLASS=%%04X, PCI_ID=%%04X:%%04X, "
                  "PCI_SUBSYS_ID=%%04X:%%04X, PCI_SLOT_NAME, MODALIAS="
                  "pci:v%%08Xd%%08Xsv%%08Xsd%%08Xbc%%02Xsc%%02Xi%%02X) after DRIVER= from drivers/base/core.c dev_uevent; "
                  "same shape as the real amdgpu captures' device/uevent" % LINUX,
    "rcie-link": "%s drivers/pci/access.c pcie_cap_has_lnkctl() excludes PCI_EXP_TYPE_RC_END, "
                 "so an integrated endpoint's Link Status reads as 0: pci_speed_string("
                 "PCI_SPEED_UNKNOWN) = \"Unknown\", width 0 (derived from the source, not "
                 "captured)" % LINUX,
    "runtime-pm": "%s drivers/base/power/sysfs.c runtime_status_show: \"active\", "
                  "\"suspended\", ..., \"unsupported\" when runtime PM is disabled (as on "
                  "a DRM minor device)" % LINUX,
    "drm-minor": "%s drivers/gpu/drm/drm_sysfs.c (minor devices, DEVTYPE=drm_minor, devnode "
                 "dri/<name>) and drivers/base/core.c (dev \"%%u:%%u\\n\", uevent MAJOR/MINOR/"
                 "DEVNAME); DRM major 226, render minors from 128" % LINUX,
    "drm-connector": "%s drivers/gpu/drm/drm_sysfs.c status_show/enabled_show "
                     "(\"connected\\n\", \"enabled\\n\"), as in make_fixtures.py" % LINUX,
    "i915-gt-pm": "%s drivers/gpu/drm/i915/gt/intel_gt_sysfs_pm.c (read at Kingxukai/linux "
                  "0291023e, a mainline mirror): card-level gt_{act,cur,boost,max,min,RP0,RP1,RPn}"
                  "_freq_mhz and per-GT rps_* (\"%%u\\n\"), rc6_enable (\"%%x\\n\") and "
                  "rc6_residency_ms (\"%%u\\n\"; card-level copy merged into the power/ group), "
                  "punit_req_freq_mhz, throttle_reason_{status,pl1,pl2,pl4,thermal,prochot,ratl,"
                  "vr_thermalert,vr_tdc} (\"%%u\\n\" of a bool), rps_{up,down}_threshold_pct "
                  "(without GuC SLPC), slpc_ignore_eff_freq / slpc_power_profile (\"[%%s]    "
                  "%%s\\n\") with SLPC, media_freq_factor(.scale \"0.00390625\"), "
                  "media_RP0/RPn_freq_mhz when HAS_MEDIA_RATIO_MODE (DG2), .defaults/"
                  "rps_{min,max}_freq_mhz and rps_{up,down}_threshold_pct" % LINUX,
    "i915-gt-sysfs": "%s drivers/gpu/drm/i915/gt/intel_gt_sysfs.c: gt/gt<N>/id (\"%%u\\n\"), "
                     "gt/gt<N>/.defaults/" % LINUX,
    "i915-hwmon": "%s Documentation/ABI/testing/sysfs-driver-intel-i915-hwmon (in0_input mV, "
                  "power1_max / power1_rated_max uW, power1_max_interval ms, energy1_input uJ; "
                  "fan1_input RPM and temp1_input m°C \"KernelVersion 6.12\" entries as in the "
                  "Kingxukai/linux 0291023e mirror) and drivers/gpu/drm/i915/i915_hwmon.c: name "
                  "\"i915\", dGPU only, DG2 registers temp/in/power/energy/fan and NO "
                  "power1_crit/curr1_crit (hwm_pcode_read_i1 returns -ENXIO on DG1/DG2), no "
                  "labels, no i915_gt0 device (energy_status_tile invalid on DG2)" % LINUX,
    "hwmon-core": "%s drivers/hwmon/hwmon.c: name \"%%s\\n\", numeric attributes as a decimal "
                  "integer and \"\\n\" (hwmon_attr_show), *_label \"%%s\\n\"" % LINUX,
    "xe-freq": "%s drivers/gpu/drm/xe/xe_gt_freq.c @ a7bee4e7: device/tile#/gt#/freq0/"
               "{act,cur,rp0,rpa,rpe,rpn,min,max}_freq, \"%%d\\n\" MHz" % LINUX,
    "xe-throttle": "%s drivers/gpu/drm/xe/xe_gt_throttle.c @ 9924db4a: freq0/throttle/"
                   "{status,reason_pl1,reason_pl2,reason_pl4,reason_thermal,reason_prochot,"
                   "reason_ratl,reason_vr_thermalert,reason_vr_tdc}, \"%%u\\n\" of a bool" % LINUX,
    "xe-idle": "%s drivers/gpu/drm/xe/xe_gt_idle.c @ a1ff5a7d: gt#/gtidle/name (\"gt%%d-rc\", "
               "media GT \"gt%%d-mc\"), idle_status (\"gt-c0\"/\"gt-c6\"), idle_residency_ms "
               "(\"%%llu\\n\")" % LINUX,
    "xe-tile": "xe_tile_sysfs.c as in early xe (rodrigovivi/linux 839a9277): tile#/"
               "physical_vram_size_bytes \"%%llu\\n\" on dGPUs; ABSENT from %s @ f057b57 — "
               "optional, version-dependent" % LINUX,
    "xe-hwmon": "%s Documentation/ABI/testing/sysfs-driver-intel-xe-hwmon (power1_* card, "
                "power2_* package, energy1/2_input uJ, temp2_input pkg / temp3_input vram m°C, "
                "fan1..3_input RPM, power1/2_cap and *_cap_interval) and drivers/gpu/drm/xe/"
                "xe_hwmon.c (ead971ee; Kingxukai/linux 9b44fff6 mirror for fans): name \"xe\", "
                "labels \"card\"/\"pkg\" (power, energy) and \"pkg\"/\"vram\" (temp); on "
                "Battlemage (has_mbx_power_limits) power*_rated_max is hidden and there is no "
                "in*_input (GT_PERF_STATUS is DG2-only)" % LINUX,
    "topo-dg2": "Syllo/nvtop pull request #344 (lspci -tv of an Arc A770: root port 00:01.1 -> "
                "01:00.0 switch upstream port (correct link) -> 02:01.0 downstream port and "
                "03:00.0 GPU (both PCIe 1.0 x1)); upstream port id 8086:4fa0 rev 01 from the Arc "
                "A750 lspci in geerlingguy/raspberry-pi-pcie-devices#510; nvtop "
                "src/extract_gpuinfo_intel.c walks at most two Intel VGA/bridge parents",
    "topo-bmg": "geerlingguy/raspberry-pi-pcie-devices#695 (Arc B570: switch upstream port "
                "8086:e2ff rev 01; GPU LnkCap/LnkSta 2.5GT/s x1) and xCuri0/ReBarUEFI#11 (Arc "
                "B580 lspci: subsystem 8086:1100, no revision shown = 0x00)",
    "id-a770": "ProjectPhysX/OpenCL-Benchmark#19 lspci: DG2 [Arc A770] (rev 08), subsystem "
               "Acer 1025:3888",
    "id-tgl": "freebsd/drm-kmod#129 pciconf: vgapci0@pci0:0:2:0 class=0x030000 rev=0x01 "
              "vendor=0x8086 device=0x9a49 subvendor=0x103c subdevice=0x87f7",
    "synthetic": "SYNTHETIC: value chosen to be plausible for the hardware; no capture",
}

# -- value helpers --------------------------------------------------------------


def u(value):
    """'%u\\n' / '%d\\n' / '%llu\\n' text."""
    return b"%d\n" % value


def s(text):
    return text.encode("ascii") + b"\n"


class Tree(object):
    """Collects (path relative to the tree root, bytes, source keys, note)."""

    def __init__(self, root):
        self.root = root
        self.rows = []

    def put(self, rel, content, sources, note=""):
        mf.write_file(os.path.join(self.root, rel), content)
        self.rows.append((rel, sources, note))

    def link(self, target, rel, sources, note=""):
        mf.symlink(target, os.path.join(self.root, rel))
        self.rows.append((rel + " -> " + target, sources, note))

    def provenance(self, header):
        used = sorted(set(k for _, keys, _ in self.rows for k in keys))
        lines = list(header) + ["", "Sources (key: what it gives):"]
        lines += ["  %s: %s" % (k, SOURCES[k]) for k in used]
        lines += ["", "Files (path | sources | note); values marked 'synthetic' are "
                  "plausible-synthetic, not captured:"]
        for rel, keys, note in sorted(self.rows):
            lines.append("  %s | %s%s" % (rel, ",".join(keys), (" | " + note) if note else ""))
        mf.write_provenance(self.root, lines)


# -- PCI identity -----------------------------------------------------------------


def pci_identity(driver, vendor, device, sub_vendor, sub_device, klass, revision, slot):
    """The device/ files of a bound PCI display device, kernel formats."""
    modalias = "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X" % (
        vendor, device, sub_vendor, sub_device, klass >> 16, (klass >> 8) & 0xff, klass & 0xff)
    uevent = ("DRIVER=%s\nPCI_CLASS=%X\nPCI_ID=%04X:%04X\nPCI_SUBSYS_ID=%04X:%04X\n"
              "PCI_SLOT_NAME=%s\nMODALIAS=%s\n" % (driver, klass, vendor, device, sub_vendor,
                                                   sub_device, slot, modalias))
    return {
        "uevent": uevent.encode("ascii"),
        "vendor": b"0x%04x\n" % vendor, "device": b"0x%04x\n" % device,
        "subsystem_vendor": b"0x%04x\n" % sub_vendor,
        "subsystem_device": b"0x%04x\n" % sub_device,
        "class": b"0x%06x\n" % klass, "revision": b"0x%02x\n" % revision,
        "enable": b"1\n",
    }


def put_pci(tree, pci_dir, ident, id_source, link, link_source, boot_vga=1):
    for name in ("uevent",):
        tree.put(pci_dir + "/" + name, ident[name], ["pci-uevent", id_source])
    for name in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class",
                 "revision"):
        tree.put(pci_dir + "/" + name, ident[name], ["pci-sysfs", id_source])
    tree.put(pci_dir + "/enable", ident["enable"], ["pci-sysfs"], "bound driver: enable_cnt 1")
    tree.put(pci_dir + "/boot_vga", u(boot_vga), ["pci-sysfs", "synthetic"],
             "1 on the firmware's boot display, else 0")
    speed, width = link
    for kind in ("current", "max"):
        tree.put(pci_dir + "/%s_link_speed" % kind, s(speed), ["pci-sysfs", link_source])
        tree.put(pci_dir + "/%s_link_width" % kind, u(width), ["pci-sysfs", link_source])
    tree.put(pci_dir + "/power/runtime_status", b"active\n", ["runtime-pm"])


def put_bridge(tree, pci_dir, device_id, revision, link, source):
    """An Intel PCIe switch port: the files a parent walk reads (vendor, class) and its link."""
    tree.put(pci_dir + "/vendor", b"0x8086\n", ["pci-sysfs", source])
    tree.put(pci_dir + "/class", b"0x060400\n", ["pci-sysfs", source], "PCI bridge, normal decode")
    if device_id is not None:
        tree.put(pci_dir + "/device", b"0x%04x\n" % device_id, ["pci-sysfs", source])
        tree.put(pci_dir + "/revision", b"0x%02x\n" % revision, ["pci-sysfs", source])
    speed, width = link
    for kind in ("current", "max"):
        tree.put(pci_dir + "/%s_link_speed" % kind, s(speed), ["pci-sysfs", source])
        tree.put(pci_dir + "/%s_link_width" % kind, u(width), ["pci-sysfs", source])


# -- DRM nodes ------------------------------------------------------------------------


def put_drm_nodes(tree, pci_rel, card, render, connector):
    """drm/cardN + drm/renderDM under the PCI device, class/drm links, one connector.

    Same layout as make_fixtures.add_card (device -> ../.., class/drm/* relative links),
    plus the minor devices' own dev/uevent and power/runtime_status."""
    pci_dir = "devices/" + pci_rel
    for name, minor in (("card%d" % card, card), ("renderD%d" % render, render)):
        node = "%s/drm/%s" % (pci_dir, name)
        tree.link("../..", node + "/device", ["drm-minor"])
        tree.link("../../devices/%s/drm/%s" % (pci_rel, name), "class/drm/" + name, ["drm-minor"])
        tree.put(node + "/dev", b"226:%d\n" % minor, ["drm-minor"])
        tree.put(node + "/uevent", b"MAJOR=226\nMINOR=%d\nDEVNAME=dri/%s\nDEVTYPE=drm_minor\n"
                 % (minor, name.encode("ascii")), ["drm-minor"])
        tree.put(node + "/power/runtime_status", b"unsupported\n", ["runtime-pm"],
                 "the minor device, not the GPU: must not be taken for the GPU's status")
    conn = "card%d-%s" % (card, connector)
    conn_dir = "%s/drm/card%d/%s" % (pci_dir, card, conn)
    for name, content in mf.CONNECTOR_FILES:
        tree.put(conn_dir + "/" + name, content, ["drm-connector"])
    tree.link("../../devices/%s/drm/card%d/%s" % (pci_rel, card, conn), "class/drm/" + conn,
              ["drm-connector"], "connector entry, must be ignored")
    return "%s/drm/card%d" % (pci_dir, card)


# -- i915 -----------------------------------------------------------------------------

TGL_SLOT = "0000:00:02.0"
TGL_PCI_REL = "pci0000:00/" + TGL_SLOT
TGL_FREQ = {"act": 650, "cur": 650, "boost": 1300, "max": 1300, "min": 100,
            "RP0": 1300, "RP1": 400, "RPn": 100}
TGL_RC6_MS = 3412987
TGL_THROTTLE = {"status": 1, "pl1": 1}

A770_ROOT = "0000:00:01.1"
A770_USP, A770_DSP, A770_SLOT = "0000:01:00.0", "0000:02:01.0", "0000:03:00.0"
A770_PCI_REL = "pci0000:00/%s/%s/%s/%s" % (A770_ROOT, A770_USP, A770_DSP, A770_SLOT)
A770_FREQ = {"act": 2000, "cur": 2000, "boost": 2400, "max": 2400, "min": 300,
             "RP0": 2400, "RP1": 1000, "RPn": 300}
A770_RC6_MS = 1234567
A770_HWMON = "hwmon2"
A770_HWMON_FILES = (        # name, value, note
    ("name", b"i915\n", ""),
    ("energy1_input", u(123456789012), "uJ, whole device"),
    ("power1_max", u(190000000), "uW, PL1"),
    ("power1_rated_max", u(225000000), "uW, TDP"),
    ("power1_max_interval", u(1000), "ms"),
    ("in0_input", u(684), "mV"),
    ("fan1_input", u(1180), "RPM; probe-optional (ABI KernelVersion 6.12)"),
    ("temp1_input", u(52000), "m°C, unlabelled package temperature; probe-optional (6.12)"),
)

BMG_ROOT = "0000:00:01.0"
BMG_USP, BMG_DSP, BMG_SLOT = "0000:06:00.0", "0000:07:01.0", "0000:08:00.0"
BMG_PCI_REL = "pci0000:00/%s/%s/%s/%s" % (BMG_ROOT, BMG_USP, BMG_DSP, BMG_SLOT)
BMG_GT0_FREQ = {"act": 2670, "cur": 2670, "max": 2850, "min": 400, "rp0": 2850,
                "rpa": 2450, "rpe": 1950, "rpn": 400}
BMG_GT1_FREQ = {"act": 0, "cur": 1100, "max": 1600, "min": 400, "rp0": 1600,
                "rpa": 1250, "rpe": 1100, "rpn": 400}
BMG_GT0_IDLE_MS, BMG_GT1_IDLE_MS = 2345678, 4567890
BMG_GT0_THROTTLE = {"status": 1, "pl1": 1, "thermal": 1}
BMG_VRAM_BYTES = 12884901888
BMG_HWMON = "hwmon3"
BMG_HWMON_FILES = (
    ("name", b"xe\n", ""),
    ("power1_label", b"card\n", ""), ("power1_max", u(190000000), "uW, card PL1"),
    ("power1_cap", u(250000000), "uW, card PL2"), ("power1_max_interval", u(1000), "ms"),
    ("power1_cap_interval", u(30), "ms"),
    ("power2_label", b"pkg\n", ""), ("power2_max", u(150000000), "uW, package PL1"),
    ("power2_cap", u(200000000), "uW, package PL2"), ("power2_max_interval", u(1000), "ms"),
    ("power2_cap_interval", u(30), "ms"),
    ("energy1_label", b"card\n", ""), ("energy1_input", u(98765432109), "uJ, card"),
    ("energy2_label", b"pkg\n", ""), ("energy2_input", u(76543210987), "uJ, package"),
    ("temp2_label", b"pkg\n", ""), ("temp2_input", u(54000), "m°C"),
    ("temp3_label", b"vram\n", ""), ("temp3_input", u(62000), "m°C"),
    ("fan1_input", u(1210), "RPM"), ("fan2_input", u(1195), "RPM"),
    ("fan3_input", u(1203), "RPM"),
)
THROTTLE_REASONS = ("pl1", "pl2", "pl4", "thermal", "prochot", "ratl", "vr_thermalert",
                    "vr_tdc")


def put_i915_card(tree, card_dir, freq, rc6_ms, throttle, slpc, media_ratio):
    """i915's DRM card files: legacy card-level ones and gt/gt0 (one GT)."""
    src = ["i915-gt-pm", "synthetic"]
    for key in ("act", "cur", "boost", "max", "min", "RP0", "RP1", "RPn"):
        tree.put("%s/gt_%s_freq_mhz" % (card_dir, key), u(freq[key]), src,
                 "MHz; card-level = max over GTs")
    tree.put(card_dir + "/power/rc6_enable", b"1\n", ["i915-gt-pm"], "rc6.enabled, %x")
    tree.put(card_dir + "/power/rc6_residency_ms", u(rc6_ms), src, "ms; card-level = min over GTs")
    gt = card_dir + "/gt/gt0"
    tree.put(gt + "/id", b"0\n", ["i915-gt-sysfs"])
    tree.put(gt + "/rc6_enable", b"1\n", ["i915-gt-pm"])
    tree.put(gt + "/rc6_residency_ms", u(rc6_ms), src, "ms, same GT as the card-level copy")
    for key in ("act", "cur", "boost", "max", "min", "RP0", "RP1", "RPn"):
        tree.put("%s/rps_%s_freq_mhz" % (gt, key), u(freq[key]), src, "MHz")
    tree.put(gt + "/punit_req_freq_mhz", u(freq["cur"]), src, "MHz")
    for name in ("status",) + THROTTLE_REASONS:
        tree.put("%s/throttle_reason_%s" % (gt, name), u(throttle.get(name, 0)), src)
    if slpc:
        tree.put(gt + "/slpc_ignore_eff_freq", b"0\n", src)
        tree.put(gt + "/slpc_power_profile", b"[base]    power_saving\n", ["i915-gt-pm"],
                 "SLPC_POWER_PROFILES_BASE")
    else:
        tree.put(gt + "/rps_up_threshold_pct", u(95), src, "%")
        tree.put(gt + "/rps_down_threshold_pct", u(85), src, "%")
    if media_ratio:
        tree.put(gt + "/media_freq_factor", u(128), src, "u8.8, 1:2 ratio")
        tree.put(gt + "/media_freq_factor.scale", b"0.00390625\n", ["i915-gt-pm"])
        tree.put(gt + "/media_RP0_freq_mhz", u(1250), src, "MHz")
        tree.put(gt + "/media_RPn_freq_mhz", u(300), src, "MHz")
    defaults = gt + "/.defaults"
    tree.put(defaults + "/rps_min_freq_mhz", u(freq["min"]), src)
    tree.put(defaults + "/rps_max_freq_mhz", u(freq["max"]), src)
    tree.put(defaults + "/rps_up_threshold_pct", u(95), src)
    tree.put(defaults + "/rps_down_threshold_pct", u(85), src)


def add_tgl(tree, card, render):
    dev = "devices/" + TGL_PCI_REL
    ident = pci_identity("i915", 0x8086, 0x9A49, 0x103C, 0x87F7, 0x030000, 0x01, TGL_SLOT)
    put_pci(tree, dev, ident, "id-tgl", ("Unknown", 0), "rcie-link")
    card_dir = put_drm_nodes(tree, TGL_PCI_REL, card, render, "eDP-1")
    put_i915_card(tree, card_dir, TGL_FREQ, TGL_RC6_MS, TGL_THROTTLE, slpc=False,
                  media_ratio=False)


def add_a770(tree, card, render):
    root = "devices/pci0000:00/" + A770_ROOT
    put_bridge(tree, root + "/" + A770_USP, 0x4FA0, 0x01, ("16.0 GT/s PCIe", 16), "topo-dg2")
    put_bridge(tree, "%s/%s/%s" % (root, A770_USP, A770_DSP), None, None,
               ("2.5 GT/s PCIe", 1), "topo-dg2")
    dev = "devices/" + A770_PCI_REL
    ident = pci_identity("i915", 0x8086, 0x56A0, 0x1025, 0x3888, 0x030000, 0x08, A770_SLOT)
    put_pci(tree, dev, ident, "id-a770", ("2.5 GT/s PCIe", 1), "topo-dg2")
    for name, value, note in A770_HWMON_FILES:
        keys = ["hwmon-core", "i915-hwmon"] + (["synthetic"] if name != "name" else [])
        tree.put("%s/hwmon/%s/%s" % (dev, A770_HWMON, name), value, keys, note)
    card_dir = put_drm_nodes(tree, A770_PCI_REL, card, render, "DP-1")
    put_i915_card(tree, card_dir, A770_FREQ, A770_RC6_MS, {}, slpc=True, media_ratio=True)


# -- xe --------------------------------------------------------------------------------


def put_xe_gt(tree, gt_dir, gt_id, media, freq, idle_ms, status, throttle):
    src = ["synthetic"]
    for key in ("act", "cur", "rp0", "rpa", "rpe", "rpn", "min", "max"):
        tree.put("%s/freq0/%s_freq" % (gt_dir, key), u(freq[key]), ["xe-freq"] + src, "MHz")
    tree.put(gt_dir + "/freq0/throttle/status", u(throttle.get("status", 0)),
             ["xe-throttle"] + src)
    for name in THROTTLE_REASONS:
        tree.put("%s/freq0/throttle/reason_%s" % (gt_dir, name), u(throttle.get(name, 0)),
                 ["xe-throttle"] + src)
    tree.put(gt_dir + "/gtidle/name", s("gt%d-%s" % (gt_id, "mc" if media else "rc")),
             ["xe-idle"])
    tree.put(gt_dir + "/gtidle/idle_status", s(status), ["xe-idle"] + src)
    tree.put(gt_dir + "/gtidle/idle_residency_ms", u(idle_ms), ["xe-idle"] + src, "ms")


def add_bmg(tree, card, render, boot_vga=1):
    root = "devices/pci0000:00/" + BMG_ROOT
    put_bridge(tree, root + "/" + BMG_USP, 0xE2FF, 0x01, ("16.0 GT/s PCIe", 8), "topo-bmg")
    put_bridge(tree, "%s/%s/%s" % (root, BMG_USP, BMG_DSP), None, None,
               ("2.5 GT/s PCIe", 1), "topo-bmg")
    dev = "devices/" + BMG_PCI_REL
    ident = pci_identity("xe", 0x8086, 0xE20B, 0x8086, 0x1100, 0x030000, 0x00, BMG_SLOT)
    put_pci(tree, dev, ident, "topo-bmg", ("2.5 GT/s PCIe", 1), "topo-bmg", boot_vga)
    tree.put(dev + "/tile0/physical_vram_size_bytes", u(BMG_VRAM_BYTES), ["xe-tile", "synthetic"],
             "12 GiB; optional, version-dependent")
    put_xe_gt(tree, dev + "/tile0/gt0", 0, False, BMG_GT0_FREQ, BMG_GT0_IDLE_MS, "gt-c0",
              BMG_GT0_THROTTLE)
    put_xe_gt(tree, dev + "/tile0/gt1", 1, True, BMG_GT1_FREQ, BMG_GT1_IDLE_MS, "gt-c6", {})
    for name, value, note in BMG_HWMON_FILES:
        synthetic = not (name == "name" or name.endswith("_label"))
        keys = ["hwmon-core", "xe-hwmon"] + (["synthetic"] if synthetic else [])
        tree.put("%s/hwmon/%s/%s" % (dev, BMG_HWMON, name), value, keys, note)
    put_drm_nodes(tree, BMG_PCI_REL, card, render, "DP-1")


# -- trees -----------------------------------------------------------------------------

COMMON_HEADER = (
    "Generated by tests/make_intel_fixtures.py (do not edit by hand; rerun it).",
    "NO REAL CAPTURE: no Intel sysfs capture exists among the fixture samples. File names",
    "and text formats come from the kernel sources/ABI documents cited per file below;",
    "values are plausible-synthetic unless a file cites a capture (PCI ids, topology).",
    "The tree combines files of different kernel versions (e.g. i915 fan1_input/temp1_input",
    "6.12+, xe fans 6.16+, xe tile0/physical_vram_size_bytes only in early xe); no single",
    "kernel need show all of them at once.",
)


def build_tgl(sys_dir):
    tree = Tree(mf.new_root(sys_dir, "intel_tgl_igpu"))
    add_tgl(tree, 0, 128)
    tree.provenance(("testdata/sys/intel_tgl_igpu: i915 integrated GPU (Tiger Lake-LP GT2, "
                     "Iris Xe), card0 renderD128 at %s on the root bus, connector "
                     "card0-eDP-1; no hwmon (i915 registers hwmon for dGPUs only)." % TGL_SLOT,)
                    + COMMON_HEADER)


def build_a770(sys_dir):
    tree = Tree(mf.new_root(sys_dir, "intel_arc_a770_i915"))
    add_a770(tree, 1, 128)
    tree.provenance(("testdata/sys/intel_arc_a770_i915: Arc A770 (DG2) on i915, card1 "
                     "renderD128 at %s; PCI path root port %s -> switch upstream port %s "
                     "(16.0 GT/s x16, the real link) -> downstream port %s (2.5 GT/s x1) -> GPU "
                     "(2.5 GT/s x1). card1 because simpledrm's card0 goes away when i915 "
                     "takes over. The root port directory has no files (its identity is "
                     "not needed and was not captured); the downstream port has no device "
                     "id file (not found in any source read)." % (A770_SLOT, A770_ROOT,
                                                                  A770_USP, A770_DSP),
                     "No power1_crit / curr1_crit: i915_hwmon.c hides I1 (the critical power "
                     "limit) on DG1/DG2.") + COMMON_HEADER)


def build_bmg(sys_dir):
    tree = Tree(mf.new_root(sys_dir, "intel_bmg_xe"))
    add_bmg(tree, 1, 128)
    tree.provenance(("testdata/sys/intel_bmg_xe: Arc B580 (Battlemage G21) on xe, card1 "
                     "renderD128 at %s; PCI path root port %s -> switch upstream port %s "
                     "(16.0 GT/s x8) -> downstream port %s (2.5 GT/s x1) -> GPU (2.5 GT/s "
                     "x1). Bus numbers chosen so that the slot differs from the A770 tree's "
                     "(the captures show a B580 at 03:00.0). tile0/gt0 is the render GT, "
                     "tile0/gt1 the media GT. No power*_rated_max / in*_input / *_crit (see "
                     "xe-hwmon)." % (BMG_SLOT, BMG_ROOT, BMG_USP, BMG_DSP),) + COMMON_HEADER)


NVIDIA_SLOT = "0000:1b:00.0"
NVIDIA_PCI_REL = "pci0000:00/0000:00:03.1/" + NVIDIA_SLOT


def rx6900xt_files():
    """The RX 6900 XT capture's device/* files: from the sample bundle when it is
    here (as make_fixtures.py reads it), else from the committed sys/rx6900xt tree
    (which make_fixtures.py wrote from that bundle, byte for byte)."""
    bundle = os.path.join(mf.DEFAULT_SAMPLES, mf.SAMPLE_FILES["rx6900xt"])
    if os.path.isfile(bundle):
        header, files = mf.with_gpu_metrics("rx6900xt", *mf.read_bundle(bundle))
        return files, mf.source_line(header)
    base = os.path.join(DEFAULT_OUT, "sys", "rx6900xt", "devices", "pci0000:00",
                        mf.AMD_BRIDGE, "0000:0c:00.0")
    files = {}
    for folder, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if d != "drm"]
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                files["device/" + os.path.relpath(path, base).replace(os.sep, "/")] = fh.read()
    with open(os.path.join(DEFAULT_OUT, "sys", "rx6900xt", "PROVENANCE"), "r") as fh:
        source = fh.readline().split(" | ", 1)[1].strip()
    # the same source line as from the bundle (make_fixtures adds a gpu_metrics note)
    return files, source.split("; gpu_metrics:")[0]


def build_mixed(sys_dir):
    tree = Tree(mf.new_root(sys_dir, "mixed_box"))
    add_tgl(tree, 0, 128)
    files, source = rx6900xt_files()
    amd_slot = mf.slot_of(mf.SAMPLE_FILES["rx6900xt"], files)
    mf.add_card(tree.root, 1, 129, mf.amd_pci_rel(amd_slot), files, True)
    tree.rows.append(("devices/%s/* (card1, renderD129, card1-DP-1)" % mf.amd_pci_rel(amd_slot),
                      [], "RX 6900 XT: %s %s, laid out by make_fixtures.add_card(); no content "
                      "edited" % (mf.SAMPLE_FILES["rx6900xt"], source)))
    add_bmg(tree, 2, 130, boot_vga=0)
    # nvidia-drm card: must be ignored by the sysfs backends (NVIDIA comes from NVML).
    nv = "devices/" + NVIDIA_PCI_REL
    tree.put(nv + "/uevent", b"DRIVER=nvidia\nPCI_CLASS=30200\nPCI_ID=10DE:2330\n"
             b"PCI_SLOT_NAME=0000:1b:00.0\n", ["pci-uevent", "synthetic"],
             "SYNTHETIC nvidia-drm device; PCI_SUBSYS_ID and MODALIAS left out (no source "
             "for a subsystem id)")
    tree.put(nv + "/vendor", b"0x10de\n", ["pci-sysfs", "synthetic"])
    tree.put(nv + "/device", b"0x2330\n", ["pci-sysfs", "synthetic"], "GH100 [H100 SXM5 80GB]")
    tree.put(nv + "/class", b"0x030200\n", ["pci-sysfs", "synthetic"], "3D controller")
    for name, minor in (("card3", 3), ("renderD131", 131)):
        tree.link("../..", "%s/drm/%s/device" % (nv, name), ["drm-minor"])
        tree.link("../../devices/%s/drm/%s" % (NVIDIA_PCI_REL, name), "class/drm/" + name,
                  ["drm-minor"])
        tree.put("%s/drm/%s/dev" % (nv, name), b"226:%d\n" % minor, ["drm-minor"])
    tree.provenance((
        "testdata/sys/mixed_box: four DRM cards of three drivers plus one to ignore:",
        "  card0 renderD128 %s  i915 Tiger Lake iGPU (files as sys/intel_tgl_igpu)" % TGL_SLOT,
        "  card1 renderD129 %s  amdgpu RX 6900 XT (real capture, as sys/rx6900xt)" % amd_slot,
        "  card2 renderD130 %s  xe Arc B580 (files as sys/intel_bmg_xe)" % BMG_SLOT,
        "  card3 renderD131 %s  nvidia-drm (DRIVER=nvidia): the sysfs backends must skip it"
        % NVIDIA_SLOT,
        "The combination itself is synthetic; no slot collided, none was changed.")
        + COMMON_HEADER)


# -- /proc -------------------------------------------------------------------------------

I915_ENGINES = "fdinfo_i915_engines_kernel_doc.txt"
I915_MEM = mpf.I915_MEM
XE = mpf.XE
AMD_MIB = mpf.MIB


def intel_procs():
    body = mpf.sample_body
    drm = mpf.drm
    spec = mpf.proc_spec
    return [
        spec(1, "systemd", ["/sbin/init", "splash"], uid=0, ppid=0, start=1, ns=mpf.NS_HOST),
        spec(4242, "python3", ["python3", "amdgpu_top_web.py"], uid=0, ns=mpf.NS_HOST,
             fds={3: ("socket:[4243]", mpf.plain_fdinfo(3))},
             mountinfo=mpf.MOUNTINFO.format(hp="")),
        spec(5100, "gnome-shell", ["/usr/bin/gnome-shell"],
             fds={10: drm("renderD128", body(I915_MEM)), 11: drm("renderD128", body(I915_MEM))}),
        spec(5101, "mpv", ["mpv", "--hwdec=vaapi", "movie.mkv"],
             fds={9: drm("renderD128", body(I915_ENGINES))}),
        spec(5200, "blender", ["blender", "--background", "scene.blend"],
             fds={7: drm("renderD130", mpf.retarget(body(XE), pdev=BMG_SLOT))}),
        spec(5300, "ollama", ["ollama", "serve"],
             fds={5: drm("renderD128", mpf.retarget(body(I915_MEM), pdev=A770_SLOT,
                                                    client_id=41))}),
        spec(5400, "Xwayland", ["/usr/bin/Xwayland", ":0"],
             fds={6: drm("renderD129", mpf.retarget(body(AMD_MIB), pdev="0000:0c:00.0",
                                                    client_id=90))}),
    ]


INTEL_PROC_NOTES = """testdata/proc/intel: an APP_PROC_ROOT with i915 and xe DRM clients.
Generated by tests/make_intel_fixtures.py (do not edit by hand; rerun it).
fdinfo bodies are the real samples in testdata/proc/fdinfo_samples/ (their '#' header lines
dropped, as tests/make_proc_fixtures.py does); only drm-pdev and drm-client-id were edited:
  5100 gnome-shell fd 10, 11 (dup'd, one client) -> /dev/dri/renderD128:
       {i915mem} verbatim (drm-pdev {tgl}, client 18)
  5101 mpv fd 9 -> renderD128: {i915eng} verbatim (drm-pdev {tgl}, client 7)
  5200 blender fd 7 -> renderD130: {xe} drm-pdev 0000:03:00.0 -> {bmg}, client 3 kept
  5300 ollama fd 5 -> renderD128: {i915mem} drm-pdev -> {a770}, client 18 -> 41
  5400 Xwayland fd 6 -> renderD129: {mib} drm-pdev -> 0000:0c:00.0, client 30 -> 90
Pairs with (drm-pdev decides the GPU, the node name is only reported):
  sys/intel_tgl_igpu (card0/renderD128 {tgl}): 5100, 5101
  sys/intel_arc_a770_i915 (card1/renderD128 {a770}): 5300
  sys/intel_bmg_xe (card1/renderD128 {bmg}): 5200
  sys/mixed_box: card0 {tgl} 5100 + 5101, card1 0000:0c:00.0 5400, card2 {bmg} 5200
self -> 4242; 1 and 4242 share the host pid namespace; stat/status/cgroup as written by
tests/make_proc_fixtures.py (Linux 6.x layout). fd symlinks are dangling on purpose.
""".format(i915mem=I915_MEM, i915eng=I915_ENGINES, xe=XE, mib=AMD_MIB, tgl=TGL_SLOT,
           a770=A770_SLOT, bmg=BMG_SLOT)


def build_proc(proc_dir):
    os.makedirs(proc_dir, exist_ok=True)
    mpf.build_tree(os.path.join(proc_dir, "intel"), intel_procs(), 4242, INTEL_PROC_NOTES)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sys_dir = os.path.join(args.out, "sys")
    os.makedirs(sys_dir, exist_ok=True)
    build_tgl(sys_dir)
    build_a770(sys_dir)
    build_bmg(sys_dir)
    build_mixed(sys_dir)
    build_proc(os.path.join(args.out, "proc"))
    print("make_intel_fixtures: wrote sys/%s and proc/%s under %s"
          % (", sys/".join(SYS_TREES), ", proc/".join(PROC_TREES), os.path.relpath(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
