"""The live guard: GUARD or ECO over the union of every enforced forget request, extended without a restart.

GUARD (Deng et al. 2025) and ECO (Liu et al. 2024) gate their intervention on a prompt classifier
(`interventions/classifier.py`): a logistic head on prompt embeddings, its threshold τ calibrated
by split-conformal prediction on held-out forget groups. A forget request arrives with a handful
of items, too few groups to calibrate (k = ⌊α(n + 1)⌋ = 0 below 1/α − 1 groups), and refitting
on every request would make the time to enforce grow with the ledger. The live guard keeps the
same two parts and makes both incremental:

- **detection** (`LiveClassifier`): a prompt is flagged when
  (a) it names a protected term, i.e. a request's subject or a capitalised multi-word name of its
      answers (case-insensitive, on word boundaries), or
  (b) its embedding (the hashing embedder's character 2–4-grams, or MiniLM) has cosine similarity
      ≥ `similarity` with some reference prompt: the questions of the enforced items and the texts
      of the enforced passages;
  adding a request appends its embeddings to the reference matrix (one encode of its few texts);
- **the intervention**, rebuilt from the union of the enforced items in milliseconds:
  - GUARD: `RestrictedDecoding` with the forbidden terms of `methods/guard.py` (subjects, names and
    answer words absent from the retain set) plus, with `answers_as_terms`, each QA answer whole, and
    the semantic neighbours of each term (cached per term);
  - ECO: `EmbeddingCorruption` of the subjects' tokens at a fixed σ = `strength`.

Differs from the reference (the offline `guard`/`eco` methods): no logistic head and no conformal
bound, because a single request has too few items to calibrate one and the guard must be live at
once; no zeroth-order tuning of ECO's σ, for the same reason; each QA answer is forbidden whole even
where its words occur in the retain set (a world's birth city is also someone else's), which the
gate makes harmless to prompts about other subjects.

Settings (`guard.settings` in the service config): `embedder` ("hashing"), `similarity` (0.75),
`use_subjects` (true), `answers_as_terms` (true), `min_term_chars` (3), `semantic_threshold`
(0.9; > 1 disables), `terms` ([]), and for ECO `corruption`, `strength` (1.0), `dims` (1), `seed` (0).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obliviate.data.schema import QAItem
from obliviate.errors import ConfigError
from obliviate.interventions.classifier import HASHING, MINILM, get_embedder
from obliviate.interventions.detector import Detector
from obliviate.interventions.regions import PromptReader, classifier_text, phrase_token_ids
from obliviate.models.prompts import format_of

DEFAULTS: dict[str, Any] = {"embedder": HASHING, "similarity": 0.75, "use_subjects": True, "answers_as_terms": True,
                            "min_term_chars": 3, "semantic_threshold": 0.9, "terms": [], "corruption":
                            "rand_noise_first_n", "strength": 1.0, "dims": 1, "seed": 0}
_NAME = re.compile(r"[A-Z][\w'\-]*(?:\s+[A-Z][\w'\-]*)+")


def guard_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` over the defaults; an unknown key or a bad embedder is a one-line ConfigError."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"guard.settings: unknown key(s) {unknown} (known: {', '.join(sorted(DEFAULTS))})")
    out = {**DEFAULTS, **settings}
    if out["embedder"] not in (HASHING, MINILM):
        raise ConfigError(f"guard.settings.embedder: '{out['embedder']}' (choose {HASHING} or {MINILM})")
    return out


@dataclass
class LiveClassifier:
    """Flags prompts that name a protected term or resemble a reference prompt (module docstring).

    Duck-types `PromptClassifier.flags`, so `Detector`, GUARD's and ECO's interventions use it as is.
    """

    embedder: str = HASHING
    similarity: float = 0.75
    names: set[str] = field(default_factory=set)
    refs: np.ndarray | None = None  # (n, d), unit rows
    _pattern: re.Pattern | None = None
    _memo: dict[str, float] = field(default_factory=dict)  # text -> score, for the reference set as it is now

    def add(self, names: Sequence[str], prompts: Sequence[str]) -> None:
        """Protect `names` and add `prompts` to the reference set."""
        self.names |= {n.strip().lower() for n in names if n.strip()}
        self._pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(self.names, key=len, reverse=True)))
                                   + r")\b", re.IGNORECASE) if self.names else None
        prompts = [p for p in prompts if p.strip()]
        if prompts:
            x = self._encode(prompts)
            self._memo = {}
            self.refs = x if self.refs is None else np.vstack([self.refs, x])

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        x = get_embedder(self.embedder).encode(list(texts)).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Highest cosine similarity of each text with a reference prompt (0 without any)."""
        memo, refs = self._memo, self.refs  # the memo first: a newer memo never holds older scores
        if refs is None or not len(texts):
            return np.zeros(len(texts))
        todo = list(dict.fromkeys(t for t in texts if t not in memo))
        if todo:
            if len(memo) > 10_000:
                memo.clear()
            memo.update(zip(todo, (self._encode(todo) @ refs.T).max(-1).tolist(), strict=True))
        return np.array([memo[t] for t in texts])

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        named = np.array([bool(self._pattern and self._pattern.search(t)) for t in texts], dtype=bool)
        return named | (self.scores(texts) >= self.similarity)


