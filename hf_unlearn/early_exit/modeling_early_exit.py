"""EarlyExitForCausalLM: a causal LM whose tokens can stop at an internal layer.

The model owns the decoder's layer loop (embedding, positions, attention masks, decoder layers, final norm, LM head),
walking the backbone's own modules by the paths in ``config.backbone_layout``. A token that exits at layer ``k``
takes its logits from the exit head at ``k``; the key/value entries of the layers it skips are filled from its exit
hidden state through each skipped layer's own input norm and key/value projections, so later tokens attend to every
position. In a batch rows exit independently: layers keep running on the rows that have not exited (exited rows are
carried along unchanged, which writes exactly the fill rule's entries into the cache) and the walk stops once every
row has exited. The teacher-forced training pass with given per-token exits uses the same rule, so training and
inference see the same cache.

This file travels with saved checkpoints as remote code: it imports nothing from hf_unlearn at module level.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_early_exit import EarlyExitConfig, check_exit_settings, exit_settings

#: where ``kv_fill="deferred"`` keeps, on the cache, the exited tokens whose deeper layers have not run yet.
PENDING_ATTRIBUTE = "_early_exit_pending"

IGNORE_INDEX = -100
#: top-1 probability, top-1 minus top-2 probability, entropy.
CONFIDENCE_FEATURES = 3


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """``(..., CONFIDENCE_FEATURES)``: the top-1 probability, top-1 minus top-2 probability and entropy (nats) of
    ``logits`` (the policy's extra inputs with ``policy_features="hidden+confidence"``, over the shortlist)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    top = log_probs.topk(2, dim=-1).values.exp()
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return torch.stack([top[..., 0], top[..., 0] - top[..., 1], entropy], dim=-1)


@dataclass
class EarlyExitCausalLMOutput(CausalLMOutputWithPast):
    r"""
    Output of [`EarlyExitForCausalLM`]; `logits` are each position's logits at its exit.

    exit_layers (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
        Decoder layers each position ran (its exit layer); 0 for padding positions that never decided.
    exit_logits (`tuple[torch.FloatTensor]`, *optional*):
        Logits of every exit (`config.all_exits` order), with `output_all_exits=True` and no labels.
    exit_losses (`torch.FloatTensor` of shape `(num_exits, batch_size, sequence_length - 1)`, *optional*):
        Per-token next-token cross-entropy at every exit (float32, 0 where the label is -100), when labels are given.
    exit_correct (`torch.BoolTensor` of shape `(num_exits, batch_size, sequence_length - 1)`, *optional*):
        Whether each exit's top-1 token equals the label, when labels are given.
    policy_probs (`torch.FloatTensor` of shape `(num_exits - 1, batch_size, sequence_length)`, *optional*):
        The policy's exit probability at every internal exit, in the all-exits pass (with sampled exits: where it
        was evaluated, 0 elsewhere).
    exit_log_probs (`torch.FloatTensor` of shape `(batch_size, sequence_length)`, *optional*):
        With sampled exits: log-probability under the policy of each position's exit trajectory,
        `log p_e + sum_{j<e} log(1 - p_j)` over the exits it passed (0 for positions that did not decide).
    exit_token_losses (`torch.FloatTensor` of shape `(batch_size, sequence_length - 1)`, *optional*):
        With forced or sampled exits and labels: the cross-entropy at each position's own exit for the next token
        (position t scores label t + 1).
    exit_token_correct (`torch.BoolTensor` of shape `(batch_size, sequence_length - 1)`, *optional*):
        Whether that exit's top-1 token equals the label.
    """

    exit_layers: torch.LongTensor | None = None
    exit_logits: tuple[torch.FloatTensor, ...] | None = None
    exit_losses: torch.FloatTensor | None = None
    exit_correct: torch.BoolTensor | None = None
    policy_probs: torch.FloatTensor | None = None
    exit_log_probs: torch.FloatTensor | None = None
    exit_token_losses: torch.FloatTensor | None = None
    exit_token_correct: torch.BoolTensor | None = None


class ExitStatistics:
    """Running exit statistics of the tokens an early-exit model decided (decode steps and per-position passes).

    Example:
        >>> model.exit_stats.reset(); model.generate(**inputs, max_new_tokens=20)
        >>> model.exit_stats.mean_exit_layer, model.exit_stats.layers_saved
    """

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.reset()

    def reset(self) -> None:
        self.histogram = torch.zeros(self.num_layers + 1, dtype=torch.long)

    def update(self, exit_layers: torch.Tensor) -> None:
        decided = exit_layers[exit_layers > 0]
        if decided.numel():
            self.histogram += torch.bincount(decided.flatten().cpu(), minlength=self.num_layers + 1)

    @property
    def tokens(self) -> int:
        return int(self.histogram.sum())

    @property
    def mean_exit_layer(self) -> float:
        """Mean number of decoder layers run per token (NaN before any token)."""
        if self.tokens == 0:
            return float("nan")
        layers = torch.arange(self.num_layers + 1, dtype=torch.float64)
        return float((self.histogram.double() * layers).sum() / self.tokens)

    @property
    def layers_saved(self) -> float:
        """Fraction of decoder-layer computations skipped, ``1 - mean_exit_layer / L``."""
        return 1.0 - self.mean_exit_layer / self.num_layers

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "mean_exit_layer": self.mean_exit_layer,
            "layers_saved": self.layers_saved,
            "histogram": {k: int(n) for k, n in enumerate(self.histogram.tolist()) if n},
        }

    def __repr__(self) -> str:
        return f"ExitStatistics(tokens={self.tokens}, mean_exit_layer={self.mean_exit_layer:.2f} of {self.num_layers})"


class ExitAdapter(nn.Module):
    """Residual bottleneck in front of the shared head, plus (``linear=True``, the ``"translator"`` exit head) a
    full-rank linear map as in the tuned lens; zero-initialised outputs, so it starts as the identity."""

    def __init__(self, hidden_size: int, rank: int, linear: bool = False):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        self.up._zero_init = True
        self.linear = nn.Linear(hidden_size, hidden_size, bias=False) if linear else None
        if self.linear is not None:
            self.linear._zero_init = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = hidden + self.up(F.silu(self.down(hidden)))
        return out if self.linear is None else out + self.linear(hidden)


