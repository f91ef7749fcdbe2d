"""JSON nesting-depth guard, against the pure twin and the compiled kernel."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.jsonscan as pure_jsonscan
from tests.kernels_fixture import compiled_or_skip


@pytest.mark.parametrize(
    ("body", "limit", "exceeded"),
    [
        (b"{}", 1, False),
        (b"{}", 0, True),
        (b'{"a": [1, {"b": [2]}]}', 4, False),
        (b'{"a": [1, {"b": [2]}]}', 3, True),
        (b"[" * 65 + b"]" * 65, 64, True),
        (b"[" * 64 + b"]" * 64, 64, False),
        (b'{"s": "[[[[[[{{{{{"}', 1, False),  # brackets inside strings do not count
        (b'{"s": "\\"[[[[[["}', 1, False),  # an escaped quote does not end the string
        (b'{"s": "\\\\", "t": [[[', 3, True),  # an escaped backslash does: the brackets after count
        (b'["[[[[', 1, False),  # an unterminated string runs to the end
        (b"[][][][][][]", 1, False),  # siblings are not nesting
        (b"]]]][[[[", 3, False),  # malformed: closers go below zero; the decoder rejects it
        (b"", 0, False),
    ],
)
def test_depth(jsonscan_impl, body, limit, exceeded):
    assert jsonscan_impl.max_depth_exceeded(body, limit) is exceeded


def nested(depth: int):
    value: object = "leaf [{"
    for i in range(depth):
        value = [value] if i % 2 else {"k[": value}
    return value


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(0, 80), limit=st.integers(0, 80), ascii_only=st.booleans())
def test_matches_real_nesting_depth(jsonscan_impl, depth, limit, ascii_only):
    body = json.dumps(nested(depth), ensure_ascii=ascii_only).encode()
    assert jsonscan_impl.max_depth_exceeded(body, limit) is (depth > limit)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n\u00e9'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a'), inner, max_size=3),
    max_leaves=30,
)


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(0, 12))
def test_random_json_documents(jsonscan_impl, value, limit):
    body = json.dumps(value).encode()
    assert jsonscan_impl.max_depth_exceeded(body, limit) is (depth_of(value) > limit)


garbage = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b" ", b"\xff"]), max_size=60).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(garbage, st.binary(max_size=100)), limit=st.integers(-2, 10))
def test_compiled_agrees_with_pure_on_any_bytes(body, limit):
    compiled = compiled_or_skip("jsonscan")
    assert compiled.max_depth_exceeded(body, limit) is pure_jsonscan.max_depth_exceeded(body, limit)


def test_accepts_bytes_like_and_rejects_text(jsonscan_impl):
    assert jsonscan_impl.max_depth_exceeded(bytearray(b"[[[]]]"), 2) is True
    with pytest.raises(TypeError):
        jsonscan_impl.max_depth_exceeded("[[[]]]", 2)


# --- first_duplicate_key: a field the gateway reads, repeated at the top level ---------------

FIELDS = (b"model", b"stream", b"max_tokens", b"n")


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b'{"model":"a","model":"b"}', 0),
        (b'{"model":"a","mod\\u0065l":"b"}', 0),  # an escaped key is the same key
        (b'{"model":"a","\\u006D\\u006F\\u0064\\u0065\\u006C":"b"}', 0),  # upper-case hex too
        (b'{"n" : 1, "stream": true, "n"\n:\t2}', 3),  # whitespace around the colon
        (b'{"stream":true,"model":"a","stream":false,"model":"b"}', 1),  # the first repeat in body order
        (b'{"model":"a","x":{"model":"b"}}', -1),  # a nested object's keys are not top-level
        (b'{"model":"a","messages":[{"model":"b"}]}', -1),
        (b'{"model":"a","s":"\\"model\\": \\"b\\""}', -1),  # '"model":' inside a string
        (b'{"model":"model","role":"model"}', -1),  # "model" as a value, not a key
        (b'{"a\\\\":1,"model":"x","model":2}', 0),  # an escaped backslash does not hide what follows
        (b'{"model":"a","mod\\u00e9l":"b","mod\\nel":"c"}', -1),  # other escapes spell no name
        (b'{"model":"a","mod\\u0065":"b"}', -1),  # a prefix is not the name
        (b'{"model":"a","model\\u0000":"b"}', -1),
        (b'{"x":1,"x":2}', -1),  # a repeat of a field the caller did not name
        (b'{"model":"a"', -1),
        (b"", -1),
    ],
)
def test_first_duplicate_key(jsonscan_impl, body, found):
    assert jsonscan_impl.first_duplicate_key(body, FIELDS) == found


def test_first_duplicate_key_checks_its_names(jsonscan_impl):
    for names in (("model",), [b"model"], None):
        with pytest.raises(TypeError):
            jsonscan_impl.first_duplicate_key(b"{}", names)
    with pytest.raises(ValueError):
        jsonscan_impl.first_duplicate_key(b"{}", tuple(b"k%d" % i for i in range(65)))
    with pytest.raises(TypeError):
        jsonscan_impl.first_duplicate_key('{"n":1,"n":2}', (b"n",))
    assert jsonscan_impl.first_duplicate_key(bytearray(b'{"n":1,"n":2}'), (b"n",)) == 0


def escaped(key: str, draw_bits: list[bool]) -> str:
    """`key` as a JSON string, some of its ASCII letters written as \\u00XX."""
    out = []
    for i, ch in enumerate(key):
        if ch.isascii() and ch.isalpha() and draw_bits[i % len(draw_bits)]:
            out.append("\\u%04x" % ord(ch) if i % 2 else "\\u%04X" % ord(ch))
        else:
            out.append(json.dumps(ch)[1:-1])
    return '"' + "".join(out) + '"'


top_keys = st.sampled_from(["model", "stream", "max_tokens", "n", "messages", "Model", "mod\u00e9l", "x"])


@st.composite
def top_level_objects(draw) -> tuple[bytes, list[str]]:
    """A JSON object with possibly repeated keys, some escaped, and its top-level key order."""
    keys = draw(st.lists(top_keys, max_size=6))
    bits = draw(st.lists(st.booleans(), min_size=1, max_size=4))
    values = [json.dumps(draw(json_values), ensure_ascii=draw(st.booleans())) for _ in keys]
    members = ", ".join(f"{escaped(k, bits)} :{v}" for k, v in zip(keys, values))
    return ("{" + members + "}").encode(), keys


def first_repeat(keys: list[str], names: tuple[bytes, ...]) -> int:
    seen: set[str] = set()
    for key in keys:
        if key.encode() in names and key in seen:
            return names.index(key.encode())
        seen.add(key)
    return -1


@settings(max_examples=400, deadline=None)
@given(doc=top_level_objects())
def test_finds_what_a_json_parser_sees(jsonscan_impl, doc):
    body, keys = doc
    pairs: list[list[tuple[str, object]]] = []
    json.loads(body, object_pairs_hook=lambda p: pairs.append(p) or dict(p))
    assert [k for k, _ in pairs[-1]] == keys  # the oracle: Python's parser, escapes decoded
    assert jsonscan_impl.first_duplicate_key(body, FIELDS) == first_repeat(keys, FIELDS)


key_garbage = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"\\u00", b"6", b"e", b"n", b":", b" ",
                                        b",", b"\xff"]), max_size=60).map(b"".join)
garbage_names = st.lists(st.sampled_from([b"", b"n", b"e", b"ne", b"nn"]), max_size=4).map(tuple)


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(key_garbage, st.binary(max_size=100)), names=garbage_names)
def test_compiled_finds_the_same_keys_as_pure_on_any_bytes(body, names):
    compiled = compiled_or_skip("jsonscan")
    assert compiled.first_duplicate_key(body, names) == pure_jsonscan.first_duplicate_key(body, names)


@settings(max_examples=500, deadline=None)
@given(body=st.one_of(key_garbage, top_level_objects().map(lambda d: d[0])), names=garbage_names)
def test_pure_pre_check_never_hides_a_repeat(body, names):
    """The twin's cheap count pre-check may change its speed, never its answer."""
    assert pure_jsonscan.first_duplicate_key(body, names) == pure_jsonscan._first_repeat(body, names)


