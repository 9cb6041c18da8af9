"""``performance_report``: one self-contained HTML file about the jobs run inside a block.

>>> with wukong.performance_report("report.html"):     # doctest: +SKIP
...     x.sum().compute(scheduler=client)

Drawn with Bokeh (Dask's own choice for its dashboard and ``Profiler``
plots), its JavaScript inlined so the file opens anywhere:

* a header with the totals: jobs, tasks, executors, invocations, fan-in round
  trips, bytes stored and fetched, and the cost line (Lambda) ;
* the timeline: one row per executor (worker), one bar per task from its
  start to its end, coloured by the task's Dask key prefix (``key_split``),
  with the key, duration, bytes fetched and job on hover; each job's span shaded;
* data movement: bytes stored in and fetched from the KV store, per job, with
  the totals, and the tasks that fetched the most (a task's bytes fetched are
  its inputs read from the KVS: 0 when they were in its executor's memory);
* a table of the jobs (``wukong.diagnostics.JobRecord``).

The records come from every client's jobs that start inside the block
(``wukong.diagnostics.recording``); the times are the executors' own clocks.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wukong.cost import cost_summary
from wukong.diagnostics import JobRecord, format_bytes, recording

TITLE = "wukong performance report"


@contextmanager
def performance_report(filename: str = "wukong-report.html", title: str = TITLE) -> Iterator[list[JobRecord]]:
    """Record the jobs run inside the block and write ``filename`` when it ends."""
    with recording() as records:
        try:
            yield records
        finally:
            write_report(records, filename, title)


def write_report(records: list[JobRecord], filename: str, title: str = TITLE) -> None:
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.resources import INLINE

    parts = [_header(records, title), _timeline(records), _data_movement(records), _table(records)]
    layout = column(*parts, sizing_mode="stretch_width")
    with open(filename, "w", encoding="utf-8") as f:
        f.write(file_html(layout, INLINE, title))


def _header(records: list[JobRecord], title: str) -> Any:
    from bokeh.models.widgets import Div

    tasks = sum(len(r.tasks) for r in records)
    executors = len({t.worker for r in records for t in r.tasks})
    starts = [t.start for r in records for t in r.tasks]
    ends = [t.end for r in records for t in r.tasks]
    span = (max(ends) - min(starts)) if starts else 0.0
    costs = [cost_summary(r.cost) for r in records if r.cost]
    cost = "<br>".join(html.escape(c) for c in costs) or "local cluster: no Lambda charges"
    rows = [
        ("jobs", f"{len(records)} ({sum(r.status == 'finished' for r in records)} finished)"),
        ("tasks run", f"{tasks:,} on {executors} executor(s) over {span:.3f} s"),
        ("invocations", f"{sum(r.invocations for r in records):,}"),
        ("fan-in round trips", f"{sum(r.fanin_round_trips for r in records):,}"),
        (
            "KV store",
            f"{format_bytes(sum(r.bytes_stored for r in records))} stored, "
            f"{format_bytes(sum(r.bytes_fetched for r in records))} fetched",
        ),  # fmt: skip
        ("planning / running", f"{sum(r.plan_s for r in records):.3f} s / {sum(r.run_s for r in records):.3f} s"),
        ("cost", cost),
    ]
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return Div(text=f"<h2>{html.escape(title)}</h2><table>{body}</table>", sizing_mode="stretch_width")


def _timeline(records: list[JobRecord]) -> Any:
    from bokeh.models import ColumnDataSource, FactorRange, HoverTool
    from bokeh.palettes import Category20
    from bokeh.plotting import figure
    from dask.utils import key_split

    tasks = [(r, t) for r in records for t in r.tasks]
    t0 = min((t.start for _, t in tasks), default=0.0)
    workers = list(dict.fromkeys(t.worker for _, t in sorted(tasks, key=lambda rt: rt[1].start)))
    prefixes = list(dict.fromkeys(key_split(t.key) for _, t in tasks))
    palette = Category20[20]
    colour = {p: palette[i % len(palette)] for i, p in enumerate(prefixes)}
    fields = ("left", "right", "worker", "key", "prefix", "ms", "fetched", "job", "colour")
    data: dict[str, list] = {k: [] for k in fields}
    for r, t in tasks:
        prefix = key_split(t.key)
        data["left"].append(t.start - t0)
        data["right"].append(max(t.end - t0, t.start - t0 + 1e-6))
        data["worker"].append(t.worker)
        data["key"].append(str(t.key))
        data["prefix"].append(prefix)
        data["ms"].append(round((t.end - t.start) * 1000, 3))
        data["fetched"].append(format_bytes(t.fetched))
        data["job"].append(r.job)
        data["colour"].append(colour[prefix])
    fig = figure(
        title="Tasks by executor over time (coloured by key prefix)",
        y_range=FactorRange(factors=workers or ["(no tasks)"]),
        height=max(220, 40 * len(workers) + 120, 22 * len(prefixes) + 80),  # room for the legend
        sizing_mode="stretch_width",
        x_axis_label="seconds since the first task started",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
    )
    for r in records:  # each job's span, shaded
        if r.tasks:
            start = min(t.start for t in r.tasks) - t0
            end = max(t.end for t in r.tasks) - t0
            fig.quad(left=start, right=end, bottom=0, top=len(workers), fill_alpha=0.06, line_alpha=0, color="grey")
    source = ColumnDataSource(data)
    fig.hbar(y="worker", left="left", right="right", height=0.8, color="colour", legend_group="prefix", source=source)
    tips = [("key", "@key"), ("ms", "@ms"), ("fetched", "@fetched"), ("executor", "@worker"), ("job", "@job")]
    fig.add_tools(HoverTool(tooltips=tips))
    legend = fig.legend[0]
    legend.click_policy = "hide"
    fig.add_layout(legend, "right")  # beside the rows, not over them
    return fig


def _data_movement(records: list[JobRecord]) -> Any:
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, FactorRange
    from bokeh.plotting import figure
    from bokeh.transform import dodge

    jobs = [r.job for r in records] or ["(no jobs)"]
    source = ColumnDataSource(
        {
            "job": [r.job for r in records],
            "stored": [r.bytes_stored / 1e6 for r in records],
            "fetched": [r.bytes_fetched / 1e6 for r in records],
        }
    )
    fig = figure(
        x_range=FactorRange(factors=jobs),
        title="Data movement per job: MB stored in / fetched from the KV store",
        height=260,
        sizing_mode="stretch_width",
        tools="save",
        y_axis_label="MB",
    )
    fig.vbar(x=dodge("job", -0.17, range=fig.x_range), top="stored", width=0.3, source=source,
             color="#1f77b4", legend_label="stored")  # fmt: skip
    fig.vbar(x=dodge("job", 0.17, range=fig.x_range), top="fetched", width=0.3, source=source,
             color="#ff7f0e", legend_label="fetched")  # fmt: skip
    fig.xaxis.major_label_orientation = 0.6
    return column(_fetched_totals(records), fig, sizing_mode="stretch_width")


def _fetched_totals(records: list[JobRecord]) -> Any:
    """The data movement's totals, and the tasks that read the most from the KV store."""
    from bokeh.models.widgets import Div

    stored = sum(r.bytes_stored for r in records)
    fetched = sum(r.bytes_fetched for r in records)
    tasks = [t for r in records for t in r.tasks]
    reading = sorted((t for t in tasks if t.fetched), key=lambda t: -t.fetched)
    top = "".join(f"<li>{html.escape(str(t.key))}: {format_bytes(t.fetched)}</li>" for t in reading[:5])
    text = (
        f"<h3>Data movement</h3><p>{format_bytes(stored)} stored in the KV store, "
        f"<b>{format_bytes(fetched)} fetched</b> by {len(reading)} of {len(tasks)} tasks "
        "(the others found their inputs in their executor's memory, or inline).</p>"
    )
    if top:
        text += f"<p>Tasks that fetched the most:</p><ul>{top}</ul>"
    return Div(text=text, sizing_mode="stretch_width")


def _table(records: list[JobRecord]) -> Any:
    from bokeh.models import ColumnDataSource
    from bokeh.models.widgets import DataTable, TableColumn

    cols = ["job", "status", "tasks", "executors", "invocations", "fan-in round trips", "stored", "fetched",
            "plan s", "run s", "cost"]  # fmt: skip
    data = {
        "job": [r.job for r in records],
        "status": [r.status + (f": {r.error}" if r.error else "") for r in records],
        "tasks": [r.ntasks for r in records],
        "executors": [len(r.executors) for r in records],
        "invocations": [r.invocations for r in records],
        "fan-in round trips": [r.fanin_round_trips for r in records],
        "stored": [format_bytes(r.bytes_stored) for r in records],
        "fetched": [format_bytes(r.bytes_fetched) for r in records],
        "plan s": [round(r.plan_s, 4) for r in records],
        "run s": [round(r.run_s, 4) for r in records],
        "cost": [f"${r.cost['price_usd']:.6f}" if r.cost else "-" for r in records],
    }
    return DataTable(
        source=ColumnDataSource(data),
        columns=[TableColumn(field=c, title=c) for c in cols],
        height=min(400, 28 * len(records) + 40),
        sizing_mode="stretch_width",
        index_position=None,
    )
