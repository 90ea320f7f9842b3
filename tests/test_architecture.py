"""The stages depend only downwards: config <- model <- data <- prompt_init <- engine <- study
(serve beside study, cli.py on top), over the shared lower layers errors.py, io.py,
distributed.py and rundir/. Every import of the package is read with `ast` (module level,
inside functions, under TYPE_CHECKING), and so is every string that names a module of it: a
literal "spt_dist.a.b" or spec "spt_dist.a.b:attr" (lazy export tables, submitit and entry-point
specs), and an f-string, concatenation, str.format or %-format of that shape (its holes matched
against the package's modules), and the name handed to import_module, __import__ or
pkgutil.resolve_name (by position or `name=`; under any name they are imported or assigned
as: literal, f-string, concatenation, format, relative to a `package=`). A name the check
cannot read is reported unless DYNAMIC_NAMES lists it with the reason it is safe. The check
needs neither torch nor an import of the package."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "spt_dist"

# A unit may import itself and any unit of a lower level; units of one level not each other.
LEVEL = {
    "errors": 0, "io": 1, "config": 2, "distributed": 2, "rundir": 3, "model": 4, "data": 5,
    "prompt_init": 6, "engine": 7, "study": 8, "serve": 8, "cli": 9, "__init__": 9,
}
# distributed.py is torch's: only the stages that run collectives import it.
DISTRIBUTED_USERS = {"prompt_init", "engine"}
MODULE_NAME = re.compile(r"^spt_dist(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_.]*)?$")  # spec: module:attr
HOLE = "\0"  # an f-string's or concatenation's part the check cannot read
PATTERN = re.compile(r"^spt_dist\.[A-Za-z0-9_.\0]+(:[A-Za-z0-9_.\0]*)?$")
IMPORTERS = {"import_module", "__import__", "resolve_name"}
FORMAT_FIELD = re.compile(r"\{[^{}]*\}")  # "spt_dist.{}.train".format(...)
PERCENT_FIELD = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(\.(\*|\d+))?[sdirfgexXoac]")  # "spt_dist.%s" % ...
# import_module names that are variables, by (file, expression): why each is safe.
DYNAMIC_NAMES = {
    ("spt_dist/model/__init__.py", "module"): "a value of the lazy export table: a full name is a literal (read as "
                                              "one), a short one is joined to spt_dist.model (the other branch)",
    ("spt_dist/study/task.py", "module"): "the module of a spec string: TRAIN_FN and PACK_FN, literals (read as such)",
}


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


def _pattern(node: ast.AST, names: Dict[str, str]) -> Optional[str]:
    """A string expression with HOLE for each part that is not a literal (`__name__` and
    `__package__` are known); None when no part of it is a literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        return "".join(_pattern(v.value if isinstance(v, ast.FormattedValue) else v, names) or HOLE
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _pattern(node.left, names), _pattern(node.right, names)
        return None if left is None and right is None else (left or HOLE) + (right or HOLE)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        text = _pattern(node.left, names)
        return None if text is None else PERCENT_FIELD.sub(HOLE, text).replace("%%", "%")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        text = _pattern(node.func.value, names)
        return None if text is None else FORMAT_FIELD.sub(HOLE, text).replace("{{", "{").replace("}}", "}")
    return None


def _importers(tree: ast.AST) -> Set[str]:
    """The names import_module, __import__ and resolve_name go by in a file: their own, the
    `as` of a `from importlib import import_module as load`, and a name assigned one of them."""
    found = set(IMPORTERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("importlib", "pkgutil"):
            found |= {a.asname for a in node.names if a.name in IMPORTERS and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.value, "id", getattr(node.value, "attr", None)) in found:
            found |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return found


def _expand(pattern: str, modules: Set[str]) -> List[str]:
    """The modules a name pattern can be (its `:attr` dropped; a dotted attribute, as
    resolve_name takes, is dropped too: the components of the literal after the last hole, one
    at a time, while a literal is left there, until a module matches)."""
    name = pattern.split(":", 1)[0]
    if HOLE not in name:
        return [name]
    while True:
        regex = re.compile("[A-Za-z0-9_.]+".join(re.escape(part) for part in name.split(HOLE)))
        found = sorted(m for m in modules if regex.fullmatch(m))
        tail = name.rsplit(HOLE, 1)[1]
        if found or not tail.rsplit(".", 1)[0]:  # a literal is left after the last hole
            return found
        name = name.rsplit(".", 1)[0]


def _imported_names(call: ast.Call, names: Dict[str, str]) -> Iterator[Tuple[ast.AST, Optional[str]]]:
    """(expression, pattern or None) for each name an import_module / __import__ / resolve_name
    call may get (its first argument, or `name=`)."""
    first = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "name"), None)
    if first is None:
        return
    package = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"),
                                                            None)
    branches = [first]
    while any(isinstance(b, ast.IfExp) for b in branches):
        branches = [x for b in branches for x in ((b.body, b.orelse) if isinstance(b, ast.IfExp) else (b,))]
    for branch in branches:
        pattern = _pattern(branch, names)
        if pattern and pattern.startswith(".") and package is not None:  # relative to `package`
            base = (_pattern(package, names) or HOLE).split(".")
            dots = len(pattern) - len(pattern.lstrip("."))
            pattern = ".".join(base[:len(base) - (dots - 1)] + [pattern.lstrip(".")]).rstrip(".")
        yield branch, pattern


