"""Who a process belongs to (#18 item 1): the pure cgroup parser on the path
shapes systemd, Docker, containerd, CRI-O, Podman, the kubelet and Slurm write
(attribution-fleet.md §2), the name lookups in the runtimes' own files, and the
fields on the live rows (fdinfo, NVML, demo), in history, CSV, /plain and
Prometheus through a real server."""

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys

import pytest

import amdgpu_top_web as m
import make_proc_fixtures as mpf
import nvml_support as S
from conftest import PROGRAM, SHARE, SYSFS, TESTDATA, wait_for
from nvml_support import fake_nvml_build, fake_nvml_lib  # noqa: F401 (fixtures)

ID_D = "5dace3de0735f73d2b5048f12d41a71741a02e49668de921fdae62f7e65dc498"   # moby issue
ID_K = "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459"   # containerd
ID_P = "cf21d19260ace8544fe8b769fc2638bf2c0873dfbfff0b6253f0569b26a1d5eb"   # podman
ID_C = "358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c"   # CRI-O
UID = "0125ec2f-b64a-4868-8f5b-94b56cbab864"
UID_ = UID.replace("-", "_")


def who(text):
    return m.parse_cgroup_who(text)


# -- the pure parser: one real shape per runtime / driver ------------------------------------

@pytest.mark.parametrize("text, unit", [
    ("0::/system.slice/ollama.service\n", "ollama.service"),
    ("0::/system.slice/slurmd.service\n", "slurmd.service"),
    ("0::/user.slice/user-1000.slice/session-1.scope\n", "session-1.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-tmaster-47247.scope\n",
     "user@1000.service/app-gnome-tmaster-47247.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Evince"
     "@12345.service\n", "user@1000.service/app-gnome-org.gnome.Evince@12345.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", "user@1000.service/init.scope"),
    ("0::/init.scope\n", "init.scope"),
    # a literal "-" in a name is \x2d: kept, as systemd names the unit (systemctl takes it)
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.notify\\x2drust.service\n",
     "user@1000.service/app-org.notify\\x2drust.service"),
    ("0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service"),
    # below the unit: slurmstepd's delegated tree and a container's own systemd are not units
    ("0::/system.slice/slurmstepd.scope/job_3385/step_0/user/task_0\n", "slurmstepd.scope"),
    ("0::/system.slice/docker-%s.scope/system.slice/foo.service\n" % ID_D, "docker-%s.scope" % ID_D),
    # no unit heads these (cgroupfs drivers, LXC, the root, a sibling cgroup namespace)
    ("0::/docker/%s\n" % ID_D, None),
    ("0::/kubepods/besteffort/pod%s/%s\n" % (UID, ID_K), None),
    ("0::/lxc.payload.web1\n", None),
    ("0::/\n", None),
    ("0::/../system.slice/ollama.service\n", None),
    ("", None),
])
def test_unit(text, unit):
    assert who(text).unit == unit


def test_docker_both_drivers_and_v1():
    for text in ("0::/system.slice/docker-%s.scope\n" % ID_D, "0::/docker/%s\n" % ID_D,
                 mpf.CGROUP_DOCKER_V1):
        w = who(text)
        assert (w.runtime, w.container_id, w.container) == ("docker", ID_D, ID_D[:12]), text
        assert (w.pod_uid, w.slurm) == (None, None)
    assert who(mpf.CGROUP_DOCKER_V1).unit is None          # 1:name=systemd:/ says nothing
    rootless = ("0::/user.slice/user-1000.slice/user@1000.service/user.slice/docker-%s.scope\n"
                % ID_D)
    assert who(rootless).unit == "user@1000.service/docker-%s.scope" % ID_D
    assert who(rootless).runtime == "docker"


def test_podman_crio_containerd_and_conmon():
    podman = who(mpf.CGROUP_PODMAN_V2)                    # .../libpod-<id>.scope/container
    assert (podman.runtime, podman.container_id) == ("podman", ID_P)
    assert podman.unit == "user@0.service/libpod-%s.scope" % ID_P
    crio = who(mpf.CGROUP_CRIO_V2)
    assert (crio.runtime, crio.container_id) == ("cri-o", ID_C)
    assert crio.pod_uid == "2ca4a155-3599-498d-bb9d-4446693fa3ea"
    conmon = who("0::/machine.slice/libpod-conmon-%s.scope\n" % ID_P)
    assert (conmon.runtime, conmon.container_id) == (None, None)   # the monitor, not the container
    assert conmon.unit == "libpod-conmon-%s.scope" % ID_P


