"""The ``droptrain`` command and the embedded local runtime.

It is installed from its checkout (``make setup`` installs it editable, with ``app`` and
``chalice_app``): ``training/`` beside this package is the very code SageMaker runs, and the local
runtime packs it as SageMaker's source dir from there (``droptrain.sourcedir``)."""
