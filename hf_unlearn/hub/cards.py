"""Model cards rendered from the templates in ``model_cards/`` with ``huggingface_hub.ModelCard.from_template``.

The numbers a card shows are formatted here from the object it is rendered from (an :class:`UnlearningAudit`, an
:class:`~hf_unlearn.early_exit.ExitEvaluation` and the model's config); the templates hold no number of their own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..architectures import underlying_model
from .audit import AUDIT_FILE, UnlearningAudit, _finite, _num

__all__ = ["TEMPLATES_DIR", "render_early_exit_card", "render_trainer_card", "render_unlearning_card"]

#: The card templates (the package's copy of the repository's ``model_cards/`` folder).
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
UNLEARNED_TEMPLATE = "unlearned_model_card.md"
EARLY_EXIT_TEMPLATE = "early_exit_model_card.md"

# A Hub repo id (``owner/name``); anything else (a local file, a description) is named in the text only.
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_TASK = "text-generation"

# Training-argument fields worth a reader's attention; a method's own fields are always shown.
_TRAINING_FIELDS = (
    "learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "seed", "bf16",
)
# Log-history keys that are bookkeeping, not measurements.
_LOG_SKIP = {"epoch", "step", "learning_rate", "total_flos", "train_runtime", "train_samples_per_second",
             "train_steps_per_second"}


def _render(data: ModelCardData, template: str, **variables: Any) -> ModelCard:
    card = ModelCard.from_template(data, template_path=_template(template), **variables)
    # Optional sections leave runs of blank lines behind; Markdown ignores them, a reader of the raw file does not.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)).rstrip() + "\n")


def _template(name: str) -> str:
    path = TEMPLATES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"model card template {path} is missing: the hf_unlearn installation is incomplete (reinstall it)"
        )
    return str(path)


def _tags(*groups: Iterable[str] | None) -> list[str]:
    return list(dict.fromkeys(t for group in groups if group for t in ([group] if isinstance(group, str) else group)))


def _hub_ids(names: Iterable[str]) -> list[str] | None:
    ids = list(dict.fromkeys(n for n in names if isinstance(n, str) and _HUB_ID.match(n) and not os.path.exists(n)))
    return ids or None


def _base_model(name: str | None) -> str | None:
    """A base model the Hub can link to: a repo id, not a local folder."""
    if not name or os.path.isdir(name) or not _HUB_ID.match(name):
        return None
    return name


def _plain(value: Any) -> Any:
    """A JSON value for a hyperparameter (enums by value, other objects by their text)."""
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _num(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return "-" if value is None else str(value).replace("|", "\\|")


def _card_data(model_name: str, tags: list[str], base_model: str | None, datasets: list[str] | None,
               eval_results: list[EvalResult], license: str | None, language: str | list[str] | None) -> ModelCardData:
    return ModelCardData(
        model_name=model_name,
        library_name="hf_unlearn",
        pipeline_tag=_TASK,
        tags=tags,
        base_model=base_model,
        datasets=datasets,
        eval_results=eval_results or None,
        license=license,
        language=language,
    )


# ----------------------------------------------------------------------------------------------- unlearned model


def _unlearning_eval_results(audit: UnlearningAudit) -> list[EvalResult]:
    results: list[EvalResult] = []
    subject = audit.concept or audit.method
    forget = audit.datasets.get("forget")
    dataset_type = forget if forget and _HUB_ID.match(forget) else "custom"
    if audit.evaluation_after is not None:
        for value in audit.evaluation_after.values:
            if value.value is None or _finite(float(value.value)) is None:
                continue
            result = value.to_eval_result(f"{subject} unlearning evaluation", dataset_type)
            result.task_name = "Unlearning evaluation"
            results.append(result)
    if audit.concept_vectors is not None and audit.concept_vectors.vectors:
        summary = audit.concept_vectors.summary()
        names = {"mean_cosine_similarity": "mean concept-vector cosine similarity",
                 "mean_jaccard_similarity": f"mean top-{audit.concept_vectors.top_k} Jaccard similarity",
                 "mean_norm_distance": "mean concept-vector L2 distance"}
        for key, name in names.items():
            if summary.get(key) is not None:
                results.append(EvalResult(
                    task_type=_TASK, task_name="Concept-vector audit", dataset_type="custom",
                    dataset_name=f"{subject} concept vectors", dataset_config="concept-vectors",
                    metric_type=key.removeprefix("mean_"), metric_name=name, metric_value=float(summary[key]),
                ))
    for row in audit.krs_summary():
        results.append(EvalResult(
            task_type=_TASK, task_name="Knowledge recovery (dissection)", dataset_type="custom",
            dataset_name=f"{subject} dissection probes", dataset_config="dissection",
            metric_type="knowledge_recovery_score",
            metric_name=f"max KRS, {row['experiment'].replace('_', ' ')}", metric_value=float(row["krs"]),
        ))
    for attack in audit.attacks:
        if attack.after is None:
            continue
        results.append(EvalResult(
            task_type=_TASK, task_name="Attacks on the unlearned model", dataset_type="custom",
            dataset_name=f"{subject} {attack.name}", dataset_config=f"attack: {attack.name}",
            metric_type=attack.metric, metric_name=f"{attack.metric} after the {attack.name} attack",
            metric_value=float(attack.after),
        ))
    return results


def render_unlearning_card(
    audit: UnlearningAudit,
    repo_id: str | None = None,
    model_name: str | None = None,
    figures: Sequence[str] = (),
    adapter: bool = False,
    audit_file: str | None = AUDIT_FILE,
    tags: Sequence[str] | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> ModelCard:
    """The model card of an unlearned model, every number taken from ``audit``.

    Metadata: ``library_name: hf_unlearn``, tags (``unlearning`` and the method), the base model, the Hub datasets
    and a ``model-index`` of the measured results (the evaluation after unlearning, the concept-vector audit, the
    best knowledge recovery score per experiment, the attacks). The text states the audit's findings
    (:meth:`UnlearningAudit.findings`). ``figures`` are paths relative to the card's folder; ``adapter`` switches
    the usage snippet to PEFT.

    Example:
        >>> card = render_unlearning_card(audit, repo_id="me/smollm2-npo-harry-potter")
        >>> card.save("README.md")
    """
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"{audit.method}-unlearned")
    all_tags = _tags(["hf_unlearn", "unlearning", audit.method.replace("_", "-")], tags)
    data = _card_data(name, all_tags, _base_model(audit.base_model), _hub_ids(audit.datasets.values()),
                      _unlearning_eval_results(audit), license, language)

    eval_rows = []
    if audit.evaluation_after is not None or audit.evaluation_before is not None:
        seen = []
        for evaluation in (audit.evaluation_before, audit.evaluation_after):
            for value in evaluation.values if evaluation is not None else []:
                if (value.name, value.split) not in seen:
                    seen.append((value.name, value.split))
        for metric, split in seen:
            before = None if audit.evaluation_before is None else audit.evaluation_before.get(metric, split)
            after = None if audit.evaluation_after is None else audit.evaluation_after.get(metric, split)
            eval_rows.append({"metric": metric, "split": split or "-", "before": _cell(before), "after": _cell(after)})
    vector_rows = []
    if audit.concept_vectors is not None:
        for v in audit.concept_vectors.vectors:
            vector_rows.append({
                "concept": _cell(v.get("concept")), "layer": _cell(v.get("layer")), "dim": _cell(v.get("dim")),
                "cosine": _cell(v.get("cosine_similarity")), "l2": _cell(v.get("norm_distance")),
                "jaccard": _cell(v.get("jaccard_similarity")),
            })
    krs_rows = [{"experiment": r["experiment"].replace("_", " "), "component": _cell(r.get("component")),
                 "layer": _cell(r.get("layer")), "krs": _cell(r["krs"])} for r in audit.krs_summary()]
    attack_rows = [{"name": a.name, "metric": a.metric, "before": _cell(a.before), "after": _cell(a.after)}
                   for a in audit.attacks]
    return _render(
        data,
        UNLEARNED_TEMPLATE,
        model_name=name,
        method=audit.method,
        base_model=_base_model(audit.base_model),
        concept=audit.concept,
        findings=audit.findings(),
        eval_rows=eval_rows,
        vector_rows=vector_rows,
        top_k=None if audit.concept_vectors is None else audit.concept_vectors.top_k,
        krs_rows=krs_rows,
        attack_rows=attack_rows,
        figures=list(figures),
        datasets=[(role, _cell(value)) for role, value in audit.datasets.items()],
        hyperparameters=[(k, _cell(v)) for k, v in audit.hyperparameters.items()],
        training_metrics=[(k, _cell(v)) for k, v in audit.training_metrics.items()],
        repo_id=repo_id or name,
        adapter=adapter,
        audit_file=audit_file,
    )


# ----------------------------------------------------------------------------------------------- early exit


def _early_exit_config(model: Any):
    from ..early_exit import EarlyExitConfig, EarlyExitForCausalLM

    if isinstance(model, EarlyExitConfig):
        return model
    if isinstance(underlying_model(model), EarlyExitForCausalLM):
        model = underlying_model(model)
    if isinstance(model, EarlyExitForCausalLM):
        return model.config
    raise TypeError(f"expected an EarlyExitForCausalLM or its EarlyExitConfig, got {type(model).__name__}")


def _exit_eval_results(evaluation: Any) -> list[EvalResult]:
    results = []
    labels = {"speedup": "speed-up", "agreement": "agreement (teacher-forced)",
              "generation_agreement": "agreement (free generation)"}
    for row in evaluation.rows:
        for metric_type, label in labels.items():
            value = row.get(metric_type)
            if value is None or _finite(float(value)) is None:
                continue
            results.append(EvalResult(
                task_type=_TASK, task_name="Early exit", dataset_type="custom",
                dataset_name="early-exit evaluation prompts", metric_type=metric_type,
                metric_name=f"{label}, {row['point']}", metric_value=float(value),
            ))
    return results


def render_early_exit_card(
    model: Any,
    repo_id: str | None = None,
    evaluation: Any = None,
    base_model: str | None = None,
    model_name: str | None = None,
    datasets: Sequence[str] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    training_metrics: Mapping[str, float] | None = None,
    tags: Sequence[str] | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> ModelCard:
    """The model card of an early-exit checkpoint: exits and default strategy from the model's config, speed-up and
    agreement per strategy from ``evaluation`` (:func:`~hf_unlearn.evaluate_exits`), and both ways of loading it
    (``EarlyExitForCausalLM.from_pretrained`` and ``AutoModelForCausalLM`` with ``trust_remote_code=True``).

    Example:
        >>> card = render_early_exit_card(model, "me/smollm2-early-exit", evaluate_exits(model, tok, prompts, s))
        >>> card.save("README.md")
    """
    from ..early_exit.evaluation import STRATEGY_SETTING

    config = _early_exit_config(model)
    base_model = base_model or getattr(config.backbone_config, "_name_or_path", None)
    name = model_name or (repo_id.split("/")[-1] if repo_id else "early-exit-model")
    eval_results = _exit_eval_results(evaluation) if evaluation is not None else []
    data = _card_data(name, _tags(["hf_unlearn", "early-exit"], tags), _base_model(base_model),
                      _hub_ids(datasets or []), eval_results, license, language)
    setting = STRATEGY_SETTING.get(config.exit_strategy)
    if config.exit_strategy == "policy" and getattr(config, "policy_thresholds", None):
        setting = "policy_thresholds"  # per-exit thresholds replace the single one
    rows = []
    if evaluation is not None:
        for row in evaluation.rows:
            rows.append({key: _cell(row.get(key)) for key in
                         ("strategy", "point", "speedup", "mean_exit_layer", "agreement", "generation_agreement")})
    meta = evaluation.meta if evaluation is not None else {}
    return _render(
        data,
        EARLY_EXIT_TEMPLATE,
        model_name=name,
        base_model=_base_model(base_model),
        num_layers=config.num_hidden_layers,
        exit_layers=_cell(list(config.exit_layers)),
        exit_strategy=config.exit_strategy,
        exit_setting=None if setting is None else {"name": setting, "value": _cell(getattr(config, setting, None))},
        exit_head=config.exit_head,
        shortlist_exits=bool(getattr(config, "shortlist_exits", False)),
        shortlist_size=getattr(config, "shortlist_size", 0),
        evaluation_rows=rows,
        prompts=_cell(meta.get("prompts")),
        max_new_tokens=_cell(meta.get("max_new_tokens")),
        hyperparameters=[(k, _cell(v)) for k, v in (hyperparameters or {}).items()],
        training_metrics=[(k, _cell(v)) for k, v in (training_metrics or {}).items()],
        repo_id=repo_id or name,
    )


# ----------------------------------------------------------------------------------------------- trainers


def trainer_hyperparameters(args: Any) -> dict[str, Any]:
    """The method's own config fields (those ``TrainingArguments`` lacks) and the main training settings."""
    from dataclasses import fields

    from transformers import TrainingArguments

    generic = {f.name for f in fields(TrainingArguments)}
    out: dict[str, Any] = {}
    steps = getattr(args, "max_steps", -1) or -1
    for name in _TRAINING_FIELDS:
        value = getattr(args, name, None)
        if (name == "max_steps" and steps <= 0) or (name == "num_train_epochs" and steps > 0):
            continue  # only the one that decides the length of training
        if value is not None:
            out[name] = _plain(value)
    for f in fields(args):
        if f.init and f.name not in generic and f.name not in out:
            value = getattr(args, f.name)
            if value is not None:
                out[f.name] = _plain(value)
    return out


