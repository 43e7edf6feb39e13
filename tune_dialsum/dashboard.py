"""A live view of an experiment in the browser: optuna-dashboard on its Optuna studies, on loopback only.

An experiment holds two studies, each in its own SQLite file: the training search's
(``optuna.db``) and the decoding stage's (``decoding.db``, which appears once that stage starts).
Each gets its own optuna-dashboard on 127.0.0.1, side by side on two ports; the decoding one says
"not yet" until its study exists, then serves it without a restart. optuna-dashboard reads the
database on every request, so the pages follow a search while it runs. An experiment kept at a URI
is read from this machine's copy, as it was when the command started (its driver writes the studies
locally and uploads them as it goes).

optuna-dashboard is an optional extra (``pip install 'tune_dialsum[dashboard]'``).
"""

from __future__ import annotations

import html
import logging
import socketserver
import threading
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tune_dialsum.contract import DECODING_DB, OPTUNA_DB
from tune_dialsum.errors import UsageError
from tune_dialsum.storage import ExperimentStore

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"  # never beyond this machine
# optuna-dashboard can write notes, tell trials and delete studies, with no authentication: here it only
# reads. A page elsewhere that a browser on this host opens could send it requests (DNS rebinding gives
# them a Host of the attacker's name), so only the methods that read and only loopback Host names pass.
READ_METHODS = ("GET", "HEAD")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
STUDIES = (("training", OPTUNA_DB), ("decoding", DECODING_DB))
# what a page says while its study does not exist yet
NOT_YET = {
    "training": "the search creates it as its first trial starts (a tune-decoding directory has none)",
    "decoding": "the decoding stage starts after the search's trials",
}


@dataclass
class Dashboard:
    """One served study: what it shows, where, and the server (stopped by :meth:`close`)."""

    label: str
    database: Path
    url: str
    server: WSGIServer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def study_databases(location: str | Path) -> dict[str, Path]:
    """The study files of an experiment (or of a ``tune-decoding`` output directory), by label."""
    directory = ExperimentStore(str(location)).pull(checkpoint_files=())  # a URI: this machine's copy
    databases = {label: directory / name for label, name in STUDIES}
    if not any(path.is_file() for path in databases.values()) and not (directory / "space.yaml").is_file():
        raise UsageError(
            f"{location}: no Optuna study here ({OPTUNA_DB} or {DECODING_DB}); pass an experiment directory "
            "(<storage-path>/<name>) or a tune-decoding --out directory"
        )
    return databases


def start_dashboards(location: str | Path, port: int = 8080) -> list[Dashboard]:
    """Serve each study of ``location`` on 127.0.0.1 (``port``, ``port + 1``; 0 picks free ports), in threads."""
    dashboard_app = _require_optuna_dashboard()
    dashboards = []
    for offset, (label, database) in enumerate(study_databases(location).items()):
        wanted = port + offset if port else 0
        try:
            app = _StudyApp(database, dashboard_app, NOT_YET[label])
            server = make_server(LOOPBACK, wanted, app, _ThreadingServer, _QuietHandler)
        except OSError as error:
            for running in dashboards:
                running.close()
            raise UsageError(
                f"dashboard: cannot listen on {LOOPBACK}:{wanted} ({error.strerror}); pass --port N for another "
                "port (0 picks free ones)"
            ) from None
        url = f"http://{LOOPBACK}:{server.server_port}/dashboard/"
        threading.Thread(target=server.serve_forever, name=f"dashboard-{label}", daemon=True).start()
        dashboards.append(Dashboard(label, database, url, server))
    return dashboards


class _StudyApp:
    """optuna-dashboard's WSGI app for one study file, made once the file exists."""

    def __init__(self, database: Path, dashboard_app, not_yet: str) -> None:
        self.database, self.dashboard_app, self.not_yet, self.app = database, dashboard_app, not_yet, None
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        refusal = _refusal(environ)
        if refusal is not None:
            status, reason = refusal
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [reason.encode()]
        with self.lock:
            if self.app is None and self.database.is_file():
                self.app = self.dashboard_app(f"sqlite:///{self.database}")
        if self.app is not None:
            return self.app(environ, start_response)
        body = (
            f"<!doctype html><title>not yet</title><p>No study in {html.escape(str(self.database))} yet: "
            f"{self.not_yet}. This page serves it once it exists; reload then.</p>"
        ).encode()
        start_response("503 Service Unavailable", [("Content-Type", "text/html; charset=utf-8")])
        return [body]


def _refusal(environ) -> tuple[str, str] | None:
    """(status, reason) for a request the read-only dashboard does not serve; None for one it does."""
    if environ.get("REQUEST_METHOD", "GET") not in READ_METHODS:
        return "405 Method Not Allowed", "this dashboard is read-only: it changes no study\n"
    host = environ.get("HTTP_HOST", LOOPBACK).rsplit(":", 1)[0] if "]" not in environ.get("HTTP_HOST", "") else ""
    if host not in LOOPBACK_HOSTS:
        return "403 Forbidden", "this dashboard answers requests for 127.0.0.1 or localhost only\n"
    return None


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connections do not keep the command alive after Ctrl-C


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logger.debug("dashboard: " + format, *args)


def _require_optuna_dashboard():
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise UsageError("the dashboard needs optuna-dashboard: pip install 'tune_dialsum[dashboard]'") from None
    return wsgi
