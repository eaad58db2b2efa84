"""Host metrics (issue #9): the /proc parsers, CPU % as psutil computes it,
per-process CPU % and RSS, and the host frame through a real server
(/api/host, the WebSocket, /metrics, /plain, --once)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import amdgpu_top_web as atw
import make_proc_fixtures as mpf
from conftest import PROGRAM, REPO, server_env, wait_for
from wsclient import RawWebSocket

# /proc/stat of a 4-CPU KVM host (Linux 6.x layout, man 5 proc): guest time
# (51210 ticks) is already inside user, as the kernel accounts it.
STAT_A = """\
cpu  1035430 3244 412066 35216011 28941 0 9820 0 51210 0
cpu0 262101 801 104223 8800010 7301 0 5120 0 12800 0
cpu1 258003 822 102511 8805022 7210 0 1560 0 12810 0
cpu2 257990 811 102100 8805400 7190 0 1570 0 12800 0
cpu3 257336 810 103232 8805579 7240 0 1570 0 12800 0
intr 118231937 9 0 0 0 0 0 0 0 1 0 0 0 4 0 0 0 0 0 0 0 0 0 0 0
ctxt 233019457
btime 1764661200
processes 912734
procs_running 2
procs_blocked 0
softirq 38120931 4 9838382 11 1283004 192821 0 90132 14732810 0 11983767
"""
# One second later: 400 ticks in all (4 CPUs x USER_HZ 100).
DELTA_B = (130, 0, 40, 200, 10, 0, 20, 0, 30, 0)
# Linux 6.x /proc/meminfo (the lines this program reads, among the others).
MEMINFO = """\
MemTotal:       32768000 kB
MemFree:         2048000 kB
MemAvailable:   20480000 kB
Buffers:          512000 kB
Cached:         16384000 kB
SwapCached:         1024 kB
Active:          9000000 kB
SwapTotal:       8388604 kB
SwapFree:        8126460 kB
Dirty:              1234 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap1G:    25165824 kB
"""
LOADAVG = "1.52 0.98 0.61 3/1208 424242\n"
# Documentation/accounting/psi.rst: "some" then "full", avg* in percent, total in us.
PRESSURE = ("some avg10=2.04 avg60=0.75 avg300=0.20 total=1234567\n"
            "full avg10=0.50 avg60=0.10 avg300=0.02 total=234567\n")


def stat_b():
    first = STAT_A.splitlines()[0].split()
    values = [int(v) + d for v, d in zip(first[1:], DELTA_B)]
    return STAT_A.replace(STAT_A.splitlines()[0], "cpu  " + " ".join(map(str, values)), 1)


def psutil_busy_pct(t1, t2):
    """psutil's cpu_percent maths, written out independently: times in
    seconds by name (psutil/_pslinux.py cpu_times, psutil/__init__.py
    _cpu_tot_time, _cpu_busy_time, _cpu_busy_percent)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
             "guest", "guest_nice")

    def named(ticks):
        return dict(zip(names, [t / 100.0 for t in ticks]))

    def tot(t):
        return sum(t.values()) - t.get("guest", 0) - t.get("guest_nice", 0)

    def busy(t):
        return tot(t) - t["idle"] - t.get("iowait", 0)

    a, b = named(t1), named(t2)
    if busy(b) <= busy(a):
        return 0.0
    return round((busy(b) - busy(a)) / (tot(b) - tot(a)) * 100, 1)


def write_host_tree(root, stat=STAT_A, pressure=True):
    os.makedirs(os.path.join(root, "pressure"), exist_ok=True)
    for rel, text in (("stat", stat), ("meminfo", MEMINFO), ("loadavg", LOADAVG)):
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text)
    if pressure:
        with open(os.path.join(root, "pressure", "memory"), "w") as fh:
            fh.write(PRESSURE)
    return root


def rewrite(path, text):
    """In place (same inode): a kept fd sees the new text at its next pread."""
    with open(path, "r+") as fh:
        fh.write(text)
        fh.truncate()


