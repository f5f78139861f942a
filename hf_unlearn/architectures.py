"""Per-architecture adapters: the one place that knows where each model family keeps its modules.

Everything that needs a decoder layer, an MLP output projection ("value vectors"), the attention output, the
final norm or the unembedding goes through :func:`get_adapter`; nothing else in the library looks at module
names or ``model_type``.

Add a family with :func:`register_architecture`::

    register_architecture("my_model", ArchitectureAdapter(layers="model.layers", mlp_out="mlp.down_proj",
                                                          attn_out="self_attn.o_proj", final_norm="model.norm"))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig


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

    The remaining fields describe how to run the decoder one layer at a time (early exit); a family without
    ``embed_tokens`` does not support it. Paths are from the causal-LM model unless they say "inside a layer".

    Attributes:
        embed_tokens: the token embedding.
        embed_positions: learned absolute position embedding added to the token embedding (GPT-2).
        embed_dropout: dropout applied to the embeddings.
        rotary_emb: the rotary embedding module that turns position ids into ``(cos, sin)``.
        input_norm: inside a layer, the norm applied before attention (its output feeds the key/value projections).
        k_proj, v_proj: inside a layer, the separate key and value projections.
        qkv_proj: inside a layer, a fused ``[query | key | value]`` projection (instead of ``k_proj``/``v_proj``).
        k_norm: inside a layer, a per-head norm applied to the keys before the rotary embedding (Qwen3).
    """

    layers: str
    mlp_out: str
    attn_out: str
    final_norm: str
    transposed: bool = False
    norm_weight_offset: float = 0.0
    embed_tokens: str | None = None
    embed_positions: str | None = None
    embed_dropout: str | None = None
    rotary_emb: str | None = None
    input_norm: str | None = None
    k_proj: str | None = None
    v_proj: str | None = None
    qkv_proj: str | None = None
    k_norm: str | None = None


_LLAMA_LIKE = ArchitectureAdapter(
    layers="model.layers", mlp_out="mlp.down_proj", attn_out="self_attn.o_proj", final_norm="model.norm"
)
# Families whose decoder the early-exit model can walk layer by layer: separate rotary key/value projections.
_LLAMA_WALK = dict(
    embed_tokens="model.embed_tokens",
    rotary_emb="model.rotary_emb",
    input_norm="input_layernorm",
    k_proj="self_attn.k_proj",
    v_proj="self_attn.v_proj",
)
_LLAMA_WALKABLE = replace(_LLAMA_LIKE, **_LLAMA_WALK)
_GEMMA = replace(_LLAMA_LIKE, norm_weight_offset=1.0)

