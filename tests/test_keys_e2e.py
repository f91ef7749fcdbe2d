"""Run-time keys and teams end to end (SQLite): a real gateway, the admin API over HTTP and the
official openai SDK as the client. A key is made, used, rotated (the old one works through
its grace, then fails), revoked (401 saying so); expiry, model and limit scoping; config keys
are read-only; a team admin sees and touches its team only; a viewer writes nothing; every
change is in the audit trail; no answer ever holds a key's digest or (but once) the key."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import ADMIN_KEY, TEST_KEY, UPSTREAM_SECRET, GatewayProcess, key_hash

LEAD_KEY = "sk-tollway-search-lead-admin-000000"
VIEWER_KEY = "sk-tollway-finance-viewer-0000000"


def _config(upstream: str, db: Path, extra: str = "") -> str:
    return f"""
providers: [{{name: up, schema: openai, base_url: {upstream}, api_key: {UPSTREAM_SECRET}}}]
models:
  - {{name: gpt-4o-mini, targets: [{{provider: up}}]}}
  - {{name: gpt-4o, targets: [{{provider: up}}]}}
keys:
  - {{name: alice, key_hash: "{key_hash(TEST_KEY)}", team: search}}
teams: [{{name: search}}]
admin: {{key_hash: "{key_hash(ADMIN_KEY)}"}}
admins:
  - {{name: search-lead, key_hash: "{key_hash(LEAD_KEY)}", role: team_admin, team: search}}
  - {{name: finance, key_hash: "{key_hash(VIEWER_KEY)}", role: viewer}}
