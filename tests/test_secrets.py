"""tollway.core.security.secrets: what an upstream can make the gateway say is scrubbed, and nothing else is touched."""
from __future__ import annotations

import msgspec

from tollway.core.config import OutlierDetection, Provider
from tollway.core.errors import GatewayError
from tollway.core.routing.health import MemberHealth
from tollway.core.security.secrets import MAX_SECRETS, KnownSecrets, configured_secrets, retry_headers, scrubbed

FOREIGN = ("AKIAZ7HOSTILEFOREIGN", "sk-proj-hostileUnknown4Qx9Lm2Vb7Nc0", "Bearer hOstIle.opaque-token_9f8e")


def test_configured_secrets_outlive_any_number_of_rotated_tokens() -> None:
    secrets = KnownSecrets(["7d2e9b4c1a8f3e6d5c0b9a8f7e6d5c4b"])  # an Azure key: no shape to match
    for i in range(MAX_SECRETS * 2):
        secrets.add(f"ASIAROTATED{i:09d}", f"session-token-{i:09d}")
    body = b'{"echo": "7d2e9b4c1a8f3e6d5c0b9a8f7e6d5c4b"}'
    assert b"7d2e9b4c" not in secrets.redact(body)
    assert "7d2e9b4c" not in secrets.scrub("key 7d2e9b4c1a8f3e6d5c0b9a8f7e6d5c4b")


def test_a_reload_replaces_the_configured_secrets_but_keeps_fetched_ones() -> None:
    secrets = KnownSecrets(["old-configured-key-1"])
    secrets.add("fetched-token-abcdef")
    secrets.configure(["new-configured-key-2"])
    assert secrets.redact(b"new-configured-key-2 fetched-token-abcdef") == b"*** ***"


def test_an_answer_whose_error_is_null_is_relayed_byte_for_byte() -> None:
    """Every Responses object has "error": null; its text may quote keys and say 'basic'."""
    secrets = KnownSecrets(["sk-held-provider-key-0042"])
    body = (b'{"id":"resp_1","error":null,"output":[{"type":"message","content":[{"type":"output_text",'
            b'"text":"OpenAI(api_key=\\"sk-example-in-docs\\") with a basic Bearer token"}]}]}')
    assert secrets.redact(body) == body
    event = b"event: response.completed\ndata: " + body + b"\n\n"
    assert secrets.redact(event) == event


def test_an_error_object_in_an_answer_or_a_stream_is_scrubbed_by_shape_too() -> None:
    secrets = KnownSecrets(["sk-held-provider-key-0042"])
    error = {"message": " ".join(FOREIGN) + " sk-held-provider-key-0042", "type": FOREIGN[0], "code": FOREIGN[1]}
    body = msgspec.json.encode({"error": error})
    stream = b'data: {"choices":[]}\n\ndata: ' + body + b"\n\n"
    for relayed in (secrets.redact(body), secrets.redact(stream)):
        assert all(f.encode() not in relayed for f in (*FOREIGN, "sk-held-provider-key-0042")), relayed
    assert secrets.redact(stream).startswith(b'data: {"choices":[]}\n\n')  # the rest is untouched


def test_every_field_of_an_upstream_error_is_scrubbed_and_retry_after_clamped() -> None:
    secrets = KnownSecrets(["held-aws-secret-access-key/abc+def"])
    err = GatewayError(429, "denied for held-aws-secret-access-key/abc+def " + FOREIGN[0], FOREIGN[1], FOREIGN[2],
                       "x-api-key: zzzzzzzzzz", [("retry-after", "99999999"), ("x-leak", FOREIGN[1])])
    out = scrubbed(err, secrets, 1_700_000_000.0)
    text = " ".join(str(v) for v in (out.message, out.type, out.code, out.param, out.headers))
    assert all(f not in text for f in (*FOREIGN, "held-aws-secret", "zzzzzzzzzz"))
    assert dict(out.headers) == {"retry-after": "3600", "retry-after-ms": "3600000"}
    assert retry_headers([("retry-after", "soon")], 0.0) == []


def test_only_header_values_whose_names_carry_secrets_are_secrets() -> None:
    provider = Provider(name="p", schema="openai", base_url="http://x", api_key="sk-configured-0042",
                        headers={"anthropic-version": "2023-06-01", "x-api-key": "custom-secret-0042",
                                 "x-team-token": "team-token-0042"})
    assert set(filter(None, configured_secrets(provider))) == {"sk-configured-0042", "custom-secret-0042",
                                                               "team-token-0042"}


