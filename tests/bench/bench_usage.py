#!/usr/bin/env python3
"""What does the usage report cost?  (A benchmark, not a test.)

A real SQLite history file, made by the store itself (HistoryStore.open: its
schema, its indexes) and filled with its own SQL: --days days (30) of --gpus
GPUs (8), --runs runs per GPU (2,000) of 40 users, 12 units and 300 Slurm jobs,
lasting 1 min to 6 h each (runs crossing both edges of the range are there);
process samples every 10 s of every run in the last 7 days (their retention),
with energy and GPU-ms; the GPUs' series: 10 min rows for every day, 1 min rows
for 14 days, 1 s rows for the last 10 minutes (the open minute's tail).

Timed: HistoryReader.query_usage (what GET /api/usage runs, its read connection
included) for by=user, unit and job over the whole --days (the 10 min tier)
and, as the baseline in the same run, over the last day (1 min tier + 1 s
tail); the median of --rounds rounds each. Target: <= 200 ms over 30 days.
With --no-index the usage indexes are dropped first (the before).

    python3 tests/bench/bench_usage.py [--days 30] [--gpus 8] [--runs 2000] [--rounds 7]
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import amdgpu_top_web as m  # noqa: E402

T_END = 1764680400.0            # "now" of the pre-filled file
DAY = 86400


def fill_runs(conn, args, rnd):
    """Runs ending anywhere in the span (some began before it), and their 10 s samples
    where they fall in the last 7 days. -> (runs, samples)."""
    start = T_END - args.days * DAY
    samples = 0
    for g in range(args.gpus):
        src = conn.execute("INSERT INTO sources(kind, key) VALUES ('gpu', ?)", ("card%d" % g,)).lastrowid
        rows = []
        for i in range(args.runs):
            dur = rnd.uniform(60, 6 * 3600)
            first = rnd.uniform(start - 3 * 3600, T_END - 60)
            last = min(T_END, first + dur)
            user = "user%02d" % rnd.randrange(40)
            job = rnd.randrange(300) if rnd.random() < 0.6 else None
            unit = "svc%02d.service" % rnd.randrange(12) if job is None else "slurmstepd.scope"
            gpu_s, vram = (last - first) * rnd.uniform(0.05, 0.9), rnd.randrange(1, 48) << 30
            rows.append(("bench", 10000 + i, i, "card%d" % g, "python", user, 1000, "python x.py",
                         None, 0, None, first, last, None if last >= T_END else last, vram, 0, 90.0,
                         last - first, vram * (last - first), 0.0, 50.0 * (last - first), gpu_s,
                         int((last - first) / 2), first, unit, None, None, None, None, None, job,
                         None if job is None else "0", gpu_s * 250.0))
        conn.executemany("INSERT INTO runs(%s) VALUES (%s)" % (", ".join(m.RUN_COLUMNS),
                                                                ", ".join("?" * len(m.RUN_COLUMNS))),
                         rows)
        recent = conn.execute("SELECT id, first_seen, last_seen FROM runs WHERE gpu_id = ? AND"
                              " last_seen >= ?", ("card%d" % g, T_END - 7 * DAY)).fetchall()
        batch = []
        for run, first, last in recent:
            ts = int(max(first, T_END - 7 * DAY)) // 10 * 10 + 10
            while ts <= last:
                batch.append((src, ts, run, 4096, 0, 500, 2500000, 5000))
                ts += 10
        conn.executemany("INSERT OR IGNORE INTO proc_samples(src, ts, run, vram_mib, gtt_mib,"
                         " engine_pct10, energy_mj, gpu_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
        samples += len(batch)
    return args.gpus * args.runs, samples


def fill_series(conn, args):
    """The GPUs' energy, idle and busy columns in each tier (the rest null)."""
    count = 0
    for g in range(args.gpus):
        src = conn.execute("SELECT id FROM sources WHERE key = ?", ("card%d" % g,)).fetchone()[0]
        for tier, step, span in (("10m", 600, args.days * DAY), ("1m", 60, min(args.days, 14) * DAY)):
            table = m._history_table("gpu", tier)
            rows = [(src, int(T_END - span) + k * step, step, 250000, 250000, 250000, 90000, 90000,
                     90000, 600, 600, 600) for k in range(span // step)]
            conn.executemany("INSERT INTO %s(src, ts, n, energy_used_j_min, energy_used_j_avg,"
                             " energy_used_j_max, energy_idle_j_min, energy_idle_j_avg,"
                             " energy_idle_j_max, busy_s_min, busy_s_avg, busy_s_max) VALUES"
                             " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" % table, rows)
            count += len(rows)
        rows = [(src, int(T_END) - 600 + k, 1, 250000, 90000, 600) for k in range(600)]
        conn.executemany("INSERT OR IGNORE INTO gpu_raw(src, ts, n, energy_used_j, energy_idle_j,"
                         " busy_s) VALUES (?, ?, ?, ?, ?, ?)", rows)
        count += len(rows)
    return count


def timed(reader, from_s, by, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        answer = reader.query_usage(from_s, T_END, by)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), answer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2000, help="runs per GPU over the days")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--no-index", action="store_true", help="drop the usage indexes (the before)")
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_usage_", dir=args.dir)
    path = os.path.join(folder, "history.sqlite3")
    store = m.HistoryStore(path, max_bytes=8 << 30, clock=lambda: T_END, proc_root=folder)
    store.open()
    conn = store._conn
    if args.no_index:
        for name in m.HISTORY_USAGE_INDEXES:
            conn.execute("DROP INDEX IF EXISTS %s" % name)
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    runs, samples = fill_runs(conn, args, random.Random(18))
    rows = fill_series(conn, args)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    print("file: %s, %d runs, %d process samples, %d series rows, %.0f MB, filled in %.1f s%s"
          % (path, runs, samples, rows, os.path.getsize(path) / 1e6, time.perf_counter() - t0,
             " (usage indexes dropped)" if args.no_index else ""))
    print("%-6s %-10s %10s %6s %8s %10s" % ("by", "range", "median ms", "rows", "runs", "energy kWh"))
    worst = 0.0
    for by in ("user", "unit", "job"):
        for label, span in (("1 day", DAY), ("%d days" % args.days, args.days * DAY)):
            ms, answer = timed(store.reader, T_END - span, by, args.rounds)
            if span > DAY:
                worst = max(worst, ms)
            print("%-6s %-10s %10.1f %6d %8d %10.1f" % (by, label, ms, len(answer["rows"]),
                                                       answer["totals"]["runs"],
                                                       answer["gpu_totals"]["energy_kwh"] or 0))
    print("worst over %d days: %.1f ms (target <= 200 ms): %s"
          % (args.days, worst, "ok" if worst <= 200 else "OVER"))
    store.close()
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
