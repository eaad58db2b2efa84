#!/usr/bin/env python3
"""Generate the fixture /proc trees under testdata/proc/ from the real fdinfo samples.

    python3 tests/make_proc_fixtures.py            # (re)write testdata/proc/
    python3 tests/make_proc_fixtures.py OUTDIR     # write the trees elsewhere

Every fdinfo file in a tree is the body of a real sample (copied verbatim into
testdata/proc/fdinfo_samples/, headers included) with at most its drm-pdev /
pdev / drm-client-id / pasid values changed; each tree's PROVENANCE file says
which sample each file came from and what was changed. cgroup lines come from
public issue threads (cited in PROVENANCE). stat/status lines follow the real
kernel format (52 stat fields, status as printed by Linux 6.x).

fd/<n> entries are symlinks to absolute targets (/dev/dri/renderD128, /dev/kfd,
socket:[1234], ...): dangling on purpose, the scanner only readlink()s them.
The module is importable: tests build variants with build_tree(spec, root).
"""
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT_DEFAULT = os.path.join(REPO, "testdata", "proc")
SHARED_SAMPLES = os.path.join(REPO, "..", "shared", "reference", "samples")
COPIED_SAMPLES = os.path.join(OUT_DEFAULT, "fdinfo_samples")

# Slots and nodes of the sysfs fixtures (testdata/sys/): "multi" pairs with sys/multi_gpu
# (card0/renderD128 Intel 0000:00:02.0, card1/renderD129 RX 6900 XT, card2/renderD130
# Phoenix APU, card3/renderD131 HD 7870 on radeon); "legacy_5_15" and "restricted" pair
# with sys/rx6900xt (card0/renderD128).
GPU_A = "0000:0c:00.0"          # RX 6900 XT
GPU_B = "0000:64:00.0"          # Phoenix APU (780M)
INTEL = "0000:00:02.0"
NODE_MAP = {"card1": GPU_A, "renderD129": GPU_A, "card2": GPU_B, "renderD130": GPU_B}
NODE_MAP_SINGLE = {"card0": GPU_A, "renderD128": GPU_A}
TREE_NODE_MAPS = {"multi": NODE_MAP, "legacy_5_15": NODE_MAP_SINGLE,
                  "restricted": NODE_MAP_SINGLE}
CLK_TCK = 100
# /proc/stat btime of every tree: 2026-12-06T08:00:00Z. A process's wall-clock start is
# BTIME + start_time / CLK_TCK (stat field 22 counts clock ticks after boot).
BTIME = 1796544000

ISSUE87 = "fdinfo_amdgpu_drm_6.x_issue87.txt"
MIB = "fdinfo_amdgpu_drm_total_mib_units_2024.txt"
RESIDENT = "fdinfo_amdgpu_drm_total_resident_2024.txt"
ROCMI = "fdinfo_amdgpu_amd_keys_rocmi.txt"
LEGACY = "fdinfo_amdgpu_legacy_5.15_issue17.txt"
I915_MEM = "fdinfo_i915_with_memory_2023.txt"
XE = "fdinfo_xe_cycles_kernel_doc.txt"
XDNA = "fdinfo_amdxdna_npu_issue324.txt"

# -- real cgroup files (sources in PROVENANCE) --------------------------------
CGROUP_HOST = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome.scope\n"
_MOBY = "5dace3de0735f73d2b5048f12d41a71741a02e49668de921fdae62f7e65dc498"
CGROUP_DOCKER_V1 = (
    "13:pids:/\n12:hugetlb:/\n11:net_prio:/\n10:perf_event:/docker/{0}\n9:net_cls:/\n"
    "8:freezer:/docker/{0}\n7:devices:/docker/{0}\n6:memory:/docker/{0}\n5:blkio:/docker/{0}\n"
    "4:cpuacct:/docker/{0}\n3:cpu:/docker/{0}\n2:cpuset:/docker/{0}\n1:name=systemd:/\n"
    .format(_MOBY))
_K8S = ("kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice:cri-containerd:"
        "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459")
