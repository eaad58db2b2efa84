"""The VRAM forecast: Theil-Sen with Sen's interval against a brute-force
oracle, and verdicts on synthetic traces (history-insight.md §6): steady
leaks with noise, a leak under a sawtooth, a flat sawtooth (never a trend),
steps, slow leaks, a shrink; each range must contain the true time to full.
Pure functions and injected timestamps only: no server, no clock."""
import itertools
import json
import math
import random
import statistics

import pytest

import amdgpu_top_web as atw

MiB, GiB = 1 << 20, 1 << 30
TOTAL = 24 * GiB
N = 120                                   # the forecaster's 1 Hz window


def leak(rate_mib, noise_mib, seed, start=16 * GiB, n=N):
    rng = random.Random(seed)
    return [int(start + rate_mib * MiB * i + rng.gauss(0, noise_mib * MiB)) for i in range(n)]


def sawtooth(rate_mib, seed, phase=0, start=16 * GiB, n=N):
    """vramtop's false alarm: +80 MiB/s for 9 s, then the 9 s of growth freed at once."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = (i + phase) % 10
        out.append(int(start + rate_mib * MiB * i + 80 * MiB * (k if k < 9 else 0)
                       + rng.gauss(0, 2 * MiB)))
    return out


def step(size_gib, at, seed, start=16 * GiB, n=N):
    rng = random.Random(seed)
    return [int(start + (size_gib * GiB if i >= at else 0) + rng.gauss(0, 4 * MiB))
            for i in range(n)]


def times(n=N, t0=1764686400.0):
    return [t0 + i for i in range(n)]


def true_full_in(rate_mib, start, level_offset=0, n=N):
    level = start + rate_mib * MiB * (n - 1) + level_offset
    return (TOTAL - level) / (rate_mib * MiB)


# -- Theil-Sen against a brute-force oracle --------------------------------


def kendall_s(xs, ys, slope):
    """Kendall's S of the residuals y - slope*x against x (Sen 1968 inverts this test)."""
    res = [y - slope * x for x, y in zip(xs, ys)]
    s = 0
    for i, j in itertools.combinations(range(len(xs)), 2):
        dx, dr = xs[j] - xs[i], res[j] - res[i]
        s += (dx > 0) - (dx < 0) if dr > 0 else -((dx > 0) - (dx < 0)) if dr < 0 else 0
    return s


@pytest.mark.parametrize("seed", range(4))
def test_theil_sen_matches_brute_force_and_sens_interval(seed):
    rng = random.Random(seed)
    n = 25 + seed * 5
    xs = [float(i) + (0.5 if rng.random() < 0.2 else 0.0) for i in range(n)]
    ys = [3.0 * x + rng.gauss(0, 4) + (40 if rng.random() < 0.1 else 0) for x in xs]
    slope, low, high = atw.compute_theil_sen(xs, ys)
    pairs = sorted((ys[j] - ys[i]) / (xs[j] - xs[i])
                   for i, j in itertools.combinations(range(n), 2) if xs[j] != xs[i])
    assert slope == pytest.approx(statistics.median(pairs))
    assert low in pairs and high in pairs and low <= slope <= high
    # Sen's interval is where Kendall's test of the residuals does not reject:
    # just inside both ends |S| stays within z*sigma (a rank of slack each side).
    z = statistics.NormalDist().inv_cdf(0.5 + atw.FORECAST_CONFIDENCE / 2)
    sigma = math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    eps = 1e-9
    assert abs(kendall_s(xs, ys, low + eps)) <= z * sigma + 2
    assert abs(kendall_s(xs, ys, high - eps)) <= z * sigma + 2
    outside = abs(kendall_s(xs, ys, pairs[max(0, pairs.index(low) - 3)] - eps))
    assert outside >= z * sigma - 2


def test_theil_sen_is_none_without_two_distinct_times():
    assert atw.compute_theil_sen([1.0], [5.0]) is None
    assert atw.compute_theil_sen([1.0, 1.0], [5.0, 6.0]) is None


# -- verdicts on synthetic traces ------------------------------------------

LEAKS = [(5, 2, 16 * GiB), (20, 8, 16 * GiB), (100, 20, 8 * GiB), (2, 1, 16 * GiB)]


