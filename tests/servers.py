"""Run the production processes exactly as the Procfile defines them, for end-to-end tests.

Each Procfile command runs with ``bash -c`` in the repository root, in its own session (so
its own process group), with stdout and stderr going to a log file. ``stop()`` terminates the
whole group (SIGTERM, then SIGKILL) and waits until no process of it is left.
"""

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
VENV_BIN = ROOT / ".venv" / "bin"


def parse_procfile(path=PROCFILE):
    """``name: command`` lines of a Procfile, in order; comments and blank lines ignored."""
    processes = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, command = stripped.partition(":")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"{path}:{number}: not a 'name: command' line: {line!r}")
        if name.strip() in processes:
            raise ValueError(f"{path}:{number}: process {name.strip()!r} defined twice")
        processes[name.strip()] = command.strip()
    return processes


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a process of the group we may not signal
        return True
    return True


@dataclass
class Process:
    name: str
    command: str
    log_path: Path
    popen: subprocess.Popen = field(repr=False)

    @property
    def pgid(self):
        # start_new_session=True: the child is the leader of a new group with its own pid.
        return self.popen.pid

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Procfile:
    """The Procfile's processes, started together with one environment."""

    def __init__(self, env, log_dir, procfile=PROCFILE, cwd=ROOT):
        self.env = env
        self.log_dir = Path(log_dir)
        self.commands = parse_procfile(procfile)
        self.cwd = cwd
        self.processes = {}

    def start(self):
        for name, command in self.commands.items():
            log_path = self.log_dir / f"{name}.log"
            with open(log_path, "wb") as log:
                popen = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes[name] = Process(name, command, log_path, popen)
        return self

    def output(self, tail=None):
        """Every process's command and captured output (the last ``tail`` chars of each)."""
        parts = []
        for process in self.processes.values():
            text = process.output()
            if tail is not None and len(text) > tail:
                text = "[...]\n" + text[-tail:]
            code = process.popen.poll()
            state = "running" if code is None else f"exited with {code}"
            parts.append(f"===== {process.name} ({state}): {process.command}\n{text}")
        return "\n".join(parts)

    def wait_until(self, checks, timeout=30.0):
        """Poll ``checks`` ({label: url}) until each answers 200; raise RuntimeError with the
        processes' output when one exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        pending = dict(checks)
        last_error = {}
        with requests.Session() as session:
            while pending:
                for name, process in self.processes.items():
                    code = process.popen.poll()
                    if code is not None:
                        raise RuntimeError(
                            f"process {name!r} exited with {code} during start-up\n"
                            + self.output()
                        )
                for label, url in list(pending.items()):
                    try:
                        with session.get(url, timeout=2) as response:
                            if response.status_code == 200:
                                del pending[label]
                                continue
                            last_error[label] = f"HTTP {response.status_code}: {response.text[:500]}"
                    except requests.RequestException as error:
                        last_error[label] = repr(error)
                if not pending:
                    break
                if time.monotonic() > deadline:
                    details = "\n".join(f"  {label}: {last_error.get(label)}" for label in pending)
                    raise RuntimeError(
                        f"not ready after {timeout} s:\n{details}\n" + self.output()
                    )
                time.sleep(0.2)

    def stop(self, grace=5.0):
        """SIGTERM every group, SIGKILL what is left after ``grace`` s; return the names of
        groups that had to be killed or that still had processes (each a problem to report)."""
        problems = []
        for process in self.processes.values():
            try:
                os.killpg(process.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                process.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                pass
            # The leader is reaped; wait for the rest of its group (e.g. gunicorn workers).
            while _group_alive(process.pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for process in self.processes.values():
            if process.popen.poll() is None or _group_alive(process.pgid):
                problems.append(f"{process.name}: still running {grace} s after SIGTERM, killed")
                try:
                    os.killpg(process.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.popen.wait(timeout=10)
                end = time.monotonic() + 5
                while _group_alive(process.pgid) and time.monotonic() < end:
                    time.sleep(0.05)
                if _group_alive(process.pgid):
                    problems.append(f"{process.name}: process group {process.pgid} survived SIGKILL")
        return problems
