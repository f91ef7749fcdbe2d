"""The cache key's canonical JSON, against the pure twin, the compiled kernel and the msgspec
path the cache key was built on (decode, drop the excluded names, encode sorted): the keys of
entries already stored depend on every byte of it."""
from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tollway.ext.canonjson as pure_canonjson
from tests.kernels_fixture import compiled_or_skip

EXCLUDED = frozenset(("stream", "stream_options", "user", "metadata", "request_id", "safety_identifier"))
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


def reference(body: bytes, excluded: frozenset[str]) -> bytes | None:
    """The key material as the cache computed it before the kernel (core/cache/key.py then)."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for name in excluded:
        data.pop(name, None)
    return _encode_sorted(data)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.7}',
        b' {\n\t"b" : [ 1 , 2.5 , { "z" : null , "a" : true } ] , "a" : -0 }\r\n',  # whitespace, nesting, -0
        b'{"s":"\\u00e9\\u00E9 \\ud83d\\ude00 \\/ \\" \\\\ \\b\\f\\n\\r\\t \\u0001 \\u001F \\u007f \\u2028"}',
        '{"s":"é 😀 \u2028 \x7f"}'.encode(),  # raw UTF-8 stays raw
        b'{"\\u00e9":1,"z":2,"\xc3\xa9x":3,"":4,"Z":5}',  # keys sorted by code point, escapes decoded first
        b'{"a\\"b":1,"a":2,"a\\\\":3,"a\\n":4}',  # keys whose canonical text differs from their value
        b'{"n":[0,-1,123456789012345678,1234567890123456789,1.0,-0.0,0.0,0.5,0.50,1e5,1E-7,0.00001,0.000001]}',
        b'{"n":[1000000000000000.0,10000000000000000.0,123456789012345.6,0.1234567890123456,1.5e300]}',
        b'{"stream":true,"user":"u","x":{"stream":true,"user":"nested ones stay"},"metadata":{"a":1}}',
        b'{"a":1,"a":2}',  # repeated key: the last one (msgspec's rule)
        b'{"stream":1,"stream":2,"b":1}',  # repeated excluded key
        b"{}",
        b'{"a":{},"b":[],"c":[[]],"d":[{}]}',
    ],
)
def test_canonical_json_is_msgspecs(canonjson_impl, body):
    out = canonjson_impl.canonical_object(body, EXCLUDED)
    assert out is not None and out[0] == reference(body, EXCLUDED)


@pytest.mark.parametrize(
    "body",
    [b"[1,2]", b'"s"', b"1", b"null", b"", b"{", b'{"a":1,}', b'{"a":1} x', b'{"a":01}', b'{"a":"\x01"}',
     b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\\ud800"}', b'{"a":"\\udc00"}', b'{"a":1e400}', b'{"a":.5}',
     b'{"a":tru}', b'{"a" 1}', b'{a:1}', b'{"a":"\\x"}', b"\x0c{}"],
)
def test_what_is_not_a_json_object_is_none(canonjson_impl, body):
    assert canonjson_impl.canonical_object(body, EXCLUDED) is None and reference(body, EXCLUDED) is None


@pytest.mark.parametrize(
    ("members", "zero", "seeded"),
    [
        ('"temperature":0', True, False),
        ('"temperature":0.0', True, False),
        ('"temperature":-0.0', True, False),
        ('"temperature":-0', True, False),
        ('"temperature":0e3', True, False),  # (declined by the kernel: the twin answers the same)
        ('"temperature":0.2', False, False),
        ('"temperature":false', False, False),  # a bool is not a temperature
        ('"temperature":"0"', False, False),
        ('"temperature":null,"seed":null', False, False),
        ('"seed":0', False, True),
        ('"x":{"temperature":0,"seed":1}', False, False),  # only the top level counts
        ('"temperature":1,"temperature":0', True, False),  # the last of a repeated key, as msgspec
    ],
)
def test_sampling_fields(canonjson_impl, members, zero, seeded):
    out = canonjson_impl.canonical_object(("{" + members + "}").encode(), EXCLUDED)
    assert out is not None and out[1:] == (zero, seeded)


def test_excluded_names_are_the_callers(canonjson_impl):
    body = b'{"user":"u","metadata":{"k":"v"},"stream":true,"model":"m"}'
    assert canonjson_impl.canonical_object(body, frozenset(("stream",)))[0] == b'{"metadata":{"k":"v"},"model":"m","user":"u"}'
    assert canonjson_impl.canonical_object(body, frozenset())[0] == reference(body, frozenset())


def test_a_body_that_is_not_bytes_gets_the_same_answer(canonjson_impl):
    assert canonjson_impl.canonical_object(bytearray(b'{"b":1,"a":2}'), EXCLUDED)[0] == b'{"a":2,"b":1}'


# --- the compiled kernel's own path, and what it hands to the twin ------------------------

CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": "Be terse.\n\"ok\""},
                   {"role": "user", "content": "Qu'est-ce que c'est ? caf\u00e9 \U0001f600 " * 20}],
                   "temperature": 0.2, "top_p": 1.0, "max_tokens": 256, "seed": 7, "stream": True,
                   "stream_options": {"include_usage": True}, "user": "u-1",
                   "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                              "properties": {"x": {"type": "integer", "minimum": -10}}}}}]}).encode()


@pytest.fixture
def twin_calls(monkeypatch):
    """The compiled kernel, with its hand-offs to the twin recorded."""
    compiled = compiled_or_skip("canonjson")
    calls: list[bytes] = []

    def twin(body: bytes, excluded: frozenset[str]) -> Any:
        calls.append(body)
        return pure_canonjson.canonical_object(body, excluded)
    monkeypatch.setattr(compiled, "_twin_canonical", twin)
    return compiled, calls


@pytest.mark.parametrize("ascii_only", [True, False])
def test_the_kernel_canonicalises_chat_bodies_itself(twin_calls, ascii_only):
    compiled, calls = twin_calls
    body = json.dumps(json.loads(CHAT), ensure_ascii=ascii_only, indent=1 if ascii_only else None).encode()
    assert compiled.canonical_object(body, EXCLUDED) == (reference(body, EXCLUDED), False, True)
    assert calls == []


@pytest.mark.parametrize(
    "body",
    [b'{"a":1,"a":2}', b'{"a":{"b":1,"b":1}}', b'{"a":1e5}', b'{"a":0.50}', b'{"a":0.000001}',
     b'{"a":12345678901234567890}', b'{"a":0.1234567890123456}', b'{"a":12345678901234567.0}', b"[]",
     b'{"a":' + b"[" * 200 + b"]" * 200 + b"}", b'{"a":"\\ud800"}', b"{} x"],
)
def test_the_kernel_hands_the_twin_what_it_cannot_be_sure_of(twin_calls, body):
    compiled, calls = twin_calls
    out = compiled.canonical_object(body, EXCLUDED)
    assert calls == [body] and (out is None or out[0] == reference(body, EXCLUDED))


# --- differential: any JSON text, written every way JSON allows -----------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "/": "\\/"}


def _escaped(ch: str, how: int) -> str:
    """`ch` in a JSON string: raw where allowed (how 0), its short escape (1), or \\uXXXX (2, 3)."""
    if how == 1 and ch in _SHORT:
        return _SHORT[ch]
    if how >= 2 or ord(ch) < 0x20 or ch in '"\\':
        if ord(ch) > 0xFFFF:
            high, low = divmod(ord(ch) - 0x10000, 0x400)
            units = [0xD800 + high, 0xDC00 + low]
        else:
            units = [ord(ch)]
        return "".join(("\\u%04x" if how != 3 else "\\u%04X") % u for u in units)
    return ch


@st.composite
def json_strings(draw, alphabet: st.SearchStrategy[str] | None = None) -> str:
    text = draw(st.text(alphabet=alphabet, max_size=12) if alphabet is not None else st.text(max_size=12))
    hows = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))
    return '"' + "".join(_escaped(ch, hows[i % len(hows)]) for i, ch in enumerate(text)) + '"'


finite = st.floats(allow_nan=False, allow_infinity=False)
number_texts = st.one_of(
    st.integers(-1000, 10**6).map(str),  # the forms bodies hold, which the kernel copies itself
    st.floats(-1e6, 1e6).map(lambda x: repr(round(x, 3))),
    st.integers().map(str),
    st.integers(-10**20, 10**20).map(str),
    finite.map(repr),
    st.tuples(finite, st.integers(0, 20)).map(lambda t: f"{t[0]:.{t[1]}f}"),
    st.tuples(finite, st.integers(0, 18)).map(lambda t: f"{t[0]:.{t[1]}e}"),
    st.tuples(st.floats(1e-8, 1e18), st.integers(1, 17), st.booleans()).map(
        lambda t: ("-" if t[2] else "") + f"{t[0]:.{t[1]}g}"),
    st.tuples(st.integers(0, 10**16), st.integers(0, 17)).map(lambda t: f"{t[0] / 10**t[1]:.{t[1]}f}"),
    st.sampled_from(["0", "-0", "0.0", "-0.0", "0.00", "1.50", "1E5", "1e+2", "1e-2", "2.5E-3", "0e0", "-0e-0",
                     "1000000000000000.0", "9999999999999999.0", "0.00001", "0.000009", "123456789012345.6",
                     "0.1", "0.30000000000000004", "5e-324", "1.7976931348623157e308"]),
)
keys = st.one_of(json_strings(st.sampled_from("aAzé😀\"\\\n/ _")),
                 st.sampled_from(sorted(EXCLUDED | {"temperature", "seed", "model"})).map(json.dumps))
scalars = st.one_of(st.sampled_from(["null", "true", "false"]), number_texts, json_strings())


space = st.sampled_from(["", "", "", " ", "\n  ", "\t", "\r\n"])


def _objects(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A JSON object as text over values `inner`: keys possibly repeated, whitespace anywhere it may go."""
    members = st.lists(st.tuples(space, keys, space, space, inner, space).map(_member), max_size=5)
    return st.tuples(space, members, space).map(lambda t: t[0] + "{" + ",".join(t[1]) + "}" + t[2])


