"""The prompt classifier's held-out report, gated prefixes, and ICUL's context fitting, on tiny models built in code.

- `fit_detector` holds whole question groups out of training and reports FNR/FPR on their original
  and paraphrased forms; the counts are checked against a direct count over the held-out items.
- `obliviate unlearn --method eco` writes the report into the run (classifier.json, config.json) and
  prints it.
- A gated prefix leaves unflagged prompts to the bare model, also inside mixed batches.
- ICUL fits its per-query context to a model with few positions, and says so in one line when even one
  example cannot fit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.interventions.classifier import PromptClassifier
from obliviate.interventions.detector import Detector, fit_detector, question_groups
from obliviate.interventions.prefix_kinds import InContextPrefix, SoftPrompt
from obliviate.interventions.regions import PromptReader, classifier_text
from obliviate.methods.icul import ICUL, ICULConfig
from obliviate.models.generation import generate_greedy
from obliviate.models.prompts import DEFAULT_FORMAT, encode_prompt
from obliviate.models.scoring import score_continuations
from tests.conftest import build_tiny_tokenizer, make_tiny_llama

FILLERS = [f"w{i}" for i in range(60)]  # in-vocabulary words of the tiny tokenizer (after a space)


def _facts(n: int, about: str, offset: int) -> list[QAItem]:
    """Two trained forms per fact (two items) sharing their paraphrased forms, as the world's facts do."""
    items = []
    for i in range(n):
        w = FILLERS[offset + i]
        paraphrased = [f"What {about} is {w}?", f"Tell the {about} of {w}."]
        for form in (f"Where was the {about} {w} born?", f"When did the {about} {w} write?"):
            items.append(QAItem(form, f"In {w}.", paraphrased_questions=paraphrased, subject=w))
    return items


FORGET = _facts(10, "author", 0)
RETAIN = _facts(10, "river", 20)


def test_question_groups_keep_every_form_of_a_fact_together():
    groups = question_groups(FORGET)
    assert [sorted(g) for g in groups] == [[2 * i, 2 * i + 1] for i in range(10)]


@pytest.mark.parametrize("threshold", [None, 0.0, 2.0])
def test_report_counts_match_a_direct_count_over_the_held_out_items(threshold):
    tok = build_tiny_tokenizer()
    # alpha 0.5: 2 calibration groups (of 7 trained facts) give k = ⌊0.5 · 3⌋ = 1, a finite τ.
    detector, report = fit_detector(tok, FORGET, RETAIN, embedder="hashing", alpha=0.5, threshold=threshold,
                                    holdout_fraction=0.3, seed=1)
    held = report["held_out"]
    assert held["forget_groups"] == 3 and held["retain_groups"] == 3  # ⌊0.3 · 10⌋ facts each
    assert set(held["forget_items"]) <= set(range(len(FORGET))) and len(held["forget_items"]) == 6
    # Whole facts are held out: no held-out prompt is a form of a trained one.
    for items, idx in ((FORGET, held["forget_items"]), (RETAIN, held["retain_items"])):
        out = set(idx)
        for i in out:
            assert all(j in out for j in range(len(items)) if items[j].paraphrased_questions
                       == items[i].paraphrased_questions)
    flags = lambda qs: detector.classifier.flags([classifier_text(tok, q, DEFAULT_FORMAT) for q in qs])  # noqa: E731
    for kind in ("original", "paraphrased"):
        pick = (lambda it: [it.question]) if kind == "original" else (lambda it: it.paraphrased_questions)
        f = sorted({q for i in held["forget_items"] for q in pick(FORGET[i])})
        r = sorted({q for i in held["retain_items"] for q in pick(RETAIN[i])})
        fn, fp = int((~flags(f)).sum()), int(flags(r).sum())
        row = held[kind]
        assert (row["forget_prompts"], row["false_negatives"], row["retain_prompts"], row["false_positives"]) == (
            len(f), fn, len(r), fp)
        assert row["fnr"] == pytest.approx(fn / len(f)) and row["fpr"] == pytest.approx(fp / len(r))
        if threshold == 0.0:  # every prompt flagged
            assert (row["fnr"], row["fpr"]) == (0.0, 1.0)
        if threshold == 2.0:  # no prompt flagged
            assert (row["fnr"], row["fpr"]) == (1.0, 0.0)
    assert len(f) == 6 and len(r) == 6  # 3 facts × 2 paraphrased forms (the last kind checked)
    assert report["threshold"] == (threshold if threshold is not None else pytest.approx(detector.classifier.threshold))
    assert 0 <= report["forget_flag_rate"] <= 1 and 0 <= report["retain_flag_rate"] <= 1


def test_no_held_out_share_reports_none_and_trains_on_everything():
    tok = build_tiny_tokenizer()
    _, report = fit_detector(tok, FORGET[:4], RETAIN[:4], embedder="hashing", threshold=0.5, holdout_fraction=0.2)
    assert report["held_out"] is None  # ⌊0.2 · 2⌋ = 0 facts


