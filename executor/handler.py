"""The AWS Lambda entry point of wukong's executor (``handler.handler``).

All logic lives in ``wukong.lambda_backend``; this file only names it for the
Lambda runtime, which imports ``handler`` from the zip's root.
"""

from wukong.lambda_backend import handler

__all__ = ["handler"]
