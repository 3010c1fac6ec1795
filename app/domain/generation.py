"""Profile + template library + difficulty -> questions. Pure and seedable."""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Sequence

from msgspec import Struct

from app.domain.quiz import (
    GeneratedQuestion,
    QuestionKind,
    TargetProfile,
    Template,
    TemplatePurpose,
)

__all__ = ["ALLOWED_PLACEHOLDERS", "GenerationError", "QuizShape", "generate_quiz", "template_placeholders"]

ALLOWED_PLACEHOLDERS = frozenset({"name", "prompt", "topic"})


class GenerationError(ValueError):
    """The profile or library cannot make a valid quiz (e.g. no distractors for a kind)."""


class QuizShape(Struct, frozen=True):
    """How many questions of each kind, and choices per multiple-choice item.

    ``free_text_comprehension``: comprehension items are answered in the answerer's own words and
    scored by meaning (no choices to recognise the answer from); otherwise they are multiple choice.
    """

    comprehension: int
    consent: int
    free_response: int
    choices_per_question: int
    free_text_comprehension: bool = True


def template_placeholders(text: str) -> set[str]:
    """Placeholder names used in ``text``; raises ``ValueError`` on malformed braces."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _nearest(templates: Sequence[Template], difficulty: int) -> list[Template]:
    # Prefer the requested difficulty; fall back to the closest band so a thin library still works.
    if not templates:
        return []
    best = min(abs(t.difficulty - difficulty) for t in templates)
    return [t for t in templates if abs(t.difficulty - difficulty) == best]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _stem(
    templates: Sequence[Template], kind: QuestionKind, difficulty: int, rng: random.Random, **values: str
) -> tuple[Template, int, str]:
    candidates = _nearest(
        [t for t in templates if t.kind is kind and t.purpose is TemplatePurpose.QUESTION], difficulty
    )
    if not candidates:
        raise GenerationError(f"the template library has no {kind.value} question template")
    template = rng.choice(candidates)
    variant = rng.randrange(len(template.wordings))
    # format_map with only whitelisted keys: user text is inserted as values, never parsed as a template.
    return template, variant, template.wordings[variant].format_map(values)


def _distractors(
    templates: Sequence[Template],
    kind: QuestionKind,
    difficulty: int,
    forbidden: set[str],
    count: int,
    rng: random.Random,
) -> list[str]:
    pool = sorted(
        (t for t in templates if t.kind is kind and t.purpose is TemplatePurpose.DISTRACTOR),
        key=lambda t: (abs(t.difficulty - difficulty), t.key),
    )
    picked: list[str] = []
    seen = set(forbidden)
    for template in pool:
        candidates = list(template.wordings)
        rng.shuffle(candidates)
        for text in candidates:
            norm = _normalise(text)
            if norm not in seen:
                seen.add(norm)
                picked.append(text)
    if not picked:
        raise GenerationError(f"the template library has no usable {kind.value} distractors")
    # Draw from the nearest-difficulty end of the pool, then shuffle so position gives nothing away.
    head = picked[: max(count * 3, count)]
    return rng.sample(head, min(count, len(head)))


def _choice_question(
    rng: random.Random,
    templates: Sequence[Template],
    kind: QuestionKind,
    position: int,
    difficulty: int,
    correct: str,
    forbidden: set[str],
    shape: QuizShape,
    subject: str,
    **values: str,
) -> GeneratedQuestion:
    template, variant, prompt = _stem(templates, kind, difficulty, rng, **values)
    choices = [correct, *_distractors(templates, kind, difficulty, forbidden, shape.choices_per_question - 1, rng)]
    rng.shuffle(choices)
    return GeneratedQuestion(
        id=_uuid(rng),
        position=position,
        kind=kind,
        prompt=prompt,
        choices=choices,
        answer_key=correct,
        template_key=template.key,
        variant=variant,
        difficulty=difficulty,
        topic=subject,
    )


def _text_question(
    rng: random.Random,
    templates: Sequence[Template],
    kind: QuestionKind,
    position: int,
    difficulty: int,
    name: str,
    topic: str,
    answer_key: str | None,
    references: list[str] | None = None,
) -> GeneratedQuestion:
    template, variant, prompt = _stem(templates, kind, difficulty, rng, name=name, prompt=topic, topic=topic)
    return GeneratedQuestion(
        id=_uuid(rng),
        position=position,
        kind=kind,
        prompt=prompt,
        choices=None,
        answer_key=answer_key,
        template_key=template.key,
        variant=variant,
        difficulty=difficulty,
        topic=topic,
        references=references,
    )


def generate_quiz(
    profile: TargetProfile,
    templates: Sequence[Template],
    shape: QuizShape,
    difficulty: int,
    rng: random.Random,
) -> list[GeneratedQuestion]:
    """Build the questions of one quiz.

    Comprehension items ask what the person answered to one of their prompts: in free text (the answer
    key is their answer, scored by meaning) or, with ``shape.free_text_comprehension`` off, as multiple
    choice. Consent items ask which statement is one of their boundaries. In multiple choice the right
    choice is the person's own text verbatim and the distractors come from the library, never equal to
    (or a case/spacing variant of) anything the person wrote for that kind. Free responses carry the
    person's relevant texts as ``references`` for rubric scorers. A profile with fewer prompts or
    preferences than asked gets fewer items.
    """
    active = [t for t in templates if t.active]
    questions: list[GeneratedQuestion] = []
    name = profile.display_name

    prompts = rng.sample(profile.prompts, min(shape.comprehension, len(profile.prompts)))
    own_answers = {_normalise(p.answer) for p in profile.prompts}
    for pair in prompts:
        if shape.free_text_comprehension:
            questions.append(
                _text_question(
                    rng,
                    active,
                    QuestionKind.COMPREHENSION,
                    len(questions),
                    difficulty,
                    name,
                    pair.question,
                    pair.answer,
                )
            )
            continue
        questions.append(
            _choice_question(
                rng,
                active,
                QuestionKind.COMPREHENSION,
                len(questions),
                difficulty,
                pair.answer,
                own_answers,
                shape,
                pair.question,
                name=name,
                prompt=pair.question,
                topic=pair.question,
            )
        )

    consents = rng.sample(profile.consent_preferences, min(shape.consent, len(profile.consent_preferences)))
    own_statements = {_normalise(c.statement) for c in profile.consent_preferences}
    for preference in consents:
        questions.append(
            _choice_question(
                rng,
                active,
                QuestionKind.CONSENT,
                len(questions),
                difficulty,
                preference.statement,
                own_statements,
                shape,
                preference.topic,
                name=name,
                prompt=preference.topic,
                topic=preference.topic,
            )
        )

    topics = [p.question for p in profile.prompts] or [c.topic for c in profile.consent_preferences] or ["yourself"]
    answers_by_topic = {p.question: p.answer for p in profile.prompts}
    boundaries = [c.statement for c in profile.consent_preferences]
    for _ in range(shape.free_response):
        topic = rng.choice(topics)
        references = [answers_by_topic[topic]] if topic in answers_by_topic else []
        questions.append(
            _text_question(
                rng,
                active,
                QuestionKind.FREE_RESPONSE,
                len(questions),
                difficulty,
                name,
                topic,
                None,
                references=[*references, *boundaries],
            )
        )
    if not questions:
        raise GenerationError("the quiz would have no questions")
    return questions
