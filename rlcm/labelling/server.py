"""Serving the labelling page: in the foreground (`rlcm label`) or in a thread beside a running `rlcm train`."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import uvicorn
from pydantic import SecretStr

from rlcm.labelling.app import LabelSettings, create_app, token_from_env
from rlcm.runs.judgements import JudgementStore

START_TIMEOUT_S = 30.0


def resolve_token(token: str | None) -> tuple[SecretStr, bool]:
    """The token given, else $RLCM_LABEL_TOKEN, else a fresh random one; and whether it was generated."""
    if token:
        return SecretStr(token), False
    from_env = token_from_env()
    if from_env is not None:
        return from_env, False
    return SecretStr(secrets.token_urlsafe(24)), True


def page_url(host: str, port: int, token: SecretStr | None) -> str:
    """The address to open: the token in the query, so the page sends it with every call."""
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "") else host
    url = f"http://{shown}:{port}/"
    return url + (f"?token={quote(token.get_secret_value())}" if token is not None else "")


def _server(
    run_dir: Path, host: str, port: int, token: SecretStr | None, staleness: int | None, repeat_fraction: float
) -> uvicorn.Server:
    store = JudgementStore(run_dir, staleness=staleness, repeat_fraction=repeat_fraction)
    app = create_app(store, LabelSettings(token=token))
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))


def serve(
    run_dir: Path, host: str, port: int, token: str | None, staleness: int | None, repeat_fraction: float = 0.1
) -> None:
    """Serve the page of `run_dir`'s judgements until interrupted; prints the address to open. `repeat_fraction` of
    the judged pairs are offered once more, to another labeller (`JudgementStore`)."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder; pass the --output-dir of an `rlcm train` run")
    secret, generated = resolve_token(token)
    server = _server(Path(run_dir), host, port, secret, staleness, repeat_fraction)
    note = " (a fresh token: pass --token or set $RLCM_LABEL_TOKEN to keep one)" if generated else ""
    print(f"rlcm label: judging pairs of {run_dir}; open {page_url(host, port, secret)}{note}", flush=True)
    server.run()


@dataclass
class LabelServer:
    """A labelling page running in a daemon thread; `stop()` ends it."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8010,
    token: str | None = None,
    staleness: int | None = None,
    repeat_fraction: float = 0.1,
) -> LabelServer:
    """Start the page of `run_dir` in a daemon thread (beside `rlcm train`) and return once it accepts connections.

    `token` and `repeat_fraction` as for `rlcm label` (token None: $RLCM_LABEL_TOKEN, else a random one, in `.url`);
    port 0 picks a free port.
    """
    secret, _ = resolve_token(token)
    server = _server(Path(run_dir), host, port, secret, staleness, repeat_fraction)
    thread = threading.Thread(target=server.run, name="rlcm-label", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the labelling page did not start on {host}:{port} (is the port in use?)")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return LabelServer(server, thread, page_url(host, bound, secret))
