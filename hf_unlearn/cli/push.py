"""``hf-unlearn push``: push a saved audited model or early-exit checkpoint folder to the Hub in one commit, or load
a model with its audit and push it (``hf_unlearn.hub.push_audited_to_hub``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._common import (
    DTYPES,
    CLIError,
    load_model,
    markdown_table,
    one_line,
    output_dir,
    report,
    write_json,
)

EXAMPLES = """\
FOLDER is a folder written by hf_unlearn.hub.save_audited / save_early_exit (or an `hf-unlearn unlearn` /
`early-exit train` output dir, or a `hf-unlearn demo` report folder holding a model). It is checked before anything
is sent (config and weights or a PEFT adapter, the tokenizer, README.md, a readable audit.json, the modelling files
of config.json's auto_map) and uploaded as it is, in one commit. With --model and --audit the model is loaded, the
folder written (--local-dir, or a temporary folder) and pushed with its card, audit.json and figures.
A failed push leaves the local folder complete and prints the command that retries it.

examples:
  hf-unlearn push out/smollm2-npo --repo-id me/smollm2-npo-harry-potter --private
  hf-unlearn push out/ee --repo-id me/smollm2-early-exit --commit-message "Early-exit SmolLM2"
  hf-unlearn push --model out/hp --audit out/report/audit.json --repo-id me/smollm2-npo --local-dir out/to-push
  hf-unlearn push --model out/lora --audit audit.json --save merged --figure out/report/figures/dissection.png \\
      --repo-id me/smollm2-npo-merged

token: --token, else HF_TOKEN or the token saved by `hf auth login`.
"""

SAVE_CHOICES = ("weights", "adapter", "merged")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("push", help="push an audited model or an early-exit checkpoint to the Hub",
                                   description=EXAMPLES)
    parser.add_argument("folder", nargs="?", metavar="FOLDER", help="a saved folder to push as it is")
    parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub repository to push to")
    parser.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--commit-message", help="the commit's summary")
    parser.add_argument("--output-dir", help="also write push.json (repository, commit, files) there")
    model = parser.add_argument_group("load a model and push it with its audit (instead of FOLDER)")
    model.add_argument("--model", metavar="PATH", help="the unlearned model: a saved folder or a PEFT adapter folder")
    model.add_argument("--audit", metavar="AUDIT_JSON", help="its audit.json (hf_unlearn.hub.UnlearningAudit)")
    model.add_argument("--save", choices=SAVE_CHOICES,
                       help="what to upload: the weights, the PEFT adapter or the merged model (default: adapter "
                            "for a PEFT adapter, else weights)")
    model.add_argument("--figure", action="append", default=[], metavar="PNG",
                       help="a figure for the card (repeatable); goes to figures/")
    model.add_argument("--local-dir", help="write the folder here first (default: a temporary folder, deleted after "
                                           "a successful push)")
    model.add_argument("--overwrite", action="store_true", help="replace a non-empty --local-dir")
    model.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default: float32)")
    parser.set_defaults(handler=run)


def _check_arguments(args: argparse.Namespace) -> None:
    owner, _, name = args.repo_id.partition("/")
    if not owner or not name or "/" in name or any(c.isspace() for c in args.repo_id):
        raise CLIError(f"--repo-id {args.repo_id!r}: use USER/NAME (or ORG/NAME)")
    model_only = [flag for flag, value in (("--save", args.save), ("--figure", args.figure),
                                           ("--local-dir", args.local_dir), ("--overwrite", args.overwrite))
                  if value]
    if args.folder and (args.model or args.audit):
        raise CLIError("hf-unlearn push: give FOLDER, or --model with --audit, not both")
    if args.folder and model_only:
        raise CLIError(f"hf-unlearn push: {', '.join(model_only)} go with --model, not with FOLDER")
    if not args.folder and not args.model:
        raise CLIError("hf-unlearn push: give FOLDER (a saved model folder) or --model PATH --audit AUDIT_JSON")
    if args.model and not args.audit:
        raise CLIError("hf-unlearn push --model: --audit AUDIT_JSON is required (the card is rendered from it)")
    if args.audit and not args.model:
        raise CLIError("hf-unlearn push --audit: --model PATH is required")
    if args.save in ("adapter", "merged") and not (Path(args.model).expanduser() / "adapter_config.json").is_file():
        raise CLIError(f"--save {args.save} needs a PEFT adapter folder as --model (with adapter_config.json); "
                       f"{args.model} is a full model: use --save weights")


def _load_audit(value: str):
    from ..hub import UnlearningAudit

    path = Path(value).expanduser()
    if not path.exists():
        raise CLIError(f"--audit: no such file: {value}")
    try:
        return UnlearningAudit.from_json(path)
    except Exception as error:  # JSON, missing keys, a newer format
        raise CLIError(f"--audit {value}: not a readable audit.json ({type(error).__name__}: {one_line(error)})"
                       ) from None


def _load_model(spec: str, dtype: str):
    """``load_model``, plus PEFT adapter folders (``adapter_config.json`` without ``config.json``)."""
    path = Path(spec).expanduser()
    if not (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return load_model(spec, dtype)
    import torch
    from transformers import AutoTokenizer

    try:
        from peft import AutoPeftModelForCausalLM, PeftConfig

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        source = str(path) if has_tokenizer else PeftConfig.from_pretrained(str(path)).base_model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise CLIError(f"cannot load the PEFT adapter {spec!r}: {one_line(error)}") from None
    return model.eval(), tokenizer


def _default_message(folder: Path) -> str:
    from ..hub.audit import AUDIT_FILE, UnlearningAudit

    if (folder / AUDIT_FILE).is_file():
        method = UnlearningAudit.from_json(folder / AUDIT_FILE).method
        return f"Upload {method} unlearned model with its audit (hf_unlearn)"
    if any((folder / name).is_file() for name in ("modeling_early_exit.py", "configuration_early_exit.py")):
        return "Upload early-exit model with its modelling code (hf_unlearn)"
    return "Upload model (hf_unlearn)"


def _push_failed(error, token_given: bool) -> CLIError:
    """One line: what failed, that the folder is complete, and the commands that retry."""
    cause = error.__cause__ or error
    folder, repo_id = str(error.folder), error.repo_id
    retry = f"hf-unlearn push {shlex.quote(folder)} --repo-id {shlex.quote(repo_id)}"
    retry += " --token ..." if token_given else ""
    return CLIError(
        f"pushing to {repo_id} failed ({type(cause).__name__}: {one_line(cause)}). Nothing was committed; the local "
        f"folder {folder} is complete. Retry with `{retry}` or {error.retry}.",
        code=1,
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..hub import HubPushError, check_push_folder, push_audited_to_hub
    from ..hub.push import _push_folder

    _check_arguments(args)
    out = output_dir(args.output_dir) if args.output_dir else None
    try:
        if args.folder:
            folder = check_push_folder(args.folder)
            checkpoints = sorted(p.name for p in folder.glob("checkpoint-*") if p.is_dir())
            if checkpoints:
                print(f"note: {folder} holds training checkpoints ({', '.join(checkpoints)}); they are uploaded too",
                      file=sys.stderr)
            message = args.commit_message or _default_message(folder)
            info = _push_folder(folder, args.repo_id, args.private or None, args.token, args.revision, message, None)
        else:
            audit = _load_audit(args.audit)
            if args.local_dir:
                local = Path(args.local_dir).expanduser()
                if local.is_dir() and any(local.iterdir()) and not args.overwrite:
                    raise CLIError(f"--local-dir {args.local_dir} already holds files; pass --overwrite to replace "
                                   "it, or choose another folder")
            for figure in args.figure:
                if not Path(figure).is_file():
                    raise CLIError(f"--figure: no such file: {figure}")
            model, tokenizer = _load_model(args.model, args.dtype)
            is_peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
            save = args.save or ("adapter" if is_peft else "weights")
            info = push_audited_to_hub(model, tokenizer, audit, args.repo_id, local_dir=args.local_dir, save=save,
                                       figures=args.figure, private=args.private or None, token=args.token,
                                       revision=args.revision, commit_message=args.commit_message,
                                       overwrite=args.overwrite)
            folder = Path(args.local_dir).expanduser().resolve() if args.local_dir else None
    except HubPushError as error:
        raise _push_failed(error, args.token is not None) from None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder else []
    result = {"repo_id": args.repo_id, "commit": info.oid, "commit_url": info.commit_url,
              "local_folder": str(folder) if folder else None, "files": files}
    rows = [{"field": "repository", "value": args.repo_id}, {"field": "commit", "value": info.oid},
            {"field": "commit url", "value": info.commit_url},
            {"field": "local folder", "value": str(folder) if folder else "(temporary, deleted)"}]
    if files:
        rows.append({"field": "files", "value": f"{len(files)}: {', '.join(files[:8])}"
                                                + (", ..." if len(files) > 8 else "")})
    written = [write_json(out / "push.json", result)] if out is not None else []
    report(markdown_table(rows, ["field", "value"]), written)
    return 0
