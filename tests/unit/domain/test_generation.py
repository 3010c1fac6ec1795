"""generate_quiz: properties checked over many seeds, plus the error cases."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest

from app.domain.generation import (
    ALLOWED_PLACEHOLDERS,
    GenerationError,
    QuizShape,
    generate_quiz,
    template_placeholders,
)
from app.domain.quiz import (
    ConsentPreference,
    GeneratedQuestion,
    PromptPair,
    QuestionKind,
    TargetProfile,
    Template,
    TemplatePurpose,
)

SEEDS = range(200)
C, K, F = QuestionKind.COMPREHENSION, QuestionKind.CONSENT, QuestionKind.FREE_RESPONSE
Q, D = TemplatePurpose.QUESTION, TemplatePurpose.DISTRACTOR


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def library() -> list[Template]:
    return [
        Template(
            "comp.q1",
            C,
            Q,
            "{name} answered “{prompt}”. Which answer is theirs?",
            ["Which did {name} write for “{prompt}”?"],
            difficulty=1,
        ),
        Template("comp.q2", C, Q, "When {name} was asked “{prompt}”, what did they say?", difficulty=2),
        Template("comp.q3", C, Q, "Only one is {name}'s answer to “{prompt}”.", difficulty=3),
        Template("cons.q1", K, Q, "Which of these is one of {name}'s boundaries?", difficulty=1),
        Template(
            "cons.q2",
            K,
            Q,
            "About {prompt}: which did {name} ask for?",
            ["{name} wrote about {prompt}. Which is theirs?"],
            difficulty=2,
        ),
        Template(
            "free.q1",
            F,
            Q,
            "What would you ask {name} about “{topic}”?",
            ["Why does “{topic}” interest you?"],
            difficulty=1,
        ),
        Template("free.q2", F, Q, "Write a first message to {name} about “{topic}”.", difficulty=2),
        Template(
            "dist.comp.easy",
            C,
            D,
            "Collecting vintage vinyl records",
            [
                "Running marathons abroad",
                "Playing chess online",
                "Restoring old motorbikes",
                "Karaoke nights",
                "Building LEGO sets",
                "Skydiving",
            ],
            difficulty=1,
        ),
        Template(
            "dist.comp.mid",
            C,
            D,
            "A slow morning with coffee and a good book",
            [
                "Weekend hikes and brunch",
                "Cooking for friends on Fridays",
                "Road trips with no fixed plan",
                "Trying every ramen place in the city",
                "Painting badly but enthusiastically",
            ],
            difficulty=2,
        ),
        Template(
            "dist.comp.hard",
            C,
            D,
            "Someone kind to waiters",
            ["Honesty, curiosity and humour", "Getting lost in a museum", "Making fresh pasta"],
            difficulty=3,
        ),
        Template(
            "dist.cons.easy",
            K,
            D,
            "Call me any time without asking",
            ["Send any photos straight away", "Meet tonight, no chat first", "Share my home address now"],
            difficulty=1,
        ),
        Template(
            "dist.cons.mid",
            K,
            D,
            "Voice notes from day one",
            [
                "Meet within the first day",
                "Video calls any time",
                "Pick me up from home",
                "I like to text for a while before meeting",
            ],
            difficulty=2,
        ),
    ]


def profile(**overrides: object) -> TargetProfile:
    values: dict[str, object] = {
        "user_id": uuid.UUID(int=7),
        "display_name": "Ada",
        "prompts": [
            PromptPair("My ideal Sunday", "road trips  WITH no fixed plan"),  # a spacing/case variant of a distractor
            PromptPair("I geek out on", "Mechanical keyboards and tea"),
            PromptPair("Two truths and a lie", "I have met a penguin"),
        ],
        "consent_preferences": [
            ConsentPreference("pace", "I like to text for a while before meeting"),  # equals a library distractor
            ConsentPreference("photos", "No photos until we have met"),
            ConsentPreference("calls", "Ask before calling me"),
        ],
        "locale": "en",
    }
    values.update(overrides)
    return TargetProfile(**values)  # type: ignore[arg-type]


SHAPE = QuizShape(comprehension=2, consent=2, free_response=1, choices_per_question=4, free_text_comprehension=False)


def generate(
    seed: int,
    *,
    shape: QuizShape = SHAPE,
    target: TargetProfile | None = None,
    templates: list[Template] | None = None,
    difficulty: int = 2,
) -> list[GeneratedQuestion]:
    return generate_quiz(
        target or profile(), library() if templates is None else templates, shape, difficulty, random.Random(seed)
    )


def own_texts(target: TargetProfile, kind: QuestionKind) -> list[str]:
    if kind is C:
        return [p.answer for p in target.prompts]
    return [c.statement for c in target.consent_preferences]


def test_shape_and_order_over_many_seeds() -> None:
    for seed in SEEDS:
        questions = generate(seed)
        assert [q.kind for q in questions] == [C, C, K, K, F], seed
        assert [q.position for q in questions] == list(range(5))
        assert len({q.id for q in questions}) == 5


def test_right_choice_is_own_text_verbatim_and_appears_exactly_once() -> None:
    target = profile()
    for seed in SEEDS:
        for q in generate(seed, target=target):
            if q.kind is F:
                continue
            assert q.answer_key in own_texts(target, q.kind)  # verbatim, not normalised
            assert q.choices is not None
            assert q.choices.count(q.answer_key) == 1
            assert sum(norm(c) == norm(q.answer_key) for c in q.choices) == 1


def test_no_distractor_equals_anything_the_person_wrote_for_that_kind() -> None:
    target = profile()
    for seed in SEEDS:
        for q in generate(seed, target=target):
            if q.kind is F:
                continue
            forbidden = {norm(t) for t in own_texts(target, q.kind)}
            distractors = [c for c in q.choices or [] if c != q.answer_key]
            assert all(norm(d) not in forbidden for d in distractors), (seed, q.choices)


def test_choices_are_distinct_and_as_many_as_configured() -> None:
    for choices in (2, 3, 4, 6):
        shape = QuizShape(
            comprehension=3, consent=3, free_response=0, choices_per_question=choices, free_text_comprehension=False
        )
        for seed in range(50):
            for q in generate(seed, shape=shape):
                assert q.choices is not None
                assert len(q.choices) == choices
                assert len({norm(c) for c in q.choices}) == choices


def test_answer_key_position_is_not_fixed() -> None:
    positions = Counter()
    for seed in SEEDS:
        for q in generate(seed):
            if q.choices is not None:
                positions[q.choices.index(q.answer_key)] += 1
    assert set(positions) == {0, 1, 2, 3}
    assert min(positions.values()) > 50  # 800 items over 4 slots: roughly uniform


def test_no_answer_key_text_in_the_public_prompt() -> None:
    target = profile()
    for seed in SEEDS:
        for q in generate(seed, target=target):
            for secret in own_texts(target, C) + own_texts(target, K):
                assert norm(secret) not in norm(q.prompt), (seed, q.prompt)


def test_free_response_items_have_no_key_and_no_choices() -> None:
    target = profile()
    for seed in range(50):
        free = [q for q in generate(seed, target=target) if q.kind is F]
        assert free
        for q in free:
            assert q.choices is None and q.answer_key is None
            assert q.topic in [p.question for p in target.prompts]
            assert q.topic in q.prompt


def test_prompt_is_the_recorded_template_wording_filled_in() -> None:
    templates = {t.key: t for t in library()}
    target = profile()
    for seed in range(50):
        for q in generate(seed, target=target):
            template = templates[q.template_key]
            assert template.kind is q.kind and template.purpose is Q
            expected = template.wordings[q.variant].format(name=target.display_name, prompt=q.topic, topic=q.topic)
            assert q.prompt == expected
            assert "{" not in q.prompt


def test_comprehension_topic_is_the_prompt_whose_answer_is_the_key() -> None:
    target = profile()
    answers = {p.question: p.answer for p in target.prompts}
    statements = {c.topic: c.statement for c in target.consent_preferences}
    for seed in range(50):
        for q in generate(seed, target=target):
            if q.kind is C:
                assert answers[q.topic] == q.answer_key
            elif q.kind is K:
                assert statements[q.topic] == q.answer_key


def test_items_of_one_kind_cover_distinct_prompts() -> None:
    for seed in range(50):
        questions = generate(seed)
        keys = [q.answer_key for q in questions if q.kind is not F]
        assert len(keys) == len(set(keys))


def test_variants_are_all_used_across_seeds() -> None:
    used = {(q.template_key, q.variant) for seed in SEEDS for q in generate(seed, difficulty=1)}
    assert ("comp.q1", 0) in used and ("comp.q1", 1) in used
    assert ("free.q1", 0) in used and ("free.q1", 1) in used


def test_nearest_difficulty_is_preferred() -> None:
    easy_distractors = set(library()[7].wordings)  # 7 wordings: enough for 2 distractors (drawn from 6)
    shape = QuizShape(
        comprehension=2, consent=2, free_response=1, choices_per_question=3, free_text_comprehension=False
    )
    for seed in range(50):
        for q in generate(seed, difficulty=1, shape=shape):
            assert q.template_key in {"comp.q1", "cons.q1", "free.q1"}
            assert q.difficulty == 1
            if q.kind is C:
                assert set(q.choices or []) - {q.answer_key} <= easy_distractors
        # difficulty 5 has no exact templates: the closest band (3 for comprehension, 2 for consent) is used
        keys = {q.template_key for q in generate(seed, difficulty=5)}
        assert "comp.q3" in keys and "cons.q2" in keys and "free.q2" in keys


def test_same_seed_same_quiz_and_different_seeds_differ() -> None:
    assert generate(42) == generate(42)
    assert len({tuple((q.id, q.prompt, tuple(q.choices or ())) for q in generate(seed)) for seed in range(20)}) > 1


def test_fewer_prompts_than_requested_gives_fewer_questions() -> None:
    target = profile(
        prompts=[PromptPair("My ideal Sunday", "Baking bread")],
        consent_preferences=[],
    )
    shape = QuizShape(
        comprehension=3, consent=2, free_response=1, choices_per_question=4, free_text_comprehension=False
    )
    for seed in range(20):
        questions = generate(seed, shape=shape, target=target)
        assert [q.kind for q in questions] == [C, F]
        assert questions[0].answer_key == "Baking bread"


def test_zero_of_a_kind_is_respected() -> None:
    shape = QuizShape(
        comprehension=0, consent=1, free_response=0, choices_per_question=3, free_text_comprehension=False
    )
    questions = generate(1, shape=shape)
    assert [q.kind for q in questions] == [K]


def test_free_response_topic_falls_back_to_consent_topics_then_a_default() -> None:
    shape = QuizShape(
        comprehension=0, consent=0, free_response=1, choices_per_question=4, free_text_comprehension=False
    )
    consent_only = profile(prompts=[])
    q = generate(3, shape=shape, target=consent_only)[0]
    assert q.topic in {"pace", "photos", "calls"}
    empty = profile(prompts=[], consent_preferences=[])
    assert generate(3, shape=shape, target=empty)[0].topic == "yourself"


def test_empty_quiz_is_an_error() -> None:
    target = profile(prompts=[], consent_preferences=[])
    shape = QuizShape(
        comprehension=2, consent=2, free_response=0, choices_per_question=4, free_text_comprehension=False
    )
    with pytest.raises(GenerationError, match="no questions"):
        generate(0, shape=shape, target=target)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (lambda t: t.kind is C and t.purpose is Q, "no COMPREHENSION question template"),
        (lambda t: t.kind is K and t.purpose is Q, "no CONSENT question template"),
        (lambda t: t.kind is F, "no FREE_RESPONSE question template"),
        (lambda t: t.kind is C and t.purpose is D, "no usable COMPREHENSION distractors"),
        (lambda t: t.kind is K and t.purpose is D, "no usable CONSENT distractors"),
    ],
)
def test_missing_templates_raise_generation_error(missing, message: str) -> None:
    templates = [t for t in library() if not missing(t)]
    with pytest.raises(GenerationError, match=message):
        generate(0, templates=templates)


def test_inactive_templates_are_ignored() -> None:
    templates = [
        Template(t.key, t.kind, t.purpose, t.text, t.variants, t.difficulty, t.locale, active=False)
        if t.kind is C and t.purpose is Q
        else t
        for t in library()
    ]
    with pytest.raises(GenerationError, match="COMPREHENSION question"):
        generate(0, templates=templates)
    retired = Template("dist.comp.retired", C, D, "A retired distractor", difficulty=2, active=False)
    for seed in range(30):
        for q in generate(seed, templates=[*library(), retired]):
            assert "A retired distractor" not in (q.choices or [])


def test_distractors_that_only_match_the_persons_text_are_unusable() -> None:
    target = profile(prompts=[PromptPair("Favourite snack", "Crisps")])
    templates = [t for t in library() if not (t.kind is C and t.purpose is D)]
    templates.append(Template("dist.comp.only", C, D, "CRISPS", ["  crisps "]))
    with pytest.raises(GenerationError, match="distractors"):
        generate(0, templates=templates, target=target)


def test_placeholders_in_user_text_are_not_expanded() -> None:
    target = profile(
        display_name="{prompt} {0} {name.__class__}",
        prompts=[PromptPair("What is {name}?", "{name} is {topic}!")],
        consent_preferences=[ConsentPreference("{topic}", "Say {name} {{twice}}")],
    )
    wordings = {t.key: t.wordings for t in library()}
    for seed in range(30):
        for q in generate(seed, target=target):
            wording = wordings[q.template_key][q.variant]
            if "{name}" in wording:
                assert "{prompt} {0} {name.__class__}" in q.prompt
            if q.kind is C:
                assert "What is {name}?" in q.prompt
                assert q.answer_key == "{name} is {topic}!"
                assert q.answer_key in (q.choices or [])
            if q.kind is K:
                assert q.answer_key == "Say {name} {{twice}}"


def test_template_placeholders() -> None:
    assert template_placeholders("Hi {name}, about {prompt} and {topic}") == {"name", "prompt", "topic"}
    assert template_placeholders("no fields, {{literal}} braces") == set()
    assert template_placeholders("{age}") - ALLOWED_PLACEHOLDERS == {"age"}
    with pytest.raises(ValueError):
        template_placeholders("unbalanced {name")


FREE_TEXT = QuizShape(comprehension=2, consent=2, free_response=1, choices_per_question=4)


def test_free_text_comprehension_has_no_choices_and_keys_the_persons_answer() -> None:
    target = profile()
    answers = {p.question: p.answer for p in target.prompts}
    for seed in SEEDS:
        questions = generate(seed, shape=FREE_TEXT, target=target)
        assert [q.kind for q in questions] == [C, C, K, K, F]
        for q in questions:
            if q.kind is C:
                assert q.choices is None  # nothing to recognise the answer from
                assert q.answer_key == answers[q.topic]
                assert q.answer_key not in q.prompt
            elif q.kind is K:
                assert q.choices is not None and q.answer_key in q.choices  # consent stays multiple choice


def test_free_response_references_are_the_topic_answer_then_the_boundaries() -> None:
    target = profile()
    answers = {p.question: p.answer for p in target.prompts}
    boundaries = [c.statement for c in target.consent_preferences]
    for seed in SEEDS:
        (free,) = [q for q in generate(seed, shape=FREE_TEXT, target=target) if q.kind is F]
        assert free.references == [answers[free.topic], *boundaries]


def test_free_response_references_without_prompts_are_the_boundaries() -> None:
    target = profile(prompts=[])
    shape = QuizShape(comprehension=0, consent=1, free_response=1, choices_per_question=3)
    (free,) = [q for q in generate(1, shape=shape, target=target) if q.kind is F]
    assert free.references == [c.statement for c in target.consent_preferences]
