"""Property-based fuzzing (hypothesis) of the pure parts of amdgpu_top_web.

Every parser that sees outside bytes (WebSocket frames, sysfs and /proc text,
HTTP header values, settings) is fed arbitrary and near-valid input. The
contract checked: each returns a value of its documented shape, or raises the
one documented exception (ProtocolError, ValueError, ConfigError,
HandshakeError), never anything else; and what ends up in a frame is
JSON-serialisable (json_bytes refuses NaN and infinities).

Process-top parsers are checked only where the module has them (skipped with
a reason otherwise). No hypothesis database is written (database=None), and
no deadline: the box is small and shared.
"""

import json
import math
import re
import struct

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import amdgpu_top_web as atw
from amdgpu_top_web import (
    ConfigError,
    Frame,
    FrameDecoder,
    HandshakeError,
    Message,
    MessageAssembler,
    Opcode,
    ProtocolError,
    encode_frame,
)

# derandomize: the same examples on every run (a CI failure reproduces locally).
FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_MORE = settings(FUZZ, max_examples=500)


def needs(*names):
    """Skip a test when the module lacks one of ``names``."""
    missing = [name for name in names if not hasattr(atw, name)]
    return pytest.mark.skipif(bool(missing), reason="amdgpu_top_web has no %s yet"
                              % ", ".join(missing))


# --- strategies ---------------------------------------------------------------------

OPCODES = st.sampled_from([0, 1, 2, 8, 9, 10]) | st.integers(0, 15)


@st.composite
def wire_frames(draw):
    """One frame as a client might send it: often valid, sometimes not
    (reserved opcodes and bits, unmasked, fragmented control, long lengths)."""
    opcode = draw(OPCODES)
    fin = draw(st.booleans())
    payload = draw(st.binary(max_size=300))
    masked = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        # Arbitrary header bytes with a plausible tail.
        return draw(st.binary(min_size=2, max_size=14)) + payload
    first = (0x80 if fin else 0) | opcode | (draw(st.sampled_from([0, 0, 0, 0x40, 0x10])))
    length = len(payload)
    encoding = draw(st.sampled_from(["min", "16", "64"]))
    if encoding == "min" and length < 126:
        head = struct.pack("!BB", first, (0x80 if masked else 0) | length)
    elif encoding != "64" and length < 0x10000:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, length)
    if masked:
        mask = draw(st.binary(min_size=4, max_size=4))
        return head + mask + atw._apply_mask(payload, mask)
    return head + payload


STREAMS = st.one_of(
    st.binary(max_size=2000),
    st.lists(wire_frames(), max_size=8).map(b"".join),
)


def chunked(data, sizes):
    """Split ``data`` into pieces of the given sizes (cycled), the rest at the end."""
    out, pos, index = [], 0, 0
    while pos < len(data) and sizes:
        size = sizes[index % len(sizes)]
        out.append(data[pos:pos + size])
        pos += size
        index += 1
    if pos < len(data):
        out.append(data[pos:])
    return out


def decode_all(data_pieces, max_frame, require_mask):
    """Feed pieces; collect frames until None or a ProtocolError.

    Returns (frames, close code of the error or None). Any other exception
    propagates (and fails the property)."""
    decoder = FrameDecoder(max_frame, require_mask=require_mask)
    frames = []
    try:
        for piece in data_pieces:
            decoder.feed(piece)
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    break
                assert isinstance(frame, Frame)
                assert isinstance(frame.opcode, Opcode)
                assert isinstance(frame.payload, bytes) and isinstance(frame.fin, bool)
                assert len(frame.payload) <= max_frame
                frames.append(frame)
    except ProtocolError as exc:
        assert 1000 <= int(exc.close_code) <= 4999
        return frames, int(exc.close_code)
    return frames, None


# --- WebSocket codec ---------------------------------------------------------------------

@FUZZ_MORE
@given(STREAMS, st.lists(st.integers(1, 64), max_size=12), st.booleans(),
       st.sampled_from([0, 5, 125, 126, 300, 65536, 1 << 24]))
def test_frame_decoder_any_bytes_any_chunking(data, sizes, require_mask, max_frame):
    whole = decode_all([data], max_frame, require_mask)
    pieces = decode_all(chunked(data, sizes), max_frame, require_mask)
    # Chunking never changes what is decoded, nor where it fails and how.
    assert pieces == whole


