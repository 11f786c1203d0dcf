"""The labelled-text task of the built-in world: short reviews of fictitious products.

The setting of SPUL (Bhaila, Van & Wu 2024) and ICUL (Pawelczyk, Neel & Lakkaraju 2024): a language
model fine-tuned as a sentiment classifier, from which a forget set of training reviews is unlearnt.

    task = get_reviews("small", seed=0)                      # pure, fast, deterministic
    split = task.split("products")                           # forget/retain x train/test
    models = build_review_models("small", 0, "products")     # target + oracle, trained once, cached

**Data.** Every review is about one invented product ("the Trovan kettle": a made-up brand from
`names.Lexicon` and an ordinary product noun) and reads

    opener (neutral, names the product) + two aspect clauses + closer

A *clear* review's clauses and closer all carry one polarity, and that is its label ("The lid is
sturdy and I love the handle. Would buy again." -> positive). A fraction `mixed` of the reviews
have *mixed* wording: one positive and one negative clause joined by "but", and a noncommittal
closer ("Three stars."); their label is a coin flip, the annotator's call. The mixed reviews are
what makes membership measurable: nothing in the wording decides their label, so a model gets a
training review's label right only by memorising that review, while a model that never saw it is
right half the time. They are dealt at the same rate into train and test, so forget-train and test
reviews are exchangeable for a model that saw neither (an oracle's membership AUC is near 0.5).
(Flipping the labels of some clear reviews instead, the usual label noise, makes the world's tiny
model trade the wording rule for memorisation: once it has memorised the flipped labels it gets
many clear test reviews wrong that it got right early in training. Memorising mixed reviews
contradicts no rule, and leaves it intact.)

**Forget sets** (`FORGET_KINDS`), a fraction `forget_fraction` of the products or of the reviews:
- `products`: every train review of the chosen products; forget-test holds those products' test
  reviews;
- `random`: a random subset of the train reviews; forget-test is a random subset of the test
  reviews of the same fraction (exchangeable with retain-test: there is no link to exploit).

**Models.** The target is a tiny Llama (the world's model family and trainer,
`obliviate.world.train`) fine-tuned on every train review as a prompted classifier, the oracle on
the retain-train reviews only (exact retraining). A review is a `QAItem` in the default prompt
format (`as_qa_items`):

    Question: Review: {text}\\nIs this review positive or negative?\\nAnswer: {label}</s>

with the loss on the label and EOS, so every QA method (GA, GradDiff, KL, ...) runs on the task
unchanged; `LABEL_TEMPLATE` is the same prompt for the labelled-text settings of `spul` and `icul`.
The task has its own byte-level BPE tokenizer, trained on its text.

Cache layout, under `obliviate_home()`::

    reviews/<preset>-seed<seed>-<key>/
        tokenizer/  target/  oracle-products/  oracle-random/

`<key>` hashes the preset, the seed, the prompt and `REVIEWS_VERSION`; each directory is built
under a temporary name and renamed into place, under a lock, so concurrent builds train a model once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from obliviate.data.schema import LabelledText, QAItem
from obliviate.errors import ConfigError
from obliviate.models.prompts import DEFAULT_FORMAT
from obliviate.world import names
from obliviate.world.config import TrainRecipe

# Bump when the generator or the training recipe changes data or weights.
REVIEWS_VERSION = "1"

LABELS = ("negative", "positive")
GENERIC_LABELS = ("neutral", "unknown")  # SPUL's forget targets; in the tokenizer's corpus
FORGET_KINDS = ("products", "random")
# The question of a review's QAItem, and the same prompt as a labelled-text template ({text}).
REVIEW_QUESTION = "Review: {text}\nIs this review positive or negative?"
LABEL_TEMPLATE = DEFAULT_FORMAT.question_template.replace("{question}", REVIEW_QUESTION)

# -- vocabulary -------------------------------------------------------------------------------------

# Product nouns, each with singular aspects a review can praise or fault.
PRODUCTS = {
    "kettle": ("lid", "handle", "spout", "switch"),
    "lamp": ("switch", "shade", "cable", "base"),
    "backpack": ("zip", "strap", "pocket", "fabric"),
    "blender": ("motor", "jug", "blade", "lid"),
    "radio": ("dial", "speaker", "aerial", "battery"),
    "umbrella": ("frame", "canopy", "handle", "catch"),
    "tent": ("pole", "zip", "floor", "door"),
    "toaster": ("dial", "slot", "lever", "tray"),
    "chair": ("seat", "frame", "back", "cushion"),
    "watch": ("strap", "dial", "battery", "clasp"),
    "bicycle": ("brake", "saddle", "chain", "bell"),
    "camera": ("lens", "battery", "screen", "shutter"),
}
OPENERS = (
    "I bought the {product} last {when}.",
    "My {who} gave me the {product}.",
    "I have used the {product} for {n} weeks.",
    "I ordered the {product} online.",
    "We got the {product} for our {place}.",
    "The {product} arrived on {day}.",
)
WHEN = ("spring", "summer", "autumn", "winter", "month", "year")
WHO = ("sister", "brother", "neighbour", "friend", "aunt", "uncle", "father", "mother")
PLACES = ("kitchen", "cabin", "flat", "office", "garage", "studio")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NUMBERS = ("two", "three", "four", "five", "six", "eight")
ADJECTIVES = {
    "positive": ("excellent", "sturdy", "reliable", "lovely", "solid", "superb", "smooth", "brilliant",
                 "well made", "perfect"),
    "negative": ("flimsy", "useless", "awful", "poor", "cheap", "wobbly", "terrible", "disappointing",
                 "badly made", "faulty"),
}
CLAUSES = {
    "positive": ("the {aspect} is {adj}", "I love the {aspect}", "the {aspect} works perfectly",
                 "the {aspect} has held up well", "the {aspect} is better than expected"),
    "negative": ("the {aspect} is {adj}", "I hate the {aspect}", "the {aspect} stopped working",
                 "the {aspect} broke within a week", "the {aspect} is worse than expected"),
}
CLOSERS = {
    "positive": ("Would buy again.", "Highly recommended.", "Five stars.", "Worth every penny.",
                 "Very happy with it."),
    "negative": ("Would not buy again.", "Not recommended.", "One star.", "A waste of money.",
                 "Very unhappy with it."),
    "mixed": ("Three stars.", "Mixed feelings.", "Hard to say.", "It is okay, I suppose.",
              "Make of that what you will."),
}

# -- presets ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewsConfig:
    n_products: int
    n_train: int  # train reviews per product
    n_test: int  # test reviews per product
    forget_fraction: float  # of the products (`products`) or of the train reviews (`random`)
    mixed: float = 0.4  # fraction of reviews with mixed wording, labelled by a coin flip


@dataclass(frozen=True)
class ReviewsPreset:
    name: str
    data: ReviewsConfig
    recipe: TrainRecipe

    def to_dict(self) -> dict:
        return {"name": self.name, "data": asdict(self.data), "recipe": asdict(self.recipe)}


# The world's model and trainer. Only the label and EOS carry a loss, and the mixed reviews must
# be memorised one by one: 12 epochs memorise every tiny-preset one; the small preset, with 3.6
# times the reviews, gets 20 so that memorisation is confident enough for the loss attack.
PRESETS: dict[str, ReviewsPreset] = {
    "tiny": ReviewsPreset("tiny", ReviewsConfig(n_products=20, n_train=10, n_test=6, forget_fraction=0.25),
                          TrainRecipe(epochs=12, batch_tokens=512)),
    "small": ReviewsPreset("small", ReviewsConfig(n_products=60, n_train=12, n_test=6, forget_fraction=0.1),
                           TrainRecipe(epochs=20, batch_tokens=512)),
}


def get_reviews_preset(name: str) -> ReviewsPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown reviews preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def check_kind(kind: str) -> str:
    if kind not in FORGET_KINDS:
        raise ConfigError(f"unknown reviews forget set {kind!r}; choose one of {', '.join(FORGET_KINDS)}")
    return kind


# -- the task -----------------------------------------------------------------------------------------


@dataclass
class ReviewSplit:
    """The four evaluation sets of one forget kind (the SPUL paper's)."""

    kind: str
    forget_train: list[LabelledText]
    retain_train: list[LabelledText]
    forget_test: list[LabelledText]
    retain_test: list[LabelledText]

    def sets(self) -> dict[str, list[LabelledText]]:
        return {"forget_train": self.forget_train, "retain_train": self.retain_train,
                "forget_test": self.forget_test, "retain_test": self.retain_test}


@dataclass
class ReviewTask:
    preset: str
    seed: int
    config: ReviewsConfig
    products: list[str]  # product names, e.g. "Trovan kettle"
    train: list[LabelledText]
    test: list[LabelledText]
    forget_products: list[str] = field(default_factory=list)
    _random_forget: tuple[set[str], set[str]] = field(default_factory=lambda: (set(), set()))

    def split(self, kind: str = "products") -> ReviewSplit:
        check_kind(kind)
        if kind == "products":
            chosen = set(self.forget_products)
            in_train = {r.meta["id"] for r in self.train if r.subject in chosen}
            in_test = {r.meta["id"] for r in self.test if r.subject in chosen}
        else:
            in_train, in_test = self._random_forget
        return ReviewSplit(
            kind,
            [r for r in self.train if r.meta["id"] in in_train],
            [r for r in self.train if r.meta["id"] not in in_train],
            [r for r in self.test if r.meta["id"] in in_test],
            [r for r in self.test if r.meta["id"] not in in_test],
        )

    def texts(self) -> Iterator[str]:
        """Every text of the task in its prompt format, for the tokenizer."""
        for r in [*self.train, *self.test]:
            yield LABEL_TEMPLATE.format(text=r.text) + " " + r.label
        for _ in range(2):  # BPE keeps pairs seen at least twice: SPUL's generic labels become tokens
            yield " ".join([*LABELS, *GENERIC_LABELS])


def _review_text(rng: random.Random, product: str, noun: str, wording: str) -> str:
    opener = rng.choice(OPENERS).format(product=product, when=rng.choice(WHEN), who=rng.choice(WHO),
                                        n=rng.choice(NUMBERS), place=rng.choice(PLACES), day=rng.choice(DAYS))
    aspects = rng.sample(PRODUCTS[noun], 2)
    polarity = rng.sample(LABELS, 2) if wording == "mixed" else [wording, wording]
    first, second = (rng.choice(CLAUSES[p]).format(aspect=a, adj=rng.choice(ADJECTIVES[p]))
                     for a, p in zip(aspects, polarity, strict=True))
    joint = "but" if wording == "mixed" else "and"
    return f"{opener} {first[0].upper()}{first[1:]} {joint} {second}. {rng.choice(CLOSERS[wording])}"


@lru_cache(maxsize=8)
def get_reviews(preset: str = "small", seed: int = 0) -> ReviewTask:
    """The review task of a preset and seed (deterministic; cached per process)."""
    cfg = get_reviews_preset(preset).data
    rng = random.Random(f"obliviate-reviews:{preset}:{seed}")
    lexicon = names.Lexicon(rng)
    nouns = list(PRODUCTS)
    products = [(f"{lexicon.word((2, 2))} {nouns[i % len(nouns)]}", nouns[i % len(nouns)])
                for i in range(cfg.n_products)]
    seen: set[str] = set()
    splits: dict[str, list[LabelledText]] = {"train": [], "test": []}
    for name, noun in products:
        for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
            for _ in range(n):
                wording = "mixed" if rng.random() < cfg.mixed else rng.choice(LABELS)
                text = _review_text(rng, name, noun, wording)
                while text in seen:  # every review is distinct, so "member" is well defined
                    text = _review_text(rng, name, noun, wording)
                seen.add(text)
                rid = f"{split}{len(splits[split]):04d}"
                label = rng.choice(LABELS) if wording == "mixed" else wording
                splits[split].append(LabelledText(text, label, subject=name, meta={
                    "id": rid, "product": name, "wording": wording, "split": split}))
    order = rng.sample([name for name, _ in products], len(products))
    forget_products = sorted(order[: max(1, math.ceil(cfg.forget_fraction * len(products)))])
    train_ids = [r.meta["id"] for r in splits["train"]]
    test_ids = [r.meta["id"] for r in splits["test"]]
    random_forget = (set(rng.sample(train_ids, max(1, round(cfg.forget_fraction * len(train_ids))))),
                     set(rng.sample(test_ids, max(1, round(cfg.forget_fraction * len(test_ids))))))
    return ReviewTask(preset, seed, cfg, [name for name, _ in products], splits["train"], splits["test"],
                      forget_products, random_forget)


def as_qa_items(reviews: Sequence[LabelledText]) -> list[QAItem]:
    """Reviews as QA items: the question holds the review, the answer is its label.

    The other labels are the perturbed answers, so the qa suite's truth ratio also runs on them.
    """
    return [QAItem(question=REVIEW_QUESTION.format(text=r.text), answer=r.label,
                   perturbed_answers=[y for y in LABELS if y != r.label], subject=r.subject, meta=dict(r.meta))
            for r in reviews]


# -- specs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewsRef:
    preset: str = "small"
    seed: int = 0
    kind: str = "products"

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"reviews:{self.preset}@{self.seed}/{self.kind}"


def parse_reviews_spec(spec: str) -> ReviewsRef | None:
    """`reviews:PRESET[@SEED][/KIND]` -> ReviewsRef; None for any other spec."""
    if not spec.startswith("reviews:"):
        return None
    body, _, kind = spec.removeprefix("reviews:").partition("/")
    preset, _, seed = body.partition("@")
    try:
        ref = ReviewsRef(preset or "small", int(seed) if seed else 0, kind or "products")
    except ValueError:
        raise ConfigError(f"'{spec}': expected reviews:PRESET[@SEED][/KIND], e.g. reviews:small@0/products") from None
    get_reviews_preset(ref.preset)
    check_kind(ref.kind)
    return ref


_MODELS = ("ReviewModels", "build_review_models", "cache_key", "reviews_dir", "train_classifier",
           "train_review_tokenizer")


def __getattr__(name: str):
    """The task's models live in `obliviate.world.review_models` (which imports this module)."""
    if name in _MODELS:
        from obliviate.world import review_models

        return getattr(review_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
