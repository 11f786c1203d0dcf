"""A real pretrained model, offline: SmolLM2-135M-Instruct forgets facts about real people.

NPO with LoRA, and GUARD (an inference-time method), each unlearn the `real_facts` forget set (Einstein,
Shakespeare, da Vinci) under the model's ChatML template. On greedy answers, forget ROUGE-L must fall by
at least half and the neighbours' (related people's) ROUGE-L stay within 10% of the base model's.
"""

from __future__ import annotations

import pytest

import obliviate as ob
from obliviate.data.tasks import load_task, task_dir
from obliviate.evals.recall import recall_scores

pytestmark = pytest.mark.slow
RUNS = {
    "npo": dict(method="npo", lora=ob.LoRA(r=8, alpha=16),
                overrides={"lr": 2e-3, "epochs": 5, "batch_size": 4, "grad_accum": 1}),
    "guard": dict(method="guard", lora=None, overrides={"alpha": 0.2}),
}


def _scores(model_spec: str) -> dict:
    model, tok = ob.load_model(model_spec, progress=False)
    from obliviate.models.prompts import format_of, make_format, use_format

    if not format_of(tok).chat:
        use_format(tok, make_format("chat"))
    sets = {"forget": load_task("real_facts", "forget"), "neighbours": load_task("real_facts", "neighbours")}
    return recall_scores(model, tok, sets, max_new_tokens=32)


@pytest.fixture(scope="module")
def base(smollm2_dir):
    return _scores(str(smollm2_dir[0]))


@pytest.mark.parametrize("name", list(RUNS))
def test_unlearning_forgets_the_people_and_keeps_their_neighbours(name, base, smollm2_dir, tmp_path):
    spec = RUNS[name]
    data = task_dir("real_facts")
    run = ob.unlearn(spec["method"], str(smollm2_dir[0]), out=tmp_path / name, forget=data / "forget.jsonl",
                     retain=data / "neighbours.jsonl", prompt="chat", lora=spec["lora"], overrides=spec["overrides"],
                     progress=False)
    assert run.config["prompt_format"]["chat"] and run.config["defaults"] == "paper"
    after = _scores(str(run.path))
    assert base["forget"]["rouge"] > 0.6  # the base model knows the facts
    assert after["forget"]["rouge"] <= 0.5 * base["forget"]["rouge"], (name, after["forget"]["answers"][:3])
    assert after["neighbours"]["rouge"] >= 0.9 * base["neighbours"]["rouge"], (name, after["neighbours"]["answers"])
