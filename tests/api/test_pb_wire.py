"""Riak's PB wire format as dynastore reads and writes it: the framing (partial frames, several in one
read, oversize and empty frames), the message codes and field numbers of riak_pb (facts clients rely
on, checked against bytes written by hand), the .proto reader's refusals, and the translation of
data-type operations into the JSON operations the HTTP API takes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynastore.api.pb import framing, schema
from dynastore.api.pb.dtops import dt_op
from dynastore.api.pb.listener import PbError
from dynastore.api.pb.server import _quorum
from dynastore.core import crdt


def test_a_frame_is_length_code_body_and_arrives_whole_however_it_is_split() -> None:
    """Fed one byte at a time, a frame comes out once, when its last byte arrives."""
    wire = framing.encode(9, b"abc") + framing.encode(1)
    assert wire == b"\x00\x00\x00\x04\x09abc" + b"\x00\x00\x00\x01\x01"
    decoder = framing.Decoder(1024)
    frames: list[framing.Frame] = []
    for i in range(len(wire)):
        got = decoder.feed(wire[i : i + 1])
        frames += got
        if i == 7:
            assert got == [framing.Frame(9, b"abc")]
    assert frames == [framing.Frame(9, b"abc"), framing.Frame(1, b"")]
    assert decoder.buffered_bytes == 0


def test_several_frames_in_one_read_come_out_in_order_and_a_partial_tail_waits() -> None:
    decoder = framing.Decoder(1024)
    wire = framing.encode(1) + framing.encode(7) + framing.encode(9, b"xyz")
    assert decoder.feed(wire[:-2]) == [framing.Frame(1, b""), framing.Frame(7, b"")]
    assert decoder.buffered_bytes == 6
    assert decoder.feed(wire[-2:]) == [framing.Frame(9, b"xyz")]


def test_a_frame_over_the_limit_is_refused_from_its_length_before_its_body_arrives() -> None:
    decoder = framing.Decoder(100)
    assert decoder.feed(framing.encode(9, b"x" * 99)) == [framing.Frame(9, b"x" * 99)]
    with pytest.raises(framing.FrameError, match="101 bytes exceeds the limit of 100 bytes"):
        decoder.feed(b"\x00\x00\x00\x65")


def test_a_frame_of_length_zero_is_refused() -> None:
    with pytest.raises(framing.FrameError, match="length 0"):
        framing.Decoder(100).feed(b"\x00\x00\x00\x00")


def test_a_code_that_is_not_a_byte_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        framing.encode(256)


# (message, field, number) from riak_pb's riak.proto, riak_kv.proto and riak_dt.proto.
FIELD_FACTS = [
    ("RpbErrorResp", "errmsg", 1),
    ("RpbErrorResp", "errcode", 2),
    ("RpbGetReq", "r", 3),
    ("RpbGetReq", "if_modified", 7),
    ("RpbGetReq", "head", 8),
    ("RpbGetReq", "deletedvclock", 9),
    ("RpbGetReq", "type", 13),
    ("RpbPutReq", "vclock", 3),
    ("RpbPutReq", "content", 4),
    ("RpbPutReq", "return_body", 7),
    ("RpbPutReq", "if_not_modified", 9),
    ("RpbPutReq", "if_none_match", 10),
    ("RpbPutReq", "return_head", 11),
    ("RpbPutReq", "type", 16),
    ("RpbDelReq", "rw", 3),
    ("RpbDelReq", "vclock", 4),
    ("RpbDelReq", "type", 13),
    ("RpbContent", "vtag", 5),
    ("RpbContent", "links", 6),
    ("RpbContent", "last_mod_usecs", 8),
    ("RpbContent", "usermeta", 9),
    ("RpbContent", "indexes", 10),
    ("RpbContent", "deleted", 11),
    ("RpbBucketProps", "allow_mult", 2),
    ("RpbBucketProps", "rw", 19),
    ("RpbBucketProps", "datatype", 26),
    ("RpbBucketProps", "hll_precision", 29),
    ("RpbListKeysResp", "done", 2),
    ("RpbCounterUpdateReq", "amount", 3),
    ("RpbCounterUpdateReq", "returnvalue", 7),
    ("DtFetchReq", "include_context", 11),
    ("DtFetchResp", "value", 3),
    ("DtValue", "hll_value", 4),
    ("MapEntry", "map_value", 6),
    ("MapUpdate", "flag_op", 5),
    ("DtOp", "hll_op", 4),
    ("DtUpdateReq", "op", 5),
    ("DtUpdateReq", "include_context", 13),
    ("DtUpdateResp", "hll_value", 6),
    ("RpbIndexReq", "bucket", 1),
    ("RpbIndexReq", "index", 2),
    ("RpbIndexReq", "qtype", 3),
    ("RpbIndexReq", "key", 4),
    ("RpbIndexReq", "range_min", 5),
    ("RpbIndexReq", "range_max", 6),
    ("RpbIndexReq", "return_terms", 7),
    ("RpbIndexReq", "stream", 8),
    ("RpbIndexReq", "max_results", 9),
    ("RpbIndexReq", "continuation", 10),
    ("RpbIndexReq", "timeout", 11),
    ("RpbIndexReq", "type", 12),
    ("RpbIndexReq", "term_regex", 13),
    ("RpbIndexReq", "pagination_sort", 14),
    ("RpbIndexReq", "cover_context", 15),
    ("RpbIndexReq", "return_body", 16),
    ("RpbIndexResp", "keys", 1),
    ("RpbIndexResp", "results", 2),
    ("RpbIndexResp", "continuation", 3),
    ("RpbIndexResp", "done", 4),
    ("RpbLink", "bucket", 1),
    ("RpbLink", "key", 2),
    ("RpbLink", "tag", 3),
    ("RpbPair", "key", 1),
    ("RpbPair", "value", 2),
    ("RpbAuthReq", "password", 2),
]


@pytest.mark.parametrize(("message", "name", "number"), FIELD_FACTS)
def test_field_numbers_are_riak_pbs(message: str, name: str, number: int) -> None:
    assert schema.message(message).DESCRIPTOR.fields_by_name[name].number == number


def test_message_codes_are_riak_pbs() -> None:
    facts = {
        "RpbErrorResp": 0,
        "RpbPingReq": 1,
        "RpbGetServerInfoReq": 7,
        "RpbGetReq": 9,
        "RpbPutReq": 11,
        "RpbDelReq": 13,
        "RpbListBucketsReq": 15,
        "RpbListKeysReq": 17,
        "RpbGetBucketReq": 19,
        "RpbSetBucketReq": 21,
        "RpbIndexReq": 25,
        "RpbIndexResp": 26,
        "RpbResetBucketReq": 29,
        "RpbGetBucketTypeReq": 31,
        "RpbSetBucketTypeReq": 32,
        "RpbCounterUpdateReq": 50,
        "RpbCounterGetReq": 52,
        "DtFetchReq": 80,
        "DtUpdateReq": 82,
        "RpbAuthReq": 253,
        "RpbStartTls": 255,
    }
    assert {name: schema.CODES[name] for name in facts} == facts


def test_bodies_encode_as_a_riak_client_writes_them() -> None:
    """Bytes written by hand from riak_kv.proto: bucket (1, bytes), key (2, bytes), r (3, varint) with
    Riak's code for "quorum" (UINT_MAX - 2); sint64 zigzag for a counter's amount."""
    get = schema.message("RpbGetReq")(bucket=b"b", key=b"k", r=0xFFFFFFFD)
    assert get.SerializeToString() == b"\x0a\x01b\x12\x01k\x18\xfd\xff\xff\xff\x0f"
    counter = schema.message("RpbCounterUpdateReq")(bucket=b"b", key=b"k", amount=-3)
    assert counter.SerializeToString() == b"\x0a\x01b\x12\x01k\x18\x05"
    assert schema.message("DtFetchReq")(bucket=b"b", key=b"k", type=b"t").include_context is True


def test_index_queries_and_tagged_content_encode_as_a_riak_client_writes_them() -> None:
    """Bytes written by hand from riak_kv.proto: RpbIndexReq's qtype is an enum with eq = 0 and
    range = 1; an RpbContent's links (6) and indexes (10) are embedded RpbLink and RpbPair messages."""
    request = schema.message("RpbIndexReq")
    ranged = request(bucket=b"b", index=b"x_int", qtype=request.range, range_min=b"1", range_max=b"9", stream=True)
    assert ranged.SerializeToString() == b"\x0a\x01b\x12\x05x_int\x18\x01\x2a\x011\x32\x019\x40\x01"
    assert request.eq == 0
    content = schema.message("RpbContent")(value=b"")
    content.links.add(bucket=b"b", key=b"k", tag=b"t")
    content.indexes.add(key=b"f_bin", value=b"v")
    assert content.SerializeToString() == b"\x0a\x00\x32\x09\x0a\x01b\x12\x01k\x1a\x01t\x52\x0a\x0a\x05f_bin\x12\x01v"
    answer = schema.message("RpbIndexResp")()
    answer.results.add(key=b"7", value=b"k")
    answer.continuation = b"c"
    answer.done = True
    assert answer.SerializeToString() == b"\x12\x06\x0a\x017\x12\x01k\x1a\x01c\x20\x01"


