"""`receiver backup` and `receiver restore`: consistent copies under real ingest, checked
restores that refuse a database a running receiver holds."""

import re
import sqlite3
import time
from contextlib import closing

import pytest
from ops_data import count, seed
from ops_data import run_receiver as receiver

from receiver import backup, db
from testing.processes import Gunicorn, receiver_environment
from testing.traffic import (
    Bodies,
    LoadGenerator,
    acknowledged,
    integrity_check,
    receiver_check,
    stored_hashes,
    summarize,
)


def test_backup_under_load_holds_every_acknowledged_callback(db_path, tmp_path):
    seed(db_path)
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=2).start()
    generator = LoadGenerator(server.port, Bodies(seed=12), threads=4)
    # A long read (a Datasette query, say) keeps checkpoints behind it: every callback stored
    # during the test stays in the WAL, so a copy of the main file alone would miss them all.
    reader = sqlite3.connect(str(db_path))
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM callbacks").fetchone()
    try:
        generator.start()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 200, 0, 30, "200 acknowledged")
        started = time.monotonic()
        code, out, err = receiver("backup", str(tmp_path / "copy.db"), db_path=db_path)
        finished = time.monotonic()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 50, finished, 30,
                           "ingest after the backup")
    finally:
        reader.close()
        outcomes = generator.stop()
        problems = server.stop()
    assert code == 0, err
    assert out.strip() == str(tmp_path / "copy.db")
    assert problems == []
    assert summarize(outcomes).keys() == {200}, summarize(outcomes)
    before = {o.sha256 for o in acknowledged(outcomes) if o.ended < started}
    during = [o for o in outcomes if o.started < finished and o.ended > started]
    assert len(before) >= 200 and during, "the backup must run while callbacks are acknowledged"
    copied, recomputed = stored_hashes(tmp_path / "copy.db")
    assert before <= copied, f"{len(before - copied)} acknowledged callbacks missing from the copy"
    assert copied == recomputed  # bodies byte-exact
    assert count(tmp_path / "copy.db") < count(db_path)  # a snapshot, not the end state
    assert integrity_check(tmp_path / "copy.db") == ["ok"]
    assert receiver_check(tmp_path / "copy.db")[0] == 0


