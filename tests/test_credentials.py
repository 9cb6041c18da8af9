"""Redis credentials come from where a process is configured, never from an event."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlparse

import boto3
import botocore.session
import pytest
import redis
from botocore.stub import Stubber

from wukong.store import Endpoint, Store, credentials
from wukong.store.credentials import IAM_REFRESH_SECONDS, IAMCredentialProvider


def test_a_secret_is_json_with_username_and_password_or_the_password_alone():
    assert credentials.parse_secret('{"username": "wk", "password": "p"}') == {"username": "wk", "password": "p"}
    assert credentials.parse_secret("bare-password") == {"username": None, "password": "bare-password"}
    assert credentials.parse_secret('{"other": 1}') == {"username": None, "password": '{"other": 1}'}


def test_an_ssm_parameter_is_read_with_decryption_once_per_process(monkeypatch):
    ssm = boto3.session.Session().client(
        "ssm", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    calls = []

    def client(service, **kwargs):
        calls.append(service)
        return ssm

    monkeypatch.setattr(credentials.aws, "client", client)
    with Stubber(ssm) as stub:
        value = json.dumps({"username": "wk", "password": "from-ssm"})
        stub.add_response(
            "get_parameter",
            {"Parameter": {"Name": "/wukong/redis", "Value": value, "Type": "SecureString"}},
            {"Name": "/wukong/redis", "WithDecryption": True},
        )
        env = {credentials.SSM_PARAMETER_ENV: "/wukong/redis"}
        first = credentials.from_environment(env)
        assert credentials.from_environment(env) is first  # cached: one GetParameter per warm container
        stub.assert_no_pending_responses()
    assert first.get_credentials() == ("wk", "from-ssm") and calls == ["ssm"]


def test_no_configuration_means_no_credentials():
    assert credentials.from_environment({}) is None


def test_store_config_without_secrets_is_filled_from_credentials(redis_server):
    ep = Endpoint("127.0.0.1", redis_server.port, password=redis_server.password)
    store = Store(ep, [ep])
    config = store.to_config(secrets=False)
    store.close()
    assert redis_server.password not in json.dumps(config)
    with pytest.raises(redis.AuthenticationError):
        Store.from_config(config).mds.ping()
    opened = Store.from_config(config, {"username": None, "password": redis_server.password})
    assert opened.mds.ping()
    opened.close()


def test_a_rotated_secret_is_read_again_when_redis_refuses_a_new_connection(redis_server):
    """A warm executor keeps the credentials it read; once the secret is rotated its open
    connections stay logged in, and the next it opens is refused: it reads the secret
    again and logs in with the new password, on redis-py's connections and its own kept
    ones alike.  A password that is refused after a fresh read is an error, not a loop."""
    secret = {"username": None, "password": redis_server.password}
    clock = Clock()
    provider = credentials.SecretCredentials(lambda: dict(secret), clock=clock)
    ep = Endpoint("127.0.0.1", redis_server.port, password=redis_server.password)
    config = Store(ep, [ep]).to_config(secrets=False)
    store = Store.from_config(config, provider)  # as the Lambda handler opens it
    batch = store.batch()
    h = batch.mds("set", "k", "v")
    batch.execute()
    assert store.mds.ping() and batch[h]

    admin = redis.Redis(port=redis_server.port, password=redis_server.password)
    admin.config_set("requirepass", "rotated")
    secret["password"] = "rotated"
    clock.now += credentials.RENEW_MIN_S  # (it reads again at most once a second)
    store.close()  # its connections gone (an idle timeout, a thaw); the store is used again
    assert store.mds.ping()  # a pool's new connection
    batch = store.batch()
    h = batch.mds("get", "k")
    batch.execute()  # the thread's kept connection, opened again
    assert batch[h] == b"v" and provider.reads == 2
    store.close()

    admin = redis.Redis(port=redis_server.port, password="rotated")
    admin.config_set("requirepass", "rotated-again")  # and the secret still says "rotated"
    stale = credentials.SecretCredentials(lambda: dict(secret), clock=clock)
    clock.now += credentials.RENEW_MIN_S
    with pytest.raises(redis.AuthenticationError):
        Store.from_config(config, stale).mds.ping()
    assert stale.reads == 2  # read once more, the same: raised
    redis.Redis(port=redis_server.port, password="rotated-again").config_set("requirepass", redis_server.password)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def iam_provider(clock):
    session = botocore.session.get_session()
    session.set_credentials("AKIDEXAMPLE", "secret-key")
    return IAMCredentialProvider("wukong", "my-cache", region="us-east-1", session=session, clock=clock)


def test_iam_auth_signs_a_connect_token_for_the_user_and_cache():
    user, token = iam_provider(Clock()).get_credentials()
    url = urlparse("https://" + token)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert user == "wukong" and url.hostname == "my-cache"
    assert query["Action"] == "connect" and query["User"] == "wukong" and query["ResourceType"] == "ServerlessCache"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "900"
    assert (
        query["X-Amz-Credential"].startswith("AKIDEXAMPLE/")
        and "/elasticache/aws4_request" in query["X-Amz-Credential"]
    )
    assert len(query["X-Amz-Signature"]) == 64


def test_iam_token_is_kept_and_signed_again_before_it_expires():
    clock = Clock()
    provider = iam_provider(clock)
    provider.get_credentials()
    clock.now += IAM_REFRESH_SECONDS - 1
    provider.get_credentials()
    assert provider.signed == 1
    clock.now += 1
    provider.get_credentials()
    assert provider.signed == 2


def test_a_credential_provider_is_asked_by_every_new_connection(redis_server):
    class Provider:  # IAM's, say
        asked = 0

        def get_credentials(self):
            Provider.asked += 1
            return ("default", redis_server.password)

    ep = Endpoint("127.0.0.1", redis_server.port).with_credentials(Provider())
    assert redis_server.password not in json.dumps(ep.to_config(secrets=False))  # a Lambda event's
    assert ep.to_config()["password"] == redis_server.password  # a local worker's: a provider does not travel
    Provider.asked = 0
    r = ep.connect()
    assert r.ping() and Provider.asked == 1
    r.close()


def test_no_local_child_has_the_password_in_its_argv_or_environment():
    """The embedded redis-server reads it on stdin, the workers read the store config on stdin."""
    import psutil
    from conftest import argv_and_environments

    from wukong import Client, LocalCluster

    with LocalCluster(n_workers=2, use_local_proxy=True) as cluster:
        password = cluster.redis_servers[0].password
        assert Client(cluster, progress=False).get({"a": (abs, -3)}, "a") == 3
        procs = psutil.Process().children(recursive=True)
        seen = argv_and_environments(procs)
    assert len(procs) >= 4 and password  # redis-server, two workers, the proxy
    assert not [s for s in seen if password in s]


def test_the_proxy_secret_is_kept_and_read_again_at_most_once_a_second(monkeypatch):
    """The warm container's proxy secret is a ``SecretCredentials`` too: many refused
    requests at once (the invoker's threads) read the secret once, not once each."""
    read = []
    monkeypatch.setattr(credentials, "read_secret", lambda arn: read.append(arn) or {"password": f"s{len(read)}"})
    env = {credentials.PROXY_SECRET_ARN_ENV: f"arn:aws:secretsmanager:us-east-1:1:secret:proxy-{time.monotonic()}"}
    assert credentials.proxy_secret_from_environment(env) == "s1"
    assert credentials.proxy_secret_from_environment(env) == "s1" and len(read) == 1  # kept
    assert [credentials.proxy_secret_from_environment(env, renew=True) for _ in range(8)] == ["s1"] * 8
    assert len(read) == 1  # read a moment ago: not again
    time.sleep(credentials.RENEW_MIN_S)
    assert credentials.proxy_secret_from_environment(env, renew=True) == "s2" and len(read) == 2


def test_a_secret_without_a_user_logs_in_as_the_endpoints_user():
    """An ACL user in the endpoint's URL, a secret holding only a password: the login (and a
    local worker's config) use that user, as a secret read into a dict did."""
    from wukong.store.endpoint import _AsUser

    secret = {"username": None, "password": "pw"}
    provider = credentials.SecretCredentials(lambda: dict(secret))
    ep = Endpoint.parse("redis://app@127.0.0.1:6379").with_credentials(provider)
    assert isinstance(ep.credential_provider, _AsUser)
    assert ep.credential_provider.get_credentials() == ("app", "pw")
    assert (ep.to_config()["username"], ep.to_config()["password"]) == ("app", "pw")
    secret.update(username="other", password="pw2")
    time.sleep(credentials.RENEW_MIN_S)
    assert ep.credential_provider.renew() and ep.credential_provider.get_credentials() == ("other", "pw2")
