"""Pure parsers of the process top: fdinfo, /proc text, command lines, rate maths.

Every real sample in testdata/proc/fdinfo_samples/ (verbatim copies of
../shared/reference/samples/fdinfo_*.txt) is parsed and checked against the
oracle values written in its header.
"""
import os
import random
import stat

import pytest

import amdgpu_top_web as atw
import make_proc_fixtures as mpf

HERE = os.path.dirname(os.path.abspath(__file__))
PROC_DATA = os.path.join(os.path.dirname(HERE), "testdata", "proc")
SAMPLES = os.path.join(PROC_DATA, "fdinfo_samples")
KIB, MIB = 1024, 1024 * 1024


def sample(name):
    with open(os.path.join(SAMPLES, "fdinfo_%s.txt" % name), encoding="utf-8") as fh:
        return "".join(line for line in fh if not line.startswith("#"))


def fixture_file(*parts):
    with open(os.path.join(PROC_DATA, *parts), encoding="utf-8") as fh:
        return fh.read()


# -- every real sample against its oracle --------------------------------------

def test_sample_files_present():
    names = sorted(n for n in os.listdir(SAMPLES) if n.startswith("fdinfo_"))
    assert len(names) == 10, names


def test_issue87_drm_6x():
    rec = atw.parse_fdinfo(sample("amdgpu_drm_6.x_issue87"))
    assert (rec.driver, rec.pdev) == ("amdgpu", "0000:08:00.0")
    assert (rec.client_id, rec.pasid) == (217, 32784)
    assert not rec.legacy
    assert rec.memory == {"vram": 2068 * KIB, "gtt": 8192 * KIB, "cpu": 0}
    assert rec.total is None
    assert rec.engines_ns == {"gfx": 107322799}
    assert rec.capacity == {} and rec.cycles == {} and rec.legacy_pct == {}


def test_rocmi_amd_keys_no_engines():
    rec = atw.parse_fdinfo(sample("amdgpu_amd_keys_rocmi"))
    assert (rec.driver, rec.pdev) == ("amdgpu", "0000:83:00.0")
    assert (rec.client_id, rec.pasid) == (1203108, 32771)
    assert rec.memory == {"vram": 76 * KIB, "gtt": 44 * KIB, "cpu": 6200 * KIB}
    assert rec.engines_ns == {}                       # "never submitted work"
    assert atw.record_has_engine_data(rec)            # amdgpu prints engines once non-zero


def test_drm_total_mib_units_mixed_in_one_file():
    rec = atw.parse_fdinfo(sample("amdgpu_drm_total_mib_units_2024"))
    assert (rec.pdev, rec.client_id, rec.pasid) == ("0000:04:00.0", 30, 32785)
    # oracle: drm-total-gtt 22 MiB = 22528 KiB = legacy drm-memory-gtt
    assert rec.total == {"vram": 544428 * KIB, "gtt": 22 * MIB, "cpu": 0}
    assert rec.memory == {"vram": 544428 * KIB, "gtt": 22528 * KIB, "cpu": 0}
    assert rec.memory["gtt"] == rec.total["gtt"]
    assert rec.engines_ns == {"gfx": 39456116802}


def test_drm_total_resident_compute_engine():
    rec = atw.parse_fdinfo(sample("amdgpu_drm_total_resident_2024"))
    assert (rec.pdev, rec.client_id) == ("0000:04:00.0", 4)
    assert rec.total == {"vram": 44564 * KIB, "gtt": 2392 * KIB, "cpu": 0}
    assert rec.memory == rec.total                    # resident == total here (oracle)
    assert rec.engines_ns == {"compute": 46464671}


def test_partial_nvtop_sample_apu_gtt():
    rec = atw.parse_fdinfo(sample("amdgpu_6.18_partial_nvtop_pr492"))
    assert rec.memory == {"vram": 5348 * KIB, "gtt": 25258000 * KIB, "cpu": 0}
    assert rec.driver is None and rec.client_id is None and not rec.legacy


def test_legacy_5_15():
    rec = atw.parse_fdinfo(sample("amdgpu_legacy_5.15_issue17"))
    assert rec.legacy
    assert (rec.driver, rec.pdev) == ("amdgpu", "0000:04:00.0")
    assert (rec.pasid, rec.client_id) == (32774, None)
    assert rec.memory == {"vram": 17196 * KIB, "gtt": 6144 * KIB, "cpu": 0}   # kB means KiB
    assert rec.legacy_pct == {"gfx": 70.59}
    assert rec.engines_ns == {}


def test_amdxdna_npu_is_not_amdgpu():
    rec = atw.parse_fdinfo(sample("amdxdna_npu_issue324"))
    assert rec.driver == "amdxdna_accel_driver" and rec.client_id == 76
    assert rec.memory is None                         # region "memory" is not vram/gtt/cpu
    assert not atw.is_gpu_client(rec, "accel0", {"renderD128": "0000:c5:00.1"})


