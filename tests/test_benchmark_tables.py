"""BENCHMARKS.md's figure table is what benchmarks/tables.py makes of the committed JSON."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402


def test_every_figure_of_a_results_file_there_is_found_in_it():
    for fig in tables.FIGURES:
        path = tables.RESULTS / fig.file
        if path.is_file():
            tables.lookup(json.loads(path.read_text()), fig.keys)  # KeyError: the row points at nothing


def test_benchmarks_md_is_up_to_date_with_the_json():
    assert tables.main(["--check"]) == 0, "run: python benchmarks/tables.py"


def test_a_changed_figure_is_a_stale_table(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "faults.json").write_text(json.dumps({"rows": [{"fault": "x", "tries": 3, "held": 2}]}))
    target = tmp_path / "B.md"
    target.write_text(f"intro\n{tables.BEGIN}\nold\n{tables.END}\nafter\n")
    monkeypatch.setattr(tables, "RESULTS", results)
    monkeypatch.setattr(tables, "TARGET", target)
    assert tables.main(["--check"]) == 1
    assert tables.main([]) == 0 and tables.main(["--check"]) == 0
    text = target.read_text()
    assert text.startswith("intro\n") and text.endswith("\nafter\n") and "2 of 3 tries, 1 faults" in text
    assert "not measured: `python benchmarks/bench_data.py`" in text
