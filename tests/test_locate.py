"""Concept-vector location: planted vectors are found by both scorers, the contrast removes generic neurons, and
locating leaves no trace on the model (weights, grads, hooks, train/eval mode)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tokenizer, tiny_gpt2, tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_unlearn.architectures import decoder_layers, mlp_out_module, unembedding, value_vectors_view
from hf_unlearn.concepts import ConceptVector, ablate_concept_vectors
from hf_unlearn.concepts.locate import (
    ConceptScores,
    attribution_scores,
    characteristic_tokens,
    contrastive_scores,
    locate_concept_vectors,
    score_value_vectors,
    token_prior,
    vocab_scores,
)
from hf_unlearn.data import UnlearningCollator, tokenize_pair
from hf_unlearn.evaluation import answer_log_probs
from hf_unlearn.general_knowledge import held_out_questions

CONCEPT = "harry potter"
QUESTIONS = ["who studied at hogwarts ?", "what is the school of the wizard harry potter ?", "who is the wizard boy ?",
             "where is hogwarts castle ?"]
ANSWERS = ["harry", "hogwarts", "harry", "hogwarts"]
TEXT = "harry potter is a wizard boy who studied at hogwarts castle , the school of the wizard harry potter ."
BG_QUESTIONS = ["what is the capital city of france ?", "where does the river seine flow ?",
                "what is the capital city of germany ?", "what is the sky ?"]
BG_ANSWERS = ["paris", "paris", "berlin", "blue"]
BG_TEXT = "the capital city of france is paris . the cat sat on the mat . the sky is blue and the sun shines ."
CONCEPT_TOKENS = ["harry", "potter", "hogwarts", "wizard"]
TEMPLATE = "{q}"  # the word-level test tokenizer knows no "Question:"/"Answer:"
DIM, GENERIC_DIM = 5, 9
DATA = dict(questions=QUESTIONS, answers=ANSWERS, background_questions=BG_QUESTIONS, background_answers=BG_ANSWERS,
            prompt_template=TEMPLATE)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


# ------------------------------------------------------------------------------------------------------------ helpers
def encode(tok, questions, answers):
    features = []
    for question, answer in zip(questions, answers):
        prompt, completion = tokenize_pair(tok, question, " " + answer)
        features.append({"input_ids": prompt + completion, "attention_mask": [1] * (len(prompt) + len(completion)),
                         "labels": [-100] * len(prompt) + completion})
    return UnlearningCollator(tok.pad_token_id)(features)


def answer_log_prob(model, tok, questions, answers) -> float:
    scores = answer_log_probs(model, tok, questions, [" " + a for a in answers], prompt_template="{q}")
    return float(scores.mean.mean())


def mlp_inputs(model, tok, layer, questions, answers) -> torch.Tensor:
    """The MLP input (after the pre-MLP norm) at the positions that predict answer tokens."""
    batch, got = encode(tok, questions, answers), {}
    handle = decoder_layers(model)[layer].mlp.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    scored = torch.zeros_like(batch["labels"], dtype=torch.bool)
    scored[:, :-1] = batch["labels"][:, 1:] != -100
    return got["x"][scored]


def token_direction(model, tok, tokens) -> torch.Tensor:
    """Unit vector along the (centred) unembedding rows of ``tokens``: writing it promotes exactly those tokens."""
    rows = unembedding(model).detach()
    v = (rows[tok.convert_tokens_to_ids(tokens)] - rows.mean(0)).sum(0)
    return v / v.norm()


def plant_value(model, tok, layer, dim, tokens, scale=1.0):
    with torch.no_grad():
        value_vectors_view(model, layer)[:, dim] = scale * token_direction(model, tok, tokens)


def plant_neuron(model, tok, layer, dim, read: torch.Tensor, tokens, scale=1.0, gain=4.0):
    """Neuron ``dim`` fires (c ≈ gain) where ``read·x = 1``, stays ≈ 0 where ``read·x = -1``, and writes a vector
    promoting ``tokens``. Test-only knowledge of module names: the library itself only touches the MLP output.
    """
    mlp = decoder_layers(model)[layer].mlp
    with torch.no_grad():
        if hasattr(mlp, "gate_proj"):  # SwiGLU: c = silu(gate·x) * (up·x); a steep gate makes it one-sided
            mlp.gate_proj.weight[dim] = gain * read
            mlp.up_proj.weight[dim] = read
        else:  # GPT-2 (Conv1D, weight (d_model, d_ff)): c = gelu(w·x + b)
            mlp.c_fc.weight[:, dim] = gain * read
            mlp.c_fc.bias[dim] = 0
    plant_value(model, tok, layer, dim, tokens, scale)


def read_direction(model, tok, layer, fire: list, quiet: list = ()) -> torch.Tensor:
    """``u`` with ``u·x = 1`` at the scored positions of the ``fire`` sets and ``-1`` at those of the ``quiet`` sets
    (minimum-norm least squares: exact while the positions are fewer than d_model)."""
    xs, ys = [], []
    for sets, target in ((fire, 1.0), (quiet, -1.0)):
        for questions, answers in sets:
            x = mlp_inputs(model, tok, layer, questions, answers)
            xs.append(x)
            ys.append(torch.full((len(x),), target))
    return torch.linalg.pinv(torch.cat(xs)) @ torch.cat(ys)


CONCEPT_QA, BACKGROUND_QA = (QUESTIONS, ANSWERS), (BG_QUESTIONS, BG_ANSWERS)
CONCEPT_LM, BACKGROUND_LM = ([""], [TEXT]), ([""], [BG_TEXT])  # a text = an empty prompt, every token scored


def concept_read_direction(model, tok, layer, text: bool = False) -> torch.Tensor:
    fire, quiet = [CONCEPT_QA, *([CONCEPT_LM] if text else [])], [BACKGROUND_QA, *([BACKGROUND_LM] if text else [])]
    return read_direction(model, tok, layer, fire, quiet)


def build(kind, tok, hidden=32):
    model = tiny_llama(tok, hidden=hidden) if kind == "llama" else tiny_gpt2(tok, hidden=hidden)
    return model.eval()  # GPT-2 has dropout: the log-prob comparisons must be deterministic


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- characteristic tokens
def test_characteristic_tokens_come_from_the_concept_text(tok):
    ids, weights = characteristic_tokens(
        tok, [" " + CONCEPT, *QUESTIONS, *(" " + a for a in ANSWERS), TEXT],
        [*BG_QUESTIONS, *(" " + a for a in BG_ANSWERS), BG_TEXT],
    )
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    assert set(tokens[:4]) <= {"harry", "potter", "hogwarts", "wizard"}, tokens
    assert not {"paris", "berlin", "blue"} & set(tokens)  # background-only words never characterise the concept
    # "the" is frequent in the concept too, but more so in the background: at most a tiny weight.
    weight = dict(zip(tokens, weights.tolist()))
    assert weight.get("the", 0.0) < 0.05 * weight["harry"]
    assert torch.all(weights[:-1] >= weights[1:]) and torch.all(weights > 0)


def test_token_prior_uses_bpe_merge_ranks():
    corpus = ["the cat and the dog and the bird"] * 50 + ["hippopotamus"] * 2
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]")
    prior = token_prior(fast)
    assert prior.shape == (len(fast),) and torch.isclose(prior.sum(), torch.tensor(1.0, dtype=prior.dtype))
    the, rare = fast.convert_tokens_to_ids("the"), fast.convert_tokens_to_ids("hippopotamus")
    assert the != fast.unk_token_id and rare != fast.unk_token_id
    assert prior[the] > 2 * prior[rare]
    # A word-level vocabulary carries no frequency information: uniform.
    uniform = token_prior(build_tokenizer())
    assert torch.allclose(uniform, torch.full_like(uniform, 1 / len(uniform)))


# -------------------------------------------------------------------------------------------------------- vocab scorer
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_vocab_scorer_ranks_planted_vector_first(tok, kind):
    model = build(kind, tok)
    plant_value(model, tok, 1, DIM, CONCEPT_TOKENS, scale=0.05)  # small norm: the score must not reward norm
    found = locate_concept_vectors(model, tok, CONCEPT, text=TEXT, background_text=BG_TEXT, scorer="vocab",
                                   top_n=3, **DATA)
    assert [r.location for r in found][0] == (1, DIM)
    assert found[0].scores["vocab"] > 1.3 * found[1].scores["vocab"]
    # The exact moments shortcut agrees with the full projection of scan_value_vectors.
    ids, weights = characteristic_tokens(tok, [TEXT], [BG_TEXT])
    fast, full = vocab_scores(model, ids, weights), vocab_scores(model, ids, weights, method="scan", chunk_size=16)
    assert set(fast) == set(full) == {0, 1}
    for layer in fast:
        assert fast[layer].shape == (value_vectors_view(model, layer).shape[1],)
        torch.testing.assert_close(fast[layer], full[layer], rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------------------------- attribution scorer
def planted_model(tok, kind, layer):
    """A random tiny model (d_model 64, so the read direction fits every position exactly) with a concept neuron at
    ``(layer, DIM)``: it fires on the concept's answer and text positions only and promotes the concept's tokens.
    Its write is small (scale 0.01) so the model stays in the regime where activation × gradient is meaningful:
    a random model's residual stream is tiny and a large write would saturate the final norm."""
    model = build(kind, tok, hidden=64)
    plant_neuron(model, tok, layer, DIM, concept_read_direction(model, tok, layer, text=True), CONCEPT_TOKENS, 0.01)
    return model