CGROUP_KUBEPODS_V1 = (
    "11:perf_event:/%s\n10:blkio:/system.slice/containerd.service/%s\n"
    "9:cpuacct,cpu:/system.slice/containerd.service/%s\n8:cpuset:/%s\n7:hugetlb:/%s\n"
    "6:devices:/system.slice/containerd.service/%s\n5:pids:/system.slice/containerd.service/%s\n"
    % ((_K8S,) * 7))
CGROUP_PODMAN_V2 = ("0::/user.slice/user-0.slice/user@0.service/machine.slice/libpod-"
                    "cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb"
                    ".scope/container\n")
CGROUP_CRIO_V2 = ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_"
                  "3599_498d_bb9d_4446693fa3ea.slice/crio-358607a37e7ada357032e7f5729c9ae6a3efdb"
                  "7962acbcbe47ff6a3c5506cb1c.scope\n")
CGROUP_DOCKER_SCOPE_V2 = ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
                          "9692aa0e_748e_11e8_8dfa_76d458035df6.slice/docker-abddff03dfd7710c79a75"
                          "0ce3e730365cbb2c8247a974170c1062683bc3e9152.scope\n")

MOUNTINFO = "".join(line + "\n" for line in (
    "21 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
    "22 21 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw{hp}",
    "23 21 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw",
    "24 21 0:5 / /dev rw,nosuid shared:8 - devtmpfs devtmpfs "
    "rw,size=4096k,nr_inodes=4096,mode=755",
    "25 24 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:9 - devpts devpts "
    "rw,gid=5,mode=620,ptmxmode=000",
    "26 21 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:10 - tmpfs tmpfs "
    "rw,size=1623740k,mode=755",
    "27 23 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate",
    "28 22 0:26 / /proc/sys/fs/binfmt_misc rw,relatime shared:14 - autofs systemd-1 "
    "rw,fd=29,pgrp=1"))
NS_HOST = "pid:[4026531836]"


def sample_text(name, src=None):
    """Full text of a sample file (headers included)."""
    with open(os.path.join(src or samples_dir(), name), "r", encoding="utf-8") as fh:
        return fh.read()


def sample_body(name):
    """The fdinfo text of a sample: every line that is not a '#' header."""
    return "".join(l for l in sample_text(name).splitlines(True) if not l.startswith("#"))


def retarget(body, pdev=None, client_id=None, pasid=None):
    """Change the identity values of an fdinfo body (keeps its whitespace)."""
    subs = (("drm-pdev", pdev), ("pdev", pdev), ("drm-client-id", client_id), ("pasid", pasid))
    for key, value in subs:
        if value is not None:
            body = re.sub(r"(?m)^(%s:\s*)\S+" % re.escape(key),
                          lambda m, v=value: m.group(1) + str(v), body)
    return body


def stat_line(pid, comm, ppid, start_time, threads=1, state="S"):
    """/proc/<pid>/stat: the 52 fields of Linux 6.x (proc(5))."""
    fields = [str(pid), "(%s)" % comm, state, str(ppid), str(pid), str(ppid or pid), "0", "-1",
              "4194560", "1520", "0", "0", "0", "12", "3", "0", "0", "20", "0", str(threads), "0",
              str(start_time), "230580224", "6144", "18446744073709551615",
              "94746581606400", "94746581628000", "140727313454944", "0", "0", "0", "0",
              "16781312", "1098911751", "1", "0", "0", "17", "1", "0", "0", "0", "0", "0",
              "94746581640000", "94746581641760", "94746603003904", "140727313460812",
              "140727313460839", "140727313460839", "140727313461225", "0"]
    assert len(fields) == 52
    return " ".join(fields) + "\n"


