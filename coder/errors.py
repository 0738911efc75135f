"""Typed errors. Each user-facing failure is one of these; ``coder.cli`` maps
them to exit codes in one table (see README "Exit codes").

Messages are one line and name the fix where there is one.
"""

from __future__ import annotations


class CoderError(Exception):
    """Base of every expected failure (never shown with a traceback)."""


class ConfigError(CoderError):
    """A bad option value: unknown backbone or tag, impossible batch size, ..."""


class ArtifactError(CoderError):
    """An artifact directory or file is missing, corrupt, or of another format version."""


class ChecksumError(ArtifactError):
    """A file's sha256 differs from the one its manifest recorded."""


class ExportError(CoderError):
    """Exporting a model to ONNX failed, or a validation gate did not pass."""


class WeightsError(CoderError):
    """Pretrained weights could not be obtained (offline, bad tag, unreadable checkpoint)."""


class InputError(CoderError):
    """An input (image file, array) could not be read or has the wrong shape/dtype."""


class BackendError(CoderError):
    """A requested execution backend is not available or fell back to another one."""


class TextsError(CoderError):
    """A class-texts or bank file is malformed; the message names the field."""


class LLMError(CoderError):
    """Talking to the LLM endpoint failed (after retries), or some generations were recorded as failures."""


class StaleEngineError(BackendError):
    """A TensorRT engine was built for another ONNX file, TensorRT version, GPU or profile."""


class FrameError(InputError):
    """One ROS image message could not be turned into a frame; the message names topic and stamp."""


class ServeError(CoderError):
    """The model server could not be found, started, or did not become ready (the message quotes its log)."""
