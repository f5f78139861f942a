"""Configuration of the early-exit causal LM.

This file travels with saved checkpoints as remote code: it imports nothing from hf_unlearn at module level.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

EXIT_STRATEGIES = ("policy", "confidence", "entropy", "patience", "fixed", "none")
EXIT_HEAD_KINDS = ("shared", "adapter", "translator")
KV_FILLS = ("state", "compute", "deferred")
POLICY_FEATURES = ("hidden", "hidden+confidence")


class EarlyExitConfig(PretrainedConfig):
    r"""
    Configuration of an [`EarlyExitForCausalLM`]: a causal LM (the backbone, whose config this one holds) with
    internal exits, optional per-exit adapters and a policy head.

    Exit layers count decoder layers: exiting "at layer k" means that the first k decoder layers ran. The last layer
    (the backbone's own output) is always an exit.

    Parameters:
        backbone_config (`PretrainedConfig` or `dict`):
            Config of the wrapped causal LM.
        exit_layers (`list[int]`, *optional*):
            Layers at which a token may exit (1-based counts, below the number of layers). Defaults to every
            `exit_interval`-th layer from `min_exit_layer` on.
        min_exit_layer (`int`, *optional*):
            Shallowest exit when `exit_layers` is not given; defaults to a quarter of the depth (at least 1).
        exit_interval (`int`, *optional*, defaults to `1`):
            Spacing of the default exits.
        exit_head (`str`, *optional*, defaults to `"shared"`):
            `"shared"`: each exit uses the backbone's final norm and LM head. `"adapter"`: a small residual adapter
            per exit (zero-initialised, so it starts as `"shared"`) in front of the shared head. `"translator"`: the
            adapter plus a full-rank linear map (`hidden_size**2` weights per exit, the tuned lens's translator),
            far more accurate from shallow and middle layers, at about a tenth of a decoder layer's compute for
            the one exit a token takes.
        adapter_rank (`int`, *optional*, defaults to `32`):
            Bottleneck width of the `"adapter"` and `"translator"` exit heads.
        policy_hidden_size (`int`, *optional*, defaults to `32`):
            Hidden width of the policy head, one MLP shared by all exits plus a learned per-exit embedding; its input
            is the final-normed hidden state. Its cost is about `hidden_size * policy_hidden_size` multiply-adds per
            token and exit, far below the vocabulary projection.
        policy_features (`str`, *optional*, defaults to `"hidden"`):
            Input of the policy head: `"hidden"` (the final-normed hidden state) or `"hidden+confidence"` (plus the
            exit's top-1 probability, top-1 minus top-2 probability and entropy, computed over the token shortlist:
            a better signal of whether the exit is right, at the cost of the shortlist's slice of the LM head at
            every exit the policy checks).
        policy_trained (`bool`, *optional*, defaults to `False`):
            Whether the policy head has been trained (set by the ConsistentEE trainer); the `"policy"` strategy warns
            while it is `False`.
        exit_strategy (`str`, *optional*, defaults to `"none"`):
            Inference rule: `"policy"` (the policy's exit probability passes `policy_threshold`), `"confidence"`
            (top-1 probability passes `confidence_threshold`), `"entropy"` (entropy in nats below
            `entropy_threshold`), `"patience"` (the same top-1 token at `patience` consecutive exits), `"fixed"`
            (always at `fixed_exit_layer`) or `"none"` (the full model, exactly).
        policy_threshold (`float`, *optional*, defaults to `0.5`):
            Exit probability above which the `"policy"` strategy exits, in (0, 1).
        policy_thresholds (`dict[int, float]`, *optional*):
            Per-exit thresholds of the `"policy"` strategy, `{exit layer: threshold}`: the policy decides only at these
            exits, each with its own threshold (`policy_threshold` is then unused).
            `hf_unlearn.early_exit.calibrate_policy_thresholds` fits them to a target agreement on calibration text.
        confidence_threshold (`float`, *optional*, defaults to `0.9`):
            Top-1 probability above which the `"confidence"` strategy exits, in (0, 1).
        entropy_threshold (`float`, *optional*, defaults to `0.5`):
            Entropy (nats) below which the `"entropy"` strategy exits, > 0.
        patience (`int`, *optional*, defaults to `2`):
            Consecutive exits that must agree on the top-1 token for the `"patience"` strategy, >= 1.
        fixed_exit_layer (`int`, *optional*):
            Exit layer of the `"fixed"` strategy; one of `exit_layers`.
        checked_exits (`list[int]`, *optional*):
            The internal exits at which the `"policy"`, `"confidence"`, `"entropy"` and `"patience"` strategies
            decide (default: all of `exit_layers`). Every check costs time, also for the tokens that go on, so
            skipping exits where few tokens stop can be faster: `hf_unlearn.early_exit.select_checked_exits` picks
            them from calibration text.
        shortlist_size (`int`, *optional*, defaults to `0`):
            Size of the token shortlist used to screen exits cheaply for the `"confidence"`, `"entropy"` and
            `"patience"` strategies (0: none). The shortlist only screens: a token exits only where the full head
            confirms, so a shortlist can delay an exit but never cause one the full head would refuse. Fill it with
            [`EarlyExitForCausalLM.set_exit_shortlist`].
        shortlist_exits (`bool`, *optional*, defaults to `False`):
            Internal exits predict only the shortlist's tokens (logits `-inf` for the others), from the shortlist's
            rows of the LM head: about `vocab_size / shortlist_size` times cheaper than the full head, which an
            exit otherwise pays again for every token it ends (on SmolLM2-135M 2.6 decoder layers on a CPU).
            Meant for exits trained on the shortlist (`loss_on_shortlist`); a token outside it can only come from the
            last layer. The confidence, entropy and patience rules then decide on the shortlist's distribution.
        kv_fill (`str`, *optional*, defaults to `"state"`):
            Key/value entries of the layers a token skips: `"state"` projects the exit hidden state through each
            skipped layer's own input norm and key/value projections (the same rule in training); `"compute"` runs
            the skipped layers for that token (exact cache, nothing saved for that token; a quality reference);
            `"deferred"` runs them with the next token, in the same layer calls (exact cache, as `"compute"`; saves
            time where a layer call with two positions costs little more than with one: batch-1 decoding, one
            sequence; batched or teacher-forced calls run as `"compute"`, and training simulates `"state"`).
        backbone_layout (`dict`, *optional*):
            How to walk the backbone layer by layer (module paths), copied from hf_unlearn's architecture adapters
            when the model is built, so that a saved checkpoint needs no adapter table to load.
    """

    model_type = "early_exit_causal_lm"

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        exit_layers: list[int] | None = None,
        min_exit_layer: int | None = None,
        exit_interval: int = 1,
        exit_head: str = "shared",
        adapter_rank: int = 32,
        policy_hidden_size: int = 32,
        policy_features: str = "hidden",
        policy_trained: bool = False,
        exit_strategy: str = "none",
        policy_threshold: float = 0.5,
        policy_thresholds: dict[int, float] | None = None,
        confidence_threshold: float = 0.9,
        entropy_threshold: float = 0.5,
        patience: int = 2,
        fixed_exit_layer: int | None = None,
        checked_exits: list[int] | None = None,
        shortlist_size: int = 0,
        shortlist_exits: bool = False,
        kv_fill: str = "state",
        backbone_layout: dict[str, Any] | None = None,
        **kwargs,
    ):
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        self.backbone_config = backbone_config
        self.exit_layers = exit_layers
        self.min_exit_layer = min_exit_layer
        self.exit_interval = exit_interval
        self.exit_head = exit_head
        self.adapter_rank = adapter_rank
        self.policy_hidden_size = policy_hidden_size
        self.policy_features = policy_features
        self.policy_trained = policy_trained
        self.exit_strategy = exit_strategy
        self.policy_threshold = policy_threshold
        # JSON turns the keys into strings: back to exit layers.
        self.policy_thresholds = (
            None if policy_thresholds is None else {int(k): float(v) for k, v in policy_thresholds.items()}
        )
        self.confidence_threshold = confidence_threshold
        self.entropy_threshold = entropy_threshold
        self.patience = patience
        self.fixed_exit_layer = fixed_exit_layer
        self.checked_exits = checked_exits
        self.shortlist_size = shortlist_size
        self.shortlist_exits = shortlist_exits
        self.kv_fill = kv_fill
        self.backbone_layout = backbone_layout
        if backbone_config is not None:
            for name in ("vocab_size", "hidden_size", "pad_token_id", "bos_token_id", "eos_token_id"):
                kwargs.setdefault(name, getattr(backbone_config, name, None))
            kwargs.setdefault("tie_word_embeddings", getattr(backbone_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        if backbone_config is not None:
            self._resolve_and_check()

    @property
    def num_hidden_layers(self) -> int:
        return self.backbone_config.num_hidden_layers

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        # Caches, generation and attention masks read the backbone's layer count, heads and windows.
        return self.backbone_config

    def _resolve_and_check(self) -> None:
        if self.backbone_layout is None:
            try:  # hf_unlearn's adapter table; a checkpoint loaded as remote code carries its layout instead
                from hf_unlearn.architectures import early_exit_layout
            except ImportError:
                early_exit_layout = None
            if early_exit_layout is not None:
                self.backbone_layout = early_exit_layout(self.backbone_config)
        depth = self.num_hidden_layers
        if self.exit_layers is None:
            if self.exit_interval < 1:
                raise ValueError(f"exit_interval must be >= 1 (got {self.exit_interval})")
            start = self.min_exit_layer if self.min_exit_layer is not None else max(1, depth // 4)
            if not 1 <= start <= depth:
                raise ValueError(
                    f"min_exit_layer must be in [1, {depth}] for this {depth}-layer backbone (got {start})"
                )
            self.exit_layers = list(range(start, depth, self.exit_interval))
        layers = sorted({int(k) for k in self.exit_layers})
        bad = [k for k in layers if not 1 <= k <= depth]
        if bad:
            raise ValueError(
                f"exit_layers {bad} are out of range: the backbone has {depth} decoder layers, so exits are "
                f"1..{depth} (exit k = after the first k layers; {depth} is the full model and always an exit)"
            )
        self.exit_layers = [k for k in layers if k < depth]
        if self.exit_head not in EXIT_HEAD_KINDS:
            raise ValueError(f"exit_head={self.exit_head!r} is unknown; choose one of {list(EXIT_HEAD_KINDS)}")
        if self.policy_features not in POLICY_FEATURES:
            raise ValueError(
                f"policy_features={self.policy_features!r} is unknown; choose one of {list(POLICY_FEATURES)}"
            )
        if self.kv_fill not in KV_FILLS:
            raise ValueError(f"kv_fill={self.kv_fill!r} is unknown; choose one of {list(KV_FILLS)}")
        if self.adapter_rank < 1 or self.policy_hidden_size < 1 or self.shortlist_size < 0:
            raise ValueError("adapter_rank and policy_hidden_size must be >= 1 and shortlist_size >= 0")
        check_exit_settings(self, **exit_settings(self))

    @property
    def all_exits(self) -> list[int]:
        """The exit layers including the last one (the full model)."""
        return [*self.exit_layers, self.num_hidden_layers]


EXIT_SETTING_NAMES = (
    "exit_strategy",
    "policy_threshold",
    "policy_thresholds",
    "confidence_threshold",
    "entropy_threshold",
    "patience",
    "fixed_exit_layer",
    "checked_exits",
    "shortlist_exits",
)


def exit_settings(config: EarlyExitConfig, **overrides) -> dict[str, Any]:
    """The inference settings of ``config`` with ``overrides`` (those not ``None``) applied."""
    settings = {name: getattr(config, name) for name in EXIT_SETTING_NAMES}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def check_exit_settings(config: EarlyExitConfig, **settings) -> None:
    """A clear error for an unknown strategy or a threshold outside its range."""
    strategy = settings["exit_strategy"]
    if strategy not in EXIT_STRATEGIES:
        raise ValueError(f"exit_strategy={strategy!r} is unknown; choose one of {list(EXIT_STRATEGIES)}")
    for name in ("policy_threshold", "confidence_threshold"):
        value = settings[name]
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name} must be a probability in (0, 1) (got {value})")
    if not float(settings["entropy_threshold"]) > 0.0:
        raise ValueError(f"entropy_threshold must be > 0 nats (got {settings['entropy_threshold']})")
    patience = settings["patience"]
    if int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be a whole number >= 1 (got {patience})")
    per_exit = settings["policy_thresholds"]
    if per_exit is not None:
        if not isinstance(per_exit, dict):
            raise ValueError(
                f"policy_thresholds maps exit layers to thresholds, e.g. {{24: 0.6}} (got {type(per_exit).__name__})"
            )
        if not set(per_exit) <= set(config.exit_layers):
            raise ValueError(
                f"policy_thresholds' keys must be internal exit layers {config.exit_layers} (got {sorted(per_exit)})"
            )
        bad = {k: v for k, v in per_exit.items() if not 0.0 < float(v) < 1.0}
        if bad:
            raise ValueError(f"policy_thresholds' values must be probabilities in (0, 1) (got {bad})")
    checked = settings["checked_exits"]
    if checked is not None and not set(checked) <= set(config.exit_layers):
        raise ValueError(
            f"checked_exits must be a subset of the internal exit layers {config.exit_layers} (got {list(checked)})"
        )
    if settings["shortlist_exits"] and not config.shortlist_size:
        raise ValueError(
            "shortlist_exits=True needs a token shortlist: set one with "
            "model.set_exit_shortlist(token_shortlist(tokenizer, texts, size=4096))"
        )
    fixed = settings["fixed_exit_layer"]
    if strategy == "fixed" and fixed not in config.all_exits:
        raise ValueError(
            f"exit_strategy='fixed' needs fixed_exit_layer set to one of the exit layers {config.all_exits} "
            f"(got {fixed})"
        )
