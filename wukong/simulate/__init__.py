"""Predict a job on AWS Lambda before paying for it: ``wukong simulate``.

``simulate(collections, profile, model)`` plans the job as the client would
(``wukong.scheduler.plan``) and runs that plan -- through the real executor
code -- against a discrete-event model of Lambda and Redis
(``wukong.simulate.engine``, parameters in ``wukong.simulate.model``), with
each task's duration and output size taken from a local run of the same graph
(``wukong.simulate.profile.record``).  The ``Report`` has the predicted
makespan, executors, bytes moved, peak concurrency, cost and a timeline.

>>> from wukong.simulate import Model, record, simulate, graph_of   # doctest: +SKIP
>>> profile = record(*graph_of(x))                                  # doctest: +SKIP
>>> print(simulate(x, profile=profile, model=Model.aws(10_000)))    # doctest: +SKIP
"""

from __future__ import annotations

from wukong.simulate.model import SOURCES, Model
from wukong.simulate.profile import Profile, graph_of, record
from wukong.simulate.report import Report, simulate, simulate_graph

__all__ = ["SOURCES", "Model", "Profile", "Report", "graph_of", "record", "simulate", "simulate_graph"]
