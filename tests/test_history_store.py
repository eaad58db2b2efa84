"""HistoryStore on real SQLite files with an injected clock (no threads, no sleeps):
the writer's cycle() is called directly."""

import json
import os
import sqlite3
import stat

import pytest

import amdgpu_top_web as m

T0 = 1764680400.0          # 2025-12-02T13:00:00Z, an hour boundary


class Clock(object):
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def make_store(tmp_path, clock=None, path="h/history.sqlite3", **kwargs):
    clock = clock or Clock()
    full = None if path is None else str(tmp_path / path)
    store = m.HistoryStore(full, clock=clock, proc_root=str(tmp_path), **kwargs)
    store.open()
    return store, clock


def metrics(busy, vram=1 << 30, reasons=None):
    out = m.new_metrics() if hasattr(m, "new_metrics") else {}
    out.update(gpu_busy_pct=busy, temp_c=50.5, power_w=100.25, vram_used_bytes=vram,
               runtime_status="active", throttle_reasons=reasons, sclk_mhz=2000)
    return out


def feed(store, clock, seconds, gpu="card1", hz=4, busy=lambda t: 50.0, start=None):
    start = clock.now if start is None else start
    for i in range(int(seconds * hz)):
        t = start + i / float(hz)
        store.offer_stats(gpu, t, metrics(busy(t)))
    clock.now = start + seconds


def test_schema_pragmas_and_modes(tmp_path):
    store, _ = make_store(tmp_path)
    path = store.path
    assert store.status()["state"] == "ok"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == m.HISTORY_APP_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == m.HISTORY_SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2      # INCREMENTAL
    conn.close()
    store.close()


def test_series_raw_minute_hour_and_gaps(tmp_path):
    store, clock = make_store(tmp_path)
    feed(store, clock, 120, busy=lambda t: 10.0 if t < T0 + 60 else 90.0)
    clock.now = T0 + 300                          # 3 minutes of nothing: a gap
    feed(store, clock, 60, busy=lambda t: 30.0)
    store.cycle(final=True)
    out = store.reader.query_series("gpu", "card1", T0, T0 + 600)
    assert out["tier"] == "raw" and out["step_s"] == 1 and len(out["ts"]) == 600
    busy = out["series"]["gpu_busy_pct"]
    assert busy["avg"][0] == 10.0 and busy["avg"][60] == 90.0
    assert out["count"][0] == 4 and out["count"][200] == 0 and busy["avg"][200] is None
    assert out["series"]["vram_used_bytes"]["avg"][0] == 1 << 30
    assert out["series"]["temp_c"]["max"][5] == 50.5
    assert out["series"]["power_w"]["avg"][5] == 100.2 or out["series"]["power_w"]["avg"][5] == 100.3
    day = store.reader.query_series("gpu", "card1", T0, T0 + 86400)
    assert day["tier"] == "1m" and day["step_s"] == 60
    b = day["series"]["gpu_busy_pct"]
    assert (b["min"][0], b["avg"][0], b["max"][0], day["count"][0]) == (10.0, 10.0, 10.0, 240)
    assert day["count"][2] == 0 and b["avg"][2] is None
    assert b["avg"][5] == 30.0
    week = store.reader.query_series("gpu", "card1", T0, T0 + 7 * 86400)
    assert week["tier"] == "10m" and week["step_s"] == 600 and week["count"][0] == 720
    assert week["series"]["gpu_busy_pct"]["max"][0] == 90.0
    year = store.reader.query_series("gpu", "card1", T0, T0 + 365 * 86400)
    assert year["tier"] == "1h"
    yb = year["series"]["gpu_busy_pct"]
    assert year["count"][0] == 720 and yb["min"][0] == 10.0 and yb["max"][0] == 90.0
    assert abs(yb["avg"][0] - (10 * 240 + 90 * 240 + 30 * 240) / 720.0) < 0.2
    assert "runtime_status" not in day["series"]
    store.close()


