"""OnnxSentenceEncoder: all-MiniLM-L6-v2 sentence embeddings on onnxruntime (no torch).

Tokenisation uses the packaged ``tokenizer.json`` through ``tokenizers``. That file pads every input to a
fixed 128 tokens and truncates at 128; both are overridden here: no fixed padding, truncation at
``max_length`` (default 256, sentence-transformers' ``max_seq_length`` for this model; the position table
allows at most 512), and each batch is padded only to its own longest member. Sentences are sorted by
token length before batching ("bucketing"), so short sentences never pay for a long neighbour.

``encode`` is synchronous and thread-safe (onnxruntime sessions and tokenizers may be shared by threads);
the service runs it in a worker thread.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_LENGTH", "EMBEDDING_DIM", "OnnxSentenceEncoder", "default_providers", "plan_batches"]

DEFAULT_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
MODEL_POSITION_LIMIT = 512  # BERT position table; read from the model's metadata when present
EMBEDDING_DIM = 384
DEFAULT_BATCH_SIZE = 32
# Cost of one onnxruntime call in "padded tokens": measured on CPU (2 threads) a call costs about
# c0 + c1 * batch * width with c0 / c1 ~ 8 tokens for both fp32 and int8 (streaming the weights, op dispatch).
DEFAULT_CALL_OVERHEAD_TOKENS = 8.0


def _gpu_listed_by_onnxruntime() -> bool:
    import onnxruntime as ort

    try:
        devices = ort.get_ep_devices() if hasattr(ort, "get_ep_devices") else []
    except Exception:  # noqa: BLE001 - the device listing is only a hint
        return False
    return any("GPU" in str(device.device.type) for device in devices)


def _cuda_device_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process (cheap checks, no CUDA library is loaded)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if _gpu_listed_by_onnxruntime():
        return True
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def default_providers() -> list[str]:
    """CUDA (then CPU as fallback) when onnxruntime has the CUDA provider and a GPU is visible, else CPU.

    ``onnxruntime-gpu`` lists CUDAExecutionProvider as available even on machines without a GPU or without
    the CUDA/cuDNN libraries; asking for it there only logs errors and falls back to CPU. So the GPU is
    checked first, and :attr:`OnnxSentenceEncoder.provider` reports what the session really uses.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and _cuda_device_visible():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxSentenceEncoder:
    """Encode sentences into L2-normalised float32 vectors of size 384.

    Args:
        model_path: an ONNX file built by :mod:`scorers.embedding.onnx_build` (fp32 or int8).
        tokenizer_path: the model's ``tokenizer.json``.
        providers: onnxruntime execution providers in order of preference; None picks CUDA when usable, else CPU.
        max_length: truncation length in tokens, [CLS] and [SEP] included (at most the model's 512 positions).
        intra_op_threads: onnxruntime intra-op threads (None: onnxruntime's default, one per physical core).
        batch_size: at most this many sentences per onnxruntime call inside :meth:`encode`.
        call_overhead_tokens: the fixed cost of one onnxruntime call, in padded tokens; the length-sorted
            sentences are cut into contiguous groups minimising ``sum(overhead + group_size * group_width)``,
            so a batch of mixed lengths becomes a few tightly padded calls instead of one padded to its longest.
        allow_spinning: let idle onnxruntime threads spin (lower latency, burns CPU between calls).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        tokenizer_path: str | os.PathLike[str],
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        intra_op_threads: int | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        call_overhead_tokens: float = DEFAULT_CALL_OVERHEAD_TOKENS,
        allow_spinning: bool = True,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_path = Path(model_path)
        self.tokenizer_path = Path(tokenizer_path)
        self.batch_size = batch_size
        self.call_overhead_tokens = float(call_overhead_tokens)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError("intra_op_threads must be >= 1")
            options.intra_op_num_threads = intra_op_threads
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=list(providers or default_providers())
        )
        self.provider: str = self._session.get_providers()[0]
        self.providers: list[str] = list(self._session.get_providers())

        meta = self._session.get_modelmeta().custom_metadata_map
        self.model_limit = int(meta.get("max_position_embeddings", MODEL_POSITION_LIMIT))
        self.variant = meta.get("variant", "unknown")
        if not 2 <= max_length <= self.model_limit:
            raise ValueError(f"max_length must be between 2 and the model limit {self.model_limit}, got {max_length}")
        self.max_length = max_length
        self.dimension = int(meta.get("hidden_size", EMBEDDING_DIM))
        input_names = {i.name for i in self._session.get_inputs()}
        if input_names != {"input_ids", "attention_mask"}:
            raise ValueError(f"{self.model_path}: unexpected model inputs {sorted(input_names)}")

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        tokenizer.no_padding()  # the packaged tokenizer.json pads everything to 128 tokens
        tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return (
            f"OnnxSentenceEncoder({self.model_path.name!r}, variant={self.variant!r}, provider={self.provider!r}, "
            f"max_length={self.max_length})"
        )

    # ----------------------------------------------------------------------------------------- tokenising

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text ([CLS] ... [SEP]), truncated at ``max_length``, unpadded."""
        texts = _check_texts(texts)
        if len(texts) == 1:
            return [self.tokenizer.encode(texts[0]).ids]
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]

    def batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(indices, input_ids, attention_mask)``: texts sorted by length, padded per batch only."""
        token_ids = self.tokenize(texts)
        lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
        order = np.argsort(lengths, kind="stable")
        bounds = plan_batches(lengths[order], self.batch_size, self.call_overhead_tokens)
        for start, stop in itertools.pairwise(bounds):
            indices = order[start:stop]
            width = int(lengths[indices].max())
            input_ids = np.zeros((len(indices), width), dtype=np.int64)  # [PAD] is id 0
            attention_mask = np.zeros((len(indices), width), dtype=np.int64)
            for row, index in enumerate(indices):
                ids = token_ids[index]
                input_ids[row, : len(ids)] = ids
                attention_mask[row, : len(ids)] = 1
            yield indices, input_ids, attention_mask

    # ----------------------------------------------------------------------------------------- encoding

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array ``[len(texts), 384]``, each row of unit L2 norm, in input order."""
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for indices, input_ids, attention_mask in self.batches(texts):
            (vectors,) = self._session.run(
                ["sentence_embedding"], {"input_ids": input_ids, "attention_mask": attention_mask}
            )
            out[indices] = vectors
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``a[i]`` with ``b[i]`` (both lists encoded in one call)."""
        if len(a) != len(b):
            raise ValueError("a and b must have the same length")
        vectors = self.encode([*a, *b])
        return np.einsum("ij,ij->i", vectors[: len(a)], vectors[len(a) :])


def plan_batches(sorted_lengths: Sequence[int] | np.ndarray, max_batch: int, overhead: float) -> list[int]:
    """Cut ascending lengths into contiguous groups of at most ``max_batch``; return the cut points.

    Minimises ``sum(overhead + size * max_length_in_group)`` exactly (dynamic programming, O(n * max_batch)):
    the group's width is its last (longest) member. Returns ``[0, c1, ..., n]``.
    """
    lengths = np.asarray(sorted_lengths, dtype=np.float64)
    n = len(lengths)
    if n == 0:
        return [0]
    if n <= 1 or lengths[0] == lengths[-1]:
        return [*range(0, n, max_batch), n]
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        lo = max(0, end - max_batch)
        starts = np.arange(lo, end)
        costs = best[lo:end] + overhead + (end - starts) * lengths[end - 1]
        pick = int(np.argmin(costs))
        best[end] = costs[pick]
        cut[end] = lo + pick
    bounds = [n]
    while bounds[-1] > 0:
        bounds.append(int(cut[bounds[-1]]))
    return bounds[::-1]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of strings, not a single string")
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
    return texts
