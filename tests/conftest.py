"""Session-wide settings for the suite: one thread per rank (2-core machines), the CPU
accelerator for DeepSpeed, and one shared cache of compiled DeepSpeed ops."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
