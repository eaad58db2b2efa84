"""Process top end to end: a real server on the multi_gpu sysfs fixture and the
multi /proc fixture delivers procs frames over the WebSocket and REST, and
--once --json carries the same process lists."""

import json
import os
import sqlite3
import subprocess
import sys

from websockets.sync.client import connect

from conftest import PROGRAM, SYSFS, TESTDATA, server_env

PROC_MULTI = os.path.join(TESTDATA, "proc", "multi")
PROC_ENV = {"APP_PROC_ROOT": PROC_MULTI, "APP_PROC_ENABLE": "true",
            "APP_PROC_SCAN_INTERVAL": "500ms", "APP_SAMPLE_INTERVAL": "100ms"}


def pids(message):
    return sorted(p["pid"] for p in message["processes"])


def next_procs(ws, gpu_id, not_ts=None):
    while True:
        message = json.loads(ws.recv(timeout=5))
        if message["type"] == "procs" and message["gpu_id"] == gpu_id and message["ts"] != not_ts:
            return message


def test_procs_frames_over_websocket_and_rest(server):
    srv = server(fixture="multi_gpu", env=PROC_ENV)
    with connect(srv.ws_url, open_timeout=5) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["features"]["procs"] is True
        card1, card2 = next_procs(ws, "card1"), next_procs(ws, "card2")
        # A later frame (watchlist refresh or next scan): the second sample of the
        # same unchanged fdinfo gives an engine share of exactly 0.0, not null.
        later = next_procs(ws, "card1", not_ts=card1["ts"])
    # Same PIDs as the scanner tests establish for this tree (RX 6900 XT and Phoenix).
    assert pids(card1) == [1200, 1300, 1301, 1400, 1500, 1600, 1700, 2100, 2400]
    assert pids(card2) == [1500, 1700, 2300]
    # Totals are sums over the listed rows (each client counted once).
    for message in (card1, card2):
        totals = message["totals"]
        assert totals["vram_bytes"] == sum(p["vram_bytes"] for p in message["processes"])
        assert totals["gtt_bytes"] == sum(p["gtt_bytes"] for p in message["processes"])
        assert set(message["visibility"]) >= {"root", "pid_namespace_separate", "hidepid",
                                              "unreadable_pids"}
    gnome = [p for p in later["processes"] if p["pid"] == 1200][0]
    assert gnome["engines_pct"] == {"gfx": 0.0} and gnome["gpu_time_ms_per_s"] == 0.0
    status, rest = srv.get_json("/api/gpus/card2/procs")
    assert status == 200 and rest["type"] == "procs" and pids(rest) == [1500, 1700, 2300]


def test_once_json_includes_processes():
    env = server_env("multi_gpu", env={"APP_PROC_ROOT": PROC_MULTI, "APP_PROC_ENABLE": "true"})
    out = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env,
                         capture_output=True, timeout=30, check=True)
    snapshot = json.loads(out.stdout)
    by_id = {gpu["id"]: gpu for gpu in snapshot["gpus"]}
    assert pids(by_id["card1"]["procs"]) == [1200, 1300, 1301, 1400, 1500, 1600, 1700, 2100, 2400]
    assert pids(by_id["card2"]["procs"]) == [1500, 1700, 2300]
    # Engine % needs two reads: --once takes them 0.5 s apart; the fixture's counters
    # do not move in between, so every engine that has a counter reads 0.0.
    assert snapshot["rates_over_s"] == 0.5
    for proc in by_id["card1"]["procs"]["processes"]:
        assert all(v == 0.0 for v in proc["engines_pct"].values()), proc["pid"]
    assert by_id["card1"]["procs"]["processes"][0]["engines_pct"]


def test_once_json_without_proc_scan():
    env = server_env("multi_gpu", env={"APP_PROC_ENABLE": "false"})
    out = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env,
                         capture_output=True, timeout=30, check=True)
    assert all(gpu["procs"] is None for gpu in json.loads(out.stdout)["gpus"])


