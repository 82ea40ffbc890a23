"""Helpers shared by tests/ and bench/: one place for each job.

- ``testing.processes``: a free port, the real gunicorn, the real Datasette, the Procfile's
  processes, each in its own process group and stopped with it.
- ``testing.traffic``: realistic callback bodies (from ``receiver.simulate``), a threaded load
  generator that records what each POST got, and checks of the file afterwards.
- ``testing.signing``: Vonage-style signature tokens (HS256 JWT with ``payload_hash``).

Not part of the installed package: tests import it through pytest's ``pythonpath`` (see
pyproject.toml), bench scripts by putting the repository root on ``sys.path``.
"""
