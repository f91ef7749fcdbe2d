"""The built-in guardrails (issue 15, docs/guardrails.md) as pipeline hooks."""
from tollway.gateway.guardrails.hooks import GuardrailSet

__all__ = ["GuardrailSet"]
