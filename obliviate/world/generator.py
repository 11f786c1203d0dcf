"""The built-in world: a deterministic, fully offline TOFU-like set of fictitious people.

`get_world(preset, seed)` builds, from nothing but the seed, a world of invented people, each with
typed attributes (birth city, birth year, profession, parents, first book, award, ...), in the
spirit of TOFU (Maini et al. 2024), plus two general-knowledge sets about fictitious places and
things (mirroring TOFU's real_authors and world_facts).

Every fact (subject, attribute) -> value comes with
- question forms: a few are trained, the others are held out (the paraphrase test). Forms mix a
  natural question per attribute with generic frames ("What is the {noun} of {name}?") rotated
  across attributes, so every frame is trained with some attributes and held out with others;
- the answer (1-3 words), a paraphrased answer ("in the city of Karsten") and perturbed answers
  that put other values of the same attribute into the same paraphrase template;
- a sentence of the subject's biography that states it with the paraphrase wording.

People are split by person into nested forget sets (forget01 within forget05 within forget10: 1, 5
and 10% of the trained people, at least one each), their retain complements, and a holdout of
people no model is ever trained on (membership-inference non-members).

Values are dealt per attribute from vocabularies larger than the population, so nearly every
person has their own value: the attribute prior (the frequency of the commonest value) is about
1/people, and a model that never saw a person cannot guess their facts. It also makes forget and
holdout people look alike to the oracle: neither group's values were ever trained (except the
deliberately shared ones below, which are shared with the same probability in both groups).
Relations give each person neighbours for locality tests: siblings (a shared mother), co-authors
(a shared first book) and a shared birth city (about two people per city).
"""

from __future__ import annotations

import random
from itertools import product
from pathlib import Path

from obliviate.data.schema import QAItem, TextPassage
from obliviate.errors import ConfigError
from obliviate.io import write_json, write_jsonl
from obliviate.world import names
from obliviate.world.config import GENERATOR_VERSION, TrainRecipe, WorldConfig, get_preset
from obliviate.world.facts import (  # noqa: F401  (ATTRIBUTES, Fact, Person: re-exported)
    ATTRIBUTES,
    FRAMES,
    PLACE_ATTRIBUTES,
    THING_ATTRIBUTES,
    AttributeSpec,
    Fact,
    Person,
    _question_forms,
)

FORGET_FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


