"""Process hardening for every process that holds a plaintext or an HSM session."""

from __future__ import annotations

import resource


def disable_core_dumps() -> None:
    """Set this process's core file limit to zero (children inherit it), so a crash never
    writes its memory, plaintexts and data keys included, to disk. Only the soft limit is
    lowered; idempotent; a platform without the limit is left as it is."""
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (ValueError, OSError):  # pragma: no cover - no such limit here
        pass
