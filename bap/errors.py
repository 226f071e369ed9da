"""Typed errors. Every user error is a :class:`BapError`: the CLI prints it as one line and exits 2.

A ``BapError`` carries the problem and the fix, so a message always tells the user what to do next.
Anything else that escapes is an internal error: the CLI logs its traceback to a file and exits 1.
"""

from __future__ import annotations

__all__ = [
    "BapError",
    "ConfigError",
    "DataError",
    "ExportError",
    "IncompatibleArtifactError",
    "InputError",
    "IntegrityError",
    "MissingDependencyError",
    "RunLockedError",
    "TrainingInterrupted",
    "UnsupportedDeviceError",
    "ValidationError",
]


class BapError(Exception):
    """A user-facing error: something about the input, files or environment that the user can fix.

    Args:
        problem: what is wrong, naming the offending value.
        fix: what to do about it (optional but strongly encouraged).
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".") if fix else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as one line: ``problem; fix``."""
        text = self.problem if not self.fix else f"{self.problem}; {self.fix}"
        return " ".join(text.split())


class ConfigError(BapError):
    """A flag or config value is invalid (range, unknown name, inconsistent combination)."""


class DataError(BapError):
    """A data root, domain, split or image cannot be read or is empty."""


class IncompatibleArtifactError(BapError):
    """A run directory, export, manifest or checkpoint is missing, corrupt, foreign or of another version."""


class IntegrityError(IncompatibleArtifactError):
    """A file of an export does not match the size or sha256 its manifest records (truncated or modified)."""


class InputError(BapError):
    """Runtime input (array, image, domain id) fails validation before inference."""


class ExportError(BapError):
    """The exporter cannot build or publish a model."""


class ValidationError(BapError):
    """An exported model does not match the trained model within tolerance (exit 1: nothing is published)."""

    exit_code = 1


class MissingDependencyError(BapError):
    """An optional dependency (TensorRT, onnxruntime-gpu, jetson-stats, ...) is not installed."""


class UnsupportedDeviceError(BapError):
    """The requested device (cuda, jetson) is not present on this machine."""


class RunLockedError(BapError):
    """Another live process holds the run directory."""


class TrainingInterrupted(BapError):
    """SIGINT stopped ``bap train`` after its checkpoint was written; ``bap train --resume`` continues.

    Exit code 130 (128 + SIGINT), as a shell reports a process stopped by Ctrl-C.
    """

    exit_code = 130

    def __init__(self, problem: str, fix: str | None = "checkpoint saved, continue with --resume"):
        super().__init__(problem, fix)
