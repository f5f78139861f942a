"""Calibrating exits on text: which exits to check (every check costs time, also for the tokens that go on, so an
exit where few tokens stop can cost more than it saves), and per-exit policy thresholds for a target agreement."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .configuration_early_exit import check_exit_settings, exit_settings
from .modeling_early_exit import EarlyExitForCausalLM

logger = logging.getLogger(__name__)

SELECTABLE_STRATEGIES = ("policy", "confidence", "entropy")


def _calibration_passes(model, tokenizer, texts, check_cost: float, head_cost: float, **forward_kwargs):
    """One all-exits pass per text (in eval mode), with the first position that decides an exit: generation runs a
    ``(prompt, answer)`` pair's prompt at full depth, and the positions whose input is an answer token decide."""
    for name, value in (("check_cost", check_cost), ("head_cost", head_cost)):
        if value < 0:
            raise ValueError(f"{name} is a time in decoder layers, >= 0 (got {value})")
    if not texts:
        raise ValueError("texts is empty: pass calibration text, e.g. answers the model generated")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for text in texts:
            prompt, answer = text if isinstance(text, tuple) else ("", text)
            ids = tokenizer(prompt + answer, return_tensors="pt")["input_ids"].to(device)
            start = len(tokenizer(prompt)["input_ids"]) if prompt else 0
            yield model(ids, output_all_exits=True, use_cache=False, **forward_kwargs), start
    finally:
        model.train(was_training)


def _scored(columns: list[torch.Tensor]) -> torch.Tensor:
    scored = torch.cat(columns, dim=1)
    if scored.shape[1] == 0:
        raise ValueError("the calibration texts have no answer tokens to score: pass non-empty answers")
    return scored


def exit_outcome(
    decisions: torch.Tensor, exits: Sequence[int], depth: float, check_cost: float, correct: torch.Tensor | None = None
) -> tuple[float, float]:
    """Mean cost per token, in decoder layers, of checking ``exits``: the layers a token runs (its first exit whose
    decision is true, else ``depth``: the layer count, plus the full head's extra cost where early exits pay less
    for theirs) plus ``check_cost`` per check it went through; and the share of tokens whose
    exit agrees with the full model (``correct``, like ``decisions``; the full depth always agrees). ``decisions``
    is ``(len(exits), tokens)``: whether the strategy would exit each token at each exit."""
    if decisions.shape[0] == 0:
        return float(depth), 1.0
    layers = torch.tensor([*exits, depth], dtype=torch.float32, device=decisions.device)
    stops = torch.cat([decisions, torch.ones_like(decisions[:1])]).int()
    first = stops.argmax(0)  # the first true row: the exit taken, or the last row (the full model)
    checks = torch.clamp(first + 1, max=len(exits))
    cost = float((layers[first] + check_cost * checks).mean())
    if correct is None:
        return cost, float("nan")
    right = torch.cat([correct, torch.ones_like(correct[:1])]).gather(0, first.unsqueeze(0))
    return cost, float(right.float().mean())


def expected_cost(decisions: torch.Tensor, exits: Sequence[int], depth: float, check_cost: float) -> float:
    """The cost half of :func:`exit_outcome`."""
    return exit_outcome(decisions, exits, depth, check_cost)[0]


def choose_checked_exits(
    decisions: torch.Tensor, exits: Sequence[int], depth: float, check_cost: float
) -> list[int]:
    """Backward elimination: drop, one at a time, the exit whose removal lowers :func:`expected_cost` the most,
    until no removal lowers it."""
    keep = list(range(len(exits)))
    best = expected_cost(decisions[keep], [exits[i] for i in keep], depth, check_cost)
    while keep:
        trials = []
        for index in keep:
            rest = [i for i in keep if i != index]
            trials.append((expected_cost(decisions[rest], [exits[i] for i in rest], depth, check_cost), index))
        cost, index = min(trials)
        if cost >= best:
            break
        best = cost
        keep.remove(index)
    return [exits[i] for i in keep]


