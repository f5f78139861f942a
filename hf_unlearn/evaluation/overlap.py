"""Text overlap: BLEU and ROUGE-L, computed offline (``evaluate.load`` needs the Hub).

ConceptVectors scores a model's answers against **another model's answers to the same prompt** (not against gold
answers): 1.0 means "unchanged". BLEU is order-dependent, ROUGE-L F1 is not.

Argument order. :func:`bleu` and :func:`text_overlap` take ``(hypothesis, reference)`` in the usual MT sense: the
hypothesis' n-grams are clipped against the reference, and the brevity penalty punishes a hypothesis *shorter* than
the reference. hf_unlearn's validation and audit code passes the **changed** model's answer (ablated / unlearned) as
the hypothesis and the **original** model's answer as the reference. The ConceptVectors code does the opposite (the
unlearned answer is its ``reference``, the original answer its ``candidate``), so its BLEU penalises *longer*
unlearned answers instead of shorter ones; pass ``bleu_order="conceptvectors"`` to
:func:`hf_unlearn.concepts.validation.validate_concept_vectors` for that order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["UnicodeWordTokenizer", "bleu", "rouge_l", "rouge_l_recall", "text_overlap"]


# --------------------------------------------------------------------------------------------------------------------
# BLEU
# --------------------------------------------------------------------------------------------------------------------


def _bleu_builtin(hyp: list[str], ref: list[str], max_n: int = 4) -> float:
    """NLTK's ``sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)``, re-implemented.

    Kept step for step (unreduced denominators, ``max(1, ...)`` for orders longer than the hypothesis, 0 when no
    unigram matches) so that both back ends agree to floating-point precision.
    """
    numerators, denominators = [], []
    for n in range(1, max_n + 1):
        hyp_counts = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        ref_counts = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        numerators.append(sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items()))
        denominators.append(max(1, sum(hyp_counts.values())))
    if numerators[0] == 0:
        return 0.0
    # Brevity penalty with a single reference: the closest reference length is its length.
    if len(hyp) > len(ref):
        brevity = 1.0
    else:
        brevity = math.exp(1 - len(ref) / len(hyp))
    # Method 3 (NIST geometric smoothing): the k-th order without a match gets 1 / (2^k * denominator).
    precisions, k = [], 1
    for num, den in zip(numerators, denominators):
        if num == 0:
            precisions.append(1 / (2**k * den))
            k += 1
        else:
            precisions.append(num / den)
    return brevity * math.exp(math.fsum(math.log(p) / max_n for p in precisions))


@lru_cache(maxsize=1)
def _nltk_bleu():
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError:  # nltk comes with rouge-score; without it the built-in copy gives the same numbers
        return None
    return sentence_bleu, SmoothingFunction().method3


def bleu(hypothesis: str, reference: str, backend: str = "auto") -> float:
    """Sentence BLEU of ``hypothesis`` against one ``reference``: whitespace tokens, uniform 4-gram weights,
    smoothing method 3 (as ConceptVectors, via NLTK).

    ``backend``: ``"nltk"``, ``"builtin"`` (an exact re-implementation) or ``"auto"`` (NLTK when importable).
    Empty texts: two empty (whitespace-only) texts score 1.0 (identical), exactly one empty text scores 0.0; NLTK
    itself returns 0 in both cases. Note that with method 3 even identical texts shorter than 4 tokens score below 1
    (``"paris"`` vs ``"paris"`` is ``(1 · 1/2 · 1/4 · 1/8)^(1/4) ≈ 0.354``), as in the reference numbers.

    Example:
        >>> bleu("the cat sat on the mat", "the cat is on the mat")
        0.3799...
    """
    hyp, ref = hypothesis.split(), reference.split()
    if not hyp or not ref:
        return 1.0 if not hyp and not ref else 0.0
    if backend not in ("auto", "nltk", "builtin"):
        raise ValueError(f"backend={backend!r}: choose 'auto', 'nltk' or 'builtin'")
    nltk_bleu = _nltk_bleu() if backend != "builtin" else None
    if nltk_bleu is None:
        if backend == "nltk":
            raise ImportError("backend='nltk' needs nltk: pip install nltk")
        return _bleu_builtin(hyp, ref)
    sentence_bleu, method3 = nltk_bleu
    return float(sentence_bleu([ref], hyp, smoothing_function=method3))


# --------------------------------------------------------------------------------------------------------------------
# ROUGE-L
# --------------------------------------------------------------------------------------------------------------------


class UnicodeWordTokenizer:
    """A ROUGE tokenizer for non-English text: lower-cased Unicode word characters (``\\w+``), no stemming.

    rouge-score's default tokenizer keeps only ``[a-z0-9]``, so it splits German words at umlauts and drops
    non-Latin scripts entirely.

    Example:
        >>> rouge_l("Wer schrieb die Bücher?", "Wer schrieb die Bücher?", tokenizer=UnicodeWordTokenizer())
        1.0
    """

    _WORD = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text.lower())


@lru_cache(maxsize=8)
def _rouge(tokenizer: Any = None) -> tuple[Any, Any]:
    """``(scorer, tokenizer)``; the tokenizer is built here so the empty-text rule sees the scorer's exact tokens."""
    try:
        from rouge_score import rouge_scorer, tokenizers
    except ImportError as error:
        raise ImportError(
            "ROUGE-L needs rouge-score (evaluate.load('rouge') does not work offline): pip install rouge-score"
        ) from error
    tokenizer = tokenizer if tokenizer is not None else tokenizers.DefaultTokenizer(use_stemmer=True)
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=tokenizer), tokenizer


