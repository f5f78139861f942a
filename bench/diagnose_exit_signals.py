"""What each inference-time exit signal allows at best on the ConsistentEE bench's checkpoint (SmolLM2-135M-Instruct,
frozen backbone): why the policy stops near 1.06x at 95% agreement.

One all-exits pass, teacher-forced, over (a) answers of the policy's own split (calibration text) and (b) the original
model's 32-token greedy continuations of the held-out prompts (the bench's evaluation text), recording at every
exit whether its top-1 token (over the shortlist, as the exits predict) is the full model's, the policy's exit
probability and the exit's confidence over the shortlist (top-1 probability, top-1 minus top-2, entropy). For each
signal, per-exit thresholds fitted on (a) to a target agreement (``fit_policy_thresholds``: the cost model of
``calibrate_policy_thresholds``, layers run plus a check cost per check plus the full head's extra cost at the last
layer) are applied to (b): the agreement and layers per token there, and the speed-up that allows before any
overhead (the fixed exit at layer 28: 1.162 in this cost model, 1.136 measured by the bench).

Signals: ``policy`` (ConsistentEE's, hidden state in), ``confidence`` (the exit's top-1 probability; a check also pays
the shortlist's rows of the LM head), ``policy+confidence`` (a logistic regression per exit on the policy's logit and
the three confidence features, fitted on (a): what a policy reading both could learn), and the ``oracle`` (every
token at its memorized layer, which needs the answer).

    python bench/bench_consistentee.py                               # first: the published run's checkpoint
    python bench/diagnose_exit_signals.py                            # about 2 minutes a checkpoint on 2 CPU cores
    python bench/bench_consistentee.py --work more --extra-topics --phase frozen --models frozen --head-steps 1000
    python bench/diagnose_exit_signals.py --work full more           # the same with twice the training answers

Writes ``bench/results/consistentee_exit_signals.json`` and its table in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

import bench_consistentee as bench  # noqa: E402
from readme_tables import update_table  # noqa: E402

from hf_unlearn import losses  # noqa: E402
from hf_unlearn.atomic_files import atomic_write_text  # noqa: E402
from hf_unlearn.early_exit.calibration import fit_policy_thresholds, thresholds_outcome  # noqa: E402
from hf_unlearn.early_exit.modeling_early_exit import confidence_features  # noqa: E402
from hf_unlearn.smollm2 import load_smollm2  # noqa: E402

TARGETS = (0.9, 0.95, 0.97)
POLICY_CHECK, SHORTLIST_HEAD = bench.POLICY_CHECK_COST, bench.SHORTLIST_HEAD_COST


@torch.no_grad()
def exit_signals(model, ids: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
    """``(exits, positions)`` signals of the positions from ``start`` on (each predicts the next token)."""
    out = model(ids, output_all_exits=True, use_cache=False, output_exit_logits=True)
    full = out.exit_logits[-1][0, start:-1].argmax(-1)
    shortlist = model.early_exit.shortlist
    confidence, correct = [], []
    for layer, logits in zip(model.config.exit_layers, out.exit_logits[:-1]):
        confidence.append(confidence_features(logits[0, start:-1][..., shortlist]))
        correct.append(model._exit_tokens(logits[0, start:-1], layer, shortlist=True) == full)
    confidence = torch.stack(confidence)  # (exits, positions, 3)
    return {"policy": out.policy_probs[:, 0, start:-1].float(), "confidence": confidence[..., 0],
            "margin": confidence[..., 1], "entropy": confidence[..., 2], "correct": torch.stack(correct)}


def collect(model, texts: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    parts = [exit_signals(model, ids, start) for ids, start in texts]
    return {key: torch.cat([p[key] for p in parts], dim=1) for key in parts[0]}


def features(signals: dict[str, torch.Tensor]) -> torch.Tensor:
    policy = signals["policy"].clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.log(policy / (1 - policy)), signals["confidence"], signals["margin"],
                        signals["entropy"]], dim=-1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor):
    """A standardised logistic regression of ``y`` on ``x`` (L-BFGS, a little L2); returns the fitted scorer."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        logits = (x - mean) / std @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda z: torch.sigmoid((z - mean) / std @ weight + bias).detach()


