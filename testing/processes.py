"""The real processes, for tests and benchmarks: gunicorn with config/gunicorn.conf.py,
``receiver datasette``, and the Procfile's lines, each in its own session (so its own process
group) on 127.0.0.1, logging to a file, and stopped with its whole group.
"""

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
# The virtualenv running this Python (the project's .venv under `make test` / `make bench`).
VENV_BIN = Path(sys.executable).parent
GUNICORN_CONFIG = "config/gunicorn.conf.py"
RECEIVER_APP = "receiver.wsgi:app"

# Settings a test must control, not inherit from whoever runs it.
INHERITED_PREFIXES = ("RECEIVER_", "GUNICORN_", "DATASETTE_", "VONAGE_")
INHERITED_NAMES = ("PORT", "HOST", "WEB_CONCURRENCY")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- /proc -----------------------------------------------------------------------------------


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (state first, nice at 16), or
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def _live_pids(field_, value):
    """Live (not zombie) pids whose stat field ``field_`` (1: ppid, 2: pgid) is ``value``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields_ = stat_fields(int(name))
            if fields_ is not None and fields_[0] not in ("Z", "X") and int(fields_[field_]) == value:
                found.append(int(name))
    return sorted(found)


def children(pid):
    """Live (not zombie) child pids of ``pid``, found by scanning /proc."""
    return _live_pids(1, pid)


def group_members(pgid):
    """Live (not zombie) pids in process group ``pgid``.

    Workers orphaned by a killed master are reparented to pid 1, which may never reap them
    in a container; a zombie holds nothing (no files, no locks), so it counts as gone.
    """
    return _live_pids(2, pgid)


def is_writer(pid):
    """True for a receiver writer process (``python -m receiver.writer``)."""
    return "-m receiver.writer" in cmdline(pid)


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def stop_group(popen, grace, name="process"):
    """SIGTERM ``popen``'s process group (it leads its own session), SIGKILL what is left after
    ``grace`` s; wait until no live process of the group is left. Returns the problems found
    (each a sentence): a group that had to be killed, or survived SIGKILL."""
    if popen is None:
        return []
    pgid = popen.pid
    problems = []
    if group_members(pgid) or popen.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # The leader is reaped; wait for the rest of its group (e.g. gunicorn workers).
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if popen.poll() is None or group_members(pgid):
        left = [f"{pid}: {cmdline(pid)}" for pid in group_members(pgid)]
        problems.append(f"{name}: group {pgid} still running {grace} s after SIGTERM, killed: {left}")
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout=10)
            wait_group_gone(pgid, 10)
        except (subprocess.TimeoutExpired, RuntimeError) as error:
            problems.append(f"{name}: {error}")
    return problems


def wait_group_gone(pgid, timeout):
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process group {pgid} survived SIGKILL: {group_members(pgid)}")
        time.sleep(0.02)


def get(port, path, timeout=2.0):
    """(status, headers) of a GET, or (error name, {}) when there is no HTTP answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, {}
    finally:
        conn.close()


def tail_of(path, tail=20_000):
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return text if len(text) <= tail else "[...]\n" + text[-tail:]


# --- environment -----------------------------------------------------------------------------


