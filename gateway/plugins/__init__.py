"""Plugins (docs/plugins.md): operator code loaded from the config's `plugins:` (a
`module: "package.module:factory"`, or an entry point of the `tollway.plugins` group), plugged
into the request pipeline's seams (tollway.gateway.pipeline).

    api.py      what plugin authors import: the contexts and the verdicts of each stage
    loader.py   from a config entry to a plugin object (at start and on reload, never per request)
    hooks.py    PluginSet: the stages as pipeline hooks, each call bounded by timeout_ms, with on_error
"""