@pytest.mark.parametrize("text", [
    # systemd driver: Burstable, BestEffort, Guaranteed (no QoS level)
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/"
    "cri-containerd-%s.scope\n" % (UID_, ID_K),
    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
    "cri-containerd-%s.scope\n" % (UID_, ID_K),
    "0::/kubepods.slice/kubepods-pod%s.slice/cri-containerd-%s.scope\n" % (UID_, ID_K),
    # cgroupfs driver
    "0::/kubepods/burstable/pod%s/%s\n" % (UID, ID_K),
    "0::/kubepods/pod%s/%s\n" % (UID, ID_K),
    # v1, containerd given the systemd "slice:prefix:id" literal (a real report)
    mpf.CGROUP_KUBEPODS_V1,
])
def test_kubernetes_pod_uid_and_container_id(text):
    w = who(text)
    assert (w.pod_uid, w.container_id) == (UID, ID_K)
    assert w.runtime in ("containerd", None)              # cgroupfs: the runtime is not said


def test_kubernetes_static_pod_uid_and_what_is_not_a_pod():
    md5 = "6f1e1b5a0f4c2d3e8a9b7c6d5e4f3a2b"
    assert who("0::/kubepods/burstable/pod%s/%s\n" % (md5, ID_K)).pod_uid == md5
    assert who("0::/system.slice/pod%s.service\n" % UID_).pod_uid is None    # no kubepods
    assert who("0::/kubepods/burstable/podnot-a-uid/%s\n" % ID_K).pod_uid is None


@pytest.mark.parametrize("text, slurm", [
    ("0::/system.slice/slurmstepd.scope/job_3385/step_0/user/task_0\n", {"job": 3385, "step": "0"}),
    ("0::/system.slice/slurmstepd.scope/job_3385/step_0/slurm\n", {"job": 3385, "step": "0"}),
    ("0::/system.slice/slurmstepd.scope/job_3385/step_extern/user/task_0\n",
     {"job": 3385, "step": "extern"}),
    ("0::/system.slice/slurmstepd.scope/job_3385/step_interactive/user/task_special\n",
     {"job": 3385, "step": "interactive"}),
    ("0::/system.slice/slurmstepd.scope/job_3385/step_batch/user/task_0\n",
     {"job": 3385, "step": "batch"}),
    ("0::/system.slice/node7_slurmstepd.scope/job_12/step_3/user/task_1\n",   # multiple slurmd
     {"job": 12, "step": "3"}),
    ("0::/system.slice/slurmstepd.scope/job_3385/step_weird/user\n", {"job": 3385, "step": None}),
    ("0::/system.slice/slurmstepd.scope/job_3385\n", {"job": 3385, "step": None}),
    # v1 (every controller; the name=systemd line still says slurmd.service)
    ("12:cpuset:/slurm/uid_1000/job_123/step_0/task_0\n4:memory:/slurm/uid_1000/job_123/step_0/"
     "task_0\n1:name=systemd:/system.slice/slurmd.service\n", {"job": 123, "step": "0"}),
    ("4:memory:/slurm/uid_1000/job_123/step_batch/task_0\n", {"job": 123, "step": "batch"}),
    ("0::/system.slice/slurmstepd.scope/system\n", None),        # slurmstepd's waiting area
    ("0::/system.slice/slurmd.service\n", None),
    ("4:memory:/slurm/uid_1000\n", None),
])
def test_slurm(text, slurm):
    assert who(text).slurm == slurm


USER_MGR = "0::/user.slice/user-1000.slice/user@1000.service"


