"""Do the client and the executors agree on the versions that task bodies depend on?

The client pickles task bodies with cloudpickle (functions defined in
``__main__`` or a notebook travel *by value*, as the client's bytecode) and the
executors unpickle and run them.  So before a job's first task runs the client
asks the executors what they run (a probe invocation, once per cluster;
``Backend.executor_versions``) and compares with ``report()`` here:

* ``BREAKING`` -- Python's minor version (bytecode and pickles of code objects
  change between minor versions), cloudpickle's major version (its format) and
  wukong's version (the wire): any difference fails the job with
  ``VersionMismatch``, naming both sides and how to fix it;
* ``LESSER`` -- numpy and dask (and Python's or cloudpickle's smaller
  differences): a ``VersionWarning``, once per difference, as distributed warns.

The executor side answers the probe event ``PROBE`` with ``report()``.
"""

from __future__ import annotations

import platform
import warnings
from typing import Any

from wukong.errors import JobFailed

PACKAGES = ("python", "cloudpickle", "dask", "numpy", "wukong")
PROBE = {"wukong_probe": "versions"}  # the event an executor answers with ``report()``
_warned: set[tuple[str, str]] = set()


class VersionMismatch(JobFailed):
    """The client and the executors run versions that can break task bodies."""


class VersionWarning(UserWarning):
    """The client and the executors differ in versions that usually do not matter."""


def report() -> dict[str, str]:
    """This process's versions of what task bodies depend on."""
    import cloudpickle
    import dask
    import numpy

    import wukong

    return {
        "python": platform.python_version(),
        "cloudpickle": cloudpickle.__version__,
        "dask": dask.__version__,
        "numpy": numpy.__version__,
        "wukong": wukong.__version__,
    }


def _parts(version: str, n: int) -> tuple[str, ...]:
    return tuple(version.split(".")[:n])


def compare(here: dict[str, str], there: dict[str, str]) -> tuple[list[str], list[str]]:
    """``(breaking, lesser)``: one line per differing package, ``"name: here X, there Y"``."""
    breaking, lesser = [], []
    for name in PACKAGES:
        a, b = here.get(name, "?"), there.get(name, "?")
        if a == b:
            continue
        line = f"{name} {a} here, {b} there"
        significant = {"python": 2, "cloudpickle": 1}.get(name)
        if name == "wukong" or (significant and _parts(a, significant) != _parts(b, significant)):
            breaking.append(line)
        else:
            lesser.append(line)
    return breaking, lesser


def check(there: dict[str, str], where: str, here: dict[str, str] | None = None) -> None:
    """Raise ``VersionMismatch`` on a breaking difference; warn once on a lesser one."""
    here = here or report()
    breaking, lesser = compare(here, there)
    if breaking:
        python = there.get("python", "?")
        raise VersionMismatch(
            f"this client and the executors ({where}) disagree on versions that task bodies depend on: "
            + "; ".join(breaking)
            + ". Task bodies are pickled here and run there, so these must match. Fix: run the client "
            f"under the executors' Python ({'.'.join(python.split('.')[:2])}) with the same wukong and cloudpickle, "
            "or build the deployment zip where the client's versions are installed (`make lambda-zip` pins them) "
            "and deploy it again; `wukong doctor` shows both sides."
        )
    for line in lesser:
        if (where, line) not in _warned:
            _warned.add((where, line))
            warnings.warn(f"version mismatch with the executors ({where}): {line}", VersionWarning, stacklevel=3)


def check_backend(backend: Any) -> None:
    """The client's hook: compare with the backend's executors (``None``: they run this interpreter)."""
    there = backend.executor_versions()
    if there is not None:
        check(there, backend.describe())


def from_probe(payload: Any, function_error: str | None, where: str) -> dict[str, str]:
    """The executors' versions from a probe's answer, or a clear error when it is not one."""
    if function_error or not isinstance(payload, dict) or "python" not in payload:
        what = f"{payload.get('errorType')}: {payload.get('errorMessage')}" if isinstance(payload, dict) else payload
        raise VersionMismatch(
            f"{where} did not answer wukong's version probe ({what}); it is not a wukong executor of this "
            "version: build the zip with this client's versions (`make lambda-zip`) and deploy it again"
        )
    return {k: str(payload[k]) for k in PACKAGES if k in payload}