def test_backup_refuses_to_overwrite_and_names_files_in_a_directory(runner, db_path, tmp_path):
    seed(db_path, dispatches=20)
    target = tmp_path / "copy.db"
    target.write_bytes(b"precious")
    result = runner.invoke(["backup", "--db", str(db_path), str(target)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {target} exists; choose another file or pass --force to replace it")
    assert target.read_bytes() == b"precious"
    assert runner.invoke(["backup", "--db", str(db_path), "--force", str(target)]).exit_code == 0
    assert count(target) == count(db_path)

    folder = tmp_path / "backups"
    folder.mkdir()
    result = runner.invoke(["backup", "--db", str(db_path), str(folder)])
    assert result.exit_code == 0, result.output
    (made,) = folder.iterdir()
    assert made.name.startswith("events-") and made.suffix == ".db"
    assert result.stdout.strip() == str(made)
    assert sorted(p.name for p in tmp_path.iterdir() if ".partial" in p.name) == []


def test_backup_of_a_missing_database_creates_nothing(runner, tmp_path):
    result = runner.invoke(["backup", "--db", str(tmp_path / "none.db"), str(tmp_path / "copy.db")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {tmp_path / 'none.db'}: no such database (`receiver init-db --db {tmp_path / 'none.db'}` creates one)")
    assert list(tmp_path.iterdir()) == []


def test_restore_refuses_a_database_a_running_receiver_holds(db_path, tmp_path):
    seed(db_path, dispatches=50)
    saved = tmp_path / "saved.db"
    backup.backup(str(db_path), str(saved))
    server = Gunicorn(db_path, tmp_path / "gunicorn.log", workers=2).start()
    generator = LoadGenerator(server.port, Bodies(seed=13), threads=2)
    try:
        generator.start()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 50, 0, 30, "ingest")
        code, _, err = receiver("restore", str(saved), db_path=db_path)
        assert code == 1
        line = err.strip().splitlines()[-1]
        holder = re.fullmatch(
            rf"Error: {re.escape(str(db_path))} is in use by process (\d+) \(a running receiver or "
            r"Datasette\); stop it first, or pass --force to restore into the live database", line)
        assert holder, line
        # The holder is the server: its master, or the writer process the master started.
        pid = int(holder.group(1))
        assert pid == server.master or _parent_of(pid) == server.master, (pid, server.master)
        # --force copies through SQLite's locks: the receiver goes on storing, on the backup.
        code, _, err = receiver("restore", "--force", str(saved), db_path=db_path)
        assert code == 0, err
        restored_at = time.monotonic()
        generator.wait_for(lambda seen: len(acknowledged(seen)) >= 50, restored_at, 30,
                           "ingest after the restore")
    finally:
        outcomes = generator.stop()
        problems = server.stop()
    assert problems == []
    after = {o.sha256 for o in acknowledged(outcomes) if o.started > restored_at}
    stored, _ = stored_hashes(db_path)
    saved_hashes, _ = stored_hashes(saved)
    assert saved_hashes | after <= stored
    assert receiver_check(db_path)[0] == 0
    # Once nothing holds the file, no --force is needed.
    assert backup.holder_of(str(db_path)) is None
    code, _, err = receiver("restore", str(saved), db_path=db_path)
    assert code == 0, err
    assert stored_hashes(db_path)[0] == saved_hashes


def test_restore_checks_the_backup_first(runner, db_path, tmp_path):
    seed(db_path, dispatches=30)
    live = count(db_path)

    def restore(source):
        result = runner.invoke(["restore", "--db", str(db_path), str(source)])
        assert result.exit_code == 1
        assert count(db_path) == live  # untouched
        return result.output.strip().splitlines()[-1]

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 1000)
    assert restore(junk) == f"Error: {junk}: not a SQLite database (no SQLite header); a receiver backup is one"

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert restore(empty) == f"Error: {empty}: an empty file, not a backup"

    truncated = tmp_path / "truncated.db"
    backup.backup(str(db_path), str(truncated))
    whole = truncated.stat().st_size
    truncated.write_bytes(truncated.read_bytes()[:whole // 2])
    assert restore(truncated) == (f"Error: {truncated}: truncated: {whole // 2} bytes of the {whole} "
                                  f"its header announces (an incomplete copy?)")

    other = tmp_path / "other.db"
    with closing(sqlite3.connect(str(other))) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert restore(other) == f"Error: {other} is not a receiver database (no schema version or callbacks table)"

    newer = tmp_path / "newer.db"
    backup.backup(str(db_path), str(newer))
    with closing(sqlite3.connect(str(newer))) as conn:
        conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    assert restore(newer) == (f"Error: {newer} has schema version {db.SCHEMA_VERSION + 1}, newer "
                              f"than this receiver's {db.SCHEMA_VERSION}; restore it with a newer receiver")

    broken = tmp_path / "broken.db"
    backup.backup(str(db_path), str(broken))
    with closing(sqlite3.connect(str(broken))) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'callbacks_received_at'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(broken, "r+b") as file:  # scribble over an index page: the tables still read
        file.seek((root - 1) * page_size + 8)
        file.write(b"\x00\x07" * 200)
    assert restore(broken).startswith(f"Error: {broken} failed its integrity check")

    assert restore(tmp_path / "absent.db") == f"Error: {tmp_path / 'absent.db'}: no such database file"
    assert not (tmp_path / "absent.db").exists()


def test_restore_into_a_new_file_migrates_and_passes_check(runner, db_path, tmp_path):
    seed(db_path, dispatches=30)
    saved = tmp_path / "saved.db"
    backup.backup(str(db_path), str(saved))
    target = tmp_path / "restored" / "events.db"
    target.parent.mkdir()
    result = runner.invoke(["restore", "--db", str(target), str(saved)])
    assert result.exit_code == 0, result.output
    assert stored_hashes(target)[0] == stored_hashes(db_path)[0]
    with closing(sqlite3.connect(str(target))) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert runner.invoke(["check", "--db", str(target)]).exit_code == 0


def on_read_only_media(media, mountpoint, *commands):
    """Run shell ``commands`` where ``mountpoint`` is ``media`` bound read-only (a private
    mount namespace: the mount goes with the process). (exit code, output)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    mountpoint.mkdir()
    script = " && ".join([f"mount --bind {media} {mountpoint}", f"mount -o remount,bind,ro {mountpoint}",
                          *commands])
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                            capture_output=True, text=True, timeout=120,
                            env=receiver_environment(mountpoint.parent / "events.db"))
    if "mount:" in result.stderr and "permission denied" in result.stderr.lower():
        pytest.skip(f"cannot mount read-only here: {result.stderr.strip()}")
    return result.returncode, result.stdout + result.stderr


def test_a_backup_restores_from_read_only_media_and_leaves_nothing_beside_it(db_path, tmp_path):
    """A backup is one self-contained file (rollback journal, not WAL): restored from a
    read-only mount, as a backup disk or snapshot is, with no -wal or -shm left beside it.
    A WAL-mode backup made before this change restores from there too."""
    seed(db_path, dispatches=30)
    media = tmp_path / "media"
    media.mkdir()
    code, _, stderr = receiver("backup", str(media / "events.db"), db_path=db_path)
    assert code == 0, stderr
    with open(media / "events.db", "rb") as file:
        header = file.read(100)
    assert (header[18], header[19]) == (1, 1)  # rollback journal: no -wal/-shm needed to read
    older = media / "older-wal.db"
    older.write_bytes((media / "events.db").read_bytes())
    with closing(sqlite3.connect(str(older))) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    before = sorted(p.name for p in media.iterdir())
    assert before == ["events.db", "older-wal.db"]

    mountpoint = tmp_path / "mnt"
    code, output = on_read_only_media(
        media, mountpoint,
        f"! touch {mountpoint}/probe 2>/dev/null",  # really read-only, even for root
        f"receiver restore --db {tmp_path / 'restored.db'} {mountpoint / 'events.db'}",
        f"receiver restore --db {tmp_path / 'restored-older.db'} {mountpoint / 'older-wal.db'}",
    )
    assert code == 0, output
    assert "Traceback" not in output
    for restored in ("restored.db", "restored-older.db"):
        assert stored_hashes(tmp_path / restored)[0] == stored_hashes(db_path)[0]
    assert sorted(p.name for p in media.iterdir()) == before


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_help_has_an_example(runner, command):
    result = runner.invoke([command, "--help"])
    assert result.exit_code == 0 and "Example: receiver " + command in result.output


def _parent_of(pid):
    """The parent pid of ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_an_unreadable_backup_is_named_so(db_path):
    """A backup the restoring user may not read says so in one line (click's own check of
    SOURCE), not that it is no database. Root reads any file, so as root the restore runs as
    nobody (setpriv)."""
    import os
    import shutil
    import subprocess
    import tempfile

    place = tempfile.mkdtemp(prefix="unreadable-backup-")  # not under pytest's 0700 tmp_path
    try:
        os.chmod(place, 0o777)
        saved = os.path.join(place, "saved.db")
        backup.backup(str(db_path), saved)
        os.chmod(saved, 0o000)
        command = ["receiver", "restore", "--db", os.path.join(place, "restored.db"), saved]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv(1) to drop to nobody")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=place,
                                env=receiver_environment(os.path.join(place, "restored.db")))
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.strip() == (f"Error: Invalid value for 'SOURCE': File '{saved}' is not "
                                         f"readable. (see 'receiver restore --help')")
        assert sorted(os.listdir(place)) == ["saved.db"]
    finally:
        shutil.rmtree(place)
