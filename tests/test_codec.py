"""Tests for the sans-IO WebSocket codec (RFC 6455): framing, messages and
the opening-handshake checks. No sockets here; see the server tests."""

import struct

import pytest

from amdgpu_top_web import (
    CloseCode,
    Frame,
    FrameDecoder,
    HandshakeError,
    Message,
    MessageAssembler,
    Opcode,
    ProtocolError,
    accept_key,
    check_upgrade,
    encode_close,
    encode_frame,
    parse_close_payload,
)

MASK = bytes.fromhex("37fa213d")  # the mask of RFC 6455 §5.7
BIG = 1 << 20


# --- helpers ---------------------------------------------------------------

def decode_all(chunks, require_mask=True, max_frame_size=BIG):
    """Feed each chunk and drain every frame it completes."""
    decoder = FrameDecoder(max_frame_size, require_mask=require_mask)
    frames = []
    for chunk in chunks:
        decoder.feed(chunk)
        frame = decoder.next_frame()
        while frame is not None:
            frames.append(frame)
            frame = decoder.next_frame()
    return frames


def decode_error(data, require_mask=True, max_frame_size=BIG):
    """The ProtocolError raised while decoding ``data``."""
    with pytest.raises(ProtocolError) as info:
        decode_all([data], require_mask, max_frame_size)
    return info.value


def assemble(frames, max_message_size=BIG):
    assembler = MessageAssembler(max_message_size)
    results = [assembler.add(frame) for frame in frames]
    return [message for message in results if message is not None]


def assemble_error(frames, max_message_size=BIG):
    assembler = MessageAssembler(max_message_size)
    with pytest.raises(ProtocolError) as info:
        for frame in frames:
            assembler.add(frame)
    return info.value


def client_frame(opcode, payload, fin=True):
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


# --- RFC 6455 §5.7 examples, byte for byte ---------------------------------

PAYLOAD_256 = bytes(range(256))
PAYLOAD_64K = bytes(range(256)) * 256

# (id, wire bytes, opcode, payload, fin, mask)
RFC_EXAMPLES = [
    ("text-unmasked", bytes.fromhex("810548656c6c6f"),
     Opcode.TEXT, b"Hello", True, None),
    ("text-masked", bytes.fromhex("818537fa213d7f9f4d5158"),
     Opcode.TEXT, b"Hello", True, MASK),
    ("fragment-1", bytes.fromhex("010348656c"),
     Opcode.TEXT, b"Hel", False, None),
    ("fragment-2", bytes.fromhex("80026c6f"),
     Opcode.CONTINUATION, b"lo", True, None),
    ("ping-unmasked", bytes.fromhex("890548656c6c6f"),
     Opcode.PING, b"Hello", True, None),
    ("pong-masked", bytes.fromhex("8a8537fa213d7f9f4d5158"),
     Opcode.PONG, b"Hello", True, MASK),
    ("binary-256", bytes.fromhex("827e0100") + PAYLOAD_256,
     Opcode.BINARY, PAYLOAD_256, True, None),
    ("binary-64k", bytes.fromhex("827f0000000000010000") + PAYLOAD_64K,
     Opcode.BINARY, PAYLOAD_64K, True, None),
]
RFC_IDS = [example[0] for example in RFC_EXAMPLES]


@pytest.mark.parametrize("name,wire,opcode,payload,fin,mask", RFC_EXAMPLES,
                         ids=RFC_IDS)
def test_encode_rfc_example(name, wire, opcode, payload, fin, mask):
    assert encode_frame(opcode, payload, fin=fin, mask=mask) == wire


@pytest.mark.parametrize("name,wire,opcode,payload,fin,mask", RFC_EXAMPLES,
                         ids=RFC_IDS)
def test_decode_rfc_example_split_everywhere(name, wire, opcode, payload,
                                             fin, mask):
    expected = [Frame(opcode, payload, fin)]
    require_mask = mask is not None
    assert decode_all([wire], require_mask) == expected
    for cut in range(len(wire) + 1):
        assert decode_all([wire[:cut], wire[cut:]], require_mask) == expected


@pytest.mark.parametrize("name,wire,opcode,payload,fin,mask", RFC_EXAMPLES,
                         ids=RFC_IDS)
def test_decode_rfc_example_byte_by_byte(name, wire, opcode, payload, fin,
                                         mask):
    chunks = [wire[i:i + 1] for i in range(len(wire))]
    expected = [Frame(opcode, payload, fin)]
    assert decode_all(chunks, mask is not None) == expected


