"""`spt`: one console command; each pipeline stage contributes its own subcommands.

A stage's `cli.py` exposes `register(subparsers)`; it adds its subcommands with
`set_defaults(func=...)`, and `func(args)` returns the exit code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

STAGES = ("config", "model", "data", "prompt_init", "engine", "study", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spt", description="Distributed visual prompt tuning of frozen ViTs")
    # The deepspeed launcher passes --local_rank=N before the subcommand; LOCAL_RANK carries it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        try:
            module = importlib.import_module(f"spt_dist.{stage}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"spt_dist.{stage}.cli":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from spt_dist.errors import SptError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides (key=value) may also follow flags, e.g. `spt config show RUN --protocol vpt_vtab optim.lr=0.1`.
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is found here, not at the interpreter's exit
        return code
    except SptError as exc:  # the user's to fix: one line, no traceback
        print(f"spt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if _stdout_gone():  # this command's output, piped into `head` and the like, which stopped reading
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        raise  # another pipe (a worker, a subprocess): a failure like any other


def _stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error or hang-up)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
