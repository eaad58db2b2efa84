"""Energy per run (#18 item 2): the maths with given numbers, and the store on
real SQLite files (an injected clock, the writer's cycle() called directly)."""

import sqlite3

import pytest

import amdgpu_top_web as m

T0 = 1764680400.0          # an hour boundary


class Clock(object):
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def make_store(tmp_path, path="h/history.sqlite3"):
    clock = Clock()
    store = m.HistoryStore(str(tmp_path / path), clock=clock, proc_root=str(tmp_path))
    store.open()
    return store, clock


# -- the maths --------------------------------------------------------------------------------

def test_two_processes_with_3_to_1_engine_time_and_the_idle_rest():
    # 0.6 + 0.2 engine-seconds per second: busy 80 % of the interval
    parts, idle = m.compute_energy_split(1000.0, [(0.6, 1 << 30), (0.2, 8 << 30)])
    assert parts == pytest.approx([600.0, 200.0]) and idle == pytest.approx(200.0)
    assert sum(parts) + idle == pytest.approx(1000.0)


def test_engines_busier_than_the_interval_take_it_all():
    parts, idle = m.compute_energy_split(900.0, [(1.5, None), (0.5, None)])   # gfx + dma + ...
    assert parts == pytest.approx([675.0, 225.0]) and idle == pytest.approx(0.0)


@pytest.mark.parametrize("shares", [[], [(0.0, 1 << 30), (0.0, 2 << 30)]])
def test_an_idle_gpu_keeps_all_of_it_as_idle(shares):
    parts, idle = m.compute_energy_split(500.0, shares)
    assert parts == [0.0] * len(shares) and idle == 500.0


def test_no_engine_time_known_splits_by_vram_share():
    parts, idle = m.compute_energy_split(400.0, [(None, 3 << 30), (None, 1 << 30), (None, None)])
    assert parts == pytest.approx([300.0, 100.0, 0.0]) and idle == pytest.approx(0.0)


def test_a_process_without_engine_time_beside_one_with_gets_none():
    parts, idle = m.compute_energy_split(100.0, [(0.5, 1 << 30), (None, 9 << 30)])
    assert parts == pytest.approx([50.0, 0.0]) and idle == pytest.approx(50.0)


def test_unknown_energy_stays_unknown():
    assert m.compute_energy_split(None, [(0.5, 1)]) == ([None], None)


def test_the_counter_step_is_the_energy():
    assert m.compute_energy_interval_j((T0, 1000.0, 50.0), (T0 + 2, 1600.0, 999.0)) == 600.0


def test_a_counter_reset_falls_back_to_power_times_time():
    # the counter went back (driver reload): the mean of the two powers x 2 s
    assert m.compute_energy_interval_j((T0, 9e6, 100.0), (T0 + 2, 12.0, 300.0)) == 400.0
    # a reset with no power reading: nothing known about that interval
    assert m.compute_energy_interval_j((T0, 9e6, None), (T0 + 2, 12.0, None)) is None


def test_a_glitch_step_falls_back_to_power():
    assert m.compute_energy_interval_j((T0, 0.0, 200.0), (T0 + 1, 1e9, 200.0)) == 200.0


def test_power_only_and_gaps():
    assert m.compute_energy_interval_j((T0, None, 100.0), (T0 + 1, None, 300.0)) == 200.0
    assert m.compute_energy_interval_j((T0, None, None), (T0 + 1, None, 300.0)) == 300.0
    assert m.compute_energy_interval_j((T0, 0.0, 100.0), (T0 + 60, 6000.0, 100.0)) == 0.0  # gap
    assert m.compute_energy_interval_j((T0, 0.0, 100.0), (T0 - 1, 6000.0, 100.0)) == 0.0  # back
    assert m.compute_energy_interval_j(None, (T0, 5.0, 100.0)) is None


def test_engine_seconds_per_second_of_a_row():
    assert m.compute_engine_s_per_s({"gpu_time_ms_per_s": 250.0}) == 0.25
    assert m.compute_engine_s_per_s({"engines_pct": {"gfx": 40.0, "dma": 10.0}}) == 0.5
    assert m.compute_engine_s_per_s({"engines_pct": {}}) is None