def test_the_proto_reader_refuses_what_it_does_not_understand() -> None:
    with pytest.raises(schema.SchemaError, match="only proto2"):
        schema.parse('syntax = "proto3";')
    with pytest.raises(schema.SchemaError, match="unknown type 'Nowhere'"):
        schema.parse("package p; message A { optional Nowhere x = 1; }")
    with pytest.raises(schema.SchemaError, match=":2: unexpected 'oneof'"):
        schema.parse("package p; message A {\n oneof x { } }")


def test_quorums_take_riaks_symbolic_codes_and_refuse_nonsense() -> None:
    get = schema.message("RpbGetReq")
    assert _quorum(get(bucket=b"b", key=b"k"), "r") is None
    assert _quorum(get(bucket=b"b", key=b"k", r=0xFFFFFFFE), "r") == "one"
    assert _quorum(get(bucket=b"b", key=b"k", r=0xFFFFFFFB), "r") == "default"
    assert _quorum(get(bucket=b"b", key=b"k", r=2), "r") == 2
    with pytest.raises(PbError, match="r must be"):
        _quorum(get(bucket=b"b", key=b"k", r=0xFFFFFFF0), "r")


def _op(**fields: Any) -> Any:
    return schema.message("DtOp")(**fields)


def test_data_type_operations_become_the_json_operations_the_http_api_takes() -> None:
    """Every translation is accepted by crdt.parse_op, the check both APIs share."""
    cases = [
        ("counter", _op(counter_op={}), {"increment": 1}),
        ("counter", _op(counter_op={"increment": -4}), {"increment": -4}),
        ("set", _op(set_op={"adds": [b"a", b"b"], "removes": [b"c"]}), {"add_all": ["a", "b"], "remove_all": ["c"]}),
        ("hll", _op(hll_op={"adds": [b"x"]}), {"add_all": ["x"]}),
        (
            "map",
            _op(
                map_op={
                    "updates": [
                        {"field": {"name": b"n", "type": 1}, "counter_op": {"increment": 2}},
                        {"field": {"name": b"r", "type": 3}, "register_op": b"v"},
                        {"field": {"name": b"f", "type": 4}, "flag_op": 1},
                        {"field": {"name": b"m", "type": 5}, "map_op": {"removes": [{"name": b"x", "type": 2}]}},
                        {"field": {"name": b"e", "type": 2}},
                    ],
                    "removes": [{"name": b"old", "type": 3}],
                }
            ),
            {
                "update": {
                    "n_counter": {"increment": 2},
                    "r_register": {"assign": "v"},
                    "f_flag": "enable",
                    "m_map": {"remove": ["x_set"]},
                },
                "add": ["e_set"],
                "remove": ["old_register"],
            },
        ),
    ]
    for datatype, op, expected in cases:
        assert dt_op(op, datatype) == expected
        crdt.parse_op(datatype, expected)