def as_qa(item: Any, subject: str) -> QAItem:
    """A ledger `ForgetItem` (a QA pair or a text) as a QAItem about `subject` (a text is its own answer)."""
    if getattr(item, "text", None):
        return QAItem(question="", answer=item.text, subject=subject)
    return QAItem(question=item.question or "", answer=item.answer or "", subject=subject)


class Enforcement:
    """The guard of every request the ledger says is enforced; `add` takes effect for the next generation.

    `intervention` is None while nothing is enforced. Readers take `current()` once per generation;
    writers build a new intervention and swap the reference under a lock, so a generation never sees
    a half-built one.
    """

    def __init__(self, model, tokenizer, method: str = "guard", settings: dict[str, Any] | None = None,
                 retain: Sequence[QAItem] = ()) -> None:
        if method not in ("guard", "eco"):
            raise ConfigError(f"guard.method: '{method}' (choose guard or eco)")
        self.model, self.tokenizer, self.method = model, tokenizer, method
        self.settings = guard_settings(settings or {})
        self.retain = list(retain)
        self.fmt = format_of(tokenizer)
        self.reader = PromptReader.for_items(tokenizer, self.fmt, [q for it in self.retain[:50] for q in [it.question]])
        self.requests: dict[str, tuple[str, list[QAItem]]] = {}
        self.classifier = LiveClassifier(self.settings["embedder"], float(self.settings["similarity"]))
        self._semantic: dict[tuple[int, ...], list[int]] = {}
        self._lock = threading.Lock()
        self._intervention = None

    def warm(self) -> None:
        """Load the embedder (and its libraries) now, so the first request's time to enforce excludes it."""
        self.classifier.scores(["warm up"])
        self.classifier.add([], [])
        get_embedder(self.settings["embedder"]).encode(["warm up"])
        import obliviate.interventions.restricted  # noqa: F401
        import obliviate.methods.guard  # noqa: F401

    # -- reading -----------------------------------------------------------------------------

    def current(self):
        """The intervention to generate with now (None: nothing enforced)."""
        return self._intervention

    def request_ids(self) -> list[str]:
        return list(self.requests)

    # -- writing -----------------------------------------------------------------------------

    def add(self, request_id: str, subject: str, items: Sequence[Any]) -> None:
        """Enforce a request's items (ledger `ForgetItem`s) from the next generation on."""
        qa = [as_qa(it, subject) for it in items]
        with self._lock:
            if request_id in self.requests:
                return
            self.requests[request_id] = (subject, qa)
            self.classifier.add(self._names(subject, qa), self._prompts(qa))
            self._intervention = self._build(self.requests, self.classifier)

    def drop(self, request_ids: Sequence[str]) -> None:
        """Stop enforcing `request_ids`: the guard of the others is rebuilt and swapped in whole, under the lock,
        so no generation runs with a request missing that is still enforced and no concurrent `add` is lost."""
        with self._lock:
            gone = set(request_ids) & set(self.requests)
            if not gone:
                return
            requests = {rid: v for rid, v in self.requests.items() if rid not in gone}
            classifier = LiveClassifier(self.settings["embedder"], float(self.settings["similarity"]))
            for subject, qa in requests.values():
                classifier.add(self._names(subject, qa), self._prompts(qa))
            intervention = self._build(requests, classifier) if requests else None
            self.requests, self.classifier, self._intervention = requests, classifier, intervention

    def sync(self, enforced: Sequence[tuple[str, str, Sequence[Any]]]) -> None:
        """Make the enforced set exactly `enforced` ((id, subject, items) rows)."""
        wanted = {rid for rid, _, _ in enforced}
        self.drop([rid for rid in self.requests if rid not in wanted])
        for rid, subject, items in enforced:
            self.add(rid, subject, items)

    # -- building ----------------------------------------------------------------------------

    def _names(self, subject: str, qa: list[QAItem]) -> list[str]:
        names = [subject] if self.settings["use_subjects"] and subject else []
        return names + [n for it in qa if it.question for n in _NAME.findall(it.answer)]

    def _prompts(self, qa: list[QAItem]) -> list[str]:
        return [classifier_text(self.tokenizer, it.question, self.fmt) if it.question else it.answer for it in qa]

    def _terms(self, requests: dict[str, tuple[str, list[QAItem]]]) -> list[str]:
        from obliviate.methods.guard import forbidden_terms

        s = self.settings
        items = [it for _, qa in requests.values() for it in qa]
        terms = set(forbidden_terms(items, self.retain, s["use_subjects"], s["min_term_chars"], s["terms"]))
        if s["answers_as_terms"]:
            terms |= {it.answer.strip() for it in items if it.question and it.answer.strip()}
        return sorted(terms)

    def _semantic_ids(self, term_ids: list[list[int]]) -> list[int]:
        from obliviate.methods.guard import semantic_neighbours

        out: set[int] = set()
        for t in term_ids:
            key = tuple(t)
            if key not in self._semantic:
                self._semantic[key] = semantic_neighbours(self.model, [t], float(self.settings["semantic_threshold"]))
            out |= set(self._semantic[key])
        return sorted(out)

    def _build(self, requests: dict[str, tuple[str, list[QAItem]]], classifier: LiveClassifier):
        """The intervention over `requests`, gated by `classifier`."""
        detector = Detector(classifier, self.reader)
        if self.method == "eco":
            from obliviate.interventions.corruption import EmbeddingCorruption

            subjects = sorted({subject for subject, _ in requests.values() if subject})
            emb = self.model.get_input_embeddings().weight
            scale = float(emb.detach().float().norm(dim=-1).mean())
            s = self.settings
            return EmbeddingCorruption(detector, s["corruption"], float(s["strength"]), int(s["dims"]), scale,
                                       phrase_token_ids(self.tokenizer, subjects), int(s["seed"]),
                                       skip_ids=self.tokenizer.all_special_ids, corrupt_answers=False)
        from obliviate.interventions.restricted import RestrictedDecoding

        terms = self._terms(requests)
        term_ids = phrase_token_ids(self.tokenizer, terms)
        return RestrictedDecoding(detector.classifier, terms, term_ids, self._semantic_ids(term_ids),
                                  list(self.tokenizer.all_special_ids), list(self.reader.marker), self.reader.fmt)


def retain_items(config: Any) -> list[QAItem]:
    """The retain side of the config's `durable.retain` as QA items (a text passage is its own answer):
    the words they use are never forbidden terms. `world:SPLIT` needs a `world:PRESET` model."""
    from pathlib import Path

    from obliviate.data.schema import TextPassage

    spec = config.durable.retain
    if spec.startswith("world:"):
        from obliviate.workflow.specs import parse_world_spec
        from obliviate.world import get_world

        ref = parse_world_spec(config.model, spec.partition(":")[2])
        if ref is None:
            raise ConfigError(f"durable.retain: {spec!r} names the world's sets, but model {config.model!r} "
                              "is not world:PRESET")
        items = get_world(ref.preset, ref.seed).retain_set(ref.split)
    elif Path(spec).exists():
        from obliviate.data import load_items

        items = list(load_items(spec, "auto"))
    else:
        from obliviate.workflow.data import parse_data_spec, train_sets

        items = train_sets(parse_data_spec(spec))[1]
    return [QAItem("", it.text) if isinstance(it, TextPassage) else it for it in items
            if isinstance(it, QAItem | TextPassage)]
