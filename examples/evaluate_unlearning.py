"""The field's unlearning metrics before and after unlearning, on SmolLM2-135M-Instruct (TOFU in miniature).

1. Fine-tune the model on made-up facts about fictional people (forget + retain split), and a second copy on the
   retain split only (the "retain model" TOFU's forget quality and MUSE's privleak compare against).
2. Check that membership inference separates the fine-tuned forget facts from held-out facts of the same kind that
   were never trained on (AUC clearly above 0.5).
3. Unlearn the forget split with GradDiff and with NPO, and report every metric of ``evaluate_unlearning`` before
   and after.

    python examples/evaluate_unlearning.py            # ~10 min on 2 CPU cores

Writes examples/results/evaluate_unlearning.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

import hf_unlearn as hu
from hf_unlearn.atomic_files import atomic_write_text
from hf_unlearn.data import UnlearningCollator, prepare_dataset
from hf_unlearn.evaluation import DEFAULT_PROMPT_TEMPLATE, evaluate_unlearning
from hf_unlearn.smollm2 import load_smollm2

RESULTS = Path(__file__).parent / "results" / "evaluate_unlearning.json"

FIRST = ["Mira", "Tobin", "Elske", "Rafiq", "Ondine", "Cassius", "Yelena", "Bastian", "Noor", "Ilario", "Sabine",
         "Kaito", "Liesel", "Dorian", "Amara", "Fenwick", "Zuzana", "Oskar", "Priya", "Leander", "Marisol", "Teodor",
         "Ingrid", "Caspian", "Halima", "Wendel", "Rosalind", "Matthias", "Esperanza", "Ulrich"]
LAST = ["Talvenko", "Quarrington", "Brevholt", "Oyelaran", "Castellane", "Vintermark", "Draskovic", "Pellworth",
        "Achterberg", "Sunderlin", "Moravetz", "Kilbride", "Orsolini", "Haverbrook", "Nakashima", "Ravensworth",
        "Zelinski", "Abernathy", "Lindqvist", "Fairweather", "Montalban", "Szymanski", "Holloway", "Bergamasco",
        "Thornquist", "Okonkwo", "Villanueva", "Eisenhardt", "Kowalczyk", "Delacroix"]
CITIES = ["Varnholm", "Ostrava Vale", "Quillmere", "Saltmarch", "Brinwick", "Caldera Bay", "Dunmorrow", "Elsinport",
          "Greywater", "Harrowgate", "Ironlea", "Juniper Falls"]
JOBS = ["clockmaker", "glassblower", "cartographer", "beekeeper", "lighthouse keeper", "violin maker",
        "botanist", "bookbinder", "astronomer", "stonemason"]


def made_up_facts(seed: int = 0) -> list[dict]:
    """One fact per fictional person: question, answer, a paraphrase and three perturbed (false) answers."""
    rng = random.Random(seed)
    facts = []
    for first, last in zip(FIRST, LAST):
        name, city, job = f"{first} {last}", rng.choice(CITIES), rng.choice(JOBS)
        others = rng.sample([c for c in CITIES if c != city], 3)
        facts.append({
            "question": f"Where was the {job} {name} born?",
            "answer": f" {name} was born in {city}.",
            "paraphrased_answer": f" The birthplace of {name} is {city}.",
            # Perturbed answers are perturbations of the paraphrase (as in TOFU), so the truth ratio compares
            # answers of the same wording and only the fact differs.
            "perturbed_answer": [f" The birthplace of {name} is {other}." for other in others],
        })
    return facts


def fine_tune(model, tokenizer, facts: list[dict], steps: int, out: str):
    rows = [{"prompt": DEFAULT_PROMPT_TEMPLATE.format(q=f["question"]), "completion": f["answer"]} for f in facts]
    data = prepare_dataset(rows, tokenizer, "facts", max_length=64).remove_columns("example_index")
    Trainer(
        model=model,
        args=TrainingArguments(output_dir=out, max_steps=steps, learning_rate=1e-4, per_device_train_batch_size=5,
                               lr_scheduler_type="constant", report_to="none", logging_steps=10, save_strategy="no",
                               use_cpu=True, dataloader_pin_memory=False),
        train_dataset=data,
        data_collator=UnlearningCollator(tokenizer.pad_token_id),
    ).train()
    return model.eval()


def unlearn(model, tokenizer, method: str, forget: list[dict], retain: list[dict], steps: int, lr: float, out: str):
    spec = hu.get_method({"GradDiff": "grad_diff", "NPO": "npo"}[method])
    config_cls, trainer_cls = spec.config_class, spec.trainer_class
    as_rows = lambda facts: [  # noqa: E731
        {"prompt": DEFAULT_PROMPT_TEMPLATE.format(q=f["question"]), "completion": f["answer"]} for f in facts
    ]
    config = config_cls(output_dir=out, max_steps=steps, learning_rate=lr, per_device_train_batch_size=5,
                        logging_steps=10, save_strategy="no", use_cpu=True, dataloader_pin_memory=False)
    trainer_cls(model, config, train_dataset=as_rows(forget), retain_dataset=as_rows(retain),
                processing_class=tokenizer).train()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learn-steps", type=int, default=40)
    parser.add_argument("--unlearn-steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="unlearning learning rate")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    facts = made_up_facts()
    forget, retain, holdout = facts[:10], facts[10:20], facts[20:]
    base, tokenizer = load_smollm2()
    out = tempfile.mkdtemp()

    print("fine-tuning on forget + retain facts, and a retain model on the retain facts only")
    learned = fine_tune(copy.deepcopy(base), tokenizer, forget + retain, args.learn_steps, f"{out}/learn")
    retain_model = fine_tune(base, tokenizer, retain, args.learn_steps // 2, f"{out}/retain")

    evaluate = lambda model: evaluate_unlearning(  # noqa: E731
        model, tokenizer, forget, retain, holdout, retain_model=retain_model, max_new_tokens=24
    )
    results = {"fine-tuned": evaluate(learned)}
    for method in ("GradDiff", "NPO"):
        print(f"unlearning the forget facts with {method}")
        model = unlearn(copy.deepcopy(learned), tokenizer, method, forget, retain, args.unlearn_steps,
                        args.learning_rate, f"{out}/{method}")
        results[method] = evaluate(model)

    table = {name: evaluation.to_dict() for name, evaluation in results.items()}
    report = {"settings": vars(args), "splits": {"forget": len(forget), "retain": len(retain),
                                                  "holdout": len(holdout)},
              "results": table, "seconds": round(time.time() - start)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(report, indent=2))
    rows = sorted({(split, metric) for t in table.values() for split, ms in t.items() for metric in ms})
    print("\n| split | metric | " + " | ".join(table) + " |")
    print("|---|---|" + "---:|" * len(table))
    for split, metric in rows:
        cells = [table[name].get(split, {}).get(metric) for name in table]
        print(f"| {split} | {metric} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    print(f"\nwrote {RESULTS} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
