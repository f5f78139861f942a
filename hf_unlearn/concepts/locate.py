"""Locate the value vectors that carry a concept: a vocabulary scorer and a contrastive attribution scorer.

Two complementary ways to rank every MLP value vector ``(layer, dim)`` of a model for one concept:

* ``"vocab"`` (static, weights only): how strongly the vector's vocabulary projection ``E · v`` promotes the
  concept's *characteristic tokens*. Those tokens are derived from the concept's own text (name, questions, answers,
  paragraph) against a background (background questions/text, smoothed by a tokenizer-level unigram prior), never
  from a hand-written list.
* ``"attribution"`` (causal, one forward + one backward): activation × gradient of the concept's answer
  log-likelihood with respect to the MLP coefficients (the input of each layer's MLP output module), summed over
  positions and examples: a first-order estimate of how much the log-likelihood drops when the vector is zeroed.
  Made *contrastive* against the same attribution on background data, because in real models the plain score is
  dominated by generic high-magnitude neurons that support every answer.

Concepts are spread over many vectors in small models, so the API returns a ranked *set*: the records of
:func:`locate_concept_vectors` go straight into :func:`~hf_unlearn.concepts.ablate_concept_vectors`, and
:func:`score_value_vectors` gives the full score tensors to choose other sets.

Measured results: README.md ("Locating concepts in SmolLM2-135M-Instruct") and ``examples/locate_concept.py``.

Example:
    >>> found = locate_concept_vectors(model, tok, "Harry Potter", questions=qs, answers=ans,
    ...                                background_questions=bg_qs, background_answers=bg_ans)
    >>> with ablate_concept_vectors(model, found, mode="zero"): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from ..general_knowledge import held_out_questions
from .attribution import attribution_components, attribution_scores, contrastive_scores, rank_fusion
from .projection import layer_list, vocab_scores
from .records import ConceptVector
from .set_size import choose_set_size
from .tokens import characteristic_tokens, token_prior

__all__ = [
    "SCORERS",
    "ConceptData",
    "ConceptScores",
    "LocateOptions",
    "attribution_scores",
    "characteristic_tokens",
    "contrastive_scores",
    "locate_concept_vectors",
    "score_value_vectors",
    "token_prior",
    "vocab_scores",
]

SCORERS = ("vocab", "attribution")


# --------------------------------------------------------------------------------------------------------- results
@dataclass
class ConceptScores:
    """Scores of every value vector of ``layers`` for one concept.

    Attributes:
        concept: the concept's name.
        ranking: ``{layer: (d_ff,)}``, the score that orders the candidates (higher = more concept-specific).
        components: every computed score by name, each ``{layer: (d_ff,)}``: ``"vocab"``; ``"attribution"``
            (contrastive when a background was given; the rank fusion of the QA and text scores when both were used);
            the raw ``"attribution_concept"`` / ``"attribution_background"`` (with ``_qa`` / ``_text`` infixes, e.g.
            ``"attribution_qa_concept"``, when both kinds of data were used) and ``"attribution_qa"`` /
            ``"attribution_text"``.
        token_ids / token_weights: the characteristic tokens used by the vocab scorer (empty without it).
        questions, answers, source_text, background_questions: the data, copied into the records.

    Example:
        >>> result = score_value_vectors(model, tok, "Harry Potter", questions=qs, answers=ans, text=article)
        >>> records = result.to_records(40); top_vocab = result.top(10, by="vocab")
    """

    concept: str
    ranking: dict[int, torch.Tensor]
    components: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    token_ids: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    token_weights: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    questions: list[str] = field(default_factory=list)
    answers: list[str] | None = None
    source_text: str = ""
    background_questions: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[int]:
        return sorted(self.ranking)

    def flat(self, by: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All scores in one vector and the matching ``(N, 2)`` tensor of ``(layer, dim)`` locations."""
        scores = self.ranking if by is None else self.components[by]
        layers = sorted(scores)
        values = torch.cat([scores[layer].float() for layer in layers])
        locations = torch.cat(
            [torch.stack([torch.full((len(scores[layer]),), layer), torch.arange(len(scores[layer]))], 1)
             for layer in layers]
        )
        return values, locations

    def top(self, n: int, by: str | None = None) -> list[tuple[int, int]]:
        """The ``n`` best ``(layer, dim)`` by the ranking score (or by component ``by``), best first."""
        values, locations = self.flat(by)
        # Stable sort on the negated scores: ties keep layer/dim order, so results are reproducible.
        order = torch.sort(-values, stable=True).indices[:n]
        return [(int(locations[i, 0]), int(locations[i, 1])) for i in order]

    def to_records(self, n: int, by: str | None = None) -> list[ConceptVector]:
        """The ``n`` best candidates as :class:`ConceptVector` records with every component score and the rank.

        Their ``unrelated_questions`` (what :func:`validate_concept_vectors` measures side effects on by default) are
        held-out general-knowledge questions, not the background questions: the scorers were tuned to spare those,
        so side effects measured on them look smaller than they are."""
        unrelated = held_out_questions(self.concept, seen=[*self.background_questions, *self.questions])
        records = []
        for rank, (layer, dim) in enumerate(self.top(n, by)):
            scores = {name: float(values[layer][dim]) for name, values in self.components.items()}
            scores["score"] = float((self.ranking if by is None else self.components[by])[layer][dim])
            scores["rank"] = rank
            records.append(
                ConceptVector(
                    concept=self.concept,
                    layer=layer,
                    dim=dim,
                    questions=list(self.questions),
                    unrelated_questions=list(unrelated),
                    source_text=self.source_text,
                    answers=None if self.answers is None else list(self.answers),
                    scores=scores,
                )
            )
        return records


