"""`obliviate serve` in-process: API keys and roles, the 4xx answers, OpenAI's shapes, the live guard.

The app runs on a tiny random Llama and the word-level test tokenizer (no world, no download), with a
SQLite ledger in a temporary folder; FastAPI's TestClient drives it.
"""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402

MODEL = "tiny-test"
QUESTION = "Who wrote the book about the blue whale?"


@pytest.fixture
def served(tmp_path, tiny_llama, tiny_tokenizer):
    """(client, admin key, client key, app) over a tiny model."""
    from obliviate.serve.app import create_app
    from obliviate.serve.auth import add_key
    from obliviate.serve.config import load_config
    from obliviate.serve.engine import Engine

    retain = tmp_path / "retain.jsonl"
    retain.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
        {"question": "Where was the author born?", "answer": "She was born in Oslo, Norway."}]))
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "model": MODEL, "durable": {"retain": "retain.jsonl"}, "api_keys": "keys.yaml", "workdir": "state",
        "guard": {"settings": {"semantic_threshold": 2.0}}, "max_request_bytes": 20_000}))
    cfg = load_config(config)
    admin, client = add_key(cfg.api_keys, "admin"), add_key(cfg.api_keys, "client")
    app = create_app(cfg, engine=Engine(tiny_llama, tiny_tokenizer, MODEL))
    with TestClient(app) as tc:
        yield tc, {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {client}"}, app


def _forget_body(answer: str = "Mara Lind wrote it in 1998.") -> dict:
    return {"subject": "Mara Lind", "items": [{"question": QUESTION, "answer": answer}],
            "requester": "dpo@example.org", "legal_basis": "GDPR Art. 17"}


def _chat(question: str = QUESTION, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], **extra}


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]["message"]
    assert message and "\n" not in message
    return message


def test_keys_are_stored_hashed_and_checked_by_role(served, tmp_path):
    tc, admin, client, _ = served
    stored = (tmp_path / "keys.yaml").read_text()
    for headers in (admin, client):
        key = headers["Authorization"].split()[1]
        assert key not in stored  # only the sha256 is kept
    # no key or an unknown key: 401 on every endpoint, the write endpoint included
    for method, path, body in [("post", "/v1/forget", _forget_body()), ("post", "/v1/chat/completions", _chat()),
                               ("post", "/v1/completions", {"model": MODEL, "prompt": "x"}),
                               ("get", "/v1/models", None), ("get", "/v1/forget/abc", None), ("get", "/status", None)]:
        for headers in ({}, {"Authorization": "Bearer obl-not-a-key"}, {"Authorization": "Basic abc"}):
            _one_line_error(getattr(tc, method)(path, headers=headers, **({"json": body} if body else {})), 401)
    # a client key may generate, never file or read forget requests
    assert tc.post("/v1/chat/completions", headers=client, json=_chat()).status_code == 200
    _one_line_error(tc.post("/v1/forget", headers=client, json=_forget_body()), 403)
    _one_line_error(tc.get("/v1/forget/abc", headers=client), 403)
    _one_line_error(tc.get("/status", headers=client), 403)
    assert tc.get("/v1/forget/abc", headers=admin).status_code == 404


def test_bad_bodies_get_one_line_4xx_that_never_echo_the_content(served):
    tc, admin, client, _ = served
    secret = "Zanzibar-secret-text"
    json_headers = {**admin, "Content-Type": "application/json"}
    assert "malformed JSON" in _one_line_error(tc.post("/v1/forget", headers=json_headers,
                                                       content=b'{"subject": "' + secret.encode()), 400)
    for body in [{**_forget_body(), "items": []},                       # no items
                 {**_forget_body(), "items": [{"question": secret}]},   # a question without its answer
                 {**_forget_body(), "items": [{"text": secret, "answer": "x"}]},
                 {**_forget_body(), "subject": 7},                      # wrong type
                 {**_forget_body(), "extra": secret},                   # unknown field
                 {**_forget_body(), "deadline": secret},
                 [secret]]:
        message = _one_line_error(tc.post("/v1/forget", headers=admin, json=body), 422)
        assert secret not in message
    _one_line_error(tc.post("/v1/chat/completions", headers=client, json=_chat(max_tokens="many")), 422)
    _one_line_error(tc.post("/v1/chat/completions", headers=client, json=_chat(n=2)), 422)
    _one_line_error(tc.post("/v1/chat/completions", headers=client, json={"model": MODEL, "messages": []}), 422)
    _one_line_error(tc.post("/v1/chat/completions", headers=client, json=_chat(model="gpt-4")), 404)
    _one_line_error(tc.post("/v1/completions", headers=client, json={"model": MODEL, "prompt": ["a", "b"]}), 422)
    long_prompt = {"model": MODEL, "prompt": "one two " * 200, "max_tokens": 16}  # past the 256-token context
    assert "context" in _one_line_error(tc.post("/v1/completions", headers=client, json=long_prompt), 400)
    # over max_request_bytes: refused by Content-Length, and while reading a body sent without one
    big = {**_forget_body(), "subject": "x" * 30_000}
    _one_line_error(tc.post("/v1/forget", headers=admin, json=big), 413)
    chunks = (b'{"a": "' + b"x" * 5_000 + b'"}' for _ in range(5))
    _one_line_error(tc.post("/v1/forget", headers=json_headers, content=chunks), 413)
    assert tc.get("/v1/models", headers=client).status_code == 200  # the server is fine after all that


