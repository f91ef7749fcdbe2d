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


def test_azure_needs_api_version():
    text = GOOD.replace("schema: openai", "schema: azure_openai")
    assert "api_version" in str(_error(text))
