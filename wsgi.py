"""WSGI entry for gunicorn: one worker, many threads (Socket.IO threading mode).

    gunicorn --worker-class gthread --workers 1 --threads 50 --bind 127.0.0.1:5000 wsgi:app

One worker because the scheduler, the runner and the Socket.IO rooms live in the process; scale
out with more replicas on PostgreSQL + Redis instead (README, "Scaling out").
"""

import sys

from app import create_app
from app.config import ConfigError
from app.startup import StartupError, prepare_server

try:
    app = create_app()
    prepare_server(app)
except (ConfigError, StartupError) as error:
    print(f"nomaflow: {error}", file=sys.stderr, flush=True)
    sys.exit(getattr(error, "exit_code", 2))
