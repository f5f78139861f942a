"""Knowledge Recovery Score, activation patching and parameter restoration (Hong et al., EMNLP 2024).

Both experiments ask, per centre layer ``l``, how much of the original model's behaviour on the probes comes back
when the unlearned model gets the original's activations (patching) or weights (restoration) in the window of
layers around ``l``: ``KRS = 1 - D(original, patched) / D(original, unlearned)``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import nn
from tqdm.auto import tqdm

from ..activations import patch_activations, record_activations
from ..architectures import attn_module, check_same_layout, decoder_layers, mlp_module, mlp_out_module
from ..eval_mode import eval_mode
from .probes import Probe, ProbeBatch, encode_probes, make_probes
from .results import DissectionTable

COMPONENTS = {"mlp": ("mlp",), "attn": ("attn",), "both": ("mlp", "attn")}


def knowledge_recovery_score(
    original_logits: torch.Tensor,
    patched_logits: torch.Tensor,
    unlearned_logits: torch.Tensor,
    mask: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """``KRS_i = 1 - D(original, patched) / D(original, unlearned)`` per probe ``i``, averaged over probes.

    ``D`` is the mean squared difference of the logits over the masked positions and the full vocabulary, in
    float32. 1 means the patched model reproduces the original, 0 no recovery (negative values are possible).
    Where ``D(original, unlearned) = 0`` (nothing to recover) the score is defined as 1 if the patched model also
    matches the original and 0 otherwise, with a warning, never NaN.

    Example:
        >>> krs = knowledge_recovery_score(orig.logits, patched.logits, unl.logits, batch.answer_mask)
        >>> float(krs)
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r}: use 'mean' or 'none'")
    mask = mask.bool()
    if mask.dim() != 2 or mask.shape != original_logits.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (batch, seq) of logits {tuple(original_logits.shape)}")
    counts = mask.sum(-1)
    if (counts == 0).any():
        raise ValueError("a probe has no answer position in the mask")

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        per_position = (a.float() - b.float()).pow(2).mean(-1)
        return (per_position * mask).sum(-1) / counts

    d_patched = distance(original_logits, patched_logits)
    d_baseline = distance(original_logits, unlearned_logits)
    zero = d_baseline == 0
    krs = 1 - d_patched / torch.where(zero, torch.ones_like(d_baseline), d_baseline)
    if zero.any():
        warnings.warn(
            f"{int(zero.sum())} probe(s) have identical original and unlearned logits: nothing to recover; their KRS "
            "is set to 1 where the patched logits match too, else 0",
            stacklevel=2,
        )
        krs = torch.where(zero, (d_patched == 0).float(), krs)
    return krs.mean() if reduction == "mean" else krs


def _window(centre: int, window: int, num_layers: int) -> list[int]:
    half = window // 2
    return [layer for layer in range(centre - half, centre + half + 1) if 0 <= layer < num_layers]


