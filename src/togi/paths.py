"""Where togi keeps what it caches between runs."""

from __future__ import annotations

import os
from pathlib import Path


def togi_home() -> Path:
    """``$TOGI_HOME``, else ``$XDG_CACHE_HOME/togi``, else ``~/.cache/togi``."""
    if os.environ.get("TOGI_HOME"):
        return Path(os.environ["TOGI_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "togi"