SECRETS = ("hunter2", "tok-123", "AKIA-XYZ", "sk-abc", "pw1", "s3cret")


def test_secrets_never_leave_through_once_json_or_metrics(server):
    """pid 2100's command line carries a password, a token, an API key, *_KEY=,
    *_PASSWORD= and URL credentials: none may appear in --once --json or /metrics
    (REST, WebSocket and /plain are covered in test_abuse.py)."""
    env = server_env("multi_gpu", env={"APP_PROC_ROOT": PROC_MULTI, "APP_PROC_ENABLE": "true"})
    out = subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env,
                         capture_output=True, timeout=30, check=True).stdout.decode()
    cmds = [p["cmd"] for gpu in json.loads(out)["gpus"] for p in gpu["procs"]["processes"]
            if p["pid"] == 2100]
    assert cmds and "--password=" in cmds[0]          # the argument stays, its value goes
    srv = server(fixture="multi_gpu", env=dict(PROC_ENV, APP_ENABLE_PROMETHEUS="true",
                                               APP_PROMETHEUS_PROCESSES="50"))
    metrics = ""
    for _ in range(50):
        metrics = srv.get("/metrics").body.decode()
        if 'pid="2100"' in metrics:
            break
        import time
        time.sleep(0.1)
    assert 'pid="2100"' in metrics
    for secret in SECRETS:
        assert secret not in out and secret not in metrics, secret


# -- wall-clock start and elapsed; credentials of HTTP clients, live and stored -------------

import calendar  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import make_proc_fixtures as mpf  # noqa: E402
from conftest import wait_for  # noqa: E402

CURL_PID = 2500
CURL_ARGV = ["curl", "-H", "Authorization: Bearer hdr-e2e", "-H", "X-Api-Key: key-e2e",
             "-u", "alice:pw-e2e", "--auth=auth-e2e", "postgres://bob:url-e2e@db/app"]
CURL_SECRETS = ("hdr-e2e", "key-e2e", "pw-e2e", "auth-e2e", "url-e2e")
CURL_START_TICKS = 123456                      # 1234.56 s after the tree's btime
CURL_STARTED = "2026-12-06T08:20:34Z"          # 1796544000 + 1234 s


def curl_tree(tmp_path):
    """The multi tree plus pid 2500, a curl with credentials holding a client of card1."""
    root = str(tmp_path / "proc")
    shutil.copytree(PROC_MULTI, root, symlinks=True)
    body = mpf.retarget(mpf.sample_body(mpf.ISSUE87), pdev=mpf.GPU_A, client_id=90)
    mpf.write_pid(root, mpf.proc_spec(CURL_PID, "curl", CURL_ARGV, start=CURL_START_TICKS,
                                      fds={5: mpf.drm("renderD129", body)}))
    return root