# -- parsers ---------------------------------------------------------------------------

def test_parse_proc_stat_cpu_real_and_old_and_broken():
    times, count = atw.parse_proc_stat_cpu(STAT_A)
    assert times == (1035430, 3244, 412066, 35216011, 28941, 0, 9820, 0, 51210, 0)
    assert count == 4
    # 2.6.18: 8 fields (no guest), 1 CPU; an 11th future field is ignored like psutil does
    assert atw.parse_proc_stat_cpu("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\nintr 0\n") == (
        (1, 2, 3, 4, 5, 6, 7, 8), 1)
    assert atw.parse_proc_stat_cpu("cpu  1 2 3 4 5 6 7 8 9 10 11\n")[0] == tuple(range(1, 11))
    for bad in ("", None, "intr 1 2\n", "cpu  x y z w\n", "cpu  1 2\n"):
        assert atw.parse_proc_stat_cpu(bad) == (None, None)


def test_cpu_busy_pct_is_psutils_formula():
    a = atw.parse_proc_stat_cpu(STAT_A)[0]
    b = atw.parse_proc_stat_cpu(stat_b())[0]
    # total = 430 - 30 guest (already inside user) = 400 ticks; busy = total -
    # 200 idle - 10 iowait = 190: 47.5 %
    assert atw.compute_cpu_busy_pct(a, b) == psutil_busy_pct(a, b) == 47.5
    cases = [((10, 0, 10, 80, 0, 0, 0, 0), (20, 0, 15, 150, 5, 0, 0, 0)),      # no guest fields
             ((5, 1, 5, 100, 3, 0, 0, 2, 0, 0), (5, 1, 5, 200, 9, 0, 0, 2, 0, 0)),  # all idle
             ((0, 0, 0, 0, 0, 0, 0, 0, 0, 0), (97, 3, 0, 0, 0, 0, 0, 0, 90, 3))]    # all guest
    for t1, t2 in cases:
        assert atw.compute_cpu_busy_pct(t1, t2) == psutil_busy_pct(t1, t2)
    assert atw.compute_cpu_busy_pct(None, b) is None
    assert atw.compute_cpu_busy_pct(a, a) is None                 # no time passed
    # iowait going back (a known kernel quirk) never gives more than 100 %
    assert atw.compute_cpu_busy_pct((0, 0, 0, 100, 50), (40, 0, 0, 105, 20)) == 100.0


def test_parse_meminfo_loadavg_pressure():
    mem = atw.parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 32768000 * 1024 and mem["MemAvailable"] == 20480000 * 1024
    assert mem["HugePages_Total"] == 0 and mem["Hugepagesize"] == 2048 * 1024
    assert atw.parse_meminfo("") == {} and atw.parse_meminfo("junk\nX: y kB\n") == {}
    assert atw.parse_meminfo(MEMINFO, atw.MEMINFO_NAMES) == dict(
        (name, mem[name]) for name in atw.MEMINFO_NAMES)
    assert atw.parse_meminfo("MemTotal: 10 kB\nSwapFree: x kB", atw.MEMINFO_NAMES) == {"MemTotal": 10240}
    assert atw.parse_loadavg(LOADAVG) == (1.52, 0.98, 0.61)
    for bad in ("", None, "1.0 2.0", "a b c 1/2 3", "nan 1 2 1/1 1"):
        assert atw.parse_loadavg(bad) is None
    psi = atw.parse_pressure(PRESSURE)
    assert psi["some"] == {"avg10": 2.04, "avg60": 0.75, "avg300": 0.2, "total": 1234567}
    assert psi["full"]["avg10"] == 0.5
    assert atw.parse_pressure("some avg10=1.00 avg60=x total=5\n") == {"some": {"avg10": 1.0, "total": 5}}
    assert atw.parse_pressure("") == {} and atw.parse_pressure(None) == {}


