"""A job's failure in one line that names its cause, where SageMaker's FailureReason buries it.

A job with no way to the internet (network isolation, or a VPC without a NAT gateway) fails while
AWS's training toolkit pip-installs ``training/requirements.txt``, before any of our code runs; the
reason is the toolkit's ``InstallRequirementsError`` with pip's retries and stack in it. (ImageNet
weights that cannot be downloaded already fail the job with one line of train.py's, in its failure
file: trainlib/models.py.)
"""

from __future__ import annotations

_NO_NETWORK = (
    "Network is unreachable",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Connection timed out",
    "Read timed out",
    "from versions: none",
)
NO_NETWORK = (
    "the job could not pip-install training/requirements.txt: it cannot reach PyPI (network isolation, or a VPC "
    "without a NAT gateway); give the training jobs internet access"
)


def named(reason: str) -> str:
    """``reason``, or the one line that names its cause followed by the toolkit's first line."""
    if "InstallRequirementsError" in reason and any(sign in reason for sign in _NO_NETWORK):
        return f"{NO_NETWORK} (SageMaker: {reason.strip().splitlines()[0]})"
    return reason
