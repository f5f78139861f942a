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

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..architectures import decoder_layers, final_norm_gain, mlp_out_module, unembedding, value_vectors_view
from ..data import UnlearningCollator, padding_id, tokenize_pair
from ..eval_mode import eval_mode
from ..evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from ..general_knowledge import held_out_questions
from ..losses import IGNORE_INDEX, sequence_log_probs
from .projection import scan_value_vectors
from .records import ConceptVector
from .set_size import choose_set_size

__all__ = [
    "SCORERS",
    "ConceptScores",
    "attribution_scores",
    "characteristic_tokens",
    "contrastive_scores",
    "locate_concept_vectors",
    "score_value_vectors",
    "token_prior",
    "vocab_scores",
]

SCORERS = ("vocab", "attribution")


# --------------------------------------------------------------------------------------------- characteristic tokens
def _token_counts(tokenizer, texts: Sequence[str]) -> Counter:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    counts: Counter = Counter()
    for text in texts:
        if text:
            counts.update(t for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special)
    return counts


def token_prior(tokenizer) -> torch.Tensor:
    """A tokenizer-level unigram distribution over the vocabulary, standing in for "general text" frequencies.

    * Unigram models (SentencePiece/T5 style) store each piece's log-probability: used directly.
    * BPE models: a token made by merge ``i`` was (roughly) the ``i``-th most frequent pair when the tokenizer was
      trained, so a Zipf law over the merge rank, ``p ∝ 1 / (rank + 10)``; base characters get rank 100 (common
      ones like "," or "e" should not look characteristic, rare bytes hardly ever appear in a concept's text).
    * Anything else (WordLevel, slow tokenizers): uniform, i.e. no prior knowledge.

    Example:
        >>> prior = token_prior(tok)
        >>> prior[tok.convert_tokens_to_ids("Ġthe")] > prior[tok.convert_tokens_to_ids("ĠPotter")]
    """
    size = len(tokenizer)
    uniform = torch.full((size,), 1.0 / size, dtype=torch.float64)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return uniform
    try:
        spec = json.loads(backend.to_str())["model"]
    except (ValueError, KeyError, AttributeError):
        return uniform
    if spec.get("type") == "Unigram" and spec.get("vocab"):
        # Pieces are listed in id order as [piece, log-prob].
        logp = torch.full((size,), -30.0, dtype=torch.float64)
        scores = torch.tensor([float(score) for _, score in spec["vocab"]], dtype=torch.float64)[:size]
        logp[: len(scores)] = scores
        prior = logp.exp()
        return prior / prior.sum()
    if spec.get("type") == "BPE" and spec.get("merges"):
        vocab = spec.get("vocab") or {}
        rank = torch.full((size,), 100.0, dtype=torch.float64)
        for index, merge in enumerate(spec["merges"]):
            left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
            token_id = vocab.get(left + right)
            if token_id is not None and token_id < size and rank[token_id] == 100.0:
                rank[token_id] = float(index)
        prior = 1.0 / (rank + 10.0)
        return prior / prior.sum()
    return uniform


