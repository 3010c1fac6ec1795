"""OnnxSentenceEncoder: shapes, norms, similarity, batching/bucketing, padding, truncation, odd inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scorers.embedding.encoder import OnnxSentenceEncoder, default_providers, plan_batches
from scorers.embedding.onnx_build import ModelFiles

MIXED = [
    "A man is playing a guitar.",
    "Two dogs run through a field.",
    "The government announced new measures to reduce energy prices across the whole country next winter.",
    "Yes.",
    "",
    "She grew up in a small town by the sea and moved to the city when she was eighteen years old.",
    "Going to the beach tomorrow 🏖️☀️",
    "J'aime beaucoup lire des romans policiers le soir.",
    "ok",
    "A woman is slicing tomatoes on a wooden board in a sunny kitchen.",
    "私は週末に映画を見るのが好きです。",
]


def test_output_shape_dtype_and_unit_norm(encoder: OnnxSentenceEncoder) -> None:
    vectors = encoder.encode(MIXED)
    assert vectors.shape == (len(MIXED), 384)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_list_gives_an_empty_matrix(encoder: OnnxSentenceEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)


def test_similar_pair_scores_higher_than_unrelated_pair(encoder: OnnxSentenceEncoder) -> None:
    similar = encoder.similarity(["A girl is styling her hair."], ["A girl is brushing her hair."])[0]
    unrelated = encoder.similarity(["A girl is styling her hair."], ["The stock market fell sharply on Tuesday."])[0]
    assert similar > 0.8
    assert unrelated < 0.3
    assert similar > unrelated + 0.4


def test_batching_and_bucketing_match_one_at_a_time(encoder: OnnxSentenceEncoder, built: dict[str, ModelFiles]) -> None:
    single = np.stack([encoder.encode([text])[0] for text in MIXED])
    bucketed = encoder.encode(MIXED)  # sorted by length, several tightly padded calls
    np.testing.assert_allclose(bucketed, single, atol=1e-5)
    one_padded_call = OnnxSentenceEncoder(
        built["fp32"].model, built["fp32"].tokenizer, intra_op_threads=2, call_overhead_tokens=1e9
    )
    assert len(list(one_padded_call.batches(MIXED))) == 1
    np.testing.assert_allclose(one_padded_call.encode(MIXED), single, atol=1e-5)
    small_batches = OnnxSentenceEncoder(built["fp32"].model, built["fp32"].tokenizer, intra_op_threads=2, batch_size=3)
    np.testing.assert_allclose(small_batches.encode(MIXED[::-1])[::-1], single, atol=1e-5)


def test_results_come_back_in_input_order(encoder: OnnxSentenceEncoder) -> None:
    forward = encoder.encode(MIXED)
    shuffled_order = np.random.default_rng(1).permutation(len(MIXED))
    shuffled = encoder.encode([MIXED[i] for i in shuffled_order])
    np.testing.assert_allclose(shuffled, forward[shuffled_order], atol=1e-5)


def test_padding_is_per_batch_not_fixed_at_128(encoder: OnnxSentenceEncoder) -> None:
    [ids] = encoder.tokenize(["Hi there."])
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    assert len(ids) == 5  # [CLS] hi there . [SEP]: no fixed padding to 128
    batches = list(encoder.batches(["Hi.", "Hello there, how are you today?", "Hey"]))
    widths = [input_ids.shape[1] for _, input_ids, _ in batches]
    assert max(widths) < 128
    for indices, input_ids, attention_mask in batches:
        lengths = attention_mask.sum(axis=1)
        assert input_ids.shape[1] == lengths.max()  # padded only to this batch's longest
        assert (input_ids[attention_mask == 0] == 0).all()
        assert len(indices) == len(input_ids)


def test_bucketing_groups_sentences_of_similar_length(encoder: OnnxSentenceEncoder) -> None:
    texts = ["word " * n for n in [1, 40, 2, 41, 3, 42, 1, 40]]
    batches = list(encoder.batches(texts))
    assert len(batches) == 2
    (short_indices, short_ids, _), (long_indices, _, long_mask) = batches
    assert sorted(short_indices.tolist()) == [0, 2, 4, 6]  # the four short sentences together
    assert short_ids.shape[1] == 5  # [CLS] word word word [SEP]
    assert sorted(long_indices.tolist()) == [1, 3, 5, 7]
    assert (long_mask == 0).sum() / long_mask.size < 0.05


def test_truncation_of_a_very_long_input(encoder: OnnxSentenceEncoder, built: dict[str, ModelFiles]) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 400  # ~4000 tokens
    [ids] = encoder.tokenize([long_text])
    assert len(ids) == encoder.max_length == 256
    assert ids[-1] == 102  # [SEP] kept after truncation
    vectors = encoder.encode([long_text, "short"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    at_limit = OnnxSentenceEncoder(built["fp32"].model, built["fp32"].tokenizer, max_length=512, intra_op_threads=2)
    assert at_limit.model_limit == 512
    assert len(at_limit.tokenize([long_text])[0]) == 512
    assert np.isfinite(at_limit.encode([long_text])).all()
    with pytest.raises(ValueError, match="model limit 512"):
        OnnxSentenceEncoder(built["fp32"].model, built["fp32"].tokenizer, max_length=513)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\n\t",
        "🙂",
        "👩‍👩‍👧‍👦🏳️‍🌈",
        "Я люблю читать книги.",
        "我喜欢在公园里散步。",
        "أحب السفر",
        "\u200b",
        "a" * 3000,
    ],
)
def test_odd_inputs_do_not_crash(encoder: OnnxSentenceEncoder, text: str) -> None:
    [vector] = encoder.encode([text])
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_inputs_are_validated(encoder: OnnxSentenceEncoder) -> None:
    with pytest.raises(TypeError, match="not a single string"):
        encoder.encode("just one string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected str"):
        encoder.encode(["ok", None])  # type: ignore[list-item]


def test_provider_is_the_one_in_use(encoder: OnnxSentenceEncoder) -> None:
    import onnxruntime as ort

    assert encoder.provider == encoder.providers[0]
    assert encoder.provider in ort.get_available_providers()
    assert default_providers()[-1] == "CPUExecutionProvider"
    if default_providers() == ["CPUExecutionProvider"]:
        assert encoder.provider == "CPUExecutionProvider"


def test_explicit_cpu_provider(built: dict[str, ModelFiles]) -> None:
    cpu = OnnxSentenceEncoder(
        built["int8"].model, built["int8"].tokenizer, providers=["CPUExecutionProvider"], intra_op_threads=1
    )
    assert cpu.provider == "CPUExecutionProvider"
    assert cpu.variant == "int8"
    assert cpu.encode(["hello"]).shape == (1, 384)


# --------------------------------------------------------------------------------------------- plan_batches


def _brute_force_cost(lengths: list[int], max_batch: int, overhead: float) -> float:
    n = len(lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0, *[i + 1 for i, cut in enumerate(cuts) if cut], n]
        groups = [lengths[a:b] for a, b in itertools.pairwise(bounds)]
        if any(len(g) > max_batch for g in groups):
            continue
        best = min(best, sum(overhead + len(g) * max(g) for g in groups))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_batches_is_optimal_and_respects_the_batch_limit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = sorted(rng.integers(3, 60, size=9).tolist())
    max_batch, overhead = 4, float(rng.integers(0, 30))
    bounds = plan_batches(lengths, max_batch, overhead)
    assert bounds[0] == 0 and bounds[-1] == len(lengths)
    groups = [lengths[a:b] for a, b in itertools.pairwise(bounds)]
    assert all(0 < len(g) <= max_batch for g in groups)
    cost = sum(overhead + len(g) * max(g) for g in groups)
    assert cost == pytest.approx(_brute_force_cost(lengths, max_batch, overhead))


def test_plan_batches_edge_cases() -> None:
    assert plan_batches([], 32, 8) == [0]
    assert plan_batches([7], 32, 8) == [0, 1]
    assert plan_batches([5] * 70, 32, 8) == [0, 32, 64, 70]
