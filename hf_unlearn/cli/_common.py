"""What every ``hf-unlearn`` subcommand shares: the parser class, model and data loading, config flags through
``HfArgumentParser``, and writing the JSON output beside the printed table."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_json

#: ``--model`` value that loads the embedded SmolLM2-135M-Instruct (``hf_unlearn.smollm2.load_smollm2``).
SMOLLM2 = "smollm2"
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
DTYPES = ("float32", "bfloat16", "float16")


class CLIError(Exception):
    """Bad input: ``main`` prints the message as one line on stderr and exits with ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (raised as :class:`CLIError`), with examples kept
    verbatim in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise CLIError(f"{self.prog}: {message} (see {self.prog} --help)")


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message: library errors put the reason there."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------------------- config


class _ConfigParser:
    """``HfArgumentParser`` over one config class whose errors are one line, and which tells which fields the user
    set (so library defaults stay the library's, and a recipe can take just the overrides)."""

    def __init__(self, config_class: type, prog: str):
        from transformers import HfArgumentParser

        class _Hf(HfArgumentParser):
            def error(self, message: str):
                raise CLIError(f"{prog}: {message}")

        self.config_class = config_class
        self.parser = _Hf(config_class, prog=prog)

    def overrides(self, argv: Sequence[str], hint: str) -> dict[str, Any]:
        namespace, unknown = self.parser.parse_known_args(list(argv))
        if unknown:
            raise CLIError(f"unknown option(s) {' '.join(unknown)} for {self.config_class.__name__} ({hint})")
        defaults, _ = self.parser.parse_known_args([])
        known = {f.name for f in fields(self.config_class)}
        return {k: v for k, v in vars(namespace).items() if k in known and v != getattr(defaults, k)}

    def format_help(self) -> str:
        return self.parser.format_help()


def config_overrides(config_class: type, argv: Sequence[str], prog: str, hint: str) -> dict[str, Any]:
    """The ``config_class`` fields set in ``argv`` (``--max_steps 10`` or ``--max-steps 10``), as a dict."""
    return _ConfigParser(config_class, prog).overrides(argv, hint)


def config_help(config_class: type, prog: str) -> str:
    return _ConfigParser(config_class, prog).format_help()


def cli_config_defaults() -> dict[str, Any]:
    """Config defaults of the CLI's runs (any of them can be overridden by a flag)."""
    import torch

    # Pinned memory only helps a GPU; on a CPU transformers warns about it on every run.
    return {"report_to": "none", "dataloader_pin_memory": torch.cuda.is_available()}


def build_config(config_class: type, output_dir: str, overrides: dict[str, Any]):
    try:
        return config_class(**{**cli_config_defaults(), "output_dir": output_dir, **overrides})
    except (TypeError, ValueError) as error:
        raise CLIError(f"invalid {config_class.__name__}: {one_line(error)}") from None


# ---------------------------------------------------------------------------------------------------------- models


def add_model_options(parser: argparse.ArgumentParser, flag: str = "--model", help: str | None = None) -> None:
    parser.add_argument(
        flag, required=True, metavar="PATH_OR_ID",
        help=help or f"local folder or Hub id of a causal LM, or {SMOLLM2!r} for the embedded SmolLM2-135M-Instruct",
    )


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default: float32)")
    parser.add_argument("--device", default=None, help="device for the models (default: cuda if available, else cpu)")


def resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise CLIError(f"--device {name!r}: {one_line(error)}") from None


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in DATA_SUFFIXES