@pytest.mark.parametrize("rate_mib,noise_mib,start", LEAKS)
def test_a_steady_leak_is_a_trend_whose_ranges_hold_the_truth(rate_mib, noise_mib, start):
    used = leak(rate_mib, noise_mib, seed=1, start=start)
    f = atw.compute_vram_forecast(times(), used, TOTAL)
    assert f["state"] == "trend", f
    low, high = f["rate_bytes_per_s"]
    assert low <= rate_mib * MiB <= high and low > atw.FORECAST_NOISE_FLOOR_BPS
    full_low, full_high = f["full_in_s"]
    assert full_low <= true_full_in(rate_mib, start) <= full_high, f


@pytest.mark.parametrize("rate_mib,noise_mib,start", LEAKS)
def test_the_interval_covers_the_truth_at_about_its_confidence(rate_mib, noise_mib, start):
    """Over 30 noisy traces the 95 % ranges hold the true time to full >= 27 times."""
    hits = 0
    for seed in range(30):
        f = atw.compute_vram_forecast(times(), leak(rate_mib, noise_mib, seed, start), TOTAL)
        assert f["state"] == "trend"
        hits += f["full_in_s"][0] <= true_full_in(rate_mib, start) <= f["full_in_s"][1]
    assert hits >= 27


def test_a_leak_under_a_sawtooth_is_still_a_trend_with_the_leak_rate():
    f = atw.compute_vram_forecast(times(), sawtooth(20, seed=2), TOTAL)
    assert f["state"] == "trend"
    assert f["rate_bytes_per_s"][0] <= 20 * MiB <= f["rate_bytes_per_s"][1]
    # the sawtooth's mean level sits 288 MiB above its base
    assert f["full_in_s"][0] <= true_full_in(20, 16 * GiB, 288 * MiB) <= f["full_in_s"][1]


@pytest.mark.parametrize("phase", range(10))
@pytest.mark.parametrize("n", [61, 90, 120])
def test_a_flat_sawtooth_is_never_a_trend(phase, n):
    """vramtop called this 'OOM in ~1m' on 288 of 299 samples."""
    f = atw.compute_vram_forecast(times(n), sawtooth(0, seed=phase, phase=phase, n=n), TOTAL)
    assert f["state"] == "stable" and f["full_in_s"] is None, f


@pytest.mark.parametrize("size_gib,at", [(4, 60), (4, 100), (1, 30), (2, 115)])
def test_a_single_jump_is_a_step_not_a_trend(size_gib, at):
    f = atw.compute_vram_forecast(times(), step(size_gib, at, seed=3), TOTAL)
    assert f["state"] == "step" and f["full_in_s"] is None, f
    assert abs(f["step_bytes"] - size_gib * GiB) < 64 * MiB


