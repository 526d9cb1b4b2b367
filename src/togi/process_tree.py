"""Processes that must not outlive the process that started them."""

from __future__ import annotations

import os
import signal
import sys


def end_with_parent(how: int = signal.SIGKILL) -> None:
    """Have the kernel send ``how`` to this process when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing).

    A training rank, or a job process under a Ray worker, calls it first thing (or is started with it as ``preexec_fn``):
    a parent killed at once (SIGKILL, a lost node) would otherwise leave it training on, writing into a run that another
    launch may be resuming."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, how)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
