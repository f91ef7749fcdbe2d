"""Multipart bodies (tollway.core.forms) and the unit prices of media answers (pricing.unit_cost):
unit tests; the endpoints that use them are tested end to end in test_e2e_endpoints.py."""
from __future__ import annotations

import pytest

from tollway.core.accounting.pricing import Price, cost
from tollway.core.errors import GatewayError
from tollway.core.forms import MAX_PARTS, FormReader, parse_form
from tollway.ext.usage import Usage

CT = "multipart/form-data; boundary=XyZ"
FILE = b"\x89PNG\r\n--Xy\r\n\r\n" + bytes(range(256))  # a near-boundary, CRLFs and non-UTF-8 bytes


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    extra = "\r\nContent-Type: image/png" if filename else ""
    return f"--XyZ\r\nContent-Disposition: {disposition}{extra}\r\n\r\n".encode() + value + b"\r\n"


BODY = part("model", b"gpt-image-1") + part("image", FILE, "a.png") + part("stream", b"true") + b"--XyZ--\r\n"


def with_field(body: bytes, name: str, value: str) -> bytes:
    """The body rewritten, checked against the form the rewrite says it has."""
    renamed, form = parse_form(body, CT).with_field(body, name, value)
    assert parse_form(renamed, CT) == form
    return renamed


def refused(body: bytes, content_type: str = CT) -> str:
    with pytest.raises(GatewayError) as caught:
        parse_form(body, content_type)
    assert caught.value.status == 400
    return caught.value.message


def test_fields_and_files_are_read_and_the_head_routes():
    form = parse_form(BODY, CT)
    assert form.fields == {"model": "gpt-image-1", "stream": "true"}
    assert [(f.name, f.filename, f.content_type, f.size) for f in form.files] == [("image", "a.png", "image/png", len(FILE))]
    head = form.head()
    assert head.model == "gpt-image-1" and head.stream is True


@pytest.mark.parametrize("size", [1, 7, 64])
def test_a_form_fed_in_pieces_reads_the_same(size):
    reader = FormReader(CT)
    for i in range(0, len(BODY), size):
        reader.feed(BODY[i:i + size])
    assert reader.finish() == parse_form(BODY, CT)


def test_a_bad_form_is_refused_at_the_piece_that_shows_it():
    reader = FormReader(CT)
    many = b"".join(part(f"f{i}", b"v") for i in range(MAX_PARTS + 1))
    with pytest.raises(GatewayError) as caught:
        reader.feed(many)  # the closing boundary (and any file after it) never needs to arrive
    assert f"{MAX_PARTS} parts" in caught.value.message
    with pytest.raises(GatewayError):
        FormReader(CT).feed(b"garbage before any boundary")


@pytest.mark.parametrize("size", [1, 2, 5, 64 * 1024])
def test_a_body_of_near_delimiters_is_refused_early_however_it_is_cut(size):
    """Repeated "\r\n--XyZ-" (a delimiter's start, then a wrong byte) is python-multipart's slow
    path (seconds of the event loop per 30 MB): refused after the first thousand or so, counted
    across pieces, before the parser spends its time on them."""
    hostile = part("image", b"\r\n--XyZ-" * 50_000, "a.png")
    reader, fed = FormReader(CT), 0
    with pytest.raises(GatewayError) as caught:
        for i in range(0, len(hostile), size):
            fed = i
            reader.feed(hostile[i:i + size])
    assert "delimiter-like" in caught.value.message and caught.value.status == 400
    assert fed < 20_000  # within the first ~2,000 of them


def test_an_ordinary_upload_is_far_from_the_delimiter_bound():
    files = b"".join(part(f"image[{i}]", FILE, f"{i}.png") for i in range(16))  # FILE holds a near-delimiter
    body = part("model", b"gpt-image-1") + files + b"--XyZ--\r\n"
    assert len(parse_form(body, CT).files) == 16


@pytest.mark.parametrize("size", [1, 2, 7, 17, 90, 1 << 20])
def test_the_parser_places_each_field_however_the_body_is_cut(size):
    # The offsets come from python-multipart's callbacks: pieces of the body, or (bytes held
    # back as they might have begun a delimiter) its own copy of them.
    body = part("prompt", b"a\r\n--Xy\r\n-") + BODY[:-9] + part("n", b"") + b"--XyZ--\r\n"
    reader = FormReader(CT)
    for i in range(0, len(body), size):
        reader.feed(body[i:i + size])
    form = reader.finish()
    assert {name: body[a:b].decode() for name, (a, b) in form.spans.items()} == form.fields
    assert form.fields["prompt"] == "a\r\n--Xy\r\n-"


def test_with_field_rewrites_only_the_field():
    renamed = with_field(BODY, "model", "dall-e-2")
    assert renamed == BODY.replace(b"gpt-image-1", b"dall-e-2")
    assert parse_form(renamed, CT).files[0].size == len(FILE)
    longer = with_field(BODY, "model", "a-much-longer-model-name")  # the spans after it move with it
    assert parse_form(longer, CT).fields == {"model": "a-much-longer-model-name", "stream": "true"}