@pytest.mark.parametrize("text", [
    # a user's own cgroups (systemd delegation) named like a job, a pod, another's container
    USER_MGR + "/x_slurmstepd.scope/job_123/step_0/user/task_0\n",
    USER_MGR + "/app.slice/slurmstepd.scope/job_123\n",
    USER_MGR + "/slurm/uid_0/job_123/step_0/task_0\n",
    USER_MGR + "/app.slice/docker-%s.scope\n" % ID_D,
    USER_MGR + "/app.slice/app-x.scope/cri-containerd-%s.scope\n" % ID_K,
    USER_MGR + "/kubepods.slice/kubepods-pod%s.slice/cri-containerd-%s.scope\n" % (UID_, ID_K),
    USER_MGR + "/kubepods/burstable/pod%s/%s\n" % (UID, ID_K),
    # the same, read from inside a cgroup namespace (a monitor in a container)
    "0::/../../user.slice/user-1000.slice/user@1000.service/x_slurmstepd.scope/job_123\n",
    "0::/../../user.slice/user-1000.slice/user@1000.service/app.slice/docker-%s.scope\n" % ID_D,
    # a container's own cgroups below its scope
    "0::/system.slice/docker-%s.scope/system.slice/slurmstepd.scope/job_9/step_0\n" % ID_D,
    "0::/system.slice/docker-%s.scope/kubepods/pod%s/x\n" % (ID_D, UID),
    "0::/system.slice/foo.service/kubepods.slice/kubepods-pod%s.slice/x\n" % UID_,
])
def test_look_alikes_below_a_user_manager_or_a_container_are_no_job_pod_or_container(text):
    w = who(text)
    assert (w.pod_uid, w.slurm) == (None, None), text
    if "user@1000.service" in text:
        assert (w.runtime, w.container_id, w.container) == (None, None, None), text


def test_rootless_containers_are_their_users_and_the_namespace_view_still_counts():
    own = who(USER_MGR + "/user.slice/docker-%s.scope/docker-%s.scope\n" % (ID_D, ID_K))
    assert (own.runtime, own.container_id, own.container) == ("docker", ID_D, ID_D[:12])
    podman = who(USER_MGR + "/user.slice/libpod-%s.scope/container\n" % ID_P)
    assert (podman.runtime, podman.container_id) == ("podman", ID_P)
    # read from the monitor's own cgroup namespace: "/.." up to an ancestor, then the root's shapes
    assert who("0::/../slurmstepd.scope/job_7/step_0/user/task_0\n").slurm == {"job": 7, "step": "0"}
    inside = who("0::/../../kubepods.slice/kubepods-pod%s.slice/cri-containerd-%s.scope\n"
                 % (UID_, ID_K))
    assert (inside.pod_uid, inside.container_id) == (UID, ID_K)


def test_lines_deleted_and_ordering():
    deleted = who("0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0 (deleted)\n")
    assert deleted.slurm == {"job": 7, "step": "0"} and deleted.unit == "slurmstepd.scope"
    assert who("0::/system.slice/ollama.service (deleted)\n").unit == "ollama.service"
    # hybrid: the v2 line first, then name=systemd, then the controllers
    hybrid = ("12:cpuset:/\n4:memory:/user.slice\n1:name=systemd:/system.slice/foo.service\n"
              "0::/system.slice/bar.service\n")
    assert who(hybrid).unit == "bar.service"
    assert who("1:name=systemd:/system.slice/foo.service\n0::/\n").unit == "foo.service"
    assert m.parse_cgroup_paths("garbage\n0::relative\n3:cpu:/a\n0::/\n") == ["/a"]


def test_unknown_shapes_are_all_null():
    for text in ("", "0::/\n", "0::/some/thing/else\n", "0::/machine.slice/qemu-1-vm.scope/vcpu0\n",
                 "nonsense", "0::/lxc.payload.web1\n"):
        w = who(text)
        assert (w.container_id, w.runtime, w.pod_uid, w.slurm) == (None, None, None, None), text
    assert who("0::/lxc.payload.web1\n").container == "web1"           # today's name, kept


def test_name_files_parsers():
    assert m.parse_k8s_pod_dir("inference_llama-7d9f_%s" % UID) == ("inference", "llama-7d9f", UID)
    for bad in (UID, "a_b", "ns_pod_notauid", "_pod_%s" % UID, "a_b_c_%s" % UID):
        assert m.parse_k8s_pod_dir(bad) is None, bad
    assert m.parse_k8s_container_link("llama-7d9f_inference_llama-server-%s.log" % ID_K) == (
        "llama-7d9f", "inference", "llama-server", ID_K)
    for bad in ("llama_inference_llama-%s.log" % ID_K[:40], "x.log", "a_b-%s.log" % ID_K):
        assert m.parse_k8s_container_link(bad) is None, bad
    assert m.parse_docker_config_name('{"ID": "x", "Name": "/trainer"}') == "trainer"
    assert m.parse_containers_storage_names(json.dumps([
        {"id": ID_P, "names": ["web", "alias"]}, {"id": "short", "names": ["x"]},
        {"id": ID_C, "names": []}, "junk"])) == {ID_P: "web"}
    assert m.parse_containers_storage_names("{}") == {} == m.parse_containers_storage_names("[")
    for bad in ("", "[]", "{", '{"Name": "/"}', '{"Name": 3}'):
        assert m.parse_docker_config_name(bad) is None, bad


