"""The OpenAI endpoints beyond chat (issue 17), through the official openai SDK against a real
gateway and the fake OpenAI upstream (tests/fakes/openai_media.py speaks their wire formats):
`models.retrieve`, `moderations.create`, ... Each is admitted like chat (key, limits, model
permission), leaves a ledger record and metrics, and answers errors in OpenAI's shape."""
from __future__ import annotations

import io
import re
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # the HTTP client under the openai SDK
import openai
import pytest

from tests.fakes.openai_media import TRANSCRIPT, speech_audio
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import OTHER_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash, post_and_leave
from tests.test_e2e_errors import assert_openai_error
from tests.test_ledger_e2e import record_of

TIGHT_KEY = "sk-tollway-tight-key-4444444444"  # two requests a minute
WHISPER_KEY = "sk-tollway-whisper-key-6666666666"  # whisper-1 only


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("endpoints") / "ledger.db"


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, db: Path) -> Iterator[GatewayProcess]:
    base = upstream.url.removesuffix("/v1")
    process = GatewayProcess(f"""
providers:
  - {{name: up, schema: openai, base_url: {upstream.url}, api_key: {UPSTREAM_SECRET}}}
  - {{name: azure, schema: azure_openai, base_url: {base}, api_version: "2025-04-01-preview", api_key: {UPSTREAM_SECRET}}}
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: omni-moderation-latest, targets: [{{provider: up}}]}}
  - {{name: text-moderation, targets: [{{provider: up, model: text-moderation-stable}}]}}
  - {{name: vendor/model-with-slash, targets: [{{provider: up}}]}}
  - {{name: gpt-image-1, targets: [{{provider: up}}]}}
  - name: dall-e-3
    targets: [{{provider: up}}]
    price: {{image: {{"1024x1024/standard": 0.04, "1024x1024/hd": 0.08, "1792x1024": 0.12}}}}
  - {{name: dall-e-2, targets: [{{provider: up}}], price: {{image: {{"*": 0.02}}}}}}
  - {{name: azure-image, targets: [{{provider: azure, model: my-image-deployment}}], price: {{image: {{"*": 0.05}}}}}}
  - {{name: image-alias, targets: [{{provider: up, model: gpt-image-1}}]}}
  - {{name: whisper-1, targets: [{{provider: up}}], price: {{audio_minute: 0.006}}}}
  - {{name: gpt-4o-transcribe, targets: [{{provider: up}}]}}
  - {{name: transcribe-alias, targets: [{{provider: up, model: whisper-1}}], price: {{audio_minute: 0.006}}}}
  - {{name: azure-whisper, targets: [{{provider: azure, model: my-whisper}}], price: {{audio_minute: 0.006}}}}
  - {{name: whisper-hostile, targets: [{{provider: up}}], price: {{audio_minute: 0.006}}}}
  - {{name: tts-1, targets: [{{provider: up}}], price: {{characters: 15}}}}
  - {{name: gpt-4o-mini-tts, targets: [{{provider: up}}]}}
keys:
  - name: test-key
    key_hash: "{key_hash(TEST_KEY)}"
    limits: [{{requests: 100000, per: 1m}}, {{total_tokens: 100000000, per: 1m}}]
  - {{name: narrow-key, key_hash: "{key_hash(OTHER_KEY)}", models: [gpt-4o-mini]}}
  - {{name: tight-key, key_hash: "{key_hash(TIGHT_KEY)}", limits: [{{requests: 2, per: 1m}}]}}
  - {{name: whisper-key, key_hash: "{key_hash(WHISPER_KEY)}", models: [whisper-1]}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
server: {{max_upload_bytes: 2097152}}
""")
    yield process
    process.stop()


@pytest.fixture()
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=TEST_KEY, max_retries=0)


@pytest.fixture()
def narrow(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0)


