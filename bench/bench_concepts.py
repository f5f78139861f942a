"""Benchmark of the concept-vector tools on a SmolLM2-135M-shaped model (CPU).

Measured in one process, interleaved repeats, medians:

* the full vocabulary-projection scan (``scan_value_vectors``: ``E @ W_down`` per layer in column chunks, plus the
  top-k per value vector) against a plain matmul of the same FLOPs (the same ``E @ W_down`` products, nothing else):
  throughput ratio, target >= 0.5;
* the scan's peak extra memory (resident set size sampled every 2 ms) for two chunk sizes, against the theoretical
  one ``vocab x chunk`` float32 logits block: it must grow with the chunk size, not with the number of layers;
* the attribution scorer's cost (``attribution_scores``: one forward and one backward for all layers) relative to a
  plain forward+backward of the same batch.

    python bench/bench_concepts.py            # ~2 min; writes bench/results/concepts.json, updates bench/README.md
    python bench/bench_concepts.py --model smollm2   # the real weights (needs `bash scripts/setup.sh dev,demo`)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch
from readme_tables import update_table
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_unlearn.architectures import unembedding, value_vectors_view
from hf_unlearn.atomic_files import atomic_write_text
from hf_unlearn.concepts.locate import attribution_scores
from hf_unlearn.concepts.projection import scan_value_vectors

ROOT = Path(__file__).resolve().parent
SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)


def random_model_and_tokenizer() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(SMOLLM2_SHAPE["vocab_size"] - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE, pad_token_id=0, eos_token_id=2)).eval()
    return model, tokenizer


class PeakRSS:
    """Peak resident set size above the level at entry, sampled by a background thread."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._process = psutil.Process()

    def __enter__(self):
        self.base = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss - self.base)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_scan(model, layers, chunk, top_k) -> float:
    start = time.perf_counter()
    for _ in scan_value_vectors(model, layers=layers, top_k=top_k, chunk_size=chunk):
        pass
    return time.perf_counter() - start