def test_i915_engines_capacity():
    rec = atw.parse_fdinfo(sample("i915_engines_kernel_doc"))
    assert (rec.driver, rec.pdev, rec.client_id) == ("i915", "0000:00:02.0", 7)
    assert rec.engines_ns == {"render": 9288864723, "copy": 2035071108, "video": 0,
                              "video-enhance": 0}
    assert rec.capacity == {"video": 2}
    assert rec.memory is None and rec.total is None


def test_i915_memory_regions():
    rec = atw.parse_fdinfo(sample("i915_with_memory_2023"))
    assert rec.client_id == 18
    # i915's system region holds GPU objects in system RAM, mapped through the
    # GTT: it is counted as GTT (xe keeps its own "gtt" and "system" apart)
    assert rec.total == {"vram": None, "gtt": 125 * MIB, "cpu": None}
    assert rec.memory == {"vram": None, "gtt": 125 * MIB, "cpu": None}
    assert rec.engines_ns["render"] == 25662044495


def test_xe_cycles_not_memory_totals():
    rec = atw.parse_fdinfo(sample("xe_cycles_kernel_doc"))
    assert (rec.driver, rec.client_id) == ("xe", 3)
    # drm-total-cycles-rcs must not be read as a memory region "cycles-rcs"
    assert rec.total == {"vram": 23992 * KIB, "gtt": 192 * KIB, "cpu": 0}
    assert rec.memory == {"vram": 23992 * KIB, "gtt": 192 * KIB, "cpu": 0}
    assert rec.cycles == {"rcs": 28257900, "bcs": 0, "vcs": 0, "vecs": 0, "ccs": 0}
    assert rec.total_cycles == dict.fromkeys(["rcs", "bcs", "vcs", "vecs", "ccs"], 7655183225)
    assert rec.capacity == {"vcs": 2, "vecs": 2, "ccs": 4}
    assert rec.engines_ns == {}


# -- format details -------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("4096", 4096), ("12 B", 12), ("76 KiB", 76 * KIB), ("17196 kB", 17196 * KIB),
    ("22 MiB", 22 * MIB), ("3 GiB", 3 << 30), ("  8192   KiB ", 8192 * KIB), ("7KiB", 7 * KIB),
    ("", None), ("abc", None), ("12 ns", None), ("-5 KiB", None), ("1.5 MiB", None), (None, None),
])
def test_parse_size(text, expected):
    assert atw.parse_size(text) == expected


def test_space_before_tab_and_any_key_order():
    text = sample("amdgpu_drm_total_resident_2024")
    assert "drm-memory-gtt: \t2392 KiB" in text     # the kernel's own quirk, kept verbatim
    lines = text.splitlines(True)
    rng = random.Random(7)
    expected = atw.parse_fdinfo(text)
    for _ in range(20):
        rng.shuffle(lines)
        assert atw.parse_fdinfo("".join(lines)) == expected


def test_resident_preferred_over_memory_alias_and_units_mixed():
    text = ("drm-driver:\tamdgpu\ndrm-client-id:\t9\ndrm-memory-vram:\t1024 KiB\n"
            "drm-resident-vram:\t2 MiB\ndrm-memory-gtt: \t4096\ndrm-total-gtt:\t1 GiB\n")
    rec = atw.parse_fdinfo(text)
    assert rec.memory == {"vram": 2 * MIB, "gtt": 4096, "cpu": None}
    assert rec.total == {"vram": None, "gtt": 1 << 30, "cpu": None}


def test_bytes_input_and_crlf():
    rec = atw.parse_fdinfo(sample("amdgpu_drm_6.x_issue87").replace("\n", "\r\n").encode())
    assert rec.client_id == 217 and rec.engines_ns == {"gfx": 107322799}


def test_legacy_rings_summed_and_capped_and_unpadded_fraction():
    # Lines built from the 5.14-5.18 kernel format "%s%d:\t%d.%d%%" (perc/100, perc%100).
    text = ("pdev:\t0000:04:00.0\npasid:\t32774\nvram mem:\t1 kB\ngtt mem:\t2 kB\ncpu mem:\t0 kB\n"
            "gfx0:\t70.59%\ngfx1:\t5.7%\ncompute0:\t120.0%\ncompute1:\t30.5%\n"
            "enc_10:\t12.0%\nenc0:\t3.0%\ndec0:\t0.9%\n")
    rec = atw.parse_fdinfo(text)
    assert rec.legacy
    assert rec.legacy_pct == {"gfx": 75.66, "compute": 130.05, "enc_1": 12.0, "enc": 3.0,
                              "dec": 0.09}
    assert atw.parse_legacy_pct("5.7%") == pytest.approx(5.07)
    assert atw.parse_legacy_pct("70.59%") == pytest.approx(70.59)
    assert atw.parse_legacy_pct("junk%") is None


def test_modern_file_with_pasid_is_not_legacy():
    rec = atw.parse_fdinfo(sample("amdgpu_amd_keys_rocmi"))
    assert not rec.legacy and rec.legacy_pct == {}