def metrics_text(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as r:
        return r.read().decode()


# -- GET /v1/models/{id} ----------------------------------------------------------------------

def test_models_retrieve_returns_the_model(client):
    model = client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model" and model.owned_by == "tollway"


def test_models_retrieve_an_id_with_a_slash(client):
    """The SDK sends "vendor/model-with-slash" as one path segment (%2F)."""
    assert client.models.retrieve("vendor/model-with-slash").id == "vendor/model-with-slash"


def test_models_retrieve_a_model_the_key_may_not_see_is_404_model_not_found(narrow):
    assert narrow.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        narrow.models.retrieve("omni-moderation-latest")  # served, but not to this key
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        narrow.models.retrieve("no-such-model")
    assert unknown.value.code == "model_not_found"
    # the same answer as for a model that does not exist: a key cannot probe what others may use
    assert str(caught.value.body).replace("omni-moderation-latest", "no-such-model") == str(unknown.value.body)


def test_models_retrieve_never_echoes_a_held_credential(client):
    """A provider key the gateway holds, pasted as the model id, is masked in the 404 that names it."""
    r = client.models.with_raw_response  # (the SDK raises on 404: read the body from the error)
    with pytest.raises(openai.NotFoundError) as caught:
        r.retrieve(f"x-{UPSTREAM_SECRET}-y")
    assert UPSTREAM_SECRET not in caught.value.response.text and caught.value.code == "model_not_found"


def test_models_retrieve_needs_a_key(gw):
    r = httpx.get(gw.url + "/v1/models/gpt-4o-mini")
    assert r.status_code == 401 and assert_openai_error(r.json(), code="invalid_api_key")


# -- POST /v1/moderations ---------------------------------------------------------------------

def test_moderations_create_is_relayed(gw, client, upstream, db):
    raw = client.moderations.with_raw_response.create(model="omni-moderation-latest",
                                                      input=["I will kill the process", "hello"])
    result = raw.parse()
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence and result.results[0].category_scores.violence == 0.91
    sent = upstream.last("/moderations")
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert sent["body"]["input"] == ["I will kill the process", "hello"]
    row = record_of(db, raw.headers["x-request-id"])
    assert row["api"] == "moderations" and row["status"] == 200 and row["model"] == "omni-moderation-latest"
    assert row["input_tokens"] > 0  # no usage in OpenAI's answer: the input is counted
    assert 'gen_ai_operation_name="moderations"' in metrics_text(gw)


def test_moderations_without_a_model_go_to_openais_default(client, upstream):
    """`model` is optional in OpenAI's API: the gateway routes the body as OpenAI would serve it."""
    result = client.moderations.create(input="hello")
    assert result.results[0].flagged is False
    assert "model" not in upstream.last("/moderations")["body"]


def test_moderations_model_renamed_for_its_target(client, upstream):
    client.moderations.create(model="text-moderation", input="hello")
    assert upstream.last("/moderations")["body"]["model"] == "text-moderation-stable"


def test_moderations_refused_for_a_key_without_the_model(narrow, upstream):
    seen = len(upstream.requests)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        narrow.moderations.create(input="hello")
    assert caught.value.code == "model_not_allowed"
    assert len(upstream.requests) == seen


# -- POST /v1/images/generations ---------------------------------------------------------------

def test_images_generate_gpt_image_is_priced_by_its_tokens(client, upstream, db):
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a red fox", size="1024x1024", n=2)
    result = raw.parse()
    assert len(result.data) == 2 and result.data[0].b64_json and result.usage.output_tokens == 8320
    assert upstream.last("/images/generations")["body"]["prompt"] == "a red fox"
    row = record_of(db, raw.headers["x-request-id"])
    assert row["api"] == "images" and row["input_tokens"] == 50 and row["output_tokens"] == 8320
    assert row["cost_usd"] == pytest.approx((50 * 5.0 + 8320 * 40.0) / 1e6)  # the dataset's token prices
    assert float(raw.headers["x-tollway-cost-usd"]) == pytest.approx(row["cost_usd"])


@pytest.mark.parametrize(("quality", "size", "each"), [("standard", "1024x1024", 0.04), ("hd", "1024x1024", 0.08),
                                                         ("hd", "1792x1024", 0.12)])
def test_images_generate_dall_e_is_priced_per_image_by_size_and_quality(client, db, quality, size, each):
    raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a fox", quality=quality, size=size)
    assert raw.parse().data[0].url.startswith("https://")
    row = record_of(db, raw.headers["x-request-id"])
    assert row["cost_usd"] == pytest.approx(each) and row["output_tokens"] == 0


def test_images_generate_to_azure(client, upstream, db):
    raw = client.images.with_raw_response.generate(model="azure-image", prompt="a fox", n=3)
    assert len(raw.parse().data) == 3
    sent = upstream.last("/images/generations")
    assert sent["path"] == "/openai/deployments/my-image-deployment/images/generations"
    assert sent["headers"]["api-key"] == UPSTREAM_SECRET and "authorization" not in sent["headers"]
    assert record_of(db, raw.headers["x-request-id"])["cost_usd"] == pytest.approx(0.15)


def test_images_generate_stream_events_are_relayed(client, db):
    stream = client.images.generate(model="gpt-image-1", prompt="a fox", stream=True, partial_images=2)
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert events[-1].usage.output_tokens == 1056
    rows = _latest_records(db, "images", 1)
    assert (rows[0]["input_tokens"], rows[0]["output_tokens"], rows[0]["stream"]) == (50, 1056, 1)


def _latest_records(db: Path, api: str, n: int) -> list[dict]:
    """The last `n` ledger rows of client API `api` (for calls whose response headers the SDK hides)."""
    time.sleep(0.3)  # the ledger writes every 0.05 s
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage_records WHERE api = ? ORDER BY ts DESC LIMIT ?",
                                              (api, n))]