def test_throttled_counts_samples_with_reasons(tmp_path):
    store, clock = make_store(tmp_path)
    for i in range(8):
        store.offer_stats("card1", T0 + i / 4.0, metrics(50, reasons=["thermal"] if i < 2 else []))
    clock.now = T0 + 70
    store.cycle(final=True)
    out = store.reader.query_series("gpu", "card1", T0, T0 + 2, points=2)
    assert out["series"]["throttled"]["avg"][0] == 0.5      # 2 of the 4 samples of second 0
    assert out["series"]["throttled"]["avg"][1] == 0.0
    store.close()


def test_host_series(tmp_path):
    store, clock = make_store(tmp_path)
    for i in range(10):
        store.offer_host(T0 + i, {"cpu_busy_pct": 12.5, "load1": 0.42, "mem_used_bytes": 3 << 30,
                                  "mem_pressure_some_avg10": 1.25, "unknown_key": 7})
    clock.now = T0 + 10
    store.cycle(final=True)
    out = store.reader.query_series("host", None, T0, T0 + 10)
    assert out["series"]["cpu_busy_pct"]["avg"][0] == 12.5
    assert out["series"]["load1"]["avg"][3] == 0.42
    assert out["series"]["mem_used_bytes"]["max"][9] == 3 << 30
    assert out["series"]["mem_pressure_some_avg10"]["min"][0] == 1.25
    store.close()


def test_survives_restart_and_merges_the_open_minute(tmp_path):
    store, clock = make_store(tmp_path)
    feed(store, clock, 30, busy=lambda t: 20.0)
    store.cycle(final=True)
    store.close()
    store2, _ = make_store(tmp_path, clock)
    feed(store2, clock, 30, busy=lambda t: 40.0)
    store2.cycle(final=True)
    day = store2.reader.query_series("gpu", "card1", T0, T0 + 86400)
    assert day["count"][0] == 240
    assert day["series"]["gpu_busy_pct"]["avg"][0] == 30.0
    assert day["series"]["gpu_busy_pct"]["min"][0] == 20.0
    store2.close()


def proc_row(pid, start=1000, vram=1 << 30, engine=50.0, **extra):
    row = dict(pid=pid, start_time=start, name="python", user="alice", uid=1000,
               cmd="python train.py --api-key ***", container=None, kfd=True, type=None,
               vram_bytes=vram, gtt_bytes=1 << 20, engines_pct={"gfx": engine, "compute": 10.0},
               gpu_time_ms_per_s=None)
    row.update(extra)
    return row


def procs_msg(gpu, t, rows):
    return {"type": "procs", "gpu_id": gpu, "ts": m.format_ts(t), "processes": rows}


def test_runs_lifetimes_reused_pid_and_procs_at(tmp_path):
    store, clock = make_store(tmp_path)
    for i in range(10):                          # 20 s, scans every 2 s
        t = T0 + 2 * i
        vram = (1 << 30) if i < 5 else (3 << 30)
        store.offer_procs("card1", procs_msg("card1", t, [proc_row(42, vram=vram)]))
    t = T0 + 20
    store.offer_procs("card1", procs_msg("card1", t, [proc_row(42, start=5000)]))  # reused PID
    clock.now = t
    store.cycle()
    runs = store.reader.query_runs(T0 - 10, T0 + 100)
    assert len(runs) == 2
    old = [r for r in runs if r["start_time"] == 1000][0]
    new = [r for r in runs if r["start_time"] == 5000][0]
    assert old["ended"] == m.format_ts(T0 + 18) and not old["active"] and new["active"]
    assert old["peak_vram_bytes"] == 3 << 30
    assert abs(old["avg_vram_bytes"] - (2 << 30)) < (1 << 28)    # time-weighted
    assert old["peak_engine_pct"] == 50.0 and old["avg_engine_pct"] == 50.0
    assert abs(old["gpu_seconds"] - 18 * 0.6) < 0.01             # (50 + 10) % of 18 s
    assert old["cmd"].endswith("***") and old["user"] == "alice" and old["kfd"] is True
    assert store.reader.query_runs(T0, T0 + 100, active=True) == [new]
    assert store.reader.query_runs(T0, T0 + 100, gpu_id="card2") == []
    at = store.reader.query_procs_at("card1", T0 + 15)
    assert at["ts"] == m.format_ts(T0 + 10)
    assert [p["pid"] for p in at["processes"]] == [42]
    assert at["processes"][0]["vram_bytes"] == 3 << 30
    hist = store.reader.query_run_history(old["run_id"])
    assert hist["run"]["run_id"] == old["run_id"]
    assert hist["ts"] == [int(T0) * 1000, int(T0 + 10) * 1000]
    assert hist["series"]["vram_bytes"] == [1 << 30, 3 << 30]
    assert store.reader.query_run_history(99999) is None
    store.close()


