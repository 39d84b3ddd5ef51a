"""One runtime: the steps `mergec plan --json` exports are the steps the build executes.

Each build here runs with a trace hook that receives every step as the runtime ran it
(what it wrote, in which blocks, after which passes, which IR nodes the last pass
evaluated, in which process); the trace must equal the plan made beforehand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergec.api import build, compile

RECIPE = """\
set seed = 5
model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"
output ta = task_arithmetic(math, code, base=base, weight=[0.6, 0.4]) { dtype = "float32" }
output sl = slerp(math, code, t=0.3)
output ti = ties(math, code, base=base, density=0.3)
output dl = dare_linear(math, code, base=base, density=0.5, rescale="l1")
output tm = ties(math, code, base=base, density=0.4, trim="model")
output bc = breadcrumbs(math, code, base=base, density=0.5)
output cp = code
output cv = code { dtype = "float16" }
"""


def traced(tmp_path: Path, family, jobs: int, max_memory: int | None):
    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(RECIPE)
    compiled = compile(r, jobs=jobs, max_memory=max_memory)
    plan = json.loads(compiled.plan.model_dump_json())
    events: list[dict] = []
    build(r, tmp_path / "out", compiled=compiled, jobs=jobs, max_memory=max_memory,
          trace=events.append)
    return plan, events


def split_events(events):
    """Per output, in order: the model-wide statistics, then the steps. (Each output's
    events come before the next output's.)"""
    out, current = [], None
    for e in events:
        if "model_stats" in e or current is None or (
                "name" in e and any(s["name"] == e["name"] for s in current["steps"])):
            current = {"model_stats": [], "steps": []}
            out.append(current)
        if "model_stats" in e:
            current["model_stats"] = e["model_stats"]
        else:
            current["steps"].append(e)
    return out


FIELDS = ("name", "kind", "rows", "passes", "program", "runs_in")


@pytest.mark.parametrize("max_memory", [None, 64 << 10])
def test_one_worker_runs_the_plan_step_for_step(tmp_path, family, max_memory):
    plan, events = traced(tmp_path, family, 1, max_memory)
    ran = split_events(events)
    assert len(ran) == len(plan["outputs"])
    for planned, done in zip(plan["outputs"], ran):
        assert done["model_stats"] == planned["model_stats"], planned["output"]
        want = [{k: s[k] for k in FIELDS} for s in planned["steps"]]
        got = [{k: e[k] for k in FIELDS} for e in done["steps"]]
        assert got == want, planned["output"]
    # the plan is not empty of the things it promises
    steps = [s for o in plan["outputs"] for s in o["steps"]]
    assert {s["kind"] for s in steps} == {"copy", "convert", "compute"}
    assert any(p.startswith("gram slerp#0") for s in steps for p in s["passes"])
    assert any(p.startswith("l1 dare_linear#0") for s in steps for p in s["passes"])
    assert any(o["model_stats"] for o in plan["outputs"])
    if max_memory:
        assert any(p.startswith("topk ties#0") for s in steps for p in s["passes"])
        assert any(len(s["rows"]) > 1 for s in steps)


def test_workers_run_the_planned_steps(tmp_path, family):
    """With two workers the steps finish in any order, but each is the planned one, and
    each runs where the plan says (forked workers, or the build process)."""
    plan, events = traced(tmp_path, family, 2, None)
    want = {(o["output"], s["name"]): {k: s[k] for k in FIELDS}
            for o in plan["outputs"] for s in o["steps"]}
    got = {}
    outputs = iter(plan["outputs"])
    for done in split_events(events):
        o = next(outputs)
        for e in done["steps"]:
            got[(o["output"], e["name"])] = {k: e[k] for k in FIELDS}
    assert got == want
    assert {s["runs_in"] for o in plan["outputs"] for s in o["steps"]} == {"worker"}


def test_plan_json_on_the_command_line_is_the_schedule(tmp_path, family, run_cli):
    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(RECIPE)
    code, out, err = run_cli("plan", r, "--json", "--jobs", "1")
    assert code == 0, err
    cli_plan = json.loads(out)
    api_plan = json.loads(compile(r, jobs=1).plan.model_dump_json())
    assert cli_plan["outputs"] == api_plan["outputs"]
    assert cli_plan["backend"] == "reference"