def load_model(spec: str, dtype: str = "float32", device=None, tokenizer: bool = True):
    """``(model, tokenizer)`` from a local folder, a Hub id or ``smollm2``; one-line errors for a missing path, a
    model that cannot load and a model that is not a causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if spec == SMOLLM2:
        from ..smollm2 import load_smollm2

        try:
            model, tok = load_smollm2(dtype=torch_dtype)
        except ImportError as error:
            raise CLIError(one_line(error)) from None
    else:
        path = Path(spec).expanduser()
        if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
            raise CLIError(f"no model at {spec}: give a local folder, a Hub id or {SMOLLM2!r}")
        if path.is_dir() and not (path / "config.json").exists():
            raise CLIError(f"{spec} is a folder without config.json: not a saved transformers model")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else spec, dtype=torch_dtype)
            tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec) if tokenizer else None
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise CLIError(f"cannot load model {spec!r} as a causal LM: {one_line(error)}") from None
    if device is not None:
        model.to(device)
    return model.eval(), tok


def check_supported(model, name: str) -> None:
    """Fail early, in one line, for a model family the concept and dissection tools cannot walk."""
    from ..architectures import get_adapter

    try:
        get_adapter(model)
    except ValueError as error:
        raise CLIError(f"{name}: unsupported model: {one_line(error)}") from None


# ------------------------------------------------------------------------------------------------------------ data


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [{"text": line.strip()} for line in lines if line.strip()]
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if suffix == ".json":
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                # JSON lines under a .json name, as datasets' own json loader accepts.
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
                lengths = {len(v) for v in data.values()}
                if len(lengths) == 1:
                    keys = list(data)
                    return [dict(zip(keys, values)) for values in zip(*data.values())]
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                kind = type(data).__name__
                raise CLIError(f"{path}: expected a JSON list of records or a dict of columns, got a {kind}")
            return [row if isinstance(row, dict) else {"text": row} for row in data]
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise CLIError(f"{path}: not valid {suffix[1:].upper()}: {one_line(error)}") from None
    except OSError as error:
        raise CLIError(f"{path}: {one_line(error)}") from None
    raise CLIError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}")


def load_records(source: str, name: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local JSON / JSONL / CSV / Parquet / TXT file (one text per line), or of a Hub dataset split."""
    path = Path(source).expanduser()
    if path.is_file():
        rows = _read_file(path)
    elif path.exists():
        raise CLIError(f"{name}: {source} is a folder; give a data file or a dataset id")
    elif _looks_like_path(source):
        raise CLIError(f"{name}: no such file: {source}")
    else:
        try:
            from datasets import load_dataset

            rows = load_dataset(source, split=split).to_list()
        except Exception as error:  # datasets raises many types for a missing or offline dataset
            raise CLIError(f"{name}: cannot load dataset {source!r} (split {split!r}): {one_line(error)}") from None
    if not rows:
        raise CLIError(f"{name}: {source} holds no rows")
    return rows


def rename_columns(rows: list[dict[str, Any]], mapping: dict[str, str]) -> list[dict[str, Any]]:
    return [{mapping.get(k, k): v for k, v in row.items()} for row in rows] if mapping else rows


def parse_mapping(value: str | None) -> dict[str, str]:
    """``"question=prompt,answer=completion"`` → ``{"question": "prompt", "answer": "completion"}``."""
    if not value:
        return {}
    out = {}
    for item in value.split(","):
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise CLIError(f"--rename-columns {value!r}: use OLD=NEW pairs separated by commas")
        out[old.strip()] = new.strip()
    return out


def load_questions(source: str, name: str = "--questions") -> tuple[list[str], list[str] | None]:
    """Questions (and answers when every row has one) from a file: one question per line in a .txt file, or rows
    with ``question`` (or ``prompt``) and optionally ``answer`` (or ``completion``)."""
    rows = load_records(source, name)
    questions, answers = [], []
    for index, row in enumerate(rows):
        question = row.get("question", row.get("prompt", row.get("text")))
        if not isinstance(question, str) or not question.strip():
            raise CLIError(
                f"{name}: row {index} of {source} has no 'question' column (columns: {sorted(row)}); give "
                "'question' (and optionally 'answer') columns, or one question per line in a .txt file"
            )
        questions.append(question.strip())
        answer = row.get("answer", row.get("completion"))
        answers.append(answer if isinstance(answer, str) and answer.strip() else None)
    if all(a is not None for a in answers):
        return questions, [a if a.startswith(" ") else " " + a for a in answers]
    return questions, None


def parse_int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{flag} {value!r}: give integers separated by commas, e.g. 0,1,2") from None


def split_list(value: str, flag: str, allowed: Sequence[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise CLIError(f"{flag} {value!r}: choose from {', '.join(allowed)} (comma-separated)")
    return items


# ---------------------------------------------------------------------------------------------------------- output


def output_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise CLIError(f"--output-dir {value} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def load_model_pair(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(original, unlearned, tokenizer)`` from ``--original`` / ``--unlearned``, both checked as supported."""
    device = resolve_device(args.device)
    original, tokenizer = load_model(args.original, args.dtype, device)
    unlearned, _ = load_model(args.unlearned, args.dtype, device, tokenizer=False)
    check_supported(original, args.original)
    check_supported(unlearned, args.unlearned)
    return original, unlearned, tokenizer


def write_json(path: Path, data: Any) -> Path:
    """Strict JSON (NaN becomes null), written atomically."""
    return atomic_write_json(path, _jsonable(data), indent=2)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(table: str, written: Sequence[Path]) -> None:
    """Print the human-readable table and where the JSON (and figures) went."""
    print(table)
    for path in written:
        print(f"wrote {path}")
