"""Sphinx configuration: pages in Markdown (MyST), the API from the docstrings (autodoc, napoleon).

Build: ``sphinx-build -W --keep-going -b html docs build/docs`` (warnings are errors in CI).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the gpunn of this checkout, installed or not

import gpunn  # noqa: E402

project = "gpunn"
author = "gpunn developers"
copyright = "gpunn developers, MIT licence"
release = version = gpunn.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3


def _missing(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


# The API reference imports gpunn.sklearn and gpunn.distributed; where their optional packages are
# missing, autodoc stands in mocks for them (gpunn itself imports CuPy and Numba lazily).
autodoc_mock_imports = [name for name in ("sklearn", "mpi4py", "cupy", "numba") if _missing(name)]
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = False
napoleon_numpy_docstring = True

html_theme = "pydata_sphinx_theme"
html_title = f"gpunn {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path: list[str] = []