# ------------------------------------------------------------------------------------------------------- front door
@dataclass
class LocateOptions:
    """How :func:`score_value_vectors` and :func:`locate_concept_vectors` score; every field is also accepted as a
    keyword argument of both.

    Parameters:
        scorer: ``"attribution"`` (contrastive activation × gradient, see :func:`attribution_scores`), ``"vocab"``
            (vocabulary projection onto the concept's characteristic tokens, see :func:`vocab_scores`; weights only)
            or ``("vocab", "attribution")`` (reciprocal rank fusion of both).
        layers: the layers to search (default all).
        prompt_template, chat: how questions and answers are teacher forced: after
            ``prompt_template.format(q=question)``, or with ``chat=True`` that prompt as the user turn and the answer
            as the assistant turn of the tokenizer's chat template.
        attribution_data: ``"qa"`` (answer log-likelihood), ``"text"`` (LM log-likelihood of each text, one sequence
            per string: pass a paragraph as one string so later sentences see the concept in context), ``"both"``
            (each contrasted with its own kind of background, then rank-fused) or ``"auto"`` (``"both"`` when
            questions with answers and a text are given, else whichever is there).
        contrastive, contrast_constant: see :func:`contrastive_scores`.
        num_tokens: how many characteristic tokens the vocab scorer uses.
        vocab_method, apply_final_norm: see :func:`vocab_scores`.
        batch_size, max_length: attribution batching (``None``: one forward and one backward) and truncation.
        progress: show a progress bar over the scoring passes.
    """

    scorer: str | Sequence[str] = "attribution"
    layers: Sequence[int] | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    chat: bool = False
    attribution_data: str = "auto"
    contrastive: bool = True
    contrast_constant: float | None = None
    num_tokens: int = 50
    vocab_method: str = "moments"
    apply_final_norm: bool = False
    batch_size: int | None = None
    max_length: int | None = 512
    progress: bool = True

    @classmethod
    def build(cls, options: LocateOptions | None, values: dict[str, Any]) -> LocateOptions:
        """``options`` (or the defaults) with ``values`` overriding fields; an unknown name is a clear error."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown locate option(s) {unknown}: choose from {[f.name for f in fields(cls)]}")
        return replace(options or cls(), **values)

    @property
    def scorers(self) -> tuple[str, ...]:
        names = (self.scorer,) if isinstance(self.scorer, str) else tuple(self.scorer)
        if not names or any(name not in SCORERS for name in names):
            raise ValueError(f"scorer={self.scorer!r}: choose 'vocab', 'attribution' or both as a tuple")
        return names


@dataclass
class ConceptData:
    """What the locator learns a concept from, and the unrelated background it contrasts against."""

    questions: list[str] = field(default_factory=list)
    answers: list[str] | None = None
    texts: list[str] = field(default_factory=list)
    background_questions: list[str] = field(default_factory=list)
    background_answers: list[str] | None = None
    background_texts: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, questions=None, answers=None, text=None, background_questions=None, background_answers=None,
           background_text=None) -> ConceptData:
        return cls(
            questions=list(questions or []),
            answers=None if answers is None else list(answers),
            texts=_as_list(text),
            background_questions=list(background_questions or []),
            background_answers=None if background_answers is None else list(background_answers),
            background_texts=_as_list(background_text),
        )


def _as_list(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return []
    return [text] if isinstance(text, str) else list(text)


def score_value_vectors(
    model: nn.Module,
    tokenizer,
    concept: str,
    *,
    questions: Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    text: str | Sequence[str] | None = None,
    background_questions: Sequence[str] | None = None,
    background_answers: Sequence[str] | None = None,
    background_text: str | Sequence[str] | None = None,
    options: LocateOptions | None = None,
    **option_values: Any,
) -> ConceptScores:
    """Score every value vector of the searched layers for ``concept``; the data as in
    :func:`locate_concept_vectors`, the scoring by :class:`LocateOptions` (or its fields as keywords).

    Example:
        >>> result = score_value_vectors(model, tok, "Paris", questions=qs, answers=ans, scorer="vocab")
        >>> result.components["vocab"][12].topk(5)
    """
    options = LocateOptions.build(options, option_values)
    names = options.scorers
    data = ConceptData.of(questions, answers, text, background_questions, background_answers, background_text)
    layers = layer_list(model, options.layers)
    result = ConceptScores(
        concept=concept,
        ranking={},
        questions=data.questions,
        answers=data.answers,
        source_text="\n\n".join(data.texts),
        background_questions=data.background_questions,
    )
    ranked: list[dict[int, torch.Tensor]] = []
    bar = tqdm(total=len(names), desc=f"Locating {concept!r}", disable=not options.progress)
    if "vocab" in names:
        # The concept's own words; answers get a leading space, the form they take inside running text.
        concept_texts = [" " + concept, *data.questions, *(" " + a for a in data.answers or []), *data.texts]
        background_all = [*data.background_questions, *(" " + a for a in data.background_answers or []),
                          *data.background_texts]
        ids, weights = characteristic_tokens(tokenizer, concept_texts, background_all, num_tokens=options.num_tokens)
        result.token_ids, result.token_weights = ids, weights
        result.components["vocab"] = vocab_scores(
            model, ids, weights, layers, method=options.vocab_method, apply_final_norm=options.apply_final_norm
        )
        ranked.append(result.components["vocab"])
        bar.update(1)
    if "attribution" in names:
        result.components.update(attribution_components(model, tokenizer, data, options, layers, bar=bar))
        ranked.append(result.components["attribution"])
        bar.update(1)
    bar.close()
    result.ranking = ranked[0] if len(ranked) == 1 else rank_fusion(ranked)
    return result


def locate_concept_vectors(
    model: nn.Module,
    tokenizer,
    concept: str,
    *,
    questions: Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    text: str | Sequence[str] | None = None,
    background_questions: Sequence[str] | None = None,
    background_answers: Sequence[str] | None = None,
    background_text: str | Sequence[str] | None = None,
    top_n: int | str = "auto",
    options: LocateOptions | None = None,
    **option_values: Any,
) -> list[ConceptVector]:
    """The ``top_n`` value vectors most specific to ``concept``, as :class:`ConceptVector` records, best first.

    Args:
        questions, answers: the concept's questions and short gold answers.
        text: a paragraph (or several) about the concept: vocab scorer input, and LM-likelihood attribution data.
        background_questions, background_answers, background_text: unrelated general knowledge in the same formats;
            the contrast that keeps generic vectors out (and the vocab scorer's background).
        top_n: size of the returned set (a concept is spread over many vectors in a small model: ablate the set).
            ``"auto"``: with gold answers for the concept's and the background's questions, the largest of 10, 20,
            40, 80 that hurts the concept and spares the background (:func:`~hf_unlearn.concepts.set_size.
            choose_set_size`, measured on the locator's own data only); without them, 20.
        options, **option_values: how to score, a :class:`LocateOptions` and/or its fields as keywords
            (``scorer=``, ``layers=``, ``prompt_template=``, ...).

    Each record carries the concept's data and ``scores`` with every component score at its location, the ranking
    ``"score"`` and the ``"rank"``. Use :func:`score_value_vectors` to keep all the scores and pick other sets.

    Example:
        >>> found = locate_concept_vectors(model, tok, "Paris", questions=qs, answers=ans, text=paragraph,
        ...                                background_questions=bq, background_answers=ba)
        >>> with ablate_concept_vectors(model, found, mode="zero"): evaluate(model)
    """
    if top_n != "auto" and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"top_n must be a positive number of vectors or 'auto' (got {top_n!r})")
    options = LocateOptions.build(options, option_values)
    result = score_value_vectors(
        model, tokenizer, concept, questions=questions, answers=answers, text=text,
        background_questions=background_questions, background_answers=background_answers,
        background_text=background_text, options=options,
    )
    if top_n == "auto":
        top_n = 20
        if questions and answers and background_questions and background_answers:
            top_n, _ = choose_set_size(model, tokenizer, result, questions, answers, background_questions,
                                       background_answers, prompt_template=options.prompt_template, chat=options.chat)
    return result.to_records(top_n)
