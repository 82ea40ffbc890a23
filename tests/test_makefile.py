"""The Makefile a newcomer runs: `make run` installs what production needs and nothing more,
`make test` fails when it runs no test, `make clean` never deletes the databases.

Each test runs the real Makefile with GNU make, in a temporary copy of the repository's files
where it would change or install anything.
"""

import os
import shutil
import subprocess
import sys

import pytest

from testing.processes import ROOT, VENV_BIN

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="GNU make is not installed")


def make(directory, *args, timeout=300, **env):
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MAKE")}
    environ.update(env)
    return subprocess.run([MAKE, "-C", str(directory), *args], capture_output=True, text=True,
                          timeout=timeout, env=environ)


def repository_copy(tmp_path, *, with_sources=False):
    """The Makefile and pyproject.toml (and with_sources, every tracked file) in ``tmp_path``."""
    names = ["Makefile", "pyproject.toml"]
    if with_sources:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
        names = [name for name in listed if (ROOT / name).is_file()]
    for name in names:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return tmp_path


@needs_make
def test_make_test_fails_when_no_test_is_collected(tmp_path):
    """pytest's exit 5 ("no tests collected") must not pass as green: a typo in a path or a
    broken collection would otherwise look like a passing suite."""
    repo = repository_copy(tmp_path)
    (repo / "tests").mkdir()
    # The virtualenv exists and is up to date: use this one, install nothing.
    (repo / ".venv").mkdir()
    for stamp in (".installed-runtime", ".installed-test"):
        (repo / ".venv" / stamp).touch()
    result = make(repo, "test", f"BIN={VENV_BIN}", timeout=120)
    assert "no tests ran" in result.stdout, result.stdout + result.stderr
    assert result.returncode != 0, result.stdout + result.stderr


@needs_make
def test_make_clean_keeps_the_databases(tmp_path):
    repo = repository_copy(tmp_path)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / "var").mkdir()
    for name in ("events.db", "events.db-wal", "demo.db"):
        (repo / "var" / name).write_bytes(b"user data")
    result = make(repo, "clean")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (repo / ".venv").exists(), "make clean removes the virtualenv"
    assert sorted(p.name for p in (repo / "var").iterdir()) == ["demo.db", "events.db", "events.db-wal"]


@needs_make
def test_make_clean_data_asks_before_deleting(tmp_path):
    repo = repository_copy(tmp_path)
    (repo / "var").mkdir()
    (repo / "var" / "events.db").write_bytes(b"user data")
    refused = subprocess.run([MAKE, "-C", str(repo), "clean-data"], input="no\n",
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and (repo / "var" / "events.db").exists()
    confirmed = make(repo, "clean-data", "CONFIRM=yes")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert not (repo / "var" / "events.db").exists()


@needs_make
def test_make_run_installs_the_runtime_dependencies_only(tmp_path):
    """`make run`'s virtualenv has what the receiver needs and none of the test toolchain;
    `make install` (what `make test` uses) adds the test extras on top."""
    repo = repository_copy(tmp_path, with_sources=True)
    result = make(repo, "install-runtime", f"PYTHON={sys.executable}", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    python = repo / ".venv" / "bin" / "python"
    runtime = subprocess.run([str(python), "-c", "import flask, gunicorn, datasette, receiver"],
                             capture_output=True, text=True)
    assert runtime.returncode == 0, runtime.stderr
    for module in ("pytest", "playwright", "schemathesis", "hypothesis", "atheris"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"`make run` installed the test dependency {module}"
    # What `make run` starts works with them alone: the CLI, gunicorn's config, Datasette's.
    for command in (["receiver", "init-db"], ["receiver", "config"],
                    ["gunicorn", "--check-config", "-c", "config/gunicorn.conf.py", "receiver.wsgi:app"],
                    ["receiver", "datasette", "--dry-run"]):
        ran = subprocess.run([str(repo / ".venv" / "bin" / command[0]), *command[1:]], cwd=repo,
                             capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert ran.returncode == 0, f"{command}: {ran.stdout}{ran.stderr}"
    # Nothing left for `make run` to install: it goes through the runtime install only.
    plan = make(repo, "-n", "run")
    assert "pip install" not in plan.stdout and "receiver init-db" in plan.stdout, plan.stdout
