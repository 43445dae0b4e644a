"""facetl: transfer learning of face classifiers (attributes and identities).

From Python: `facetl.load(run).predict(images)`, `facetl.train(config, out=...)` and `facetl.evaluate(run)`
(facetl/api.py, its reference in docs/api.md). facetl/api.py imports torch only when a function is called, so
`import facetl` stays light.
"""
import functools
import importlib
import sys
import types

from facetl import api as _api
from facetl.version import __version__

__all__ = ["load", "train", "evaluate", "Model", "Evaluation", "__version__"]


class _FunctionAndPackage:
    """`facetl.train` and `facetl.evaluate` are the API's functions, while facetl/train/ and facetl/evaluate/ are
    subpackages of the same names. Called, this is the function (its name, docstring and signature too); any
    other attribute is the subpackage's, so that `import facetl.train.fit as fit` keeps working."""

    def __init__(self, function, package: str):
        functools.update_wrapper(self, function)
        self._package = package

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self._package), attribute)

    def __repr__(self) -> str:
        return f"<function facetl.{self.__name__} (and the package {self._package})>"


class _Facetl(types.ModuleType):
    """Importing a subpackage sets the attribute of its name on the parent; for train and evaluate that would
    replace the function, so the import system's assignment is left out (the package stays in sys.modules)."""

    def __setattr__(self, name: str, value) -> None:
        if name in ("train", "evaluate") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


load, Model, Evaluation = _api.load, _api.Model, _api.Evaluation
train = _FunctionAndPackage(_api.train, "facetl.train")
evaluate = _FunctionAndPackage(_api.evaluate, "facetl.evaluate")
sys.modules[__name__].__class__ = _Facetl
