"""The Lua scripts, registered once and called one way.

Each script is a ``lua/<name>.lua`` file whose first comment states its
KEYS, ARGV and reply.  Every call goes through ``Script.call`` (one EVALSHA
added to a pipeline or a ``Batch``); a server that answers NOSCRIPT (it was
restarted or flushed its scripts) gets every script loaded again and the
command re-sent, by ``Batch.execute`` (``reload``).  Full sources never
travel on a hot path.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from typing import Any


class Script:
    """One ``.lua`` file: its source and SHA1."""

    def __init__(self, name: str):
        self.name = name
        self.source = importlib.resources.files("wukong.store").joinpath("lua", f"{name}.lua").read_bytes()
        self.sha = hashlib.sha1(self.source).hexdigest()

    def args(self, keys: tuple[str, ...], argv: tuple[Any, ...]) -> tuple[Any, ...]:
        """The EVALSHA command's arguments."""
        return ("EVALSHA", self.sha, len(keys), *keys, *argv)

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


FANIN = Script("fanin")
LEASE = Script("lease")
RENEW = Script("renew")
EXIT = Script("exit")
PROXY_PUSH = Script("proxy_push")
SET_MANY = Script("set_many")
ALL = (FANIN, LEASE, RENEW, EXIT, PROXY_PUSH, SET_MANY)


def load_all(r: Any) -> None:
    """Register every script on one server (``r``: a redis-py client), or on every
    primary of a Redis Cluster (``r``: a ``RedisCluster``)."""
    if hasattr(r, "get_primaries"):  # SCRIPT LOAD goes to every primary
        for script in ALL:
            r.script_load(script.source)
        return
    pipe = r.pipeline(transaction=False)
    for script in ALL:
        pipe.script_load(script.source)
    pipe.execute()
