"""CLI commands `serve` and `serve add-key`: the forget-request service (docs/serve.md)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from obliviate.cli.app import app, console

serve_app = typer.Typer(help="Serve a model behind an OpenAI-compatible API that takes forget requests "
                             "(docs/serve.md).")
app.add_typer(serve_app, name="serve")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="the deployment's YAML config "
                                                                  "(examples/serve-world.yaml)")]


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    """Linux: the worker gets SIGTERM when the server process dies, even by SIGKILL, so none is orphaned."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerSupervisor:
    """One `obliviate worker` subprocess, started again (after `backoff` seconds) whenever it dies."""

    def __init__(self, config: Path, backoff: float = 2.0) -> None:
        self.command = [sys.executable, "-m", "obliviate", "worker", "--config", str(config)]
        self.backoff = backoff
        self.stop = threading.Event()
        self.process: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            kwargs = {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}
            self.process = subprocess.Popen(self.command, **kwargs)
            code = self.process.wait()
            if not self.stop.is_set():
                console.print(f"worker exited with code {code}; starting it again", highlight=False)
                self.stop.wait(self.backoff)

    def close(self) -> None:
        self.stop.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@serve_app.callback(invoke_without_command=True)
def serve(ctx: typer.Context, config: ConfigOpt = None,
          no_worker: Annotated[bool, typer.Option("--no-worker", help="do not start a worker (run "
                                                                      "`obliviate worker` elsewhere)")] = False,
          host: Annotated[str | None, typer.Option(help="address to listen on (default: the config's)")] = None,
          port: Annotated[int | None, typer.Option(help="port to listen on (default: the config's)")] = None) -> None:
    """Serve the config's model (OpenAI-compatible API, forget requests, status page) and run a worker."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from obliviate.errors import ConfigError
    from obliviate.serve.app import create_app
    from obliviate.serve.config import load_config

    if config is None:
        raise ConfigError("serve: give --config FILE (see examples/serve-world.yaml)")
    cfg = load_config(config)
    if not cfg.api_keys.is_file():
        raise ConfigError(f"{config}: api_keys {cfg.api_keys} does not exist; make a key with "
                          f"obliviate serve add-key --config {config} --role admin")
    supervisor = None if no_worker else WorkerSupervisor(config)
    if supervisor is not None:
        supervisor.start()
    try:
        uvicorn.run(create_app(cfg), host=host or cfg.host, port=cfg.port if port is None else port,
                    log_level="info", access_log=True)
    finally:
        if supervisor is not None:
            supervisor.close()


@serve_app.command("add-key")
def add_key_command(config: ConfigOpt = None,
                    role: Annotated[str, typer.Option(help="admin (files forget requests) or client "
                                                           "(generates only)")] = "client",
                    name: Annotated[str | None, typer.Option(help="a label stored beside the hash")] = None) -> None:
    """Make an API key, store its sha256 in the config's keys file and print the key (shown only this once)."""
    from obliviate.errors import ConfigError
    from obliviate.serve.auth import add_key
    from obliviate.serve.config import load_config

    if config is None:
        raise ConfigError("serve add-key: give --config FILE")
    cfg = load_config(config)
    typer.echo(add_key(cfg.api_keys, role, name))
