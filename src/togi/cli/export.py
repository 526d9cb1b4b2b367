"""``togi export``: a run as a merged model or a portable adapter."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from togi.cli.data import fail, user_errors

console = Console()
TARGETS = ("merged", "adapter")


def export_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished training run directory.", show_default=False)],
    to: Annotated[str, typer.Option(help="merged (a plain transformers model) or adapter (a portable PEFT adapter).")] = "merged",
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: RUN_DIR/export/<to>).")] = None,
) -> None:
    """Export a run: the adapter merged into its base, or the adapter alone, ready to load elsewhere."""
    from transformers.utils import logging as hf_logging

    from togi.export.merge import ExportError, export_adapter, export_merged

    if to not in TARGETS:
        raise fail(f"unknown --to {to!r}", f"choose one of: {', '.join(TARGETS)} (GGUF, Ollama, ONNX and hub are not built yet)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    with user_errors():
        try:
            path = (export_merged if to == "merged" else export_adapter)(run_dir, out or run_dir / "export" / to)
        except ExportError as error:
            raise fail(str(error), "see `togi export --help`") from None
    loader = "AutoModelForCausalLM" if to == "merged" else "peft.AutoPeftModelForCausalLM"
    console.print(f"✓ exported {to} to {path}  (load it with {loader}.from_pretrained('{path}'))", soft_wrap=True, highlight=False)
