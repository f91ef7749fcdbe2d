"""Config decoding: field paths and lines in errors, env substitution, semantic checks."""
from __future__ import annotations

import pytest

from tollway.core import config
from tollway.core.config import ConfigError

GOOD = """
providers:
  - name: local-vllm
    schema: openai
    base_url: http://127.0.0.1:8000/v1
    api_key: ${VLLM_KEY}
models:
  - name: llama-3-8b
    targets:
      - provider: local-vllm
        model: meta-llama/Meta-Llama-3-8B-Instruct
keys:
  - name: team-search
    key_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
    models: ["*"]
"""


def test_contract_shape_decodes_with_defaults():
    cfg = config.loads(GOOD, {"VLLM_KEY": "secret"})
    p = cfg.providers[0]
    assert (p.name, p.schema, p.api_key) == ("local-vllm", "openai", "secret")
    assert (p.timeouts.connect, p.timeouts.first_byte, p.timeouts.idle) == (5, 300, 120)
    assert cfg.models[0].targets[0].model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert cfg.keys[0].models == ["*"]
    assert cfg.server.max_body_bytes == 10 * 1024 * 1024 and cfg.server.max_json_depth == 128


def test_missing_env_var_is_named():
    with pytest.raises(ConfigError) as e:
        config.loads(GOOD, {})
    assert "VLLM_KEY" in str(e.value) and e.value.line == 6


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        config.loads(text, {"VLLM_KEY": "k"})
    return e.value


def test_unknown_provider_names_model_path_and_line():
    bad = GOOD.replace("provider: local-vllm", "provider: opnai")
    err = _error(bad)
    assert str(err) == "models.llama-3-8b[0].provider: unknown provider 'opnai' (line 10)"


def test_wrong_type_names_field_and_line():
    err = _error(GOOD.replace("base_url: http://127.0.0.1:8000/v1", "base_url: http://x\n    timeouts: {connect: fast}"))
    assert err.path == "providers.local-vllm.timeouts.connect" and "float" in err.problem and err.line == 6


def test_unknown_field_is_rejected():
    err = _error(GOOD.replace('    models: ["*"]', '    models: ["*"]\n    colour: blue'))
    assert err.path == "keys.team-search.colour" and "unknown field" in err.problem


@pytest.mark.parametrize("mutation,fragment", [
    (("schema: openai", "schema: opnai"), "unknown schema 'opnai'"),
    (("base_url: http://127.0.0.1:8000/v1", "base_url: ftp://x"), "http:// or https://"),
    (('key_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000"', "key_hash: plaintext"),
     "tollway hash-key"),
    (("  - name: llama-3-8b", "  - name: llama-3-8b\n    targets: []\n  - name: llama-3-8b"), "duplicate name"),
])
def test_semantic_errors(mutation, fragment):
    assert fragment in str(_error(GOOD.replace(*mutation)))


def test_invalid_yaml_reports_line():
    err = _error("providers:\n  - name: [unclosed\n")
    assert "invalid YAML" in err.problem and err.line


def test_empty_file():
    assert "empty" in str(_error(""))


# -- files that are no config at all: a ConfigError, never another exception ---------------------
# (`tollway check` would print a traceback, and a reload's exception would end the file watcher)

def test_a_file_that_is_not_utf8_names_the_byte_and_its_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"server:\n  port: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    assert "is not UTF-8: byte 23 is 0xe9" in str(e.value) and e.value.line == 3
    assert [str(err) for err in config.check_file(str(path)).errors] == [str(e.value)]


def test_an_alias_inside_its_own_anchor_is_an_error_not_an_endless_recursion():
    err = _error(GOOD + "providers2: &p\n  - *p\n")
    assert str(err) == "providers2[0]: a YAML alias refers to itself (it is inside its anchor's value) (line 16)"
    assert "refers to itself" in _error(GOOD + "x: &x {a: [1, {b: *x}]}\n").problem


