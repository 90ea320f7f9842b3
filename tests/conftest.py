"""Session-wide settings for the suite: one thread per rank (2-core machines), the CPU
accelerator for DeepSpeed, and one shared cache of compiled DeepSpeed ops."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)`: a folder on a real tmpfs of that size ("1m", "64m"), unmounted afterwards;
    the test is skipped where no tmpfs can be mounted (not root)."""
    mounts = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounts)}"
        folder.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                               capture_output=True).returncode:
            pytest.skip("needs root to mount a small tmpfs")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
