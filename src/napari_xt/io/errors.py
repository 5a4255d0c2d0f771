"""Exceptions raised while opening images. Each names the file and says what to do next."""

from __future__ import annotations


class ImageReadError(ValueError):
    """An image could not be opened as a pyramid.

    Args:
        source: the path (or a short description of the array) that failed.
        problem: what is wrong with it.
        hint: what the user can do about it.
    """

    def __init__(self, source: object, problem: str, hint: str = ""):
        self.source = str(source)
        self.problem = problem
        self.hint = hint
        message = f"{self.source}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class UnsupportedFormatError(ImageReadError):
    """The path exists but is not a format napari-xt reads."""


class InconsistentPyramidError(ImageReadError):
    """The levels of a multiscale image disagree (channels, dtype or size order)."""
