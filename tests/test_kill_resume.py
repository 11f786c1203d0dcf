"""kill -9, then `unlearn --resume`: the final weights and train_log.jsonl are those of a run never killed.

Each scenario runs `obliviate unlearn` in a real child process that sends itself SIGKILL at one point of
the run (no handler, no cleanup: what a crash or an OOM kill leaves): early in training (before any
checkpoint), mid-run (after one), while a checkpoint is being written, between the checkpoint's two
renames, and while the final weights are being saved. The run is then resumed in this process.

A tiny Llama, 4 forget items, batch 2, 8 steps and a checkpoint every 2 steps keep each child to a
few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FORGET, run_cli

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 8, 2

# The child: patch one place to SIGKILL the process on its n-th call, then run the command line.
CHILD = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = 0

def hit():
    global calls
    calls += 1
    return calls == nth

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "loss":  # the n-th micro-batch's loss: a kill in the middle of training
    from obliviate.methods import get_method
    cls = get_method("ga")
    compute = cls.compute_loss
    def compute_loss(self, model, batch):
        if hit():
            die()
        return compute(self, model, batch)
    cls.compute_loss = compute_loss
elif point == "checkpoint-write":  # half of the n-th checkpoint's state.pt written
    import io
    save = torch.save
    def torch_save(obj, f, *args, **kwargs):
        if not hit():
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        die()
    torch.save = torch_save
elif point == "rename":  # the n-th checkpoint moved aside as .checkpoint.old, its successor not yet in place
    import pathlib
    rename = pathlib.Path.rename
    def path_rename(self, target):
        if self.name == ".checkpoint.tmp" and hit():
            die()
        return rename(self, target)
    pathlib.Path.rename = path_rename
elif point == "final-save":  # the final weights written, not yet moved into place
    import transformers
    save_pretrained = transformers.PreTrainedModel.save_pretrained
    def save(self, *args, **kwargs):
        save_pretrained(self, *args, **kwargs)
        die()
    transformers.PreTrainedModel.save_pretrained = save

from obliviate.cli import main
sys.argv = ["obliviate", *argv]
main()
"""

SCENARIOS = {  # name: (patched point, n-th call)
    "early": ("loss", 2),  # in step 2, before the first checkpoint
    "mid-run": ("loss", 6),  # in step 6, after the step-4 checkpoint
    "checkpoint-write": ("checkpoint-write", 2),  # writing the step-4 checkpoint
    "between-renames": ("rename", 2),  # step-2 checkpoint in .checkpoint.old, step-4 one in .checkpoint.tmp
    "final-save": ("final-save", 1),  # after the last step, saving the final weights
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(a saved tiny model, a forget set in its vocabulary)."""
    from obliviate.models.loading import save_model
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    root = tmp_path_factory.mktemp("kill")
    model = save_model(make_tiny_llama(), build_tiny_tokenizer(), root / "model")
    forget = root / "forget.jsonl"
    forget.write_text("".join(json.dumps({"question": it.question, "answer": it.answer}) + "\n" for it in FORGET))
    return model, forget


def _args(inputs: tuple[Path, Path], out: Path) -> list[str]:
    model, forget = inputs
    return ["unlearn", "--method", "ga", "--model", str(model), "--forget", str(forget), "--out", str(out),
            "--device", "cpu", "--set", f"max_steps={STEPS}", "--set", f"save_every={SAVE_EVERY}",
            "--set", "batch_size=2", "--set", "grad_accum=1", "--set", "lr=1e-3", "--json"]


def _outcome(run: Path) -> tuple[dict[str, torch.Tensor], str]:
    return load_file(run / "model" / "model.safetensors"), (run / "train_log.jsonl").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> tuple[dict[str, torch.Tensor], str]:
    """The weights and train log of the same run, never killed (in this process)."""
    from obliviate.cli import main

    run = tmp_path_factory.mktemp("whole") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["obliviate", *_args(inputs, run)])
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
    return _outcome(run)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_then_resume_matches_an_uninterrupted_run(scenario, inputs, uninterrupted, tmp_path, monkeypatch,
                                                       capsys):
    point, nth = SCENARIOS[scenario]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", CHILD, point, str(nth), *_args(inputs, run)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert not (run / "artifact.json").exists()  # killed before the run was complete
    code, _, err = run_cli([*_args(inputs, run), "--resume"], monkeypatch, capsys)
    assert code == 0, err
    weights, log = _outcome(run)
    want_weights, want_log = uninterrupted
    assert log == want_log
    assert weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        assert torch.equal(weights[name], tensor), name
    leftovers = {p.name for p in run.iterdir()} & {"checkpoint", ".checkpoint.tmp", ".checkpoint.old"}
    assert not leftovers, leftovers


def _stopped_run(inputs, run: Path, monkeypatch, capsys) -> None:
    """A run stopped in step 5 (an exception in place of the kill), its step-4 checkpoint left."""
    import obliviate.methods
    from tests.helpers import Killed, dies_at_step

    dying = dies_at_step(obliviate.methods.get_method("ga"), 5)
    monkeypatch.setattr(obliviate.methods, "get_method", lambda name: dying)
    with pytest.raises(Killed):
        run_cli(_args(inputs, run), monkeypatch, capsys)
    monkeypatch.undo()
    assert json.loads((run / "checkpoint" / "progress.json").read_text())["step"] == 4


def test_resume_with_another_config_names_the_fields_then_force_resumes(inputs, tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line_error

    run = tmp_path / "run"
    _stopped_run(inputs, run, monkeypatch, capsys)
    changed = [*_args(inputs, run), "--resume", "--set", "lr=2e-3", "--set", "seed=3"]
    code, _, err = run_cli(changed, monkeypatch, capsys)
    assert_one_line_error(code, err, str(run / "checkpoint"), "lr (0.001 in the checkpoint, 0.002 now)",
                          "seed (0 in the checkpoint, 3 now)", "--force")
    assert (run / "checkpoint" / "progress.json").is_file()  # nothing lost: resumable as it was
    code, out, err = run_cli([*changed, "--force"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["resumed_from"] == 4


def test_a_damaged_checkpoint_or_torn_log_line(inputs, tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line_error

    run = tmp_path / "run"
    _stopped_run(inputs, run, monkeypatch, capsys)
    with open(run / "train_log.jsonl", "a") as handle:
        handle.write('{"step": 6, "lo')  # the line a kill tore
    state = run / "checkpoint" / "state.pt"
    intact = state.read_bytes()
    state.write_bytes(intact[: len(intact) // 2])
    code, _, err = run_cli([*_args(inputs, run), "--resume"], monkeypatch, capsys)
    assert_one_line_error(code, err, str(state), "damaged")
    state.write_bytes(intact)
    code, _, err = run_cli([*_args(inputs, run), "--resume"], monkeypatch, capsys)
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
