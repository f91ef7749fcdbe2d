"""Google text embeddings: Vertex AI's `:predict` and the Gemini API's `:batchEmbedContents`.

Vertex AI (`…/publishers/google/models/{model}:predict`) takes `instances: [{content}]` and
`parameters.outputDimensionality`, and answers `predictions[].embeddings` with `values` and
`statistics.token_count` (snake_case: the prediction is a free-form protobuf Value, whose
numbers may come as floats). The Gemini API takes one EmbedContentRequest per text, each
naming the model again as `models/{model}`, and answers `embeddings[].values` with no count.
"""
from __future__ import annotations

import msgspec

from tollway.core.providers.wire.gemini import Content


class _Wire(msgspec.Struct, omit_defaults=True, rename="camel"):
    pass


# -- Vertex AI :predict ----------------------------------------------------------------

class Instance(_Wire):
    content: str


class Parameters(_Wire):
    output_dimensionality: int | None = None


class PredictRequest(_Wire):
    instances: list[Instance]
    parameters: Parameters | None = None


class Statistics(msgspec.Struct):
    token_count: float = 0
    truncated: bool = False


class PredictionEmbeddings(msgspec.Struct):
    values: list[float]
    statistics: Statistics | None = None


class Prediction(msgspec.Struct):
    embeddings: PredictionEmbeddings


class PredictResponse(msgspec.Struct):
    predictions: list[Prediction] = []


# -- Gemini API :batchEmbedContents ------------------------------------------------------

class EmbedContentRequest(_Wire):
    model: str  # "models/{model}", the same model as the URL's
    content: Content
    output_dimensionality: int | None = None


class BatchEmbedContentsRequest(_Wire):
    requests: list[EmbedContentRequest]


class ContentEmbedding(msgspec.Struct):
    values: list[float]


class BatchEmbedContentsResponse(msgspec.Struct):
    embeddings: list[ContentEmbedding] = []


decode_predict = msgspec.json.Decoder(PredictResponse).decode
decode_batch = msgspec.json.Decoder(BatchEmbedContentsResponse).decode
encode = msgspec.json.Encoder().encode