@FUZZ
@given(STREAMS, st.lists(st.integers(1, 64), max_size=6), st.integers(0, 500))
def test_message_assembler_only_messages_or_protocol_errors(data, sizes, max_message):
    frames, _ = decode_all(chunked(data, sizes), 1 << 24, False)
    assembler = MessageAssembler(max_message)
    try:
        for frame in frames:
            message = assembler.add(frame)
            if message is None:
                continue
            assert isinstance(message, Message)
            if message.opcode == Opcode.TEXT:
                assert isinstance(message.data, str)
                assert len(message.data.encode("utf-8")) <= max_message
            elif message.opcode == Opcode.CLOSE:
                code, reason = message.data
                assert code is None or 1000 <= int(code) <= 4999
                assert isinstance(reason, str)
            else:
                assert isinstance(message.data, bytes)
    except ProtocolError as exc:
        assert 1000 <= int(exc.close_code) <= 4999


@FUZZ
@given(st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG, Opcode.CLOSE,
                        Opcode.CONTINUATION]),
       st.binary(max_size=70000), st.booleans(), st.binary(min_size=4, max_size=4) | st.none(),
       st.lists(st.integers(1, 5000), max_size=5))
def test_encode_then_decode_round_trips(opcode, payload, fin, mask, sizes):
    if opcode >= 8:
        payload, fin = payload[:125], True
    wire = encode_frame(opcode, payload, fin=fin, mask=mask)
    frames, error = decode_all(chunked(wire, sizes), 1 << 24, require_mask=mask is not None)
    assert error is None
    assert frames == [Frame(opcode, payload, fin)]


@FUZZ
@given(st.text(max_size=300), st.lists(st.integers(1, 9), max_size=20))
def test_fragmented_utf8_text_reassembles_even_split_inside_characters(text, sizes):
    data = text.encode("utf-8")
    pieces = chunked(data, sizes) or [b""]
    assembler = MessageAssembler(1 << 20)
    out = None
    for index, piece in enumerate(pieces):
        opcode = Opcode.TEXT if index == 0 else Opcode.CONTINUATION
        out = assembler.add(Frame(opcode, piece, index == len(pieces) - 1))
    assert out == Message(Opcode.TEXT, text)


# --- sysfs parsers ------------------------------------------------------------------------------

SYSFS_TOKENS = ["0", "1", "7", "42", "300", "1000", "65535", "9" * 30, "9" * 400, "-1", "+5",
                " ", "  ", "\t", "\n", "\x00", ":", ": ", "*", " *", "Mhz", "MHz", "mhz",
                "GT/s", " GT/s", ",", ", x", "x16", "x", "S:", "F:", ".", ".5", "-",
                "=", "DRIVER", "amdgpu", "PCI_ID", "1002:73BF", "PCI_SLOT_NAME", "Unknown",
                "PCIe", "\u00b2", "\u0663", "\ufffd", "\xff"]
SYSFS_TEXT = st.lists(st.sampled_from(SYSFS_TOKENS), max_size=40).map("".join)
RAW_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    SYSFS_TEXT.map(lambda t: t.encode("utf-8")),
    st.text(alphabet="0123456789", min_size=1, max_size=400).map(lambda t: (t + "\n").encode()),
    st.integers(-(1 << 70), 1 << 70).map(lambda n: ("%d\n" % n).encode()),
)
ANY_TEXT = st.one_of(st.binary(max_size=300), st.text(max_size=300), SYSFS_TEXT, st.none())


@FUZZ_MORE
@given(ANY_TEXT)
def test_sysfs_value_parsers_return_values_or_none(raw):
    value = atw.parse_int(raw)
    assert value is None or type(value) is int
    mhz = atw.parse_dpm_current_mhz(raw)
    assert mhz is None or (type(mhz) is int and mhz >= 0)
    pcie = atw.parse_pcie_dpm(raw)
    assert pcie is None or (type(pcie[0]) is float and type(pcie[1]) is int)
    speed = atw.parse_link_speed(raw)
    assert speed is None or type(speed) is float
    event = atw.parse_uevent(raw)
    assert all(type(k) is str and type(v) is str for k, v in event.items())
    text = atw.clean_text(raw)
    assert text is None or (type(text) is str and text == text.strip() and "\x00" not in text)