def _alias_bomb(levels: int) -> str:
    """A few hundred bytes whose aliases expand to 9**levels values."""
    lines = [f"l0: &l0 [{','.join('x' * 9)}]"]
    lines += [f"l{n}: &l{n} [{','.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded():
    """Each alias was expanded again: six levels took seconds, seven 17 s and 156 MB, on the
    event loop of a worker reloading it."""
    bomb = _alias_bomb(6)
    assert len(bomb) < 300
    err = _error(GOOD + bomb)
    assert err.problem == ("YAML aliases repeat too much: expanded, they would add more than 100000 values "
                           "to the ones the file writes out")
    assert err.path.startswith("l") and err.line


def test_aliases_that_share_a_part_of_the_config_expand_as_usual():
    shared = "    targets: &t [{provider: local-vllm, model: meta-llama/Meta-Llama-3-8B-Instruct}]\n"
    text = GOOD.replace("    targets:\n      - provider: local-vllm\n        model: meta-llama/Meta-Llama-3-8B-Instruct\n",
                        shared)
    text = text.replace("keys:", "".join(f"  - {{name: m{i}, targets: *t}}\n" for i in range(500)) + "keys:")
    cfg = config.loads(text, {"VLLM_KEY": "k"})
    assert len(cfg.models) == 501 and cfg.models[-1].targets == cfg.models[0].targets


def test_a_config_file_larger_than_4_mib_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(GOOD + "#" * (4 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path), {"VLLM_KEY": "k"})
    assert "is larger than 4 MiB" in str(e.value)


@pytest.mark.parametrize("text,fragment", [
    pytest.param("? [a, b]\n: 1\n", "a key must be a plain value, not a list or mapping (line 1)", id="list key"),
    pytest.param("x: !!python/name:os.system\n", "invalid YAML: could not determine a constructor for the tag",
                 id="unknown tag"),
    pytest.param("x: " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply", id="deep"),
])
def test_yaml_the_config_cannot_hold_is_an_error(text, fragment):
    assert fragment in str(_error(text))


def test_azure_needs_api_version():
    text = GOOD.replace("schema: openai", "schema: azure_openai")
    assert "api_version" in str(_error(text))


# -- every problem, cross-references, suggestions (`tollway check`) ----------------------------

HASH = "sha256:" + "0" * 64
MANY = f"""
providers:
  - name: openai
    schema: openai
    base_url: http://x
  - name: other
    schema: opnai
models:
  - name: gpt-4o
    targets: [{{provider: opneai}}]
  - name: llama
    match: "llama-3-.*"
    targets: [{{provider: openai}}]
keys:
  - name: k
    key_hash: "{HASH}"
    models: [gpt-4o, gpt4o, llama-3-8b, "*"]
    team: serch
teams:
  - name: search
"""


def _found(text: str, **kw) -> list[str]:
    return [str(e) for e in config.check(text, {}, **kw).errors]


def test_check_lists_every_problem_with_path_line_and_suggestion():
    assert _found(MANY) == [
        "providers.other.schema: unknown schema 'opnai' (expected one of: openai, azure_openai, fake, anthropic, bedrock, "
        "vertex, gemini, cohere); did you mean 'openai'? (line 7)",
        "models.gpt-4o[0].provider: unknown provider 'opneai'; did you mean 'openai'? (line 10)",
        "keys.k.models[1]: unknown model 'gpt4o' (no model has this name or a match: for it); did you mean 'gpt-4o'? (line 17)",
        "keys.k.team: unknown team 'serch' (define it under teams:); did you mean 'search'? (line 18)",
    ]
    # loads (serve, reload) refuses the same config, at the first of them
    assert str(_error(MANY)) == _found(MANY)[0]


def test_a_key_may_name_models_served_by_a_match_route_and_the_wildcard():
    ok = MANY.replace("schema: opnai", "schema: fake").replace("opneai", "openai").replace("gpt4o, ", "").replace("serch", "search")
    cfg = config.loads(ok, {})
    assert cfg.keys[0].models == ["gpt-4o", "llama-3-8b", "*"]  # llama-3-8b: served by llama's match:
    assert _found(ok.replace("llama-3-8b", "llama-2-7b")) == [  # no route could ever serve it
        "keys.k.models[1]: unknown model 'llama-2-7b' (no model has this name or a match: for it); did you mean 'llama'? (line 17)"]


@pytest.mark.parametrize("name", ["admin", "cli"])
def test_an_administrator_may_not_take_the_owners_or_the_clis_name(name: str):
    """The audit trail names the owner 'admin' and `tollway keys` 'cli': an administrator of
    either name would make its entries indistinguishable from theirs."""
    text = GOOD + f"""admins:
  - {{name: {name}, key_hash: "sha256:{'1' * 64}", role: viewer}}
"""
    assert f"'{name}' is taken" in str(_error(text))


GATEWAY_KEY_DIGEST = "sha256:" + "0" * 64  # GOOD's key


@pytest.mark.parametrize(("section", "path", "what"), [
    ('admin:\n  key_hash: "%s"\n', "admin.key_hash", "an admin credential"),
    ('admins:\n  - name: x\n    key_hash: "%s"\n    role: viewer\n', "admins[0].key_hash", "an admin credential"),
    ('server:\n  metrics_auth:\n    key_hash: "%s"\n', "server.metrics_auth.key_hash", "the /metrics credential"),
])
def test_an_admin_or_metrics_credential_may_not_be_a_gateway_keys_digest(section: str, path: str, what: str):
    """The gateway key would open the admin API (as the owner, for `admin:`) or /metrics."""
    text = GOOD + section % GATEWAY_KEY_DIGEST
    line = text.count("\n", 0, text.rindex("key_hash")) + 1
    assert _found(text, allow_missing_env=True) == [
        f"{path}: this is a gateway key's digest: {what} must be its own (line {line})"]
    assert _found(GOOD + section % ("sha256:" + "1" * 64), allow_missing_env=True) == []


def test_duplicate_team_names_are_an_error():
    text = MANY + "  - name: search\n"
    assert "teams.search.name: duplicate name 'search' (line 21)" in _found(text)


def test_type_errors_are_all_listed_with_suggestions():
    text = GOOD.replace("    schema: openai", "    shema: openai\n    timeouts: {connect: fast, idle: slow}")
    found = _found(text, allow_missing_env=True)
    assert found == [  # in the order msgspec walks the data (keys in order, then missing ones)
        "providers.local-vllm.shema: unknown field 'shema'; did you mean 'schema'? (line 4)",
        "providers.local-vllm.timeouts.connect: Expected `float`, got `str` (line 5)",
        "providers.local-vllm.timeouts.idle: Expected `float`, got `str` (line 5)",
    ]  # no "missing required field `schema`" besides: the suggestion says it
    assert str(_error(text)) == found[0]  # what loads (serve) reports, as msgspec did alone
    assert _found(text.replace("shema", "colour"), allow_missing_env=True)[-1] == (
        "providers.local-vllm: Object missing required field `schema` (line 3)")  # no near miss: missing


def test_semantic_problems_are_listed_beside_type_errors():
    text = (GOOD.replace("    schema: openai", "    shema: openai\n    timeouts: {connect: fast}")
            .replace("provider: local-vllm", "provider: local-vlm").replace('models: ["*"]', "models: [llama-3-8c]\n    colour: x"))
    assert _found(text, allow_missing_env=True) == [
        "providers.local-vllm.shema: unknown field 'shema'; did you mean 'schema'? (line 4)",
        "providers.local-vllm.timeouts.connect: Expected `float`, got `str` (line 5)",
        "keys.team-search.colour: unknown field 'colour' (line 17)",
        # checked on the repaired config: 'shema' read as 'schema', the bad timeout as its default
        "models.llama-3-8b[0].provider: unknown provider 'local-vlm'; did you mean 'local-vllm'? (line 11)",
        "keys.team-search.models[0]: unknown model 'llama-3-8c' (no model has this name or a match: for it); "
        "did you mean 'llama-3-8b'? (line 16)",
    ]


def test_no_semantic_guesses_when_a_required_part_is_broken():
    text = GOOD.replace("    targets:\n", "    xyz:\n").replace('models: ["*"]', "models: [nothing]")
    # models[0] has no targets: the models section cannot be repaired, so names are not judged
    # against it ('nothing' is not reported: that would be a guess)
    assert _found(text, allow_missing_env=True) == [
        "models.llama-3-8b.xyz: unknown field 'xyz' (line 10)",  # (a block value's first line)
        "models.llama-3-8b: Object missing required field `targets` (line 8)",
    ]
    renamed = GOOD.replace("    targets:\n", "    targetz:\n").replace('models: ["*"]', "models: [nothing]")
    assert _found(renamed, allow_missing_env=True) == [  # a near miss is repaired, so the rest is judged
        "models.llama-3-8b.targetz: unknown field 'targetz'; did you mean 'targets'? (line 10)",
        "keys.team-search.models[0]: unknown model 'nothing' (no model has this name or a match: for it) (line 15)",
    ]


def test_unset_env_is_an_error_unless_allowed_and_then_its_values_are_not_checked():
    text = GOOD.replace('key_hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000"',
                        "key_hash: ${KEY_HASH}")
    strict = config.check(text, {})
    assert [str(e) for e in strict.errors] == [
        "providers.local-vllm.api_key: environment variable VLLM_KEY is not set (line 6)",
        "keys.team-search.key_hash: environment variable KEY_HASH is not set (line 14)",
    ] and strict.config is None
    lenient = config.check(text, {}, allow_missing_env=True)
    assert lenient.errors == [] and lenient.config is not None  # "${KEY_HASH}" is no key hash, but unknown here
    assert [e.problem for e in lenient.unset_env] == ["environment variable VLLM_KEY is not set",
                                                       "environment variable KEY_HASH is not set"]
    # values that do not use the missing variable are still checked
    broken = text.replace("provider: local-vllm", "provider: local-vlm")
    assert _found(broken, allow_missing_env=True) == [
        "models.llama-3-8b[0].provider: unknown provider 'local-vlm'; did you mean 'local-vllm'? (line 10)"]


def test_a_value_that_cannot_decode_without_its_variable_stays_an_error_that_says_why():
    text = ("providers:\n  - name: pool\n    schema: openai\n    discover: {dns: vllm.svc, port: \"${PORT}\"}\n"
            "models: [{name: m, targets: [{provider: pool}]}]\n")
    assert _found(text, allow_missing_env=True) == [
        "providers.pool.discover.port: Expected `int`, got `str` (its value uses an environment variable that is not set) "
        "(line 4)"]
    assert config.check(text, {"PORT": "8000"}).errors == []  # set, it is checked and fine


def test_a_problem_inside_a_misspelled_field_is_named_where_it_is_in_the_file():
    text = GOOD.replace("    api_key: ${VLLM_KEY}", "    api_key: ${VLLM_KEY}\n    timeout: {connect: fast}")
    assert _found(text, allow_missing_env=True) == [
        "providers.local-vllm.timeout: unknown field 'timeout'; did you mean 'timeouts'? (line 7)",
        "providers.local-vllm.timeout.connect: Expected `float`, got `str` (line 7)",
    ]


PRICES = """
providers:
  - {name: oai, schema: openai, base_url: "https://api.openai.com/v1", api_key: x}
  - {name: aws, schema: bedrock, region: us-east-1}
  - {name: test, schema: fake}
models:
  - name: gpt-4o
    targets: [{provider: oai}]
  - name: smart
    targets: [{provider: aws, model: "us.anthropic.claude-sonnet-4-20250514-v1:0"}]
  - name: llama
    targets: [{provider: oai, model: meta-llama/Meta-Llama-3-8B-Instruct}]
  - name: fixture
    targets: [{provider: test}]
  - name: in-house
    targets: [{provider: oai, model: my-finetune}]
    price: {input: 0, output: 0}
  - name: mixed
    targets: [{provider: test}, {provider: oai, model: my-finetune}]
"""


def test_check_warns_about_models_with_no_price_and_still_accepts_them():
    checked = config.check(PRICES, {})
    assert checked.errors == [] and checked.config is not None
    assert [str(w) for w in checked.warnings] == [
        "models.llama: model 'llama' has no price in the config or the price dataset: its usage will be recorded with "
        "cost_usd null and count $0 against budgets; set models[2].price (USD per million tokens; input: 0, output: 0 "
        "if it is free) (line 11)",
        "models.mixed: model 'mixed' has no price in the config or the price dataset: its usage will be recorded with "
        "cost_usd null and count $0 against budgets; set models[5].price (USD per million tokens; input: 0, output: 0 "
        "if it is free) (line 18)",
    ]
    assert config.loads(PRICES, {}).models[4].price.input == 0.0  # a configured zero price is a price


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "-1", "-0.5"])
@pytest.mark.parametrize("field", ["input", "output", "cached_input", "cache_write", "reasoning", "audio_minute",
                                   "characters", "search_unit"])
