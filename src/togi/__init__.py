"""togi (研ぎ): sharpen a pretrained language model for one task on your own data.

    import togi
    config = togi.load_config("examples/recipes/reviews-lora.yaml")
    result = togi.train(config)          # -> togi.train.RunResult
"""

from __future__ import annotations

from typing import Any

from togi.version import __version__


def __getattr__(name: str) -> Any:
    # Heavy imports (torch, transformers) only when the API is used, so `togi --help` stays fast.
    if name == "train":
        from togi.train import train

        return train
    if name == "load_config":
        from togi.config import load_config

        return load_config
    raise AttributeError(f"module 'togi' has no attribute {name!r}")
