"""The one exception type that the command line turns into a single clear line."""


class FacetlError(Exception):
    """A problem the user can fix: bad input, missing file, unknown name. Never a bug."""


class NotANumber(FacetlError):
    """A model answered NaN or inf: never handed out as a probability (serve turns it into a 500 naming the run)."""