def test_images_errors_are_openai_shaped_and_unknown_models_404(client, narrow):
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="no-such-image-model", prompt="x")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError):
        narrow.images.generate(model="gpt-image-1", prompt="x")


# -- POST /v1/images/edits (multipart) --------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # binary, not UTF-8, with CRLFs in it


def test_images_edit_uploads_the_file_untouched(client, upstream, db):
    raw = client.images.with_raw_response.edit(model="dall-e-2", image=("fox.png", PNG, "image/png"),
                                               prompt="add a hat", n=2, size="512x512")
    assert len(raw.parse().data) == 2
    sent = upstream.last("/images/edits")
    assert sent["body"]["prompt"] == "add a hat" and sent["body"]["model"] == "dall-e-2"
    assert sent["files"] == [{"field": "image", "filename": "fox.png", "content_type": "image/png",
                              "size": len(PNG), "head": PNG[:16]}]
    assert sent["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    row = record_of(db, raw.headers["x-request-id"])
    assert row["api"] == "image_edits" and row["cost_usd"] == pytest.approx(0.04)


def test_images_edit_with_several_images_and_a_renamed_model(client, upstream):
    images = [("a.png", PNG, "image/png"), ("b.png", PNG[:100], "image/png")]
    client.images.edit(model="image-alias", image=images, prompt="merge them")
    sent = upstream.last("/images/edits")
    assert sent["body"]["model"] == "gpt-image-1"  # the target's name, written into the form
    assert [(f["filename"], f["size"]) for f in sent["files"]] == [("a.png", len(PNG)), ("b.png", 100)]


def test_the_model_header_routes_an_upload_and_rewrites_its_form(gw, upstream):
    r = httpx.post(gw.url + "/v1/images/edits", data={"model": "gpt-image-1", "prompt": "x"},
                   files={"image": ("a.png", PNG, "image/png")},
                   headers={"authorization": f"Bearer {TEST_KEY}", "x-tollway-model": "dall-e-2"})
    assert r.status_code == 200 and "url" in r.json()["data"][0]
    sent = upstream.last("/images/edits")
    assert sent["body"]["model"] == "dall-e-2" and sent["files"][0]["size"] == len(PNG)


def test_images_edit_form_errors(gw, upstream):
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    seen = len(upstream.requests)
    r = httpx.post(gw.url + "/v1/images/edits", headers=headers, json={"model": "dall-e-2", "prompt": "x"})
    assert r.status_code == 400 and "multipart/form-data" in assert_openai_error(r.json())["message"]
    r = httpx.post(gw.url + "/v1/images/edits", headers=headers, files={"image": ("a.png", PNG)}, data={"prompt": "x"})
    assert r.status_code == 400 and assert_openai_error(r.json())["param"] == "model"
    r = httpx.post(gw.url + "/v1/images/edits", headers={**headers, "content-type": "multipart/form-data; boundary=b"},
                   content=b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndall-e-2\r\n")
    assert r.status_code == 400 and "closing boundary" in assert_openai_error(r.json())["message"]
    long = "b" * 257
    r = httpx.post(gw.url + "/v1/images/edits", headers={**headers, "content-type": f"multipart/form-data; boundary={long}"},
                   content=f'--{long}\r\nContent-Disposition: form-data; name="model"\r\n\r\ndall-e-2\r\n--{long}--\r\n')
    assert r.status_code == 400 and "70 characters" in assert_openai_error(r.json())["message"]
    many = {f"f{i}": str(i) for i in range(70)}
    r = httpx.post(gw.url + "/v1/images/edits", headers=headers, data={"model": "dall-e-2", **many},
                   files={"image": ("a.png", PNG)})
    assert r.status_code == 400 and "64 parts" in assert_openai_error(r.json())["message"]
    r = httpx.post(gw.url + "/v1/images/edits", headers=headers, data={"model": "dall-e-2", "prompt": "x" * 300_000},
                   files={"image": ("a.png", PNG)})
    assert r.status_code == 400 and "'prompt'" in assert_openai_error(r.json())["message"]
    assert len(upstream.requests) == seen  # none of them reached the upstream


def test_a_malformed_upload_is_refused_before_the_rest_of_it_arrives(gw):
    """The form is parsed as it arrives: a client that declared 1.5 MB and sent a broken first
    piece gets its 400 while it would still be uploading."""
    import socket

    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TEST_KEY}\r\n"
            "content-type: multipart/form-data; boundary=b0\r\ncontent-length: 1500000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head + b"this is not a multipart body" * 100)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400") and b"could not be parsed" in answer