def test_decoded_opcode_is_an_opcode_member():
    (frame,) = decode_all([RFC_EXAMPLES[1][1]])
    assert frame.opcode is Opcode.TEXT


def test_rfc_fragments_assemble_to_hello():
    frames = decode_all([RFC_EXAMPLES[2][1] + RFC_EXAMPLES[3][1]],
                        require_mask=False)
    assert assemble(frames) == [Message(Opcode.TEXT, "Hello")]


# --- a multi-frame client stream ---------------------------------------------

def non_minimal_frame(opcode, payload, length_bytes):
    """A masked frame whose length uses a longer encoding than needed."""
    if length_bytes == 2:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, len(payload))
    return header + MASK + encode_frame(opcode, payload, mask=MASK)[6:]


STREAM_FRAMES = [
    Frame(Opcode.TEXT, "κόσμε".encode("utf-8"), False),
    Frame(Opcode.PING, b"", True),
    Frame(Opcode.CONTINUATION, b"!", True),
    Frame(Opcode.BINARY, bytes(range(200)), True),
    Frame(Opcode.BINARY, b"", True),
    Frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye", True),
]
STREAM = b"".join(client_frame(*frame) for frame in STREAM_FRAMES)


def test_stream_split_at_every_offset():
    assert decode_all([STREAM]) == STREAM_FRAMES
    for cut in range(len(STREAM) + 1):
        assert decode_all([STREAM[:cut], STREAM[cut:]]) == STREAM_FRAMES


def test_stream_byte_by_byte():
    chunks = [STREAM[i:i + 1] for i in range(len(STREAM))]
    assert decode_all(chunks) == STREAM_FRAMES


def test_stream_assembles_to_messages():
    assert assemble(decode_all([STREAM])) == [
        Message(Opcode.PING, b""),
        Message(Opcode.TEXT, "κόσμε!"),
        Message(Opcode.BINARY, bytes(range(200))),
        Message(Opcode.BINARY, b""),
        Message(Opcode.CLOSE, (CloseCode.NORMAL_CLOSURE, "bye")),
    ]


def test_many_small_frames_in_one_chunk():
    frames = [Frame(Opcode.BINARY, bytes([i % 256]) * (i % 7), True)
              for i in range(5000)]
    data = b"".join(client_frame(*frame) for frame in frames)
    assert decode_all([data]) == frames


def test_non_minimal_lengths_are_accepted_with_every_split():
    # Senders MUST use the minimal encoding (§5.2); we accept either.
    data = (non_minimal_frame(Opcode.TEXT, b"Hello", 2)
            + non_minimal_frame(Opcode.PING, b"ping", 8))
    expected = [Frame(Opcode.TEXT, b"Hello", True),
                Frame(Opcode.PING, b"ping", True)]
    for cut in range(len(data) + 1):
        assert decode_all([data[:cut], data[cut:]]) == expected


def test_next_frame_waits_for_the_whole_frame():
    wire = client_frame(Opcode.BINARY, b"x" * 300)
    decoder = FrameDecoder(BIG)
    decoder.feed(wire[:-1])
    assert decoder.next_frame() is None
    assert decoder.next_frame() is None
    decoder.feed(wire[-1:])
    assert decoder.next_frame() == Frame(Opcode.BINARY, b"x" * 300, True)
    assert decoder.next_frame() is None


# --- lengths -----------------------------------------------------------------

