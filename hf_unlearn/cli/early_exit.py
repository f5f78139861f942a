"""``hf-unlearn early-exit train|calibrate|generate|bench``: train the exits of a causal LM, fit its policy's
per-exit thresholds to a target agreement, generate with early exit, and measure speed-up against agreement per exit
strategy."""

from __future__ import annotations

import argparse

from ..data import padding_id
from ._common import (
    DTYPES,
    CLIError,
    add_model_options,
    add_runtime_options,
    build_config,
    config_help,
    config_overrides,
    load_model,
    load_records,
    markdown_table,
    output_dir,
    parse_int_list,
    report,
    resolve_device,
    write_json,
)

EXAMPLES = """\
examples:
  hf-unlearn early-exit train --model smollm2 --data texts.txt --output-dir out/ee --max_steps 200
  hf-unlearn early-exit train --model ./base --data texts.jsonl --trainer consistentee --output-dir out/cee \\
      --max_steps 100 --policy_warmup_max_steps 100 --policy_max_steps 100
  hf-unlearn early-exit calibrate --model out/cee --data answers.jsonl --target 0.95 --output-dir out/cee-95
  hf-unlearn early-exit generate --model out/ee --prompt "The capital of France is" --strategy confidence \\
      --threshold 0.9
  hf-unlearn early-exit bench --model out/ee --prompts prompts.txt --strategy confidence=0.8,0.9 \\
      --strategy fixed=10 --held-out held_out.txt --output-dir out/bench
"""

TRAIN_EXAMPLES = """\
Trains the exit heads of a causal LM (wrapped as hf_unlearn's EarlyExitForCausalLM) on text: --trainer exits
(EarlyExitTrainer, the multi-exit objective) or consistentee (ConsistentEETrainer: heads, memorized layers, then an
exit policy by REINFORCE). Any field of EarlyExitTrainingConfig / ConsistentEEConfig is a flag (--help-config).
The saved checkpoint loads with AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).

""" + EXAMPLES

TRAINERS = ("exits", "consistentee")


def _trainer_classes(name: str):
    from ..trainers import ConsistentEEConfig, ConsistentEETrainer, EarlyExitTrainer, EarlyExitTrainingConfig

    return {"exits": (EarlyExitTrainingConfig, EarlyExitTrainer),
            "consistentee": (ConsistentEEConfig, ConsistentEETrainer)}[name]


