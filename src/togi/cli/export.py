"""``togi export``: a run as a merged model or a portable adapter."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from togi.cli.data import fail, user_errors

console = Console()
TARGETS = ("merged", "adapter", "gguf")


def export_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished training run directory.", show_default=False)],
    to: Annotated[str, typer.Option(help="merged (a plain transformers model) or adapter (a portable PEFT adapter).")] = "merged",
    quant: Annotated[str, typer.Option(help="GGUF type: f32, f16, bf16, q8_0 or q4_0.")] = "f16",
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: RUN_DIR/export/<to>).")] = None,
) -> None:
    """Export a run: the adapter merged into its base, or the adapter alone, ready to load elsewhere."""
    from transformers.utils import logging as hf_logging

    from togi.export.merge import ExportError, export_adapter, export_gguf, export_merged

    if to not in TARGETS:
        raise fail(f"unknown --to {to!r}", f"choose one of: {', '.join(TARGETS)} (Ollama, ONNX and hub are not built yet)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    with user_errors():
        try:
            if to == "gguf":
                path, agreement = export_gguf(run_dir, out or run_dir / "export" / "gguf", quant)
            else:
                path = (export_merged if to == "merged" else export_adapter)(run_dir, out or run_dir / "export" / to)
        except ExportError as error:
            raise fail(str(error), "see `togi export --help`") from None
    if to == "gguf":
        console.print(f"✓ exported GGUF ({quant}) to {path}", soft_wrap=True, highlight=False)
        console.print(f"  loaded back with transformers on 3 held-out prompts: top-1 agreement {agreement['top1_agreement']:.0%}, "
                      f"largest logit difference {agreement['max_abs_logit_diff']:.4g}, greedy answers equal {agreement['greedy_equal']}",
                      soft_wrap=True, highlight=False)
        return
    loader = "AutoModelForCausalLM" if to == "merged" else "peft.AutoPeftModelForCausalLM"
    console.print(f"✓ exported {to} to {path}  (load it with {loader}.from_pretrained('{path}'))", soft_wrap=True, highlight=False)