ARCHITECTURES: dict[str, ArchitectureAdapter] = {
    **{name: _LLAMA_WALKABLE for name in ("llama", "mistral", "qwen2", "olmo")},
    # OLMo-2 normalises after attention and SmolLM3 skips the rotary embedding on some layers: no layer walk yet.
    **{name: _LLAMA_LIKE for name in ("olmo2", "smollm3")},
    "qwen3": replace(_LLAMA_WALKABLE, k_norm="self_attn.k_norm"),
    "phi3": replace(_LLAMA_LIKE, **{**_LLAMA_WALK, "k_proj": None, "v_proj": None, "qkv_proj": "self_attn.qkv_proj"}),
    # Gemma scales its embeddings inside `embed_tokens`, so the walk is the Llama one.
    "gemma": replace(_GEMMA, **_LLAMA_WALK),
    # Gemma-2 soft-caps its final logits: no layer walk yet.
    "gemma2": _GEMMA,
    "gpt2": ArchitectureAdapter(
        layers="transformer.h",
        mlp_out="mlp.c_proj",
        attn_out="attn.c_proj",
        final_norm="transformer.ln_f",
        transposed=True,
        embed_tokens="transformer.wte",
        embed_positions="transformer.wpe",
        embed_dropout="transformer.drop",
        input_norm="ln_1",
        qkv_proj="attn.c_attn",
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


def early_exit_layout(model_or_config: nn.Module | PretrainedConfig) -> dict[str, Any]:
    """The adapter of a model (or config) as a plain dict, for an early-exit config to carry (so that a saved
    checkpoint walks its layers without this table); a clear error for a family that cannot be walked layer by
    layer."""
    if isinstance(model_or_config, PretrainedConfig):
        config = model_or_config
    else:
        config = underlying_model(model_or_config).config
    model_type = config.model_type
    adapter = _adapter_for(model_type)
    if adapter.embed_tokens is None or (adapter.qkv_proj is None and adapter.k_proj is None):
        walkable = sorted(name for name, a in ARCHITECTURES.items() if a.embed_tokens is not None)
        raise ValueError(
            f"early exit does not support model_type={model_type!r} yet: its adapter does not say how to run the "
            f"decoder layer by layer. Supported: {', '.join(walkable)}. Register an adapter with embed_tokens, "
            "rotary_emb, input_norm and k_proj/v_proj (or qkv_proj) through hf_unlearn.register_architecture."
        )
    return asdict(adapter)


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT ``PeftModel`` (adapters on a base model), the one test used across the library."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a model cannot be a PeftModel without it
        return False
    return isinstance(model, PeftModel)


def underlying_model(model: nn.Module) -> nn.Module:
    """The underlying ``PreTrainedModel``: strips DDP/FSDP ``.module`` and PEFT wrappers (unlike transformers'
    ``unwrap_model``, which leaves PEFT in place)."""
    while True:
        if is_peft_model(model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``; a clear error naming the supported families otherwise."""
    return _adapter_for(getattr(getattr(underlying_model(model), "config", None), "model_type", None))


def _adapter_for(model_type: str | None) -> ArchitectureAdapter:
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"hf_unlearn has no architecture adapter for model_type={model_type!r}. Supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Register one with hf_unlearn.register_architecture("
            f"{model_type!r}, ArchitectureAdapter(layers=..., mlp_out=..., attn_out=..., final_norm=...))."
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of ``model``."""
    return underlying_model(model).get_submodule(get_adapter(model).layers)


def check_same_layout(original: nn.Module, unlearned: nn.Module) -> None:
    """Raise a ValueError, before any forward pass, unless the two models share architecture, depth, MLP width and
    unembedding shape (vocabulary x hidden size): comparing them layer by layer is meaningless otherwise.

    Example:
        >>> check_same_layout(original, unlearned)  # an audit or a dissection of two models starts with this
    """
    types = [getattr(getattr(underlying_model(m), "config", None), "model_type", None) for m in (original, unlearned)]
    if types[0] != types[1]:
        raise ValueError(f"the models have different architectures: original {types[0]!r}, unlearned {types[1]!r}")
    n0, n1 = len(decoder_layers(original)), len(decoder_layers(unlearned))
    if n0 != n1:
        raise ValueError(f"the models have different depths: original {n0} decoder layers, unlearned {n1}")
    e0 = tuple(underlying_model(original).get_output_embeddings().weight.shape)
    e1 = tuple(underlying_model(unlearned).get_output_embeddings().weight.shape)
    if e0 != e1:
        raise ValueError(f"the unembeddings differ in shape (vocabulary x hidden): original {e0}, unlearned {e1}")
    w0 = tuple(mlp_out_weight(original, 0).shape)
    w1 = tuple(mlp_out_weight(unlearned, 0).shape)
    if w0 != w1:
        raise ValueError(f"the MLP output projections differ in shape: original {w0}, unlearned {w1}")


def mlp_out_module(model: nn.Module, layer: int) -> nn.Module:
    """The MLP output projection of decoder layer ``layer``."""
    layers = decoder_layers(model)
    # Layers count from 0 everywhere in the library; a negative index is refused rather than read from the end.
    if not 0 <= layer < len(layers):
        raise IndexError(f"layer {layer} out of range: the model has {len(layers)} decoder layers (0 to "
                         f"{len(layers) - 1})")
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
    return underlying_model(model).get_submodule(get_adapter(model).final_norm)


def final_norm_gain(model: nn.Module) -> torch.Tensor | None:
    """Elementwise gain of the final norm (``None`` for a norm without a weight, e.g. OLMo's)."""
    weight = getattr(final_norm(model), "weight", None)
    if weight is None:
        return None
    return weight + get_adapter(model).norm_weight_offset


def unembedding(model: nn.Module) -> torch.Tensor:
    """The unembedding matrix ``(vocab, d_model)`` (tied or not)."""
    return underlying_model(model).get_output_embeddings().weight


def mlp_out_weight(model: nn.Module, layer: int) -> torch.Tensor:
    """The MLP output weight of ``layer`` as stored (use :func:`value_vectors_view` for a ``(d_model, d_ff)`` view)."""
    return mlp_out_module(model, layer).weight


def value_vectors_view(model: nn.Module, layer: int) -> torch.Tensor:
    """A ``(d_model, d_ff)`` view of layer ``layer``'s value vectors: column ``j`` is value vector ``j``."""
    weight = mlp_out_weight(model, layer)
    return weight.T if get_adapter(model).transposed else weight


# ------------------------------------------------------------------ weights with PEFT adapters resolved


def effective_weight(module: nn.Module, include_adapters: bool) -> torch.Tensor:
    """The weight ``module`` computes with, in its stored layout; unmerged LoRA deltas added when asked.

    ``include_adapters=False`` gives the adapter-free base weight, used when the "original" model is the very base
    model the PEFT adapters were injected into (``get_peft_model`` modifies it in place).
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is a dependency, but the audit itself does not need it
        BaseTunerLayer = ()  # noqa: N806
    if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):  # PEFT modules_to_save copy
        active = [a for a in module.active_adapters if a in module.modules_to_save]
        if include_adapters and active and not module.disable_adapters:
            return module.modules_to_save[active[0]].weight
        return module.original_module.weight
    if not isinstance(module, BaseTunerLayer):
        return module.weight
    base = module.get_base_layer().weight
    if not include_adapters:
        if module.merged_adapters:
            raise ValueError(
                f"adapters {module.merged_adapters} are merged into the base weights, so the original weights cannot "
                "be read from the same model: pass a separate copy of the original model"
            )
        return base
    if module.disable_adapters:
        return base
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None or not hasattr(module, "get_delta_weight"):
        raise ValueError(
            f"cannot read the effective weight of the PEFT layer {type(module).__name__}: call merge_and_unload() "
            "on the PEFT model first and audit the merged model"
        )
    pending = [a for a in module.active_adapters if a in lora_a and a not in module.merged_adapters]
    variants = getattr(module, "lora_variant", {}) or {}
    if any(variants.get(a) is not None for a in pending):
        raise ValueError(
            "the unlearned model has unmerged DoRA/LoRA-variant adapters whose weight is not base + delta: call "
            "merge_and_unload() first and audit the merged model"
        )
    weight = base
    for adapter in pending:
        weight = weight + module.get_delta_weight(adapter).to(base.dtype)
    return weight


def effective_value_vectors(model: nn.Module, layer: int, include_adapters: bool = True) -> torch.Tensor:
    """Layer ``layer``'s value vectors as the model computes with them, a float32 ``(d_model, d_ff)`` matrix
    (column j = value vector j), unmerged LoRA deltas included unless ``include_adapters=False``."""
    weight = effective_weight(mlp_out_module(model, layer), include_adapters).detach()
    weight = weight.T if get_adapter(model).transposed else weight
    return weight.float()


def effective_unembedding(model: nn.Module, include_adapters: bool = True) -> torch.Tensor:
    """The unembedding matrix as the model computes with it (float32), unmerged adapters included when asked."""
    return effective_weight(underlying_model(model).get_output_embeddings(), include_adapters).detach().float()


def peft_layers(model: nn.Module) -> list[nn.Module]:
    """The PEFT layers (tuner layers and ``modules_to_save`` copies) inside ``model``."""
    return [m for m in model.modules() if hasattr(m, "merged_adapters") or hasattr(m, "original_module")]
