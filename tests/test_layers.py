"""Import layers of ``bap``, checked statically (every import, including those inside functions) and dynamically.

Layers, lowest first; a module may import its own layer and the layers below, never one above:

    bap.errors (and the bare ``bap`` package) < bap.core < bap.data < bap.models < bap.trainer < bap.exporter
    < bap.runtime < bap.cli (and ``bap.__main__``, ``bap.testing``)

On top of the order: the runtime never imports the trainer (a deployed model needs no training code, nor torch),
and the exporter / runtime never reach into another package's private names or ``bap.trainer.sampling``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import bap

PKG = Path(bap.__file__).resolve().parent

LAYERS = {
    "bap": 0,
    "bap.errors": 0,
    "bap.core": 1,
    "bap.data": 2,
    "bap.models": 3,
    "bap.trainer": 4,
    "bap.exporter": 5,
    "bap.runtime": 6,
    "bap.cli": 7,
    "bap.__main__": 7,
    "bap.testing": 7,  # helpers for tests and benchmarks: built on the library, never imported by it
}
NAMES = {v: k for k, v in reversed(LAYERS.items())}

# Edges the linear order allows but the design forbids: (importer package, imported package).
FORBIDDEN = {("bap.runtime", "bap.trainer")}

# Deliberate exceptions to the rules above, each with the reason. Keep it short; empty is best.
ALLOWED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. bap.runtime.api
    target: str  # the imported module, e.g. bap.exporter.manifest
    names: tuple[str, ...]  # names taken from it (from X import a, b)
    line: int

    def __str__(self) -> str:
        what = f"from {self.target} import {', '.join(self.names)}" if self.names else f"import {self.target}"
        return f"{self.module}:{self.line}: {what}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports_of(path: Path) -> list[Import]:
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node)
            names = tuple(a.name for a in node.names)
            out.append(Import(module, target, names, node.lineno))
            # ``from bap.core import io`` imports the module bap.core.io
            out += [Import(module, f"{target}.{n}", (), node.lineno) for n in names if (_is_module(f"{target}.{n}"))]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append(Import(module, node.args[0].value, (), node.lineno))
    return out


def _is_module(name: str) -> bool:
    if not name.startswith("bap."):
        return False
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _package(name: str) -> str | None:
    """The layer key of a bap module (``bap.core.io`` -> ``bap.core``), or None outside bap."""
    if name != "bap" and not name.startswith("bap."):
        return None
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in LAYERS else "bap"


def _all_imports() -> list[Import]:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} modules under {PKG}"
    return [imp for f in files for imp in _imports_of(f)]


IMPORTS = _all_imports()


def test_the_scan_sees_imports_inside_functions():
    """Sanity check of the scanner: lazy imports count (bap.cli imports the library only inside commands)."""
    found = {(i.module, i.target) for i in IMPORTS}
    assert ("bap.cli.train", "bap.trainer") in found
    assert ("bap.runtime.api", "bap.exporter.manifest") in found
    assert all(_package(i.module) in LAYERS for i in IMPORTS)


def test_no_module_imports_a_higher_layer():
    bad = []
    for imp in IMPORTS:
        src, dst = _package(imp.module), _package(imp.target)
        if dst is None or (src, dst) in ALLOWED:
            continue
        if LAYERS[dst] > LAYERS[src]:
            bad.append(f"{imp}  ({NAMES[LAYERS[src]]} must not import {dst})")
        elif (src, dst) in FORBIDDEN:
            bad.append(f"{imp}  ({src} must not import {dst})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("package", ["bap.exporter", "bap.runtime"])
def test_exporter_and_runtime_use_only_public_names_of_other_packages(package):
    bad = []
    for imp in IMPORTS:
        if _package(imp.module) != package:
            continue
        if imp.target == "bap.trainer.sampling" or imp.target.startswith("bap.trainer.sampling."):
            bad.append(f"{imp}  (training-time sampling has no place in {package})")
        dst = _package(imp.target)
        if dst is None or dst == package:
            continue
        private = [p for p in imp.target.split(".") if _private(p)] + [n for n in imp.names if _private(n)]
        if private:
            bad.append(f"{imp}  (private to {dst}: {', '.join(private)})")
    assert not bad, f"{package} reaches into other packages:\n" + "\n".join(bad)


def test_importing_the_runtime_loads_neither_torch_nor_the_trainer():
    code = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "import bap.runtime\n"
        "dt = time.perf_counter() - t\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')"
        " or m == 'bap.trainer' or m.startswith('bap.trainer.'))\n"
        "print(json.dumps({'modules': mods, 'seconds': dt}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert not got["modules"], f"import bap.runtime loaded {got['modules']}"