FILE_KEYS = sorted({key for key, _, _ in atw.DEVICE_FILES} | {
    "runtime_status", "sclk_dpm", "mclk_dpm", "temp_c", "temp_junction_c", "temp_mem_c",
    "sclk_mhz", "mclk_mhz", "vddgfx_mv", "vddnb_mv", "power_w", "power_cap_w",
    "power_fast_w", "power_fast_cap_w", "fan_rpm", "pwm", "pwm_max"})


@FUZZ_MORE
@given(st.dictionaries(st.sampled_from(FILE_KEYS), RAW_VALUES), st.booleans())
@example({"temp_junction_c": b"9" * 4096}, False)             # a 1 MiB file's first 4096 bytes
@example({"sclk_mhz": b"1" * 400 + b"\n"}, False)
@example({"power_cap_w": b"7" * 400 + b"\n"}, False)
@example({"pcie_dpm": b"1: " + b"1" * 400 + b"GT/s, x16 619Mhz *\n"}, False)   # float('inf')
@example({"link_speed": b"9" * 400 + b" GT/s PCIe\n"}, False)
def test_compute_metrics_gives_json_ready_values_for_any_file_contents(raw, apu):
    """Whatever the files hold, every metric is null or a plain number/string
    and the stats frame can be encoded (no exception, no inf/NaN)."""
    metrics = atw.compute_metrics(raw, apu)
    assert set(metrics) == set(atw.METRIC_KEYS)
    for key, value in metrics.items():
        assert value is None or type(value) in (int, float, str), (key, value)
        if type(value) is float:
            assert math.isfinite(value), (key, value)
    atw.json_bytes(atw.build_stats_message("card0", 1760274425.0, metrics))


HWMON_NAME = st.builds(
    lambda kind, index, suffix: "%s%s_%s" % (kind, index, suffix),
    st.sampled_from(["temp", "freq", "in", "power", "fan", "pwm", "curr", "energy"]),
    st.sampled_from(["1", "2", "3", "0", "10", "01", "99999999999999999999"]),
    st.sampled_from(["input", "label", "average", "cap", "cap_max", "max", "crit", "enable",
                     "target", "min"]))
HWMON_NAMES = st.lists(st.one_of(HWMON_NAME, st.sampled_from(["pwm1", "pwm1_max", "name",
                                                               "uevent", "device"]),
                                 st.text(max_size=20)), max_size=30, unique=True)
LABELS = st.sampled_from(["edge", "junction", "mem", "sclk", "mclk", "vddgfx", "vddnb", "PPT",
                          "slowPPT", "fastPPT", " Edge ", "", "\x00", "gfx"]) | st.text(max_size=8)
PLANNED_KEYS = {"temp_c", "temp_junction_c", "temp_mem_c", "sclk_mhz", "mclk_mhz", "vddgfx_mv",
                "vddnb_mv", "power_w", "power_cap_w", "power_fast_w", "power_fast_cap_w",
                "fan_rpm", "pwm", "pwm_max"}


LABEL_FILES = ["temp1_label", "temp2_label", "temp3_label", "freq1_label", "freq2_label",
               "in0_label", "in1_label", "power1_label", "power2_label", "temp01_label"]


@FUZZ_MORE
@given(HWMON_NAMES, st.dictionaries(st.sampled_from(LABEL_FILES), st.none() | LABELS))
@example(["temp1_input", "temp1_label", "power1_average", "power1_cap", "fan1_input", "pwm1"],
         {"temp1_label": "edge"})
@example(["temp01_input"], {})                    # a zero-padded index
def test_plan_hwmon_maps_known_metrics_to_listed_files(names, labels):
    plan = atw.plan_hwmon(names, labels)
    assert set(plan) <= PLANNED_KEYS, plan
    missing = {key: name for key, name in plan.items() if name not in names}
    assert not missing, "planned files not in the listing: %r" % missing


ID_TEXT = st.lists(st.one_of(
    st.sampled_from(["# comment", "", "73BF,\tC0,\tAMD Radeon RX 6900 XT", "73bf,c0,x",
                     "1002  Advanced Micro Devices", "\t73bf  Navi 21 [Radeon RX 6800]",
                     "\t\t1002 0e3a  sub", "\t73bf", "1002", ",,", "\t"]),
    st.text(max_size=40)), max_size=30).map("\n".join)


