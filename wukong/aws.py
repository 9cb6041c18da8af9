"""boto3 clients, made one way.

Every AWS client wukong makes (Lambda invokes from the client, executors and
the proxy; CloudFormation and Lambda for ``wukong deploy``) comes from
``client``: its own session (sessions are not thread-safe), botocore's
retries off where wukong has its own backoff, bounded timeouts, kept-alive
connections.  boto3 is imported on first use only.
"""

from __future__ import annotations

from typing import Any


def client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    pool: int = 4,
    retries: int = 0,
    read_timeout: float = 30,
) -> Any:
    """A boto3 client for ``service`` with up to ``pool`` connections."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": retries, "mode": "standard"},
        connect_timeout=10,
        read_timeout=read_timeout,
        max_pool_connections=pool,
        tcp_keepalive=True,
    )
    return boto3.session.Session().client(service, region_name=region, endpoint_url=endpoint_url, config=config)


def lambda_target(*, region: str | None = None, endpoint_url: str | None = None) -> tuple[str, str, Any]:
    """Where Lambda invokes go, as boto3 resolves it: ``(endpoint URL, region, credentials)``.

    For clients that sign their own requests (``wukong.backends.lean_invoke``);
    credentials are ``None`` when the session has none.
    """
    import boto3

    session = boto3.session.Session()
    c = session.client("lambda", region_name=region, endpoint_url=endpoint_url)
    return c.meta.endpoint_url, c.meta.region_name, session.get_credentials()
