"""The ``wukong`` command.

* ``wukong deploy``: create or update the executor Lambda function from a zip
  built by ``executor/build.py``.
* ``wukong lambda-local``: serve the Lambda Invoke API locally (``wukong.lambda_local``).
* ``wukong demo``: the demo (``wukong.demo``).
* ``wukong proxy``: run the fan-out proxy on this machine (``wukong.proxy``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

ARCHITECTURES = ("x86_64", "arm64")
RUNTIME = "python3.12"
HANDLER = "handler.handler"


def function_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings CreateFunction and UpdateFunctionConfiguration share."""
    config: dict[str, Any] = {
        "FunctionName": args.function_name,
        "Role": args.role_arn,
        "Runtime": RUNTIME,
        "Handler": HANDLER,
        "MemorySize": args.memory,
        "Timeout": args.timeout,
        "Description": "wukong executor",
        "Environment": {"Variables": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}},
    }
    if args.subnet_ids:
        config["VpcConfig"] = {"SubnetIds": args.subnet_ids, "SecurityGroupIds": args.security_group_ids or []}
    return config


def deploy(args: argparse.Namespace, client: Any = None) -> str:
    """Create the function, or update its code and configuration; returns its ARN."""
    if client is None:
        import boto3

        client = boto3.client("lambda", region_name=args.region, endpoint_url=args.endpoint_url)
    with open(args.zip, "rb") as f:
        code = f.read()
    config = function_config(args)
    try:
        client.get_function(FunctionName=args.function_name)
        exists = True
    except client.exceptions.ResourceNotFoundException:
        exists = False
    if not exists:
        reply = client.create_function(
            **config, Code={"ZipFile": code}, Architectures=[args.arch], PackageType="Zip", Publish=False
        )
        return reply["FunctionArn"]
    client.update_function_code(FunctionName=args.function_name, ZipFile=code, Architectures=[args.arch])
    client.get_waiter("function_updated_v2").wait(FunctionName=args.function_name)
    reply = client.update_function_configuration(**config)
    return reply["FunctionArn"]


def _deploy_parser(sub: Any) -> None:
    p = sub.add_parser("deploy", help="create or update the executor Lambda function")
    p.add_argument("--function-name", default="wukong-executor")
    p.add_argument("--role-arn", required=True, help="execution role (see executor/template.yaml for its policy)")
    p.add_argument("--zip", required=True, help="the zip built by executor/build.py")
    p.add_argument("--memory", type=int, default=3008, help="MB (128..10240)")
    p.add_argument("--timeout", type=int, default=900, help="seconds (1..900)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="x86_64")
    p.add_argument("--region")
    p.add_argument("--endpoint-url")
    p.add_argument("--subnet-ids", nargs="*", default=[])
    p.add_argument("--security-group-ids", nargs="*", default=[])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wukong", description="Run Dask graphs on serverless executors.")
    sub = p.add_subparsers(dest="command", required=True)
    _deploy_parser(sub)
    sub.add_parser("lambda-local", help="serve the Lambda Invoke API locally", add_help=False)
    sub.add_parser("demo", help="run the demo", add_help=False)
    sub.add_parser("proxy", help="run the fan-out proxy (secret in $WUKONG_PROXY_SECRET)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # These take their own options: hand them the rest of the line untouched.
    if argv[:1] == ["lambda-local"]:
        from wukong.lambda_local import main as lambda_local_main

        return lambda_local_main(argv[1:])
    if argv[:1] == ["proxy"]:
        from wukong.proxy import main as proxy_main

        return proxy_main(argv[1:])
    if argv[:1] == ["demo"]:
        from wukong.demo import cli as demo_cli

        return demo_cli(argv[1:])
    args = parser().parse_args(argv)
    if not 128 <= args.memory <= 10240:
        parser().error(f"--memory must be 128..10240 MB, got {args.memory}")
    if not 1 <= args.timeout <= 900:
        parser().error(f"--timeout must be 1..900 s, got {args.timeout}")
    print(deploy(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