@FUZZ
@given(ID_TEXT, st.text(max_size=6), st.text(max_size=4))
def test_ids_parsers_return_a_name_or_none(text, device_id, revision):
    found = atw.parse_amdgpu_ids(text, device_id, revision)
    assert found is None or type(found) is str
    name = atw.parse_pci_ids(text, "1002", device_id)
    assert name is None or (type(name) is str and name.upper().startswith("AMD"))


@FUZZ
@given(ID_TEXT, st.sampled_from(["73BF", "15BF", "747E"]), st.sampled_from(["C0", "C1", "00"]),
       st.text(alphabet=st.characters(blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85"
                                      "\u2028\u2029", blacklist_categories=("Cs",)),
               min_size=1, max_size=30).map(str.strip).filter(bool))
def test_amdgpu_ids_finds_an_exact_line_first(text, device_id, revision, name):
    assume("," not in name)
    line = "%s,\t%s,\t%s" % (device_id, revision, name)
    assert atw.parse_amdgpu_ids(line + "\n" + text, device_id.lower(), revision.lower()) == name


# --- settings -----------------------------------------------------------------------------------

SETTING_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["250ms", "2s", "1.5s", "0", "100ms", "2.0001s", "9" * 400, "1e3", "-1",
                     " 2 s ", "\u00b2", "\u0663", ":8080", "[::1]:80", "::1:80", "127.0.0.1:",
                     "*", "http://a, https://b:8443", "http://", "ftp://x", "http://[::1",
                     "true", "off", "DEBUG", "card1", "auto", "", " "]))


@FUZZ
@given(SETTING_TEXT)
def test_config_value_parsers_return_values_or_value_error(text):
    for parse, check in (
            (atw.parse_duration, lambda v: type(v) is float and v >= 0),
            (atw.parse_listen_addr, lambda v: type(v[0]) is str and 0 <= v[1] <= 65535),
            (atw.parse_origins, lambda v: v is None or v == "*" or (
                type(v) is tuple and all(atw.normalize_origin(o) == o for o in v))),
            (atw.parse_bool, lambda v: type(v) is bool)):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert check(value), (parse.__name__, text, value)


@FUZZ
@given(st.dictionaries(st.sampled_from([s.env for s in atw.SETTINGS]), SETTING_TEXT,
                       max_size=6))
def test_parse_config_any_environment_gives_config_or_config_error(environ):
    try:
        config = atw.parse_config([], environ)
    except ConfigError as exc:
        assert str(exc).split("=", 1)[0] in environ, str(exc)
        return
    assert 0.1 <= config.interval_s <= 2.0


# --- HTTP helpers (headers are attacker-controlled) -------------------------------------------------

HEADER_TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40),
    st.builds(lambda host, port: host + port,
              st.sampled_from(["127.0.0.1", "localhost", "[::1]", "evil.example", "", "[",
                               "127.0.0.1.evil", "[::ffff:127.0.0.1]"]),
              st.sampled_from(["", ":", ":8080", ":\u00b2", ":\u00b9\u00b3", ":99999999999",
                               ":-1", ":0x50", "]"])))


@FUZZ_MORE
@given(HEADER_TEXT, HEADER_TEXT, st.sampled_from(["127.0.0.1", "::1", "localhost", "",
                                                  "0.0.0.0", "192.0.2.1"]),
       st.sampled_from([None, "*", ("http://127.0.0.1:8080", "https://gpu.example")]))
@example("127.0.0.1:\u00b2", "http://127.0.0.1:8080", "127.0.0.1", None)  # Host: 127.0.0.1:\xb2
@example("127.0.0.1:\u00b2", "http://127.0.0.1:8080", "192.0.2.1", None)  # via origin_allowed
def test_host_and_origin_checks_never_raise(host, origin, listen_host, allowed):
    """Host and Origin values come straight from the request (latin-1 text):
    the checks answer True or False, they never raise."""
    name, port = atw.split_host_header(host)
    assert type(name) is str and (port is None or type(port) is int)
    machine = frozenset([atw.normalize_host_name(listen_host)])
    for allowed_hosts in ((), "*", ("gpu.example", ".lan")):
        assert atw.host_allowed(host, machine, allowed_hosts, allowed) in (True, False)
    assert atw.origin_allowed(origin, host, allowed) in (True, False)
    assert atw.origin_allowed(None, host, allowed) is True


