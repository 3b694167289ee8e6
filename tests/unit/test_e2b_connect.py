"""The E2B adapter's wire formats without a fleet: Connect's envelopes and errors
(gateway/e2b/connect.py), proto3's JSON rules (protojson.py), and the error bodies and access
tokens (common.py), the error shapes checked with the official SDK's own parsers."""

import base64
import json
import struct

import pytest

from tryfleet.errors import BadRequest, NoRoom, NotFound, PolicyDenied, QuotaExceeded
from tryfleet.gateway.e2b import connect, protojson
from tryfleet.gateway.e2b.common import (
    ApiError,
    access_token,
    api_answer,
    api_error,
    sandbox_missing,
    token_principal,
)
from tryfleet.gateway.e2b.connect import Code, ConnectError, EnvelopeReader
from tryfleet.gateway.keys import KeyStore, Scope


# ---- envelopes -------------------------------------------------------------------------------
def test_an_envelope_is_a_flag_byte_a_big_endian_length_and_the_json():
    assert connect.envelope({"a": 1}) == b"\x00\x00\x00\x00\x07" + b'{"a":1}'


def test_the_end_of_stream_is_flagged_0x02_and_carries_the_error():
    assert connect.end_of_stream() == b"\x02\x00\x00\x00\x02{}"
    frame = connect.end_of_stream(ConnectError(Code.NOT_FOUND, "no such pid"))
    assert frame[0] == connect.FLAG_END
    assert json.loads(frame[5:]) == {"error": {"code": "not_found", "message": "no such pid"}}


def test_the_reader_finds_messages_across_pieces_of_any_size():
    body = connect.envelope({"n": 1}) + connect.envelope({}) + connect.envelope({"s": "x" * 70})
    for size in (1, 3, 7, len(body)):
        reader = EnvelopeReader()
        got = [m for i in range(0, len(body), size) for m in reader.feed(body[i:i + size])]
        reader.close()
        assert got == [{"n": 1}, {}, {"s": "x" * 70}]


@pytest.mark.parametrize(("frame", "code"), [
    (struct.pack(">BI", 1, 2) + b"{}", Code.INTERNAL),  # compressed
    (struct.pack(">BI", 2, 2) + b"{}", Code.INVALID_ARGUMENT),  # an end-of-stream from a client
    (struct.pack(">BI", 0, 2) + b"[]", Code.INVALID_ARGUMENT),  # not an object
    (struct.pack(">BI", 0, 3) + b"{x}", Code.INVALID_ARGUMENT),  # not JSON
])
def test_the_reader_refuses_what_a_client_may_not_send(frame, code):
    with pytest.raises(ConnectError) as err:
        EnvelopeReader().feed(frame)
    assert err.value.code is code


def test_the_reader_refuses_a_message_over_its_limit_before_reading_it():
    with pytest.raises(ConnectError) as err:
        EnvelopeReader(max_bytes=10).feed(struct.pack(">BI", 0, 11))
    assert err.value.code is Code.RESOURCE_EXHAUSTED


def test_a_body_that_ends_inside_a_message_is_refused():
    reader = EnvelopeReader()
    assert reader.feed(connect.envelope({"a": 1})[:-1]) == []
    with pytest.raises(ConnectError, match="ends inside"):
        reader.close()


def test_a_unary_error_answers_the_status_of_its_code_and_a_connect_json_body():
    answer = connect.error_answer(ConnectError(Code.ALREADY_EXISTS, "there"))
    assert answer.status_code == 409 and answer.media_type == "application/json"
    assert json.loads(bytes(answer.body)) == {"code": "already_exists", "message": "there"}
    assert {connect.HTTP_STATUS[c] for c in Code} <= {400, 401, 403, 404, 409, 429, 499, 500,
                                                     501, 503, 504}


def test_connect_errors_parse_as_the_sdk_parses_them():
    shared = pytest.importorskip("e2b.envd.client_shared")
    from connectrpc.code import Code as SdkCode

    for code in Code:
        answer = connect.error_answer(ConnectError(code, "m"))
        # None: a well-formed Connect error, which the SDK hands to connectrpc to read
        assert shared.plain_http_error(answer.status_code, "application/json",
                                       bytes(answer.body)) is None
        assert SdkCode(code.value).value == code.value


# ---- proto3 JSON -----------------------------------------------------------------------------
def test_fields_are_read_by_their_json_name_or_their_proto_name():
    assert protojson.json_name("modified_time") == "modifiedTime"
    assert protojson.text({"symlinkTarget": "a"}, "symlink_target") == "a"
    assert protojson.text({"symlink_target": "b"}, "symlink_target") == "b"
    assert protojson.text({}, "symlink_target", "dflt") == "dflt"


