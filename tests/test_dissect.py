"""Dissection: KRS, activation patching, parameter restoration, hooks and the answer mask."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from hf_unlearn.architectures import value_vectors_view
from hf_unlearn.dissect import (
    DissectionTable,
    Probe,
    activation_patching,
    encode_probes,
    knowledge_recovery_score,
    make_probes,
    parameter_restoration,
    patch_activations,
    record_activations,
)

PROBES = [
    Probe("who studied at hogwarts ?", " harry potter ."),
    Probe("the capital city of france is", " paris"),
    Probe("what is the wizard school ?", " hogwarts castle of harry potter ."),
]


def pair(tokenizer, layer: int, layers: int = 6, build=tiny_llama):
    original = build(tokenizer, layers=layers)
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        value_vectors_view(unlearned, layer).add_(torch.randn_like(value_vectors_view(unlearned, layer)) * 0.5)
    return original, unlearned


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_restoration_is_exactly_one_on_windows_covering_the_changed_layer(tokenizer, build):
    original, unlearned = pair(tokenizer, layer=3, build=build)
    before = {k: v.clone() for k, v in unlearned.state_dict().items()}
    table = parameter_restoration(original, unlearned, tokenizer, PROBES, params="mlp_out", window=3, progress=False)
    layers, krs = table.curve("parameter_restoration", "mlp_out")
    assert layers == list(range(6))
    for centre, value in zip(layers, krs):
        assert value == (1.0 if abs(centre - 3) <= 1 else 0.0), (centre, value)
    for key, value in unlearned.state_dict().items():
        assert torch.equal(value, before[key]), key  # reverted bit-exactly


def test_restoration_with_a_regex_and_whole_blocks(tokenizer):
    original, unlearned = pair(tokenizer, layer=1, layers=3)
    for params in ("mlp", r"mlp\.down_proj\.weight"):
        _, krs = parameter_restoration(
            original, unlearned, tokenizer, PROBES, params=params, window=1, progress=False
        ).curve("parameter_restoration", params)
        assert krs == [0.0, 1.0, 0.0]
    _, krs = parameter_restoration(
        original, unlearned, tokenizer, PROBES, params="attn", window=1, progress=False
    ).curve("parameter_restoration", "attn")
    assert krs == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="matches no parameter"):
        parameter_restoration(original, unlearned, tokenizer, PROBES, params="nothing_here", progress=False)


def test_patching_coefficients_undoes_a_change_in_what_produces_them(tokenizer):
    original = tiny_llama(tokenizer, layers=4)
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        up = unlearned.model.layers[2].mlp.up_proj.weight
        up.add_(torch.randn_like(up))
    table = activation_patching(original, unlearned, tokenizer, PROBES, window=1, progress=False)
    _, mlp = table.curve("activation_patching", "mlp")
    _, attn = table.curve("activation_patching", "attn")
    _, both = table.curve("activation_patching", "both")
    # Layer 2's coefficients are the only thing that differs: patching them recovers everything, exactly.
    assert mlp[2] == pytest.approx(1.0, abs=1e-5) and both[2] == pytest.approx(1.0, abs=1e-5)
    # Below layer 2 the models agree, so patching there changes nothing; attention at layer 2 is upstream of the
    # change.
    assert mlp[:2] == pytest.approx([0.0, 0.0], abs=1e-6) and attn[2] == pytest.approx(0.0, abs=1e-6)


def test_patching_coefficients_cannot_restore_changed_value_vectors(tokenizer):
    original, unlearned = pair(tokenizer, layer=2, layers=4)
    table = activation_patching(original, unlearned, tokenizer, PROBES, components=("mlp",), window=1, progress=False)
    _, krs = table.curve("activation_patching", "mlp")
    assert krs[0] == pytest.approx(0.0, abs=1e-6) and krs[1] == pytest.approx(0.0, abs=1e-6)
    assert krs[2] < 0.5  # the stored vectors changed: the original's coefficients read the wrong values


def test_patching_only_answer_positions(tokenizer):
    original, unlearned = pair(tokenizer, layer=1, layers=3)
    table = activation_patching(
        original, unlearned, tokenizer, PROBES, components=("both",), window=5, positions="answer", progress=False
    )
    _, krs = table.curve("activation_patching", "both")
    assert all(0.0 < k <= 1.0 + 1e-6 for k in krs)


def test_patching_accepts_plain_question_answer_pairs(tokenizer):
    original, unlearned = pair(tokenizer, layer=1, layers=3)
    questions, answers = ["who studied at hogwarts ?", "the capital city of france is"], [" harry potter .", " paris"]
    run = dict(components=("mlp",), window=1, progress=False)
    probes = make_probes(original, tokenizer, questions, answers)
    expected = activation_patching(original, unlearned, tokenizer, probes, **run).curve("activation_patching", "mlp")
    for plain in (list(zip(questions, answers)), [{"question": q, "answer": a} for q, a in zip(questions, answers)]):
        got = activation_patching(original, unlearned, tokenizer, plain, **run).curve("activation_patching", "mlp")
        assert got == expected
    # the template matters: the same pairs as bare Probes (no template) score differently
    bare = activation_patching(original, unlearned, tokenizer, [Probe(q, a) for q, a in zip(questions, answers)],
                               **run).curve("activation_patching", "mlp")
    assert bare != expected
    with pytest.raises(ValueError, match=r"\(question, answer\) string pairs"):
        activation_patching(original, unlearned, tokenizer, ["a question without an answer"], **run)


def test_identical_models_give_no_nan_and_a_warning(tokenizer):
    model = tiny_llama(tokenizer, layers=2)
    with pytest.warns(UserWarning, match="nothing to recover"):
        table = parameter_restoration(model, copy.deepcopy(model), tokenizer, PROBES, window=1, progress=False)
    assert [r["krs"] for r in table.rows] == [1.0, 1.0]


def test_krs_hand_computation():
    torch.manual_seed(0)
    o, p, u = (torch.randn(2, 4, 5) for _ in range(3))
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    expected = []
    for b in range(2):
        pos = mask[b].nonzero().flatten().tolist()
        d_p = sum(((o[b, t] - p[b, t]) ** 2).mean() for t in pos) / len(pos)
        d_u = sum(((o[b, t] - u[b, t]) ** 2).mean() for t in pos) / len(pos)
        expected.append(1 - d_p / d_u)
    got = knowledge_recovery_score(o, p, u, mask, reduction="none")
    torch.testing.assert_close(got, torch.stack(expected))
    assert knowledge_recovery_score(o, o, u, mask) == pytest.approx(1.0)
    assert knowledge_recovery_score(o, u, u, mask) == pytest.approx(0.0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_answer_mask_selects_the_logits_that_predict_answer_tokens(tokenizer, side):
    batch = encode_probes(tokenizer, PROBES, padding_side=side)
    for i, probe in enumerate(PROBES):
        answer_ids = tokenizer(probe.answer, add_special_tokens=False)["input_ids"]
        positions = batch.answer_mask[i].nonzero().flatten()
        predicted = batch.input_ids[i, positions + 1].tolist()
        assert predicted == answer_ids
        assert batch.attention_mask[i, positions].all()
    if side == "left":
        assert batch.attention_mask[:, -1].all()
    else:
        assert batch.attention_mask[:, 0].all()


def test_left_and_right_padding_give_the_same_krs(tokenizer):
    original, unlearned = pair(tokenizer, layer=1, layers=3)
    results = []
    for side in ("left", "right"):
        batch = encode_probes(tokenizer, PROBES, padding_side=side)
        table = activation_patching(
            original, unlearned, tokenizer, batch, components=("mlp",), window=1, progress=False
        )
        results.append(table.curve("activation_patching", "mlp")[1])
    assert results[0] == pytest.approx(results[1], abs=1e-4)


def test_hooks_are_removed_after_an_exception(tokenizer):
    model = tiny_llama(tokenizer, layers=2)
    batch = encode_probes(tokenizer, PROBES)

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    assert count() == 0
    with pytest.raises(RuntimeError, match="boom"):
        with record_activations(model, "mlp", [0, 1]), record_activations(model, "residual", [0]):
            model(**batch.model_inputs())
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="patch of shape"):
        with patch_activations(model, "attn", {0: torch.zeros(1, 1, 1)}):
            model(**batch.model_inputs())
    assert count() == 0


def test_record_then_patch_is_a_no_op(tokenizer):
    model = tiny_llama(tokenizer, layers=2).eval()
    batch = encode_probes(tokenizer, PROBES)
    with torch.no_grad():
        with record_activations(model, "residual", [0]) as acts:
            clean = model(**batch.model_inputs()).logits
        assert acts[0].shape == (*batch.input_ids.shape, 32)
        with patch_activations(model, "residual", acts):
            patched = model(**batch.model_inputs()).logits
        # ...while patching in something else does change the output: the hooks are live.
        with patch_activations(model, "residual", {0: torch.zeros_like(acts[0])}):
            zeroed = model(**batch.model_inputs()).logits
        after = model(**batch.model_inputs()).logits
    torch.testing.assert_close(patched, clean)
    assert not torch.allclose(zeroed, clean)
    torch.testing.assert_close(after, clean)  # and they are gone after the block


def test_table_round_trips_and_plots(tokenizer, tmp_path):
    original, unlearned = pair(tokenizer, layer=1, layers=3)
    table = activation_patching(original, unlearned, tokenizer, PROBES, window=3, progress=False)
    table = table + parameter_restoration(original, unlearned, tokenizer, PROBES, window=3, progress=False)
    table.to_json(tmp_path / "t.json")
    again = DissectionTable.from_json(tmp_path / "t.json")
    assert again.rows == table.rows
    table.plot(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert len(table.to_dataframe()) == 4 * 3


def test_tagged_tables_draw_one_line_per_model_and_component(tokenizer, tmp_path):
    original, unlearned = pair(tokenizer, layer=1, layers=3)
    table = parameter_restoration(original, unlearned, tokenizer, PROBES, window=1, progress=False)
    combined = table.tagged(model="npo") + table.tagged(model="grad_diff")
    assert combined.lines("parameter_restoration") == ["npo: mlp_out", "grad_diff: mlp_out"]
    assert combined.curve("parameter_restoration", "npo: mlp_out") == table.curve("parameter_restoration", "mlp_out")
    combined.plot(tmp_path / "c.png")
    assert "npo: mlp_out" in str(combined)


@pytest.mark.parametrize("window", [-3, 0, 4, 2.0])
def test_window_must_be_a_positive_odd_number(tokenizer, window):
    model = tiny_llama(tokenizer)
    for run in (activation_patching, parameter_restoration):
        with pytest.raises(ValueError, match="positive odd number"):
            run(model, copy.deepcopy(model), tokenizer, PROBES, window=window, progress=False)


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (lambda tok: tiny_gpt2(tok, hidden=32), "different architectures"),
        (lambda tok: tiny_llama(tok, layers=3), "different depths"),
        (lambda tok: tiny_llama(tok, hidden=64), "differ in shape"),
    ],
    ids=["llama-vs-gpt2", "depth", "hidden"],
)
def test_mismatched_models_are_refused_before_any_forward(tokenizer, other, match):
    original, unlearned = tiny_llama(tokenizer), other(tokenizer)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the models were checked")

    for model in (original, unlearned):
        model.forward = no_forward
    for run in (activation_patching, parameter_restoration):
        with pytest.raises(ValueError, match=match):
            run(original, unlearned, tokenizer, PROBES, progress=False)


def test_probes_with_an_empty_answer_are_dropped_by_name_when_made(tokenizer):
    from hf_unlearn.dissect import make_probes

    model = tiny_llama(tokenizer)
    with pytest.warns(UserWarning, match=r"dropped 1 probe.*'what is the wizard school \?'"):
        probes = make_probes(model, tokenizer, ["who studied at hogwarts ?", "what is the wizard school ?"],
                             answers=[" harry potter", "   "])
    assert [p.answer for p in probes] == [" harry potter"]
    with pytest.raises(ValueError, match="no probe can be scored"):
        make_probes(model, tokenizer, ["who studied at hogwarts ?"], answers=[""])


@pytest.mark.parametrize("site", ["mlp", "residual"])
def test_differentiable_activations_give_the_activation_gradient_on_a_frozen_model(tokenizer, site):
    from hf_unlearn.activations import differentiable_activations

    model = tiny_llama(tokenizer, layers=2).eval().requires_grad_(False)
    batch = encode_probes(tokenizer, PROBES)
    with torch.no_grad():
        clean = model(**batch.model_inputs()).logits
        with record_activations(model, site, [1]) as recorded:
            model(**batch.model_inputs())
    with differentiable_activations(model, site, [1]) as acts:
        logits = model(**batch.model_inputs()).logits
        (grad,) = torch.autograd.grad(logits[..., 3].sum(), acts[1][1])
        value = acts[1][0]
    torch.testing.assert_close(logits.detach(), clean)  # the forward is unchanged
    torch.testing.assert_close(value, recorded[1])
    # The same gradient through a copy of the activation that requires grad, patched in by hand.
    leaf = recorded[1].clone().requires_grad_(True)
    with patch_activations(model, site, {1: leaf}):
        (expected,) = torch.autograd.grad(model(**batch.model_inputs()).logits[..., 3].sum(), leaf)
    torch.testing.assert_close(grad, expected)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(**batch.model_inputs()).logits, clean)  # hooks gone
