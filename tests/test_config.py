"""Every setting in one place: receiver/config.py reads them, config/gunicorn.conf.py takes its
own from there, `receiver config` prints them all and the README's table lists each once."""

import re
import runpy
import subprocess

import pytest

from receiver.config import ENVIRONMENT, Settings, default_workers, load_settings
from testing.processes import ROOT, VENV_BIN, parse_procfile, receiver_environment

GUNICORN_CONF = ROOT / "config" / "gunicorn.conf.py"
VARIABLES = [variable for variable, _ in ENVIRONMENT.values()]


def gunicorn_conf(monkeypatch, **environ):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(GUNICORN_CONF))


def test_every_setting_is_read_from_the_environment():
    assert {f for f in Settings.__dataclass_fields__} == set(ENVIRONMENT)
    assert len(set(VARIABLES)) == len(VARIABLES)


def test_config_lists_every_setting_including_the_servers(runner):
    result = runner.invoke(["config"])
    assert result.exit_code == 0, result.output
    printed = [line.split("=", 1)[0] for line in result.output.splitlines()]
    assert printed == VARIABLES
    for variable in ("HOST", "WEB_CONCURRENCY", "GUNICORN_WORKER_CLASS", "GUNICORN_THREADS",
                     "GUNICORN_TIMEOUT", "GUNICORN_MAX_REQUESTS", "GUNICORN_ACCESS_LOG",
                     "GUNICORN_WORKER_NICE"):
        assert variable in printed


def test_gunicorn_takes_its_settings_from_the_receivers(monkeypatch):
    conf = gunicorn_conf(monkeypatch, HOST="127.0.0.2", PORT="8123", WEB_CONCURRENCY="3",
                         GUNICORN_WORKER_CLASS="gthread", GUNICORN_THREADS="4",
                         GUNICORN_TIMEOUT="17", GUNICORN_MAX_REQUESTS="1000",
                         GUNICORN_ACCESS_LOG="", GUNICORN_WORKER_NICE="2",
                         RECEIVER_LOG_LEVEL="warning")
    assert conf["bind"] == "127.0.0.2:8123"
    assert (conf["workers"], conf["worker_class"], conf["threads"]) == (3, "gthread", 4)
    assert (conf["timeout"], conf["max_requests"], conf["worker_nice"]) == (17, 1000, 2)
    assert conf["accesslog"] is None  # GUNICORN_ACCESS_LOG="" turns it off
    assert conf["loglevel"] == "warning"


def test_gunicorn_defaults(monkeypatch):
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    conf = gunicorn_conf(monkeypatch)
    assert conf["bind"] == "0.0.0.0:8000"
    assert conf["workers"] == default_workers()
    assert conf["accesslog"] == "-"


def test_gunicorn_conf_reads_no_variable_itself():
    """Only the writer's socket path (set by the master for its workers) is not a setting."""
    source = GUNICORN_CONF.read_text()
    assert not re.search(r"os\.environ\.get|os\.getenv|environ\[[\"']", source)


def test_a_bad_gunicorn_setting_is_one_line(monkeypatch):
    with pytest.raises(SystemExit) as stopped:
        gunicorn_conf(monkeypatch, GUNICORN_TIMEOUT="soon")
    assert str(stopped.value) == ("Error: GUNICORN_TIMEOUT='soon' is not a valid value: "
                                  "expected a whole number")


@pytest.mark.parametrize("variable", ["WEB_CONCURRENCY", "GUNICORN_THREADS"])
def test_worker_counts_must_be_positive(variable):
    with pytest.raises(ValueError, match=f"{variable} must be at least 1, not 0"):
        load_settings({variable: "0"})


def test_readme_table_lists_every_setting_once():
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M)
    assert sorted(listed) == sorted(VARIABLES), (
        f"missing: {sorted(set(VARIABLES) - set(listed))}, "
        f"not settings: {sorted(set(listed) - set(VARIABLES))}")


# Each of these passed `receiver config` and then crashed the server with a traceback, or (the
# secrets) showed "(set, hidden)" while the server checked no signature.
BAD_SETTINGS = [
    ({"PORT": "99999"}, "PORT must be from 0 to 65535, not 99999"),
    ({"DATASETTE_PORT": "-1"}, "DATASETTE_PORT must be from 0 to 65535, not -1"),
    ({"RECEIVER_LOG_LEVEL": "verbose"}, "RECEIVER_LOG_LEVEL must be one of DEBUG, INFO, WARNING, "
                                        "ERROR, CRITICAL, not 'VERBOSE'"),
    ({"GUNICORN_WORKER_CLASS": "gevent"}, "GUNICORN_WORKER_CLASS must be one of sync, gthread, not 'gevent'"),
    ({"VONAGE_SIGNATURE_SECRETS": ","}, "VONAGE_SIGNATURE_SECRETS=',' holds no secret"),
    ({"VONAGE_SIGNATURE_SECRETS": "key1:"}, "VONAGE_SIGNATURE_SECRETS has an entry with an empty secret"),
    ({"GUNICORN_WORKER_NICE": "-5"}, "GUNICORN_WORKER_NICE must be from 0 to 19, not -5"),
    ({"RECEIVER_MAX_BATCH": "0"}, "RECEIVER_MAX_BATCH must be at least 1, not 0"),
    ({"RECEIVER_COMMIT_TIMEOUT_S": "nan"}, "RECEIVER_COMMIT_TIMEOUT_S must be at least 0.001, not nan"),
    ({"GUNICORN_ACCESS_LOG": "/no/such/dir/access.log"}, "GUNICORN_ACCESS_LOG=/no/such/dir/access.log: "
                                                          "its directory does not exist"),
    ({"RECEIVER_DB": "/no/such/dir/events.db"}, "/no/such/dir/events.db: directory /no/such/dir does "
                                                "not exist; create it first"),
]


def run(command, env, cwd, timeout=30):
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("variables, message", BAD_SETTINGS,
                         ids=[next(iter(v)) + "=" + next(iter(v.values())) for v, _ in BAD_SETTINGS])
def test_a_setting_the_server_cannot_use_is_refused_by_config_and_both_servers_alike(tmp_path, variables, message):
    """`receiver config`, the Procfile's web line (gunicorn with config/gunicorn.conf.py) and
    its datasette line all refuse it with the same one line, exit 1, no traceback, and leave
    no database behind."""
    env = receiver_environment(tmp_path / "events.db", **variables)
    procfile = parse_procfile()
    commands = {"config": f"exec {VENV_BIN / 'receiver'} config", **procfile}
    lines = {}
    for name, command in commands.items():
        code, output = run(command, env, ROOT)
        assert code == 1, (name, output)
        assert "Traceback" not in output, (name, output)
        [lines[name]] = [line for line in output.splitlines() if line.strip()]
    assert lines["config"].startswith(f"Error: {message}"), lines
    assert set(lines.values()) == {lines["config"]}, lines
    assert not (tmp_path / "events.db").exists()


def test_the_accepted_worker_classes_are_what_gunicorn_runs(tmp_path):
    """sync and gthread pass the check; the server starts with either (gthread, as
    i17-writer's default may become, with its threads)."""
    from testing.processes import Gunicorn

    for worker_class in ("sync", "gthread"):
        assert load_settings({"GUNICORN_WORKER_CLASS": worker_class}).worker_class == worker_class
    server = Gunicorn(tmp_path / "events.db", tmp_path / "gunicorn.log", workers=1,
                      GUNICORN_WORKER_CLASS="gthread", GUNICORN_THREADS="2")
    server.start()
    try:
        import requests

        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        server.stop()
