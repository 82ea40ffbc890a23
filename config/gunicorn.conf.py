"""gunicorn settings for the receiver: what production runs, and what `make bench` measures.

The values that can be changed come from receiver/config.py (environment variables listed by
`receiver config` and in the README); the gunicorn command line overrides them too.
"""

import logging
import os
import sys

from receiver.config import load_settings
from receiver.logs import ACCESS_LOG_FORMAT

try:
    _settings = load_settings()
except ValueError as error:  # one line, not gunicorn's "Failed to read config file" traceback
    sys.exit(f"Error: {error}")

# The webhook target listens on every interface by default; put TLS in front of it (README).
bind = f"{_settings.host}:{_settings.port}"

# Workers hand their writes to one group-commit writer process (receiver/writer.py), so one
# synced commit serves every request in flight. Threaded workers (gthread), cores + 1 of them
# with 8 threads each: a thread waiting for its commit costs a thread, not a process, and
# many requests in flight make big batches; chosen by CPU per request (bench/README.md).
worker_class = _settings.worker_class
workers = _settings.web_concurrency
threads = _settings.threads

# Vonage gives up on a response after 15 s; a worker stuck longer than 30 s is restarted.
timeout = _settings.worker_timeout_s
graceful_timeout = 20
# Keep-alive between a proxy (or Vonage) and us; short so idle clients do not pin threads.
keepalive = 5
# A slow client cannot send request headers forever.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# Recycle workers now and then (with jitter) as a guard against slow leaks.
max_requests = _settings.max_requests
max_requests_jitter = max_requests // 10

accesslog = _settings.access_log or None
errorlog = "-"
loglevel = _settings.log_level.lower()
access_log_format = ACCESS_LOG_FORMAT
# Plain text, or one JSON object per line with RECEIVER_LOG_FORMAT=json (receiver/logs.py).
logger_class = "receiver.logs.GunicornLogger"

# gunicorn 24+ opens a control socket under ~/.gunicorn by default; several receivers on one
# host (tests, benchmarks) would fight over it, and nothing here uses it.
control_socket_disable = True

# The app is not preloaded: each worker opens its own database connection after the fork.
preload_app = False


_metrics_directory = None


def start_metrics_directory():
    """A fresh private directory where every process (workers, writer) keeps its metrics for
    GET /metrics to add up; set before anything imports prometheus_client, inherited by all."""
    global _metrics_directory
    import tempfile

    _metrics_directory = tempfile.mkdtemp(prefix="receiver-metrics-")
    os.environ.update(PROMETHEUS_MULTIPROC_DIR=_metrics_directory)  # read by prometheus_client


def child_exit(server, worker):
    """In the master, when a worker has exited: drop its live-only metric files."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def remove_metrics_directory():
    """In the master, at exit: the metrics directory goes with the server."""
    import shutil

    if _metrics_directory is not None:
        shutil.rmtree(_metrics_directory, ignore_errors=True)


def on_starting(server):
    """In the master, before any worker: create or migrate the schema, start the writer."""
    start_metrics_directory()
    from receiver import db
    from receiver.config import describe, load_settings
    from receiver.signatures import Verifier
    from receiver.writer import SOCKET_VARIABLE, endpoint_paths, start_supervisor

    settings = load_settings()
    # init_db closes its connection: the master holds no SQLite connection when it forks.
    db.init_db(settings.db_path, synchronous=settings.synchronous,
               busy_timeout_ms=settings.busy_timeout_ms)
    log = logging.getLogger("gunicorn.error")
    # The writer is a process of its own, replaced by a thread here when it dies or hangs.
    start_supervisor(settings, log)
    os.environ[SOCKET_VARIABLE] = endpoint_paths(settings.db_path)[0]  # for every worker
    log.info("dispatch-receiver: database %s ready; writer at %s",
             os.path.abspath(settings.db_path), os.environ[SOCKET_VARIABLE])
    for line in describe(settings):
        log.info("setting %s", line)
    verifier = Verifier(settings)
    (log.info if verifier.enabled else log.warning)("dispatch-receiver: %s", verifier.describe())
    if settings.synchronous != "FULL":
        log.warning("RECEIVER_SYNCHRONOUS=%s: acknowledged callbacks may be lost on power "
                    "failure", settings.synchronous)


# Workers may run at a lower CPU priority than the writer process, the one serial stage every
# request waits for. Off by default: with the writer in a process of its own, nice 5 measured no
# better (see bench/README.md), and it hands CPU to anything else running on the host.
worker_nice = _settings.worker_nice


def post_fork(server, worker):
    """In each worker: close the master's end of the writer's stdin (else the writer would not
    see the master die); lower the worker's priority if asked."""
    from receiver.writer import supervisor

    if supervisor() is not None:
        for fd in supervisor().inherited_fds():
            try:
                os.close(fd)
            except OSError:
                pass
    if worker_nice:
        os.nice(worker_nice)


def on_exit(server):
    """In the master, once its workers are gone: let the writer finish and exit;
    remove the metrics directory."""
    from receiver.writer import supervisor

    if supervisor() is not None:
        supervisor().stop()
    remove_metrics_directory()