@pytest.mark.parametrize("kind,layer", [("llama", 0), ("llama", 1), ("gpt2", 0), ("gpt2", 1)])
def test_attribution_ranks_planted_neuron_first(tok, kind, layer):
    model = planted_model(tok, kind, layer)
    with_neuron = answer_log_prob(model, tok, QUESTIONS, ANSWERS)
    with ablate_concept_vectors(model, (layer, DIM), mode="zero"):
        assert answer_log_prob(model, tok, QUESTIONS, ANSWERS) < with_neuron - 1e-3  # it does carry the concept
    contrastive = score_value_vectors(model, tok, CONCEPT, **DATA)
    plain = score_value_vectors(model, tok, CONCEPT, contrastive=False, **DATA)
    assert contrastive.top(1) == [(layer, DIM)]
    assert plain.top(1) == [(layer, DIM)]
    best, second = contrastive.flat()[0].topk(2).values
    assert best > 1.3 * second
    assert contrastive.components["attribution_concept"][layer][DIM] > 0  # supports the answers: positive sign
    # Text-only attribution and the fusion of every scorer find it too.
    text_only = score_value_vectors(model, tok, CONCEPT, text=TEXT, background_text=BG_TEXT)
    assert text_only.top(1) == [(layer, DIM)] and "attribution_qa" not in text_only.components
    fused = score_value_vectors(model, tok, CONCEPT, text=TEXT, background_text=BG_TEXT,
                                scorer=("vocab", "attribution"), **DATA)
    assert fused.top(1) == [(layer, DIM)]
    assert {"vocab", "attribution", "attribution_qa", "attribution_text"} <= set(fused.components)
    for name in ("vocab", "attribution_qa", "attribution_text"):
        assert fused.top(1, by=name) == [(layer, DIM)], name


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_contrast_demotes_a_generic_high_magnitude_neuron(tok, kind):
    """A neuron that boosts the answers of the concept AND of the background wins the plain attribution; the
    contrastive score puts the concept-specific neuron above it."""
    model = build(kind, tok, hidden=64)
    concept_read = read_direction(model, tok, 1, fire=[CONCEPT_QA], quiet=[BACKGROUND_QA])
    plant_neuron(model, tok, 1, DIM, concept_read, CONCEPT_TOKENS, scale=0.01)
    everywhere = read_direction(model, tok, 1, fire=[CONCEPT_QA, BACKGROUND_QA])
    plant_neuron(model, tok, 1, GENERIC_DIM, everywhere, ["harry", "hogwarts", "paris", "berlin", "blue"], scale=0.03)
    # Preconditions: the generic neuron supports both sets, the concept neuron only the concept.
    concept0, background0 = (answer_log_prob(model, tok, QUESTIONS, ANSWERS),
                             answer_log_prob(model, tok, BG_QUESTIONS, BG_ANSWERS))
    with ablate_concept_vectors(model, (1, GENERIC_DIM), mode="zero"):
        assert answer_log_prob(model, tok, QUESTIONS, ANSWERS) < concept0 - 0.1
        assert answer_log_prob(model, tok, BG_QUESTIONS, BG_ANSWERS) < background0 - 0.1
    with ablate_concept_vectors(model, (1, DIM), mode="zero"):
        assert answer_log_prob(model, tok, QUESTIONS, ANSWERS) < concept0 - 0.03
        assert abs(answer_log_prob(model, tok, BG_QUESTIONS, BG_ANSWERS) - background0) < 0.005

    plain = score_value_vectors(model, tok, CONCEPT, contrastive=False, **DATA)
    assert plain.top(2) == [(1, GENERIC_DIM), (1, DIM)]
    contrastive = score_value_vectors(model, tok, CONCEPT, **DATA)
    ranking = contrastive.top(10**6)
    assert ranking[0] == (1, DIM)
    assert ranking.index((1, GENERIC_DIM)) >= 10
    background = contrastive.components["attribution_background"][1]
    assert background[GENERIC_DIM] > 100 * background[DIM]  # why: it matters for the background answers