def add_parser(subparsers) -> None:
    from ..early_exit import EXIT_STRATEGIES

    group = subparsers.add_parser("early-exit", help="train, run and benchmark early-exit models",
                                  description="Early exit: tokens stop at an internal layer.\n\n" + EXAMPLES)
    commands = group.add_subparsers(dest="early_exit_command", metavar="{train,calibrate,generate,bench}",
                                    required=True)

    train = commands.add_parser("train", help="train the exits of a causal LM", description=TRAIN_EXAMPLES)
    add_model_options(train, help="causal LM or early-exit checkpoint (folder, Hub id or 'smollm2')")
    train.add_argument("--data", help="training text: a data file ('text' or prompt/completion) or dataset id")
    train.add_argument("--split", default="train", help="split of a Hub dataset (default: train)")
    train.add_argument("--trainer", choices=TRAINERS, default="exits", help="exits (default) or consistentee")
    train.add_argument("--exit-layers", help="exit layers, e.g. 4,8,12 (default: every layer from a quarter depth)")
    train.add_argument("--min-exit-layer", type=int, help="shallowest default exit")
    train.add_argument("--exit-head", choices=("translator", "adapter", "shared"), default="translator",
                       help="exit heads: translator (default; adapter + full-rank map), adapter (smaller), shared")
    train.add_argument("--output-dir", help="where the early-exit checkpoint goes")
    train.add_argument("--help-config", action="store_true", help="print every config flag and exit")
    train.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default: float32)")
    train.set_defaults(handler=run_train, config_flags=True)
    for action in train._actions:
        if action.dest == "model":
            action.required = False  # --help-config needs no model

    calibrate = commands.add_parser(
        "calibrate", help="fit a trained policy's per-exit thresholds to a target agreement",
        description="Fits per-exit policy thresholds (calibrate_policy_thresholds) that reach --target agreement "
                    "with the full model's tokens on --data at the lowest expected cost, and saves the checkpoint "
                    "with exit_strategy='policy' and those thresholds.\n\n" + EXAMPLES,
    )
    add_model_options(calibrate, help="early-exit checkpoint with a trained policy (hf-unlearn early-exit train "
                                      "--trainer consistentee)")
    calibrate.add_argument("--data", required=True,
                           help="calibration text like what the model will generate: 'text', or prompt/completion "
                                "(only the completion is scored); its own answers are best")
    calibrate.add_argument("--split", default="train", help="split of a Hub dataset (default: train)")
    calibrate.add_argument("--target", type=float, default=0.95, help="agreement to reach (default: 0.95)")
    calibrate.add_argument("--check-cost", type=float, default=0.25,
                           help="time of one policy check, in decoder layers (default: 0.25, SmolLM2 on a CPU)")
    calibrate.add_argument("--shortlist-exits", action="store_true",
                           help="internal exits predict from the model's token shortlist only (shortlist_exits): "
                                "about a ninth of the full LM head's cost at 4096 tokens on SmolLM2; saved with the "
                                "thresholds")
    calibrate.add_argument("--head-cost", type=float, default=None,
                           help="what the full LM head costs a token that reaches the last layer beyond an exit's "
                                "head, in decoder layers (default: 2.6 with --shortlist-exits, SmolLM2 on a CPU; "
                                "else 0)")
    calibrate.add_argument("--output-dir", required=True, help="where the calibrated checkpoint goes")
    add_runtime_options(calibrate)
    calibrate.set_defaults(handler=run_calibrate)

    generate = commands.add_parser("generate", help="generate with early exit", description=EXAMPLES)
    add_model_options(generate, help="early-exit checkpoint, or a causal LM (wrapped with the shared head)")
    generate.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    generate.add_argument("--prompts", help="a file of prompts (.txt one per line, or a 'prompt'/'text' column)")
    generate.add_argument("--strategy", choices=EXIT_STRATEGIES, default=None, help="default: the model's own")
    generate.add_argument("--threshold", type=float, help="the strategy's threshold (patience, or the fixed layer)")
    generate.add_argument("--lossless", action="store_true", help="exits draft, the full model verifies")
    generate.add_argument("--max-new-tokens", type=int, default=32, help="default: 32")
    generate.add_argument("--output-dir", default=".", help="where generations.json goes (default: .)")
    add_runtime_options(generate)
    generate.set_defaults(handler=run_generate)

    bench = commands.add_parser("bench", help="speed-up and agreement per exit strategy", description=EXAMPLES)
    add_model_options(bench, help="early-exit checkpoint, or a causal LM (wrapped with the shared head)")
    bench.add_argument("--prompts", required=True, help="a file of prompts")
    bench.add_argument("--strategy", action="append", default=[], metavar="NAME=V1,V2",
                       help="a strategy and its values, repeatable (default: confidence=0.5,0.9)")
    bench.add_argument("--held-out", help="a file of texts for the perplexity column")
    bench.add_argument("--max-new-tokens", type=int, default=32, help="default: 32")
    bench.add_argument("--rounds", type=int, default=1, help="timing rounds (medians; default: 1)")
    bench.add_argument("--lossless", action="store_true", help="also lossless self-speculative decoding")
    bench.add_argument("--no-speed", action="store_true", help="skip the timings (agreement only)")
    bench.add_argument("--output-dir", default=".", help="where exits.json and exits.png go (default: .)")
    add_runtime_options(bench)
    bench.set_defaults(handler=run_bench)