store: {{backend: sqlite, path: {db}}}
ledger: {{flush_interval: 0.05}}
{extra}
"""


@pytest.fixture(scope="module")
def upstream(openai_upstream: FakeOpenAI) -> FakeOpenAI:
    return openai_upstream  # (the session's fake OpenAI, tests/conftest.py)


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(_config(upstream.url, tmp_path_factory.mktemp("keys") / "tollway.db"))
    yield process
    process.stop()


Answer = tuple[int, dict]


def call(gw: GatewayProcess, method: str, path: str, body: object = None, token: str = ADMIN_KEY,
         raw: bytes | None = None) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(gw.url + path, data=data, method=method,
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read(), exc.code
    assert b"sha256:" not in text and b"hmac-sha256" not in text, "no answer shows a digest"
    return status, json.loads(text)


def chat(gw: GatewayProcess, key: str, model: str = "gpt-4o-mini") -> int:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


def refusal(gw: GatewayProcess, key: str) -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "invalid_api_key"
    return caught.value.body["message"]


def test_create_use_rotate_revoke(gw: GatewayProcess):
    status, made = call(gw, "POST", "/admin/keys", {"name": "svc-a", "team": "search", "metadata": {"owner": "kim"}})
    assert status == 201, made
    secret = made["key"]
    assert secret.startswith("sk-tw-") and len(secret) >= 6 + 43  # 32 random bytes, base64url
    assert made["object"] == "key" and made["id"].startswith("key_") and made["source"] == "api"
    assert (made["name"], made["team"], made["models"], made["metadata"]) == ("svc-a", "search", ["*"], {"owner": "kim"})
    assert chat(gw, secret) == 200

    status, shown = call(gw, "GET", f"/admin/keys/{made['id']}")
    assert status == 200 and "key" not in shown, "the key is shown only when made"
    assert shown["last_used_at"] is not None

    status, rotated = call(gw, "POST", f"/admin/keys/{made['id']}/rotate", {"grace_seconds": 2})
    assert status == 200 and rotated["id"] == made["id"]
    fresh = rotated["key"]
    assert fresh != secret
    assert chat(gw, fresh) == 200
    assert chat(gw, secret) == 200, "the old key works during the grace"
    time.sleep(2.3)
    assert "rotation" in refusal(gw, secret), "after the grace the old key fails, saying why"
    assert chat(gw, fresh) == 200

    status, revoked = call(gw, "POST", f"/admin/keys/{made['id']}/revoke")
    assert status == 200 and revoked["status"] == "revoked" and revoked["revoked_at"]
    assert refusal(gw, fresh) == "This key was revoked."
    status, again = call(gw, "DELETE", f"/admin/keys/{made['id']}")
    assert status == 200 and again["revoked_at"] == revoked["revoked_at"], "revoking twice changes nothing"
    status, listed = call(gw, "GET", "/admin/keys")
    assert made["id"] not in [k["id"] for k in listed["data"]]
    status, listed = call(gw, "GET", "/admin/keys?include_revoked=true")
    assert made["id"] in [k["id"] for k in listed["data"]], "the record stays"

    status, trail = call(gw, "GET", "/admin/audit?limit=1000")
    mine = [e for e in trail["data"] if e["target"] == made["id"]]
    assert [e["action"] for e in mine] == ["key.revoke", "key.rotate", "key.create"]
    assert {e["actor"] for e in mine} == {"admin"}
    assert mine[0]["before"]["status"] == "active" and mine[0]["after"]["status"] == "revoked"
    assert secret not in json.dumps(trail) and fresh not in json.dumps(trail)


def test_an_answer_holding_a_new_key_is_stored_by_no_cache(gw: GatewayProcess):
    def headers(method: str, path: str, body: object) -> dict[str, str]:
        req = urllib.request.Request(gw.url + path, data=json.dumps(body).encode(), method=method,
                                     headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert "key" in json.loads(r.read())
            return {k.lower(): v for k, v in r.getheaders()}
    made = call(gw, "POST", "/admin/keys", {"name": "svc-cached"})[1]  # (the id, to rotate)
    assert headers("POST", f"/admin/keys/{made['id']}/rotate", {"grace_seconds": 0}).get("cache-control") == "no-store"
    assert headers("POST", "/admin/keys", {"name": "svc-cached-2"}).get("cache-control") == "no-store"


def test_an_expired_key_says_when(gw: GatewayProcess):
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat().replace("+00:00", "Z")
    status, made = call(gw, "POST", "/admin/keys", {"name": "short-lived", "expires_at": soon})
    assert status == 201, made
    assert chat(gw, made["key"]) == 200
    time.sleep(1.8)
    message = refusal(gw, made["key"])
    assert message.startswith("This key expired at ") and made["expires_at"][:19] in message
    status, past = call(gw, "POST", "/admin/keys", {"name": "already-gone", "expires_at": "2001-01-01T00:00:00Z"})
    assert status == 400 and past["error"]["param"] == "expires_at"


def test_a_key_is_held_to_its_models_and_limits(gw: GatewayProcess):
    status, made = call(gw, "POST", "/admin/keys", {"name": "narrow", "models": ["gpt-4o-mini"],
                                                      "limits": [{"requests": 2, "per": "1m"}]})
    assert status == 201, made
    assert chat(gw, made["key"], "gpt-4o") == 403
    assert chat(gw, made["key"]) == 200
    assert chat(gw, made["key"]) == 200
    assert chat(gw, made["key"]) == 429, "its own limit: 2 requests a minute, the 403 counted none"
    status, patched = call(gw, "PATCH", f"/admin/keys/{made['id']}", {"models": ["*"], "limits": []})
    assert status == 200 and patched["models"] == ["*"] and patched["limits"] == []
    assert chat(gw, made["key"], "gpt-4o") == 200, "a change applies at once on this replica"


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "bad name!"}, "name"),
    ({"name": "x", "models": ["no-such-model"]}, "models[0]"),
    ({"name": "x", "limits": [{"requests": 5}]}, "limits[0]"),
    ({"name": "x", "limits": [{"requests": 5, "per": "1 fortnight"}]}, "limits[0].per"),
    ({"name": "x", "budget": {"usd": -1}}, "budget.usd"),
    ({"name": "x", "team": "nobody"}, "team"),
    ({"name": "x", "unexpected": 1}, "unexpected"),  # docs/keys.md: an unknown field's `param` names it
    ({"name": "x", "budget": {"usd": 1, "period": "month", "currency": "EUR"}}, "budget.currency"),
    ({"name": "x", "limits": [{"requests": 5, "per": "1m", "burst": 9}]}, "limits[0].burst"),
    ({"name": "alice"}, None),  # a config key's name: 409
])
def test_bad_bodies_are_refused_naming_the_field(gw: GatewayProcess, body: dict, param: str | None):
    status, error = call(gw, "POST", "/admin/keys", body)
    assert status in (400, 409), error
    assert error["error"]["param"] == param or (param is None and status in (400, 409))
    if body["name"] == "alice":
        assert status == 409 and "config file" in error["error"]["message"]


def test_a_body_too_large_or_not_json_is_refused(gw: GatewayProcess):
    status, error = call(gw, "POST", "/admin/keys", raw=b'{"name": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and error["error"]["code"] == "request_too_large"
    status, error = call(gw, "POST", "/admin/keys", raw=b"{nope")
    assert status == 400 and "JSON" in error["error"]["message"]


@pytest.mark.parametrize(("method", "path", "raw", "param"), [
    ("POST", "/admin/teams", b'{"name": "dup-first", "name": "dup-last"}', "name"),
    ("POST", "/admin/keys", b'{"name": "dup-key", "team": "search", "models": ["gpt-4o"], "team": null}', "team"),
    ("POST", "/admin/keys", b'{"name": "dup-budget", "budget": {"usd": 1}, "budget": null}', "budget"),
    # nested: a reviewer reads a $1 budget, msgspec would keep $1000
    ("POST", "/admin/keys", b'{"name": "dup-usd", "budget": {"usd": 1, "period": "day", "usd": 1000}}', "budget.usd"),
    ("POST", "/admin/keys", b'{"name": "dup-per", "limits": [{"requests": 1, "per": "1m", "requests": 9}]}',
     "limits[0].requests"),
])
def test_a_body_that_repeats_a_field_is_refused_naming_it(gw: GatewayProcess, method: str, path: str, raw: bytes,
                                                           param: str):
    """JSON leaves a repeated name to the reader: msgspec keeps the last, a proxy or a reviewer
    reading the change may take the first. The gateway refuses such a client body (request.py);
    an administrator's change is refused alike, and nothing is made."""
    status, error = call(gw, method, path, raw=raw)
    assert status == 400 and error["error"]["param"] == param, error
    assert "more than once" in error["error"]["message"]
    listed = call(gw, "GET", "/admin/teams?limit=1000")[1]["data"] + call(gw, "GET", "/admin/keys?limit=1000")[1]["data"]
    assert not {"dup-first", "dup-last", "dup-key", "dup-budget", "dup-usd", "dup-per"} & {item["name"] for item in listed}


