"""``hf-unlearn evaluate``: the field's unlearning metrics on forget / retain / holdout questions."""

from __future__ import annotations

import argparse

from ._common import (
    CLIError,
    add_model_options,
    add_runtime_options,
    load_model,
    load_records,
    output_dir,
    parse_mapping,
    rename_columns,
    report,
    resolve_device,
    split_list,
    write_json,
)

EXAMPLES = """\
Answer log-prob and probability, ROUGE-L recall of greedy answers, exact memorization, extraction strength, the
truth ratio (with TOFU's paraphrased/perturbed answers), MIA AUC and privleak (with --holdout), forget quality
(with --retain-model) and model utility (hf_unlearn.evaluation.evaluate_unlearning).

examples:
  hf-unlearn evaluate --model out/npo --forget forget_qa.jsonl --retain retain_qa.jsonl --output-dir out/eval
  hf-unlearn evaluate --model out/npo --original ./base --forget forget_qa.csv --metrics log_prob,rouge
  hf-unlearn evaluate --model out/npo --forget locuslab/TOFU --forget-split forget01 --holdout holdout.jsonl

data: rows with 'question' and 'answer' (or 'prompt' and 'completion'; --rename-columns OLD=NEW,...), from local
.json/.jsonl/.csv/.parquet files or Hub dataset ids.
"""


def add_parser(subparsers) -> None:
    from ..evaluation.evaluate import DEFAULT_METRICS

    parser = subparsers.add_parser("evaluate", help="unlearning metrics on forget/retain/holdout questions",
                                   description=EXAMPLES)
    add_model_options(parser, help="the model to evaluate (folder, Hub id or 'smollm2')")
    parser.add_argument("--original", help="also evaluate this model (before unlearning) and compare")
    parser.add_argument("--forget", required=True, help="forget questions and answers: a data file or dataset id")
    parser.add_argument("--retain", help="retain questions and answers")
    parser.add_argument("--holdout", help="facts of the same kind never trained on (membership inference)")
    parser.add_argument("--retain-model", help="a model trained without the forget set (forget quality)")
    parser.add_argument("--forget-split", default="train", help="split of Hub datasets (default: train)")
    parser.add_argument("--rename-columns", metavar="OLD=NEW,...", help="rename columns of every set first")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length for ROUGE (default: 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per forward pass (default: 8)")
    parser.add_argument("--chat", action="store_true", help="ask through the tokenizer's chat template")
    parser.add_argument("--output-dir", default=".", help="where evaluation.json goes (default: .)")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..evaluation import QASet, evaluate_unlearning
    from ..evaluation.evaluate import METRICS

    metrics = split_list(args.metrics, "--metrics", METRICS)
    mapping = parse_mapping(args.rename_columns)
    data = {}
    for name in ("forget", "retain", "holdout"):
        source = getattr(args, name)
        if source is not None:
            rows = rename_columns(load_records(source, f"--{name}", args.forget_split), mapping)
            try:  # checked before any model loads
                QASet.from_data(rows, f"--{name} {source}")
            except ValueError as error:
                raise CLIError(str(error)) from None
            data[name] = rows
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = output_dir(args.output_dir)
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, args.dtype, device)
    retain_model = load_model(args.retain_model, args.dtype, device, tokenizer=False)[0] if args.retain_model else None
    options = dict(retain_model=retain_model, metrics=metrics, chat=args.chat, max_new_tokens=args.max_new_tokens,
                   batch_size=args.batch_size)
    evaluation = evaluate_unlearning(model, tokenizer, **data, **options)
    result = {"model": args.model, "meta": evaluation.meta, "metrics": evaluation.to_dict()}
    if args.original:
        del model
        original, _ = load_model(args.original, args.dtype, device, tokenizer=False)
        before = evaluate_unlearning(original, tokenizer, **data, **options)
        result["original"] = {"model": args.original, "metrics": before.to_dict()}
        table = before.to_markdown(evaluation, names=("original", "model"))
    else:
        table = evaluation.to_markdown()
    report(table, [write_json(out / "evaluation.json", result)])
    return 0
