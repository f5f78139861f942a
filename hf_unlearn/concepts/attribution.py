"""The attribution scorer: activation × gradient of the concept's log-likelihood w.r.t. the MLP coefficients, made
contrastive against background data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..activations import differentiable_activations
from ..data import UnlearningCollator, padding_id, tokenize_pair
from ..eval_mode import eval_mode
from ..evaluation.prompts import DEFAULT_PROMPT_TEMPLATE
from ..losses import IGNORE_INDEX, sequence_log_probs
from .projection import layer_list

if TYPE_CHECKING:
    from .locate import ConceptData, LocateOptions


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

    All layers in one forward and one backward per batch (``batch_size=None``: a single batch), the coefficients
    made differentiable by :func:`~hf_unlearn.activations.differentiable_activations` (no ``.grad`` written on the
    parameters; frozen models work). The model runs in eval mode (no dropout) and gets its mode back.

    Memory: the usual activations of one training step for the batch, plus one ``(batch, seq, d_ff)`` tensor per
    hooked layer (SmolLM2-135M, 5 short QA pairs: well under 1 GB); lower ``batch_size`` for long texts.

    Example:
        >>> a = attribution_scores(model, tok, questions=["Who wrote Harry Potter?"], answers=["J.K. Rowling"])
        >>> a[12].topk(10)
    """
    if reduction not in ("sum", "abs_sum", "none"):
        raise ValueError(f"reduction={reduction!r}: choose 'sum', 'abs_sum' or 'none'")
    features = _examples(tokenizer, questions, answers, text, prompt_template, max_length, chat)
    layers = layer_list(model, layers)
    pad_id = padding_id(tokenizer)
    collate = UnlearningCollator(pad_id)
    device = next(model.parameters()).device
    per_example: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    step = batch_size or len(features)
    with eval_mode(model), differentiable_activations(model, "mlp", layers) as captured:
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


def rank_fusion(parts: list[dict[int, torch.Tensor]], k: float = 60.0) -> dict[int, torch.Tensor]:
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


def attribution_components(
    model: nn.Module, tokenizer, data: ConceptData, options: LocateOptions, layers: list[int], bar=None
) -> dict[str, dict[int, torch.Tensor]]:
    """Concept, background and contrastive attributions per data kind, fused into ``"attribution"``."""
    questions, answers, texts = data.questions, data.answers, data.texts
    attribution_data = options.attribution_data
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
    common = dict(layers=layers, prompt_template=options.prompt_template, chat=options.chat,
                  batch_size=options.batch_size, max_length=options.max_length)
    concept_data = {"qa": dict(questions=questions, answers=answers), "text": dict(text=texts)}
    background_data = {
        "qa": dict(questions=data.background_questions, answers=data.background_answers)
        if data.background_questions and data.background_answers else None,
        "text": dict(text=data.background_texts) if data.background_texts else None,
    }
    out: dict[str, dict[int, torch.Tensor]] = {}
    fused = []
    for kind in kinds:
        suffix = f"_{kind}" if len(kinds) > 1 else ""
        if bar is not None:
            bar.set_postfix_str(f"attribution on {kind}")
        concept_attr = attribution_scores(model, tokenizer, **concept_data[kind], **common)
        out[f"attribution{suffix}_concept"] = concept_attr
        score = concept_attr
        if options.contrastive:
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
                score = contrastive_scores(concept_attr, background_attr, options.contrast_constant)
        out[f"attribution{suffix}"] = score
        fused.append(score)
    if len(fused) > 1:
        out["attribution"] = rank_fusion(fused)
    return out
