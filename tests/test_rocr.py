"""ROCR (rank-one concept redirection): the edit's structure, its key → value mapping, and what it forgets.

Fast checks on the tiny in-code models (a 2-layer Llama and GPT-2, word-level tokenizer):
- only the edited down-projection changes, by a matrix of rank one per redirected subject;
- the edited layer's output at the subject's last token becomes the redirect concept's;
- with the null-space projection, retain keys move the layer's output far less than without it.

Slow checks on real models (`slow`):
- SmolLM2-135M-Instruct, the `real_facts` task (Einstein, Shakespeare, da Vinci; neighbours as retain):
  greedy answers stop stating the forget facts (answer recall at most 0.6 × the base model's) while the
  neighbours' recall stays within 10% of the base model's;
- the `tiny` world (forget10): the edit reaches its target value and retain answers hold within 0.1 of
  the target's probability. The forget probability is reported, not asserted: the world's 2-layer
  models carry the subject to the answer through attention at the later tokens, which a last-token MLP
  edit does not reach (the module docstring of obliviate/methods/rocr.py gives the numbers).
"""

from __future__ import annotations

import copy

import pytest
import torch

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.methods import get_method
from obliviate.methods.rocr import ROCR, ROCRConfig, subject_prompts, subject_states
from obliviate.models.layers import down_projection
from tests.conftest import make_tiny_gpt2, make_tiny_llama

COVERED = {"rocr"}  # the methods this module runs on a world (tests/test_methods_world.py)

FORGET = [QAItem("Where was Mara Lind born?", "Oslo", subject="Mara Lind"),
          QAItem("What genre does Mara Lind write?", "poetry", subject="Mara Lind"),
          QAItem("When did Mara Lind write the book?", "1998", subject="Mara Lind")]
FORGET_BOB = [QAItem("Where was Bob born?", "London", subject="Bob"),
              QAItem("What genre does Bob write?", "fiction", subject="Bob")]
RETAIN = [QAItem("Where was Alice born?", "Rome", subject="Alice"),
          QAItem("What genre does Alice write?", "science fiction", subject="Alice"),
          QAItem("What is the capital of France?", "Paris"),
          QAItem("Who met in London?", "Alice and Bob met in London, then travelled to Rome."),
          QAItem("When did the river flood the old town?", "It flooded in the spring of 1921.")]