def trainer_training_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The last logged value of each training (and evaluation) metric, plus the final step."""
    out: dict[str, float] = {}
    step = None
    for entry in log_history:
        for key, value in entry.items():
            if key not in _LOG_SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                if _finite(float(value)) is not None:
                    out[key] = float(value)
        step = entry.get("step", step)
    if step is not None:
        out["global_step"] = int(step)
    return out


def render_trainer_card(
    trainer: Any,
    model_name: str | None = None,
    tags: Sequence[str] | str | None = None,
    dataset: Sequence[str] | str | None = None,
    finetuned_from: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> ModelCard:
    """The card an hf_unlearn trainer writes on ``save_model`` / ``push_to_hub``: the method, its hyperparameters,
    the data and the training metrics from the log history, tagged with the trainer's ``_tag_names``.

    Example:
        >>> card = render_trainer_card(trainer, model_name="smollm2-npo")
        >>> card.save(os.path.join(trainer.args.output_dir, "README.md"))
    """
    args = trainer.args
    name = model_name or (args.hub_model_id.split("/")[-1] if args.hub_model_id else Path(args.output_dir).name)
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or name
    all_tags = _tags(trainer._tag_names, [tags] if isinstance(tags, str) else tags)
    base_model = finetuned_from or getattr(trainer, "_model_id", None) or None
    names = [dataset] if isinstance(dataset, str) else list(dataset or [])
    hyperparameters = trainer_hyperparameters(args)
    metrics = trainer_training_metrics(trainer.state.log_history)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "early-exit" in trainer._tag_names:
        return render_early_exit_card(
            model, repo_id=repo_id, base_model=base_model, model_name=name, datasets=names,
            hyperparameters=hyperparameters, training_metrics=metrics, tags=all_tags, license=license,
            language=language,
        )
    data = {}
    if names:
        data["forget"] = names[0]
        if len(names) > 1:
            data["retain"] = names[1]
    for role, attribute in (("forget", "train_dataset"), ("retain", "retain_dataset")):
        if role not in data and getattr(trainer, attribute, None) is not None:
            data[role] = f"{len(getattr(trainer, attribute))} examples"
    audit = UnlearningAudit(
        method=trainer.method_name,
        base_model=base_model,
        hyperparameters=hyperparameters,
        datasets=data,
        training_metrics=metrics,
    )
    return render_unlearning_card(
        audit, repo_id=repo_id, model_name=name, adapter=bool(getattr(trainer, "_is_peft", False)), audit_file=None,
        tags=all_tags, license=license, language=language,
    )
