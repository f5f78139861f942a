"""``hf-unlearn dissect``: is the knowledge gone, or only harder to reach (activation patching, parameter
restoration)?"""

from __future__ import annotations

import argparse

from ._common import (
    add_model_options,
    add_runtime_options,
    load_model_pair,
    load_questions,
    output_dir,
    report,
    split_list,
)

EXAMPLES = """\
Knowledge Recovery Score per layer window (Hong et al., EMNLP 2024): 1 means patching the original's activations
(or restoring its parameters) in that window brings the forgotten answers fully back (hf_unlearn.dissect).

examples:
  hf-unlearn dissect --original smollm2 --unlearned out/hp --questions hp.txt --output-dir out/dissect
  hf-unlearn dissect --original ./base --unlearned ./npo --questions qa.jsonl --experiments restoration \\
      --params mlp --window 3

--questions: a .txt file (one per line) or rows with 'question' and optionally 'answer' (without answers the
original model's greedy answers are the probes).
"""

EXPERIMENTS = ("patching", "restoration")
COMPONENTS = ("mlp", "attn", "both")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("dissect", help="activation patching and parameter restoration",
                                   description=EXAMPLES)
    add_model_options(parser, "--original", "the model before unlearning (folder, Hub id or 'smollm2')")
    add_model_options(parser, "--unlearned", "the model after unlearning (folder or Hub id)")
    parser.add_argument("--questions", required=True, help="questions (and answers) the unlearning targeted")
    parser.add_argument("--experiments", default="patching,restoration", help="patching, restoration or both")
    parser.add_argument("--components", default="mlp,attn,both", help="patched activations: mlp, attn, both")
    parser.add_argument("--params", default="mlp_out", help="restored parameters: mlp_out, mlp, attn or a regex")
    parser.add_argument("--window", type=int, default=5, help="layers per window (default: 5)")
    parser.add_argument("--positions", choices=("all", "answer"), default="all", help="patched positions")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="length of generated probes (default: 30)")
    parser.add_argument("--output-dir", default=".", help="where dissection.json and .png go (default: .)")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..dissect import DissectionTable, activation_patching, make_probes, parameter_restoration
    from ..dissect.recovery import check_window

    experiments = split_list(args.experiments, "--experiments", EXPERIMENTS)
    components = split_list(args.components, "--components", COMPONENTS)
    # The library's rule, checked before any model loads.
    check_window(args.window)
    questions, answers = load_questions(args.questions)
    out = output_dir(args.output_dir)
    original, unlearned, tokenizer = load_model_pair(args)
    probes = make_probes(original, tokenizer, questions, answers, max_new_tokens=args.max_new_tokens)
    table = DissectionTable([])
    if "patching" in experiments:
        table = table + activation_patching(original, unlearned, tokenizer, probes, components=components,
                                            window=args.window, positions=args.positions)
    if "restoration" in experiments:
        table = table + parameter_restoration(original, unlearned, tokenizer, probes, params=args.params,
                                              window=args.window)
    table.meta["probes"] = [{"prompt": p.prompt, "answer": p.answer} for p in probes]
    json_path, png_path = out / "dissection.json", out / "dissection.png"
    table.to_json(json_path)
    table.plot(png_path, title=f"{args.unlearned} vs {args.original}")
    report(str(table), [json_path, png_path])
    return 0