@torch.no_grad()
def run_matmul(model, layers) -> float:
    embedding = unembedding(model).detach().float()
    weights = [value_vectors_view(model, layer).detach().float() for layer in layers]
    start = time.perf_counter()
    for weight in weights:
        out = embedding @ weight
        del out
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["random", "smollm2"], default="random")
    parser.add_argument("--layers", type=int, default=6, help="layers scanned per repeat (FLOPs scale linearly)")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    if opts.model == "smollm2":
        from hf_unlearn.smollm2 import load_smollm2

        model, tokenizer = load_smollm2()
    else:
        model, tokenizer = random_model_and_tokenizer()
    config = model.config
    layers = list(range(opts.layers))
    flops = 2 * config.vocab_size * config.hidden_size * config.intermediate_size * len(layers)

    run_scan(model, layers[:1], opts.chunk, opts.top_k)  # warm-up
    run_matmul(model, layers[:1])
    scan_times, matmul_times = [], []
    for _ in range(opts.repeats):
        scan_times.append(run_scan(model, layers, opts.chunk, opts.top_k))
        matmul_times.append(run_matmul(model, layers))
    scan_s, matmul_s = statistics.median(scan_times), statistics.median(matmul_times)

    memory = {}
    for chunk in (opts.chunk // 2, opts.chunk * 2):
        with PeakRSS() as peak:
            run_scan(model, layers[:2], chunk, opts.top_k)
        memory[str(chunk)] = {
            "peak_extra_mib": peak.peak / 2**20,
            "logits_block_mib": config.vocab_size * chunk * 4 / 2**20,
        }

    words = [f"w{i}" for i in range(100, 400)] if opts.model == "random" else None
    if words:
        questions = [" ".join(words[i * 12 : i * 12 + 10]) + " ?" for i in range(6)]
        answers = [" ".join(words[200 + i * 4 : 200 + i * 4 + 3]) for i in range(6)]
    else:
        questions = [
            "Who wrote the Harry Potter books?",
            "What is the capital of France?",
            "What is the largest planet?",
            "Who painted the Mona Lisa?",
            "What is H2O?",
            "How many legs does a spider have?",
        ]
        answers = ["J.K. Rowling", "Paris", "Jupiter", "Leonardo da Vinci", "Water", "Eight"]
    texts = [f"Question: {q}\nAnswer: {a}" for q, a in zip(questions, answers)]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def forward_backward() -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(**batch, labels=labels).loss.backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed

    def attribution() -> float:
        start = time.perf_counter()
        attribution_scores(model, tokenizer, questions=questions, answers=answers)
        return time.perf_counter() - start

    forward_backward(), attribution()  # warm-up
    fb_times, attr_times = [], []
    for _ in range(opts.repeats + 2):
        fb_times.append(forward_backward())
        attr_times.append(attribution())
    fb_s, attr_s = statistics.median(fb_times), statistics.median(attr_times)

    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": opts.threads,
            "torch": torch.__version__,
        },
        "model": opts.model,
        "shape": {
            k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        },
        "scan": {
            "layers": len(layers),
            "chunk": opts.chunk,
            "top_k": opts.top_k,
            "gflop": flops / 1e9,
            "scan_seconds": scan_s,
            "matmul_seconds": matmul_s,
            "scan_gflops": flops / scan_s / 1e9,
            "matmul_gflops": flops / matmul_s / 1e9,
            "throughput_ratio": matmul_s / scan_s,
            "full_model_scan_seconds_estimate": scan_s * config.num_hidden_layers / len(layers),
            "all_scan_seconds": scan_times,
            "all_matmul_seconds": matmul_times,
        },
        "scan_memory": memory,
        "attribution": {
            "probes": len(questions),
            "attribution_seconds": attr_s,
            "forward_backward_seconds": fb_s,
            "ratio": attr_s / fb_s,
        },
        "targets": {"scan_throughput_at_least_half_of_matmul": matmul_s / scan_s >= 0.5},
    }
    (ROOT / "results").mkdir(exist_ok=True)
    atomic_write_text(ROOT / "results" / "concepts.json", json.dumps(result, indent=1))

    small, large = (memory[k] for k in sorted(memory, key=int))
    table = "\n".join(
        [
            f"{opts.model} model of SmolLM2-135M's shape (vocab {config.vocab_size}, d {config.hidden_size}, d_ff "
            f"{config.intermediate_size}), {opts.threads} threads, torch {torch.__version__}; medians of "
            f"{opts.repeats} interleaved repeats.",
            "",
            "| measurement | value |",
            "|---|---|",
            f"| projection scan, {len(layers)} layers, chunk {opts.chunk}, top-{opts.top_k} | {scan_s:.2f} s "
            f"({flops / scan_s / 1e9:.0f} GFLOP/s) |",
            f"| plain matmul, same FLOPs | {matmul_s:.2f} s ({flops / matmul_s / 1e9:.0f} GFLOP/s) |",
            f"| **scan throughput / matmul throughput** (target >= 0.5) | **{matmul_s / scan_s:.2f}** |",
            f"| full 30-layer scan (estimate) | {result['scan']['full_model_scan_seconds_estimate']:.1f} s |",
            f"| scan peak extra memory, chunk {opts.chunk // 2} / {opts.chunk * 2} | {small['peak_extra_mib']:.0f} / "
            f"{large['peak_extra_mib']:.0f} MiB (one logits block: {small['logits_block_mib']:.0f} / "
            f"{large['logits_block_mib']:.0f} MiB) |",
            f"| attribution scorer, {len(questions)} probes, all layers | {attr_s:.3f} s |",
            f"| plain forward+backward, same batch | {fb_s:.3f} s |",
            f"| **attribution / forward+backward** | **{attr_s / fb_s:.2f}** |",
        ]
    )
    update_table(
        "concepts",
        table,
        "## Concept vectors\n\n`bench_concepts.py` times the vocabulary-projection scan against a plain matmul of the "
        "same FLOPs, samples its peak memory for two chunk sizes, and times the attribution scorer against one "
        "forward+backward (`python bench/bench_concepts.py`).",
    )
    print(table)


if __name__ == "__main__":
    main()
