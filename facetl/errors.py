"""The one exception type that the command line turns into a single clear line."""


class FacetlError(Exception):
    """A problem the user can fix: bad input, missing file, unknown name. Never a bug."""