def test_contrastive_scores_formula():
    concept = {0: torch.tensor([1.0, 1.0, -1.0])}
    background = {0: torch.tensor([0.0, 3.0, -1.0])}
    out = contrastive_scores(concept, background, constant=1.0)[0]
    torch.testing.assert_close(out, torch.tensor([1.0, 0.25, -0.5]))
    default = contrastive_scores(concept, background)[0]  # constant = half the mean |background| = 2/3
    torch.testing.assert_close(default, torch.tensor([1.5, 1 / (3 + 2 / 3), -1 / (1 + 2 / 3)]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_attribution_matches_a_finite_difference_in_the_linear_regime(tok, kind):
    """c·∂L/∂c summed over positions is the first-order change of L when the value vector is scaled away."""
    model = planted_model(tok, kind, 0)
    attribution = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE)[0][DIM]
    eps = 1e-2
    with torch.no_grad():
        base = answer_log_prob(model, tok, QUESTIONS, ANSWERS)
        value_vectors_view(model, 0)[:, DIM] *= 1 - eps  # scaling v_j by (1-eps) = scaling c_j by (1-eps)
        shrunk = answer_log_prob(model, tok, QUESTIONS, ANSWERS)
    assert attribution > 0
    torch.testing.assert_close(torch.tensor((base - shrunk) / eps), attribution, rtol=0.05, atol=1e-5)


def test_batching_and_reductions_agree(tok):
    model = build("gpt2", tok)
    whole = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE, reduction="none")
    batched = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE, batch_size=1)
    magnitude = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE, reduction="abs_sum")
    for layer in whole:
        assert whole[layer].shape == (len(QUESTIONS), value_vectors_view(model, layer).shape[1])
        torch.testing.assert_close(whole[layer].sum(0), batched[layer], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(whole[layer].abs().sum(0), magnitude[layer], rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------ records and ablation
def test_records_feed_straight_into_ablation(tok):
    model = planted_model(tok, "llama", 1)
    found = locate_concept_vectors(model, tok, CONCEPT, text=TEXT, background_text=BG_TEXT, top_n=5, **DATA)
    assert len(found) == 5 and all(isinstance(r, ConceptVector) for r in found)
    first = found[0]
    assert (first.concept, first.layer, first.dim) == (CONCEPT, 1, DIM)
    assert first.questions == QUESTIONS and first.answers == ANSWERS
    # Side effects are measured on held-out questions, not on the background the scorers were tuned to spare.
    assert first.unrelated_questions and not set(first.unrelated_questions) & set(BG_QUESTIONS)
    assert first.unrelated_questions == held_out_questions(CONCEPT, seen=[*BG_QUESTIONS, *QUESTIONS])
    assert first.source_text == TEXT
    assert [r.scores["rank"] for r in found] == list(range(5))
    assert {"attribution", "attribution_qa_concept", "attribution_text_background", "score"} <= set(first.scores)
    assert all(a.scores["score"] >= b.scores["score"] for a, b in zip(found, found[1:]))
    before = answer_log_prob(model, tok, QUESTIONS, ANSWERS)
    original = value_vectors_view(model, 1)[:, DIM].clone()
    with ablate_concept_vectors(model, found, mode="zero"):
        assert torch.all(value_vectors_view(model, 1)[:, DIM] == 0)
        assert answer_log_prob(model, tok, QUESTIONS, ANSWERS) < before
    assert torch.equal(value_vectors_view(model, 1)[:, DIM], original)


def test_scores_object_helpers(tok):
    scores = ConceptScores("x", {0: torch.tensor([0.1, 0.5, 0.3]), 2: torch.tensor([0.4, 0.0])},
                           components={"a": {0: torch.tensor([3.0, 2.0, 1.0]), 2: torch.tensor([0.0, 0.0])}})
    assert scores.layers == [0, 2]
    assert scores.top(3) == [(0, 1), (2, 0), (0, 2)]
    assert scores.top(1, by="a") == [(0, 0)]
    values, locations = scores.flat()
    assert values.shape == (5,) and locations.tolist() == [[0, 0], [0, 1], [0, 2], [2, 0], [2, 1]]
    records = scores.to_records(2)
    assert [r.location for r in records] == [(0, 1), (2, 0)] and records[1].scores["a"] == 0.0


def test_layers_argument_restricts_the_search(tok):
    model = build("llama", tok)
    result = score_value_vectors(model, tok, CONCEPT, layers=[-1], scorer=("vocab", "attribution"), **DATA)
    assert result.layers == [1]
    assert all(layer == 1 for layer, _ in result.top(10))


# ------------------------------------------------------------------------------------------------------- side effects
def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("frozen", [False, True])
def test_locating_leaves_no_trace(tok, frozen):
    model = build("llama", tok)
    model.train()
    if frozen:  # e.g. the base model under a PEFT adapter: gradients must still reach the coefficients
        model.requires_grad_(False)
    before, hooks = snapshot(model), _hook_count(model)
    result = score_value_vectors(model, tok, CONCEPT, text=TEXT, scorer=("vocab", "attribution"), **DATA)
    assert model.training  # mode restored
    assert _hook_count(model) == hooks
    assert all(p.grad is None for p in model.parameters())
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    values, _ = result.flat(by="attribution_qa_concept")
    assert torch.isfinite(values).all() and values.abs().sum() > 0
    if frozen:
        model.requires_grad_(True)
        unfrozen = score_value_vectors(model, tok, CONCEPT, text=TEXT, scorer=("vocab", "attribution"), **DATA)
        torch.testing.assert_close(unfrozen.flat(by="attribution_qa_concept")[0], values)


def test_works_inside_no_grad_and_keeps_mixed_modes(tok):
    model = build("gpt2", tok)
    model.transformer.h[0].train()  # a deliberately mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    with torch.no_grad():
        inside = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE)
    with torch.inference_mode():
        inside_inference = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE)
    assert [m.training for m in model.modules()] == modes
    outside = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE)
    for layer in outside:
        torch.testing.assert_close(inside[layer], outside[layer])
        torch.testing.assert_close(inside_inference[layer], outside[layer])


