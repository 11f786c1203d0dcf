"""open-unlearning's newer losses on the `tiny` world: each forgets, and its own success measure moves.

The set-up, the fixtures and check (a) (the forget probability falls below 0.75 × the target's) are
those of tests/test_methods_world.py. Check (b), the method's own measure, target against after:
    - UNDIAL: the cross-entropy from the adjusted teacher to the model (its distillation loss) falls,
      and the forget NLL rises by more than the retain NLL;
    - WGA, SatImp: the forget NLL rises by more than the retain NLL, and the share of forget answer
      tokens still remembered (p > 0.5, the tokens their weights single out) at least halves;
    - CE-U: the true token's mass goes to the other tokens in proportion, so where the target predicted
      the answer token, the model now predicts the target's runner-up, or one of its next choices, far
      more often than an ascent does (runner-up 0.21, top five 0.45; GradDiff 0.06 and 0.14);
    - PDU: the logit margin (max − mean)² on forget answers falls, while the retain cross-entropy stays
      near its bound ε (the constraint), with the dual variable having risen to hold it there;
    - AltPO: reward accuracy (every alternate has a higher implicit reward than the true answer), and
      its point, answers that stay plausible: most greedy answers to forget questions are another
      person's value of the same attribute, not the true one and not nonsense;
    - WAGLE: the paper's comparison, the attribution mask against a random mask of the same size under
      the same base method (GradDiff, 20% of the weights): the attribution mask forgets far more.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_methods_world import answer_positions, check_forgets, scores, target, unlearn, world  # noqa: F401

pytestmark = pytest.mark.slow

# The methods this module covers (tests/test_methods_world.py checks every registered method is covered).
COVERED = {"undial", "wga", "satimp", "ceu", "pdu", "altpo", "wagle"}


def _rise(after, before) -> tuple[float, float]:
    """(rise of the mean forget NLL, rise of the mean retain NLL)."""
    return (float(after.forget_nll.mean() - before.forget_nll.mean()),
            float(after.retain_nll.mean() - before.retain_nll.mean()))


def test_undial_moves_to_the_adjusted_teacher(world, target, tmp_path):  # noqa: F811
    from obliviate.methods.undial import adjusted_targets

    method, model = unlearn(world, "undial", tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    rise_f, rise_r = _rise(after, target)
    assert rise_f > 0.3 and rise_f > 2 * rise_r, (rise_f, rise_r)
    items, beta = world.forget_eval, method.config.beta
    ref_logp, labels, mask = answer_positions(world.model, world.tok, items)
    soft = adjusted_targets(ref_logp[mask], labels[mask], beta)  # log-softmax shifts cancel in the softmax

    def distil(m) -> float:
        logp, _, _ = answer_positions(m, world.tok, items)
        return float(-(soft * logp[mask]).sum(-1).mean())

    before_d, after_d = distil(world.model), distil(model)
    assert after_d < 0.8 * before_d, (before_d, after_d)


@pytest.mark.parametrize("name", ["wga", "satimp"])
def test_weighted_ascent_pushes_the_remembered_tokens(world, target, tmp_path, name):  # noqa: F811
    _, model = unlearn(world, name, tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    rise_f, rise_r = _rise(after, target)
    assert rise_f > 0.3 and rise_f > 2 * rise_r, (rise_f, rise_r)

    def remembered(m) -> float:
        logp, labels, mask = answer_positions(m, world.tok, world.forget_eval)
        p = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].exp()
        return float((p > 0.5).float().mean())

    before, after_share = remembered(world.model), remembered(model)
    assert before > 0.9 and after_share < 0.5 * before, (before, after_share)


def test_ceu_predicts_the_runner_up(world, target, tmp_path):  # noqa: F811
    method, model = unlearn(world, "ceu", tmp_path)
    check_forgets(scores(model, world), target)
    logp0, labels, mask = answer_positions(world.model, world.tok, world.forget_eval)
    logp1, _, _ = answer_positions(model, world.tok, world.forget_eval)
    # scored positions: answer tokens after the first n of each answer, where the target predicts the answer
    scored = mask & (mask.long().cumsum(-1) > method.config.ignore_first_n) & (logp0.argmax(-1) == labels)
    others = logp0.scatter(-1, labels.clamp(min=0).unsqueeze(-1), float("-inf")).topk(5, -1).indices  # (B, T, 5)
    now = logp1.argmax(-1).unsqueeze(-1)  # (B, T, 1)
    runner_up = float((now[..., 0] == others[..., 0])[scored].float().mean())
    top5 = float((now == others).any(-1)[scored].float().mean())
    assert int(scored.sum()) > 50 and runner_up > 0.15 and top5 > 0.35, (int(scored.sum()), runner_up, top5)


def test_pdu_flattens_forget_logits_within_the_retain_bound(world, target, tmp_path):  # noqa: F811
    from obliviate.methods.pdu import logit_margin
    from obliviate.train.data import collate, encode_items

    method, model = unlearn(world, "pdu", tmp_path)
    after = scores(model, world)
    check_forgets(after, target)
    batch = collate(encode_items(world.tok, world.forget_eval)[0], world.tok.pad_token_id)

    def margin(m) -> float:
        with torch.no_grad():
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return float(logit_margin(logits, batch["labels"]))

    before_m, after_m = margin(world.model), margin(model)
    assert after_m < 0.2 * before_m, (before_m, after_m)
    eps = method.config.retain_eps
    assert float(after.retain_nll.mean()) < 2 * eps and method.dual > method.config.alpha, (
        float(after.retain_nll.mean()), method.dual)


def test_altpo_prefers_alternates_and_answers_plausibly(world, target, tmp_path):  # noqa: F811
    from tests.test_methods_world import greedy, sequence_logprob

    method, model = unlearn(world, "altpo", tmp_path)
    check_forgets(scores(model, world), target)
    items = world.forget_train
    ratio = lambda answers: (sequence_logprob(model, world.tok, items, answers)  # noqa: E731
                             - sequence_logprob(world.model, world.tok, items, answers))
    lose = ratio(None)
    for answers in method.alternates.answers:
        assert float((ratio(answers) > lose).float().mean()) > 0.95
    pool: dict[str, set[str]] = {}
    for it in world.retain_train:
        pool.setdefault(it.meta.get("attribute"), set()).add(it.answer)
    gens = greedy(model, world, world.forget_eval)
    plausible = [g.strip() != it.answer and g.strip() in pool.get(it.meta.get("attribute"), set())
                 for it, g in zip(world.forget_eval, gens, strict=True)]
    assert sum(plausible) / len(plausible) > 0.6, gens


def test_wagle_mask_forgets_more_than_a_random_mask(world, target, tmp_path):  # noqa: F811
    import copy

    from obliviate.config import build_config
    from obliviate.methods.wagle import WAGLE, top_mask

    def run(random_mask: bool):
        method = WAGLE(build_config(WAGLE.Config, {"base": "graddiff", "mask_ratio": 0.2}))
        if random_mask:
            attributed = method.compute_mask
            gen = torch.Generator().manual_seed(0)
            method.compute_mask = lambda *a: top_mask(  # same size, entries drawn at random
                {n: torch.rand(m.shape, generator=gen) for n, m in attributed(*a).items()}, 0.2)
        model = copy.deepcopy(world.model)
        method.unlearn(model, world.tok, world.forget_train, world.retain_train, tmp_path / str(random_mask),
                       progress=False)
        return scores(model.eval(), world)

    attributed, randomised = run(False), run(True)
    check_forgets(attributed, target)
    assert attributed.forget_prob < randomised.forget_prob - 0.3, (attributed.forget_prob, randomised.forget_prob)
