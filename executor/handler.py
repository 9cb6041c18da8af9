"""The AWS Lambda entry point of wukong's executor (``handler.handler``).

All logic lives in ``wukong.backends.aws_lambda``; this file only names it for the
Lambda runtime, which imports ``handler`` from the zip's root.
"""

from wukong.backends.aws_lambda import handler

__all__ = ["handler"]