@FUZZ
@given(st.sampled_from(["GET", "POST", "HEAD", "get", ""]),
       st.dictionaries(st.sampled_from(["upgrade", "connection", "sec-websocket-version",
                                        "sec-websocket-key", "origin", "host"]),
                       st.one_of(st.text(max_size=40),
                                 st.sampled_from(["websocket", "Upgrade", "keep-alive, Upgrade",
                                                  "13", "dGhlIHNhbXBsZSBub25jZQ==", "AAAA"]))))
def test_check_upgrade_returns_a_key_or_handshake_error(method, headers):
    try:
        key = atw.check_upgrade(method, headers)
    except HandshakeError as exc:
        assert exc.status in (400, 405, 426)
        return
    assert type(key) is str and len(atw.base64.b64decode(key)) == 16


ROUTE_NAMES = {"page", "vendor", "gpus", "healthz", "readyz", "version", "ws", "favicon",
               "plain", "metrics", "not_found", "gpu_metrics", "gpu_procs", "gpu_history"}


@FUZZ_MORE
@given(st.one_of(st.text(max_size=80),
                 st.lists(st.sampled_from(["/", "api", "gpus", "card0", "..", "%2e%2e", "metrics",
                                           "procs", "history", "vendor", "etc", "passwd", "",
                                           ".", "\x00", "\\"]), max_size=8).map("/".join)))
def test_route_never_raises_and_never_yields_a_path(path):
    name, gpu_id = atw.route(path)
    assert name in ROUTE_NAMES
    if gpu_id is not None:
        assert re.match(r"^[A-Za-z0-9_.:-]{1,64}$", gpu_id) and ".." != gpu_id


HOSTILE = st.one_of(st.text(max_size=60),
                    st.sampled_from(["<img src=x onerror=alert(1)>", "<script>x</script>",
                                     "\"'><svg onload=alert(1)>", "&lt;", "</td></tr>"]))


@FUZZ
@given(HOSTILE, HOSTILE, HOSTILE, HOSTILE)
def test_plain_view_escapes_whatever_the_names_are(gpu_name, proc_name, cmd, user):
    """The number of '<' in /plain depends only on the structure, never on
    the (untrusted) text: nothing injected can open a tag."""
    def render(gname, pname, pcmd, puser):
        identity = {"id": "card0", "vendor": "amd", "name": gname, "pci": "0000:03:00.0", "demo": False}
        procs = {"card0": {"processes": [{
            "pid": 1, "user": puser, "uid": 1000, "name": pname, "cmd": pcmd,
            "vram_bytes": 1, "gtt_bytes": 2, "gpu_time_ms_per_s": None}]}}
        return atw.render_plain([(identity, {"gpu_busy_pct": 5})], procs, 2.0)
    plain = render(gpu_name, proc_name, cmd, user)
    baseline = render("x", "x", "x", "x")
    assert plain.count("<") == baseline.count("<")
    assert plain.count(">") == baseline.count(">")


# --- process top parsers (where present) ---------------------------------------------------------------

FDINFO_TOKENS = ["drm-driver:\tamdgpu", "drm-pdev:\t0000:0c:00.0", "drm-client-id:\t217",
                 "drm-engine-gfx:\t107322799 ns", "drm-engine-capacity-vcs:\t2",
                 "drm-memory-vram:\t1024 KiB", "drm-resident-gtt:\t2 MiB",
                 "drm-total-vram:\t1 GiB", "drm-cycles-rcs:\t5", "drm-total-cycles-rcs:\t9",
                 "pasid:\t32774", "pdev:\t0000:04:00.0", "vram mem:\t1 kB", "gfx0:\t70.59%",
                 "enc_10:\t12.0%", "pos:\t0", "flags:\t02", "drm-client-id:\t\u00b2",
                 "drm-engine-gfx:\t\u00b2 ns", "pasid:\t\u00b9", "drm-memory-vram:\t\u0663 KiB",
                 "drm-engine-: 5 ns", ":::", "\x00\xff", "drm-total-gtt: lots",
                 "drm-engine-gfx:\t" + "9" * 400 + " ns", "gfx0:\t" + "9" * 30 + ".9%"]
FDINFO_TEXT = st.one_of(
    st.lists(st.one_of(st.sampled_from(FDINFO_TOKENS), st.text(max_size=30)),
             max_size=25).map("\n".join),
    st.binary(max_size=400))


