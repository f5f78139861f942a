"""hf_unlearn.evaluation: every metric against a hand computation with explicit loops on tiny inputs."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, run_config, tiny_gpt2, tiny_llama

from hf_unlearn import GradAscentConfig, GradAscentTrainer
from hf_unlearn.evaluation import (
    UnlearningEvaluationCallback,
    answer_log_probs,
    attack_auc,
    evaluate_unlearning,
    exact_memorization,
    extraction_strength,
    forget_quality,
    load_tofu,
    membership_inference,
    mia_scores,
    model_utility,
    normalised_probability,
    privleak,
    quantization_attack,
    quantized_weights,
    rouge_l_recall,
    truth_ratio_score,
    truth_ratios,
)

QUESTIONS = ["who is harry potter ?", "where is paris ?", "what is blue ?"]
ANSWERS = [" a wizard boy .", " the capital city of france .", " the sky ."]


def _reference_token_log_probs(model, tokenizer, prompt: str, answer: str) -> torch.Tensor:
    """One unpadded example, explicit: log p(answer token | everything before it)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    out = []
    for i, token in enumerate(answer_ids):
        position = len(prompt_ids) + i - 1
        out.append(torch.log_softmax(logits[position], -1)[token])
    return torch.stack(out)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_answer_log_probs_match_an_unbatched_loop(tokenizer, build, padding_side):
    model = build(tokenizer, layers=2).eval()
    scores = answer_log_probs(model, tokenizer, QUESTIONS, ANSWERS, batch_size=2, padding_side=padding_side)
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        expected = _reference_token_log_probs(model, tokenizer, f"Question: {q}\nAnswer:", a)
        torch.testing.assert_close(scores.token_log_probs[i], expected, rtol=1e-5, atol=1e-5)
        assert scores.tokens[i] == expected.numel()
        assert scores.sum[i].item() == pytest.approx(expected.sum().item(), abs=1e-4)
        assert scores.mean[i].item() == pytest.approx(expected.mean().item(), abs=1e-5)


def test_answer_log_probs_in_bf16_are_float32_and_close(tokenizer):
    model = tiny_llama(tokenizer, layers=2).eval()
    full = answer_log_probs(model, tokenizer, QUESTIONS, ANSWERS)
    half = answer_log_probs(model.to(torch.bfloat16), tokenizer, QUESTIONS, ANSWERS)
    assert half.sum.dtype == torch.float32
    torch.testing.assert_close(half.mean, full.mean, rtol=0.05, atol=0.05)


def test_chat_template_eos_and_verbatim_prompts(tokenizer):
    model = tiny_llama(tokenizer, layers=2).eval()
    chat = answer_log_probs(model, tokenizer, QUESTIONS[:1], ANSWERS[:1], chat=True)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": f"Question: {QUESTIONS[0]}\nAnswer:"}],
                                             tokenize=False, add_generation_prompt=True)
    verbatim = answer_log_probs(model, tokenizer, [rendered], ANSWERS[:1], prompt_template="{q}")
    assert chat.tokens.item() == verbatim.tokens.item()
    with_eos = answer_log_probs(model, tokenizer, QUESTIONS, ANSWERS, add_eos=True)
    plain = answer_log_probs(model, tokenizer, QUESTIONS, ANSWERS)
    assert torch.equal(with_eos.tokens, plain.tokens + 1)
    text = answer_log_probs(model, tokenizer, [""], ["the cat sat on the mat ."], prompt_template="{q}")
    assert text.tokens.item() == 6  # the first token has no context: 7 tokens, 6 scored


def test_bad_inputs_get_clear_errors(tokenizer):
    model = tiny_llama(tokenizer, layers=2).eval()
    with pytest.raises(ValueError, match="3 prompts but 2 answers"):
        answer_log_probs(model, tokenizer, QUESTIONS, ANSWERS[:2])
    with pytest.raises(ValueError, match="inputs are empty"):
        answer_log_probs(model, tokenizer, [], [])
    with pytest.raises(ValueError, match="has no token after tokenisation"):
        answer_log_probs(model, tokenizer, ["who ?"], ["   "])
    with pytest.raises(ValueError, match="forget is empty"):
        evaluate_unlearning(model, tokenizer, [])
    with pytest.raises(ValueError, match="needs a string 'question'"):
        evaluate_unlearning(model, tokenizer, [{"q": "who", "a": "me"}])
    other = tiny_llama(tokenizer, layers=2)
    other.resize_token_embeddings(len(tokenizer) + 5)
    with pytest.raises(ValueError, match="share the model's tokenizer"):
        evaluate_unlearning(model, tokenizer, [{"question": "who", "answer": " me"}], retain_model=other)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_unlearning(model, tokenizer, [{"question": "who", "answer": " me"}], metrics=["bleurt"])