def test_runs_carry_the_process_start_and_elapsed(tmp_path):
    """started: the row's wall-clock start (first_seen where the row has none);
    elapsed_s: from there to the run's end, or to now while it runs."""
    store, clock = make_store(tmp_path)
    started = m.format_utc_s(T0 - 3600)
    for i in range(3):
        store.offer_procs("card1", procs_msg("card1", T0 + 2 * i, [
            proc_row(42, started=started, elapsed_s=3600 + 2 * i), proc_row(43, start=7)]))
    clock.now = T0 + 100
    store.cycle()
    runs = dict((r["pid"], r) for r in store.reader.query_runs(T0 - 10, T0 + 100))
    assert runs[42]["started"] == started and runs[42]["elapsed_s"] == 3700     # to now
    assert runs[43]["started"] == m.format_utc_s(T0) and runs[43]["elapsed_s"] == 100
    at = store.reader.query_procs_at("card1", T0 + 2)["processes"]
    assert [(p["pid"], p["started"]) for p in at] == [(42, started), (43, m.format_utc_s(T0))]
    for i in range(m.HISTORY_RUN_MISSING_SCANS + 1):      # pid 42 goes: its run ends at T0 + 4
        store.offer_procs("card1", procs_msg("card1", T0 + 10 + 2 * i, [proc_row(43, start=7)]))
    clock.now = T0 + 500
    store.cycle()
    ended = [r for r in store.reader.query_runs(T0 - 10, T0 + 500) if r["pid"] == 42][0]
    assert ended["ended"] == m.format_ts(T0 + 4) and ended["elapsed_s"] == 3604
    rows = m.records_csv([ended], m.RUN_CSV_COLUMNS).decode().splitlines()
    assert rows[0].startswith("run_id,gpu_id,pid,start_time,started,elapsed_s,")
    store.close()


