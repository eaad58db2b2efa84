#!/usr/bin/env python3
"""Regenerate the fake sysfs trees under testdata/sys/ from real sample bundles.

The trees are committed; this script documents (and reproduces) how they were
made.  Every file value comes from a real capture in the sample bundles
(``sysfs_*.txt``, format: see the samples' README.md); the only additions are
the sysfs *structure* (PCI directories, drm/cardN and renderDN nodes, the
class/drm symlinks, the class/drm/version file, a DP connector) and the
scenario edits listed in SCENARIO notes below.  Each fixture gets a
PROVENANCE file naming its sources and edits.

Usage (from the repository root)::

    python3 tests/make_fixtures.py [--samples DIR] [--out DIR]
                                   [--amdgpu-ids /usr/share/libdrm/amdgpu.ids]

--samples  folder with the sample bundles
           (default: ../shared/reference/samples relative to the repo root)
--out      output folder (default: testdata/ in the repo root)
--amdgpu-ids  also rebuild share/libdrm/amdgpu.ids as a subset of this file
           (off by default: the committed subset came from libdrm-common
           2.4.114-1; a different libdrm would give different lines)

Each generated fixture directory testdata/sys/<fixture>/ is deleted and
recreated, so running the script twice gives identical trees.  Only the
fixture directories named in FIXTURES are touched.  Stdlib only, Python 3.8+.
"""

import argparse
import os
import shutil
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SAMPLES = os.path.join(REPO_ROOT, "..", "shared", "reference", "samples")
DEFAULT_OUT = os.path.join(REPO_ROOT, "testdata")

# PCI bridge every AMD test device hangs off (devices/pci0000:00/<bridge>/<slot>).
AMD_BRIDGE = "0000:00:01.1"
# Real /sys/class/drm/version content.
DRM_VERSION = b"drm 1.1.0 20060810\n"
# Connector entries (class/drm/cardN-DP-1): a real connector dir has these files.
CONNECTOR_FILES = (("enabled", b"enabled\n"), ("status", b"connected\n"))

SAMPLE_FILES = {
    "rx580": "sysfs_polaris10_rx580.txt",
    "vega56": "sysfs_vega10_rx_vega56.txt",
    "navi10_rx5700xt": "sysfs_navi10_rx5700xt.txt",
    "rx6900xt": "sysfs_navi21_rx6900xt.txt",
    "rx7600s": "sysfs_navi33_rx7600s_mobile.txt",
    "rx7800xt": "sysfs_navi32_rx7800xt.txt",
    "rx9070": "sysfs_navi48_rx9070.txt",
    "phoenix": "sysfs_apu_phoenix_780m.txt",
    "strixpoint": "sysfs_apu_strixpoint_890m.txt",
    "steamdeck": "sysfs_apu_vangogh_steamdeck.txt",
    "r7_240": "sysfs_si_oland_r7_240_amdgpu.txt",
    "hd7870_radeon": "sysfs_radeon_driver_hd7870.txt",
}

# Single-GPU fixtures: name -> (sample key, card number, add a DP connector).
# The card number is the one in the sample's source path (LACT
# tests/snapshots/amd/<gpu>/cardN/device/).
SINGLE = (
    ("rx580", "rx580", 0, True),
    ("vega56", "vega56", 0, True),
    ("navi10_rx5700xt", "navi10_rx5700xt", 1, False),
    ("rx6900xt", "rx6900xt", 0, True),
    ("rx7600s", "rx7600s", 1, True),
    ("rx7800xt", "rx7800xt", 1, True),
    ("rx9070", "rx9070", 1, True),
    ("phoenix", "phoenix", 1, True),
    ("strixpoint", "strixpoint", 1, True),
    ("steamdeck", "steamdeck", 0, True),
    ("r7_240", "r7_240", 1, False),
    ("hd7870_radeon", "hd7870_radeon", 0, True),
)

