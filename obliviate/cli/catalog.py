"""CLI commands `methods` and `metrics`: what obliviate offers."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from obliviate.cli.app import JsonOpt, app, console, print_json


@app.command()
def methods(name: Annotated[str | None, typer.Argument(help="show one method's config")] = None,
            as_json: JsonOpt = False) -> None:
    """List every unlearning method, or show one method's config fields."""
    from obliviate.config import describe_config
    from obliviate.methods import METHODS, get_method

    if name is None:
        rows = [{"name": m.name, "family": m.family, "data": "QA or text" if m.accepts_text else "QA",
                 "paper": m.paper, "summary": m.summary} for m in METHODS.values()]
        if as_json:
            return print_json(rows)
        table = Table("method", "family", "data", "paper", "what it does", title="unlearning methods")
        for r in rows:
            table.add_row(r["name"], r["family"], r["data"], r["paper"], r["summary"])
        return console.print(table)
    from obliviate.methods.defaults import paper_values

    cls = get_method(name)
    fields = describe_config(cls.Config)
    paper = paper_values(cls)
    if as_json:
        return print_json({"name": cls.name, "doc": cls.__module__, "fields": [
            {"name": f, "type": t, "default": d, "paper": repr(paper[f]) if f in paper else d, "help": h}
            for f, t, d, h in fields]})
    data = "QA items or text passages" if cls.accepts_text else "QA items"
    console.print(f"[bold]{cls.name}[/] ({cls.family}; trains on {data}): {cls.summary}\n{cls.paper}")
    table = Table("field", "type", "world default", "paper default", "help",
                  title=f"{cls.name} config (--set key=value; --defaults paper|world)")
    for f, t, d, h in fields:
        table.add_row(f, t, d, repr(paper[f]) if f in paper else d, h)
    console.print(table)


@app.command()
def metrics(as_json: JsonOpt = False) -> None:
    """List every metric with its direction."""
    from obliviate.metrics.registry import METRICS

    rows = [{"name": m.name, "higher_is_better": m.higher_is_better, "suite": m.suite,
             "description": m.description} for m in METRICS.values()]
    if as_json:
        return print_json(rows)
    arrow = {True: "↑", False: "↓", None: "target"}
    table = Table("metric", "better", "suite", "definition", title="metrics")
    for r in rows:
        table.add_row(r["name"], arrow[r["higher_is_better"]], r["suite"], r["description"])
    console.print(table)


