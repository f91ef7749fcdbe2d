"""The configured guardrails as pipeline hooks (tollway.gateway.pipeline, docs/guardrails.md).

    input   → Pipeline.before_upstream  (block: 400; mask: the body sent upstream is re-encoded)
    output  → Pipeline.on_answer        (a non-stream answer; block: 502)
              Pipeline.on_chunk         (a stream: a scanner per guardrail, choice/content block
                                         and tool call over the text, reasoning and tool-call
                                         argument deltas; block: an SSE error event; the Responses
                                         API's events in tollway.gateway.guardrails.responses_stream)
    Anthropic thinking blocks are scanned when the gateway wrote them (a chat backend's reasoning,
    translated: `signature: ""`), not when they are the upstream's own, signed
    (`registry.signs_thinking` of the request's API and the answering provider's schema).
    json_schema → the answer's text checked against the request's response_format schema
              (tollway.gateway.guardrails.schema): non-stream at on_answer, a stream at the end
              of each choice or output item; block: 502 or the SSE error event

A seam gets a hook only if some guardrail needs it: with no guardrails the pipeline's tuples
stay empty and the request path pays nothing. Every finding is counted in
`tollway_guardrail_decisions_total{guardrail,detector,action}` and in the request's access log
line (`"guardrails": {"pii": {"credit_card": 1}}`): detector names and counts, never a value.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import regex

from tollway.core import errors
from tollway.core.config import Guardrail
from tollway.core.guardrails.detectors import ALL, Finding, find, mask, resolve
from tollway.core.guardrails.json_escapes import EscapeDecoder
from tollway.core.guardrails.schema_refused import DETECTOR as SCHEMA
from tollway.core.guardrails.schema_refused import SchemaRefused
from tollway.core.guardrails.stream import Emit, StreamScanner
from tollway.core.providers.registry import signs_thinking
from tollway.gateway import sse_deltas
from tollway.gateway.guardrails import logprobs, responses_stream
from tollway.gateway.guardrails.schema import AnswerSchema, chat_answers, responses_answers, schema_of
from tollway.gateway.guardrails.text import Slot, input_slots, output_slots, reasoning_echoes
from tollway.gateway.pipeline import Pipeline

if TYPE_CHECKING:
    from prometheus_client import Counter

    from tollway.gateway.admission import Admitted
    from tollway.gateway.exchange import Exchange

REGEX = "regex"  # the detector label of a regex guardrail's findings
REGEX_HOLD = 256  # characters a regex guardrail holds back on a stream (a longer match may be split)
_THINKING = sse_deltas.THINKING  # (read per delta: a global, not a module attribute)
_REASONING = next(tool for tool, name in sse_deltas.SIDE_FIELDS.items() if name == "reasoning")  # (its `tool` key)
# An Anthropic block's delta of each kind: a held tail goes out at the block's end as that kind.
_BLOCK_DELTAS = {sse_deltas.TEXT: "text_delta", sse_deltas.THINKING: "thinking_delta",
                 sse_deltas.ARGUMENTS: "input_json_delta"}
_BLOCK_FIELDS = {sse_deltas.TEXT: "text", sse_deltas.THINKING: "thinking", sse_deltas.ARGUMENTS: "partial_json"}
_decode = msgspec.json.decode
_encode = msgspec.json.encode


# Texts of at least this many characters in all (one request's or answer's slots) are scanned in
# a worker thread, not on the event loop: a scan costs ~4 ns per character of prose but up to
# ~2 µs per character of text built to put a candidate every few characters (bench/README.md),
# so a loop-held scan stays under ~65 ms. The scan calls are short, so the GIL passes back to the
# loop at its switch interval (5 ms) while the thread works.
OFF_LOOP_CHARS = 32_768


def _json_of(text: str) -> Any:
    """`text` decoded as JSON, or None (not JSON, or nested past the decoder's depth)."""
    try:
        return _decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None


def _mapped(value: Any, scan: Callable[[str], str]) -> Any:
    """A decoded JSON value with `scan` applied to every string in it, object keys included (two
    keys masked alike keep the last value: both were findings)."""
    if isinstance(value, str):
        return scan(value)
    if isinstance(value, dict):
        return {scan(k): _mapped(v, scan) for k, v in value.items()}
    if isinstance(value, list):
        return [_mapped(v, scan) for v in value]
    return value


class Rule:
    """One configured guardrail, compiled."""

    def __init__(self, spec: Guardrail) -> None:
        self.name, self.action, self.type = spec.name, spec.action, spec.type
        self.detectors = tuple(spec.detectors) if spec.detectors is not None else ALL
        self.patterns = [re.compile(p) for p in spec.deny]
        self.partials = [_partial_matcher(p) for p in spec.deny]  # for streams: what may still match
        self.input, self.output = "input" in spec.applies_to, "output" in spec.applies_to
        self.schema = spec.type == "json_schema"  # checks the answer against the request's schema; scans nothing
        scope = spec.scope
        self.keys = frozenset(scope.keys) if scope else frozenset()
        self.teams = frozenset(scope.teams) if scope else frozenset()
        self.models = frozenset(scope.models) if scope else frozenset()

    def applies(self, key: str | None, team: str | None, route: str, model: str | None) -> bool:
        return ((not self.keys or key in self.keys) and (not self.teams or team in self.teams)
                and (not self.models or route in self.models or model in self.models))

    def find(self, text: str, pos: int = 0) -> list[Finding]:
        """The findings in `text` (a regex guardrail's: those that start at `pos` or after, the
        text before it read as context, by lookbehind and `\\b`)."""
        if self.type == "pii":
            return find(text, self.detectors)
        return resolve(Finding(m.start(), m.end(), REGEX) for p in self.patterns for m in p.finditer(text, pos)
                       if m.end() > m.start())

    def scanner(self) -> StreamScanner | _RegexScanner:
        if self.type == "pii":
            return StreamScanner(self.detectors, self.action)
        return _RegexScanner(self)


def _partial_matcher(pattern: str) -> regex.Pattern[str] | None:
    """`pattern` for partial matching (the `regex` package: whether text cut short could still
    become a match), or None where its syntax differs from Python's `re`."""
    try:
        return regex.compile(pattern, regex.VERSION0)
    except (regex.error, ValueError):
        return None


class _RegexScanner:
    """A regex guardrail over a stream. It holds back only the text that could still grow into
    a match: where a pattern, partially matched at the end of what has arrived (or matched
    right up to its end, so it may still extend), begins; never more than the last REGEX_HOLD
    characters (a match that starts before them is taken as it is). So a match up to that long
    is caught across chunk boundaries, and text no pattern could be starting flows at once. The
    StreamScanner contract: feed/finish → Emit.

    Text already sent stays in the buffer (up to REGEX_HOLD characters, before `pos`) as the
    context the next chunk is matched in: a lookbehind or `\\b` must see what came before it,
    as it would in the whole text."""

    def __init__(self, rule: Rule) -> None:
        self.rule, self.buf, self.done = rule, "", False
        self.pos = 0  # buf[:pos] was sent already: context only

    def feed(self, text: str) -> Emit:
        if self.done:
            return Emit("")
        self.buf += text
        return self._advance(self._settled())

    def _settled(self) -> int:
        """How much of the buffer no pattern can still be matching when more text comes."""
        end = len(self.buf)
        floor, s = max(self.pos, end - REGEX_HOLD), end
        for partial in self.rule.partials:
            if partial is None:  # a pattern the partial matcher cannot read: the fixed hold
                return floor
            for m in partial.finditer(self.buf, floor, partial=True):
                # (a whole match may still grow: `foo(bar)?` has matched "foo" in "foob")
                if m.partial or m.end() == end or partial.fullmatch(self.buf, m.start(), partial=True):
                    s = min(s, m.start())
                    break
        return max(floor, s)

    def finish(self) -> Emit:
        if self.done:
            return Emit("")
        emit = self._advance(len(self.buf))
        self.done = True
        return emit

    def _advance(self, s: int) -> Emit:
        start = self.pos
        found = self.rule.find(self.buf, start)
        for f in found:
            if f.start < s < f.end:
                s = f.end
        done = [Finding(f.start - start, f.end - start, f.detector) for f in found if f.end <= s]
        out = self.buf[start:s]
        if done and self.rule.action == "block":
            self.done = True
            return Emit(out[:done[0].start], {REGEX: 1}, REGEX)
        cut = max(0, s - REGEX_HOLD)  # what was sent, kept as context up to REGEX_HOLD
        self.buf, self.pos = self.buf[cut:], s - cut
        if not done:
            return Emit(out)
        return Emit(out if self.rule.action == "log" else mask(out, done), {REGEX: len(done)})


@dataclass(slots=True)
class GuardrailState:
    """One request's guardrails: those on its output, its stream scanners, what was found."""

    output: tuple[Rule, ...]  # the scanning ones (pii, regex)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    scanners: dict[tuple[int, int, int], StreamScanner | _RegexScanner] = field(default_factory=dict)  # (rule, index, tool)
    # index -> the tools with a scanner (of any rule): a choice's or part's own are found by one
    # lookup, not a walk of every scanner (whose number a hostile upstream grows with indexes)
    live: dict[int, set[int]] = field(default_factory=dict)
    kinds: dict[tuple[int, int], str] = field(default_factory=dict)  # (index, tool): TEXT or ARGUMENTS
    # (index, tool) -> its streamed JSON arguments' escapes decoded, once for every rule
    decoders: dict[tuple[int, int], EscapeDecoder] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)  # the last OpenAI chunk's id/model/created
    checks: tuple[Rule, ...] = ()  # json_schema guardrails, when the request has a schema
    schema: AnswerSchema | None = None  # ... and that schema
    responses: responses_stream.ResponsesState | None = None  # a streamed Responses API answer
    legacy: bool = False  # a legacy completions stream: a choice's text is `text`, not a delta
    # choice index -> whether its `reasoning` deltas have all repeated its `reasoning_content` ones
    # (vLLM 0.11+ sends both, same text, one delta): the repeat is masked alike but not counted again
    echoes: dict[int, bool] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Something to do on the output."""
        return bool(self.output) or self.schema is not None

    @property
    def redacts(self) -> bool:
        """A guardrail may change or cut the answer's text: its token logprobs, which repeat the
        text, are not sent (tollway.gateway.guardrails.logprobs)."""
        return any(rule.action != "log" for rule in self.output)


class GuardrailSet:
    """The guardrails of one config, as pipeline hooks."""

    def __init__(self, specs: Sequence[Guardrail], decisions: Counter | None = None) -> None:
        self.rules = tuple(Rule(s) for s in specs)
        self.decisions = decisions
        if any(rule.schema for rule in self.rules):  # its jsonschema and RE2 load now (~0.1 s), not
            import tollway.core.guardrails.json_schema  # noqa: F401  # on the loop under the first schema
        # (guardrail, detector, action) -> the labelled counter's inc: prometheus-client's labels() takes
        # a lock and rebuilds its key on every call, a few µs per finding on the request path.
        self._incs: dict[tuple[str, str, str], Callable[[float], None]] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def pipeline(self) -> Pipeline:
        if not self.rules:
            return Pipeline()
        output = any(r.output for r in self.rules)  # (json_schema guardrails are output guardrails)
        return Pipeline(before_upstream=(self.before_upstream,),
                        on_chunk=(self.on_chunk,) if output else (),
                        on_answer=(self.on_answer,) if output else ())

    def _count(self, state: GuardrailState, rule: Rule, counts: dict[str, int]) -> None:
        mine = state.counts.setdefault(rule.name, {})
        for detector, n in counts.items():
            mine[detector] = mine.get(detector, 0) + n
            if self.decisions is not None:
                labels = (rule.name, detector, rule.action)
                inc = self._incs.get(labels)
                if inc is None:
                    inc = self._incs[labels] = self.decisions.labels(*labels).inc
                inc(n)

    def apply_rule(self, state: GuardrailState, rule: Rule, slots: list[Slot], status: int) -> bool:
        """`apply_rules` with one rule."""
        return self.apply_rules(state, (rule,), slots, status)

    def apply_rules(self, state: GuardrailState, rules: Sequence[Rule], slots: list[Slot], status: int) -> bool:
        """Run the rules, in order, over whole texts (the slots); True if a value was replaced.
        Raises on block. Tool-call arguments are JSON: their decoded strings are scanned (an
        escape such as `\\n` or `\\u0034` hides nothing) and the arguments re-encoded if one was
        masked; arguments that are not JSON are scanned as text.

        Each rule runs over every slot before the next rule starts (what is counted before a
        block, and which rule blocks, follow the config's order). Arguments are decoded once and
        encoded once, whatever the number of rules: each rule maps the value the rules before it
        left."""
        values = [_json_of(holder[key]) if key == "arguments" else None for holder, key in slots]
        masked = [False] * len(slots)  # a rule replaced a text in this slot (its decoded arguments' strings)
        for rule in rules:
            for i, (holder, key) in enumerate(slots):
                value = values[i]
                if value is not None:
                    try:
                        values[i], replaced = self._scanned_json(state, rule, value, status)
                        masked[i] |= replaced
                        continue
                    except RecursionError:  # (nested near the decoder's limit): as text from now on,
                        values[i] = None  # with what the rules before masked
                        if masked[i]:
                            holder[key] = _encode(value).decode()
                text: str = holder[key]
                new = self._scanned(state, rule, text, status)
                if new is not text:
                    holder[key], masked[i] = new, True
        for i, (holder, key) in enumerate(slots):
            if masked[i] and values[i] is not None:
                holder[key] = _encode(values[i]).decode()
        return any(masked)

    def _scanned_json(self, state: GuardrailState, rule: Rule, value: Any, status: int) -> tuple[Any, bool]:
        """A decoded JSON value through one rule: (`value` or its masked copy, whether a string was
        replaced). Raises on block, and RecursionError for a value nested too deep to walk."""
        replaced = False

        def scan(text: str) -> str:
            nonlocal replaced
            new = self._scanned(state, rule, text, status)
            replaced |= new is not text
            return new

        mapped = _mapped(value, scan)
        return (mapped, True) if replaced else (value, False)

    async def _apply_rules(self, state: GuardrailState, rules: Sequence[Rule], slots: list[Slot], status: int) -> bool:
        """`apply_rules`, in a worker thread when the texts are large (OFF_LOOP_CHARS).

        The thread only touches this request's state and body (and the thread-safe counter);
        a block's error is raised here as on the loop."""
        if sum(len(holder[key]) for holder, key in slots) < OFF_LOOP_CHARS:
            return self.apply_rules(state, rules, slots, status)
        return await asyncio.to_thread(self.apply_rules, state, rules, slots, status)

    def _scanned(self, state: GuardrailState, rule: Rule, text: str, status: int) -> str:
        """One text through one rule: counted, masked (else `text` itself). Raises on block."""
        found = rule.find(text)
        if not found:
            return text
        if rule.action == "block":
            self._count(state, rule, {found[0].detector: 1})
            raise errors.content_policy_violation(rule.name, found[0].detector, status)
        counts: dict[str, int] = {}
        for f in found:
            counts[f.detector] = counts.get(f.detector, 0) + 1
        self._count(state, rule, counts)
        return mask(text, found) if rule.action == "mask" else text

    # -- input -----------------------------------------------------------------------------

    async def before_upstream(self, req: Admitted, ex: Exchange) -> None:
        active = tuple(r for r in self.rules if r.applies(ex.key_name, ex.team, ex.route, ex.model))
        if not active:
            return
        state = GuardrailState(tuple(r for r in active if r.output and not r.schema))
        ex.guardrails = state
        if ex.api == "responses" and req.head.stream:
            state.responses = responses_stream.ResponsesState()
        if ex.form is not None:  # a multipart upload: not scanned (docs/guardrails.md), and no JSON to read
            return
        inputs = [r for r in active if r.input]
        # A body that never says json_schema (nor escapes a character) has no schema: it is not
        # decoded for the check's sake.
        says = b"json_schema" in req.body or b"\\u" in req.body
        checks = tuple(r for r in active if r.schema) if says else ()
        if not inputs and not checks:
            return
        try:
            body = _decode(req.body)
        except msgspec.DecodeError as exc:  # (the gateway's partial read passed it: it skips what it needs not)
            raise errors.guardrail_unreadable((inputs or checks)[0].name, "The request body", str(exc), 400) from None
        if checks:
            self._schema(state, checks, ex.api, body)
        if not inputs:
            return
        slots = input_slots(ex.api, body)
        if not slots:
            return
        if await self._apply_rules(state, inputs, slots, 400):
            req.body = _encode(body)

    @staticmethod
    def _schema(state: GuardrailState, checks: tuple[Rule, ...], api: str, body: Any) -> None:
        """The request's schema compiled once, for its json_schema guardrails (none: they skip it)."""
        found = schema_of(api, body)
        if found is None:
            return
        schema, param = found
        try:
            state.schema = AnswerSchema.of(schema)
        except SchemaRefused as exc:
            raise errors.schema_refused(checks[0].name, param, str(exc)) from None
        state.checks = checks

    def check_answer(self, state: GuardrailState, text: str) -> None:
        """Check one whole answer against the request's schema: counted; raises for block."""
        schema = state.schema
        what = schema.check(text) if schema is not None else None
        if what is None:
            return
        for rule in state.checks:
            self._count(state, rule, {SCHEMA: 1})
            if rule.action == "block":
                raise errors.schema_violation(rule.name, what)

    # -- output: a non-stream answer ------------------------------------------------------

    async def on_answer(self, ex: Exchange, status: int, out: bytes) -> bytes:
        state: GuardrailState | None = ex.guardrails
        if state is None or not state.active or status >= 300:
            return out
        try:
            body = _decode(out)
        except msgspec.DecodeError as exc:  # (the adapter read only what it needed)
            rules = state.output or state.checks
            raise errors.guardrail_unreadable(rules[0].name, "The upstream's answer", str(exc), 502) from None
        slots = output_slots(body, thinking=not signs_thinking(ex.api, ex.provider_schema))
        echoes = reasoning_echoes(body)  # (scanned once, as reasoning_content)
        changed = state.redacts and logprobs.strip(body)
        changed |= await self._apply_rules(state, state.output, slots, 502)
        for message in echoes if changed else ():
            message["reasoning"] = message["reasoning_content"]
        if state.schema is not None:
            for text in (responses_answers(body) if ex.api == "responses" else chat_answers(body)):
                self.check_answer(state, text)
        return _encode(body) if changed else out

    # -- output: a stream -----------------------------------------------------------------

    def on_chunk(self, ex: Exchange, out: bytes) -> bytes:
        state: GuardrailState | None = ex.guardrails
        if state is None or not state.active:
            return out
        found = sse_deltas.events(out)
        if any(ev.unreadable for ev in found):  # a client would read a text no guardrail has seen
            raise errors.upstream_malformed_event()
        if state.redacts:
            for ev in found:
                if logprobs.strip(ev.obj):
                    ev.changed = True
        if state.responses is not None:
            responses_stream.rewrite(self, state, state.responses, found)
            return sse_deltas.joined(found) if any(ev.changed or ev.before for ev in found) else out
        schema = state.schema
        for ev in found:
            obj = ev.obj
            if obj is None:
                if b"[DONE]" in ev.raw:  # a stream that never said finish_reason
                    if state.scanners:
                        ev.before = self._openai_tail(state)
                    if schema is not None:
                        for index in sorted(schema.texts):
                            self._ended(state, index, None)
                continue
            if self._scan_deltas(state, ex, obj):
                ev.changed = True
            if isinstance(obj, dict):
                self._end_blocks(state, ev, obj)
        if any(ev.changed or ev.before for ev in found):
            return sse_deltas.joined(found)
        return out

    def _scan_deltas(self, state: GuardrailState, ex: Exchange, obj: Any) -> bool:
        """Feed one event's deltas (answer text, side fields, tool arguments, thinking) to the
        scanners, writing back what they changed; True if anything was."""
        schema, changed = state.schema, False
        said: list[tuple[int, dict[str, Any]]] = []  # each choice's delta
        for holder, name, kind, index, tool in sse_deltas.deltas(obj, side=True):
            if name == "content":
                said.append((index, holder))
                if "reasoning" in holder:
                    self._echoed(state, index, holder)
            text = holder.get(name)
            if schema is not None and name == "content":
                schema.saw(index, holder)
            if not isinstance(text, str) or not text:
                continue
            if kind == _THINKING and signs_thinking(ex.api, ex.provider_schema):
                continue  # the upstream's signed thinking: a changed one is refused when sent back
            state.kinds[index, tool] = kind
            new = self.feed_text(state, (index, tool), text, json=kind == sse_deltas.ARGUMENTS)
            if new != text:
                holder[name], changed = new, True
            if schema is not None and name == "content":
                schema.add(index, new)
        for index, delta in said:  # (after: a tail put in this delta must not be scanned again)
            if self._end_reasoning(state, index, delta):
                changed = True
        return changed

    def _end_blocks(self, state: GuardrailState, ev: sse_deltas.Event, obj: dict[str, Any]) -> None:
        """What one event ends: a choice's finish (its held tails flushed), a legacy completions
        choice's text, an Anthropic content block's stop (its held tail sent before it)."""
        schema = state.schema
        choices = obj.get("choices")
        if isinstance(choices, list):
            if "id" in obj:
                state.last = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
            for choice in choices:
                at = choice.get("index", 0) if isinstance(choice, dict) else None
                if not isinstance(at, int):
                    continue
                text = choice.get("text")
                if "delta" not in choice and isinstance(text, str):  # a legacy completions stream
                    state.legacy = True
                    new = self.feed_text(state, (at, -1), text) if text else text
                    if choice.get("finish_reason"):
                        new += self.finish_text(state, (at, -1))
                    if new != text:
                        choice["text"], ev.changed = new, True
                elif choice.get("finish_reason"):
                    delta = choice.setdefault("delta", {})
                    if isinstance(delta, dict) and self._flush_choice(state, at, delta):
                        ev.changed = True
                    if schema is not None:
                        self._ended(state, at, choice["finish_reason"])
        elif obj.get("type") == "content_block_stop" and isinstance(obj.get("index", 0), int):
            block: int = obj.get("index", 0)
            kind = state.kinds.get((block, -1), sse_deltas.TEXT)
            tail = self.finish_text(state, (block, -1))
            if tail:
                piece = {"type": _BLOCK_DELTAS[kind], _BLOCK_FIELDS[kind]: tail}
                added = {"type": "content_block_delta", "index": block, "delta": piece}
                ev.before = b"event: content_block_delta\ndata: " + _encode(added) + b"\n\n"

    @staticmethod
    def _echoed(state: GuardrailState, index: int, delta: dict[str, Any]) -> None:
        """Note whether this delta's `reasoning` repeats its `reasoning_content`."""
        text = delta.get("reasoning")
        if text:
            state.echoes[index] = state.echoes.get(index, True) and text == delta.get("reasoning_content")

    def feed_text(self, state: GuardrailState, key: tuple[int, int], text: str, json: bool = False) -> str:
        """One streamed delta of the text `key` names, through every scanning guardrail in
        order: what to send now (masked; held back as needed). Raises for block.

        `json`: the delta is a piece of tool-call arguments (JSON text): the guardrails see it
        with its `\\u` escapes decoded (json_escapes.py), as they see a non-stream answer's
        arguments, and what goes out is that JSON text, masked; with only `log` guardrails the
        delta goes out as it came."""
        raw = text
        counted = key[1] != _REASONING or not state.echoes.get(key[0], False)
        if json and state.output:
            decoder = state.decoders.get(key)
            if decoder is None:
                decoder = state.decoders[key] = EscapeDecoder()
            text = decoder.feed(text)
        for i, rule in enumerate(state.output):
            scanner = state.scanners.get((i, key[0], key[1]))
            if scanner is None:
                scanner = state.scanners[i, key[0], key[1]] = rule.scanner()
                state.live.setdefault(key[0], set()).add(key[1])
            text = self._emitted(state, rule, scanner.feed(text), counted)
        return raw if json and not state.redacts else text

    def finish_text(self, state: GuardrailState, key: tuple[int, int]) -> str:
        """The text `key` names ended: its held tails, through the later guardrails. Raises for block."""
        tools = state.live.get(key[0])
        if tools is None or key[1] not in tools:
            return ""
        tools.discard(key[1])
        if not tools:
            del state.live[key[0]]
        decoder = state.decoders.pop(key, None)
        text = decoder.finish() if decoder is not None else ""  # an escape the arguments ended in, as it came
        counted = key[1] != _REASONING or not state.echoes.get(key[0], False)
        for i, rule in enumerate(state.output):
            scanner = state.scanners.pop((i, key[0], key[1]), None)
            if scanner is None:
                continue
            if text:
                text = self._emitted(state, rule, scanner.feed(text), counted)
            text += self._emitted(state, rule, scanner.finish(), counted)
        return "" if decoder is not None and not state.redacts else text  # (log only: the deltas went out as they came)

    def _end_reasoning(self, state: GuardrailState, index: int, delta: dict[str, Any]) -> bool:
        """A choice's reasoning ended (its delta carries answer, refusal or tool calls and no more
        reasoning under that name): its held tail goes out in this delta, under the name it came
        with, before the answer, not at the choice's end. True if there was one."""
        live = state.live.get(index)
        if live is None or live.isdisjoint(sse_deltas.REASONING_FIELDS):  # (most deltas: no reasoning held)
            return False
        if not (delta.get("content") or delta.get("refusal") or delta.get("tool_calls")):
            return False
        ended = False
        for tool, name in sse_deltas.REASONING_FIELDS.items():
            if delta.get(name) or tool not in state.live.get(index, ()):
                continue
            tail = self.finish_text(state, (index, tool))
            if tail:
                delta[name], ended = tail, True
        return ended

    def _flush_choice(self, state: GuardrailState, index: int, delta: dict[str, Any]) -> bool:
        """The held tails of an OpenAI choice that ended, into its last delta; True if any."""
        changed = False
        for tool in sorted(state.live.get(index, ())):
            key = (index, tool)
            tail = self.finish_text(state, key)
            if not tail:
                continue
            changed = True
            if key[1] < 0:
                name = sse_deltas.SIDE_FIELDS.get(key[1], "content")
                delta[name] = (delta.get(name) or "") + tail
                if state.schema is not None and name == "content":
                    state.schema.add(index, tail)
            else:
                calls = delta.get("tool_calls")
                calls = delta["tool_calls"] = calls if isinstance(calls, list) else []
                calls.append({"index": key[1], "function": {"arguments": tail}})
        return changed

    def _ended(self, state: GuardrailState, index: int, finish: object) -> None:
        schema = state.schema
        text = schema.ended(index, finish) if schema is not None else None
        if text is not None:
            self.check_answer(state, text)

    def _emitted(self, state: GuardrailState, rule: Rule, emit: Emit, counted: bool = True) -> str:
        """What one scanner emitted: counted (unless `counted` is False: a repeat of a text
        counted already), the text to send. Raises for block."""
        if emit.counts and counted:
            self._count(state, rule, emit.counts)
        if emit.blocked is not None:
            raise errors.content_policy_violation(rule.name, emit.blocked, 502)
        return emit.text

    def _openai_tail(self, state: GuardrailState) -> bytes:
        """The held text of choices that ended without a finish_reason, as one more chunk."""
        indexes = sorted(state.live)
        choices = []
        for index in indexes:
            delta: dict[str, Any] = {}
            if not self._flush_choice(state, index, delta):
                continue
            if state.legacy:  # (a completions client reads `text`: a delta would be dropped unread)
                choices.append({"index": index, "text": delta.get("content", ""), "logprobs": None, "finish_reason": None})
            else:
                choices.append({"index": index, "delta": delta, "finish_reason": None})
        if not choices:
            return b""
        return b"data: " + _encode({**state.last, "choices": choices}) + b"\n\n"
