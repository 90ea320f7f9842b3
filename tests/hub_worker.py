"""A fresh process without network, for the hf-hub tests: every name lookup and connection
attempt is refused and counted, and the count is the last line of stderr.

    python tests/hub_worker.py spt ARGS...      run `spt ARGS...`
    python tests/hub_worker.py hash CONFIG      print {"path", "hash"} of the run's backbone weights
    python tests/hub_worker.py control          try to reach huggingface.co (the guard must count it)
"""
import json
import socket
import sys

ATTEMPTS = []


def _refuse(*args, **kwargs):
    ATTEMPTS.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args)[:120])
    raise OSError("network refused by the test")


socket.getaddrinfo = _refuse
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse


def main(argv):
    if argv[0] == "hash":
        from spt_dist.config import load_config
        from spt_dist.model import build_backbone, read_weights, weights_hash

        cfg = load_config(argv[1])
        weights = read_weights(cfg)
        print(json.dumps({"path": weights.path,
                          "hash": weights_hash(build_backbone(cfg.model.name, checkpoint=weights))}))
        return 0
    if argv[0] == "control":
        import urllib.request

        try:
            urllib.request.urlopen("https://huggingface.co", timeout=5)
        except OSError:
            pass
        return 0
    from spt_dist.cli import main as spt

    return spt(argv[1:])


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    finally:
        print(f"network attempts: {len(ATTEMPTS)} {ATTEMPTS[:3]}", file=sys.stderr, flush=True)
    sys.exit(code)
