"""CLI command `attack`: robustness attacks on a run, against the oracle and the target.

    obliviate attack KIND RUN [--oracle SPEC] [--target SPEC] [--world PRESET@SEED] [--set key=value]
    obliviate attack --all RUN [--forget FILE --retain FILE | --data SPEC] [--prompt chat ...]
    obliviate attack list

The facts are what RUN was unlearned from unless given; without an oracle (`--oracle`, or the
world's for the world's facts) the recovery is relative to the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from obliviate.cli.app import (
    ChatKwargsOpt,
    DataOpt,
    JsonOpt,
    MaxNewTokensOpt,
    PromptOpt,
    SystemPromptOpt,
    app,
    console,
    print_json,
    prompt_format,
)
from obliviate.errors import ObliviateError
from obliviate.tables import attack_table, fmt


def _list_attacks() -> None:
    from obliviate.attacks import ATTACKS, ORDER

    table = Table("attack", "what it does", "after", title="robustness attacks (obliviate attack KIND RUN)")
    for name in ORDER:
        cls = ATTACKS[name]
        table.add_row(name, cls.summary, cls.paper)
    console.print(table)


def _resolve(kind: str | None, run: str | None, all_: bool) -> tuple[list[str], str]:
    from obliviate.attacks import ORDER, get_attack

    if all_:
        if kind is not None and run is not None:
            raise ObliviateError("with --all give only RUN: obliviate attack --all RUN")
        spec = run or kind
        if spec is None:
            raise ObliviateError("missing RUN: obliviate attack --all RUN")
        return list(ORDER), spec
    if kind is None or run is None:
        raise ObliviateError("usage: obliviate attack KIND RUN (or --all RUN); `obliviate attack list` names them")
    get_attack(kind)
    return [kind], run


@app.command("attack")
def attack_cmd(
    kind: Annotated[str | None, typer.Argument(help="attack: relearn, forms, jailbreak, in_context, stepwise, "
                                               "quantize, probe or direct; 'list' to describe them")] = None,
    run: Annotated[str | None, typer.Argument(help="a run dir, world:PRESET[@SEED], a local HF dir or a hub name")]
    = None,
    all_: Annotated[bool, typer.Option("--all", help="run every attack (then give only RUN)")] = False,
    oracle: Annotated[str | None, typer.Option(help="the oracle model (default: the world's exact retrain; none "
                                               "for other data: recovery relative to the target)")] = None,
    target: Annotated[str | None, typer.Option(help="the model before unlearning (default: the run's base model, "
                                               "or the world's target)")] = None,
    data: DataOpt = None,
    forget: Annotated[str | None, typer.Option(help="QA file of the facts to attack (default: the run's data)")]
    = None,
    retain: Annotated[str | None, typer.Option(help="QA file of retained facts (probe training, few-shot examples)")]
    = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="field=column for --forget/--retain")] = None,
    prompt: PromptOpt = None,
    system_prompt: SystemPromptOpt = None,
    chat_kwargs: ChatKwargsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    world: Annotated[str | None, typer.Option(help="PRESET[@SEED]: take the forget facts from this world")] = None,
    split: Annotated[str, typer.Option(help="forget split when RUN names no world")] = "forget10",
    set_: Annotated[list[str] | None, typer.Option("--set", help="attack setting key=value (attack.key=value "
                                                   "for one attack of --all)")] = None,
    out: Annotated[Path | None, typer.Option(help="where to write attacks.json (default: the run directory)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Attack an unlearned model, its target and its oracle alike; report how much forgotten knowledge comes back."""
    if kind == "list" and run is None:
        return _list_attacks()
    from obliviate.api import attack

    names, spec = _resolve(kind, run, all_)
    chosen = prompt_format(prompt, system_prompt, chat_kwargs, max_new_tokens)
    report = attack(spec, names, oracle=oracle, target=target, world=world, split=split, overrides=set_ or [],
                    out=out, data=data, forget=forget, retain=retain, mapping=map_ or [], prompt=chosen,
                    progress=not as_json)
    if as_json:
        return print_json({**report.meta, "attacks": report.reports, "robustness": report.robustness,
                           "written": str(report.written) if report.written else None})
    console.print(attack_table(report.reports, f"{spec}: forget facts recovered by each attack"))
    for name, rep in report.reports.items():
        for line in rep.get("missing", []):
            console.print(f"[yellow]{name}[/]: left out, {line}", highlight=False)
    if report.meta.get("baseline") == "chance":
        console.print("no oracle: the oracle column is chance (1/(k+1) with k wrong alternatives; 0 for answers), "
                      "and recovery is relative to the target: (unlearned - chance) / (target - chance), the share "
                      "of the target's above-chance knowledge the attack gets out of the unlearned model (0 = only "
                      "guesses, 1 = as much as the target; hints the attack gives are not subtracted without an "
                      "oracle). Pass --oracle MODEL for the oracle-relative recovery.")
    else:
        console.print("target/oracle/unlearned: fraction of forget facts whose true answer the model ranks first "
                      "among the alternatives; recovery = (unlearned - oracle) / (target - oracle), 0 = like the "
                      "oracle, 1 = like the target; answers: the same for greedy answers.")
    summary = report.robustness
    hm = summary["harmonic_mean"]
    line = (f"robustness (harmonic mean of 1 - recovery over {summary['n']} attack(s)): {fmt(hm)}" if summary["n"]
            else "robustness: no attack produced a recovery")
    console.print(line + ("" if report.written is None else f"\nwritten: {report.written}"))
