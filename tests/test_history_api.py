"""The history endpoints' pure side: query parameters (every bad one is a
QueryError naming it), time parsing (unix seconds and ISO 8601 against the
standard library's own parser), the routes, and CSV (RFC 4180, formula cells
defused, nulls empty)."""

import csv
import datetime
import io
import os

import pytest
from hypothesis import given, settings, strategies as st

import amdgpu_top_web as app

NOW = 1796205600.0          # 2026-12-02T10:00:00Z


@pytest.mark.parametrize("text,expected", [
    ("1796205600", NOW), ("1796205600.5", NOW + 0.5),
    ("2026-12-02T10:00:00Z", NOW), ("2026-12-02T10:00Z", NOW), ("2026-12-02 10:00:00", NOW),
    ("2026-12-02T11:30:00+01:30", NOW), ("2026-12-02T08:00:00-0200", NOW),
    ("2026-12-02T10:00:00.250Z", NOW + 0.25), ("2026-12-02", NOW - 36000),
])
def test_time_param_accepts_unix_and_iso(text, expected):
    assert app.parse_time_param("from", text) == pytest.approx(expected)


@given(st.datetimes(min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2999, 1, 1),
                    timezones=st.sampled_from([datetime.timezone.utc,
                                               datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
                                               datetime.timezone(datetime.timedelta(hours=-8))])))
@settings(max_examples=200, deadline=None)
def test_iso_matches_the_standard_library(when):
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    text = when.isoformat(timespec="milliseconds")           # e.g. 2026-12-02T10:00:00.250+05:30
    assert app.parse_time_param("at", text) == pytest.approx(when.timestamp(), abs=1e-3)


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-12-02T25:00", "-5", "nan",
                                  "1e20", "2026-12-02T10:00:00+5", "inf", "0", "1_000",
                                  "\uff11\uff17\uff19\uff16\uff12\uff10\uff15\uff16\uff10\uff10",
                                  "\uff12\uff10\uff12\uff16-12-02", "1900-01-01", "+5", "1e9"])
def test_bad_time_names_the_parameter(text):
    with pytest.raises(app.QueryError, match="'to'"):
        app.parse_time_param("to", text)


def test_history_query_range_and_window():
    q = app.parse_history_query("range=7d", NOW)
    assert (q.from_s, q.to_s, q.step_s, q.format) == (NOW - 7 * 86400, NOW, None, "json")
    q = app.parse_history_query("from=2026-12-01T10:00Z&to=1796205600&step=5m&format=csv", NOW)
    assert (q.from_s, q.to_s, q.step_s, q.format) == (NOW - 86400, NOW, 300.0, "csv")
    q = app.parse_history_query("from=1796202000", NOW)          # to defaults to now
    assert (q.from_s, q.to_s) == (NOW - 3600, NOW)
    q = app.parse_history_query("to=1796205600", NOW)            # from defaults to an hour before
    assert (q.from_s, q.to_s) == (NOW - 3600, NOW)


@pytest.mark.parametrize("query,name", [
    ("range=2w", "range"), ("range=1h&from=1", "range"), ("from=5&to=4", "from"),
    ("step=0", "step"), ("step=-1", "step"), ("step=fast", "step"), ("range=1h&step=2h", "step"),
    ("format=xml", "format"), ("frm=1", "frm"), ("range=1h&range=6h", "range"),
    ("from=0&to=1796205600", "from"), ("from=" + "1" * 80, "from"),
])
def test_bad_history_parameters_are_named(query, name):
    with pytest.raises(app.QueryError) as info:
        app.parse_history_query(query, NOW)
    assert "'%s'" % name in str(info.value)


def test_runs_and_at_queries():
    q = app.parse_runs_query("range=7d&gpu=card0&active=false", NOW)
    assert q == app.RunsQuery(NOW - 7 * 86400, NOW, "card0", False, "json")
    q = app.parse_runs_query("", NOW)                             # the last day, every GPU
    assert q == app.RunsQuery(NOW - 86400, NOW, None, None, "json")
    for bad, name in (("active=maybe", "active"), ("gpu=../x", "gpu"), ("at=1", "at")):
        with pytest.raises(app.QueryError, match="'%s'" % name):
            app.parse_runs_query(bad, NOW)
    assert app.parse_at_query("at=2026-12-02T10:00Z&format=csv", NOW) == app.AtQuery(NOW, "csv")
    with pytest.raises(app.QueryError, match="'at' is required"):
        app.parse_at_query("format=csv", NOW)