def test_build_host_every_key_null_where_unknown():
    empty = atw.build_host()
    assert tuple(empty) == atw.HOST_KEYS and set(empty.values()) == {None}
    host = atw.build_host(47.5, 4, (1.52, 0.98, 0.61), atw.parse_meminfo(MEMINFO),
                          atw.parse_pressure(PRESSURE))
    assert tuple(host) == atw.HOST_KEYS
    assert host["mem_used_bytes"] == (32768000 - 20480000) * 1024        # MemTotal - MemAvailable
    assert host["swap_used_bytes"] == (8388604 - 8126460) * 1024
    assert (host["load1"], host["load15"], host["cpu_count"]) == (1.52, 0.61, 4)
    assert (host["mem_pressure_some_avg10"], host["mem_pressure_full_avg10"]) == (2.04, 0.5)
    # before 3.14 there is no MemAvailable; before 4.20 no PSI: null, never a guess
    old = atw.build_host(None, 1, None, {"MemTotal": 1 << 30, "MemFree": 1 << 29}, {})
    assert old["mem_used_bytes"] is None and old["mem_available_bytes"] is None
    assert old["mem_pressure_some_avg10"] is None and old["load1"] is None


# -- per-process CPU % and RSS ------------------------------------------------------------

def test_proc_stat_line_fields():
    text = mpf.stat_line(4321, "my (odd) name", 1, 777000)
    line = atw.parse_proc_stat_line(text)
    assert (line.comm, line.start_time) == ("my (odd) name", 777000)
    fields = text.rsplit(") ", 1)[1].split()                # field N is fields[N - 3]
    assert line.cpu_ticks == int(fields[11]) + int(fields[12])
    assert line.rss_pages == int(fields[21])
    assert atw.parse_proc_stat_line("") == atw.NO_PROC_STAT
    assert atw.parse_proc_stat(text) == ("my (odd) name", 777000)


def test_proc_cpu_meter_rate_reuse_and_prune():
    assert atw.compute_proc_cpu_pct((0.0, 100), (2.0, 500), 100) == 200.0   # 2 busy threads
    assert atw.compute_proc_cpu_pct(None, (2.0, 500), 100) is None
    assert atw.compute_proc_cpu_pct((2.0, 500), (2.0, 600), 100) is None
    assert atw.compute_proc_cpu_pct((0.0, 500), (1.0, 400), 100) is None    # went back
    meter = atw.ProcCpuMeter(100, 4096)
    line = atw.ProcStatLine("x", 5000, 1000, 256)
    assert meter.measure(7, line, 10.0) == (None, 256 * 4096)
    assert meter.measure(7, line._replace(cpu_ticks=1050), 11.0) == (50.0, 256 * 4096)
    # read again within the same scan (the PID is on two GPUs): the same value
    assert meter.measure(7, line._replace(cpu_ticks=1051), 11.01)[0] == 50.0
    # PID 7 reused by another process (another start time): starts fresh
    assert meter.measure(7, atw.ProcStatLine("y", 9000, 3, 10), 12.0) == (None, 40960)
    meter.prune({(7, 9000)})
    assert meter.measure(7, line._replace(cpu_ticks=2000), 13.0)[0] is None   # forgotten
    assert meter.measure(8, atw.NO_PROC_STAT, 13.0) == (None, None)


class Clock(object):
    def __init__(self, t=10 ** 9):
        self.t = t

    def __call__(self):
        return self.t


def set_utime(path, ticks, start=None):
    text = open(path).read()
    head, rest = text.split(") ", 1)
    fields = rest.split(" ")
    fields[11], fields[12] = str(ticks), "0"
    if start is not None:
        fields[19] = str(start)
    rewrite(path, head + ") " + " ".join(fields))


