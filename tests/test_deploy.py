"""``wukong deploy --stack``: the CloudFormation calls (botocore's Stubber on a real
client), the stack's outputs as cluster options, the command line, and the templates
themselves (cfn-lint)."""

from __future__ import annotations

import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wukong.deploy import (
    CAPABILITIES,
    MAX_TEMPLATE_BODY,
    REQUIRED_OUTPUTS,
    StackError,
    cluster_options_from_stack,
    deploy_stack,
    read_template,
    run,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((ROOT / "executor").glob("*.yaml"))
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/wk/0f1e"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
TEMPLATE = """\
Parameters:
  CodeS3Bucket: {Type: String}
  CodeS3Key: {Type: String}
  CacheMode: {Type: String, Default: serverless}
Resources:
  Topic:
    Type: AWS::SNS::Topic
    Properties:
      TopicName: !Sub "${AWS::StackName}-t"
"""


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text(TEMPLATE)
    return path


@pytest.fixture
def cfn():
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def stack(status, parameters=(), outputs=None):
    description = {"StackName": "wk", "StackId": STACK_ID, "CreationTime": NOW, "StackStatus": status}
    description["Parameters"] = [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters]
    if outputs is not None:
        description["Outputs"] = [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()]
    return {"Stacks": [description]}


def no_such_stack(stub):
    stub.add_client_error(
        "describe_stacks", "ValidationError", "Stack with id wk does not exist", expected_params={"StackName": "wk"}
    )


def event(n, logical, status, reason=None, kind="AWS::ElastiCache::ServerlessCache"):
    e = {"StackId": STACK_ID, "EventId": f"e{n}", "StackName": "wk", "Timestamp": NOW}
    e |= {"LogicalResourceId": logical, "ResourceType": kind, "ResourceStatus": status}
    e["PhysicalResourceId"] = STACK_ID if kind == "AWS::CloudFormation::Stack" else f"phys-{logical}"
    if reason:
        e["ResourceStatusReason"] = reason
    return e


# -- create, update, no updates, failure -------------------------------------------------


def test_a_missing_stack_is_created_with_iam_capabilities_and_waited_for(cfn, template):
    client, stub = cfn
    no_such_stack(stub)
    stub.add_response(
        "create_stack",
        {"StackId": STACK_ID},
        {
            "StackName": "wk",
            "TemplateBody": TEMPLATE,
            "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
            "Parameters": [
                {"ParameterKey": "CodeS3Bucket", "ParameterValue": "b"},
                {"ParameterKey": "CodeS3Key", "ParameterValue": "k.zip"},
            ],
        },
    )
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE"), {"StackName": "wk"})  # the waiter
    assert deploy_stack("wk", template, {"CodeS3Bucket": "b", "CodeS3Key": "k.zip"}, client=client) == STACK_ID


def test_an_update_keeps_the_parameters_not_given_and_drops_those_the_template_lost(cfn, template):
    client, stub = cfn
    current = [("CodeS3Bucket", "b"), ("CodeS3Key", "old.zip"), ("CacheMode", "replication-group"), ("Gone", "x")]
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE", current), {"StackName": "wk"})
    stub.add_response(
        "update_stack",
        {"StackId": STACK_ID},
        {
            "StackName": "wk",
            "TemplateBody": TEMPLATE,
            "Capabilities": CAPABILITIES,
            "Parameters": [
                {"ParameterKey": "CodeS3Key", "ParameterValue": "new.zip"},
                {"ParameterKey": "CacheMode", "UsePreviousValue": True},
                {"ParameterKey": "CodeS3Bucket", "UsePreviousValue": True},
            ],
        },
    )
    stub.add_response("describe_stacks", stack("UPDATE_COMPLETE"), {"StackName": "wk"})
    assert deploy_stack("wk", template, {"CodeS3Key": "new.zip"}, client=client) == STACK_ID


def test_an_update_with_nothing_to_change_succeeds_without_waiting(cfn, template):
    client, stub = cfn
    stub.add_response("describe_stacks", stack("UPDATE_COMPLETE", [("CodeS3Key", "k")]), {"StackName": "wk"})
    stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.")
    assert deploy_stack("wk", template, {}, client=client) == STACK_ID


def test_no_wait_returns_once_cloudformation_took_the_request(cfn, template):
    client, stub = cfn
    no_such_stack(stub)
    stub.add_response("create_stack", {"StackId": STACK_ID})
    assert deploy_stack("wk", template, {}, client=client, wait=False) == STACK_ID


def test_a_failed_create_names_each_failed_resource_of_this_attempt_with_its_reason(cfn, template):
    client, stub = cfn
    no_such_stack(stub)
    stub.add_response("create_stack", {"StackId": STACK_ID})
    stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"), {"StackName": "wk"})
    events = [  # newest first, as CloudFormation lists them
        event(9, "wk", "ROLLBACK_COMPLETE", kind="AWS::CloudFormation::Stack"),
        event(8, "wk", "ROLLBACK_IN_PROGRESS", "The following resource(s) failed", "AWS::CloudFormation::Stack"),
        event(7, "Executor", "CREATE_FAILED", "Resource creation cancelled", "AWS::Lambda::Function"),
        event(6, "ServerlessCache", "CREATE_FAILED", "Subnet subnet-1 is in an unsupported zone"),
        event(5, "ServerlessCache", "CREATE_IN_PROGRESS"),
        event(4, "wk", "CREATE_IN_PROGRESS", "User Initiated", "AWS::CloudFormation::Stack"),
        event(3, "Old", "UPDATE_FAILED", "from an earlier deployment"),
    ]
    stub.add_response("describe_stack_events", {"StackEvents": events}, {"StackName": "wk"})
    with pytest.raises(StackError) as info:
        deploy_stack("wk", template, {}, client=client)
    message = str(info.value)
    assert message.splitlines()[0] == "stack wk: ROLLBACK_COMPLETE"
    cause = (
        "ServerlessCache (AWS::ElastiCache::ServerlessCache) CREATE_FAILED: Subnet subnet-1 is in an unsupported zone"
    )
    assert cause in message
    assert message.index("ServerlessCache") < message.index("Executor (AWS::Lambda::Function)")  # the cause first
    assert "earlier deployment" not in message


def test_a_failed_update_reports_its_rollback(cfn, template):
    client, stub = cfn
    stub.add_response("describe_stacks", stack("UPDATE_COMPLETE"), {"StackName": "wk"})
    stub.add_response("update_stack", {"StackId": STACK_ID})
    stub.add_response("describe_stacks", stack("UPDATE_ROLLBACK_COMPLETE"), {"StackName": "wk"})
    events = [
        event(3, "Executor", "UPDATE_FAILED", "S3 key k.zip does not exist", "AWS::Lambda::Function"),
        event(2, "wk", "UPDATE_IN_PROGRESS", "User Initiated", "AWS::CloudFormation::Stack"),
    ]
    stub.add_response("describe_stack_events", {"StackEvents": events}, {"StackName": "wk"})
    with pytest.raises(StackError, match=r"(?s)stack wk: UPDATE_ROLLBACK_COMPLETE.*Executor .*k.zip does not exist"):
        deploy_stack("wk", template, {}, client=client)


def test_a_stack_still_in_progress_when_the_wait_ends_says_so(cfn, template, monkeypatch):
    monkeypatch.setattr("wukong.deploy.WAITER_CONFIG", {"Delay": 1, "MaxAttempts": 1})
    client, stub = cfn
    no_such_stack(stub)
    stub.add_response("create_stack", {"StackId": STACK_ID})
    stub.add_response("describe_stacks", stack("CREATE_IN_PROGRESS"), {"StackName": "wk"})
    events = [event(1, "wk", "CREATE_IN_PROGRESS", "User Initiated", "AWS::CloudFormation::Stack")]
    stub.add_response("describe_stack_events", {"StackEvents": events}, {"StackName": "wk"})
    with pytest.raises(StackError, match=r"stack wk: CREATE_IN_PROGRESS \(stopped waiting after 1 s\)"):
        deploy_stack("wk", template, {}, client=client)


def test_a_stack_whose_creation_rolled_back_must_be_deleted_first(cfn, template):
    client, stub = cfn
    stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"), {"StackName": "wk"})
    with pytest.raises(StackError, match="delete-stack --stack-name wk"):
        deploy_stack("wk", template, {}, client=client)


def test_a_refused_request_names_the_stack(cfn, template):
    client, stub = cfn
    no_such_stack(stub)
    stub.add_client_error("create_stack", "ValidationError", "Parameters: [CodeS3Bucket] must have values")
    with pytest.raises(StackError, match=r"stack wk: Parameters: \[CodeS3Bucket\] must have values"):
        deploy_stack("wk", template, {}, client=client)


# -- outputs -> cluster options -----------------------------------------------------------

OUTPUTS = {
    "FunctionName": "wukong-executor",
    "FunctionArn": "arn:aws:lambda:eu-west-1:1:function:wukong-executor",
    "Region": "eu-west-1",
    "RedisClusterUrl": "rediss://wukong-abc.serverless.euw1.cache.amazonaws.com:6379",
    "RedisSecretArn": "arn:aws:secretsmanager:eu-west-1:1:secret:redis-x",
    "MemorySize": "3008",
    "Architecture": "arm64",
    "VpcId": "vpc-1",
}


def test_outputs_become_lambda_cluster_options_without_any_secret_value(cfn):
    client, stub = cfn
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE", outputs=OUTPUTS), {"StackName": "wk"})
    assert cluster_options_from_stack("wk", client) == {
        "backend": "lambda",
        "function_name": "wukong-executor",
        "region": "eu-west-1",
        "redis_cluster": "rediss://wukong-abc.serverless.euw1.cache.amazonaws.com:6379",
        "redis_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:redis-x",
        "memory_mb": 3008,
        "architecture": "arm64",
    }


def test_a_stack_with_the_proxy_adds_its_address_and_secret_arn(cfn):
    client, stub = cfn
    outputs = {**OUTPUTS, "ProxyAddress": "10.42.0.17:8888", "ProxySecretArn": "arn:proxy"}
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE", outputs=outputs), {"StackName": "wk"})
    options = cluster_options_from_stack("wk", client)
    assert options["proxy_address"] == "10.42.0.17:8888"
    assert options["proxy_secret_arn"] == "arn:proxy"


def test_a_stack_without_wukong_outputs_is_named(cfn):
    client, stub = cfn
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE", outputs={"Region": "x"}), {"StackName": "wk"})
    with pytest.raises(StackError, match="stack wk has no output FunctionName, RedisClusterUrl, RedisSecretArn"):
        cluster_options_from_stack("wk", client)


def test_a_missing_stack_is_named_with_its_region(cfn):
    client, stub = cfn
    no_such_stack(stub)
    with pytest.raises(StackError, match="stack wk does not exist in us-east-1"):
        cluster_options_from_stack("wk", client)


@pytest.mark.parametrize("name", ["wukong.json", "wukong.yaml"])
def test_write_config_round_trips(tmp_path, name):
    import yaml

    options = {"backend": "lambda", "function_name": "f", "memory_mb": 3008}
    path = write_config(tmp_path / name, options)
    assert (json.loads if name.endswith("json") else yaml.safe_load)(path.read_text()) == options


# -- the command line ---------------------------------------------------------------------


def parse(*argv):
    from wukong.cli import parser

    return parser().parse_args(["deploy", *argv])


def fail(message):
    raise SystemExit(message)


def test_cli_reads_stack_options():
    args = parse(
        "--stack", "wk", "--parameter", "CodeS3Bucket=b", "CodeS3Key=k=1.zip", "--parameter", "EnableProxy=true"
    )
    assert args.stack == "wk"
    assert args.parameter == ["CodeS3Bucket=b", "CodeS3Key=k=1.zip", "EnableProxy=true"]
    assert Path(args.template) == ROOT / "executor" / "stack.yaml"
    assert args.write_config is None


def test_cli_deploys_the_stack_prints_and_writes_the_cluster_options(cfn, template, tmp_path, capsys):
    client, stub = cfn
    no_such_stack(stub)
    expected = [{"ParameterKey": "CodeS3Bucket", "ParameterValue": "b"}]
    stub.add_response(
        "create_stack",
        {"StackId": STACK_ID},
        {"StackName": "wk", "TemplateBody": TEMPLATE, "Capabilities": CAPABILITIES, "Parameters": expected},
    )
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE"), {"StackName": "wk"})
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE", outputs=OUTPUTS), {"StackName": "wk"})
    config = tmp_path / "wukong.json"
    args = parse(
        "--stack", "wk", "--template", str(template), "--parameter", "CodeS3Bucket=b", "--write-config", str(config)
    )
    assert run(args, fail, client) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(config.read_text())
    assert printed["function_name"] == "wukong-executor"


def test_cli_reports_a_failed_stack_on_stderr(cfn, template, capsys):
    client, stub = cfn
    stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"), {"StackName": "wk"})
    assert run(parse("--stack", "wk", "--template", str(template)), fail, client) == 1
    assert "wukong deploy: stack wk failed to create" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stack", "wk", "--role-arn", "r"], "drop --role-arn and --zip"),
        (["--stack", "wk", "--parameter", "NoEquals"], "expected KEY=VALUE"),
        (["--function-name", "f"], "give --stack NAME, or --role-arn and --zip"),
        (["--role-arn", "r", "--zip", "z", "--timeout", "0"], "1..900"),
    ],
)
def test_cli_refuses_mixed_or_incomplete_arguments(argv, message):
    with pytest.raises(SystemExit, match=message):
        run(parse(*argv), fail)