def test_with_field_adds_a_missing_field_in_front():
    body = part("image", FILE, "a.png") + b"--XyZ--\r\n"
    added = parse_form(with_field(body, "model", "m"), CT)
    assert added.fields == {"model": "m"} and added.files[0].size == len(FILE)
    padded = b"\r\n" + body  # (a preamble's line break: the part goes after it, before the first delimiter)
    assert parse_form(padded, CT).with_field(padded, "model", "m")[0] == b"\r\n" + with_field(body, "model", "m")


def test_an_empty_field_is_placed_by_its_headers_or_refused_if_it_must_be_rewritten():
    body = part("model", b"") + part("image", FILE, "a.png") + b"--XyZ--\r\n"
    assert parse_form(with_field(body, "model", "m"), CT).fields["model"] == "m"
    # After an empty header no callback says where the headers end: not placed, and not rewritten.
    blind = b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\nX-Empty:\r\n\r\n\r\n' + body[body.index(b"--XyZ", 5):]
    form = parse_form(blind, CT)
    assert form.fields["model"] == "" and "model" not in form.spans
    with pytest.raises(GatewayError) as caught:
        form.with_field(blind, "model", "m")
    assert caught.value.status == 400 and "could not be located" in caught.value.message


def test_a_file_named_model_is_refused():
    # It was a file to the gateway and not the model field; an upstream looking `model` up among
    # all the parts could find the file first (and with `filename=""`, aiohttp and Go take it for a value).
    body = part("model", b"file bytes", "model.txt") + part("model", b"real") + b"--XyZ--\r\n"
    assert "'model' has a filename" in refused(body)


@pytest.mark.parametrize("size", [1, 5, 1024])
def test_a_line_starting_with_the_boundary_inside_a_part_is_refused(size):
    # "\r\n--XyZ" then neither CRLF, "--" nor padding is data to python-multipart (and Go's);
    # the rewrite took it for a delimiter (rewriting file bytes and leaving the real `model`
    # field), aiohttp refuses it, a lenient parser starts a part there. RFC 2046 forbids it.
    decoy = b'\r\n--XyZXYContent-Disposition: form-data; name="model"\r\n\r\nwhatever'
    for body in (part("file", b"RIFF" + decoy, "a.wav") + part("model", b"gpt-4o-transcribe") + b"--XyZ--\r\n",
                 BODY + decoy,  # in the epilogue
                 b"\r\n\r\n--XyZ" + decoy + BODY[5:]):  # after the preamble, in the first part's headers
        reader = FormReader(CT)
        with pytest.raises(GatewayError) as caught:
            for i in range(0, len(body), size):
                reader.feed(body[i:i + size])
            reader.finish()
        assert caught.value.status == 400
    assert "line starting with its boundary" in refused(part("file", b"RIFF" + decoy, "a.wav") + b"--XyZ--\r\n")
    padded = BODY.replace(b"\r\n--XyZ\r\n", b"\r\n--XyZ \t\r\n")  # transport padding: delimiters all the same
    assert parse_form(padded, CT).fields == parse_form(BODY, CT).fields


