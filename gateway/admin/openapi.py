"""The OpenAPI 3.1 description of every /admin/* endpoint (`GET /admin/openapi.json`).

Request bodies are the JSON Schemas msgspec makes of the structs the handlers decode
(tollway.core.tenancy.inputs), so the description cannot drift from what is accepted;
answers are described by hand after the views (tollway.core.tenancy.records). Every
operation may answer 401 (no admin credential), 404 (`admin_not_configured`) and 429 (the
per-credential rate limit); each also lists what its handler can refuse with.
tests/test_admin_openapi.py holds the gateway to this document.
"""
from __future__ import annotations

from typing import Any

import msgspec

from tollway.core.ledger.record import UsageRecord
from tollway.core.ledger.report import DIMENSIONS, INT_SUMS
from tollway.core.ledger.rollup import SUMS
from tollway.core.tenancy import inputs
from tollway.core.tenancy.inputs import NAME, NAME_RULE, KeyCreate, KeyPatch, Rotate, TeamCreate, TeamPatch
from tollway.gateway.admin.call import MAX_ADMIN_BODY
from tollway.gateway.admin.spend import MAX_LIST

Schema = dict[str, Any]
_REF = "#/components/schemas/{name}"

_STATUS_TEXT = {
    200: "OK", 201: "Created", 400: "A parameter or the body is invalid (`param` names it).",
    401: "No admin credential, or an unknown one.", 403: "This administrator's role may not do this.",
    404: "No such item, or the admin API, the key store or the ledger is not configured.",
    409: "The change conflicts: a name in use, a key or team of the config file (read-only), a team with live keys.",
    408: "The body did not arrive in time (server.body_read_timeout).",
    413: f"The body is over {MAX_ADMIN_BODY} bytes.", 429: "Too many admin requests from this credential.",
    503: "The database behind this endpoint is unavailable; retry shortly.",
}


