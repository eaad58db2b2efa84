"""The usage report (#18 item 3): GET /api/usage on real SQLite files (the store's
own writer with an injected clock), through a real --demo server with a history
file, its CSV, the runs behind a row, strict parameters; the Usage view in
Chromium is in test_page_usage.py."""

import csv
import io

import pytest

import amdgpu_top_web as m
from conftest import wait_for

T0 = 1764680400.0          # an hour boundary
HOUR = 3600.0


class Clock(object):
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def row(pid, user, ms_per_s, job=None, unit=None, vram=1 << 30):
    return dict(pid=pid, start_time=1000 + pid, name="p%d" % pid, user=user, uid=pid, cmd="x",
                container=None, kfd=False, type=None, vram_bytes=vram, gtt_bytes=0,
                engines_pct={"gfx": ms_per_s / 10.0}, gpu_time_ms_per_s=ms_per_s, unit=unit,
                slurm=None if job is None else {"job": job, "step": "0"})


def fill(tmp_path, seconds=301):
    """card1 at 200 W by its counter, 80 % busy; alice (job 7, 300 ms/s) all along,
    bob (100 ms/s) from t=120; card2 idle at 50 W by power only."""
    clock = Clock()
    store = m.HistoryStore(str(tmp_path / "h.sqlite3"), clock=clock, proc_root=str(tmp_path))
    store.open()
    for i in range(seconds + 1):
        t = T0 + i
        store.offer_stats("card1", t, dict(energy_j=200.0 * i, power_w=210.0, gpu_busy_pct=80.0))
        store.offer_stats("card2", t, dict(power_w=50.0, gpu_busy_pct=0.0))
        if i % 2 == 1:
            rows = [row(1, "alice", 300.0, job=7, unit="train.service")]
            if i >= 120:
                rows.append(row(2, "bob", 100.0, vram=3 << 30))
            store.offer_procs("card1", {"type": "procs", "gpu_id": "card1", "ts": m.format_ts(t),
                                        "processes": rows})
            store.offer_procs("card2", {"type": "procs", "gpu_id": "card2", "ts": m.format_ts(t),
                                        "processes": []})
        if i % 5 == 0:
            clock.now = t
            store.cycle()
    clock.now = T0 + seconds + 1
    store.cycle(final=True)
    return store


def assert_adds_up(answer, tol=1e-5):
    rows = answer["rows"]
    for name in ("gpu_hours", "energy_kwh"):
        total = sum(r[name] or 0 for r in rows)
        assert answer["totals"][name] == pytest.approx(total, abs=tol)
        assert total + answer["unattributed"][name] == pytest.approx(
            answer["gpu_totals"][name], abs=tol), name
    assert answer["totals"]["runs"] == sum(r["runs"] for r in rows)
    assert answer["gpu_totals"]["gpu_hours"] == pytest.approx(
        sum(g["gpu_hours"] for g in answer["gpus"]), abs=tol)


def test_usage_by_user_job_unit_adds_up_to_the_gpus(tmp_path):
    store = fill(tmp_path)
    answer = store.reader.query_usage(T0 - 60, T0 + 400, "user")
    users = dict((r["key"], r) for r in answer["rows"])
    assert set(users) == {"alice", "bob"} and users["alice"]["runs"] == 1
    assert_adds_up(answer)
    # card1: 301 counter steps of 200 J; card2: 50 W x 301 s; busy 0.8 x 301 s
    assert answer["gpu_totals"]["energy_kwh"] == pytest.approx((301 * 200 + 301 * 50) / 3.6e6,
                                                               abs=1e-6)
    # (a minute row keeps its mean to the millisecond: <= 30 ms off per row)
    assert answer["gpu_totals"]["gpu_hours"] == pytest.approx(0.8 * 301 / HOUR, abs=5e-5 / 3.6)
    assert users["alice"]["gpu_hours"] == pytest.approx(0.3 * 300 / HOUR, abs=2e-5)
    assert users["alice"]["vram_gib_hours"] == pytest.approx(300 / HOUR, abs=2e-4)
    assert users["bob"]["peak_vram_bytes"] == 3 << 30
    # alice alone: 30 % of the energy; with bob: 30 % of it, bob 10 %
    alice_j = 0.3 * 200 * 300
    assert users["alice"]["energy_kwh"] == pytest.approx(alice_j / 3.6e6, abs=2e-5)
    assert users["bob"]["energy_kwh"] == pytest.approx(0.1 * 200 * 182 / 3.6e6, abs=2e-5)
    # the idle share stored by the writer is what the runs leave of the GPUs' energy
    assert answer["unattributed"]["idle_energy_kwh"] == pytest.approx(
        answer["unattributed"]["energy_kwh"], abs=2e-5)
    gpus = dict((g["gpu_id"], g) for g in answer["gpus"])
    assert gpus["card2"]["energy_kwh"] == gpus["card2"]["idle_energy_kwh"] == pytest.approx(
        301 * 50 / 3.6e6, abs=1e-6)
    jobs = dict((r["key"], r) for r in store.reader.query_usage(T0 - 60, T0 + 400, "job")["rows"])
    assert set(jobs) == {7, None} and jobs[7]["runs"] == 1
    units = store.reader.query_usage(T0 - 60, T0 + 400, "unit", gpu_id="card1")
    assert [r["key"] for r in units["rows"]] == ["train.service", None]
    assert [g["gpu_id"] for g in units["gpus"]] == ["card1"]
    assert_adds_up(units)
    store.close()


