"""JSON nesting-depth guard, against the pure twin and the compiled kernel."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core.jsonscan as pure_jsonscan
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
