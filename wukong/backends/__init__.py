"""Where executors run: the surface every backend offers (``base``), and the backends.

=================  ==========================================================
module             what
=================  ==========================================================
``base``           ``Backend``: what the client and the executor rely on; ``launch``
``local``          warm worker processes on this machine, fed by a Redis queue
``worker``         one local worker process (``python -m wukong.backends.worker``)
``aws_lambda``     invocations of an AWS Lambda function; its handler
=================  ==========================================================

Importing this package imports none of them: each is loaded when used.
"""