# The binary gpu_metrics of the same LACT snapshots, kept in the repository as
# hex dumps (testdata/gpu_metrics/, provenance there): sample key -> file.
GPU_METRICS_DIR = os.path.join(REPO_ROOT, "testdata", "gpu_metrics")
GPU_METRICS_FILES = {
    "rx6900xt": "gpu_metrics_v1_3_navi21_rx6900xt.hex",
    "rx7800xt": "gpu_metrics_v1_3_navi32_rx7800xt.hex",
    "rx7600s": "gpu_metrics_v1_3_navi33_rx7600s.hex",
    "rx9070": "gpu_metrics_v1_3_navi48_rx9070.hex",
    "phoenix": "gpu_metrics_v2_1_apu_phoenix.hex",
    "strixpoint": "gpu_metrics_v3_0_apu_strixpoint.hex",
}


def read_hex_dump(path):
    """The bytes of a testdata/gpu_metrics hex dump ('OFFSET: hex bytes' lines, '#' header)."""
    out = bytearray()
    with open(path) as f:
        for line in f:
            if line.startswith("#") or ":" not in line:
                continue
            out += bytes.fromhex(line.split(":", 1)[1])
    return bytes(out)


def with_gpu_metrics(key, header, files):
    """(header, files) plus device/gpu_metrics where the snapshot has one, and a
    header line saying where it came from (the bundles leave binary files out)."""
    if key not in GPU_METRICS_FILES:
        return header, files
    files = dict(files)
    files["device/gpu_metrics"] = read_hex_dump(os.path.join(GPU_METRICS_DIR, GPU_METRICS_FILES[key]))
    note = "# gpu_metrics: testdata/gpu_metrics/%s (same snapshot), written as binary" % (
        GPU_METRICS_FILES[key])
    return header + [note], files


# Synthetic non-AMD card for multi_gpu (no sample exists): an Intel iGPU bound
# to i915.  Only PCI-core files, in the kernel's uevent / sysfs formats (same
# shapes as the AMD samples' uevent, vendor, device, class, boot_vga).
INTEL_SLOT = "0000:00:02.0"
INTEL_FILES = {
    "device/uevent": (
        b"DRIVER=i915\n"
        b"PCI_CLASS=30000\n"
        b"PCI_ID=8086:3E92\n"
        b"PCI_SUBSYS_ID=1043:8694\n"
        b"PCI_SLOT_NAME=0000:00:02.0\n"
        b"MODALIAS=pci:v00008086d00003E92sv00001043sd00008694bc03sc00i00\n"
    ),
    "device/vendor": b"0x8086\n",
    "device/device": b"0x3e92\n",
    "device/subsystem_vendor": b"0x1043\n",
    "device/subsystem_device": b"0x8694\n",
    "device/class": b"0x030000\n",
    "device/boot_vga": b"1\n",
}

FIXTURE_NAMES = tuple(name for name, _, _, _ in SINGLE) + ("multi_gpu", "suspended")

# amdgpu.ids subset: device ids of fixture GPUs that we *keep*.  687F (Vega 56)
# and 731F (RX 5700 XT) are deliberately left out so the pci.ids fallback is
# exercised.  7480/747E/7550/15BF/150E are not in libdrm 2.4.114's file at all.
AMDGPU_IDS_KEEP = ("163F", "6617", "67DF", "6818", "73BF")


def read_bundle(path):
    """Return (header_lines, {relative path: bytes}) of a sample bundle."""
    with open(path, "rb") as f:
        data = f.read()
    pos, header, files = 0, [], {}
    while data.startswith(b"#", pos):
        nl = data.index(b"\n", pos)
        header.append(data[pos:nl].decode("utf-8"))
        pos = nl + 1
    while pos < len(data):
        nl = data.index(b"\n", pos)
        parts = data[pos:nl].decode("utf-8").split()
        if len(parts) < 3 or parts[0] != "@@":
            raise ValueError("%s: bad record line at byte %d" % (path, pos))
        rel, size = parts[1], int(parts[2])
        if not rel.startswith("device/") or ".." in rel.split("/"):
            raise ValueError("%s: unexpected path %r" % (path, rel))
        # The record holds the content with any NUL padding already stripped
        # (orig_size= only records the padded size): write it as given.
        files[rel] = data[nl + 1:nl + 1 + size]
        pos = nl + 2 + size
    return header, files