def test_a_file_from_before_started_gains_the_column(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in m.history_schema():
        conn.execute(stmt.replace(" started REAL,", ""))
    conn.execute("PRAGMA application_id = %d" % m.HISTORY_APP_ID)
    conn.execute("PRAGMA user_version = %d" % m.HISTORY_SCHEMA_VERSION)
    conn.execute("INSERT INTO runs(boot_id, pid, start_time, gpu_id, first_seen, last_seen, ended,"
                 " time_s, vram_s, gtt_s, engine_s, gpu_s, samples) VALUES"
                 " ('old', 9, 1, 'card1', ?, ?, ?, 0, 0, 0, 0, 0, 1)", (T0, T0 + 60, T0 + 60))
    conn.close()
    store, _ = make_store(tmp_path, path="old.sqlite3")
    assert store.status()["state"] == "ok"
    old = store.reader.query_runs(T0 - 10, T0 + 100)[0]
    assert old["started"] == m.format_utc_s(T0) and old["elapsed_s"] == 60   # first_seen on
    store.offer_procs("card1", procs_msg("card1", T0 + 200,
                                         [proc_row(5, started=m.format_utc_s(T0))]))
    store.cycle()
    new = [r for r in store.reader.query_runs(T0, T0 + 300) if r["pid"] == 5][0]
    assert new["started"] == m.format_utc_s(T0)
    store.close()


def test_run_ends_after_missing_scans_and_across_restart(tmp_path):
    store, clock = make_store(tmp_path)
    store.offer_procs("card1", procs_msg("card1", T0, [proc_row(7)]))
    store.offer_procs("card1", procs_msg("card1", T0 + 2, [proc_row(7)]))
    store.cycle(final=True)
    store.close()
    store2, _ = make_store(tmp_path, clock)      # same boot: the run is seeded, then missed
    for i in range(3):
        store2.offer_procs("card1", procs_msg("card1", T0 + 10 + 2 * i, []))
    store2.cycle()
    runs = store2.reader.query_runs(T0, T0 + 60)
    assert len(runs) == 1 and runs[0]["ended"] == m.format_ts(T0 + 2)
    assert store2.reader.query_procs_at("card1", T0 + 14)["processes"] == []
    store2.close()


def test_other_boot_closes_open_runs(tmp_path):
    store, clock = make_store(tmp_path)
    store.offer_procs("card1", procs_msg("card1", T0, [proc_row(7)]))
    store.cycle(final=True)
    store.close()
    boot = tmp_path / "sys" / "kernel" / "random"
    boot.mkdir(parents=True)
    (boot / "boot_id").write_text("another-boot\n")
    store2, _ = make_store(tmp_path, clock)
    assert store2.reader.query_runs(T0, T0 + 60, active=True) == []
    store2.close()


def test_alerts_upsert_by_rule_gpu_started(tmp_path):
    store, clock = make_store(tmp_path)
    event = {"type": "alert", "rule": "vram_high", "gpu_id": "card1", "severity": "warning",
             "state": "firing", "started": m.format_ts(T0), "ended": None, "value": 91.0,
             "summary": "VRAM 91 %"}
    store.offer_alert(event)
    store.offer_alert(dict(event, rule="host_ram", gpu_id=None))
    store.cycle()
    store.offer_alert(dict(event, state="resolved", ended=m.format_ts(T0 + 60)))
    store.cycle()
    alerts = store.reader.query_alerts(T0 - 1, T0 + 3600)
    assert len(alerts) == 2
    vram = [a for a in alerts if a["rule"] == "vram_high"][0]
    assert vram["state"] == "resolved"
    assert store.reader.query_alerts(T0 + 120, T0 + 3600) == [a for a in alerts if a["rule"] == "host_ram"]
    store.close()


def test_retention_by_age(tmp_path):
    store, clock = make_store(tmp_path)
    feed(store, clock, 10)
    store.cycle(final=True)
    clock.now = T0 + 49 * 3600                    # raw (48 h) is gone, 1m stays
    store.cycle(final=True)
    out = store.reader.query_series("gpu", "card1", T0, T0 + 10, points=10)
    assert out["tier"] == "1m" and out["count"][0] == 40       # served by the next tier
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM gpu_raw").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM gpu_m1").fetchone()[0] == 1
    conn.close()
    store.close()


def test_retention_by_size(tmp_path):
    store, clock = make_store(tmp_path, max_bytes=1 << 20)
    for hour in range(6):                         # 6 h of 2 GPUs: > 1 MiB
        for gpu in ("card1", "card2"):
            feed(store, clock, 3600, gpu=gpu, hz=1, start=T0 + hour * 3600)
        store.cycle()
    store.cycle(final=True)
    assert store.status()["bytes"] <= 1 << 20
    conn = sqlite3.connect(store.path)
    oldest = conn.execute("SELECT min(ts) FROM gpu_raw").fetchone()[0]
    assert oldest > T0                            # the oldest rows went first
    assert conn.execute("SELECT max(ts) FROM gpu_raw").fetchone()[0] >= T0 + 6 * 3600 - 2
    conn.close()
    store.close()


def test_queue_drops_oldest_and_counts(tmp_path):
    store, clock = make_store(tmp_path, queue_max=10)
    for i in range(25):
        store.offer_stats("card1", T0 + i, metrics(i))
    status = store.status()
    assert status["dropped"] == 15 and status["queued"] == 10
    clock.now = T0 + 30
    store.cycle(final=True)
    out = store.reader.query_series("gpu", "card1", T0, T0 + 30)
    assert out["series"]["gpu_busy_pct"]["avg"][15] == 15.0 and out["count"][14] == 0
    store.close()


