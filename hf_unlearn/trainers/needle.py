"""Needle (ConceptVectors, Hong et al. 2024): ablate the concept vector(s), then run gradient ascent on the forget
text with the concept vector(s) as the only parameters that train.

A concept vector ``(L, j)`` is value vector ``j`` of layer ``L``'s MLP output projection (column ``j`` of
``W_down``; row ``j`` of GPT-2's transposed ``Conv1D``). The vectors train as the only parameters through
:class:`~hf_unlearn.trainers.column_training.ColumnTraining` (checkpoints stay plain models, weight decay acts on the
whole vector as AdamW on ``W_down`` did in the reference; DeepSpeed and FSDP are refused). Ablation happens once, in
place, when the trainer is built (after a reference copy): ``"noise"`` (seeded, the same draw as
:func:`~hf_unlearn.concepts.ablate_concept_vectors`), ``"zero"``, ``"mean"`` or ``"none"``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import losses
from ..architectures import decoder_layers, is_peft_model, underlying_model, value_vectors_view
from ..concepts.ablation import ABLATIONS as CONCEPT_ABLATIONS
from ..concepts.ablation import ablate_concept_vectors
from ..concepts.records import normalize_concept_vectors
from .column_training import COLUMNS_MODULE, ColumnTraining
from .unlearning import UnlearningConfig, UnlearningTrainer

#: attribute under which the trained vectors are attached to the model while ``train()`` runs.
NEEDLE_MODULE = COLUMNS_MODULE
#: the ablations of :mod:`hf_unlearn.concepts.ablation`, or none (train the vectors as they are).
ABLATIONS = (*CONCEPT_ABLATIONS, "none")


@dataclass
class NeedleConfig(UnlearningConfig):
    r"""
    Configuration class for the [`NeedleTrainer`].

    Needle ablates the concept vector(s), then minimises ``-γ · CE_θ(forget)`` (plus an optional retain term) where
    the concept vector(s) are the only trainable parameters. Defaults follow the ConceptVectors scripts: learning
    rate 0.2 (large because one vector of norm ≈ 1 has to move far), 1 epoch, AdamW with weight decay 0.01 (applied
    to the concept vectors only), no retain term. The scripts also use a batch of 4 with 8 accumulation steps and
    ``warmup_steps`` = the steps of one epoch; set those explicitly for parity.

    Parameters:
        concept_vectors (`list[list[int]]`, `str` or `None`, *optional*, defaults to `None`):
            The concept vectors to ablate and train, as ``[[layer, dim], ...]`` (``dim`` is the index of the value
            vector in the MLP output projection, i.e. the ``Dim`` of a ConceptVectors record). On the command line:
            ``--concept_vectors 20:10513,21:398`` or ``--concept_vectors "[[20, 10513], [21, 398]]"``. May be left
            `None` when the trainer gets ``vectors=``.
        ablation (`str`, *optional*, defaults to `"noise"`):
            How the vectors are ablated before training: `"noise"` (add i.i.d. ``N(0, σ²)``, ConceptVectors),
            `"zero"`, `"mean"` (the mean value vector of the layer) or `"none"` (train the vector as it is).
        ablation_sigma (`float`, *optional*, defaults to `0.1`):
            Standard deviation σ of the noise.
        ablation_seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the noise; `None` uses `seed`.
        learning_rate (`float`, *optional*, defaults to `0.2`):
            Learning rate of the concept vectors (ConceptVectors scripts).
        num_train_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs over the forget set.
        weight_decay (`float`, *optional*, defaults to `0.01`):
            Decoupled weight decay of the concept vectors (no other weight is in the optimizer).
        retain_loss (`str`, *optional*, defaults to `"none"`):
            Retain term: `"none"` (the reference), `"nll"` or `"kl"` (to the original, unablated model).
    """

    concept_vectors: list[list[int]] | str | None = field(
        default=None,
        metadata={
            "help": "Concept vectors to ablate and train, as [[layer, dim], ...]; on the command line "
            "'20:10513,21:398' or the JSON '[[20, 10513], [21, 398]]'."
        },
    )
    ablation: str = field(
        default="noise",
        metadata={"help": "Ablation before training: 'noise' (add N(0, sigma^2)), 'zero', 'mean' or 'none'."},
    )
    ablation_sigma: float = field(default=0.1, metadata={"help": "Standard deviation of the ablation noise."})
    ablation_seed: int | None = field(
        default=None, metadata={"help": "Seed of the ablation noise (default: the training seed)."}
    )
    learning_rate: float = field(
        default=0.2, metadata={"help": "Learning rate of the concept vectors (ConceptVectors scripts: 0.2)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the forget set."})
    weight_decay: float = field(
        default=0.01, metadata={"help": "Weight decay of the concept vectors (no other weight is trained)."}
    )
    retain_loss: str = field(
        default="none", metadata={"help": "Retain term: 'none' (Needle as published), 'nll' or 'kl'."}
    )

    def __post_init__(self):
        if self.concept_vectors is not None:
            self.concept_vectors = [list(loc) for loc in normalize_concept_vectors(self.concept_vectors)]
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation={self.ablation!r}: choose one of {list(ABLATIONS)}")
        if not self.ablation_sigma >= 0:
            raise ValueError(f"ablation_sigma must be >= 0 (got {self.ablation_sigma})")
        super().__post_init__()

    @property
    def resolved_ablation_seed(self) -> int:
        return self.seed if self.ablation_seed is None else self.ablation_seed


class NeedleTrainer(UnlearningTrainer):
    """Needle: ablate the concept vector(s), then gradient ascent on the forget text training only those vectors.

    Every other weight is bit-identical after training (weight decay included). See the module docstring for how.

    Example:
        >>> trainer = NeedleTrainer(model, NeedleConfig(concept_vectors=[[20, 10513]]), train_dataset=forget_chunks)
        >>> trainer.train()  # `model` now holds the trained vector; save it with trainer.save_model()
    """

    config_class = NeedleConfig
    method_name = "needle"
    forget_normalization = "tokens"
    _tag_names = ["hf_unlearn", "unlearning", "needle"]

    def __init__(
        self,
        model,
        args: NeedleConfig | None = None,
        train_dataset=None,
        retain_dataset=None,
        eval_dataset=None,
        processing_class=None,
        ref_model=None,
        peft_config=None,
        data_collator=None,
        callbacks=None,
        optimizers=(None, None),
        vectors: Any = None,
    ):
        """``vectors``: the concept vectors as ``ConceptVector`` records or ``(layer, dim)`` pairs (one or a list),
        instead of or in addition to ``args.concept_vectors`` (both must then name the same vectors)."""
        if peft_config is not None:
            raise ValueError("Needle trains the concept-vector columns of the weights directly: pass peft_config=None")
        if optimizers is not None and optimizers[0] is not None:
            raise ValueError(
                "Needle builds its optimizer over the concept vectors only: pass optimizers=(None, None) and choose "
                "the optimizer with args.optim / args.optim_args"
            )
        self._vectors_arg = vectors
        self._trained: ColumnTraining | None = None
        self._ablation_logged = False
        super().__init__(
            model,
            args,
            train_dataset=train_dataset,
            retain_dataset=retain_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            ref_model=ref_model,
            peft_config=None,
            data_collator=data_collator,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("Needle trains a few vectors: run it without DeepSpeed or FSDP (DDP works)")
        self._ablate()

    # ------------------------------------------------------------------ set-up

    @property
    def concept_vectors(self) -> list[tuple[int, int]]:
        """The trained vectors as ``(layer, dim)``, in optimizer-parameter order."""
        return list(self._locations)

    def _configure_model(self, model: nn.Module, args: NeedleConfig) -> None:
        if is_peft_model(model):
            raise ValueError("Needle trains the concept-vector columns of the weights directly: pass a plain model")
        if args.deepspeed or args.fsdp:
            raise ValueError("Needle trains a few vectors: run it without DeepSpeed or FSDP (DDP works)")
        locations = self._resolve_locations(args)
        base = underlying_model(model)
        num_layers = len(decoder_layers(base))
        for layer, dim in locations:
            if not layer < num_layers:
                raise ValueError(
                    f"concept vector ({layer}, {dim}): layer {layer} does not exist, the model has {num_layers} "
                    f"decoder layers (0-{num_layers - 1})"
                )
            size = value_vectors_view(base, layer).shape[1]
            if not dim < size:
                raise ValueError(
                    f"concept vector ({layer}, {dim}): dim {dim} does not exist, layer {layer}'s MLP output "
                    f"projection has {size} value vectors (0-{size - 1})"
                )
        self._locations = locations
        # Recorded in the saved training arguments, so a checkpoint says which vectors it trained.
        args.concept_vectors = [list(loc) for loc in locations]
        self._trained = ColumnTraining(model, locations)

    def _resolve_locations(self, args: NeedleConfig) -> list[tuple[int, int]]:
        from_args = None if args.concept_vectors is None else normalize_concept_vectors(args.concept_vectors)
        from_kwarg = None if self._vectors_arg is None else normalize_concept_vectors(self._vectors_arg, "vectors")
        if from_args is None and from_kwarg is None:
            raise ValueError(
                "Needle needs at least one concept vector: set NeedleConfig(concept_vectors=[[layer, dim], ...]) or "
                "pass vectors=[ConceptVector or (layer, dim), ...]"
            )
        if from_args is not None and from_kwarg is not None and from_args != from_kwarg:
            raise ValueError(
                f"args.concept_vectors={[list(v) for v in from_args]} and vectors={[list(v) for v in from_kwarg]} "
                "name different concept vectors: give them in one place"
            )
        return from_kwarg if from_kwarg is not None else from_args

    def _ablate(self) -> None:
        model = underlying_model(self.model)
        args = self.args
        if args.ablation != "none":
            done = getattr(model, "_hf_unlearn_needle_ablated", set())
            again = sorted(set(self._locations) & done)
            if again:
                warnings.warn(
                    f"concept vectors {again} of this model were already ablated by an earlier NeedleTrainer; "
                    f"ablating them again ({args.ablation!r}) discards what they hold. To continue training them, "
                    "pass ablation='none'."
                )
            model._hf_unlearn_needle_ablated = done | set(self._locations)
            with ablate_concept_vectors(
                model, self._locations, args.ablation, args.ablation_sigma, args.resolved_ablation_seed
            ):
                ablated = [column.clone() for column in self._columns()]
            with torch.no_grad():
                for column, value in zip(self._columns(), ablated):
                    column.copy_(value)
        # The starting point of the training, for the logged distance ``delta_norm``.
        self._start = [column.detach().clone() for column in self._columns()]

    def _columns(self) -> list[torch.Tensor]:
        """Views of the concept vectors inside the model's weights (column or, for Conv1D, row)."""
        return self._trained.columns()

    # ------------------------------------------------------------------ training

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None):
        self._trained.attach()
        try:
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )
        finally:
            self._trained.detach()

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        try:
            self._trained.sync_with(optimizer, self.args.gradient_checkpointing)
        except RuntimeError as error:
            raise RuntimeError(f"NeedleTrainer: {error}") from None
        return optimizer

    # ------------------------------------------------------------------ loss and logs

    def compute_forget_loss(self, model, inputs):
        nll = losses.token_nll(self.forward_logits(model, inputs), inputs["labels"])
        return -nll, {"forget_nll": nll, **self._delta_norms()}

    @torch.no_grad()
    def _delta_norms(self) -> dict[str, torch.Tensor]:
        norms = [
            (column.float() - start.to(column.device).float()).norm()
            for column, start in zip(self._columns(), self._start)
        ]
        metrics = {"delta_norm": torch.stack(norms).pow(2).sum().sqrt()}
        if len(norms) > 1:
            metrics.update({f"delta_norm_{layer}_{dim}": n for (layer, dim), n in zip(self._locations, norms)})
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs and not self._ablation_logged and self.args.ablation == "noise":
            logs = {**logs, "ablation_seed": self.args.resolved_ablation_seed}
            self._ablation_logged = True
        super().log(logs, start_time)


__all__ = ["NeedleConfig", "NeedleTrainer", "normalize_concept_vectors"]
