"""Early-exit inference speed on SmolLM2-135M-Instruct and a same-shaped random model (CPU by default).

Measured in one process for each model:

* decode costs in context (one token through all 30 layers in sequence, divided by 30, so each layer's weights come
  from memory as in a real step): a decoder layer, the key/value fill of a skipped layer, the final norm + LM head,
  the policy head;
* greedy generation tokens/s at batch 1 and batch 8 for the plain backbone (the baseline), the wrapper with
  ``exit_strategy="none"``, fixed exits at several depths, and confidence / entropy thresholds with and without a
  token shortlist; variants interleaved round-robin, medians over rounds;
* for fixed exits, the ideal speed-up from the measured costs, ``T_full / (T_full - S * (L - k) * (c_layer - c_fill))``
  with ``T_full`` the full model's whole generation time and ``S`` its decode steps (the first token comes from the
  full-depth prompt pass): the full run minus the layers skipped, plus the fill those layers still need. Target:
  measured / ideal >= 0.85. Also reported: the ideal if skipped layers needed no fill at all;
* the mean exit layer and the agreement of the generated tokens with the full model's greedy tokens (same position).

    python bench/bench_early_exit.py                  # ~8 min on 2 CPU cores; bench/results/early_exit.json + README
    python bench/bench_early_exit.py --device cuda --dtype bfloat16 --out early_exit_cuda.json   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

from readme_tables import update_table  # noqa: E402

from hf_unlearn.atomic_files import atomic_write_text  # noqa: E402
from hf_unlearn.early_exit import EarlyExitForCausalLM, token_shortlist  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "Who wrote the play Romeo and Juliet?",
    "Give three tips for learning a new language.",
    "What does a computer's CPU do?",
    "Describe a cat to someone who has never seen one.",
    "How many legs does a spider have, and why?",
]
# Shortlist source: the full model's own answers to other prompts.
CALIBRATION = [
    "Tell me about the history of Rome.",
    "What is photosynthesis?",
    "Summarise the plot of a famous novel.",
    "How do airplanes fly?",
    "What are good habits for sleeping well?",
    "Explain what a database is.",
    "Why do we have seasons?",
    "Write a friendly email inviting a colleague to lunch.",
]
FIXED_DEPTHS = (8, 15, 22)


def load(model_name: str, dtype: torch.dtype, device: str):
    from hf_unlearn.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    if model_name == "random":
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**model.config.to_dict()))
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def encode(tokenizer, prompts: list[str], device: str):
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def component_costs(
    model: EarlyExitForCausalLM, batch, device: str, reps: int, shortlist: list[int]
) -> dict[str, float]:
    """Milliseconds per decode token for one layer, one fill, the head, the head's shortlist rows (what an exit pays
    with ``shortlist_exits``) and the policy, measured in context."""
    depth = model.config.num_hidden_layers
    cache = DynamicCache(config=model.config.backbone_config)
    model(**batch, cache=cache, use_cache=True)
    rows = batch["input_ids"].shape[0]
    position_ids = torch.full((rows, 1), batch["input_ids"].shape[1], device=device)
    hidden = model._part("embed_tokens")(batch["input_ids"][:, -1:])
    embeddings = model._part("rotary_emb")(hidden, position_ids=position_ids)
    layers = model._layers()
    mask = torch.cat([batch["attention_mask"], batch["attention_mask"].new_ones(rows, 1)], dim=1)
    masks = model._attention_masks(hidden, mask, cache, position_ids)

    def all_layers():
        h = hidden
        for index, layer in enumerate(layers):
            h = model._run_layer(layer, h, masks[index], embeddings, position_ids, cache, True)
        cache.crop(-1)

    def all_fills():
        for index in range(depth):
            model.fill_skipped_layer(index, hidden, embeddings, cache)
        cache.crop(-1)

    def head():
        model.exit_logits(hidden, depth)

    def policy():
        model.exit_probability(hidden, model.config.exit_layers[0])

    def shortlist_head():
        model._ending_logits(hidden, model.config.exit_layers[0], shortlist=True)

    model.set_exit_shortlist(shortlist)

    timings = {}
    for name, fn, per in (("layer", all_layers, depth), ("fill", all_fills, depth), ("head", head, 1),
                          ("policy", policy, 1), ("shortlist_head", shortlist_head, 1)):
        fn()
        samples = []
        for _ in range(reps):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples.append((time.perf_counter() - start) / per * 1000)
        timings[name] = statistics.median(samples)
    return timings


def variants(depth: int, batch_size: int) -> list[tuple[str, dict]]:
    rows = [("full model (backbone.generate)", {"baseline": True}), ("wrapper, exit_strategy='none'", {})]
    rows += [(f"fixed exit at layer {k}", dict(exit_strategy="fixed", fixed_exit_layer=k)) for k in FIXED_DEPTHS]
    rows += [
        ("confidence > 0.9", dict(exit_strategy="confidence", confidence_threshold=0.9)),
        ("confidence > 0.9, shortlist", dict(exit_strategy="confidence", confidence_threshold=0.9, shortlist=True)),
        ("confidence > 0.6, shortlist", dict(exit_strategy="confidence", confidence_threshold=0.6, shortlist=True)),
        ("entropy < 1.0, shortlist", dict(exit_strategy="entropy", entropy_threshold=1.0, shortlist=True)),
    ]
    if batch_size > 1:
        rows = [r for r in rows if "0.6" not in r[0] and "entropy" not in r[0]]
    return rows


def generate(model, wrapper, batch, settings: dict, new_tokens: int, shortlist: list[int], device: str):
    settings = dict(settings)
    wrapper.set_exit_shortlist(shortlist if settings.pop("shortlist", False) else [])
    target = model if settings.pop("baseline", False) else wrapper
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=wrapper.config.pad_token_id)
    wrapper.exit_stats.reset()
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = target.generate(**batch, **kwargs, **settings)
    sync(device)
    seconds = time.perf_counter() - start
    return out[:, batch["input_ids"].shape[1]:], seconds, wrapper.exit_stats.mean_exit_layer


def bench_model(name: str, opts) -> dict:
    dtype = getattr(torch, opts.dtype)
    model, tokenizer = load(name, dtype, opts.device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    wrapper = EarlyExitForCausalLM.from_backbone(model).eval()
    depth = wrapper.config.num_hidden_layers
    print(f"[{name}] {depth} layers, exits {wrapper.config.exit_layers[0]}..{depth}", flush=True)

    calibration = encode(tokenizer, CALIBRATION, opts.device)
    with torch.no_grad():
        answers = model.generate(
            **calibration, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    texts = tokenizer.batch_decode(answers[:, calibration["input_ids"].shape[1]:], skip_special_tokens=True)
    shortlist = token_shortlist(tokenizer, texts, size=opts.shortlist)

    result = {"layers": depth, "exit_layers": wrapper.config.exit_layers, "shortlist_size": len(shortlist)}
    for batch_size in opts.batch_sizes:
        batch = encode(tokenizer, PROMPTS[:batch_size], opts.device)
        costs = component_costs(wrapper, batch, opts.device, opts.cost_reps, shortlist)
        print(f"[{name}] batch {batch_size} costs (ms/token): " + ", ".join(f"{k} {v:.3f}" for k, v in costs.items()),
              flush=True)
        rows = variants(depth, batch_size)
        times = {label: [] for label, _ in rows}
        outputs, exits = {}, {}
        for label, settings in rows:  # warm-up and the tokens to compare
            outputs[label], _, exits[label] = generate(model, wrapper, batch, settings, opts.tokens, shortlist,
                                                       opts.device)
        for round_ in range(opts.rounds):
            for label, settings in rows:
                _, seconds, _ = generate(model, wrapper, batch, settings, opts.tokens, shortlist, opts.device)
                times[label].append(seconds)
            print(f"[{name}] batch {batch_size} round {round_ + 1}/{opts.rounds} done", flush=True)
        full = outputs[rows[0][0]]
        base_seconds = statistics.median(times[rows[0][0]])
        base_ms, steps = base_seconds * 1000, opts.tokens - 1
        table = []
        for label, settings in rows:
            seconds = statistics.median(times[label])
            row = {
                "variant": label,
                "settings": settings,
                "tokens_per_s": batch_size * opts.tokens / seconds,
                "speedup": base_seconds / seconds,
                "mean_exit_layer": depth if "baseline" in settings or not settings else exits[label],
                "agreement": float((outputs[label] == full).float().mean()),
            }
            k = settings.get("fixed_exit_layer")
            if k is not None:
                saved = steps * (depth - k) * (costs["layer"] - costs["fill"])
                row["ideal_speedup"] = base_ms / (base_ms - saved)
                row["ideal_speedup_without_fill"] = base_ms / (base_ms - steps * (depth - k) * costs["layer"])
                row["measured_over_ideal"] = row["speedup"] / row["ideal_speedup"]
            table.append(row)
            print(f"[{name}] batch {batch_size} {label}: {row['tokens_per_s']:.1f} tok/s, x{row['speedup']:.2f}, "
                  f"exit {row['mean_exit_layer']:.1f}, agreement {row['agreement']:.2f}"
                  + (f", ideal x{row['ideal_speedup']:.2f} (measured/ideal {row['measured_over_ideal']:.2f})"
                     if k is not None else ""), flush=True)
        result[f"batch_{batch_size}"] = {
            "costs_ms_per_token": costs, "full_ms_per_token": base_ms / opts.tokens, "rows": table
        }
    return result


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"{meta['device']}, {meta['dtype']}, {meta['threads']} threads, torch {meta['torch']}, transformers "
        f"{meta['transformers']}; greedy generation of {meta['tokens']} new tokens, medians of {meta['rounds']} "
        "interleaved rounds. Speed-up is against the plain backbone's `generate` in the same run; agreement is the "
        "share of generated tokens equal to the full model's at the same position.",
        "",
    ]
    for name, model in results["models"].items():
        for key in sorted(k for k in model if k.startswith("batch_")):
            block = model[key]
            costs = block["costs_ms_per_token"]
            lines += [
                f"**{name}, batch {key.split('_')[1]}**: full model {block['full_ms_per_token']:.1f} ms per "
                "generation step (prompt pass included); per decode step: layer "
                f"{costs['layer']:.2f} ms, skipped-layer fill {costs['fill']:.2f} ms, norm + LM head "
                f"{costs['head']:.2f} ms" + (f" (its {model['shortlist_size']} shortlist rows "
                                             f"{costs['shortlist_head']:.2f} ms)" if "shortlist_head" in costs else "")
                + f", policy {costs['policy']:.3f} ms.",
                "",
                "| variant | tokens/s | speed-up | mean exit layer | agreement | ideal speed-up | measured / ideal |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in block["rows"]:
                ideal = f"{row['ideal_speedup']:.2f}" if "ideal_speedup" in row else "-"
                ratio = f"{row['measured_over_ideal']:.2f}" if "measured_over_ideal" in row else "-"
                lines.append(
                    f"| {row['variant']} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f} | "
                    f"{row['mean_exit_layer']:.1f} | {row['agreement']:.2f} | {ideal} | {ratio} |"
                )
            lines.append("")
    return "\n".join(lines)


def update_readme(text: str) -> None:
    update_table("early-exit", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "random"], choices=["smollm2", "random"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cost-reps", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="early_exit.json")
    parser.add_argument("--readme-only", action="store_true", help="re-render the README table from the JSON")
    opts = parser.parse_args()
    if opts.readme_only:
        update_readme(markdown(json.loads((ROOT / "results" / opts.out).read_text())))
        return
    torch.set_num_threads(opts.threads)
    device_name = torch.cuda.get_device_name(0) if opts.device == "cuda" else platform.processor() or "CPU"
    results = {
        "meta": {
            "device": device_name, "dtype": opts.dtype, "threads": opts.threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "tokens": opts.tokens, "rounds": opts.rounds,
        },
        "models": {},
    }
    started = time.perf_counter()
    for name in opts.models:
        results["models"][name] = bench_model(name, opts)
    results["meta"]["seconds"] = time.perf_counter() - started
    out = ROOT / "results" / opts.out
    atomic_write_text(out, json.dumps(results, indent=2))
    print(f"wrote {out}")
    if opts.out == "early_exit.json":
        update_readme(markdown(results))


if __name__ == "__main__":
    main()