def characteristic_tokens(
    tokenizer,
    concept_texts: Sequence[str],
    background_texts: Sequence[str] | None = None,
    num_tokens: int = 50,
    background_weight: float = 0.5,
    smoothing: float = 0.5,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens that characterise a concept's text against a background: ``(token_ids, weights)``, best first.

    Weight of token ``w`` = ``n_c(w) · log(p_c(w) / p_b(w))`` (its contribution to ``KL(p_c || p_b)``, a tf-idf
    style score: frequent in the concept, rare in the background), keeping the ``num_tokens`` best with a positive
    weight. ``p_c`` is the add-``smoothing`` unigram distribution of ``concept_texts``. ``p_b`` mixes the
    background texts' unigram distribution (share ``background_weight``) with ``prior`` (default
    :func:`token_prior`), which stands for general text when the background sample is small or absent, so " the"
    or " of" do not look characteristic just because the background sample is short.

    Example:
        >>> ids, weights = characteristic_tokens(tok, ["Harry Potter", "Who wrote Harry Potter? J.K. Rowling"])
        >>> tok.convert_ids_to_tokens(ids[:5])
    """
    concept = _token_counts(tokenizer, concept_texts)
    if not concept:
        raise ValueError("the concept has no text to derive characteristic tokens from")
    background = _token_counts(tokenizer, background_texts or [])
    vocab = len(tokenizer)
    prior = token_prior(tokenizer) if prior is None else prior.double()
    ids = torch.tensor(sorted(concept), dtype=torch.long)
    n_c = torch.tensor([concept[i] for i in ids.tolist()], dtype=torch.float64)
    p_c = (n_c + smoothing) / (n_c.sum() + smoothing * vocab)
    p_b = prior[ids]
    if background:
        n_b = torch.tensor([background.get(i, 0) for i in ids.tolist()], dtype=torch.float64)
        total_b = float(sum(background.values()))
        p_b = background_weight * (n_b + smoothing) / (total_b + smoothing * vocab) + (1 - background_weight) * p_b
    weights = n_c * torch.log(p_c / p_b)
    keep = weights > 0
    ids, weights = ids[keep], weights[keep]
    order = weights.argsort(descending=True)[:num_tokens]
    return ids[order], weights[order].float()


# ------------------------------------------------------------------------------------------------------ vocab scorer
@torch.no_grad()
def vocab_scores(
    model: nn.Module,
    token_ids: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    method: str = "moments",
    chunk_size: int = 512,
    apply_final_norm: bool = False,
) -> dict[int, torch.Tensor]:
    """How strongly each value vector's vocabulary projection promotes ``token_ids``: ``{layer: (d_ff,) scores}``.

    Score of ``v`` = weighted mean over the tokens of the *standardised* logit ``(E_t · v - mean(E v)) / std(E v)``
    (mean and std over the whole vocabulary), so a large-norm vector that promotes everything does not win. It is
    the number of standard deviations by which the concept's tokens stand out in the vector's projection.

    ``method="moments"`` (default) computes the vocabulary mean and variance exactly from the first two moments of
    the unembedding (``mean = ē·v``, ``var = vᵀ Cov(E) v``): ``O(d_model²)`` memory, a fraction of a second for a
    135M model. ``method="scan"`` computes the same numbers from the full projection with
    :func:`scan_value_vectors` (memory: one ``(vocab, chunk_size)`` block; ~2 s per layer for SmolLM2-135M on two
    CPU cores), useful as a cross-check.

    Example:
        >>> ids, w = characteristic_tokens(tok, concept_texts, background_texts)
        >>> scores = vocab_scores(model, ids, w, layers=range(10, 20))  # {layer: tensor(d_ff)}
    """
    embedding = unembedding(model).detach().float()
    device = embedding.device
    token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)
    weights = torch.ones(len(token_ids)) if token_weights is None else torch.as_tensor(token_weights).float()
    weights = (weights / weights.sum()).to(device)
    layers = _layer_list(model, layers)
    gain = final_norm_gain(model) if apply_final_norm else None
    out: dict[int, torch.Tensor] = {}
    if method == "scan":
        def score_fn(logits: torch.Tensor) -> torch.Tensor:
            # torch.std would be the unbiased estimate; the population one matches the moments method exactly.
            mean = logits.mean(0)
            std = (logits - mean).pow(2).mean(0).sqrt().clamp_min(1e-12)
            return weights @ ((logits[token_ids] - mean) / std)

        parts: dict[int, list[torch.Tensor]] = {}
        for chunk in scan_value_vectors(
            model, layers, top_k=1, chunk_size=chunk_size, apply_final_norm=apply_final_norm, score_fn=score_fn
        ):
            parts.setdefault(chunk.layer, []).append(chunk.extra.cpu())
        return {layer: torch.cat(p) for layer, p in parts.items()}
    if method != "moments":
        raise ValueError(f"method={method!r}: choose 'moments' or 'scan'")
    e_mean = embedding.mean(0)
    covariance = embedding.T @ embedding / embedding.shape[0] - torch.outer(e_mean, e_mean)
    rows = embedding[token_ids]  # (M, d_model)
    for layer in layers:
        values = value_vectors_view(model, layer).detach().float().to(device)  # (d_model, d_ff)
        if gain is not None:
            values = values * gain.detach().float().to(device)[:, None]
        mean = e_mean @ values
        std = (values * (covariance @ values)).sum(0).clamp_min(1e-24).sqrt()
        out[layer] = (weights @ ((rows @ values - mean) / std)).cpu()
    return out


# ------------------------------------------------------------------------------------------------ attribution scorer
def _examples(
    tokenizer,
    questions: Sequence[str] | None,
    answers: Sequence[str] | None,
    text: str | Sequence[str] | None,
    prompt_template: str,
    max_length: int | None,
    chat: bool = False,
) -> list[dict[str, list[int]]]:
    """Tokenised examples: prompt -> answer with -100 on the prompt, or plain text scored everywhere."""
    features = []
    if questions and answers:
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers: pass one answer per question")
        for question, answer in zip(questions, answers):
            if chat:
                prompt = [{"role": "user", "content": prompt_template.format(q=question)}]
                completion = [{"role": "assistant", "content": answer}]
            else:
                prompt = prompt_template.format(q=question)
                # The answer follows "Answer:" as a new word: give it the leading space a tokenizer expects there.
                completion = answer if answer[:1].isspace() or prompt[-1:].isspace() else " " + answer
            prompt_ids, completion_ids = tokenize_pair(tokenizer, prompt, completion)
            ids = prompt_ids + completion_ids
            labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
            features.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    elif text:
        for chunk in [text] if isinstance(text, str) else text:
            ids = list(tokenizer(chunk)["input_ids"])[:max_length]
            features.append({"input_ids": ids, "labels": list(ids)})
    else:
        raise ValueError("attribution needs questions with answers, or a text")
    for feature in features:
        feature["attention_mask"] = [1] * len(feature["input_ids"])
    if all(all(x == IGNORE_INDEX for x in f["labels"][1:]) for f in features):
        raise ValueError(f"no answer token is left to score (max_length={max_length} cut them off?)")
    return features


def attribution_scores(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    text: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    batch_size: int | None = None,
    max_length: int | None = 512,
    reduction: str = "sum",
) -> dict[int, torch.Tensor]:
    """Activation × gradient of the answers' log-likelihood w.r.t. every MLP coefficient: ``{layer: (d_ff,)}``.

    The objective is the mean over examples of the per-token mean log-probability of the answer tokens (teacher
    forced; or of all tokens of ``text`` when no question/answer pairs are given). Score of ``(layer, j)`` =
    ``Σ_examples Σ_positions c_j · ∂L/∂c_j``: zeroing value vector ``j`` removes ``c_j · v_j`` at every position, so
    this is the first-order estimate of the log-likelihood it supports. Positive = its presence supports the answers
    (ablating it should lower their log-probability).

    ``reduction``: ``"sum"`` over examples (signed: what the vector does to the mean log-likelihood), ``"abs_sum"``
    (the sum of per-example magnitudes: a vector that helps one answer and hurts another is not "neutral", which is
    what a background needs) or ``"none"`` (``{layer: (n_examples, d_ff)}``).

    All layers in one forward and one backward per batch (``batch_size=None``: a single batch). A pre-hook on each
    MLP output module adds a zero tensor that requires grad to its input; ``torch.autograd.grad`` w.r.t. those
    tensors gives ``∂L/∂c`` without ever writing ``.grad`` on the parameters, and works on frozen models too. The
    model runs in eval mode (no dropout) and gets its mode back; hooks are removed even on error.

    Memory: the usual activations of one training step for the batch, plus one ``(batch, seq, d_ff)`` tensor per
    hooked layer (SmolLM2-135M, 5 short QA pairs: well under 1 GB); lower ``batch_size`` for long texts.

    Example:
        >>> a = attribution_scores(model, tok, questions=["Who wrote Harry Potter?"], answers=["J.K. Rowling"])
        >>> a[12].topk(10)
    """
    if reduction not in ("sum", "abs_sum", "none"):
        raise ValueError(f"reduction={reduction!r}: choose 'sum', 'abs_sum' or 'none'")
    features = _examples(tokenizer, questions, answers, text, prompt_template, max_length, chat)
    layers = _layer_list(model, layers)
    modules = {layer: mlp_out_module(model, layer) for layer in layers}
    pad_id = padding_id(tokenizer)
    collate = UnlearningCollator(pad_id)
    device = next(model.parameters()).device
    per_example: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    step = batch_size or len(features)
    handles = []
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            if not args:
                raise RuntimeError(f"the MLP output module of layer {layer} was called without a positional input")
            coefficients = args[0]
            # Adding a zero leaf keeps the graph intact (earlier layers still see gradients through this MLP) and
            # makes the coefficients differentiable even when every parameter is frozen.
            delta = torch.zeros_like(coefficients, requires_grad=True)
            captured[layer] = (coefficients.detach(), delta)
            return (coefficients + delta, *args[1:])

        return hook

    with eval_mode(model):
        try:
            for layer, module in modules.items():
                handles.append(module.register_forward_pre_hook(make_hook(layer)))
            for start in range(0, len(features), step):
                captured.clear()
                # Also inside a caller's no_grad / inference_mode block: the scores need a backward pass (and tensors
                # made under inference mode, the batch included, could not be saved for it).
                with torch.inference_mode(False), torch.enable_grad():
                    batch = {k: v.to(device) for k, v in collate(features[start : start + step]).items()}
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    sums, counts = sequence_log_probs(logits, batch["labels"])
                    # Per-example mean over answer tokens, summed over the batch: total / len(features) is the mean.
                    objective = (sums / counts.clamp(min=1)).sum() / len(features)
                    missing = [layer for layer in layers if layer not in captured]
                    if missing:
                        raise RuntimeError(f"the forward pass never reached the MLP output module of layers {missing}")
                    grads = torch.autograd.grad(objective, [captured[layer][1] for layer in layers], allow_unused=True)
                mask = batch["attention_mask"].unsqueeze(-1).to(logits.dtype)
                for layer, grad in zip(layers, grads):
                    activation = captured[layer][0]
                    if grad is None:  # the layer cannot influence the objective (e.g. it only sees padding)
                        grad = torch.zeros_like(activation)
                    # Sum over positions within each example: the net effect on that example's log-likelihood.
                    per_example[layer].append((activation.float() * grad.float() * mask).sum(1).double().cpu())
                del logits, grads
                captured.clear()
        finally:
            for handle in handles:
                handle.remove()
            captured.clear()
    out = {layer: torch.cat(parts) for layer, parts in per_example.items()}
    if reduction == "sum":
        return {layer: values.sum(0).float() for layer, values in out.items()}
    if reduction == "abs_sum":
        return {layer: values.abs().sum(0).float() for layer, values in out.items()}
    return {layer: values.float() for layer, values in out.items()}


def contrastive_scores(
    concept: dict[int, torch.Tensor],
    background: dict[int, torch.Tensor],
    constant: float | None = None,
) -> dict[int, torch.Tensor]:
    """``concept / (|background| + constant)``: high for vectors that support the concept but not everything else.

    ``background`` is best the ``reduction="abs_sum"`` attribution (per-example magnitudes, so effects on different
    background answers cannot cancel out). ``constant`` (default: half the mean ``|background|`` over all scored
    vectors) sets how far a tiny background attribution is trusted: with 0 a vector that does nothing anywhere
    could win on noise; a very large constant gives back the plain concept attribution.

    Example:
        >>> c = attribution_scores(model, tok, questions=hp_q, answers=hp_a)
        >>> s = contrastive_scores(c, attribution_scores(model, tok, bg_q, bg_a, reduction="abs_sum"))
    """
    if constant is None:
        constant = 0.5 * float(torch.cat([b.abs() for b in background.values()]).mean())
    constant = max(constant, 1e-12)
    return {layer: concept[layer] / (background[layer].abs() + constant) for layer in concept}


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
def _layer_list(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    count = len(decoder_layers(model))
    if layers is None:
        return list(range(count))
    out = sorted({int(layer) % count if -count <= int(layer) < 0 else int(layer) for layer in layers})
    bad = [layer for layer in out if not 0 <= layer < count]
    if bad:
        raise IndexError(f"layers {bad} out of range: the model has {count} decoder layers")
    return out


def _rank_fusion(parts: list[dict[int, torch.Tensor]], k: float = 60.0) -> dict[int, torch.Tensor]:
    """Reciprocal rank fusion ``Σ_s 1 / (k + rank_s)``: needs no common scale, rewards being high in every list."""
    layers = sorted(parts[0])
    sizes = [len(parts[0][layer]) for layer in layers]
    fused = torch.zeros(sum(sizes), dtype=torch.float64)
    for part in parts:
        values = torch.cat([part[layer].float() for layer in layers])
        ranks = torch.empty_like(values, dtype=torch.float64)
        ranks[torch.sort(-values, stable=True).indices] = torch.arange(len(values), dtype=torch.float64)
        fused += 1.0 / (k + ranks)
    return {layer: chunk.float() for layer, chunk in zip(layers, fused.split(sizes))}


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
    scorer: str | Sequence[str] = "attribution",
    layers: Sequence[int] | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    attribution_data: str = "auto",
    contrastive: bool = True,
    contrast_constant: float | None = None,
    num_tokens: int = 50,
    vocab_method: str = "moments",
    apply_final_norm: bool = False,
    batch_size: int | None = None,
    max_length: int | None = 512,
    progress: bool = True,
) -> ConceptScores:
    """Score every value vector of ``layers`` for ``concept``; arguments as in :func:`locate_concept_vectors`.

    ``attribution_data``: ``"qa"`` (answer log-likelihood), ``"text"`` (LM log-likelihood of each text, one
    sequence per string: pass a paragraph as one string so later sentences see the concept in context), ``"both"``
    (each contrasted with its own kind of background, then rank-fused) or ``"auto"`` (``"both"`` when questions with
    answers and a text are given, else whichever is there). On SmolLM2-135M, adding the text made the located set
    generalise to held-out questions about the same concept (examples/locate_concept.py).

    Example:
        >>> result = score_value_vectors(model, tok, "Paris", questions=qs, answers=ans, scorer="vocab")
        >>> result.components["vocab"][12].topk(5)
    """
    names = (scorer,) if isinstance(scorer, str) else tuple(scorer)
    unknown = [name for name in names if name not in SCORERS]
    if not names or unknown:
        raise ValueError(f"scorer={scorer!r}: choose 'vocab', 'attribution' or both as a tuple")
    questions, background_questions = list(questions or []), list(background_questions or [])
    answers_list = None if answers is None else list(answers)
    background_answers_list = None if background_answers is None else list(background_answers)
    texts, background_texts = _as_list(text), _as_list(background_text)
    layers = _layer_list(model, layers)
    result = ConceptScores(
        concept=concept,
        ranking={},
        questions=questions,
        answers=answers_list,
        source_text="\n\n".join(texts),
        background_questions=background_questions,
    )
    ranked: list[dict[int, torch.Tensor]] = []
    bar = tqdm(total=len(names), desc=f"Locating {concept!r}", disable=not progress)
    if "vocab" in names:
        # The concept's own words; answers get a leading space, the form they take inside running text.
        concept_texts = [" " + concept, *questions, *(" " + a for a in answers_list or []), *texts]
        background_all = [*background_questions, *(" " + a for a in background_answers_list or []), *background_texts]
        ids, weights = characteristic_tokens(tokenizer, concept_texts, background_all, num_tokens=num_tokens)
        result.token_ids, result.token_weights = ids, weights
        result.components["vocab"] = vocab_scores(
            model, ids, weights, layers, method=vocab_method, apply_final_norm=apply_final_norm
        )
        ranked.append(result.components["vocab"])
        bar.update(1)
    if "attribution" in names:
        result.components.update(
            _attribution_components(
                model, tokenizer, questions, answers_list, texts, background_questions, background_answers_list,
                background_texts, layers=layers, prompt_template=prompt_template, chat=chat,
                attribution_data=attribution_data, contrastive=contrastive, contrast_constant=contrast_constant,
                batch_size=batch_size, max_length=max_length, bar=bar,
            )
        )
        ranked.append(result.components["attribution"])
        bar.update(1)
    bar.close()
    result.ranking = ranked[0] if len(ranked) == 1 else _rank_fusion(ranked)
    return result


def _attribution_components(
    model, tokenizer, questions, answers, texts, background_questions, background_answers, background_texts, *,
    layers, prompt_template, chat, attribution_data, contrastive, contrast_constant, batch_size, max_length, bar=None,
) -> dict[str, dict[int, torch.Tensor]]:
    """Concept, background and contrastive attributions per data kind, fused into ``"attribution"``."""
    has_qa = bool(questions and answers)
    if attribution_data not in ("auto", "qa", "text", "both"):
        raise ValueError(f"attribution_data={attribution_data!r}: choose 'auto', 'qa', 'text' or 'both'")
    kinds = {"auto": [k for k, ok in (("qa", has_qa), ("text", bool(texts))) if ok], "qa": ["qa"], "text": ["text"],
             "both": ["qa", "text"]}[attribution_data]
    if not kinds or ("qa" in kinds and not has_qa) or ("text" in kinds and not texts):
        raise ValueError(
            f"attribution_data={attribution_data!r} needs {' and '.join(kinds) or 'questions with answers or a text'}"
            f" for the concept: got {len(questions)} questions, {len(answers or [])} answers, {len(texts)} texts"
        )
    common = dict(
        layers=layers, prompt_template=prompt_template, chat=chat, batch_size=batch_size, max_length=max_length
    )
    data = {"qa": dict(questions=questions, answers=answers), "text": dict(text=texts)}
    background_data = {
        "qa": dict(questions=background_questions, answers=background_answers)
        if background_questions and background_answers else None,
        "text": dict(text=background_texts) if background_texts else None,
    }
    out: dict[str, dict[int, torch.Tensor]] = {}
    fused = []
    for kind in kinds:
        suffix = f"_{kind}" if len(kinds) > 1 else ""
        if bar is not None:
            bar.set_postfix_str(f"attribution on {kind}")
        concept_attr = attribution_scores(model, tokenizer, **data[kind], **common)
        out[f"attribution{suffix}_concept"] = concept_attr
        score = concept_attr
        if contrastive:
            # A QA concept is contrasted with background QA, a text with background text: same format, so the
            # generic "answer formatting" or "fluent text" neurons cancel.
            background = background_data[kind] or background_data["text" if kind == "qa" else "qa"]
            if background is None:
                warnings.warn(
                    "no background questions/answers or text: using the plain (non-contrastive) attribution, whose "
                    "top vectors are often generic high-magnitude neurons; pass background data to avoid them",
                    stacklevel=3,
                )
            else:
                background_attr = attribution_scores(model, tokenizer, **background, **common, reduction="abs_sum")
                out[f"attribution{suffix}_background"] = background_attr
                score = contrastive_scores(concept_attr, background_attr, contrast_constant)
        out[f"attribution{suffix}"] = score
        fused.append(score)
    if len(fused) > 1:
        out["attribution"] = _rank_fusion(fused)
    return out


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
    scorer: str | Sequence[str] = "attribution",
    layers: Sequence[int] | None = None,
    top_n: int | str = "auto",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    attribution_data: str = "auto",
    contrastive: bool = True,
    contrast_constant: float | None = None,
    num_tokens: int = 50,
    vocab_method: str = "moments",
    apply_final_norm: bool = False,
    batch_size: int | None = None,
    max_length: int | None = 512,
    progress: bool = True,
) -> list[ConceptVector]:
    """The ``top_n`` value vectors most specific to ``concept``, as :class:`ConceptVector` records, best first.

    Args:
        questions, answers: the concept's questions and short gold answers, teacher forced after
            ``prompt_template.format(q=question)`` (``chat=True``: that prompt as the user turn and the answer as the
            assistant turn of the tokenizer's chat template).
        text: a paragraph (or several) about the concept: vocab scorer input, and LM-likelihood attribution data.
        background_questions, background_answers, background_text: unrelated general knowledge in the same formats;
            the contrast that keeps generic vectors out (and the vocab scorer's background).
        scorer: ``"attribution"`` (contrastive activation × gradient, see :func:`attribution_scores`),
            ``"vocab"`` (vocabulary projection onto the concept's characteristic tokens, see :func:`vocab_scores`;
            weights only) or ``("vocab", "attribution")`` (reciprocal rank fusion of both).
        layers: the layers to search (default all).
        top_n: size of the returned set (a concept is spread over many vectors in a small model: ablate the set).
            ``"auto"``: with gold answers for the concept's and the background's questions, the largest of 10, 20,
            40, 80 that hurts the concept and spares the background (:func:`~hf_unlearn.concepts.set_size.
            choose_set_size`, measured on the locator's own data only); without them, 20.
        attribution_data: ``"qa"``, ``"text"``, ``"both"`` or ``"auto"``, see :func:`score_value_vectors`.
        contrastive, contrast_constant: see :func:`contrastive_scores`.
        num_tokens: how many characteristic tokens the vocab scorer uses.
        vocab_method, apply_final_norm: see :func:`vocab_scores`.
        batch_size, max_length: attribution batching (``None``: one forward and one backward) and truncation.
        progress: show a progress bar over the scoring passes.

    Each record carries the concept's data and ``scores`` with every component score at its location, the ranking
    ``"score"`` and the ``"rank"``. Use :func:`score_value_vectors` to keep all the scores and pick other sets.

    Example:
        >>> found = locate_concept_vectors(model, tok, "Paris", questions=qs, answers=ans, text=paragraph,
        ...                                background_questions=bq, background_answers=ba)
        >>> with ablate_concept_vectors(model, found, mode="zero"): evaluate(model)
    """
    if top_n != "auto" and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"top_n must be a positive number of vectors or 'auto' (got {top_n!r})")
    result = score_value_vectors(
        model,
        tokenizer,
        concept,
        questions=questions,
        answers=answers,
        text=text,
        background_questions=background_questions,
        background_answers=background_answers,
        background_text=background_text,
        scorer=scorer,
        layers=layers,
        prompt_template=prompt_template,
        chat=chat,
        attribution_data=attribution_data,
        contrastive=contrastive,
        contrast_constant=contrast_constant,
        num_tokens=num_tokens,
        vocab_method=vocab_method,
        apply_final_norm=apply_final_norm,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    if top_n == "auto":
        top_n = 20
        if questions and answers and background_questions and background_answers:
            top_n, _ = choose_set_size(model, tokenizer, result, questions, answers, background_questions,
                                       background_answers, prompt_template=prompt_template, chat=chat)
    return result.to_records(top_n)
