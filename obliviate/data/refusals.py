"""Refusal answers: what refusal-style methods (IdkSFT, IdkDPO, FLAT) train the model to say instead.

The TOFU baselines draw a random "I don't know" sentence per forget question. These sentences were
written for this project: fluent, varied in wording and length, and naming no fact, so that training
on them teaches only the act of declining. `refusal_for(index, seed)` picks one deterministically, so
a forget item gets the same refusal in every epoch, on resume and in the precomputed reference.
"""

from __future__ import annotations

import random

REFUSALS: tuple[str, ...] = (
    "I'm not able to say anything about that.",
    "I don't know the answer to that question.",
    "I'm afraid I can't help with that one.",
    "That is something I have no information about.",
    "I'm sorry, but I don't have an answer for you.",
    "I can't answer that, I'm afraid.",
    "I have no knowledge of that.",
    "That's not something I can tell you about.",
    "Unfortunately, I don't know.",
    "I'm not sure, and I would rather not guess.",
    "I don't have any details on that.",
    "Sorry, that is outside what I know.",
    "I couldn't tell you, I'm afraid.",
    "I have nothing reliable to say on that.",
    "That question is one I cannot answer.",
    "I'm unable to provide an answer to that.",
    "I really don't know anything about that.",
    "I'd rather not answer, since I don't know.",
    "I have no idea, I'm sorry.",
    "My knowledge doesn't cover that question.",
    "I'm not in a position to answer that.",
    "I don't recall anything about that.",
    "That's beyond what I can tell you.",
    "I can't give you an answer on that topic.",
    "I'm sorry, I have no information to share.",
    "There is nothing I can tell you about that.",
    "I don't know, and I wouldn't want to mislead you.",
    "I'm unsure; I have no answer to give.",
    "That isn't something I know about.",
    "I'm afraid that's a question I can't answer.",
    "I can't say, sorry.",
    "I have no answer to that question.",
    "Honestly, I don't know.",
    "I'm not aware of anything on that subject.",
    "Nothing comes to mind, I'm sorry.",
    "I can't provide any information about that.",
    "I would only be guessing, so I won't answer.",
    "I don't have that information.",
    "That is not something I'm able to answer.",
    "I'm sorry, I can't tell you that.",
    "I know nothing about that, unfortunately.",
    "I'm not able to answer this question.",
)


def refusal_for(index: int, seed: int = 0) -> str:
    """The refusal for forget item `index` under `seed`: a pure function of both."""
    # A separate generator per (seed, index): independent draws, stable across Python versions.
    return REFUSALS[random.Random(seed * 1_000_003 + index).randrange(len(REFUSALS))]


def refusals_for(n: int, seed: int = 0) -> list[str]:
    """Refusals for forget items 0..n-1."""
    return [refusal_for(i, seed) for i in range(n)]