def test_scanner_rows_get_cpu_and_rss_keyed_by_start_time(tmp_path):
    root = str(tmp_path / "multi")
    shutil.copytree(os.path.join(REPO, "testdata", "proc", "multi"), root, symlinks=True)
    clock = Clock()
    scanner = atw.ProcScanner(root, clock_ns=clock, drivers=("amdgpu",), clk_tck=100,
                              page_size=4096, fd_count="listdir")
    scanner.set_node_map(mpf.NODE_MAP)
    stat = os.path.join(root, "1200", "stat")
    set_utime(stat, 1000)
    row = next(r for r in scanner.scan().by_pci[mpf.GPU_A]["processes"] if r["pid"] == 1200)
    assert row["cpu_pct"] is None and row["rss_bytes"] == 6144 * 4096
    set_utime(stat, 1150)
    clock.t += 2 * 10 ** 9
    row = next(r for r in scanner.refresh().by_pci[mpf.GPU_A]["processes"] if r["pid"] == 1200)
    assert row["cpu_pct"] == 75.0                         # 150 ticks / 100 Hz / 2 s
    set_utime(stat, 1300)
    clock.t += 2 * 10 ** 9
    row = next(r for r in scanner.scan().by_pci[mpf.GPU_A]["processes"] if r["pid"] == 1200)
    assert row["cpu_pct"] == 75.0                         # the full walk reuses the stat it reads
    set_utime(stat, 10, start=999999)                     # the PID now names another process
    clock.t += 2 * 10 ** 9
    row = next(r for r in scanner.scan().by_pci[mpf.GPU_A]["processes"] if r["pid"] == 1200)
    assert row["start_time"] == 999999 and row["cpu_pct"] is None


# -- the reader -------------------------------------------------------------------------

def test_host_reader_keeps_fds_and_survives_missing_psi(tmp_path):
    root = write_host_tree(str(tmp_path), pressure=False)
    reader = atw.HostReader(root)
    first = reader.sample(1.0)
    assert first["cpu_busy_pct"] is None and first["mem_total_bytes"] == 32768000 * 1024
    assert first["mem_pressure_some_avg10"] is None               # kernel < 4.20
    fds = [attr.fd for _, attr in reader._files]
    rewrite(os.path.join(root, "stat"), stat_b())
    second = reader.sample(2.0)
    assert second["cpu_busy_pct"] == 47.5 and second["cpu_count"] == 4
    assert [attr.fd for _, attr in reader._files] == fds          # one pread each, no reopen
    reader.close()


def test_real_proc_once_per_sample_is_cheap():
    reader = atw.HostReader("/proc")
    reader.sample(0.0)
    host = reader.sample(1.0)
    reader.close()
    assert host["mem_total_bytes"] and host["cpu_count"] >= 1
    assert set(host) == set(atw.HOST_KEYS)


# -- the protocol -------------------------------------------------------------------------

class FakeClient(object):
    subscription = ("*", True, "full")


def frame_of(kind, gpu_id=None):
    return atw.OutFrame(gpu_id, kind, b"{}", b"")


def test_host_frames_go_to_everyone_unless_turned_off():
    cache = atw.Cache(0.25, {})
    cache.set_gpus([atw.GpuInfo("card0", "0000:03:00.0", "1002:73bf", "c1", "x", "renderD128",
                                "amdgpu", False, True, None, None)])
    cache.publish_host(1000.0, atw.build_host(cpu_count=4))
    proto = atw.DashboardProtocol(cache, "auto")
    client = FakeClient()
    host, stats, gpus = frame_of("host"), frame_of("stats", "card0"), frame_of("gpus")
    assert proto.wants(client, host) and proto.wants(client, stats)

    def subscribe(**message):
        replies = proto.on_text(client, json.dumps(dict(message, type="subscribe")))
        decoder = atw.FrameDecoder(1 << 20, require_mask=False)
        out = []
        for wire in replies:
            decoder.feed(wire)
            out.append(json.loads(decoder.next_frame().payload))
        return out
    reply = subscribe(gpu_id="card0", host=False)
    assert reply[0] == {"type": "subscribed", "gpu_id": "card0", "host": False, "detail": "full"}
    assert not proto.wants(client, host) and proto.wants(client, stats) and proto.wants(client, gpus)
    reply = subscribe(gpu_id="host")
    assert reply[0]["host"] is True and [m["type"] for m in reply[1:]] == ["host"]
    assert proto.wants(client, host) and not proto.wants(client, stats) and proto.wants(client, gpus)
    for bad in ({"gpu_id": "host", "host": False}, {"gpu_id": "*", "host": "no"},
                {"gpu_id": "card9"}):
        assert subscribe(**bad)[0]["type"] == "error"
    hello = json.loads(cache.hello_payload("auto"))
    assert hello["host"]["cpu_count"] == 4
    assert set(hello["host_history"]["series"]) == set(atw.HOST_HISTORY_KEYS)
    assert hello["host_history"]["interval_ms"] == 1000