def combined_scores(calibration: dict, held_out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per exit, a logistic regression of "the exit is right" on the features, fitted on the calibration text."""
    train, test = features(calibration), features(held_out)
    scorers = [fit_logistic(train[i], calibration["correct"][i]) for i in range(train.shape[0])]
    return (torch.stack([f(train[i]) for i, f in enumerate(scorers)]),
            torch.stack([f(test[i]) for i, f in enumerate(scorers)]))


def frontier(name: str, scores: tuple, calibration: dict, held_out: dict, exits: list[int], depth: float,
             check_cost: float) -> list[dict]:
    rows = []
    for target in TARGETS:
        thresholds = fit_policy_thresholds(scores[0], calibration["correct"], exits, depth, target, check_cost)
        outcome = [thresholds_outcome(score, signals["correct"], thresholds, exits, depth, check_cost)
                   for score, signals in zip(scores, (calibration, held_out))]
        rows.append({"signal": name, "target": target, "calibration_agreement": outcome[0][1],
                     "agreement": outcome[1][1], "layers_per_token": outcome[1][0],
                     "ideal_speedup": depth / outcome[1][0], "checked_exits": sorted(thresholds)})
    return rows


def diagnose(work: str, original, tokenizer, answers: int) -> dict:
    bench.WORK = bench.WORK_ROOT / work
    data = json.loads((bench.WORK / "data.json").read_text())
    model = bench.load_exits(bench.WORK / "checkpoint-frozen")
    calibration_text = []
    for prompt, answer in bench.policy_split_answers(data, "frozen", answers):
        ids = tokenizer(prompt + answer, return_tensors="pt")["input_ids"]
        calibration_text.append((ids, len(tokenizer(prompt)["input_ids"])))
    held_out_text = []
    for prompt in data["held_out_prompts"]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        sequence = original.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                     eos_token_id=[], pad_token_id=tokenizer.eos_token_id)
        held_out_text.append((sequence, ids.shape[1]))  # positions whose input is a generated token, as evaluated
    calibration, held_out = collect(model, calibration_text), collect(model, held_out_text)
    exits = list(model.config.exit_layers)
    depth = model.config.num_hidden_layers + bench.HEAD_COST
    rows = frontier("policy", (calibration["policy"], held_out["policy"]), calibration, held_out, exits, depth,
                    POLICY_CHECK)
    rows += frontier("confidence", (calibration["confidence"], held_out["confidence"]), calibration, held_out, exits,
                     depth, POLICY_CHECK + SHORTLIST_HEAD)
    rows += frontier("policy+confidence", combined_scores(calibration, held_out), calibration, held_out, exits, depth,
                     POLICY_CHECK + SHORTLIST_HEAD)
    correct = held_out["correct"]
    memorized = losses.memorized_layers(torch.cat([correct, torch.ones_like(correct[:1])]),
                                        [*exits, model.config.num_hidden_layers]).float()
    oracle_cost = float((memorized + bench.HEAD_COST * (memorized == model.config.num_hidden_layers)).mean())
    rows.append({"signal": "oracle", "target": 1.0, "agreement": 1.0, "layers_per_token": oracle_cost,
                 "ideal_speedup": depth / oracle_cost})
    heads = json.loads((bench.WORK / "heads-frozen.json").read_text())
    return {
        "training_answers": len(data["train"]), "head_steps": heads["steps"],
        "calibration_tokens": int(calibration["correct"].shape[1]), "held_out_tokens": int(correct.shape[1]),
        "exit_agreement_held_out": {k: float(v) for k, v in zip(exits, correct.float().mean(1))},
        "exit_agreement_calibration": {k: float(v) for k, v in zip(exits, calibration["correct"].float().mean(1))},
        "rows": [{**row, "work": work} for row in rows],
    }


def markdown(report: dict) -> str:
    lines = ["| checkpoint | signal | target | agreement (calibration / held-out) | layers per token | ideal speed-up "
             "|", "|---|---|---|---|---|---|"]
    for work, result in report["checkpoints"].items():
        label = f"{work} ({result['training_answers']} answers)"
        for row in result["rows"]:
            calibrated = f"{row['calibration_agreement']:.3f} / " if "calibration_agreement" in row else ""
            lines.append(f"| {label} | {row['signal']} | {row['target']:.2f} | {calibrated}{row['agreement']:.3f} | "
                         f"{row['layers_per_token']:.2f} | {row['ideal_speedup']:.3f} |")
    for work, result in report["checkpoints"].items():
        agreement = ", ".join(f"{k}: {v:.2f}" for k, v in result["exit_agreement_held_out"].items())
        lines.append(f"\n{work}: each exit's agreement with the full model on the held-out text: {agreement}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", nargs="+", default=["full"], help="work folders of bench_consistentee.py")
    parser.add_argument("--answers", type=int, default=100, help="calibration answers of the policy's split")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    original, tokenizer = load_smollm2()
    report = {"head_cost": bench.HEAD_COST, "check_costs": {"policy": POLICY_CHECK, "shortlist_head": SHORTLIST_HEAD},
              "checkpoints": {work: diagnose(work, original, tokenizer, opts.answers) for work in opts.work}}
    atomic_write_text(ROOT / "results" / "consistentee_exit_signals.json", json.dumps(report, indent=2))
    table = markdown(report)
    update_table("consistentee-exit-signals", table, heading="### What the exit signals allow")
    print(table)


if __name__ == "__main__":
    main()