def test_the_audit_trail_says_has_more_only_when_there_is_more(gw: GatewayProcess):
    """Found: `has_more` was "the page is full", so a page holding exactly the last entries
    said there were more, and a client paging on it asked for a page that was empty."""
    for name in ("audited-1", "audited-2"):  # two entries at least
        assert call(gw, "POST", "/admin/teams", {"name": name})[0] == 201
    status, trail = call(gw, "GET", "/admin/audit?limit=1000")
    entries = len(trail["data"])
    assert status == 200 and 2 <= entries < 1000 and trail["has_more"] is False
    status, whole = call(gw, "GET", f"/admin/audit?limit={entries}")
    assert status == 200 and len(whole["data"]) == entries and whole["has_more"] is False, "nothing more"
    status, short = call(gw, "GET", f"/admin/audit?limit={entries - 1}")
    assert status == 200 and len(short["data"]) == entries - 1 and short["has_more"] is True


def test_a_key_name_is_never_reused(gw: GatewayProcess):
    status, first = call(gw, "POST", "/admin/keys", {"name": "twin"})
    assert status == 201
    status, error = call(gw, "POST", "/admin/keys", {"name": "twin"})
    assert status == 409 and error["error"]["code"] == "conflict" and "twin" in error["error"]["message"]
    assert call(gw, "POST", f"/admin/keys/{first['id']}/revoke")[0] == 200
    status, error = call(gw, "POST", "/admin/keys", {"name": "twin"})
    assert status == 409, "the ledger, limits and budgets of 'twin' are the revoked key's: a new key may not inherit them"


