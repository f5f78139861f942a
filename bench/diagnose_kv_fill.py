"""What the key/value fill of skipped layers costs in agreement (SmolLM2-135M-Instruct, the ConsistentEE bench's
checkpoint): the same policy thresholds, teacher-forced on the original model's greedy continuations of the held-out
prompts, with ``kv_fill="state"`` (a skipped layer's keys/values projected from the exit state: what saves the
compute) and ``kv_fill="compute"`` (the skipped layers run for that token: an exact cache, nothing saved). Also
times a decoding step of the backbone with two new positions against one (what ``kv_fill="deferred"`` adds when it
runs an exited token's skipped layers with the next token).

    python bench/bench_consistentee.py            # first: trains and saves the checkpoint
    python bench/diagnose_kv_fill.py              # about a minute on 2 CPU cores

Writes ``bench/results/consistentee_kv_fill.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

from transformers import DynamicCache  # noqa: E402

from hf_unlearn import EarlyExitForCausalLM  # noqa: E402
from hf_unlearn.atomic_files import atomic_write_text  # noqa: E402
from hf_unlearn.smollm2 import load_smollm2  # noqa: E402

WORK = ROOT / "results" / "consistentee_work" / "full"
THRESHOLDS = [0.6, 0.7, 0.8, 0.9]


@torch.no_grad()
def step_ms(backbone, new_positions: int, rounds: int = 3, steps: int = 40) -> float:
    """Best-of-rounds milliseconds of one cached decoding step of the backbone's layers with this many positions."""
    prompt = torch.randint(10, 1000, (1, 60))
    best = float("inf")
    for _ in range(rounds):
        cache = DynamicCache(config=backbone.config)
        backbone(prompt, cache=cache, use_cache=True)
        step = torch.randint(10, 1000, (1, new_positions))
        started = time.perf_counter()
        for _ in range(steps):
            backbone.model(step, cache=cache, use_cache=True)
            cache.crop(-new_positions)
        best = min(best, (time.perf_counter() - started) / steps * 1000)
    return best


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    original, tokenizer = load_smollm2()
    model = EarlyExitForCausalLM.from_pretrained(WORK / "checkpoint-frozen").eval()
    prompts = json.loads((WORK / "data.json").read_text())["held_out_prompts"]
    sequences = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = original.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                eos_token_id=[], pad_token_id=tokenizer.eos_token_id)
        sequences.append((ids.shape[1], out, original(out).logits.argmax(-1)))
    rows = []
    for fill in ("state", "compute"):
        model.config.kv_fill = fill
        for threshold in THRESHOLDS:
            hits, layers = [], []
            for start, sequence, full in sequences:
                out = model(sequence, exit_all_positions=True, exit_strategy="policy", policy_threshold=threshold,
                            use_cache=False)
                hits.append(out.logits[0, start:-1].argmax(-1) == full[0, start:-1])
                layers.append(out.exit_layers[0, start:-1].float())
            row = {"kv_fill": fill, "policy_threshold": threshold, "agreement": torch.cat(hits).float().mean().item(),
                   "mean_exit_layer": torch.cat(layers).mean().item()}
            rows.append(row)
            print(row, flush=True)
    one, two = step_ms(original, 1), step_ms(original, 2)
    print(f"decoding step: 1 position {one:.1f} ms, 2 positions {two:.1f} ms ({two / one:.2f}x)")
    atomic_write_text(ROOT / "results" / "consistentee_kv_fill.json", json.dumps(
        {"prompts": len(prompts), "tokens_per_prompt": 32, "rows": rows,
         "step_ms": {"1_position": one, "2_positions": two, "ratio": two / one}}, indent=2))


if __name__ == "__main__":
    main()