def ref(name: str) -> Schema:
    return {"$ref": _REF.format(name=name)}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], required: list[str] | None = None, closed: bool = True) -> Schema:
    """An object with these properties (all required unless `required` says otherwise)."""
    schema: Schema = {"type": "object", "properties": properties,
                      "required": list(properties) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


_TIME = {"type": "string", "format": "date-time"}
_STRINGS = {"type": "array", "items": {"type": "string"}}


# -- components ------------------------------------------------------------------------------------


def _input_schemas() -> dict[str, Schema]:
    """The request bodies, from the structs the handlers decode (with Limit and Budget), and the
    bounds tollway.core.tenancy.inputs checks after decoding."""
    _, components = msgspec.json.schema_components([KeyCreate, KeyPatch, Rotate, TeamCreate, TeamPatch], ref_template=_REF)
    name = {"type": "string", "pattern": f"^{NAME.pattern}$", "description": NAME_RULE}
    # whole schemas (replacing the struct's) and bounds (added to it), by field
    whole: dict[str, Schema] = {
        "name": name,
        "team": nullable({"type": "string", "minLength": 1, "description": "A team of the config or the API."}),
        "expires_at": nullable({"type": "string", "format": "date-time",
                                "description": "RFC 3339, in the future and before the year 10000 (UTC)."}),
    }
    bounds: dict[str, Schema] = {
        "models": {"minItems": 1, "maxItems": inputs.MAX_MODELS},
        "limits": {"maxItems": inputs.MAX_LIMITS},
        "metadata": {"maxProperties": inputs.MAX_METADATA, "propertyNames": {"minLength": 1, "maxLength": 64}},
        "grace_seconds": {"minimum": 0, "maximum": inputs.MAX_GRACE_SECONDS},
    }
    for struct in ("KeyCreate", "KeyPatch", "Rotate", "TeamCreate", "TeamPatch"):
        props = components[struct]["properties"]
        for field in props:
            if field in whole:
                props[field] = dict(whole[field])
            elif field in bounds:
                props[field] = {**props[field], **bounds[field]}
    components["Budget"]["properties"]["usd"] |= {"minimum": 0}
    return components


def _key(with_secret: bool) -> Schema:
    props: dict[str, Schema] = {
        "object": {"const": "key"}, "id": {"type": "string"}, "name": {"type": "string"},
        "team": nullable({"type": "string"}), "models": _STRINGS, "limits": {"type": "array", "items": ref("Limit")},
        "budget": nullable(ref("Budget")), "metadata": {"type": "object", "additionalProperties": ref("MetaValue")},
        "created_at": nullable(_TIME), "expires_at": nullable(_TIME), "revoked_at": nullable(_TIME),
        "last_used_at": nullable(_TIME), "status": {"enum": ["active", "expired", "revoked"]},
        "source": {"enum": ["api", "config"]}, "rotation_grace_until": nullable(_TIME),
    }
    if with_secret:
        props["key"] = {"type": "string", "pattern": "^sk-tw-", "description": "The key itself, shown this once."}
    return obj(props)


def _team(deleted: bool) -> Schema:
    props: dict[str, Schema] = {
        "object": {"const": "team"}, "name": {"type": "string"}, "models": _STRINGS,
        "limits": {"type": "array", "items": ref("Limit")}, "budget": nullable(ref("Budget")),
        "created_at": nullable(_TIME), "source": {"enum": ["api", "config"]},
    }
    if deleted:
        props["deleted"] = {"const": True}
    return obj(props)


def _page(item: str, cursor: bool = True) -> Schema:
    props: dict[str, Schema] = {"object": {"const": "list"}, "data": {"type": "array", "items": ref(item)}}
    if cursor:
        props |= {"first_id": nullable({"type": "string"}), "last_id": nullable({"type": "string"})}
    return obj(props | {"has_more": {"type": "boolean"}})


def _audit_entry() -> Schema:
    view = {"anyOf": [ref("Key"), ref("Team"), {"type": "null"}]}  # the record before and after the change
    return obj({"object": {"const": "audit_entry"}, "ts": _TIME, "actor": {"type": "string"}, "action": {"type": "string"},
                "target": {"type": "string"}, "team": nullable({"type": "string"}), "before": view, "after": view})


def _usage() -> Schema:
    entry = obj({"id": {"type": "string"}, "scope": {"type": "string"}, "owner": {"type": "string"},
                 "model": nullable({"type": "string"}), "measure": {"type": "string"},
                 "per_seconds": nullable({"type": "number"}), "limit": {"type": "number"}, "used": {"type": "number"},
                 "remaining": {"type": "number"}, "reset_seconds": nullable({"type": "number"})})
    by_owner = {"type": "object", "additionalProperties": {"type": "array", "items": entry}}
    return obj({"object": {"const": "usage"}, "backend": nullable({"type": "string"}),
                "keys": by_owner, "teams": by_owner, "models": by_owner})


def _spend() -> Schema:
    sums = {name: {"type": "integer" if name in INT_SUMS else "number"} for name in SUMS}
    group = {name: nullable({"type": "string"}) for name in DIMENSIONS}
    item = obj(group | sums, required=list(SUMS))
    return obj({"object": {"const": "spend"}, "group_by": {"type": "array", "items": {"enum": list(DIMENSIONS)}},
                "since": _TIME, "until": _TIME, "data": {"type": "array", "items": item}, "total": item})


def _request_record() -> Schema:
    """A ledger record as /admin/requests shows it: the struct's fields, `ts` in RFC 3339."""
    (schema,), components = msgspec.json.schema_components([UsageRecord], ref_template=_REF)
    record: Schema = dict(components[schema["$ref"].rsplit("/", 1)[1]])
    record["properties"] = {**record["properties"], "ts": _TIME, "tags": _STRINGS}
    record["required"] = list(record["properties"])
    record.pop("title", None)
    return record


def _budget_status() -> Schema:
    return obj({"owner": {"enum": ["key", "team"]}, "key": {"type": "string"}, "team": {"type": "string"},
                "budget_usd": {"type": "number"}, "period": {"enum": ["day", "week", "month"]},
                "spent_usd": {"type": "number"}, "remaining_usd": {"type": "number"}, "resets_at": _TIME},
               required=["owner", "budget_usd", "period", "spent_usd", "remaining_usd", "resets_at"])


def _stats_point() -> Schema:
    number, maybe = {"type": "number"}, nullable({"type": "number"})
    return obj({"ts": number, "seconds": number, "requests": number, "requests_per_second": number,
                "errors": number, "error_rate": number, "p50_ms": maybe, "p99_ms": maybe, "ttft_p50_ms": maybe,
                "tokens_per_second": number, "cost_usd": number})


def _stats() -> Schema:
    today = obj({name: nullable({"type": "number"}) for name in
                 ("requests", "errors", "input_tokens", "output_tokens", "cost_usd")})
    return obj({"object": {"const": "stats"}, "interval_seconds": nullable({"type": "number"}),
                "points": {"type": "array", "items": ref("StatsPoint")}, "now": nullable(ref("StatsPoint")),
                "today": nullable(today)})


def _routing() -> Schema:
    until = nullable({"type": "number"})
    endpoint = obj({"address": {"type": "string"}, "healthy": {"type": "boolean"}, "ejected_until": until,
                    "in_flight": nullable({"type": "integer"}), "load": nullable({"type": "number"})})
    provider = obj({"name": {"type": "string"}, "schema": {"type": "string"},
                    "endpoints": {"type": "array", "items": endpoint}})
    target = obj({"provider": {"type": "string"}, "model": {"type": "string"}, "weight": {"type": "number"},
                  "priority": {"type": "integer"}, "healthy": {"type": "boolean"}, "ejected_until": until})
    model = obj({"name": {"type": "string"}, "match": nullable({"type": "string"}),
                 "targets": {"type": "array", "items": target}})
    return obj({"object": {"const": "routing"}, "providers": {"type": "array", "items": provider},
                "models": {"type": "array", "items": model}})


def _error() -> Schema:
    detail = obj({"message": {"type": "string"}, "type": {"type": "string"}, "param": nullable({"type": "string"}),
                  "code": nullable({"type": "string"})})
    return obj({"error": detail})


def components() -> dict[str, Any]:
    schemas: dict[str, Schema] = {
        **_input_schemas(),
        "MetaValue": {"anyOf": [{"type": t} for t in ("string", "integer", "number", "boolean", "null")]},
        "Key": _key(False), "NewKey": _key(True), "Team": _team(False), "DeletedTeam": _team(True),
        "KeyList": _page("Key"), "TeamList": _page("Team"), "AuditEntry": _audit_entry(),
        "AuditList": _page("AuditEntry", cursor=False), "Usage": _usage(), "Spend": _spend(),
        "RequestRecord": _request_record(),
        "RequestList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("RequestRecord")}}),
        "BudgetStatus": _budget_status(),
        "BudgetList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("BudgetStatus")}}),
        "OpenAPI": {"type": "object", "required": ["openapi", "info", "paths"]},
        "Admin": obj({"object": {"const": "admin"}, "name": {"type": "string"},
                      "role": {"enum": ["owner", "team_admin", "viewer"]}, "team": nullable({"type": "string"})}),
        "StatsPoint": _stats_point(), "Stats": _stats(), "Routing": _routing(),
        "Config": obj({"object": {"const": "config"}, "config": {"type": "object"}}),
        "Error": _error(),
    }
    return {"schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An admin credential of the config's admin: or admins:."}}}