@needs("parse_fdinfo", "FdinfoRecord")
@FUZZ_MORE
@given(FDINFO_TEXT)
@example("drm-driver:\tamdgpu\ndrm-client-id:\t\u00b2\n")
@example(b"pasid:\t\xc2\xb9\n")
def test_parse_fdinfo_never_raises(text):
    rec = atw.parse_fdinfo(text)
    assert isinstance(rec, atw.FdinfoRecord)
    for mapping in (rec.engines_ns, rec.capacity, rec.cycles, rec.total_cycles):
        assert all(type(v) is int and v >= 0 for v in mapping.values())
    for mapping in (rec.memory, rec.total):
        assert mapping is None or all(v is None or (type(v) is int and v >= 0)
                                      for v in mapping.values())


@needs("parse_size")
@FUZZ
@given(st.one_of(st.none(), st.text(max_size=30),
                 st.builds(lambda n, unit: "%s%s" % (n, unit), st.integers(-5, 1 << 40),
                           st.sampled_from(["", " B", " KiB", "kB", " MiB", " GiB", " ns",
                                            " TiB", "\u00b2"]))))
def test_parse_size_bytes_or_none(text):
    size = atw.parse_size(text)
    assert size is None or (type(size) is int and size >= 0)


CMDLINE_ARGS = st.lists(st.one_of(
    st.text(max_size=30),
    st.sampled_from(["--password", "--token", "--api-key", "-e", "x", "--verbose", "\x1b[31m",
                     "\x1b]0;t\x07", "\x9b1m", "\u202e", "\u2066", "\r\n", "\t", "\x7f",
                     "postgres://u:p@h/db", "?token=t&x=1"])), max_size=12)


@needs("redact_cmdline")
@FUZZ_MORE
@given(CMDLINE_ARGS, st.integers(1, 600), st.booleans())
def test_redact_cmdline_is_safe_to_display(args, limit, as_str):
    raw = b"".join(a.encode("utf-8") + b"\0" for a in args)
    shown = atw.redact_cmdline(raw.decode("utf-8", "replace") if as_str else raw, limit)
    assert type(shown) is str and len(shown) <= limit
    assert not re.search(u"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", shown), repr(shown)


@needs("redact_cmdline")
@FUZZ
@given(CMDLINE_ARGS, st.integers(0, 12),
       st.sampled_from(["--password=%s", "--token=%s", "--api-key=%s", "DB_PASSWORD=%s",
                        "GH_TOKEN=%s", "https://bob:%s@example.com/r.git",
                        "Authorization: Bearer %s", "--auth=%s", "--user=alice:%s",
                        "postgres://u:%s@h/db"]),
       st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=8, max_size=16))
def test_redact_cmdline_hides_secret_values(args, position, template, secret):
    secret = "Zq" + secret
    assume(not any(secret in a for a in args))
    argv = list(args)
    argv.insert(min(position, len(argv)), template % secret)
    raw = b"".join(a.encode("utf-8", "replace") + b"\0" for a in argv)
    assert secret not in atw.redact_cmdline(raw, 4096)


@needs("parse_proc_stat")
@FUZZ
@given(st.one_of(st.text(max_size=200),
                 st.builds(lambda comm, fields, start: "12 (%s) %s %s 0 0" % (
                     comm, " ".join(fields), start),
                     st.text(max_size=20),
                     st.lists(st.sampled_from(["S", "1", "0", "-1", "99"]), min_size=17,
                              max_size=21),
                     st.sampled_from(["3100", "0", "\u00b2", "\u0663", "-5", "x"]))))
@example("2100 (gpu) (x y) S " + "1 " * 18 + "\u00b2 0")
def test_parse_proc_stat_never_raises(text):
    comm, start = atw.parse_proc_stat(text)
    assert comm is None or type(comm) is str
    assert start is None or (type(start) is int and start >= 0)


@needs("parse_status_uid", "parse_status_nspid")
@FUZZ
@given(st.lists(st.one_of(st.text(max_size=30),
                          st.builds("Uid:\t{}\t{}".format,
                                    st.sampled_from(["1000", "0", "\u00b2", "-1", ""]),
                                    st.sampled_from(["1000", "x"])),
                          st.builds("NSpid:\t{}\t{}".format,
                                    st.sampled_from(["812", "\u00b2", "1"]),
                                    st.sampled_from(["1", "\u00b3", ""]))),
                max_size=8).map("\n".join))