# -- first_needle: the stream relay's per-chunk search for known secrets and error marks ----------

@pytest.mark.parametrize(
    ("data", "needles", "found"),
    [
        (b"data: {\"a\": 1}\n\n", (b'"error"', b"sk-secret-1"), -1),
        (b'data: {"error": {"message": "x"}}\n\n', (b'"error"', b"sk-secret-1"), 0),
        (b"the key is sk-secret-1 ok", (b'"error"', b"sk-secret-1"), 1),
        (b"sk-secret-1 and \"error\"", (b'"error"', b"sk-secret-1"), 0),  # the first needle that is found
        (b"", (b"x",), -1),
        (b"abc", (), -1),
        (b"abc", (b"",), 0),  # the empty needle is in everything, as with `in`
        (b"ab", (b"abc",), -1),  # a needle longer than the data
    ],
)
def test_first_needle(jsonscan_impl, data, needles, found):
    assert jsonscan_impl.first_needle(data, needles) == found


def test_first_needle_refuses_a_needle_that_is_not_bytes(jsonscan_impl):
    with pytest.raises(TypeError):
        jsonscan_impl.first_needle(b"abc", ("abc",))


@given(st.binary(max_size=300), st.lists(st.binary(min_size=1, max_size=6), max_size=5))
@settings(max_examples=400, deadline=None)
def test_first_needle_compiled_matches_the_twin(data, needles):
    compiled = compiled_or_skip("jsonscan")
    haystack = data + (needles[-1] if needles and data[:1] == b"\x00" else b"")  # sometimes plant one
    assert compiled.first_needle(haystack, tuple(needles)) == pure_jsonscan.first_needle(haystack, tuple(needles))
