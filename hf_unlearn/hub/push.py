"""Write an audited (or early-exit) model to a folder, then push that folder to the Hub in one commit.

The folder is written first and swapped into place whole, so a crash leaves either the old folder or the new one;
the push uploads exactly that folder, so a failed push leaves a complete folder to retry from.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi

from ..architectures import is_peft_model
from ..atomic_files import atomic_write_text
from .audit import AUDIT_FILE, UnlearningAudit
from .cards import render_early_exit_card, render_unlearning_card

__all__ = [
    "HubPushError",
    "check_push_folder",
    "push_audited_to_hub",
    "push_early_exit_to_hub",
    "save_audited",
    "save_early_exit",
]

SAVE_MODES = ("weights", "adapter", "merged")
FIGURES_DIR = "figures"
EXIT_EVALUATION_FILE = "exit_evaluation.json"


class HubPushError(RuntimeError):
    """A push that failed after its folder was written: ``folder`` is complete and ``retry`` is the Python call that
    uploads it."""

    def __init__(self, message: str, folder: Path, repo_id: str, retry: str):
        super().__init__(message)
        self.folder = folder
        self.repo_id = repo_id
        self.retry = retry


def _sibling_dir(folder: Path, suffix: str) -> Path:
    # mkdir (not mkdtemp's 0700) so the folder gets the permissions of any folder the user creates (0777 - umask).
    for _ in range(100):
        path = folder.parent / f".{folder.name}.{os.urandom(6).hex()}.{suffix}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder beside {folder}")


def _write_folder(folder: str | os.PathLike, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run ``write(tmp)`` on a fresh sibling folder, then put it at ``folder``.

    An existing non-empty ``folder`` is replaced only with ``overwrite`` (it may be a training output directory with
    checkpoints); it is moved aside first and deleted once the new folder is in place.
    """
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{folder} already holds files; pass overwrite=True to replace the folder, or choose another local_dir"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_dir(folder, "tmp")
    old = None
    try:
        write(tmp)
        if folder.exists():
            old = _sibling_dir(folder, "old")
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _copy_figures(figures: Sequence[str | os.PathLike], folder: Path) -> list[str]:
    names = []
    for figure in figures:
        source = Path(figure)
        if not source.is_file():
            raise FileNotFoundError(f"figure {source} does not exist")
        relative = f"{FIGURES_DIR}/{source.name}"
        if relative in names:
            raise ValueError(f"two figures are named {source.name}; give them distinct file names")
        (folder / FIGURES_DIR).mkdir(exist_ok=True)
        shutil.copyfile(source, folder / relative)
        names.append(relative)
    return names


def _save_model(model: Any, folder: Path, save: str) -> None:
    if save not in SAVE_MODES:
        raise ValueError(f"save={save!r}: choose one of {SAVE_MODES}")
    peft = is_peft_model(model)
    if save == "weights" and peft:
        raise ValueError(
            "the model is a PeftModel: save='adapter' writes the adapter alone (loads on the base model), "
            "save='merged' writes the base model with the adapter merged in"
        )
    if save in ("adapter", "merged") and not peft:
        raise ValueError(f"save={save!r} needs a PeftModel; this {type(model).__name__} has no adapter: use "
                         "save='weights'")
    if save == "merged":
        # merge_and_unload rewrites the base weights in place; merge a copy so the caller's model keeps its adapter.
        copy.deepcopy(model).merge_and_unload().save_pretrained(folder)
    else:
        model.save_pretrained(folder)


def save_audited(
    model: Any,
    tokenizer: Any,
    audit: UnlearningAudit,
    folder: str | os.PathLike,
    save: str = "weights",
    figures: Sequence[str | os.PathLike] = (),
    repo_id: str | None = None,
    overwrite: bool = False,
    **card_kwargs: Any,
) -> Path:
    """Write an unlearned model with its evidence to ``folder``: the weights (``save="weights"``), the PEFT adapter
    (``"adapter"``) or the merged model (``"merged"``), the tokenizer, ``README.md`` (the card rendered from
    ``audit``), ``audit.json`` and ``figures/``. The folder is built beside ``folder`` and moved into place whole.

    ``card_kwargs`` go to :func:`render_unlearning_card` (``license``, ``language``, ``tags``, ``model_name``).

    Example:
        >>> save_audited(model, tokenizer, audit, "smollm2-npo", figures=["dissection.png"])
        >>> UnlearningAudit.from_json("smollm2-npo/audit.json").findings()
    """

    def write(tmp: Path) -> None:
        _save_model(model, tmp, save)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        figure_names = _copy_figures(figures, tmp)
        audit.to_json(tmp / AUDIT_FILE)
        card = render_unlearning_card(audit, repo_id=repo_id or Path(folder).name, figures=figure_names,
                                      adapter=save == "adapter", **card_kwargs)
        # Written last: PeftModel.save_pretrained writes a README.md of its own.
        atomic_write_text(tmp / "README.md", str(card))

    return _write_folder(folder, write, overwrite)


