"""Deploying wukong on AWS: ``wukong deploy``.

* ``deploy_stack`` creates or updates the whole stack of ``executor/stack.yaml``
  (network, ElastiCache, its secret, the executor function, the optional proxy)
  through the CloudFormation API and waits for it.  When CloudFormation gives
  up, the error names the stack and every resource that failed in this
  deployment, with CloudFormation's reason, oldest first: the first is
  usually the cause, the rest were cancelled because of it.
* ``cluster_options_from_stack`` turns the stack's outputs into the keyword
  arguments of ``LocalCluster``; ``write_config`` saves them to a file.
* ``deploy`` puts the function alone on Lambda, with a role and a network
  that exist already, from a zip on this machine (``executor/build.py``).

An update passes only the parameters given; the stack's other parameters keep
their values (``UsePreviousValue``), not the template's defaults, so
``wukong deploy --stack NAME --parameter CodeS3Key=NEW`` never turns a
replication group back into a serverless cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from wukong import aws

ARCHITECTURES = ("x86_64", "arm64")
RUNTIME = "python3.12"
HANDLER = "handler.handler"
TEMPLATE = Path(__file__).resolve().parent.parent / "executor" / "stack.yaml"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
MAX_TEMPLATE_BODY = 51_200  # bytes CreateStack takes inline; a larger template needs an S3 URL
WAITER_CONFIG = {"Delay": 15, "MaxAttempts": 240}  # an hour: a replication group takes about 20 minutes
NO_UPDATES = "No updates are to be performed"
# Stack output -> LocalCluster keyword argument.
REQUIRED_OUTPUTS = {
    "FunctionName": "function_name",
    "Region": "region",
    "RedisClusterUrl": "redis_cluster",
    "RedisSecretArn": "redis_secret_arn",
}
OPTIONAL_OUTPUTS = {
    "MemorySize": "memory_mb",
    "Architecture": "architecture",
    "ProxyAddress": "proxy_address",
    "ProxySecretArn": "proxy_secret_arn",
}


class StackError(RuntimeError):
    """A stack could not be deployed or read; the message names the stack and what failed."""


def aws_client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A boto3 client for ``service``; CloudFormation and Lambda's control plane have no
    backoff of ours, so botocore's retries stay on."""
    return aws.client(service, region=region, endpoint_url=endpoint_url, retries=5)


# -- the whole stack ----------------------------------------------------------------------


def deploy_stack(
    name: str,
    template_path: str | Path,
    parameters: Mapping[str, str],
    *,
    client: Any = None,
    wait: bool = True,
) -> str:
    """Create the stack ``name`` from a template, or update it, and wait for it.

    Parameters
    ----------
    name : str
        The stack's name.
    template_path : str or Path
        A CloudFormation template, e.g. ``executor/stack.yaml``.
    parameters : mapping of str to str
        Template parameters.  On an update the stack's other parameters keep
        their current values.
    client : botocore CloudFormation client, optional
        Default: ``boto3.client("cloudformation")``.
    wait : bool
        Return only when the stack is complete.

    Returns
    -------
    str
        The stack's id (its ARN).  An update with nothing to change succeeds.

    Raises
    ------
    StackError
        CloudFormation refused the template or the parameters, or the stack
        failed: the message lists each failed resource with its reason.
    """
    cfn = client if client is not None else aws_client("cloudformation")
    body = Path(template_path).read_text()
    if len(body.encode()) > MAX_TEMPLATE_BODY:
        raise StackError(f"stack {name}: template {template_path} is over {MAX_TEMPLATE_BODY} bytes")
    current = _describe(cfn, name)
    request = {"StackName": name, "TemplateBody": body, "Capabilities": CAPABILITIES}
    try:
        if current is None:
            stack_id = cfn.create_stack(**request, Parameters=_parameters(parameters))["StackId"]
            waiter = "stack_create_complete"
        else:
            if current["StackStatus"] == "ROLLBACK_COMPLETE":
                raise StackError(
                    f"stack {name} failed to create and was rolled back; delete it first "
                    f"(aws cloudformation delete-stack --stack-name {name}), then deploy again"
                )
            keep = set(read_template(body).get("Parameters") or {}) & {
                p["ParameterKey"] for p in current.get("Parameters", [])
            }
            stack_id = cfn.update_stack(**request, Parameters=_parameters(parameters, keep))["StackId"]
            waiter = "stack_update_complete"
    except cfn.exceptions.ClientError as exc:
        if current is not None and NO_UPDATES in _message(exc):
            return current["StackId"]
        raise StackError(f"stack {name}: {_message(exc)}") from exc
    if wait:
        _wait(cfn, name, waiter)
    return stack_id