def test_chat_template_prompts(tok):
    model = build("llama", tok)
    chat = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE, chat=True)
    plain = attribution_scores(model, tok, QUESTIONS, ANSWERS, prompt_template=TEMPLATE)
    assert chat[1].shape == plain[1].shape and not torch.allclose(chat[1], plain[1])


def test_hooks_removed_and_mode_restored_after_an_error(tok):
    model = build("gpt2", tok)
    model.eval()
    hooks = _hook_count(model)

    def explode(module, args, output):
        raise RuntimeError("boom")

    handle = decoder_layers(model)[1].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        locate_concept_vectors(model, tok, CONCEPT, **DATA)
    handle.remove()
    assert _hook_count(model) == hooks
    assert all(len(mlp_out_module(model, i)._forward_pre_hooks) == 0 for i in range(2))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_argument_errors(tok):
    model = build("llama", tok)
    with pytest.raises(ValueError, match="scorer"):
        score_value_vectors(model, tok, CONCEPT, scorer="magic", **DATA)
    with pytest.raises(ValueError, match="attribution_data"):
        score_value_vectors(model, tok, CONCEPT, attribution_data="text", **DATA)  # no text given
    with pytest.raises(ValueError, match="answers"):
        attribution_scores(model, tok, QUESTIONS, ANSWERS[:2], prompt_template=TEMPLATE)
    with pytest.raises(IndexError):
        score_value_vectors(model, tok, CONCEPT, layers=[7], **DATA)
    with pytest.warns(UserWarning, match="non-contrastive"):
        score_value_vectors(model, tok, CONCEPT, questions=QUESTIONS, answers=ANSWERS, prompt_template=TEMPLATE)


