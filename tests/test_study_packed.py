"""protocol.pack_search: a search grid whose runs cannot form one pack is refused when the
study is planned, naming the key. (A cell's search stage going out as one packed task, end to
end: tests/test_study_run.py.)"""
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