def receiver_environment(db_path, port=0, *, inherit=False, **extra):
    """The environment of a receiver process: this virtualenv first on PATH, the database,
    port and 127.0.0.1, no access log. The caller's RECEIVER_*, GUNICORN_*, DATASETTE_*,
    VONAGE_*, PORT, HOST and WEB_CONCURRENCY are dropped unless ``inherit`` (a benchmark run
    with the shell's settings); ``extra`` comes last."""
    env = {
        key: value for key, value in os.environ.items()
        if inherit or (not key.startswith(INHERITED_PREFIXES) and key not in INHERITED_NAMES)
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The repository first: bench's apps (bench.noop_app) are imported from it.
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        RECEIVER_DB=str(db_path),
        PORT=str(port),
        HOST="127.0.0.1",
        GUNICORN_ACCESS_LOG="",
        PYTHONUNBUFFERED="1",
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


# --- gunicorn --------------------------------------------------------------------------------


def _spawn(server, command, timeout):
    """Start ``command`` for ``server`` in its own session (so its whole group can be stopped),
    appending to its log, and wait until it answers; stop it if it does not."""
    with open(server.log_path, "ab") as log:
        server.popen = subprocess.Popen(
            command, cwd=ROOT, env=server.env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


class Gunicorn:
    """``gunicorn -c config/gunicorn.conf.py <app>`` in its own session.

    The master is the session leader, so its pid is the process group id of it and its
    workers. Each start appends to the same log file. ``workers=None`` takes the count the
    config resolves to in this environment.
    """

    def __init__(self, db_path, log_path, *, workers=2, port=None, app=RECEIVER_APP,
                 inherit=False, **env):
        self.db_path = Path(db_path)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.app = app
        if workers is not None:
            env["WEB_CONCURRENCY"] = workers
        self.env = receiver_environment(db_path, self.port, inherit=inherit, **env)
        self.worker_count = workers if workers is not None else _configured_workers(self.env)
        self.popen = None
        self.starts = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def master(self):
        return self.popen.pid

    def start(self, timeout=20.0):
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts + 1} on port {self.port}\n".encode())
        self.starts += 1
        return _spawn(self, self.command(), timeout)

    def command(self):
        """The command line: the production config file, this app."""
        return [str(VENV_BIN / "gunicorn"), "-c", GUNICORN_CONFIG, self.app]

    def wait_ready(self, timeout=20.0):
        """Until /healthz answers 200 and every worker is up."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            code = self.popen.poll()
            if code is not None:
                raise RuntimeError(f"gunicorn exited with {code} during start-up\n{self.output()}")
            status, _ = get(self.port, "/healthz", timeout=2)
            last = status
            if status == 200 and len(self.worker_pids()) == self.worker_count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready after {timeout} s (/healthz: {last}, "
                                   f"workers: {self.worker_pids()})\n{self.output()}")
            time.sleep(0.1)

    def worker_pids(self):
        """The master's children but its writer processes: the HTTP workers."""
        return [pid for pid in children(self.master) if not is_writer(pid)] if self.popen else []

    def writer_pids(self):
        """The master's writer processes (the serving one and its standby)."""
        return [pid for pid in children(self.master) if is_writer(pid)] if self.popen else []

    def wait_workers(self, replaced, timeout=10.0):
        """Until the master has its full complement of workers again, none of ``replaced``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == self.worker_count and not set(pids) & set(replaced):
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not respawn workers within {timeout} s "
                           f"(have {self.worker_pids()}, replaced {replaced})\n{self.output()}")

    def kill9_all(self, timeout=10.0):
        """SIGKILL the master, then every process left in its group; wait until none lives."""
        pgid = self.master
        os.kill(self.master, signal.SIGKILL)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=timeout)
        wait_group_gone(pgid, timeout)

    def stop(self, grace=25.0):
        """SIGTERM the group, SIGKILL what is left after ``grace`` s. Returns problems found.

        The grace exceeds config/gunicorn.conf.py's graceful_timeout (20 s), the time gunicorn
        itself gives workers to finish their requests on SIGTERM.
        """
        return stop_group(self.popen, grace, "gunicorn")

    def output(self, tail=20_000):
        return tail_of(self.log_path, tail)


def _configured_workers(env):
    """The worker count config/gunicorn.conf.py takes from the settings under ``env``."""
    from receiver.config import load_settings

    return load_settings(env).web_concurrency


# --- Datasette -------------------------------------------------------------------------------


class Datasette:
    """``receiver datasette --db PATH --port PORT`` (production's command: init-db, then exec
    datasette serve) in its own session, logging to a file; ``env`` adds settings."""

    def __init__(self, db_path, log_path, *, port=None, **env):
        self.db_path = Path(db_path)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.env = receiver_environment(db_path, **{"DATASETTE_HOST": "127.0.0.1", **env})
        self.popen = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        return _spawn(self, [str(VENV_BIN / "receiver"), "datasette", "--db", str(self.db_path),
                             "--port", str(self.port)], timeout)

    def wait_ready(self, timeout):
        """Until it answers anything on /robots.txt (200, or 403 behind the login wall)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"datasette exited with {self.popen.returncode}:\n{self.output()}")
            status, _ = get(self.port, "/robots.txt", timeout=2)
            if isinstance(status, int):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"datasette did not answer within {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def stop(self, grace=10.0):
        return stop_group(self.popen, grace, "datasette")

    def output(self, tail=20_000):
        return tail_of(self.log_path, tail)


# --- the Procfile ----------------------------------------------------------------------------


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


@dataclass
class Process:
    name: str
    command: str
    log_path: Path
    popen: subprocess.Popen = field(repr=False)

    def output(self):
        return tail_of(self.log_path, 10**9)


class Procfile:
    """The Procfile's processes, each run with ``bash -c`` in the repository root, started
    together with one environment."""

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
                    ["bash", "-c", command], cwd=self.cwd, env=self.env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
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
        import requests

        deadline = time.monotonic() + timeout
        pending = dict(checks)
        last_error = {}
        with requests.Session() as session:
            while pending:
                for name, process in self.processes.items():
                    code = process.popen.poll()
                    if code is not None:
                        raise RuntimeError(
                            f"process {name!r} exited with {code} during start-up\n" + self.output()
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
                    raise RuntimeError(f"not ready after {timeout} s:\n{details}\n" + self.output())
                time.sleep(0.2)

    def stop(self, grace=5.0):
        """SIGTERM every group, SIGKILL what is left after ``grace`` s; return the problems
        (a group that had to be killed or survived)."""
        problems = []
        for process in self.processes.values():
            try:
                os.killpg(process.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.processes.values():
            problems += stop_group(process.popen, grace, process.name)
        return problems
