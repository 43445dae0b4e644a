"""`facetl serve`: a web page and an HTTP API that box every face in a photo and label it with every run.

runs.py opens the runs and writes their model cards; reader.py finds the faces of one photo and asks
every run; app.py is the FastAPI app (page, API, limits, the one inference worker); connections.py is
uvicorn's HTTP protocol with a head timeout and a connection limit; server.py binds the port and runs uvicorn.
"""
from facetl.serve.server import ServeOptions, serve

__all__ = ["ServeOptions", "serve"]
