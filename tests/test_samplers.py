"""The shared sampler clock (SamplerClock): GPUs and periodic jobs on one
wake-up per tick, and what happens when a read or a job hangs.

The readers here stand in for a GPU driver (a read that returns at once, or
one that hangs until released); the clock, the samplers and the cache are
the real ones. The server-level test with the stand-in NVML library is
tests/test_nvml.py::test_server_a_hung_gpu_call_does_not_stall_the_other_gpu.
"""
import logging
import threading

import amdgpu_top_web as atw
from conftest import wait_for


class DriverStandIn(object):
    """A GPU reader: counts its reads; hangs while `hang` is clear."""

    def __init__(self, info):
        self.info = info
        self.reads = 0
        self.closed = 0
        self.hang = threading.Event()
        self.hang.set()
        self.inside = threading.Event()

    def sample(self, now):
        self.inside.set()
        self.hang.wait(30.0)
        self.reads += 1
        return atw.new_metrics({"runtime_status": "active"})

    def close(self):
        self.closed += 1


class NoWorkers(atw.SamplerClock):
    """The clock's schedule alone, claimed by hand on a made-up clock."""
    WORKERS = 0


def make(count, interval_s):
    infos = atw.demo_gpu_infos(count)
    cache = atw.Cache(interval_s, {})
    cache.set_gpus(infos)
    return cache, [atw.Sampler(DriverStandIn(info), cache, interval_s) for info in infos]


def test_jobs_fall_on_the_gpu_ticks():
    now = [100.0]
    clock = NoWorkers(0.25, clock=lambda: now[0])
    _, (sampler,) = make(1, 0.25)
    clock.add(sampler)
    clock.every(1.0, "host")
    clock.every(1.0, "procs")
    claims = []
    for _ in range(9):
        at, gpus, jobs = clock._claim()
        claims.append((at - 100.0, gpus is not None, [j.job for j in jobs]))
        now[0] = at
    assert claims == [(0.25, True, ["host", "procs"]), (0.5, True, []), (0.75, True, []),
                      (1.0, True, []), (1.25, True, ["host", "procs"]), (1.5, True, []),
                      (1.75, True, []), (2.0, True, []), (2.25, True, ["host", "procs"])]
    now[0] += 0.6                  # a late claim: missed ticks skipped, on the same grid
    at, gpus, jobs = clock._claim()
    assert (at - 100.0, gpus is not None, jobs) == (3.0, True, [])
    now[0] = at
    assert [j.job for j in clock._claim()[2]] == ["host", "procs"]


def test_a_job_between_gpu_ticks_wakes_alone():
    now = [0.0]
    clock = NoWorkers(1.0, clock=lambda: now[0])
    _, (sampler,) = make(1, 1.0)
    clock.add(sampler)
    clock.every(0.5, "fast")
    got = []
    for _ in range(4):
        at, gpus, jobs = clock._claim()
        got.append((at, gpus is not None, [j.job for j in jobs]))
        now[0] = at
    assert got == [(1.0, True, ["fast"]), (1.5, False, ["fast"]), (2.0, True, ["fast"]),
                   (2.5, False, ["fast"])]


def test_the_first_gpu_sets_the_phase_and_a_later_one_waits_half_an_interval():
    now = [0.0]
    clock = NoWorkers(0.25, clock=lambda: now[0])
    clock.every(1.0, "host")                  # the jobs start first (App.start)
    stale = clock._claim()                    # a worker asleep until 0.25
    assert (stale[0], stale[1] is not None, [j.job for j in stale[2]]) == (0.25, True, ["host"])
    now[0] = 0.1
    cache, (first, later) = make(2, 0.25)
    first.tick()                              # discovery's sample at 0.1
    clock.add(first)
    assert stale[1] != clock._phase           # that worker's tick is the jobs' alone
    at, phase, jobs = clock._claim()
    assert (at, phase == clock._phase, jobs) == (0.35, True, [])    # one interval after 0.1
    now[0] = 0.3
    later.tick()                              # a GPU plugged in at 0.3
    clock.add(later)
    assert later.due_at == 0.425
    def reads():
        return first.reader.reads, later.reader.reads
    assert reads() == (1, 1)
    clock.tick(None, 0.35)
    assert reads() == (2, 1)                  # 0.05 after its first sample: not yet
    at, phase, jobs = clock._claim()
    clock.tick(None, at)
    assert (at, reads()) == (0.6, (3, 2))
    assert [j.job for j in clock._claim()[2]] == []
    assert [(j.job, j.next_at) for j in clock._jobs] == [("host", 1.35)]