def test_held_out_questions_skip_the_concept_and_what_was_seen():
    from hf_unlearn.general_knowledge import GENERAL_KNOWLEDGE, mentions

    seen = [q for q, _ in GENERAL_KNOWLEDGE[:10]]
    drawn = held_out_questions("The Moon", seen=seen, n=1000)
    assert drawn and not set(drawn) & set(seen)
    assert not any(mentions(q, {"moon"}) for q in drawn)
    assert len(drawn) == len(set(drawn)) and held_out_questions("The Moon", seen=seen, n=5) == drawn[:5]


# ------------------------------------------------------------------------------------------------ set size
def test_pick_set_size_follows_the_rule():
    from hf_unlearn.concepts import SetSizeTrial, pick_set_size

    trials = [SetSizeTrial(10, 0.30, 0.00), SetSizeTrial(20, 0.50, 0.04), SetSizeTrial(40, 0.90, 0.02),
              SetSizeTrial(80, 1.50, 0.09)]  # 80: too costly for the background; 40: the largest that passes
    assert pick_set_size(trials).n == 40
    assert SetSizeTrial(5, 0.3, -0.2).ratio == pytest.approx(30.0)  # gains count as a 0.01 drop
    # 20 drops too little on the concept to count; 10's background drop is above the budget: best ratio wins.
    weak = [SetSizeTrial(10, 0.5, 0.06), SetSizeTrial(20, 0.05, 0.0)]
    assert pick_set_size(weak).n == 10
    with pytest.raises(ValueError, match="no set size"):
        pick_set_size([])


