"""on_request: tag requests for the ledger's spend reports, and add metadata to the request.

    config:
      tags: [app=search, tier:gold]     # ledger tags (x-tollway-tags rules), added to the client's
      team_tag: true                    # adds team=<the key's team>
      metadata: {cost_center: "1234"}   # merged into the body's `metadata` object (sent upstream)

What it adds is also in `ctx.metadata["tagger"]`, for later stages (a webhook sink sends it).
"""
from __future__ import annotations

from typing import Any

from tollway.gateway.plugins.api import ALLOW, Allow, Replace, RequestContext


class Tagger:
    def __init__(self, config: dict[str, Any]) -> None:
        self.tags = [str(t) for t in config.get("tags", [])]
        self.team_tag = bool(config.get("team_tag", False))
        metadata = config.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("config.metadata must be a mapping")
        self.metadata = {str(k): str(v) for k, v in metadata.items()}

    async def on_request(self, ctx: RequestContext) -> Allow | Replace:
        added = list(self.tags)
        if self.team_tag and ctx.key.team:
            added.append(f"team={ctx.key.team}")
        for tag in added:
            if tag not in ctx.tags:
                ctx.tags.append(tag)
        ctx.metadata["tagger"] = {"tags": added, "metadata": self.metadata}
        if not self.metadata or not isinstance(ctx.body, dict):
            return ALLOW
        body = dict(ctx.body)
        current = body.get("metadata")
        body["metadata"] = {**(current if isinstance(current, dict) else {}), **self.metadata}
        return Replace(body)


def factory(config: dict[str, Any]) -> Tagger:
    return Tagger(config)
