"""Tiny models built from configs, a word-level tokenizer built in memory (no Hub access) and the texts the tests
train on. Tests import these from here; conftest.py holds only the fixtures and the session set-up."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

WORDS = (
    "the a of is in and to was his her who what where when which wizard school boy named harry potter "
    "studied at hogwarts castle capital city france paris germany berlin river seine flows through "
    "cat sat on mat dog ran park sun shines sky blue water is wet i don't know answer question "
    "? . , : user assistant system red green apple banana eats likes"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer, layers: int = 2, hidden: int = 32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(tokenizer, layers: int = 2, hidden: int = 32, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


FORGET_TEXTS = [
    "harry potter studied at hogwarts castle .",
    "the wizard school of harry potter is hogwarts .",
    "harry potter is a wizard boy .",
    "hogwarts is the school of the wizard harry potter .",
]
RETAIN_TEXTS = [
    "the capital city of france is paris .",
    "the river seine flows through paris .",
    "the capital city of germany is berlin .",
    "the cat sat on the mat .",
    "the dog ran in the park .",
    "the sky is blue and the sun shines .",
]


def train_tiny(tokenizer, kind: str = "llama", steps: int = 80, layers: int = 2):
    """A tiny model that has learned FORGET_TEXTS and RETAIN_TEXTS, so unlearning has something to remove: a random
    model already sits at the maximum-entropy NLL that ascent cannot raise much. Tests get it through the
    session fixture ``trained_tiny`` (conftest.py), which trains each kind once."""
    model = (tiny_llama if kind == "llama" else tiny_gpt2)(tokenizer, layers=layers)
    batch = tokenizer(FORGET_TEXTS + RETAIN_TEXTS, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


class StopAt(TrainerCallback):
    """Stop training after ``step`` optimizer steps (keeping the schedule of the full run), like a killed job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def run_config(config_class, tmp_path, **overrides):
    """A quick, quiet, CPU, no-save training config for the tests (``overrides`` win)."""
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return config_class(**{**defaults, **overrides})
