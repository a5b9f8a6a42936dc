"""The ``droptrain`` command and the embedded local runtime.

It is installed from its checkout (``make setup`` installs it editable, with ``chalice_app``; the
checkout's ``app.py`` is Chalice's entry point and is not installed): ``training/`` beside this
package is the very code SageMaker runs, and the local
runtime packs it as SageMaker's source dir from there (``droptrain.sourcedir``)."""