def status_text(pid, comm, ppid, uid, nspid=None):
    """/proc/<pid>/status in the Linux 6.x layout (values typical of a process)."""
    nspid = "\t".join(str(p) for p in (nspid or [pid]))
    ids = "\t".join([str(uid)] * 4)
    return (
        "Name:\t%s\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t%d\nNgid:\t0\nPid:\t%d\n"
        "PPid:\t%d\nTracerPid:\t0\nUid:\t%s\nGid:\t%s\nFDSize:\t64\nGroups:\t%d \n"
        "NStgid:\t%s\nNSpid:\t%s\nNSpgid:\t%d\nNSsid:\t%d\nKthread:\t0\n"
        "VmPeak:\t  225180 kB\nVmSize:\t  225180 kB\nVmLck:\t       0 kB\nVmPin:\t       0 kB\n"
        "VmHWM:\t   24576 kB\nVmRSS:\t   24576 kB\nRssAnon:\t    8192 kB\nRssFile:\t   16384 kB\n"
        "RssShmem:\t       0 kB\nVmData:\t   20480 kB\nVmStk:\t     132 kB\nVmExe:\t    2804 kB\n"
        "VmLib:\t    6464 kB\nVmPTE:\t     100 kB\nVmSwap:\t       0 kB\n"
        "HugetlbPages:\t       0 kB\n"
        "CoreDumping:\t0\nTHP_enabled:\t1\nThreads:\t1\nSigQ:\t0/96365\n"
        "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n"
        "SigIgn:\t0000000001001000\nSigCgt:\t0000000180004002\nCapInh:\t0000000000000000\n"
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n"
        "CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n"
        "Cpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0\n"
        "voluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n"
        % (comm, pid, pid, ppid, ids, ids, uid, nspid, nspid, pid, ppid or pid))


def proc_stat_text(btime=BTIME):
    """/proc/stat as Linux 6.x prints it for a 2-CPU machine (proc(5)): the cpu
    lines, a shortened intr line, ctxt, btime (boot time, epoch s), processes."""
    return ("cpu  10132 290 3084 468284 166 0 251 0 0 0\n"
            "cpu0 5066 145 1542 234142 83 0 125 0 0 0\n"
            "cpu1 5066 145 1542 234142 83 0 126 0 0 0\n"
            "intr 1462898 44 9 0 0 0 0 0 0 1 0 0 0 156 0 0 0\n"
            "ctxt 115315133\nbtime %d\nprocesses 86031\nprocs_running 2\nprocs_blocked 0\n"
            "softirq 987654 0 123456 12 23456 34567 0 4567 345678 0 456789\n" % btime)


