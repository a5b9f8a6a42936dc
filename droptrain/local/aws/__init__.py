"""The local stand-ins of AWS's own services: the bucket (S3), the event bus (EventBridge), notifications (SNS),
alarms (CloudWatch) and the REST API's server (API Gateway)."""