def read_template(body: str) -> dict[str, Any]:
    """A template (YAML or JSON) as plain data, short-form functions (``!Ref``, ``!Sub``, ...) read as None.

    Enough to list its parameters, resources and outputs.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(body, Loader) or {}


def _parameters(given: Mapping[str, str], keep: Iterable[str] = ()) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in given.items()]
    listed += [{"ParameterKey": k, "UsePreviousValue": True} for k in sorted(set(keep) - set(given))]
    return listed


def _describe(cfn: Any, name: str) -> dict[str, Any] | None:
    """The stack's description, or None when there is no such stack."""
    try:
        return cfn.describe_stacks(StackName=name)["Stacks"][0]
    except cfn.exceptions.ClientError as exc:
        if "does not exist" in _message(exc):
            return None
        raise StackError(f"stack {name}: {_message(exc)}") from exc


def _message(exc: Any) -> str:
    return exc.response.get("Error", {}).get("Message", str(exc))


def _wait(cfn: Any, name: str, waiter: str) -> None:
    from botocore.exceptions import WaiterError

    try:
        cfn.get_waiter(waiter).wait(StackName=name, WaiterConfig=WAITER_CONFIG)
    except WaiterError as exc:
        stacks = (exc.last_response or {}).get("Stacks") or [{}]
        status = stacks[0].get("StackStatus", "in an unknown state")
        lines = [f"stack {name}: {status}"]
        if status.endswith("_IN_PROGRESS"):  # the waiter's time ran out; CloudFormation carries on
            lines[0] += f" (stopped waiting after {WAITER_CONFIG['Delay'] * WAITER_CONFIG['MaxAttempts']} s)"
        try:
            events = failed_events(cfn, name)
        except cfn.exceptions.ClientError as events_exc:
            lines.append(f"  (its events could not be read: {_message(events_exc)})")
        else:
            lines += [
                f"  {e['LogicalResourceId']} ({e.get('ResourceType', '?')}) {e['ResourceStatus']}: "
                f"{e.get('ResourceStatusReason', 'no reason given')}"
                for e in events
            ] or ["  no resource reported a failure; see the stack's events"]
        raise StackError("\n".join(lines)) from exc


def failed_events(cfn: Any, name: str) -> list[dict[str, Any]]:
    """The stack's ``*_FAILED`` events of its latest create or update, oldest first."""
    failed = []
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=name):
        for event in page["StackEvents"]:  # newest first
            if event["ResourceStatus"].endswith("_FAILED"):
                failed.append(event)
            started = event["ResourceStatus"] in ("CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS")
            if started and event.get("PhysicalResourceId") == event["StackId"]:  # the stack itself
                return failed[::-1]
    return failed[::-1]


def stack_outputs(name: str, client: Any = None, region: str | None = None) -> dict[str, str]:
    """The stack's outputs, ``{OutputKey: OutputValue}``.

    Raises
    ------
    StackError
        There is no such stack (in ``region``, or the client's region).
    """
    cfn = client if client is not None else aws_client("cloudformation", region)
    stack = _describe(cfn, name)
    if stack is None:
        where = cfn.meta.region_name
        raise StackError(f"stack {name} does not exist in {where} (wukong deploy --stack {name} creates it)")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def cluster_options_from_stack(name: str, client: Any = None, region: str | None = None) -> dict[str, Any]:
    """``LocalCluster`` keyword arguments for the cluster a stack of ``executor/stack.yaml`` holds.

    Returns
    -------
    dict
        ``backend="lambda"``, ``function_name``, ``region`` (the stack's),
        ``redis_cluster`` (a ``rediss://`` URL without credentials),
        ``redis_secret_arn``, ``memory_mb``, ``architecture``, and
        ``proxy_address`` with ``proxy_secret_arn`` when the stack runs the proxy.
        No secret value: only where to read it.

    Examples
    --------
    >>> LocalCluster(**cluster_options_from_stack("wukong"))  # doctest: +SKIP
    """
    outputs = stack_outputs(name, client, region)
    missing = sorted(set(REQUIRED_OUTPUTS) - set(outputs))
    if missing:
        raise StackError(f"stack {name} has no output {', '.join(missing)}: is it a stack of executor/stack.yaml?")
    options: dict[str, Any] = {"backend": "lambda"}
    for key, arg in {**REQUIRED_OUTPUTS, **OPTIONAL_OUTPUTS}.items():
        if key in outputs:
            options[arg] = outputs[key]
    if "memory_mb" in options:
        options["memory_mb"] = int(options["memory_mb"])
    return options


