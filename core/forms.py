"""Multipart form bodies: the upload endpoints (image edits, audio transcriptions and translations).

Theory of operation: the body is parsed once, at admission, by python-multipart's push parser
(a maintained state machine; its header bounds are its own), fed each piece of the upload as it
arrives (`FormReader`), so a malformed form is refused before the rest of it is uploaded; the
gateway keeps the bytes (within `server.max_upload_bytes`) to forward them. What the gateway keeps of it is small: the value of
each plain field (bounded by MAX_FIELD_BYTES, the routing ones read like a JSON body's) and
each file's name, content type and size; the bytes themselves are forwarded as they came.
Parts are bounded in number (MAX_PARTS). A form the parser refuses, one that does not end with
its closing boundary, or one past a bound, is a 400 that says what to fix.

`with_field` rewrites one plain field (the `model`, when routing names another) by walking the
delimiters, which cannot occur inside a part: no part is re-encoded. Sans-IO: bytes in, values out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
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
_CRLF2 = b"\r\n\r\n"


@dataclass(slots=True)
class FormFile:
    name: str  # the form field
    filename: str
    content_type: str | None
    size: int = 0


@dataclass(slots=True)
class Form:
    """What the gateway reads of a multipart body: its plain fields and its files' metadata."""

    content_type: str  # the header as the client sent it (with the boundary), for the upstream
    boundary: bytes
    fields: dict[str, str] = field(default_factory=dict)  # the first value of each plain field
    files: list[FormFile] = field(default_factory=list)

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
    return boundary


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
        self.form = Form(content_type or "", boundary_of(content_type))
        self._reader = _Reader(self.form)
        self._parser = MultipartParser(self.form.boundary, self._reader.callbacks())
        self._openers, self._tail = 0, b""

    def feed(self, piece: bytes) -> None:
        # Counted in C before the parser sees the piece (one split across pieces too).
        self._openers += piece.count(_OPENER) + (self._tail + piece[:3]).count(_OPENER)
        self._tail = (self._tail + piece[-3:])[-3:]
        if self._openers > MAX_DELIMITER_STARTS:
            raise bad_request(f"The multipart body has more than {MAX_DELIMITER_STARTS} delimiter-like "
                              "sequences (CRLF followed by '--'); a form has one per part.")
        try:
            self._parser.write(piece)
        except MultipartParseError as exc:
            raise bad_request(f"The multipart body could not be parsed ({_reason(exc)}).") from None
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
        return self.form


def _reason(exc: MultipartParseError) -> str:
    return echoed(str(exc).split(" at index ")[0])


class _Reader:
    """python-multipart's callbacks, collecting into a Form. A callback cannot stop the parser by
    raising through it cleanly, so a bound that is crossed is noted and data is ignored from then on."""

    __slots__ = ("form", "error", "ended", "_headers", "_name", "_value", "_field_name", "_data", "_file", "_size",
                 "_parts")

    def __init__(self, form: Form) -> None:
        self.form = form
        self.error: GatewayError | None = None
        self.ended = False
        self._field_name = ""
        self._data: list[bytes] = []
        self._file: FormFile | None = None
        self._size = 0
        self._parts = 0  # every part, repeated names included (fields keeps one value per name)
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

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._name.lower()
        if name in self._headers:  # two Content-Dispositions: parsers differ on which one names the part
            self._fail(f"A part of the form repeats its '{echoed(_text(name))}' header.")
        self._headers[name] = self._value
        self._name, self._value = b"", b""

    def _headers_done(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            self._fail(f"The form has more than {MAX_PARTS} parts.")
            return
        kind, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            self._fail("Every part of the form needs a 'Content-Disposition: form-data; name=…' header.")
            return
        filename = options.get(b"filename")
        if filename is not None:
            content_type = self._headers.get(b"content-type")
            self._file = FormFile(_text(name), _text(filename), _text(content_type) if content_type else None)
        else:
            self._field_name = _text(name)
            if self._field_name in READ_FIELDS and self._field_name in self.form.fields:
                self._fail(f"The form field '{self._field_name}' appears more than once; send it once.")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        self._size += end - start
        if self._file is None:
            if self._size > MAX_FIELD_BYTES:
                self._fail(f"The form field '{echoed(self._field_name)}' is larger than {MAX_FIELD_BYTES} bytes.")
                return
            self._data.append(data[start:end])

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
            self.form.fields.setdefault(self._field_name, value)

    def _end(self) -> None:
        self.ended = True

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = bad_request(message)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def with_field(body: bytes, boundary: bytes, name: str, value: str) -> bytes:
    """`body` (a form `parse_form` accepted) with plain field `name` set to `value`: the first
    such part's data replaced, or a part added in front when there is none. Other parts' bytes
    are kept as they are."""
    delimiter = b"--" + boundary
    new = value.encode()
    span = _field_span(body, delimiter, name)
    if span is not None:
        return body[:span[0]] + new + body[span[1]:]
    first = body.find(delimiter)
    part = delimiter + f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + new + b"\r\n"
    return body[:first] + part + body[first:]


def field_value(body: bytes, boundary: bytes, name: str) -> str | None:
    """The value of plain field `name` of `body` (a form `parse_form` accepted), or None. Found
    by walking the delimiters (C searches), not by parsing the upload again: a form's file
    parts are most of it."""
    span = _field_span(body, b"--" + boundary, name)
    return body[span[0]:span[1]].decode("utf-8", "replace") if span is not None else None


def _field_span(body: bytes, delimiter: bytes, name: str) -> tuple[int, int] | None:
    """Where the data of the first plain field `name` is in `body`, or None."""
    pos = body.find(delimiter)
    while pos >= 0:
        head_start = pos + len(delimiter) + 2  # past the delimiter's CRLF
        head_end = body.find(_CRLF2, head_start)
        following = body.find(b"\r\n" + delimiter, head_end)
        if head_end < 0 or following < 0:
            break
        if _names_field(body[head_start:head_end], name):
            return head_end + 4, following
        pos = following + 2
    return None


def _names_field(headers: bytes, name: str) -> bool:
    """True if these part headers name plain field `name` (no filename)."""
    for line in headers.split(b"\r\n"):
        header, _, rest = line.partition(b":")
        if header.strip().lower() == b"content-disposition":
            _, options = parse_options_header(rest.strip())
            return options.get(b"name") == name.encode() and b"filename" not in options
    return False