def run_train(args: argparse.Namespace, extra: list[str]) -> int:
    config_class, trainer_class = _trainer_classes(args.trainer)
    prog = f"hf-unlearn early-exit train --trainer {args.trainer}"
    if args.help_config:
        print(config_help(config_class, prog))
        return 0
    overrides = config_overrides(config_class, extra, prog, f"see {prog} --help-config")
    for flag in ("model", "data", "output_dir"):
        if not getattr(args, flag):
            raise CLIError(f"hf-unlearn early-exit train: --{flag.replace('_', '-')} is required")
    exit_options = {"exit_head": args.exit_head}
    if args.exit_layers:
        exit_options["exit_layers"] = parse_int_list(args.exit_layers, "--exit-layers")
    if args.min_exit_layer is not None:
        exit_options["min_exit_layer"] = args.min_exit_layer
    overrides["early_exit_kwargs"] = {**exit_options, **(overrides.get("early_exit_kwargs") or {})}
    out = output_dir(args.output_dir)
    config = build_config(config_class, str(out), overrides)
    rows = load_records(args.data, "--data", args.split)
    from ..data import detect_format

    detect_format(rows[0].keys(), f"--data {args.data}")
    model, tokenizer = load_model(args.model, args.dtype)
    trainer = trainer_class(model, config, train_dataset=rows, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    early_exit = trainer.early_exit_model(trainer.model)
    summary = {"model": args.model, "trainer": args.trainer, "rows": len(rows), "config_overrides": overrides,
               "exit_layers": list(early_exit.config.exit_layers), "train_metrics": getattr(result, "metrics", {}),
               "log_history": trainer.state.log_history, "output_dir": str(out)}
    written = [write_json(out / "early_exit_train.json", summary)]
    metrics = [{"metric": k, "value": v} for k, v in (summary["train_metrics"] or {}).items()]
    table = (f"{args.trainer}: exits at layers {summary['exit_layers']} of {early_exit.config.num_hidden_layers}, "
             f"{trainer.state.global_step} steps\n\n" + markdown_table(metrics, ["metric", "value"]))
    report(table + f"\n\nsaved the early-exit model to {out}", written)
    return 0


def _early_exit_model(spec: str, dtype: str, device):
    from ..early_exit import EarlyExitForCausalLM

    model, tokenizer = load_model(spec, dtype, device)
    if not isinstance(model, EarlyExitForCausalLM):
        try:
            model = EarlyExitForCausalLM.from_backbone(model).eval()
        except ValueError as error:
            raise CLIError(f"{spec}: cannot add exits: {error}") from None
    return model, tokenizer


def run_calibrate(args: argparse.Namespace, extra: list[str]) -> int:
    from ..early_exit import calibrate_policy_thresholds

    if not 0.0 < args.target <= 1.0:
        raise CLIError(f"--target is a share of tokens in (0, 1], got {args.target}")
    if args.check_cost < 0:
        raise CLIError(f"--check-cost is a time in decoder layers, >= 0, got {args.check_cost}")
    head_cost = args.head_cost if args.head_cost is not None else 2.6 if args.shortlist_exits else 0.0
    if head_cost < 0:
        raise CLIError(f"--head-cost is a time in decoder layers, >= 0, got {head_cost}")
    texts = []
    for index, row in enumerate(load_records(args.data, "--data", args.split)):
        if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            texts.append((row["prompt"], row["completion"]))
        elif isinstance(row.get("text"), str):
            texts.append(row["text"])
        else:
            raise CLIError(f"--data: row {index} needs a 'text' column or 'prompt' and 'completion' "
                           f"(columns: {sorted(row)})")
    model, tokenizer = _early_exit_model(args.model, args.dtype, resolve_device(args.device))
    if not model.config.policy_trained:
        raise CLIError(f"{args.model}: its policy is untrained; train it first with hf-unlearn early-exit train "
                       "--trainer consistentee")
    if args.shortlist_exits and not model.early_exit.shortlist.numel():
        raise CLIError(f"{args.model}: --shortlist-exits needs a token shortlist, and this checkpoint has none (set "
                       "one with model.set_exit_shortlist(token_shortlist(tokenizer, texts)) before training the "
                       "exits, or drop --shortlist-exits)")
    shortlist_exits = True if args.shortlist_exits else None
    out = output_dir(args.output_dir)  # after the checks: a refused run leaves no empty folder
    thresholds = calibrate_policy_thresholds(model, tokenizer, texts, target_agreement=args.target,
                                             check_cost=args.check_cost, head_cost=head_cost,
                                             shortlist_exits=shortlist_exits)
    model.set_exit_strategy("policy", policy_thresholds=thresholds, shortlist_exits=shortlist_exits)
    from ..hub import save_early_exit

    save_early_exit(model, tokenizer, out, overwrite=True)  # written aside, then moved: never half a checkpoint
    result = {"model": args.model, "target_agreement": args.target, "check_cost": args.check_cost,
              "head_cost": head_cost, "shortlist_exits": model.config.shortlist_exits,
              "texts": len(texts), "policy_thresholds": {str(k): v for k, v in thresholds.items()},
              "output_dir": str(out)}
    rows = [{"exit layer": k, "threshold": v} for k, v in sorted(thresholds.items())]
    table = (f"policy thresholds for agreement {args.target} on {len(texts)} texts "
             f"(exits not listed are not checked)\n\n" + markdown_table(rows, ["exit layer", "threshold"]))
    report(table + f"\n\nsaved the calibrated model to {out}", [write_json(out / "calibration.json", result)])
    return 0


def _settings(model, strategy: str | None, value: float | None) -> dict:
    from ..early_exit.evaluation import STRATEGY_SETTING

    if strategy is None:
        if value is not None:
            raise CLIError("--threshold needs --strategy")
        return {}
    settings = {"exit_strategy": strategy}
    if value is not None:
        if strategy not in STRATEGY_SETTING:
            raise CLIError(f"--strategy {strategy} takes no --threshold")
        name = STRATEGY_SETTING[strategy]
        settings[name] = int(value) if name in ("patience", "fixed_exit_layer") else value
    return settings


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        rows = load_records(args.prompts, "--prompts")
        for index, row in enumerate(rows):
            text = row.get("prompt", row.get("text"))
            if not isinstance(text, str):
                raise CLIError(f"--prompts: row {index} has no 'prompt' or 'text' column (columns: {sorted(row)})")
            prompts.append(text)
    if not prompts:
        raise CLIError("give --prompt TEXT or --prompts FILE")
    return prompts


def run_generate(args: argparse.Namespace, extra: list[str]) -> int:
    import torch
    from tqdm.auto import tqdm

    prompts = _prompts(args)
    out = output_dir(args.output_dir)
    device = resolve_device(args.device)
    model, tokenizer = _early_exit_model(args.model, args.dtype, device)
    settings = _settings(model, args.strategy, args.threshold)
    if settings:
        try:
            model.set_exit_strategy(**settings)
        except ValueError as error:
            raise CLIError(str(error)) from None
    pad = padding_id(tokenizer)
    rows = []
    with torch.no_grad():
        for prompt in tqdm(prompts, desc="Generating", disable=len(prompts) < 2):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            model.exit_stats.reset()
            if args.lossless:
                sequences = model.generate_lossless(ids, max_new_tokens=args.max_new_tokens).sequences
            else:
                sequences = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=args.max_new_tokens, pad_token_id=pad)
            completion = tokenizer.decode(sequences[0, ids.shape[1]:], skip_special_tokens=True)
            mean_exit = model.exit_stats.mean_exit_layer
            rows.append({"prompt": prompt, "completion": completion,
                         "mean_exit_layer": None if mean_exit != mean_exit else float(mean_exit)})
    result = {"model": args.model, "exit_strategy": model.config.exit_strategy, "settings": settings,
              "lossless": args.lossless, "layers": model.config.num_hidden_layers, "generations": rows}
    table = (f"exit strategy {model.config.exit_strategy!r} on {model.config.num_hidden_layers} layers\n\n"
             + markdown_table(rows, ["prompt", "completion", "mean_exit_layer"]))
    report(table, [write_json(out / "generations.json", result)])
    return 0


