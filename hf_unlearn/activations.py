"""Record and overwrite per-layer activations at three sites, with hooks that are always removed: the one place
that captures what a layer computes (the dissection experiments, RMU's steering target).

Sites (resolved through the architecture adapters):

* ``"mlp"``: the MLP coefficients, i.e. the *input* of the MLP output projection, ``(B, T, d_ff)``;
* ``"attn"``: the output of the attention output projection, before the residual add, ``(B, T, d_model)``;
* ``"residual"``: the output of the decoder layer (the residual stream after the layer), ``(B, T, d_model)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .architectures import attn_out_module, decoder_layers, mlp_out_module

SITES = ("mlp", "attn", "residual")


def _check_site(site: str) -> None:
    if site not in SITES:
        raise ValueError(f"site={site!r}: choose one of {SITES}")


def _site_module(model: nn.Module, site: str, layer: int) -> nn.Module:
    if site == "mlp":
        return mlp_out_module(model, layer)
    if site == "attn":
        return attn_out_module(model, layer)
    return decoder_layers(model)[layer]


def _register(model: nn.Module, site: str, layer: int, pre_hook, post_hook):
    """The MLP coefficients are the *input* of the output projection (pre-hook); the other sites are outputs."""
    module = _site_module(model, site, layer)
    if site == "mlp":
        return module.register_forward_pre_hook(pre_hook)
    return module.register_forward_hook(post_hook)


@contextmanager
def _registered(model: nn.Module, site: str, hooks: dict[int, tuple]) -> Iterator[None]:
    """Each layer's ``(pre_hook, post_hook)`` on its site module for the block; removed on exit, also on error."""
    handles = []
    try:
        for layer, (pre_hook, post_hook) in hooks.items():
            handles.append(_register(model, site, layer, pre_hook, post_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _select(tensor: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    return tensor if positions is None else tensor[positions]


class StopForward(Exception):
    """Raised by :func:`record_activations` with ``stop=True`` once the deepest recorded layer has run."""


@contextmanager
def record_activations(
    model: nn.Module,
    site: str,
    layers: Iterable[int],
    positions: torch.Tensor | None = None,
    to_cpu: bool = False,
    detach: bool = True,
    stop: bool = False,
) -> Iterator[dict[int, torch.Tensor]]:
    """Record ``site`` at ``layers`` during the forward passes run inside the block.

    ``positions`` (a ``(B, T)`` bool mask) keeps only those positions (flattened to ``(N, d)``); ``None`` keeps all.
    Values are detached unless ``detach=False`` (a loss on them then trains what produced them). ``stop=True``
    raises :class:`StopForward` once the deepest layer is recorded, so the layers above it and the LM head are
    skipped: catch it around the forward (only on an unwrapped model: DDP / DeepSpeed expect a complete forward).
    Hooks are removed on exit, also on an exception.

    Example:
        >>> with record_activations(model, "mlp", layers=range(4)) as acts:
        ...     model(**batch)
    """
    _check_site(site)
    layers = list(layers)
    store: dict[int, torch.Tensor] = {}
    last = max(layers, default=None)

    def hooks(layer: int):
        def keep(value: torch.Tensor) -> None:
            value = _select(value.detach() if detach else value, positions)
            store[layer] = value.cpu() if to_cpu else value
            if stop and layer == last:
                raise StopForward

        return (lambda _module, args: keep(args[0])), (lambda _module, _args, output: keep(_first(output)))

    with _registered(model, site, {layer: hooks(layer) for layer in layers}):
        yield store


@contextmanager
def patch_activations(
    model: nn.Module, site: str, values: dict[int, torch.Tensor], positions: torch.Tensor | None = None
) -> Iterator[nn.Module]:
    """Overwrite ``site`` at each layer of ``values`` with the given tensor during the forward passes in the block.

    ``values[layer]`` has the full ``(B, T, d)`` shape when ``positions`` is ``None``, else the ``(N, d)`` shape of
    the selected positions (as :func:`record_activations` returns them). Hooks are removed on exit.

    Example:
        >>> with patch_activations(unlearned, "mlp", {30: original_coefficients[30]}):
        ...     logits = unlearned(**batch).logits
    """
    _check_site(site)

    def patched(current: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        value = value.to(current.device, current.dtype)
        if positions is None:
            if value.shape != current.shape:
                raise ValueError(f"patch of shape {tuple(value.shape)} for an activation of {tuple(current.shape)}")
            return value
        out = current.clone()
        out[positions] = value
        return out

    def hooks(value: torch.Tensor):
        def pre_hook(_module, args):
            return (patched(args[0], value), *args[1:])

        def post_hook(_module, _args, output):
            return _replace_first(output, patched(_first(output), value))

        return pre_hook, post_hook

    with _registered(model, site, {layer: hooks(value) for layer, value in values.items()}):
        yield model


@contextmanager
def differentiable_activations(
    model: nn.Module, site: str, layers: Iterable[int]
) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Record ``site`` at ``layers`` as ``(value, zero)`` pairs: ``zero`` is a tensor of zeros that requires grad,
    added to the activation, so ``torch.autograd.grad(loss, zero)`` is ``∂loss/∂activation`` without writing
    ``.grad`` on any parameter, also on a frozen model; the forward pass computes the same values. Hooks are removed
    on exit, also on an exception.

    Example:
        >>> with differentiable_activations(model, "mlp", [3]) as acts:
        ...     grad = torch.autograd.grad(model(**batch).logits.sum(), acts[3][1])[0]
    """
    _check_site(site)
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def with_zero(layer: int, value: torch.Tensor) -> torch.Tensor:
        # A zero leaf keeps the graph intact (earlier layers still get their gradients) and makes the activation
        # differentiable even when every parameter is frozen.
        zero = torch.zeros_like(value, requires_grad=True)
        store[layer] = (value.detach(), zero)
        return value + zero

    def hooks(layer: int):
        def pre_hook(_module, args):
            if not args:
                raise RuntimeError(f"the {site} module of layer {layer} was called without a positional input")
            return (with_zero(layer, args[0]), *args[1:])

        def post_hook(_module, _args, output):
            return _replace_first(output, with_zero(layer, _first(output)))

        return pre_hook, post_hook

    try:
        with _registered(model, site, {layer: hooks(layer) for layer in layers}):
            yield store
    finally:
        store.clear()
