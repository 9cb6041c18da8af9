"""Redis credentials that never travel in an event: read where the process is configured.

On Lambda an invocation event carries only where Redis is (``Store.to_config(
secrets=False)``).  The executor finds how to log in from its function's
environment, once per warm container (``from_environment`` caches), and again
when Redis refuses them (a rotated secret: ``SecretCredentials``):

=============================  =====================================================
variable                       what
=============================  =====================================================
``WUKONG_REDIS_SECRET_ARN``    a Secrets Manager secret: ``{"username", "password"}``
                               (JSON) or the password alone; ``GetSecretValue``
``WUKONG_REDIS_SSM_PARAMETER`` an SSM parameter (SecureString) holding the same;
                               ``GetParameter`` with decryption
``WUKONG_REDIS_IAM_USER``      ElastiCache IAM authentication as this user, for the
                               cache ``WUKONG_REDIS_IAM_CACHE``: a SigV4-signed token
                               (botocore's signer), made again before it expires
``WUKONG_PROXY_SECRET_ARN``    the fan-out proxy's shared secret (a secret holding it
                               alone), or ``WUKONG_PROXY_SECRET`` the value itself
=============================  =====================================================

The client reads the same secret (``LocalCluster(redis_secret_arn=...)``).  A
local stand-in for the secret store is an endpoint given to boto3 the usual way
(``AWS_ENDPOINT_URL_SECRETS_MANAGER``; ``wukong.lambda_local`` serves one).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from wukong import aws

SECRET_ARN_ENV = "WUKONG_REDIS_SECRET_ARN"
SSM_PARAMETER_ENV = "WUKONG_REDIS_SSM_PARAMETER"
IAM_USER_ENV = "WUKONG_REDIS_IAM_USER"
IAM_CACHE_ENV = "WUKONG_REDIS_IAM_CACHE"
PROXY_SECRET_ARN_ENV = "WUKONG_PROXY_SECRET_ARN"  # the fan-out proxy's shared secret, for executors
RENEW_MIN_S = 1.0  # a refused login reads the secret again at most this often
IAM_TOKEN_SECONDS = 900  # ElastiCache accepts a token for 15 minutes after signing
IAM_REFRESH_SECONDS = 600  # sign a new one well before that

_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def parse_secret(text: str) -> dict[str, str | None]:
    """``{"username", "password"}`` from a secret's text: JSON with those keys, or a bare password."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"username": None, "password": text}
    if not isinstance(value, dict) or "password" not in value:
        return {"username": None, "password": text}
    return {"username": value.get("username") or None, "password": value["password"]}


def read_secret(arn: str, region: str | None = None) -> dict[str, str | None]:
    """A Secrets Manager secret's credentials (``GetSecretValue``)."""
    reply = aws.client("secretsmanager", region=region or _region_of(arn), retries=3).get_secret_value(SecretId=arn)
    return parse_secret(reply["SecretString"])


def read_parameter(name: str, region: str | None = None) -> dict[str, str | None]:
    """An SSM parameter's credentials (``GetParameter`` with decryption)."""
    reply = aws.client("ssm", region=region, retries=3).get_parameter(Name=name, WithDecryption=True)
    return parse_secret(reply["Parameter"]["Value"])


def from_environment(environ: Mapping[str, str] | None = None) -> Any:
    """The credentials this process is configured with, read once and kept; ``None`` when none.

    Returns a credential provider (redis-py asks it on every new connection): a
    ``SecretCredentials`` for a secret or parameter, an ``IAMCredentialProvider`` for
    IAM authentication.
    """
    env = os.environ if environ is None else environ
    ident = tuple(env.get(k) for k in (SECRET_ARN_ENV, SSM_PARAMETER_ENV, IAM_USER_ENV, IAM_CACHE_ENV))
    if not any(ident):
        return None
    with _lock:
        if ident not in _cache:
            _cache[ident] = _read(env)
        return _cache[ident]


def proxy_secret_from_environment(environ: Mapping[str, str] | None = None, *, renew: bool = False) -> str | None:
    """The proxy's shared secret: ``$WUKONG_PROXY_SECRET_ARN`` (read once and kept as a
    ``SecretCredentials``; ``renew``: read again, as after the proxy refused the kept one,
    unless read a moment ago), else ``$WUKONG_PROXY_SECRET``."""
    env = os.environ if environ is None else environ
    arn = env.get(PROXY_SECRET_ARN_ENV)
    if not arn:
        return env.get("WUKONG_PROXY_SECRET")
    with _lock:
        kept = _cache.get(("proxy", arn))
        if kept is None:
            kept = _cache["proxy", arn] = SecretCredentials(functools.partial(read_secret, arn))
            renew = False  # just read
    if renew:
        kept.renew()  # at most one read a second, as for Redis's secret
    return kept.value["password"]


