"""Local worker processes, started, watched and restarted: one ``Slot`` per worker.

A slot's thread starts its worker (``python -m wukong.backends.worker``) and
waits, bounded by ``start_timeout`` and holding no lock, for the worker's
``READY`` line; then it waits for the worker to exit, calls ``on_death`` (the
backend sends again what the worker was running) and starts a fresh one.

A start that fails -- the process exits, or hangs, before ``READY`` -- is
retried after a doubling delay (``BACKOFF_S`` up to ``BACKOFF_MAX_S``); after
``MAX_START_FAILURES`` failures in a row the slot gives up and stays ``down``.
Slots start in parallel, each on its own thread.

The worker's stdout and stderr stay open for its whole life: a thread per
stream copies them to ours, each line prefixed with the worker
(``[wukong worker 1] ...``), so a task's ``print`` never breaks and its output
reaches the terminal.  The last stderr lines are kept to quote when the worker
cannot start.

The slot's thread is the worker's parent thread and lives as long as the
worker does: the worker arms its parent-death signal against it
(``wukong.process.die_with_parent``), so it dies when we do.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from wukong.process import spawn

READY = b"wukong-worker-ready\n"  # a worker's first line on stdout: warm, connected, taking work
BACKOFF_S = 0.5  # delay after the first failed start, doubled after each further one ...
BACKOFF_MAX_S = 8.0  # ... up to this
MAX_START_FAILURES = 4  # failed starts in a row after which a slot stays down
TAIL_LINES = 20  # stderr lines kept to quote
CHUNK = 1 << 16  # output is copied in pieces of at most this many bytes (a 100 MB line is fine)


class Slot:
    """One worker process and its replacements (see the module docstring).

    ``state`` is ``"starting"``, ``"ready"``, ``"failed"`` (its last start
    failed; a retry is pending) or ``"down"`` (gave up, or the cluster closed).
    ``procs[wid]`` always holds the current process, for whoever must stop it.
    """

    def __init__(
        self,
        wid: int,
        argv: list[str],
        config: Callable[[], bytes],
        env: dict[str, str],
        procs: list[subprocess.Popen | None],
        lock: threading.Lock,
        closing: threading.Event,
        on_death: Callable[[int, int, int], None],
        start_timeout: float,
        pass_fds: tuple[int, ...] = (),
    ):
        self.wid, self.argv, self.config, self.env = wid, argv, config, env
        self.pass_fds = pass_fds  # open files the worker shares with us
        self.procs, self.lock, self.closing, self.on_death = procs, lock, closing, on_death
        self.start_timeout = start_timeout
        self.state = "starting"
        self.failures = 0
        self.why = ""  # why the last start failed
        self.first_start = threading.Event()  # the first start succeeded or failed
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.thread = threading.Thread(target=self._run, name=f"wukong-worker-{wid}", daemon=True)

    @property
    def name(self) -> str:
        return f"wukong worker {self.wid}"

    def start(self) -> Slot:
        self.thread.start()
        return self

    def tail(self) -> str:
        return "".join(self.stderr_tail).rstrip() or "(nothing on stderr)"

    # -- the slot's thread -------------------------------------------------------
    def _run(self) -> None:
        while not self.closing.is_set():
            proc = self._start_one()
            if proc is None:
                self.first_start.set()
                if self.failures >= MAX_START_FAILURES:
                    self.state = "down"
                    return
                self.closing.wait(min(BACKOFF_S * 2 ** (self.failures - 1), BACKOFF_MAX_S))
                continue
            self.first_start.set()
            code = proc.wait()
            if self.closing.is_set():
                break
            self.on_death(self.wid, proc.pid, code)
        self.state = "down"
        self.first_start.set()

    def _start_one(self) -> subprocess.Popen | None:
        """Start a worker and wait until it is ready; ``None`` when it did not get there."""
        self.state = "starting"
        with self.lock:  # against close(): either it sees this process or we see it closing
            if self.closing.is_set():
                return None
            pipe = subprocess.PIPE
            proc = spawn(self.argv, stdin=pipe, stdout=pipe, stderr=pipe, env=self.env, pass_fds=self.pass_fds)
            self.procs[self.wid] = proc
        ready = threading.Event()
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        _copy_thread(proc.stdout, "stdout", self.name, ready=ready).start()
        _copy_thread(proc.stderr, "stderr", self.name, tail=self.stderr_tail).start()
        try:
            proc.stdin.write(self.config())
            proc.stdin.close()
        except OSError:
            pass  # it died already: seen below
        deadline = time.monotonic() + self.start_timeout
        while not ready.wait(0.05) and proc.poll() is None and time.monotonic() < deadline:
            pass
        if ready.is_set() and proc.poll() is None:
            self.state, self.failures = "ready", 0
            return proc
        if proc.poll() is None:
            self.why = f"was not ready after {self.start_timeout}s"
            proc.kill()
        else:
            self.why = f"exited with code {proc.wait()} while starting"
        proc.wait()
        self.failures += 1
        self.state = "failed"
        return None


def _copy_thread(src: IO[bytes], dst: str, name: str, *, ready: Any = None, tail: Any = None) -> threading.Thread:
    return threading.Thread(target=_copy, args=(src, dst, name, ready, tail), name=f"{name} output", daemon=True)


def _copy(src: IO[bytes], dst: str, name: str, ready: threading.Event | None, tail: Any) -> None:
    """Copy a worker's output stream to ``sys.<dst>`` line by line, prefixed with ``name``.

    The first ``READY`` line sets ``ready`` instead of being copied.  A line
    longer than ``CHUNK`` is copied in pieces (prefixed once).
    """
    prefix, at_line_start = f"[{name}] ", True
    try:
        for chunk in iter(lambda: src.readline(CHUNK), b""):
            if ready is not None and not ready.is_set() and chunk == READY:
                ready.set()
                continue
            text = chunk.decode(errors="replace")
            if tail is not None:
                tail.append(text)
            try:
                out = getattr(sys, dst)  # looked up each time: it may have been replaced
                out.write(prefix + text if at_line_start else text)
                out.flush()
            except (OSError, ValueError):
                pass  # our own stream is closed: keep draining, never block the worker
            at_line_start = chunk.endswith(b"\n")
    finally:
        src.close()