@torch.no_grad()
def select_checked_exits(
    model: EarlyExitForCausalLM,
    tokenizer,
    texts: Sequence[str | tuple[str, str]],
    check_cost: float = 0.25,
    head_cost: float = 0.0,
    **settings,
) -> list[int]:
    """The internal exits worth checking for ``model``'s exit strategy (``settings`` override the config's) on text
    like ``texts`` (the model's own answers are the best calibration): the subset that minimises the expected layers
    run per token plus ``check_cost`` (a check's time, in decoder layers) per check made. Set the result as
    ``checked_exits``. A ``(prompt, answer)`` pair scores the answer's tokens only, as generation decides exits for
    generated tokens only.

    The decisions come from one all-exits pass per text (exact hidden states, as generation with
    ``kv_fill="deferred"`` or ``"compute"`` sees them). A policy check costs about a quarter of a decoder layer
    on SmolLM2-135M on a CPU (the default); a `"confidence"` or `"entropy"` check runs the LM head, several layers'
    worth. ``head_cost`` is what a token that reaches the last layer pays for the full LM head beyond an early exit's
    head, in decoder layers: 0 when the exits use the full head too; with ``shortlist_exits``, about 2.6 for
    SmolLM2-135M on a CPU (3.0 ms against 0.33 ms, layers of 1.05 ms).

    Example:
        >>> checked = select_checked_exits(model, tokenizer, answers, exit_strategy="policy", policy_threshold=0.75)
        >>> model.generate(input_ids, exit_strategy="policy", policy_threshold=0.75, checked_exits=checked)
    """
    resolved = exit_settings(model.config, **settings)
    check_exit_settings(model.config, **resolved)
    strategy = resolved["exit_strategy"]
    if strategy not in SELECTABLE_STRATEGIES:
        raise ValueError(
            f"select_checked_exits weighs per-exit decisions of {list(SELECTABLE_STRATEGIES)}; got "
            f"exit_strategy={strategy!r} (pass exit_strategy=... or set it on the model's config)"
        )
    columns = []
    for out, start in _calibration_passes(model, tokenizer, texts, check_cost, head_cost,
                                          output_exit_logits=strategy != "policy"):
        if strategy == "policy":
            passes = out.policy_probs[:, 0] > resolved["policy_threshold"]
        else:
            # (with shortlist_exits the rule reads the shortlist's distribution: the full logits' shortlist columns)
            shortlist = model.early_exit.shortlist if resolved["shortlist_exits"] else slice(None)
            passes = torch.stack([
                model._passes(strategy, resolved, logits[0][..., shortlist]) for logits in out.exit_logits[:-1]
            ])
        columns.append(passes[:, start:])
    decisions = _scored(columns)
    # The full head's extra time is a longer last "layer" in the cost of the tokens that reach it.
    exits, depth = list(model.config.exit_layers), model.config.num_hidden_layers + head_cost
    chosen = choose_checked_exits(decisions, exits, depth, check_cost)
    keep = [exits.index(k) for k in chosen]
    logger.info(
        "checked exits %s: expected cost %.2f layers per token (all %d exits: %.2f)", chosen,
        expected_cost(decisions[keep], chosen, depth, check_cost), len(exits),
        expected_cost(decisions, exits, depth, check_cost),
    )
    return chosen


THRESHOLD_GRID = (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)


def thresholds_outcome(
    probs: torch.Tensor, correct: torch.Tensor, thresholds: dict[int, float], exits: Sequence[int], depth: float,
    check_cost: float,
) -> tuple[float, float]:
    """:func:`exit_outcome` of per-exit ``thresholds`` (``{exit: threshold}``, exits left out are not checked) on
    ``probs`` and ``correct``, ``(len(exits), tokens)``: e.g. fitted thresholds scored on held-out tokens."""
    rows = [i for i, k in enumerate(exits) if k in thresholds]
    limits = torch.tensor([thresholds[exits[i]] for i in rows], device=probs.device).unsqueeze(1)
    return exit_outcome(probs[rows] > limits, [exits[i] for i in rows], depth, check_cost, correct[rows])


def _descend(probs, correct, exits, depth, check_cost, weight: float, grid, sweeps: int = 3) -> dict[int, float]:
    """Coordinate descent on cost + ``weight`` * disagreement, one exit's threshold (or no check) at a time."""
    thresholds: dict[int, float] = {}
    for _ in range(sweeps):
        changed = False
        for k in exits:
            options = []
            for value in (None, *grid):
                trial = {e: t for e, t in thresholds.items() if e != k}
                if value is not None:
                    trial[k] = value
                cost, agreement = thresholds_outcome(probs, correct, trial, exits, depth, check_cost)
                options.append((cost + weight * (1 - agreement), value is not None, value or 0.0, trial))
            best = min(options, key=lambda option: option[:3])[3]
            changed |= best != thresholds
            thresholds = best
        if not changed:
            break
    return thresholds


QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def quantile_grid(probs: torch.Tensor, levels: Sequence[float] = QUANTILE_LEVELS) -> tuple[float, ...]:
    """Thresholds at quantiles of ``probs`` (all exits together), to 3 significant digits and strictly inside (0, 1)
    as ``policy_thresholds`` requires: a grid that reaches a policy whose exit probabilities lie mostly below
    :data:`THRESHOLD_GRID`'s lowest value."""
    # Observed values (the "lower" quantile), not interpolated ones, so that each threshold splits the tokens where a
    # probability does; sorting instead of torch.quantile, which refuses more than 2**24 values.
    ordered = probs.flatten().float().sort().values
    values = ordered[[int(level * (ordered.numel() - 1)) for level in levels]]
    rounded = {float(f"{float(v):.3g}") for v in values}
    return tuple(sorted(v for v in rounded if 0.0 < v < 1.0))