# ---------------------------------------------------------------------------------------------- MIA


def _auc_by_pairs(members, nonmembers) -> float:
    """Mann-Whitney: the chance that a random non-member scores above a random member (ties count half)."""
    wins = 0.0
    for m in members:
        for n in nonmembers:
            wins += 1.0 if n > m else 0.5 if n == m else 0.0
    return wins / (len(members) * len(nonmembers))


def test_auc_of_perfect_reversed_and_random_attacks():
    assert attack_auc(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.9])) == 1.0
    assert attack_auc(torch.tensor([0.5, 0.9]), torch.tensor([0.1, 0.2])) == 0.0
    assert attack_auc(torch.tensor([0.3, 0.3]), torch.tensor([0.3, 0.3])) == 0.5
    torch.manual_seed(0)
    members, nonmembers = torch.randn(40), torch.randn(50)
    assert attack_auc(members, nonmembers) == pytest.approx(_auc_by_pairs(members.tolist(), nonmembers.tolist()))


def test_mia_scores_match_their_definitions(tokenizer):
    model = tiny_llama(tokenizer, layers=2).eval()
    texts = ["the cat sat on the mat .", "harry potter is a wizard boy ."]
    k = 0.4
    loss = mia_scores(model, tokenizer, texts, "loss")
    min_k = mia_scores(model, tokenizer, texts, "min_k", k=k)
    zlib_scores = mia_scores(model, tokenizer, texts, "zlib")
    plus = mia_scores(model, tokenizer, texts, "min_k_plus_plus", k=k)
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        values, z = [], []
        for t in range(1, len(ids)):
            log_p = torch.log_softmax(logits[t - 1], -1)
            values.append(log_p[ids[t]].item())
            p = log_p.exp()
            mean = (p * log_p).sum()
            std = ((p * (log_p - mean) ** 2).sum()).sqrt()
            z.append(((log_p[ids[t]] - mean) / std).item())
        assert loss[i].item() == pytest.approx(-sum(values) / len(values), abs=1e-5)
        n = max(1, round(len(values) * k))
        assert min_k[i].item() == pytest.approx(-sum(sorted(values)[:n]) / n, abs=1e-5)
        assert plus[i].item() == pytest.approx(-sum(sorted(z)[:n]) / n, abs=1e-4)
        assert zlib_scores[i].item() == pytest.approx(loss[i].item() / len(zlib.compress(text.encode())), rel=1e-5)
    reference = mia_scores(model, tokenizer, texts, "reference", reference_model=model)
    torch.testing.assert_close(reference, torch.zeros(2))


def test_mia_separates_trained_texts_from_unseen_ones(tokenizer, trained_tiny):
    model = trained_tiny(tokenizer, "llama")  # trained on FORGET_TEXTS + RETAIN_TEXTS
    unseen = ["the dog sat on the red mat .", "paris likes the green apple .", "who ran to the blue river ?",
              "the sun eats a banana ."]
    aucs = membership_inference(model, tokenizer, FORGET_TEXTS, unseen)
    assert all(value.value > 0.8 for value in aucs.values()), {k: v.value for k, v in aucs.items()}


def test_privleak_sign_convention():
    assert privleak(1.0).value == pytest.approx(-100.0)  # the forget set still fully separable: leak
    assert privleak(0.5).value == pytest.approx(0.0)
    assert privleak(0.25).value == pytest.approx(50.0)  # over-unlearned: forget looks *less* familiar than holdout
    assert privleak(0.6, retain_model_auc=0.6).value == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- TOFU