def _read(env: Mapping[str, str]) -> Any:
    if env.get(SECRET_ARN_ENV):
        arn = env[SECRET_ARN_ENV]
        return SecretCredentials(lambda: read_secret(arn))
    if env.get(SSM_PARAMETER_ENV):
        name = env[SSM_PARAMETER_ENV]
        return SecretCredentials(lambda: read_parameter(name))
    cache = env.get(IAM_CACHE_ENV)
    if not cache:
        raise ValueError(f"${IAM_USER_ENV} needs ${IAM_CACHE_ENV}: the ElastiCache cache (or replication group) id")
    return IAMCredentialProvider(env[IAM_USER_ENV], cache, region=env.get("AWS_REGION"))


def _region_of(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 4 and parts[0] == "arn" else None


class SecretCredentials:
    """Credentials read from a secret (Secrets Manager, SSM) and kept; read again when
    Redis refuses them.

    A warm process keeps what it read.  Once the secret is rotated (a new password
    on the server and in the secret) its open connections stay logged in, but the
    next one it opens (after an idle disconnect, a thaw, a failover) is refused:
    ``endpoint``'s login hook then calls ``renew`` and logs in once more.  Reads
    closer than ``RENEW_MIN_S`` apart are one (many connections refused at once).
    ``clock`` is for tests.
    """

    def __init__(self, read: Callable[[], dict[str, str | None]], clock: Callable[[], float] = time.monotonic):
        self._read, self.clock = read, clock
        self._lock = threading.Lock()
        self.value = read()
        self._read_at = clock()
        self._changed = False  # by the last read
        self.reads = 1

    def get_credentials(self) -> tuple[str, ...]:
        value = self.value
        return (value["username"], value["password"]) if value.get("username") else (value["password"],)  # type: ignore[return-value]

    def renew(self) -> bool:
        """Read the secret again, unless it was read a moment ago (for another refused
        connection); whether what is kept now differs from what was refused."""
        with self._lock:
            if self.clock() - self._read_at < RENEW_MIN_S:
                return self._changed  # the read a moment ago brought new ones: try them
            old, self.value = self.value, self._read()
            self._read_at = self.clock()
            self.reads += 1
            self._changed = self.value != old
            return self._changed

    def __repr__(self) -> str:
        return "<SecretCredentials>"  # never the password


class IAMCredentialProvider:
    """ElastiCache IAM authentication: the user's name and a SigV4-signed token as password.

    The token is a presigned ``connect`` request for ``cache`` (ElastiCache's
    documented scheme), valid 15 minutes; a new one is signed once the last is
    ``IAM_REFRESH_SECONDS`` old.  ``clock`` is for tests.
    """

    def __init__(
        self,
        user: str,
        cache: str,
        *,
        region: str | None = None,
        serverless: bool = True,
        session: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        import botocore.session

        self.user, self.cache, self.serverless, self.clock = user, cache, serverless, clock
        self.session = session or botocore.session.get_session()
        self.region = region or self.session.get_config_variable("region")
        self._token: str | None = None
        self._signed_at = 0.0
        self._lock = threading.Lock()
        self.signed = 0

    def get_credentials(self) -> tuple[str, str]:
        with self._lock:
            now = self.clock()
            if self._token is None or now - self._signed_at >= IAM_REFRESH_SECONDS:
                self._token, self._signed_at = self._sign(), now
                self.signed += 1
            return self.user, self._token

    def _sign(self) -> str:
        from botocore.model import ServiceId
        from botocore.signers import RequestSigner

        query = {"Action": "connect", "User": self.user}
        if self.serverless:
            query["ResourceType"] = "ServerlessCache"
        request = {
            "method": "GET",
            "url": f"https://{self.cache}/?{urlencode(query)}",
            "body": {},
            "headers": {},
            "context": {},
        }
        signer = RequestSigner(
            ServiceId("elasticache"),
            self.region,
            "elasticache",
            "v4",
            self.session.get_credentials(),
            self.session.get_component("event_emitter"),
        )
        url = signer.generate_presigned_url(request, "connect", expires_in=IAM_TOKEN_SECONDS, region_name=self.region)
        return url.removeprefix("https://")

    def __repr__(self) -> str:
        return f"<IAMCredentialProvider {self.user}@{self.cache}>"
