"""Model cards and Hub pushes, offline: huggingface_hub's client talks to an httpx MockTransport that plays the Hub.

The fake Hub records every commit (the files and their bytes), so the tests check what would have been uploaded.
No test touches the network: conftest sets HF_HUB_OFFLINE=1, which stays set (the fake client has no offline hook).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from fake_hub import TOKEN
from huggingface_hub import HfApi, ModelCard
from tiny_models import FORGET_TEXTS, build_tokenizer, run_config, tiny_llama
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

import hf_unlearn as hu
from hf_unlearn.concepts.audit import AuditTable
from hf_unlearn.dissect import DissectionTable
from hf_unlearn.early_exit import EarlyExitConfig, EarlyExitForCausalLM, evaluate_exits
from hf_unlearn.evaluation import MetricValue, UnlearningEvaluation
from hf_unlearn.hub import (
    AttackResult,
    HubPushError,
    UnlearningAudit,
    push_audited_to_hub,
    push_early_exit_to_hub,
    render_early_exit_card,
    render_unlearning_card,
    save_audited,
)
from hf_unlearn.hub.audit import _num


def _materialise(files: dict[str, bytes], folder: Path) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


# ---------------------------------------------------------------------------------------------- an audit


def _evaluation(forget: float, retain: float, probability: float) -> UnlearningEvaluation:
    return UnlearningEvaluation([
        MetricValue("answer_log_prob", forget, "forget"),
        MetricValue("answer_log_prob", retain, "retain"),
        MetricValue("probability", probability, "forget", "TOFU"),
    ], {"splits": {"forget": 3, "retain": 5}})


def _audit(cosine: float = 0.99731, forget_after: float = -4.8172, krs: float = 0.8127) -> UnlearningAudit:
    vectors = [
        {"concept": "harry potter", "layer": 1, "dim": 17, "cosine_similarity": cosine, "norm_distance": 0.0213,
         "jaccard_similarity": 0.9417},
        {"concept": "harry potter", "layer": 1, "dim": 42, "cosine_similarity": cosine - 0.00122,
         "norm_distance": 0.0318, "jaccard_similarity": 0.9123},
    ]
    layers = [{"layer": 1, "relative_change": 0.00311, "frobenius_distance": 0.0733, "changed_vectors": 64,
               "total_vectors": 64}]
    dissection = DissectionTable([
        {"experiment": "activation_patching", "component": "mlp", "layer": 0, "krs": 0.1374},
        {"experiment": "activation_patching", "component": "mlp", "layer": 1, "krs": krs},
        {"experiment": "parameter_restoration", "component": "attention", "layer": 1, "krs": 0.2291},
    ])
    return UnlearningAudit(
        method="npo",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        concept="Harry Potter",
        hyperparameters={"learning_rate": 1.3e-05, "beta": 0.1, "max_steps": 37},
        datasets={"forget": "me/harry-potter-forget", "retain": "local retain questions (5)"},
        evaluation_before=_evaluation(-0.6113, -1.2048, 0.5427),
        evaluation_after=_evaluation(forget_after, -1.3391, 0.0081),
        concept_vectors=AuditTable(vectors, layers, top_k=200),
        dissection=dissection,
        attacks=[AttackResult("relearning", "rouge_l", 0.6644, 0.0712, {"steps": 11}),
                 AttackResult("jailbreak (role_play)", "rouge_l", 0.2153)],
        training_metrics={"loss": 0.7261, "forget_loss": 0.9312},
    )


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text))


def _audit_numbers(value) -> set[str]:
    """Every number the audit holds, as the cards format it, and numbers written inside its strings."""
    if isinstance(value, dict):
        return set().union(*(_audit_numbers(v) for v in value.values()), *(_numbers(str(k)) for k in value))
    if isinstance(value, list):
        return set().union(*(_audit_numbers(v) for v in value)) if value else set()
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, (int, float)):
        return {_num(value)}
    return _numbers(str(value))


def _body(card: ModelCard) -> str:
    return card.text


# ---------------------------------------------------------------------------------------------- cards


def test_unlearning_card_metadata_findings_and_numbers_come_from_the_audit(tmp_path):
    audit = _audit()
    card = render_unlearning_card(audit, repo_id="me/smol-npo", figures=["figures/dissection.png"])
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.library_name == "hf_unlearn"
    assert {"hf_unlearn", "unlearning", "npo"} <= set(data.tags)
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.datasets == ["me/harry-potter-forget"]  # the local retain set is described in the text only
    results = {(r.metric_type, r.dataset_split, r.metric_name): r.metric_value for r in data.eval_results}
    assert results[("answer_log_prob", "forget", "answer log prob")] == pytest.approx(-4.8172)
    assert results[("cosine_similarity", None, "mean concept-vector cosine similarity")] == pytest.approx(
        audit.concept_vectors.summary()["mean_cosine_similarity"])
    assert results[("jaccard_similarity", None, "mean top-200 Jaccard similarity")] == pytest.approx(
        (0.9417 + 0.9123) / 2)
    assert results[("knowledge_recovery_score", None, "max KRS, activation patching")] == pytest.approx(0.8127)
    assert results[("knowledge_recovery_score", None, "max KRS, parameter restoration")] == pytest.approx(0.2291)
    assert results[("rouge_l", None, "rouge_l after the relearning attack")] == pytest.approx(0.6644)
    # Each kind of evidence stays its own model-index entry when the card is parsed back.
    assert {r.dataset_name for r in data.eval_results if r.metric_type == "knowledge_recovery_score"} == {
        "Harry Potter dissection probes"}

    text = _body(loaded)
    # Behavioural forgetting with unchanged concept vectors: the card says the knowledge is likely still there.
    assert "Behavioural forgetting" in text and "knowledge is likely still in the weights" in text
    assert "the knowledge comes back" in text  # relearning: 0.0712 -> 0.6644
    assert "Verdict: the knowledge is likely still present" in text
    assert f"Mean cosine similarity {_num(audit.concept_vectors.summary()['mean_cosine_similarity'])}" in text
    assert "![figures/dissection.png](figures/dissection.png)" in text
    assert "| learning_rate | 1.3e-05 |" in text
    # Every number in the text is one of the audit's.
    stray = _numbers(text) - _audit_numbers(audit.to_dict())
    assert not stray, f"numbers in the card that the audit does not hold: {sorted(stray)}"


def test_audit_round_trips_through_json_and_renders_the_same_card(tmp_path):
    audit = _audit()
    audit.to_json(tmp_path / "audit.json")
    loaded = UnlearningAudit.from_json(tmp_path)  # a folder holding audit.json
    assert loaded.to_dict() == audit.to_dict()
    assert str(render_unlearning_card(loaded, repo_id="me/x")) == str(render_unlearning_card(audit, repo_id="me/x"))
    with pytest.raises(ValueError, match="upgrade hf_unlearn"):
        UnlearningAudit.from_dict({**audit.to_dict(), "format_version": 99})


@pytest.mark.parametrize(
    "kwargs, present, absent",
    [
        # The concept vectors moved and nothing recovers the knowledge: no "still in the weights".
        (dict(cosine=0.6, krs=0.3), ["Concept vectors changed", "Not recovered by activation patching"],
         ["likely still in the weights", "Concept vectors essentially unchanged"]),
        # The forget answers did not get less likely: no behavioural forgetting, whatever the weights say.
        (dict(forget_after=-0.9), ["No clear behavioural forgetting"], ["likely still in the weights"]),
    ],
)
def test_findings_follow_the_measurements(kwargs, present, absent):
    audit = _audit(**kwargs)
    audit.attacks = []
    text = render_unlearning_card(audit).text
    for phrase in present:
        assert phrase in text
    for phrase in absent:
        assert phrase not in text
    assert not _numbers(text) - _audit_numbers(audit.to_dict())


def test_a_card_without_measurements_says_so():
    card = render_unlearning_card(UnlearningAudit("grad_ascent"))
    assert "Behaviour was not evaluated" in card.text and "not enough evidence" in card.text
    assert card.data.eval_results is None and "grad-ascent" in card.data.tags


# ---------------------------------------------------------------------------------------------- trainers


def _trainer(tmp_path, tokenizer, **config):
    args = run_config(hu.GradAscentConfig, tmp_path, max_steps=2, learning_rate=2e-4, **config)
    return hu.GradAscentTrainer(tiny_llama(tokenizer), args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)


def test_trainer_save_model_writes_the_hf_unlearn_card(tokenizer, tmp_path):
    trainer = _trainer(tmp_path, tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    assert card.data.library_name == "hf_unlearn"
    assert {"hf_unlearn", "unlearning", "grad-ascent"} <= set(card.data.tags)
    assert "generated_from_trainer" not in card.data.tags
    assert "None dataset" not in card.text and "fine-tuned version of [](" not in card.text
    last = [entry for entry in trainer.state.log_history if "forget_loss" in entry][-1]
    assert f"| forget_loss | {_num(last['forget_loss'])} |" in card.text
    assert "| learning_rate | 0.0002 |" in card.text and "| max_steps | 2 |" in card.text
    assert "| retain_loss | none |" in card.text  # a GradAscent config field
    assert "- forget data: 4 examples" in card.text
    # The saved model loads back with the tags the trainer gave it.
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved") is not None


def test_trainer_push_to_hub_sends_one_commit_with_the_card(hub, tokenizer, tmp_path):
    trainer = _trainer(tmp_path, tokenizer, hub_model_id="me/tiny-grad-ascent", hub_token=TOKEN)
    trainer.train()
    info = trainer.push_to_hub(dataset="me/forget-texts", license="apache-2.0")
    assert len(hub.commits) == 1 and info.oid == f"{1:040x}"
    commit = hub.commits[0]
    assert commit["repo_id"] == "me/tiny-grad-ascent"
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json"} <= set(commit["files"])
    card = hub.card(commit)
    assert card.data.library_name == "hf_unlearn" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["me/forget-texts"]
    assert {"unlearning", "grad-ascent"} <= set(card.data.tags) and "generated_from_trainer" not in card.data.tags
    assert 'from_pretrained("me/tiny-grad-ascent")' in card.text


# ---------------------------------------------------------------------------------------------- audited models


def _figure(tmp_path) -> Path:
    path = tmp_path / "dissection.png"
    DissectionTable([{"experiment": "activation_patching", "component": "mlp", "layer": 0, "krs": 0.5}]).plot(path)
    return path


def test_push_audited_model_sends_weights_card_audit_and_figures_in_one_commit(hub, tokenizer, tmp_path):
    model, audit = tiny_llama(tokenizer), _audit()
    info = push_audited_to_hub(model, tokenizer, audit, "me/tiny-npo", local_dir=tmp_path / "out",
                               figures=[_figure(tmp_path)], private=True, token=TOKEN, license="mit")
    assert len(hub.commits) == 1 and hub.created[0]["visibility"] == "private"
    assert info.oid == f"{1:040x}"
    files = hub.commits[0]["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "audit.json",
            "figures/dissection.png"} <= set(files)
    assert files["figures/dissection.png"].startswith(b"\x89PNG")
    assert UnlearningAudit.from_dict(json.loads(files["audit.json"])).to_dict() == audit.to_dict()
    card = hub.card(hub.commits[0])
    assert card.data.library_name == "hf_unlearn" and card.data.license == "mit"
    assert card.data.base_model == audit.base_model and "npo" in card.data.tags
    assert "![figures/dissection.png](figures/dissection.png)" in card.text
    # The local folder holds exactly what was committed.
    local = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
             for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert local == files
    # The committed weights are the model's.
    pushed = AutoModelForCausalLM.from_pretrained(_materialise(files, tmp_path / "pushed"))
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(pushed(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_adapter_and_merged_saves(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False))
    ids = tokenizer(["harry potter studied at"], return_tensors="pt")["input_ids"]
    expected = model(ids).logits
    adapter = save_audited(model, tokenizer, _audit(), tmp_path / "adapter", save="adapter")
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "hf_unlearn" and "AutoPeftModelForCausalLM" in card.text
    merged = save_audited(model, tokenizer, _audit(), tmp_path / "merged", save="merged")
    assert not (merged / "adapter_config.json").exists()
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(merged)(ids).logits, expected)
    assert hasattr(model, "peft_config") and model(ids).logits.equal(expected)  # the caller's model keeps its adapter
    with pytest.raises(ValueError, match="save='adapter'"):
        save_audited(model, tokenizer, _audit(), tmp_path / "weights", save="weights")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_audited(model, tokenizer, _audit(), adapter, save="adapter")
    assert not (tmp_path / "weights").exists()


def test_failed_push_leaves_a_complete_folder_and_says_how_to_retry(hub, tokenizer, tmp_path, monkeypatch):
    # huggingface_hub retries a 500 with back-off (1, 2, 4, 8, 8 s); the waits are skipped, the retries still happen.
    waits = []
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", waits.append)
    hub.fail_commits = True
    model, audit = tiny_llama(tokenizer), _audit()
    with pytest.raises(HubPushError) as raised:
        push_audited_to_hub(model, tokenizer, audit, "me/tiny-npo", local_dir=tmp_path / "out", token=TOKEN)
    error = raised.value
    folder = tmp_path / "out"
    assert error.folder == folder.resolve() and str(folder.resolve()) in str(error)
    assert "upload_folder(" in str(error) and "hf upload me/tiny-npo" in str(error)
    assert not hub.commits and waits  # the client retried before giving up
    # Complete: the model loads, the audit parses, the card is there.
    AutoModelForCausalLM.from_pretrained(folder)
    assert UnlearningAudit.from_json(folder).to_dict() == audit.to_dict()
    assert ModelCard.load(folder / "README.md").data.library_name == "hf_unlearn"
    # The retry the error suggests works once the Hub answers again.
    hub.fail_commits = False
    HfApi(token=TOKEN).upload_folder(folder_path=error.folder, repo_id=error.repo_id)
    assert set(hub.commits[0]["files"]) == {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                                            if p.is_file()}

    # Without local_dir the temporary folder is kept (and named) after a failure...
    hub.fail_commits = True
    with pytest.raises(HubPushError) as raised:
        push_audited_to_hub(model, tokenizer, audit, "me/tiny-npo", token=TOKEN)
    kept = raised.value.folder
    assert (kept / "model.safetensors").is_file() and str(kept) in str(raised.value)
    shutil.rmtree(kept.parent)
    # ... and removed after a successful push.
    hub.fail_commits = False
    push_audited_to_hub(model, tokenizer, audit, "me/tiny-npo", token=TOKEN)
    assert len(hub.commits) == 2


# ---------------------------------------------------------------------------------------------- early exit


def _early_exit(tokenizer) -> EarlyExitForCausalLM:
    model = EarlyExitForCausalLM.from_backbone(tiny_llama(tokenizer, layers=2, seed=3), min_exit_layer=1,
                                               exit_head="adapter", exit_strategy="confidence",
                                               confidence_threshold=0.05).eval()
    with torch.no_grad():
        for parameter in model.early_exit.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def test_early_exit_card_shows_speedup_agreement_and_both_loads(tokenizer):
    model = _early_exit(tokenizer)
    evaluation = evaluate_exits(model, tokenizer, ["the cat sat on"], {"confidence": [0.05, 0.5]}, max_new_tokens=3,
                                disable_tqdm=True)
    card = render_early_exit_card(model, "me/tiny-early-exit", evaluation, base_model="me/tiny-llama")
    assert card.data.library_name == "hf_unlearn" and {"hf_unlearn", "early-exit"} <= set(card.data.tags)
    assert card.data.base_model == "me/tiny-llama"
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    for row in evaluation.rows:
        assert results[f"speed-up, {row['point']}"] == pytest.approx(row["speedup"])
        assert results[f"agreement (teacher-forced), {row['point']}"] == pytest.approx(row["agreement"])
        assert f"| {row['strategy']} | {row['point']} | {_num(row['speedup'])} |" in card.text
    assert 'EarlyExitForCausalLM.from_pretrained("me/tiny-early-exit")' in card.text
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-early-exit", trust_remote_code=True)' in card.text
    assert "`confidence_threshold=0.05`" in card.text
    model.set_exit_strategy("policy", policy_thresholds={1: 0.6})
    assert "`policy_thresholds={1: 0.6}`" in render_early_exit_card(model, "me/tiny-early-exit").text
    assert "shortlist_exits" not in render_early_exit_card(model, "me/tiny-early-exit").text
    model.set_exit_shortlist([1, 2, 3])
    model.set_exit_strategy("policy", shortlist_exits=True)
    assert "predict only the 3 tokens of the saved shortlist (`shortlist_exits=True`)" in render_early_exit_card(
        model, "me/tiny-early-exit").text


def test_push_early_exit_sends_modelling_code_and_loads_with_remote_code(hub, tokenizer, tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    model = _early_exit(tokenizer)
    evaluation = evaluate_exits(model, tokenizer, ["the cat sat on"], {"confidence": [0.05]}, max_new_tokens=3,
                                disable_tqdm=True)
    push_early_exit_to_hub(model, tokenizer, "me/tiny-early-exit", evaluation=evaluation, token=TOKEN)
    assert len(hub.commits) == 1
    files = hub.commits[0]["files"]
    assert {"modeling_early_exit.py", "configuration_early_exit.py", "config.json", "model.safetensors",
            "tokenizer.json", "README.md", "exit_evaluation.json"} <= set(files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_early_exit.EarlyExitForCausalLM")
    card = hub.card(hub.commits[0])
    assert "early-exit" in card.data.tags and "trust_remote_code=True" in card.text

    # Loaded from the committed files alone, through the remote code: with hf_unlearn's classes unregistered, as in a
    # process where hf_unlearn is not installed (transformers prefers a registered class to the repo's code).
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.delitem(CONFIG_MAPPING._extra_content, "early_exit_causal_lm")
    monkeypatch.delitem(MODEL_FOR_CAUSAL_LM_MAPPING._extra_content, EarlyExitConfig)
    folder = _materialise(files, tmp_path / "downloaded")
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert not type(loaded).__module__.startswith("hf_unlearn"), type(loaded).__module__
    batch = build_tokenizer()(["harry potter studied at", "the capital city of"], return_tensors="pt")
    for settings in ({}, {"exit_strategy": "none"}):
        torch.testing.assert_close(
            loaded(**batch, exit_all_positions=True, **settings).logits,
            model(**batch, exit_all_positions=True, **settings).logits,
            rtol=0, atol=0,
        )


def test_early_exit_trainer_save_model_writes_the_early_exit_card(tokenizer, tmp_path):
    args = run_config(hu.EarlyExitTrainingConfig, tmp_path, max_steps=1, early_exit_kwargs={"min_exit_layer": 1})
    trainer = hu.EarlyExitTrainer(tiny_llama(tokenizer), args, train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "hf_unlearn" and {"hf_unlearn", "early-exit"} <= set(card.data.tags)
    assert "unlearning" not in card.data.tags
    assert "trust_remote_code=True" in card.text and "EarlyExitForCausalLM.from_pretrained" in card.text
    assert "| global_step | 1 |" in card.text
    assert (tmp_path / "out" / "modeling_early_exit.py").is_file()
