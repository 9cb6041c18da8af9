"""The ``wukong`` command.

* ``wukong deploy``: create or update the AWS stack of ``executor/stack.yaml``
  (``--stack NAME``), or the executor function alone (``wukong.deploy``).
* ``wukong lambda-local``: serve the Lambda Invoke API locally (``wukong.lambda_local``).
* ``wukong demo``: the demo (``wukong.demo``).
* ``wukong proxy``: run the fan-out proxy on this machine (``wukong.proxy.server``).
* ``wukong doctor``: versions of the client, a zip, a deployed function, Redis (``wukong.doctor``).
* ``wukong simulate``: predict a job on Lambda from a local run (``wukong.simulate.cli``).
"""

from __future__ import annotations

import argparse
import sys

from wukong.deploy import add_parser as _add_deploy_parser
from wukong.deploy import deploy, function_config
from wukong.deploy import run as _run_deploy

__all__ = ["deploy", "function_config", "main", "parser"]  # deploy, function_config: re-exported


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wukong", description="Run Dask graphs on serverless executors.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_deploy_parser(sub)
    sub.add_parser("lambda-local", help="serve the Lambda Invoke API locally", add_help=False)
    sub.add_parser("demo", help="run the demo", add_help=False)
    sub.add_parser("proxy", help="run the fan-out proxy (secret in $WUKONG_PROXY_SECRET)", add_help=False)
    sub.add_parser("doctor", help="versions of the client, a zip, a deployed function and Redis", add_help=False)
    sub.add_parser("simulate", help="predict a job on AWS Lambda from a local run", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # These take their own options: hand them the rest of the line untouched.
    if argv[:1] == ["lambda-local"]:
        from wukong.lambda_local import main as lambda_local_main

        return lambda_local_main(argv[1:])
    if argv[:1] == ["proxy"]:
        from wukong.proxy.server import main as proxy_main

        return proxy_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from wukong.doctor import run as doctor

        return doctor(argv[1:])
    if argv[:1] == ["simulate"]:
        from wukong.simulate.cli import main as simulate_main

        return simulate_main(argv[1:])
    if argv[:1] == ["demo"]:
        from wukong.demo import cli as demo_cli

        return demo_cli(argv[1:])
    p = parser()
    return _run_deploy(p.parse_args(argv), p.error)


if __name__ == "__main__":
    sys.exit(main())