def test_who_label_order():
    row = m.build_proc_row(pid=1, unit="u.service", container="abc", container_name="web",
                           k8s={"namespace": "ns", "pod": "p", "container": "c", "pod_uid": UID},
                           slurm={"job": 4, "step": "0"})
    assert m.compute_who_label(row) == "ns/p c"
    assert m.compute_who_label(dict(row, k8s=None)) == "job 4 step 0"
    assert m.compute_who_label(dict(row, k8s=None, slurm=None)) == "container web"
    assert m.compute_who_label(dict(row, k8s=None, slurm=None, container=None,
                                    container_name=None)) == "u.service"
    assert m.compute_who_label(m.build_proc_row(pid=1)) is None
    assert "pod ns/p (container c)" in m.format_who(row) and "unit u.service" in m.format_who(row)


# -- the fixture tree: a service, a Docker container, a pod, a Slurm step -----------------------

CGROUPS = {
    3100: "0::/system.slice/ollama.service\n",
    3200: "0::/system.slice/docker-%s.scope\n" % ID_D,
    3300: ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/"
           "cri-containerd-%s.scope\n" % (UID_, ID_K)),
    3400: "0::/system.slice/slurmstepd.scope/job_3385/step_0/user/task_0\n",
    3500: ("12:cpuset:/slurm/uid_1000/job_4096/step_batch/task_0\n"
           "4:memory:/slurm/uid_1000/job_4096/step_batch/task_0\n"
           "1:name=systemd:/system.slice/slurmd.service\n"),
    3600: "0::/machine.slice/libpod-%s.scope/container\n" % ID_P,
}
EXPECTED = {
    3100: {"unit": "ollama.service", "container": None, "container_name": None, "k8s": None,
           "slurm": None},
    3200: {"unit": "docker-%s.scope" % ID_D, "container": ID_D[:12], "container_name": "trainer",
           "k8s": None, "slurm": None},
    3300: {"unit": "cri-containerd-%s.scope" % ID_K, "container": ID_K[:12], "container_name": None,
           "k8s": {"namespace": "inference", "pod": "llama-7d9f", "container": "llama-server",
                   "pod_uid": UID}, "slurm": None},
    3400: {"unit": "slurmstepd.scope", "container": None, "container_name": None, "k8s": None,
           "slurm": {"job": 3385, "step": "0"}},
    3500: {"unit": "slurmd.service", "container": None, "container_name": None, "k8s": None,
           "slurm": {"job": 4096, "step": "batch"}},
    3600: {"unit": "libpod-%s.scope" % ID_P, "container": ID_P[:12], "container_name": "ollama-pod",
           "k8s": None, "slurm": None},
}
WHO_KEYS = ("unit", "container", "container_name", "k8s", "slurm")


