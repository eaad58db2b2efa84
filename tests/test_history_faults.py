"""The history store under faults, on REAL SQLite files: a kill mid-batch, a
full disk, the free-space floor, a read-only filesystem, a corrupt, foreign or
newer file, a second server on the same file. Mounts need root (tmpfs); they
and the subprocess tests run on the main Python (3.11) only."""

import collections
import hashlib
import logging
import os
import re
import stat
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import amdgpu_top_web as m

T0 = 1764680400.0
MAIN_PYTHON = sys.version_info[:2] == (3, 11)
main_only = pytest.mark.skipif(not MAIN_PYTHON, reason="subprocess/mount tests: main Python only")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

StatVfs = collections.namedtuple("StatVfs", "f_bavail f_frsize")


class Clock(object):
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def sample(busy=50.0):
    return {"gpu_busy_pct": busy, "temp_c": 55.0, "vram_used_bytes": 5 << 30, "power_w": 200.0}


def feed(store, clock, seconds, gpus=("card1",)):
    for i in range(int(seconds * 4)):
        for gpu in gpus:
            store.offer_stats(gpu, clock.now + i / 4.0, sample(i % 100))
    clock.now += seconds


def open_store(path, clock, **kwargs):
    store = m.HistoryStore(path, clock=clock, proc_root="/nonexistent", **kwargs)
    store.open()
    return store


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs directory (root only; skipped elsewhere)."""
    mounted = []

    def mount(size="2m", options=""):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / ("mnt%d" % len(mounted))
        where.mkdir()
        opts = "size=%s%s" % (size, "," + options if options else "")
        rc = subprocess.call(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                             stderr=subprocess.DEVNULL)
        if rc != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(str(where))
        return str(where)
    yield mount
    for where in reversed(mounted):
        subprocess.call(["umount", "-l", where])


def quick_check(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()


KILL_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import amdgpu_top_web as m
    class Clock(object):
        now = %r
        def __call__(self):
            return self.now
    clock = Clock()
    store = m.HistoryStore(sys.argv[1], clock=clock, proc_root="/nonexistent", min_free_bytes=0)
    store.open()
    second = 0
    while True:
        for _ in range(5):                      # one batch = 5 s of 8 GPUs at 4 Hz
            for q in range(4):
                for g in range(8):
                    store.offer_stats("card%%d" %% g, clock.now + q / 4.0,
                                      {"gpu_busy_pct": 50.0, "temp_c": 40.0 + g})
            clock.now += 1
            second += 1
        store.cycle()
        print(second, flush=True)
""") % T0


