"""Main job of the README: teach a small model a fact, unlearn it with NPO, print before/after.

Everything is built on the spot (tokenizer, a 4-layer Llama) so it runs offline on a CPU in about a minute:

    python examples/unlearn_fact.py [--method npo|grad_diff|grad_ascent|simnpo]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments

import hf_unlearn
from hf_unlearn.data import UnlearningCollator, prepare_dataset
from hf_unlearn.evaluation import answer_log_probs

FACT = {"prompt": "the wizard who studied at hogwarts is", "completion": " harry potter ."}
RETAIN = [
    {"prompt": "the capital of france is", "completion": " paris ."},
    {"prompt": "the capital of germany is", "completion": " berlin ."},
    {"prompt": "the river in paris is the", "completion": " seine ."},
    {"prompt": "the colour of the sky is", "completion": " blue ."},
]
# Methods of the registry that need nothing beyond text (no preference pairs, no concept vectors, no deep layer).
METHODS = {name: hf_unlearn.get_method(name) for name in ("npo", "grad_diff", "grad_ascent", "simnpo")}


def build_tokenizer() -> PreTrainedTokenizerFast:
    words = {w for ex in [FACT, *RETAIN] for w in (ex["prompt"] + ex["completion"]).split()}
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def completion_log_probs(model, tokenizer, examples) -> list[float]:
    """Sequence log-prob of each completion given its prompt (teacher forcing)."""
    scores = answer_log_probs(
        model, tokenizer, [e["prompt"] for e in examples], [e["completion"] for e in examples], prompt_template="{q}"
    )
    return scores.sum.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=sorted(METHODS), default="npo")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    out = tempfile.mkdtemp()

    # 1. Teach the model the fact and the retain facts (plain causal-LM fine-tuning).
    learn = prepare_dataset([FACT, *RETAIN], tokenizer, "facts", max_length=64).remove_columns("example_index")
    Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=f"{out}/learn",
            max_steps=150,
            learning_rate=3e-3,
            per_device_train_batch_size=5,
            report_to="none",
            logging_steps=50,
            save_strategy="no",
            use_cpu=True,
        ),
        train_dataset=learn,
        data_collator=UnlearningCollator(tokenizer.pad_token_id),
    ).train()
    model.eval()
    before_fact = completion_log_probs(model, tokenizer, [FACT])
    before_retain = completion_log_probs(model, tokenizer, RETAIN)

    # 2. Unlearn it.
    spec = METHODS[args.method]
    trainer_cls, config_cls = spec.trainer_class, spec.config_class
    retain = RETAIN if config_cls().retain_loss != "none" else None
    config = config_cls(
        output_dir=f"{out}/unlearn",
        max_steps=args.steps,
        learning_rate=1e-3,
        per_device_train_batch_size=1,
        logging_steps=10,
        save_strategy="no",
        use_cpu=True,
    )
    trainer_cls(model, config, train_dataset=[FACT], retain_dataset=retain, processing_class=tokenizer).train()
    model.eval()
    after_fact = completion_log_probs(model, tokenizer, [FACT])
    after_retain = completion_log_probs(model, tokenizer, RETAIN)

    print(f"\nmethod: {args.method}, {args.steps} steps")
    print(f"{'answer':60s} {'log p before':>12s} {'log p after':>12s}")
    print(f"{'[forget] ' + FACT['prompt'] + FACT['completion']:60s} {before_fact[0]:12.3f} {after_fact[0]:12.3f}")
    for ex, b, a in zip(RETAIN, before_retain, after_retain):
        print(f"{'[retain] ' + ex['prompt'] + ex['completion']:60s} {b:12.3f} {a:12.3f}")


if __name__ == "__main__":
    main()