@pytest.mark.parametrize("text", [
    "", "\n\n", ":::", "drm-driver", "drm-client-id: x", "drm-engine-gfx: ns",
    "drm-memory-vram: lots", "gfx0: %", "pdev:", "\x00\xff\x10", "drm-engine-: 5 ns",
])
def test_garbage_never_raises(text):
    rec = atw.parse_fdinfo(text)
    assert isinstance(rec, atw.FdinfoRecord)


def test_fuzzed_samples_never_raise():
    rng = random.Random(1234)
    texts = [sample(n) for n in ("amdgpu_drm_total_mib_units_2024", "xe_cycles_kernel_doc",
                                 "amdgpu_legacy_5.15_issue17")]
    for _ in range(400):
        data = bytearray(rng.choice(texts).encode())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randrange(len(data))
        atw.parse_fdinfo(bytes(data[:cut]))          # half-written file: no exception


# -- dedupe keys, driver filter ---------------------------------------------------

def test_client_key_modern_legacy_and_fallback():
    modern = atw.parse_fdinfo(sample("amdgpu_drm_6.x_issue87"))
    legacy = atw.parse_fdinfo(sample("amdgpu_legacy_5.15_issue17"))
    bare = atw.parse_fdinfo("pos:\t0\nflags:\t02\n")
    assert atw.client_key(modern, "0000:08:00.0", 1, "5") == "0000:08:00.0/client/217"
    assert atw.client_key(legacy, "0000:04:00.0", 1, "5") == "0000:04:00.0/pasid/32774"
    assert atw.client_key(bare, "P", 10, "5") != atw.client_key(bare, "P", 11, "5")


def test_is_gpu_client():
    node_map = {"renderD128": "0000:0c:00.0"}
    i915 = atw.parse_fdinfo(sample("i915_engines_kernel_doc"))
    xe = atw.parse_fdinfo(sample("xe_cycles_kernel_doc"))
    amd = atw.parse_fdinfo(sample("amdgpu_drm_6.x_issue87"))
    statsless = atw.parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t12\n")
    assert atw.is_gpu_client(amd, "renderD999", node_map)
    assert atw.is_gpu_client(i915, "renderD999", node_map)          # Intel clients are kept
    assert atw.is_gpu_client(xe, "renderD999", node_map)
    assert not atw.is_gpu_client(i915, "renderD128", node_map, drivers=("amdgpu",))  # driver wins
    assert atw.is_gpu_client(statsless, "renderD128", node_map)     # pre-5.14 amdgpu node
    assert not atw.is_gpu_client(statsless, "renderD131", node_map)  # e.g. radeon


# -- fd targets --------------------------------------------------------------------

@pytest.mark.parametrize("target,expected", [
    ("/dev/dri/renderD128", ("drm", "renderD128")), ("/dev/dri/card1", ("drm", "card1")),
    ("/dev/dri/renderD129 (deleted)", ("drm", "renderD129")), ("/dev/kfd", ("kfd", None)),
    ("/dev/null", (None, None)), ("/dev/pts/3", (None, None)), ("socket:[1234]", (None, None)),
    ("pipe:[55]", (None, None)), ("anon_inode:[eventfd]", (None, None)),
    ("/dev/accel/accel0", (None, None)), ("/usr/lib/libc.so.6", (None, None)),
    ("/dev/dri/by-path", ("maybe_drm", None)), ("/dev/gpu0", ("maybe_drm", None)),
    ("/host/dev/dri/renderD130", ("maybe_drm", None)), ("/srv/card1-DP-1", (None, None)),
])
def test_classify_fd_target(target, expected):
    assert atw.classify_fd_target(target) == expected


def test_drm_node_from_rdev():
    chr_mode = stat.S_IFCHR | 0o660
    assert atw.drm_node_from_rdev(chr_mode, os.makedev(226, 128)) == "renderD128"
    assert atw.drm_node_from_rdev(chr_mode, os.makedev(226, 1)) == "card1"
    assert atw.drm_node_from_rdev(chr_mode, os.makedev(1, 3)) is None          # /dev/null
    assert atw.drm_node_from_rdev(stat.S_IFBLK | 0o660, os.makedev(226, 0)) is None


def test_select_fd_window_rotates_and_keeps_known():
    names = [str(n) for n in range(200)]
    first, nxt = atw.select_fd_window(names, 64, None, ["150"])
    assert first[:64] == [str(n) for n in range(64)] and first[64:] == ["150"] and nxt == 64
    second, nxt2 = atw.select_fd_window(names, 64, nxt, [])
    assert second == [str(n) for n in range(64, 128)] and nxt2 == 128
    last, done = atw.select_fd_window(names, 64, 192, [])
    assert last == [str(n) for n in range(192, 200)] and done is None
    small, none = atw.select_fd_window(["0", "1"], 64, 5, [])
    assert small == ["0", "1"] and none is None


# -- /proc text ----------------------------------------------------------------------