def source_line(header):
    for line in header:
        if line.startswith("# source:"):
            return line
    raise ValueError("sample has no '# source:' line")


def uevent_value(files, key):
    text = files.get("device/uevent", b"").decode("ascii")
    for line in text.splitlines():
        if line.startswith(key + "="):
            return line[len(key) + 1:]
    return None


def write_file(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def symlink(target, link):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def add_card(root, card, render, pci_rel, files, connector):
    """Lay out one GPU.

    pci_rel: PCI device dir relative to <root>/devices, e.g.
    "pci0000:00/0000:00:01.1/0000:0c:00.0".  files: {"device/...": bytes}.
    """
    pci_dir = os.path.join(root, "devices", pci_rel)
    for rel in sorted(files):
        write_file(os.path.join(pci_dir, rel[len("device/"):]), files[rel])
    card_name = "card%d" % card
    render_name = "renderD%d" % render
    for node in (card_name, render_name):
        node_dir = os.path.join(pci_dir, "drm", node)
        os.makedirs(node_dir)
        symlink("../..", os.path.join(node_dir, "device"))
        symlink("../../devices/%s/drm/%s" % (pci_rel, node),
                os.path.join(root, "class", "drm", node))
    if connector:
        conn = "%s-DP-1" % card_name
        conn_dir = os.path.join(pci_dir, "drm", card_name, conn)
        for name, content in CONNECTOR_FILES:
            write_file(os.path.join(conn_dir, name), content)
        symlink("../../devices/%s/drm/%s/%s" % (pci_rel, card_name, conn),
                os.path.join(root, "class", "drm", conn))


def amd_pci_rel(slot):
    return "pci0000:00/%s/%s" % (AMD_BRIDGE, slot)


def new_root(sys_dir, name):
    root = os.path.join(sys_dir, name)
    if os.path.lexists(root):
        shutil.rmtree(root)
    os.makedirs(os.path.join(root, "class", "drm"))
    write_file(os.path.join(root, "class", "drm", "version"), DRM_VERSION)
    return root


def slot_of(sample_name, files):
    slot = uevent_value(files, "PCI_SLOT_NAME")
    if not slot:
        # None of the current samples needs this; refuse rather than invent.
        raise ValueError("%s: no PCI_SLOT_NAME in device/uevent" % sample_name)
    return slot


def provenance_line(sample_name, header):
    line = "%s | %s" % (sample_name, source_line(header))
    extra = [h[2:] for h in header if h.startswith("# gpu_metrics:")]
    return line + ("; " + extra[0] if extra else "")


def write_provenance(root, lines):
    write_file(os.path.join(root, "PROVENANCE"),
               ("\n".join(lines) + "\n").encode("utf-8"))


def build_single(sys_dir, samples, name, key, card, connector):
    sample = SAMPLE_FILES[key]
    header, files = samples[key]
    root = new_root(sys_dir, name)
    slot = slot_of(sample, files)
    add_card(root, card, 128, amd_pci_rel(slot), files, connector)
    lines = [provenance_line(sample, header)]
    lines.append("layout: card%d renderD128 at %s (PCI_SLOT_NAME from the sample's "
                 "device/uevent), bridge %s%s; no file content edited"
                 % (card, slot, AMD_BRIDGE,
                    ", connector card%d-DP-1" % card if connector else ""))
    write_provenance(root, lines)


def build_suspended(sys_dir, samples):
    key = "rx7800xt"
    header, files = samples[key]
    files = dict(files)
    # SCENARIO edit: runtime-suspended dGPU.  The rx7800xt capture has no
    # device/power/ directory, so the file is added (format as in the other
    # captures' device/power/runtime_status; value from the kernel's list
    # active|suspended|suspending|resuming|error|unsupported).
    files["device/power/runtime_status"] = b"suspended\n"
    root = new_root(sys_dir, "suspended")
    slot = slot_of(SAMPLE_FILES[key], files)
    add_card(root, 1, 128, amd_pci_rel(slot), files, True)
    write_provenance(root, [
        provenance_line(SAMPLE_FILES[key], header),
        "layout as testdata/sys/rx7800xt (card1 renderD128 at %s); SCENARIO EDIT: "
        "added device/power/runtime_status = \"suspended\\n\" (absent from the "
        "capture); all other files unchanged" % slot,
    ])


def build_multi(sys_dir, samples):
    root = new_root(sys_dir, "multi_gpu")
    # card0: synthetic Intel iGPU directly on the root bus, like a real 00:02.0.
    add_card(root, 0, 128, "pci0000:00/%s" % INTEL_SLOT, INTEL_FILES, True)
    used = {INTEL_SLOT}
    plan = ((1, 129, "rx6900xt", True), (2, 130, "phoenix", False),
            (3, 131, "hd7870_radeon", True))
    lines = ["card0 renderD128 at %s: SYNTHETIC Intel i915 device (no sample): "
             "uevent/vendor/device/subsystem_*/class/boot_vga in the kernel PCI-core "
             "formats, PCI_ID 8086:3E92, subsystem 1043:8694, no hwmon, no amdgpu "
             "files" % INTEL_SLOT]
    for card, render, key, connector in plan:
        header, files = samples[key]
        slot = slot_of(SAMPLE_FILES[key], files)
        if slot in used:
            raise ValueError("multi_gpu: slot %s used twice; pick another" % slot)
        used.add(slot)
        add_card(root, card, render, amd_pci_rel(slot), files, connector)
        lines.append("card%d renderD%d at %s: %s (slot unchanged)"
                     % (card, render, slot, provenance_line(SAMPLE_FILES[key], header)))
    lines.append("connectors: card0-DP-1, card1-DP-1, card3-DP-1; no file content edited")
    write_provenance(root, lines)


def build_amdgpu_ids(src, out_dir):
    with open(src, "rb") as f:
        lines = f.read().decode("utf-8").splitlines(True)
    out, in_header = [], True
    for line in lines:
        if in_header:
            out.append(line)
            if line.strip() == "1.0.0":
                in_header = False
            continue
        dev = line.split(",", 1)[0].strip().upper()
        if dev in AMDGPU_IDS_KEEP:
            out.append(line)
    if in_header:
        raise ValueError("%s: no version line" % src)
    write_file(os.path.join(out_dir, "share", "libdrm", "amdgpu.ids"),
               "".join(out).encode("utf-8"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", default=DEFAULT_SAMPLES)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--amdgpu-ids", default=None)
    args = ap.parse_args(argv)

    samples = {}
    for key, fname in sorted(SAMPLE_FILES.items()):
        path = os.path.join(args.samples, fname)
        if not os.path.isfile(path):
            sys.exit("make_fixtures: missing sample %s" % path)
        samples[key] = with_gpu_metrics(key, *read_bundle(path))

    sys_dir = os.path.join(args.out, "sys")
    os.makedirs(sys_dir, exist_ok=True)
    for name, key, card, connector in SINGLE:
        build_single(sys_dir, samples, name, key, card, connector)
    build_multi(sys_dir, samples)
    build_suspended(sys_dir, samples)
    if args.amdgpu_ids:
        build_amdgpu_ids(args.amdgpu_ids, args.out)
    print("make_fixtures: wrote %d fixtures under %s"
          % (len(FIXTURE_NAMES), os.path.relpath(sys_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