def test_a_team_admin_cannot_learn_of_another_teams_config_keys(upstream: FakeOpenAI, tmp_path: Path):
    extra = f'  - {{name: bob, key_hash: "{key_hash("sk-bob-0000000000000000")}", team: ads}}'
    text = _config(upstream.url, tmp_path / "t.db").replace("teams: [{name: search}]", "teams: [{name: search}, {name: ads}]")
    text = text.replace("team: search}\n", "team: search}\n" + extra + "\n", 1)
    assert "name: bob" in text
    gw = GatewayProcess(text)
    try:
        for method, path in (("GET", "/admin/keys/config:bob"), ("PATCH", "/admin/keys/config:bob"),
                             ("POST", "/admin/keys/config:bob/revoke"), ("DELETE", "/admin/keys/config:bob"),
                             ("GET", "/admin/keys/config:nosuch"), ("PATCH", "/admin/keys/config:nosuch")):
            status, _ = call(gw, method, path, {} if method == "PATCH" else None, token=LEAD_KEY)
            assert status == 404, (method, path)
        assert call(gw, "PATCH", "/admin/keys/config:bob", {}, token=ADMIN_KEY)[0] == 409
        # Names are unique across the gateway, so taking bob's is refused; but the refusal says
        # no more than any taken name would, not that a config key (of another team) holds it.
        status, mine = call(gw, "POST", "/admin/keys", {"name": "search-svc"}, token=LEAD_KEY)
        assert status == 201
        status, taken_here = call(gw, "POST", "/admin/keys", {"name": "search-svc"}, token=LEAD_KEY)
        status_bob, taken_there = call(gw, "POST", "/admin/keys", {"name": "bob"}, token=LEAD_KEY)
        assert status == status_bob == 409
        assert taken_there["error"]["message"] == taken_here["error"]["message"].replace("search-svc", "bob")
        assert "config" not in taken_there["error"]["message"]
        status, owner_sees = call(gw, "POST", "/admin/keys", {"name": "bob"}, token=ADMIN_KEY)
        assert status == 409 and "config file" in owner_sees["error"]["message"]  # the owner is told where
    finally:
        gw.stop()


def test_config_keys_are_listed_and_read_only(gw: GatewayProcess):
    status, listed = call(gw, "GET", "/admin/keys")
    alice = next(k for k in listed["data"] if k["name"] == "alice")
    assert alice["source"] == "config" and alice["id"] == "config:alice"
    for method, path, body in (("PATCH", "/admin/keys/config:alice", {"models": ["gpt-4o"]}),
                               ("POST", "/admin/keys/config:alice/rotate", {}),
                               ("POST", "/admin/keys/config:alice/revoke", None)):
        status, error = call(gw, method, path, body)
        assert status == 409 and "config file" in error["error"]["message"], (method, path)
    assert chat(gw, TEST_KEY) == 200


def test_teams_through_the_api(gw: GatewayProcess):
    status, team = call(gw, "POST", "/admin/teams", {"name": "ads", "models": ["gpt-4o-mini"]})
    assert status == 201 and team["source"] == "api"
    status, made = call(gw, "POST", "/admin/keys", {"name": "ads-svc", "team": "ads"})
    assert status == 201
    assert chat(gw, made["key"], "gpt-4o") == 403, "the team's models bound its keys'"
    assert chat(gw, made["key"]) == 200
    status, error = call(gw, "DELETE", "/admin/teams/ads")
    assert status == 409 and "live key" in error["error"]["message"]
    status, error = call(gw, "PATCH", "/admin/teams/search", {"models": ["gpt-4o"]})
    assert status == 409 and "config file" in error["error"]["message"]
    assert call(gw, "POST", f"/admin/keys/{made['id']}/revoke")[0] == 200
    status, gone = call(gw, "DELETE", "/admin/teams/ads")
    assert status == 200 and gone["deleted"] is True
    assert call(gw, "GET", "/admin/teams/ads")[0] == 404


