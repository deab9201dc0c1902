"""The one error of the kernels' build and load."""

from __future__ import annotations


class KernelUnavailableError(RuntimeError):
    """The fused kernels cannot be built or loaded (no compiler, a failed build or load)."""