# -- operations ------------------------------------------------------------------------------------


def responses(ok: int, body: str, *errors: int) -> dict[str, Any]:
    """`ok` with `body`, and the error answers: these and the ones every admin request can give."""
    out: dict[str, Any] = {str(ok): _json(body, _STATUS_TEXT[ok])}
    for status in sorted({*errors, 401, 404, 429}):
        out[str(status)] = _json("Error", _STATUS_TEXT[status])
    return out


def linked(answers: dict[str, Any], status: int, field: str, param: str, *op_ids: str) -> dict[str, Any]:
    """`answers` with OpenAPI links from the `status` answer's `field` to the operations taking it as `param`."""
    answers[str(status)]["links"] = {op_id: {"operationId": op_id, "parameters": {param: f"$response.body#/{field}"}}
                                     for op_id in op_ids}
    return answers


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": ref(schema)}}}


def operation(op_id: str, summary: str, answers: dict[str, Any], params: list[dict[str, Any]] | None = None,
              request: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": answers}
    if params:
        op["parameters"] = params
    if request is not None:
        op["requestBody"] = request
    return op


_LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 100}, "Items in one answer.")
_AFTER = query("after", {"type": "string"}, "A cursor: the id (or name) of the item the page starts after.")
_INSTANT = {"type": "string", "description": "RFC 3339 time, a date (midnight UTC) or a duration back from now "
                                             "(7d, 12h, 30m)."}
_KEY_ID = path_param("id", {"type": "string", "minLength": 1},
                     "A key's id: key_<24 hex> for a run-time key, config:<name> for one of the config file.")
_TEAM = path_param("name", {"type": "string", "minLength": 1},
                   f"A team's name (a team made through the API: {NAME_RULE}).")
_WRITE = (400, 403, 408, 409, 413, 503)  # the operations that read a body
_KEY_OPS = ("getKey", "updateKey", "rotateKey", "revokeKey", "deleteKey")