def test_parse_proc_stat_comm_with_spaces_and_parens():
    text = fixture_file("multi", "2100", "stat")
    assert len(text.rsplit(")", 1)[1].split()) == 50        # 52 fields in all
    assert atw.parse_proc_stat(text) == ("gpu) (x y", 3100)
    assert atw.parse_proc_stat("7 (a) (b)) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 "
                               "424242 21") == ("a) (b)", 424242)


def test_parse_proc_stat_real_and_broken():
    with open("/proc/self/stat") as fh:
        comm, start = atw.parse_proc_stat(fh.read())
    assert comm and isinstance(start, int) and start > 0
    assert atw.parse_proc_stat("") == (None, None)
    assert atw.parse_proc_stat("12 (half") == (None, None)
    assert atw.parse_proc_stat("12 (x) S 1 2 3")[1] is None          # half-written


def test_parse_status_uid_and_nspid():
    text = fixture_file("multi", "1200", "status")
    assert atw.parse_status_uid(text) == 1000
    assert atw.parse_status_uid(fixture_file("multi", "1", "status")) == 0
    assert atw.parse_status_uid("Name:\tx\n") is None and atw.parse_status_uid(None) is None
    with open("/proc/self/status") as fh:
        real = fh.read()
    assert atw.parse_status_uid(real) == os.getuid()
    assert atw.parse_status_nspid("NSpid:\t812\t1\n") == [812, 1]
    assert atw.parse_status_nspid(text) == [1200]


@pytest.mark.parametrize("pid,expected", [
    ("1600", "5dace3de0735"),     # docker, cgroup v1 (moby/moby#33352)
    ("1500", "ee4b20e90ac7"),     # containerd + systemd v1 (open-telemetry/opentelemetry-java#4507)
    ("2300", "cf21d19260ac"),     # podman v2 (containers/podman#20423)
    ("2301", "358607a37e7a"),     # CRI-O scope (kubernetes/minikube#11280)
    ("2302", "abddff03dfd7"),     # docker-<id>.scope under kubepods (kontena/pharos-cluster#440)
    ("1200", None),               # plain user session
])
def test_parse_cgroup_container_fixture_files(pid, expected):
    assert atw.parse_cgroup_container(fixture_file("multi", pid, "cgroup")) == expected


@pytest.mark.parametrize("text,expected", [
    ("0::/\n", None), ("", None), (None, None),
    ("0::/system.slice/docker-" + "ab" * 32 + ".scope\n", "ab" * 6),
    ("12:memory:/kubepods/burstable/pod0c3b-1d/" + "0123456789abcdef" * 4 + "\n", "0123456789ab"),
    ("0::/lxc.payload.web01/init.scope\n", "web01"),
    ("0::/machine.slice/machine-debian\\x2dtest.scope/payload\n", "debian-test"),
    ("12:net_cls:/docker/" + "1" * 64 + "\n0::/system.slice/containerd.service\n", "1" * 12),
])
def test_parse_cgroup_container_inline(text, expected):
    assert atw.parse_cgroup_container(text) == expected


def test_parse_hidepid():
    plain = fixture_file("multi", "4242", "mountinfo")
    hidden = fixture_file("restricted", "5000", "mountinfo")
    assert atw.parse_hidepid(plain) is False
    assert atw.parse_hidepid(hidden) == "invisible"
    mounts = "proc /proc proc rw,nosuid,nodev,noexec,relatime,hidepid=2 0 0\n"
    assert atw.parse_hidepid(mounts) == "2"
    assert atw.parse_hidepid("proc /proc proc rw,hidepid=0 0 0\n") is False
    assert atw.parse_hidepid("sysfs /sys sysfs rw 0 0\n") is None
    two = ("22 1 0:21 / /proc rw - proc proc rw\n"
           "90 1 0:44 / /host/my\\040proc rw - proc proc rw,hidepid=noaccess\n")
    assert atw.parse_hidepid(two, "/host/my proc") == "noaccess"
    assert atw.parse_hidepid(two, "/elsewhere") is False               # falls back to /proc
    with open("/proc/self/mountinfo") as fh:
        assert atw.parse_hidepid(fh.read()) in (False, "1", "2", "invisible", "noaccess",
                                                "ptraceable")


# -- command lines -------------------------------------------------------------------

def test_redact_fixture_cmdline():
    with open(os.path.join(PROC_DATA, "multi", "2100", "cmdline"), "rb") as fh:
        raw = fh.read()
    cmd = atw.redact_cmdline(raw, 512)
    assert len(cmd) == 512 and cmd.endswith("\u2026")
    assert cmd.startswith("/opt/app/bin/gpu-app --password=*** --token *** --api-key=*** "
                          "OPENAI_API_KEY=*** DB_PASSWORD=*** --db-url "
                          "postgres://alice:***@db:5432/app --evil line break --max-tokens 512 xxx")
    for secret in ("hunter2", "tok-123", "AKIA", "sk-abc", "pw1", "s3cret"):
        assert secret not in cmd
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in cmd)


