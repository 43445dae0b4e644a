"""facetl: transfer learning of face classifiers (attributes and identities).

From Python: `facetl.load(run).predict(images)`, `facetl.train(config, out=...)` and `facetl.evaluate(run)`
(facetl/api.py). They are imported on first use, so `import facetl` stays light (no torch).
"""
__version__ = "0.1.0"

__all__ = ["load", "train", "evaluate", "Model", "Evaluation", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from facetl import api

        return getattr(api, name)
    raise AttributeError(f"module 'facetl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