# -- the templates ------------------------------------------------------------------------


def test_cfn_lint_passes_on_every_template():
    if importlib.util.find_spec("cfnlint") is None:
        pytest.fail("cfn-lint is not installed: pip install -e '.[test]' (or pip install cfn-lint)")
    assert len(TEMPLATES) >= 2, TEMPLATES
    lint = "import sys; from cfnlint.runner import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", lint, *map(str, TEMPLATES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stack_template_fits_in_one_request_and_gives_what_wukong_reads():
    body = (ROOT / "executor" / "stack.yaml").read_text()
    assert len(body.encode()) <= MAX_TEMPLATE_BODY
    template = read_template(body)
    assert {"CodeS3Bucket", "CodeS3Key", "CacheMode", "NodeType", "NumShards", "ReplicasPerShard"} <= set(
        template["Parameters"]
    )
    assert {"MemorySize", "Timeout", "Architecture", "EnableProxy"} <= set(template["Parameters"])
    assert set(REQUIRED_OUTPUTS) <= set(template["Outputs"])
    env = template["Resources"]["Executor"]["Properties"]["Environment"]["Variables"]
    assert {"WUKONG_REDIS_SECRET_ARN", "WUKONG_REDIS_CLUSTER"} <= set(env)
    # events carry no secret: with the proxy on, the executors read its shared secret themselves
    assert "WUKONG_PROXY_SECRET_ARN" in env
    assert template["Resources"]["RedisUser"]["Properties"]["AccessString"].startswith("on ~wk:* ")