def save_early_exit(
    model: Any,
    tokenizer: Any,
    folder: str | os.PathLike,
    evaluation: Any = None,
    repo_id: str | None = None,
    figures: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    **card_kwargs: Any,
) -> Path:
    """Write an early-exit checkpoint to ``folder``: weights, config with ``auto_map``, the two modelling files (so
    ``trust_remote_code=True`` loads it without hf_unlearn), the tokenizer, its card and, with ``evaluation``
    (:func:`~hf_unlearn.evaluate_exits`), ``exit_evaluation.json``.

    Example:
        >>> save_early_exit(model, tokenizer, "smollm2-early-exit", evaluation=evaluate_exits(model, tok, prompts, s))
        >>> AutoModelForCausalLM.from_pretrained("smollm2-early-exit", trust_remote_code=True)
    """
    from ..early_exit import EarlyExitForCausalLM

    if not isinstance(model, EarlyExitForCausalLM):
        hint = " (merge the LoRA adapter first: model.merge_and_unload())" if is_peft_model(model) else ""
        raise TypeError(f"expected an EarlyExitForCausalLM, got {type(model).__name__}{hint}")

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        missing = [f for f in ("modeling_early_exit.py", "configuration_early_exit.py") if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"save_pretrained did not write the remote code files {missing}; import "
                               "hf_unlearn.early_exit (it registers the classes for the auto classes) and retry")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        figure_names = _copy_figures(figures, tmp)
        if evaluation is not None:
            evaluation.to_json(tmp / EXIT_EVALUATION_FILE)
        card = render_early_exit_card(model, repo_id=repo_id or Path(folder).name, evaluation=evaluation,
                                      **card_kwargs)
        text = str(card)
        if figure_names:
            text += "\n\n## Figures\n\n" + "\n".join(f"![{name}]({name})" for name in figure_names) + "\n"
        atomic_write_text(tmp / "README.md", text)

    return _write_folder(folder, write, overwrite)


WEIGHT_FILES = (
    "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"
)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path.name} does not parse ({type(error).__name__}: {str(error).splitlines()[0]})")
        return None


def _check_shards(folder: Path, index_name: str, problems: list[str]) -> None:
    index = _read_json(folder / index_name, problems)
    if index is None:
        return
    shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
    missing = [name for name in shards if not (folder / name).is_file()]
    if not shards:
        problems.append(f"{index_name} lists no weight shards")
    elif missing:
        problems.append(f"weight shards {', '.join(missing)} (listed in {index_name})")


def _auto_map_modules(auto_map: Any) -> list[str]:
    """The module files that ``config.auto_map`` entries point to in the repository itself (``module.Class``;
    ``other/repo--module.Class`` points elsewhere and is not checked)."""
    values = auto_map.values() if isinstance(auto_map, dict) else []
    names = []
    for value in values:
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and "--" not in reference and "." in reference:
                name = reference.rsplit(".", 1)[0].replace(".", "/") + ".py"
                if name not in names:
                    names.append(name)
    return names