def test_a_price_must_be_a_finite_number_not_below_zero(field, value):
    # A NaN price makes a cost_usd reservation NaN (a limit disabled for good), an infinite one
    # an infinite cost in the ledger, a negative one a refund: `check` and `loads` refuse them.
    price = {"input": "0", "output": "0", field: value}
    text = PRICES.replace("price: {input: 0, output: 0}", "price: {" + ", ".join(f"{k}: {v}" for k, v in price.items()) + "}")
    shown = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}.get(value, value)
    problem = f"models.in-house.price.{field}: a price must be a finite number of USD, 0 or more, not {shown} (line 17)"
    assert _found(text) == [problem]
    assert str(_error(text)) == problem  # loads (serve, reload) refuses it too


def test_an_image_price_must_be_a_finite_number_not_below_zero():
    text = PRICES.replace("price: {input: 0, output: 0}", 'price: {image: {"1024x1024": 0.04, "*": .nan}}')
    assert _found(text) == [
        "models.in-house.price.image.*: a price must be a finite number of USD, 0 or more, not nan (line 17)"]
    assert _found(text.replace(".nan", "0")) == []

def test_no_price_warnings_for_a_config_with_errors():
    checked = config.check(PRICES.replace("provider: oai, model: meta", "provider: nope, model: meta"), {})
    assert checked.errors and checked.warnings == []