@pytest.mark.parametrize("raw", [7, "7", 7.0])
def test_integers_come_as_numbers_or_decimal_strings(raw):
    assert protojson.integer({"pid": raw}, "pid", protojson.UINT32) == 7


@pytest.mark.parametrize("raw", [True, "7x", 7.5, -1, 1 << 32, [7]])
def test_anything_else_for_an_integer_is_invalid_argument_naming_the_field(raw):
    with pytest.raises(ConnectError, match="'pid'") as err:
        protojson.integer({"pid": raw}, "pid", protojson.UINT32)
    assert err.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("raw", ["/+8=", "_-8", "/+8"])
def test_bytes_come_as_standard_or_url_safe_base64_padded_or_not(raw):
    assert protojson.data({"stdin": raw}, "stdin") == b"\xff\xef"


def test_enums_come_by_name_or_number():
    values = {"SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}
    assert protojson.enum({"signal": "SIGNAL_SIGKILL"}, "signal", values) == 9
    assert protojson.enum({"signal": 15}, "signal", values) == 15
    with pytest.raises(ConnectError):
        protojson.enum({"signal": "SIGKILL"}, "signal", values)


def test_a_oneof_names_the_field_set_and_refuses_two():
    assert protojson.oneof({"pid": 0}, "pid", "tag") == ("pid", 0)
    assert protojson.oneof({}, "pid", "tag") is None
    with pytest.raises(ConnectError):
        protojson.oneof({"pid": 1, "tag": "t"}, "pid", "tag")


def test_writing_leaves_defaults_out_and_keeps_fields_with_presence():
    got = protojson.message_json(keep=("error",), exit_code=0, exited=True, status="",
                                 error="", size=protojson.int64(5))
    assert got == {"exited": True, "error": "", "size": "5"}
    assert protojson.message_json(exit_code=-1, exited=False) == {"exitCode": -1}


@pytest.mark.parametrize(("epoch", "text"), [
    (0, "1970-01-01T00:00:00Z"), (1.5, "1970-01-01T00:00:01.500Z"),
    (1.000123, "1970-01-01T00:00:01.000123Z")])
def test_timestamps_are_rfc3339_in_utc_with_0_3_or_6_fraction_digits(epoch, text):
    assert protojson.timestamp(epoch) == text


def test_bytes_are_written_as_standard_base64():
    assert protojson.b64(b"\xff\xef") == base64.b64encode(b"\xff\xef").decode() == "/+8="


# ---- E2B's REST error shape ------------------------------------------------------------------
@pytest.mark.parametrize(("err", "status", "retry"), [
    (QuotaExceeded("over max_sandboxes", "max_sandboxes", 1), 429, "false"),
    (NoRoom("no room"), 503, "false"),
    (PolicyDenied("image", "images"), 403, None),
    (NotFound("no sandbox"), 404, None),
    (BadRequest("bad"), 400, None),
    (RuntimeError("a bug"), 500, None),
])
def test_errors_answer_e2bs_shape_with_the_status_of_their_family(err, status, retry):
    answer = api_answer(api_error(err))
    body = json.loads(bytes(answer.body))
    assert answer.status_code == status and body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert answer.headers.get("should-retry") == retry


def test_the_error_body_parses_with_the_sdks_own_model():
    models = pytest.importorskip("e2b.api.client.models")
    body = json.loads(bytes(api_answer(ApiError(404, "no sandbox 'x'")).body))
    parsed = models.Error.from_dict(body)
    assert (parsed.code, parsed.message) == (404, "no sandbox 'x'")


def test_a_missing_sandbox_is_the_sdks_not_running_error():
    api = pytest.importorskip("e2b.envd.api")
    from e2b.exceptions import SandboxNotRunningException

    answer = api_answer(sandbox_missing("sbx-1"))
    assert answer.status_code == 502
    message = json.loads(bytes(answer.body))["message"]
    assert isinstance(api.format_envd_api_exception(502, message), SandboxNotRunningException)


# ---- access tokens ---------------------------------------------------------------------------
def test_an_access_token_stands_for_its_key_in_its_sandbox_only(tmp_path):
    keys = KeyStore(tmp_path / "ledger.db", tmp_path)
    try:
        info, _ = keys.create("acme", frozenset({Scope.SANDBOX}), created_by="test")
        token = access_token(keys, "sbx-1", info.id)
        who = token_principal(keys, token, "sbx-1")
        assert who is not None and (who.key_id, who.tenant) == (info.id, "acme")
        assert token_principal(keys, token, "sbx-2") is None
        assert token_principal(keys, token[:-1] + ("A" if token[-1] != "A" else "B"),
                               "sbx-1") is None
        keys.revoke(info.id, by="test")
        assert token_principal(keys, token, "sbx-1") is None
    finally:
        keys.close()
