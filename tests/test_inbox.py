"""Inbox: the one drop-oldest inbox of the three sink threads (history writer,
alert engine, webhook sender), and each sink's drop counter fed by it."""

import threading

import amdgpu_top_web as atw


def test_put_and_drain_keep_order():
    box = atw.Inbox(4)
    for i in range(3):
        box.put(i)
    assert len(box) == 3 and box.ready.is_set()
    assert list(box.drain()) == [0, 1, 2]
    assert len(box) == 0 and box.dropped == 0


def test_full_drops_the_oldest_and_counts_each_drop():
    told = []
    box = atw.Inbox(3, on_drop=lambda: told.append(len(told)))
    for i in range(7):
        box.put(i)
    assert list(box.drain()) == [4, 5, 6]              # the newest kept, in order
    assert box.dropped == 4 and len(told) == 4


def test_drain_stops_when_stopping_is_set_and_keeps_the_rest():
    box, stopping = atw.Inbox(10), threading.Event()
    for i in range(5):
        box.put(i)
    taken = []
    for item in box.drain(stopping):
        taken.append(item)
        if item == 1:
            stopping.set()
    assert taken == [0, 1] and len(box) == 3
    assert list(box.drain()) == [2, 3, 4]


def test_items_put_while_draining_come_too():
    box = atw.Inbox(10)
    box.put("a")
    seen = []
    for item in box.drain():
        seen.append(item)
        if item == "a":
            box.put("b")
    assert seen == ["a", "b"]


def test_wait_clears_ready_and_wake_sets_it():
    box = atw.Inbox(2)
    box.put(1)
    box.wait(0)
    assert not box.ready.is_set() and len(box) == 1   # the item stays until drained
    box.wake()
    assert box.ready.is_set()
    box.clear()
    assert len(box) == 0


def test_concurrent_puts_lose_nothing_but_what_is_counted():
    """Several publishing threads put while one thread drains: every item is
    either drained or counted as dropped (drops may run slightly over under
    a race, never under)."""
    box, got, done = atw.Inbox(16), [], threading.Event()
    per_thread, threads = 2000, 4

    def consume():
        while not done.is_set() or len(box):
            box.wait(0.01)
            got.extend(box.drain())

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=lambda n=n: [box.put((n, i)) for i in range(per_thread)])
                 for n in range(threads)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    done.set()
    consumer.join()
    assert len(set(got)) == len(got)
    assert len(got) + box.dropped >= per_thread * threads
    for n in range(threads):                           # each producer's items stay in order
        mine = [i for m, i in got if m == n]
        assert mine == sorted(mine)


def test_the_webhook_counts_what_its_inbox_drops():
    cache = atw.Cache(0.25, {})
    webhook = atw.WebhookSender("http://127.0.0.1:9/", cache, "box")
    for i in range(atw.WEBHOOK_QUEUE_ITEMS + 3):
        webhook.send({"rule": "gpu_temperature", "n": i})
    assert webhook.counts["dropped"] == 3 and len(webhook._queue) == atw.WEBHOOK_QUEUE_ITEMS
    assert cache.health_snapshot()[("exporter_alert_webhook_dropped_total", ())] == 3
    assert [e["n"] for e in webhook._queue.drain()][0] == 3


def test_the_history_writer_counts_what_its_queue_drops(tmp_path):
    store = atw.HistoryStore(None, proc_root=str(tmp_path), queue_max=4)
    for i in range(6):
        store.offer_host(1000.0 + i, {})
    status = store.status()
    assert status["dropped"] == 2 and status["queued"] == 4


def test_pause_sleeps_until_stop_and_stays_open_after_it():
    """StoppableThread.pause (the cheap wait of the samplers): False after
    its timeout while running; stop() from another thread ends it and every
    later pause at once; stop() twice, before or after a pause, is harmless."""
    thread = atw.StoppableThread("t")
    assert thread.pause(0.0) is False and thread.pause(0.01) is False
    results = []
    waiter = threading.Thread(target=lambda: results.append(thread.pause(60.0)))
    waiter.start()
    thread.stop()
    waiter.join(30.0)
    assert results == [True]
    thread.stop()
    assert thread.pause(60.0) is True and thread.pause(60.0) is True
    early = atw.StoppableThread("u")
    early.stop()
    early.stop()
    assert early.pause(60.0) is True
