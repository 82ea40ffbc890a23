"""Every setting in one place: receiver/config.py reads them, config/gunicorn.conf.py takes its
own from there, `receiver config` prints them all and the README's table lists each once."""

import re
import runpy

import pytest

from receiver.config import ENVIRONMENT, Settings, default_workers, load_settings
from testing.processes import ROOT

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
    assert str(stopped.value) == ("error: GUNICORN_TIMEOUT='soon' is not a valid value: "
                                  "expected a whole number")


@pytest.mark.parametrize("variable", ["WEB_CONCURRENCY", "GUNICORN_THREADS"])
def test_worker_counts_must_be_positive(variable):
    with pytest.raises(ValueError, match=f"{variable} must be positive"):
        load_settings({variable: "0"})


def test_readme_table_lists_every_setting_once():
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M)
    assert sorted(listed) == sorted(VARIABLES), (
        f"missing: {sorted(set(VARIABLES) - set(listed))}, "
        f"not settings: {sorted(set(listed) - set(VARIABLES))}")