def test_loading_keeps_nothing_from_one_load_to_the_next():
    """The scalars' loader was one for the module, and cached every node it typed: each reload
    left its whole YAML tree (and the text the nodes' marks point at) behind, ~2 MB per 1,000 keys."""
    import gc
    import tracemalloc

    keys = "".join(f'  - {{name: k{i}, key_hash: "sha256:{i:064x}", models: ["*"]}}\n' for i in range(1000))
    text = GOOD.replace("keys:\n", "keys:\n" + keys)
    config.loads(text, {"VLLM_KEY": "k"})  # (what the first load imports or caches for good)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            config.loads(text, {"VLLM_KEY": "k"})
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 500_000, f"{grown} bytes kept after 3 loads"


BAD_REDIS_URLS = [
    pytest.param("http://127.0.0.1:6379/0", "expected a redis://, rediss:// or unix:// URL", id="scheme"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:99999/0", "the port must be a number from 1 to 65535", id="port range"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:0/0", "the port must be a number from 1 to 65535", id="port 0"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:abc/0", "the port must be a number from 1 to 65535", id="port text"),
    pytest.param("redis://:TOP/SECRET@127.0.0.1:6379/0", "needs a host", id="unescaped slash in the password"),
    pytest.param("redis://[::1/0", "needs a host", id="broken IPv6"),
    pytest.param("rediss://:TOPSECRET@redis.example/one", "the database must be a number", id="db path"),
    pytest.param("redis://127.0.0.1:6379?db=one&password=TOPSECRET", "the database must be a number", id="db query"),
    pytest.param("unix://", "needs the socket's path", id="unix without a path"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?socket_timeout=abc", "socket_timeout", id="timeout text"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?socket_timeout=-1", "socket_timeout", id="timeout negative"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?max_connections=0", "max_connections", id="no connections"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?protocol=9", "protocol must be 2 or 3", id="protocol"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?socket_keepalive=maybe", "socket_keepalive", id="bool"),
    pytest.param("redis://127.0.0.1:6379/0?sockettimeout=3&password=TOPSECRET", "did you mean 'socket_timeout'",
                 id="unknown parameter"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?timeout=3", "unknown query parameter 'timeout'",
                 id="parsed by redis-py, refused by its connection"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?ssl_check_hostname=true", "needs a rediss:// URL", id="tls on redis"),
    pytest.param("redis://:TOPSECRET@127.0.0.1:6379/0?decode_responses=yes", "the gateway sets", id="gateway's own"),
    pytest.param("rediss://:TOPSECRET@h:6379/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs", id="cert reqs"),
    pytest.param("rediss://:TOPSECRET@h:6379/0?ssl_include_verify_flags=VERIFY_NOTHING", "ssl_include_verify_flags",
                 id="verify flag"),
]


@pytest.mark.parametrize("url,fragment", BAD_REDIS_URLS)
@pytest.mark.parametrize("section", ["rate_limits", "cache"])
def test_a_redis_url_the_client_cannot_use_is_an_error_that_does_not_show_its_password(section, url, fragment):
    """`tollway check` passed these, and `tollway serve` then failed on them with a traceback."""
    err = _error(GOOD + f"{section}: {{backend: redis, redis_url: '{url}'}}\n")
    assert err.path == f"{section}.redis_url" and fragment in err.problem and err.line == 16
    assert "TOPSECRET" not in str(err) and "SECRET" not in str(err)


@pytest.mark.parametrize("section", ["rate_limits", "cache"])
def test_a_redis_url_is_checked_also_while_its_backend_is_memory(section):
    """A broken URL kept for later (backend: memory) failed only on the day its backend became redis."""
    err = _error(GOOD + f"{section}: {{backend: memory, redis_url: 'redis://:TOPSECRET@h:6379/0?socket_timeout=x'}}\n")
    assert err.path == f"{section}.redis_url" and "socket_timeout" in err.problem and "TOPSECRET" not in str(err)


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://user:p%2Fw@redis.example:6380/15", "redis://[::1]:6379", "redis://host/",
    "redis://host?db=3", "unix:///run/redis.sock?db=2",
    "redis://h/0?socket_timeout=2.5&socket_connect_timeout=1&max_connections=50&health_check_interval=30"
    "&protocol=3&socket_keepalive=true&retry_on_timeout=no&client_name=gw&username=u&password=p&socket_read_size=65536",
    "rediss://h/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false&ssl_min_version=771"
    "&ssl_include_verify_flags=VERIFY_X509_STRICT,VERIFY_X509_PARTIAL_CHAIN&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
    "unix:///run/redis.sock?socket_timeout=1&client_name=gw",
])
def test_redis_urls_the_client_can_use_are_accepted(url):
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)  # what serve does with it
    client.connection_pool.make_connection()  # (a parameter the connection does not take fails only here)
    config.loads(GOOD + f"rate_limits: {{backend: redis, redis_url: '{url}'}}\n", {"VLLM_KEY": "k"})