def imports_of(path: Path, module: str, modules: Set[str] = frozenset()) -> Iterator[Tuple[int, str]]:
    """(line, imported module) for every import in `path` (the module `module`), wherever it is
    written; `modules` (the package's) are what an f-string's holes may match. A name handed to
    import_module that cannot be read comes as '?expression'."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    inner = {id(n.left) for n in ast.walk(tree) if isinstance(n, ast.BinOp)}  # "a" + b + "c": the whole only
    importers = _importers(tree)
    names = {"__name__": module, "__package__": module if path.name == "__init__.py" else module.rsplit(".", 1)[0]}
    seen = set()
    for node in ast.walk(tree):
        found: List[str] = []
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            found = [target]
            if target == "spt_dist":  # `from spt_dist import engine`: the named subpackages
                found += [f"spt_dist.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and MODULE_NAME.match(node.value):
            found = [node.value.split(":", 1)[0]]  # a lazy export table's, a spec's or import_module's module
        elif isinstance(node, (ast.JoinedStr, ast.BinOp, ast.Call)) and id(node) not in inner \
                and PATTERN.match(_pattern(node, names) or ""):
            found = _expand(_pattern(node, names), modules)  # f"spt_dist.{stage}.cli", "spt_dist.%s" % x
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in importers:
            for expr, pattern in _imported_names(node, names):
                found += _expand(pattern, modules) if pattern else [f"?{ast.unparse(expr)}"]
        for target in found:
            if (node.lineno, target) not in seen:
                seen.add((node.lineno, target))
                yield node.lineno, target


def modules_of(root: Path = PACKAGE) -> Set[str]:
    return {_module_of(p, root) for p in root.rglob("*.py")}


def violations(root: Path = PACKAGE) -> List[str]:
    found, modules = [], modules_of(root)
    for path in sorted(root.rglob("*.py")):
        module = _module_of(path, root)
        src = unit_of(module)
        for line, target in imports_of(path, module, modules):
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if target.startswith("?"):
                if (str(path.relative_to(root.parent)), target[1:]) not in DYNAMIC_NAMES:
                    found.append(f"{where}: a module name the check cannot read (list it in DYNAMIC_NAMES, "
                                 f"with why it is safe)")
                continue
            if target != "spt_dist" and not target.startswith("spt_dist."):
                continue
            dst = unit_of(target)
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


def _tiny_package(root: Path, files: Dict[str, str]) -> Path:
    """A small synthetic spt_dist/ of `files` (relative path: source), with every __init__.py."""
    package = root / "spt_dist"
    for rel, text in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return package


PLANTED = [  # each names the engine stage from the data stage, each a way not written as an import
    'import_module("spt_dist.engine.train")',
    'TRAIN_FN = "spt_dist.engine.train:train"',
    'import_module(f"spt_dist.{stage}.train")',
    'importlib.import_module(".train", package="spt_dist.engine")',
    'import_module("spt_dist." + "engine.train")',
    '__import__(f"spt_dist.engine.{name}")',
    'import_module(name="..engine.train", package=__package__)',
    'load("..engine.train", package=__package__)',
    'TRAIN_FN = "spt_dist.{}.train:train".format(stage)',
    'TRAIN_FN = "spt_dist.%s.train" % stage',
    'TRAIN_FN = "spt_dist.engine." + "train:train"',
    'resolve("spt_dist." + stage + ".train.train")',
]
UNREADABLE = ['import_module(name)', 'import_module(name=name)', 'load(name)', 'pkgutil.resolve_name(name)', 'run(name)']
HEADER = ("import importlib\nimport pkgutil\nfrom importlib import import_module\n"
          "from importlib import import_module as load\nfrom pkgutil import resolve_name as resolve\n"
          "run = importlib.import_module\n")


def test_an_upward_module_name_in_a_string_is_found(tmp_path):
    """Module names in strings, import_module / __import__ / resolve_name calls (by position or
    name=, under the name they were imported or assigned as) and spec strings (literal,
    f-string, concatenation, format, %) are checked like imports: on a synthetic package, every
    planted upward one is reported with its line, and every unreadable name too; the same names
    from the study stage point down; a variable name is let through only in a file DYNAMIC_NAMES
    lists."""
    body = PLANTED + UNREADABLE
    first = HEADER.count("\n") + 2  # the line of the first planted call
    lines = "\n".join(f"def f{i}():\n    {text}" for i, text in enumerate(body))
    down = "\n".join(f"def f{i}():\n    {re.sub(r'name[)]', 'module)', text)}" for i, text in enumerate(body))
    package = _tiny_package(tmp_path, {
        "config/load.py": "X = 1\n",
        "data/reader.py": HEADER + lines + "\n",
        "engine/train.py": "def train():\n    pass\n",
        "study/task.py": HEADER + down + "\n",
    })
    found = violations(package)
    assert all(v.startswith("spt_dist/data/reader.py:") for v in found), found
    at: Dict[int, str] = {}
    for v in found:
        n = int(v.split(":")[1].split()[0])
        at[n] = at.get(n, "") + v + "\n"
    assert sorted(at) == [first + 2 * i for i in range(len(body))], found
    for i, text in enumerate(body):
        said = at[first + 2 * i]
        if text in UNREADABLE:
            assert re.search(r"imports \?name: a module name the check cannot read", said), (text, said)
        else:
            assert "imports spt_dist.engine.train: data may not import engine" in said, (text, said)
    (package / "study" / "task.py").write_text("from importlib import import_module\nimport_module(name)\n")
    assert "spt_dist/study/task.py:2 imports ?name: a module name the check cannot read" in "\n".join(violations(package))


def test_the_checker_reads_the_packages_own_module_strings():
    """The spec strings study hands to submitit, and cli.py's import_module of every stage's cli."""
    modules = modules_of()
    task = {t for _, t in imports_of(PACKAGE / "study" / "task.py", "spt_dist.study.task", modules)}
    assert {"spt_dist.engine.train", "spt_dist.engine.pack"} <= task
    cli = {t for _, t in imports_of(PACKAGE / "cli.py", "spt_dist.cli", modules)}
    assert {"spt_dist.engine.cli", "spt_dist.study.cli", "spt_dist.config.cli"} <= cli
    for rel, expr in DYNAMIC_NAMES:  # every exception listed is still needed
        path = PACKAGE.parent / rel
        assert f"?{expr}" in {t for _, t in imports_of(path, _module_of(path), modules)}, (rel, expr)


def test_a_circle_through_a_module_string_is_found(tmp_path):
    package = _tiny_package(tmp_path, {
        "engine/train.py": "from .shape import plan\n",
        "engine/shape.py": "from importlib import import_module\n\ndef plan():\n"
                           "    return import_module('spt_dist.engine.train')\n",
    })
    assert circles(package) == [["spt_dist/engine/shape.py", "spt_dist/engine/train.py", "spt_dist/engine/shape.py"]]


def _file_of(module: str, root: Path) -> Optional[Path]:
    base = root.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def circles(root: Path = PACKAGE) -> List[List[str]]:
    """Chains of files that import each other (a package's __init__ only re-exports: left out)."""
    edges: Dict[Path, set] = {}
    modules = modules_of(root)
    for path in sorted(root.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        targets = {_file_of(t, root) for _, t in imports_of(path, _module_of(path, root), modules)
                   if t.startswith("spt_dist.")}
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
