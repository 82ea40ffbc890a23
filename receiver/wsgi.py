"""The WSGI entry point gunicorn serves: ``gunicorn receiver.wsgi:app``."""

from . import create_app

app = create_app()