def test_an_upload_past_the_limit_is_413(gw):
    r = httpx.post(gw.url + "/v1/audio/transcriptions", headers={"authorization": f"Bearer {TEST_KEY}"},
                   data={"model": "whisper-1"}, files={"file": ("big.mp3", b"\0" * (2 * 1024 * 1024 + 1))})
    assert r.status_code == 413 and assert_openai_error(r.json(), code="request_too_large")


# -- POST /v1/audio/transcriptions, /v1/audio/translations (multipart) ------------------------

AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 200


def test_transcriptions_create_with_a_file(client, upstream, db):
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("talk.mp3", io.BytesIO(AUDIO)))
    assert raw.parse().text == TRANSCRIPT
    sent = upstream.last("/audio/transcriptions")
    assert sent["files"][0]["size"] == len(AUDIO) and sent["files"][0]["filename"] == "talk.mp3"
    row = record_of(db, raw.headers["x-request-id"])
    assert row["api"] == "transcriptions" and row["cost_usd"] == pytest.approx(9 / 60 * 0.006)  # 9 s at $0.006/min


def test_a_delimiter_look_alike_in_a_file_hides_no_model_field(gw, upstream):
    """`\r\n--BOUNDARY` then other bytes is file data to python-multipart; the x-tollway-model
    rewrite took it for a part (rewriting file bytes) and left the real `model` field, never
    checked against the key, for the upstream to serve. Parsers disagree on such a body (this
    upstream's aiohttp refuses it): it is refused before it reaches one."""
    decoy = b'\r\n--bndXYContent-Disposition: form-data; name="model"\r\n\r\nwhatever'
    body = (b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
            + AUDIO + decoy + b'\r\n--bnd\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n'
            b'--bnd--\r\n')
    headers = {"authorization": f"Bearer {TEST_KEY}", "content-type": "multipart/form-data; boundary=bnd"}
    seen = len(upstream.requests)
    for extra in ({"x-tollway-model": "whisper-1"}, {}):
        r = httpx.post(gw.url + "/v1/audio/transcriptions", content=body, headers={**headers, **extra})
        assert r.status_code == 400 and "line starting with its boundary" in assert_openai_error(r.json())["message"]
    assert len(upstream.requests) == seen
    # Transport padding after a delimiter is a delimiter to every parser: the model is found and rewritten.
    padded = body.replace(decoy, b"").replace(b"\r\n--bnd\r\n", b"\r\n--bnd \t\r\n")
    r = httpx.post(gw.url + "/v1/audio/transcriptions", content=padded, headers={**headers, "x-tollway-model": "whisper-1"})
    assert r.status_code == 200
    sent = upstream.last("/audio/transcriptions")
    assert sent["body"]["model"] == "whisper-1" and sent["files"][0]["size"] == len(AUDIO)


