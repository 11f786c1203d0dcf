"""The forget-request service (`obliviate serve`, docs/serve.md).

A ledger of deletion requests, a worker that unlearns them durably, the gates a
candidate must pass and the evidence it leaves.

- `config`: the deployment's one config file (`load_config`).
- `ledger`: requests, their items, transitions, the job queue and the published adapters (SQLAlchemy; SQLite
  in WAL mode or PostgreSQL), every change an entry of a hash chain (`chain`).
- `gates`, `evidence`, `worker`: the background side (claim a job, unlearn, check the gates, write the
  evidence, publish or leave it for review).
- `app`, `openai_api`, `auth`, `status`: the HTTP side (FastAPI): OpenAI-compatible generation, `POST /v1/forget`,
  API keys with roles, the status and evidence pages.
- `engine`, `enforcement`: the served model (generation, adapter hot-swap) and the live guard that enforces a
  request before its adapter is served.
"""
