"""The folder ``togi export --to multi-adapter`` writes: one base model and named adapters, with a manifest.

    OUT/base/            the base model, with the tokenizer and chat template the adapters were trained with
    OUT/adapters/NAME/   one PEFT adapter per task (and any combination of them)
    OUT/adapters.json    {"base": "base", "base_model": ..., "adapters": {NAME: {"path": "adapters/NAME", ...}}}

Export writes it; ``togi serve`` serves its adapters on the base, and ``togi eval adapters`` scores them. This
module only reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "adapters.json"


def is_adapter_folder(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def folder_of_adapter(adapter_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The export folder and manifest an adapter folder belongs to (``OUT/adapters/NAME``), or None."""
    root = adapter_dir.resolve().parent.parent
    return (root, read_manifest(root)) if is_adapter_folder(root) else None