@main_only
def test_sigkill_mid_batch_loses_at_most_one_batch(tmp_path):
    path = str(tmp_path / "h.sqlite3")
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, path, REPO],
                             stdout=subprocess.PIPE)
    committed = 0
    deadline = time.monotonic() + 20
    while committed < 400 and time.monotonic() < deadline:
        committed = int(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait(5)
    for line in child.stdout:                 # batches it reported before dying
        committed = int(line)
    child.stdout.close()
    assert quick_check(path) == "ok"
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT count(*) FROM gpu_raw").fetchone()[0]
    conn.close()
    # every second it reported is there, except the one still open (8 GPUs a second),
    # and at most one batch more (committed but not yet reported)
    assert (committed - 1) * 8 <= rows <= (committed + 5) * 8
    store = open_store(path, Clock(T0 + committed + 10), min_free_bytes=0)
    assert store.status()["state"] == "ok"
    store.close()


@main_only
def test_disk_full_pauses_and_resumes(tmpfs, caplog):
    where = tmpfs("4m")
    path = os.path.join(where, "h.sqlite3")
    clock = Clock()
    changes = []
    store = open_store(path, clock, min_free_bytes=0, on_change=changes.append)
    feed(store, clock, 10)
    store.cycle()
    assert store.status()["state"] == "ok"
    filler = os.path.join(where, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        for _ in range(20):                   # until SQLite needs a page it cannot get
            feed(store, clock, 60, gpus=["card%d" % g for g in range(8)])
            store.cycle()
            if store.status()["state"] == "paused":
                break
    status = store.status()
    assert status["state"] == "paused" and "full" in status["reason"], status
    assert changes[-1]["state"] == "paused" and status["dropped"] > 0
    assert sum("event=history_paused" in r.getMessage() for r in caplog.records) == 1
    store.offer_stats("card1", clock.now, sample())       # never raises, never blocks
    os.unlink(filler)
    feed(store, clock, 10)
    store.cycle()
    assert store.status()["state"] == "ok" and changes[-1]["state"] == "ok"
    store.close()
    assert quick_check(path) == "ok"


def test_free_space_floor_pauses_before_full(tmp_path):
    free = [10 << 20]
    clock = Clock()
    store = open_store(str(tmp_path / "h.sqlite3"), clock, min_free_bytes=50 << 20,
                       statvfs=lambda _: StatVfs(free[0] // 4096, 4096))
    feed(store, clock, 10)
    store.cycle()
    status = store.status()
    assert status["state"] == "paused" and "floor" in status["reason"]
    assert store.reader.query_series("gpu", "card1", T0, T0 + 10)["count"] == [0] * 10
    free[0] = 1 << 30
    feed(store, clock, 10)
    store.cycle()
    assert store.status()["state"] == "ok"
    assert store.reader.query_series("gpu", "card1", T0 + 10, T0 + 19)["count"][0] == 4
    store.close()


@main_only
def test_read_only_filesystem_is_memory_only(tmpfs, caplog):
    where = tmpfs("1m")
    path = os.path.join(where, "h.sqlite3")
    clock = Clock()
    store = open_store(path, clock, min_free_bytes=0)
    feed(store, clock, 5)
    store.cycle(final=True)
    store.close()
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert subprocess.call(["mount", "-o", "remount,ro", where]) == 0
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        store = open_store(path, clock, min_free_bytes=0)
    status = store.status()
    assert status["state"] == "memory" and status["reason"], status
    assert sum("event=history_memory_only" in r.getMessage() for r in caplog.records) == 1
    feed(store, clock, 5)
    store.cycle()
    assert store.reader.query_series("gpu", "card1", T0 + 5, T0 + 10)["count"][0] == 4
    store.close()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before
    subprocess.call(["mount", "-o", "remount,rw", where])


def test_unwritable_directory_is_memory_only(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = open_store(str(blocker / "h.sqlite3"), Clock())
    assert store.status()["state"] == "memory"
    store.close()


@pytest.mark.parametrize("content", ["garbage", "foreign"])
def test_corrupt_or_foreign_file_is_moved_aside(tmp_path, caplog, content):
    path = str(tmp_path / "h.sqlite3")
    if content == "garbage":
        with open(path, "wb") as fh:
            fh.write(b"this is not an SQLite file at all" * 200)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE mine(x)")
        conn.commit()
        conn.close()
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        store = open_store(path, Clock())
    assert store.status()["state"] == "ok"
    aside = [n for n in os.listdir(str(tmp_path)) if n.startswith("h.sqlite3.corrupt-")]
    assert aside == ["h.sqlite3.corrupt-20251202T130000Z"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0] and aside[0] in warnings[0]
    store.close()
    assert quick_check(path) == "ok"


def test_newer_schema_is_refused_and_untouched(tmp_path, caplog):
    path = str(tmp_path / "h.sqlite3")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future(x)")
    conn.execute("PRAGMA application_id = %d" % m.HISTORY_APP_ID)
    conn.execute("PRAGMA user_version = %d" % (m.HISTORY_SCHEMA_VERSION + 1))
    conn.commit()
    conn.close()
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        store = open_store(path, Clock())
    status = store.status()
    assert status["state"] == "memory" and "newer" in status["reason"]
    assert any("newer" in r.getMessage() for r in caplog.records)
    store.close()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before
    assert not [n for n in os.listdir(str(tmp_path)) if "corrupt" in n]


def test_second_store_on_the_same_file_is_memory_only(tmp_path):
    path = str(tmp_path / "h.sqlite3")
    first = open_store(path, Clock())
    second = open_store(path, Clock())
    assert first.status()["state"] == "ok"
    assert second.status()["state"] == "memory" and "another" in second.status()["reason"]
    second.close()
    first.close()
    third = open_store(path, Clock())          # the lock went with the first
    assert third.status()["state"] == "ok"
    third.close()


@main_only
def test_servers_flush_on_sigterm_and_a_second_server_says_so(server, tmp_path):
    from conftest import wait_for
    path = str(tmp_path / "state" / "history.sqlite3")
    env = {"APP_HISTORY_PATH": path}
    first = server(args=["--demo"], env=env)
    wait_for(lambda: first.get_json("/api/healthz")[1]["history"]["state"] == "ok", 5)
    second = server(args=["--demo"], env=env)
    second.wait_log(r"event=history_memory_only .*another amdgpu_top_web")
    body = wait_for(lambda: (lambda b: b if b["history"]["state"] != "starting" else None)(
        second.get_json("/api/healthz")[1]), 5)
    assert body["status"] == "ok" and body["history"]["state"] == "memory"
    assert "another amdgpu_top_web" in body["history"]["reason"]
    assert first.get_json("/api/healthz")[1]["history"]["state"] == "ok"
    wait_for(lambda: first.get_json("/api/gpus")[1]["gpus"], 5)
    time.sleep(1.5)
    first.stop()                               # SIGTERM: the writer flushes its batch
    assert first.proc.returncode == 0
    assert quick_check(path) == "ok"
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM gpu_raw").fetchone()[0] > 0
    conn.close()


# -- the history path never reaches outside (#15): links, odd files, the lock, parents --------

def open_guarded(path, clock):
    """open_store in a thread (a FIFO must not hang the test: a hang fails it instead)."""
    import threading
    box = []
    thread = threading.Thread(target=lambda: box.append(open_store(path, clock, min_free_bytes=0)))
    thread.daemon = True
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "opening the history hung"
    return box[0]


def snapshot(path):
    """(mode, content or None) of what is at path, its link not followed."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as fh:
            return stat.S_IMODE(st.st_mode), fh.read()
    return stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)


def assert_memory_only_once(store, clock, caplog, path):
    status = store.status()
    assert status["state"] == "memory" and status["reason"], status
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "event=history_memory_only" in warnings[0] and path in warnings[0]
    feed(store, clock, 5)                       # history still works, in memory
    store.cycle()
    assert store.reader.query_series("gpu", "card1", clock.now - 5, clock.now)["count"][0] == 4


def plant(tmp_path, case):
    """Plant `case` at <tmp>/state/h.sqlite3; -> (path, {outside path: snapshot}, outside dir)."""
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir(mode=0o700)
    outside.mkdir()
    path = str(state / "h.sqlite3")
    target = str(outside / "target")
    if case in ("symlink", "empty_symlink", "hardlink"):
        with open(target, "wb") as fh:
            fh.write(b"" if case == "empty_symlink" else b"precious, not a database\n" * 100)
        os.chmod(target, 0o644)
        (os.link if case == "hardlink" else os.symlink)(target, path)
    elif case == "dangling":
        os.symlink(target, path)
    elif case in ("lock", "wal"):
        os.symlink(target, path + (".lock" if case == "lock" else "-wal"))
    elif case == "directory":
        os.mkdir(path, 0o755)
        target = path
    elif case == "fifo":
        os.mkfifo(path, 0o644)
        target = path
    before = {target: snapshot(target)} if os.path.lexists(target) else {}
    return path, before, str(outside)


@pytest.mark.parametrize("case", ["symlink", "empty_symlink", "dangling", "lock", "wal", "hardlink",
                                  "directory", "fifo"])
def test_history_path_never_reaches_outside(tmp_path, caplog, case):
    path, before, outside = plant(tmp_path, case)
    outside_files = sorted(os.listdir(outside))
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        store = open_guarded(path, clock)
        assert_memory_only_once(store, clock, caplog, path)
    store.close()
    for where, seen in before.items():          # mode and content (or kind and mode) as they were
        assert snapshot(where) == seen, where
    assert sorted(os.listdir(outside)) == outside_files     # nothing made at a link's target
    assert not [n for n in os.listdir(os.path.dirname(path)) if "corrupt" in n]
    if case == "wal":
        # SQLite opens its sidecars O_NOFOLLOW itself; the store refuses before it makes
        # an empty database next to the planted link
        assert not os.path.lexists(path)


def test_corrupt_file_aside_never_replaces_a_planted_name(tmp_path, caplog):
    path = str(tmp_path / "h.sqlite3")
    with open(path, "wb") as fh:
        fh.write(b"this is not an SQLite file at all" * 200)
    target = tmp_path / "outside"
    target.write_bytes(b"keep me")
    planted = path + ".corrupt-20251202T130000Z"
    os.symlink(str(target), planted)
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        store = open_store(path, Clock())
    assert store.status()["state"] == "ok"
    store.close()
    assert os.readlink(planted) == str(target) and target.read_bytes() == b"keep me"
    with open(planted + ".1", "rb") as fh:
        assert fh.read().startswith(b"this is not an SQLite file")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and planted + ".1" in warnings[0]


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_missing_parents_are_made_0700_whatever_the_umask(tmp_path, umask):
    path = str(tmp_path / "a" / "b" / "c" / "h.sqlite3")
    old = os.umask(umask)
    try:
        store = open_store(path, Clock())
    finally:
        os.umask(old)
    assert store.status()["state"] == "ok"
    store.close()
    for name in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE(os.stat(str(tmp_path / name)).st_mode) == 0o700, name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path + ".lock").st_mode) & 0o077 == 0


def test_server_with_a_linked_history_path_runs_in_memory(server, tmp_path):
    from conftest import wait_for
    path, before, outside = plant(tmp_path, "symlink")
    proc = server(env={"APP_HISTORY_PATH": path})
    proc.wait_metrics()
    body = wait_for(lambda: (lambda b: b if b["history"]["state"] != "starting" else None)(
        proc.get_json("/api/healthz")[1]), 10, message="history opened")
    assert body["status"] == "ok" and body["history"]["state"] == "memory", body
    assert "symbolic link" in body["history"]["reason"]
    proc.wait_log(r"WARNING.*event=history_memory_only path=%s" % re.escape(path))
    proc.stop()
    warnings = [line for line in proc.log().splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings
    for where, seen in before.items():
        assert snapshot(where) == seen
    assert os.listdir(outside) == ["target"]