def check_push_folder(folder: str | os.PathLike) -> Path:
    """Check that ``folder`` holds a complete model to push, as :func:`save_audited` / :func:`save_early_exit` write
    it: ``config.json`` with weights (or a PEFT adapter), the tokenizer, ``README.md`` (the card), a readable
    ``audit.json`` when there is one, and the modelling files ``config.auto_map`` names (early-exit checkpoints).

    Returns the resolved folder; raises ``FileNotFoundError`` for a missing folder and ``ValueError`` whose first
    line names everything missing or broken.

    Example:
        >>> check_push_folder("smollm2-npo")
        PosixPath('/home/me/smollm2-npo')
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no folder at {folder}" if not path.exists() else f"{folder} is not a folder")
    path = path.resolve()
    problems: list[str] = []

    def has(*names: str) -> str | None:
        return next((name for name in names if (path / name).is_file()), None)

    adapter = has("adapter_config.json")
    if adapter:
        if not has(*ADAPTER_FILES):
            problems.append(f"adapter weights ({' or '.join(ADAPTER_FILES)})")
        _read_json(path / adapter, problems)
    else:
        config = None
        if has("config.json"):
            config = _read_json(path / "config.json", problems)
        else:
            problems.append("config.json (or adapter_config.json for a PEFT adapter)")
        weights = has(*WEIGHT_FILES)
        if weights is None:
            problems.append(f"model weights ({' or '.join(WEIGHT_FILES[:2])})")
        elif weights.endswith(".index.json"):
            _check_shards(path, weights, problems)
        if isinstance(config, dict):
            missing = [name for name in _auto_map_modules(config.get("auto_map")) if not (path / name).is_file()]
            if missing:
                problems.append(f"modelling files {', '.join(missing)} (named in config.json auto_map)")
    if not has(*TOKENIZER_FILES):
        problems.append(f"tokenizer files ({' or '.join(TOKENIZER_FILES)})")
    if not has("README.md"):
        problems.append("README.md (the model card)")
    else:
        from huggingface_hub import ModelCard

        try:
            card = ModelCard((path / "README.md").read_text(encoding="utf-8"), ignore_metadata_errors=False)
            if not card.text.strip() and not card.data.to_dict():
                problems.append("README.md is empty (write the model card)")
        except Exception as error:  # yaml and ValueError, as huggingface_hub raises them
            problems.append(f"README.md card metadata does not parse ({str(error).splitlines()[0]})")
    if has(AUDIT_FILE):
        try:
            UnlearningAudit.from_json(path / AUDIT_FILE)
        except Exception as error:  # JSON, missing keys, a newer format: the first line says which
            reason = str(error).splitlines()[0] if str(error).strip() else ""
            problems.append(f"{AUDIT_FILE} is not a readable UnlearningAudit ({type(error).__name__}: {reason})")
    if problems:
        raise ValueError(f"{path} is not ready to push: missing or broken: {'; '.join(problems)}")
    return path


def _push_folder(
    folder: Path,
    repo_id: str,
    private: bool | None,
    token: str | bool | None,
    revision: str | None,
    commit_message: str,
    cleanup: Path | None,
) -> CommitInfo:
    from .. import __version__

    api = HfApi(token=token, library_name="hf_unlearn", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision)
    except Exception as error:
        retry = (f"HfApi().upload_folder(folder_path={str(folder)!r}, repo_id={repo_id!r}"
                 + (f", revision={revision!r}" if revision else "") + ")")
        command = f"hf upload {shlex.quote(repo_id)} {shlex.quote(str(folder))} ."
        raise HubPushError(
            f"pushing to {repo_id} failed ({type(error).__name__}: {error}). Nothing was committed; the local "
            f"folder {folder} is complete. Retry with {retry} or `{command}`.",
            folder, repo_id, retry,
        ) from error
    if cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True)
    return info


def _local_dir(local_dir: str | os.PathLike | None, repo_id: str) -> tuple[Path, Path | None]:
    """The folder to write and what to delete after a successful push."""
    if local_dir is not None:
        return Path(local_dir), None
    # No folder given: write to a temporary one, deleted after a successful push and kept (and named) after a failure.
    parent = Path(tempfile.mkdtemp(prefix="hf_unlearn-push-"))
    return parent / repo_id.split("/")[-1], parent


def push_audited_to_hub(
    model: Any,
    tokenizer: Any,
    audit: UnlearningAudit,
    repo_id: str,
    local_dir: str | os.PathLike | None = None,
    save: str = "weights",
    figures: Sequence[str | os.PathLike] = (),
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite: bool = False,
    **card_kwargs: Any,
) -> CommitInfo:
    """:func:`save_audited` to ``local_dir`` (a temporary folder if ``None``), then push it in one commit: the model
    (weights, adapter or merged), the tokenizer, the card, ``audit.json`` and the figures.

    A failed push raises :class:`HubPushError` naming the complete local folder (kept, also when it was temporary)
    and the call that retries the upload.

    Example:
        >>> push_audited_to_hub(model, tokenizer, audit, "me/smollm2-npo-harry-potter", local_dir="smollm2-npo")
        >>> ModelCard.load("me/smollm2-npo-harry-potter").data.tags
    """
    folder, cleanup = _local_dir(local_dir, repo_id)
    folder = save_audited(model, tokenizer, audit, folder, save=save, figures=figures, repo_id=repo_id,
                          overwrite=overwrite, **card_kwargs)
    message = commit_message or f"Upload {audit.method} unlearned model with its audit (hf_unlearn)"
    return _push_folder(folder, repo_id, private, token, revision, message, cleanup)


def push_early_exit_to_hub(
    model: Any,
    tokenizer: Any,
    repo_id: str,
    evaluation: Any = None,
    local_dir: str | os.PathLike | None = None,
    figures: Sequence[str | os.PathLike] = (),
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite: bool = False,
    **card_kwargs: Any,
) -> CommitInfo:
    """:func:`save_early_exit` to ``local_dir`` (a temporary folder if ``None``), then push it in one commit with
    the modelling code, so ``AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)`` loads it.

    Example:
        >>> push_early_exit_to_hub(model, tokenizer, "me/smollm2-early-exit", evaluation=table)
        >>> AutoModelForCausalLM.from_pretrained("me/smollm2-early-exit", trust_remote_code=True)
    """
    folder, cleanup = _local_dir(local_dir, repo_id)
    folder = save_early_exit(model, tokenizer, folder, evaluation=evaluation, repo_id=repo_id, figures=figures,
                             overwrite=overwrite, **card_kwargs)
    message = commit_message or "Upload early-exit model with its modelling code (hf_unlearn)"
    return _push_folder(folder, repo_id, private, token, revision, message, cleanup)