@pytest.mark.parametrize("argv,expected", [
    (["app", "--password", "x1"], "app --password ***"),
    (["app", "--password=x1"], "app --password=***"),
    (["app", "-token", "x1"], "app -token ***"),
    (["app", "--hf-token", "x1", "--db-password=x2"], "app --hf-token *** --db-password=***"),
    (["app", "--client-secret", "x1"], "app --client-secret ***"),
    (["app", "--api_key", "x1", "--apikey=x2"], "app --api_key *** --apikey=***"),
    (["env", "AWS_SECRET_ACCESS_KEY=x1", "GH_TOKEN=x2", "MY_SECRET=x3", "PGPASSWORD=x4"],
     "env AWS_SECRET_ACCESS_KEY=*** GH_TOKEN=*** MY_SECRET=*** PGPASSWORD=***"),
    (["docker", "run", "-e", "API_KEY=x1", "--env=DB_PASSWORD=x2", "img"],
     "docker run -e API_KEY=*** --env=DB_PASSWORD=*** img"),
    (["sh", "-c", "mysql --password x1 -h db && X_TOKEN=x2 run"],
     "sh -c mysql --password *** -h db && X_TOKEN=*** run"),
    (["git", "clone", "https://bob:x1@example.com/r.git"],
     "git clone https://bob:***@example.com/r.git"),
    (["redis-cli", "-u", "redis://:x1@host:6379"], "redis-cli -u redis://:***@host:6379"),
    (["curl", "https://h/api?token=x1&page=2"], "curl https://h/api?token=***&page=2"),
    # not secrets: keep them readable
    (["vllm", "serve", "m", "--tokenizer", "tok", "--max-num-batched-tokens", "8192"],
     "vllm serve m --tokenizer tok --max-num-batched-tokens 8192"),
    (["app", "--password-file", "/run/secrets/pw", "--bypass", "yes"],
     "app --password-file /run/secrets/pw --bypass yes"),
    (["app", "--token", "--verbose"], "app --token --verbose"),
    (["app", "KEYBOARD=us", "MONKEY=1"], "app KEYBOARD=us MONKEY=1"),
])
def test_redact_cases(argv, expected):
    raw = b"".join(a.encode() + b"\0" for a in argv)
    assert atw.redact_cmdline(raw, 512) == expected


@pytest.mark.parametrize("argv,expected", [
    # credential headers: the scheme word stays, the credential goes
    (["curl", "-H", "Authorization: Bearer x1", "https://h"],
     "curl -H Authorization: Bearer *** https://h"),
    (["curl", "--header=Authorization: Basic eDE6eDI=", "https://h"],
     "curl --header=Authorization: Basic *** https://h"),
    (["curl", "-H", "X-Api-Key: x1", "-H", "Accept: text/plain", "https://h"],
     "curl -H X-Api-Key: *** -H Accept: text/plain https://h"),
    (["wget", "--header", "Cookie: session=x1", "https://h"],
     "wget --header Cookie: *** https://h"),
    (["sh", "-c", "curl -H 'Authorization: Bearer x1' https://h && echo ok"],
     "sh -c curl -H 'Authorization: Bearer ***' https://h && echo ok"),
    # -u user:password, --user=, --proxy-user: the user stays
    (["curl", "-u", "alice:x1", "https://h"], "curl -u alice:*** https://h"),
    (["curl", "-ualice:x1", "https://h"], "curl -ualice:*** https://h"),
    (["curl", "--user=alice:x1", "--proxy-user", "bob:x2"],
     "curl --user=alice:*** --proxy-user bob:***"),
    (["sh", "-c", "curl -u alice:x1 https://h"], "sh -c curl -u alice:*** https://h"),
    # --auth / --basic-auth take a secret whole
    (["http", "--auth=alice:x1", "https://h"], "http --auth=*** https://h"),
    (["app", "--auth", "x1", "--basic-auth=x2"], "app --auth *** --basic-auth=***"),
    # credentials in URLs
    (["psql", "postgres://alice:x1@db/app"], "psql postgres://alice:***@db/app"),
    (["curl", "https://alice:x1@h/path"], "curl https://alice:***@h/path"),
    # not secrets: -u/-U without a password, a uid:gid, a URL left to the URL rule
    (["python3", "-u", "train.py"], "python3 -u train.py"),
    (["sudo", "-u", "root", "ls"], "sudo -u root ls"),
    (["psql", "-U", "postgres"], "psql -U postgres"),
    (["docker", "run", "-u", "1000:1000", "img"], "docker run -u 1000:1000 img"),
    (["app", "--auth-type", "basic"], "app --auth-type basic"),
])
def test_redact_credentials_of_http_clients(argv, expected):
    raw = b"".join(a.encode() + b"\0" for a in argv)
    shown = atw.redact_cmdline(raw, 512)
    assert shown == expected
    assert "x1" not in shown and "x2" not in shown and "eDE6" not in shown


def test_redact_escapes_cannot_hide_keywords():
    raw = b"app\0--pass\x1b[0mword\0x1\0--to\x00ken=\0"
    cmd = atw.redact_cmdline(raw, 512)
    assert "x1" not in cmd and cmd.startswith("app --password ***")


