"""Replay files: a documented JSON-lines record of one run (format ``cordon-sim-replay`` v1).

Line 1 is the header; every later line is one event, in time order. Times ``t`` are seconds
after the incident (``incident_at`` in the header, an ISO 8601 aware datetime). Crossings are
node indices of the compiled graph named by ``graph_version``, with lon/lat alongside so a
reader needs no map. The outcome can be recomputed from the file alone
(:func:`sim.outcomes.recompute`).

Header::

    {"type": "header", "format": "cordon-sim-replay", "format_version": 1,
     "versions": {"cordon": ..., "graph": ...}, "map": name, "scenario": {...}, "seed": int,
     "policy": str, "incident_at": iso, "duration_s": float,
     "rules": {"intercept_wait_s": 10.0, "contact_m": 50.0},
     "origin": {"node", "lon", "lat"}, "exit_nodes": [int, ...],
     "crews": [{"crew_id", "node", "lon", "lat"}, ...], "suspect_speed_factor": float}

Events (``type``):

* ``move`` — ``agent`` ("suspect" or a crew id) drives edge ``edge`` (``u`` → ``v``,
  ``length_m``) from ``t0`` to ``t1`` at constant speed, from lon/lat ``from`` to ``to``
  (positions in between: linear in time along the edge's polyline);
* ``wait`` — crew ``agent`` stands still at crossing ``node`` from ``t0`` to ``t1`` (null: to the end);
* ``pass`` — the suspect passes camera ``camera_id``'s seen span at ``t`` (``detected`` or not);
* ``sighting`` — an operator's report of camera ``camera_id`` (true camera ``true_camera_id``,
  ``wrong`` handoff or not), ``observed_t`` when seen, delivered to Cordon at ``t``;
* ``order`` — the policy tells ``crew_id`` to go to ``target`` (null: hold) at ``t``;
  ``accepted`` (compliance) and ``effective_t`` (after the reaction delay);
* ``suggestion`` — a guidance suggestion: ``crew_id``, ``target_node`` (lon/lat), ``plan_version``;
* ``contact`` — the simulator's pursuit contact (``crew_id``, ``edge``, ``t``);
* ``outcome`` — the simulator's verdict: ``kind`` (interception, escape, timeout), ``t``,
  ``node``, ``crew_id``, ``contacts`` (count), ``crew_km``, ``suggestion_changes``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sim.world import CONTACT_M, INTERCEPT_WAIT_S, RunResult

FORMAT = "cordon-sim-replay"
FORMAT_VERSION = 1

_ORDER = {"wait": 0, "move": 1, "pass": 2, "sighting": 3, "order": 4, "suggestion": 5, "contact": 6}


def _version() -> str:
    try:
        return metadata.version("cordon-dispatch")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _ll(result: RunResult, node: int) -> list[float]:
    lon, lat = result.graph.node_lonlat[node]
    return [round(float(lon), 7), round(float(lat), 7)]


def replay_records(result: RunResult) -> Iterator[dict[str, Any]]:
    """The header, then every event of ``result`` in time order, as JSON-ready dicts."""
    sc = result.scenario
    rec = result.recording
    g = result.graph
    yield {
        "type": "header",
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": {"cordon": _version(), "graph": result.graph_version},
        "map": g.name,
        "scenario": sc.model_dump(mode="json"),
        "seed": sc.seed,
        "policy": sc.policy,
        "incident_at": sc.incident.at.isoformat(),
        "duration_s": sc.duration_s,
        "rules": {"intercept_wait_s": INTERCEPT_WAIT_S, "contact_m": CONTACT_M},
        "origin": {
            "node": result.origin,
            "lon": _ll(result, result.origin)[0],
            "lat": _ll(result, result.origin)[1],
        },
        "exit_nodes": [int(n) for n in result.exits],
        "crews": [
            {"crew_id": cid, "node": node, "lon": _ll(result, node)[0], "lat": _ll(result, node)[1]}
            for cid, node in zip(result.crew_ids, result.crew_start_nodes, strict=True)
        ],
        "suspect_speed_factor": result.suspect_speed_factor,
    }
    events: list[tuple[float, int, dict[str, Any]]] = []
    for m in rec.moves:
        u, v = int(g.edge_u[m.edge]), int(g.edge_v[m.edge])
        events.append(
            (
                m.t0,
                _ORDER["move"],
                {
                    "type": "move",
                    "agent": m.agent,
                    "edge": m.edge,
                    "u": u,
                    "v": v,
                    "length_m": float(g.edge_length_m[m.edge]),
                    "t0": m.t0,
                    "t1": m.t1,
                    "from": _ll(result, u),
                    "to": _ll(result, v),
                },
            )
        )
    for w in rec.waits:
        events.append(
            (
                w.t0,
                _ORDER["wait"],
                {
                    "type": "wait",
                    "agent": w.agent,
                    "node": w.node,
                    "t0": w.t0,
                    "t1": w.t1,
                    "at": _ll(result, w.node),
                },
            )
        )
    cams = result.camera_lonlat
    for p in rec.passes:
        events.append(
            (
                p.t,
                _ORDER["pass"],
                {"type": "pass", "camera_id": p.camera_id, "edge": p.edge, "t": p.t, "detected": p.detected},
            )
        )
    for s in rec.sightings:
        events.append(
            (
                s.delivered_t,
                _ORDER["sighting"],
                {
                    "type": "sighting",
                    "n": s.n,
                    "camera_id": s.camera_id,
                    "true_camera_id": s.true_camera_id,
                    "wrong": s.wrong,
                    "observed_t": s.observed_t,
                    "t": s.delivered_t,
                    "at": list(cams.get(s.camera_id, (None, None))),
                },
            )
        )
    for o in rec.orders:
        events.append(
            (
                o.t,
                _ORDER["order"],
                {
                    "type": "order",
                    "crew_id": o.crew_id,
                    "target": o.target,
                    "t": o.t,
                    "effective_t": o.effective_t,
                    "accepted": o.accepted,
                    "source": o.source,
                },
            )
        )
    for sg in rec.suggestions:
        events.append(
            (
                sg.t,
                _ORDER["suggestion"],
                {
                    "type": "suggestion",
                    "crew_id": sg.crew_id,
                    "target_node": sg.target_node,
                    "plan_version": sg.plan_version,
                    "t": sg.t,
                    "at": [round(sg.lon, 7), round(sg.lat, 7)],
                },
            )
        )
    for c in result.outcome.contacts:
        events.append(
            (c.t, _ORDER["contact"], {"type": "contact", "crew_id": c.crew_id, "edge": c.edge, "t": c.t})
        )
    events.sort(key=lambda e: (e[0], e[1]))
    for _, _, event in events:
        yield event
    out = result.outcome
    yield {
        "type": "outcome",
        "kind": out.kind,
        "t": out.t,
        "node": out.node,
        "crew_id": out.crew_id,
        "contacts": len(out.contacts),
        "crew_km": round(result.crew_km, 4),
        "suggestion_changes": result.suggestion_changes,
    }


def write_replay(result: RunResult, path: str | Path) -> Path:
    """Write ``result`` as a replay file (JSON lines); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for record in replay_records(result):
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    return p


@dataclass(frozen=True)
class Replay:
    header: dict[str, Any]
    events: list[dict[str, Any]]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


class ReplayError(ValueError):
    """A replay file is unreadable or not in the expected format (the message names the line)."""


def read_replay(path: str | Path) -> Replay:
    """Read a replay file; :class:`ReplayError` names the first bad line."""
    p = Path(path)
    header: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ReplayError(f"{p}: cannot read replay ({exc.strerror})") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{p}:{i}: not JSON: {exc.msg}") from None
        if not isinstance(record, dict) or "type" not in record:
            raise ReplayError(f"{p}:{i}: an event must be an object with a 'type'")
        if header is None:
            if record["type"] != "header" or record.get("format") != FORMAT:
                raise ReplayError(f"{p}:{i}: first line must be a {FORMAT} header")
            if record.get("format_version") != FORMAT_VERSION:
                raise ReplayError(
                    f"{p}:{i}: format_version {record.get('format_version')} is not {FORMAT_VERSION}"
                )
            header = record
        else:
            events.append(record)
    if header is None:
        raise ReplayError(f"{p}: empty replay file")
    return Replay(header, events)
