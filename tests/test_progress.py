"""Progress and console output: plain progress lines when the output is not a terminal, the model or
run name on every bar, a display per set and phase in evaluation, `--version`, and the known-harmless
library warnings filtered while real ones are kept."""

from __future__ import annotations

import io
import warnings

import pytest
from rich.console import Console

from obliviate.cli import HARMLESS_WARNINGS, quiet_harmless_warnings
from obliviate.progress import PlainProgress, make_progress
from tests.helpers import run_cli


def test_plain_progress_prints_lines_with_the_label():
    stream = io.StringIO()
    bar = PlainProgress("runs/gd · graddiff", interval=0, stream=stream)
    with bar:
        task = bar.add_task("train", total=4, loss="")
        for step in range(4):
            bar.update(task, advance=1, loss=f"loss {1.0 / (step + 1):.3f}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("runs/gd · graddiff: 1/4 (25%) · loss 1.000")
    assert lines[-1].startswith("runs/gd · graddiff: 4/4 (100%)") and "elapsed" in lines[-1]
    assert all(line.strip() for line in lines)  # never a blank line


def test_plain_progress_prints_every_few_seconds_only():
    stream = io.StringIO()
    bar = PlainProgress("world", interval=3600, stream=stream)
    task = bar.add_task("tiny/seed0: target", total=1000)
    for _ in range(999):
        bar.advance(task)
    assert len(stream.getvalue().splitlines()) == 1  # the first update only, nothing for an hour
    bar.advance(task)
    assert stream.getvalue().splitlines()[-1].startswith("world · tiny/seed0: target: 1000/1000 (100%)")


def test_make_progress_is_plain_when_not_a_terminal():
    assert isinstance(make_progress(console=Console(file=io.StringIO())), PlainProgress)
    assert not isinstance(make_progress(console=Console(file=io.StringIO(), force_terminal=True)), PlainProgress)


def test_world_training_bar_is_plain_under_a_pipe(monkeypatch):
    from obliviate.world.train import _progress_bar

    monkeypatch.setattr("obliviate.progress.is_terminal", lambda console=None: False)
    assert isinstance(_progress_bar(True), PlainProgress)


def test_eval_shows_each_set_and_phase_with_the_name(tiny_llama, tiny_tokenizer, monkeypatch, capsys):
    from obliviate.data.schema import QAItem
    from obliviate.evals.qa import run_qa_suite
    from tests.helpers import FORGET, RETAIN

    def scored(items):  # with a paraphrase and perturbed answers, so every utility component has a value
        return [QAItem(it.question, it.answer, it.answer, ["The capital of France is Rome."]) for it in items]

    monkeypatch.setenv("OBLIVIATE_PROGRESS_SECONDS", "0")
    monkeypatch.setattr("obliviate.progress.is_terminal", lambda console=None: False)
    run_qa_suite(tiny_llama, tiny_tokenizer, scored(FORGET), scored(RETAIN), holdout=scored(RETAIN), progress=True,
                 name="runs/gd", max_new_tokens=2)
    err = capsys.readouterr().err
    for fragment in ("runs/gd · forget · scoring", "runs/gd · forget · generation", "runs/gd · retain · scoring",
                     "runs/gd · holdout · scoring"):
        assert fragment in err, err
    assert "holdout · generation" not in err  # the holdout set is only scored
    assert all(line.startswith("runs/gd") for line in err.splitlines())


def test_version_names_torch_transformers_and_the_device(monkeypatch, capsys):
    code, out, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("obliviate ") and lines[1].startswith("torch ")
    assert lines[2].startswith("transformers ") and lines[3].startswith("device ")


def test_known_harmless_warnings_are_filtered_and_real_ones_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_harmless_warnings()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                      "`is_activation_checkpointing` instead.", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)  # another category
        warnings.warn("the learning rate schedule will change in the next release", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "learning rate" in messages[1]
    assert all(isinstance(pattern, str) for _, pattern in HARMLESS_WARNINGS)


@pytest.mark.parametrize("name", ["train", ""])
def test_a_bare_description_shows_the_label_alone(name):
    stream = io.StringIO()
    bar = PlainProgress("runs/x · ga", interval=0, stream=stream)
    bar.update(bar.add_task(name, total=2), advance=2)
    assert stream.getvalue().startswith("runs/x · ga: 2/2")
