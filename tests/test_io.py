"""Atomic writes: complete files or none, no temporary left behind, and a full disk named as
such whichever library wrote the bytes (safetensors and torch raise no OSError), on a real
1 MiB tmpfs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spt_dist.engine.export import export_prompt_pack
import errno

from spt_dist.io import DiskFullError, atomic_path, is_disk_full, write_bytes_atomic
from spt_dist.prompt_init.cache import load_prototypes, save_prototypes
from spt_dist.prompt_init.prototypes import Prototypes

BIG = 1 << 19  # float32 elements: 2 MiB, twice the file system


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("1m")


def _safetensors(path: Path) -> None:
    export_prompt_pack(path, {"prompts": torch.zeros(BIG)}, {"weights_hash": "x"})


def _prototypes(path: Path) -> None:
    save_prototypes(path, Prototypes(torch.zeros(BIG), []), {"k": 1})


def _torch_save(path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"a": torch.zeros(BIG)}, tmp)


def _plain(path: Path) -> None:
    write_bytes_atomic(path, bytes(4 * BIG))


@pytest.mark.parametrize("write", [_safetensors, _prototypes, _torch_save, _plain])
def test_a_full_disk_is_named_and_leaves_nothing_behind(tiny_fs, write):
    folder = tiny_fs / "out"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"old")
    with pytest.raises(DiskFullError, match=f"^no space left on {folder} while writing a.bin \\("):
        write(folder / "a.bin")
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin"]  # no temporary left
    assert (folder / "a.bin").read_bytes() == b"old"  # the old file is untouched
    # ... and once there is room, the same write goes through whole.
    small = {"prototypes": torch.arange(6.0)}
    save_prototypes(folder / "p.safetensors", Prototypes(small["prototypes"], [{"n": 1.0}]), {"k": 2})
    got = load_prototypes(folder / "p.safetensors", {"k": 2})
    assert got is not None and torch.equal(got.tensor, small["prototypes"]) and got.stats == [{"n": 1.0}]


def test_a_failed_write_keeps_its_error_and_removes_the_temporary(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(ValueError, match="boom"):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_two_writers_of_one_file_use_their_own_temporaries(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer writer renames last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_errors_that_name_another_cause_are_not_a_full_disk(tiny_fs):
    """A read-only or pseudo file system shows no free block too: only the error's own cause counts."""
    full = tiny_fs / "full"
    full.mkdir()
    with open(full / "fill.bin", "wb", buffering=0) as filler, pytest.raises(OSError) as filled:
        while True:  # until the file system has no free block left
            filler.write(bytes(1 << 16))
    assert filled.value.errno == errno.ENOSPC
    for code in (errno.EACCES, errno.EROFS, errno.ENOENT, errno.EFBIG):
        assert not is_disk_full(OSError(code, "x"), full)
        chained = RuntimeError("unexpected pos 704 vs 598")
        chained.__cause__ = OSError(code, "x")
        assert not is_disk_full(chained, full)
    assert not is_disk_full(RuntimeError("safetensors: Permission denied (os error 13)"), full)
    assert is_disk_full(OSError(errno.ENOSPC, "x"))
    assert is_disk_full(RuntimeError("I/O error: No space left on device (os error 28)"))
    # torch's zip writer hides the cause: "unexpected pos" counts only where no block is free.
    assert is_disk_full(RuntimeError("unexpected pos 704 vs 598"), full)
    assert not is_disk_full(RuntimeError("unexpected pos 704 vs 598"), tiny_fs.parent)
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(Path("/proc/spt-no-such-dir/x.txt"), b"x")
