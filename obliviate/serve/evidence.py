"""The evidence of a forget request: a JSON file and a self-contained HTML page under `workdir/evidence/`.

The evidence says what was asked (hashes of the subject and items, the requester, the legal basis), what
was done (the method and its resolved config, hashes of the training data, the adapter and the base
model) and what it achieved (the gate scores before and after, each gate's verdict, the attacks'
recovery). It holds hashes, never the texts, unless the deployment sets `store_texts`.

The HTML page has no external assets (inline CSS, no scripts) and escapes every value it shows.
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path
from typing import Any

from obliviate.io import atomic_open, write_json
from obliviate.serve.chain import canonical, sha256_text


def sha256_items(rows: list[dict[str, Any]]) -> str:
    """The sha256 of a data set: its rows as canonical JSON, in order."""
    return sha256_text(canonical({"rows": rows}))


def sha256_dir(path: str | Path) -> str:
    """The sha256 of a directory's files: each relative path and its bytes' sha256, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(_file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_state_dict(model) -> str:
    """The sha256 of a model's weights: each tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def write_evidence(workdir: Path, request_id: str, evidence: dict[str, Any]) -> tuple[Path, Path]:
    """Write `evidence/<id>.json` and `evidence/<id>.html` atomically; returns both paths."""
    folder = Path(workdir) / "evidence"
    json_path, html_path = folder / f"{request_id}.json", folder / f"{request_id}.html"
    write_json(json_path, evidence)
    with atomic_open(html_path) as handle:
        handle.write(render_html(evidence))
    return json_path, html_path


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#1d2330;padding:0 1rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{border:1px solid #d5d9e0;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}code{font-size:.85em;word-break:break-all}
.pass{color:#116b2d;font-weight:600}.fail{color:#a3161b;font-weight:600}.na{color:#6b7280}
.state{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#eef1f6}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.85em}
"""


def _e(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v if isinstance(v, _Raw) else _e(v)}</td></tr>" for k, v in pairs)


class _Raw(str):
    """Already-escaped HTML."""


def _code(value: Any) -> _Raw:
    return _Raw(f"<code>{_e(value)}</code>")


def _verdict(passed: bool | None) -> _Raw:
    if passed is None:
        return _Raw('<span class="na">not applicable</span>')
    return _Raw('<span class="pass">pass</span>' if passed else '<span class="fail">fail</span>')


def render_html(evidence: dict[str, Any]) -> str:
    """The evidence as one HTML page: no scripts, no external assets, every value escaped."""
    request = evidence.get("request", {})
    state = evidence.get("state")
    parts = [f"<h1>Forget request <code>{_e(evidence.get('request_id'))}</code></h1>",
             f'<p>State: <span class="state" id="state">{_e(state)}</span>'
             + (f" · published as model version {_e(evidence.get('published_version'))}"
                if evidence.get("published_version") is not None else "") + "</p>",
             "<h2>Request</h2><table>",
             _rows([("requester", request.get("requester")), ("legal basis", request.get("legal_basis")),
                    ("filed", request.get("filed_at")), ("deadline", request.get("deadline")),
                    ("subject sha256", _code(request.get("subject_sha256"))),
                    ("items", len(evidence.get("items", [])))]),
             "</table>"]
    gates = evidence.get("gates", {})
    parts.append(f"<h2>Gates: {_verdict(gates.get('passed'))}</h2><table><tr><th>gate</th><th>before (live)</th>"
                 "<th>after (candidate)</th><th>held to the bound</th><th>bound</th><th>verdict</th></tr>")
    for check in gates.get("checks", []):
        parts.append(f"<tr><td>{_e(check.get('gate'))}</td><td>{_e(check.get('before'))}</td>"
                     f"<td>{_e(check.get('after'))}</td><td>{_e(check.get('value'))}</td>"
                     f"<td>{_e(check.get('limit'))}</td>"
                     f"<td>{_verdict(check.get('passed'))}</td></tr>")
    parts.append("</table>")
    metrics = evidence.get("metrics", {})
    before, after = metrics.get("before", {}), metrics.get("after", {})
    parts.append("<h2>Scores</h2><table><tr><th>metric</th><th>before (live)</th><th>after (candidate)</th></tr>")
    for name in sorted({*before, *after}):
        parts.append(f"<tr><td>{_e(name)}</td><td>{_e(before.get(name))}</td><td>{_e(after.get(name))}</td></tr>")
    parts.append("</table>")
    attacks = evidence.get("attacks") or {}
    if attacks:
        parts.append("<h2>Attacks</h2><table><tr><th>attack</th><th>recovery</th></tr>")
        parts += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in sorted(attacks.items())]
        parts.append("</table>")
    method, hashes = evidence.get("method", {}), evidence.get("hashes", {})
    parts.append("<h2>Method</h2><table>")
    parts.append(_rows([("method", method.get("name")), ("LoRA", method.get("lora")),
                        ("attempt", evidence.get("attempt")), ("worker", evidence.get("worker"))]))
    parts.append("</table><pre>" + _e(json.dumps(method.get("config", {}), indent=2, sort_keys=True)) + "</pre>")
    parts.append("<h2>Hashes (sha256)</h2><table>")
    parts.append(_rows([(k, _code(v)) for k, v in sorted(hashes.items())]))
    parts.append("</table><h2>Items (sha256)</h2><table><tr><th>#</th><th>kind</th><th>sha256</th>"
                 + ("<th>text</th>" if any("text" in it or "question" in it for it in evidence.get("items", []))
                    else "") + "</tr>")
    for i, item in enumerate(evidence.get("items", [])):
        shown = " ".join(str(item[k]) for k in ("question", "answer", "text") if item.get(k))
        parts.append(f"<tr><td>{i}</td><td>{_e(item.get('kind'))}</td><td>{_code(item.get('sha256'))}</td>"
                     + (f"<td>{_e(shown)}</td>" if shown else "") + "</tr>")
    parts.append("</table>")
    if evidence.get("error"):
        parts.append(f"<h2>Error</h2><p>{_e(evidence['error'])}</p>")
    title = f"Evidence: forget request {evidence.get('request_id', '')}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