@example("Name:\tx\nUid:\t\u00b2\t0\t0\t0\n")
def test_parse_status_never_raises(text):
    uid = atw.parse_status_uid(text)
    assert uid is None or (type(uid) is int and uid >= 0)
    assert all(type(p) is int for p in atw.parse_status_nspid(text))


@needs("parse_cgroup_container")
@FUZZ
@given(st.one_of(st.none(), st.text(max_size=200),
                 st.lists(st.builds("{}:{}:{}".format, st.sampled_from(["0", "12", "x"]),
                                    st.sampled_from(["", "memory", "name=systemd"]),
                                    st.one_of(st.text(max_size=40), st.sampled_from([
                                        "/docker/" + "ab" * 32, "/lxc.payload.\x1b[31mx",
                                        "/machine-a\\x2db.scope", "/lxc/<img>"]))),
                          max_size=5).map("\n".join)))
def test_parse_cgroup_container_never_raises(text):
    found = atw.parse_cgroup_container(text)
    assert found is None or type(found) is str


@needs("parse_hidepid")
@FUZZ
@given(st.one_of(st.none(), st.text(max_size=200),
                 st.lists(st.sampled_from([
                     "22 1 0:21 / /proc rw - proc proc rw,hidepid=2",
                     "proc /proc proc rw,hidepid=invisible 0 0", "x - proc", " - ", "a b c",
                     "90 1 0:44 / /host/my\\040proc rw - proc proc rw,hidepid=noaccess"]),
                     max_size=5).map("\n".join)),
       st.sampled_from(["/proc", "/host/my proc", "/"]))
def test_parse_hidepid_never_raises(text, mount_point):
    found = atw.parse_hidepid(text, mount_point)
    assert found is None or found is False or type(found) is str


COUNTERS = st.dictionaries(st.sampled_from(["gfx", "compute", "dma", "dec", "enc", "vcs"]),
                           st.integers(0, 1 << 62), max_size=5)


@needs("compute_engine_pct", "compute_cycles_pct")
@FUZZ
@given(st.none() | COUNTERS, COUNTERS, st.integers(-5, 1 << 40),
       st.none() | st.dictionaries(st.sampled_from(["gfx", "vcs"]), st.integers(0, 8)))
def test_engine_rates_are_finite_non_negative_or_none(prev, cur, dt_ns, capacity):
    pct = atw.compute_engine_pct(prev, cur, dt_ns, capacity)
    cyc = atw.compute_cycles_pct(None if prev is None else (prev, prev), (cur, cur), capacity)
    for value in list(pct.values()) + list(cyc.values()):
        assert value is None or (type(value) is float and math.isfinite(value) and value >= 0)
    json.dumps(pct, allow_nan=False)


_PROC_NUMBERS = st.sampled_from(["0", "17", "-1", "1.5", "nan", "inf", "1e999", "\u0663", "x", ""])


@needs("parse_proc_stat_cpu", "parse_meminfo", "parse_loadavg", "parse_pressure", "build_host")
@FUZZ
@given(st.one_of(st.text(max_size=300),
                 st.builds(lambda name, nums: "%s %s\n" % (name, " ".join(nums)),
                           st.sampled_from(["cpu", "cpu ", "cpu0", "cpux", "some", "full",
                                            "MemTotal:", "SwapFree:"]),
                           st.lists(_PROC_NUMBERS, max_size=12)),
                 st.builds(lambda nums: "some avg10=%s avg60=%s total=%s\nfull avg10=%s\n" % nums,
                           st.tuples(_PROC_NUMBERS, _PROC_NUMBERS, _PROC_NUMBERS, _PROC_NUMBERS))))
def test_host_parsers_never_raise_and_give_json(text):
    times, count = atw.parse_proc_stat_cpu(text)
    assert times is None or (all(type(t) is int and t >= 0 for t in times) and len(times) <= 10)
    busy = atw.compute_cpu_busy_pct(times, times and tuple(t + 3 for t in times))
    assert busy is None or 0.0 <= busy <= 100.0
    host = atw.build_host(busy, count, atw.parse_loadavg(text), atw.parse_meminfo(text),
                          atw.parse_pressure(text))
    atw.json_bytes(host)                      # no NaN or infinity reaches a frame
    line = atw.parse_proc_stat_line(text)
    assert line.cpu_ticks is None or line.cpu_ticks >= 0
