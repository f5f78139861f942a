"""Throughput of hf_unlearn.evaluation's scoring against a plain forward pass of the same batches.

Scoring N examples should cost one batched forward pass per batch: ``answer_log_probs`` (and the membership
inference attacks built on it) are timed against ``model(input_ids, attention_mask)`` on exactly the padded
batches they build, in the same process, round-robin, medians reported.

    python bench/bench_evaluation.py            # SmolLM2-135M-Instruct, ~3 min on 2 CPU cores
    python bench/bench_evaluation.py --quick    # tiny random Llama, seconds

Writes bench/results/evaluation.json and the table in bench/README.md.
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

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT.parent))

from readme_tables import update_table  # noqa: E402

from hf_unlearn.atomic_files import atomic_write_text  # noqa: E402
from hf_unlearn.evaluation import DEFAULT_PROMPT_TEMPLATE, answer_log_probs, mia_scores  # noqa: E402
from hf_unlearn.evaluation.likelihood import _encode  # noqa: E402

WORDS = ("the river city author novel born year wrote studied painter village museum island composer bridge "
         "library garden festival harbour mountain").split()


def examples(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    g = torch.Generator().manual_seed(seed)
    pick = lambda k: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))  # noqa: E731
    questions = [f"Which {pick(6)}?" for _ in range(n)]
    answers = [" " + pick(int(torch.randint(8, 24, (1,), generator=g))) for _ in range(n)]
    return questions, answers


def plain_batches(tokenizer, questions, answers, batch_size):
    """The padded batches answer_log_probs builds (same token ids, right padding), for the plain forward."""
    encoded = _encode(tokenizer, questions, answers, DEFAULT_PROMPT_TEMPLATE, False, None, None, False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = [ids for ids, _ in encoded[start : start + batch_size]]
        width = max(map(len, chunk))
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk])
        mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk])
        batches.append((ids, mask))
    return batches


def load(quick: bool):
    if quick:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "</s>", "Question:", "Answer:", *WORDS,
                                             *[w + "?" for w in WORDS]])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        return model.eval(), tokenizer, "tiny random Llama"
    from hf_unlearn.smollm2 import load_smollm2

    model, tokenizer = load_smollm2()
    return model, tokenizer, "SmolLM2-135M-Instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(opts.threads)
    if opts.quick:
        opts.rounds = 2
    model, tokenizer, name = load(opts.quick)
    questions, answers = examples(opts.examples)
    batches = plain_batches(tokenizer, questions, answers, opts.batch_size)
    mia_data = [{"prompt": DEFAULT_PROMPT_TEMPLATE.format(q=q), "completion": a} for q, a in zip(questions, answers)]

    @torch.inference_mode()
    def plain():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)

    variants = {
        "plain forward": plain,
        "answer_log_probs": lambda: answer_log_probs(model, tokenizer, questions, answers,
                                                     batch_size=opts.batch_size, progress=False),
        "mia_scores (min_k)": lambda: mia_scores(model, tokenizer, mia_data, "min_k", batch_size=opts.batch_size,
                                                 progress=False),
        "mia_scores (min_k_plus_plus)": lambda: mia_scores(model, tokenizer, mia_data, "min_k_plus_plus",
                                                           batch_size=opts.batch_size, progress=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(opts.rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times["plain forward"])
    rows = []
    for key, values in times.items():
        seconds = statistics.median(values)
        rows.append({"variant": key, "seconds": round(seconds, 4), "examples_per_s": round(opts.examples / seconds, 2),
                     "ratio_to_plain": round(seconds / base, 3)})
    report = {"model": name, "examples": opts.examples, "batch_size": opts.batch_size, "rounds": opts.rounds,
              "threads": opts.threads, "torch": torch.__version__, "transformers": transformers.__version__,
              "cpu": platform.processor() or platform.machine(), "rows": rows}
    out = ROOT / "results" / ("evaluation_quick.json" if opts.quick else "evaluation.json")
    atomic_write_text(out, json.dumps(report, indent=2))
    lines = [f"{name}, {opts.examples} question/answer pairs, batch {opts.batch_size}, {opts.threads} threads, "
             f"torch {torch.__version__}; median of {opts.rounds} rounds.", "",
             "| variant | s (median) | examples/s | time / plain forward |", "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['seconds']:.3f} | {r['examples_per_s']:.1f} | {r['ratio_to_plain']:.2f} |"
              for r in rows]
    text = "\n".join(lines)
    print(text)
    if not opts.quick:
        update_table(
            "evaluation",
            text,
            "## Evaluation\n\n`bench_evaluation.py` times the evaluation metrics' scoring against a plain forward "
            "pass of the same padded batches (`python bench/bench_evaluation.py`).",
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
