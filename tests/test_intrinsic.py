"""The intrinsic suite: parametric traces, linear CKA, and (slow) its separation of target and oracle.

Fast, on tiny models built in code:
- linear CKA is 1 for a representation against itself, against an orthogonal rotation and a scaling of
  it, and far lower against an unrelated one;
- a value vector planted to promote a concept's tokens is the first one its trace finds; rewriting that
  vector lowers trace_cosine and trace_score, and the other concept's trace does not move.

Slow, on the `tiny` world (its cached target and oracle, forget10):
- the target against itself scores 1 on every number;
- the oracle, which never saw the forget people, is further from the target on forget inputs than on
  retain inputs (CKA 0.59 against 0.87), and its value vectors promote the forget people's tokens less
  than the retain people's (trace_score 0.54 against 0.74);
- GradDiff leaves the forget traces nearly where they were (trace_cosine and trace_score > 0.99,
  ConceptVectors' finding) while its forget representations move (CKA below the retain CKA);
- `obliviate eval RUN --suite intrinsic` on a run writes intrinsic.json with the run's and the oracle's
  numbers; an inference-time run says its traces are the frozen model's.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from obliviate.data.schema import QAItem
from obliviate.evals.intrinsic import Intrinsic, concept_tokens, linear_cka, locate_traces, trace_measures
from obliviate.models.layers import down_projection
from tests.conftest import make_tiny_llama
from tests.helpers import run_cli


def test_linear_cka_is_invariant_to_rotation_and_scale_and_low_for_unrelated_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 16))) < 0.2
    assert np.isnan(linear_cka(np.ones((10, 4)), x[:10]))  # no variance across inputs: undefined


def test_a_planted_value_vector_is_the_trace_and_editing_it_shows(tiny_tokenizer):
    model = make_tiny_llama()
    concept_ids = {"Mara Lind": concept_tokens(tiny_tokenizer, "Mara Lind", [QAItem("q", "Oslo")], set()),
                   "Alice": concept_tokens(tiny_tokenizer, "Alice", [QAItem("q", "Rome")], set())}
    assert all(concept_ids.values())
    emb = model.get_output_embeddings().weight.detach()
    w = down_projection(model, 1).weight  # (d, m)
    with torch.no_grad():  # column 7 of layer 1 writes the direction of Mara Lind's tokens
        w[:, 7] = 0.5 * emb[concept_ids["Mara Lind"]].mean(0) / emb[concept_ids["Mara Lind"]].mean(0).norm()
    traces = locate_traces(model, concept_ids, n_vectors=3)
    assert traces[0].where[0] == (1, 7)
    assert trace_measures(model, traces[:1]) == pytest.approx((1.0, 1.0))
    edited = copy.deepcopy(model)
    with torch.no_grad():
        down_projection(edited, 1).weight[:, 7] = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(0))
    cos, score = trace_measures(edited, traces[:1])
    assert cos < 0.8 and score < 0.8, (cos, score)
    alice = [t for t in traces if t.concept == "Alice"]
    if (1, 7) not in alice[0].where:  # the other concept's trace, untouched by the edit
        assert trace_measures(edited, alice) == pytest.approx((1.0, 1.0))


# -- the tiny world (slow) ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_world(world_home):
    from obliviate.models.loading import load_model
    from obliviate.world import build_world_models

    models = build_world_models("tiny", 0, "forget10", which=("target", "oracle"), progress=False)
    target, tok = load_model(models.target)
    oracle, _ = load_model(models.oracle)
    w = models.world
    suite = Intrinsic(target, tok, w.forget_set("forget10"), w.retain_set("forget10"))
    return suite, target, oracle, tok, w


@pytest.mark.slow
def test_target_is_one_and_the_oracle_is_further_on_forget_than_on_retain(tiny_world):
    suite, target, oracle, _, _ = tiny_world
    assert len(suite.traces["forget"]) == 4 and len(suite.traces["retain"]) == 4
    same = suite.measure(target).aggregates
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in same.values()), same
    o = suite.measure(oracle).aggregates
    assert o["cka/forget"] < o["cka/retain"] - 0.15, o
    assert o["trace_score/forget"] < o["trace_score/retain"] - 0.1, o


@pytest.mark.slow
def test_graddiff_keeps_its_traces_while_its_forget_representations_move(tiny_world, tmp_path):
    from obliviate.methods import METHODS

    suite, target, _, tok, w = tiny_world
    model = copy.deepcopy(target)
    METHODS["graddiff"]().unlearn(model, tok, w.forget_train("forget10"), w.retain_train("forget10"), tmp_path,
                                  progress=False)
    a = suite.measure(model).aggregates
    assert a["trace_cosine/forget"] > 0.99 and a["trace_score/forget"] > 0.98, a
    assert a["cka/forget"] < a["cka/retain"] - 0.1, a


@pytest.mark.slow
def test_cli_intrinsic_suite_on_a_run_and_an_inference_time_run(tmp_path, monkeypatch, capsys, world_home):
    for method in ("rocr", "prompt"):
        run = tmp_path / method
        code, _, err = run_cli(["unlearn", "--method", method, "--model", "world:tiny@0", "--out", str(run)],
                               monkeypatch, capsys)
        assert code == 0, err
        code, out, err = run_cli(["eval", str(run), "--suite", "intrinsic", "--json"], monkeypatch, capsys)
        assert code == 0, err
        payload = json.loads(out)
        assert payload == json.loads((run / "intrinsic.json").read_text())
        model, oracle = payload["aggregates"]["model"], payload["aggregates"]["oracle"]
        assert oracle["cka/forget"] < oracle["cka/retain"]
        if method == "rocr":  # a weight edit: the forget traces moved, and more than the retain ones
            assert model["trace_cosine/forget"] < 1.0 and model["trace_cosine/forget"] < model["trace_cosine/retain"]
        else:  # inference-time: the frozen weights, said so
            assert model["trace_cosine/forget"] == pytest.approx(1.0)
            assert any("inference-time" in n for n in payload["notes"]["model"])
            assert model["cka/forget"] <= 1.0


def test_cli_intrinsic_suite_needs_a_reference(tmp_path, monkeypatch, capsys, tiny_llama, tiny_tokenizer):
    from tests.helpers import assert_one_line_error

    model_dir = tmp_path / "m"
    tiny_llama.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps({"question": "Where was Mara Lind born?", "answer": "Oslo",
                                  "subject": "Mara Lind"}) + "\n")
    capsys.readouterr()  # what saving the model printed
    code, _, err = run_cli(["eval", str(model_dir), "--suite", "intrinsic", "--forget", str(forget), "--retain",
                            str(forget), "--out", str(tmp_path / "o")], monkeypatch, capsys)
    assert_one_line_error(code, err, "--reference-model")


def test_a_mixture_of_experts_gets_cka_and_a_note_instead_of_traces(tiny_tokenizer):
    from tests.conftest import make_tiny_mixtral

    forget = [QAItem("Where was Mara Lind born?", "Oslo", subject="Mara Lind")] * 3
    retain = [QAItem("Where was Alice born?", "Rome", subject="Alice"), QAItem("Where was Bob born?", "London")]
    model = make_tiny_mixtral()
    result = Intrinsic(model, tiny_tokenizer, forget, retain).measure(model)
    assert result.aggregates["trace_cosine/forget"] is None and "not applicable" in result.notes[0]
    assert result.aggregates["cka/retain"] == pytest.approx(1.0)
