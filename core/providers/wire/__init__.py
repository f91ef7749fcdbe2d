"""Provider wire schemas, typed as msgspec Structs: one module per provider API.

Decoding a provider's bytes straight into these Structs validates them in C; encoding them
with `omit_defaults` writes only the fields a request actually uses.
"""
