"""The Lambda entry point Chalice loads: the app for this stage's environment (``chalice_app.application``).

AWS's adapters are built at the first event, from ``os.environ``; nothing is built at import."""

import os

from chalice_app.application import create_app

app = create_app(os.environ)
