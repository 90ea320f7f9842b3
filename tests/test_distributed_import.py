"""DeepSpeed comes in without its autotuner's optional mlflow import (seconds per rank), and
mlflow stays importable for the run loggers."""
import subprocess
import sys

import pytest

CHECK = """
import sys
from spt_dist.distributed import import_deepspeed
ds = import_deepspeed()
assert "mlflow" not in sys.modules, "mlflow was imported with deepspeed"
assert ds.ops.__compatible_ops__ is not None and ds.init_distributed
import mlflow
print(mlflow.__name__)
"""


def test_deepspeed_is_imported_without_mlflow_and_mlflow_still_imports():
    pytest.importorskip("mlflow")
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "mlflow"