def form_part(boundary: str, name: str, value: str, extra: str = "") -> str:
    return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n{value}\r\n'


def post_whisper_form(gw: GatewayProcess, body: str, content_type: str) -> httpx.Response:
    """A transcription form sent by a key that may use whisper-1 only."""
    return httpx.post(gw.url + "/v1/audio/transcriptions", content=body.encode(),
                      headers={"authorization": f"Bearer {WHISPER_KEY}", "content-type": content_type})


def test_a_form_in_a_file_under_a_second_boundary_reaches_no_upstream(gw, upstream):
    """`boundary=AAA; boundary=BBB`: the gateway read the form by BBB (python-multipart keeps the
    last), aiohttp upstream by AAA (the first), from a complete AAA form carried in a file part's
    bytes: whisper-1 was authorized and billed, gpt-4o-transcribe served. The upstream now gets
    the boundary the gateway parsed, and a content type giving it twice is refused."""
    inner = form_part("AAA", "model", "gpt-4o-transcribe") + form_part("AAA", "file", "RIFF", '; filename="b.wav"')
    body = (form_part("BBB", "model", "whisper-1") + form_part("BBB", "file", f"RIFF\r\n{inner}--AAA--", '; filename="a.wav"')
            + "--BBB--\r\n")
    seen = len(upstream.requests)
    for twice in ("boundary=AAA; boundary=BBB", "BOUNDARY=AAA; boundary=BBB", "boundary*=AAA; boundary=BBB",
                  'x="a;boundary=AAA"; boundary=BBB'):  # (aiohttp splits at a quoted ';' too)
        r = post_whisper_form(gw, body, f"multipart/form-data; {twice}")
        assert r.status_code == 400 and "content-type" in assert_openai_error(r.json())["message"], twice
    assert len(upstream.requests) == seen
    r = post_whisper_form(gw, body, "multipart/form-data; boundary=BBB; charset=utf-8")
    assert r.status_code == 200
    sent = upstream.last("/audio/transcriptions")
    assert sent["headers"]["content-type"] == "multipart/form-data; boundary=BBB"
    assert sent["body"]["model"] == "whisper-1" and [f["filename"] for f in sent["files"]] == ["a.wav"]


@pytest.mark.parametrize(("extra", "said"), [
    ('; filename=""', "filename"), ('; filename="m.txt"', "filename"), ("; filename*=UTF-8''m.txt", "filename"),
    ("\r\nContent-Transfer-Encoding: base64", "Content-Transfer-Encoding"),
    ("\r\nContent-Type: text/plain; charset=utf-16", "charset")])
def test_a_model_field_other_parsers_read_apart_is_refused(gw, upstream, extra, said):
    """A `model` part with `filename=""` was a file to the gateway (so not a second `model` to
    its appears-once check) and a plain value to aiohttp and Go, which serve the first `model`.
    A routing field with a filename, or an encoding an upstream decodes (aiohttp does both) where
    the gateway reads the bytes as they are, is refused, saying why."""
    value = "Z3B0LTRvLXRyYW5zY3JpYmU=" if "base64" in extra else "gpt-4o-transcribe"  # (base64 of the model)
    body = (form_part("b", "model", value, extra) + form_part("b", "model", "whisper-1")
            + form_part("b", "file", "RIFF", '; filename="a.wav"') + "--b--\r\n")
    seen = len(upstream.requests)
    r = post_whisper_form(gw, body, "multipart/form-data; boundary=b")
    message = assert_openai_error(r.json())["message"]
    assert r.status_code == 400 and "'model'" in message and said in message
    assert len(upstream.requests) == seen


def test_a_part_naming_its_field_twice_is_refused(gw, upstream):
    """aiohttp takes `name*=` before `name` (python-multipart ignores it): the part would be a
    second `model` upstream."""
    body = (form_part("b", "prompt", "gpt-4o-transcribe", "; name*=UTF-8''model") + form_part("b", "model", "whisper-1")
            + form_part("b", "file", "RIFF", '; filename="a.wav"') + "--b--\r\n")
    seen = len(upstream.requests)
    r = post_whisper_form(gw, body, "multipart/form-data; boundary=b")
    assert r.status_code == 400 and "name*=" in assert_openai_error(r.json())["message"]
    assert len(upstream.requests) == seen