def test_cmdline_control_ansi_bidi_and_bytes():
    raw = (b"\x1b]0;title\x07top\0\x1b[1;31mred\x1b[0m\0a\tb\nc\r\0bell\x07\0"
           b"\xe2\x80\xaeevil\0\xff\xfe\0")
    cmd = atw.redact_cmdline(raw, 512)
    assert cmd == "top red a b c bell evil \ufffd\ufffd"
    assert atw.redact_cmdline(b"", 512) == "" and atw.redact_cmdline(b"\0\0", 512) == ""
    assert atw.redact_cmdline("str input\0works", 512) == "str input works"


def test_cmdline_length_cap():
    raw = b"a" * 2000
    assert atw.redact_cmdline(raw, 512) == "a" * 511 + "\u2026"
    assert atw.redact_cmdline(raw, 10) == "a" * 9 + "\u2026"
    assert atw.redact_cmdline(b"short", 512) == "short"


# -- engine maths ----------------------------------------------------------------------

def test_compute_engine_pct_exact_first_backwards_capacity():
    assert atw.compute_engine_pct({"gfx": 0}, {"gfx": 250000000}, 10 ** 9) == {"gfx": 25.0}
    assert atw.compute_engine_pct(None, {"gfx": 5}, 10 ** 9) == {"gfx": None}
    assert atw.compute_engine_pct({"gfx": 9}, {"gfx": 5}, 10 ** 9) == {"gfx": None}
    assert atw.compute_engine_pct({"gfx": 0}, {"gfx": 5}, 0) == {"gfx": None}
    video = atw.compute_engine_pct({"video": 0}, {"video": 10 ** 9}, 10 ** 9, {"video": 2})
    assert video == {"video": 50.0}
    # amdgpu prints an engine once it is non-zero: absent before means 0
    assert atw.compute_engine_pct({}, {"dec": 100000000}, 10 ** 9) == {"dec": 10.0}


def test_compute_cycles_pct_xe():
    prev = ({"rcs": 1000, "ccs": 0}, {"rcs": 10000, "ccs": 10000})
    cur = ({"rcs": 3500, "ccs": 4000}, {"rcs": 20000, "ccs": 20000})
    assert atw.compute_cycles_pct(prev, cur, {"ccs": 4}) == {"rcs": 25.0, "ccs": 10.0}
    assert atw.compute_cycles_pct(None, cur) == {"rcs": None, "ccs": None}
    assert atw.compute_cycles_pct(cur, prev) == {"rcs": None, "ccs": None}


def test_compute_client_usage_sequence_keeps_max_after_backwards():
    base = sample("amdgpu_drm_6.x_issue87")

    def rec(ns):
        return atw.parse_fdinfo(base.replace("107322799", str(ns)))

    pct, ms, s1 = atw.compute_client_usage(None, rec(1000000000), 10 ** 9)
    assert pct == {"gfx": None} and ms is None                 # first sample
    pct, ms, s2 = atw.compute_client_usage(s1, rec(1250000000), 2 * 10 ** 9)
    assert pct == {"gfx": 25.0} and ms == 250.0
    pct, ms, s3 = atw.compute_client_usage(s2, rec(1200000000), 3 * 10 ** 9)
    assert pct == {"gfx": None} and ms is None                 # went backwards
    assert s3.engines_ns == {"gfx": 1250000000}                # keeps the larger value
    pct, ms, _ = atw.compute_client_usage(s3, rec(1350000000), 4 * 10 ** 9)
    assert pct == {"gfx": 10.0} and ms == 100.0                # measured from the max


def test_compute_client_usage_idle_amdgpu_client_and_legacy_and_xe():
    idle = atw.parse_fdinfo(sample("amdgpu_amd_keys_rocmi"))
    _, ms, s1 = atw.compute_client_usage(None, idle, 10 ** 9)
    assert ms is None
    pct, ms, _ = atw.compute_client_usage(s1, idle, 2 * 10 ** 9)
    assert pct == {} and ms == 0.0                             # no engine line yet = idle
    legacy = atw.parse_fdinfo(sample("amdgpu_legacy_5.15_issue17"))
    pct, ms, _ = atw.compute_client_usage(None, legacy, 10 ** 9)
    assert pct == {"gfx": 70.59} and ms == 705.9               # ring % used as-is
    xe_text = sample("xe_cycles_kernel_doc")
    xe1 = atw.parse_fdinfo(xe_text)
    xe2 = atw.parse_fdinfo(xe_text.replace("drm-cycles-rcs:\t28257900", "drm-cycles-rcs:\t78257900")
                           .replace("7655183225", "7855183225"))
    _, _, s = atw.compute_client_usage(None, xe1, 10 ** 9)
    pct, ms, _ = atw.compute_client_usage(s, xe2, 2 * 10 ** 9)
    assert pct["rcs"] == 25.0 and pct["ccs"] == 0.0 and ms == 250.0


def test_no_engine_keys_at_all_is_null():
    statsless = atw.parse_fdinfo("pos:\t0\nflags:\t02\n")
    _, _, s = atw.compute_client_usage(None, statsless, 1)
    assert atw.compute_client_usage(s, statsless, 2)[:2] == ({}, None)


