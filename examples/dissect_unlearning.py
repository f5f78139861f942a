"""Dissect fine-tuning unlearning on the real SmolLM2-135M-Instruct (CPU, a few minutes).

1. Unlearn "Harry Potter" with GradDiff and with NPO: a few dozen steps on the project's own short text about it
   (hf_unlearn/concept_data.py), retaining a general-knowledge text.
2. Locate the concept's vectors in the original model and audit them in each unlearned model.
3. Run activation patching (MLP coefficients, attention outputs, both) and parameter restoration (value vectors)
   with the original model's greedy answers as probes, plus side effects on unrelated questions and on another
   concept's paragraph (held out: neither forgotten nor retained).
4. Save ``examples/results/dissect_unlearning.{json,png}``.

    bash scripts/setup.sh dev,demo && .venv/bin/python examples/dissect_unlearning.py [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import tempfile
import time
from pathlib import Path

import torch

import hf_unlearn as hu
from hf_unlearn.atomic_files import atomic_write_text
from hf_unlearn.concept_data import BACKGROUND, BACKGROUND_TEXT, CONCEPTS, UNRELATED
from hf_unlearn.concepts import audit_concept_vectors
from hf_unlearn.concepts.locate import locate_concept_vectors
from hf_unlearn.dissect import (
    DissectionTable,
    activation_patching,
    make_probes,
    parameter_restoration,
    side_effects,
)
from hf_unlearn.evaluation import answer_log_probs
from hf_unlearn.smollm2 import load_smollm2

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = "Question: {q}\nAnswer:"
# display name -> registered method
METHODS = {"GradDiff": hu.get_method("grad_diff"), "NPO": hu.get_method("npo")}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def mean_answer_log_prob(model, tokenizer, qa: list[tuple[str, str]]) -> float:
    """Mean per-token log-prob of the gold answers, teacher forced after the question."""
    scores = answer_log_probs(model, tokenizer, [q for q, _ in qa], [" " + a for _, a in qa], prompt_template=TEMPLATE)
    return float(scores.mean.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="Harry Potter", choices=sorted(CONCEPTS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--top-n", type=int, default=20, help="concept vectors to audit")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()

    original, tokenizer = load_smollm2()
    concept = CONCEPTS[args.concept]
    qa = concept["qa"]
    questions = [q for q, _ in qa]
    forget, retain = sentences(concept["text"]), sentences(BACKGROUND_TEXT)
    # Side effects are measured on a text neither trained on nor forgotten: another concept's paragraph.
    held_out_concept = next(name for name in CONCEPTS if name != args.concept)
    held_out = CONCEPTS[held_out_concept]["text"]

    vectors = locate_concept_vectors(
        original,
        tokenizer,
        args.concept,
        questions=questions,
        answers=[a for _, a in qa],
        text=concept["text"],
        background_questions=[q for q, _ in BACKGROUND],
        background_answers=[a for _, a in BACKGROUND],
        background_text=BACKGROUND_TEXT,
        top_n=args.top_n,
    )
    probes = make_probes(original, tokenizer, questions, max_new_tokens=16, prompt_template=TEMPLATE)
    before = {
        "concept": mean_answer_log_prob(original, tokenizer, qa),
        "unrelated": mean_answer_log_prob(original, tokenizer, UNRELATED),
    }
    print(f"original: concept answer log-prob {before['concept']:.3f}, unrelated {before['unrelated']:.3f}")

    summary: dict = {
        "concept": args.concept,
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "window": args.window,
        "original": before,
        "held_out_text_of": held_out_concept,
        "probes": [p.__dict__ for p in probes],
        "concept_vectors": [v.location for v in vectors],
        "methods": {},
    }
    tables = []
    for name, spec in METHODS.items():
        trainer_cls, config_cls = spec.trainer_class, spec.config_class
        unlearned = copy.deepcopy(original)
        with tempfile.TemporaryDirectory() as out:
            config = config_cls(
                output_dir=out,
                max_steps=args.steps,
                learning_rate=args.learning_rate,
                per_device_train_batch_size=4,
                logging_steps=10,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                seed=0,
            )
            trainer_cls(
                unlearned, config, train_dataset=forget, retain_dataset=retain, processing_class=tokenizer
            ).train()
        unlearned.eval()
        after = {
            "concept": mean_answer_log_prob(unlearned, tokenizer, qa),
            "unrelated": mean_answer_log_prob(unlearned, tokenizer, UNRELATED),
        }
        print(f"{name}: concept answer log-prob {after['concept']:.3f}, unrelated {after['unrelated']:.3f}")
        audit = audit_concept_vectors(original, unlearned, vectors, tokenizer=tokenizer, layers="all")
        table = activation_patching(original, unlearned, tokenizer, probes, window=args.window)
        table = table + parameter_restoration(
            original, unlearned, tokenizer, probes, params="mlp_out", window=args.window
        )
        effects = side_effects(
            original,
            unlearned,
            tokenizer,
            [q for q, _ in UNRELATED],
            held_out,
            max_new_tokens=16,
            prompt_template=TEMPLATE,
        )
        tables.append(table.tagged(model=name))
        summary["methods"][name] = {
            "answer_log_prob": after,
            "audit": audit.summary(),
            "audit_layers": audit.layers,
            "side_effects": {k: v for k, v in effects.items() if k != "answers"}
            | {"answers_bleu": effects["answers"]["bleu"], "answers_rouge_l": effects["answers"]["rouge_l"]},
            "krs": {
                line: table.curve(exp, line)
                for exp in ("activation_patching", "parameter_restoration")
                for line in table.lines(exp)
            },
        }
        print(audit)
        del unlearned

    combined = DissectionTable([r for t in tables for r in t.rows], {"window": args.window})
    RESULTS.mkdir(parents=True, exist_ok=True)
    combined.to_json(RESULTS / "dissect_unlearning_krs.json")
    combined.plot(
        RESULTS / "dissect_unlearning.png",
        title=f"SmolLM2-135M-Instruct, '{args.concept}' unlearned ({args.steps} steps)",
    )
    summary["seconds"] = round(time.time() - start, 1)
    atomic_write_text(RESULTS / "dissect_unlearning.json", json.dumps(summary, indent=1, default=float))
    for name, result in summary["methods"].items():
        print(f"\n{name}")
        for line, (_layers, krs) in result["krs"].items():
            print(f"  {line:10s} " + " ".join(f"{k:5.2f}" for k in krs))
    print(f"\nsaved {RESULTS / 'dissect_unlearning.png'} and .json in {summary['seconds']} s")


if __name__ == "__main__":
    main()
