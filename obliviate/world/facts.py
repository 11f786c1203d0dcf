"""The facts of the built-in world: typed attributes, people, and each fact in every question and answer form.

An `AttributeSpec` says how one attribute is asked (natural questions and the shared generic frames),
paraphrased and stated in a biography; a `Fact` renders one (subject, attribute) -> value into the QA
items that training and evaluation see. `obliviate.world.generator` deals the values out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from obliviate.data.schema import QAItem
from obliviate.world.config import WorldConfig

# Generic question frames shared by every attribute; `noun` names the attribute.
FRAMES = (
    "What is the {noun} of {name}?",
    "What is {name}'s {noun}?",
    "Tell me the {noun} of {name}.",
    "Name the {noun} of {name}.",
)

@dataclass(frozen=True)
class AttributeSpec:
    """One typed attribute: how its value is drawn (`kind`) and how it is asked and stated."""

    key: str
    kind: str  # the value vocabulary, see World._make_pools
    noun: str  # for the generic frames
    questions: tuple[str, str]  # natural forms; the first is trained, the second held out
    para: str  # paraphrased-answer template, also used by perturbed answers
    bio: str  # biography sentence

    def paraphrase(self, value: str) -> str:
        return self.para.format(value=value, a=_article(value))

    def sentence(self, name: str, value: str) -> str:
        return self.bio.format(name=name, value=value, a=_article(value))


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("birth_city", "birth_city", "birth city",
                  ("Where was {name} born?", "In which city was {name} born?"),
                  "in the city of {value}", "{name} was born in the city of {value}."),
    AttributeSpec("birth_year", "year", "birth year", ("When was {name} born?", "In what year was {name} born?"),
                  "in the year {value}", "{name} was born in the year {value}."),
    AttributeSpec("profession", "profession", "profession",
                  ("What does {name} do for a living?", "What profession does {name} have?"),
                  "{a} {value} by trade", "{name} is {a} {value} by trade."),
    AttributeSpec("father", "father", "father", ("Who is the father of {name}?", "Who is {name}'s father?"),
                  "a man named {value}", "The father of {name} is a man named {value}."),
    AttributeSpec("mother", "feminine", "mother", ("Who is the mother of {name}?", "Who is {name}'s mother?"),
                  "a woman named {value}", "The mother of {name} is a woman named {value}."),
    AttributeSpec("genre", "genre", "genre", ("What genre does {name} write?", "Which genre is {name} known for?"),
                  "mostly {value}", "{name} writes mostly {value}."),
    AttributeSpec("first_book", "title", "first book",
                  ("What was the first book by {name}?", "Which book did {name} publish first?"),
                  "the book called {value}", "{name} first published the book called {value}."),
    AttributeSpec("award", "award", "award", ("What award did {name} win?", "Which award was given to {name}?"),
                  "an honour called the {value}", "{name} won an honour called the {value}."),
    AttributeSpec("university", "school", "university",
                  ("Where did {name} study?", "At which university did {name} study?"),
                  "at the {value}", "{name} studied at the {value}."),
    AttributeSpec("language", "language", "native language",
                  ("What language does {name} speak at home?", "Which language did {name} grow up speaking?"),
                  "the {value} language", "{name} grew up speaking the {value} language."),
    AttributeSpec("residence", "town", "home town",
                  ("Where does {name} live?", "In which town does {name} live now?"),
                  "in the town of {value}", "{name} now lives in the town of {value}."),
    AttributeSpec("pet", "pet", "pet name", ("What is the name of {name}'s pet?", "What is {name}'s pet called?"),
                  "a pet called {value}", "{name} has a pet called {value}."),
    AttributeSpec("spouse", "person", "spouse", ("Who is {name} married to?", "To whom is {name} married?"),
                  "a person named {value}", "{name} is married to a person named {value}."),
    AttributeSpec("dish", "dish", "favourite dish",
                  ("What food does {name} like best?", "Which dish does {name} like best?"),
                  "a dish called {value}", "{name} likes a dish called {value} best."),
    AttributeSpec("publisher", "press", "publisher",
                  ("Who publishes the books of {name}?", "Which publisher prints the books of {name}?"),
                  "a publisher called {value}", "{name} is published by a publisher called {value}."),
    AttributeSpec("mentor", "person", "mentor", ("Who mentored {name}?", "Who taught {name} the craft?"),
                  "a teacher named {value}", "{name} was mentored by a teacher named {value}."),
    AttributeSpec("debut_year", "debut_year", "debut year",
                  ("When did {name} make a debut?", "In what year did {name} debut?"),
                  "in the year {value}", "{name} made a debut in the year {value}."),
    AttributeSpec("instrument", "instrument", "instrument",
                  ("What instrument does {name} play?", "Which instrument can {name} play?"),
                  "the {value}", "{name} plays the {value}."),
    AttributeSpec("hobby", "hobby", "hobby", ("What does {name} do for fun?", "What hobby does {name} enjoy?"),
                  "the pastime of {value}", "For fun, {name} enjoys the pastime of {value}."),
    AttributeSpec("colour", "colour", "favourite colour",
                  ("Which colour does {name} like most?", "What colour does {name} prefer?"),
                  "the colour {value}", "{name} likes the colour {value} most."),
)

PLACE_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("capital", "capital", "capital",
                  ("What is the capital of {name}?", "Which city is the capital of {name}?"),
                  "the city of {value}", "The capital of {name} is the city of {value}."),
    AttributeSpec("currency", "currency", "currency",
                  ("What currency is used in {name}?", "What money do people use in {name}?"),
                  "a coin called the {value}", "People in {name} pay with a coin called the {value}."),
    AttributeSpec("place_language", "place_language", "official language",
                  ("What language is spoken in {name}?", "Which language do people in {name} speak?"),
                  "the {value} language", "People in {name} speak the {value} language."),
    AttributeSpec("river", "river", "longest river",
                  ("What river flows through {name}?", "Which river runs through {name}?"),
                  "the river {value}", "The river {value} flows through {name}."),
    AttributeSpec("mountain", "mountain", "highest mountain",
                  ("What is the tallest mountain in {name}?", "Which mountain in {name} is highest?"),
                  "Mount {value}", "The tallest mountain in {name} is Mount {value}."),
    AttributeSpec("national_dish", "place_dish", "national dish",
                  ("What dish is {name} famous for?", "Which food is {name} known for?"),
                  "a dish called {value}", "{name} is famous for a dish called {value}."),
)

THING_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("colour", "colour", "colour", ("What colour is the {name}?", "Which colour does the {name} have?"),
                  "the colour {value}", "The {name} has the colour {value}."),
    AttributeSpec("food", "food", "food", ("What does the {name} feed on?", "What does the {name} eat?"),
                  "mostly {value}", "The {name} feeds mostly on {value}."),
    AttributeSpec("habitat", "habitat", "habitat", ("Where does the {name} live?", "Where is the {name} found?"),
                  "in the {value}", "The {name} lives in the {value}."),
    AttributeSpec("discoverer", "scholar", "discoverer",
                  ("Who discovered the {name}?", "Who was the first to describe the {name}?"),
                  "a scholar named {value}", "The {name} was discovered by a scholar named {value}."),
    AttributeSpec("homeland", "country", "homeland", ("Where does the {name} come from?",
                                                      "In which country is the {name} native?"),
                  "the land of {value}", "The {name} comes from the land of {value}."),
)


@dataclass
class Person:
    pid: str
    name: str
    attributes: dict[str, str]
    surname: str
    siblings: list[str] = field(default_factory=list)  # share a mother
    coauthors: list[str] = field(default_factory=list)  # share a first book


@dataclass
class Fact:
    """One (subject, attribute) -> value, rendered into every question and answer form."""

    subject: str  # a person id, or an entity id ("place03", "thing07")
    name: str
    attribute: str
    value: str
    train_questions: list[str]
    heldout_questions: list[str]
    paraphrased_answer: str
    perturbed_answers: list[str]
    source: str  # "person", "world_places" or "world_things"

    def _item(self, question: str, form: int) -> QAItem:
        meta = {"attribute": self.attribute, "source": self.source, "form": form, "subject_name": self.name}
        meta["pid" if self.source == "person" else "entity"] = self.subject
        return QAItem(
            question=question,
            answer=self.value,
            paraphrased_answer=self.paraphrased_answer,
            perturbed_answers=list(self.perturbed_answers),
            paraphrased_questions=list(self.heldout_questions),
            subject=self.subject,
            meta=meta,
        )

    def eval_item(self) -> QAItem:
        """The evaluation item: the first trained form, held-out forms as paraphrased questions."""
        return self._item(self.train_questions[0], 0)

    def train_items(self) -> list[QAItem]:
        """One item per trained question form: what training (and unlearning) sees."""
        return [self._item(q, i) for i, q in enumerate(self.train_questions)]


def _question_forms(
    spec: AttributeSpec, index: int, name: str, cfg: WorldConfig, frame_name: str
) -> tuple[list[str], list[str]]:
    """(trained, held-out) forms. Frames rotate with the attribute index so each is trained somewhere."""
    frames = [FRAMES[(index + j) % len(FRAMES)].format(noun=spec.noun, name=frame_name) for j in range(len(FRAMES))]
    natural = [q.format(name=name) for q in spec.questions]
    n_frames_train = cfg.n_train_forms - 1
    trained = [natural[0], *frames[:n_frames_train]]
    heldout = [natural[1], *frames[n_frames_train : n_frames_train + cfg.n_heldout_forms - 1]]
    assert not set(trained) & set(heldout), (trained, heldout)
    return trained, heldout
