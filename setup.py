"""The package's one compiled part, which pyproject.toml holds everything else of: the sampling rule's choice
as one pass (src/rnnlm/runtime/_choose.c), built where a C compiler is at hand. It is optional: without
a compiler the install still succeeds, and the runtime chooses with numpy, drawing the same tokens."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("rnnlm.runtime._choose", ["src/rnnlm/runtime/_choose.c"], optional=True)])
