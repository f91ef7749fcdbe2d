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
from tests.json_bodies import bodies, number_texts
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