# -- a real server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_server(tmp_path_factory, server_module):
    root = write_host_tree(str(tmp_path_factory.mktemp("proc")))
    srv = server_module(args=["--demo"], env={
        "APP_PROC_ROOT": root, "APP_ENABLE_PROMETHEUS": "true", "APP_DEMO_GPUS": "1",
        "APP_PROC_ENABLE": "true"})
    wait_for(lambda: srv.get_json("/api/host")[1]["host"], 5, message="a host sample")
    rewrite(os.path.join(root, "stat"), stat_b())
    wait_for(lambda: srv.get_json("/api/host")[1]["host"]["cpu_busy_pct"] == 47.5, 5,
             message="CPU % from the rewritten /proc/stat")
    return srv


def test_api_host(host_server):
    status, body = host_server.get_json("/api/host")
    assert status == 200 and body["type"] == "host" and body["ts"].endswith("Z")
    assert list(body["host"]) == list(atw.HOST_KEYS)
    assert body["host"]["mem_used_bytes"] == (32768000 - 20480000) * 1024
    assert body["host"]["mem_pressure_full_avg10"] == 0.5


def test_ws_hello_and_host_frames(host_server):
    ws = RawWebSocket.connect("127.0.0.1", host_server.port)
    try:
        hello = ws.recv_json()
        assert hello["type"] == "hello" and list(hello["host"]) == list(atw.HOST_KEYS)
        assert hello["host_history"]["ts"] and set(hello["host_history"]["series"]) == set(
            atw.HOST_HISTORY_KEYS)
        frame = wait_for(lambda: _next_of(ws, "host"), 3, message="a host frame")
        assert set(frame) == {"type", "ts", "host"} and list(frame["host"]) == list(atw.HOST_KEYS)
        ws.send_json({"type": "subscribe", "gpu_id": "card0", "host": False})
        kinds = _kinds_for(ws, 1.5)
        assert "host" not in kinds and "stats" in kinds
        ws.send_json({"type": "subscribe", "gpu_id": "host"})
        kinds = _kinds_for(ws, 1.3)
        assert kinds[0] == "subscribed" and "host" in kinds and "stats" not in kinds
    finally:
        ws.sock.close()


def _next_of(ws, kind):
    msg = ws.recv_json(2.0)
    return msg if msg and msg.get("type") == kind else None


def _kinds_for(ws, seconds):
    import time
    deadline, kinds = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        msg = ws.recv_json(max(0.01, deadline - time.monotonic()))
        if msg is not None:
            kinds.append(msg["type"])
    return kinds


def test_metrics_host_families_pass_promtool(host_server):
    text = host_server.get("/metrics").body.decode()
    assert "amdgpu_host_memory_total_bytes %d\n" % (32768000 * 1024) in text
    assert "amdgpu_host_cpus 4\n" in text and "amdgpu_host_load15 0.61\n" in text
    assert "amdgpu_host_memory_pressure_some_ratio 0.0204\n" in text
    assert "# TYPE amdgpu_host_swap_used_bytes gauge" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    findings = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and findings.strip() == "", findings


def test_plain_has_a_host_table_and_process_cpu(host_server):
    body = host_server.get("/plain").body.decode()
    assert "<h2>Host</h2>" in body and "11.72\u00a0GiB / 31.25\u00a0GiB" in body      # RAM used / total
    assert "1.52 / 0.98 / 0.61" in body and "of 4\u00a0CPUs" in body
    assert "<th>CPU</th><th>RSS</th>" in body