def write_config(path: str | Path, options: Mapping[str, Any]) -> Path:
    """Write cluster options to ``path``: YAML for ``.yaml``/``.yml``, JSON otherwise."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(dict(options), sort_keys=True)
    else:
        text = json.dumps(dict(options), indent=2, sort_keys=True) + "\n"
    path.write_text(text)
    return path


# -- the function alone -------------------------------------------------------------------


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
        client = aws_client("lambda", args.region, args.endpoint_url)
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


# -- wukong deploy ------------------------------------------------------------------------


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``deploy`` to the ``wukong`` command's subparsers."""
    p = sub.add_parser(
        "deploy",
        help="create or update the AWS stack (--stack), or the executor function alone",
        description="Create or update the whole AWS stack (--stack NAME), or only the executor "
        "function with an existing role (--role-arn, --zip).",
    )
    p.add_argument("--region")
    p.add_argument("--endpoint-url")
    s = p.add_argument_group("the whole stack (executor/stack.yaml)")
    s.add_argument("--stack", metavar="NAME", help="CloudFormation stack to create or update")
    s.add_argument("--template", default=str(TEMPLATE), help="default: %(default)s")
    s.add_argument(
        "--parameter",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="template parameters, e.g. CodeS3Bucket=my-bucket CodeS3Key=wukong.zip",
    )
    s.add_argument("--write-config", metavar="PATH", help="also write the cluster options (.json, or .yaml)")
    f = p.add_argument_group("the function alone")
    f.add_argument("--function-name", default="wukong-executor")
    f.add_argument("--role-arn", help="execution role (see executor/template.yaml for its policy)")
    f.add_argument("--zip", help="the zip built by executor/build.py")
    f.add_argument("--memory", type=int, default=3008, help="MB (128..10240)")
    f.add_argument("--timeout", type=int, default=900, help="seconds (1..900)")
    f.add_argument("--arch", choices=ARCHITECTURES, default="x86_64")
    f.add_argument("--subnet-ids", nargs="*", default=[])
    f.add_argument("--security-group-ids", nargs="*", default=[])
    return p


def parse_parameters(items: Iterable[str]) -> dict[str, str]:
    """``["Key=Value", ...]`` as a dict; a value may hold ``=``."""
    parameters = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise ValueError(f"--parameter {item!r}: expected KEY=VALUE")
        parameters[key] = value
    return parameters


def run(args: argparse.Namespace, error: Callable[[str], NoReturn], client: Any = None) -> int:
    """``wukong deploy``: the stack, or the function alone; ``error`` reports bad arguments."""
    if args.stack:
        if args.role_arn or args.zip:
            error("--stack creates the function's role and takes its code from S3: drop --role-arn and --zip")
        try:
            parameters = parse_parameters(args.parameter)
        except ValueError as exc:
            error(str(exc))
        cfn = client if client is not None else aws_client("cloudformation", args.region, args.endpoint_url)
        try:
            deploy_stack(args.stack, args.template, parameters, client=cfn)
            options = cluster_options_from_stack(args.stack, cfn)
        except StackError as exc:
            print(f"wukong deploy: {exc}", file=sys.stderr)
            return 1
        if args.write_config:
            write_config(args.write_config, options)
        print(json.dumps(options, indent=2))
        return 0
    if not args.role_arn or not args.zip:
        error("give --stack NAME, or --role-arn and --zip to deploy the function alone")
    if not 128 <= args.memory <= 10240:
        error(f"--memory must be 128..10240 MB, got {args.memory}")
    if not 1 <= args.timeout <= 900:
        error(f"--timeout must be 1..900 s, got {args.timeout}")
    print(deploy(args, client))
    return 0