def test_unlearn_eco_writes_and_prints_the_classifier_report(tmp_path):
    from obliviate.cli import app
    from obliviate.models.loading import save_model

    save_model(make_tiny_llama(), build_tiny_tokenizer(), tmp_path / "base")
    for name, items in (("forget", FORGET), ("retain", RETAIN)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    run = tmp_path / "run"
    args = ["unlearn", "--method", "eco", "--model", str(tmp_path / "base"), "--forget", str(tmp_path / "forget.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--out", str(run), "--set", "embedder=hashing",
            "--set", "zo_steps=0", "--set", "holdout_fraction=0.3", "--set", "alpha=0.4"]  # 2 groups calibrate: k = 1
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out prompts" in result.output and "paraphrased" in result.output and "FNR" in result.output
    report = json.loads((run / "classifier.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["unlearn"]["classifier"] == report
    for kind in ("original", "paraphrased"):
        row = report["held_out"][kind]
        assert row["forget_prompts"] == 6 and row["retain_prompts"] == 6
        assert {"fnr", "fpr", "false_negatives", "false_positives"} <= row.keys()


# ---------------------------------------------------------------------------------------------
# Gated prefixes
# ---------------------------------------------------------------------------------------------


def _gate(tok) -> Detector:
    """A classifier that flags the 'author' questions and not the 'river' ones (fixed threshold)."""
    texts = lambda it: [classifier_text(tok, q, DEFAULT_FORMAT) for q in (it.question, *it.paraphrased_questions)]  # noqa: E731
    forget = [texts(it) for it in FORGET]
    retain = [t for it in RETAIN for t in texts(it)]
    clf = PromptClassifier.fit(forget, retain, embedder="hashing", threshold=0.5)
    return Detector(clf, PromptReader.for_items(tok, DEFAULT_FORMAT))


@pytest.mark.parametrize("kind", ["soft", "context"])
def test_a_gated_prefix_leaves_unflagged_prompts_to_the_bare_model(kind):
    tok = build_tiny_tokenizer()
    model = make_tiny_llama(seed=4)
    detector = _gate(tok)
    if kind == "soft":
        prefix = SoftPrompt(prompt=torch.randn(5, 32), bos_id=tok.bos_token_id, detector=detector)
    else:
        prefix = InContextPrefix.from_text(tok, "I do not know the answer to that question.\n\n", detector)
    wrapped = prefix.wrap(model, tok)
    items = [FORGET[0], RETAIN[0], FORGET[3], RETAIN[5]]  # a mixed batch: flagged, not, flagged, not
    prompts = [encode_prompt(tok, DEFAULT_FORMAT.render(it.question)) for it in items]
    assert detector.flags(tok, torch.tensor([prompts[0]]), torch.ones(1, len(prompts[0])))[0].all()
    conts = [[tok(" " + it.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]] for it in items]
    bare = score_continuations(model, prompts, conts, batch_size=4)
    got = score_continuations(wrapped, prompts, conts, batch_size=4)
    single = [score_continuations(wrapped, [p], [c])[0] for p, c in zip(prompts, conts, strict=True)]
    for i, (b, g, s) in enumerate(zip(bare, got, single, strict=True)):
        np.testing.assert_allclose(g[0].logprobs, s[0].logprobs, atol=1e-5)  # batching changes nothing
        if i % 2:  # unflagged: the bare model
            np.testing.assert_allclose(g[0].logprobs, b[0].logprobs, atol=1e-5)
        else:
            assert np.abs(g[0].logprobs - b[0].logprobs).max() > 1e-2
    batched = generate_greedy(wrapped, tok, prompts, max_new_tokens=5, stop_at=())
    assert batched == [generate_greedy(wrapped, tok, [p], max_new_tokens=5, stop_at=())[0] for p in prompts]
    assert batched[1::2] == generate_greedy(model, tok, prompts[1::2], max_new_tokens=5, stop_at=())
    # Greedy generation continues its own cache: it is the argmax of teacher-forced scoring.
    gens = [wrapped.generate(input_ids=torch.tensor([p]), max_new_tokens=4, pad_token_id=0)[0, len(p):].tolist()
            for p in prompts]
    assert all(s[0].argmax_match.all() for s in score_continuations(wrapped, prompts, [[g] for g in gens]))


# ---------------------------------------------------------------------------------------------
# ICUL's context fits the model
# ---------------------------------------------------------------------------------------------


def test_icul_fits_its_context_to_a_model_with_few_positions(tmp_path):
    tok = build_tiny_tokenizer()
    model = make_tiny_llama(max_position_embeddings=64)
    method = ICUL(ICULConfig(n_forget=3, n_correct=4, reserve_tokens=24, gate="none", embedder="hashing"))
    summary = method.unlearn(model, tok, FORGET, RETAIN, tmp_path, progress=False)
    prefix = method.intervention
    assert summary["context_tokens"] + 24 <= 64  # the longest context a query can get still fits
    assert 1 <= summary["forget_per_query"] <= 3 and summary["correct_examples"] < 4
    # A forget query's context holds its own forget example (nearest by prompt embedding).
    for i in (0, 7, 12):
        question = classifier_text(tok, FORGET[i].question, DEFAULT_FORMAT)
        assert i in prefix.select([question])[0]
    prompts = [encode_prompt(tok, DEFAULT_FORMAT.render(it.question)) for it in (FORGET[0], RETAIN[0])]
    out = generate_greedy(prefix.wrap(model, tok), tok, prompts, max_new_tokens=4, stop_at=())
    assert len(out) == 2
    with pytest.raises(ConfigError, match=r"^icul: a forget example of \d+ tokens.*exceeds the model's 16 positions"):
        ICUL(ICULConfig(gate="none", embedder="hashing", reserve_tokens=8)).unlearn(
            make_tiny_llama(max_position_embeddings=16), tok, FORGET, RETAIN, tmp_path / "b", progress=False)
