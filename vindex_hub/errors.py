"""The package's exception types.

Every error a user can cause (bad checkpoint, bad vindex, bad argument, Hub trouble) is a
``VindexError``; its message names the file, tensor, layer or URL at fault. The CLI prints the
message as one line on stderr and exits non-zero; a traceback means a bug in vindex-hub.
"""

from __future__ import annotations


class VindexError(Exception):
    """Base class of every error vindex-hub raises on purpose."""


class UsageError(VindexError):
    """A bad argument: a layer selection out of range, a num_feats above the matrix rank, ..."""


class CheckpointError(VindexError):
    """The source checkpoint is unreadable or not what its config/index says (file, tensor named)."""


class UnsupportedArchitectureError(CheckpointError):
    """``config.json`` describes a model family no adapter handles."""


class QuantizationError(CheckpointError):
    """Dequantization met an invalid value: E8M0 byte 255, or NaN/Inf in the result."""


class VindexFormatError(VindexError):
    """A vindex folder is inconsistent: index vs binary, mirror, card or LarQL index."""


class IntegrityError(VindexFormatError):
    """Bytes do not match their recorded sha256 (names the file and layer)."""


class OutputConflictError(VindexError):
    """The output folder holds something we must not overwrite (another model's vindex, ...)."""


class HubError(VindexError):
    """Talking to the Hub (or the local Hub server) failed; the message names the URL or repo."""


class RemoteNotFoundError(HubError):
    """The repo, revision or file does not exist on the Hub (message says which)."""


class ClusterError(VindexError):
    """The compute cluster a build runs on failed: it cannot be joined, or a task's worker kept dying."""


class CachedCopyWarning(UserWarning):
    """A repo was read from the local cache because the Hub refused or could not be reached: the
    revision asked for (a branch, a tag) may have moved since; the message says why and which
    commit was used."""