def test_the_ledger_pools_energy_until_a_process_list_takes_it():
    ledger = m.EnergyLedger()
    first = ledger.on_stats("g", T0, {"energy_j": 100.0, "gpu_busy_pct": 50.0})
    assert first == {"energy_used_j": 0.0, "energy_idle_j": 0.0, "busy_s": 0.0}
    assert ledger.on_stats("g", T0 + 1, {"energy_j": 300.0, "gpu_busy_pct": 50.0}) == {
        "energy_used_j": 200.0, "energy_idle_j": 0.0, "busy_s": 0.5}
    ledger.on_stats("g", T0 + 2, {"energy_j": 400.0})
    assert ledger.take("g", T0 + 2) == 300.0 and ledger.take("g", T0 + 2) is None
    assert ledger.on_stats("g", T0 + 4, {"power_w": None}) == {
        "energy_used_j": None, "energy_idle_j": None, "busy_s": None}


def test_a_pool_no_process_list_takes_goes_idle():
    ledger = m.EnergyLedger(max_gap_s=30.0)
    ledger.on_stats("g", T0, {"power_w": 100.0})
    idle = 0.0
    for i in range(1, 40):
        idle += ledger.on_stats("g", T0 + i, {"power_w": 100.0})["energy_idle_j"]
    assert idle == pytest.approx(3100.0)     # 31 s pooled, then handed to idle
    assert ledger.take("g", T0 + 40) == pytest.approx(800.0)


# -- the store ---------------------------------------------------------------------------------

def proc_row(pid, ms_per_s, vram=1 << 30):
    return dict(pid=pid, start_time=1000 + pid, name="p%d" % pid, user="u%d" % pid, uid=pid,
                cmd="x", container=None, kfd=False, type=None, vram_bytes=vram, gtt_bytes=0,
                engines_pct={"gfx": ms_per_s / 10.0}, gpu_time_ms_per_s=ms_per_s)


def run_gpu(store, clock, seconds, counter_at, rows_at, start=T0, gpu="card1", power_w=250.0):
    """One stats sample a second (energy_j counter_at(t)), a process list every 2 s
    (seconds odd: the last sample's energy is taken by a list too)."""
    for i in range(seconds + 1):
        t = start + i
        store.offer_stats(gpu, t, dict(energy_j=counter_at(t), power_w=power_w, gpu_busy_pct=80.0))
        if i % 2 == 1:
            store.offer_procs(gpu, {"type": "procs", "gpu_id": gpu, "ts": m.format_ts(t),
                                    "processes": rows_at(t)})
        if i % 5 == 0:
            clock.now = t
            store.cycle()
    clock.now = start + seconds + 120
    store.cycle(final=True)


def series_sums(path, gpu="card1"):
    conn = sqlite3.connect(path)
    src = conn.execute("SELECT id FROM sources WHERE kind = 'gpu' AND key = ?", (gpu,)).fetchone()[0]
    sums = conn.execute("SELECT sum(energy_used_j * n), sum(energy_idle_j * n), sum(busy_s * n)"
                        " FROM gpu_raw WHERE src = ?", (src,)).fetchone()
    conn.close()
    return [v / 1000.0 for v in sums]