def test_a_run_across_the_range_edge_is_clipped_by_its_samples(tmp_path):
    store = fill(tmp_path)
    whole = dict((r["key"], r) for r in store.reader.query_usage(T0 - 60, T0 + 400, "user")["rows"])
    late = store.reader.query_usage(T0 + 150, T0 + 400, "user")
    part = dict((r["key"], r) for r in late["rows"])
    assert part["alice"]["runs"] == 1 and part["alice"]["first_seen"] == m.format_ts(T0 + 150)
    share = part["alice"]["energy_kwh"] / whole["alice"]["energy_kwh"]
    assert share == pytest.approx(150 / 300.0, abs=0.05)       # by its 10 s samples
    assert part["alice"]["gpu_hours"] / whole["alice"]["gpu_hours"] == pytest.approx(0.5, abs=0.05)
    early = dict((r["key"], r) for r in store.reader.query_usage(T0 - 60, T0 + 150, "user")["rows"])
    assert early["alice"]["energy_kwh"] + part["alice"]["energy_kwh"] == pytest.approx(
        whole["alice"]["energy_kwh"], abs=1e-6)              # the two parts make the whole
    store.close()


def test_runs_behind_a_row_and_an_empty_store(tmp_path):
    store = fill(tmp_path, seconds=41)
    assert [r["user"] for r in store.reader.query_runs(T0 - 60, T0 + 400, by="user",
                                                       key="alice")] == ["alice"]
    assert [r["pid"] for r in store.reader.query_runs(T0 - 60, T0 + 400, by="job",
                                                      key="7")] == [1]
    assert store.reader.query_runs(T0 - 60, T0 + 400, by="job", key=None) == []
    empty = store.reader.query_usage(T0 + 5000, T0 + 6000, "pod")
    assert empty["rows"] == [] and empty["totals"]["runs"] == 0
    store.close()


@pytest.mark.parametrize("query,word", [
    ("by=owner", "'by'"), ("gpu=../x", "'gpu'"), ("range=2d", "'range'"), ("bogus=1", "'bogus'"),
    ("format=xml", "'format'"), ("from=2026-12-02&range=1h", "'range'")])
def test_strict_parameters(query, word):
    with pytest.raises(m.QueryError) as exc:
        m.parse_usage_query(query, T0)
    assert word in str(exc.value)


def test_runs_filter_parameters_go_together():
    with pytest.raises(m.QueryError):
        m.parse_runs_query("by=user", T0)
    with pytest.raises(m.QueryError):
        m.parse_runs_query("by=age&key=3", T0)
    assert m.parse_runs_query("by=job&key=", T0)[5:] == ("job", None)


DEMO_ARGS = ["--demo", "--demo-gpus", "2", "--proc-enable", "--proc-scan-interval", "500ms"]


def test_usage_through_a_demo_server(server, tmp_path):
    srv = server(args=DEMO_ARGS, env={"APP_HISTORY_PATH": str(tmp_path / "history.sqlite3")})

    def runs():
        status, body = srv.get_json("/api/processes?range=30m")
        found = [r for r in body.get("processes") or [] if (r["energy_j"] or 0) > 0]
        return body["processes"] if status == 200 and len(found) >= 3 else None
    stored = wait_for(runs, 30, message="runs with energy in history")
    assert all(r["vram_gib_hours"] is not None and r["gpu_seconds"] >= 0 for r in stored)
    for by in ("user", "unit", "job"):
        status, answer = srv.get_json("/api/usage?range=30m&by=" + by)
        assert status == 200, answer
        assert answer["by"] == by and answer["rows"]
        assert_adds_up(answer)
        assert answer["gpu_totals"]["energy_kwh"] > 0
        # the runs take no more than the GPUs measured (up to the last open scan)
        assert answer["unattributed"]["energy_kwh"] > -2e-5
    status, answer = srv.get_json("/api/usage?range=30m&by=user")
    top = answer["rows"][0]
    status, behind = srv.get_json("/api/processes?range=30m&by=user&key=" + top["key"])
    assert status == 200 and {r["user"] for r in behind["processes"]} == {top["key"]}
    assert len(behind["processes"]) >= top["runs"]      # and any started since
    table = list(csv.DictReader(io.StringIO(
        srv.get("/api/usage?range=30m&by=user&format=csv").body.decode("utf-8"))))
    assert [r["key"] for r in table[-2:]] == ["(unattributed)", "(all GPUs)"]
    total = sum(float(r["gpu_hours"]) for r in table[:-1])
    assert total == pytest.approx(float(table[-1]["gpu_hours"]), abs=1e-5)
    status, body = srv.get_json("/api/usage?by=team")
    assert status == 400 and "'by'" in body["error"]