def _write(path, data, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as fh:
        fh.write(data)


def write_pid(root, proc):
    """Write one /proc/<pid> directory from a spec dict.

    proc: pid, comm, argv (list of str/bytes), uid, ppid, start (ticks),
    cgroup, fds {fd: (target, fdinfo text or None)}, nspid (optional),
    mountinfo (optional), ns (optional pid ns link text).
    """
    base = os.path.join(root, str(proc["pid"]))
    os.makedirs(os.path.join(base, "fd"), exist_ok=True)
    os.makedirs(os.path.join(base, "fdinfo"), exist_ok=True)
    argv = [a.encode("utf-8") if isinstance(a, str) else a for a in proc["argv"]]
    _write(os.path.join(base, "cmdline"), b"".join(a + b"\0" for a in argv), "wb")
    _write(os.path.join(base, "comm"), proc["comm"] + "\n")
    _write(os.path.join(base, "stat"), stat_line(proc["pid"], proc["comm"], proc["ppid"],
                                                 proc["start"]))
    _write(os.path.join(base, "status"), status_text(proc["pid"], proc["comm"], proc["ppid"],
                                                     proc["uid"], proc.get("nspid")))
    _write(os.path.join(base, "cgroup"), proc.get("cgroup", CGROUP_HOST))
    for fd, (target, info) in sorted(proc["fds"].items()):
        os.symlink(target, os.path.join(base, "fd", str(fd)))
        if info is not None:
            _write(os.path.join(base, "fdinfo", str(fd)), info)
    if "mountinfo" in proc:
        _write(os.path.join(base, "mountinfo"), proc["mountinfo"])
    if proc.get("ns"):
        os.makedirs(os.path.join(base, "ns"), exist_ok=True)
        os.symlink(proc["ns"], os.path.join(base, "ns", "pid"))


def plain_fdinfo(fd, flags="02", ino=1000):
    """The four generic VFS lines every fdinfo file starts with."""
    return "pos:\t0\nflags:\t0%s\nmnt_id:\t15\nino:\t%d\n" % (flags, ino + fd)


def std_fds(extra=None, tty="/dev/null"):
    fds = {0: (tty, plain_fdinfo(0)), 1: (tty, plain_fdinfo(1)), 2: (tty, plain_fdinfo(2))}
    fds.update(extra or {})
    return fds


def proc_spec(pid, comm, argv, uid=1000, ppid=1, start=None, fds=None, **extra):
    spec = {"pid": pid, "comm": comm, "argv": argv, "uid": uid, "ppid": ppid,
            "start": start if start is not None else 1000 + pid, "fds": std_fds(fds)}
    spec.update(extra)
    return spec


def build_tree(root, procs, self_pid, notes, btime=BTIME):
    """Write a whole proc tree: pid dirs, self -> <self_pid>, stat (btime), PROVENANCE."""
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    if btime is not None:
        _write(os.path.join(root, "stat"), proc_stat_text(btime))
    for proc in procs:
        write_pid(root, proc)
    os.symlink(str(self_pid), os.path.join(root, "self"))
    _write(os.path.join(root, "PROVENANCE"), notes)


def drm(node, body):
    return ("/dev/dri/" + node, body)


# -- the trees -----------------------------------------------------------------

SECRET_ARGV = [
    "/opt/app/bin/gpu-app", "--password=hunter2", "--token", "tok-123",
    "--api-key=AKIA-XYZ", "OPENAI_API_KEY=sk-abc", "DB_PASSWORD=pw1",
    "--db-url", "postgres://alice:s3cret@db:5432/app", "\x1b[31m--evil\x1b[0m",
    "line\nbreak\x07", "--max-tokens", "512", "x" * 700]


def multi_procs():
    a_ = lambda name, **kw: retarget(sample_body(name), pdev=GPU_A, **kw)
    b_ = lambda name, **kw: retarget(sample_body(name), pdev=GPU_B, **kw)
    many = {}
    for fd in range(3, 1000):
        target = ("socket:[%d]" % (40000 + fd), "pipe:[%d]" % (50000 + fd),
                  "anon_inode:[eventfd]", "/dev/null",
                  "/home/user/.cache/chromium/Default/Cache/data_%d" % fd)[fd % 5]
        many[fd] = (target, None)
    return [
        proc_spec(1, "systemd", ["/sbin/init", "splash"], uid=0, ppid=0, start=1,
                  fds={3: ("socket:[1001]", plain_fdinfo(3)),
                       4: ("anon_inode:[eventpoll]", plain_fdinfo(4))}, ns=NS_HOST),
        proc_spec(4242, "python3", ["python3", "amdgpu_top_web.py"], uid=0,
                  fds={3: ("socket:[4243]", plain_fdinfo(3))}, ns=NS_HOST,
                  mountinfo=MOUNTINFO.format(hp="")),
        proc_spec(1200, "gnome-shell", ["/usr/bin/gnome-shell"],
                  fds={3: ("socket:[2001]", plain_fdinfo(3)),
                       12: drm("renderD129", a_(ISSUE87)), 13: drm("renderD129", a_(ISSUE87)),
                       14: drm("card1", a_(MIB))}),
        proc_spec(1300, "blender", ["blender", "--background", "scene.blend"],
                  fds={20: drm("renderD129", a_(RESIDENT))}),
        proc_spec(1301, "blender", ["blender", "--background", "scene.blend"], ppid=1300,
                  fds={20: drm("renderD129", a_(RESIDENT)),
                       21: drm("renderD129", a_(ISSUE87, client_id=218))}),
        proc_spec(1400, "Xwayland", ["/usr/bin/Xwayland", ":0"],
                  fds={30: drm("renderD129", a_(MIB, client_id=31))}),
        proc_spec(2400, "firefox", ["/usr/lib/firefox/firefox"],
                  fds={55: drm("renderD129", a_(MIB, client_id=31)),
                       56: drm("renderD129", a_(ISSUE87, client_id=219))}),
        proc_spec(1500, "llama-server", ["llama-server", "-m", "model.gguf", "-ngl", "99"],
                  cgroup=CGROUP_KUBEPODS_V1,
                  fds={5: drm("renderD129", a_(ISSUE87, client_id=40)),
                       6: drm("renderD130", b_(MIB, client_id=41))}),
        proc_spec(1600, "python3", ["python3", "train.py"], cgroup=CGROUP_DOCKER_V1,
                  fds={3: ("/dev/kfd", plain_fdinfo(3)), 4: drm("renderD129", a_(ROCMI))}),
        proc_spec(1700, "rocminfo", ["rocminfo"], uid=0,
                  fds={3: ("/dev/kfd", plain_fdinfo(3))}),
        proc_spec(1800, "glxgears", ["glxgears"],
                  fds={4: drm("renderD128", sample_body(I915_MEM))}),
        proc_spec(1801, "xe-app", ["xe-app"], fds={4: drm("renderD132", sample_body(XE))}),
        proc_spec(1802, "glxinfo", ["glxinfo"], fds={4: ("/dev/dri/renderD131", plain_fdinfo(4))}),
        proc_spec(1900, "npu-app", ["npu-app"],
                  fds={5: ("/dev/accel/accel0", sample_body(XDNA))}),
        proc_spec(2000, "chrome", ["/opt/google/chrome/chrome", "--type=renderer"], fds=many),
        proc_spec(2100, "gpu) (x y", SECRET_ARGV,
                  fds={9: drm("renderD129", a_(ISSUE87, client_id=50))}),
        proc_spec(2200, "vanisher", ["vanisher"], fds={7: drm("renderD129", None)}),
        proc_spec(2300, "podman-app", ["podman-app"], cgroup=CGROUP_PODMAN_V2,
                  fds={4: drm("renderD130", b_(RESIDENT, client_id=60))}),
        proc_spec(2301, "crio-app", ["crio-app"], cgroup=CGROUP_CRIO_V2),
        proc_spec(2302, "kube-proxy", ["kube-proxy"], cgroup=CGROUP_DOCKER_SCOPE_V2),
    ]


MULTI_NOTES = """testdata/proc/multi: an APP_PROC_ROOT for the process-top tests.
Generated by tests/make_proc_fixtures.py (do not edit by hand; rerun it).
Pairs with testdata/sys/multi_gpu: A = {a} RX 6900 XT (card1, renderD129), B = {b} Phoenix
(card2, renderD130); card0/renderD128 is the Intel iGPU {intel}, card3/renderD131 a radeon HD 7870.
fdinfo bodies are real samples (testdata/proc/fdinfo_samples/, from ../shared/reference/samples)
with drm-pdev and sometimes drm-client-id changed, nothing else:
  1200 gnome-shell fd 12,13 (dup'd, same client) renderD129: {i87} pdev->A, client 217 kept
       fd 14 card1: {mib} pdev->A, client 30 kept
  1300 blender fd 20 + 1301 blender (fork child) fd 20: {res} pdev->A, client 4 kept (shared)
  1301 fd 21: {i87} pdev->A, client 217->218
  1400 Xwayland fd 30 + 2400 firefox fd 55: {mib} pdev->A, client 30->31 (passed fd, unrelated pids)
  2400 fd 56: {i87} pdev->A, client ->219
  1500 llama-server fd 5: {i87} pdev->A client ->40; fd 6 renderD130: {mib} pdev->B client ->41
  1600 python3 (ROCm) fd 3 /dev/kfd; fd 4: {rocmi} pdev->A
  1700 rocminfo: only /dev/kfd
  1800 glxgears renderD128 (the Intel iGPU): {i915} verbatim (non-AMD)
  1801 xe-app renderD132: {xe} verbatim (drm-pdev 0000:03:00.0; non-AMD)
  1802 glxinfo renderD131 (radeon, which prints no usage stats): generic VFS lines only
  1900 npu-app /dev/accel/accel0: {xdna} verbatim (must never appear)
  2000 chrome: 1000 fds, none a GPU (no fdinfo files written for fds >= 3)
  2100 comm "gpu) (x y": secrets, ANSI escapes, control characters, 700-char argument;
       fd 9: {i87} pdev->A client ->50
  2200 vanisher: fd 7 -> renderD129 but fdinfo/7 missing (closed between readlink and read)
  2300 podman-app fd 4 renderD130: {res} pdev->B client ->60
cgroup files (real lines from public threads):
  1600: moby/moby#33352 (docker, cgroup v1)        1500: open-telemetry/opentelemetry-java#4507
  (containerd + systemd, cgroup v1)                2300: containers/podman#20423 (podman v2)
  2301: crio scope path from the systemd-cgls tree in kubernetes/minikube#11280
  2302: docker-<id>.scope path from the systemd-cgls tree in kontena/pharos-cluster#440
  others: a plain user-session cgroup v2 path.
stat (52 fields) and status follow the Linux 6.x layout; start_time (stat field 22) = 1000 + pid,
except pid 1 (1). The tree's own stat (proc(5) layout, 2 CPUs) has btime 1796544000
(2026-12-06T08:00:00Z): pid 1200 started 22 s after boot.
self -> 4242; 1/ns/pid and 4242/ns/pid are the same namespace; 4242/mountinfo
has a proc mount without hidepid. fd symlinks are dangling on purpose (only readlink is used).
""".format(a=GPU_A, b=GPU_B, intel=INTEL, i87=ISSUE87, mib=MIB, res=RESIDENT, rocmi=ROCMI,
           i915=I915_MEM, xe=XE, xdna=XDNA)


def legacy_procs():
    body = lambda pasid: retarget(sample_body(LEGACY), pdev=GPU_A, pasid=pasid)
    return [
        proc_spec(1, "systemd", ["/sbin/init"], uid=0, ppid=0, start=1, ns=NS_HOST),
        proc_spec(800, "python3", ["python3", "amdgpu_top_web.py"], uid=0, ns=NS_HOST,
                  mountinfo=MOUNTINFO.format(hp="")),
        proc_spec(3100, "glmark2", ["glmark2"],
                  fds={8: drm("renderD128", body(32774)), 9: drm("renderD128", body(32774))}),
        proc_spec(3101, "glmark2", ["glmark2"], ppid=3100,
                  fds={8: drm("renderD128", body(32774))}),
        proc_spec(3200, "mpv", ["mpv", "video.mkv"], fds={5: drm("card0", body(32775))}),
    ]


LEGACY_NOTES = """testdata/proc/legacy_5_15: amdgpu legacy fdinfo format (kernel 5.14-5.18).
Generated by tests/make_proc_fixtures.py. Every fdinfo is {leg}
(amdgpu_top issue #17, kernel 5.15) with pdev 0000:04:00.0 -> {a} (pairs with
testdata/sys/rx6900xt: card0, renderD128):
  3100 glmark2 fd 8, 9 (dup'd) and 3101 (fork child) fd 8: pasid 32774 kept (one client)
  3200 mpv fd 5 (card0): pasid 32774 -> 32775
self -> 800. Dedupe key for this format: (pdev, pasid).
""".format(leg=LEGACY, a=GPU_A)


def restricted_procs():
    return [
        proc_spec(5000, "python3", ["python3", "amdgpu_top_web.py"], ns=NS_HOST,
                  mountinfo=MOUNTINFO.format(hp=",hidepid=invisible")),
        proc_spec(5001, "supertuxkart", ["supertuxkart"],
                  fds={4: drm("renderD128", retarget(sample_body(MIB), pdev=GPU_A,
                                                     client_id=70))}),
    ]


RESTRICTED_NOTES = """testdata/proc/restricted: what a non-root user sees with hidepid=invisible.
Generated by tests/make_proc_fixtures.py. Pairs with testdata/sys/rx6900xt (card0,
renderD128 = {a}). Only the user's own PIDs exist (no pid 1, so the
PID-namespace check cannot be done: expect null). self -> 5000, whose mountinfo mounts proc
with hidepid=invisible. 5001 fd 4 renderD128: {mib} pdev -> {a}, client 30 -> 70.
""".format(mib=MIB, a=GPU_A)

TREES = {
    "multi": (multi_procs, 4242, MULTI_NOTES),
    "legacy_5_15": (legacy_procs, 800, LEGACY_NOTES),
    "restricted": (restricted_procs, 5000, RESTRICTED_NOTES),
}


def samples_dir():
    """../shared/reference/samples when present, else the committed copies."""
    return SHARED_SAMPLES if os.path.isdir(SHARED_SAMPLES) else COPIED_SAMPLES


def copy_samples(out):
    """Verbatim copies of the fdinfo samples so the repo is self-contained."""
    src, dest = samples_dir(), os.path.join(out, "fdinfo_samples")
    if os.path.abspath(src) == os.path.abspath(dest):
        return
    os.makedirs(dest, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name.startswith("fdinfo_"):
            shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
    _write(os.path.join(dest, "PROVENANCE"),
           "Verbatim copies of ../shared/reference/samples/fdinfo_*.txt (headers name each\n"
           "source). Copied by tests/make_proc_fixtures.py; tests parse them directly.\n")


# -- KFD (ROCm) sysfs: /sys/class/kfd/kfd (topology + per-process files) -------------
#
# Shapes from the kernel: kfd_topology.c node_show prints one "%s %u\n" / "%s %llu\n"
# line per property (decimal values, in this order on 6.x; GPU-only lines inside
# "if (dev->gpu)"), gpu_id and generation_id as "%u\n"; kfd_process.c makes
# proc/<pid>/{pasid,vram_<gpu_id>,sdma_<gpu_id>} ("%d\n", "%llu\n", "%llu\n"),
# stats_<gpu_id>/{evicted_ms,cu_occupancy} and queues/<id>/{size,type,gpuid}
# (printed without a newline). location_id = pci_dev_id() = bus << 8 | devfn.

KFD_GPU_A = 53512             # gpu_id of the RX 6900 XT (a 16-bit hash in the kernel)
KFD_GPU_B = 17409             # gpu_id of the Phoenix APU
KFD_NODE_KEYS = (
    "cpu_cores_count", "simd_count", "mem_banks_count", "caches_count", "io_links_count",
    "p2p_links_count", "cpu_core_id_base", "simd_id_base", "max_waves_per_simd",
    "lds_size_in_kb", "gds_size_in_kb", "num_gws", "wave_front_size", "array_count",
    "simd_arrays_per_engine", "cu_per_simd_array", "simd_per_cu", "max_slots_scratch_cu",
    "gfx_target_version", "vendor_id", "device_id", "location_id", "domain", "drm_render_minor",
    "hive_id", "num_sdma_engines", "num_sdma_xgmi_engines", "num_sdma_queues_per_engine",
    "num_cp_queues")
KFD_GPU_KEYS = ("max_engine_clk_fcompute", "local_mem_size", "fw_version", "capability",
                "sdma_fw_version", "unique_id", "num_xcc")


def kfd_location_id(pci):
    """"0000:0c:00.0" -> pci_dev_id(): bus << 8 | slot << 3 | function."""
    _, bus, rest = pci.split(":")
    slot, function = rest.split(".")
    return int(bus, 16) << 8 | int(slot, 16) << 3 | int(function, 16)


def kfd_properties(values, gpu=True):
    """A node's properties text: the 6.x node_show order, GPU-only lines for GPUs."""
    keys = KFD_NODE_KEYS + (KFD_GPU_KEYS if gpu else ()) + ("max_engine_clk_ccompute",)
    return "".join("%s %d\n" % (key, values.get(key, 0)) for key in keys)


def kfd_nodes():
    """(gpu_id, name, properties) of the multi_gpu box: a CPU node, the RX 6900 XT
    (gfx1030, device 0x73bf) and the Phoenix APU (gfx1103, device 0x15bf)."""
    cpu = kfd_properties({"cpu_cores_count": 16, "mem_banks_count": 1, "caches_count": 4,
                          "io_links_count": 2, "max_engine_clk_ccompute": 5100}, gpu=False)
    common = {"mem_banks_count": 1, "io_links_count": 1, "max_waves_per_simd": 16,
              "lds_size_in_kb": 64, "wave_front_size": 32, "simd_per_cu": 2,
              "vendor_id": 4098, "domain": 0, "num_sdma_queues_per_engine": 6,
              "num_cp_queues": 8, "capability": 671588992, "max_engine_clk_ccompute": 5100}
    a = dict(common, simd_count=160, caches_count=137, cpu_core_id_base=0, simd_id_base=2147487744,
             array_count=8, simd_arrays_per_engine=2, cu_per_simd_array=10,
             max_slots_scratch_cu=32, gfx_target_version=100300, device_id=0x73bf,
             location_id=kfd_location_id(GPU_A), drm_render_minor=129, num_sdma_engines=4,
             max_engine_clk_fcompute=2660, fw_version=118, sdma_fw_version=83,
             unique_id=0, num_xcc=1)
    b = dict(common, simd_count=24, caches_count=38, simd_id_base=2147488000, array_count=2,
             simd_arrays_per_engine=2, cu_per_simd_array=3, max_slots_scratch_cu=32,
             gfx_target_version=110003, device_id=0x15bf, location_id=kfd_location_id(GPU_B),
             drm_render_minor=130, num_sdma_engines=1, max_engine_clk_fcompute=2800,
             fw_version=2160, sdma_fw_version=21, unique_id=0, num_xcc=1)
    return [(0, "", cpu), (KFD_GPU_A, "sienna_cichlid", kfd_properties(a)),
            (KFD_GPU_B, "ip discovery", kfd_properties(b))]


def write_kfd_tree(sysfs_root, procs, nodes=None, sdma="fifo"):
    """<sysfs_root>/class/kfd/kfd: the topology of kfd_nodes() and, per pid in
    procs {pid: {gpu_id: vram bytes}}, the per-process files. sdma="fifo" makes
    every sdma_<gpu_id> and stats_<gpu_id>/cu_occupancy a FIFO: opening one
    blocks, so a reader that touches them hangs (the tests guard with a timeout)."""
    base = os.path.join(sysfs_root, "class", "kfd", "kfd")
    topo = os.path.join(base, "topology")
    _write(os.path.join(topo, "generation_id"), "1\n")
    _write(os.path.join(topo, "system_properties"),
           "platform_oem 0\nplatform_id 0\nplatform_rev 0\n")
    for index, (gpu_id, name, props) in enumerate(nodes or kfd_nodes()):
        node = os.path.join(topo, "nodes", str(index))
        _write(os.path.join(node, "gpu_id"), "%d\n" % gpu_id)
        _write(os.path.join(node, "name"), name + "\n")
        _write(os.path.join(node, "properties"), props)
    for pid, vram in sorted(procs.items()):
        _write_kfd_proc(os.path.join(base, "proc", str(pid)), pid, vram, sdma)
    return base


def _write_kfd_proc(pdir, pid, vram, sdma):
    _write(os.path.join(pdir, "pasid"), "%d\n" % (32768 + pid % 1000))
    for qid, gpu_id in enumerate(sorted(g for g, used in vram.items() if used)):
        queue = os.path.join(pdir, "queues", str(qid))
        _write(os.path.join(queue, "size"), "%d" % (1 << 20))
        _write(os.path.join(queue, "type"), "0")
        _write(os.path.join(queue, "gpuid"), "%d" % gpu_id)
    for gpu_id, used in sorted(vram.items()):
        _write(os.path.join(pdir, "vram_%d" % gpu_id), "%d\n" % used)
        stats = os.path.join(pdir, "stats_%d" % gpu_id)
        _write(os.path.join(stats, "evicted_ms"), "0\n")
        if sdma == "fifo":
            os.mkfifo(os.path.join(pdir, "sdma_%d" % gpu_id))
            os.mkfifo(os.path.join(stats, "cu_occupancy"))
        else:
            _write(os.path.join(pdir, "sdma_%d" % gpu_id), "0\n")
            _write(os.path.join(stats, "cu_occupancy"), "0\n")


def main(argv):
    out = argv[1] if len(argv) > 1 else OUT_DEFAULT
    os.makedirs(out, exist_ok=True)
    copy_samples(out)
    for name, (procs, self_pid, notes) in sorted(TREES.items()):
        build_tree(os.path.join(out, name), procs(), self_pid, notes)
    print("wrote %s: %s" % (out, ", ".join(sorted(TREES))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
