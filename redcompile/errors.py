"""Errors that redcompile raises, split by who has to act on them.

`RedcompileError` and its subclasses are for users: the CLI prints their message as one line,
without a traceback, and exits with `exit_code`. Everything else is a bug in redcompile and keeps
its traceback. Messages say what failed, where, and what to do.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class RedcompileError(Exception):
    """A failure the user can act on; printed as one line by the CLI."""

    exit_code = EXIT_BAD_INPUT


class InputError(RedcompileError):
    """Bad input from a user or a file: a folder, a config, a CLI value, a prompt."""


class ModelLoadError(InputError):
    """A model or drafter folder is missing, incomplete or corrupt."""


class UnsupportedModelError(InputError):
    """The model uses an architecture or feature that redcompile refuses by name."""


class IncompatibleDrafterError(InputError):
    """The drafter does not fit the base model (hidden size, vocabulary, dtype)."""


class ArtifactError(InputError):
    """An artifact file is truncated, tampered with, or of an unknown format version."""


class TargetUnavailableError(InputError):
    """The runtime needed for a target (ONNX Runtime, TensorRT, CUDA) is not installed."""


class CheckFailed(RedcompileError):
    """A verification ran and found a mismatch (exit code 1)."""

    exit_code = EXIT_CHECK_FAILED


class PassError(Exception):
    """A graph pass failed or broke its postcondition: a bug in redcompile, keeps its traceback."""
