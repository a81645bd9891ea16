"""CuPy is not NumPy: a static check, on the CPU, for code that would fail only on a GPU.

The same layer, loss, regularizer and optimizer code runs on NumPy and CuPy arrays, but
CuPy's API is a subset with its own rules (see ``shared/gpu-notes.md``):

- reductions (``max``, ``sum``, ...) take no ``initial=`` or ``where=``: a TypeError on a
  GPU alone;
- ``np.errstate`` / ``np.seterr`` govern NumPy only: code relying on them to silence or
  raise floating-point errors behaves differently on a GPU;
- a NumPy function applied to a CuPy array refuses it (``np.asarray``) or pulls it to the
  host, where the code meant to stay on the device.

No GPU is needed to find these: this test reads the source of every module that handles
arrays which may live on a GPU. A NumPy call there must be one that only sees host values
(its name is in ``HOST_SAFE``), sit under a test that the array is NumPy's (``type(x) is
np.ndarray``, ``xp is np``), take ``to_numpy(...)``'s result, or carry a ``# host:`` comment
saying why its arguments are host values.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpunn"

# Modules whose arrays never live on a GPU: data loading and files, the CPU's own speed
# paths, MPI's host buffers, scikit-learn's host-side checks, the CLI and the benches.
HOST_ONLY = {
    "backend/numba_loops.py",
    "backend/numba_ops.py",
    "bench/costs.py",
    "bench/handwritten.py",
    "bench/run.py",
    "bench/steps.py",
    "bench/timing.py",
    "cli/check.py",  # computes its errors on host copies (to_numpy) of every result
    "cli/check_cases.py",  # the cases' inputs and the bounds: host arrays
    "cli/job.py",
    "cli/main.py",
    "cli/sysinfo.py",
    "distributed/comm.py",
    "io/checkpoint.py",
    "sklearn/estimators.py",
    "train/data.py",
    "train/history.py",
    "train/plots.py",
}

REDUCTIONS = {
    "all", "amax", "amin", "any", "argmax", "argmin", "max", "mean", "min",
    "nanmax", "nanmin", "nansum", "prod", "std", "sum", "var",
}  # fmt: skip
NUMPY_ONLY_KEYWORDS = {"initial", "where"}
# NumPy names that build dtypes, host constants or index tuples, never touching an array's data
HOST_SAFE = {
    "dtype", "finfo", "iinfo", "result_type", "promote_types", "can_cast", "issubdtype",
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64",
    "bool_", "ndindex",
    "arange", "empty", "eye", "full", "ones", "zeros",  # new host arrays from sizes and numbers
}  # fmt: skip


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in HOST_ONLY)


def _is_numpy_guard(test: ast.AST) -> bool:
    """A condition that holds only for NumPy arrays (or its negation, for an else branch)."""
    text = ast.unparse(test)
    return "np.ndarray" in text or " is np" in text or " is not np" in text


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test and _is_numpy_guard(parent.test):
            return True
        if isinstance(parent, ast.BoolOp) and any(_is_numpy_guard(v) for v in parent.values if v is not child):
            return True
        child, parent = parent, parents.get(parent)
    return False


def _numpy_call(node: ast.Call) -> str | None:
    """``f`` for a call ``np.f(...)`` or ``np.sub.f(...)``, else None."""
    func = node.func
    while isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id == "np":
            return func.attr
        func = func.value
    return None


def violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{path.relative_to(root)}:{node.lineno}"
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        bad = NUMPY_ONLY_KEYWORDS & {k.arg for k in node.keywords}
        if name in REDUCTIONS and bad:
            found.append(f"{where}: {name}(... {', '.join(sorted(bad))}=) — CuPy's reductions take no such keyword")
        f = _numpy_call(node)
        if f is None:
            continue
        if f in ("errstate", "seterr", "geterr"):
            found.append(f"{where}: np.{f} governs NumPy only, not CuPy: handle non-finite values explicitly")
            continue
        if f in HOST_SAFE or f == "random" or "np.random." in ast.unparse(node.func):
            continue
        inner = (n for a in node.args for n in ast.walk(a))
        if any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "to_numpy" for n in inner):
            continue
        if "# host:" in lines[node.end_lineno - 1] or "# host:" in lines[node.lineno - 1]:
            continue
        if not _guarded(node, parents):
            found.append(f"{where}: np.{f}(...) on what may be a CuPy array (guard it, or say '# host: why')")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_code_that_may_see_cupy_arrays_uses_only_what_cupy_accepts(path):
    assert violations(path) == []


def test_the_check_finds_each_kind_of_mistake(tmp_path):
    """The rules catch what they are for: this would fail if a rule stopped matching."""
    bad = tmp_path / "gpunn" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import numpy as np\n"
        "def f(xp, a, x):\n"
        "    s = xp.abs(a).max(initial=0.0)\n"
        "    t = np.sum(a, where=a > 0)\n"
        "    with np.errstate(over='ignore'):\n"
        "        u = np.exp(a)\n"
        "    v = np.asarray(x)\n"
        "    w = np.matmul(a, a) if type(a) is np.ndarray else a @ a\n"
        "    z = np.concatenate([a, a])  # host: a is NumPy's here\n"
        "    return s, t, u, v, w, z, np.dtype('float32')\n"
    )
    found = violations(bad, root=tmp_path)
    lines = sorted(int(v.split(":")[1]) for v in found)
    assert lines == [3, 4, 4, 5, 6, 7], found  # np.sum(where=) is both a keyword and an unguarded call
