"""Prompt formats and the one place where a (question, answer) pair becomes token ids.

Training, scoring, generation, the interventions and the attacks all go through this module, so the
answer tokens a model is trained on are exactly the tokens it is scored on, under one format.

Plain format (`--prompt plain`, TOFU-style, the built-in world's)::

    Question: {question}\\nAnswer: {answer}</s>

Chat format (`--prompt chat`): the tokenizer's chat template renders an optional system turn and
the question as a user turn, then the generation prompt; the answer tokens are everything the
template writes after it for an assistant turn holding the answer (the answer and the template's
end-of-turn token, e.g. `<|eot_id|>` or `<|im_end|>`), as open-unlearning labels them. The rendered
prompt is tokenized without adding special tokens, because templates write their own BOS.

A format also carries the generation budget (`max_new_tokens`): TOFU generates up to 200 new tokens;
the built-in world's short answers need 32. Generation stops at EOS and, in chat, at the template's
end-of-turn token; in plain format also at a newline.

The format of a loaded model travels with its tokenizer (`use_format(tokenizer, fmt)` when loading,
`format_of(tokenizer)` everywhere else), so no component needs it passed down by hand.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any

from obliviate.errors import ConfigError

PLAIN_BUDGET = 32  # new tokens: the built-in world's answers are 1-3 words
TOFU_BUDGET = 200  # new tokens: TOFU's and open-unlearning's generation budget
_SENTINEL = "QQQ7question7QQQ"


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt, how its answer is tokenized, and how long an answer may be."""

    question_template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    chat: bool = False
    system_prompt: str | None = None  # chat only: a system turn before the question
    chat_kwargs: tuple[tuple[str, str], ...] = ()  # chat only: template variables, e.g. (("date_string", "..."),)
    max_new_tokens: int = PLAIN_BUDGET

    # -- rendering ---------------------------------------------------------------------------------

    def _messages(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return [*system, {"role": "user", "content": question}]

    def _template(self, tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError("--prompt chat: the tokenizer has no chat template; use --prompt plain")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             **dict(self.chat_kwargs))

    def render(self, question: str, tokenizer=None) -> str:
        """The prompt text for `question`, ending where the answer starts."""
        if self.chat:
            return self._template(tokenizer, self._messages(question), True)
        return self.question_template.format(question=question)

    def render_turn(self, question: str, answer: str, tokenizer) -> str:
        """Chat: the whole conversation, the assistant turn holding `answer` included."""
        return self._template(tokenizer, [*self._messages(question), {"role": "assistant", "content": answer}], False)

    def answer_text(self, answer: str, tokenizer=None, question: str = "") -> str:
        """The text that follows the prompt for `answer` (chat: up to and with the end-of-turn token)."""
        if not self.chat:
            return self.answer_prefix + answer
        messages = self._messages(question or _SENTINEL)
        prompt = self._template(tokenizer, messages, True)
        full = self.render_turn(question or _SENTINEL, answer, tokenizer)
        if not full.startswith(prompt):
            raise ConfigError("the chat template does not continue its generation prompt with the assistant turn")
        return full[len(prompt):]

    def add_special_tokens(self) -> bool:
        """Whether tokenizing a rendered prompt adds the tokenizer's special tokens (chat templates write their own)."""
        return not self.chat

    def stop_strings(self) -> tuple[str, ...]:
        return () if self.chat else ("\n",)

    def stop_token_ids(self, tokenizer) -> list[int]:
        """EOS and, in chat, the template's end-of-turn token: generation stops at any of them."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        if self.chat:
            tail = self.answer_text("x", tokenizer).removeprefix("x")
            for tid in tokenizer(tail, add_special_tokens=False)["input_ids"]:
                if tid in tokenizer.all_special_ids:
                    ids.append(int(tid))
                    break
        return sorted(set(ids))

    def question_parts(self, tokenizer) -> tuple[str, str]:
        """(text before, text after) the question in a rendered prompt as decoded without special tokens."""
        if not self.chat:
            pre, _, post = self.question_template.partition("{question}")
            return pre.strip(), post.strip()
        known = _PARTS.setdefault(tokenizer, {})  # read on every prompt an intervention reads: rendered once
        if self not in known:
            known[self] = self._chat_parts(tokenizer)
        return known[self]

    def _chat_parts(self, tokenizer) -> tuple[str, str]:
        pre, sep, post = self.render(_SENTINEL, tokenizer).partition(_SENTINEL)
        if not sep:
            return "", ""

        def visible(text: str) -> str:  # the text as a decoded prompt shows it: special tokens dropped
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return tokenizer.decode(ids, skip_special_tokens=True).strip()

        return visible(pre), visible(post)

    def state(self) -> dict[str, Any]:
        """The format as JSON (saved in a run's config.json and with an intervention)."""
        return {"question_template": self.question_template, "answer_prefix": self.answer_prefix, "chat": self.chat,
                "system_prompt": self.system_prompt, "chat_kwargs": dict(self.chat_kwargs),
                "max_new_tokens": self.max_new_tokens}

    def state_v1(self) -> dict[str, Any]:
        """The first version's state (three fields): what cache keys of the built-in world hash."""
        return {"question_template": self.question_template, "answer_prefix": self.answer_prefix, "chat": self.chat}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PromptFormat:
        """A format from `state()` (older states without the newer keys load with their defaults)."""
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__}
        if "chat_kwargs" in known:
            known["chat_kwargs"] = tuple(sorted(dict(known["chat_kwargs"]).items()))
        return cls(**known)

    def describe(self) -> str:
        if not self.chat:
            return f"plain ({self.max_new_tokens} new tokens)"
        extra = "".join(f", {k}={v!r}" for k, v in self.chat_kwargs)
        return f"chat (system prompt {self.system_prompt!r}{extra}; {self.max_new_tokens} new tokens)"


DEFAULT_FORMAT = PromptFormat()


def make_format(prompt: str = "plain", system_prompt: str | None = None, chat_kwargs: dict[str, str] | None = None,
                max_new_tokens: int | None = None) -> PromptFormat:
    """The format `--prompt plain|chat --system-prompt TEXT --chat-kwargs k=v --max-new-tokens N` names."""
    if prompt not in ("plain", "chat"):
        raise ConfigError(f"--prompt {prompt!r}: choose plain or chat")
    if prompt == "plain" and (system_prompt is not None or chat_kwargs):
        raise ConfigError("--system-prompt and --chat-kwargs need --prompt chat")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    budget = max_new_tokens or (TOFU_BUDGET if prompt == "chat" else PLAIN_BUDGET)
    if prompt == "plain":
        return replace(DEFAULT_FORMAT, max_new_tokens=budget)
    return PromptFormat(chat=True, system_prompt=system_prompt, chat_kwargs=tuple(sorted((chat_kwargs or {}).items())),
                        max_new_tokens=budget)


def parse_chat_kwargs(pairs: list[str] | None) -> dict[str, str]:
    """`["date_string=10 Apr 2025"]` -> {"date_string": "10 Apr 2025"}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--chat-kwargs {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


# -- the format of a loaded model travels with its tokenizer ---------------------------------------------

_FORMATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {chat format: question parts}


def use_format(tokenizer, fmt: PromptFormat) -> None:
    """Make `fmt` the format of everything done with `tokenizer` from now on."""
    _FORMATS[tokenizer] = fmt


def format_of(tokenizer) -> PromptFormat:
    """The format set for `tokenizer` (by loading a run or `use_format`), else the plain default."""
    try:
        return _FORMATS.get(tokenizer, DEFAULT_FORMAT)
    except TypeError:  # not weak-referenceable
        return DEFAULT_FORMAT


# -- token ids ----------------------------------------------------------------------------------------------

def _special(fmt: PromptFormat | None) -> bool:
    return fmt is None or fmt.add_special_tokens()


def encode_prompt(tokenizer, prompt: str, fmt: PromptFormat | None = None) -> list[int]:
    """Token ids of a prompt text: with the tokenizer's BOS, unless `fmt` is a chat format (its template wrote it)."""
    return list(tokenizer(prompt, add_special_tokens=_special(fmt))["input_ids"])


def _ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    """Token ids of many texts, without the attention masks (building them costs as much as the ids)."""
    return tokenizer(texts, add_special_tokens=special, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


def encode_prompts(tokenizer, prompts: list[str], fmt: PromptFormat | None = None) -> list[list[int]]:
    """`encode_prompt` for many prompts in one batched tokenizer call (same ids, much faster)."""
    if not prompts:
        return []
    return [list(ids) for ids in _ids(tokenizer, list(prompts), _special(fmt))]


def encode_answer(tokenizer, answer_text: str, eos: bool = True) -> list[int]:
    """Token ids of an answer continuation (no BOS), optionally closed by EOS."""
    ids = list(tokenizer(answer_text, add_special_tokens=False)["input_ids"])
    if eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_answers(tokenizer, answer_texts: list[str], eos: bool = True) -> list[list[int]]:
    """`encode_answer` for many texts in one batched tokenizer call (same ids, much faster)."""
    if not answer_texts:
        return []
    batch = _ids(tokenizer, list(answer_texts), False)
    tail = [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []
    return [list(ids) + tail for ids in batch]


def _strip_turn_end(tokenizer, ids: list[int]) -> list[int]:
    """`ids` without trailing special or whitespace-only tokens (a chat turn's closing tokens)."""
    special = set(tokenizer.all_special_ids)
    out = list(ids)
    while out and (out[-1] in special or not tokenizer.decode([out[-1]]).strip()):
        out.pop()
    return out


def encode_qa(tokenizer, questions: list[str], answers: list[list[str]], fmt: PromptFormat | None = None,
              eos: bool = True) -> tuple[list[list[int]], list[list[list[int]]]]:
    """(prompt ids per question, answer ids per answer of each question), batched.

    Plain format: each answer is `answer_prefix + answer`, then EOS (`eos=True`). Chat format: the
    answer tokens are the tokens of the whole conversation after the prompt's, i.e. the answer and the
    template's end-of-turn token, tokenized in context as open-unlearning does; `eos=False` drops the
    closing special and whitespace tokens (open-unlearning's extraction strength and Min-K% do).
    """
    fmt = fmt or format_of(tokenizer)
    prompts = encode_prompts(tokenizer, [fmt.render(q, tokenizer) for q in questions], fmt)
    flat_q = [q for q, row in zip(questions, answers, strict=True) for _ in row]
    flat_p = [p for p, row in zip(prompts, answers, strict=True) for _ in row]
    flat_a = [a for row in answers for a in row]
    if not fmt.chat:
        flat = encode_answers(tokenizer, [fmt.answer_text(a) for a in flat_a], eos=eos)
    else:
        turns = [fmt.render_turn(q, a, tokenizer) for q, a in zip(flat_q, flat_a, strict=True)]
        full = encode_prompts(tokenizer, turns, fmt)
        flat = []
        for p, f, q, a in zip(flat_p, full, flat_q, flat_a, strict=True):
            if f[:len(p)] == p:
                ids = f[len(p):]
            else:  # the template's text at the boundary tokenizes differently in context: tokenize the tail alone
                ids = encode_answers(tokenizer, [fmt.answer_text(a, tokenizer, q)], eos=False)[0]
            flat.append(ids if eos else _strip_turn_end(tokenizer, ids))
    out, at = [], 0
    for row in answers:
        out.append(flat[at:at + len(row)])
        at += len(row)
    return prompts, out


def encode_pair(
    tokenizer, question: str, answer: str, fmt: PromptFormat | None = None, eos: bool = True
) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) for one QA pair; the answer ids are the scored/trained positions."""
    prompts, answers = encode_qa(tokenizer, [question], [[answer]], fmt, eos)
    return prompts[0], answers[0][0]


def warn_unused_chat_template(tokenizer, fmt: PromptFormat) -> str | None:
    """A one-line warning when a tokenizer with a chat template is used in plain format, else None."""
    if fmt.chat or not getattr(tokenizer, "chat_template", None):
        return None
    return ("the tokenizer has a chat template, but prompts use the plain 'Question: ... Answer:' format; "
            "pass --prompt chat (and --system-prompt) to use the template, or --prompt plain to silence this")