class PolicyHead(nn.Module):
    """Exit probability of a token at an exit: one small MLP shared by all exits, plus a learned embedding and output
    bias per exit."""

    def __init__(self, hidden_size: int, width: int, num_exits: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, width)
        self.exit_embedding = nn.Embedding(num_exits, width)
        self.out = nn.Linear(width, 1)
        self.exit_bias = nn.Parameter(self.uniform_prior(num_exits))

    @staticmethod
    def uniform_prior(num_exits: int) -> torch.Tensor:
        """Exit logits that spread an untrained policy's exits evenly over the exits (including the last, forced
        one): ``p_i = 1 / (n + 1 - i)``. With p = 0.5 everywhere, rollouts would almost never reach the deep exits,
        and a policy trained on such rollouts learns to never exit."""
        remaining = torch.arange(num_exits + 1, 1, -1, dtype=torch.float32)
        probability = 1.0 / remaining
        return torch.log(probability / (1 - probability))

    def forward(self, normed_hidden: torch.Tensor, exit_index: int) -> torch.Tensor:
        """Exit logit (pre-sigmoid) of each position at exit ``exit_index``."""
        hidden = F.gelu(self.proj(normed_hidden) + self.exit_embedding.weight[exit_index])
        return self.out(hidden).squeeze(-1) + self.exit_bias[exit_index]


