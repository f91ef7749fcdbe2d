"""`POST /v1/rerank`, the Cohere/Jina shape vLLM and KServe serve, to each provider's rerank API.

The client speaks the shape of `api.py`; `openai_compat.py` passes it as is to OpenAI-compatible
servers (vLLM), `cohere.py` translates it to Cohere's v2 rerank, `bedrock.py` to Bedrock's
(agent runtime) rerank. Usage is what the provider bills by: tokens (vLLM, Jina) or search units
(Cohere; Bedrock bills a query per 100 documents).
"""