# -- per-GPU tables --------------------------------------------------------------------

def _client(key, pci, vram, gtt, pct=None, ms=None):
    return {"key": key, "pci": pci, "node": "renderD128", "engines_pct": pct or {},
            "ms_per_s": ms, "vram": vram, "gtt": gtt, "cpu": 0, "vram_total": None,
            "gtt_total": None, "has_memory": True, "engine_capable": True}


def _proc(pid, clients, kfd=False):
    return {"pid": pid, "name": "p%d" % pid, "start_time": 1, "kfd": kfd, "clients": clients,
            "meta": {"cmd": "", "uid": 0, "user": "root", "container": None}}


def test_compute_procs_by_pci_dedupe_invariant():
    shared = _client("A/client/1", "A", 100, 10, {"gfx": 10.0}, 100.0)
    own = _client("A/client/2", "A", 5, 1, {"gfx": 1.0}, 10.0)
    other = _client("B/client/1", "B", 7, 0, {"gfx": 2.0}, 20.0)
    procs = [_proc(30, [shared, own]), _proc(20, [shared, other]), _proc(40, [], kfd=True)]
    by_pci = atw.compute_procs_by_pci(procs, ["A", "B", "C"])
    rows = {r["pid"]: r for r in by_pci["A"]["processes"]}
    assert rows[20]["vram_bytes"] == 100 and not rows[20]["shared"]       # lowest pid owns
    assert rows[30]["vram_bytes"] == 5 and rows[30]["shared"]
    assert rows[30]["engines_pct"] == {"gfx": 1.0} and rows[30]["gpu_time_ms_per_s"] == 10.0
    totals = by_pci["A"]["totals"]
    assert totals["vram_bytes"] == 105 and totals["clients"] == 2 and totals["processes"] == 3
    assert totals["engines_pct"] == {"gfx": 11.0} and totals["gpu_time_ms_per_s"] == 110.0
    assert [r["pid"] for r in by_pci["A"]["processes"]] == [20, 30, 40]   # vram+gtt desc
    assert rows[40]["kfd"] and rows[40]["render_node"] is None
    assert by_pci["B"]["totals"]["vram_bytes"] == 7
    assert by_pci["C"]["processes"][0]["pid"] == 40                       # kfd-only: every GPU
    assert by_pci["C"]["capabilities"]["vram_gtt_from_fdinfo"] is None    # nothing seen


def test_compute_visibility():
    same = atw.compute_visibility(0, "pid:[4026531836]", "pid:[4026531836]", [812], False, None)
    assert same == {"root": True, "pid_namespace_separate": False, "hidepid": False,
                    "self_container": None, "unreadable_pids": 0, "visible_pids": None}
    other = atw.compute_visibility(1000, "pid:[4026532718]", "pid:[4026531836]", [812],
                                   "invisible", "5dace3de0735")
    assert other["root"] is False and other["pid_namespace_separate"] is True
    assert other["hidepid"] == "invisible" and other["self_container"] == "5dace3de0735"
    assert atw.compute_visibility(1000, "pid:[1]", None, [812], None, None)[
        "pid_namespace_separate"] is None                       # pid 1 hidden
    assert atw.compute_visibility(1000, "pid:[1]", None, [812, 1], None, None)[
        "pid_namespace_separate"] is True                       # NSpid: nested namespace


# -- process start as wall clock ------------------------------------------------------

def test_btime_and_process_times():
    with open(os.path.join(PROC_DATA, "multi", "stat")) as fh:
        assert atw.parse_proc_btime(fh.read()) == 1796544000
    assert atw.parse_proc_btime("cpu  1 2 3\nctxt 5\n") is None
    assert atw.parse_proc_btime("btime x\n") is None and atw.parse_proc_btime(None) is None
    start = atw.compute_proc_start_s(2200, 1796544000, 100)          # 22 s after boot
    assert start == 1796544022.0
    assert atw.compute_proc_times(start, start + 3661.7) == {
        "started": "2026-12-06T08:00:22Z", "elapsed_s": 3661}
    assert atw.compute_proc_times(start, start - 5)["elapsed_s"] == 0   # clock stepped back
    assert atw.compute_proc_start_s(None, 1796544000, 100) is None
    assert atw.compute_proc_start_s(2200, None, 100) is None
    assert atw.compute_proc_times(None, 1.0) == {"started": None, "elapsed_s": None}
    assert atw.parse_utc_s("2026-12-06T08:00:22Z") == 1796544022
    assert atw.parse_utc_s(None) is None and atw.parse_utc_s("yesterday") is None


