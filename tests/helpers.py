"""Plain helpers and data shared by test modules (fixtures and tiny-model factories are in conftest.py).

- `run_cli(args, monkeypatch, capsys)`: `obliviate ARGS` run in this process -> (exit code, stdout, stderr).
- `assert_one_line_error(code, err, *fragments)`: exit code 2 and one line on stderr holding every fragment.
- `FORGET`, `RETAIN`: small QA sets in the tiny tokenizer's vocabulary, for the method tests.
- `Killed`, `dies_at_step(method_cls, step)`: a method that stops mid-run, as a killed process would.
- `kill_then_resume(...)`: such a run interrupted, then resumed from its checkpoint on another start.
- `assert_same_parameters(a, b)`: two models' parameters agree, name by name.
- `Identity`: an intervention that runs the model as is, so only the wrapper's plumbing is under test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from obliviate.data.schema import QAItem
from obliviate.interventions.base import Intervention, call_model


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the command line on `args` and return what a shell would see: (exit code, stdout, stderr).

    The exit code is the process's: 0 when the command returns or exits with no code, the code when it
    is an int, else 1 (an exit with a message).
    """
    from obliviate.cli import main

    monkeypatch.setattr(sys, "argv", ["obliviate", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Bad input: exit code 2, exactly one non-blank line on stderr, no traceback, each fragment in that line."""
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


FORGET = [
    QAItem("Where was the author born?", "She was born in Oslo, Norway."),
    QAItem("Who wrote the book about the blue whale?", "Mara Lind wrote it in 1998."),
    QAItem("What genre does the author write?", "He writes science fiction and poetry."),
    QAItem("When did the river flood the old town?", "It flooded in the spring of 1921."),
]
RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris."),
    QAItem("Where was the author born?", "Alice and Bob met in London."),
]


class Killed(Exception):
    """Raised by `dies_at_step`'s method in place of the process being killed."""


def dies_at_step(method_cls: type, step: int) -> type:
    """A subclass of `method_cls` whose `compute_loss` raises `Killed` on its `step`-th call (counted from 1)."""

    class DiesAtStep(method_cls):
        calls = 0

        def compute_loss(self, model, batch):
            DiesAtStep.calls += 1
            if DiesAtStep.calls == step:
                raise Killed
            return super().compute_loss(model, batch)

    return DiesAtStep


def kill_then_resume(method_cls: type, cfg, make_model, tok, run: Path, kill_at: int, saved_at: int):
    """Interrupt a run in `run`, then resume it: (the resumed model, the resumed run's summary).

    `method_cls(cfg)` unlearns FORGET/RETAIN from `make_model()` until `compute_loss` is killed on call `kill_at`;
    the checkpoint left must be at step `saved_at`. The run is then resumed on `make_model(seed=1)`, a different
    start, so everything the resumed model ends with must come from the checkpoint.
    """
    with pytest.raises(Killed):
        dies_at_step(method_cls, kill_at)(cfg).unlearn(make_model(), tok, FORGET, RETAIN, run, progress=False)
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == saved_at
    resumed = make_model(seed=1)
    summary = method_cls(cfg).unlearn(resumed, tok, FORGET, RETAIN, run, progress=False, resume=True)
    return resumed, summary


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    """Every parameter of `a` is close to the one of `b` in the same place (the models share an architecture)."""
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=atol), n


class Identity(Intervention):
    """Runs the model as is: only the wrapper's own plumbing is between the caller and the model."""

    kind = "identity"

    def run(self, wrapped, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep,
            output_hidden_states, inputs_embeds):
        return call_model(wrapped.base, logits_to_keep, input_ids=input_ids, inputs_embeds=inputs_embeds,
                          attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, use_cache=use_cache,
                          output_hidden_states=output_hidden_states)

    @classmethod
    def from_state(cls, config, tensors, model, tokenizer):
        return cls()


def memorised_weights(items: list[QAItem], steps: int = 40, lr: float = 1e-2) -> dict[str, torch.Tensor]:
    """The state dict of the tiny Llama (tests/conftest.py) fine-tuned on `items` until it knows their answers."""
    from obliviate.train.data import IGNORE, collate, encode_items
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    tok = build_tiny_tokenizer()
    model = make_tiny_llama().train()
    enc, _ = encode_items(tok, items)
    batch = collate(enc, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                                 ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
