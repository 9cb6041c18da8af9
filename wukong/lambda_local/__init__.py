"""A local endpoint that speaks the AWS Lambda Invoke API (``server``), and its
execution environments (``worker``): ``wukong lambda-local``."""

from wukong.lambda_local.server import LambdaLocal, main

__all__ = ["LambdaLocal", "main"]
