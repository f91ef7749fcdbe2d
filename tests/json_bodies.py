"""JSON object bodies as text, written every way JSON allows (escapes, number forms, repeated
keys, whitespace, sometimes one damaged byte): the cache key's canonical JSON is tested on them
(tests/test_kernel_canonjson.py, tests/test_cache_parts.py)."""
from __future__ import annotations

import json

from hypothesis import strategies as st

from tollway.core.cache.key import EXCLUDED

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