def test_a_staircase_of_small_steps_is_a_trend():
    """vramtop never alerted on +1 GiB/min in steps; 64 MiB every 4 s is a leak."""
    used = [16 * GiB + (i // 4) * 64 * MiB for i in range(N)]
    f = atw.compute_vram_forecast(times(), used, TOTAL)
    assert f["state"] == "trend" and f["full_in_s"][0] > 0


def test_a_leak_below_the_noise_floor_claims_nothing():
    f = atw.compute_vram_forecast(times(), leak(0.5, 1, seed=4), TOTAL)
    assert f["state"] == "stable" and f["full_in_s"] is None
    assert f["rate_bytes_per_s"][0] <= 0.5 * MiB <= f["rate_bytes_per_s"][1]


def test_a_slow_leak_above_the_floor_gives_a_long_range():
    f = atw.compute_vram_forecast(times(), leak(1.5, 0.3, seed=5), TOTAL)
    assert f["state"] == "trend"
    assert f["full_in_s"][0] <= true_full_in(1.5, 16 * GiB) <= f["full_in_s"][1]
    assert f["full_in_s"][0] > 3600


def test_a_shrink_is_a_trend_without_a_time_to_full():
    f = atw.compute_vram_forecast(times(), leak(-30, 4, seed=6), TOTAL)
    assert f["state"] == "trend" and f["full_in_s"] is None
    assert f["rate_bytes_per_s"][1] < -atw.FORECAST_NOISE_FLOOR_BPS


# -- gates ---------------------------------------------------------------------


def test_gates_too_few_points_too_short_half_empty_or_no_total():
    used = leak(20, 2, seed=7)
    unknown = atw.new_vram_forecast()
    assert atw.compute_vram_forecast(times()[:29], used[:29], TOTAL) == unknown
    half_second = [1000.0 + i * 0.5 for i in range(100)]          # 100 points over 49.5 s
    assert atw.compute_vram_forecast(half_second, used[:100], TOTAL) == unknown
    assert atw.compute_vram_forecast(times(), used, None) == unknown
    low = atw.compute_vram_forecast(times(), leak(20, 2, seed=7, start=4 * GiB), TOTAL)
    assert low["state"] == "stable" and low["full_in_s"] is None     # below half full


def test_only_the_last_two_minutes_count():
    """A leak that stopped three minutes ago is no trend now."""
    old = leak(50, 2, seed=8, start=10 * GiB, n=100)
    flat = [old[-1] + int(random.Random(9).gauss(0, MiB)) for _ in range(130)]
    f = atw.compute_vram_forecast(times(230), old + flat, TOTAL)
    assert f["state"] == "stable"


def test_driver_pid_is_the_process_that_grew_most():
    ts = times()
    procs = {111: (ts, [GiB] * N), 222: (ts, [GiB + i * 15 * MiB for i in range(N)]),
             333: (ts, [GiB + i * 3 * MiB for i in range(N)])}
    f = atw.compute_vram_forecast(ts, leak(20, 4, seed=10), TOTAL, procs)
    assert f["state"] == "trend" and f["driver_pid"] == 222
    assert atw.compute_vram_forecast(ts, leak(20, 4, seed=10), TOTAL, {111: procs[111]})[
        "driver_pid"] is None


def test_per_process_forecast_only_for_a_growing_process():
    ts = times()
    grows = atw.compute_proc_vram_forecast(ts, [GiB + i * 10 * MiB for i in range(N)], 4 * GiB)
    assert grows["state"] == "trend" and grows["rate_bytes_per_s"][0] <= 10 * MiB
    assert grows["full_in_s"][0] <= 4 * GiB / (10 * MiB) <= grows["full_in_s"][1]
    assert atw.compute_proc_vram_forecast(ts, [GiB] * N, 4 * GiB) is None
    assert atw.compute_proc_vram_forecast(ts[:20], [GiB + i * MiB * 10 for i in range(20)],
                                          4 * GiB) is None


# -- the per-GPU forecaster (1 Hz window, once per second) -----------------


def test_forecaster_downsamples_to_one_point_per_second_and_reuses_the_fit():
    forecaster = atw.VramForecaster()
    results = []
    for i in range(4 * 100):                       # 4 Hz for 100 s, a 20 MiB/s leak
        t = 1764686400.0 + i * 0.25
        metrics = {"vram_used_bytes": int(16 * GiB + 20 * MiB * i * 0.25),
                   "vram_total_bytes": TOTAL}
        results.append(forecaster.on_stats(t, metrics))
    assert len(forecaster._ts) == 100
    assert results[-1]["state"] == "trend"
    assert results[-1] is results[-2]              # reused between ticks within a second
    assert results[0] == atw.new_vram_forecast()
    reset = forecaster.on_stats(1764686500.0, {"vram_used_bytes": None, "vram_total_bytes": TOTAL})
    assert reset["state"] == "unknown" and len(forecaster._ts) == 0


def test_forecaster_annotates_process_rows():
    forecaster = atw.VramForecaster()
    t0 = 1764686400.0
    for i in range(70):
        forecaster.on_stats(t0 + i, {"vram_used_bytes": 16 * GiB, "vram_total_bytes": TOTAL})
        rows = [atw.build_proc_row(pid=7, start_time=5, vram_bytes=GiB + i * 8 * MiB),
                atw.build_proc_row(pid=8, start_time=6, vram_bytes=GiB),
                atw.build_proc_row(pid=9, visible=False, vram_bytes=GiB)]
        out = forecaster.on_procs(t0 + i, rows)
    assert out[0]["vram_forecast"]["state"] == "trend"
    assert out[1]["vram_forecast"] is None and out[2]["vram_forecast"] is None
    assert rows[0]["vram_forecast"] is None        # the input rows are not changed


def test_the_demo_leak_scenario_shows_a_trend_then_frees():
    """--demo-scenario leak: card0 leaks (a trend with a time to full and the
    python3 process as its driver), then frees; other GPUs stay calm."""
    infos = atw.demo_gpu_infos(3)
    backend = atw.DemoBackend(8, 3, "leak")
    readers = [backend.open_reader(info) for info in infos]
    clock = [0.0]
    procs = atw.DemoProcSource(infos, 8, clock=lambda: clock[0], leak=True)
    t0 = 1764686400.0
    cache = atw.Cache(0.25, {}, clock=lambda: t0 + clock[0])
    cache.set_gpus(infos)
    seen = []
    for i in range(4 * 215):
        clock[0] = i * 0.25
        for reader in readers:
            cache.publish_stats(reader.info.id, t0 + i * 0.25, reader.sample(1000.0 + i * 0.25))
        if i % 8 == 0:
            result = procs.scan()
            for info in infos:
                cache.publish_procs(info.id, atw.build_procs_message(
                    info.id, t0, result.by_pci[info.pci], result.visibility, result.stats))
        seen.append(cache.stats("card0")[1]["vram_forecast"]["state"])
        if i == 4 * 90:
            forecast = cache.stats("card0")[1]["vram_forecast"]
            assert forecast["state"] == "trend" and forecast["full_in_s"][0] > 0
            assert forecast["driver_pid"] == 1037                       # python3 on card0
            python3 = [r for r in cache.procs("card0")[0]["processes"] if r["pid"] == 1037][0]
            assert python3["vram_forecast"]["state"] == "trend"
            assert cache.stats("nvidia0")[1]["vram_forecast"]["state"] == "stable"
            gpus, procs_now = cache.snapshot()
            assert 'amdgpu_vram_full_seconds{gpu="card0"}' in atw.render_prometheus(
                gpus, procs_now, {}, 0, alerts=[])
    # grew 145 s, held 45 s at 97 %, freed at 190 s: the free is a step (a new window), no trend
    assert seen[-1] == "step" and cache.stats("card0")[1]["vram_forecast"]["step_bytes"] < 0


def test_a_big_free_after_growth_is_a_step_down_not_a_shrink():
    used = [20 * GiB + i * 4 * MiB for i in range(60)] + [12 * GiB + i * 2 * MiB for i in range(60)]
    f = atw.compute_vram_forecast(times(), used, TOTAL)
    assert f["state"] in ("step", "stable") and f["full_in_s"] is None


# -- issue #15: big frees and allocations start a new window; full_in_s from the level now --


def demo_leak_trace(seconds, total=TOTAL):
    """--demo-scenario leak's card0 at 1 Hz: 51 %, +47 % over 145 s (to 98 %, never full),
    held 45 s, freed at 190 s."""
    return [int(total * (0.51 + atw.demo_leak_fraction(i))) for i in range(seconds)]


def history_at(ts, used, i):
    """What the forecaster holds at sample i: the last FORECAST_HISTORY_S."""
    start = max(0, i + 1 - int(atw.FORECAST_HISTORY_S))
    return ts[start:i + 1], used[start:i + 1]


def test_the_demo_leak_never_says_full_in_0_s_and_its_free_starts_a_new_window():
    """The issue: at 53 % right after the free the forecast said trend, full in [0, 0]."""
    ts, used = times(300), demo_leak_trace(300)
    for i in range(60, 300):
        f = atw.compute_vram_forecast(*history_at(ts, used, i), total=TOTAL)
        if f["full_in_s"] is not None:                   # never 0 s while VRAM is not full
            assert f["full_in_s"][0] >= 1, (i, f)
            level = used[i]                              # from the level now, not the fit's
            assert f["full_in_s"][0] <= (TOTAL - level) / f["rate_bytes_per_s"][0], (i, f)
        if 150 <= i < 190:                               # the hold at 98 %: 2 % free
            assert f["state"] == "trend" and f["full_in_s"][0] >= 5, (i, f)
        if 190 <= i < 250:                               # freed: a step down, not a trend
            assert f["state"] == "step" and f["step_bytes"] < -7 * GiB, (i, f)
            assert f["full_in_s"] is None
        if i >= 255:                                     # the next leak, in its own window
            assert f["state"] == "trend" and f["full_in_s"][0] > 60, (i, f)


def test_the_vram_full_soon_alert_clears_promptly_after_the_free():
    """The alert engine fed the real demo reader: resolved within clear_for_s of the free
    (it stayed critical ~20 s longer while the old window still said full in 0 s)."""
    info = atw.demo_gpu_infos(1)[0]
    reader = atw.DemoGpuReader(info, leak=True)
    cache = atw.Cache(1.0, {})
    cache.set_gpus([info])
    frames = []
    cache.add_listener(frames.append)
    engine = atw.AlertEngine(cache, atw.parse_alert_rules())
    cache.add_sink(engine)
    t0 = 1764686400.0
    for i in range(300):
        cache.publish_stats(info.id, t0 + i, reader.sample(1000.0 + i))
        engine.drain()
    events = [e for e in (json.loads(f.payload) for f in frames if f.kind == "alert")
              if not e.get("update")]
    soon = [(e["state"], e["severity"], e["ts"]) for e in events if e["rule"] == "vram_full_soon"]
    assert soon[0][:2] == ("firing", "critical")
    resolved = [atw.parse_iso_ts(ts) - t0 for state, _, ts in soon if state == "resolved"]
    clear_for = atw.parse_alert_rules()["vram_full_soon"]["clear_for_s"]
    assert resolved and resolved[0] <= 190 + clear_for + 2, soon


def test_a_big_allocation_restarts_the_window():
    """Flat, +4 GiB at 60 s, then a 20 MiB/s leak for 100 s: the leak in its own
    window (it was "a step" while the jump stayed in the 2-minute window)."""
    rng = random.Random(11)
    used = [int(12 * GiB + rng.gauss(0, 2 * MiB)) for _ in range(60)]
    used += [int(16 * GiB + 20 * MiB * i + rng.gauss(0, 2 * MiB)) for i in range(100)]
    f = atw.compute_vram_forecast(times(160), used, TOTAL)
    assert f["state"] == "trend", f
    assert f["rate_bytes_per_s"][0] <= 20 * MiB <= f["rate_bytes_per_s"][1]
    truth = (TOTAL - (16 * GiB + 20 * MiB * 99)) / (20 * MiB)
    assert f["full_in_s"][0] <= truth <= f["full_in_s"][1], f
    early = atw.compute_vram_forecast(times(100), used[:100], TOTAL)    # 40 s after it
    assert early["state"] == "step" and abs(early["step_bytes"] - 4 * GiB) < 64 * MiB


def allocate_then_free(period, seconds, seed, duty=0.5, size=720 * MiB):
    """A periodic allocate-then-free with no net growth: size allocated at once,
    held duty*period, freed at once."""
    rng = random.Random(seed)
    return [int(16 * GiB + (size if (i % period) < duty * period else 0) + rng.gauss(0, 2 * MiB))
            for i in range(seconds)]


@pytest.mark.parametrize("period", [6, 10, 20, 30, 45, 60])
@pytest.mark.parametrize("duty", [0.2, 0.5])
def test_a_periodic_allocate_then_free_is_stable_not_a_step(period, duty):
    """Its jumps land on levels seen in the window before them: no step, no trend
    (it was "a step of 720 MiB" on every sample)."""
    ts, used = times(420), allocate_then_free(period, 420, seed=period, duty=duty)
    for i in range(2 * N, 420):
        f = atw.compute_vram_forecast(*history_at(ts, used, i), total=TOTAL)
        assert f["state"] == "stable" and f["full_in_s"] is None, (i, f)


@pytest.mark.parametrize("dt", [0.25, 1.0, 2.0])
def test_the_sawtooth_through_the_forecaster_is_stable_at_any_sample_rate(dt):
    """vramtop's sawtooth (+80 MiB/s for 9 s, then freed) fed live for 7 minutes."""
    forecaster = atw.VramForecaster()
    rng = random.Random(12)
    for i in range(int(420 / dt)):
        t = i * dt
        k = int(t) % 10
        used = int(16 * GiB + 80 * MiB * (k if k < 9 else 0) + rng.gauss(0, 2 * MiB))
        f = forecaster.on_stats(1764686400.0 + t, {"vram_used_bytes": used,
                                                   "vram_total_bytes": TOTAL})
        if t >= 2 * N:
            assert f["state"] == "stable", (t, f)


def test_full_in_is_at_least_1_s_while_anything_is_free_and_0_only_when_full():
    assert atw.compute_full_in(10 * MiB, 50 * MiB, 60 * MiB) == [1, 1]
    assert atw.compute_full_in(0, 50 * MiB, 60 * MiB) == [0, 0]
    assert atw.compute_full_in(-MiB, 50 * MiB, 60 * MiB) == [0, 0]
    assert atw.compute_full_in(600 * MiB, 50 * MiB, 60 * MiB) == [10, 12]
    plateau = [16 * GiB + 100 * MiB * i for i in range(80)] + [int(23.9 * GiB)] * 40
    f = atw.compute_vram_forecast(times(), plateau, TOTAL)      # grew, then stopped near full
    assert f["state"] == "trend" and f["full_in_s"][0] >= 1, f


def test_the_incremental_theil_sen_window_answers_exactly_as_the_full_fit():
    """TheilSenWindow (the forecaster's fit: only the dropped and the new
    points' slopes change per second) equals compute_theil_sen bit for bit,
    through slides, several points at once, ties, a jump back and a reset."""
    rng = random.Random(3)
    window = atw.TheilSenWindow()
    xs = [1764686400.0 + i for i in range(400)]
    ys = [int(16 * GiB + 5 * MiB * i + rng.choice([0, 0, rng.gauss(0, 4 * MiB)]))
          for i in range(400)]
    spans = [(0, 60), (0, 61), (1, 62), (3, 70), (10, 130), (11, 131), (40, 160), (40, 160),
             (200, 320), (5, 40), (6, 41), (300, 400)]
    for start, end in spans:
        got = window.fit(xs[start:end], ys[start:end])
        assert got == atw.compute_theil_sen(xs[start:end], ys[start:end]), (start, end)
    assert window.fit([1.0, 1.0, 2.0], [5, 6, 7]) == atw.compute_theil_sen([1.0, 1.0, 2.0], [5, 6, 7])
    assert window.fit([3.0], [1]) is None


def test_the_forecaster_refits_incrementally_with_the_same_verdicts():
    forecaster = atw.VramForecaster()
    rng = random.Random(5)
    ts, used = [], []
    for i in range(300):
        ts.append(1764686400.0 + i)
        used.append(int(14 * GiB + 5 * MiB * i + rng.gauss(0, 4 * MiB)))
        got = forecaster.on_stats(ts[-1], {"vram_used_bytes": used[-1], "vram_total_bytes": TOTAL})
        assert got == atw.compute_vram_forecast(ts[-242:], used[-242:], TOTAL, {}), i
    assert forecaster._fit._slopes                 # the fit state is kept between seconds


def test_the_forecasters_step_memo_keeps_the_verdicts_of_a_fresh_compute():
    """A fast leak (every 2 s jump past FORECAST_STEP_MIN_BYTES is judged), its
    final free (a step), a reset and a clock stepping back: each second's
    verdict equals compute_vram_forecast on the same samples without a memo."""
    forecaster = atw.VramForecaster()
    rng = random.Random(7)
    ts, used, seen = [], [], set()
    t = 1764686400.0
    for i in range(420):
        t = t - 30 if i == 300 else t + 1                  # the clock steps back once
        if i == 300 or (ts and t < ts[-1]):
            ts, used = [], []
        level = 12 * GiB + 40 * MiB * (i % 200) if i % 200 < 150 else 12 * GiB
        ts.append(t)
        used.append(int(level + rng.gauss(0, 2 * MiB)))
        got = forecaster.on_stats(t, {"vram_used_bytes": used[-1], "vram_total_bytes": TOTAL})
        assert got == atw.compute_vram_forecast(ts[-242:], used[-242:], TOTAL, {}), i
        seen.add(got["state"])
    assert forecaster._steps and "step" in seen and "trend" in seen
    assert atw.find_vram_step(ts, used, ts[0], {}) == atw.find_vram_step(ts, used, ts[0])