def check_window(window: int) -> None:
    """Raise a ValueError unless ``window`` is a positive odd number of layers (a window is centred on a layer)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window={window!r} must be a positive odd number of layers (centred on each layer), e.g. 5")


def _num_layers(original: nn.Module, unlearned: nn.Module, window: int) -> int:
    check_window(window)
    check_same_layout(original, unlearned)
    return len(decoder_layers(original))


ProbesLike = Sequence[Probe] | Sequence[tuple[str, str]] | Sequence[dict[str, str]] | ProbeBatch


def _prepare(tokenizer, probes: ProbesLike, model: nn.Module) -> ProbeBatch:
    """A probe batch from probes, or from plain ``(question, answer)`` pairs / ``{"question", "answer"}`` dicts
    (put in the default prompt template by :func:`make_probes`)."""
    if isinstance(probes, ProbeBatch):
        return probes.to(next(model.parameters()).device)
    items = list(probes)
    if items and not all(isinstance(item, Probe) for item in items):
        questions, answers = [], []
        for item in items:
            if isinstance(item, dict) and {"question", "answer"} <= set(item):
                item = (item["question"], item["answer"])
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise ValueError(
                    "probes must be Probe objects (make_probes), (question, answer) string pairs or "
                    f"{{'question': ..., 'answer': ...}} dicts; got {item!r}"
                )
            questions.append(item[0])
            answers.append(item[1])
        items = make_probes(model, tokenizer, questions, answers)
    return encode_probes(tokenizer, items).to(next(model.parameters()).device)


@torch.no_grad()
def activation_patching(
    original: nn.Module,
    unlearned: nn.Module,
    tokenizer,
    probes: ProbesLike,
    components: Sequence[str] = ("mlp", "attn", "both"),
    window: int = 5,
    positions: str = "all",
    progress: bool = True,
) -> DissectionTable:
    """KRS per centre layer and component when the original's activations are patched into the unlearned model.

    ``components``: ``"mlp"`` (MLP coefficients), ``"attn"`` (attention outputs), ``"both"``. Every layer of the
    window ``[l - window//2, l + window//2]`` is patched, at all positions or only at the answer positions
    (``positions="answer"``). The original model's activations are recorded once, in one forward pass. ``probes``:
    from :func:`make_probes` (e.g. with the original's own greedy answers), or plain ``(question, answer)`` pairs.

    Example:
        >>> table = activation_patching(original, unlearned, tokenizer, [("Who wrote Hamlet?", "Shakespeare")])
        >>> table.plot("patching.png")
    """
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}: choose from {list(COMPONENTS)}")
    if positions not in ("all", "answer"):
        raise ValueError(f"positions={positions!r}: use 'all' or 'answer'")
    num_layers = _num_layers(original, unlearned, window)
    batch = _prepare(tokenizer, probes, original)
    selected = batch.answer_mask if positions == "answer" else None
    layers = range(num_layers)
    with eval_mode(original, unlearned):
        with (
            record_activations(original, "mlp", layers, selected) as mlp_acts,
            record_activations(original, "attn", layers, selected) as attn_acts,
        ):
            original_logits = original(**batch.model_inputs()).logits
        recorded = {"mlp": mlp_acts, "attn": attn_acts}
        unlearned_logits = unlearned(**batch.model_inputs()).logits
        rows = []
        total = num_layers * len(components)
        bar = tqdm(total=total, desc="Activation patching", disable=not progress)
        for centre in layers:
            window_layers = _window(centre, window, num_layers)
            for component in components:
                with ExitStack() as stack:
                    for site in COMPONENTS[component]:
                        values = {layer: recorded[site][layer] for layer in window_layers}
                        stack.enter_context(patch_activations(unlearned, site, values, selected))
                    patched_logits = unlearned(**batch.model_inputs()).logits
                krs = knowledge_recovery_score(original_logits, patched_logits, unlearned_logits, batch.answer_mask)
                rows.append(
                    {
                        "experiment": "activation_patching",
                        "component": component,
                        "layer": centre,
                        "window": window_layers,
                        "krs": float(krs),
                    }
                )
                bar.update()
        bar.close()
    return DissectionTable(rows, {"window": window, "positions": positions, "num_probes": len(batch.input_ids)})


def _layer_parameters(model: nn.Module, layer: int, params: str) -> dict[str, nn.Parameter]:
    if params == "mlp_out":
        module = mlp_out_module(model, layer)
        return dict(module.named_parameters())
    if params == "mlp":
        return dict(mlp_module(model, layer).named_parameters())
    if params == "attn":
        return dict(attn_module(model, layer).named_parameters())
    pattern = re.compile(params)
    return {n: p for n, p in decoder_layers(model)[layer].named_parameters() if pattern.fullmatch(n)}


@torch.no_grad()
def parameter_restoration(
    original: nn.Module,
    unlearned: nn.Module,
    tokenizer,
    probes: ProbesLike,
    params: str = "mlp_out",
    window: int = 5,
    progress: bool = True,
) -> DissectionTable:
    """KRS per centre layer when the original's parameters are copied into the unlearned model's window.

    ``params``: ``"mlp_out"`` (the value vectors), ``"mlp"`` (the whole MLP), ``"attn"`` (the whole attention), or
    a regular expression over parameter names inside a decoder layer (e.g. ``r"mlp\\.(gate|up)_proj\\.weight"``).
    The unlearned model is changed in place for each window and reverted bit-exactly (also on an exception); only
    the window's tensors are copied, never the whole model.

    Example:
        >>> table = parameter_restoration(original, unlearned, tokenizer, probes, params="mlp_out")
        >>> table.to_json("restoration.json")
    """
    num_layers = _num_layers(original, unlearned, window)
    batch = _prepare(tokenizer, probes, original)
    for layer in range(num_layers):
        if not _layer_parameters(unlearned, layer, params):
            raise ValueError(f"params={params!r} matches no parameter of decoder layer {layer}")
    with eval_mode(original, unlearned):
        original_logits = original(**batch.model_inputs()).logits
        unlearned_logits = unlearned(**batch.model_inputs()).logits
        rows = []
        for centre in tqdm(range(num_layers), desc="Parameter restoration", disable=not progress):
            window_layers = _window(centre, window, num_layers)
            saved: list[tuple[nn.Parameter, torch.Tensor]] = []
            try:
                for layer in window_layers:
                    source = _layer_parameters(original, layer, params)
                    for name, target in _layer_parameters(unlearned, layer, params).items():
                        if name not in source or source[name].shape != target.shape:
                            raise ValueError(f"layer {layer} parameter {name!r} has no same-shaped original")
                        saved.append((target, target.detach().clone()))
                        target.copy_(source[name].to(target.device, target.dtype))
                patched_logits = unlearned(**batch.model_inputs()).logits
            finally:
                for target, value in reversed(saved):
                    target.copy_(value)
            krs = knowledge_recovery_score(original_logits, patched_logits, unlearned_logits, batch.answer_mask)
            rows.append(
                {
                    "experiment": "parameter_restoration",
                    "component": params,
                    "layer": centre,
                    "window": window_layers,
                    "krs": float(krs),
                }
            )
    return DissectionTable(rows, {"window": window, "params": params, "num_probes": len(batch.input_ids)})