def test_transcriptions_priced_by_tokens_for_gpt_4o_transcribe(client, db):
    raw = client.audio.transcriptions.with_raw_response.create(model="gpt-4o-transcribe", file=("a.mp3", AUDIO))
    assert raw.parse().text == TRANSCRIPT
    row = record_of(db, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (14, 11)
    assert row["cost_usd"] == pytest.approx((14 * 2.5 + 11 * 10.0) / 1e6)


def test_transcriptions_as_text_and_verbose_json(client, upstream, db):
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", AUDIO),
                                              response_format="text") == TRANSCRIPT + "\n"
    raw = client.audio.transcriptions.with_raw_response.create(model="transcribe-alias", file=("a.mp3", AUDIO),
                                                               response_format="verbose_json")
    assert raw.parse().duration == 8.47
    assert upstream.last("/audio/transcriptions")["body"]["model"] == "whisper-1"


def _unpriced(gw: GatewayProcess, model: str) -> float:
    found = re.search(rf'^tollway_unpriced_requests_total{{model="{model}"}} (\S+)$', metrics_text(gw), re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("usage", ["seconds", "tokens"])
def test_a_transcript_usage_the_meter_cannot_read_is_unpriced_not_free(client, gw, usage):
    # docs/ledger.md: unpriced usage never silently costs $0. The answer is relayed as it came.
    before = _unpriced(gw, "whisper-hostile")
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-hostile", file=("a.mp3", AUDIO),
                                                               prompt=usage)
    assert raw.parse().text == TRANSCRIPT
    line = gw.log_line(raw.headers["x-request-id"])
    assert line["status"] == 200 and line["cost_usd"] is None, line
    assert _unpriced(gw, "whisper-hostile") == before + 1
    # A transcript asked for as text says nothing of its length: recorded with no usage, as before.
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-hostile", file=("a.mp3", AUDIO),
                                                               response_format="text")
    assert gw.log_line(raw.headers["x-request-id"])["cost_usd"] == 0.0
    assert _unpriced(gw, "whisper-hostile") == before + 1


def test_transcriptions_stream_events_are_relayed_as_they_come(client, db):
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.mp3", AUDIO), stream=True))
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == TRANSCRIPT
    assert events[-1].type == "transcript.text.done" and events[-1].usage.total_tokens == 25


def test_translations_and_azure_transcriptions(client, upstream):
    assert client.audio.translations.create(model="whisper-1", file=("a.mp3", AUDIO)).text == TRANSCRIPT
    assert upstream.last()["path"] == "/v1/audio/translations"
    assert client.audio.transcriptions.create(model="azure-whisper", file=("a.mp3", AUDIO)).text == TRANSCRIPT
    sent = upstream.last()
    assert sent["path"] == "/openai/deployments/my-whisper/audio/transcriptions"
    assert sent["headers"]["api-key"] == UPSTREAM_SECRET and sent["body"]["model"] == "my-whisper"  # the deployment


# -- POST /v1/audio/speech ---------------------------------------------------------------------

def test_speech_audio_is_relayed_as_it_arrives(gw, client, db):
    text = "Hello from the gateway."
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text) as resp:
        assert resp.headers["content-type"] == "audio/mpeg"
        pieces = list(resp.iter_bytes())
        request_id = resp.headers["x-request-id"]
    assert b"".join(pieces) == b"".join(speech_audio(text))  # every byte, none of them UTF-8-checked
    row = record_of(db, request_id)
    assert row["api"] == "speech" and row["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)
    assert 'gen_ai_operation_name="speech"' in metrics_text(gw)


def test_speech_as_sse_events_is_priced_by_its_tokens(client, db):
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="alloy", input="Hi there",
                                                            stream_format="sse") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        request_id = resp.headers["x-request-id"]
    assert '"speech.audio.delta"' in events[0] and '"speech.audio.done"' in events[-1]
    row = record_of(db, request_id)
    assert (row["input_tokens"], row["output_tokens"], row["stream"]) == (7, 120, 1)
    assert row["cost_usd"] == pytest.approx((7 * 0.6 + 120 * 12.0) / 1e6)  # the dataset's gpt-4o-mini-tts prices


