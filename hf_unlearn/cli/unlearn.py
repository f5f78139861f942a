"""``hf-unlearn unlearn``: run a registered method on forget/retain data, or forget a concept from its questions."""

from __future__ import annotations

import argparse

from ..methods import DATA_FORMATS, METHODS, get_method
from ._common import (
    DTYPES,
    CLIError,
    add_model_options,
    build_config,
    config_help,
    config_overrides,
    load_model,
    load_questions,
    load_records,
    markdown_table,
    output_dir,
    parse_mapping,
    rename_columns,
    report,
    write_json,
)

EXAMPLES = """\
Any field of the method's config (a transformers.TrainingArguments subclass) is a flag: --max_steps 50,
--learning_rate 1e-5, --retain_loss kl, --per_device_train_batch_size 8, ... (list them with --help-config).

examples:
  hf-unlearn unlearn --list-methods
  hf-unlearn unlearn --method npo --help-config
  hf-unlearn unlearn --model ./my-model --method npo --forget forget.jsonl --retain retain.jsonl \\
      --output-dir out/npo --max_steps 50
  hf-unlearn unlearn --model ./my-model --method idk_dpo --forget pairs.csv --retain retain.parquet \\
      --output-dir out/idk --rename-columns question=prompt
  hf-unlearn unlearn --model smollm2 --concept "Harry Potter" --questions hp.txt --output-dir out/hp \\
      --method npo --max_steps 30

data: local .json/.jsonl/.csv/.parquet/.txt files or Hub dataset ids (--forget-split / --retain-split).
  text/prompt-completion: a 'text' column, 'prompt' + 'completion', or 'messages' (conversational)
  preference (idk_dpo):   'prompt', 'chosen' (the refusal) and 'rejected' (the answer to forget)
--concept mode: --questions is a .txt file (one question per line) or rows with a 'question' column; the forget set
is the model's own answers to them, the retain set the built-in general-knowledge pool minus the concept.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "unlearn", help="make a model forget data or a concept with a registered method", description=EXAMPLES
    )
    parser.add_argument("--method", default="npo", help=f"one of {', '.join(METHODS)} (default: npo)")
    parser.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    parser.add_argument("--help-config", action="store_true", help="print every config flag of --method and exit")
    add_model_options(parser)
    parser.add_argument("--output-dir", help="where the unlearned model and unlearn.json are written")
    data = parser.add_argument_group("forget/retain data")
    data.add_argument("--forget", help="forget set: a data file or a Hub dataset id")
    data.add_argument("--retain", help="retain set: a data file or a Hub dataset id")
    data.add_argument("--forget-split", default="train", help="split of a Hub forget set (default: train)")
    data.add_argument("--retain-split", default="train", help="split of a Hub retain set (default: train)")
    data.add_argument("--rename-columns", metavar="OLD=NEW,...", help="rename columns of both sets first")
    concept = parser.add_argument_group("concept mode (hf_unlearn.recipes.unlearn_concept)")
    concept.add_argument("--concept", help="name of the concept to forget, e.g. 'Harry Potter'")
    concept.add_argument("--questions", help="questions about the concept (.txt, one per line, or a data file)")
    concept.add_argument("--retain-questions", help="questions to keep answering (default: built-in pool)")
    concept.add_argument("--max-new-tokens", type=int, default=32, help="answer length (default: 32)")
    concept.add_argument("--chat", action="store_true", help="ask through the tokenizer's chat template")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default: float32)")
    # The device is the Trainer's choice (--use_cpu forces the CPU). Everything argparse does not know goes to
    # HfArgumentParser over the method's config.
    parser.set_defaults(handler=run, config_flags=True, model=None)
    for action in parser._actions:
        if action.dest == "model":
            action.required = False  # --list-methods and --help-config need no model


def list_methods() -> str:
    rows = [spec.to_dict() for spec in METHODS.values()]
    return markdown_table(
        rows, ["name", "trainer_class", "data_format", "uses_reference", "uses_retain", "retain_loss", "summary"]
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.list_methods:
        print(list_methods())
        return 0
    try:
        spec = get_method(args.method)
    except ValueError as error:
        raise CLIError(str(error)) from None
    prog = f"hf-unlearn unlearn --method {spec.name}"
    if args.help_config:
        print(config_help(spec.config_class, prog))
        return 0
    overrides = config_overrides(spec.config_class, extra, prog, f"see {prog} --help-config")
    if not args.model:
        raise CLIError("hf-unlearn unlearn: --model is required")
    if not args.output_dir:
        raise CLIError("hf-unlearn unlearn: --output-dir is required")
    if args.concept is not None or args.questions is not None:
        return _run_concept(args, spec, overrides)
    return _run_data(args, spec, overrides)


def _run_data(args, spec, overrides) -> int:
    from ..data import detect_format

    if args.forget is None:
        raise CLIError("hf-unlearn unlearn: give --forget DATA (or --concept NAME --questions FILE)")
    out = output_dir(args.output_dir)
    config = build_config(spec.config_class, str(out), overrides)
    mapping = parse_mapping(args.rename_columns)
    forget = rename_columns(load_records(args.forget, "--forget", args.forget_split), mapping)
    # Checked before the model loads, so a wrong file fails in a second, not after minutes of loading.
    detect_format(forget[0].keys(), f"--forget {args.forget}", spec.preference)
    retain = None
    if config.retain_loss != "none":
        if args.retain is None:
            raise CLIError(
                f"{spec.name} with retain_loss={config.retain_loss!r} trains on a retain set: pass --retain DATA or "
                "--retain_loss none"
            )
        retain = rename_columns(load_records(args.retain, "--retain", args.retain_split), mapping)
        detect_format(retain[0].keys(), f"--retain {args.retain}")
    elif args.retain is not None:
        raise CLIError(f"--retain is given but retain_loss='none' for {spec.name}: set --retain_loss nll (or kl)")
    if spec.name == "needle" and not config.concept_vectors:
        raise CLIError("needle trains concept vectors: pass --concept_vectors LAYER:DIM,... (see hf-unlearn locate)")

    model, tokenizer = load_model(args.model, args.dtype)
    trainer = spec.trainer_class(
        model, config, train_dataset=forget, retain_dataset=retain, processing_class=tokenizer
    )
    result = trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))

    summary = {
        "method": spec.name,
        "model": args.model,
        "forget": {"source": args.forget, "rows": len(forget), "format": DATA_FORMATS[spec.data_format]},
        "retain": {"source": args.retain, "rows": len(retain) if retain else 0},
        "config_overrides": overrides,
        "uses_reference": spec.uses_reference(config),
        "train_metrics": result.metrics,
        "log_history": trainer.state.log_history,
        "output_dir": str(out),
    }
    written = [write_json(out / "unlearn.json", summary)]
    last = trainer.state.log_history[-1] if trainer.state.log_history else {}
    values = {**{k: v for k, v in last.items() if k not in ("epoch", "step")}, **result.metrics}
    rows = [{"metric": k, "value": v} for k, v in values.items()]
    table = f"{spec.name}: {trainer.state.global_step} steps on {len(forget)} forget rows\n\n"
    report(table + markdown_table(rows, ["metric", "value"]) + f"\n\nsaved the unlearned model to {out}",
           written)
    return 0


def _run_concept(args, spec, overrides) -> int:
    from ..recipes import unlearn_concept

    if not args.concept or not args.questions:
        raise CLIError("hf-unlearn unlearn: concept mode needs both --concept NAME and --questions FILE")
    if args.forget or args.retain:
        raise CLIError("hf-unlearn unlearn: --forget/--retain and --concept/--questions are exclusive")
    questions, _ = load_questions(args.questions)
    retain_questions = None
    if args.retain_questions:
        retain_questions = load_questions(args.retain_questions, "--retain-questions")[0]
    out = output_dir(args.output_dir)
    # The recipe builds its own config; check the user's flags on the method's config first (one-line errors).
    build_config(spec.config_class, str(out), overrides)
    steps = overrides.pop("max_steps", 30)
    learning_rate = overrides.pop("learning_rate", None)
    model, tokenizer = load_model(args.model, args.dtype)
    result = unlearn_concept(
        model, tokenizer, args.concept, questions, method=spec.name, retain_questions=retain_questions,
        steps=steps, learning_rate=learning_rate, output_dir=str(out), max_new_tokens=args.max_new_tokens,
        chat=args.chat, **overrides,
    )
    written = [result.to_json(out / "unlearn_concept.json")]
    report(result.to_markdown() + f"\n\nsaved the unlearned model to {out}", written)
    return 0
