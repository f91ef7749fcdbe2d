"""Example plugins (docs/plugins.md), tested end to end in tests/test_plugins_e2e.py:

    jwt_auth.py   authenticate: a JWT (HS256, shared secret) in place of a gateway key
    tagger.py     on_request: ledger tags and request metadata
    webhook.py    on_complete: each usage record POSTed as JSON to a URL

Configure one with `module: "examples.plugins.tagger:factory"` (the repository on PYTHONPATH),
or install it and name it through the `tollway.plugins` entry-point group.
"""