def test_a_probe_that_ends_without_a_verdict_lets_the_next_request_probe() -> None:
    """A cancelled probe (a client that left) must not leave its member unusable for ever."""
    health = MemberHealth(OutlierDetection(consecutive_failures=1, cool_down=1.0))
    health.failure(0.0)  # ejected until 1.0
    health.begin(2.0)  # the probe after the cool-down
    assert not health.available(2.0)
    health.abandon()
    assert health.available(2.0)


def test_a_secret_echoed_json_escaped_is_masked_too() -> None:
    """An AWS secret's "/" may come back as "\\/" inside a JSON string."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    secrets = KnownSecrets([secret])
    echoed = b'{"text": "' + secret.replace("/", "\\/").encode() + b'"}'
    assert b"wJalrXUtnFEMI" not in secrets.redact(echoed)


def test_credentials_in_a_base_url_are_secrets() -> None:
    provider = Provider(name="p", schema="openai", base_url="https://svc-user:svc-pass-0042@llm.internal/v1")
    assert {"svc-user", "svc-pass-0042"} <= set(filter(None, configured_secrets(provider)))


def test_connection_urls_never_show_their_password_whatever_it_holds():
    from tollway.core.security.urls import redact_url, url_address, url_passwords
    for url, password in [("postgresql://app:s3cr3t/x@db:5432/tollway", "s3cr3t/x"),
                          ("postgresql://app:1234/5678@db/tollway", "1234/5678"),
                          ("postgresql://app:a?b#c@db/tollway", "a?b#c"),
                          ("postgresql://db/t?user=a&password=hunter2", "hunter2"),
                          ("redis://:pw%2Fx@host:6379/0", "pw%2Fx")]:
        assert password not in redact_url(url) and password not in url_address(url, 5432), url
        assert password in url_passwords(url)
    assert url_address("postgresql://app:s3cr3t/x@db:5432/tollway", 5432) == "db:5432/tollway"
    # A query parameter named for a secret: libpq's sslpassword (the client key's passphrase) and the like.
    url = "postgresql://app:pw@db/t?sslmode=require&sslpassword=TlsKeyPass&auth_token=tok-123&clientSecret=cs9&x=1"
    assert redact_url(url) == ("postgresql://app:***@db/t?sslmode=require&sslpassword=***&auth_token=***"
                               "&clientSecret=***&x=1")
    assert {"TlsKeyPass", "tok-123", "cs9"} <= url_passwords(url) and "1" not in url_passwords(url)
    assert redact_url("postgresql://postgres@127.0.0.1:5432/t") == "postgresql://postgres@127.0.0.1:5432/t"


def test_a_client_sending_a_held_secret_does_not_get_it_into_the_access_log_line() -> None:
    from types import SimpleNamespace

    from tollway.core.errors import ECHO_LIMIT
    from tollway.gateway.exchange import Exchange
    key, token = "sk-proj-heldKey-Ab3Cd5Ef7Gh9", "FwoGZXIvYXdzEHeldSessionToken/Ab3+Cd5/Ef7+Gh9/Ij1+Kl3=="
    secrets = KnownSecrets([key, token])
    ex = Exchange(key, "chat")  # a client's x-request-id
    ex.model = "x" * (ECHO_LIMIT - 20) + token  # cut mid-token after ECHO_LIMIT characters
    ex.scope = SimpleNamespace(path=f"/v1/{key}/chat/completions", client="127.0.0.1:5")
    line = msgspec.json.encode(ex.log_record(secrets)).decode()
    for secret in (key, token):
        assert not any(secret[i:i + 12] in line for i in range(len(secret) - 11)), line
    record = ex.log_record(secrets)
    assert record["request_id"] == "***" and record["path"] == "/v1/***/chat/completions"
    assert record["model"] == "x" * (ECHO_LIMIT - 20) + "***"
    assert secrets.mask("gpt-4o") == "gpt-4o" and KnownSecrets().mask(key) == key


def test_mask_takes_out_a_gateway_key_by_its_shape_and_leaves_model_names() -> None:
    """A client's own run-time key is no secret the gateway holds (only its digest), so it is
    found by its prefix; ordinary model names, `sk-` ones included, are left as sent."""
    secrets = KnownSecrets(["sk-upstream-0123456789"])
    key = "sk-tw-" + "Ab_9-" * 8 + "xyz"
    assert secrets.mask(key) == "***"
    assert secrets.mask(f"/v1/models/{key}/x") == "/v1/models/***/x"
    assert secrets.mask(f"a {key[:20]} b sk-upstream-0123456789") == "a *** b ***"
    for model in ("gpt-4o-mini", "sk-tw", "sk-t-model", "llama-3-8b"):
        assert secrets.mask(model) == model