def _reports() -> dict[str, Any]:
    spend_params = [query("group_by", {"type": "string"}, f"Comma-separated dimensions: {', '.join(DIMENSIONS)}."),
                    query("since", _INSTANT, "Start of the range (default 7d)."),
                    query("until", _INSTANT, "End of the range (default now).")]
    request_params = [query(n, {"type": "string"}, f"Only this {n}.") for n in ("key", "team", "model")] + [
        query("status", {"type": "integer", "minimum": 100, "maximum": 599}, "Only this HTTP status."),
        query("since", _INSTANT, "Not before."), query("until", _INSTANT, "Not after."), _LIMIT]
    return {
        "/admin/usage": {"get": operation("getUsage", "Every limit's use and what remains", responses(200, "Usage", 503))},
        "/admin/spend": {"get": operation("getSpend", "Spend, grouped", responses(200, "Spend", 400, 503), spend_params)},
        "/admin/requests": {"get": operation("listRequests", "The latest requests, newest first",
                                             responses(200, "RequestList", 400, 503), request_params)},
        "/admin/budgets": {"get": operation("listBudgets", "Calendar budgets: spent, remaining, reset",
                                            responses(200, "BudgetList"))},
    }


def _keys() -> dict[str, Any]:
    list_params = [query("team", {"type": "string"}, "Only this team's keys."),
                   query("q", {"type": "string", "maxLength": 256}, "Only keys whose id, name or team holds this text "
                         "(any case)."),
                   query("include_revoked", {"type": "boolean", "default": False}, "List revoked keys too."), _LIMIT, _AFTER]
    return {
        "/admin/keys": {
            "get": operation("listKeys", "Keys: the config's, then run-time keys by creation",
                             responses(200, "KeyList", 400), list_params),
            "post": operation("createKey", "Make a key (its secret is in this answer only)",
                              linked(responses(201, "NewKey", *_WRITE), 201, "id", "id", *_KEY_OPS),
                              request=body("KeyCreate")),
        },
        "/admin/keys/{id}": {
            "parameters": [_KEY_ID],
            "get": operation("getKey", "One key", responses(200, "Key", 503)),
            "patch": operation("updateKey", "Change a run-time key", responses(200, "Key", *_WRITE), request=body("KeyPatch")),
            "delete": operation("deleteKey", "Revoke a key (the record is kept)", responses(200, "Key", 403, 409, 503)),
        },
        "/admin/keys/{id}/rotate": {
            "parameters": [_KEY_ID],
            "post": operation("rotateKey", "A new secret; the old one works through the grace",
                              responses(200, "NewKey", *_WRITE), request=body("Rotate", required=False)),
        },
        "/admin/keys/{id}/revoke": {
            "parameters": [_KEY_ID],
            "post": operation("revokeKey", "Revoke a key (the record is kept)", responses(200, "Key", 403, 409, 503)),
        },
    }


def _teams() -> dict[str, Any]:
    return {
        "/admin/teams": {
            "get": operation("listTeams", "Teams: the config's, then run-time teams", responses(200, "TeamList", 400),
                             [_LIMIT, _AFTER]),
            "post": operation("createTeam", "Make a team", request=body("TeamCreate"),
                              answers=linked(responses(201, "Team", *_WRITE), 201, "name", "name",
                                             "getTeam", "updateTeam", "deleteTeam")),
        },
        "/admin/teams/{name}": {
            "parameters": [_TEAM],
            "get": operation("getTeam", "One team", responses(200, "Team", 503)),
            "patch": operation("updateTeam", "Change a run-time team", responses(200, "Team", *_WRITE),
                               request=body("TeamPatch")),
            "delete": operation("deleteTeam", "Delete a run-time team with no live keys",
                                responses(200, "DeletedTeam", 403, 409, 503)),
        },
        "/admin/audit": {
            "get": operation("listAudit", "Admin changes, newest first", responses(200, "AuditList", 400, 503),
                             [query("since", _INSTANT, "Not before."), _LIMIT]),
        },
        "/admin/openapi.json": {"get": operation("getOpenAPI", "This document", responses(200, "OpenAPI"))},
    }


def _console() -> dict[str, Any]:
    return {
        "/admin/whoami": {"get": operation("whoAmI", "The administrator this credential is", responses(200, "Admin"))},
        "/admin/stats": {"get": operation("getStats", "This replica's last hour (every 10 s) and the ledger's day",
                                          responses(200, "Stats"))},
        "/admin/routing": {"get": operation("getRouting", "Providers, pool endpoints, models and targets with health",
                                            responses(200, "Routing", 403))},
        "/admin/config": {"get": operation("getConfig", "The config in force, every secret replaced by ***",
                                           responses(200, "Config", 403))},
    }


def document() -> dict[str, object]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tollway admin API", "version": "1",
                 "description": "Operator endpoints: keys, teams, the audit trail, usage, spend and budgets."},
        "security": [{"bearerAuth": []}],
        "paths": {**_reports(), **_keys(), **_teams(), **_console()},
        "components": components(),
    }
