"""Train chosen value vectors (columns of MLP output projections) as the only parameters of a model.

How, and why:

* One ``nn.Parameter`` per vector, in a container attached to the model only while training runs, every other weight
  frozen: the Trainer's optimizer, clipping, ``grad_norm`` and DDP see exactly the vectors.
* A forward hook adds ``c_j(x)·(v_j - v_j.detach())`` (exactly zero) to the MLP output, so the forward pass is
  bit-identical and ``v_j`` gets the gradient that column ``j`` of the weight would get.
* The weight column is the single source of truth: optimizer pre/post-step hooks copy it into the parameter and
  back, so checkpoints are plain models, resume is exact, and weight decay acts on the whole vector while every other
  weight stays bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import mlp_out_module, underlying_model, value_vectors_view

#: attribute under which the trained vectors are attached to the model while it trains.
COLUMNS_MODULE = "hf_unlearn_needle"


class _TrainedColumns(nn.Module):
    """The trained copies of the vectors: invisible to ``state_dict()`` / ``load_state_dict()`` so checkpoints stay
    plain models."""

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
    missing[:] = [k for k in missing if not (k.startswith(f"{COLUMNS_MODULE}.") or f".{COLUMNS_MODULE}." in k)]


class ColumnTraining:
    """The value vectors at ``locations`` (``(layer, dim)``) as the only trainable parameters of ``model``.

    Example:
        >>> columns = ColumnTraining(model, [(20, 10513)]); columns.attach()
        >>> optimizer = torch.optim.AdamW(columns.parameters()); columns.sync_with(optimizer)  # ... train ...
    """

    def __init__(self, model: nn.Module, locations: list[tuple[int, int]]):
        """Freezes every weight of ``model`` at once; :meth:`detach` gives them their ``requires_grad`` back."""
        self.model = model
        self.locations = list(locations)
        self._container: _TrainedColumns | None = None
        self._handles: list = []
        self._input_grads_enabled = False
        self._synced_optimizer = None
        base = underlying_model(model)
        self._requires_grad = {name: p.requires_grad for name, p in base.named_parameters()}
        base.requires_grad_(False)

    def columns(self) -> list[torch.Tensor]:
        """Views of the vectors inside the model's weights (a column, or a row of GPT-2's transposed ``Conv1D``)."""
        base = underlying_model(self.model)
        return [value_vectors_view(base, layer)[:, dim] for layer, dim in self.locations]

    def parameters(self) -> list[nn.Parameter]:
        return [] if self._container is None else list(self._container.vectors)

    def attach(self) -> None:
        """Attach the vectors' parameters (synchronised with the weights) and their hooks; every weight frozen."""
        base = underlying_model(self.model)
        base.requires_grad_(False)
        columns = self.columns()
        if self._container is None:
            self._container = _TrainedColumns(columns)
        else:
            with torch.no_grad():
                for param, column in zip(self._container.vectors, columns):
                    if param.device != column.device:
                        param.data = param.data.to(column.device)
                    param.copy_(column)
        base.add_module(COLUMNS_MODULE, self._container)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for index, (layer, dim) in enumerate(self.locations):
            by_layer.setdefault(layer, []).append((index, dim))
        for layer, entries in by_layer.items():
            self._handles.append(mlp_out_module(base, layer).register_forward_hook(self._hook(entries)))

    def _hook(self, entries: list[tuple[int, int]]):
        indices = [index for index, _ in entries]
        dims = [dim for _, dim in entries]

        def hook(module, inputs, output):
            vectors = torch.stack([self._container.vectors[i] for i in indices])  # (k, d_model)
            # Exactly zero in value; d/d(vectors) = coefficients^T · d/d(output), as column dims of the weight.
            zero = (vectors - vectors.detach()).to(output.dtype)
            coefficients = inputs[0][..., dims].detach().to(output.dtype)
            return output + coefficients @ zero

        return hook

    def detach(self) -> None:
        """Remove the hooks and the parameters; every weight gets its ``requires_grad`` back."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        base = underlying_model(self.model)
        if COLUMNS_MODULE in base._modules:
            delattr(base, COLUMNS_MODULE)
        if self._input_grads_enabled:
            base.disable_input_require_grads()
            self._input_grads_enabled = False
        for param in self.parameters():
            param.grad = None
        for name, param in base.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, param.requires_grad))

    def sync_with(self, optimizer: torch.optim.Optimizer, gradient_checkpointing: bool = False) -> None:
        """Check that ``optimizer`` holds exactly the vectors, and copy weight → parameter before each step and back
        after it."""
        raw = getattr(optimizer, "optimizer", optimizer)  # under an accelerate wrapper after a first train()
        trained = {id(p) for group in raw.param_groups for p in group["params"]}
        if self._container is None or trained != {id(p) for p in self._container.vectors}:
            raise RuntimeError(
                "the optimizer must hold exactly the trained columns; another parameter requires grad or the "
                "optimizer was built elsewhere"
            )
        base = underlying_model(self.model)
        if gradient_checkpointing and not getattr(base, "_require_grads_hooks", None):
            # Reentrant checkpointing only back-propagates through a layer whose inputs require grad. transformers
            # already does this when it enables checkpointing for a model fed `input_ids`.
            base.enable_input_require_grads()
            self._input_grads_enabled = True
        if raw is not self._synced_optimizer:
            raw.register_step_pre_hook(self._pull)
            raw.register_step_post_hook(self._push)
            self._synced_optimizer = raw

    @torch.no_grad()
    def _pull(self, *_) -> None:
        """Before each update: the weight column is the truth (it may have been loaded from a checkpoint)."""
        for param, column in zip(self._container.vectors, self.columns()):
            param.copy_(column)

    @torch.no_grad()
    def _push(self, *_) -> None:
        """After each update: write the vectors into the weights, so the live model is always the current model."""
        for param, column in zip(self._container.vectors, self.columns()):
            column.copy_(param)