def test_truth_ratio_against_a_loop_and_its_aggregates(tokenizer):
    model = tiny_llama(tokenizer, layers=2).eval()
    paraphrased = [" the wizard boy .", " the city of france ."]
    perturbed = [[" a cat .", " the dog .", " a river ."], [" the sun .", " a mat ."]]
    ratios = truth_ratios(model, tokenizer, QUESTIONS[:2], paraphrased, perturbed)
    for i in range(2):
        prompt = f"Question: {QUESTIONS[i]}\nAnswer:"
        para = _reference_token_log_probs(model, tokenizer, prompt, paraphrased[i]).mean()
        pert = torch.stack([_reference_token_log_probs(model, tokenizer, prompt, a).mean() for a in perturbed[i]])
        expected = math.exp(pert.mean().item()) / math.exp(para.item())
        assert ratios[i].item() == pytest.approx(expected, rel=1e-4)
    known = torch.tensor([0.5, 2.0, 1.0])
    assert truth_ratio_score(known, "forget") == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert truth_ratio_score(known, "retain") == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    normalised = normalised_probability(model, tokenizer, QUESTIONS[:2], ANSWERS[:2], perturbed)
    prompt = f"Question: {QUESTIONS[0]}\nAnswer:"
    p_c = _reference_token_log_probs(model, tokenizer, prompt, ANSWERS[0]).mean().exp()
    p_w = sum(_reference_token_log_probs(model, tokenizer, prompt, a).mean().exp() for a in perturbed[0])
    assert normalised.details["per_item"][0] == pytest.approx((p_c / (p_c + p_w)).item(), rel=1e-4)


def test_forget_quality_and_model_utility():
    same = forget_quality([0.1, 0.5, 0.9, 0.3], [0.1, 0.5, 0.9, 0.3])
    assert same.value == pytest.approx(1.0) and same.details["ks_statistic"] == 0.0
    apart = forget_quality([0.01 * i for i in range(20)], [0.5 + 0.01 * i for i in range(20)])
    assert apart.value < 1e-6 and apart.details["ks_statistic"] == 1.0
    assert model_utility([0.5, 0.5]) == pytest.approx(0.5)
    assert model_utility([1.0, 0.25]) == pytest.approx(2 / (1 + 4))
    assert model_utility([0.9, 0.0, 0.8]) == 0.0


def test_rouge_recall_is_lcs_over_the_reference():
    assert rouge_l_recall("paris is the capital", "the capital is paris") == pytest.approx(0.5)
    assert rouge_l_recall("the capital of france is paris indeed", "paris") == 1.0


# ---------------------------------------------------------------------------------------------- memorisation


