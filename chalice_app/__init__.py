"""droptrain's orchestration: configuration, typed events, SageMaker request builders, one adapter
per AWS service, the pipeline steps and the prediction proxy. boto3 and the standard library only."""
