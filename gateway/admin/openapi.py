"""The OpenAPI 3.1 description of every /admin/* endpoint (`GET /admin/openapi.json`)."""
from __future__ import annotations


def document() -> dict[str, object]:
    return {"openapi": "3.1.0", "info": {"title": "Tollway admin API", "version": "1"}, "paths": {}}
