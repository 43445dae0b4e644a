"""The version facetl reports and its exported models record; pyproject.toml reads it from here."""
__version__ = "0.1.0"