def test_demo_rows_have_cpu_and_rss(host_server):
    rows = wait_for(lambda: host_server.get_json("/api/gpus/card0/procs")[1]["processes"], 5,
                    message="demo processes")
    assert all(r["cpu_pct"] is not None and r["rss_bytes"] > 0 for r in rows if r["visible"])


def run_once(*args, proc_root=None):
    env = server_env(env={"APP_PROC_ROOT": proc_root} if proc_root else {})
    out = subprocess.run([sys.executable, PROGRAM, "--demo", "--once"] + list(args), env=env,
                         capture_output=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def test_once_json_and_table_have_the_host(tmp_path):
    snapshot = json.loads(run_once("--json"))                # the real /proc: two reads 0.5 s apart
    assert list(snapshot["host"]) == list(atw.HOST_KEYS)
    assert snapshot["host"]["cpu_busy_pct"] is not None and snapshot["host"]["mem_total_bytes"]
    table = run_once(proc_root=write_host_tree(str(tmp_path)))
    assert table.splitlines()[0].startswith("host  cpu \u2014 of 4 CPUs  load 1.52 0.98 0.61")


def test_publish_host_feeds_listeners_sinks_and_history(tmp_path):
    cache = atw.Cache(0.25, {})
    frames, offers = [], []

    class Sink(object):
        def offer_host(self, epoch_s, host):
            offers.append((epoch_s, host))
    cache.add_listener(frames.append)
    cache.add_sink(Sink())
    sampler = atw.HostSampler(atw.HostReader(write_host_tree(str(tmp_path))), cache)
    sampler.tick()
    rewrite(os.path.join(str(tmp_path), "stat"), stat_b())
    sampler.tick()
    sampler.reader.close()
    assert [f.kind for f in frames] == ["host", "host"] and frames[0].gpu_id is None
    message = json.loads(frames[1].payload)
    assert message["type"] == "host" and message["host"]["cpu_busy_pct"] == 47.5
    assert [host["cpu_busy_pct"] for _, host in offers] == [None, 47.5]
    assert cache.host()[1] is offers[1][1]
    history = cache.host_history()
    assert len(history["ts"]) == 2 and history["series"]["cpu_busy_pct"] == [None, 47.5]
    assert history["series"]["mem_used_bytes"][1] == (32768000 - 20480000) * 1024


def test_sample_frames_are_encoded_only_when_asked_and_never_carry_nan():
    """With no client, a published stats/procs/host frame is kept unencoded
    (idle cost); asked for, it holds the builder's JSON; a value the encoder
    refuses goes out as null instead of raising in the thread that asked."""
    cache = atw.Cache(0.25, {})
    cache.set_gpus([atw.GpuInfo("card0", "0000:03:00.0", "1002:73bf", "c1", "x", "renderD128",
                                "amdgpu", False, True, None, None)])
    cache.publish_stats("card0", 1000.0, {"gpu_busy_pct": 7.0, "power_w": float("nan")})
    cache.publish_host(1000.0, atw.build_host(cpu_count=4))
    frames = cache.latest_frames("*", host=True)
    assert [f.kind for f in frames] == ["stats", "host"]
    assert all(f._payload is None and f._wire is None for f in frames)
    stats = json.loads(frames[0].payload)
    assert stats["type"] == "stats" and stats["gpu_id"] == "card0"
    assert stats["metrics"]["gpu_busy_pct"] == 7.0 and stats["metrics"]["power_w"] is None
    assert json.loads(frames[1].payload) == json.loads(atw.json_bytes(
        atw.build_host_message(1000.0, atw.build_host(cpu_count=4))))
    decoder = atw.FrameDecoder(1 << 20, require_mask=False)
    decoder.feed(frames[0].wire)
    assert decoder.next_frame().payload == frames[0].payload