def test_runs_get_their_share_and_the_parts_add_up_to_the_counter(tmp_path):
    """200 W by the counter for 120 s; processes 3:1 at 0.4 + ... engine-s/s; the
    counter resets at t=61 (power 250 W x 1 s for that interval)."""
    store, clock = make_store(tmp_path)

    def counter(t):
        return 5000.0 + 200.0 * (t - T0) if t < T0 + 61 else 200.0 * (t - T0 - 61)

    run_gpu(store, clock, 121, counter, lambda t: [proc_row(1, 300.0), proc_row(2, 100.0)])
    used, idle, busy = series_sums(store.path)
    assert used == pytest.approx(120 * 200.0 + 250.0)        # 120 counter steps + the reset
    assert busy == pytest.approx(121 * 0.8)
    runs = dict((r["pid"], r) for r in store.reader.query_runs(T0 - 10, T0 + 300))
    assert runs[1]["energy_j"] == pytest.approx(3 * runs[2]["energy_j"], rel=1e-6)
    assert runs[1]["energy_j"] + runs[2]["energy_j"] + idle == pytest.approx(used, abs=0.01)
    assert idle == pytest.approx(0.6 * used, rel=0.05)       # engines busy 40 % of the time
    conn = sqlite3.connect(store.path)
    per_sample = conn.execute("SELECT sum(energy_mj), sum(gpu_ms) FROM proc_samples WHERE run ="
                              " ?", (runs[1]["run_id"],)).fetchone()
    conn.close()
    assert per_sample[0] / 1000.0 <= runs[1]["energy_j"] + 0.01
    assert per_sample[0] / 1000.0 == pytest.approx(runs[1]["energy_j"], rel=0.1)
    assert per_sample[1] / 1000.0 == pytest.approx(runs[1]["gpu_seconds"], rel=0.1)
    assert runs[1]["vram_gib_hours"] == pytest.approx(120 / 3600.0, rel=0.02)
    store.close()


def test_a_gpu_without_power_gives_runs_null_energy(tmp_path):
    store, clock = make_store(tmp_path)
    run_gpu(store, clock, 11, lambda t: None, lambda t: [proc_row(1, 300.0)], power_w=None)
    (run,) = store.reader.query_runs(T0 - 10, T0 + 300)
    assert run["energy_j"] is None and run["gpu_seconds"] > 0
    store.close()


def old_schema(path):
    """A history file as attrib left it: no energy columns."""
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in m.history_schema():
        if "_usage ON" in stmt:
            continue                                  # its indexes came with it too
        stmt = stmt.replace(" energy_j REAL,", "").replace(" energy_mj INTEGER, gpu_ms INTEGER,", "")
        for key in m.HISTORY_INTERVAL_KEYS:
            for suffix in ("_min", "_avg", "_max", ""):
                stmt = stmt.replace(", %s%s INTEGER" % (key, suffix), "")
        conn.execute(stmt)
    conn.execute("PRAGMA application_id = %d" % m.HISTORY_APP_ID)
    conn.execute("PRAGMA user_version = %d" % m.HISTORY_SCHEMA_VERSION)
    conn.execute("INSERT INTO runs(boot_id, pid, start_time, gpu_id, first_seen, last_seen, ended,"
                 " time_s, vram_s, gtt_s, engine_s, gpu_s, samples) VALUES"
                 " ('old', 9, 1, 'card1', ?, ?, ?, 60, 0, 0, 0, 30, 1)", (T0 - 90, T0 - 30, T0 - 30))
    conn.close()


def test_an_old_file_gains_the_energy_columns(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    old_schema(path)
    conn = sqlite3.connect(path)
    assert "energy_j" not in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    conn.close()
    store, clock = make_store(tmp_path, path="old.sqlite3")
    assert store.status()["state"] == "ok"
    run_gpu(store, clock, 11, lambda t: 100.0 * (t - T0), lambda t: [proc_row(1, 500.0)])
    runs = dict((r["pid"], r) for r in store.reader.query_runs(T0 - 100, T0 + 300))
    assert runs[9]["energy_j"] is None and runs[9]["gpu_seconds"] == 30   # from before: unknown
    assert runs[1]["energy_j"] > 0
    conn = sqlite3.connect(path)
    assert {"energy_mj", "gpu_ms"} <= set(r[1] for r in conn.execute("PRAGMA table_info(proc_samples)"))
    assert series_sums(path)[0] == pytest.approx(1100.0)
    indexes = set(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"))
    assert set(m.HISTORY_USAGE_INDEXES) <= indexes
    conn.close()
    usage = dict((r["key"], r) for r in store.reader.query_usage(T0 - 100, T0 + 300, "name")["rows"])
    assert usage["p1"]["energy_kwh"] > 0 and usage[None]["energy_kwh"] is None   # the old run
    assert usage[None]["gpu_hours"] == pytest.approx(30 / 3600.0, abs=1e-6)
    store.close()