def test_routes():
    assert app.route("/api/host/history") == ("host_history", None)
    assert app.route("/api/processes") == ("processes", None)
    assert app.route("/api/processes/42/history") == ("run_history", 42)
    assert app.route("/api/processes/x/history") == ("not_found", None)
    assert app.route("/api/processes/42") == ("not_found", None)
    assert app.route("/api/gpus/card0/processes") == ("gpu_processes", "card0")


def parse_csv(body):
    assert body.endswith(b"\r\n")
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


def test_series_csv_has_a_row_per_point_and_gaps_empty():
    result = {"tier": "1m", "step_s": 60, "ts": [1796205600000, 1796205660000],
              "count": [60, 0],
              "series": {"temp_c": {"min": [40, None], "avg": [41.5, None], "max": [43, None]},
                         "power_w": {"min": [10, None], "avg": [12.25, None], "max": [20, None]}}}
    rows = parse_csv(app.series_csv(result))
    assert rows[0] == ["ts", "count", "power_w_min", "power_w_avg", "power_w_max",
                       "temp_c_min", "temp_c_avg", "temp_c_max"]
    assert rows[1] == ["2026-12-02T10:00:00.000Z", "60", "10", "12.25", "20", "40", "41.5", "43"]
    assert rows[2] == ["2026-12-02T10:01:00.000Z", "0", "", "", "", "", "", ""]


def test_records_csv_quotes_and_defuses_formulas():
    runs = [{"run_id": 1, "pid": 7, "name": "=HYPERLINK(\"x\")", "cmd": 'a "b",c\nd', "kfd": True,
             "ended": None, "user": "-alice", "gpu_seconds": -0.5}]
    rows = parse_csv(app.records_csv(runs, app.RUN_CSV_COLUMNS))
    record = dict(zip(rows[0], rows[1]))
    assert record["name"] == "'=HYPERLINK(\"x\")"           # a spreadsheet shows it, never runs it
    assert record["user"] == "'-alice"
    assert record["cmd"] == 'a "b",c\nd'                   # quoted, round-trips
    assert record["kfd"] == "true" and record["ended"] == "" and record["gpu_seconds"] == "-0.5"
    assert len(rows) == 2 and len(rows[0]) == len(app.RUN_CSV_COLUMNS)


# -- through a real server, across a restart ------------------------------------

import time  # noqa: E402

from conftest import wait_for  # noqa: E402

DEMO_ARGS = ["--demo", "--demo-gpus", "2", "--proc-enable", "--proc-scan-interval", "500ms"]


@pytest.fixture(scope="module")
def restarted(server_module, tmp_path_factory):
    """A demo server run for ~3 s, stopped with SIGTERM (the writer flushes), and
    a second one started on the same file: what it answers is yesterday's data."""
    path = str(tmp_path_factory.mktemp("hist") / "history.sqlite3")
    env = {"APP_HISTORY_PATH": path}
    first = server_module(args=DEMO_ARGS, env=env)
    first.wait_metrics(count=2)
    time.sleep(3.0)
    t_first = time.time()
    first.stop()
    assert first.proc.returncode == 0, first.log()
    second = server_module(args=DEMO_ARGS, env=env)
    second.wait_metrics(count=2)
    # Until the writer has opened (and checked) the file, history answers 503 + Retry-After.
    wait_for(lambda: second.get_json("/api/healthz")[1]["history"]["state"] == "ok", 10,
             message="history open")
    return second, t_first


def test_gpu_history_survives_a_restart(restarted):
    proc, t_first = restarted
    status, body = proc.get_json("/api/gpus/card0/history?range=1h")
    assert status == 200, body
    assert body["gpu_id"] == "card0" and body["tier"] == "raw" and body["step_s"] >= 1
    assert len(body["ts"]) == len(body["count"]) and 300 <= len(body["ts"]) <= 1500
    filled = [i for i, n in enumerate(body["count"]) if n]
    assert filled and body["ts"][filled[0]] <= t_first * 1000      # points from the first run
    busy = body["series"]["gpu_busy_pct"]
    for i in filled:
        if busy["avg"][i] is not None:
            assert busy["min"][i] <= busy["avg"][i] <= busy["max"][i]
    gaps = [i for i, n in enumerate(body["count"]) if not n]
    assert gaps and all(busy["avg"][i] is None for i in gaps)       # gaps stay gaps
    # Without a query: the live ring, in the same shape, as the finest tier.
    status, live = proc.get_json("/api/gpus/card0/history")
    assert status == 200 and live["tier"] == "live" and set(live) == set(body)


