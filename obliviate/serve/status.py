"""The status page: the forget requests, their states and links to their evidence, rendered on the server.

`GET /status` (admin) is one self-contained HTML page (no script, no external resource): the model
and adapter version served, the number of requests the guard holds, and a table of every request,
newest first, with its state, when it was filed, its deadline, the time it took to enforce and a
link to its evidence page once the worker has written one. A browser, which cannot send a bearer
header, signs in once through the form on `GET /status/login`: the key is checked and kept in an
HttpOnly, SameSite=Strict cookie that only these read-only pages accept.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from obliviate.serve.auth import bearer

router = APIRouter()
COOKIE = "obliviate_key"
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1d2330;padding:0 1rem}
h1{font-size:1.4rem;margin:0 0 .2rem} p.meta{color:#5b6475;margin:.1rem 0 1.2rem}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e3e6ec}
th{background:#f4f6f9;font-weight:600} td.id{font-family:ui-monospace,monospace;font-size:.85em}
.state{display:inline-block;padding:.05rem .5rem;border-radius:.8rem;font-size:.85em;background:#eef0f4}
.state-durable{background:#d9f2e1;color:#125c2c} .state-needs_review{background:#fde2e1;color:#8a1c17}
.state-enforced,.state-received{background:#fff3cd;color:#6b5000}
.state-unlearning,.state-verifying{background:#dde9fb;color:#173f80}
form{display:flex;gap:.5rem} input{flex:1;padding:.4rem;font:inherit}
"""


def page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body>{body}</body></html>')


def _enforce_seconds(record) -> str:
    for t in record.transitions:
        if t.state == "enforced" and isinstance(t.detail.get("seconds"), int | float):
            return f"{t.detail['seconds']:.3f} s"
    return "—"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_status(service) -> str:
    """The status page of `service` (module docstring)."""
    from obliviate.serve.openai_api import evidence_path

    records = service.ledger.requests()
    rows = []
    for r in records:
        filed = r.transitions[0].at if r.transitions else None
        link = (f'<a href="/status/evidence/{html.escape(r.id)}">evidence</a>'
                if evidence_path(service, r.id) else "—")
        rows.append(f'<tr data-state="{html.escape(r.state)}"><td class="id">{html.escape(r.id)}</td>'
                    f"<td>{html.escape(r.subject)}</td><td>{html.escape(r.requester)}</td>"
                    f"<td>{html.escape(r.legal_basis)}</td>"
                    f'<td><span class="state state-{html.escape(r.state)}">{html.escape(r.state)}</span></td>'
                    f"<td>{_when(filed)}</td><td>{_when(r.deadline)}</td><td>{_enforce_seconds(r)}</td>"
                    f"<td>{link}</td></tr>")
    table = ('<table id="requests"><thead><tr><th>id</th><th>subject</th><th>requester</th><th>legal basis</th>'
             "<th>state</th><th>filed</th><th>deadline</th><th>enforced in</th><th>evidence</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>" if rows else '<p id="requests">No forget requests yet.</p>')
    engine = service.engine
    served = f"adapter version {engine.version}" if engine.version else "the base model"
    meta = (f'<p class="meta">model <b>{html.escape(engine.name)}</b> · serving {served} · '
            f"guard <b>{html.escape(service.config.guard.method)}</b> holding "
            f"{len(service.enforcement.request_ids())} request(s) · {len(records)} request(s) in the ledger</p>")
    return page("obliviate serve: forget requests", f"<h1>Forget requests</h1>{meta}{table}")


def _admin_page(request: Request) -> None:
    """Admin by bearer key or by the sign-in cookie (read-only pages only)."""
    keys = request.app.state.service.keys
    role = keys.role(bearer(request.headers.get("authorization")) or request.cookies.get(COOKIE))
    if role is None:
        raise HTTPException(401, "sign in at /status/login, or send Authorization: Bearer KEY")
    if role != "admin":
        raise HTTPException(403, "the status page needs an admin key")


@router.get("/status", response_class=HTMLResponse)
def status(request: Request) -> HTMLResponse:
    _admin_page(request)
    return HTMLResponse(render_status(request.app.state.service))


@router.get("/status/evidence/{request_id}", response_class=HTMLResponse)
def status_evidence(request_id: str, request: Request) -> Response:
    """The evidence page for a browser signed in by cookie (the same file as /v1/forget/{id}/evidence)."""
    from fastapi.responses import FileResponse

    from obliviate.serve.openai_api import evidence_path

    _admin_page(request)
    path = evidence_path(request.app.state.service, request_id)
    if path is None:
        raise HTTPException(404, "no evidence page for that request (yet)")
    return FileResponse(path, media_type="text/html")


@router.get("/status/login", response_class=HTMLResponse)
def login_form() -> HTMLResponse:
    form = ('<h1>Sign in</h1><form method="post" action="/status/login">'
            '<input type="password" name="key" placeholder="admin API key" autocomplete="off">'
            "<button>Sign in</button></form>")
    return HTMLResponse(page("obliviate serve: sign in", form))


@router.post("/status/login")
async def login(request: Request) -> Response:
    key = (parse_qs((await request.body()).decode("utf-8", "replace")).get("key") or [""])[0]
    if request.app.state.service.keys.role(key) != "admin":
        raise HTTPException(401, "not an admin key")
    response = RedirectResponse("/status", status_code=303)
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


__all__ = ["router", "render_status"]
