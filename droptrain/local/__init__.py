"""The embedded local runtime: the whole pipeline on one machine, no AWS account, no Docker.

The same handlers and ``chalice_app`` code as in Lambda run here; the runtime builds its own app
from its own environment and passes it its own adapters (``chalice_app.application.create_app(env, services)``), which
implement the ports of ``chalice_app.ports``. Nothing in ``chalice_app`` knows this package exists."""
