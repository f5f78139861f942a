"""Architecture adapters on a tiny config of each supported family."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model

from hf_unlearn.architectures import (
    ArchitectureAdapter,
    decoder_layers,
    final_norm,
    get_adapter,
    mlp_out_module,
    register_architecture,
    unembedding,
    value_vectors_view,
)

D, FF, V = 32, 64, 50
COMMON = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=FF,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", COMMON),
    "mistral": ("MistralConfig", "MistralForCausalLM", COMMON),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", COMMON),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**COMMON, "head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**COMMON, "head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {**COMMON, "head_dim": 8}),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", COMMON),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", COMMON),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**COMMON, "pad_token_id": 0}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=V, n_embd=D, n_inner=FF, n_layer=2, n_head=4)),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=4),
    ),
}


def build(name):
    config_name, model_name, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    return getattr(transformers, model_name)(getattr(transformers, config_name)(**kwargs)).eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_adapter_finds_modules_and_value_vectors(name):
    model = build(name)
    # The adapter's layer list is the one the forward runs: its first layer's output is the model's hidden state 1.
    seen = {}
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, args, out: seen.update(h=out))
    with torch.no_grad():
        states = model(input_ids=torch.tensor([[1, 2, 3, 4]]), output_hidden_states=True).hidden_states
    handle.remove()
    torch.testing.assert_close(seen["h"][0] if isinstance(seen["h"], tuple) else seen["h"], states[1])
    assert len(states) == len(decoder_layers(model)) + 1
    view = value_vectors_view(model, 1)
    assert view.shape == (D, FF)
    assert unembedding(model).shape == (V, D)
    assert isinstance(final_norm(model), torch.nn.Module)

    # The MLP output is the coefficient-weighted sum of the value vectors: out = view @ c (+ bias).
    seen = {}
    module = mlp_out_module(model, 1)
    handle = module.register_forward_hook(lambda m, args, out: seen.update(c=args[0], out=out))
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    handle.remove()
    bias = getattr(module, "bias", None)
    expected = seen["c"] @ view.T + (bias if bias is not None else 0)
    torch.testing.assert_close(seen["out"], expected, atol=1e-5, rtol=1e-4)


def test_gpt2_is_transposed():
    assert get_adapter(build("gpt2")).transposed
    assert not get_adapter(build("llama")).transposed


def test_peft_model_resolves_to_its_base():
    model = build("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["down_proj"], task_type="CAUSAL_LM"))
    assert len(decoder_layers(peft_model)) == 2
    assert value_vectors_view(peft_model, 0).shape == (D, FF)


def test_unsupported_model_lists_supported_and_how_to_register():
    model = transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=V, hidden_size=D, ffn_dim=FF, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=D
        )
    )
    with pytest.raises(ValueError, match=r"model_type='opt'.*Supported: .*llama.*register_architecture"):
        get_adapter(model)
    register_architecture(
        "opt",
        ArchitectureAdapter(
            layers="model.decoder.layers",
            mlp_out="fc2",
            attn_out="self_attn.out_proj",
            final_norm="model.decoder.final_layer_norm",
        ),
    )
    try:
        assert value_vectors_view(model, 0).shape == (D, FF)
        with pytest.raises(ValueError, match="already registered"):
            register_architecture("opt", get_adapter(model))
    finally:
        from hf_unlearn.architectures import ARCHITECTURES

        ARCHITECTURES.pop("opt")


def test_layer_out_of_range():
    with pytest.raises(IndexError, match="2 decoder layers"):
        mlp_out_module(build("llama"), 5)
