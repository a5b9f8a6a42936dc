"""One adapter per AWS service. Each takes its boto3 client in the constructor, hides pagination,
and raises the errors of ``adapters.errors`` rather than botocore's."""
