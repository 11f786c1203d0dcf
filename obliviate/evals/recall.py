"""RWKU-style knowledge metrics on generations, for pretrained models that answer in their own words.

TOFU's probability-based numbers do not fit a pretrained instruct model: on SmolLM2-135M-Instruct the
exact short answer plus its end-of-turn token has probability 0.003-0.009, so TOFU's model utility of the
untouched model is 0.008. RWKU (Jin et al. 2024, "Real-World Knowledge Unlearning") reports instead what
the model *says*: for each question, whether the greedy answer states the fact.

- `answer_recall`: the share of questions whose answer's first sentence states one of the item's accepted
  answers (`meta.aliases`, else `meta.short_answer`, else the answer), normalised for case, punctuation
  and number words ("Six" matches "6"; `obliviate.data.tasks.answer_matches`);
- `rouge`: ROUGE-L recall of the answer against the reference sentence (TOFU's ROUGE);
- sets: forget (the targets), neighbours (locality: related knowledge that must stay), general (utility);
  `paraphrase` asks the held-out rewording of each forget question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from obliviate.data.schema import QAItem


def recall_scores(model, tokenizer, sets: Mapping[str, Sequence[QAItem]], max_new_tokens: int = 48,
                  batch_size: int = 32) -> dict[str, dict[str, Any]]:
    """Per set: answer recall and ROUGE-L recall on greedy answers, with the answers themselves."""
    from obliviate.data.tasks import answer_matches, item_aliases
    from obliviate.metrics import rouge_l
    from obliviate.models.generation import generate_answers

    out: dict[str, dict[str, Any]] = {}
    for name, items in sets.items():
        answers = generate_answers(model, tokenizer, [it.question for it in items], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
        hits = np.array([answer_matches(a, item_aliases(it)) for a, it in zip(answers, items, strict=True)])
        rouge = rouge_l([it.answer for it in items], answers)["recall"]
        out[name] = {"answer_recall": float(hits.mean()), "rouge": float(np.mean(rouge)), "n": len(items),
                     "answers": answers, "hits": hits.tolist()}
    return out


def paraphrase_set(items: Sequence[QAItem]) -> list[QAItem]:
    """The items asked in their first held-out rewording (items without one are left out)."""
    return [QAItem(it.paraphrased_questions[0], it.answer, meta=it.meta, subject=it.subject)
            for it in items if it.paraphrased_questions]
