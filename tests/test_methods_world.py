"""Every registered method on the `tiny` world: it forgets, and its own success measure moves.

Each method runs once with its default config (the world defaults) on the world's target (preset
tiny, seed 0), unlearning the forget10 split: 4 people × 12 facts × 2 trained question forms = 96
forget items, with the 864 items of the other 36 people as the retain set. Two checks per method:

(a) the mean forget-set answer probability, mean over the 48 forget evaluation items of
    exp(−mean answer NLL) (`score_qa`), falls below `FORGET_DROP` = 0.75 × the target's. The target
    has memorised its training data (0.980, with an item standard deviation of 0.012, so a standard
    error of 0.002 for the mean): 0.75× is far outside noise, and each method goes well past it
    (0.02 for RMU to 0.64 for FLAT; IdkDPO 0.57);
(b) the measure of success of the method's own paper, before (target) against after:
    - GA: memorisation accuracy (Jang et al.: teacher-forced greedy token accuracy) on forget answers;
    - GradDiff, KL, NPO, SimNPO: the forget NLL rises, and by more than the retain NLL;
    - IdkSFT, SNAP: the refusal rate of greedy forget answers; SNAP also keeps its hard positives (the
      forget people's neighbours) answered, and its refusals fluent (n-gram entropy);
    - IdkDPO: reward accuracy, the share of forget items whose refusal has the higher implicit reward;
    - FLAT: its variational f-divergence estimate between refusal ("good") and answer ("bad") rises;
    - random labels: the log-probability gap from each forget answer to its new random label shrinks;
    - RMU: forget activations at layer ℓ move towards c·u, retain activations stay put;
    - WHP: the model's predictions at forget answer positions agree with the generic targets;
    - SSD: exactly the parameters its selection rule picks (recomputed here) are dampened;
    - task vector: the weight change is minus the fine-tuning direction (θ + τ learns, θ − τ forgets);
    - ECO, GUARD: the prompt classifier flags forget prompts and passes retain prompts;
    - SPUL, ICUL, prompt, ULD: the forget probability falls by more (relatively) than the retain one.

Fine-tuning and surgery methods change a copy of the target in place; inference-time methods are
loaded back from the saved run directory and wrap the frozen target, as `runs.load_run_model` does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from obliviate.data.refusals import REFUSALS, refusals_for
from obliviate.methods import METHODS
from obliviate.methods.inference import InterventionMethod
from obliviate.methods.snap import neighbour_items, ngram_entropy, refusal_rate, weight_matrices
from obliviate.models.generation import generate_answers
from obliviate.models.loading import load_model
from obliviate.models.scoring import score_qa
from obliviate.train.data import IGNORE, collate, encode_items
from obliviate.train.swd import swd_penalty
from obliviate.world import build_world_models

pytestmark = pytest.mark.slow

SPLIT = "forget10"
FORGET_DROP = 0.75  # (a): forget probability after ≤ FORGET_DROP × the target's
N_RETAIN_EVAL = 48  # retain evaluation items (a seeded spread-out subset), as many as forget items
MAX_NEW_TOKENS = 32  # greedy answers: world answers are 1-3 words, refusals about 20 tokens of the world's BPE


@dataclass
class World:
    model: torch.nn.Module  # the target, never modified (methods get a deep copy)
    tok: object
    forget_train: list
    retain_train: list
    forget_eval: list
    retain_eval: list
    neighbour_eval: list  # retain evaluation items about the forget people's neighbours


@dataclass
class Scores:
    forget_nll: np.ndarray  # (48,) mean answer NLL per forget evaluation item
    retain_nll: np.ndarray  # (48,)

    @property
    def forget_prob(self) -> float:
        return float(np.exp(-self.forget_nll).mean())

    @property
    def retain_prob(self) -> float:
        return float(np.exp(-self.retain_nll).mean())


def answer_nlls(model, tok, items) -> np.ndarray:
    return np.array([s["answer"].mean_nll for s in score_qa(model, tok, items, fields=("answer",))])


def scores(model, world: World) -> Scores:
    return Scores(answer_nlls(model, world.tok, world.forget_eval), answer_nlls(model, world.tok, world.retain_eval))


def greedy(model, world: World, items) -> list[str]:
    return generate_answers(model, world.tok, [it.question for it in items], max_new_tokens=MAX_NEW_TOKENS)


@torch.no_grad()
def answer_positions(model, tok, items, answers=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probs (B, T-1, V), next-token labels (B, T-1), mask of answer positions (B, T-1))."""
    enc, _ = encode_items(tok, items, answers=answers)
    batch = collate(enc, tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return logits.float().log_softmax(-1), labels, labels != IGNORE


def sequence_logprob(model, tok, items, answers=None) -> torch.Tensor:
    """Σ over answer tokens of log π(y_t | x, y_<t), per item (B,)."""
    logp, labels, mask = answer_positions(model, tok, items, answers)
    return (logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)


def mean_token_prob(model, tok, items, answers=None) -> float:
    """Answer-token probability, averaged over each item's answer tokens, then over items."""
    logp, labels, mask = answer_positions(model, tok, items, answers)
    p = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp() * mask
    return float((p.sum(-1) / mask.sum(-1)).mean())


def memorisation_accuracy(model, tok, items) -> float:
    """Jang et al. 2023's MA: share of answer tokens the model predicts greedily under teacher forcing."""
    logp, labels, mask = answer_positions(model, tok, items)
    return float((logp.argmax(-1) == labels)[mask].float().mean())


def rouge1_recall(answer: str, generation: str) -> float:
    """Share of the answer's words that the generation contains (case and punctuation ignored)."""
    words = lambda s: "".join(c if c.isalnum() else " " for c in s.lower()).split()  # noqa: E731
    want, got = words(answer), set(words(generation))
    return sum(w in got for w in want) / max(len(want), 1)


# The methods each test below runs; `uoe` needs a mixture-of-experts world (tests/test_uoe.py).
COVERED = {"ga", "graddiff", "kl", "npo", "simnpo", "idk_sft", "snap", "idk_dpo", "flat", "random_label", "rmu",
           "whp", "ssd", "task_vector", "eco", "guard", "spul", "icul", "prompt", "uld",
           "spul+gate", "icul+gate", "prompt+gate"}


def test_every_registered_method_has_a_world_test():
    from tests.test_methods_newer_world import COVERED as NEWER  # open-unlearning's newer losses
    from tests.test_rocr import COVERED as ROCR_COVERED
    from tests.test_s3t_world import COVERED as EXACT  # s3t, trained from the world's base model
    from tests.test_skills import COVERED as SKILLS  # skill unlearning, on the world's skill task

    # uoe needs a mixture-of-experts world (tests/test_uoe.py); alu does not apply to the world (tests/test_alu.py)
    assert set(METHODS) - {"uoe", "alu"} == COVERED | NEWER | SKILLS | ROCR_COVERED | EXACT


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(world_home) -> World:
    models = build_world_models("tiny", 0, SPLIT, which=("target",), progress=False)
    w = models.world
    model, tok = load_model(models.target)
    forget_eval = w.forget_set(SPLIT)
    forget_people = sorted({it.subject for it in forget_eval})
    neighbours = {n for pid in forget_people for n in w.neighbours(pid)} & set(w.retain_pids(SPLIT))
    assert neighbours, "the tiny world gives its forget people neighbours among the retain people"
    return World(model.eval(), tok, w.forget_train(SPLIT), w.retain_train(SPLIT), forget_eval,
                 w.retain_set(SPLIT, max_items=N_RETAIN_EVAL),
                 [it for it in w.retain_set(SPLIT) if it.subject in neighbours])


@pytest.fixture(scope="module")
def target(world) -> Scores:
    s = scores(world.model, world)
    assert s.forget_prob > 0.9 and s.retain_prob > 0.9, "the target has memorised its training data"
    return s


# The tiny world's forget set leaves 12 calibration facts for the prompt classifier: too few for the
# default α = 0.05 (k = ⌊α(n + 1)⌋ = 0 flags every prompt), enough for α = 0.1 (k = 1).
WORLD_DETECTOR = {"alpha": 0.1}


def unlearn(world: World, name: str, out_dir):
    """(method, unlearned model) for `name` with its default config (the classifier's α as above)."""
    from obliviate.methods.eco import DetectorConfig

    cls = METHODS[name]
    method = cls(cls.Config(**WORLD_DETECTOR)) if issubclass(cls.Config, DetectorConfig) else cls()
    model = copy.deepcopy(world.model)
    method.unlearn(model, world.tok, world.forget_train, world.retain_train, out_dir, progress=False)
    if isinstance(method, InterventionMethod):
        # As `runs.load_run_model` does: the saved intervention, around the frozen model.
        model = InterventionMethod.load(out_dir, model, world.tok)
    return method, model.eval()


def check_forgets(after: Scores, target: Scores) -> None:
    """(a): the forget-set answer probability falls below FORGET_DROP × the target's."""
    assert after.forget_prob < FORGET_DROP * target.forget_prob, (after.forget_prob, target.forget_prob)


# -- fine-tuning methods ----------------------------------------------------------------------------

def test_ga_lowers_memorisation_accuracy(world, target, tmp_path):
    _, model = unlearn(world, "ga", tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    before_ma = memorisation_accuracy(world.model, world.tok, world.forget_eval)
    after_ma = memorisation_accuracy(model, world.tok, world.forget_eval)
    assert before_ma > 0.9 and after_ma < before_ma - 0.1, (before_ma, after_ma)


@pytest.mark.parametrize("name", ["graddiff", "kl", "npo", "simnpo"])
def test_forget_nll_rises_more_than_retain_nll(world, target, tmp_path, name):
    _, model = unlearn(world, name, tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    rise_f = float(after.forget_nll.mean() - target.forget_nll.mean())
    rise_r = float(after.retain_nll.mean() - target.retain_nll.mean())
    assert rise_f > 0.3 and rise_f > 2 * rise_r, (rise_f, rise_r)


def test_idk_sft_refuses_forget_questions(world, target, tmp_path):
    _, model = unlearn(world, "idk_sft", tmp_path)
    check_forgets(scores(model, world), target)
    before = refusal_rate(greedy(world.model, world, world.forget_eval))
    after = refusal_rate(greedy(model, world, world.forget_eval))
    assert before < 0.05 and after > 0.3, (before, after)


def test_snap_refuses_fluently_and_keeps_hard_positives(world, target, tmp_path):
    method, model = unlearn(world, "snap", tmp_path)
    check_forgets(scores(model, world), target)
    forget_before = greedy(world.model, world, world.forget_eval)
    forget_after = greedy(model, world, world.forget_eval)
    assert refusal_rate(forget_before) < 0.05 and refusal_rate(forget_after) > 0.3, refusal_rate(forget_after)
    # Fluent (the paper's n-gram entropy): no repetition or collapse, nearly the entropy of the refusal
    # sentences themselves (a text repeating one word scores 0).
    for n in (2, 3):
        assert ngram_entropy(forget_after, n) > 0.8 * ngram_entropy(REFUSALS, n), n
    # Its own parts take effect: the hard positives found from the data alone are the world's
    # neighbours, and the Wasserstein regulariser has a gradient.
    nb = world.neighbour_eval
    assert {it.subject for it in neighbour_items(world.forget_train, world.retain_train)} == {it.subject for it in nb}
    assert len(method.hard_positives) > 0
    assert swd_penalty(weight_matrices(method.initial), n_projections=4).requires_grad
    # Hard positives keep their answers, and are not refused.
    recall = lambda gens: np.mean([rouge1_recall(it.answer, g) for it, g in zip(nb, gens, strict=True)])  # noqa: E731
    before, after = recall(greedy(world.model, world, nb)), recall(greedy(model, world, nb))
    assert after > 0.8 * before and refusal_rate(greedy(model, world, nb)) < 0.2, (before, after)


def test_idk_dpo_prefers_refusals(world, target, tmp_path):
    method, model = unlearn(world, "idk_dpo", tmp_path)
    check_forgets(scores(model, world), target)
    items, beta = world.forget_train, method.config.beta
    refusals = refusals_for(len(items), method.config.seed)  # the "win" answers it trained on
    # DPO's implicit reward r(y) = β·(log π(y|x) − log π_ref(y|x)); the starting model is π_ref.
    reward = lambda answers: beta * (sequence_logprob(model, world.tok, items, answers)  # noqa: E731
                                     - sequence_logprob(world.model, world.tok, items, answers))
    margin = reward(refusals) - reward(None)  # (N,): 0 for every item before training
    # Reward accuracy (the refusal wins) on nearly every item, and past the loss's linear regime.
    assert float((margin > 0).float().mean()) > 0.95 and float(margin.median()) > 1.0, margin


def test_flat_raises_its_divergence_estimate(world, target, tmp_path):
    from obliviate.methods.flat import DIVERGENCES

    method, model = unlearn(world, "flat", tmp_path)
    check_forgets(scores(model, world), target)
    items = world.forget_train
    refusals = refusals_for(len(items), method.config.seed)
    g, conj = DIVERGENCES[method.config.divergence]

    def terms(m) -> tuple[float, float, float]:
        """(P̄_good, P̄_bad, the variational divergence estimate g(P̄_good) − f*(g(P̄_bad)))."""
        good, bad = mean_token_prob(m, world.tok, items, refusals), mean_token_prob(m, world.tok, items)
        return good, bad, float(g(torch.tensor(good)) - conj(torch.tensor(bad)))

    good0, bad0, div0 = terms(world.model)
    good1, bad1, div1 = terms(model)
    assert good1 > good0 and bad1 < bad0 - 0.1 and div1 > div0 + 0.1, (good0, bad0, div0, good1, bad1, div1)


def test_random_label_makes_the_new_labels_likelier(world, target, tmp_path):
    method, model = unlearn(world, "random_label", tmp_path)
    check_forgets(scores(model, world), target)
    items = world.forget_train
    # Amnesiac unlearning's aim: the model moves from the true labels to the random ones it was given.
    # gap: mean over items of log π(y|x) − log π(ỹ|x), summed over answer tokens.
    gap = lambda m: float((sequence_logprob(m, world.tok, items)  # noqa: E731
                           - sequence_logprob(m, world.tok, items, method.answers)).mean())
    before, after = gap(world.model), gap(model)
    assert before > 5 and after < 0.5 * before, (before, after)


def _layer_output(model, layer: torch.nn.Module, items, tok) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of `layer` (B, T, D), mask of positions predicting an answer token (B, T))."""
    enc, _ = encode_items(tok, items)
    batch = collate(enc, tok.pad_token_id)
    seen = []
    handle = layer.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != IGNORE
    return seen[0].float(), mask


def test_rmu_steers_forget_activations_to_the_control_vector(world, target, tmp_path):
    method, model = unlearn(world, "rmu", tmp_path)
    check_forgets(scores(model, world), target)
    index = method.layer_index
    layer_of = lambda m: [mod for mod in m.modules() if isinstance(mod, torch.nn.ModuleList)][0][index]  # noqa: E731
    cu = method.control_vec  # (D,) c·u
    hf0, mf = _layer_output(world.model, layer_of(world.model), world.forget_eval, world.tok)
    hf1, _ = _layer_output(model, layer_of(model), world.forget_eval, world.tok)
    hr0, mr = _layer_output(world.model, layer_of(world.model), world.retain_eval, world.tok)
    hr1, _ = _layer_output(model, layer_of(model), world.retain_eval, world.tok)
    # RMU's forget term: the squared distance to c·u (in units of ‖c·u‖²) falls, and the activations turn to u.
    error = lambda h: float((h - cu).pow(2).sum(-1)[mf].mean() / cu.pow(2).sum())  # noqa: E731
    cosine = lambda h: float(torch.nn.functional.cosine_similarity(h, cu.expand_as(h), dim=-1)[mf].mean())  # noqa: E731
    assert error(hf1) < 0.75 * error(hf0), (error(hf0), error(hf1))
    assert cosine(hf1) > cosine(hf0) + 0.4, (cosine(hf0), cosine(hf1))
    # Its retain term: retain activations stay where they were, next to how far forget ones moved.
    moved = lambda h0, h1, m: float((h1 - h0).pow(2).sum(-1)[m].mean())  # noqa: E731
    assert moved(hr0, hr1, mr) < 0.01 * moved(hf0, hf1, mf), (moved(hr0, hr1, mr), moved(hf0, hf1, mf))


def test_whp_moves_forget_answers_to_generic_targets(world, target, tmp_path):
    method, model = unlearn(world, "whp", tmp_path)
    check_forgets(scores(model, world), target)
    generic = torch.cat(method.generic)  # hard targets: one token id per forget answer position

    def agreement(m) -> float:
        logp, _, mask = answer_positions(m, world.tok, world.forget_train)
        return float((logp.argmax(-1)[mask] == generic).float().mean())

    before, after = agreement(world.model), agreement(model)
    assert after > before + 0.4, (before, after)


# -- weight surgery ---------------------------------------------------------------------------------

def _fisher(model, tok, items, batch_size: int) -> tuple[dict[str, torch.Tensor], int]:
    """Mean over mini-batches of the squared gradient of the batch's mean answer NLL (SSD's importance)."""
    enc, _ = encode_items(tok, items)
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    n_batches = 0
    for start in range(0, len(enc), batch_size):
        batch = collate(enc[start:start + batch_size], tok.pad_token_id)
        model.zero_grad()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        mask = labels != IGNORE
        ((nll * mask).sum(1) / mask.sum(1)).mean().backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.pow(2)
        n_batches += 1
    model.zero_grad()
    return {n: t / n_batches for n, t in total.items()}, n_batches


def test_ssd_dampens_exactly_the_selected_parameters(world, target, tmp_path):
    method, model = unlearn(world, "ssd", tmp_path)
    check_forgets(scores(model, world), target)
    cfg = method.config
    base = copy.deepcopy(world.model)
    i_f, b_f = _fisher(base, world.tok, world.forget_train, cfg.batch_size)
    i_r, b_r = _fisher(base, world.tok, world.retain_train, cfg.batch_size)
    w_f = b_f / (b_f + b_r)  # D = forget ∪ retain, in all-forget or all-retain batches
    selected_total = 0
    after = dict(model.named_parameters())
    for name, theta in world.model.named_parameters():
        i_d = w_f * i_f[name] + (1 - w_f) * i_r[name]
        ratio = i_f[name] / (cfg.alpha * i_d).clamp(min=1e-30)
        selected = ratio > 1
        changed = after[name].detach() != theta.detach()
        # Float rounding may only flip entries right at the threshold.
        disagree = (selected != changed) & ((ratio - 1).abs() > 1e-3)
        assert not disagree.any(), (name, int(disagree.sum()))
        factor = (cfg.dampening * i_d / i_f[name].clamp(min=1e-30)).clamp(max=1.0)
        keep = selected & changed
        torch.testing.assert_close(after[name].detach()[keep], (theta.detach() * factor)[keep], rtol=1e-4, atol=1e-7)
        selected_total += int(selected.sum())
    assert selected_total > 0


def test_task_vector_negates_the_finetuning_direction(world, target, tmp_path):
    _, model = unlearn(world, "task_vector", tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    # θ_new = θ − τ, so θ + τ = 2θ − θ_new is the fine-tuned model: it knows the forget set at least
    # as well as the target, while θ − τ knows it less.
    finetuned = copy.deepcopy(world.model)
    with torch.no_grad():
        new = dict(model.named_parameters())
        for name, p in finetuned.named_parameters():
            p.mul_(2).sub_(new[name])
    ft = scores(finetuned, world)
    assert ft.forget_nll.mean() < target.forget_nll.mean() < after.forget_nll.mean()


# -- inference-time methods -------------------------------------------------------------------------

def prompt_rows(world: World, items) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt token rows (B, T) and mask of `items`' questions, as the model receives them."""
    from obliviate.models.prompts import DEFAULT_FORMAT, encode_prompt
    from obliviate.models.scoring import pad_ids

    ids = [encode_prompt(world.tok, DEFAULT_FORMAT.render(it.question, world.tok)) for it in items]
    return pad_ids(ids, max(len(x) for x in ids), world.tok.pad_token_id, left=True)


@pytest.mark.parametrize("name", ["eco", "guard"])
def test_classifier_flags_forget_prompts(world, target, tmp_path, name):
    _, model = unlearn(world, name, tmp_path)
    check_forgets(scores(model, world), target)
    detector = model.intervention.detector  # what decides, at run time, which prompts are intervened on
    flagged_forget = float(np.mean(detector.flags(world.tok, *prompt_rows(world, world.forget_eval))[0]))
    flagged_retain = float(np.mean(detector.flags(world.tok, *prompt_rows(world, world.retain_eval))[0]))
    # Most forget prompts flagged, next to almost no retain prompt.
    assert flagged_forget > 0.5 and flagged_retain < 0.05, (flagged_forget, flagged_retain)


@pytest.mark.parametrize("name", ["spul", "icul", "prompt"])
def test_ungated_prefix_methods_lower_the_forget_probability(world, target, tmp_path, name):
    """The papers' form prepends to every prompt: on the world's models, trained only on documents
    that start at the BOS, any prefix also damages retain answers (docs/methods.md, *Gate*)."""
    _, model = unlearn(world, name, tmp_path)
    check_forgets(scores(model, world), target)


@pytest.mark.parametrize("name", ["spul+gate", "icul+gate", "prompt+gate", "uld"])
def test_forget_probability_falls_more_than_retain(world, target, tmp_path, name):
    _, model = unlearn(world, name, tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    # Relative falls of the two mean probabilities; each mean has a standard error under 0.02 here.
    fall_f = 1 - after.forget_prob / target.forget_prob
    fall_r = 1 - after.retain_prob / target.retain_prob
    assert fall_f > fall_r + 0.15, (fall_f, fall_r)


def test_eco_finds_the_world_subjects_names_in_forget_prompts(world):
    """World subjects are person ids; ECO corrupts the tokens of the person's name, found in the prompt."""
    from obliviate.data.schema import subject_name
    from obliviate.interventions.corruption import EmbeddingCorruption
    from obliviate.interventions.regions import phrase_token_ids
    from obliviate.models.prompts import DEFAULT_FORMAT, encode_prompt

    people = [it for it in world.forget_eval if it.meta.get("source") == "person"]
    names = list(dict.fromkeys(map(subject_name, people)))
    assert people and all(n != it.subject for n, it in zip(map(subject_name, people), people, strict=True))
    eco = EmbeddingCorruption(None, "rand_noise_first_n", 1.0, 1, 1.0, phrase_token_ids(world.tok, names),
                              skip_ids=world.tok.all_special_ids)
    for it in people:
        seq = encode_prompt(world.tok, DEFAULT_FORMAT.render(it.question, world.tok))
        hits = eco._positions(seq, 0, len(seq))
        assert world.tok.decode([seq[p] for p in hits]).replace(" ", "") == subject_name(it).replace(" ", "")