def test_gpus_and_jobs_run_on_two_workers_taking_turns():
    cache, samplers = make(2, 0.02)
    clock = atw.SamplerClock(0.02)
    ran, threads = [], set()
    for sampler in samplers:
        sampler.tick()
        clock.add(sampler)
    clock.every(0.02, lambda at: (ran.append(at), threads.add(threading.current_thread().name)))
    try:
        wait_for(lambda: len(ran) >= 6 and all(s.reader.reads >= 8 for s in samplers), 20.0)
    finally:
        workers = clock.stop()
        for worker in workers:
            worker.join(5.0)
        clock.close_jobs()
    assert sorted(threads) == ["sampler-clock-1", "sampler-clock-2"]
    assert [s.reader.closed for s in samplers] == [1, 1]
    assert not any(s.running() for s in samplers)
    assert not any(w.is_alive() for w in workers)


def test_a_hung_job_is_skipped_and_its_worker_replaced():
    cache, (sampler,) = make(1, 0.02)
    clock = atw.SamplerClock(0.02)
    release, runs = threading.Event(), []
    sampler.tick()
    clock.add(sampler)
    clock.every(0.02, lambda at: (runs.append(at), release.wait(30.0)))
    try:
        wait_for(lambda: runs, 20.0, message="the job's first run")
        before = sampler.reader.reads
        wait_for(lambda: sampler.reader.reads >= before + 10, 20.0,
                 message="the GPU sampled on while the job hangs")
        assert len(runs) == 1                   # skipped while it runs
        names = [w.name for w in clock._workers]
        assert len(names) == 2 and "sampler-clock-3" in names
        release.set()
        wait_for(lambda: len(runs) >= 3, 20.0, message="the job back on the clock")
    finally:
        release.set()
        for worker in clock.stop():
            worker.join(5.0)


def test_a_gpu_whose_read_hangs_leaves_the_clock_for_a_thread_of_its_own():
    cache, (slow, fast) = make(2, 0.02)
    clock = atw.SamplerClock(0.02)
    for sampler in (slow, fast):
        sampler.tick()
        clock.add(sampler)
    slow.reader.inside.clear()
    slow.reader.hang.clear()
    try:
        wait_for(slow.reader.inside.is_set, 20.0, message="the hung read")
        before = fast.reader.reads
        wait_for(lambda: fast.reader.reads >= before + 10, 20.0,
                 message="the other GPU sampled on")
        assert slow.on_clock is None and not slow.is_alive()    # off the clock, still inside
        reads = slow.reader.reads
        slow.reader.hang.set()
        wait_for(lambda: slow.reader.reads >= reads + 3, 20.0, message="its own thread")
        assert slow.is_alive() and slow.on_clock is None
        assert fast.on_clock is clock
    finally:
        slow.reader.hang.set()
        workers = clock.stop()
        slow.stop()
        for thread in workers + [slow]:
            thread.join(5.0)
    assert slow.reader.closed == 1 and fast.reader.closed == 1