def _fit_on_grid(probs, correct, exits, depth, target_agreement, check_cost, grid) -> dict[int, float]:
    low, high = 0.0, 4.0 * depth / max(1.0 - target_agreement, 1e-3)
    best = {}  # checking nothing always reaches the target
    for _ in range(12):
        weight = (low + high) / 2
        thresholds = _descend(probs, correct, exits, depth, check_cost, weight, grid)
        cost, agreement = thresholds_outcome(probs, correct, thresholds, exits, depth, check_cost)
        if agreement >= target_agreement:
            high = weight
            if cost < thresholds_outcome(probs, correct, best, exits, depth, check_cost)[0]:
                best = thresholds
        else:
            low = weight
    return best


def fit_policy_thresholds(
    probs: torch.Tensor,
    correct: torch.Tensor,
    exits: Sequence[int],
    depth: float,
    target_agreement: float,
    check_cost: float,
    grid: Sequence[float] | None = None,
) -> dict[int, float]:
    """Per-exit thresholds (``{exit: threshold}``, unchecked exits left out) with the lowest :func:`exit_outcome` cost
    whose agreement reaches ``target_agreement`` on these tokens: coordinate descent on cost + w * disagreement, with
    the weight w bisected. ``probs`` and ``correct`` are ``(len(exits), tokens)``: the policy's exit probability and
    whether the exit's token is the full model's. Without a ``grid``, the cheaper of the fits on
    :data:`THRESHOLD_GRID` and on :func:`quantile_grid` of ``probs`` (a policy trained with a high depth cost, or
    reading the exits' confidence, can put most exit probabilities below 0.2, where the fixed grid finds no exit)."""
    exits = list(exits)
    grids = [THRESHOLD_GRID, quantile_grid(probs)] if grid is None else [tuple(grid)]
    fits = [_fit_on_grid(probs, correct, exits, depth, target_agreement, check_cost, g) for g in grids]
    return min(fits, key=lambda t: thresholds_outcome(probs, correct, t, exits, depth, check_cost)[0])


@torch.no_grad()
def calibrate_policy_thresholds(
    model: EarlyExitForCausalLM,
    tokenizer,
    texts: Sequence[str | tuple[str, str]],
    target_agreement: float = 0.95,
    check_cost: float = 0.25,
    head_cost: float = 0.0,
    shortlist_exits: bool | None = None,
) -> dict[int, float]:
    """Per-exit thresholds for the ``"policy"`` strategy that reach ``target_agreement`` with the full model's top-1
    tokens on text like ``texts`` at the lowest expected cost (layers run plus ``check_cost`` layers per check),
    checking only the exits that pay for themselves (``head_cost`` as in :func:`select_checked_exits`). Set the
    result as ``policy_thresholds``. As in :func:`select_checked_exits`, a ``(prompt, answer)`` pair scores the
    answer's tokens only; agreement on new text is close to, not guaranteed by, the target (measure it, e.g. with
    ``evaluate_exits``). An exit agrees when its top-1 token is the full model's, over the token shortlist with
    ``shortlist_exits`` (default: the model's setting), as the exits then predict.

    Example:
        >>> thresholds = calibrate_policy_thresholds(model, tokenizer, answers, target_agreement=0.95)
        >>> model.generate(input_ids, exit_strategy="policy", policy_thresholds=thresholds)
    """
    if not 0.0 < target_agreement <= 1.0:
        raise ValueError(f"target_agreement is a share of tokens in (0, 1] (got {target_agreement})")
    if not model.config.exit_layers:
        raise ValueError("the model has no internal exits to calibrate")
    resolved = exit_settings(model.config, shortlist_exits=shortlist_exits)
    check_exit_settings(model.config, **resolved)
    probs, correct = [], []
    # Scored against the pass's own last exit: exit_correct says whether each exit's top-1 is the full model's,
    # without every exit's logits in memory; shortlist exits need their logits, one text at a time.
    shortlist = resolved["shortlist_exits"]
    passes = _calibration_passes(model, tokenizer, texts, check_cost, head_cost, self_distill=not shortlist,
                                 output_exit_logits=shortlist)
    for out, start in passes:
        probs.append(out.policy_probs[:, 0, start:-1])
        if not shortlist:
            correct.append(out.exit_correct[:-1, 0, start:])
        else:
            full = out.exit_logits[-1][0, start:-1].argmax(-1)
            correct.append(torch.stack([model._exit_tokens(logits[0, start:-1], k, shortlist=True) == full
                                        for k, logits in zip(model.config.exit_layers, out.exit_logits[:-1])]))
    exits, depth = list(model.config.exit_layers), model.config.num_hidden_layers + head_cost
    probs_all, correct_all = _scored(probs).float(), _scored(correct)
    thresholds = fit_policy_thresholds(probs_all, correct_all, exits, depth, target_agreement, check_cost)
    cost, agreement = thresholds_outcome(probs_all, correct_all, thresholds, exits, depth, check_cost)
    logger.info("policy thresholds %s: agreement %.3f at %.2f layers per token on %d calibration tokens",
                thresholds, agreement, cost, probs_all.shape[1])
    return thresholds
