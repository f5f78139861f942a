"""``BaseConfig`` and ``BaseTrainer``: what every hf_unlearn trainer shares, unlearning or early exit.

Loading the model from a path (``model_init_kwargs``), the tokenizer and its pad token, PEFT, dropout, bf16 when a
bf16 GPU is present, metrics kept as tensors and logged the TRL way (``eval_`` prefix, returned by ``evaluate()``),
the non-finite-loss guard and the model-card tags. A subclass says how its data is prepared and what its loss is.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import torch
from datasets import Dataset
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import set_seed

from ..architectures import is_peft_model, underlying_model
from ..data import UnlearningCollator, ensure_pad_token
from .checkpoints import resolve_resume_checkpoint


def default_bf16(fp16: bool, use_cpu: bool) -> bool:
    """``bf16=None`` resolved: on when a bf16-capable GPU will run the training and fp16 is off."""
    return not fp16 and not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class BaseConfig(TrainingArguments):
    r"""
    Configuration shared by every hf_unlearn trainer; see [`~transformers.TrainingArguments`] for the rest.

    Parameters:
        > Parameters that control the data

        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum tokenised length; longer sequences are truncated (with a warning that says how many).
        dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
            Processes used to tokenise the datasets.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Pad each batch to a multiple of this length.
        append_eos (`bool` or `None`, *optional*, defaults to `None`):
            Append the tokenizer's end-of-sequence token to each completion and score it, as open-unlearning does
            for every example (numbers are comparable with its only then). `None`: on for prompt-completion and
            preference data, off for plain text and conversations (whose chat template closes the turn itself).

        > Parameters that control the model

        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `from_pretrained` when `model` is given as a path or Hub id.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Disable dropout in the trained model (and in a reference model).
    """

    logging_steps: float = field(
        default=10,
        metadata={"help": "Log every X updates steps. Should be an integer or a float in range `[0,1)`."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Use bf16 mixed precision. `None` (default) means on when a bf16-capable GPU is present and "
            "`fp16` is off, so the same config runs on a CPU-only machine."
        },
    )
    max_length: int | None = field(
        default=1024, metadata={"help": "Maximum tokenised length; longer sequences are truncated."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes used to tokenise the datasets."})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "Pad each batch to a multiple of this."})
    append_eos: bool | None = field(
        default=None,
        metadata={"help": "Append and score EOS after each completion (None: for prompt-completion/preference data)."},
    )
    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Keyword arguments for `from_pretrained` when the model is given as a path or Hub id."},
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the trained model."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = default_bf16(self.fp16, self.use_cpu)
        if self.use_cpu or not torch.cuda.is_available():
            # Pinned memory only helps host-to-GPU copies; on a CPU run torch warns about it at every epoch.
            self.dataloader_pin_memory = False
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens (got {self.max_length})")
        super().__post_init__()


class BaseTrainer(Trainer):
    """A `transformers.Trainer` that loads and prepares its model, tokenizer and data the hf_unlearn way.

    Subclasses set ``config_class``, ``method_name`` and ``_tag_names``, implement ``_prepare_datasets`` and
    ``compute_loss``, and record metrics with ``self._record(mode, metrics)``.
    """

    config_class: ClassVar[type[BaseConfig]] = BaseConfig
    method_name: ClassVar[str] = "hf_unlearn"
    _tag_names: ClassVar[list[str]] = ["hf_unlearn"]

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str,
        args: BaseConfig | TrainingArguments | None = None,
        train_dataset: Dataset | list | None = None,
        eval_dataset: Dataset | list | None = None,
        processing_class=None,
        peft_config=None,
        data_collator=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        config = getattr(model, "config", None)
        self._model_id = model if isinstance(model, str) else getattr(config, "_name_or_path", "")
        args = self._resolve_args(args, self._model_id)
        # Before any model creation: LoRA initialisation is random.
        set_seed(args.seed)
        model = self._load_model(model, args)
        if processing_class is None:
            if not self._model_id:
                raise ValueError("pass processing_class=tokenizer: the model has no name to load a tokenizer from")
            processing_class = AutoTokenizer.from_pretrained(self._model_id)
        ensure_pad_token(processing_class)

        if peft_config is not None:
            model = self._apply_peft(model, peft_config, args)
        self._is_peft = is_peft_model(model)
        self._configure_model(model, args)
        if args.disable_dropout:
            disable_dropout(model)

        train_dataset, eval_dataset = self._prepare_datasets(train_dataset, eval_dataset, processing_class, args)
        if data_collator is None:
            data_collator = self._default_collator(processing_class, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ set-up hooks

    def _resolve_args(self, args, model_id: str) -> BaseConfig:
        config_class = self.config_class
        if args is None:
            name = (model_id or "model").rstrip("/").split("/")[-1]
            return config_class(output_dir=f"{name}-{self.method_name}")
        if isinstance(args, config_class):
            return args
        if isinstance(args, BaseConfig):
            raise ValueError(
                f"{type(self).__name__} needs a {config_class.__name__}, got a {type(args).__name__}: the method's "
                "defaults live in its own config"
            )
        if isinstance(args, TrainingArguments):
            return _convert_training_arguments(args, config_class)
        raise TypeError(f"args must be a {config_class.__name__}, got {type(args).__name__}")

    def _load_model(self, model, args: BaseConfig) -> nn.Module:
        if isinstance(model, str):
            from trl.trainer.utils import create_model_from_path

            return create_model_from_path(model, **(args.model_init_kwargs or {}))
        if args.model_init_kwargs:
            raise ValueError("model_init_kwargs only applies when `model` is a path or Hub id, not a loaded model")
        return model

    @staticmethod
    def _apply_peft(model, peft_config, args):
        from peft import get_peft_model

        if is_peft_model(model):
            raise ValueError("the model is already a PeftModel; pass peft_config=None to train its adapter")
        model = get_peft_model(model, peft_config)
        if args.gradient_checkpointing:
            # Without it the adapter of the first layers receives no gradient under checkpointing.
            model.enable_input_require_grads()
        return model

    def _configure_model(self, model: nn.Module, args: BaseConfig) -> None:
        """Hook for methods that change which parameters train."""

    def _default_collator(self, processing_class, args: BaseConfig) -> UnlearningCollator:
        return UnlearningCollator(processing_class.pad_token_id, args.pad_to_multiple_of)

    def _prepare_datasets(self, train_dataset, eval_dataset, processing_class, args) -> tuple[Any, Any]:
        """Validate and tokenise the datasets (each subclass knows its formats)."""
        raise NotImplementedError

    def train(self, resume_from_checkpoint: bool | str | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        # `True` must skip a checkpoint left incomplete by a process killed while saving.
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    # ------------------------------------------------------------------ model card

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        output_dir: str | None = None,
    ) -> None:
        """Write hf_unlearn's card (method, hyperparameters, data, training metrics, the method's tags) to
        ``output_dir/README.md`` instead of transformers' generic one, which names neither the method nor the data.

        ``tasks``, ``dataset_tags`` and ``dataset_args`` are accepted for `Trainer.push_to_hub` compatibility; the card
        has no use for them. Nothing is looked up on the Hub (transformers' card queries the base model's license).

        Example:
            >>> trainer.create_model_card(model_name="smollm2-npo", dataset="me/forget-set")
            >>> ModelCard.load(os.path.join(trainer.args.output_dir, "README.md")).data.library_name
        """
        if not self.is_world_process_zero():
            return
        from ..atomic_files import atomic_write_text
        from ..hub.cards import render_trainer_card

        card = render_trainer_card(self, model_name=model_name, tags=tags, dataset=dataset,
                                   finetuned_from=finetuned_from, license=license, language=language)
        atomic_write_text(os.path.join(output_dir or self.args.output_dir, "README.md"), str(card))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # transformers' save_model writes no card, so a saved model would not say how it was made; the card goes in
        # before a push (args.push_to_hub) uploads the folder.
        super().save_model(output_dir, _internal_call=True)
        if self.args.should_save:
            self.create_model_card(output_dir=output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    # ------------------------------------------------------------------ metrics and the guards

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # A finite loss can still give a non-finite gradient; stop before the optimizer writes it into the weights
        # (and a checkpoint saves them). The norm is already reduced across ranks, so every rank stops together.
        # Under fp16 the grad scaler skips such steps itself.
        if grad_norm is not None and not self.args.fp16 and not torch.isfinite(torch.as_tensor(grad_norm)).all():
            raise FloatingPointError(
                f"{self.method_name}: non-finite gradient norm ({float(grad_norm)}) at step "
                f"{self.state.global_step + 1} with a finite loss. Training stopped before the update; checkpoints "
                "already in output_dir are untouched. Lower the learning rate, set max_grad_norm, or check the data "
                "of this step."
            )
        return grad_norm

    def _check_finite(self, loss: torch.Tensor, metrics: dict[str, Any]) -> None:
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.args.world_size > 1:
            # Every rank must stop together, or the others wait forever in the next all-reduce.
            finite = self.accelerator.gather(finite).min().reshape(1)
        if finite.item() < 1:
            parts = ", ".join(
                f"{k}={float(v.detach()):.4g}" for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1
            )
            raise FloatingPointError(
                f"{self.method_name}: non-finite loss at step {self.state.global_step + 1} ({parts}). Training "
                "stopped before the update; checkpoints already in output_dir are untouched. Lower the learning "
                "rate, add max_grad_norm, or check the data of this step."
            )

    def _record(self, mode: str, metrics: dict[str, Any]) -> None:
        names = [k for k, v in metrics.items() if v is not None]
        if not names:
            return
        values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32).detach().mean() for k in names])
        if self.args.world_size > 1:
            values = self.accelerator.gather(values.to(self.args.device).unsqueeze(0)).mean(0)
        # Kept as tensors until `log`: converting here would sync the device on every micro-batch.
        for name, value in zip(names, values):
            self._metrics[mode][name].append(value)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        # Put the method's metrics in what `evaluate()` returns, not only in the logs.
        metrics = {f"{metric_key_prefix}_{k}": _mean(v) for k, v in self._metrics["eval"].items() if v}
        output.metrics.update(metrics)
        self._metrics["eval"].clear()
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: _mean(v) for key, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs = {**logs, **metrics}
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        if not hasattr(self, "_num_non_embedding_params"):
            self._num_non_embedding_params = underlying_model(self.model).num_parameters(exclude_embeddings=True)
        tokens = sum(v.numel() for k, v in _flatten(inputs) if k.endswith("input_ids"))
        return 6 * self._num_non_embedding_params * tokens


def _convert_training_arguments(args: TrainingArguments, config_class: type[BaseConfig]) -> BaseConfig:
    """Plain ``TrainingArguments`` as the method's config: a field left at ``TrainingArguments``' default takes the
    method's default (Needle's learning rate 0.2, not 5e-5); a field the user changed is kept."""
    plain = TrainingArguments(output_dir=args.output_dir)
    method_defaults = {f.name: f for f in fields(config_class) if f.init}
    plain_defaults = {f.name: f.default for f in fields(TrainingArguments) if f.init}
    values, replaced = {}, []
    for f in fields(args):
        if not f.init:
            continue
        value = getattr(args, f.name)
        if f.name != "output_dir" and value == getattr(plain, f.name, _MISSING):
            default = method_defaults.get(f.name)
            # Name only what the method itself sets differently (its learning rate, epochs, ...).
            if (default is not None and default.default is not MISSING
                    and default.default != plain_defaults.get(f.name, MISSING)):
                replaced.append(f"{f.name}={default.default!r}")
            continue
        values[f.name] = value
    if replaced:
        warnings.warn(
            f"plain TrainingArguments converted to {config_class.__name__}: fields left at TrainingArguments' "
            f"defaults take the method's ({', '.join(replaced)}). Pass a {config_class.__name__} to set them "
            "explicitly.",
            stacklevel=4,
        )
    return config_class(**values)


_MISSING = object()


def _mean(values: list[torch.Tensor]) -> float:
    return torch.stack(values).float().mean().item()


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _flatten(inputs: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for key, value in inputs.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif torch.is_tensor(value):
            yield f"{prefix}{key}", value