class ClearedBetweenReads(atw.Sampler):
    """A sampler whose on_clock a clock worker clears (an overrun) right after
    its first read: what Sampler.stop must not read twice."""

    @property
    def on_clock(self):
        clock, self.__dict__["on_clock"] = self.__dict__.get("on_clock"), None
        return clock

    @on_clock.setter
    def on_clock(self, value):
        self.__dict__["on_clock"] = value


def test_stop_reads_on_clock_once():
    now = [0.0]
    clock = NoWorkers(0.25, clock=lambda: now[0])
    info = atw.demo_gpu_infos(1)[0]
    sampler = ClearedBetweenReads(DriverStandIn(info), atw.Cache(0.25, {}), 0.25)
    clock.add(sampler)
    sampler.stop()                                  # no AttributeError on None.remove
    assert clock._samplers == [] and sampler.reader.closed == 1


class SlowRead(DriverStandIn):
    """A read that takes `took_s` on the made-up clock `now`, and calls `during` inside."""

    def __init__(self, info, now, took_s, during=None):
        DriverStandIn.__init__(self, info)
        self.now, self.took_s, self.during = now, took_s, during

    def sample(self, at):
        self.now[0] += self.took_s
        if self.during is not None:
            self.during()
        return DriverStandIn.sample(self, at)


def test_a_gpu_leaving_the_clock_counts_as_running_until_its_own_thread_runs():
    """Rediscovery re-adds a GPU whose running() is False: never one that is moving
    off the clock (caught in an overrun, or between the clock and its own thread)."""
    now = [0.0]
    clock = NoWorkers(0.25, clock=lambda: now[0])
    info = atw.demo_gpu_infos(1)[0]
    seen = []
    reader = SlowRead(info, now, 0.3)
    sampler = atw.Sampler(reader, atw.Cache(0.25, {}), 0.25)
    clock.add(sampler)

    def overrun():                                   # the other worker's tick, meanwhile
        reader.during = None
        clock.tick(atw.StoppableThread("other"), now[0])
        seen.append(("caught", sampler.on_clock, sampler.running()))
    reader.during = overrun

    class Moving(logging.Handler):
        def emit(self, record):                      # logged between the clock and start()
            seen.append(("moving", sampler.on_clock, sampler.running()))
    handler = Moving()
    atw.LOG.addHandler(handler)
    try:
        clock.tick(atw.StoppableThread("stand-in"), 1.0)
    finally:
        atw.LOG.removeHandler(handler)
        sampler.stop()
        sampler.join(5.0)
    assert seen == [("caught", None, True), ("moving", None, True)]
    assert reader.reads == 1 and not sampler.running()


def test_add_after_stop_starts_no_worker():
    cache, (sampler,) = make(1, 0.02)
    clock = atw.SamplerClock(0.02)
    assert clock.stop() == []
    clock.add(sampler)
    closed = []
    clock.every(0.02, lambda at: None, lambda: closed.append(True))
    assert clock._workers == [] and not sampler.running() and closed == [True]
    assert not [t for t in threading.enumerate() if t.name.startswith("sampler-clock")]
    assert sampler.reader.closed == 1


def test_a_tick_that_overran_still_runs_the_jobs_it_claimed():
    now = [0.0]
    clock = NoWorkers(0.25, clock=lambda: now[0])
    info = atw.demo_gpu_infos(1)[0]
    sampler = atw.Sampler(SlowRead(info, now, 0.3), atw.Cache(0.25, {}), 0.25)
    clock.add(sampler)
    ran = []
    clock.every(0.25, ran.append)
    clock.every(0.25, lambda at: ran.append(("second", at)))
    worker = atw.StoppableThread("stand-in")         # a clock worker, run here (never started)
    now[0] = 0.25                                    # its tick is due: no wait
    try:
        clock._work(worker)                          # the GPU overran: the worker ends
    finally:
        sampler.stop()
        sampler.join(5.0)
    assert ran == [0.25, ("second", 0.25)]
    assert [job.next_at for job in clock._jobs] == [0.5, 0.5]