def build_who_tree(root):
    """A /proc tree (pairs with sys/multi_gpu: renderD129 is card1) with one GPU
    process per owner, and the runtimes' files: {"proc", "docker", "pods", "links"}."""
    body = mpf.sample_body(mpf.ISSUE87)
    procs = [mpf.proc_spec(1, "systemd", ["/sbin/init"], uid=0, ppid=0, start=1, ns=mpf.NS_HOST),
             mpf.proc_spec(4242, "python3", ["python3", "amdgpu_top_web.py"], uid=0,
                           ns=mpf.NS_HOST, mountinfo=mpf.MOUNTINFO.format(hp=""))]
    names = {3100: "ollama", 3200: "python3", 3300: "llama-server", 3400: "pytorch", 3500: "batch",
             3600: "ollama"}
    for pid, cgroup in sorted(CGROUPS.items()):
        fd = mpf.drm("renderD129", mpf.retarget(body, pdev=mpf.GPU_A, client_id=pid))
        procs.append(mpf.proc_spec(pid, names[pid], [names[pid]], cgroup=cgroup, fds={5: fd}))
    dirs = dict((k, os.path.join(root, k)) for k in ("proc", "docker", "pods", "links", "storage"))
    mpf.build_tree(dirs["proc"], procs, 4242, "attribution test tree\n")
    config = os.path.join(dirs["docker"], "containers", ID_D, "config.v2.json")
    os.makedirs(os.path.dirname(config))
    with open(config, "w") as fh:     # moby's shape: the name stored with a leading "/"
        json.dump({"ID": ID_D, "Name": "/trainer", "Config": {"Labels": {}}}, fh)
    overlay = os.path.join(dirs["storage"], "overlay-containers")
    os.makedirs(overlay)
    with open(os.path.join(overlay, "containers.json"), "w") as fh:   # containers/storage's list
        json.dump([{"id": ID_D, "names": ["other"], "image": "x", "layer": "y", "metadata": ""}], fh)
    with open(os.path.join(overlay, "volatile-containers.json"), "w") as fh:   # podman run --rm
        json.dump([{"id": ID_P, "names": ["ollama-pod"], "image": "x", "layer": "z"}], fh)
    pod_dir = os.path.join(dirs["pods"], "inference_llama-7d9f_%s" % UID)
    for container in ("llama-server", "sidecar"):
        os.makedirs(os.path.join(pod_dir, container))
        open(os.path.join(pod_dir, container, "0.log"), "w").close()
    os.makedirs(os.path.join(dirs["pods"], "kube-system_coredns-5d78_%s" % UID.replace("0", "1")))
    os.makedirs(dirs["links"])
    os.symlink(os.path.join(pod_dir, "llama-server", "0.log"), os.path.join(
        dirs["links"], "llama-7d9f_inference_llama-server-%s.log" % ID_K))
    os.symlink(os.path.join(pod_dir, "sidecar", "0.log"), os.path.join(
        dirs["links"], "llama-7d9f_inference_sidecar-%s.log" % ID_D.replace("5", "6")))
    return dirs


def who_env(dirs, **extra):
    env = {"APP_PROC_ROOT": dirs["proc"], "APP_PROC_ENABLE": "true",
           "APP_PROC_SCAN_INTERVAL": "500ms", "APP_SAMPLE_INTERVAL": "100ms",
           "APP_DOCKER_ROOT": dirs["docker"], "APP_K8S_PODS_DIR": dirs["pods"],
           "APP_K8S_CONTAINERS_DIR": dirs["links"], "APP_CONTAINERS_STORAGE": dirs["storage"]}
    env.update(extra)
    return env


def who_of(row):
    return dict((k, row[k]) for k in WHO_KEYS)


def test_scanner_rows_name_each_owner_and_read_the_cgroup_once(tmp_path):
    dirs = build_who_tree(str(tmp_path))
    names = m.WhoNames(dirs["docker"], dirs["pods"], dirs["links"], storage_root=dirs["storage"])
    scanner = m.ProcScanner(dirs["proc"], full_walk_every=1, names=names)
    scanner.set_node_map(mpf.NODE_MAP)
    rows = dict((p["pid"], p) for p in scanner.scan().by_pci[mpf.GPU_A]["processes"])
    assert dict((pid, who_of(rows[pid])) for pid in CGROUPS) == EXPECTED
    # once per process: a changed file is not read again (every scan here is a full walk)
    with open(os.path.join(dirs["proc"], "3100", "cgroup"), "w") as fh:
        fh.write("0::/system.slice/other.service\n")
    rows = dict((p["pid"], p) for p in scanner.scan().by_pci[mpf.GPU_A]["processes"])
    assert rows[3100]["unit"] == "ollama.service"


def test_names_unreadable_or_off_leave_the_ids(tmp_path):
    dirs = build_who_tree(str(tmp_path))
    scanner = m.ProcScanner(dirs["proc"], names=m.WhoNames(None, None, None))
    scanner.set_node_map(mpf.NODE_MAP)
    rows = dict((p["pid"], p) for p in scanner.scan().by_pci[mpf.GPU_A]["processes"])
    assert rows[3200]["container"] == ID_D[:12] and rows[3200]["container_name"] is None
    assert rows[3300]["k8s"] == {"namespace": None, "pod": None, "container": None, "pod_uid": UID}
    os.chmod(os.path.join(dirs["docker"], "containers", ID_D, "config.v2.json"), 0)
    if os.geteuid() != 0:                                  # root reads a 0000 file
        assert m.WhoNames(dirs["docker"]).docker_name(ID_D) is None