def test_a_team_admin_sees_and_touches_its_team_only(gw: GatewayProcess):
    call(gw, "POST", "/admin/teams", {"name": "ops"})
    status, theirs = call(gw, "POST", "/admin/keys", {"name": "ops-svc", "team": "ops"})
    assert status == 201
    status, mine = call(gw, "POST", "/admin/keys", {"name": "lead-made"}, token=LEAD_KEY)
    assert status == 201 and mine["team"] == "search", "a team admin's keys go to its team"
    status, error = call(gw, "POST", "/admin/keys", {"name": "elsewhere", "team": "ops"}, token=LEAD_KEY)
    assert status == 403
    for method, path in (("GET", f"/admin/keys/{theirs['id']}"), ("PATCH", f"/admin/keys/{theirs['id']}"),
                         ("POST", f"/admin/keys/{theirs['id']}/revoke"), ("GET", "/admin/teams/ops")):
        status, error = call(gw, method, path, {} if method == "PATCH" else None, token=LEAD_KEY)
        assert status == 404, (method, path, error)
    status, listed = call(gw, "GET", "/admin/keys", token=LEAD_KEY)
    assert {k["team"] for k in listed["data"]} == {"search"}
    status, trail = call(gw, "GET", "/admin/audit", token=LEAD_KEY)
    assert trail["data"] and {e["team"] for e in trail["data"]} == {"search"}
    assert call(gw, "POST", "/admin/teams", {"name": "mine"}, token=LEAD_KEY)[0] == 403
    assert chat(gw, theirs["key"]) == 200, "nothing the team admin tried touched the other team's key"


def test_a_viewer_reads_and_writes_nothing(gw: GatewayProcess):
    status, listed = call(gw, "GET", "/admin/keys", token=VIEWER_KEY)
    assert status == 200 and listed["data"]
    for method, path, body in (("POST", "/admin/keys", {"name": "v"}), ("POST", "/admin/teams", {"name": "v"})):
        status, error = call(gw, method, path, body, token=VIEWER_KEY)
        assert status == 403 and error["error"]["code"] == "admin_forbidden"
    assert call(gw, "GET", "/admin/audit", token=VIEWER_KEY)[0] == 200
    assert call(gw, "GET", "/admin/spend", token=VIEWER_KEY)[0] == 200
    assert call(gw, "GET", "/admin/keys", token=TEST_KEY)[0] == 401, "a gateway key is no admin credential"


def test_admin_requests_are_rate_limited_per_credential(upstream: FakeOpenAI, tmp_path: Path):
    gw = GatewayProcess(_config(upstream.url, tmp_path / "t.db", "server: {admin_requests_per_minute: 5}"))
    try:
        statuses = [call(gw, "GET", "/admin/keys")[0] for _ in range(7)]
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
        assert call(gw, "GET", "/admin/keys", token=VIEWER_KEY)[0] == 200, "another credential has its own"
    finally:
        gw.stop()


def test_run_time_keys_survive_a_restart(upstream: FakeOpenAI, tmp_path: Path):
    config = _config(upstream.url, tmp_path / "t.db")
    gw = GatewayProcess(config)
    try:
        status, made = call(gw, "POST", "/admin/keys", {"name": "durable"})
        assert status == 201
    finally:
        gw.stop()
    again = GatewayProcess(config)
    try:
        assert chat(again, made["key"]) == 200
    finally:
        again.stop()


def test_a_run_time_budget_stops_its_key_and_the_ledger_names_it(gw: GatewayProcess):
    status, made = call(gw, "POST", "/admin/keys", {"name": "thrifty", "budget": {"usd": 0.000001, "period": "day"}})
    assert status == 201 and made["budget"] == {"usd": 0.000001, "period": "day"}
    assert chat(gw, made["key"]) == 200
    deadline = time.monotonic() + 5
    while (status := chat(gw, made["key"])) == 200 and time.monotonic() < deadline:
        time.sleep(0.1)  # the charge lands when the first answer is settled
    assert status == 429
    status, budgets = call(gw, "GET", "/admin/budgets")
    mine = next(b for b in budgets["data"] if b.get("key") == "thrifty")
    assert mine["spent_usd"] > mine["budget_usd"]
    time.sleep(0.3)  # the ledger's flush interval is 0.05 s
    status, records = call(gw, "GET", "/admin/requests?key=thrifty")
    assert {r["key_id"] for r in records["data"]} == {made["id"]}
    assert {r["status"] for r in records["data"]} >= {200, 429}


