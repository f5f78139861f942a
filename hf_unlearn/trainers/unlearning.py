"""``UnlearningConfig`` and ``UnlearningTrainer``: what every unlearning method shares.

A method subclass only says what its forget term is (``compute_forget_loss``), how that term is normalised
(per token or per sequence) and whether it needs a reference model. The base class does the rest:
data preparation, forget/retain pairing, the retain term, the reference model and loss scaling under gradient
accumulation and data parallelism; ``BaseTrainer`` adds model loading, PEFT, metric logging and the
non-finite-loss guard.

Loss scaling. Each term is a mean over the scored tokens (or sequences) of the *whole* optimizer step: every
micro-batch contributes ``micro_mean · micro_count / step_count`` (times the world size when counts are
gathered across ranks, since DDP averages gradients). So a step of 2 micro-batches of 2 gives the same update as
one micro-batch of 4, and ``loss_is_scaled_for_ga = True`` tells the Trainer not to divide again.
"""

from __future__ import annotations

import copy
import gc
import math
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from datasets import Dataset
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, TrainingArguments

from .. import losses
from ..architectures import is_peft_model, underlying_model
from ..data import INDEX_COLUMN, padding_id, prepare_dataset, retain_indices
from .base import BaseConfig, BaseTrainer, disable_dropout

COUNT_KEYS = ("forget_tokens", "forget_sequences", "retain_tokens", "retain_sequences")