def test_history_csv_and_step(restarted):
    proc, _ = restarted
    response = proc.get("/api/gpus/card1/history?range=6h&step=1m&format=csv")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="card1-history.csv"' in response.headers["content-disposition"]
    rows = parse_csv(response.body)
    assert rows[0][:2] == ["ts", "count"] and "gpu_busy_pct_avg" in rows[0]
    assert len(rows) - 1 in (360, 361)           # 6 h at the 1-minute step, aligned to minutes
    assert any(row[1] not in ("", "0") for row in rows[1:])


def test_processes_runs_and_who_was_there(restarted):
    proc, t_first = restarted
    status, body = proc.get_json("/api/processes?range=1h&gpu=card0")
    assert status == 200, body
    runs = body["processes"]
    assert runs and all(run["gpu_id"] == "card0" for run in runs)
    for key in ("run_id", "pid", "start_time", "name", "user", "cmd", "first_seen", "last_seen",
                "ended", "peak_vram_bytes", "avg_vram_bytes", "peak_gtt_bytes", "gpu_seconds"):
        assert key in runs[0], key
    run = runs[0]
    status, hist = proc.get_json("/api/processes/%d/history" % run["run_id"])
    assert status == 200 and hist["run"]["run_id"] == run["run_id"]
    assert len(hist["ts"]) == len(hist["series"]["vram_bytes"]) >= 1
    status, at = proc.get_json("/api/gpus/card0/processes?at=%.3f" % (t_first - 1.0))
    assert status == 200 and at["gpu_id"] == "card0"
    assert at["ts"] is not None and at["processes"], at              # the first run's processes
    csv_rows = parse_csv(proc.get("/api/processes?range=1h&format=csv").body)
    assert csv_rows[0] == list(app.RUN_CSV_COLUMNS) and len(csv_rows) > 1
    assert proc.get("/api/processes/999999999/history").status == 404


def test_host_history_and_bad_parameters(restarted):
    proc, _ = restarted
    status, body = proc.get_json("/api/host/history?range=1h")
    assert status == 200 and "series" in body and body["tier"] == "raw"
    for path, name in (("/api/gpus/card0/history?range=5h", "range"),
                       ("/api/host/history?from=tomorrow", "from"),
                       ("/api/processes?active=perhaps", "active"),
                       ("/api/gpus/card0/processes", "at"),
                       ("/api/gpus/card0/history?range=1h&step=0s", "step")):
        status, err = proc.get_json(path)
        assert status == 400 and "'%s'" % name in err["error"], (path, err)


def test_history_off_says_how_to_turn_it_on(server):
    proc = server(args=["--demo"], env={"APP_HISTORY_PATH": "off"})
    status, err = proc.get_json("/api/processes")
    assert status == 404 and "APP_HISTORY_PATH" in err["error"]
    status, live = proc.get_json("/api/gpus/card0/history")
    assert status == 200 and live["tier"] == "live" and live["ts"]


def test_demo_never_writes_into_the_real_history(server, tmp_path):
    """--demo without APP_HISTORY_PATH, then a real server on the same machine (state dir):
    the real one serves none of the demo's GPUs or runs as its own past."""
    state = str(tmp_path / "state")
    env = {"XDG_STATE_HOME": state, "APP_HISTORY_PATH": "auto"}
    demo = server(args=DEMO_ARGS, env=env)
    demo.wait_metrics(count=2)
    wait_for(lambda: demo.get_json("/api/processes?range=1h")[1].get("processes"), 10,
             message="demo runs")
    demo_history = demo.get_json("/api/healthz")[1]["history"]
    demo.stop()                                   # SIGTERM: the writer flushes its batch
    assert demo.proc.returncode == 0, demo.log()
    real = server(env=env)
    real.wait_metrics()
    wait_for(lambda: real.get_json("/api/healthz")[1]["history"]["state"] == "ok", 10,
             message="history open")
    status, body = real.get_json("/api/processes?range=1h")
    assert status == 200 and body["processes"] == [], body
    status, body = real.get_json("/api/gpus/nvidia0/history?range=1h")   # a demo-only GPU
    assert status == 404 or not any(body["count"]), body
    assert demo_history["state"] == "memory" and demo_history["path"] is None, demo_history
    assert "--demo" in demo_history["reason"]
