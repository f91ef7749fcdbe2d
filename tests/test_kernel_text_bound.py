"""`text_bound`: a bound, without decoding, of the text `chunk_texts` reads in a stream chunk
(tollway.gateway.limits.stream_stop lets a chunk pass uncounted while it fits), against the
pure twin and the compiled kernel."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.sse as pure_sse
from tests.kernels_fixture import compiled_or_skip
from tollway.core.accounting.stream_text import chunk_texts


def _utf8(chunk: bytes) -> int:
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in chunk_texts(chunk))


def _event(payload: object, ensure_ascii: bool = False) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=ensure_ascii).encode() + b"\n\n"


_CHAT = _event({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [
    {"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}]})


@pytest.mark.parametrize(("chunk", "bound"), [
    (_CHAT, 5),  # only the text: ids, model, keys are not counted
    (_CHAT * 3, 15),
    (_event({"choices": [{"delta": {"content": 'a "q" \\ é'}}]}), len('a \\"q\\" \\\\ é'.encode())),  # raw: escapes and all
    (_event({"choices": [{"delta": {"content": "你好"}}]}, ensure_ascii=True), 12),  # escaped: 6 bytes each, >= 3
    (_event({"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}}]}), 9),
    (b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}\n\n',
     2),  # "delta" holds an object here: only its "text" is a string
    (b'data: {"type":"response.output_text.delta","delta":"abc"}\n\n', 3),
    (b'data: {"type":"response.output_text.done","text":"abc"}\n\n', 3),  # a text key at any place: a superset
    (b'data: {"cont\\u0065nt" : "xyz"}\n\n', 3),  # a key with an escape could spell a text key
    (b"data: [DONE]\n\n", 0),
    (b": ping\n\n", 0),
    (b'data: {"content":"unterminated\n\n', len("unterminated")),  # not JSON: no text, any bound will do
    (b'x"data: {"text":"t"}\n', 1),  # a line is read from its first "data:", as chunk_texts reads it
    (b"", 0),
])
def test_bound_of_known_chunks(sse_impl, chunk: bytes, bound: int) -> None:
    assert sse_impl.text_bound(chunk) == bound
    assert bound >= _utf8(chunk)


def test_every_text_key_is_counted(sse_impl) -> None:
    """The compiled kernel spells the keys out; the twin's TEXT_KEYS is the list."""
    for key in pure_sse.TEXT_KEYS:
        assert sse_impl.text_bound(b'data: {"' + key + b'":"abcd"}\n') == 4, key
    assert sse_impl.text_bound(b'data: {"contents":"abcd","Content":"x","id":"y"}\n') == 0


_TEXT = st.text(alphabet=st.sampled_from('ab \\"é你🌍\n:{}\t'), max_size=8)
_KEYS = st.sampled_from(["content", "text", "delta", "arguments", "thinking", "refusal", "partial_json",
                         "reasoning_content", "reasoning", "id", "choices", "x"])
_JSON = st.recursive(st.none() | st.integers() | _TEXT,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
                     max_leaves=12)


@st.composite
def _chunks(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        doc = json.dumps(draw(st.dictionaries(_KEYS, _JSON, min_size=1, max_size=3)),
                         ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
        if draw(st.booleans()):
            doc = doc.replace('"content"', '"cont\\u0065nt"')
        if draw(st.integers(0, 9)) == 0:
            doc = doc[:draw(st.integers(0, len(doc)))]
        lines.append(draw(st.sampled_from(["data: ", "data:", "event: x\ndata: ", 'x"data: '])) + doc
                     + draw(st.sampled_from(["\n\n", "\r\n\r\n", "\n", ""])))
    return "".join(lines).encode()


@settings(max_examples=400, deadline=None)
@given(_chunks())
def test_bound_is_never_below_the_text(chunk: bytes) -> None:
    compiled = compiled_or_skip("sse")
    bound = pure_sse.text_bound(chunk)
    assert bound >= _utf8(chunk)
    assert compiled.text_bound(chunk) == bound


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"data:", b'"', b"\\", b":", b" ", b"\r", b"\n", b"content", b"{", b'"text"',
                                 b'"delta":', b"\t", b"a"]), max_size=24))
def test_twins_agree_on_garbage(atoms: list[bytes]) -> None:
    chunk = b"".join(atoms)
    assert compiled_or_skip("sse").text_bound(chunk) == pure_sse.text_bound(chunk)
