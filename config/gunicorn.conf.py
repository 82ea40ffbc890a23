"""gunicorn settings for the receiver: what production runs, and what `make bench` measures.

Every value can be overridden from the environment (variables named below) or on the
gunicorn command line.
"""

import logging
import multiprocessing
import os

# The webhook target listens on every interface; put TLS in front of it (see README).
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"

# gthread workers: each process runs several request threads that share one group-commit
# writer thread, so one synced commit serves every request in flight (see receiver/writer.py).
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))

# Vonage gives up on a response after 15 s; a worker stuck longer than 30 s is restarted.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
# Keep-alive between a proxy (or Vonage) and us; short so idle clients do not pin threads.
keepalive = 5
# A slow client cannot send request headers forever.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# Recycle workers now and then (with jitter) as a guard against slow leaks.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10

accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("RECEIVER_LOG_LEVEL", "info").lower()
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'

# gunicorn 24+ opens a control socket under ~/.gunicorn by default; several receivers on one
# host (tests, benchmarks) would fight over it, and nothing here uses it.
control_socket_disable = True

# The app is not preloaded: each worker opens its own database connection after the fork.
preload_app = False


def on_starting(server):
    """Create or migrate the schema in the master, before any worker can write."""
    from receiver import db
    from receiver.config import describe, load_settings
    from receiver.signatures import Verifier

    settings = load_settings()
    db.init_db(settings.db_path, synchronous=settings.synchronous,
               busy_timeout_ms=settings.busy_timeout_ms)
    log = logging.getLogger("gunicorn.error")
    log.info("dispatch-receiver: database %s ready", os.path.abspath(settings.db_path))
    for line in describe(settings):
        log.info("setting %s", line)
    verifier = Verifier(settings)
    (log.info if verifier.enabled else log.warning)("dispatch-receiver: %s", verifier.describe())
    if settings.synchronous != "FULL":
        log.warning("RECEIVER_SYNCHRONOUS=%s: acknowledged callbacks may be lost on power "
                    "failure", settings.synchronous)