@dataclass
class UnlearningConfig(BaseConfig):
    r"""
    Configuration class for the unlearning trainers; every method's ``XConfig`` subclasses it.

    Only the parameters specific to unlearning are listed here; see [`BaseConfig`] and
    [`~transformers.TrainingArguments`] for the rest. The total loss is
    ``forget_weight · L_forget + retain_weight · L_retain``.

    Parameters:
        > Parameters that control the objective

        forget_weight (`float`, *optional*, defaults to `1.0`):
            Weight γ of the forget term.
        retain_weight (`float`, *optional*, defaults to `1.0`):
            Weight α of the retain term.
        retain_loss (`str`, *optional*, defaults to `"nll"`):
            Retain term: `"none"`, `"nll"` (cross-entropy on the retain set) or `"kl"` (KL(π_ref ‖ π_θ) on the
            retain set, which needs a reference model).
        retain_forward (`str`, *optional*, defaults to `"auto"`):
            How the forget and the retain batch run through the model: `"separate"` (two forward passes) or
            `"concatenated"` (one pass over both, right-padded to the longer; the same losses and gradients), which
            needs a forget term that is one plain forward pass of the forget batch (not IdkDPO's pair pass, not
            RMU's stopped one). `"auto"`: concatenated where the method allows it (the faster of the two where
            measured, see the README's benchmark table).

        > Parameters that control the reference model

        precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
            Compute every reference log-probability the method needs once before training, then drop the
            reference model. Only for methods whose reference enters through sequence log-probs (NPO, IdkDPO).
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "Initial learning rate for AdamW."})
    forget_weight: float = field(default=1.0, metadata={"help": "Weight γ of the forget term."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight α of the retain term."})
    retain_loss: str = field(
        default="nll",
        metadata={"help": "Retain term: 'none', 'nll' (cross-entropy on the retain set) or 'kl' (KL(ref || policy))."},
    )
    retain_forward: str = field(
        default="auto",
        metadata={"help": "Forget and retain batches in 'separate' passes, one 'concatenated' pass, or 'auto'."},
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Compute every reference log-prob the method needs once before training, then drop the "
            "reference model (NPO, IdkDPO)."
        },
    )

    retain_losses: ClassVar[tuple[str, ...]] = ("none", "nll", "kl")
    #: ``field -> (lowest, lowest is allowed, what the value means)``: values the loss cannot mean are refused when
    #: the config is built, not discovered as a run that trains towards the forget set.
    value_ranges: ClassVar[dict[str, tuple[float, bool, str]]] = {
        "forget_weight": (0.0, False, "a weight of 0 or below stops forgetting or trains towards the forget set"),
        "retain_weight": (0.0, True, "a negative weight pushes the model away from the retain set"),
    }

    def __post_init__(self):
        for name, (lowest, inclusive, why) in self.value_ranges.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
                bound = f">= {lowest}" if inclusive else f"> {lowest}"
                raise ValueError(
                    f"{type(self).__name__}.{name}={value} is invalid: it must be finite and {bound} ({why})"
                )
        if self.retain_forward not in ("auto", "separate", "concatenated"):
            raise ValueError(f"retain_forward={self.retain_forward!r}: choose 'auto', 'separate' or 'concatenated'")
        if self.retain_loss not in self.retain_losses:
            raise ValueError(
                f"retain_loss={self.retain_loss!r} is not supported by {type(self).__name__}; choose one of "
                f"{list(self.retain_losses)}"
            )
        super().__post_init__()


class UnlearningTrainer(BaseTrainer):
    """Base class of the unlearning trainers: a `transformers.Trainer` whose train dataset is the forget set.

    Subclasses implement ``compute_forget_loss`` and set the class attributes below.
    """

    config_class: ClassVar[type[UnlearningConfig]] = UnlearningConfig
    method_name: ClassVar[str] = "unlearning"
    #: "tokens" if the forget term is a mean over scored tokens, "sequences" if over sequences (or pairs).
    forget_normalization: ClassVar[str] = "tokens"
    #: whether the forget term itself needs a reference model.
    forget_uses_reference: ClassVar[bool] = False
    #: whether the forget term is one ``forward_logits(model, inputs)`` pass of the forget batch, which
    #: ``retain_forward="concatenated"`` can share with the retain batch.
    plain_forget_forward: ClassVar[bool] = True
    #: columns of reference sequence log-probs that ``precompute_ref_log_probs`` can fill (empty: unsupported).
    ref_log_prob_columns: ClassVar[tuple[str, ...]] = ()
    #: whether the forget set is in the preference format (prompt / chosen / rejected).
    preference: ClassVar[bool] = False
    _tag_names: ClassVar[list[str]] = ["hf_unlearn", "unlearning"]
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str,
        args: UnlearningConfig | TrainingArguments | None = None,
        train_dataset: Dataset | list | None = None,
        retain_dataset: Dataset | list | None = None,
        eval_dataset: Dataset | list | None = None,
        processing_class=None,
        ref_model: PreTrainedModel | nn.Module | None = None,
        peft_config=None,
        data_collator=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model must be a separate model, not the policy itself; leave it None for a copy")
        self._retain_input = retain_dataset
        super().__init__(
            model,
            args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            data_collator=data_collator,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._pairing_collator = self.data_collator
        args = self.args
        uses_reference = self.uses_reference(args)
        if args.precompute_ref_log_probs:
            if not self.ref_log_prob_columns:
                raise ValueError(
                    f"precompute_ref_log_probs is not available for {self.method_name}: its reference enters through "
                    "per-token logits, not sequence log-probs. Set precompute_ref_log_probs=False."
                )
            if args.retain_loss == "kl":
                raise ValueError(
                    "precompute_ref_log_probs cannot cover retain_loss='kl', which needs the reference's full "
                    "distribution at every step; use retain_loss='nll' or precompute_ref_log_probs=False"
                )
        if not uses_reference:
            if ref_model is not None:
                warnings.warn(f"{self.method_name} with these settings uses no reference model; ref_model is ignored")
            ref_model = None
        elif ref_model is None and not self._is_peft:
            # The starting model, frozen. With PEFT the base model with the adapter disabled plays this role.
            ref_model = self._copy_reference(self.model, self._model_id, args)
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
            if args.disable_dropout:
                disable_dropout(ref_model)
        self._uses_reference = uses_reference
        if args.retain_forward == "concatenated" and not self.plain_forget_forward:
            raise ValueError(
                f"{self.method_name} cannot run its forget and retain batches in one pass (its forget term is not one "
                "plain forward of the forget batch): use retain_forward='separate'"
            )
        self._shared_logits: dict[tuple[int, int], torch.Tensor] = {}
        self._concatenate = args.retain_loss != "none" and (
            args.retain_forward == "concatenated" or (args.retain_forward == "auto" and self.plain_forget_forward)
        )
        self._ref_precomputed = False
        self.ref_model = self._prepare_ref_model(ref_model) if ref_model is not None else None

    # ------------------------------------------------------------------ set-up

    def _prepare_datasets(self, train_dataset, eval_dataset, processing_class, args):
        if train_dataset is None:
            raise ValueError("train_dataset (the forget set) is required")
        forget = prepare_dataset(
            train_dataset, processing_class, "train_dataset (forget set)", args.max_length, self.preference,
            args.dataset_num_proc, args.append_eos,
        )
        evaluation = None
        if eval_dataset is not None:
            evaluation = prepare_dataset(
                eval_dataset, processing_class, "eval_dataset", args.max_length, self.preference,
                args.dataset_num_proc, args.append_eos,
            )
        self.retain_dataset = self._prepare_retain(self._retain_input, processing_class, args)
        return forget, evaluation

    @staticmethod
    def _copy_reference(model: nn.Module, model_id: str, args: UnlearningConfig) -> nn.Module:
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            # Under ZeRO-3 the loaded weights are already partitioned: a deep copy would copy empty shards.
            if not model_id:
                raise ValueError(
                    "under DeepSpeed ZeRO-3 the reference model is loaded from the model's path, and this model has "
                    "none: pass ref_model=..., load the model from a path, or use peft_config"
                )
            from trl.trainer.utils import create_model_from_path

            return create_model_from_path(model_id, **(args.model_init_kwargs or {}))
        return copy.deepcopy(underlying_model(model))

    @classmethod
    def uses_reference(cls, args: UnlearningConfig) -> bool:
        """Whether the method with these settings needs a reference model."""
        return cls.forget_uses_reference or args.retain_loss == "kl"

    def _prepare_retain(self, retain_dataset, processing_class, args) -> Dataset | None:
        if args.retain_loss == "none":
            if retain_dataset is not None:
                warnings.warn(
                    "retain_dataset is given but retain_loss='none', so it is not used; set retain_loss to use it"
                )
            return None
        if retain_dataset is None:
            raise ValueError(
                f"retain_loss={args.retain_loss!r} needs a retain_dataset: pass retain_dataset=... or set "
                "retain_loss='none'"
            )
        return prepare_dataset(
            retain_dataset, processing_class, "retain_dataset", args.max_length, False, args.dataset_num_proc,
            args.append_eos,
        )

    def _prepare_ref_model(self, ref_model: nn.Module) -> nn.Module:
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            groups = ("", "chosen_", "rejected_")
            self._signature_columns = [
                f"{g}{k}" for g in groups for k in ("input_ids", "attention_mask", "labels")
            ] + [INDEX_COLUMN, *self.ref_log_prob_columns]

    # ------------------------------------------------------------------ reference model

    @contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The reference model, in eval mode and without gradients (the base model when training a PEFT adapter)."""
        if self.ref_model is not None:
            with torch.no_grad():
                yield self.ref_model
        elif self._is_peft and self._uses_reference and not self._ref_precomputed:
            with torch.no_grad(), unwrap_model_with_adapter(self.model).disable_adapter():
                yield self.model
        else:
            raise RuntimeError(f"{self.method_name} has no reference model at this point")

    def _drop_reference(self) -> None:
        self.ref_model = None
        self._ref_precomputed = True
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def reference_sequence_log_probs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference sequence log-probs for the columns of ``ref_log_prob_columns`` (override per method)."""
        raise NotImplementedError(f"{self.method_name} does not use precomputed reference log-probs")

    def _precompute_reference(self, dataset: Dataset, name: str) -> Dataset:
        if all(c in dataset.column_names for c in self.ref_log_prob_columns):
            return dataset
        columns = [c for c in dataset.column_names if c in self._signature_columns_or_default()]
        loader = DataLoader(
            dataset.select_columns(columns),
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        index_parts, value_parts = [], defaultdict(list)
        from tqdm.auto import tqdm

        for batch in tqdm(
            loader,
            desc=f"Reference log-probs ({name})",
            disable=self.args.disable_tqdm or not self.is_local_process_zero(),
        ):
            batch = self._prepare_inputs(batch)
            values = self.reference_sequence_log_probs(batch)
            index_parts.append(self.accelerator.gather_for_metrics(batch[INDEX_COLUMN]).cpu())
            for key in self.ref_log_prob_columns:
                value_parts[key].append(self.accelerator.gather_for_metrics(values[key].float()).cpu())
        order = torch.cat(index_parts)
        for key in self.ref_log_prob_columns:
            by_index = torch.empty(len(dataset))
            by_index[order] = torch.cat(value_parts[key])
            position = torch.as_tensor(dataset[INDEX_COLUMN])
            dataset = dataset.add_column(key, by_index[position].tolist())
        return dataset

    def _signature_columns_or_default(self) -> list[str]:
        self._set_signature_columns_if_needed()
        return self._signature_columns

    def _maybe_precompute(self) -> None:
        if not self.args.precompute_ref_log_probs or self._ref_precomputed:
            return
        self.train_dataset = self._precompute_reference(self.train_dataset, "forget set")
        if isinstance(self.eval_dataset, Dataset):
            self.eval_dataset = self._precompute_reference(self.eval_dataset, "eval set")
        self._drop_reference()

    def get_train_dataloader(self) -> DataLoader:
        self._maybe_precompute()
        return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        self._maybe_precompute()
        return super().get_eval_dataloader(eval_dataset)

    # ------------------------------------------------------------------ batches

    def _attach_retain(self, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
        if self.retain_dataset is None or "retain" in batch:
            return batch
        indices = retain_indices(
            batch[INDEX_COLUMN].tolist(),
            len(self.retain_dataset),
            self.args.seed,
            self.accelerator.process_index,
            epoch,
        )
        rows = self.retain_dataset[indices]
        keys = [k for k in ("input_ids", "attention_mask", "labels") if k in rows]
        features = [{k: rows[k][i] for k in keys} for i in range(len(indices))]
        return {**batch, "retain": self._pairing_collator(features)}

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples = []
        epoch = math.floor(self.state.epoch or 0)
        for _ in range(num_batches):
            try:
                batch_samples.append(self._attach_retain(next(epoch_iterator), epoch))
            except StopIteration:
                break
        return batch_samples, self._count_items(batch_samples, device)

    def _count_items(self, batch_samples: list[dict], device) -> dict[str, torch.Tensor] | None:
        """Scored forget/retain tokens and sequences over all micro-batches of the optimizer step (and ranks)."""
        if not batch_samples:
            return None
        counts = torch.zeros(len(COUNT_KEYS), dtype=torch.float64)
        for batch in batch_samples:
            counts += torch.tensor(self._micro_counts(batch), dtype=torch.float64)
        counts = counts.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        return dict(zip(COUNT_KEYS, counts))

    def _micro_counts(self, batch: dict[str, Any]) -> tuple[float, float, float, float]:
        labels = batch["rejected_labels"] if self.preference else batch["labels"]
        forget_tokens = float((labels[:, 1:] != losses.IGNORE_INDEX).sum())
        retain = batch.get("retain")
        retain_tokens = float((retain["labels"][:, 1:] != losses.IGNORE_INDEX).sum()) if retain else 0.0
        return (
            forget_tokens,
            float(labels.shape[0]),
            retain_tokens,
            float(retain["labels"].shape[0]) if retain else 0.0,
        )

    def _share(self, micro_count: float, counts: dict | None, key: str) -> float:
        """Fraction of the step's mean that this micro-batch's mean stands for."""
        if counts is None:
            return 1.0
        total = float(counts[key])
        if total == 0:
            return 0.0
        world = self.args.world_size if (self.args.average_tokens_across_devices and self.args.world_size > 1) else 1
        return micro_count / total * world

    # ------------------------------------------------------------------ forward passes

    def forward_logits(self, model: nn.Module, batch: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        """Logits of ``model`` on ``batch[prefix + "input_ids"]`` (from the step's concatenated pass, if it ran)."""
        # Under no_grad (a reference pass, also PEFT's adapter-disabled one on the same module) never a shared one.
        if torch.is_grad_enabled():
            shared = self._shared_logits.pop((id(model), id(batch[f"{prefix}input_ids"])), None)
            if shared is not None:
                return shared
        return model(
            input_ids=batch[f"{prefix}input_ids"], attention_mask=batch[f"{prefix}attention_mask"], use_cache=False
        ).logits

    def compute_forget_loss(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The method's forget term as a mean over this micro-batch, and metrics to log."""
        raise NotImplementedError

    def compute_retain_loss(self, model: nn.Module, retain: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """The retain term (``nll`` or ``kl``) as a mean over this micro-batch's scored retain tokens."""
        logits = self.forward_logits(model, retain)
        log_probs, mask = losses.token_log_probs(logits, retain["labels"])
        nll = -losses.masked_mean(log_probs, mask)
        if self.args.retain_loss == "nll":
            return nll, {"retain_nll": nll}
        with self.reference() as ref:
            ref_logits = self.forward_logits(ref, retain)
        return losses.kl_divergence(logits, ref_logits, retain["labels"]), {"retain_nll": nll}

    def retain_normalization(self) -> str:
        return "tokens"

    def _share_forward(self, model: nn.Module, forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor]):
        """One forward pass over the forget and the retain batch, right-padded to the same width; each batch's
        logits are then served to its own ``forward_logits`` call. Causal attention with the padding masked out
        makes every real position's logits those of its own batch's pass."""
        width = max(forget["input_ids"].shape[1], retain["input_ids"].shape[1])
        pad = padding_id(self.processing_class) if self.processing_class is not None else 0

        def padded(batch, key, value):
            return F.pad(batch[key], (0, width - batch[key].shape[1]), value=value)

        logits = model(
            input_ids=torch.cat([padded(forget, "input_ids", pad), padded(retain, "input_ids", pad)]),
            attention_mask=torch.cat([padded(forget, "attention_mask", 0), padded(retain, "attention_mask", 0)]),
            use_cache=False,
        ).logits
        rows = forget["input_ids"].shape[0]
        self._shared_logits = {
            (id(model), id(forget["input_ids"])): logits[:rows, : forget["input_ids"].shape[1]],
            (id(model), id(retain["input_ids"])): logits[rows:, : retain["input_ids"].shape[1]],
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if self._concatenate and torch.is_grad_enabled():
            self._share_forward(model, inputs, inputs["retain"])
        try:
            return self._compute_loss(model, inputs, mode, return_outputs, num_items_in_batch)
        finally:
            self._shared_logits = {}

    def _compute_loss(self, model, inputs, mode, return_outputs, num_items_in_batch):
        forget_loss, metrics = self.compute_forget_loss(model, inputs)
        micro = dict(zip(COUNT_KEYS, self._micro_counts(inputs)))
        forget_key = f"forget_{self.forget_normalization}"
        loss = self.args.forget_weight * forget_loss * self._share(micro[forget_key], num_items_in_batch, forget_key)
        metrics = {"forget_loss": forget_loss, **metrics}
        if self.args.retain_loss != "none":
            retain_loss, retain_metrics = self.compute_retain_loss(model, inputs["retain"])
            retain_key = f"retain_{self.retain_normalization()}"
            loss = loss + self.args.retain_weight * retain_loss * self._share(
                micro[retain_key], num_items_in_batch, retain_key
            )
            metrics.update({"retain_loss": retain_loss, **retain_metrics})
        if mode == "train":
            self._check_finite(loss, metrics)
        self._record(mode, metrics)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(self._attach_retain(inputs, epoch=0))
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def unwrap_model_with_adapter(model: nn.Module) -> nn.Module:
    """Strip DDP/FSDP wrappers but keep the PEFT model (which owns ``disable_adapter``)."""
    while isinstance(getattr(model, "module", None), nn.Module) and not is_peft_model(model):
        model = model.module
    return model
