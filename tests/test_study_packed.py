"""protocol.pack_search: a prompt method's search grid whose runs cannot form one pack is
refused when the study is planned, naming the key; a linear probe's cells run one task per run
beside packed prompt cells. (A cell's search stage going out as one packed task, end to end:
tests/test_study_run.py.)"""
from __future__ import annotations

import pytest

from study_helpers import make_study


def test_a_search_grid_that_cannot_be_packed_is_refused_naming_the_key(tmp_path):
    from spt_dist.study.errors import StudyError
    from spt_dist.study.plan import build_plan
    from spt_dist.study.spec import load_spec

    spec = make_study(tmp_path, "local", pack_search=True, search="{method.prompt_length: [2, 4]}")
    with pytest.raises(StudyError, match="method.prompt_length"):
        build_plan(load_spec(spec))


LINEAR = ("methods:\n", "methods:\n  linear:\n    overrides: [method.name=linear, method.prompt_length=0, "
                        "method.deep=false]\n    search: {optim.lr: [0.01, 0.1]}\n")


def test_cells_packed_training_cannot_train_run_one_task_per_run(tmp_path):
    from spt_dist.study.driver import task_groups
    from spt_dist.study.plan import SEARCH, build_plan
    from spt_dist.study.spec import load_spec

    spec = make_study(tmp_path, "local", pack_search=True)
    spec.write_text(spec.read_text().replace(*LINEAR))
    plan = build_plan(load_spec(spec))
    assert [c.method.name for c in plan.cells] == ["linear", "vpt_deep"]
    assert plan.packed == [plan.cells[1].key]  # the linear probe's cell is not packed
    runs = [r for c in plan.cells for r in plan.search[c.key]]
    groups = task_groups(runs, plan.packed)
    assert [[r.cfg.method.name for r in g] for g in groups] == [["linear"], ["linear"], ["vpt", "vpt"]]
    assert all(r.stage == SEARCH for g in groups for r in g)
    finals = plan.final(plan.cells[1], plan.cells[1].grid()[0])
    assert [len(g) for g in task_groups(finals, plan.packed)] == [1, 1]  # the final stage: one task per seed


def test_pack_search_with_nothing_to_pack_is_refused(tmp_path):
    from spt_dist.study.errors import StudyError
    from spt_dist.study.plan import build_plan
    from spt_dist.study.spec import load_spec

    spec = make_study(tmp_path, "local", pack_search=True)
    text = spec.read_text().replace(*LINEAR)
    spec.write_text(text[:text.index("  vpt_deep:")] + text[text.index("protocol:"):])
    with pytest.raises(StudyError, match="no method of this study is a prompt method"):
        build_plan(load_spec(spec))


def test_report_hours_count_a_pack_once():
    from spt_dist.study.summary import rank_hours

    # 4 members of one pack each record the pack's 1 h on 2 ranks; together they cost 2 rank-hours
    members = [{"wall_s": 3600.0, "world_size": 2, "pack_size": 4, "device": "cpu"}] * 4
    assert rank_hours(members) == (2.0, 0.0)
    assert rank_hours([{"wall_s": 1800.0, "world_size": 1, "device": "cuda"}]) == (0.0, 0.5)  # a lone run


def test_a_pass_keeps_at_most_array_parallelism_tasks_of_the_study_live(tmp_path):
    """The cap counts the study's queued and running tasks, whatever the executor (on SLURM every
    pass is a new array, so the array's own throttle alone would not hold the study to it); a
    packed cell's search is one task."""
    import json
    import time

    from spt_dist.rundir.lock import LOCK
    from spt_dist.study.driver import survey, to_submit
    from spt_dist.study.plan import build_plan
    from spt_dist.study.spec import load_spec

    for packed in (False, True):
        root = tmp_path / f"packed{packed}"
        spec = make_study(root, "local", pack_search=packed, search="{optim.lr: [0.003, 0.01, 0.05, 0.1]}")
        plan = build_plan(load_spec(spec))  # launch.array_parallelism: 2
        runs = plan.search[plan.cells[0].key]
        assert [len(g) for g in to_submit(plan, survey(plan, write=False))] == ([4] if packed else [1, 1])
        runs[0].run_dir.mkdir(parents=True)
        (runs[0].run_dir / LOCK).write_text(json.dumps({"heartbeat": time.time()}))  # one run trains now
        groups = to_submit(plan, survey(plan, write=False))
        assert [[r.name for r in g] for g in groups] == ([[r.name for r in runs[1:]]] if packed else [[runs[1].name]])
        (runs[1].run_dir).mkdir(parents=True)
        (runs[1].run_dir / LOCK).write_text(json.dumps({"heartbeat": time.time()}))  # two live: none more
        assert to_submit(plan, survey(plan, write=False)) == []
