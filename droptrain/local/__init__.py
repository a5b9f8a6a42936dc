"""The embedded local runtime: the whole pipeline on one machine, no AWS account, no Docker.

The same handlers and ``chalice_app`` code as in Lambda run here; only the adapters differ, and
``chalice_app.bootstrap.build`` is the one place that chooses them."""

from droptrain import use_project_code

use_project_code()
