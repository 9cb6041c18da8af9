"""``Batch``: commands for several servers, sent as one pipeline per server.

Each command added returns a handle; after ``execute`` the reply is
``batch[handle]``.  KVS pipelines run first and the MDS pipeline last, so
data is stored before a fan-in script announces it.  Reads of values come
back whole: split values are joined (``wukong.store.parts``) and values kept
in shared memory are mapped (``wukong.store.shm``).  A server that answers
NOSCRIPT gets every Lua script loaded again and the command re-sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from wukong.protocol import Keys
from wukong.store import parts, scripts, shm
from wukong.store.endpoint import LOST, Pipeline, StorageError, lost, run

if TYPE_CHECKING:
    from wukong.store.store import Store

Handle = tuple[int, int]  # (server, position in its pipeline)
SET_MANY_BYTES = 1 << 20  # a set_many call carries about this much at most ...
SET_MANY_KEYS = 4096  # ... and at most this many keys


class Batch:
    """Commands for several servers of one ``Store`` (see the module docstring)."""

    def __init__(self, store: Store):
        self.store = store
        self.pipes: dict[int, Any] = {}
        self.counts: dict[int, int] = {}
        self.replies: dict[int, list] = {}
        self.kvs_reads: list[tuple[Handle, str]] = []  # (handle, key): may be split or shared values
        self.written: list[tuple[int, str]] = []  # (server, key) of values set, parts included

    def _pipe(self, server: int) -> Any:
        pipe = self.pipes.get(server)
        if pipe is None:
            pipe = self.pipes[server] = self.store.pipeline(server)
            self.counts[server] = 0
        return pipe

    def add(self, server: int, command: str, *args: Any) -> Handle:
        getattr(self._pipe(server), command)(*args)
        n = self.counts[server]
        self.counts[server] = n + 1
        return server, n

    def mds(self, command: str, *args: Any) -> Handle:
        return self.add(self.store.mds_index, command, *args)

    def script(self, server: int, script: scripts.Script, keys: tuple[str, ...], *argv: Any) -> Handle:
        """Call a registered Lua script (EVALSHA; reloaded on NOSCRIPT by ``execute``)."""
        pipe = self._pipe(server)
        pipe.execute_command(*script.args(keys, argv))
        n = self.counts[server]
        self.counts[server] = n + 1
        return server, n

    def fanin(
        self,
        keys: Keys,
        tid: int,
        parent: int,
        ndeps: int,
        sid: int,
        want_schedule: bool,
        invocation: str,
        hold: bool = False,
        max_missing: int = 0,
    ) -> Handle:
        """Record ``parent``'s arrival at fan-in ``tid`` (``fanin.lua``); ``hold``: its
        value stays in the executor's memory, not stored (delayed I/O), while at most
        ``max_missing`` parents have not arrived."""
        k = (keys.fanin(tid), keys.schedule(sid), keys.owner(tid), keys.events, keys.holds(tid))
        argv = (parent, ndeps, self.store.ttl, int(want_schedule), invocation, int(hold), max_missing)
        return self.script(self.store.mds_index, scripts.FANIN, k, *argv)

    def lease(self, keys: Keys, inv: str, value: str, px: int) -> Handle:
        """Take an invocation's lease (``px`` ms) or, with ``px=0``, mark it done (``lease.lua``)."""
        k = (keys.events, keys.lease(inv))
        return self.script(self.store.mds_index, scripts.LEASE, k, value, px, self.store.ttl)

    def exit(self, keys: Keys, inv: str, arrivals: list[tuple[int, str]], events: list[dict]) -> Handle:
        """Exit invocation ``inv`` (add ``events``, mark its lease done) unless one of
        ``arrivals`` (fan-in, owner value), sent before in this batch, completed its
        fan-in (``exit.lua``): 1 exited, 0 not, -1 the job has ended."""
        k = (keys.events, keys.lease(inv), *(keys.owner(t) for t, _ in arrivals))
        argv: list[Any] = [self.store.ttl, *(me for _, me in arrivals)]
        for fields in events:
            argv.append(2 * len(fields))
            for f, v in fields.items():
                argv += (f, v)
        return self.script(self.store.mds_index, scripts.EXIT, k, *argv)

    def record(self, server: int, key: str) -> None:
        """Note a key this batch writes by a plain ``add`` (``undo`` deletes it too)."""
        self.written.append((server, key))

    def undo(self) -> None:
        """Delete what this batch wrote (values, their parts and shared-memory files).

        For a writer that learns, from this batch's own replies, that its job had
        already ended: the client deleted the job's keys before these writes
        landed, so nobody else ever will (the TTL aside).
        """
        by_server: dict[int, list[str]] = {}
        for server, key in self.written:
            if Keys.is_held(key):  # a future's held result: another delivery's write stands
                continue
            by_server.setdefault(server, []).append(key)
            shm.remove(self.store.shm_dir, key)
        self.written = []
        if by_server:
            self.store.delete(by_server)

    def extend(self, other: Batch) -> None:
        """Append ``other``'s commands after this batch's own (handles of both stay valid for this one)."""
        cluster = self.store.cluster is not None
        for server, pipe in other.pipes.items():
            stack, theirs = queued(self._pipe(server)), queued(pipe)
            if cluster:  # a ClusterPipeline sends and answers in the order of each command's position
                for c in theirs:
                    c.position = len(stack)
                    stack.append(c)
            else:
                stack.extend(theirs)
            self.counts[server] += len(theirs)
        self.written += other.written

    def kvs_set(
        self, key: str, value: bytes | memoryview | list[bytes | memoryview], shm_min: int | None = None
    ) -> Handle:
        """Store ``value`` (or the concatenation of its pieces) at ``key`` (a ``Keys.data``
        name), split if it is too long; in shared memory if it is ``shm_min`` bytes or more
        (default ``shm.SHM_MIN``) and the store has a directory there."""
        store = self.store
        size = sum(len(p) for p in value) if isinstance(value, list) else len(value)
        if store.shm_dir and size >= (shm.SHM_MIN if shm_min is None else shm_min):
            try:
                marker = shm.write(store.shm_dir, key, value)
                self.written.append((store.kvs_server(key), key))
                return self.add(store.kvs_server(key), "set", key, marker, store.ttl)
            except OSError:
                pass  # no room on the RAM file system: Redis takes it
        return self.set_value(store.kvs_server(key), key, value)

    def set_value(self, server: int, key: str, value: bytes | memoryview | list[bytes | memoryview]) -> Handle:
        """SET ``value`` (or the concatenation of its pieces) at ``key`` on ``server``;
        longer than ``part_size``, it is split.

        The parts go to the ring's servers, ``key`` keeps the header and the
        part names join the job's registry (``wukong.store.parts``).  Used for
        data (``kvs_set``) and for schedule blobs, which a large literal in a
        task can make longer than a Redis string may be.
        """
        store = self.store
        if isinstance(value, list):
            value = b"".join(value)
        if len(value) <= store.part_size and not parts.is_header(value):
            self.written.append((server, key))
            return self.add(server, "set", key, value, store.ttl)
        view = memoryview(value).cast("B")
        size = store.part_size
        names = parts.names(key, max(1, -(-len(view) // size)))
        for i, (part_server, name) in enumerate(zip(store.kvs_servers(names), names, strict=True)):
            self.add(part_server, "set", name, view[i * size : (i + 1) * size], store.ttl)
        registry = Keys(Keys.job_of(key)).parts
        self.written += [*zip(store.kvs_servers(names), names, strict=True), (server, key), (store.mds_index, registry)]
        self.mds("sadd", registry, *names)
        self.mds("expire", registry, store.ttl)
        return self.add(server, "set", key, parts.header(len(names), len(view)), store.ttl)

    def set_many(self, server: int, keys: Sequence[str], values: Sequence[bytes]) -> None:
        """``set_value`` for many keys of one hash slot (a job's metadata keys), in
        ``set_many.lua`` calls of up to ``SET_MANY_BYTES``: one command per call, not per key."""
        chunk_keys: list[str] = []
        chunk_values: list[bytes] = []
        size = 0
        for key, value in zip(keys, values, strict=True):
            if len(value) > self.store.part_size or parts.is_header(value):
                self.set_value(server, key, value)
                continue
            chunk_keys.append(key)
            chunk_values.append(value)
            self.written.append((server, key))
            size += len(value) + len(key)
            if size >= SET_MANY_BYTES or len(chunk_keys) >= SET_MANY_KEYS:
                self.script(server, scripts.SET_MANY, tuple(chunk_keys), self.store.ttl, *chunk_values)
                chunk_keys, chunk_values, size = [], [], 0
        if chunk_keys:
            self.script(server, scripts.SET_MANY, tuple(chunk_keys), self.store.ttl, *chunk_values)

    def get_value(self, server: int, key: str) -> Handle:
        """GET what ``set_value`` stored; after ``execute`` a split value is whole again."""
        handle = self.add(server, "get", key)
        self.kvs_reads.append((handle, key))
        return handle

    def kvs_get_many(self, keys: Sequence[str]) -> list[Handle]:
        """GET each key; after ``execute`` a split or shared value is whole again."""
        servers = self.store.kvs_servers(keys)
        handles = [self.add(s, "get", k) for s, k in zip(servers, keys, strict=True)]
        self.kvs_reads.extend(zip(handles, keys, strict=True))
        return handles

    def __bool__(self) -> bool:
        return bool(self.pipes)

    def execute(self, atomic: bool = False) -> Batch:
        """Send every pipeline and keep the replies.  ``atomic``: the MDS's commands run
        as one unit (MULTI/EXEC on a standalone server: ``endpoint.Pipeline``)."""
        mds = self.store.mds_index
        order = sorted(self.pipes, key=lambda s: s == mds)  # KVS first, MDS last
        for server in order:
            commands = list(queued(self.pipes[server]))  # execute() empties the stack
            self._keep(server, commands, run(self.pipes[server], self.store.name_of(server), atomic and server == mds))
        if self.kvs_reads:
            self._join_parts()
            self._map_shared()
        return self

    def send(self) -> Callable[[], Batch]:
        """``execute`` in two halves where the batch is one standalone server's commands and
        reads no value: send them now; the call returned reads the replies (``Pipeline.send``),
        so the caller works while the round trip is under way.  Elsewhere it executes now."""
        pipe = next(iter(self.pipes.values())) if len(self.pipes) == 1 else None
        if not isinstance(pipe, Pipeline) or self.kvs_reads:
            self.execute()
            return lambda: self
        (server,) = self.pipes
        name = self.store.name_of(server)
        commands = list(queued(pipe))
        try:
            read = pipe.send()
        except LOST as e:
            raise lost(name, e) from None
        done = False

        def receive() -> Batch:
            nonlocal done
            if not done:
                try:
                    replies = read()
                except LOST as e:
                    raise lost(name, e) from None
                self._keep(server, commands, replies)
                done = True
            return self

        return receive

    def _keep(self, server: int, commands: list, replies: list) -> None:
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # server restarted or flushed its scripts
                replies[i] = self._rerun_script(server, commands[i])
            elif isinstance(reply, Exception):
                raise StorageError(f"Redis at {self.store.name_of(server)}: {reply}")
        self.replies[server] = replies

    def _map_shared(self) -> None:
        """Replace the markers of values kept in shared memory with their mappings."""
        for (server, i), _ in self.kvs_reads:
            reply = self.replies[server][i]
            if shm.is_marker(reply):
                self.replies[server][i] = shm.read(reply)

    def _join_parts(self) -> None:
        """Replace the headers of split values read by this batch with the values."""
        split = []
        for (server, i), key in self.kvs_reads:
            reply = self.replies[server][i]
            if reply is not None and parts.is_header(reply):
                split.append(((server, i), key, reply))
        if split:
            values = join(self.store, [(key, header) for _, key, header in split])
            for ((server, i), _, _), value in zip(split, values, strict=True):
                self.replies[server][i] = value

    def _rerun_script(self, server: int, command: Any) -> Any:
        r = self.store.servers[server]
        scripts.load_all(r)
        args = command.args if hasattr(command, "args") else command[0]
        return r.execute_command(*args)

    def __getitem__(self, handle: Handle) -> Any:
        server, i = handle
        return self.replies[server][i]


def join(store: Store, split: Sequence[tuple[str, bytes]]) -> list[bytes]:
    """The whole values of split ones, given (key, header) each: one pipeline per server holding parts."""
    batch = Batch(store)
    wanted = []
    for key, header in split:
        n, total = parts.read_header(header)
        names = parts.names(key, n)
        servers = store.kvs_servers(names)
        wanted.append(
            (key, total, names, servers, [batch.add(s, "get", name) for s, name in zip(servers, names, strict=True)])
        )
    batch.execute()
    values = []
    for key, total, names, servers, handles in wanted:
        chunks = [batch[h] for h in handles]
        for s, name, chunk in zip(servers, names, chunks, strict=True):
            if chunk is None:
                raise StorageError(f"part {name!r} of {key!r} is missing from Redis at {store.name_of(s)}")
        value = b"".join(chunks)
        if len(value) != total:
            raise StorageError(f"the parts of {key!r} add up to {len(value)} bytes, not {total}")
        values.append(value)
    return values


def whole(store: Store, key: str, value: bytes) -> bytes:
    """``value`` as read from ``key`` elsewhere (a script's reply): joined again if it is a split value's header."""
    return join(store, [(key, value)])[0] if parts.is_header(value) else value


def queued(pipe: Any) -> list:
    """The list of commands a pipeline holds (a ``ClusterPipeline`` keeps them in its strategy)."""
    strategy = getattr(pipe, "_execution_strategy", None)
    return pipe.command_stack if strategy is None else strategy.command_queue