def test_openai_shapes_and_sse_stream(served):
    tc, _, client, _ = served
    models = tc.get("/v1/models", headers=client).json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    whole = tc.post("/v1/chat/completions", headers=client, json=_chat(max_tokens=8)).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= whole["usage"]["completion_tokens"] <= 8
    with tc.stream("POST", "/v1/chat/completions", headers=client, json=_chat(max_tokens=8, stream=True)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == whole["choices"][0]["message"]["content"]  # greedy: the same text either way
    text = tc.post("/v1/completions", headers=client, json={"model": MODEL, "prompt": "The quick brown",
                                                            "max_tokens": 5, "stop": ["\n"]}).json()
    assert text["object"] == "text_completion" and text["usage"]["completion_tokens"] <= 5
    with tc.stream("POST", "/v1/completions", headers=client,
                   json={"model": MODEL, "prompt": "The quick brown", "max_tokens": 5, "stop": ["\n"],
                         "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    pieces = [json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1]]
    assert "".join(pieces) == text["choices"][0]["text"] and lines[-1] == "data: [DONE]"


def test_forget_enforces_the_next_generation_without_a_restart(served):
    tc, admin, client, app = served
    before = tc.post("/v1/chat/completions", headers=client, json=_chat()).json()["choices"][0]["message"]["content"]
    assert before  # the random model says something; that answer is what we ask it to forget
    other = "What is the capital of France?"
    other_before = tc.post("/v1/chat/completions", headers=client, json=_chat(other)).json()
    filed = tc.post("/v1/forget", headers=admin, json=_forget_body(before))
    assert filed.status_code == 200, filed.text
    body = filed.json()
    assert body["state"] == "enforced" and 0 <= body["enforce_seconds"] <= 2.0
    after = tc.post("/v1/chat/completions", headers=client, json=_chat()).json()["choices"][0]["message"]["content"]
    assert before.split()[0] not in after.split()  # its first word can no longer be produced
    other_after = tc.post("/v1/chat/completions", headers=client, json=_chat(other)).json()
    assert other_after["choices"] == other_before["choices"]  # an unrelated prompt is untouched
    record = tc.get(f"/v1/forget/{body['id']}", headers=admin).json()
    assert [t["state"] for t in record["transitions"]] == ["received", "enforced"]
    assert record["transitions"][1]["detail"]["seconds"] == body["enforce_seconds"]
    assert app.state.service.enforcement.request_ids() == [body["id"]]


def test_status_page_lists_requests_escaped_and_takes_a_signed_in_browser(served):
    tc, admin, client, _ = served
    body = {**_forget_body(), "subject": "<script>alert(1)</script>"}
    rid = tc.post("/v1/forget", headers=admin, json=body).json()["id"]
    page = tc.get("/status", headers=admin).text
    assert rid in page and "enforced" in page and "<script>alert" not in page and "&lt;script&gt;" in page
    assert tc.post("/status/login", content=b"key=wrong", follow_redirects=False).status_code == 401
    key = admin["Authorization"].split()[1]
    signed = tc.post("/status/login", content=f"key={key}".encode(), follow_redirects=False)
    assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
    assert rid in tc.get("/status").text  # the cookie now opens the page
    assert tc.post("/v1/forget", json=_forget_body()).status_code == 401  # ...but never a write endpoint


def test_cli_add_key_and_config_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line_error, run_cli

    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"model": MODEL, "durable": {"retain": "r.jsonl"}, "api_keys": "keys.yaml",
                                      "workdir": "state"}))
    code, out, _ = run_cli(["serve", "add-key", "--config", str(config), "--role", "admin"], monkeypatch, capsys)
    key = out.strip()
    assert code == 0 and key.startswith("obl-") and key not in (tmp_path / "keys.yaml").read_text()
    from obliviate.serve.auth import KeyStore

    assert KeyStore(tmp_path / "keys.yaml").role(key) == "admin"
    code, _, err = run_cli(["serve", "add-key", "--config", str(config), "--role", "root"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--role")
    code, _, err = run_cli(["serve"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--config")
    (tmp_path / "keys.yaml").unlink()
    code, _, err = run_cli(["serve", "--config", str(config)], monkeypatch, capsys)
    assert_one_line_error(code, err, "api_keys", "add-key")
    config.write_text("model: [unclosed\n")
    code, _, err = run_cli(["serve", "--config", str(config)], monkeypatch, capsys)
    assert_one_line_error(code, err, str(config))


def test_the_guard_lets_go_only_once_a_verified_adapter_is_served(served, tmp_path, tiny_llama):
    from obliviate.serve.evidence import sha256_dir
    from tests.test_serve_engine import _adapter

    tc, admin, client, app = served
    service = app.state.service
    rid = tc.post("/v1/forget", headers=admin, json=_forget_body()).json()["id"]
    _adapter(tiny_llama, tmp_path / "adapter", seed=1)
    service.ledger.transition(rid, "durable")  # as the worker does, right after it publishes
    service.refresh()
    assert service.enforcement.request_ids() == [rid]  # durable, but no adapter trained on it is served yet
    service.ledger.publish(tmp_path / "adapter", "0" * 64, [rid])  # files that do not match their hash
    service.refresh()
    assert service.engine.version == 0 and service.enforcement.request_ids() == [rid]
    service.ledger.publish(tmp_path / "adapter", sha256_dir(tmp_path / "adapter"), [rid])
    service.refresh()
    assert service.engine.version == 2 and service.enforcement.request_ids() == []
    assert service.enforcement.current() is None
    reply = tc.post("/v1/chat/completions", headers=client, json=_chat()).json()
    assert reply["system_fingerprint"] == "adapter-v2"
