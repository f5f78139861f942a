"""How good and how fast an early-exit model is, per strategy and threshold: ``evaluate_exits``."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..atomic_files import atomic_write_text
from ..data import padding_id
from ..eval_mode import eval_mode
from .modeling_early_exit import EarlyExitForCausalLM

#: the setting each strategy's values stand for in ``strategies``.
STRATEGY_SETTING = {
    "policy": "policy_threshold",
    "confidence": "confidence_threshold",
    "entropy": "entropy_threshold",
    "patience": "patience",
    "fixed": "fixed_exit_layer",
}
#: baselines that are not exit strategies of the model: transformers' LayerSkip-style assisted decoding.
ASSISTANT_EARLY_EXIT = "assistant_early_exit"


@dataclass
class ExitEvaluation:
    """Rows of :func:`evaluate_exits`, one per strategy point (plus the full model), with JSON, markdown, pandas and a
    speed-up / agreement plot."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows}

    def to_json(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def to_markdown(self) -> str:
        columns = [
            ("point", "point"),
            ("tokens_per_s", "tokens/s"),
            ("speedup", "speed-up"),
            ("mean_exit_layer", "mean exit layer"),
            ("layer_speedup", "L / mean exit"),
            ("agreement", "agreement (teacher-forced)"),
            ("generation_agreement", "agreement (free generation)"),
            ("perplexity", "held-out perplexity"),
        ]
        lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
        for row in self.rows:
            cells = []
            for key, _ in columns:
                value = row.get(key)
                cells.append("-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path: str | Path, title: str | None = None) -> None:
        """Speed-up against teacher-forced agreement, one curve per strategy (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4.5))
        groups: dict[str, list[dict]] = {}
        for row in self.rows:
            if row.get("speedup") is not None and row.get("agreement") is not None:
                groups.setdefault(row["strategy"], []).append(row)
        for name, rows in sorted(groups.items()):
            rows = sorted(rows, key=lambda r: r["agreement"])
            style = "s--" if name in ("lossless", ASSISTANT_EARLY_EXIT, "none") else "o-"
            axis.plot([r["agreement"] for r in rows], [r["speedup"] for r in rows], style, label=name)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xlabel("agreement with the full model's greedy tokens (teacher-forced)")
        axis.set_ylabel("measured speed-up (tokens/s vs full model)")
        if title:
            axis.set_title(title)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        figure.savefig(tmp, dpi=120)
        plt.close(figure)
        tmp.replace(path)


def _points(strategies: Mapping[str, Sequence[float]], lossless: bool, num_draft_tokens: int) -> list[dict]:
    points = []
    for strategy, values in strategies.items():
        if strategy == ASSISTANT_EARLY_EXIT:
            points += [{"strategy": strategy, "assistant_early_exit": int(v), "point": f"{strategy}={v}"}
                       for v in values]
            continue
        if strategy not in STRATEGY_SETTING:
            raise ValueError(
                f"unknown strategy {strategy!r} in strategies; choose from {sorted(STRATEGY_SETTING)} or "
                f"{ASSISTANT_EARLY_EXIT!r}"
            )
        for value in values:
            settings = {"exit_strategy": strategy, STRATEGY_SETTING[strategy]: value}
            points.append({"strategy": strategy, "settings": settings, "point": f"{strategy}={value}"})
            if lossless:
                points.append({"strategy": "lossless", "settings": settings, "lossless": True,
                               "point": f"lossless, {strategy}={value} drafts (k={num_draft_tokens})"})
    return points


@torch.no_grad()
def evaluate_exits(
    model: EarlyExitForCausalLM,
    tokenizer,
    prompts: Sequence[str],
    strategies: Mapping[str, Sequence[float]],
    held_out_texts: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    lossless: bool = False,
    num_draft_tokens: int = 4,
    rounds: int = 1,
    measure_speed: bool = True,
    reference_model=None,
    disable_tqdm: bool = False,
) -> ExitEvaluation:
    """Evaluate exit strategies on ``prompts`` (batch 1, greedy): for each strategy value, the mean exit layer,
    ``L / mean exit layer``, the agreement of the exit's top-1 token with the full model's greedy tokens
    (teacher-forced on the full model's own continuations, and in free generation at the same positions), tokens/s
    against the full model (``rounds`` interleaved timings, medians), and the perplexity of ``held_out_texts`` with
    the strategy applied at every position.

    ``strategies`` maps a strategy to its values: ``{"confidence": [0.8, 0.9], "fixed": [10, 20]}`` (thresholds,
    the patience, or the fixed layer); ``"assistant_early_exit": [k]`` adds transformers' own self-speculative
    decoding on the backbone. With ``lossless=True`` every point also runs :meth:`generate_lossless` with that
    strategy's drafts (its output equals the full model's).

    ``reference_model`` (default: the model's own backbone) is the model whose greedy tokens define agreement and
    whose ``generate`` is the speed baseline: pass the original model when ``model``'s backbone was adapted (LoRA).

    Example:
        >>> table = evaluate_exits(model, tokenizer, prompts, {"confidence": [0.8, 0.9]}, held_out_texts=texts)
        >>> table.plot("exits.png"); print(table.to_markdown())
    """
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    points = _points(strategies, lossless, num_draft_tokens)
    with eval_mode(model):
        device = next(model.parameters()).device
        encoded = [tokenizer(p, return_tensors="pt")["input_ids"].to(device) for p in prompts]
        # No stop token: every point generates exactly max_new_tokens, so tokens/s compare like with like.
        pad = padding_id(tokenizer)
        stop = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[], pad_token_id=pad)
        reference = reference_model if reference_model is not None else model.backbone
        full_sequences = [reference.generate(ids, attention_mask=torch.ones_like(ids), **stop) for ids in encoded]
        # Agreement is scored up to the reference's first end-of-sequence token: what follows it is not an answer (and
        # near-uniform predictions there flip between equal-looking logits).
        eos = model.generation_config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else (eos or [])) | {tokenizer.eos_token_id} - {None}
        scored = [_until_eos(seq, ids.shape[1], eos) for seq, ids in zip(full_sequences, encoded)]
        depth = model.config.num_hidden_layers

        def run(point: dict) -> list[torch.Tensor]:
            outputs = []
            for ids in encoded:
                # An explicit mask: with pad = EOS, generate() would otherwise mask the EOS tokens of a chat template.
                mask = torch.ones_like(ids)
                if "assistant_early_exit" in point:
                    early = point["assistant_early_exit"]
                    outputs.append(
                        model.backbone.generate(ids, attention_mask=mask, assistant_early_exit=early, **stop)
                    )
                elif point.get("lossless"):
                    drafts = model.generate_lossless(
                        ids, max_new_tokens=max_new_tokens, eos_token_id=[], num_draft_tokens=num_draft_tokens,
                        **point["settings"],
                    )
                    outputs.append(drafts.sequences)
                    draft_counts[point["point"]][0] += drafts.draft_tokens
                    draft_counts[point["point"]][1] += drafts.accepted_tokens
                elif point.get("baseline"):
                    outputs.append(reference.generate(ids, attention_mask=mask, **stop))
                else:
                    outputs.append(model.generate(ids, attention_mask=mask, **stop, **point["settings"]))
            return outputs

        baseline = {"strategy": "none", "baseline": True, "point": "full model"}
        timed = [baseline, *points]
        seconds: dict[str, list[float]] = {p["point"]: [] for p in timed}
        generations: dict[str, list[torch.Tensor]] = {}
        mean_exits: dict[str, float] = {}
        draft_counts: dict[str, list[int]] = {}  # lossless points: [drafted, accepted] in the last round
        runs = len(timed) * (rounds if measure_speed else 1)
        progress = tqdm(total=runs, desc="Evaluating exits", disable=disable_tqdm)
        for round_index in range(rounds if measure_speed else 1):
            for point in timed:
                model.exit_stats.reset()
                draft_counts[point["point"]] = [0, 0]
                start = time.perf_counter()
                outputs = run(point)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[point["point"]].append(time.perf_counter() - start)
                if round_index == 0:
                    generations[point["point"]] = outputs
                    mean_exits[point["point"]] = model.exit_stats.mean_exit_layer
                progress.update(1)
        progress.close()

        new_tokens = len(encoded) * max_new_tokens
        base_time = statistics.median(seconds[baseline["point"]])
        rows = []
        full_agreement = None
        for point in timed:
            row: dict[str, Any] = {"point": point["point"], "strategy": point["strategy"]}
            if "settings" in point:
                row["settings"] = point["settings"]
            if "assistant_early_exit" in point:
                row["assistant_early_exit"] = point["assistant_early_exit"]
            if measure_speed:
                elapsed = statistics.median(seconds[point["point"]])
                row["tokens_per_s"] = new_tokens / elapsed
                row["speedup"] = base_time / elapsed
            row["generation_agreement"] = _generation_agreement(generations[point["point"]], scored, encoded)
            if "settings" in point and not point.get("lossless"):
                agreement, mean_exit = _teacher_forced(model, scored, encoded, point["settings"])
                row["agreement"], row["mean_exit_layer"] = agreement, mean_exit
                row["layer_speedup"] = depth / mean_exit
                if held_out_texts:
                    row["perplexity"] = _perplexity(model, tokenizer, held_out_texts, point["settings"])
            elif point.get("baseline"):
                row["agreement"] = 1.0
                if held_out_texts:
                    row["perplexity"] = _perplexity(reference, tokenizer, held_out_texts, None)
            else:
                # Lossless and assisted decoding reproduce their own full model's tokens: their teacher-forced
                # agreement with the reference is the full model's.
                if full_agreement is None:
                    full_agreement = _teacher_forced(model, scored, encoded, {"exit_strategy": "none"})[0]
                row["agreement"] = full_agreement
                if point.get("lossless"):
                    drafted, accepted = draft_counts[point["point"]]
                    # Drafts per generated token and the share of them the full model kept.
                    row["drafts_per_token"] = drafted / new_tokens
                    row["draft_acceptance"] = accepted / drafted if drafted else float("nan")
            rows.append(row)
    meta = {"layers": depth, "prompts": len(encoded), "max_new_tokens": max_new_tokens, "rounds": rounds,
            "exit_layers": list(model.config.exit_layers)}
    return ExitEvaluation(rows=rows, meta=meta)


def _until_eos(sequence: torch.Tensor, prompt_length: int, eos: set[int]) -> torch.Tensor:
    for position in range(prompt_length, sequence.shape[1]):
        if int(sequence[0, position]) in eos:
            return sequence[:, : position + 1]
    return sequence


def _generation_agreement(outputs, references, prompts) -> float:
    same = total = 0
    for output, reference, prompt in zip(outputs, references, prompts):
        n = min(output.shape[1], reference.shape[1]) - prompt.shape[1]
        start = prompt.shape[1]
        same += int((output[0, start : start + n] == reference[0, start : start + n]).sum())
        total += reference.shape[1] - start
    return same / max(total, 1)


def _teacher_forced(model, references, prompts, settings) -> tuple[float, float]:
    """Agreement of the exits' top-1 tokens with the full model's on its own continuations, and the mean exit layer
    of those positions. The prompt runs at full depth into the cache, as in generation; the continuation's positions
    (whose input is a generated token) decide their exits."""
    same = total = 0
    layers: list[torch.Tensor] = []
    for reference, prompt in zip(references, prompts):
        cache = DynamicCache(config=model.config.backbone_config)
        length = prompt.shape[1]
        model(reference[:, :length], cache=cache, use_cache=True, exit_strategy="none")
        out = model(reference[:, length:], cache=cache, use_cache=True, exit_all_positions=True, **settings)
        predicted = out.logits[0, :-1].argmax(-1)
        same += int((predicted == reference[0, length + 1 :]).sum())
        total += predicted.numel()
        layers.append(out.exit_layers[0, :-1])
    return same / max(total, 1), torch.cat(layers).float().mean().item()


def _perplexity(model, tokenizer, texts, settings: dict | None) -> float:
    """Perplexity of ``texts``; with ``settings``, the exit strategy applies at every position."""
    exits = {} if settings is None else {"exit_all_positions": True, **settings}
    total_loss, total_tokens = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
        if ids.shape[1] < 2:
            continue
        out = model(ids, labels=ids, **exits)
        total_loss += float(out.loss) * (ids.shape[1] - 1)
        total_tokens += ids.shape[1] - 1
    if total_tokens == 0:
        raise ValueError("held_out_texts have no text of two tokens or more to score")
    return math.exp(total_loss / total_tokens)
