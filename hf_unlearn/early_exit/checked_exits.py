"""Which exits to check: every check costs time, also for the tokens that go on, so an exit where few tokens stop
can cost more than it saves."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .configuration_early_exit import check_exit_settings, exit_settings
from .modeling_early_exit import EarlyExitForCausalLM

logger = logging.getLogger(__name__)

SELECTABLE_STRATEGIES = ("policy", "confidence", "entropy")


def expected_cost(decisions: torch.Tensor, exits: Sequence[int], depth: int, check_cost: float) -> float:
    """Mean cost per token, in decoder layers, of checking ``exits``: the layers a token runs (its first exit whose
    decision is true, else ``depth``) plus ``check_cost`` per check it went through. ``decisions`` is
    ``(len(exits), tokens)``: whether the strategy would exit each token at each exit."""
    if decisions.shape[0] == 0:
        return float(depth)
    layers = torch.tensor([*exits, depth], dtype=torch.float32, device=decisions.device)
    stops = torch.cat([decisions, torch.ones_like(decisions[:1])]).int()
    first = stops.argmax(0)  # the first true row: the exit taken, or the last row (the full model)
    checks = torch.clamp(first + 1, max=len(exits))
    return float((layers[first] + check_cost * checks).mean())


def choose_checked_exits(
    decisions: torch.Tensor, exits: Sequence[int], depth: int, check_cost: float
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
    worth.

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
    if check_cost < 0:
        raise ValueError(f"check_cost is a time in decoder layers, >= 0 (got {check_cost})")
    if not texts:
        raise ValueError("texts is empty: pass calibration text, e.g. answers the model generated")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    columns = []
    try:
        for text in texts:
            prompt, answer = text if isinstance(text, tuple) else ("", text)
            ids = tokenizer(prompt + answer, return_tensors="pt")["input_ids"].to(device)
            # Generation runs the prompt at full depth; the positions whose input is an answer token decide.
            start = len(tokenizer(prompt)["input_ids"]) if prompt else 0
            out = model(ids, output_all_exits=True, use_cache=False, output_exit_logits=strategy != "policy")
            if strategy == "policy":
                passes = out.policy_probs[:, 0] > resolved["policy_threshold"]
            else:
                passes = torch.stack([model._passes(strategy, resolved, logits[0]) for logits in out.exit_logits[:-1]])
            columns.append(passes[:, start:])
    finally:
        model.train(was_training)
    decisions = torch.cat(columns, dim=1)
    exits, depth = list(model.config.exit_layers), model.config.num_hidden_layers
    chosen = choose_checked_exits(decisions, exits, depth, check_cost)
    keep = [exits.index(k) for k in chosen]
    logger.info(
        "checked exits %s: expected cost %.2f layers per token (all %d exits: %.2f)", chosen,
        expected_cost(decisions[keep], chosen, depth, check_cost), len(exits),
        expected_cost(decisions, exits, depth, check_cost),
    )
    return chosen
