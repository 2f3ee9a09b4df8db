"""Why a run stops after it started (each maps to an exit code in :mod:`jobs.cli`)."""

from __future__ import annotations


class RejectedInput(RuntimeError):
    """errors.on_error is fail, or more input was rejected than errors.max_error_ratio allows (exit 1)."""


class IncompleteRun(RuntimeError):
    """Some shards (or deletions) could not be completed in this run; the next run does them (exit 1)."""


class LeaseLost(RuntimeError):
    """Another run took this run's lease (this run was presumed dead): stop writing at once (exit 1)."""


class DeleteRefused(RuntimeError):
    """delete_missing would delete more than delete_missing_max_ratio allows; nothing was deleted (exit 2)."""