class EarlyExitHeads(nn.Module):
    """Everything the early-exit model adds to its backbone, under the ``early_exit.`` weight prefix."""

    def __init__(self, config: EarlyExitConfig):
        super().__init__()
        hidden = config.backbone_config.hidden_size
        num_internal = len(config.exit_layers)
        self.adapters = (
            nn.ModuleList(
                ExitAdapter(hidden, config.adapter_rank, linear=config.exit_head == "translator")
                for _ in range(num_internal)
            )
            if config.exit_head in ("adapter", "translator")
            else None
        )
        features = CONFIDENCE_FEATURES if config.policy_features == "hidden+confidence" else 0
        self.policy = PolicyHead(hidden + features, config.policy_hidden_size, max(num_internal, 1))
        self.register_buffer("shortlist", torch.zeros(config.shortlist_size, dtype=torch.long))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _apply_rotary(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotate-half rotary embedding on ``(B, heads, T, head_dim)`` keys; partial when ``cos`` is narrower."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    width = cos.shape[-1]
    rotary, rest = keys[..., :width], keys[..., width:]
    rotary = rotary * cos + _rotate_half(rotary) * sin
    return torch.cat((rotary, rest), dim=-1) if rest.shape[-1] else rotary


class EarlyExitForCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LM with internal exits and a policy head, for early-exit inference.

    Example:
        >>> model = EarlyExitForCausalLM.from_backbone(AutoModelForCausalLM.from_pretrained(path), min_exit_layer=8)
        >>> model.generate(**inputs, exit_strategy="confidence", confidence_threshold=0.9)
    """

    config_class = EarlyExitConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []

    def __init__(self, config: EarlyExitConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if config.backbone_layout is None:
            raise ValueError(
                "config.backbone_layout is missing: build the model with EarlyExitForCausalLM.from_backbone(model) "
                "or an EarlyExitConfig created where hf_unlearn is installed"
            )
        self.backbone = backbone if backbone is not None else AutoModelForCausalLM.from_config(config.backbone_config)
        self.early_exit = EarlyExitHeads(config)
        self.exit_stats = ExitStatistics(config.num_hidden_layers)
        # Read once: the layer loop runs per token, and config attribute access is slow.
        backbone_config = config.backbone_config
        self._paths = {k: None if v is None else tuple(v.split(".")) for k, v in config.backbone_layout.items()
                       if k != "transposed" and (v is None or isinstance(v, str))}
        self._depth = backbone_config.num_hidden_layers
        self._exit_index = {layer: i for i, layer in enumerate(config.exit_layers)}
        kv_heads = getattr(backbone_config, "num_key_value_heads", None) or backbone_config.num_attention_heads
        self._kv_heads = kv_heads
        self._clip = getattr(backbone_config, "clip_qkv", None)
        layer_types = getattr(backbone_config, "layer_types", None)
        if layer_types is None:
            sliding = getattr(backbone_config, "sliding_window", None) is not None
            layer_types = ["sliding_attention" if sliding else "full_attention"] * self._depth
        self._layer_types = list(layer_types[: self._depth])
        self._warned_untrained_policy = False
        self.post_init()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_backbone(cls, model: PreTrainedModel, **config_kwargs) -> EarlyExitForCausalLM:
        """Wrap a loaded causal LM (its modules are used as they are, not copied); ``config_kwargs`` go to
        [`EarlyExitConfig`]."""
        if hasattr(model, "get_base_model") or hasattr(model, "peft_config"):
            raise ValueError(
                "from_backbone takes the plain causal LM, not a PeftModel: wrap first, then apply LoRA with "
                "peft.get_peft_model(EarlyExitForCausalLM.from_backbone(model), lora_config)"
            )
        config = EarlyExitConfig(backbone_config=model.config, **config_kwargs)
        wrapper = cls(config, backbone=model)
        parameter = next(model.parameters())
        wrapper.early_exit.to(device=parameter.device, dtype=parameter.dtype)
        if getattr(model, "generation_config", None) is not None:
            wrapper.generation_config = model.generation_config
        return wrapper

    def _init_weights(self, module: nn.Module) -> None:
        # Called on leaf modules (transformers skips parameter-less containers); the backbone has its own.
        if isinstance(module, PolicyHead):
            init.copy_(module.exit_bias, PolicyHead.uniform_prior(module.exit_bias.numel()))
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if getattr(module, "_zero_init", False):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_output_embeddings(value)

    def set_exit_strategy(self, exit_strategy: str, **settings) -> None:
        """Set the inference rule (and any of its thresholds) in ``config`` after checking them.

        Example:
            >>> model.set_exit_strategy("entropy", entropy_threshold=0.3)
        """
        merged = exit_settings(self.config, exit_strategy=exit_strategy, **settings)
        check_exit_settings(self.config, **merged)
        for name, value in merged.items():
            setattr(self.config, name, value)

    def set_exit_shortlist(self, token_ids: torch.Tensor | list[int]) -> None:
        """Tokens whose logits screen exits cheaply (`confidence` and `entropy` strategies), from which the lossless
        mode's drafts are chosen, and (``shortlist_exits=True``) the only tokens internal exits predict; empty to
        remove."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().unique()
        vocab = self.config.backbone_config.vocab_size
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"shortlist token ids must be in [0, {vocab})")
        self.config.shortlist_size = int(ids.numel())
        self.early_exit.shortlist = ids.to(self.early_exit.shortlist.device)

    # ------------------------------------------------------------------ the backbone's parts

    def _part(self, key: str) -> nn.Module | None:
        # Resolved on every call (not cached): PEFT may have replaced a module since the last one.
        path = self._paths[key]
        return None if path is None else reduce(getattr, path, self.backbone)

    def _layers(self) -> nn.ModuleList:
        return self._part("layers")

    def _layer_part(self, layer: nn.Module, key: str) -> nn.Module | None:
        path = self._paths[key]
        return None if path is None else reduce(getattr, path, layer)

    def _embed(self, input_ids, inputs_embeds, position_ids) -> torch.Tensor:
        hidden = self._part("embed_tokens")(input_ids) if inputs_embeds is None else inputs_embeds
        positions = self._part("embed_positions")
        if positions is not None:
            hidden = hidden + positions(position_ids).to(hidden.device)
        dropout = self._part("embed_dropout")
        return dropout(hidden) if dropout is not None else hidden

    def _attention_masks(self, hidden, attention_mask, cache, position_ids, first_layer: int = 0) -> list[Any]:
        """One mask per layer, by the layer's attention type (full or sliding window). With ``first_layer`` > 0 the
        masks are sized against that layer's cache (the lower layers may already hold the new positions)."""
        config = self.config.backbone_config
        layer_types = self._layer_types
        if isinstance(attention_mask, dict):
            return [attention_mask[kind] for kind in layer_types]
        builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        masks = {}
        for kind in set(layer_types[first_layer:]):
            sized = {"layer_idx": layer_types.index(kind, first_layer)} if first_layer else {}
            masks[kind] = builders[kind](
                config=config,
                inputs_embeds=hidden,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
                **sized,
            )
        return [masks.get(kind) for kind in layer_types]

    def _run_layer(self, layer, hidden, mask, position_embeddings, position_ids, cache, use_cache) -> torch.Tensor:
        kwargs = {"position_embeddings": position_embeddings} if position_embeddings is not None else {}
        output = layer(
            hidden, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs
        )
        return output[0] if isinstance(output, tuple) else output

    def fill_skipped_layer(self, index: int, hidden: torch.Tensor, position_embeddings, cache) -> None:
        """Append layer ``index``'s key/value entries computed from ``hidden`` (the exit states) to ``cache``: the
        layer's input norm, key and value projections (and key norm, rotary embedding), nothing else."""
        layer = self._layers()[index]
        norm = self._layer_part(layer, "input_norm")
        x = norm(hidden) if norm is not None else hidden
        fused = self._paths["qkv_proj"]
        attention = reduce(getattr, (fused or self._paths["k_proj"])[:-1], layer)
        head_dim = attention.head_dim
        if fused is not None:
            kv_size = self._kv_heads * head_dim
            qkv = self._layer_part(layer, "qkv_proj")(x)
            keys, values = qkv[..., -2 * kv_size : -kv_size], qkv[..., -kv_size:]
        else:
            keys, values = self._layer_part(layer, "k_proj")(x), self._layer_part(layer, "v_proj")(x)
        shape = (*x.shape[:-1], -1, head_dim)
        keys, values = keys.view(shape), values.view(shape)
        k_norm = self._layer_part(layer, "k_norm")
        if k_norm is not None:
            keys = k_norm(keys)
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)
        clip = self._clip
        if clip is not None:
            keys, values = keys.clamp(-clip, clip), values.clamp(-clip, clip)
        if position_embeddings is not None:
            keys = _apply_rotary(keys, *position_embeddings)
        cache.update(keys, values, index)

    # ------------------------------------------------------------------ heads

    def _head_input(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        if self.early_exit.adapters is not None and layer < self._depth:
            hidden = self.early_exit.adapters[self._exit_index[layer]](hidden)
        return self._part("final_norm")(hidden)

    def exit_logits(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Vocabulary logits of the exit at ``layer`` (the backbone's own head at the last layer)."""
        return self.backbone.get_output_embeddings()(self._head_input(hidden, layer))

    def exit_probability(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The policy's exit probability at the internal exit ``layer``."""
        features = self._part("final_norm")(hidden)
        if self.config.policy_features == "hidden+confidence":
            if self.early_exit.shortlist.numel() == 0:
                raise ValueError(
                    "policy_features='hidden+confidence' computes the exit's confidence over the token shortlist: "
                    "set one with model.set_exit_shortlist(token_shortlist(tokenizer, texts, size=4096))"
                )
            with torch.no_grad():  # inputs of the policy, not a path for its gradient
                confidence = confidence_features(self._shortlist_logits(hidden, layer))
            features = torch.cat([features, confidence.to(features.dtype)], dim=-1)
        return torch.sigmoid(self.early_exit.policy(features, self._exit_index[layer]).float())

    def _shortlist_logits(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        head = self.backbone.get_output_embeddings()
        ids = self.early_exit.shortlist
        # Gathering the shortlist's rows costs as much as using them: keep them until the head or the list changes.
        key = (head.weight.data_ptr(), head.weight._version, ids.data_ptr(), ids._version, head.weight.dtype)
        cached = self.__dict__.get("_shortlist_rows")
        if cached is None or cached[0] != key:
            bias = head.bias[ids] if getattr(head, "bias", None) is not None else None
            cached = (key, head.weight.detach()[ids].contiguous(), bias)
            self.__dict__["_shortlist_rows"] = cached
        return F.linear(self._head_input(hidden, layer), cached[1], cached[2])

    def _scatter_shortlist(self, compact: torch.Tensor) -> torch.Tensor:
        """Shortlist logits ``(..., shortlist_size)`` as vocabulary logits, ``-inf`` outside the shortlist."""
        logits = compact.new_full((*compact.shape[:-1], self.config.backbone_config.vocab_size), float("-inf"))
        logits[..., self.early_exit.shortlist] = compact
        return logits

    def _ending_logits(self, hidden: torch.Tensor, layer: int, shortlist: bool) -> torch.Tensor:
        """Logits of the tokens that end at ``layer``: from the shortlist's rows of the head when ``shortlist`` (an
        internal exit with ``shortlist_exits``, or a lossless draft), else from the full head."""
        if not shortlist or layer >= self._depth:
            return self.exit_logits(hidden, layer)
        if self.early_exit.shortlist.numel() == 0:
            raise ValueError(
                "shortlist_exits=True needs a token shortlist: set one with "
                "model.set_exit_shortlist(token_shortlist(tokenizer, texts, size=4096))"
            )
        return self._scatter_shortlist(self._shortlist_logits(hidden, layer))

    def _exit_tokens(self, logits: torch.Tensor, layer: int, shortlist: bool) -> torch.Tensor:
        """The top-1 tokens of the exit at ``layer`` from its full vocabulary logits, as generation picks them: over
        the shortlist for an internal exit when ``shortlist`` (``shortlist_exits``)."""
        if not shortlist or layer >= self._depth:
            return logits.argmax(-1)
        ids = self.early_exit.shortlist
        return ids[logits[..., ids].argmax(-1)]

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_all_exits: bool | None = None,
        exit_all_positions: bool = False,
        forced_exit_layers: torch.LongTensor | None = None,
        sample_exits: bool = False,
        exit_epsilon: float = 0.0,
        self_distill: bool = False,
        teacher_logits: torch.Tensor | None = None,
        exit_vocabulary: torch.LongTensor | None = None,
        output_exit_logits: bool = True,
        exit_strategy: str | None = None,
        policy_threshold: float | None = None,
        policy_thresholds: dict[int, float] | None = None,
        confidence_threshold: float | None = None,
        entropy_threshold: float | None = None,
        patience: int | None = None,
        fixed_exit_layer: int | None = None,
        checked_exits: list[int] | None = None,
        shortlist_exits: bool | None = None,
        past_key_values=None,
        **kwargs,
    ) -> EarlyExitCausalLMOutput:
        r"""
        output_all_exits (`bool`, *optional*):
            Run every layer and return every exit's logits (or, with labels, per-token losses) and the policy's
            probabilities in one pass. On by default when labels are given in training mode.
        exit_all_positions (`bool`, *optional*, defaults to `False`):
            Apply the exit strategy to every position of a multi-token input (teacher-forced evaluation of exits).
            Without it a multi-token input (a prompt) runs at full depth and only single-token steps exit.
        forced_exit_layers (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            In the all-exits pass, freeze each position at this exit layer: deeper layers see its exit state (the
            key/value fill rule of inference), so training simulates the inference of these exit decisions.
        sample_exits (`bool`, *optional*, defaults to `False`):
            In the all-exits pass, sample each position's exit from the policy (exit at layer k with probability
            `p_k`), freezing it there as `forced_exit_layers` does; returns the trajectory log-probabilities. With
            labels, prompt positions (label -100) run at full depth, as in generation.
        exit_epsilon (`float`, *optional*, defaults to `0.0`):
            With `sample_exits`, the chance of replacing the sampled action by a coin flip (exploration).
        self_distill (`bool`, *optional*, defaults to `False`):
            In the all-exits pass, score every exit against this pass's own last exit (the full model's
            distribution) instead of the labels; labels, if given, only select the scored positions.
        teacher_logits (`torch.Tensor` of shape `(batch_size, sequence_length, vocab_size)`, *optional*):
            Like `self_distill`, with the target distribution given (e.g. the model before LoRA adaptation).
        exit_vocabulary (`torch.LongTensor`, *optional*):
            In the all-exits pass, compute the exits' losses (and the self-distillation target) over these token ids
            only: a softmax restricted to a shortlist, about `vocab_size / len(exit_vocabulary)` times cheaper.
            Labels outside it are not scored.
        output_exit_logits (`bool`, *optional*, defaults to `True`):
            In the all-exits pass without labels, return every exit's logits. `False` leaves `exit_logits` empty and
            returns the policy's probabilities and the last exit's logits: all the policy's warm start needs.
        exit_strategy, policy_threshold, policy_thresholds, confidence_threshold, entropy_threshold, patience,
        fixed_exit_layer, checked_exits, shortlist_exits:
            Override the config's inference settings for this call (also through `generate(...)`).
        """
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the cache as `cache` only (`past_key_values` is its deprecated name)")
            cache = past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        settings = exit_settings(
            self.config,
            exit_strategy=exit_strategy,
            policy_threshold=policy_threshold,
            policy_thresholds=policy_thresholds,
            confidence_threshold=confidence_threshold,
            entropy_threshold=entropy_threshold,
            patience=patience,
            fixed_exit_layer=fixed_exit_layer,
            checked_exits=checked_exits,
            shortlist_exits=shortlist_exits,
        )
        if exit_strategy is not None or any(
            v is not None
            for v in (
                policy_threshold, policy_thresholds, confidence_threshold, entropy_threshold, patience,
                fixed_exit_layer, checked_exits, shortlist_exits,
            )
        ):
            check_exit_settings(self.config, **settings)

        all_exits = output_all_exits if output_all_exits is not None else (labels is not None and self.training)
        if (forced_exit_layers is not None or sample_exits or self_distill or teacher_logits is not None) and (
            not all_exits
        ):
            raise ValueError(
                "forced_exit_layers, sample_exits, self_distill and teacher_logits apply to the all-exits pass: "
                "pass output_all_exits=True"
            )
        if self_distill and teacher_logits is not None:
            raise ValueError("pass either self_distill=True or teacher_logits, not both")
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and not all_exits
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config.backbone_config)

        reference = input_ids if input_ids is not None else inputs_embeds
        length = reference.shape[1]
        pending = getattr(cache, PENDING_ATTRIBUTE, None) if cache is not None else None
        if length > 1 and pending:
            raise ValueError(
                f"kv_fill='deferred' left the deeper layers of {len(pending)} exited token(s) pending in this "
                "cache: continue it one token at a time, or start a new cache"
            )
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + length, device=reference.device).unsqueeze(0)
        hidden, walk = self._start_walk(input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache)

        if all_exits:
            teacher = "final" if self_distill else teacher_logits
            output = self._forward_all_exits(
                hidden, walk, labels, attention_mask, forced_exit_layers, sample_exits, exit_epsilon, teacher,
                exit_vocabulary, output_exit_logits,
            )
        elif (settings["exit_strategy"] != "none" and (length == 1 or exit_all_positions)) or pending:
            # (with pending layers, a full-depth step runs them too: `pending` implies length == 1 here)
            output = self._forward_with_exits(hidden, walk, settings, attention_mask)
        else:
            output = self._forward_full(hidden, walk, logits_to_keep)
        if labels is not None and output.loss is None:
            output.loss = self.loss_function(
                logits=output.logits, labels=labels, vocab_size=self.config.backbone_config.vocab_size, **kwargs
            )
        output.cache = cache if use_cache else None
        return output

    def _start_walk(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache):
        """The embedded inputs and what every layer call needs: ``(masks, position embeddings, position ids, cache,
        use_cache)``."""
        hidden = self._embed(input_ids, inputs_embeds, position_ids)
        masks = self._attention_masks(hidden, attention_mask, cache, position_ids)
        rotary = self._part("rotary_emb")
        position_embeddings = rotary(hidden, position_ids=position_ids) if rotary is not None else None
        return hidden, (masks, position_embeddings, position_ids, cache, use_cache)

    def _forward_full(self, hidden, walk, logits_to_keep) -> EarlyExitCausalLMOutput:
        masks, position_embeddings, position_ids, cache, use_cache = walk
        for index, layer in enumerate(self._layers()):
            hidden = self._run_layer(layer, hidden, masks[index], position_embeddings, position_ids, cache, use_cache)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.exit_logits(hidden[:, keep], self._depth)
        exit_layers = torch.full(hidden.shape[:2], self._depth, device=hidden.device)
        return EarlyExitCausalLMOutput(logits=logits, exit_layers=exit_layers)

    def _forward_all_exits(
        self, hidden, walk, labels, attention_mask, forced_exit_layers, sample_exits, exit_epsilon, teacher,
        vocabulary=None, output_exit_logits=True,
    ) -> EarlyExitCausalLMOutput:
        if forced_exit_layers is not None or sample_exits:
            if vocabulary is not None:
                raise ValueError("exit_vocabulary applies to the pass with every exit, not to forced or sampled exits")
            return self._forward_decided_exits(
                hidden, walk, labels, attention_mask, forced_exit_layers, sample_exits, exit_epsilon
            )
        masks, position_embeddings, position_ids, cache, use_cache = walk
        exits = self.config.all_exits
        states = {}
        for index, layer in enumerate(self._layers()):
            hidden = self._run_layer(layer, hidden, masks[index], position_embeddings, position_ids, cache, use_cache)
            if index + 1 in exits:
                states[index + 1] = hidden
        policy_probs = (
            torch.stack([self.exit_probability(states[k], k) for k in self.config.exit_layers])
            if self.config.exit_layers
            else None
        )
        exit_layers = torch.full(hidden.shape[:2], self._depth, device=hidden.device)
        if labels is None and teacher is None:
            exit_logits = tuple(self.exit_logits(states[k], k) for k in exits) if output_exit_logits else None
            logits = exit_logits[-1] if output_exit_logits else self.exit_logits(states[self._depth], self._depth)
            return EarlyExitCausalLMOutput(
                logits=logits, exit_logits=exit_logits, policy_probs=policy_probs, exit_layers=exit_layers
            )
        if isinstance(teacher, str):  # "final": this pass's own last exit, fixed
            with torch.no_grad():
                teacher = self._vocabulary_logits(states[self._depth], self._depth, vocabulary)
        elif teacher is not None and vocabulary is not None:
            teacher = teacher[..., vocabulary]
        if teacher is not None:
            soft = torch.softmax(teacher[:, :-1].detach().float(), dim=-1)
            targets = soft.argmax(-1)
            if labels is not None:
                mask = labels[:, 1:] != IGNORE_INDEX
            elif attention_mask is not None:
                mask = attention_mask[:, 1:].bool()
            else:
                mask = torch.ones_like(targets, dtype=torch.bool)
            targets = targets.masked_fill(~mask, IGNORE_INDEX)
        else:
            soft, targets = None, labels[:, 1:]
            if vocabulary is not None:  # label ids -> positions in the vocabulary (-100 outside it)
                lookup = torch.full((self.config.backbone_config.vocab_size,), IGNORE_INDEX, device=targets.device)
                lookup[vocabulary] = torch.arange(vocabulary.numel(), device=targets.device)
                targets = torch.where(targets == IGNORE_INDEX, IGNORE_INDEX, lookup[targets.clamp(min=0)])
            mask = targets != IGNORE_INDEX
        losses, correct = [], []
        for k in exits:
            # Recomputed in backward: the logits of all exits would not fit in memory at once.
            if torch.is_grad_enabled() and states[k].requires_grad:
                loss, hit = checkpoint(
                    self._exit_token_loss, states[k][:, :-1], k, targets, soft, vocabulary, use_reentrant=False
                )
            else:
                loss, hit = self._exit_token_loss(states[k][:, :-1], k, targets, soft, vocabulary)
            losses.append(loss * mask)
            correct.append(hit & mask)
        exit_losses, exit_correct = torch.stack(losses), torch.stack(correct)
        loss = exit_losses.sum(dim=(1, 2)).mean() / mask.sum().clamp(min=1)
        return EarlyExitCausalLMOutput(
            loss=loss,
            exit_losses=exit_losses,
            exit_correct=exit_correct,
            policy_probs=policy_probs,
            exit_layers=exit_layers,
        )

    def _forward_decided_exits(
        self, hidden, walk, labels, attention_mask, forced_exit_layers, sample_exits, exit_epsilon
    ) -> EarlyExitCausalLMOutput:
        """Teacher-forced pass in which each position exits at one layer (given, or sampled from the policy) and is
        frozen there: deeper layers see its exit state, which writes the fill rule's keys/values into their cache
        entries, exactly as in inference."""
        masks, position_embeddings, position_ids, cache, use_cache = walk
        depth = self._depth
        exits = self.config.all_exits
        batch, length = hidden.shape[:2]
        device = hidden.device
        if forced_exit_layers is not None:
            if sample_exits:
                raise ValueError("pass either forced_exit_layers or sample_exits=True, not both")
            if forced_exit_layers.shape != (batch, length):
                raise ValueError(
                    f"forced_exit_layers has shape {tuple(forced_exit_layers.shape)}; it needs one exit layer per "
                    f"position, {(batch, length)}"
                )
            if not torch.isin(forced_exit_layers, torch.tensor(exits, device=device)).all():
                raise ValueError(f"forced_exit_layers must hold exit layers only: {exits}")
        if labels is not None:
            targets = labels[:, 1:]
            # A position decides when its own token is generated text (scored) and it has a next token to score:
            # prompt tokens run at full depth, as they do in generation.
            deciding = torch.zeros(batch, length, dtype=torch.bool, device=device)
            deciding[:, :-1] = (labels[:, :-1] != IGNORE_INDEX) & (targets != IGNORE_INDEX)
        else:
            targets = None
            deciding = torch.ones(batch, length, dtype=torch.bool, device=device)
            if attention_mask is not None and attention_mask.dim() == 2:
                deciding &= attention_mask[:, -length:].bool()
        running = torch.ones(batch, length, dtype=torch.bool, device=device)
        exit_layers = torch.full((batch, length), depth, device=device)
        log_probs = torch.zeros(batch, length, device=device)
        policy_probs = torch.zeros(len(self.config.exit_layers), batch, length, device=device)
        token_losses = torch.zeros(batch, max(length - 1, 0), device=device)
        token_correct = torch.zeros(batch, max(length - 1, 0), dtype=torch.bool, device=device)
        logits_out = None
        for index, layer in enumerate(self._layers()):
            new = self._run_layer(layer, hidden, masks[index], position_embeddings, position_ids, cache, use_cache)
            hidden = torch.where(running.unsqueeze(-1), new, hidden)
            k = index + 1
            if k not in exits:
                continue
            if k == depth:
                now = running
            elif sample_exits:
                probs = self.exit_probability(hidden, k)
                policy_probs[self._exit_index[k]] = probs.detach()
                action = torch.rand_like(probs) < probs.detach()
                if exit_epsilon > 0:
                    explore = torch.rand_like(probs) < exit_epsilon
                    action = torch.where(explore, torch.rand_like(probs) < 0.5, action)
                live = running & deciding
                chosen = torch.where(action, probs, 1 - probs).clamp(1e-6, 1 - 1e-6).log()
                log_probs = log_probs + torch.where(live, chosen, torch.zeros_like(chosen))
                now = live & action
            else:
                now = running & (forced_exit_layers == k)
            if not bool(now.any()):
                continue
            exit_layers = torch.where(now, k, exit_layers)
            running = running & ~now
            if targets is None:
                rows = now.nonzero(as_tuple=True)
                layer_logits = self.exit_logits(hidden[rows], k)
                if logits_out is None:
                    logits_out = layer_logits.new_zeros(batch, length, layer_logits.shape[-1])
                logits_out = logits_out.index_put(rows, layer_logits)
                continue
            rows = now[:, :-1].nonzero(as_tuple=True)
            if rows[0].numel():
                loss, hit = self._exit_token_loss(hidden[:, :-1][rows], k, targets[rows], None)
                token_losses = token_losses.index_put(rows, loss)
                token_correct = token_correct.index_put(rows, hit)
        output = EarlyExitCausalLMOutput(
            exit_layers=exit_layers, exit_log_probs=log_probs, policy_probs=policy_probs if sample_exits else None
        )
        if targets is None:
            output.logits = logits_out
            return output
        mask = targets != IGNORE_INDEX
        output.exit_token_losses = token_losses * mask
        output.exit_token_correct = token_correct & mask
        output.loss = output.exit_token_losses.sum() / mask.sum().clamp(min=1)
        return output

    def _vocabulary_logits(self, hidden: torch.Tensor, layer: int, vocabulary: torch.Tensor | None) -> torch.Tensor:
        if vocabulary is None:
            return self.exit_logits(hidden, layer)
        head = self.backbone.get_output_embeddings()
        bias = head.bias[vocabulary] if getattr(head, "bias", None) is not None else None
        return F.linear(self._head_input(hidden, layer), head.weight[vocabulary], bias)

    def _exit_token_loss(self, hidden, layer: int, targets: torch.Tensor, soft: torch.Tensor | None, vocabulary=None):
        """Cross-entropy (float32) of the exit at ``layer`` against hard targets or a soft target distribution
        (targets index ``vocabulary`` when it is given)."""
        logits = self._vocabulary_logits(hidden, layer, vocabulary).float()
        log_probs = torch.log_softmax(logits, dim=-1)
        hit = logits.argmax(-1) == targets
        if soft is not None:
            return -(soft * log_probs).sum(-1), hit
        safe = targets.clamp(min=0).unsqueeze(-1)
        return -log_probs.gather(-1, safe).squeeze(-1) * (targets != IGNORE_INDEX), hit

    def _forward_with_exits(self, hidden, walk, settings, attention_mask) -> EarlyExitCausalLMOutput:
        """Per-position exits by the strategy. Several positions with ``kv_fill="deferred"`` run as ``"compute"``
        (the same keys/values)."""
        masks, position_embeddings, position_ids, cache, use_cache = walk
        depth = self._depth
        strategy = settings["exit_strategy"]
        internal = self._checked_exits(settings)
        batch, length = hidden.shape[:2]
        kv_fill = self.config.kv_fill
        if batch * length == 1 and kv_fill in ("state", "deferred"):
            return self._exit_one_token(hidden, walk, settings, internal, deferred=kv_fill == "deferred")
        device = hidden.device
        active = torch.ones(batch, length, dtype=torch.bool, device=device)
        if attention_mask is not None and attention_mask.dim() == 2 and length > 1:
            active &= attention_mask[:, -length:].bool()
        exit_layers = torch.where(active, depth, 0)
        logits_out = None
        streak = torch.zeros(batch, length, dtype=torch.long, device=device)
        previous = torch.full((batch, length), -1, dtype=torch.long, device=device)
        any_active = bool(active.any())
        state_fill = kv_fill == "state"
        layers = self._layers()
        for index, layer in enumerate(layers):
            if not any_active and state_fill:
                for rest in range(index, depth):
                    self.fill_skipped_layer(rest, hidden, position_embeddings, cache)
                break
            new = self._run_layer(layer, hidden, masks[index], position_embeddings, position_ids, cache, use_cache)
            if not state_fill or bool(active.all()):
                hidden = new
            else:
                hidden = torch.where(active.unsqueeze(-1), new, hidden)
            k = index + 1
            if k not in internal or not any_active:
                continue
            rows = active.nonzero(as_tuple=True)
            exit_now, logits = self._decide(strategy, settings, hidden[rows], k, previous, streak, rows)
            if bool(exit_now.any()):
                chosen = tuple(r[exit_now] for r in rows)
                if logits is None:
                    logits = self._ending_logits(hidden[chosen], k, settings["shortlist_exits"])
                else:
                    logits = logits[exit_now]
                if logits_out is None:
                    logits_out = logits.new_zeros(batch, length, logits.shape[-1])
                logits_out[chosen] = logits
                exit_layers[chosen] = k
                active[chosen] = False
                any_active = bool(active.any())
        if any_active:
            rows = active.nonzero(as_tuple=True)
            logits = self.exit_logits(hidden[rows], depth)
            if logits_out is None:
                logits_out = logits.new_zeros(batch, length, logits.shape[-1])
            logits_out[rows] = logits
        if logits_out is None:  # only padding positions
            logits_out = self.exit_logits(hidden, depth) * 0
        self.exit_stats.update(exit_layers)
        return EarlyExitCausalLMOutput(logits=logits_out, exit_layers=exit_layers)

    def _checked_exits(self, settings: dict[str, Any]) -> set[int]:
        """The internal exits at which the strategy decides."""
        strategy = settings["exit_strategy"]
        if strategy == "fixed":
            return {settings["fixed_exit_layer"]} & set(self._exit_index)
        if strategy == "none":
            return set()
        if strategy == "policy" and not self.config.policy_trained and not self._warned_untrained_policy:
            warnings.warn(
                "exit_strategy='policy' with an untrained policy head: its exits are arbitrary. Train it with "
                "hf_unlearn's ConsistentEETrainer, or use 'confidence', 'entropy', 'patience' or 'fixed'.",
                stacklevel=4,
            )
            self._warned_untrained_policy = True
        exits = set(self._exit_index)
        if strategy == "policy" and settings["policy_thresholds"] is not None:
            exits &= set(settings["policy_thresholds"])
        checked = settings["checked_exits"]
        return exits if checked is None else exits & set(checked)

    def _exit_one_token(
        self, hidden, walk, settings, internal, deferred: bool = False, draft: bool = False
    ) -> EarlyExitCausalLMOutput:
        """`_forward_with_exits` for one position (batch-1 decoding, the case early exit is for): the same
        decisions, without the per-layer bookkeeping of which positions are still running, which costs about a
        quarter of a layer per exit checked on a CPU.

        With ``deferred`` (``kv_fill="deferred"``) a token that exits leaves its deeper layers pending (kept on the
        cache) instead of filling them, and the next token that reaches such a layer runs it for them too, in the
        same layer call. Every token then attends to exact keys/values, as with ``"compute"``, while a layer call
        with two or three positions costs little more than with one where decoding is memory-bound.

        ``draft`` (the lossless mode's steps): an early exit only proposes a token, so its logits come from the
        token shortlist when one is set (``-inf`` elsewhere; a tenth of the full head's cost at 4096 tokens), and a
        step that reaches the last layer returns the full model's logits of every pending position it completed,
        in position order, before its own."""
        masks, position_embeddings, position_ids, cache, use_cache = walk
        depth = self._depth
        layers = self._layers()
        # [position, first missing layer, hidden state before it], in position order; the tokens missing a layer
        # are a suffix of them, since a token that ran a layer ran it with every earlier token that missed it.
        pending = (getattr(cache, PENDING_ATTRIBUTE, None) or []) if deferred else []
        if pending:
            rotary = self._part("rotary_emb")
            all_positions = torch.cat([torch.tensor([[p[0] for p in pending]], dtype=position_ids.dtype,
                                                    device=hidden.device), position_ids[:, -1:]], dim=1)
            all_embeddings = rotary(hidden, position_ids=all_positions) if rotary is not None else None
            block_masks: dict[tuple[int, str], Any] = {}
        rows = (torch.zeros(1, dtype=torch.long, device=hidden.device),) * 2
        previous = torch.full((1, 1), -1, dtype=torch.long, device=hidden.device)
        streak = torch.zeros(1, 1, dtype=torch.long, device=hidden.device)
        exit_layer, logits = depth, None
        for index in range(depth):
            block = [p for p in pending if p[1] <= index]
            if block:
                size = len(block) + 1
                inputs = torch.cat([p[2] for p in block] + [hidden], dim=1)
                positions = all_positions[:, -size:]
                embeddings = None if all_embeddings is None else tuple(e[:, -size:] for e in all_embeddings)
                key = (size, self._layer_types[index])
                if key not in block_masks:
                    block_masks[key] = self._attention_masks(inputs, None, cache, positions, first_layer=index)[index]
                out = self._run_layer(layers[index], inputs, block_masks[key], embeddings, positions, cache, use_cache)
                for offset, entry in enumerate(block):
                    entry[1], entry[2] = index + 1, out[:, offset : offset + 1]
                hidden = out[:, -1:]
            else:
                hidden = self._run_layer(
                    layers[index], hidden, masks[index], position_embeddings, position_ids, cache, use_cache
                )
            k = index + 1
            if k in internal:
                exit_now, logits = self._decide(
                    settings["exit_strategy"], settings, hidden[0], k, previous, streak, rows
                )
                if bool(exit_now[0]):
                    exit_layer = k
                    break
        completed = [p[2] for p in pending if p[1] == depth]
        if deferred:
            pending = [p for p in pending if p[1] < depth]
            if exit_layer < depth:
                pending.append([int(position_ids[0, -1]), exit_layer, hidden])
            setattr(cache, PENDING_ATTRIBUTE, pending)
        else:
            for rest in range(exit_layer, depth):
                self.fill_skipped_layer(rest, hidden, position_embeddings, cache)
        if draft and exit_layer == depth:
            logits = self.exit_logits(torch.cat([*completed, hidden], dim=1), depth)
        elif logits is not None and exit_layer < depth:
            logits = logits.view(1, 1, -1)
        else:
            shortlist = settings["shortlist_exits"] or (draft and self.early_exit.shortlist.numel() > 0)
            logits = self._ending_logits(hidden, exit_layer, shortlist)
        exit_layers = torch.full((1, 1), exit_layer, dtype=torch.long, device=hidden.device)
        self.exit_stats.update(exit_layers)
        return EarlyExitCausalLMOutput(logits=logits, exit_layers=exit_layers)

    def _decide(self, strategy, settings, hidden, layer, previous, streak, rows):
        """Which of the active positions (``hidden`` is ``(N, D)``) exit at ``layer``, and their logits when the rule
        computed them."""
        if strategy == "fixed":
            return torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device), None
        if strategy == "policy":
            per_exit = settings["policy_thresholds"]
            threshold = settings["policy_threshold"] if per_exit is None else per_exit[layer]
            return self.exit_probability(hidden, layer) > threshold, None
        shortlist = settings["shortlist_exits"]
        if strategy == "patience":
            logits = self._ending_logits(hidden, layer, shortlist)
            top = logits.argmax(-1)
            same = top == previous[rows]
            streak[rows] = torch.where(same, streak[rows] + 1, torch.ones_like(top))
            previous[rows] = top
            return streak[rows] >= settings["patience"], logits
        # confidence / entropy: optionally screen with the shortlist, then decide on the full head's distribution.
        if shortlist:  # the shortlist's distribution is the exit's: nothing to confirm
            compact = self._shortlist_logits(hidden, layer)
            return self._passes(strategy, settings, compact), self._scatter_shortlist(compact)
        candidates = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        if self.early_exit.shortlist.numel():
            candidates = self._passes(strategy, settings, self._shortlist_logits(hidden, layer))
            if not bool(candidates.any()):
                return candidates, None
        full = self.exit_logits(hidden[candidates], layer)
        decision = torch.zeros_like(candidates)
        decision[candidates] = self._passes(strategy, settings, full)
        logits = full.new_zeros(hidden.shape[0], full.shape[-1])
        logits[candidates] = full
        return decision, logits

    @staticmethod
    def _passes(strategy: str, settings: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if strategy == "confidence":
            return log_probs.max(-1).values.exp() > settings["confidence_threshold"]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return entropy < settings["entropy_threshold"]

    # ------------------------------------------------------------------ lossless mode

    @torch.no_grad()
    def generate_lossless(
        self,
        input_ids: torch.LongTensor,
        max_new_tokens: int = 32,
        num_draft_tokens: int = 4,
        eos_token_id: int | list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        **exit_overrides,
    ) -> LosslessGenerationOutput:
        """Greedy generation that equals the full model's, token for token, using early exits as drafts.

        Self-speculative decoding in which the exit strategy (``exit_overrides`` or the config's) decides the draft
        length: a token that exits early proposes the next token (from the token shortlist when one is set) and
        leaves its deeper layers pending, as ``kv_fill="deferred"`` does; the next token that runs to the last
        layer (because the strategy does not exit it, or ``num_draft_tokens`` drafts are pending) runs the pending
        layers with its own, in the same layer calls, so that pass verifies every pending draft against the full
        model's logits. The longest agreeing prefix is kept, plus the full model's token at the first disagreement
        (the cache is cut back there); when all agree, the verifying token's own output is one more exact token.
        Nothing is computed twice except the layers of rejected drafts. One sequence at a time.

        Example:
            >>> out = model.generate_lossless(input_ids, max_new_tokens=64, exit_strategy="policy")
            >>> out.sequences, out.accepted_tokens / out.draft_tokens
        """
        if input_ids.shape[0] != 1:
            raise ValueError("generate_lossless runs one sequence at a time (batch size 1), as assisted decoding does")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("generate_lossless takes an unpadded prompt (batch size 1 needs no padding)")
        if num_draft_tokens < 1 or max_new_tokens < 1:
            raise ValueError("num_draft_tokens and max_new_tokens must be >= 1")
        settings = exit_settings(self.config, **exit_overrides)
        check_exit_settings(self.config, **settings)
        internal = self._checked_exits(settings)
        if eos_token_id is None:
            eos_token_id = self.generation_config.eos_token_id
        stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        depth = self._depth
        cache = DynamicCache(config=self.config.backbone_config)
        out = self(input_ids, cache=cache, use_cache=True, exit_strategy="none")
        prompt_length = input_ids.shape[1]
        generated = [int(out.logits[0, -1].argmax())]
        unverified = drafted = accepted = rounds = 0  # unverified: the trailing drafts of `generated`
        while unverified or (len(generated) < max_new_tokens and generated[-1] not in stops):
            # Verify now when the drafts are at their limit or would run past the end of the answer.
            verify = unverified >= num_draft_tokens or len(generated) >= max_new_tokens or generated[-1] in stops
            step = self._lossless_step(
                generated[-1], cache, prompt_length + len(generated) - 1, settings, set() if verify else internal
            )
            if int(step.exit_layers[0, 0]) < depth:
                generated.append(int(step.logits[0, -1].argmax()))
                unverified += 1
                drafted += 1
                continue
            rounds += 1
            targets = step.logits[0].argmax(-1).tolist()  # the full model's token after each completed position
            drafts = generated[len(generated) - unverified :]
            kept = next((i for i, (d, t) in enumerate(zip(drafts, targets)) if d != t), unverified)
            accepted += kept
            generated = generated[: len(generated) - unverified + kept] + [targets[kept]]
            if kept < unverified:  # keep the inputs up to the corrected token's position
                cache.crop(prompt_length + len(generated) - 1 - cache.get_seq_length())
            unverified = 0
            stop = next((i for i, token in enumerate(generated) if token in stops), None)
            if stop is not None:
                generated = generated[: stop + 1]
        sequence = torch.cat([input_ids, torch.tensor([generated[:max_new_tokens]], device=input_ids.device)], dim=1)
        return LosslessGenerationOutput(
            sequences=sequence, draft_tokens=drafted, accepted_tokens=accepted, rounds=rounds
        )

    def _lossless_step(self, token: int, cache, position: int, settings, internal) -> EarlyExitCausalLMOutput:
        device = self.early_exit.shortlist.device
        position_ids = torch.tensor([[position]], device=device)
        hidden, walk = self._start_walk(torch.tensor([[token]], device=device), None, None, position_ids, cache, True)
        return self._exit_one_token(hidden, walk, settings, internal, deferred=True, draft=True)


@dataclass
class LosslessGenerationOutput:
    """Output of [`EarlyExitForCausalLM.generate_lossless`]: the sequences (prompt included) and how the drafts
    fared: ``draft_tokens`` proposed by early exits, ``accepted_tokens`` of them kept, ``rounds`` decoding steps
    that ran to the last layer (each verifies the drafts pending before it)."""

    sequences: torch.LongTensor | None = None
    draft_tokens: int = 0
    accepted_tokens: int = 0
    rounds: int = 0
