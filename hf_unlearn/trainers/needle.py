"""Needle (ConceptVectors, Hong et al. 2024): ablate the concept vector(s), then run gradient ascent on the forget
text with the concept vector(s) as the only parameters that train.

A concept vector ``(L, j)`` is value vector ``j`` of layer ``L``'s MLP output projection (column ``j`` of
``W_down``; row ``j`` of GPT-2's transposed ``Conv1D``). How it trains, and why:

* One ``nn.Parameter`` per vector, in a container attached to the model only while ``train()`` runs, every other
  weight frozen: the Trainer's optimizer, clipping, ``grad_norm`` and DDP see exactly the vectors.
* A forward hook adds ``c_j(x)·(v_j - v_j.detach())`` (exactly zero) to the MLP output, so the forward pass is
  bit-identical and ``v_j`` gets the gradient column ``j`` of the weight would get.
* The weight column is the single source of truth: optimizer pre/post-step hooks copy it into the parameter and
  back, so checkpoints are plain models, resume is exact, and weight decay acts on the whole vector (as AdamW on
  ``W_down`` did in the reference) while every other weight stays bit-identical. DeepSpeed and FSDP are refused.
* Ablation happens once, in place, when the trainer is built (after a reference copy): ``"noise"`` (seeded, the
  same draw as :func:`~hf_unlearn.concepts.ablate_concept_vectors`), ``"zero"``, ``"mean"`` or ``"none"``.
"""

from __future__ import annotations

import json
import numbers
import operator
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import losses
from ..architectures import decoder_layers, is_peft_model, mlp_out_module, underlying_model, value_vectors_view
from ..concepts.ablation import ablate_concept_vectors
from ..concepts.records import ConceptVector
from .unlearning import UnlearningConfig, UnlearningTrainer

#: attribute under which the trained vectors are attached to the model while ``train()`` runs.
NEEDLE_MODULE = "hf_unlearn_needle"
ABLATIONS = ("noise", "zero", "mean", "none")


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy integer
        except TypeError:
            pass
    raise ValueError(f"{what} must be an integer, got {value!r}")


def _parse_string(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"concept_vectors={text!r} is not valid JSON: {error}") from None
    pairs = [p for p in re.split(r"[\s,;]+", text) if p]
    out = []
    for pair in pairs:
        parts = pair.split(":")
        if len(parts) != 2:
            raise ValueError(
                f"concept_vectors={text!r}: {pair!r} is not 'layer:dim'; write e.g. '20:10513,21:398' or the JSON "
                "'[[20, 10513], [21, 398]]'"
            )
        out.append([_as_int(parts[0], f"the layer of {pair!r}"), _as_int(parts[1], f"the dim of {pair!r}")])
    return out


def _is_location(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value)
    )


def normalize_concept_vectors(vectors: Any, source: str = "concept_vectors") -> list[tuple[int, int]]:
    """``(layer, dim)`` pairs from ``ConceptVector`` records, ``(layer, dim)`` pairs (one or a list) or a string.

    Strings (the command line) are JSON (``"[[20, 10513], [21, 398]]"``) or ``"20:10513,21:398"``. Raises
    ``ValueError`` for an empty selection, a malformed entry, a negative index or a vector listed twice.
    """
    if isinstance(vectors, str):
        vectors = _parse_string(vectors)
    if isinstance(vectors, ConceptVector) or _is_location(vectors):
        vectors = [vectors]
    if not isinstance(vectors, Iterable):
        raise ValueError(f"{source} must be a list of (layer, dim) pairs or ConceptVector records, got {vectors!r}")
    locations: list[tuple[int, int]] = []
    for entry in vectors:
        if isinstance(entry, ConceptVector):
            layer, dim = entry.location
        elif isinstance(entry, (tuple, list)) and len(entry) == 2:
            layer, dim = entry
        else:
            raise ValueError(
                f"{source}: {entry!r} is not a (layer, dim) pair or a ConceptVector; write e.g. [[20, 10513]]"
            )
        layer = _as_int(layer, f"{source}: the layer of {entry!r}")
        dim = _as_int(dim, f"{source}: the dim of {entry!r}")
        if layer < 0 or dim < 0:
            raise ValueError(f"{source}: ({layer}, {dim}) has a negative index; layers and dims count from 0")
        if (layer, dim) in locations:
            raise ValueError(f"{source}: the concept vector ({layer}, {dim}) is listed twice")
        locations.append((layer, dim))
    if not locations:
        raise ValueError(f"{source} is empty: Needle needs at least one concept vector (layer, dim) to train")
    return locations


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


