"""The Gunicorn target: ``gunicorn -c deploy/gunicorn.conf.py service.wsgi:app``."""

import logging

from service import create_app

# Application logs (model loads, alias switches, failures) go to stderr, next to
# Gunicorn's own error log. Library code never configures logging; the entry point does.
logging.basicConfig(
    level=logging.INFO,
    format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
)

app = create_app()
