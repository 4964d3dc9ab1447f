"""Profiler traces read back the way TensorBoard's Profile tab reads them.

The Profile tab (tensorboard_plugin_profile, i.e. XProf) turns each session's `*.xplane.pb`
into its pages with xprof.convert.raw_to_tool_data; `tool_tables` calls that same converter,
so what it returns is what the Overview and Input Pipeline Analyzer pages show. `step_summary`
picks out the figures a user reads there (steps, step time, input share and the verdict), and
`step_markers` lists the root step markers straight from the xplane, no converter involved.

    python -m trainer.profile --workdir=out/runs/cnn_tiny     # one line per session (the program)
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any


def sessions(logdir: str) -> list[str]:
    """Profile session folders (.../plugins/profile/<timestamp>) under logdir, oldest first."""
    found = {os.path.dirname(p) for p in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                                                   recursive=True)}
    return sorted(found, key=lambda d: (os.path.basename(d), d))


def _xplanes(session: str) -> list[str]:
    paths = sorted(glob.glob(os.path.join(session, "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb in {session}")
    return paths


def tool_tables(session: str, tool: str) -> list[dict[str, Any]]:
    """The JSON tables the plugin serves for `tool` ('overview_page', 'input_pipeline_analyzer')."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data(_xplanes(session), tool,
                                                   {"use_saved_result": False})
    if data is None:
        raise RuntimeError(f"xprof could not convert {session} to {tool}")
    return json.loads(data)


def _step_table(tables: list[dict[str, Any]]) -> dict[str, Any]:
    for table in tables:
        if table.get("cols") and table["cols"][0].get("id") == "stepnum":
            return table
    raise ValueError("no step-time table in the tool data")


def step_summary(session: str, tool: str = "input_pipeline_analyzer") -> dict[str, Any]:
    """Steps, mean step time (ms), mean input time (ms), input share and the page's verdict."""
    table = _step_table(tool_tables(session, tool))
    columns = [c["id"] for c in table["cols"]]
    rows = [dict(zip(columns, (cell.get("v") for cell in row["c"]))) for row in table["rows"]]
    p = table.get("p", {})
    step_ms = float(p.get("steptime_ms_average", "nan"))
    input_ms = float(p.get("infeed_time_ms_avg", "nan"))
    measured = [r["stepTimeMs"] for r in rows]
    inputs = [r["infeedTimeMs"] for r in rows]
    return {"session": session, "steps": len(rows), "step_names": [r["stepnum"] for r in rows],
            "step_time_ms": step_ms, "input_time_ms": input_ms,
            # from the rows, unrounded (the page's averages carry one decimal)
            "input_share": sum(inputs) / sum(measured) if measured and sum(measured) else 0.0,
            "input_conclusion": p.get("input_conclusion", "")}


WAITING_STAGES = ("Iterator::Root", "::Prefetch")  # their self time is a wait on the producer


def input_stages(session: str) -> list[dict[str, Any]]:
    """The tf.data stages of the Input Pipeline Analyzer's host-side table ("Input Op"), by
    self time, largest first: [{name, count, self_ms, self_share, category}]."""
    for table in tool_tables(session, "input_pipeline_analyzer"):
        if table.get("cols") and table["cols"][0].get("id") == "opName":
            columns = [c["id"] for c in table["cols"]]
            rows = [dict(zip(columns, (c.get("v") for c in row["c"]))) for row in table["rows"]]
            return sorted(({"name": r["opName"], "count": int(r["count"]),
                            "self_ms": float(r["selfTimeInMs"]),
                            "self_share": float(r["selfTimeInPercent"]),
                            "category": r["category"]} for r in rows),
                          key=lambda r: -r["self_ms"])
    return []


def slowest_stage(session: str) -> str:
    """The tf.data stage with the most self time that is work, not a wait: Root and Prefetch
    only wait for the stages below them. '' when the trace holds no tf.data stages (a loader
    that is plain Python, such as ImageDataGenerator)."""
    working = [s for s in input_stages(session)
               if not s["name"].endswith(WAITING_STAGES)]
    return working[0]["name"] if working else ""


def step_markers(session: str) -> list[tuple[str, int, float]]:
    """(name, step_num, duration ms) of every root step marker (a host event with a
    step_num stat, as runtime.step_marker writes it) in the session's xplanes."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    markers = []
    for path in _xplanes(session):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            stats = {i: m.name for i, m in plane.stat_metadata.items()}
            events = {i: m.name for i, m in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    values = {stats.get(s.metadata_id): s for s in event.stats}
                    if "step_num" in values and "_r" in values:
                        step = values["step_num"]
                        number = step.int64_value or step.uint64_value or int(
                            step.str_value or 0)
                        markers.append((events.get(event.metadata_id, ""), number,
                                        event.duration_ps / 1e9))
    return sorted(markers, key=lambda m: m[1])