def _member(parts: tuple[str, str, str, str, str, str]) -> str:
    return parts[0] + parts[1] + parts[2] + ":" + parts[3] + parts[4] + parts[5]


def _arrays(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.tuples(space, inner, space).map("".join), max_size=4).map(lambda items: "[" + ",".join(items) + "]")


json_texts = st.recursive(scalars, lambda inner: _arrays(inner) | _objects(inner), max_leaves=16)


@st.composite
def bodies(draw) -> bytes:
    """A JSON object body, sometimes damaged by one byte."""
    body = draw(_objects(json_texts)).encode()
    if body and draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + draw(st.sampled_from([b"", b",", b"\x00", b"\xff", b'"', b"}", b"e"])) + body[at + 1:]
    return body


@settings(max_examples=600, deadline=None)
@given(body=bodies(), excluded=st.sampled_from([EXCLUDED, EXCLUDED - {"user", "metadata", "safety_identifier"},
                                                 frozenset()]))
@example(body=b'{"a":1.0,"b":0.00001,"c":1000000000000000.0}', excluded=EXCLUDED)
def test_compiled_twin_and_msgspec_agree_on_any_body(body, excluded):
    compiled = compiled_or_skip("canonjson")
    fast, pure = compiled.canonical_object(body, excluded), pure_canonjson.canonical_object(body, excluded)
    assert fast == pure
    assert (None if fast is None else fast[0]) == reference(body, excluded)


@settings(max_examples=300, deadline=None)
@given(text=number_texts)
def test_numbers_agree(text):
    compiled = compiled_or_skip("canonjson")
    body = ('{"n":' + text + ',"temperature":' + text + "}").encode()
    assert compiled.canonical_object(body, EXCLUDED) == pure_canonjson.canonical_object(body, EXCLUDED)
