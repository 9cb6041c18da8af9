"""Builds the Cython extensions of ``wukong._core``; metadata lives in pyproject.toml.

pip install -e .                      # or
python setup.py build_ext --inplace
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTRA = ["-O3"]

extensions = [
    Extension(f"wukong._core.{name}", [f"wukong/_core/{name}.pyx"], extra_compile_args=EXTRA)
    for name in ("partition", "encoding", "legacy")
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    ),
)