@pytest.mark.parametrize("length,header_size", [
    (0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_payload_length_round_trip(length, header_size):
    payload = bytes(i * 7 % 256 for i in range(length))
    wire = encode_frame(Opcode.BINARY, payload, mask=b"\x00\xff\x80\x01")
    assert len(wire) == header_size + 4 + length
    assert decode_all([wire]) == [Frame(Opcode.BINARY, payload, True)]
    server_wire = encode_frame(Opcode.BINARY, payload)
    assert server_wire[header_size:] == payload
    assert len(server_wire) == header_size + length


def test_masked_payload_differs_from_plain():
    wire = encode_frame(Opcode.BINARY, b"\x00" * 8, mask=MASK)
    assert wire[6:] == MASK * 2


def test_encode_frame_rejects_bad_control_frames_and_masks():
    with pytest.raises(ValueError):
        encode_frame(Opcode.PING, b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(Opcode.PING, b"", fin=False)
    with pytest.raises(ValueError):
        encode_frame(Opcode.TEXT, b"x", mask=b"abc")


# --- frame-level protocol errors ---------------------------------------------

@pytest.mark.parametrize("rsv_bit", [0x40, 0x20, 0x10],
                         ids=["rsv1", "rsv2", "rsv3"])
def test_reserved_bits_are_refused(rsv_bit):
    wire = bytearray(client_frame(Opcode.TEXT, b"Hello"))
    wire[0] |= rsv_bit
    assert decode_error(bytes(wire)).close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes_are_refused(opcode):
    wire = bytes([0x80 | opcode, 0x80]) + MASK
    assert decode_error(wire).close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_fragmented_control_frame_is_refused(opcode):
    wire = bytes([opcode, 0x80]) + MASK  # FIN clear
    assert decode_error(wire).close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_payload_over_125_is_refused(opcode):
    wire = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, 126) + MASK
    assert decode_error(wire).close_code == CloseCode.PROTOCOL_ERROR


def test_control_payload_of_125_is_accepted():
    wire = client_frame(Opcode.PING, b"p" * 125)
    assert decode_all([wire]) == [Frame(Opcode.PING, b"p" * 125, True)]


def test_unmasked_client_frame_is_refused():
    wire = encode_frame(Opcode.TEXT, b"Hello")
    assert decode_error(wire).close_code == CloseCode.PROTOCOL_ERROR


def test_masked_frame_is_accepted_when_mask_not_required():
    wire = client_frame(Opcode.TEXT, b"Hello")
    assert decode_all([wire], require_mask=False) == [
        Frame(Opcode.TEXT, b"Hello", True)]


def test_64_bit_length_with_high_bit_is_refused():
    wire = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 63) + MASK
    error = decode_error(wire, max_frame_size=1 << 64)
    assert error.close_code == CloseCode.PROTOCOL_ERROR


def test_oversized_frame_is_refused_from_its_header_alone():
    header = client_frame(Opcode.BINARY, b"x" * 1001)[:8]  # no payload yet
    error = decode_error(header, max_frame_size=1000)
    assert error.close_code == CloseCode.MESSAGE_TOO_BIG


def test_frame_of_exactly_max_size_is_accepted():
    wire = client_frame(Opcode.BINARY, b"x" * 1000)
    assert decode_all([wire], max_frame_size=1000)[0].payload == b"x" * 1000


def test_header_errors_fail_before_the_extended_length_arrives():
    decoder = FrameDecoder(BIG)
    decoder.feed(b"\xc2")  # RSV1 set; only one byte so far
    assert decoder.next_frame() is None
    decoder.feed(b"\xfe")  # 16-bit length follows, not yet sent
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_protocol_error_carries_code_and_reason():
    error = ProtocolError(1002, "reserved bits set")
    assert error.close_code is CloseCode.PROTOCOL_ERROR
    assert error.reason == "reserved bits set"
    assert "1002" in str(error) and "reserved bits set" in str(error)


# --- CLOSE payloads ----------------------------------------------------------

def close_body(code, reason=b""):
    return struct.pack("!H", code) + reason


def test_empty_close_payload_has_no_code():
    assert parse_close_payload(b"") == (None, "")


def test_close_payload_code_and_reason():
    code, reason = parse_close_payload(close_body(1001, "adiós".encode()))
    assert code is CloseCode.GOING_AWAY and reason == "adiós"


@pytest.mark.parametrize("code", [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
    3000, 3999, 4000, 4999])
def test_valid_close_codes(code):
    assert parse_close_payload(close_body(code)) == (code, "")


@pytest.mark.parametrize("code", [
    0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_codes(code):
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(close_body(code))
    assert info.value.close_code == CloseCode.PROTOCOL_ERROR


def test_one_byte_close_payload_is_refused():
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(b"\x03")
    assert info.value.close_code == CloseCode.PROTOCOL_ERROR


def test_close_reason_must_be_utf8():
    with pytest.raises(ProtocolError) as info:
        parse_close_payload(close_body(1000, b"\xff\xfe"))
    assert info.value.close_code == CloseCode.INVALID_FRAME_PAYLOAD_DATA


def test_close_frame_through_assembler():
    frame = Frame(Opcode.CLOSE, close_body(4001, b"bye"), True)
    assert assemble([frame]) == [Message(Opcode.CLOSE, (4001, "bye"))]


def test_encode_close_wire_format():
    assert encode_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert encode_close(CloseCode.MESSAGE_TOO_BIG) == b"\x88\x02\x03\xf1"
    assert encode_close(None) == b"\x88\x00"


def test_encode_close_round_trip_truncates_reason_on_a_character():
    wire = encode_close(1011, "é" * 100)  # 200 bytes of UTF-8
    (frame,) = decode_all([wire], require_mask=False)
    code, reason = parse_close_payload(frame.payload)
    assert code == CloseCode.INTERNAL_ERROR
    assert reason == "é" * 61 and len(frame.payload) == 124


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 5000])
def test_encode_close_refuses_codes_not_for_the_wire(code):
    with pytest.raises(ValueError):
        encode_close(code)


# --- fragmentation -----------------------------------------------------------

def test_continuation_without_a_message_is_refused():
    error = assemble_error([Frame(Opcode.CONTINUATION, b"x", True)])
    assert error.close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_new_data_frame_inside_a_fragmented_message_is_refused(opcode):
    frames = [Frame(Opcode.BINARY, b"a", False), Frame(opcode, b"b", True)]
    assert assemble_error(frames).close_code == CloseCode.PROTOCOL_ERROR


def test_control_frames_between_fragments_come_back_at_once():
    assembler = MessageAssembler(BIG)
    assert assembler.add(Frame(Opcode.BINARY, b"ab", False)) is None
    assert assembler.add(Frame(Opcode.PING, b"1", True)) == Message(
        Opcode.PING, b"1")
    assert assembler.add(Frame(Opcode.CONTINUATION, b"", False)) is None
    assert assembler.add(Frame(Opcode.PONG, b"2", True)) == Message(
        Opcode.PONG, b"2")
    assert assembler.add(Frame(Opcode.CONTINUATION, b"cd", True)) == Message(
        Opcode.BINARY, b"abcd")


def test_assembler_is_reusable_after_a_message():
    frames = [Frame(Opcode.TEXT, b"one", True),
              Frame(Opcode.BINARY, b"tw", False),
              Frame(Opcode.CONTINUATION, b"o", True),
              Frame(Opcode.TEXT, b"three", True)]
    assert assemble(frames) == [Message(Opcode.TEXT, "one"),
                                Message(Opcode.BINARY, b"two"),
                                Message(Opcode.TEXT, "three")]


def test_message_over_the_cap_fails_at_the_fragment_that_crosses_it():
    assembler = MessageAssembler(10)
    assert assembler.add(Frame(Opcode.BINARY, b"x" * 6, False)) is None
    with pytest.raises(ProtocolError) as info:
        assembler.add(Frame(Opcode.CONTINUATION, b"x" * 5, False))
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_single_frame_message_over_the_cap_is_refused():
    error = assemble_error([Frame(Opcode.TEXT, b"x" * 11, True)], 10)
    assert error.close_code == CloseCode.MESSAGE_TOO_BIG


def test_message_of_exactly_the_cap_is_accepted():
    frames = [Frame(Opcode.TEXT, b"x" * 4, False),
              Frame(Opcode.CONTINUATION, b"x" * 6, True)]
    assert assemble(frames, 10) == [Message(Opcode.TEXT, "x" * 10)]


# --- UTF-8 -------------------------------------------------------------------

def test_invalid_utf8_fails_at_the_first_fragment():
    # κόσμε followed by U+110000 (F4 90 80 80), beyond Unicode (Autobahn 6.4)
    assembler = MessageAssembler(BIG)
    first = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"
    with pytest.raises(ProtocolError) as info:
        assembler.add(Frame(Opcode.TEXT, first, False))
    assert info.value.close_code == CloseCode.INVALID_FRAME_PAYLOAD_DATA


def test_incomplete_utf8_at_the_end_of_the_message_is_refused():
    frames = [Frame(Opcode.TEXT, b"ok", False),
              Frame(Opcode.CONTINUATION, b"\xce", True)]
    error = assemble_error(frames)
    assert error.close_code == CloseCode.INVALID_FRAME_PAYLOAD_DATA


@pytest.mark.parametrize("payload", [
    b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"a\x80b"],
    ids=["ff", "overlong", "surrogate", "lone-continuation"])
def test_invalid_utf8_in_a_single_frame_is_refused(payload):
    error = assemble_error([Frame(Opcode.TEXT, payload, True)])
    assert error.close_code == CloseCode.INVALID_FRAME_PAYLOAD_DATA


def test_character_split_across_fragments_is_accepted():
    data = "κόσμε".encode("utf-8")
    frames = [Frame(Opcode.TEXT, data[:1], False)]
    frames += [Frame(Opcode.CONTINUATION, data[i:i + 1], False)
               for i in range(1, len(data))]
    frames.append(Frame(Opcode.CONTINUATION, b"", True))
    assert assemble(frames) == [Message(Opcode.TEXT, "κόσμε")]


def test_binary_messages_are_not_utf8_checked():
    frames = [Frame(Opcode.BINARY, b"\xff\xce", True)]
    assert assemble(frames) == [Message(Opcode.BINARY, b"\xff\xce")]


# --- opening handshake -------------------------------------------------------

def test_accept_key_rfc_example():
    # RFC 6455 §1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == \
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


CHROMIUM_HEADERS = {
    "host": "127.0.0.1:8080",
    "connection": "Upgrade",
    "pragma": "no-cache",
    "cache-control": "no-cache",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                  "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "upgrade": "websocket",
    "origin": "http://127.0.0.1:8080",
    "sec-websocket-version": "13",
    "accept-encoding": "gzip, deflate, br, zstd",
    "accept-language": "en-US,en;q=0.9",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-extensions":
        "permessage-deflate; client_max_window_bits",
}


def headers_with(**changes):
    """CHROMIUM_HEADERS with fields replaced (value None removes it)."""
    headers = dict(CHROMIUM_HEADERS)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def test_check_upgrade_accepts_a_browser_request():
    key = check_upgrade("GET", CHROMIUM_HEADERS)
    assert key == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("changes", [
    {"connection": "keep-alive, Upgrade"},           # Firefox
    {"upgrade": "WebSocket", "connection": "upgrade"},
    {"upgrade": "h2c, websocket"},
    {"sec_websocket_key": " dGhlIHNhbXBsZSBub25jZQ== "},
], ids=["firefox-connection", "case", "upgrade-list", "key-spaces"])
def test_check_upgrade_accepts_variants(changes):
    key = check_upgrade("GET", headers_with(**changes))
    assert key == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize("method,changes,status", [
    ("POST", {}, 405),
    ("HEAD", {}, 405),
    ("GET", {"upgrade": None}, 426),
    ("GET", {"upgrade": "h2c"}, 426),
    ("GET", {"upgrade": "websocket2"}, 426),
    ("GET", {"connection": None}, 426),
    ("GET", {"connection": "keep-alive"}, 426),
    ("GET", {"connection": "upgrade-insecure"}, 426),
    ("GET", {"sec_websocket_version": None}, 426),
    ("GET", {"sec_websocket_version": "8"}, 426),
    ("GET", {"sec_websocket_version": "13, 8"}, 426),
    ("GET", {"sec_websocket_key": None}, 400),
    ("GET", {"sec_websocket_key": ""}, 400),
    ("GET", {"sec_websocket_key": "not base64 at all!"}, 400),
    ("GET", {"sec_websocket_key": "A" * 20}, 400),          # 15 bytes
    ("GET", {"sec_websocket_key": "A" * 23 + "="}, 400),    # 17 bytes
    ("GET", {"sec_websocket_key": "dGhlIHNhbXBsZSBub25jZQ"}, 400),    # padding
    ("GET", {"sec_websocket_key": "dGhlIHNhbXBsZSBub25jZQ=é"}, 400),
])
def test_check_upgrade_refuses(method, changes, status):
    with pytest.raises(HandshakeError) as info:
        check_upgrade(method, headers_with(**changes))
    assert info.value.status == status
    assert info.value.message


def test_check_upgrade_names_the_supported_version():
    with pytest.raises(HandshakeError) as info:
        check_upgrade("GET", headers_with(sec_websocket_version="8"))
    assert info.value.headers == {"Sec-WebSocket-Version": "13"}


def test_check_upgrade_426_names_the_protocol():
    with pytest.raises(HandshakeError) as info:
        check_upgrade("GET", headers_with(upgrade=None))
    assert info.value.headers == {"Upgrade": "websocket"}


def test_check_upgrade_405_names_get():
    with pytest.raises(HandshakeError) as info:
        check_upgrade("POST", CHROMIUM_HEADERS)
    assert info.value.headers == {"Allow": "GET"}