def test_every_query_parameter_redis_py_refuses_is_refused_here_first():
    """Nothing that passes `tollway check` fails when redis-py reads it (the table kept in step with it)."""
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

    from tollway.core.security.urls import redis_url_problem

    for name in URL_QUERY_ARGUMENT_PARSERS:
        for value in ("abc", "1.5", "-1", "0", "VERIFY_X509_STRICT"):
            url = f"rediss://h:6379/0?{name}={value}"
            try:
                parse_url(url)
            except ValueError:
                assert redis_url_problem(url), url



@pytest.mark.parametrize("value,shown", [(".inf", "inf"), (".nan", "nan"), ("-1", "-1"), ("1e12", "1e+12")])
@pytest.mark.parametrize("field,most", [("drain_delay", 3600), ("drain_timeout", 86400), ("reload_check_interval", 86400)])
def test_the_drain_and_reload_seconds_must_be_finite_not_below_zero_and_bounded(field, most, value, shown):
    # `check` passed them and `serve` crashed at its start (OverflowError, ValueError in the
    # drain's timers) or on SIGTERM (timestamp out of range), without a drain.
    text = GOOD + f"server:\n  {field}: {value}\n"
    problem = f"server.{field}: must be a number of seconds from 0 to {most}, not {shown} (line 17)"
    env = {"VLLM_KEY": "k"}
    assert [str(e) for e in config.check(text, env).errors] == [problem]
    assert str(_error(text)) == problem  # loads (serve, reload) refuses it too
    for good in (0, most):
        assert config.check(GOOD + f"server:\n  {field}: {good}\n", env).errors == []
