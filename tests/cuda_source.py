"""Compiling gpunn's CUDA sources with nvcc, where it is installed (no GPU needed).

A RawModule's templates compile only for the types they are instantiated with, so each
kernel is instantiated for float and double with the exact parameter types the Python side
passes at launch: a syntax error or a signature mismatch fails the compile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def instantiations(signatures: dict[str, tuple[str, ...]]) -> str:
    """`template __global__ void name<float>(...);` lines for every kernel and element type."""
    lines = []
    for name, signature in signatures.items():
        for ctype in ("float", "double"):
            params = ", ".join(re.sub(r"\bT\b", ctype, t) for t in signature)
            lines.append(f"template __global__ void {name}<{ctype}>({params});")
    return "\n".join(lines) + "\n"


def nvcc_compile(source: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, bytes]:
    """Compile ``source`` to an sm_90 cubin; the result and the cubin's bytes (b"" on failure)."""
    src, out = tmp_path / "k.cu", tmp_path / "out.cubin"
    src.write_text(source)
    result = subprocess.run(
        [NVCC, "-arch=sm_90", "-cubin", "-std=c++17", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result, out.read_bytes() if out.exists() else b""


def mangled(name: str, code: str) -> bytes:
    """The Itanium-mangled name of ``name<float>`` (code "f") or ``name<double>`` ("d")."""
    return f"_Z{len(name)}{name}I{code}E".encode()
