"""GET /admin/usage on a real gateway: the admin credential guards it; it reports every limit."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.harness import ADMIN_KEY, OTHER_KEY, TEST_KEY, GatewayProcess, key_hash


def config(upstream_url: str, admin: bool = True) -> str:
    admin_section = f'admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}' if admin else ""
    return f"""
providers: [{{name: up, schema: openai, base_url: {upstream_url}, api_key: sk-upstream}}]
models:
  - name: gpt-4o-mini
    targets: [{{provider: up}}]
    limits: [{{requests: 10, per: 1m}}]
teams:
  - name: search
    limits: [{{cost_usd: 5, per: 1d}}]
keys:
  - name: app
    key_hash: "{key_hash(TEST_KEY)}"
    team: search
    limits: [{{total_tokens: 10000, per: 1m}}, {{output_tokens: 500, per: 1h, model: gpt-4o-mini}}]
  - name: other
    key_hash: "{key_hash(OTHER_KEY)}"
{admin_section}
"""


def get(url: str, token: str | None) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def admin_gateway(openai_upstream):
    gw = GatewayProcess(config(openai_upstream.url))
    yield gw
    gw.stop()


@pytest.mark.parametrize("token", [None, "wrong", TEST_KEY, OTHER_KEY])
def test_usage_needs_the_admin_credential(admin_gateway, token):
    status, body = get(admin_gateway.url + "/admin/usage", token)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"


def test_usage_reports_every_limit_by_key_team_and_model(admin_gateway):
    req = urllib.request.Request(
        admin_gateway.url + "/v1/chat/completions",
        data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}],
                         "max_tokens": 50}).encode(),
        headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        usage = json.loads(resp.read())["usage"]

    status, body = get(admin_gateway.url + "/admin/usage", ADMIN_KEY)
    assert status == 200 and body["backend"] == "memory"
    app = {(e["measure"], e["model"]): e for e in body["keys"]["app"]}
    tokens = app[("total_tokens", None)]
    assert tokens["limit"] == 10000 and tokens["per_seconds"] == 60
    # used decays as the bucket refills (10000/min), so it is at most what was charged
    assert usage["total_tokens"] - 200 <= tokens["used"] <= usage["total_tokens"]
    assert tokens["remaining"] == pytest.approx(10000 - tokens["used"], abs=1e-3)
    pair = app[("output_tokens", "gpt-4o-mini")]
    assert pair["scope"] == "key_model" and pair["used"] == pytest.approx(usage["completion_tokens"], abs=0.1)
    budget = body["teams"]["search"][0]
    assert budget["measure"] == "cost_usd" and 0 < budget["used"] < 0.001
    model = body["models"]["gpt-4o-mini"][0]
    assert model["measure"] == "requests" and model["used"] == pytest.approx(1, abs=0.05)
    assert "other" not in body["keys"]  # no limits, nothing to report


def test_without_an_admin_section_there_is_no_admin_endpoint(openai_upstream):
    gw = GatewayProcess(config(openai_upstream.url, admin=False))
    try:
        for path in ("/admin/usage", "/admin/keys", "/admin"):  # listed or not: the whole admin API is off
            status, body = get(gw.url + path, ADMIN_KEY)
            assert status == 404, path
            error = body["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "admin_not_configured", None)
            assert "no 'admin:' section" in error["message"] and path in error["message"]
        status, body = get(gw.url + "/v1/nothing", TEST_KEY)  # other unknown paths keep their own 404
        assert (status, body["error"]["code"]) == (404, "unknown_url")
    finally:
        gw.stop()


def test_with_an_admin_section_unknown_admin_paths_are_plain_404s(admin_gateway):
    status, body = get(admin_gateway.url + "/admin/nothing-here", ADMIN_KEY)
    assert (status, body["error"]["code"]) == (404, "unknown_url")


def test_without_a_store_config_keys_are_listed_and_none_can_be_made(admin_gateway):
    status, body = get(admin_gateway.url + "/admin/keys", ADMIN_KEY)
    assert status == 200 and body["object"] == "list"
    assert body["data"] and {k["source"] for k in body["data"]} == {"config"}
    req = urllib.request.Request(admin_gateway.url + "/admin/keys", data=b'{"name": "x"}', method="POST",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    assert caught.value.code == 404
    assert json.loads(caught.value.read())["error"]["code"] == "store_not_configured"
