"""The forget-request service: a ledger of deletion requests, a worker that unlearns them durably, the gates a
candidate must pass and the evidence it leaves.

- `config`: the deployment's one config file (`load_config`).
- `ledger`: requests, their items, transitions, the job queue and the published adapters (SQLAlchemy; SQLite
  in WAL mode or PostgreSQL), every change an entry of a hash chain (`chain`).
- `gates`, `evidence`, `worker`: the background side (claim a job, unlearn, check the gates, write the
  evidence, publish or leave it for review).
"""