def _rouge_score(hypothesis: str, reference: str, tokenizer: Any):
    scorer, tok = _rouge(tokenizer)
    if not tok.tokenize(hypothesis) and not tok.tokenize(reference):
        return None
    return scorer.score(reference, hypothesis)["rougeL"]


def rouge_l_recall(hypothesis: str, reference: str, tokenizer: Any = None) -> float:
    """ROUGE-L recall of ``hypothesis`` against ``reference`` (``LCS / |reference|``), as TOFU reports it for a
    model's answer against the gold answer. Texts without a word score as :func:`rouge_l` does.

    Example:
        >>> rouge_l_recall("paris is the capital", "the capital is paris")  # LCS 2 of 4 reference words
        0.5
    """
    score = _rouge_score(hypothesis, reference, tokenizer)
    if score is None:
        return 1.0 if hypothesis.split() == reference.split() else 0.0
    return float(score.recall)


def rouge_l(hypothesis: str, reference: str, tokenizer: Any = None) -> float:
    """ROUGE-L F1 (rouge-score, Porter stemming) between two texts; symmetric in its arguments.

    If the ROUGE tokenizer finds no word in either text (empty, or only characters it discards), the score is 1.0
    when the whitespace-split texts are identical and 0.0 otherwise, where rouge-score would return 0. ``tokenizer``:
    any hashable object with ``tokenize(text) -> list[str]`` (e.g. :class:`UnicodeWordTokenizer`); default
    rouge-score's (lower-case ``[a-z0-9]`` words, Porter-stemmed when longer than 3 characters).

    Example:
        >>> rouge_l("the cat sat on the mat", "the cat is on the mat")  # LCS 5 of 6 tokens each side
        0.8333...
    """
    score = _rouge_score(hypothesis, reference, tokenizer)
    if score is None:
        return 1.0 if hypothesis.split() == reference.split() else 0.0
    return float(score.fmeasure)


# --------------------------------------------------------------------------------------------------------------------
# Both
# --------------------------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return float(math.fsum(values) / len(values)) if values else None


def text_overlap(
    hypotheses: Sequence[str], references: Sequence[str], rouge_tokenizer: Any = None
) -> dict[str, Any]:
    """BLEU and ROUGE-L of each hypothesis against the reference at the same index, and their means.

    Returns ``{"bleu": mean, "rouge_l": mean, "bleu_per_item": [...], "rouge_l_per_item": [...], "n": count}``;
    means are ``None`` for empty inputs. Plain Python floats (JSON-serialisable). See the module docstring for which
    answers hf_unlearn passes as hypotheses.

    Example:
        >>> scores = text_overlap(unlearned_answers, original_answers)
        >>> scores["bleu"], scores["rouge_l"]
    """
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references: pair them one to one")
    bleus = [bleu(h, r) for h, r in zip(hypotheses, references)]
    rouges = [rouge_l(h, r, tokenizer=rouge_tokenizer) for h, r in zip(hypotheses, references)]
    return {
        "bleu": _mean(bleus),
        "rouge_l": _mean(rouges),
        "bleu_per_item": bleus,
        "rouge_l_per_item": rouges,
        "n": len(bleus),
    }
