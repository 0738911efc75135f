"""Typed errors. Each user-facing failure is one of these; ``coder.cli`` maps
them to exit codes in one table (see README "Exit codes").

Messages are one line and name the fix where there is one.
"""

from __future__ import annotations

import re


class CoderError(Exception):
    """Base of every expected failure (never shown with a traceback)."""


class ConfigError(CoderError):
    """A bad option value: unknown backbone or tag, impossible batch size, ..."""


class ArtifactError(CoderError):
    """An artifact directory or file is missing, corrupt, or of another format version."""


class StorageError(ArtifactError, OSError):
    """A disk is full or read-only, or an output is locked by another run; the message names the directory.

    Also an ``OSError``, so code that tolerates a failed write (an advisory cache) keeps catching it.
    """


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


# The one place errors become exit codes (README "Exit codes"). Order matters: subclasses first.
EXIT_OK = 0
EXIT_CODES: list[tuple[type[CoderError], int, str]] = [
    (InputError, 1, "some inputs could not be read (the others were processed)"),
    (ConfigError, 2, "bad option value or usage"),
    (ArtifactError, 3, "artifact missing, corrupt, of another format version, or a checksum mismatch"),
    (ExportError, 4, "ONNX export failed or a validation gate did not pass"),
    (WeightsError, 5, "pretrained weights unavailable (offline, bad tag, unreadable checkpoint)"),
    (StaleEngineError, 10, "TensorRT engine is stale (other ONNX, TensorRT version or GPU): rebuild it"),
    (BackendError, 6, "requested backend not available or fell back"),
    (TextsError, 7, "class-texts file malformed (the message names the field)"),
    (LLMError, 8, "LLM generation failed for some texts (recorded; re-run resumes from the cache)"),
    (ServeError, 11, "model server (tritonserver) not found, failed to start or not ready in time"),
    (CoderError, 9, "other coder error"),
]
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe's reader cut off
EXIT_INTERNAL = 70  # a bug: the traceback is printed


def exit_code_for(exc: CoderError) -> int:
    """The documented exit code of an expected failure, e.g. ``exit_code_for(ConfigError("x")) == 2``."""
    return next(code for cls, code, _ in EXIT_CODES if isinstance(exc, cls))


OPENVINO_FRAME = re.compile(r"^Exception from \S+:\d+:$")  # where OpenVINO raised, not why


def one_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of an exception's message (at most ``limit`` characters), or its type name.
    OpenVINO's leading ``Exception from <source file>:<line>:`` lines are skipped: the reason follows them.

    >>> one_line(OSError("disk full\\nmore detail"))
    'disk full'
    >>> one_line(RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\\nUnable to read the model"))
    'Unable to read the model'
    """
    for line in str(exc).splitlines():
        if line.strip() and not OPENVINO_FRAME.match(line.strip()):
            return line.strip()[:limit]
    return type(exc).__name__
