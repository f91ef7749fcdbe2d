"""SSE framer and OpenAI stream relay, run against the pure twin and the compiled kernel."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tollway.ext.sse as pure_sse
from tests.kernels_fixture import compiled_or_skip
from tests.timing import cpu_best
from tollway.ext.sse import SSEError, may_carry_usage
from tollway.ext.usage import Usage


def frame(mod, chunks, max_event_bytes=1 << 20):
    framer = mod.SSEFramer(max_event_bytes)
    events = []
    for chunk in chunks:
        events += framer.feed(chunk)
    events += framer.flush()
    return [(e.raw, e.event, e.data) for e in events]


def relay(mod, chunks, drop=True, max_event_bytes=1 << 20):
    r = mod.OpenAIStreamRelay(drop, max_event_bytes)
    out = b"".join(r.feed(c) for c in chunks) + r.flush()
    return out, r


def split_at(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


RECORDED = Path(__file__).parent / "recorded"
NO_USAGE = object()  # chat_chunk(usage=NO_USAGE): a chunk without the member, as OpenAI sends it unasked


def chat_chunk(content=None, usage=None, choices=True, tool_args=None, text=None) -> bytes:
    delta = {}
    if content is not None:
        delta["content"] = content
    if tool_args is not None:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": tool_args}}]
    choice = {"index": 0, "delta": delta} if text is None else {"index": 0, "text": text}
    body = {"id": "c1", "object": "chat.completion.chunk", "choices": [choice] if choices else []}
    if usage is not NO_USAGE:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
STREAM = (
    b"".join(chat_chunk(w) for w in ["Hel", "lo", " wor", "ld"])
    + chat_chunk(usage=USAGE, choices=False)
    + b"data: [DONE]\n\n"
)


# --- framer ---------------------------------------------------------------------------------


def test_events_with_every_line_ending(sse_impl):
    stream = b"data: a\n\ndata: b\r\n\r\nevent: e\rdata: c\r\r"
    assert frame(sse_impl, [stream]) == [
        (b"data: a\n\n", None, b"a"),
        (b"data: b\r\n\r\n", None, b"b"),
        (b"event: e\rdata: c\r\r", b"e", b"c"),
    ]


def test_multiline_data_fields_and_comments(sse_impl):
    stream = b": keepalive\n\nid: 7\nretry: 10\nevent: delta\ndata: x\ndata\ndata:y\n: note\n\n"
    assert frame(sse_impl, [stream]) == [
        (b": keepalive\n\n", None, b""),
        (b"id: 7\nretry: 10\nevent: delta\ndata: x\ndata\ndata:y\n: note\n\n", b"delta", b"x\n\ny"),
    ]


def test_only_one_leading_space_is_stripped(sse_impl):
    assert frame(sse_impl, [b"data:  two\n\n"]) == [(b"data:  two\n\n", None, b" two")]


def test_feed_returns_only_complete_events(sse_impl):
    framer = sse_impl.SSEFramer()
    assert framer.feed(b"data: a\n") == []
    assert [e.data for e in framer.feed(b"\ndata: b")] == [b"a"]
    assert [(e.raw, e.data) for e in framer.flush()] == [(b"data: b", b"b")]
    assert framer.flush() == []


def test_trailing_cr_waits_for_possible_lf(sse_impl):
    framer = sse_impl.SSEFramer()
    assert framer.feed(b"data: a\r\r") == []  # the second \r may be half of \r\n
    assert [e.raw for e in framer.feed(b"\n")] == [b"data: a\r\r\n"]
    framer.feed(b"data: b\n\r")
    assert [e.raw for e in framer.flush()] == [b"data: b\n\r"]


def test_stray_blank_lines_are_kept_as_empty_events(sse_impl):
    assert frame(sse_impl, [b"\n\r\ndata: a\n\n"]) == [
        (b"\n", None, b""),
        (b"\r\n", None, b""),
        (b"data: a\n\n", None, b"a"),
    ]


def test_oversized_event_raises_even_when_incomplete(sse_impl):
    framer = sse_impl.SSEFramer(16)
    with pytest.raises(SSEError, match="SSE event larger than 16 bytes"):
        framer.feed(b"data: " + b"x" * 20)


def test_oversized_complete_event_raises(sse_impl):
    framer = sse_impl.SSEFramer(16)
    assert [e.data for e in framer.feed(b"data: 12345678\n\n")] == [b"12345678"]  # 16 bytes is allowed
    with pytest.raises(SSEError):
        framer.feed(b"data: 123456789\n\ndata: ok\n\n")


def test_event_type_is_shared_error_class(sse_impl):
    assert sse_impl.SSEError is SSEError
    assert issubclass(SSEError, ValueError)


# --- relay ----------------------------------------------------------------------------------


def test_relay_drops_usage_chunk_and_records_usage(sse_impl):
    out, r = relay(sse_impl, [STREAM], drop=True)
    # what the upstream would have sent unasked: no usage chunk, and no "usage": null anywhere
    assert out == b"".join(chat_chunk(w, usage=NO_USAGE) for w in ["Hel", "lo", " wor", "ld"]) + b"data: [DONE]\n\n"
    assert r.usage == Usage(11, 7, 18, cached_tokens=3, reasoning_tokens=2)
    assert r.done
    assert r.streamed_text() == "Hello world"


def test_relay_keeps_usage_chunk_when_asked(sse_impl):
    out, r = relay(sse_impl, [STREAM], drop=False)
    assert out == STREAM
    assert r.usage is not None and r.usage.total_tokens == 18


def test_relay_gives_the_recorded_stream_openai_sends_unasked(sse_impl):
    """A recorded-shape OpenAI stream with include_usage (compact JSON, "usage":null before
    "obfuscation") comes out byte for byte as OpenAI sends the same stream without it, in any split."""
    asked = (RECORDED / "chat_stream_include_usage.sse").read_bytes()
    unasked = (RECORDED / "chat_stream.sse").read_bytes()
    out, r = relay(sse_impl, [asked], drop=True)
    assert out == unasked
    assert r.usage == Usage(9, 4, 13) and r.done and r.streamed_text() == "Hello there!"
    assert relay(sse_impl, split_at(asked, [7, 180, 333, 334, 900, 1500]), drop=True)[0] == unasked
    assert relay(sse_impl, [asked], drop=False)[0] == asked  # asked for: every byte as it came


@pytest.mark.parametrize(("event", "expected"), [
    (b'data: {"a":1,"usage":null}\n\n', b'data: {"a":1}\n\n'),
    (b'data: {"a": 1, "usage": null, "b": 2}\n\n', b'data: {"a": 1, "b": 2}\n\n'),
    (b'data: {"usage": null, "a": 1}\r\n\r\n', b'data: {"a": 1}\r\n\r\n'),
    (b'data: {"usage" :\tnull}\n\n', b"data: {}\n\n"),
    (b'data: {"a":"}\\"","usage":null}\n\n', b'data: {"a":"}\\""}\n\n'),  # a brace and an escape in a string
    # not a top-level null usage: left as it is
    (b'data: {"choices":[{"usage":null}],"x":1}\n\n', None),
    (b'data: {"content":"\\"usage\\": null"}\n\n', None),
    (b'data: {"a":1,"usage":null}\nid: 7\n\n', None),
    (b'data: {"a":1,"usage":nul}\n\n', None),
    (b'data: {"a":1,"usage":null]\n\n', None),
    (b'data: {"a":1,"usage":null\n\n', None),
])
def test_relay_cuts_only_a_top_level_null_usage(sse_impl, event, expected):
    assert relay(sse_impl, [event], drop=True)[0] == (event if expected is None else expected)
    assert relay(sse_impl, [event], drop=False)[0] == event


def nested_null_usages(units: int, top_level: bool = False) -> bytes:
    """One event whose data nests `units` objects, each opening with a "usage": null that is not
    top-level (a hostile upstream's), with a top-level null usage at the end if `top_level`."""
    unit = b'{"usage":null,"x":'
    tail = b',"usage":null}' if top_level else b"}"
    return b'data: {"id":"c","choices":[],"a":' + unit * units + b"1" + b"}" * units + tail + b"\n\n"


def test_relay_finds_the_top_level_null_usage_among_nested_ones(sse_impl):
    assert relay(sse_impl, [nested_null_usages(50, top_level=True)])[0] == nested_null_usages(50)
    assert relay(sse_impl, [nested_null_usages(50)])[0] == nested_null_usages(50)


def test_relay_cuts_null_usage_in_linear_time(sse_impl):
    """Each nested null usage once made the relay scan to the end of the event (18.9 s for one
    540 KiB event, the worker's loop blocked meanwhile)."""
    # The compiled kernel is ~100x faster: it needs larger events for a quadratic to show.
    units = 200 if sse_impl is pure_sse else 1_500

    def cost(n: int) -> float:
        event = nested_null_usages(n, top_level=True)
        assert relay(sse_impl, [event], max_event_bytes=len(event))[0] == nested_null_usages(n)
        return cpu_best(lambda: relay(sse_impl, [event], max_event_bytes=len(event)))

    small, large = cost(units), cost(10 * units)
    # 10x the bytes: ~10x the time when linear, ~100x when quadratic (a ratio, not a wall-clock
    # bound: a slow or loaded machine scales both)
    assert large < 30 * max(small, 0.01), (small, large)


def test_relay_keeps_usage_that_rides_on_a_content_chunk(sse_impl):
    stream = chat_chunk("hi", usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    out, r = relay(sse_impl, [stream], drop=True)
    assert out == stream
    assert r.usage == Usage(1, 1, 2)


# Usage lives in an event's data: both twins read only its data lines for it (the compiled
# kernel once searched the event's raw bytes, comments and other fields included).
def test_relay_reads_usage_only_from_data_lines(sse_impl):
    # a comment or an id naming a usage does not stop the null usage being taken out
    for field in (b': {"usage": {"prompt_tokens": 1}}\n', b'id: "usage":1\n'):
        event = field + b'data: {"a": 1, "usage": null}\n\n'
        out, r = relay(sse_impl, [event], drop=True)
        assert out == field + b'data: {"a": 1}\n\n' and r.usage is None


def test_relay_reads_usage_whose_key_ends_a_data_line(sse_impl):
    # data lines are joined by a newline, JSON's whitespace: the colon may come on the next one
    usage = b'{"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}'
    event = b'data: {"choices": [], "usage"\ndata: :' + usage + b"}\n\n"
    out, r = relay(sse_impl, [event], drop=False)
    assert out == event and r.usage == Usage(1, 2, 3)
    assert relay(sse_impl, [event], drop=True)[0] == b""  # the usage-only chunk, not asked for


def test_relay_last_usage_wins(sse_impl):
    first = chat_chunk("a", usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    last = chat_chunk(usage={"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}, choices=False)
    _, r = relay(sse_impl, [first + last])
    assert r.usage == Usage(1, 5, 6)


def test_relay_without_usage_counts_text_lazily(sse_impl):
    stream = (
        chat_chunk("The ", usage=NO_USAGE)
        + chat_chunk(tool_args='{"q":', usage=NO_USAGE)
        + chat_chunk(text="legacy", usage=NO_USAGE)
        + b": comment\n\n"
        + b'data: {"error": {"message": "x"}}\n\n'
        + b"data: [DONE]\n\n"
    )
    out, r = relay(sse_impl, [stream])
    assert out == stream
    assert r.usage is None and r.done
    assert r.streamed_text() == 'The {"q":legacy'


FINISH = b'data: {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'


@pytest.mark.parametrize("stream, whole", [
    (chat_chunk("Hi") + FINISH + b"data: [DONE]\n\n", True),
    (chat_chunk("Hi") + FINISH, True),  # a server that never sends [DONE]
    (chat_chunk("Hi") + FINISH + chat_chunk(usage=USAGE, choices=False), True),
    (chat_chunk("Hi") + b"data: [DONE]\n\n", True),  # [DONE] says it, whatever came before
    (chat_chunk("Hi"), False),  # cut: no finish chunk, no [DONE]
    (chat_chunk('the member "finish_reason": "stop" spelled out in text'), False),  # escaped: not a member
    (chat_chunk("Hi") + b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": null}]}\n\n', False),
    (b"", False),
    (chat_chunk("Hi") + b'data: {"error": {"message": "overloaded"}}\n\n', True),  # the SDK raises it
    (chat_chunk('"error": spelled out in text'), False),
    # a last chunk larger than any byte window, its finish_reason before a long member
    (b'data: {"choices": [{"index": 0, "finish_reason": "tool_calls", "delta": {"tool_calls": [{"index": 0, '
     b'"function": {"arguments": "' + b"x" * 20000 + b'"}}]}}]}\n\n', True),
])
def test_relay_says_whether_the_stream_came_whole(sse_impl, stream, whole):
    _, r = relay(sse_impl, [stream], drop=False)
    assert r.finished() is whole


def test_relay_finish_is_read_from_the_stream_end_only(sse_impl):
    # A finish chunk far back (another choice's, then many events) is not looked for: the read
    # at the end covers the last few events, whatever the stream's length.
    long_tail = b"".join(chat_chunk("x" * 1000) for _ in range(20))
    _, r = relay(sse_impl, [FINISH, long_tail], drop=False)
    assert not r.finished()


def test_relay_ignores_malformed_usage_json(sse_impl):
    stream = b'data: {"usage": {"prompt_tokens": "many"}, "choices": []}\n\ndata: {"usage": {oops\n\n'
    out, r = relay(sse_impl, [stream])
    assert out == stream and r.usage is None


def test_relay_oversized_event_raises(sse_impl):
    r = sse_impl.OpenAIStreamRelay(True, 8)
    with pytest.raises(SSEError):
        r.feed(b"data: 0123456789\n\n")


def test_relay_output_lags_only_to_event_boundary(sse_impl):
    r = sse_impl.OpenAIStreamRelay(False)
    assert r.feed(b"data: {}\n\ndata: {") == b"data: {}\n\n"
    assert r.feed(b"}\n") == b""
    assert r.feed(b"\n") == b"data: {}\n\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"usage":null}', False),
        (b'{"usage" : \tnull,"choices":[]}', False),
        (b'{"content":"usage","usage":null}', False),
        (b'{"content":"\\"usage\\": {"}', False),
        (b'{"usage":{"prompt_tokens":1}}', True),
        (b'{"usage":\n{"prompt_tokens":1}}', True),
        (b'{"usage" \n:{"prompt_tokens":1}}', True),  # (the key ends a data line: the colon may follow)
        (b'{"a":1,"usage"', False),  # (a key cut off at the data's end: the decoder would refuse it)
        (b'{"usage":nul', True),
        (b'{"choices":[]}', False),
    ],
)
def test_usage_prefilter(data, expected):
    assert may_carry_usage(data) is expected


# --- properties -----------------------------------------------------------------------------

sse_bytes = st.lists(
    st.sampled_from([b"data: ", b"data:", b"event: x", b": c", b"id: 1", b"\n", b"\r", b"\r\n", b"{}", b"ab", b"[DONE]", b"\xff"]),
    max_size=40,
).map(b"".join)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


@settings(max_examples=200, deadline=None)
@given(data=sse_bytes, cut=cuts)
def test_any_split_gives_the_same_events(sse_impl, data, cut):
    assert frame(sse_impl, split_at(data, cut)) == frame(sse_impl, [data])


@settings(max_examples=200, deadline=None)
@given(data=sse_bytes, cut=cuts)
def test_events_cover_the_input_exactly(sse_impl, data, cut):
    assert b"".join(raw for raw, _, _ in frame(sse_impl, split_at(data, cut))) == data


relay_streams = st.lists(
    st.one_of(
        st.text(max_size=8).map(chat_chunk),
        st.text(max_size=8).map(lambda t: chat_chunk(t, usage=NO_USAGE)),
        st.sampled_from([b'data: {"usage": null, "a": 1}\n\n', b'data: {"x":[{"usage":null}],"usage":null}\r\n\r\n',
                         b'data: {"a":"\\"","usage" : null }\n\n', b'data: {"usage":null\n\n',
                         # "usage" outside the data, or a key its colon follows on the next data line
                         b': "usage": 1\ndata: {"a": 1, "usage": null}\n\n', b'id: "usage":{}\r\ndata: {"usage":null}\r\n\r\n',
                         b'data: {"choices": [], "usage"\ndata: :{"prompt_tokens": 1}}\n\n',
                         b'data: {"usage"\r\ndata: :null}\r\n\r\n', b'data: {"a": 1, "usage"\n\n']),
        st.just(chat_chunk(usage=USAGE, choices=False)),
        st.just(chat_chunk("x", usage=USAGE)),
        st.just(b": ping\r\n\r\n"),
        st.just(b"data: [DONE]\n\n"),
        sse_bytes,
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(stream=relay_streams, cut=cuts, drop=st.booleans())
def test_relay_any_split_gives_the_same_output(sse_impl, stream, cut, drop):
    whole, r1 = relay(sse_impl, [stream], drop)
    pieces, r2 = relay(sse_impl, split_at(stream, cut), drop)
    assert pieces == whole
    assert (r1.usage, r1.done, r1.streamed_text()) == (r2.usage, r2.done, r2.streamed_text())
    if not drop:
        assert whole == stream


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(sse_bytes, relay_streams, st.binary(max_size=200)), cut=cuts, limit=st.integers(1, 64))
def test_compiled_agrees_with_pure(data, cut, limit):
    compiled = compiled_or_skip("sse")
    chunks = split_at(data, cut)
    for run in (frame, relay):
        outcomes = []
        for mod in (pure_sse, compiled):
            try:
                result = run(mod, chunks, max_event_bytes=limit)
            except SSEError as exc:
                outcomes.append(("error", str(exc)))
            else:
                if run is relay:
                    out, r = result
                    result = (out, r.usage, r.done, r.streamed_text())
                outcomes.append(result)
        assert outcomes[0] == outcomes[1]


@settings(max_examples=300, deadline=None)
@given(stream=relay_streams, cut=cuts, drop=st.booleans())
def test_compiled_relay_agrees_with_pure(stream, cut, drop):
    # whole events (no framing limit hit), so usage and its cut are compared on every example
    compiled = compiled_or_skip("sse")
    outcomes = []
    for mod in (pure_sse, compiled):
        out, r = relay(mod, split_at(stream, cut), drop)
        outcomes.append((out, r.usage, r.done, r.finished(), r.streamed_text()))
    assert outcomes[0] == outcomes[1]


def test_accepts_any_bytes_like_and_rejects_text(sse_impl):
    framer = sse_impl.SSEFramer()
    assert [e.data for e in framer.feed(bytearray(b"data: a\n\n")) + framer.feed(memoryview(b"data: b\n\n"))] == [b"a", b"b"]
    with pytest.raises(TypeError):
        framer.feed("data: text\n\n")