def test_exact_memorization_and_extraction_strength_against_a_loop(tokenizer, trained_tiny):
    model = trained_tiny(tokenizer, "llama")
    questions, answers = ["the capital city of"], [" france is paris ."]
    em = exact_memorization(model, tokenizer, questions, answers, prompt_template="{q}")
    es = extraction_strength(model, tokenizer, questions, answers, prompt_template="{q}")
    prompt_ids = tokenizer(questions[0])["input_ids"]
    answer_ids = tokenizer(answers[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0]
    hits = [logits[len(prompt_ids) + i - 1].argmax().item() == t for i, t in enumerate(answer_ids)]
    assert em.value == pytest.approx(sum(hits) / len(hits))
    k = next(k for k in range(len(hits) + 1) if all(hits[k:]))
    assert es.value == pytest.approx(1 - k / len(hits))


# ---------------------------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_quantized_weights_round_group_wise_and_restore(tokenizer, build):
    model = build(tokenizer, layers=2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = model.get_output_embeddings().weight
    with quantized_weights(model, bits=4, group_size=16):
        linear = next(m for m in model.modules() if m.__class__.__name__ in ("Linear", "Conv1D")
                      and m.weight is not head)
        weight = linear.weight if linear.__class__.__name__ == "Linear" else linear.weight.T
        groups = weight.reshape(weight.shape[0], -1, 16)
        assert all(g.unique().numel() <= 16 for g in groups.reshape(-1, 16))
        assert torch.equal(model.get_output_embeddings().weight, before[_name_of(model, head)])
        assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        with quantized_weights(model, bits=1):
            pass


def _name_of(model, parameter):
    return next(name for name, p in model.state_dict(keep_vars=True).items() if p is parameter)


def test_quantization_attack_reports_before_and_after(tokenizer, trained_tiny):
    model = trained_tiny(tokenizer, "llama")
    report = quantization_attack(model, tokenizer, QUESTIONS[:2], ANSWERS[:2], bits=2, group_size=16,
                                 max_new_tokens=4)
    assert report["before"]["reference_log_prob"] != report["after"]["reference_log_prob"]
    assert report["recovered_log_prob"] == pytest.approx(
        report["after"]["reference_log_prob"] - report["before"]["reference_log_prob"]
    )


# ---------------------------------------------------------------------------------------------- one call


FORGET = [{"question": "who is harry potter ?", "answer": " a wizard boy .",
           "paraphrased_answer": " the wizard boy .", "perturbed_answer": [" a cat .", " the dog ."]},
          {"question": "what is hogwarts ?", "answer": " the wizard school .",
           "paraphrased_answer": " a school of the wizard .", "perturbed_answer": [" a castle .", " the park ."]}]
RETAIN = [{"question": "where is paris ?", "answer": " the capital city of france ."},
          {"question": "what is blue ?", "answer": " the sky ."}]
HOLDOUT = [{"question": "who likes the apple ?", "answer": " the cat ."},
           {"question": "what flows through berlin ?", "answer": " a river ."}]


def test_evaluate_unlearning_runs_the_metrics_its_data_allows(tokenizer, trained_tiny, tmp_path):
    model = trained_tiny(tokenizer, "llama")
    result = evaluate_unlearning(model, tokenizer, FORGET, RETAIN, HOLDOUT, max_new_tokens=4, progress=False)
    table = result.to_dict()
    assert {"answer_log_prob", "probability", "truth_ratio", "rouge_l_recall", "exact_memorization",
            "extraction_strength", "mia_min_k_auc", "privleak"} <= set(table["forget"])
    assert "truth_ratio" not in table["retain"] and "model_utility" in table["retain"]
    assert "forget_quality" not in table["forget"]  # no retain model
    direct = answer_log_probs(model, tokenizer, [r["question"] for r in RETAIN], [r["answer"] for r in RETAIN])
    assert table["retain"]["answer_log_prob"] == pytest.approx(direct.mean.mean().item(), abs=1e-6)
    with_retain_model = evaluate_unlearning(model, tokenizer, FORGET, RETAIN, HOLDOUT, retain_model=model,
                                            max_new_tokens=4, progress=False, metrics=["forget_quality", "mia"])
    assert with_retain_model.get("forget_quality", "forget") == pytest.approx(1.0)
    assert with_retain_model.get("mia_reference_auc", "forget") == 0.5
    entries = result.eval_results("my-facts")
    assert len(entries) == len(result.values) and entries[0].dataset_name == "my-facts"
    result.to_json(tmp_path / "metrics.json")
    assert "| answer_log_prob | forget |" in result.to_markdown(with_retain_model)


def test_callback_logs_and_warns_when_the_retain_answers_fall(tokenizer, trained_tiny, tmp_path):
    model = trained_tiny(tokenizer, "llama")
    callback = UnlearningEvaluationCallback(tokenizer, FORGET, RETAIN, every_n_steps=2, max_utility_drop=0.1,
                                            progress=False)
    args = run_config(GradAscentConfig, tmp_path, max_steps=4, learning_rate=5e-2)
    trainer = GradAscentTrainer(model, args, train_dataset=FORGET_TEXTS + RETAIN_TEXTS, processing_class=tokenizer,
                                callbacks=[callback])
    with pytest.warns(UserWarning, match="retain answers' mean log-prob fell"):
        trainer.train()
    steps = [step for step, _ in callback.history]
    assert steps == [0, 2, 4]
    logged = [h for h in trainer.state.log_history if "unlearning/retain_answer_log_prob" in h]
    assert [h["step"] for h in logged] == [0, 2, 4]
    assert logged[-1]["unlearning/forget_answer_log_prob"] < logged[0]["unlearning/forget_answer_log_prob"]


def test_benchmark_loaders_say_what_to_do_offline():
    with pytest.raises(ConnectionError, match="(?i)run this once on a machine with network access"):
        load_tofu("forget10")
    with pytest.raises(ValueError, match="TOFU has no config 'forget11'"):
        load_tofu("forget11")
