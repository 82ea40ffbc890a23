"""The README's commands (and those of its pages in docs/) work as written: each names a program a newcomer has after
`make run` (no virtualenv on PATH), and the ones that need no running server are run, as
written, in a fresh directory holding only that virtualenv."""

import os
import re
import shlex
import shutil
import subprocess

import pytest

from testing.processes import ROOT, VENV_BIN

README = (ROOT / "README.md").read_text()
# The README's detail pages: their commands are held to the same rule.
DOCS = sorted((ROOT / "docs").glob("*.md"))
# What a shell has without the project's virtualenv activated.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELL_BUILTINS = {"export", "source", "cd"}


def console_commands(text=README):
    """Every ``$ command`` of the README's console blocks, continuation lines joined and the
    trailing comment dropped."""
    commands = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = iter(block.splitlines())
        for line in lines:
            line = line.strip()
            if not line.startswith("$ "):
                continue
            command = line[2:]
            while command.endswith("\\") or not _complete(command):
                if command.endswith("\\"):
                    command = command[:-1] + " " + next(lines).strip()
                else:  # inside quotes, the newline is part of the argument
                    command = command + "\n" + next(lines).strip()
            commands.append(command)
    return commands


def _complete(command):
    """False while a quote is still open (a JSON body over several lines)."""
    try:
        shlex.split(command)
    except ValueError:
        return False
    return True


def words(command):
    return shlex.split(command, comments=True)


def program(command):
    """The program a command runs, after any VAR=value assignments."""
    tokens = words(command)
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens.pop(0)
    return tokens[0]


COMMANDS = console_commands() + [c for page in DOCS for c in console_commands(page.read_text())]


def test_the_readme_has_commands():
    assert len(COMMANDS) > 15
    assert "make run" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_names_a_program_that_exists_without_activating_anything(command):
    name = program(command)
    if "/" in name:
        assert (ROOT / name).exists(), f"{name} does not exist after `make run`"
    else:
        assert name in SHELL_BUILTINS or shutil.which(name, path=PLAIN_PATH), (
            f"`{name}` is not on a plain PATH: after `make run` it is in .venv/bin")


# The ones that need no running server (no URL), no exposed Datasette, and end: run them.
RUNNABLE = [c for c in COMMANDS if program(c) == ".venv/bin/receiver" and "http" not in c
            and words(c)[1] != "datasette"]


def test_runnable_commands_include_each_cli_command_of_the_readme():
    used = {words(c)[1] for c in RUNNABLE}
    assert {"simulate", "check", "rebuild", "config", "export", "reprocess"} <= used


def test_the_readmes_commands_run_as_written(tmp_path):
    """In a directory with only the virtualenv: `receiver init-db` as `make run` does, then
    each command as the README writes it; none may fail (exit status 0)."""
    (tmp_path / ".venv").symlink_to(VENV_BIN.parent)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("RECEIVER_", "VONAGE_", "DATASETTE_", "GUNICORN_"))}
    # Makefile: RECEIVER_DB ?= var/events.db; NORMAL only spares this test the syncs.
    env.update(PATH=PLAIN_PATH, RECEIVER_DB="var/events.db", RECEIVER_SYNCHRONOUS="NORMAL")
    setup = subprocess.run([".venv/bin/receiver", "init-db"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    for command in RUNNABLE:
        result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300, executable="/bin/bash")
        assert result.returncode == 0, f"$ {command}\n{result.stdout}{result.stderr}"
    assert (tmp_path / "var" / "demo.db").exists()