def test_elapsed_as_ps_prints_it():
    assert atw.format_elapsed(None) == "\u2014"
    assert atw.format_elapsed(5) == "00:05"
    assert atw.format_elapsed(3661) == "01:01:01"
    assert atw.format_elapsed(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2-03:04:05"


def test_demo_rows_have_started_and_elapsed():
    source = atw.DemoProcSource(atw.demo_gpu_infos(3), 4, wall_clock=lambda: 1796544000.0)
    for entry in source.scan().by_pci.values():
        for row in entry["processes"]:
            if not row["visible"]:                # NVML's PID from another namespace: no /proc
                assert (row["started"], row["elapsed_s"]) == (None, None)
                continue
            assert row["started"].endswith("Z") and row["elapsed_s"] >= 600, row


# -- KFD topology and per-process VRAM ---------------------------------------------------

# The MI100 (arcturus, gpu_id 42700) node of mrodden/rocmi tests/test_kfd.py at 181c6a2:
# one "name value" line per property, every value decimal (kfd_topology.c node_show).
ROCMI_PROPERTIES = (
    "cpu_cores_count 0\nsimd_count 480\nmem_banks_count 1\ncaches_count 217\nio_links_count 1\n"
    "p2p_links_count 3\ncpu_core_id_base 0\nsimd_id_base 2147487744\nmax_waves_per_simd 10\n"
    "lds_size_in_kb 64\ngds_size_in_kb 0\nnum_gws 64\nwave_front_size 64\narray_count 8\n"
    "simd_arrays_per_engine 1\ncu_per_simd_array 16\nsimd_per_cu 4\nmax_slots_scratch_cu 32\n"
    "gfx_target_version 90008\nvendor_id 4098\ndevice_id 29580\nlocation_id 8960\ndomain 0\n"
    "drm_render_minor 128\nhive_id 0\nnum_sdma_engines 2\nnum_sdma_xgmi_engines 6\n"
    "num_sdma_queues_per_engine 8\nnum_cp_queues 24\nmax_engine_clk_fcompute 1502\n"
    "local_mem_size 0\nfw_version 65\ncapability 749970048\ndebug_prop 1494\nsdma_fw_version 18\n"
    "unique_id 7809984429061111111\nnum_xcc 1\nmax_engine_clk_ccompute 2000\n")


def test_kfd_properties_and_pci_address():
    props = atw.parse_kfd_properties(ROCMI_PROPERTIES + "garbage\nname with spaces 3\n")
    assert props["location_id"] == 8960 and props["domain"] == 0
    assert props["unique_id"] == 7809984429061111111 and "garbage" not in props
    assert atw.kfd_node_pci(props) == "0000:23:00.0"                 # 8960 = 0x23 << 8
    assert atw.kfd_node_pci({"location_id": 0x2301, "domain": 1}) == "0001:23:00.1"
    assert atw.kfd_node_pci({"location_id": 0x2301}, function=False) == "0000:23:00.0"
    assert atw.kfd_node_pci({}) is None
    assert atw.parse_kfd_int("53512\n") == 53512 and atw.parse_kfd_int("") is None
    assert atw.parse_kfd_int(None) is None and atw.parse_kfd_int("-1\n") is None
    # the fixture builder writes the same shape
    nodes = [(g, atw.parse_kfd_properties(p)) for g, _, p in mpf.kfd_nodes()]
    assert atw.kfd_node_pci(nodes[1][1]) == mpf.GPU_A and atw.kfd_node_pci(nodes[2][1]) == mpf.GPU_B


def test_kfd_gpu_ids_map_to_our_gpus():
    mi100 = atw.parse_kfd_properties(ROCMI_PROPERTIES)
    node_map = {"renderD128": "0000:23:00.0", "card0": "0000:23:00.0"}
    cpu = {"cpu_cores_count": 16, "location_id": 0}
    nodes = [(0, cpu), (42700, mi100)]
    assert atw.compute_kfd_gpu_pcis(nodes, node_map, ["0000:23:00.0"]) == {42700: "0000:23:00.0"}
    # the render minor first: a partition (location_id low bits = partition index)
    part = dict(mi100, location_id=8961, drm_render_minor=129)
    node_map["renderD129"] = "0000:23:00.1"
    assert atw.compute_kfd_gpu_pcis([(7, part)], node_map, ["0000:23:00.0", "0000:23:00.1"]) == {
        7: "0000:23:00.1"}
    # no render node known: the PCI address, then function 0
    assert atw.compute_kfd_gpu_pcis([(7, dict(part, drm_render_minor=0))], {},
                                    ["0000:23:00.0"]) == {7: "0000:23:00.0"}
    assert atw.compute_kfd_gpu_pcis(nodes, {}, ["0000:0c:00.0"]) == {}      # not one of ours


def test_kfd_vram_per_gpu():
    pcis = {1: "0000:0c:00.0", 2: "0000:64:00.0"}
    assert atw.compute_kfd_vram({1: 5 << 20, 2: 0}, pcis) == {"0000:0c:00.0": 5 << 20,
                                                               "0000:64:00.0": 0}
    assert atw.compute_kfd_vram({1: 0, 2: 0}, pcis) is None          # no VRAM: GPU unknown
    assert atw.compute_kfd_vram({}, pcis) is None
    assert atw.compute_kfd_vram({9: 1 << 30}, pcis) is None          # gpu_id of no GPU of ours
