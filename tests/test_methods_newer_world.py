"""open-unlearning's newer losses on the `tiny` world: each forgets, and its own success measure moves.

The set-up, the fixtures and check (a) (the forget probability falls below 0.75 × the target's) are
those of tests/test_methods_world.py. Check (b), the method's own measure, target against after:
    - UNDIAL: the cross-entropy from the adjusted teacher to the model (its distillation loss) falls,
      and the forget NLL rises by more than the retain NLL;
    - WGA, SatImp: the forget NLL rises by more than the retain NLL, and the share of forget answer
      tokens still remembered (p > 0.5, the tokens their weights single out) at least halves;
"""

from __future__ import annotations

import pytest

from tests.test_methods_world import answer_positions, check_forgets, scores, target, unlearn, world  # noqa: F401

pytestmark = pytest.mark.slow

# The methods this module covers (tests/test_methods_world.py checks every registered method is covered).
COVERED = {"undial", "wga", "satimp"}


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