def test_memory_only_answers_queries(tmp_path):
    store, clock = make_store(tmp_path, path=None)
    feed(store, clock, 5)
    store.offer_procs("card1", procs_msg("card1", T0, [proc_row(9)]))
    store.cycle()
    assert store.status()["state"] == "memory" and store.status()["max_bytes"] <= 32 << 20
    assert store.reader.query_series("gpu", "card1", T0, T0 + 5)["count"][:4] == [4, 4, 4, 4]
    assert [r["pid"] for r in store.reader.query_runs(T0, T0 + 5)] == [9]
    store.close()


def test_series_query_is_bounded_for_huge_ranges(tmp_path):
    store, clock = make_store(tmp_path)
    out = store.reader.query_series("gpu", "card1", T0 - 10 * 365 * 86400, T0)
    assert out["tier"] == "1h" and len(out["ts"]) <= m.HISTORY_MAX_POINTS + 1
    assert out["series"] == {}
    store.close()


@pytest.mark.parametrize("span,tier,points", [
    (3600, "raw", (300, 1500)), (6 * 3600, "1m", (300, 1500)), (86400, "1m", (300, 1500)),
    (7 * 86400, "10m", (300, 1500)), (30 * 86400, "1h", (300, 1500)), (365 * 86400, "1h", (300, 1500)),
])
def test_choose_history_step(span, tier, points):
    name, tier_step, step = m.choose_history_step(T0 - span, T0, T0)
    assert name == tier and step % tier_step == 0
    assert points[0] <= span / step <= points[1]


def test_choose_step_skips_a_tier_past_its_retention():
    name, _, step = m.choose_history_step(T0 - 5 * 86400, T0 - 5 * 86400 + 3600, T0)
    assert name == "1m" and step == 60


def test_config_settings():
    config = m.parse_config([], {"XDG_STATE_HOME": "/x"})
    assert config.history_path == "/x/amdgpu_top_web/history.sqlite3"
    assert m.parse_config([], {"HOME": "/home/u"}).history_path == \
        "/home/u/.local/state/amdgpu_top_web/history.sqlite3"
    assert m.parse_config(["--history-path", "off"], {}).history_path is None
    assert m.parse_config([], {"APP_HISTORY_MAX_BYTES": "1GiB"}).history_max_bytes == 1 << 30
    assert m.parse_config([], {}).history_max_bytes == 256 << 20
    with pytest.raises(m.ConfigError, match="APP_HISTORY_MAX_BYTES"):
        m.parse_config([], {"APP_HISTORY_MAX_BYTES": "12 apples"})


def test_app_wiring_features_and_healthz(tmp_path, app_factory):
    from conftest import SHARE, SYSFS, get_json, wait_for
    env = {"APP_SYSFS_ROOT": os.path.join(SYSFS, "multi_gpu"), "APP_SHARE_ROOT": SHARE,
           "APP_PROC_ENABLE": "false", "APP_HISTORY_PATH": str(tmp_path / "s" / "h.sqlite3"),
           "APP_NVML_LIBRARY": "/nonexistent/libnvidia-ml.so.1"}
    app, port = app_factory(["--listen", "127.0.0.1:0"], env)
    wait_for(lambda: app.history.status()["state"] != "starting", 5)   # opened by the writer
    status, body = get_json(port, "/api/healthz")
    assert status == 200 and body["status"] == "ok" and body["history"]["state"] == "ok"
    assert app.cache.features["history"]["state"] == "ok"
    app.history._set_state("paused", "disk full: test")      # what a failed batch does
    assert app.cache.features["history"]["state"] == "paused"
    hello = json.loads(app.cache.hello_payload(None).decode("utf-8"))
    assert hello["features"]["history"]["reason"] == "disk full: test"
    assert get_json(port, "/api/healthz")[1]["history"]["state"] == "paused"
    app.stop()
    assert app.history.status()["commits"] >= 1             # flushed on stop
    conn = sqlite3.connect(str(tmp_path / "s" / "h.sqlite3"))
    assert conn.execute("SELECT count(*) FROM gpu_raw").fetchone()[0] > 0
    conn.close()


def test_app_history_off_by_conftest(app_factory):
    app, _ = app_factory(["--listen", "127.0.0.1:0", "--demo"])
    assert app.history is None and app.cache.features["history"]["state"] == "off"


