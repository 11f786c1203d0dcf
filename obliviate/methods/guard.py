"""GUARD: generation-time unlearning by detection and restricted decoding.

Deng et al. 2025, *GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection*.
No public code is known; this follows the paper's description:

1. **detection**: the prompt classifier shared with ECO (`interventions/classifier.py`) flags
   prompts about the forget set, with the conformal bound α on the false-negative rate (its held-out
   error rates are in the run's `classifier.json`);
2. **forbidden terms**, extracted from the forget set: its subjects, the capitalised multi-word
   names of its answers, and the words (≥ `min_term_chars` characters, or numbers) of its answers
   and paraphrased answers that appear nowhere in the retain set's questions and answers and are
   not stop words; plus any `terms` given;
3. **restricted decoding** after flagged prompts (`interventions/restricted.py`): token matching
   bans any next token that starts, continues or completes a forbidden term; semantic matching
   bans the vocabulary tokens whose input embedding has cosine similarity ≥
   `semantic_threshold` with a term's (the mean of its tokens' embeddings).

In scoring, banned tokens are renormalised away with a floor probability `floor_prob` (see
`RestrictedDecoding`); in generation they get probability 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from pydantic import Field

from obliviate.data.schema import subject_name
from obliviate.errors import ConfigError
from obliviate.interventions.detector import fit_detector
from obliviate.interventions.regions import phrase_token_ids
from obliviate.interventions.restricted import RestrictedDecoding
from obliviate.methods.eco import DetectorConfig
from obliviate.methods.inference import InterventionMethod, item_kind

STOP_WORDS = frozenset(
    "the a an and or but nor of in on at to for with by from as into about over after before under is was were be "
    "been being are am it its he she they them his her hers their theirs this that these those which who whom whose "
    "what when where why how not no yes i you we our ours your yours my me him us one also there here than then "
    "very has have had do does did can could will would shall should may might must".split()
)
_WORD = re.compile(r"[^\W_][\w'\-]*")
_NAME = re.compile(r"[A-Z][\w'\-]*(?:\s+[A-Z][\w'\-]*)+")


def forbidden_terms(forget: Sequence, retain: Sequence, use_subjects: bool = True, min_chars: int = 3,
                    extra: Sequence[str] = ()) -> list[str]:
    """The forbidden terms of a forget set (see the module docstring), sorted."""
    known = {w.lower() for it in retain for text in (it.question, it.answer) for w in _WORD.findall(text)}
    terms = {t for t in extra if t.strip()}
    if use_subjects:
        terms |= set(filter(None, map(subject_name, forget)))
    for it in forget:
        for text in filter(None, (it.answer, it.paraphrased_answer)):
            terms |= {name for name in _NAME.findall(text)
                      if any(w.lower() not in known for w in name.split())}
            for w in _WORD.findall(text):
                low = w.lower()
                if (len(w) >= min_chars or w.isdigit()) and low not in STOP_WORDS and low not in known:
                    terms.add(w)
    return sorted(terms)


@torch.no_grad()
def semantic_neighbours(model, term_ids: Sequence[Sequence[int]], threshold: float, chunk: int = 8192) -> list[int]:
    """Vocabulary ids whose input embedding has cosine ≥ `threshold` with some term's mean embedding."""
    if not term_ids or threshold > 1:
        return []
    emb = model.get_input_embeddings().weight.detach().float()  # (V, H)
    terms = torch.stack([emb[list(t)].mean(0) for t in term_ids])  # (n, H)
    terms = torch.nn.functional.normalize(terms, dim=-1)
    out = []
    for s in range(0, emb.shape[0], chunk):
        sims = torch.nn.functional.normalize(emb[s : s + chunk], dim=-1) @ terms.T  # (c, n)
        out += (torch.nonzero(sims.max(-1).values >= threshold).squeeze(-1) + s).tolist()
    return out


class GUARDConfig(DetectorConfig):
    terms: list[str] = Field([], description="extra forbidden terms, added to those extracted from the forget set")
    use_subjects: bool = Field(True, description="forbid the forget items' subjects")
    min_term_chars: int = Field(3, ge=1, description="shortest answer word taken as a term (numbers always are)")
    semantic_threshold: float = Field(0.9, gt=0, description="cosine for semantic matching (> 1 disables it)")
    floor_prob: float = Field(1e-6, gt=0, lt=1, description="scoring: probability left to each banned token")


class GUARD(InterventionMethod):
    name = "guard"
    paper = "Deng et al. 2025, GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection"
    summary = "flag forget prompts; ban the tokens of forbidden terms (and near neighbours) when decoding"
    Config = GUARDConfig
    uses_retain = True

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        cfg = self.config
        item_kind(forget, self.name)
        item_kind(retain, self.name)
        detector, report = fit_detector(tokenizer, forget, retain, **cfg.detector_kwargs(), method=self.name)
        terms = forbidden_terms(forget, retain, cfg.use_subjects, cfg.min_term_chars, cfg.terms)
        if not terms:
            raise ConfigError("guard: no forbidden terms found; give some with terms=[...]")
        term_ids = phrase_token_ids(tokenizer, terms)
        semantic = semantic_neighbours(model, term_ids, cfg.semantic_threshold)
        rule = RestrictedDecoding(detector.classifier, terms, term_ids, semantic, list(tokenizer.all_special_ids),
                                  list(detector.reader.marker), detector.reader.fmt, cfg.floor_prob)
        return rule, {"classifier": report, "terms": len(terms),
                      "banned_first_tokens": len(rule.static_ban), "semantic_bans": len(rule.semantic_ids)}