def test_names_are_kept_ttl_then_read_again(tmp_path):
    dirs = build_who_tree(str(tmp_path))
    now = [100.0]
    names = m.WhoNames(dirs["docker"], dirs["pods"], dirs["links"], ttl_s=10.0,
                       clock=lambda: now[0])
    assert names.pods()[UID] == ("inference", "llama-7d9f")
    os.rename(os.path.join(dirs["pods"], "inference_llama-7d9f_%s" % UID),
              os.path.join(dirs["pods"], "prod_llama-7d9f_%s" % UID))
    now[0] += 9.0
    assert names.pods()[UID] == ("inference", "llama-7d9f")        # within the TTL: kept
    now[0] += 1.0
    assert names.pods()[UID] == ("prod", "llama-7d9f")             # then read again
    # a link naming another pod than the pod directory does: no container name (no guess)
    w = m.CgroupWho(None, ID_K[:12], ID_K, "containerd", UID, None)
    assert names.fields(w)["k8s"] == {"namespace": "prod", "pod": "llama-7d9f",
                                      "container": None, "pod_uid": UID}


def test_live_history_csv_plain_and_prometheus_through_a_server(server, tmp_path):
    dirs = build_who_tree(str(tmp_path / "t"))
    history = str(tmp_path / "history.sqlite3")
    srv = server(fixture="multi_gpu", env=who_env(
        dirs, APP_HISTORY_PATH=history, APP_ENABLE_PROMETHEUS="true",
        APP_PROMETHEUS_PROCESSES="8"))

    def live():
        status, body = srv.get_json("/api/gpus/card1/procs")
        rows = dict((p["pid"], p) for p in (body.get("processes") or []))
        return rows if status == 200 and set(CGROUPS) <= set(rows) else None
    rows = wait_for(live, 15, message="the fixture's processes on card1")
    assert dict((pid, who_of(rows[pid])) for pid in CGROUPS) == EXPECTED
    plain = srv.get("/plain?gpu=card1").body.decode("utf-8")
    assert "<th>Who</th>" in plain
    for text in ("pod inference/llama-7d9f (container llama-server)", "Slurm job 3385 step 0",
                 "container trainer (%s)" % ID_D[:12], "unit ollama.service"):
        assert text in plain, text
    metrics = srv.get("/metrics").body.decode("utf-8")
    assert 'pod="llama-7d9f"' in metrics and 'namespace="inference"' in metrics
    assert 'slurm_job="3385"' in metrics and 'container_name="trainer"' in metrics

    def runs():
        status, body = srv.get_json("/api/processes?range=1h&gpu=card1")
        found = dict((r["pid"], r) for r in (body.get("processes") or []))
        return found if set(CGROUPS) <= set(found) else None
    stored = wait_for(runs, 20, message="the runs in history")
    assert dict((pid, who_of(stored[pid])) for pid in CGROUPS) == EXPECTED
    table = list(csv.DictReader(io.StringIO(
        srv.get("/api/processes?range=1h&gpu=card1&format=csv").body.decode("utf-8"))))
    by_pid = dict((int(r["pid"]), r) for r in table)
    assert (by_pid[3300]["k8s_namespace"], by_pid[3300]["k8s_pod"], by_pid[3300]["k8s_container"],
            by_pid[3300]["k8s_pod_uid"]) == ("inference", "llama-7d9f", "llama-server", UID)
    assert (by_pid[3400]["slurm_job"], by_pid[3400]["slurm_step"]) == ("3385", "0")
    assert (by_pid[3200]["container_name"], by_pid[3100]["unit"]) == ("trainer", "ollama.service")
    srv.stop()
    conn = sqlite3.connect(history)                       # the real file holds them
    row = conn.execute("SELECT unit, k8s_pod, slurm_job, slurm_step FROM runs WHERE pid = 3400"
                       ).fetchone()
    conn.close()
    assert row == ("slurmstepd.scope", None, 3385, "0")


OLD_WHO_SQL = (" unit TEXT, container_name TEXT, k8s_namespace TEXT, k8s_pod TEXT, k8s_container"
               " TEXT, k8s_pod_uid TEXT, slurm_job INTEGER, slurm_step TEXT,")


