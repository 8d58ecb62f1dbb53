"""Process hardening for every process that holds a plaintext or an HSM session."""

from __future__ import annotations

import ctypes
import resource
import sys

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def disable_core_dumps() -> None:
    """Set this process's core file limit to zero (children inherit it), so a crash never
    writes its memory, plaintexts and data keys included, to disk. Only the soft limit is
    lowered; idempotent; a platform without the limit is left as it is."""
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (ValueError, OSError):  # pragma: no cover - no such limit here
        pass


def refuse_inspection() -> bool:
    """Make this process not dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``), so that other
    processes of the same Unix user can no longer read its ``/proc/PID/environ``,
    ``/proc/PID/mem`` or attach a debugger: only a process with ``CAP_SYS_PTRACE`` (root)
    still can. A fork inherits it; an ``execve`` of an ordinary program resets it, so it
    protects Python code that runs in this process, never a command started from it.
    Returns whether the process is now not dumpable (``False`` off Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        return int(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return False
