"""``wukong doctor``: the versions task bodies depend on, here and where executors run.

* this client (always);
* a deployment zip (``--zip``), read without running it: the Python its
  compiled ``wukong._core`` was built for, and the packages' ``.dist-info``;
* a deployed function (``--function-name``, ``--region``, ``--endpoint-url``),
  through the same probe invocation a job makes (``wukong.versions.PROBE``);
* Redis servers (``--redis URL``, repeatable): their ``redis_version``.

Each is compared with the client as a job would (``wukong.versions.compare``);
the exit status is 1 when any comparison finds a breaking difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from typing import Any

from wukong import versions


def zip_versions(path: str) -> dict[str, str]:
    """What the zip at ``path`` runs, from its file names alone."""
    found: dict[str, str] = {}
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        for name in names:
            m = re.match(r"wukong/_core/\w+\.cpython-(\d)(\d+)-", name)
            if m:
                found["python"] = f"{m[1]}.{m[2]}"
            m = re.match(r"([A-Za-z0-9_.]+)-([^-/]+)\.dist-info/METADATA$", name)
            if m and m[1].lower() in versions.PACKAGES:
                found[m[1].lower()] = m[2]
        init = z.read("wukong/__init__.py").decode()
    m = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    if m:
        found["wukong"] = m[1]
    return found


def function_versions(name: str, region: str | None, endpoint_url: str | None) -> dict[str, str]:
    from wukong.backends.aws_lambda import LambdaInvoker, lambda_config

    invoker = LambdaInvoker(None, {"lambda": lambda_config(name, region=region, endpoint_url=endpoint_url)})  # type: ignore[arg-type]
    where = f"lambda {name!r} at {invoker.endpoint}"
    response, error = invoker.request(json.dumps(versions.PROBE).encode(), "RequestResponse")
    if error is not None:
        raise RuntimeError(f"could not invoke {where}: {error}")
    return versions.from_probe(json.loads(response["Payload"].read() or b"null"), response.get("FunctionError"), where)


def redis_version(url: str) -> str:
    from wukong.store import Endpoint

    ep = Endpoint.parse(url)
    return str(ep.connect().info("server")["redis_version"])


def compare_line(what: str, there: dict[str, str], here: dict[str, str]) -> tuple[str, bool]:
    breaking, lesser = versions.compare(here, {k: there.get(k, "?") for k in versions.PACKAGES})
    shown = ", ".join(f"{k} {there.get(k, '?')}" for k in versions.PACKAGES)
    if breaking:
        return f"{what}: {shown}\n  MISMATCH (breaks task bodies): " + "; ".join(breaking), False
    if lesser:
        return f"{what}: {shown}\n  warning: " + "; ".join(lesser), True
    return f"{what}: {shown}\n  ok: same as the client", True


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wukong doctor", description="Versions of the client, a zip, a function, Redis.")
    p.add_argument("--zip", action="append", default=[], help="a deployment zip (executor/build.py's output)")
    p.add_argument("--function-name", help="a deployed executor function, asked by a probe invocation")
    p.add_argument("--region")
    p.add_argument("--endpoint-url", help="e.g. a `wukong lambda-local` endpoint")
    p.add_argument("--redis", action="append", default=[], metavar="URL", help="a Redis server (repeatable)")
    args = p.parse_args(argv)
    here = versions.report()
    print("client: " + ", ".join(f"{k} {here[k]}" for k in versions.PACKAGES) + f" ({sys.executable})")
    ok = True
    checks: list[tuple[str, Any]] = [(f"zip {z}", lambda z=z: zip_versions(z)) for z in args.zip]
    if args.function_name:
        fn = args.function_name
        checks.append((f"function {fn}", lambda: function_versions(fn, args.region, args.endpoint_url)))
    for what, get in checks:
        try:
            line, good = compare_line(what, get(), here)
        except Exception as e:
            line, good = f"{what}: cannot tell: {e}", False
        print(line)
        ok &= good
    for url in args.redis:
        try:
            print(f"redis {url.split('@')[-1]}: redis_version {redis_version(url)}")
        except Exception as e:
            print(f"redis {url.split('@')[-1]}: cannot reach it: {e}")
            ok = False
    return 0 if ok else 1