def _speech_left_early(gw: GatewayProcess, text: str, request_id: str) -> None:
    """Ask for speech over a raw socket, take the response's head, and leave."""
    head = post_and_leave(gw.port, "/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": text}, request_id)
    assert head.startswith(b"HTTP/1.1 200")  # the answer began, then the client leaves


def test_speech_cut_off_by_a_client_that_leaves_is_still_charged(gw, db):
    """The upstream bills the speech it was asked for, however little of it the client heard:
    the watchdog's cancellation skipped the meter, and the 499 was recorded at cost 0."""
    text = "stall, then the rest of a long sentence"
    _speech_left_early(gw, text, "speech-left")  # (the first piece of audio came)
    row = record_of(db, "speech-left")
    assert (row["status"], row["error"]) == (200, "client_closed")  # the status the client got, and why it ended
    assert row["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)


def test_speech_whose_first_piece_is_held_back_keeps_the_status_the_client_got(gw, db):
    # The first piece could begin the upstream's key, so the relay held it for the next one; the
    # 200 had gone out all the same. The answer was taken for not started: a 499 in the ledger
    # and the access log, and no time to first byte.
    text = "stall-held, then the rest"
    _speech_left_early(gw, text, "speech-held-left")
    row = record_of(db, "speech-held-left")
    assert (row["status"], row["error"]) == (200, "client_closed")
    assert row["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)
    line = gw.log_line("speech-held-left")
    assert line["status"] == 200 and line["ttfb_ms"] is not None


def test_speech_audio_never_carries_the_upstream_credential(client):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="leak") as resp:
        audio = b"".join(resp.iter_bytes())
    assert UPSTREAM_SECRET.encode() not in audio and audio.startswith(b"\xff\xfb")


def test_speech_audio_never_carries_a_credential_split_across_chunks(client):
    # Chunks were masked one by one: a secret whose halves came in two chunks went out whole.
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="leak-split") as resp:
        audio = b"".join(resp.iter_bytes())
    assert UPSTREAM_SECRET.encode() not in audio and audio.startswith(b"\xff\xfb")
    assert UPSTREAM_SECRET.encode()[:10] not in audio and b"***" in audio


def test_an_upstream_error_on_an_upload_comes_back_as_the_provider_said(gw):
    r = httpx.post(gw.url + "/v1/audio/transcriptions", headers={"authorization": f"Bearer {TEST_KEY}"},
                   data={"model": "whisper-1"}, files={"not_file": ("a.txt", b"x")})
    assert r.status_code == 400
    assert assert_openai_error(r.json(), kind="invalid_request_error")["param"] == "file"


# -- limits -------------------------------------------------------------------------------------

def test_the_new_endpoints_draw_on_the_keys_limits(gw, upstream):
    tight = openai.OpenAI(base_url=gw.url + "/v1", api_key=TIGHT_KEY, max_retries=0)
    tight.images.generate(model="dall-e-2", prompt="x")
    tight.audio.transcriptions.create(model="whisper-1", file=("a.mp3", AUDIO))
    seen = len(upstream.requests)
    with pytest.raises(openai.RateLimitError) as caught:
        tight.moderations.create(input="x")
    assert caught.value.code == "rate_limit_exceeded" and "retry-after" in caught.value.response.headers
    with pytest.raises(openai.RateLimitError):
        tight.audio.transcriptions.create(model="whisper-1", file=("a.mp3", AUDIO))
    assert len(upstream.requests) == seen


# -- unknown paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/images/variations", "/v1/fine_tuning/jobs", "/v1/nope"])
def test_unknown_v1_paths_are_404_naming_the_path(gw, path):
    r = httpx.post(gw.url + path, headers={"authorization": f"Bearer {TEST_KEY}"}, json={"model": "gpt-4o-mini"})
    assert r.status_code == 404
    err = assert_openai_error(r.json(), code="unknown_url")
    assert path in err["message"]