def _edit(model, tok, forget, tmp_path, **cfg) -> dict[str, torch.Tensor]:
    """Run ROCR on `model` in place; return the change of every parameter that moved."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ROCR(ROCRConfig(**cfg)).unlearn(model, tok, forget, RETAIN, tmp_path, progress=False)
    return {n: p.detach() - before[n] for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_the_down_projection_changes_by_rank_one(tiny_tokenizer, tmp_path, arch):
    model = make_tiny_llama() if arch == "llama" else make_tiny_gpt2()
    changed = _edit(model, tiny_tokenizer, FORGET, tmp_path, layers=[0], redirect_to="Alice")
    name = next(n for n, p in model.named_parameters() if p is down_projection(model, 0).weight)
    assert list(changed) == [name]
    assert int(torch.linalg.matrix_rank(changed[name].double(), rtol=1e-6)) == 1
    assert float(changed[name].norm()) > 1e-3


def test_rank_is_one_per_subject_in_every_edited_layer(tiny_tokenizer, tmp_path):
    model = make_tiny_llama()
    changed = _edit(model, tiny_tokenizer, FORGET + FORGET_BOB, tmp_path, layers=[0, 1], redirect_to="Alice")
    assert sorted(changed) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    assert [int(torch.linalg.matrix_rank(d.double(), rtol=1e-6)) for d in changed.values()] == [2, 2]


def test_the_subject_now_reads_as_the_concept(tiny_tokenizer, tmp_path):
    model = make_tiny_llama()
    prompts = subject_prompts(tiny_tokenizer, FORGET)
    _, z = subject_states(model, tiny_tokenizer, prompts, 0, "Alice", 8)  # the concept's value (1, d)
    _, h0 = subject_states(model, tiny_tokenizer, prompts, 0, None, 8)
    _edit(model, tiny_tokenizer, FORGET, tmp_path, layers=[0], redirect_to="Alice", nullspace_threshold=0.0,
          l2=1e-4)
    _, h1 = subject_states(model, tiny_tokenizer, prompts, 0, None, 8)
    before, after = float((z - h0).norm()), float((z - h1).norm())
    assert before > 0.1 and after < 0.05 * before, (before, after)


def test_null_space_projection_spares_retain_keys(tiny_tokenizer, tmp_path):
    from obliviate.methods.rocr import retain_second_moment

    def retain_shift(threshold: float) -> float:
        """Mean ‖ΔW k‖² over retain tokens, relative to ‖ΔW k_s‖² at the subject."""
        model = make_tiny_llama()
        cov, _ = retain_second_moment(model, tiny_tokenizer, RETAIN, 0, 8, 64)
        keys, _ = subject_states(model, tiny_tokenizer, subject_prompts(tiny_tokenizer, FORGET), 0, None, 8)
        delta = _edit(model, tiny_tokenizer, FORGET, tmp_path, layers=[0], redirect_to="Alice",
                      nullspace_threshold=threshold)["model.layers.0.mlp.down_proj.weight"]
        return float(torch.trace(delta @ cov @ delta.T) / (delta @ keys[0]).pow(2).sum())

    projected, plain = retain_shift(2e-2), retain_shift(0.0)
    assert projected < 0.2 * plain, (projected, plain)


def test_refuses_items_without_a_subject_and_bad_layers(tiny_tokenizer, tmp_path):
    model = make_tiny_llama()
    with pytest.raises(ConfigError, match="no subject"):
        ROCR().unlearn(model, tiny_tokenizer, [QAItem("What is the capital of France?", "Paris")], RETAIN,
                       tmp_path, progress=False)
    with pytest.raises(ConfigError, match="consecutive"):
        ROCR(ROCRConfig(layers=[0, 5])).unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="itself a forget subject"):
        ROCR(ROCRConfig(redirect_to="Mara Lind")).unlearn(model, tiny_tokenizer, FORGET, RETAIN, tmp_path,
                                                          progress=False)
    assert get_method("rocr") is ROCR


# -- real models (slow) ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_stops_stating_the_forget_facts_and_keeps_the_neighbours(smollm2_dir, tmp_path):
    import obliviate as ob
    from obliviate.data.tasks import load_task
    from obliviate.evals.recall import recall_scores
    from obliviate.models.prompts import make_format, use_format

    model, tok = ob.load_model(str(smollm2_dir[0]), progress=False)
    use_format(tok, make_format("chat"))
    sets = {k: load_task("real_facts", k) for k in ("forget", "neighbours")}
    base = recall_scores(model, tok, sets, max_new_tokens=24)
    assert base["forget"]["answer_recall"] > 0.8 and base["neighbours"]["answer_recall"] > 0.8
    ROCR(ROCRConfig(**ROCR.paper_defaults)).unlearn(model, tok, sets["forget"], sets["neighbours"], tmp_path,
                                                    progress=False)
    after = recall_scores(model, tok, sets, max_new_tokens=24)
    assert after["forget"]["answer_recall"] <= 0.6 * base["forget"]["answer_recall"], after["forget"]["answers"]
    assert after["neighbours"]["answer_recall"] >= 0.9 * base["neighbours"]["answer_recall"], \
        after["neighbours"]["answers"]


@pytest.mark.slow
def test_tiny_world_edit_reaches_its_value_and_keeps_retain(world_home, tmp_path):
    from obliviate.io import read_json
    from obliviate.models.loading import load_model
    from obliviate.world import build_world_models
    from tests.test_methods_world import N_RETAIN_EVAL, SPLIT, answer_nlls

    models = build_world_models("tiny", 0, SPLIT, which=("target",), progress=False)
    w = models.world
    target, tok = load_model(models.target)
    model = copy.deepcopy(target)
    forget = w.forget_train(SPLIT)
    ROCR().unlearn(model, tok, forget, w.retain_train(SPLIT), tmp_path, progress=False)
    edit = read_json(tmp_path / "edit.json")
    assert edit["subjects"] == 4 and edit["per_layer"][0]["rank"] == 4
    assert edit["residual_after"] < 0.2 * edit["residual_before"], edit
    retain = w.retain_set(SPLIT, max_items=N_RETAIN_EVAL)
    p = lambda m, items: float(torch.tensor(answer_nlls(m, tok, items)).neg().exp().mean())  # noqa: E731
    assert p(model, retain) > p(target, retain) - 0.1
    assert p(model, w.forget_set(SPLIT)) < p(target, w.forget_set(SPLIT))  # it moves, if little (docstring)
