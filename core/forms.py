"""Multipart form bodies: the upload endpoints (image edits, audio transcriptions and translations).

Theory of operation: the body is parsed once, at admission, by python-multipart's push parser
(a maintained state machine; its header bounds are its own), fed each piece of the upload as it
arrives (`FormReader`), so a malformed form is refused before the rest of it is uploaded; the
gateway keeps the bytes (within `server.max_upload_bytes`) to forward them. What the gateway keeps of it is small: the value of
each plain field (bounded by MAX_FIELD_BYTES, the routing ones read like a JSON body's) and
each file's name, content type and size; the bytes themselves are forwarded as they came.
Parts are bounded in number (MAX_PARTS). A form the parser refuses, one that does not end with
its closing boundary, or one past a bound, is a 400 that says what to fix.

The parser alone decides where the parts are. It records where each plain field's value lies
in the body, and `Form.with_field` rewrites one (the `model`, when routing names another) at
those offsets: no part is re-encoded, and no second reading of the body can disagree with the
first. A body holding its delimiter (a line starting `--BOUNDARY`) anywhere but between parts is
refused: RFC 2046 forbids it, and parsers disagree on it (python-multipart and Go's take
`--BOUNDARY` followed by other bytes for data, aiohttp refuses it, a lenient one starts a part
there), so an upstream could see parts, a `model` among them, that the gateway never checked.
For the same reason the upstream gets the boundary the gateway parsed with, in a content type of
its own (`Form.content_type`), never the client's header: one giving `boundary` twice (the first
is aiohttp's and Go's, the last python-multipart's) is refused. And a part the gateway reads
(READ_FIELDS) must read alike everywhere: one with a filename (`filename=""` is a value to
aiohttp and Go, a file to python-multipart), a second `name` (or `name*=`, aiohttp's first
choice), a transfer encoding or a charset other than UTF-8 (which upstreams decode) is refused.
Sans-IO: bytes in, values out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from tollway.core.errors import GatewayError, bad_request, echoed
from tollway.core.request import RequestHead

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_PARTS = 64  # OpenAI's image edits take up to 16 images; the rest are a dozen plain fields
MAX_FIELD_BYTES = 256 * 1024  # a plain field (a prompt: 32,000 characters at most for gpt-image-1)
# The plain fields the gateway routes or prices by: each may appear once. Another parser
# upstream may keep the last of two where this one keeps the first, and the gateway would
# authorize and bill one model while the upstream serves another (as `parse_head` refuses a
# repeated JSON field). Other fields may repeat (`timestamp_granularities[]`).
READ_FIELDS = frozenset(("model", "stream", "size", "quality"))
# "\r\n--" opens every delimiter. A form has one per part; in an upload's bytes it is a 1-in-2^32
# accident. A body of thousands of them (near-delimiters: the boundary's start, then another
# byte) drives python-multipart's byte-at-a-time path: ~3 s of the event loop per 30 MB.
MAX_DELIMITER_STARTS = 4 * MAX_PARTS + 1024
_OPENER = b"\r\n--"
MAX_BOUNDARY = 70  # characters (RFC 2046); python-multipart's own bound is 256
# RFC 2046's bchars: a space inside, never at an end (a parser may strip it). Only these, so the
# quoted boundary the upstream gets (Form.content_type) needs no escape that parsers could read apart.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=?](?:[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?])?")
_TOKEN = re.compile(r"[0-9A-Za-z'+_\-.]+")  # bchars that are no tspecial (RFC 2045): no quotes needed
# Encodings that leave a value's bytes as they are (RFC 2045); any other is decoded by some upstreams.
_IDENTITY_ENCODINGS = frozenset((b"7bit", b"8bit", b"binary"))
_UTF8_CHARSETS = frozenset((b"utf-8", b"utf8", b"us-ascii"))


@dataclass(slots=True)
class FormFile:
    name: str  # the form field
    filename: str
    content_type: str | None
    size: int = 0


@dataclass(slots=True)
class Form:
    """What the gateway reads of a multipart body: its plain fields and its files' metadata."""

    boundary: bytes
    fields: dict[str, str] = field(default_factory=dict)  # the first value of each plain field
    files: list[FormFile] = field(default_factory=list)
    # Where each value in `fields` lies in the body (its data bytes: start, end), as the parser
    # delimited it; a value whose place the parser did not show (an empty one) is not here.
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    opening: int = 0  # where the body's first delimiter starts

    @property
    def content_type(self) -> str:
        """The content type the upstream gets: the boundary this form was parsed with, and no
        other parameter. The client's own header could read otherwise to the upstream's parser
        (a repeated `boundary`, of which aiohttp and Go keep the first and python-multipart the
        last): it would find other parts, a `model` among them, in a file's bytes. Quoted only
        when it must be (a bchar that is a tspecial: what SDKs and curl send stays as they send it)."""
        boundary = self.boundary.decode()
        return f"multipart/form-data; boundary={boundary if _TOKEN.fullmatch(boundary) else chr(34) + boundary + chr(34)}"

    def with_field(self, body: bytes, name: str, value: str) -> tuple[bytes, Form]:
        """`body` (the one this form was read from) with plain field `name` set to `value`, and
        the form of the new body: the first such part's data replaced where the parser found it,
        or a part added in front when there is none. Other parts' bytes are kept as they are.
        Raises GatewayError(400) if the field is there but its place is not known."""
        new = value.encode()
        span = self.spans.get(name)
        if span is None and name in self.fields:
            raise bad_request(f"The form field '{echoed(name)}' could not be located in the body; send it with "
                              "a value, or leave it out.", param=name)
        if span is None:  # a part added before the first delimiter
            head = b"--" + self.boundary + f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            end = self.opening
            body = body[:end] + head + new + b"\r\n" + body[end:]
            start, shift = end + len(head), len(head) + len(new) + 2
        else:
            start, end = span
            body = body[:start] + new + body[end:]
            shift = len(new) - (end - start)
        spans = {n: (a + shift, b + shift) if a >= end else (a, b) for n, (a, b) in self.spans.items()}
        spans[name] = (start, start + len(new))
        return body, replace(self, fields={**self.fields, name: value}, spans=spans)

    def head(self) -> RequestHead:
        """The routing fields, as `parse_head` reads them from JSON (`stream` is "true"/"false")."""
        stream = self.fields.get("stream")
        if stream is not None and stream not in ("true", "false"):
            raise bad_request(f"Invalid value for 'stream': expected true or false, got '{echoed(stream)}'.",
                              param="stream")
        return RequestHead(model=self.fields.get("model") or None, stream=stream == "true" if stream else None)


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` content type. Raises the 400 that asks for one."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise bad_request("This endpoint takes a multipart/form-data body (a file upload); send the "
                          "content-type header 'multipart/form-data; boundary=…' with it.")
    if [name.partition("*")[0] for name in _param_names(content_type or "")].count("boundary") > 1:
        raise bad_request("The content-type header gives the multipart boundary more than once; send one "
                          "'boundary' parameter.")
    if len(boundary) > MAX_BOUNDARY:
        raise bad_request(f"The multipart boundary is longer than {MAX_BOUNDARY} characters (RFC 2046); send a "
                          "shorter one.")
    if not _BOUNDARY.fullmatch(_text(boundary)):
        raise bad_request("The multipart boundary in the content-type header has a character RFC 2046 does not "
                          "allow in one; use letters, digits and the characters '()+_,-./:=? only.")
    return boundary


def _param_names(header: str) -> list[str]:
    """The parameter names of a header, lower-cased (`boundary`, `filename*`). Split at every ';',
    quoted or not, as aiohttp splits a content type: a parameter hidden in a quoted string to one
    parser is a parameter to another."""
    names = (segment.partition("=")[0].strip().lower() for segment in header.split(";")[1:])
    return [name for name in names if name]


def parse_form(body: bytes, content_type: str | None) -> Form:
    """The fields and files of a multipart body. Raises GatewayError(400) for anything malformed
    or past a bound."""
    reader = FormReader(content_type)
    reader.feed(body)
    return reader.finish()


class FormReader:
    """A multipart body parsed as it arrives: `feed` each piece (a malformed form or a crossed
    bound is refused at the piece that shows it, before the rest is uploaded), then `finish`.
    Raises GatewayError(400) from any of the three."""

    def __init__(self, content_type: str | None) -> None:
        self.form = Form(boundary_of(content_type))
        self._reader = _Reader(self.form)
        try:  # (it refuses a boundary it cannot use with this exception, not a MultipartParseError)
            self._parser = MultipartParser(self.form.boundary, self._reader.callbacks())
        except FormParserError as exc:
            raise bad_request(f"The multipart body could not be parsed ({echoed(str(exc))}).") from None
        self._openers, self._tail = 0, b""
        self._delimiter = b"\r\n--" + self.form.boundary
        # The stream's last bytes, to count a delimiter split across pieces. The first delimiter
        # comes at the very start or after a preamble's line break (RFC 2046): it counts as if
        # after one.
        self._edge, self._delimiters = b"\r\n", 0
        self._fed = 0  # bytes fed before this piece
        self._opened = False

    def feed(self, piece: bytes) -> None:
        # Counted in C before the parser sees the piece (one split across pieces too).
        self._openers += piece.count(_OPENER) + (self._tail + piece[:3]).count(_OPENER)
        self._tail = (self._tail + piece[-3:])[-3:]
        if self._openers > MAX_DELIMITER_STARTS:
            raise bad_request(f"The multipart body has more than {MAX_DELIMITER_STARTS} delimiter-like "
                              "sequences (CRLF followed by '--'); a form has one per part.")
        keep = len(self._delimiter) - 1
        self._delimiters += piece.count(self._delimiter) + (self._edge + piece[:keep]).count(self._delimiter)
        self._edge = (self._edge + piece[-keep:])[-keep:]
        if not self._opened:  # the parser skips line breaks (and, in the first piece, what follows them)
            dash = piece.find(b"-")  # up to the first '-': the first delimiter in any form it accepts
            if dash >= 0:
                self._opened, self.form.opening = True, self._fed + dash
        self._reader.piece, self._reader.base = piece, self._fed
        try:
            self._parser.write(piece)
        except MultipartParseError as exc:
            raise bad_request(f"The multipart body could not be parsed ({_reason(exc)}).") from None
        self._fed += len(piece)
        if self._reader.error is not None:
            raise self._reader.error

    def finish(self) -> Form:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise bad_request(f"The multipart body could not be parsed ({_reason(exc)}).") from None
        if self._reader.error is not None:
            raise self._reader.error
        if not self._reader.ended:
            raise bad_request("The multipart body ends before its closing boundary; send the whole form.")
        if self._delimiters != self._reader.parts + 1:  # one before each part, and the closing one
            raise bad_request("The multipart body holds a line starting with its boundary inside a part or after "
                              "its end, where RFC 2046 forbids it; choose a boundary that does not occur in the files.")
        return self.form


def _reason(exc: MultipartParseError) -> str:
    return echoed(str(exc).split(" at index ")[0])


class _Reader:
    """python-multipart's callbacks, collecting into a Form. A callback cannot stop the parser by
    raising through it cleanly, so a bound that is crossed is noted and data is ignored from then on.

    It also notes where each plain field's value lies in the body (Form.spans): a callback gets
    the piece being parsed and offsets in it, or (data held back from the piece before, as it
    might have begun a delimiter) the parser's copy of bytes that end where this piece starts."""

    __slots__ = ("form", "error", "ended", "parts", "piece", "base", "_headers", "_name", "_value", "_field_name",
                 "_data", "_file", "_size", "_value_end", "_span")

    def __init__(self, form: Form) -> None:
        self.form = form
        self.error: GatewayError | None = None
        self.ended = False
        self.piece, self.base = b"", 0  # the piece being parsed, and where it starts in the body
        self._field_name = ""
        self._data: list[bytes] = []
        self._file: FormFile | None = None
        self._size = 0
        self.parts = 0  # every part, repeated names included (fields keeps one value per name)
        self._value_end = -1  # where the part's last header value ends (-1: that value is empty)
        self._start()

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._start, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _start(self) -> None:
        self._headers: dict[bytes, bytes] = {}  # of the part being read
        self._name = self._value = b""  # the header being read
        self._data, self._file, self._size = [], None, 0
        self._span = (-1, -1)  # of a plain field's data

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]
        self._value_end = -1

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._value_end = self.base + end  # (header bytes always come from the piece)

    def _header_end(self) -> None:
        name = self._name.lower()
        if name in self._headers:  # two Content-Dispositions: parsers differ on which one names the part
            self._fail(f"A part of the form repeats its '{echoed(_text(name))}' header.")
        self._headers[name] = self._value
        self._name, self._value = b"", b""

    def _headers_done(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self._fail(f"The form has more than {MAX_PARTS} parts.")
            return
        disposition = self._headers.get(b"content-disposition", b"")
        kind, options = parse_options_header(disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            self._fail("Every part of the form needs a 'Content-Disposition: form-data; name=…' header.")
            return
        params = _param_names(_text(disposition))
        if params.count("name") > 1 or any(param.startswith("name*") for param in params):
            # python-multipart keeps the last `name` and ignores `name*=`; aiohttp takes `name*=`
            # first: the part would be another field upstream, a second `model` perhaps.
            self._fail("A part of the form names its field more than once (or with 'name*='); give it one 'name'.")
            return
        if _text(name) in READ_FIELDS:
            self._check_read_field(_text(name), params)
            if self.error is not None:
                return
        filename = options.get(b"filename")
        if filename is not None:
            content_type = self._headers.get(b"content-type")
            self._file = FormFile(_text(name), _text(filename), _text(content_type) if content_type else None)
        else:
            self._field_name = _text(name)
            if self._field_name in READ_FIELDS and self._field_name in self.form.fields:
                self._fail(f"The form field '{self._field_name}' appears more than once; send it once.")
            if self._value_end >= 0:  # the parser takes exactly CRLF CRLF from there to the data
                self._span = (self._value_end + 4, self._value_end + 4)

    def _check_read_field(self, name: str, params: list[str]) -> None:
        """Refuse a part the gateway reads (`model`…) in a form another parser reads apart: with a
        filename (`filename=""` is a plain value to aiohttp and Go, a file to python-multipart:
        a second `model` that the appears-once check would not count), or with an encoding an upstream
        decodes where the gateway reads the bytes as they are."""
        if any(param.partition("*")[0] == "filename" for param in params):
            self._fail(f"The form field '{name}' has a filename in its Content-Disposition header; send it as a "
                       "plain field, without one.")
            return
        encoding = self._headers.get(b"content-transfer-encoding")
        if encoding is not None and encoding.strip().lower() not in _IDENTITY_ENCODINGS:
            self._fail(f"The form field '{name}' has a Content-Transfer-Encoding header (RFC 7578 deprecates it); "
                       "send its value as it is, without one.")
            return
        charset = parse_options_header(self._headers.get(b"content-type", b""))[1].get(b"charset")
        if charset is not None and charset.strip().lower() not in _UTF8_CHARSETS:
            self._fail(f"The form field '{name}' declares the charset '{echoed(_text(charset))}'; send it as UTF-8.")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        self._size += end - start
        if self._file is None:
            if self._size > MAX_FIELD_BYTES:
                self._fail(f"The form field '{echoed(self._field_name)}' is larger than {MAX_FIELD_BYTES} bytes.")
                return
            self._data.append(data[start:end])
            # Bytes held back end where this piece starts; the data of a part is one run of the body.
            at = self.base + start if data is self.piece else self.base - (end - start)
            if len(self._data) == 1:
                self._span = (at, at)
            self._span = (self._span[0], at + end - start) if at == self._span[1] else (-1, -1)

    def _part_end(self) -> None:
        if self.error is not None:
            return
        if self._file is not None:
            self._file.size = self._size
            self.form.files.append(self._file)
        else:
            try:
                value = b"".join(self._data).decode()
            except UnicodeDecodeError:
                self._fail(f"The form field '{echoed(self._field_name)}' is not UTF-8 text.")
                return
            if self._field_name not in self.form.fields:
                self.form.fields[self._field_name] = value
                if self._span[0] >= 0:
                    self.form.spans[self._field_name] = self._span

    def _end(self) -> None:
        self.ended = True

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = bad_request(message)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
