"""Every command with a progress bar draws it on a terminal only: not with --no-progress, and not
when stderr is a pipe or a file (a job's log). The terminal is a real pseudo-terminal."""
from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import struct
import sys
import termios
import threading

import pytest

from engine_helpers import make_assets, write_config
from spt_dist.cli import main as spt

BAR = re.compile(r"\|\s*\d+/\d+ \[")  # tqdm's "| 3/16 [00:01<..." part


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


@contextlib.contextmanager
def terminal_stderr():
    """sys.stderr on a pseudo-terminal; yields a list that receives what was drawn on it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    drawn, stream = [], os.fdopen(slave, "w", buffering=1)

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the slave side closed
                return
            if not chunk:
                return
            drawn.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    saved, sys.stderr = sys.stderr, stream
    try:
        yield drawn
    finally:
        sys.stderr = saved
        stream.close()
        reader.join(timeout=5)
        os.close(master)


def _commands(tmp_path, assets):
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1)
    spt_init = ["method.name=spt", "method.init=kmeans", "method.init_images=64", "method.cache_dir=null"]
    return {
        "shards build": lambda n: ["shards", "build", "digits", "--out", str(tmp_path / f"digits{n}"),
                                   "--workers", "1", "--shard-size", "50", "--max-per-class", "10"],
        "pretrain": lambda n: ["pretrain", "--shards", str(assets["shards"]), "--out", str(tmp_path / f"b{n}.st"),
                               "--backbone", "vit_micro_p4_16", "--epochs", "1", "--batch-size", "32"],
        "init": lambda n: ["init", str(config), *spt_init, "run.progress=true"],
        "train": lambda n: ["train", str(config), "run.progress=true", f"run.name=t{n}"],
    }


@pytest.mark.parametrize("command", ["shards build", "pretrain", "init", "train"])
def test_progress_bars_only_on_a_terminal(tmp_path, assets, capsys, command):
    args = _commands(tmp_path, assets)[command]
    with terminal_stderr() as drawn:
        assert spt(args(0)) == 0
    assert BAR.search("".join(drawn)), f"no bar on a terminal: {''.join(drawn)[-500:]!r}"
    with terminal_stderr() as drawn:
        assert spt(args(1) + ["--no-progress"]) == 0
    assert not BAR.search("".join(drawn))
    capsys.readouterr()
    assert spt(args(2)) == 0  # stderr captured by pytest: not a terminal
    assert not BAR.search(capsys.readouterr().err)