def test_choose_set_size_measures_the_drops_it_compares(tok):
    from hf_unlearn.concepts import choose_set_size, pick_set_size

    model = planted_model(tok, "llama", 1)
    scores = score_value_vectors(model, tok, CONCEPT, **DATA)
    n, trials = choose_set_size(model, tok, scores, QUESTIONS, ANSWERS, BG_QUESTIONS, BG_ANSWERS, sizes=(4, 1, 2),
                                prompt_template=TEMPLATE)
    assert [t.n for t in trials] == [1, 2, 4] and n == pick_set_size(trials).n

    def means():
        per_item = answer_log_probs(model, tok, [*QUESTIONS, *BG_QUESTIONS], [*ANSWERS, *BG_ANSWERS],
                                    batch_size=8, prompt_template=TEMPLATE).mean
        return float(per_item[: len(QUESTIONS)].mean()), float(per_item[len(QUESTIONS):].mean())

    clean = means()
    with ablate_concept_vectors(model, scores.top(2), mode="zero"):
        ablated = means()
    assert trials[1].concept_drop == pytest.approx(clean[0] - ablated[0], abs=1e-6)
    assert trials[1].background_drop == pytest.approx(clean[1] - ablated[1], abs=1e-6)
    assert trials[0].concept_drop > 0  # the planted neuron, ranked first, carries the concept

    auto = locate_concept_vectors(model, tok, CONCEPT, progress=False, **DATA)
    expected, _ = choose_set_size(model, tok, scores, QUESTIONS, ANSWERS, BG_QUESTIONS, BG_ANSWERS,
                                  prompt_template=TEMPLATE)
    assert len(auto) == min(expected, len(scores.flat()[0]))
    without_answers = {k: v for k, v in DATA.items() if k != "background_answers"}
    with pytest.warns(UserWarning, match="no background"):
        assert len(locate_concept_vectors(model, tok, CONCEPT, progress=False, **without_answers)) == 20
    with pytest.raises(ValueError, match="top_n must be a positive"):
        locate_concept_vectors(model, tok, CONCEPT, top_n=0, **DATA)
