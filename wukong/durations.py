"""What tasks took the last times they ran, by task name and key prefix, and
the jobs small enough to run on one executor ("solo").

A job spread over executors pays for it: each invocation costs a queue or
invoke round trip and a start, each fan-in arrival a round trip, each value
read elsewhere a write and a read.  On a job whose tasks take a few
milliseconds in all, that is most of its time, and more than the parallelism
can win back: spread over ``E`` executors, ``W`` seconds of work finish at
best ``W * (1 - 1/E)`` sooner.  Such a job runs as one invocation (``solo``):
the executor runs every task from its own stack, counts fan-in arrivals in
its memory and writes nothing but the results.

Durations are learned from the job records, per task name (a key's first
element: ``"random_sample-f945…"``, the same for every chunk of one array)
and per key prefix (``key_split``: ``"random_sample"``, as Dask's
distributed scheduler keeps them).  A task is estimated by its name when
that ran before (the same graph again: the common case of an interactive
session, and of a benchmark's runs), else by its prefix: a prefix covers
chunks of any size, and a QR of 128² must not be estimated by the 8192×64
``random_sample`` chunks of a TSQR run before it.  A task whose prefix never
ran makes the estimate unknown, and an unknown job is spread: the first run
of a graph is never solo; runs after it are when their tasks took less than
``wukong.solo-work`` seconds in all (measured on the executors: the time in
the tasks, not wukong's).  A name's estimate falls to a job's mean at once
when that is lower, and moves half way towards it when higher: a graph's
first run pays one-off costs inside its tasks that later runs do not (a
worker's first import of ``scipy.linalg``, cold caches).  Halving both ways,
the 0.2 s of a Cholesky 100²'s first run (most of it that import) kept its
next two runs spread: the bench's timed runs were spread, spread, then solo.
A prefix's mean moves half way both ways: it stands for chunks of every size,
and a small QR run last must not make a new large graph's tasks look short.
The default, 0.1 s, is where the small bench's
graphs part: tree, QR and Cholesky took 8-70 ms of tasks in all, TSQR, SVD,
SVC and svd_compressed 0.7-2 s; on two executors 0.1 s of work gains 50 ms
at best from spreading, about what a spread job's round trips and starts
cost on one machine (QR: 36 ms spread, 28 ms solo; Cholesky: 60 against 44).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from dask.utils import key_split

NAMES_KEPT = 10_000  # task names remembered (the least recently learned are forgotten first)
SOLO_MAX_TASKS = 4096  # larger jobs are never estimated: the estimate costs ~1 µs a task
LEARN_WEIGHT = 0.5  # an estimate moves this far towards each job's mean (a name's to a faster one's at once)


class TaskDurations:
    """Mean seconds per task, by task name and by key prefix, over the jobs of one client."""

    def __init__(self) -> None:
        self.by_name: dict[str, float] = {}  # in the order learned (the oldest first)
        self.mean: dict[str, float] = {}  # by prefix

    def learn(self, runs: Iterable[tuple[Hashable, float]]) -> None:
        """Take in one job's (key, seconds) for each task it ran."""
        seconds: dict[str, float] = {}  # by name
        count: dict[str, int] = {}
        for key, s in runs:
            n = _name(key)
            seconds[n] = seconds.get(n, 0.0) + s
            count[n] = count.get(n, 0) + 1
        by_name = self.by_name
        prefixes: dict[str, tuple[float, int]] = {}
        for n, s in seconds.items():
            c = count[n]
            old = by_name.pop(n, None)  # put back last: the most recently learned
            by_name[n] = s / c if old is None or s / c <= old else old + LEARN_WEIGHT * (s / c - old)
            p = prefixes.get(k := key_split(n))
            prefixes[k] = (s, c) if p is None else (p[0] + s, p[1] + c)
        for k, (s, c) in prefixes.items():
            _update(self.mean, k, s / c)
        while len(by_name) > NAMES_KEPT:
            del by_name[next(iter(by_name))]

    def estimate(self, key: Hashable) -> float | None:
        """Seconds ``key``'s task is expected to take (``None``: unknown)."""
        n = _name(key)
        m = self.by_name.get(n)
        return m if m is not None else self.mean.get(key_split(n))

    def solo(self, keys: Sequence[Hashable], nschedules: int, limit: float | None) -> bool:
        """Whether a job of the tasks ``keys`` in ``nschedules`` schedules runs solo: they
        are known to take less than ``limit`` seconds in all (and there is more than one
        schedule: one is a single invocation anyway).  However many schedules: a solo job's
        are written and read as one blob (``Schedules.whole``)."""
        if not limit or not self.mean or len(keys) > SOLO_MAX_TASKS or nschedules < 2:
            return False
        total = 0.0
        for k in keys:
            m = self.estimate(k)
            if m is None:
                return False
            total += m
            if total >= limit:
                return False
        return True


def _name(key: Hashable) -> str:
    """A task's name: a tuple key's first element (its collection's), or the key."""
    if type(key) is tuple:
        key = key[0]
    return key if type(key) is str else str(key)


def _update(means: dict[str, float], name: str, m: float) -> None:
    old = means.get(name)
    means[name] = m if old is None else old + LEARN_WEIGHT * (m - old)
