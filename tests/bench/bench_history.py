#!/usr/bin/env python3
"""What does the history store cost?  (A benchmark, not a test.)

(a) writer: 8 GPUs at 4 Hz plus 50 processes (procs frames every 2 s), fed
    through the store's sink methods and its writer cycle (one transaction per
    5 s of samples, retention every 60 s) with an injected clock, faster than
    real time, on a real file; against the same loop with history off (the
    samples are built either way). Cost per sample and % of one core
    (CPU seconds of the store / seconds of data). Target <= 0.1 % per GPU.
(b) queries on a file pre-filled (SQL, through the store's own schema) with
    --days days of 8 GPUs: raw 1 s rows for the last 48 h, 1 min rows for
    14 days, 10 min and 1 h rows for every day, 50 process slots with a run per slot per day and
    process samples every 10 s for the last 7 days. Timed: a 24 h and a 7 d
    chart of one GPU (query_series), runs over 7 d (query_runs), who was on a
    GPU at T (query_procs_at); each includes opening its read connection.
    Target: 7-day chart <= 50 ms.
(c) size: bytes per row of each table as measured in (b), and the steady
    state per GPU (every tier at its retention + its share of process
    samples 7 d), also per day, from (b)'s random values (a worst case); and
    (c2) the same from rows written through the store's own write path by the
    demo dGPU for 3 h (constant totals and clocks, moving busy and power).
    Target <= 40 MB per GPU.

    python3 tests/bench/bench_history.py [--days 30] [--seconds 600] [--dir /tmp]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import amdgpu_top_web as m  # noqa: E402

GPUS = 8
PROCS = 50
HZ = 4
T_END = 1764680400.0            # "now" of the pre-filled file


def demo_readers():
    infos = m.demo_gpu_infos(2)
    readers = []
    for i in range(GPUS):          # the demo's own ids (its tables are keyed by them);
        readers.append(m.DemoGpuReader(infos[i % 2], seed=i))   # stored as card<i> below
    return readers


def proc_rows(gpu_index, t):
    rows = []
    for p in range(gpu_index, PROCS, GPUS):
        rows.append(m.build_proc_row(
            pid=1000 + p, start_time=500 + p, name="python", user="u%d" % p, uid=1000 + p,
            cmd="python train.py --rank %d" % p, vram_bytes=(1 + p % 7) << 30, gtt_bytes=64 << 20,
            engines_pct={"gfx": float((t + p) % 100), "compute": 5.0}, gpu_time_ms_per_s=None,
            kfd=True))
    return rows


def writer_run(seconds, store):
    """CPU seconds to build (and, with a store, to write) `seconds` of samples."""
    readers = demo_readers()
    samples = [[r.sample(T_END + i / HZ) for i in range(HZ * 10)] for r in readers]
    clock = [T_END]
    if store is not None:
        store.clock = lambda: clock[0]
    start = time.thread_time()
    count = 0
    for tick in range(seconds * HZ):
        now = T_END + tick / float(HZ)
        clock[0] = now
        for g, reader in enumerate(readers):
            metrics = dict(samples[g][tick % len(samples[g])])
            count += 1
            if store is not None:
                store.offer_stats("card%d" % g, now, metrics)
        if tick % (2 * HZ) == 0:
            for g, reader in enumerate(readers):
                message = {"type": "procs", "gpu_id": "card%d" % g, "ts": m.format_ts(now),
                           "processes": proc_rows(g, int(now))}
                if store is not None:
                    store.offer_procs("card%d" % g, message)
        if store is not None and tick % (5 * HZ) == 5 * HZ - 1:
            store.cycle()
    if store is not None:
        store.cycle(final=True)
    return time.thread_time() - start, count


def bench_writer(seconds, directory):
    path = os.path.join(directory, "writer.sqlite3")
    store = m.HistoryStore(path, proc_root="/nonexistent", min_free_bytes=0)
    store.open()
    off_cpu, count = writer_run(seconds, None)
    on_cpu, _ = writer_run(seconds, store)
    store.close()
    cost = on_cpu - off_cpu
    print("(a) writer: %d s of data, %d GPUs x %d Hz + %d processes, %d samples" % (
        seconds, GPUS, HZ, PROCS, count))
    print("    CPU history off %.3f s, on %.3f s (ratio %.2fx)" % (off_cpu, on_cpu,
                                                                     on_cpu / max(off_cpu, 1e-9)))
    print("    store cost %.1f us/sample, %.4f %% of one core in all, %.4f %% per GPU"
          " (target <= 0.1 %% per GPU)" % (cost / count * 1e6, cost / seconds * 100,
                                          cost / seconds * 100 / GPUS))
    return cost


def _expr(key, scale):
    if key.endswith("_total_bytes") or key.endswith("cap_w"):
        return "65536"
    for suffix, span in (("_pct", 1001), ("_mhz", 3000), ("_c", 1000), ("_w", 5000),
                         ("_bytes", 65536), ("_mv", 1200), ("_rpm", 3000), ("_j", 1 << 30)):
        if key.endswith(suffix):
            return "abs(random()) %% %d" % span
    if key == "throttled":
        return "abs(random()) % 2 * 1000"
    return "abs(random()) % 16"


def present_columns():
    reader = demo_readers()[0]
    metrics = reader.sample(T_END)
    metrics["throttle_reasons"] = []
    values = m.history_values(m.history_columns("gpu"), metrics)
    return [(k, s) for (k, s), v in zip(m.history_columns("gpu"), values) if v is not None]


def _fill(conn, sql):
    before = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("BEGIN")
    rows = conn.execute("SELECT total_changes()").fetchone()[0]
    conn.execute(sql)
    rows = conn.execute("SELECT total_changes()").fetchone()[0] - rows
    conn.execute("COMMIT")
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - before
    return rows, pages * conn.execute("PRAGMA page_size").fetchone()[0]


def _series_fill(conn, table, rollup, cols, src, start, step, count, n):
    names, exprs = [], []
    for key, scale in cols:
        if rollup:
            names += [key + "_min", key + "_avg", key + "_max"]
            exprs += [_expr(key, scale)] * 3
        else:
            names.append(key)
            exprs.append(_expr(key, scale))
    sql = ("WITH RECURSIVE t(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM t WHERE x < %d) "
           "INSERT INTO %s(src, ts, n, %s) SELECT %d, %d + x * %d, %d, %s FROM t"
           % (count - 1, table, ", ".join(names), src, start, step, n, ", ".join(exprs)))
    return _fill(conn, sql)


def prefill(path, days):
    store = m.HistoryStore(path, proc_root="/nonexistent", min_free_bytes=0,
                           clock=lambda: T_END)
    store.open()
    conn = store._conn                  # the store's own connection and schema
    cols = present_columns()
    sizes = {}
    t0 = time.monotonic()
    for g in range(GPUS):
        conn.execute("INSERT INTO sources(kind, key, columns) VALUES ('gpu', ?, ?)",
                     ("card%d" % g, ",".join(k for k, _ in cols)))
    for g in range(GPUS):
        src = g + 1
        for table, rollup, step, keep, n in (("gpu_raw", False, 1, 48 * 3600, 4),
                                             ("gpu_m1", True, 60, min(days, 14) * 86400, 240),
                                             ("gpu_m10", True, 600, days * 86400, 2400),
                                             ("gpu_h1", True, 3600, days * 86400, 14400)):
            count = keep // step
            rows, size = _series_fill(conn, table, rollup, cols, src, int(T_END) - keep, step,
                                      count, n)
            acc = sizes.setdefault(table, [0, 0])
            acc[0] += rows
            acc[1] += size
    runs = []
    for day in range(days):
        for p in range(PROCS):
            start = T_END - (days - day) * 86400
            runs.append(("boot", 1000 + p + day * 100, 500 + p, "card%d" % (p % GPUS), "python",
                         "u%d" % p, 1000 + p, "python train.py --rank %d" % p, None, 1, None,
                         start, start + 86000, None if day == days - 1 else start + 86000,
                         (1 + p % 7) << 30, 64 << 20, 90.0, 86000.0, 86000.0 * (1 << 30),
                         86000.0 * (64 << 20), 86000.0 * 50, 86000.0 * 0.55, 43000, start))
            runs[-1] += (None,) * (len(m.RUN_COLUMNS) - len(runs[-1]))    # who, energy: unknown
    before = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO runs(%s) VALUES (%s)" % (
        ", ".join(m.RUN_COLUMNS), ", ".join("?" * len(m.RUN_COLUMNS))), runs)
    conn.execute("COMMIT")
    sizes["runs"] = [len(runs), (conn.execute("PRAGMA page_count").fetchone()[0] - before) * 4096]
    week = 7 * 86400 // m.HISTORY_PROC_SAMPLE_S
    first_run_of_day = (days - 7) * PROCS + 1
    sql = ("WITH RECURSIVE t(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM t WHERE x < %d), "
           "p(y) AS (SELECT 0 UNION ALL SELECT y + 1 FROM p WHERE y < %d) "
           "INSERT INTO proc_samples(src, ts, run, vram_mib, gtt_mib, engine_pct10) "
           "SELECT y %% %d + 1, %d + x * %d, "
           "%d + (x * %d / 86400) * %d + y, abs(random()) %% 65536, 64, abs(random()) %% 1001 "
           "FROM t, p" % (week - 1, PROCS - 1, GPUS, int(T_END) - 7 * 86400,
                          m.HISTORY_PROC_SAMPLE_S, first_run_of_day, m.HISTORY_PROC_SAMPLE_S, PROCS))
    sizes["proc_samples"] = list(_fill(conn, sql))
    store.close()
    print("(b) pre-filled %d days x %d GPUs (%d columns kept per sample) in %.1f s: %.1f MB"
          % (days, GPUS, len(cols), time.monotonic() - t0, os.path.getsize(path) / 1e6))
    return sizes, len(cols)


def timed(fn, repeat=15):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], result


def bench_queries(path):
    store = m.HistoryStore(path, proc_root="/nonexistent", min_free_bytes=0,
                           clock=lambda: T_END)
    store.open()
    rows = []
    for label, fn in (
            ("24 h chart", lambda: store.reader.query_series("gpu", "card3", T_END - 86400, T_END)),
            ("7 d chart", lambda: store.reader.query_series("gpu", "card3", T_END - 7 * 86400, T_END)),
            ("30 d chart", lambda: store.reader.query_series("gpu", "card3", T_END - 30 * 86400, T_END)),
            ("1 h chart (raw)", lambda: store.reader.query_series("gpu", "card3", T_END - 3600, T_END)),
            ("runs over 7 d", lambda: store.reader.query_runs(T_END - 7 * 86400, T_END)),
            ("procs at T", lambda: store.reader.query_procs_at("card3", T_END - 3 * 86400)),
            ("open+close reader", lambda: store.reader._reader().close())):
        med, p90, result = timed(fn)
        size = (len(result["ts"]) if isinstance(result, dict) and "ts" in result else
                len(result) if isinstance(result, list) else
                len(result["processes"]) if isinstance(result, dict) else 0)
        extra = (" tier %s step %d s" % (result["tier"], result["step_s"])
                 if isinstance(result, dict) and "tier" in result else "")
        rows.append(label)
        print("    %-18s median %7.2f ms  p90 %7.2f ms  (%d points/rows%s)" % (
            label, med, p90, size, extra))
    store.close()


def report_sizes(sizes, columns):
    per_row = dict((t, b / float(max(r, 1))) for t, (r, b) in sizes.items())
    steady = dict((m._history_table("gpu", name), keep // step) for name, step, keep in m.HISTORY_TIERS)
    print("(c) bytes per row: " + ", ".join("%s %.0f" % (t, per_row[t]) for t in sorted(per_row)))
    total = 0.0
    for table, rows in sorted(steady.items()):
        total += rows * per_row[table]
        print("    %-8s %7d rows/GPU steady  %6.1f MB/GPU" % (table, rows,
                                                            rows * per_row[table] / 1e6))
    procs = 7 * 8640 * PROCS / float(GPUS) * per_row["proc_samples"]
    print("    proc_samples 7 d, %d processes over %d GPUs: %.1f MB/GPU" % (PROCS, GPUS, procs / 1e6))
    print("    steady state per GPU: %.1f MB series + %.1f MB processes = %.1f MB (target <= 40 MB)"
          % (total / 1e6, procs / 1e6, (total + procs) / 1e6))
    day = sum(86400 // step * per_row[m._history_table("gpu", name)]
              for name, step, _ in m.HISTORY_TIERS)
    print("    written per GPU per day: %.1f MB (raw %.1f MB of it), %d columns per sample"
          % (day / 1e6, 86400 * per_row["gpu_raw"] / 1e6, columns))


def bench_realistic_size(directory, hours=3):
    """(c2) bytes per row when the rows come through the store's own write path
    from the demo dGPU (constant totals and clocks, moving busy and power)."""
    path = os.path.join(directory, "realistic.sqlite3")
    clock = [T_END]
    store = m.HistoryStore(path, proc_root="/nonexistent", min_free_bytes=0,
                           clock=lambda: clock[0])
    store.open()
    reader = demo_readers()[0]
    for tick in range(hours * 3600 * HZ):
        now = T_END + tick / float(HZ)
        clock[0] = now
        store.offer_stats("card0", now, reader.sample(now))
        if tick % (2 * HZ) == 0:
            store.offer_procs("card0", {"ts": m.format_ts(now), "processes": proc_rows(0, int(now))})
        if tick % (5 * HZ) == 0:
            store.cycle()
    store.cycle(final=True)
    conn = store._conn
    # used bytes of the pages (pgsize - unused): a few hours fill a roll-up table's
    # pages only partly, a steady-state table's are full (rows come in key order)
    sizes = dict(conn.execute("SELECT name, sum(pgsize - unused) FROM dbstat GROUP BY name")
                 .fetchall())
    per_row = {}
    for table in ("gpu_raw", "gpu_m1", "proc_samples"):
        rows = conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
        per_row[table] = sizes.get(table, 0) / float(max(rows, 1))
    per_row["gpu_h1"] = per_row["gpu_m10"] = per_row["gpu_m1"]    # the same columns
    store.close()
    total = sum(keep // step * per_row[m._history_table("gpu", name)]
                for name, step, keep in m.HISTORY_TIERS)
    procs = 7 * 8640 * PROCS / float(GPUS) * per_row["proc_samples"]
    print("(c2) through the write path, demo dGPU, %d h: bytes per row " % hours + ", ".join(
        "%s %.0f" % (t, per_row[t]) for t in sorted(per_row)))
    print("     steady state per GPU: %.1f MB series + %.1f MB processes = %.1f MB"
          " (target <= 40 MB)" % (total / 1e6, procs / 1e6, (total + procs) / 1e6))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=600, help="(a): seconds of data")
    parser.add_argument("--dir", default=None, help="where the files go (default: a tmp dir)")
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="bench_history-")
    print("SQLite %s, Python %s, files in %s" % (m.sqlite3.sqlite_version,
                                                 sys.version.split()[0], directory))
    bench_writer(args.seconds, directory)
    path = os.path.join(directory, "prefilled.sqlite3")
    sizes, columns = prefill(path, args.days)
    bench_queries(path)
    report_sizes(sizes, columns)
    bench_realistic_size(directory)


if __name__ == "__main__":
    main()
