"""``togi export``: a run as merged weights, an adapter, GGUF, an Ollama model, ONNX, or a Hub repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import make_console

console = make_console()
TARGETS = ("merged", "adapter", "gguf", "ollama", "onnx", "hub", "multi-adapter")


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False)


def _print_agreement(agreement: dict[str, dict[str, Any]], notes: list[str]) -> None:
    for loader, result in agreement.items():
        _say(f"  loaded back with {loader} on {result['greedy_equal'].split('/')[1]} held-out prompts: "
             f"tokenization equal {result['tokenization_equal']}, top-1 agreement {result['top1_agreement']:.0%}, "
             f"largest logit difference {result['max_abs_logit_diff']:.4g}, greedy answers equal {result['greedy_equal']}")
    for line in notes:
        _say(f"  {line}")


def export_command(
    run_dirs: Annotated[list[str], typer.Argument(metavar="RUN_DIR...", help="A finished training run directory (for onnx: also a saved "
                                                  "model); for multi-adapter, two or more, each NAME=RUN_DIR or RUN_DIR.", show_default=False)],
    to: Annotated[str, typer.Option(help="merged, adapter, gguf, ollama, onnx, hub or multi-adapter.")] = "merged",
    quant: Annotated[Optional[str], typer.Option(help="GGUF type: f32, f16, bf16, q8_0, q4_0, or with llama.cpp installed "
                                                       "q4_k_m, q5_k_m, q6_k (default: f16 for gguf, q8_0 for ollama).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: RUN_DIR/export/<to>).")] = None,
    verify: Annotated[bool, typer.Option(help="Load a GGUF back with transformers (and llama.cpp) and compare answers.")] = True,
    gguf_writer: Annotated[str, typer.Option(help="gguf/ollama: auto, llama.cpp (llama.cpp's own converter, every architecture it "
                                                  "supports) or togi (Llama-shaped and Qwen2 models, no llama.cpp needed). "
                                                  "auto: llama.cpp's when its bindings are installed or the family is not togi's.")] = "auto",
    repo_id: Annotated[Optional[str], typer.Option(help="hub: the repository to upload to, e.g. my-org/my-model.")] = None,
    private: Annotated[bool, typer.Option(help="hub: create the repository as private.")] = False,
    upload: Annotated[str, typer.Option(help="hub: upload the merged model or the adapter alone.")] = "merged",
    dry_run: Annotated[bool, typer.Option(help="hub: list what would be uploaded, and upload nothing.")] = False,
    hub_url: Annotated[Optional[str], typer.Option(help="hub: another Hub-compatible endpoint (default: $HF_ENDPOINT or the Hub).")] = None,
    token: Annotated[Optional[str], typer.Option(help="hub: access token (default: $HF_TOKEN or the saved login).")] = None,
    combine: Annotated[Optional[str], typer.Option(help="multi-adapter: add one adapter combining them all with PEFT's "
                                                   "add_weighted_adapter: linear, cat, svd, ties, dare_linear, dare_ties, ...")] = None,
    weights: Annotated[Optional[str], typer.Option(help="multi-adapter: each adapter's weight in the combination, e.g. 0.7,0.3 "
                                                   "(default: 1 each).")] = None,
    density: Annotated[Optional[float], typer.Option(help="multi-adapter: the share of weights TIES and DARE keep, e.g. 0.5.")] = None,
    combined_name: Annotated[str, typer.Option(help="multi-adapter: the combined adapter's name.")] = "combined",
) -> None:
    """Export a run for use elsewhere. Every export is checked: the chat template and stop tokens must be
    the ones the model was trained with, or nothing is written.

    \b
    togi export runs/my-run --to merged          # plain transformers model
    togi export runs/my-run --to gguf --quant q8_0
    togi export runs/my-run --to ollama          # GGUF + Modelfile; then: ollama create my-model -f runs/my-run/export/ollama/Modelfile
    togi export runs/my-run --to onnx
    togi export runs/my-run --to hub --repo-id my-org/my-model --private --dry-run
    togi export reviews=runs/a faq=runs/b --to multi-adapter --out exports/tasks   # one base, named adapters
    """
    if to not in TARGETS:
        raise fail(f"unknown --to {to!r}", f"choose one of: {', '.join(TARGETS)}")
    if to == "multi-adapter":
        _export_multi_adapter(run_dirs, out, combine, weights, density, combined_name)
        return
    if len(run_dirs) != 1:
        raise fail(f"--to {to} exports one run; {len(run_dirs)} were given", "give one RUN_DIR, or --to multi-adapter for several")
    run_dir = Path(run_dirs[0])
    if to == "hub" and not repo_id:
        raise fail("--to hub needs --repo-id", "for example: --repo-id my-org/my-model")
    if upload not in ("merged", "adapter"):
        raise fail(f"unknown --upload {upload!r}", "choose merged or adapter")
    quiet_libraries()
    destination = out or run_dir / "export" / to
    if to in ("gguf", "ollama"):
        _export_gguf_or_ollama(run_dir, destination, to, quant or ("f16" if to == "gguf" else "q8_0"), verify, gguf_writer)
    elif to == "onnx":
        _export_onnx(run_dir, destination)
    elif to == "hub":
        _export_hub(run_dir, destination, repo_id or "", private, upload, dry_run, hub_url, token)
    else:
        from togi.export.merge import export_adapter, export_merged

        path = (export_merged if to == "merged" else export_adapter)(run_dir, destination)
        loader = "AutoModelForCausalLM" if to == "merged" else "peft.AutoPeftModelForCausalLM"
        _say(f"✓ exported {to} to {path}  (load it with {loader}.from_pretrained('{path}'))")


def _export_multi_adapter(entries: list[str], out: Path | None, combine: str | None, weights: str | None, density: float | None,
                          combined_name: str) -> None:
    from togi.export.multi_adapter import export_multi_adapter
    from togi.models.adapter_folder import read_manifest

    if out is None:
        raise fail("--to multi-adapter needs --out: the folder for the base and the adapters", "for example --out exports/tasks")
    try:
        parsed = [float(weight) for weight in weights.split(",")] if weights else None
    except ValueError:
        raise fail(f"--weights {weights!r}: not numbers separated by commas", "for example --weights 0.7,0.3") from None
    quiet_libraries()
    path = export_multi_adapter(entries, out, combine=combine, weights=parsed, density=density, combined_name=combined_name, log=_say)
    names = ", ".join(read_manifest(path)["adapters"])
    _say(f"✓ exported one base and the adapters {names} to {path}  (how to load them: {path / 'README.md'})")


def _export_gguf_or_ollama(run_dir: Path, destination: Path, to: str, quant: str, verify: bool, writer: str) -> None:
    if to == "gguf":
        from togi.export.gguf import export_gguf

        result = export_gguf(run_dir, destination, quant, verify=verify, writer=writer)
        _say(f"✓ exported GGUF ({quant}, written by {result.writer}) to {result.path}")
        _say(f"  template check: the chat template and stop token {result.training.end_of_turn!r} match training")
        _print_agreement(result.agreement, result.notes)
        return
    from togi.export.ollama import export_ollama

    exported = export_ollama(run_dir, destination, quant, verify=verify, writer=writer)
    _say(f"✓ exported GGUF ({quant}, written by {exported.gguf.writer}) and Modelfile to {destination}")
    _say(f"  template check: the Ollama TEMPLATE renders the training template's text on the check conversations; "
         f"stop at {', '.join(repr(stop) for stop in exported.stops)}")
    _say(f"  SYSTEM: {exported.system!r}" if exported.system else "  SYSTEM: none (the training examples' system prompts differ or are absent)")
    _print_agreement(exported.gguf.agreement, exported.gguf.notes)
    _say(f"  then: ollama create {run_dir.resolve().name} -f {exported.modelfile}")


def _export_onnx(source: Path, destination: Path) -> None:
    from togi.export.onnx_export import export_onnx
    from togi.models.adapter_folder import is_adapter_folder

    if is_adapter_folder(source):
        from togi.export.onnx_adapters import export_onnx_adapters

        exported = export_onnx_adapters(source, destination)
        _say(f"✓ exported ONNX with switchable adapters to {exported.directory / 'model.onnx'}: "
             f"{', '.join(f'adapters/{name}.onnx_adapter' for name in exported.adapters if name != 'base')}")
        _say("  checked in onnxruntime against PEFT, largest logit difference: "
             + ", ".join(f"{name} {difference:.3g}" for name, difference in exported.adapters.items()))
        return
    result = export_onnx(source, destination)
    _say(f"✓ exported ONNX ({result.task}) to {result.directory / 'model.onnx'}")
    _say(f"  checked in onnxruntime: largest logit difference {result.max_abs_logit_diff:.3g}, top-1 agreement {result.top1_agreement:.0%}")


def _export_hub(run_dir: Path, destination: Path, repo_id: str, private: bool, upload: str, dry_run: bool,
                hub_url: str | None, token: str | None) -> None:
    from togi.export.hub import plan_upload, write_hub_model_card
    from togi.export.hub import upload as upload_folder
    from togi.export.merge import export_adapter, export_merged

    folder = (export_merged if upload == "merged" else export_adapter)(run_dir, destination)
    write_hub_model_card(folder, run_dir, repo_id, upload)
    plan = plan_upload(folder, repo_id, private)
    verb = "would upload" if dry_run else "uploading"
    _say(f"{verb} {len(plan.files)} files ({plan.total_bytes / 1e6:.1f} MB) from {folder} to "
         f"{'a private' if private else 'a public'} repository {repo_id}:")
    for path, size in plan.files:
        _say(f"  {path}  {size:,} bytes")
    if dry_run:
        _say("dry run: nothing was uploaded")
        return
    try:
        upload_folder(plan, folder, token=token, endpoint=hub_url)
    except Exception as error:  # the Hub client's errors: network, auth, permissions
        raise fail(f"upload to {repo_id} failed: {str(error).splitlines()[0]}",
                   "check --token (or $HF_TOKEN) and that you may write to that repository") from None
    _say(f"✓ uploaded to {repo_id}: {plan.url}")