def test_a_new_metric_becomes_a_column_of_an_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "METRIC_KEYS", tuple(k for k in m.METRIC_KEYS if k != "fan_rpm"))
    store, clock = make_store(tmp_path)
    feed(store, clock, 2)
    store.cycle(final=True)
    store.close()
    monkeypatch.undo()
    store2, _ = make_store(tmp_path, clock)
    for i in range(8):
        store2.offer_stats("card1", clock.now + i / 4.0, dict(metrics(20), fan_rpm=1200))
    clock.now += 2
    store2.cycle(final=True)
    assert store2.status()["state"] == "ok"
    out = store2.reader.query_series("gpu", "card1", T0, T0 + 4)
    assert out["series"]["fan_rpm"]["avg"] == [None, None, 1200, 1200]
    assert out["series"]["gpu_busy_pct"]["avg"] == [50.0, 50.0, 20.0, 20.0]
    store2.close()


# -- the size cap holds on disk (#15): the database file and its WAL, not only the rows --------

def disk_bytes(path):
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def test_size_cap_holds_on_disk_while_writing(tmp_path):
    cap = 2 << 20
    store, clock = make_store(tmp_path, max_bytes=cap, min_free_bytes=0)
    for minute in range(90):                      # 90 min of 8 GPUs at 1 Hz: ~5 MB of rows
        for gpu in range(8):
            feed(store, clock, 60, gpu="card%d" % gpu, hz=1, start=T0 + minute * 60)
        store.cycle()
    store.cycle(final=True)
    # no slack: the rows get the cap less the WAL's share, and the WAL is emptied
    assert disk_bytes(store.path) <= cap, disk_bytes(store.path)
    assert store.status()["bytes"] <= cap
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT max(ts) FROM gpu_raw").fetchone()[0] >= T0 + 90 * 60 - 2
    assert conn.execute("SELECT min(ts) FROM gpu_raw").fetchone()[0] > T0    # oldest went
    conn.close()
    store.close()


def test_a_lowered_cap_shrinks_the_file(tmp_path):
    store, clock = make_store(tmp_path, max_bytes=64 << 20, min_free_bytes=0)
    feed(store, clock, 10, hz=1)
    store.cycle(final=True)
    store.close()
    conn = sqlite3.connect(store.path)            # bulk: 2 days of 1 s rows, ~13 MB
    columns = [name for name, _ in m.history_columns("gpu")][:6]
    conn.execute("INSERT OR REPLACE INTO gpu_raw(src, ts, n, %s) WITH RECURSIVE s(i) AS "
                 "(SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < 170000) "
                 "SELECT 1, %d + i, 4, %s FROM s"
                 % (", ".join(columns), T0 - 170000, ", ".join(["i % 1000"] * len(columns))))
    conn.commit()
    conn.close()
    assert disk_bytes(store.path) > 12 << 20
    cap = 4 << 20
    store, clock = make_store(tmp_path, clock=clock, max_bytes=cap, min_free_bytes=0)
    store.cycle(final=True)
    assert disk_bytes(store.path) <= cap, disk_bytes(store.path)
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert conn.execute("SELECT max(ts) FROM gpu_raw").fetchone()[0] >= T0 + 9   # newest kept
    conn.close()
    store.close()


# -- the demo never writes into real history (#15) ----------------------------------------------

def test_demo_history_defaults_to_memory():
    assert m.parse_config(["--demo"], {"XDG_STATE_HOME": "/x"}).history_path == m.HISTORY_MEMORY
    assert m.parse_config(["--demo"], {"APP_HISTORY_PATH": "auto"}).history_path == m.HISTORY_MEMORY
    assert m.parse_config(["--demo", "--history-path", "/d/h.sqlite3"], {}).history_path == \
        "/d/h.sqlite3"                            # a file of its own, named explicitly
    assert m.parse_config([], {"APP_HISTORY_PATH": "memory"}).history_path == m.HISTORY_MEMORY
    assert m.parse_config([], {"XDG_STATE_HOME": "/x"}).history_path == \
        "/x/amdgpu_top_web/history.sqlite3"