def test_a_team_admin_reads_its_team_spend_only(gw: GatewayProcess):
    call(gw, "POST", "/admin/teams", {"name": "growth"})
    status, other = call(gw, "POST", "/admin/keys", {"name": "growth-svc", "team": "growth"})
    assert chat(gw, other["key"]) == 200 and chat(gw, TEST_KEY) == 200
    time.sleep(0.3)
    status, spend = call(gw, "GET", "/admin/spend?group_by=team&since=1h", token=LEAD_KEY)
    assert status == 200 and [d["team"] for d in spend["data"]] == ["search"]
    status, spend = call(gw, "GET", "/admin/spend?group_by=key&since=1h", token=LEAD_KEY)
    assert "growth-svc" not in [d["key"] for d in spend["data"]] and "alice" in [d["key"] for d in spend["data"]]
    status, records = call(gw, "GET", "/admin/requests?team=growth", token=LEAD_KEY)
    assert records["data"] and {r["team"] for r in records["data"]} == {"search"}, "its team's, whatever it asks"
    status, everyone = call(gw, "GET", "/admin/spend?group_by=team&since=1h", token=VIEWER_KEY)
    assert {"search", "growth"} <= {d["team"] for d in everyone["data"]}


@pytest.mark.parametrize("ident", ["%00", "key_%00", "nope", "key_" + "0" * 24])
def test_an_id_that_is_no_key_is_a_404_without_asking_the_database(gw: GatewayProcess, ident: str):
    for method, path in (("GET", f"/admin/keys/{ident}"), ("POST", f"/admin/keys/{ident}/revoke"),
                         ("GET", f"/admin/teams/{ident}")):
        status, error = call(gw, method, path)
        assert status == 404 and error["error"]["code"] == "not_found", (method, path, error)
    status, error = call(gw, "POST", "/admin/keys", {"name": "x", "team": "a\u0000b"})
    assert status == 400 and error["error"]["param"] == "team"


def _refused_per_worker(answer: Answer, param: str) -> None:
    status, body = answer
    assert status == 400, body
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "--workers 2" in error["message"] and "2x" in error["message"]
    assert "rate_limits.backend: redis" in error["message"]


def test_several_workers_on_the_memory_backend_refuse_a_run_time_budget_or_limit(upstream: FakeOpenAI,
                                                                                  tmp_path: Path):
    """`serve --workers 2` with the memory backend refuses a config whose limits or budgets two
    workers would each enforce on their own (docs/limits.md); the admin API refuses them too,
    rather than letting each worker admit the whole budget."""
    gw = GatewayProcess(_config(upstream.url, tmp_path / "t.db"), workers=2)
    try:
        budget = {"usd": 0.000001, "period": "day"}
        limits = [{"requests": 1, "per": "1m"}]
        _refused_per_worker(call(gw, "POST", "/admin/keys", {"name": "capped", "budget": budget}), "budget")
        _refused_per_worker(call(gw, "POST", "/admin/keys", {"name": "capped", "limits": limits}), "limits")
        _refused_per_worker(call(gw, "POST", "/admin/teams", {"name": "ops", "budget": budget}), "budget")
        _refused_per_worker(call(gw, "POST", "/admin/teams", {"name": "ops", "limits": limits}), "limits")
        status, plain = call(gw, "POST", "/admin/keys", {"name": "plain"})
        assert status == 201
        _refused_per_worker(call(gw, "PATCH", f"/admin/keys/{plain['id']}", {"budget": budget}), "budget")
        _refused_per_worker(call(gw, "PATCH", f"/admin/keys/{plain['id']}", {"limits": limits}), "limits")
        assert call(gw, "PATCH", f"/admin/keys/{plain['id']}", {"budget": None, "limits": []})[0] == 200
        assert call(gw, "POST", "/admin/teams", {"name": "ops"})[0] == 201
        _refused_per_worker(call(gw, "PATCH", "/admin/teams/ops", {"budget": budget}), "budget")
        # (each worker reads the store's changes within 5 s, docs/keys.md: the other may not know
        # "plain" yet, and either may answer)
        # (a connection may reach either worker: both know it once it holds several times running)
        def known() -> bool:
            listed = [k["name"] for k in call(gw, "GET", "/admin/keys")[1]["data"] if k["source"] != "config"]
            return listed == ["plain"] and chat(gw, plain["key"]) == 200

        deadline, running = time.monotonic() + 10, 0
        while running < 8 and time.monotonic() < deadline:
            running = running + 1 if known() else 0
            if not running:
                time.sleep(0.2)
        assert running == 8, "a worker never learned the run-time key"
    finally:
        gw.stop()


