"""facetl: transfer learning of face classifiers (attributes and identities)."""
__version__ = "0.1.0"