@pytest.mark.parametrize("first,second", [(False, True), (True, False)])
def test_demo_and_real_history_files_refuse_each_other(tmp_path, caplog, first, second):
    import hashlib
    import logging
    store, clock = make_store(tmp_path, demo=first)
    feed(store, clock, 5)
    store.cycle(final=True)
    store.close()
    conn = sqlite3.connect(store.path)
    want = m.HISTORY_DEMO_APP_ID if first else m.HISTORY_APP_ID
    assert conn.execute("PRAGMA application_id").fetchone()[0] == want
    conn.close()
    digest = hashlib.sha256(open(store.path, "rb").read()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="amdgpu_top_web"):
        other, clock = make_store(tmp_path, clock=clock, demo=second)
    status = other.status()
    assert status["state"] == "memory" and ("--demo" in status["reason"]), status
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and store.path in warnings[0]
    assert other.reader.query_series("gpu", "card1", T0, T0 + 5)["count"] == [0] * 5   # none of its rows
    other.close()
    assert hashlib.sha256(open(store.path, "rb").read()).hexdigest() == digest
    assert not [n for n in os.listdir(os.path.dirname(store.path)) if "corrupt" in n]


def test_the_reader_answers_empty_until_the_writer_has_opened(tmp_path):
    """The handler threads' HistoryReader reads nothing before the writer
    thread opened the file (no file is touched), then the writer's rows."""
    clock = Clock()
    store = m.HistoryStore(str(tmp_path / "h" / "history.sqlite3"), clock=clock,
                           proc_root=str(tmp_path))
    assert store.reader.query_series("gpu", "card1", T0, T0 + 10)["series"] == {}
    assert store.reader.query_runs(T0, T0 + 10) == []
    assert store.reader.query_alerts(T0, T0 + 10) == []
    assert not os.path.exists(str(tmp_path / "h"))
    store.open()
    feed(store, clock, 5)
    store.cycle(final=True)
    out = store.reader.query_series("gpu", "card1", T0, T0 + 5)
    assert out["series"]["gpu_busy_pct"]["avg"] == [50.0] * 5
    store.close()


def test_one_source_lookup_for_writer_and_readers(tmp_path):
    """read_history_source: the id the writer made and the columns that had a
    value (the readers select those only); None for a source never written."""
    store, clock = make_store(tmp_path)
    feed(store, clock, 3)
    store.offer_host(clock.now, {"mem_used_bytes": 1 << 30})
    store.cycle(final=True)
    conn = sqlite3.connect(store.path)
    src, names = m.read_history_source(conn, "gpu", "card1")
    assert src == store._batch.sources.id(store._conn, "gpu", "card1")
    assert {"gpu_busy_pct", "temp_c", "power_w", "vram_used_bytes"} <= set(names)
    assert "fan_pct" not in names                        # never had a value
    assert m.read_history_source(conn, "host", "")[1] == ["mem_used_bytes"]
    assert m.read_history_source(conn, "gpu", "card9") is None
    conn.close()
    store.close()


def test_a_clock_swapped_after_construction_governs_writer_retention_and_reader(tmp_path):
    """The batch, retention and reader all ask the store's clock as it is at
    the call (the writer benchmark swaps it after construction): rows of
    that clock's time survive retention and read back."""
    store = m.HistoryStore(str(tmp_path / "h.sqlite3"), proc_root=str(tmp_path))
    clock = store.clock = Clock()
    store.open()
    feed(store, clock, 5)
    store.offer_procs("card1", {"ts": None, "processes": [
        {"pid": 7, "start_time": 100, "name": "x", "vram_bytes": 1 << 30}]})
    store.cycle(final=True)             # retention runs: T0 is "now", nothing is old
    out = store.reader.query_series("gpu", "card1", T0, T0 + 5)
    assert out["series"]["gpu_busy_pct"]["avg"] == [50.0] * 5
    (run,) = store.reader.query_runs(T0 - 60, T0 + 60)
    assert run["pid"] == 7 and run["elapsed_s"] == 0
    store.close()
