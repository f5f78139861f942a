"""Faults during training: a process killed while saving, a non-finite gradient behind a finite loss, and plain
TrainingArguments given to a method with its own defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, tiny_llama
from transformers import TrainingArguments

import hf_unlearn as hu
from hf_unlearn.trainers.checkpoints import latest_complete_checkpoint

TESTS = Path(__file__).parent

TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, warnings
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from tiny_models import FORGET_TEXTS, RETAIN_TEXTS, build_tokenizer, tiny_llama
    from transformers.trainer_callback import TrainerState
    import hf_unlearn as hu

    kill_at = int(sys.argv[2])
    if kill_at:
        original = TrainerState.save_to_json
        def save_to_json(self, path):
            # Killed after the weights and optimizer of checkpoint-<kill_at> are written, before its state.
            if self.global_step == kill_at and "checkpoint-" in path:
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, path)
        TrainerState.save_to_json = save_to_json
    tokenizer = build_tokenizer()
    config = hu.GradDiffConfig(output_dir=sys.argv[1], max_steps=5, save_steps=1, per_device_train_batch_size=2,
                               learning_rate=1e-3, report_to="none", use_cpu=True, seed=0, logging_steps=1,
                               dataloader_pin_memory=False)
    trainer = hu.GradDiffTrainer(tiny_llama(tokenizer), config, train_dataset=FORGET_TEXTS,
                                 retain_dataset=RETAIN_TEXTS, processing_class=tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=sys.argv[3] == "resume" or None)
    print("WARNINGS:", [str(w.message) for w in caught if "skipping" in str(w.message)])
    torch.save(trainer.model.state_dict(), os.path.join(sys.argv[1], "final.pt"))
    """
)


def run_training(tmp_path: Path, out: Path, kill_at: int, resume: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(out), str(kill_at), "resume" if resume else "fresh"],
        capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.mark.slow
def test_a_process_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path):
    reference = run_training(tmp_path, tmp_path / "reference", kill_at=0, resume=False)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    killed = run_training(tmp_path, out, kill_at=3, resume=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoint-3").is_dir() and not (out / "checkpoint-3" / "trainer_state.json").exists()
    with pytest.warns(UserWarning, match="skipping .*checkpoint-3"):
        assert latest_complete_checkpoint(out) == str(out / "checkpoint-2")

    resumed = run_training(tmp_path, out, kill_at=0, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-3: it has no complete trainer_state.json" in resumed.stdout
    expected = torch.load(tmp_path / "reference" / "final.pt")
    got = torch.load(out / "final.pt")
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_resuming_from_an_explicit_incomplete_checkpoint_names_the_complete_one(tokenizer, tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": ')  # truncated by the kill
    config = hu.GradAscentConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True)
    trainer = hu.GradAscentTrainer(tiny_llama(tokenizer), config, train_dataset=FORGET_TEXTS,
                                   processing_class=tokenizer)
    expected = "incomplete checkpoint.*Resume from .*checkpoint-1"
    with pytest.raises(ValueError, match=expected), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_a_non_finite_gradient_behind_a_finite_loss_stops_before_the_update(tokenizer, tmp_path):
    model = tiny_llama(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # The loss stays finite; only this weight's gradient becomes NaN.
    model.model.layers[0].mlp.down_proj.weight.register_hook(lambda grad: grad * float("nan"))
    config = hu.GradDiffConfig(output_dir=str(tmp_path), max_steps=3, save_steps=1, max_grad_norm=0.0,
                               report_to="none", use_cpu=True, learning_rate=1e-3)
    trainer = hu.GradDiffTrainer(model, config, train_dataset=FORGET_TEXTS, retain_dataset=RETAIN_TEXTS,
                                 processing_class=tokenizer)
    with pytest.raises(FloatingPointError, match="non-finite gradient norm .* at step 1"):
        trainer.train()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.parametrize("config_class", [hu.NeedleConfig, hu.UNDIALConfig, hu.SatImpConfig, hu.GradAscentConfig])
def test_plain_training_arguments_keep_the_method_defaults(config_class, tmp_path):
    from hf_unlearn.trainers.base import _convert_training_arguments

    defaults = config_class(output_dir=str(tmp_path))
    plain = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = _convert_training_arguments(plain, config_class)
    assert isinstance(converted, config_class)
    for name in ("learning_rate", "num_train_epochs", "weight_decay", "lr_scheduler_type"):
        assert getattr(converted, name) == getattr(defaults, name), name
    assert converted.per_device_train_batch_size == 3  # what the user set is kept


def test_a_trainer_given_plain_training_arguments_trains_with_the_method_defaults(tokenizer, tmp_path):
    config = hu.GradAscentConfig(output_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="take the method's \\(learning_rate=1e-05"):
        trainer = hu.GradAscentTrainer(tiny_llama(tokenizer), TrainingArguments(output_dir=str(tmp_path),
                                                                                 use_cpu=True),
                                       train_dataset=FORGET_TEXTS, processing_class=tokenizer)
    assert trainer.args.learning_rate == config.learning_rate == 1e-5
    assert trainer.args.use_cpu is True


@pytest.mark.parametrize(
    ("config_class", "values", "match"),
    [
        (hu.GradDiffConfig, {"forget_weight": -1.0}, "forget_weight=-1.0 is invalid"),
        (hu.GradDiffConfig, {"retain_weight": -0.5}, "retain_weight=-0.5 is invalid"),
        (hu.NPOConfig, {"beta": float("nan")}, "beta=nan is invalid"),
        (hu.SimNPOConfig, {"beta": float("inf")}, "beta=inf is invalid"),
        (hu.IdkDPOConfig, {"beta": 0.0}, "beta=0.0 is invalid"),
        (hu.UNDIALConfig, {"beta": 0.0}, "nothing unlearned"),
        (hu.WGAConfig, {"beta": -1.0}, "beta=-1.0 is invalid"),
        (hu.SatImpConfig, {"beta2": -2.0}, "beta2=-2.0 is invalid"),
        (hu.RMUConfig, {"rmu_layer": 2, "trainable_layers": [3, 4]}, "must be at or below"),
        (hu.RMUConfig, {"trainable_layers": []}, "at least one trainable layer"),
    ],
)
def test_values_the_loss_cannot_mean_are_refused_at_config_time(config_class, values, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        config_class(output_dir=str(tmp_path), **values)


def test_a_clean_cpu_run_warns_nothing_the_user_cannot_act_on(tokenizer, tmp_path):
    config = hu.GradDiffConfig(output_dir=str(tmp_path), max_steps=2, report_to="none", save_strategy="no")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hu.GradDiffTrainer(tiny_llama(tokenizer), config, train_dataset=FORGET_TEXTS, retain_dataset=RETAIN_TEXTS,
                           processing_class=tokenizer).train()
    messages = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not messages, messages