def test_malformed_and_oversized_forms_are_400():
    assert "multipart/form-data" in refused(BODY, "application/json")
    assert "multipart/form-data" in refused(BODY, "multipart/form-data")  # no boundary
    # python-multipart refuses one over 256 bytes with an exception of another kind: a 500 was the answer
    for length in (71, 257):
        long = "b" * length
        assert "70 characters" in refused(BODY.replace(b"XyZ", long.encode()), f"multipart/form-data; boundary={long}")
    assert parse_form(BODY.replace(b"XyZ", b"b" * 70), f"multipart/form-data; boundary={'b' * 70}").fields
    assert "closing boundary" in refused(BODY[:-9])
    assert "could not be parsed" in refused(b"not a form at all")
    assert "Content-Disposition" in refused(b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n")
    many = b"".join(part(f"f{i}", b"v") for i in range(MAX_PARTS + 1)) + b"--XyZ--\r\n"
    assert f"{MAX_PARTS} parts" in refused(many)
    assert "'prompt'" in refused(part("prompt", b"x" * 300_000) + b"--XyZ--\r\n")
    assert "UTF-8" in refused(part("prompt", b"\xff\xfe") + b"--XyZ--\r\n")
    with pytest.raises(GatewayError):
        parse_form(part("stream", b"yes") + b"--XyZ--\r\n", CT).head()


def test_parts_are_bounded_in_number_even_when_they_share_a_name():
    # One value is kept per name, but every part costs parser work: 200,000 tiny parts named
    # alike were accepted (seconds of CPU on the event loop) before parts were counted.
    assert f"{MAX_PARTS} parts" in refused(part("x", b"1") * (MAX_PARTS + 1) + b"--XyZ--\r\n")
    files = b"".join(part("image[]", FILE, f"{i}.png") for i in range(MAX_PARTS))
    assert len(parse_form(files + b"--XyZ--\r\n", CT).files) == MAX_PARTS


@pytest.mark.parametrize("name", ["model", "stream", "size", "quality"])
def test_a_field_the_gateway_routes_or_prices_by_may_not_repeat(name):
    # The gateway keeps the first value; an upstream parser may keep the last: it would serve
    # (and the gateway bill) a model the key was never checked against.
    message = refused(part(name, b"true") + part(name, b"false") + b"--XyZ--\r\n")
    assert f"'{name}' appears more than once" in message
    other = part("timestamp_granularities[]", b"word") + part("timestamp_granularities[]", b"segment")
    assert parse_form(other + b"--XyZ--\r\n", CT).fields == {"timestamp_granularities[]": "word"}


def test_a_part_with_two_content_dispositions_is_refused():
    # This parser took the last, `with_field` the first: the two disagreed on which part is `model`.
    smuggled = (b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n'
                b'Content-Disposition: form-data; name="junk"\r\n\r\nexpensive\r\n')
    assert "repeats its 'content-disposition' header" in refused(smuggled + part("model", b"cheap") + b"--XyZ--\r\n")


# -- unit prices -------------------------------------------------------------------------------

DALLE = Price(image={"1024x1024/hd": 0.08, "1024x1024": 0.04, "hd": 0.1, "*": 0.02})


@pytest.mark.parametrize(("unit", "each"), [("image:1024x1024/hd", 0.08), ("image:1024x1024/standard", 0.04),
                                            ("image:1792x1024/hd", 0.1), ("image:256x256/standard", 0.02)])
def test_an_image_is_priced_by_the_most_specific_rate(unit, each):
    assert cost(Usage(units=3, unit=unit), DALLE) == pytest.approx(3 * each)


def test_audio_characters_and_search_units_and_tokens_add_up():
    price = Price(input=2.5, output=10.0, audio_minute=0.006, characters=15.0, search_unit=0.002)
    assert cost(Usage(units=90, unit="audio_second"), price) == pytest.approx(0.009)
    assert cost(Usage(units=1000, unit="character"), price) == pytest.approx(0.015)
    assert cost(Usage(units=2, unit="search_unit"), price) == pytest.approx(0.004)
    tokens_and_images = Usage(prompt_tokens=100, completion_tokens=10, total_tokens=110, units=1, unit="image:x/y")
    assert cost(tokens_and_images, price) == pytest.approx((100 * 2.5 + 10 * 10) / 1e6)  # no image rate: tokens only
    assert cost(Usage(units=-5, unit="search_unit"), price) == 0.0  # never negative


def test_the_upstream_gets_the_boundary_the_form_was_parsed_with():
    # The client's header could read otherwise to another parser: a repeated boundary (aiohttp
    # and Go keep the first, python-multipart the last), or one hidden behind a quoted ';'.
    form = parse_form(BODY, "multipart/form-data; boundary=XyZ; charset=utf-8")
    assert form.content_type == "multipart/form-data; boundary=XyZ"  # (a token: as SDKs and curl send it)
    for twice in ("boundary=A; boundary=XyZ", "Boundary=A;boundary=XyZ", "boundary*=A; boundary=XyZ",
                  'x="a;boundary=A"; boundary=XyZ'):
        assert "more than once" in refused(BODY, f"multipart/form-data; {twice}")
    for bad in ('"X\\"yZ"', '" XyZ"', "X<yZ"):  # none RFC 2046 allows (a quote could not be forwarded as is)
        assert "RFC 2046" in refused(BODY, f"multipart/form-data; boundary={bad}")
    spaced = BODY.replace(b"XyZ", b"a b")
    assert parse_form(spaced, 'multipart/form-data; boundary="a b"').content_type == 'multipart/form-data; boundary="a b"'
    coloned = BODY.replace(b"XyZ", b"a:b")  # a tspecial: quoted
    assert parse_form(coloned, 'multipart/form-data; boundary="a:b"').content_type == 'multipart/form-data; boundary="a:b"'


def test_a_read_field_another_parser_would_read_apart_is_refused():
    tail = part("image", FILE, "a.png") + b"--XyZ--\r\n"
    for header in (b'form-data; name="model"; filename=""', b"form-data; name=\"model\"; filename*=UTF-8''m",
                   b'form-data; name="x"; name="model"', b"form-data; name=\"x\"; name*=UTF-8''model"):
        assert refused(b"--XyZ\r\nContent-Disposition: " + header + b"\r\n\r\ngpt-image-1\r\n" + tail)
    for extra in (b"Content-Transfer-Encoding: quoted-printable", b"Content-Type: text/plain; charset=latin-1"):
        assert refused(part("model", b"gpt-image-1").replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n\r\n", 1) + tail)
    # What every parser reads alike passes: an identity encoding, a UTF-8 charset, a file's own filename*.
    fine = (part("model", b"gpt-image-1").replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: 8bit\r\n"
                                                  b"Content-Type: text/plain; charset=UTF-8\r\n\r\n", 1)
            + b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"; filename*=UTF-8''a.png\r\n\r\n"
            + FILE + b"\r\n--XyZ--\r\n")
    assert parse_form(fine, CT).fields == {"model": "gpt-image-1"}
