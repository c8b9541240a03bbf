"""Scenario files, their published JSON Schema, the example scenarios and the ``cordon sim`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from commands.sim import register
from sim.scenario import (
    ROOT,
    SCHEMA_PATH,
    FileMap,
    ScenarioError,
    load_scenario,
    parse_scenario,
    resolve_path,
    scenario_schema,
)

EXAMPLES = sorted((ROOT / "sim" / "scenarios").glob("*.*"))


def test_published_schema_is_up_to_date() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == scenario_schema(), (
        "regenerate sim/scenario.schema.json: "
        "python -c 'import json; from sim.scenario import *; "
        'SCHEMA_PATH.write_text(json.dumps(scenario_schema(), indent=2) + "\\n")\''
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_and_validate_against_the_schema(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.name.split(".")[0]
    if path.suffix == ".json":
        jsonschema.validate(json.loads(path.read_text()), scenario_schema())


def test_every_part_has_a_default() -> None:
    s = parse_scenario({})
    assert s.policy == "guidance" and s.duration_s == 600.0 and s.suspect.behaviour == "exit_seeking"
    assert s.incident.at.tzinfo is not None


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"policy": "pursue"}, "policy"),
        ({"suspect": {"behaviour": "teleport"}}, "suspect.behaviour"),
        ({"camera_model": {"p_detect": 1.5}}, "camera_model.p_detect"),
        ({"crews": {"count": -1}}, "crews.count"),
        ({"incident": {"at": "2026-01-15T22:00:00"}}, "incident.at"),  # naive datetime
        ({"duration": 600}, "duration"),  # unknown field
        ({"map": {"kind": "file"}}, "map.file.path"),
    ],
)
def test_bad_scenarios_name_the_field(data: dict[str, object], where: str) -> None:
    with pytest.raises(ScenarioError, match=where.replace(".", r"\.")):
        parse_scenario(data, source="bad.json")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScenarioError, match=r"bad\.json: not valid json"):
        load_scenario(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ScenarioError, match="must be an object"):
        load_scenario(listed)


def test_map_paths_resolve_beside_the_file_the_root_or_the_shared_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = load_scenario(ROOT / "sim" / "scenarios" / "harrisburg_exit.json")
    assert isinstance(scenario.map, FileMap)
    monkeypatch.setenv("CORDON_SHARED_MAPS", str(tmp_path))
    (tmp_path / "harrisburg.osm.bz2").write_bytes(b"")
    assert resolve_path(scenario, scenario.map.path) == tmp_path / "harrisburg.osm.bz2"
    with pytest.raises(ScenarioError, match=r"nowhere\.osm: file not found"):
        resolve_path(scenario, "nowhere.osm")


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_run_writes_a_replay_that_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    demo = ROOT / "sim" / "scenarios" / "demo.json"
    out = tmp_path / "out"
    res = runner.invoke(
        _app(), ["sim", "run", str(demo), "--policy", "chase", "--seed", "4", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "outcome" in res.output
    replay = out / "demo-chase-s4.replay.jsonl"
    assert replay.exists() and (out / "demo-chase-s4.map.png").stat().st_size > 10_000
    check = runner.invoke(_app(), ["sim", "check", str(replay)])
    assert check.exit_code == 0 and "match" in check.output
    bad = runner.invoke(_app(), ["sim", "run", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "cannot read scenario" in bad.output


def test_cli_batch_writes_summary_and_report(tmp_path: Path) -> None:
    scenario = tmp_path / "small.json"
    scenario.write_text(
        json.dumps(
            {"map": {"kind": "generated", "n_crossings": 300, "seed": 3}, "crews": {"count": 4}, "seed": 5}
        )
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        [
            "sim",
            "batch",
            str(scenario),
            "--runs",
            "4",
            "--policies",
            "chase,static",
            "--workers",
            "2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "small.summary.json").read_text())
    assert set(doc["policies"]) == {"chase", "static"}
    for s in doc["policies"].values():
        assert s["runs"] == 4 and len(s["ci95"]) == 2
        assert {"interception_rate", "median_time_to_interception_s", "pursuit_contacts", "escapes"} <= set(s)
        assert {"crew_km_per_run", "suggestion_changes_per_crew_minute"} <= set(s)
    assert len(doc["runs"]) == 8
    assert (out / "small.policies.png").stat().st_size > 10_000
    assert (out / "small-chase.map.png").exists()
    bad = CliRunner().invoke(_app(), ["sim", "batch", str(scenario), "--policies", "pursue"])
    assert bad.exit_code == 2 and "unknown policy 'pursue'" in bad.output
