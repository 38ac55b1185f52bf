"""Errors of the command-line and worker side (the pipeline's own live in ``pipeline.errors``)."""


class UsageError(Exception):
    """A problem with the command line or the configuration: the CLI exits with status 2."""
