"""Bad samples skipped (data.on_bad_sample=skip) are counted over ALL ranks and written into the
run's metrics and results, for training and for evaluation (where they leave the denominator)."""
from __future__ import annotations

import json

from engine_helpers import corrupt_images, make_assets, run, torchrun, write_config
from spt_dist.data import ShardIndex


def test_bad_samples_are_counted_across_ranks(tmp_path):
    assets = make_assets(tmp_path / "assets")
    index = ShardIndex.load(assets["shards"])
    # One bad training image in each shard and two in test. 128 training samples = 2 ranks x
    # 8 batches x 8: nothing is dropped, so each bad image is read once, by one of the ranks.
    train_keys = [s.keys[5] for s in index.split("train").shards]
    test_keys = index.split("test").shards[0].keys[:2]
    corrupt_images(index, "train", set(train_keys))
    corrupt_images(index, "test", set(test_keys))
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1)
    proc = run(torchrun(["-m", "spt_dist.cli", "train", str(config), "run.name=bad",
                         "data.on_bad_sample=skip"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "bad" / "results.json").read_text())
    assert results["bad_samples"] == 2            # both ranks' skipped training images
    assert results["test_bad_samples"] == 2 and results["val_bad_samples"] == 0
    events = [json.loads(line) for line in (tmp_path / "runs" / "bad" / "metrics.jsonl").read_text().splitlines()]
    test = next(e for e in events if e["event"] == "test")
    assert test["total"] == 30 - 2 and test["bad_samples"] == 2
    assert [e for e in events if e["event"] == "train"][-1]["bad_samples"] == 2