def test_several_workers_on_the_memory_backend_refuse_the_stored_keys_they_cannot_bound(upstream: FakeOpenAI,
                                                                                         tmp_path: Path):
    """Keys with a budget or limits (their own or their team's) saved by a one-worker gateway
    (or `tollway keys`) are in the database when `serve --workers 2` starts on it, or arrive
    while it serves: each worker would admit them up to the whole budget, so their requests
    are refused (401 saying why) and the error is logged, once per key and worker."""
    config = _config(upstream.url, tmp_path / "t.db")
    budget = {"usd": 0.000001, "period": "day"}
    one = GatewayProcess(config)  # one worker: the memory backend bounds every key
    two: GatewayProcess | None = None
    try:
        capped = call(one, "POST", "/admin/keys", {"name": "capped", "budget": budget})[1]
        assert call(one, "POST", "/admin/teams", {"name": "ops", "limits": [{"requests": 9, "per": "1m"}]})[0] == 201
        member = call(one, "POST", "/admin/keys", {"name": "member", "team": "ops"})[1]
        plain = call(one, "POST", "/admin/keys", {"name": "plain"})[1]
        two = GatewayProcess(config, workers=2)
        for _ in range(4):  # whichever worker answers
            assert "cannot enforce the budget of this key" in refusal(two, capped["key"])
            assert "cannot enforce the limits of this key's team 'ops'" in refusal(two, member["key"])
            assert chat(two, plain["key"]) == 200
        late = call(one, "POST", "/admin/keys", {"name": "late", "limits": [{"requests": 9, "per": "1m"}]})[1]
        deadline = time.monotonic() + 5  # every process reads the store's changes within 5 s (docs/keys.md)
        # (until a worker reads the change, the key is unknown there: a 401 of another kind)
        while time.monotonic() < deadline and (chat(two, late["key"]) == 200 or
                                               "cannot enforce" not in refusal(two, late["key"])):
            time.sleep(0.2)
        assert "cannot enforce the limits of this key" in refusal(two, late["key"])
        logged = [json.loads(line) for line in two.stderr().splitlines() if "key_unbounded" in line]
        assert {e["key"] for e in logged} == {"capped", "member", "late"}
        assert all(e["level"] == "error" and "rate_limits.backend: redis" in e["message"] for e in logged)
        assert len([e for e in logged if e["key"] == "capped"]) <= 2, "once per worker"
        assert "config reload" not in two.raw_output()
    finally:
        one.stop()
        if two is not None:
            two.stop()


def test_a_clients_own_key_sent_as_model_path_or_request_id_is_in_no_log_line(gw: GatewayProcess):
    """No log line holds a key (docs/keys.md). The access log echoes the client's text (request
    id, path, model), and a client may paste its own run-time key there; the gateway keeps
    only the key's digest, so the key is masked by its shape (sk-tw-...), before the cut."""
    status, made = call(gw, "POST", "/admin/keys", {"name": "pasted-key", "team": "search"})
    assert status == 201
    secret = made["key"]
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0, timeout=10)
    before = gw.stdout_path.stat().st_size
    asked = 0
    for model in (secret, "x" * 190 + secret, f"gpt-4o-mini {secret}"):  # alone, cut mid-key at 200 characters, in text
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        asked += 1
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(secret)  # in the path
    asked += 1
    assert chat(gw, secret) == 200
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers={"x-request-id": secret})
    assert call(gw, "GET", f"/admin/keys/{secret}")[0] == 404
    asked += 3
    deadline = time.monotonic() + 5
    while gw.stdout_path.read_bytes()[before:].count(b"\n") < asked and time.monotonic() < deadline:
        time.sleep(0.05)  # the access log flushes once per event-loop turn
    logged = gw.stdout_path.read_text()[before:] + gw.stderr()
    assert logged.count("\n") >= asked
    body = secret[len("sk-tw-"):]
    pieces = {body[i:i + 8] for i in range(len(body) - 7)}  # no part of it either (a cut copy is a leak)
    assert not [p for p in pieces if p in logged], logged
    assert logged.count("***") >= 5, "masked, not dropped"
