"""The stages depend only downwards: config <- model <- data <- prompt_init <- engine <- study
(serve beside study, cli.py on top), over the shared lower layers errors.py, io.py,
distributed.py and rundir/. Every import of the package is read with `ast` (module level,
inside functions, under TYPE_CHECKING, and module names handed to import_module), so the
check needs neither torch nor an import of the package."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "spt_dist"

# A unit may import itself and any unit of a lower level; units of one level not each other.
LEVEL = {
    "errors": 0, "io": 1, "config": 2, "distributed": 2, "rundir": 3, "model": 4, "data": 5,
    "prompt_init": 6, "engine": 7, "study": 8, "serve": 8, "cli": 9, "__init__": 9,
}
# distributed.py is torch's: only the stages that run collectives import it.
DISTRIBUTED_USERS = {"prompt_init", "engine"}
MODULE_NAME = re.compile(r"^spt_dist(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def unit_of(module: str) -> str:
    """'spt_dist.engine.train' -> 'engine'; 'spt_dist' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str) -> Iterator[Tuple[int, str]]:
    """(line, imported module) for every import in `path` (the module `module`), wherever it is written."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            yield node.lineno, target
            if target == "spt_dist":  # `from spt_dist import engine`: the named subpackages
                for alias in node.names:
                    yield node.lineno, f"spt_dist.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and MODULE_NAME.match(node.value):
            yield node.lineno, node.value  # a lazy export table's or import_module's module name


def violations(root: Path = PACKAGE) -> List[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_of(path, root)
        src = unit_of(module)
        for line, target in imports_of(path, module):
            if target != "spt_dist" and not target.startswith("spt_dist."):
                continue
            dst = unit_of(target)
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if dst not in LEVEL or src not in LEVEL:
                found.append(f"{where}: {dst if dst not in LEVEL else src} has no place in the stage order")
            elif dst != src and LEVEL[dst] >= LEVEL[src]:
                found.append(f"{where}: {src} may not import {dst} (the order points down only)")
            elif dst == "distributed" and src not in DISTRIBUTED_USERS:
                found.append(f"{where}: only {sorted(DISTRIBUTED_USERS)} import distributed.py")
    return found


def test_every_import_of_the_package_points_down_the_stage_order():
    assert violations() == []


def test_every_file_of_the_package_has_a_place_in_the_order():
    units = {unit_of(_module_of(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LEVEL), units - set(LEVEL)
    assert {"config", "model", "data", "prompt_init", "engine", "study"} <= units


def test_an_upward_import_anywhere_is_found(tmp_path):
    """On a copy of the package: an import pointing up, one hidden in a function, one of a lazy
    export table, one between the two top stages and one of distributed.py from the data stage
    are each reported, naming the file."""
    import shutil

    copy = tmp_path / "spt_dist"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    additions: Dict[str, str] = {
        "config/load.py": "from spt_dist.model import build_model\n",
        "model/build.py": "def later():\n    from ..engine import train\n",
        "data/__init__.py": "_MORE = {'x': 'spt_dist.prompt_init.initialize'}\n",
        "study/report.py": "from spt_dist.serve import bank\n",
        "data/loader.py": "from spt_dist.distributed import Comm\n",
    }
    for rel, text in additions.items():
        with open(copy / rel, "a") as f:
            f.write("\n" + text)
    found = violations(copy)
    for rel in additions:
        assert any(v.startswith(f"spt_dist/{rel}:") for v in found), (rel, found)
    assert len(found) == len(additions), found


def _file_of(module: str, root: Path) -> Optional[Path]:
    base = root.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def circles(root: Path = PACKAGE) -> List[List[str]]:
    """Chains of files that import each other (a package's __init__ only re-exports: left out)."""
    edges: Dict[Path, set] = {}
    for path in sorted(root.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        targets = {_file_of(t, root) for _, t in imports_of(path, _module_of(path, root)) if t.startswith("spt_dist.")}
        edges[path] = {t for t in targets if t is not None and t != path and t.name != "__init__.py"}
    found, state = [], {}

    def visit(node: Path, chain: List[Path]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append([str(p.relative_to(root.parent)) for p in chain[chain.index(nxt):] + [nxt]])
            elif nxt not in state:
                visit(nxt, chain + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_no_two_files_import_each_other():
    assert circles() == []


def test_a_circle_of_files_is_found(tmp_path):
    import shutil

    copy = tmp_path / "spt_dist"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    with open(copy / "engine" / "shape.py", "a") as f:  # train.py imports shape.py
        f.write("\nif False:\n    from .train import train\n")
    assert any(c[0].endswith("shape.py") or "spt_dist/engine/shape.py" in c for c in circles(copy))


def _drawn_tree() -> Dict[str, set]:
    """docs/architecture.md's tree: {top-level folder or file: the file names written in its lines}."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = text.split("```\nspt_dist/\n", 1)[1].split("```", 1)[0]
    drawn: Dict[str, set] = {}
    current = None
    for line in block.splitlines():
        head = re.match(r"^  ([a-z_]+)(/|\.py)\s", line + " ")
        if head:
            current = head.group(1)
        drawn.setdefault(current, set()).update(re.findall(r"\b([a-z_0-9]+\.py)\b", line))
    return drawn


def test_the_drawn_tree_is_the_package():
    """Every file of the package is named under its stage in docs/architecture.md, and every
    file named there exists in that stage."""
    drawn = _drawn_tree()
    real: Dict[str, set] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(PACKAGE)
        top = rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]
        real.setdefault(top, set()).add(path.name)
    missing = {top: sorted(names - drawn.get(top, set())) for top, names in real.items()}
    extra = {top: sorted(names - real.get(top, set())) for top, names in drawn.items()}
    assert {k: v for k, v in missing.items() if v} == {} and {k: v for k, v in extra.items() if v} == {}