def started_s(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def test_started_elapsed_and_redaction_live_stored_and_csv(server, tmp_path):
    root = curl_tree(tmp_path)
    history = str(tmp_path / "history.sqlite3")
    srv = server(fixture="multi_gpu", env=dict(PROC_ENV, APP_PROC_ROOT=root,
                                               APP_HISTORY_PATH=history))

    def live_row():
        status, body = srv.get_json("/api/gpus/card1/procs")
        return status == 200 and next((p for p in body.get("processes") or []
                                       if p["pid"] == CURL_PID), None)
    row = wait_for(live_row, 10, message="the curl process on card1")
    # started = btime + start_time / CLK_TCK; elapsed_s counts from there to the scan.
    assert row["start_time"] == CURL_START_TICKS and row["started"] == CURL_STARTED
    assert isinstance(row["elapsed_s"], int)
    assert 0 <= row["elapsed_s"] <= max(0, time.time() - started_s(CURL_STARTED)) + 1
    gnome = [p for p in json.loads(srv.get("/api/gpus/card1/procs").body)["processes"]
             if p["pid"] == 1200][0]
    assert gnome["started"] == "2026-12-06T08:00:22Z"
    assert row["cmd"] == ("curl -H Authorization: Bearer *** -H X-Api-Key: *** -u alice:*** "
                          "--auth=*** postgres://bob:***@db/app")
    plain = srv.get("/plain").body.decode()
    assert CURL_STARTED in plain and "<th>Elapsed</th>" in plain
    # The stored run (committed every 5 s) and its CSV: same start, same redaction.
    runs = wait_for(lambda: [r for r in srv.get_json("/api/processes?range=1h&gpu=card1")[1]
                             .get("processes", []) if r["pid"] == CURL_PID], 15,
                    message="the curl run in the history file")
    assert runs[0]["started"] == CURL_STARTED and isinstance(runs[0]["elapsed_s"], int)
    assert runs[0]["cmd"] == row["cmd"]
    text = srv.get("/api/processes?range=1h&gpu=card1&format=csv").body.decode()
    record = [r for r in csv.DictReader(io.StringIO(text)) if r["pid"] == str(CURL_PID)][0]
    assert record["started"] == CURL_STARTED and record["elapsed_s"].isdigit()
    for secret in CURL_SECRETS:
        assert secret not in json.dumps(row) and secret not in plain and secret not in text, secret
    srv.stop()
    with sqlite3.connect(history) as conn:                       # nothing secret on disk
        stored = conn.execute("SELECT cmd, started FROM runs WHERE pid = ?", (CURL_PID,)).fetchall()
    assert stored and all(cmd == row["cmd"] for cmd, _ in stored)
    assert stored[0][1] == started_s(CURL_STARTED)                # epoch s (btime: whole s)


def test_once_shows_started_and_elapsed(tmp_path):
    env = server_env("multi_gpu", env={"APP_PROC_ROOT": curl_tree(tmp_path),
                                       "APP_PROC_ENABLE": "true"})
    snapshot = json.loads(subprocess.run([sys.executable, PROGRAM, "--once", "--json"], env=env,
                                         capture_output=True, timeout=30, check=True).stdout)
    row = [p for g in snapshot["gpus"] if g["id"] == "card1" for p in g["procs"]["processes"]
           if p["pid"] == CURL_PID][0]
    assert row["started"] == CURL_STARTED and isinstance(row["elapsed_s"], int)
    table = subprocess.run([sys.executable, PROGRAM, "--once"], env=env, capture_output=True,
                           timeout=30, check=True).stdout.decode()
    line = [l for l in table.splitlines() if "pid %-7d" % CURL_PID in l][0]
    assert "started %s (" % CURL_STARTED in line


# -- KFD: a ROCm process on the GPU it holds VRAM on, through a real server ------------------

def test_kfd_process_on_its_gpu_through_the_server(server, tmp_path):
    """The multi_gpu sysfs plus /sys/class/kfd/kfd (topology of the RX 6900 XT and
    the Phoenix APU; pid 1700 holds 2 GiB of KFD VRAM on the RX 6900 XT only): 1700
    is listed on card1 alone, with that VRAM. Its sdma_* files are FIFOs: a server
    that opened one would hang its scan thread, and the frames would never come."""
    sysfs = str(tmp_path / "sys")
    shutil.copytree(os.path.join(SYSFS, "multi_gpu"), sysfs, symlinks=True)
    mpf.write_kfd_tree(sysfs, {1700: {mpf.KFD_GPU_A: 2 << 30, mpf.KFD_GPU_B: 0}})
    srv = server(sysfs_root=sysfs, env=PROC_ENV)

    def both():
        found = [srv.get_json("/api/gpus/%s/procs" % gpu)[1] for gpu in ("card1", "card2")]
        return all(m.get("processes") is not None and m["processes"] for m in found) and found
    card1, card2 = wait_for(both, 10, message="process lists of card1 and card2")
    rocm = [p for p in card1["processes"] if p["pid"] == 1700]
    assert rocm and rocm[0]["vram_bytes"] == 2 << 30 and rocm[0]["kfd"] is True
    assert pids(card2) == [1500, 2300]                   # not on the APU any more
    assert card1["capabilities"]["kfd_seen"] is True