class World:
    """A generated world. Build it with `get_world(preset, seed)`; everything is derived from the seed."""

    def __init__(self, preset: str = "small", seed: int = 0) -> None:
        spec = get_preset(preset)
        if min(spec.world.n_places, spec.world.pool_size) <= spec.world.n_perturbed:
            raise ConfigError("a world needs more places and values per vocabulary than perturbed answers")
        self.preset: str = preset
        self.seed: int = seed
        self.config: WorldConfig = spec.world
        self.recipe: TrainRecipe = spec.recipe
        self.version: str = GENERATOR_VERSION
        self.attributes: tuple[AttributeSpec, ...] = ATTRIBUTES[: self.config.n_attributes]
        rng = random.Random(f"obliviate-world:{preset}:{seed}")
        self._lexicon = names.Lexicon(rng)
        self._rng = rng
        self._pools = self._make_pools()
        self.people: list[Person] = self._make_people()
        self._by_pid = {p.pid: p for p in self.people}
        self.splits: dict[str, list[str]] = self._make_splits()
        self._make_relations()
        self._facts: dict[str, list[Fact]] = {}
        for person in self.people:
            self._facts[person.pid] = [
                self._fact(person.pid, person.name, i, a, person.attributes[a.key], "person", person.surname)
                for i, a in enumerate(self.attributes)
            ]
        self.places = self._make_entities("place", "world_places", PLACE_ATTRIBUTES, self.config.n_places)
        self.things = self._make_entities("thing", "world_things", THING_ATTRIBUTES, self.config.n_things)

    # -- generation -------------------------------------------------------------------------
    def _make_pools(self) -> dict[str, list[str]]:
        """The value vocabulary of every kind of value.

        Invented vocabularies get more values than there are people, so `_deal` can give every
        person their own value. Only birth cities are shared (about two people per city): they make
        the same-city relation.
        """
        cfg, lex, rng = self.config, self._lexicon, self._rng
        n_total = cfg.n_people + cfg.n_holdout
        n = max(cfg.pool_size, n_total + n_total // 4)
        n_places = max(cfg.pool_size, 2 * cfg.n_places)
        return {
            "birth_city": lex.words(max(cfg.n_perturbed + 1, n_total // 2), (2, 2)),
            "town": lex.words(n, (2, 2)),
            "year": [str(y) for y in range(1900, 2000)],
            "debut_year": [str(y) for y in range(1925, 2025)],
            "profession": list(names.PROFESSIONS),
            "genre": [f"{a} {b}" for a, b in product(names.GENRE_STYLES, names.GENRE_FORMS)],
            "title": [f"The {a} {b}" for a, b in product(names.TITLE_ADJECTIVES, names.TITLE_NOUNS)],
            "award": [f"{w} {rng.choice(names.AWARD_WORDS)}" for w in lex.words(n)],
            "school": [f"{w} {rng.choice(names.SCHOOL_WORDS)}" for w in lex.words(n)],
            "language": [lex.word((1, 2), ending=rng.choice(names.LANGUAGE_ENDINGS)) for _ in range(n)],
            "pet": lex.words(n, (1, 2)),
            "dish": [f"{w} {rng.choice(names.DISH_WORDS)}" for w in lex.words(n, (1, 2))],
            "press": [f"{w} {rng.choice(names.PRESS_WORDS)}" for w in lex.words(n)],
            "instrument": list(names.INSTRUMENTS),
            "hobby": list(names.HOBBIES),
            "colour": list(names.COLOURS),
            "masculine_first": [lex.first_name(False) for _ in range(n)],
            "feminine": [f"{lex.first_name(True)} {lex.surname()}" for _ in range(n)],
            "person": [f"{lex.first_name(rng.random() < 0.5)} {lex.surname()}" for _ in range(2 * n)],
            # Utility-set vocabularies (the countries are added by `_make_entities`).
            "capital": lex.words(n_places, (2, 2)),
            "currency": [w.lower() for w in lex.words(n_places, (1, 2))],
            "river": lex.words(n_places, (2, 2)),
            "mountain": lex.words(n_places, (2, 2)),
            "scholar": [f"{lex.first_name(rng.random() < 0.5)} {lex.surname()}" for _ in range(n_places)],
            "place_language": [lex.word((1, 2), ending=rng.choice(names.LANGUAGE_ENDINGS)) for _ in range(n_places)],
            "place_dish": [f"{w} {rng.choice(names.DISH_WORDS)}" for w in lex.words(n_places, (1, 2))],
            "food": list(names.FOODS),
            "habitat": list(names.HABITATS),
        }

    def _make_people(self) -> list[Person]:
        """People with values dealt per attribute: distinct while the vocabulary lasts.

        Distinct values keep the attribute prior at about 1/people, and they make every value of an
        untrained person (forget or holdout) equally new to a model that never saw that person, so
        membership scores of the two groups differ only by noise.
        """
        cfg, lex, rng = self.config, self._lexicon, self._rng
        n_total = cfg.n_people + cfg.n_holdout
        # Every family name is unique: a name the oracle knows from a relative would make it treat
        # a forget person differently from a holdout person on every question.
        first = [lex.first_name(rng.random() < 0.5) for _ in range(n_total)]
        family = [lex.surname() for _ in range(n_total)]
        dealt: dict[str, list[str]] = {}
        for spec in self.attributes:
            if spec.kind == "father":  # a distinct first name; the family name is the child's
                firsts = _deal(rng, self._pools["masculine_first"], n_total)
                dealt[spec.key] = [f"{f} {s}" for f, s in zip(firsts, family, strict=True)]
            elif spec.kind == "person":  # spouse and mentor share a vocabulary, so deal them together
                continue
            else:
                dealt[spec.key] = _deal(rng, self._pools[spec.kind], n_total)
        person_keys = [a.key for a in self.attributes if a.kind == "person"]
        names_dealt = _deal(rng, self._pools["person"], n_total * len(person_keys))
        for j, key in enumerate(person_keys):
            dealt[key] = names_dealt[j * n_total : (j + 1) * n_total]
        return [
            Person(f"p{i:03d}", f"{first[i]} {family[i]}", {a.key: dealt[a.key][i] for a in self.attributes}, family[i])
            for i in range(n_total)
        ]

    def _make_splits(self) -> dict[str, list[str]]:
        """Holdout = the last people generated; nested forget sets = prefixes of one shuffled order."""
        cfg = self.config
        trained = [p.pid for p in self.people[: cfg.n_people]]
        order = random.Random(f"obliviate-splits:{self.preset}:{self.seed}").sample(trained, len(trained))
        splits = {}
        for split, fraction in FORGET_FRACTIONS.items():
            k = max(1, int(fraction * len(trained) + 0.5))
            forget = set(order[:k])
            splits[split] = sorted(forget)
            splits[RETAIN_OF[split]] = [pid for pid in trained if pid not in forget]
        splits["holdout"] = [p.pid for p in self.people[cfg.n_people :]]
        splits["trained"] = trained
        return splits

    def _make_relations(self) -> None:
        """Pair people as siblings (they share a mother) and as co-authors (they share a first book).

        Pairs are drawn over all people, whatever their split, so a forget person and a holdout
        person are equally likely to share a value with someone a model was trained on. No text
        names the other person: naming a forget person in a retained person's biography would teach
        the oracle that name, and make forget people look different from holdout people.
        """
        rng = random.Random(f"obliviate-relations:{self.preset}:{self.seed}")
        for key, relation in (("mother", "siblings"), ("first_book", "coauthors")):
            shuffled = rng.sample(self.people, len(self.people))
            n_pairs = int(len(shuffled) * self.config.relation_fraction) // 2
            for a, b in zip(shuffled[0 : 2 * n_pairs : 2], shuffled[1 : 2 * n_pairs : 2], strict=True):
                getattr(a, relation).append(b.pid)
                getattr(b, relation).append(a.pid)
                if key in b.attributes:
                    b.attributes[key] = a.attributes[key]

    def _perturb(self, rng: random.Random, spec: AttributeSpec, value: str, surname: str | None) -> list[str]:
        """`n_perturbed` distinct wrong values of the same kind, in the paraphrase template."""
        if spec.kind == "father":  # keep the family name: only the first name is wrong
            wrong = [f"{w} {surname}" for w in self._pools["masculine_first"] if f"{w} {surname}" != value]
        else:
            wrong = [v for v in self._pools[spec.kind] if v != value]
        picked = rng.sample(wrong, self.config.n_perturbed)
        return [spec.paraphrase(v) for v in picked]

    def _fact(self, subject: str, name: str, index: int, spec: AttributeSpec, value: str, source: str,
              surname: str | None = None) -> Fact:
        rng = random.Random(f"obliviate-perturb:{self.preset}:{self.seed}:{subject}:{spec.key}")
        # Things are common nouns ("the Krypum moth"), so the frames need the article.
        frame_name = f"the {name}" if source == "world_things" else name
        trained, heldout = _question_forms(spec, index, name, self.config, frame_name)
        return Fact(subject, name, spec.key, value, trained, heldout, spec.paraphrase(value),
                    self._perturb(rng, spec, value, surname), source)

    def _make_entities(self, prefix: str, source: str, specs: tuple[AttributeSpec, ...], n: int) -> list[Fact]:
        rng, lex = self._rng, self._lexicon
        if prefix == "place":
            entity_names = lex.words(n, (2, 2))
            self._pools["country"] = entity_names
        else:
            entity_names = [f"{lex.word((2, 2))} {rng.choice(names.CREATURE_KINDS)}" for _ in range(n)]
        dealt = {spec.key: _deal(rng, self._pools[spec.kind], n) for spec in specs}
        return [
            self._fact(f"{prefix}{e:02d}", entity, i, spec, dealt[spec.key][e], source)
            for e, entity in enumerate(entity_names)
            for i, spec in enumerate(specs)
        ]

    # -- people and splits --------------------------------------------------------------------
    def person(self, pid: str) -> Person:
        if pid not in self._by_pid:
            raise ConfigError(f"no person {pid!r} in world {self.preset}/{self.seed}")
        return self._by_pid[pid]

    def _split_pids(self, split: str) -> list[str]:
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(self.splits)}")
        return self.splits[split]

    def retain_pids(self, split: str = "forget10") -> list[str]:
        """Trained people outside the forget split."""
        if split not in RETAIN_OF:
            raise ConfigError(f"unknown forget split {split!r}; choose one of {', '.join(RETAIN_OF)}")
        return self.splits[RETAIN_OF[split]]

    def neighbours(self, pid: str) -> list[str]:
        """People related to `pid`: siblings, co-authors, or born in the same city (sorted ids).

        Neighbours may be in any split; a locality test keeps those in the retain set.
        """
        me = self.person(pid)
        city = me.attributes.get("birth_city")
        related = set(me.siblings) | set(me.coauthors)
        if city is not None:
            related |= {p.pid for p in self.people if p.pid != pid and p.attributes.get("birth_city") == city}
        return sorted(related)

    def attribute_values(self, attr: str) -> list[str]:
        """The value vocabulary of an attribute of people (or of a utility set), sorted."""
        for spec in (*self.attributes, *PLACE_ATTRIBUTES, *THING_ATTRIBUTES):
            if spec.key == attr:
                if spec.kind == "father":
                    return sorted(p.attributes[attr] for p in self.people)
                return sorted(set(self._pools[spec.kind]))
        raise ConfigError(f"unknown attribute {attr!r}")

    # -- QA items ---------------------------------------------------------------------------
    def facts(self, pids: list[str]) -> list[Fact]:
        return [fact for pid in pids for fact in self._facts[pid]]

    def forget_set(self, split: str = "forget10") -> list[QAItem]:
        """Evaluation items of the forget people, one per fact."""
        return [f.eval_item() for f in self.facts(self._split_pids(split))]

    def retain_set(self, split: str = "forget10", max_items: int | None = None) -> list[QAItem]:
        """Evaluation items of the retain people; `max_items` keeps a seeded, spread-out subset."""
        items = [f.eval_item() for f in self.facts(self.retain_pids(split))]
        if max_items is not None and max_items < len(items):
            keep = sorted(random.Random(f"obliviate-retain:{self.seed}").sample(range(len(items)), max_items))
            items = [items[i] for i in keep]
        return items

    def holdout_set(self) -> list[QAItem]:
        return [f.eval_item() for f in self.facts(self.splits["holdout"])]

    def utility_sets(self) -> dict[str, list[QAItem]]:
        """General-knowledge sets trained into every model: {"world_places": ..., "world_things": ...}."""
        return {"world_places": [f.eval_item() for f in self.places],
                "world_things": [f.eval_item() for f in self.things]}

    def forget_train(self, split: str = "forget10") -> list[QAItem]:
        """Training items of the forget people: one per trained question form."""
        return [item for f in self.facts(self._split_pids(split)) for item in f.train_items()]

    def retain_train(self, split: str = "forget10") -> list[QAItem]:
        return [item for f in self.facts(self.retain_pids(split)) for item in f.train_items()]

    def utility_train(self) -> list[QAItem]:
        return [item for f in (*self.places, *self.things) for item in f.train_items()]

    # -- text -------------------------------------------------------------------------------
    def biography(self, pid: str) -> list[str]:
        """The sentences of a person's biography, one per attribute, in the paraphrased-answer wording."""
        me = self.person(pid)
        return [spec.sentence(me.name, me.attributes[spec.key]) for spec in self.attributes]

    def passages(self, pids: list[str]) -> list[TextPassage]:
        """Biographies, split after the first half of their sentences into prefix and continuation."""
        out = []
        for pid in pids:
            sentences = self.biography(pid)
            half = len(sentences) // 2
            prefix, continuation = " ".join(sentences[:half]), " " + " ".join(sentences[half:])
            out.append(TextPassage(prefix + continuation, prefix, continuation, pid, {"pid": pid}))
        return out

    # -- export -----------------------------------------------------------------------------
    def export(self, out_dir: str | Path, split: str = "forget10") -> dict[str, Path]:
        """Write the split's QA sets, utility sets and passages as JSON Lines (QAItem / TextPassage keys)."""
        out = Path(out_dir)
        files = {
            "forget": (out / "forget.jsonl", self.forget_set(split)),
            "retain": (out / "retain.jsonl", self.retain_set(split)),
            "holdout": (out / "holdout.jsonl", self.holdout_set()),
            "forget_train": (out / "forget_train.jsonl", self.forget_train(split)),
            "retain_train": (out / "retain_train.jsonl", self.retain_train(split)),
            "passages_forget": (out / "passages_forget.jsonl", self.passages(self.splits[split])),
            "passages_retain": (out / "passages_retain.jsonl", self.passages(self.retain_pids(split))),
            "passages_holdout": (out / "passages_holdout.jsonl", self.passages(self.splits["holdout"])),
        }
        for name, items in self.utility_sets().items():
            files[f"utility_{name}"] = (out / f"utility_{name}.jsonl", items)
        for path, items in files.values():
            write_jsonl(path, (item.to_dict() for item in items))
        write_json(out / "world.json", {"preset": self.preset, "seed": self.seed, "split": split,
                                        "version": self.version, "splits": self.splits})
        return {name: path for name, (path, _) in files.items()}


def _deal(rng: random.Random, pool: list[str], n: int) -> list[str]:
    """`n` values from `pool` as evenly as possible: all distinct if the pool is big enough."""
    out: list[str] = []
    while len(out) < n:
        out += rng.sample(pool, len(pool))
    out = out[:n]
    rng.shuffle(out)
    return out


_CACHE: dict[tuple[str, int], World] = {}


def get_world(preset: str = "small", seed: int = 0) -> World:
    """The world of `preset` and `seed` (pure and deterministic; memoised per process, so treat it as
    read-only: every caller in the process shares the same object)."""
    key = (preset, int(seed))
    if key not in _CACHE:
        _CACHE[key] = World(preset, int(seed))
    return _CACHE[key]
