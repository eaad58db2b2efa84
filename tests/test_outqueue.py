"""Tests for the hub's pure bookkeeping (no sockets, times given): the
per-client OutQueue (drop-oldest by frames and by bytes, the "dropped" count
told on the next broadcast frame, partial sends at every offset, our Close
replacing or following what is queued), the Deadlines schedule of the
keepalive, and WsClient's session (messages in, replies, close handshake and
keepalive out) with no socket behind it. The hub itself runs against real
sockets in test_server, test_load, test_lifecycle and test_autobahn."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import amdgpu_top_web as atw
from amdgpu_top_web import (
    CloseCode,
    Deadlines,
    FrameDecoder,
    Opcode,
    OutFrame,
    OutQueue,
    WsClient,
    encode_close,
    encode_frame,
    parse_close_payload,
)

MASK = bytes.fromhex("37fa213d")


# --- helpers ---------------------------------------------------------------

def text(payload):
    return encode_frame(Opcode.TEXT, payload)


def stats_payload(index, pad=0):
    return b'{"type":"stats","i":%d,"pad":"%s"}' % (index, b"x" * pad)


def broadcast(index, pad=0):
    payload = stats_payload(index, pad)
    return OutFrame("card0", "stats", payload, text(payload))


def drain(queue, now=0.0):
    """Everything due, as one bytes object, then advanced past."""
    data = b"".join(bytes(buf) for buf in queue.buffers(limit=1 << 20))
    queue.advance(len(data), now)
    return data


def decode(stream):
    decoder = FrameDecoder(1 << 24, require_mask=False)
    decoder.feed(stream)
    frames = []
    frame = decoder.next_frame()
    while frame is not None:
        frames.append(frame)
        frame = decoder.next_frame()
    return frames


def fill(queue, count, carriers=False, now=0.0):
    """Push frames 0..count-1 (as broadcast frames that may carry the count, or
    not); returns how many frames the pushes dropped."""
    frames = [broadcast(i) for i in range(count)]
    return sum(queue.push(f.wire, now, f.payload if carriers else None) for f in frames)


# --- empty queue ---------------------------------------------------------------

def test_empty_queue_has_nothing_due_and_is_idle():
    queue = OutQueue()
    assert len(queue) == 0 and not queue
    assert queue.idle
    assert queue.buffers() == []
    assert queue.queued_bytes == queue.unsent_bytes == queue.head_sent == queue.dropped == 0
    assert queue.stalled_for(100.0) == 0.0
    queue.advance(0, 1.0)                        # nothing sent: nothing to forget
    with pytest.raises(ValueError):
        queue.advance(1, 1.0)
    assert queue.idle


def test_frames_come_out_whole_and_in_order():
    queue = OutQueue()
    wires = [text(b"a"), text(b"bb" * 100), text(b"c" * 70000)]
    for wire in wires:
        assert queue.push(wire, 0.0) == 0
    assert queue.buffers() == wires
    assert queue.queued_bytes == queue.unsent_bytes == sum(map(len, wires))
    assert drain(queue) == b"".join(wires)
    assert queue.idle and queue.queued_bytes == 0 and queue.head_sent == 0


def test_buffers_are_capped_for_one_sendmsg():
    queue = OutQueue()
    fill(queue, 10)
    assert len(queue.buffers(limit=4)) == 4
    assert len(queue.buffers()) == 10


# --- partial sends -------------------------------------------------------------

def test_partial_advance_at_every_offset():
    wires = [text(b"x" * n) for n in (0, 1, 125, 126, 300)]
    stream = b"".join(wires)
    for offset in range(len(stream) + 1):
        queue = OutQueue()
        for wire in wires:
            queue.push(wire, 0.0)
        queue.advance(offset, 1.0)
        assert queue.unsent_bytes == len(stream) - offset
        assert b"".join(bytes(b) for b in queue.buffers()) == stream[offset:], offset
        assert drain(queue) == stream[offset:]


def test_byte_by_byte_advance():
    wires = [text(b"hello"), text(b"x" * 200), encode_frame(Opcode.PING, b"p")]
    stream = b"".join(wires)
    queue = OutQueue()
    for wire in wires:
        queue.push(wire, 0.0)
    out = b""
    while queue:
        due = bytes(queue.buffers()[0])[:1]
        queue.advance(1, 0.0)
        out += due
    assert out == stream


def test_head_buffer_is_a_view_of_the_rest():
    queue = OutQueue()
    wire = text(b"0123456789")
    queue.push(wire, 0.0)
    queue.advance(5, 0.0)
    head = queue.buffers()[0]
    assert isinstance(head, memoryview) and bytes(head) == wire[5:]
    assert queue.head_sent == 5


def test_advance_past_the_queue_is_refused_and_changes_nothing():
    queue = OutQueue()
    queue.push(text(b"abc"), 0.0)
    queue.advance(2, 0.0)
    with pytest.raises(ValueError):
        queue.advance(4, 0.0)
    assert queue.head_sent == 2 and queue.unsent_bytes == 3


# --- drop-oldest -------------------------------------------------------------------

def test_drop_oldest_by_frame_count():
    queue = OutQueue(max_frames=3, max_bytes=1 << 20)
    returns = [queue.push(text(b"%d" % i), 0.0) for i in range(7)]
    assert returns == [0, 0, 0, 1, 1, 1, 1]
    assert len(queue) == 3
    assert queue.dropped == 4
    assert [f.payload for f in decode(drain(queue))] == [b"4", b"5", b"6"]


def test_drop_oldest_by_bytes():
    wire = text(b"y" * 98)                      # 100 bytes on the wire
    queue = OutQueue(max_frames=100, max_bytes=350)
    returns = [queue.push(wire, 0.0) for _ in range(5)]
    assert returns == [0, 0, 0, 1, 1]
    assert queue.queued_bytes == 300 and len(queue) == 3
    big = text(b"z" * 246)                      # 250 bytes (4-byte header): two must go
    assert queue.push(big, 0.0) == 2
    assert queue.queued_bytes == 350 and queue.dropped == 4


def test_a_frame_larger_than_the_byte_cap_still_goes_out():
    queue = OutQueue(max_frames=8, max_bytes=100)
    fill(queue, 2)
    huge = text(b"h" * 1000)
    assert queue.push(huge, 0.0) == 2           # everything else goes, it stays
    assert queue.buffers() == [huge]


def test_a_frame_partly_sent_is_never_dropped():
    queue = OutQueue(max_frames=2, max_bytes=1 << 20)
    first = text(b"first")
    queue.push(first, 0.0)
    queue.advance(3, 0.0)
    for i in range(5):
        queue.push(text(b"n%d" % i), 0.0)
    frames = decode(first[:3] + drain(queue))
    assert [f.payload for f in frames] == [b"first", b"n4"]
    assert queue.dropped == 4


def test_only_the_partly_sent_head_and_the_new_frame_may_exceed_the_caps():
    queue = OutQueue(max_frames=1, max_bytes=10)
    queue.push(text(b"x" * 20), 0.0)
    queue.advance(1, 0.0)
    assert queue.push(text(b"y" * 20), 0.0) == 0
    assert len(queue) == 2                       # nothing else could be dropped
    assert queue.push(text(b"z"), 0.0) == 1      # the unsent one goes
    assert len(queue) == 2


# --- the "dropped" count ----------------------------------------------------------

def test_dropped_count_rides_on_the_next_broadcast_frame():
    queue = OutQueue(max_frames=2, max_bytes=1 << 20)
    assert fill(queue, 5) == 3                   # frames 0, 1, 2 dropped
    assert queue.dropped == 3
    carrier = broadcast(9)
    assert queue.push(carrier.wire, 0.0, carrier.payload) == 1      # frame 3 dropped for it
    assert queue.dropped == 1                     # told next time
    frames = decode(drain(queue))
    assert json.loads(frames[-1].payload) == {"dropped": 3, "type": "stats", "i": 9, "pad": ""}
    # byte for byte what the hub always sent: '{"dropped":N,' + the rest of the object
    assert frames[-1].payload == b'{"dropped":3,' + carrier.payload[1:]
    assert frames[-1].opcode == Opcode.TEXT and frames[-1].fin


def test_replies_and_non_objects_never_carry_the_count():
    queue = OutQueue(max_frames=1, max_bytes=1 << 20)
    fill(queue, 3)
    assert queue.dropped == 2
    queue.push(text(b'{"type":"pong"}'), 0.0)               # a reply: no payload given
    queue.push(text(b"[1,2]"), 0.0, b"[1,2]")               # not a JSON object
    assert queue.dropped == 4
    assert [f.payload for f in decode(drain(queue))] == [b"[1,2]"]


def test_empty_object_carrier_stays_valid_json():
    queue = OutQueue(max_frames=1, max_bytes=1 << 20)
    fill(queue, 2)
    queue.push(text(b"{}"), 0.0, b"{}")
    assert json.loads(decode(drain(queue))[0].payload) == {"dropped": 1}


def test_large_carrier_gets_a_longer_header():
    queue = OutQueue(max_frames=1, max_bytes=1 << 20)
    fill(queue, 2)
    frame = broadcast(5, pad=200)                # 125 < length: 16-bit length header
    queue.push(frame.wire, 0.0, frame.payload)
    payload = decode(drain(queue))[0].payload
    assert payload == b'{"dropped":1,' + frame.payload[1:]


def test_a_dropped_carrier_gives_its_count_back():
    queue = OutQueue(max_frames=2, max_bytes=1 << 20)
    head = text(b"head")
    queue.push(head, 0.0)
    queue.advance(1, 0.0)                         # head protected from now on
    fill(queue, 3, carriers=True)                 # 1 drops 0; 2 carries 1, drops 1
    assert queue.dropped == 1
    carrier = broadcast(7)
    queue.push(carrier.wire, 0.0, carrier.payload)   # carries 1, drops 2 (carrying 1)
    assert queue.dropped == 2                     # frame 2 itself + the count it carried
    frames = decode(head[:1] + drain(queue))
    told = [json.loads(f.payload)["dropped"] for f in frames[1:]]
    assert told == [1]
    assert sum(told) + queue.dropped == 3         # frames 0, 1, 2: all told or owed


# --- our Close ------------------------------------------------------------------------

def test_close_keeping_the_queue_sends_the_replies_first():
    queue = OutQueue()
    replies = [text(b"r1"), text(b"r2")]
    for wire in replies:
        queue.push(wire, 0.0)
    close = encode_close(CloseCode.NORMAL_CLOSURE)
    assert queue.close(close, 1.0, keep_queued=True)
    assert queue.closing and not queue.idle
    assert drain(queue) == b"".join(replies) + close
    assert not queue.idle                          # closing stays closing


def test_close_of_our_own_replaces_the_queue():
    queue = OutQueue(max_frames=2)
    fill(queue, 4)
    dropped = queue.dropped
    close = encode_close(CloseCode.GOING_AWAY, "bye")
    queue.close(close, 0.0, keep_queued=False)
    assert queue.buffers() == [close]
    assert queue.queued_bytes == len(close)
    assert queue.dropped == dropped                # the connection ends: not "dropped"


def test_close_of_our_own_finishes_the_frame_half_sent():
    queue = OutQueue()
    first, second = text(b"x" * 50), text(b"second")
    queue.push(first, 0.0)
    queue.push(second, 0.0)
    queue.advance(10, 0.0)
    close = encode_close(CloseCode.POLICY_VIOLATION, "write timeout")
    queue.close(close, 0.0, keep_queued=False)
    frames = decode(first[:10] + drain(queue))
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert frames[0].payload == b"x" * 50
    assert parse_close_payload(frames[1].payload)[0] == CloseCode.POLICY_VIOLATION


def test_close_only_once_and_nothing_after_it():
    queue = OutQueue()
    first = encode_close(CloseCode.NORMAL_CLOSURE)
    assert queue.close(first, 0.0, keep_queued=True)
    assert not queue.close(encode_close(CloseCode.GOING_AWAY), 0.0, keep_queued=False)
    assert queue.push(text(b"late"), 0.0) == 0
    frame = broadcast(1)
    assert queue.push_frames([frame], 0.0) == 0
    assert queue.buffers() == [first]


def test_close_on_an_empty_queue():
    queue = OutQueue()
    close = encode_close(CloseCode.GOING_AWAY)
    queue.close(close, 3.0, keep_queued=False)
    assert queue.buffers() == [close]
    assert queue.stalled_for(4.0) == 1.0


# --- stall time (the write timeout) -------------------------------------------------

def test_stalled_for_counts_from_the_last_progress():
    queue = OutQueue()
    queue.push(text(b"a" * 10), 10.0)
    assert queue.stalled_for(12.5) == 2.5
    queue.push(text(b"b"), 11.0)                 # more output is not progress
    assert queue.stalled_for(12.5) == 2.5
    queue.advance(0, 12.0)                        # nothing taken: no progress either
    assert queue.stalled_for(12.5) == 2.5
    queue.advance(3, 13.0)
    assert queue.stalled_for(14.0) == 1.0
    drain(queue, 20.0)
    assert queue.stalled_for(99.0) == 0.0
    queue.push(text(b"c"), 50.0)
    assert queue.stalled_for(51.0) == 1.0


# --- broadcast frames after a direct send ------------------------------------------

def test_push_frames_after_a_short_direct_send_at_every_offset():
    frames = [broadcast(1), broadcast(2, pad=150), broadcast(3)]
    joined = b"".join(f.wire for f in frames)
    for sent in range(len(joined)):
        queue = OutQueue()
        assert queue.push_frames(frames, 5.0, sent) == 0
        assert joined[:sent] + drain(queue) == joined, sent


def test_push_frames_on_a_busy_queue_is_plain_pushes_with_the_count():
    queue = OutQueue(max_frames=2)
    fill(queue, 3)
    assert queue.dropped == 1
    assert queue.push_frames([broadcast(8), broadcast(9)], 0.0) == 2
    assert queue.dropped == 1                     # frame 2, dropped for frame 9
    payloads = [f.payload for f in decode(drain(queue))]
    assert payloads == [b'{"dropped":1,' + stats_payload(8)[1:],
                        b'{"dropped":1,' + stats_payload(9)[1:]]


def test_push_frames_with_bytes_sent_needs_an_idle_queue():
    queue = OutQueue()
    queue.push(text(b"queued"), 0.0)
    with pytest.raises(ValueError):
        queue.push_frames([broadcast(1)], 0.0, 3)


# --- property: what goes out is what was queued, minus what was told as dropped ------

OPS = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 300), st.booleans()),
    st.tuples(st.just("send"), st.integers(0, 2000)),
    st.tuples(st.just("close"), st.booleans()),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, max_frames=st.integers(1, 6), max_bytes=st.integers(1, 2000))
def test_bytes_sent_are_the_frames_not_dropped_in_order(ops, max_frames, max_bytes):
    queue = OutQueue(max_frames=max_frames, max_bytes=max_bytes)
    pushed, stream, dropped, close = [], b"", 0, None
    for op in ops:
        if op[0] == "push":
            payload = b'{"n":%d,"pad":"%s"}' % (len(pushed), b"p" * op[1])
            protected = 1 if queue.head_sent else 0
            dropped += queue.push(text(payload), 0.0, payload if op[2] else None)
            if not queue.closing:
                pushed.append(payload)
                # within both caps, or nothing is left to drop but the frame half
                # sent and the new one
                assert (len(queue) <= max_frames and queue.queued_bytes <= max_bytes) or \
                    len(queue) == protected + 1
        elif op[0] == "send":
            due = b"".join(bytes(b) for b in queue.buffers())
            take = min(op[1], len(due))
            queue.advance(take, 1.0)
            stream += due[:take]
        elif close is None:
            close = encode_close(CloseCode.GOING_AWAY)
            queue.close(close, 2.0, keep_queued=op[1])
        assert queue.queued_bytes == sum(len(bytes(b)) for b in queue.buffers(1 << 20)) + \
            queue.head_sent
    stream += drain(queue)
    frames = decode(stream)
    if close is not None:
        assert frames[-1].opcode == Opcode.CLOSE
        frames = frames[:-1]
    got = [json.loads(f.payload) for f in frames]
    told = sum(message.pop("dropped", 0) for message in got)
    sent_ids = [message["n"] for message in got]
    # in order, no duplicates, each byte for byte what was pushed (bar the count)
    assert sent_ids == sorted(set(sent_ids))
    for message in got:
        assert json.dumps(message, separators=(",", ":")).encode() == pushed[message["n"]]
    if close is None:
        # every frame not sent was dropped, and every drop is told or still owed
        assert len(pushed) - len(sent_ids) == dropped
        assert told + queue.dropped == dropped


# --- Deadlines --------------------------------------------------------------------------

def test_deadlines_pop_in_time_order_and_only_when_due():
    deadlines = Deadlines()
    assert deadlines.next_due() is None and deadlines.pop_due(1e9) == []
    deadlines.set("b", 2.0)
    deadlines.set("a", 1.0)
    deadlines.set("c", 2.0)                       # same time: in the order set
    assert len(deadlines) == 3 and deadlines.next_due() == 1.0
    assert deadlines.pop_due(0.5) == []
    assert deadlines.pop_due(2.0) == ["a", "b", "c"]
    assert len(deadlines) == 0


def test_deadlines_set_again_moves_and_discard_forgets():
    deadlines = Deadlines()
    for name, due in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        deadlines.set(name, due)
    deadlines.set("a", 5.0)
    deadlines.discard("b")
    deadlines.discard("never-set")
    assert len(deadlines) == 2
    assert deadlines.pop_due(4.0) == ["c"]
    assert deadlines.next_due() == 5.0
    assert deadlines.pop_due(5.0) == ["a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 100)), max_size=40), st.floats(0, 100))
def test_deadlines_match_a_plain_dict(sets, now):
    deadlines, model = Deadlines(), {}
    for item, due in sets:
        deadlines.set(item, due)
        model[item] = due
    due_now = deadlines.pop_due(now)
    assert sorted(due_now) == sorted(k for k, v in model.items() if v <= now)
    assert [model[k] for k in due_now] == sorted(model[k] for k in due_now)
    left = {k: v for k, v in model.items() if v > now}
    assert len(deadlines) == len(left)
    assert deadlines.next_due() == (min(left.values()) if left else None)


# --- WsClient: the session without a socket -----------------------------------------------

class EchoProtocol(object):
    def on_text(self, client, data):
        return [text(data.encode("utf-8"))]

    def on_binary(self, client, data):
        return [encode_frame(Opcode.BINARY, data)]


def client_frame(opcode, payload=b"", fin=True):
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


def new_client(now=0.0):
    stats = {"dropped_frames": 0, "protocol_errors": 0}
    return WsClient(None, "test", now, 1024, stats)


def test_session_replies_to_ping_and_text():
    client = new_client()
    client.receive(client_frame(Opcode.PING, b"p1") + client_frame(Opcode.TEXT, b"hi"), 3.0,
                   EchoProtocol())
    frames = decode(drain(client.out))
    assert [(f.opcode, f.payload) for f in frames] == [(Opcode.PONG, b"p1"), (Opcode.TEXT, b"hi")]
    assert client.last_recv == 3.0


def test_session_echoes_a_close_after_queued_replies_and_reads_no_more():
    client = new_client()
    client.receive(client_frame(Opcode.TEXT, b"a") + client_frame(Opcode.CLOSE, b"\x03\xe8")
                   + client_frame(Opcode.TEXT, b"after"), 1.0, EchoProtocol())
    assert client.close_when_flushed and not client.finished
    frames = decode(drain(client.out))
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert parse_close_payload(frames[1].payload)[0] == 1000
    assert client.close_deadline == 1.0 + 2.0


def test_session_protocol_error_closes_with_its_code_after_the_replies():
    client = new_client()
    client.receive(client_frame(Opcode.TEXT, b"ok") + encode_frame(Opcode.TEXT, b"unmasked"),
                   0.0, EchoProtocol())
    assert client.stats["protocol_errors"] == 1
    frames = decode(drain(client.out))
    assert frames[0].payload == b"ok"
    assert parse_close_payload(frames[1].payload)[0] == CloseCode.PROTOCOL_ERROR


def test_session_our_close_ends_at_the_peers_answer():
    client = new_client()
    assert client.start_close(CloseCode.GOING_AWAY, "bye", 0.0)
    assert not client.start_close(CloseCode.GOING_AWAY, "bye", 0.0)
    client.receive(client_frame(Opcode.TEXT, b"ignored"), 0.5, EchoProtocol())
    assert not client.finished
    client.receive(client_frame(Opcode.CLOSE, b"\x03\xe9"), 0.6, EchoProtocol())
    assert client.finished
    assert [f.opcode for f in decode(drain(client.out))] == [Opcode.CLOSE]


def test_session_keepalive_pings_then_closes():
    client = new_client(now=100.0)
    assert client.keepalive(104.0, 10.0) == 105.0          # not yet: its deadline
    assert client.keepalive(105.0, 10.0) == 110.0          # pinged; close due at 110
    frames = decode(drain(client.out))
    assert [(f.opcode, f.payload) for f in frames] == [(Opcode.PING, b"keepalive")]
    assert client.keepalive(107.0, 10.0) == 110.0          # one ping only
    assert client.out.idle
    assert client.keepalive(110.0, 10.0) is None
    frames = decode(drain(client.out))
    assert parse_close_payload(frames[0].payload) == (CloseCode.INTERNAL_ERROR, "keepalive timeout")
    assert client.keepalive(200.0, 10.0) is None


def test_session_keepalive_deadline_moves_with_what_the_peer_sends():
    client = new_client(now=0.0)
    assert client.keepalive(5.0, 10.0) == 10.0             # pinged
    drain(client.out)
    client.receive(client_frame(Opcode.PONG, b"keepalive"), 8.0, EchoProtocol())
    assert not client.ping_sent
    assert client.keepalive(10.0, 10.0) == 13.0            # the pong moved it
    assert client.out.idle


# -- RateGate: the overview subscription's stats, at most once per period --------------

def test_rate_gate_lets_a_key_through_once_per_period_and_decides_once_per_frame():
    gate = atw.RateGate(1.0)
    frames = [object() for _ in range(41)]          # 4 Hz for 10 s
    passed = [t for t, f in enumerate(frames) if gate.admit("card0", f, t * 0.25)]
    assert passed == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    # asked again about the same frame (another subscription): the same answer
    assert gate.admit("card0", frames[40], 10.0) and not gate.admit("card0", object(), 10.0)
    assert gate.admit("card1", object(), 10.0)      # each key its own clock


def test_rate_gate_a_late_frame_brings_no_burst_and_the_long_run_rate_holds():
    gate = atw.RateGate(1.0)
    # 4 Hz with jitter: every 4th frame a little early, so it misses its due time.
    times = [t * 0.25 - (0.01 if t % 4 == 0 else 0.0) for t in range(1, 401)]
    passed = [t for t in times if gate.admit("g", object(), t)]
    gaps = [b - a for a, b in zip(passed, passed[1:])]
    assert min(gaps) >= 0.5 and len(passed) <= 100 + 1
    # a GPU silent for a while: the next frame passes, the one after waits half a period
    assert gate.admit("g", object(), 500.0) and not gate.admit("g", object(), 500.25)
    assert gate.admit("g", object(), 501.0)