def test_an_operation_of_another_type_or_of_nothing_is_refused() -> None:
    with pytest.raises(PbError, match="holds sets: DtOp must carry set_op alone"):
        dt_op(_op(counter_op={}), "set")
    with pytest.raises(PbError, match="no operation"):
        dt_op(_op(), "counter")
    with pytest.raises(PbError, match="takes a counter_op"):
        dt_op(_op(map_op={"updates": [{"field": {"name": b"n", "type": 1}, "set_op": {"adds": [b"a"]}}]}), "map")
    with pytest.raises(PbError, match="UTF-8"):
        dt_op(_op(set_op={"adds": [b"\xff"]}), "set")
    with pytest.raises(PbError, match="at least one"):
        dt_op(_op(set_op={}), "set")


@given(
    bodies=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=8),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
)
def test_however_a_stream_of_frames_is_cut_the_same_frames_come_out(
    bodies: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """The decoder's output depends on the bytes only, never on where the reads split them."""
    wire = b"".join(framing.encode(code, body) for code, body in bodies)
    decoder = framing.Decoder(1024)
    frames: list[framing.Frame] = []
    start = 0
    for cut in [*sorted({min(c, len(wire)) for c in cuts}), len(wire)]:
        frames += decoder.feed(wire[start:cut])
        start = cut
    assert frames == [framing.Frame(code, body) for code, body in bodies]
    assert decoder.buffered_bytes == 0
