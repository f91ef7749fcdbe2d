"""The response cache (docs/cache.md): hooks on the request pipeline, over a memory or Redis store."""
from tollway.gateway.cache.hooks import CacheState, ResponseCache

__all__ = ["CacheState", "ResponseCache"]