def _strategies(values: list[str]) -> dict[str, list[float]]:
    from ..early_exit.evaluation import ASSISTANT_EARLY_EXIT, STRATEGY_SETTING

    strategies: dict[str, list[float]] = {}
    for item in values or ["confidence=0.5,0.9"]:
        name, sep, numbers = item.partition("=")
        name = name.strip()
        if not sep or name not in (*STRATEGY_SETTING, ASSISTANT_EARLY_EXIT):
            raise CLIError(f"--strategy {item!r}: use NAME=V1,V2 with NAME one of {', '.join(STRATEGY_SETTING)}")
        try:
            parsed = [float(v) for v in numbers.split(",") if v.strip()]
        except ValueError:
            raise CLIError(f"--strategy {item!r}: the values must be numbers") from None
        if name in ("patience", "fixed", ASSISTANT_EARLY_EXIT):
            parsed = [int(v) for v in parsed]
        strategies.setdefault(name, []).extend(parsed)
    return strategies


def run_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from ..early_exit import evaluate_exits

    strategies = _strategies(args.strategy)
    args.prompt = []
    prompts = _prompts(args)
    held_out = None
    if args.held_out:
        held_out = [r.get("text", r.get("prompt")) for r in load_records(args.held_out, "--held-out")]
        if not all(isinstance(t, str) for t in held_out):
            raise CLIError("--held-out: every row needs a 'text' column (or use a .txt file)")
    if args.rounds < 1:
        raise CLIError(f"--rounds must be >= 1, got {args.rounds}")
    out = output_dir(args.output_dir)
    model, tokenizer = _early_exit_model(args.model, args.dtype, resolve_device(args.device))
    table = evaluate_exits(model, tokenizer, prompts, strategies, held_out_texts=held_out,
                           max_new_tokens=args.max_new_tokens, lossless=args.lossless, rounds=args.rounds,
                           measure_speed=not args.no_speed)
    json_path, png_path = out / "exits.json", out / "exits.png"
    table.to_json(json_path)
    written = [json_path]
    if not args.no_speed:
        table.plot(png_path, title=args.model)
        written.append(png_path)
    report(table.to_markdown(), written)
    return 0