def test_an_old_history_file_gains_the_columns_and_keeps_its_runs(tmp_path):
    t0 = 1796544000.0
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in m.history_schema():
        old = stmt.replace(OLD_WHO_SQL, "")
        assert "slurm_job" not in old
        conn.execute(old)
    conn.execute("PRAGMA application_id = %d" % m.HISTORY_APP_ID)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO runs(boot_id, pid, start_time, gpu_id, name, first_seen, last_seen,"
                 " ended, time_s, vram_s, gtt_s, engine_s, gpu_s, samples, started) VALUES"
                 " ('old', 9, 1, 'card1', 'old', ?, ?, ?, 0, 0, 0, 0, 0, 1, ?)",
                 (t0, t0 + 60, t0 + 60, t0))
    conn.close()
    store = m.HistoryStore(path, clock=lambda: t0 + 300, proc_root=str(tmp_path))
    store.open()
    try:
        assert store.status()["state"] == "ok"
        old = store.reader.query_runs(t0 - 10, t0 + 100)[0]
        assert (old["name"], old["unit"], old["k8s"], old["slurm"]) == ("old", None, None, None)
        row = dict(m.build_proc_row(pid=5, name="job", start_time=77, vram_bytes=1 << 30),
                   **EXPECTED[3300])
        store.offer_procs("card1", {"type": "procs", "gpu_id": "card1",
                                    "ts": m.format_ts(t0 + 200), "processes": [row]})
        store.cycle()
        new = [r for r in store.reader.query_runs(t0, t0 + 300) if r["pid"] == 5][0]
        assert who_of(new) == EXPECTED[3300]
    finally:
        store.close()


def test_demo_rows_carry_realistic_owners():
    backend = m.DemoBackend(8, 2, "none")
    source = backend.proc_source()
    source.set_gpus(backend.discover())
    for entry in source.scan().by_pci.values():
        rows = dict((p["name"], p) for p in entry["processes"])
        assert rows["llama-server"]["k8s"]["pod"] and rows["blender"]["slurm"]["job"]
        assert rows["python3"]["container_name"] == "trainer"
        assert list(rows["mpv"]) == [k for k, _ in m.PROC_ROW_DEFAULTS]
        assert (rows["mpv"]["unit"], rows["mpv"]["k8s"], rows["mpv"]["slurm"]) == (None, None, None)


def test_nvml_rows_carry_the_owners(fake_nvml_lib, tmp_path):
    """The stand-in NVML lists the fixture's PIDs: --once --json gives each NVML row
    the same owners as the fdinfo rows (ProcEnricher serves both)."""
    dirs = build_who_tree(str(tmp_path / "t"))
    scenario = str(tmp_path / "scenario.txt")
    S.write_scenario(scenario, gpus=[dict(name="NVIDIA H100 80GB HBM3", pci="00000000:9A:00.0")],
                     procs=[dict(gpu=0, list="compute", pid=pid, mem=1 << 30) for pid in CGROUPS])
    env = S.nvml_env(fake_nvml_lib, scenario, base={k: v for k, v in os.environ.items()
                                                    if not k.startswith("APP_")})
    env.update(who_env(dirs, APP_SYSFS_ROOT=os.path.join(SYSFS, "hd7870_radeon"),
                       APP_SHARE_ROOT=SHARE, APP_HISTORY_PATH="off"))
    out = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], cwd=TESTDATA, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    gpu = [g for g in json.loads(out.stdout)["gpus"] if g["vendor"] == "nvidia"][0]
    rows = dict((p["pid"], p) for p in gpu["procs"]["processes"])
    assert dict((pid, who_of(rows[pid])) for pid in CGROUPS) == EXPECTED


def test_once_text_names_who():
    info = m.GpuInfo(id="card1", pci="0000:03:00.0", pci_id="1002:73bf", revision="c0",
                     name="AMD Radeon RX 6900 XT", render_node="/dev/dri/renderD128",
                     driver="amdgpu", apu=False, demo=False, device_dir=None, hwmon_dir=None)
    rows = [dict(m.build_proc_row(pid=3400, name="pytorch"), **EXPECTED[3400]),
            m.build_proc_row(pid=7, name="plain")]
    gpu = dict(m.identity_json(info), metrics=dict.fromkeys(m.METRIC_KEYS),
               procs={"processes": rows})
    lines = m.format_once_table([gpu]).splitlines()
    assert [l for l in lines if "pid 3400" in l][0].endswith("  who job 3385 step 0")
    assert "who" not in [l for l in lines if "pid 7 " in l][0]