class _NeedleVectors(nn.Module):
    """The trained copies of the concept vectors. Attached to the model only while it trains, and invisible to
    ``state_dict()`` / ``load_state_dict()`` so checkpoints stay plain models."""

    def __init__(self, columns: list[torch.Tensor]):
        super().__init__()
        self.vectors = nn.ParameterList([nn.Parameter(c.detach().clone()) for c in columns])
        self.register_state_dict_post_hook(_hide_from_state_dict)
        self.register_load_state_dict_post_hook(_not_missing)


def _hide_from_state_dict(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _not_missing(module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not (k.startswith(f"{NEEDLE_MODULE}.") or f".{NEEDLE_MODULE}." in k)]


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
        self._hook_handles: list = []
        self._container: _NeedleVectors | None = None
        self._input_grads_enabled = False
        self._hooked_optimizer = None
        self._requires_grad: dict[str, bool] = {}
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
        self._requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
        base.requires_grad_(False)

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
        model = underlying_model(self.model)
        return [value_vectors_view(model, layer)[:, dim] for layer, dim in self._locations]

    # ------------------------------------------------------------------ training

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None):
        self._attach()
        try:
            return super().train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )
        finally:
            self._detach()

    def _attach(self) -> None:
        model = underlying_model(self.model)
        model.requires_grad_(False)
        columns = self._columns()
        if self._container is None:
            self._container = _NeedleVectors(columns)
        else:
            with torch.no_grad():
                for param, column in zip(self._container.vectors, columns):
                    if param.device != column.device:
                        param.data = param.data.to(column.device)
                    param.copy_(column)
        model.add_module(NEEDLE_MODULE, self._container)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for index, (layer, dim) in enumerate(self._locations):
            by_layer.setdefault(layer, []).append((index, dim))
        for layer, entries in by_layer.items():
            module = mlp_out_module(model, layer)
            self._hook_handles.append(module.register_forward_hook(self._make_hook(entries)))

    def _make_hook(self, entries: list[tuple[int, int]]):
        indices = [index for index, _ in entries]
        dims = [dim for _, dim in entries]

        def hook(module, inputs, output):
            vectors = torch.stack([self._container.vectors[i] for i in indices])  # (k, d_model)
            # Exactly zero in value; d/d(vectors) = coefficients^T · d/d(output), as column dims of the weight.
            zero = (vectors - vectors.detach()).to(output.dtype)
            coefficients = inputs[0][..., dims].detach().to(output.dtype)
            return output + coefficients @ zero

        return hook

    def _detach(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        model = underlying_model(self.model)
        if NEEDLE_MODULE in model._modules:
            delattr(model, NEEDLE_MODULE)
        if self._input_grads_enabled:
            model.disable_input_require_grads()
            self._input_grads_enabled = False
        if self._container is not None:
            for param in self._container.vectors:
                param.grad = None
        for name, param in model.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, param.requires_grad))

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        raw = getattr(optimizer, "optimizer", optimizer)  # under an accelerate wrapper after a first train()
        trained = {id(p) for group in raw.param_groups for p in group["params"]}
        if self._container is None or trained != {id(p) for p in self._container.vectors}:
            raise RuntimeError(
                "NeedleTrainer: the optimizer must hold exactly the concept vectors; another parameter requires grad "
                "or the optimizer was built elsewhere"
            )
        model = underlying_model(self.model)
        if self.args.gradient_checkpointing and not getattr(model, "_require_grads_hooks", None):
            # Reentrant checkpointing only back-propagates through a layer whose inputs require grad. transformers
            # already does this when it enables checkpointing for a model fed `input_ids` (just before this call).
            model.enable_input_require_grads()
            self._input_grads_enabled = True
        if raw is not self._hooked_optimizer:
            raw.register_step_pre_hook(self._pull_columns)
            raw.register_step_post_hook(self._push_columns)
            self._hooked_optimizer = raw
        return optimizer

    @torch.no_grad()
    def _pull_columns(self, *_) -> None:
        """Before each update: the weight column is the truth (it may have been loaded from a checkpoint)."""
        for param, column in zip(self._container.vectors, self._columns()):
            param.copy_(column)

    @torch.no_grad()
    def _push_columns(self, *_) -> None:
        """After each update: write the vectors into the weights, so the live model is always the current model."""
        for param, column in zip(self._container.vectors, self._columns()):
            column.copy_(param)

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
