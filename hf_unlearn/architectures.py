"""Per-architecture adapters: the one place that knows where each model family keeps its modules.

Everything that needs a decoder layer, an MLP output projection ("value vectors"), the attention output, the
final norm or the unembedding goes through :func:`get_adapter`; nothing else in the library looks at module
names or ``model_type``.

Add a family with :func:`register_architecture`::

    register_architecture("my_model", ArchitectureAdapter(layers="model.layers", mlp_out="mlp.down_proj",
                                                          attn_out="self_attn.o_proj", final_norm="model.norm"))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Module paths of one architecture family.

    Attributes:
        layers: dotted path from the causal-LM model to the ``ModuleList`` of decoder layers.
        mlp_out: path inside a layer to the MLP output projection, whose *input* is the MLP coefficients
            and whose weight holds the value vectors.
        attn_out: path inside a layer to the attention output projection.
        final_norm: dotted path from the model to the final norm applied before the unembedding.
        transposed: ``True`` when the weights are stored ``(in, out)`` (GPT-2's ``Conv1D``) instead of
            ``nn.Linear``'s ``(out, in)``; value vector ``j`` is then row ``j`` rather than column ``j``.
        norm_weight_offset: added to the final norm's weight to get its gain (Gemma's RMSNorm scales by
            ``1 + weight``).
    """

    layers: str
    mlp_out: str
    attn_out: str
    final_norm: str
    transposed: bool = False
    norm_weight_offset: float = 0.0


_LLAMA_LIKE = ArchitectureAdapter(
    layers="model.layers", mlp_out="mlp.down_proj", attn_out="self_attn.o_proj", final_norm="model.norm"
)

_GEMMA = ArchitectureAdapter(
    layers="model.layers", mlp_out="mlp.down_proj", attn_out="self_attn.o_proj", final_norm="model.norm",
    norm_weight_offset=1.0,
)

ARCHITECTURES: dict[str, ArchitectureAdapter] = {
    **{name: _LLAMA_LIKE for name in ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3", "smollm3")},
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gpt2": ArchitectureAdapter(
        layers="transformer.h",
        mlp_out="mlp.c_proj",
        attn_out="attn.c_proj",
        final_norm="transformer.ln_f",
        transposed=True,
    ),
    "gpt_neox": ArchitectureAdapter(
        layers="gpt_neox.layers",
        mlp_out="mlp.dense_4h_to_h",
        attn_out="attention.dense",
        final_norm="gpt_neox.final_layer_norm",
    ),
}


def register_architecture(model_type: str, adapter: ArchitectureAdapter, exist_ok: bool = False) -> None:
    """Teach hf_unlearn a new ``config.model_type``."""
    if model_type in ARCHITECTURES and not exist_ok:
        raise ValueError(f"an adapter for {model_type!r} is already registered; pass exist_ok=True to replace it")
    ARCHITECTURES[model_type] = adapter


def unwrap_model(model: nn.Module) -> nn.Module:
    """The underlying ``PreTrainedModel``: strips DDP/FSDP ``.module`` and PEFT wrappers."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``; a clear error naming the supported families otherwise."""
    model_type = getattr(getattr(unwrap_model(model), "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"hf_unlearn has no architecture adapter for model_type={model_type!r}. Supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Register one with hf_unlearn.register_architecture("
            f"{model_type!r}, ArchitectureAdapter(layers=..., mlp_out=..., attn_out=..., final_norm=...))."
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of ``model``."""
    return unwrap_model(model).get_submodule(get_adapter(model).layers)


def mlp_out_module(model: nn.Module, layer: int) -> nn.Module:
    """The MLP output projection of decoder layer ``layer``."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise IndexError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
    return layers[layer].get_submodule(get_adapter(model).mlp_out)


def mlp_module(model: nn.Module, layer: int) -> nn.Module:
    """The whole MLP block of decoder layer ``layer`` (the parent of its output projection)."""
    return decoder_layers(model)[layer].get_submodule(get_adapter(model).mlp_out.rpartition(".")[0])


def attn_module(model: nn.Module, layer: int) -> nn.Module:
    """The whole attention block of decoder layer ``layer`` (the parent of its output projection)."""
    return decoder_layers(model)[layer].get_submodule(get_adapter(model).attn_out.rpartition(".")[0])


def attn_out_module(model: nn.Module, layer: int) -> nn.Module:
    """The attention output projection of decoder layer ``layer``."""
    return decoder_layers(model)[layer].get_submodule(get_adapter(model).attn_out)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last hidden state before the unembedding."""
    return unwrap_model(model).get_submodule(get_adapter(model).final_norm)


def final_norm_gain(model: nn.Module) -> torch.Tensor | None:
    """Elementwise gain of the final norm (``None`` for a norm without a weight, e.g. OLMo's)."""
    weight = getattr(final_norm(model), "weight", None)
    if weight is None:
        return None
    return weight + get_adapter(model).norm_weight_offset


def unembedding(model: nn.Module) -> torch.Tensor:
    """The unembedding matrix ``(vocab, d_model)`` (tied or not)."""
    return unwrap_model(model).get_output_embeddings().weight


def mlp_out_weight(model: nn.Module, layer: int) -> torch.Tensor:
    """The MLP output weight of ``layer`` as stored (use :func:`value_vectors_view` for a ``(d_model, d_ff)`` view)."""
    return mlp_out_module(model, layer).weight


def value_vectors_view(model: nn.Module, layer: int) -> torch.Tensor:
    """A ``(d_model, d_ff)`` view of layer ``layer``'s value vectors: column ``j`` is value vector ``j``."""
    weight = mlp_out_weight(model, layer)
    return weight.T if get_adapter(model).transposed else weight
