"""The README's HTTP API table lists every endpoint the gateway serves (issue 17): each path of
the app's route table, and the OpenAI paths with an id, appears in it."""
from __future__ import annotations

import re

from tests.harness import ROOT
from tollway.core.config import Config
from tollway.gateway.app import Gateway


def api_table() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## HTTP API")
    return text[start:text.index("\n\n", text.index("| path |", start))]


def test_every_served_path_is_in_the_readme_api_table():
    table = api_table()
    listed = set(re.findall(r"`(?:GET |POST )?(/[^`\s]*)`", table))
    served = {path for _, path in Gateway(Config()).routes} | {"/v1/models/{id}"}
    assert served - listed == set()


def test_the_paths_with_an_id_are_there_too():
    table = api_table()
    for path in ("/v1/models/{id}", "/admin/keys/{id}", "/admin/teams/{name}"):
        assert f"`{path}`" in table or f"`GET {path}`" in table
