"""``togi export --to gguf``: write, quantise, check and verify a GGUF file for a run.

1. The merged model is written by one of two writers (``--gguf-writer``):
   - ``llama.cpp``: llama.cpp's own converter (``llama_cpp_converter``), for every architecture it supports,
     at the version of the installed llama.cpp bindings; it writes F32, F16, BF16 and Q8_0 itself.
   - ``togi``: togi's writer (``gguf_writer``), for Llama-shaped and Qwen2 models, needing no llama.cpp at all;
     it writes F32, F16, BF16, Q8_0 and Q4_0.
   ``auto`` takes llama.cpp's converter when the bindings are installed, togi's writer for the families it
   knows when they are not, and llama.cpp's converter (fetched from the registry) for any other family.
   Other types (the K-quants, and Q4_0 from the converter) are written as F32 and quantised by llama.cpp.
2. The template-consistency check reads the file back: its chat template must be the training
   template, and its EOS/end-of-turn tokens must include the token that ends an assistant turn.
   A file that fails is deleted and the export refused.
3. Verification loads the file back with transformers (always) and llama.cpp (when installed) and
   compares tokenization, logits and greedy answers with the merged model on held-out prompts.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from togi.export import ExportError, llama_cpp, llama_cpp_converter
from togi.export.consistency import TrainingChat, require_consistent, stop_mismatch, template_mismatch
from togi.export.gguf_writer import GGUF_TYPES, SUPPORTED_MODEL_TYPES, GGUFExportError, read_gguf_chat, verify_gguf, write_gguf
from togi.export.merge import tuned_model
from togi.runs import Run

ALL_GGUF_TYPES = GGUF_TYPES + llama_cpp.K_QUANTS
WRITERS = ("auto", "llama.cpp", "togi")


@dataclass
class GGUFExport:
    path: Path
    training: TrainingChat
    context_length: int | None = None
    eos_token: str | None = None
    writer: str = "togi"  # who wrote the file: "togi" or "llama.cpp <version>"
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)  # loader -> comparison with the merged model
    notes: list[str] = field(default_factory=list)  # what the user should know: checks skipped, quantisation fallbacks


def held_out_prompts(run_dir: Path, tokenizer: Any, count: int = 3) -> list[str]:
    """Prompts from the run's validation split (its training split when it had none), rendered for generation."""
    from togi.data.formats import load_dataset
    from togi.data.template import render_chat

    run = Run(run_dir)
    source = run.split_path("val") if run.split_path("val").is_file() else run.split_path("train")
    examples = [example for example in load_dataset(source).examples if hasattr(example, "prompt_messages")][:count]
    return [render_chat(tokenizer, example.prompt_messages, add_generation_prompt=True) for example in examples]


def choose_writer(requested: str, model_type: str) -> str:
    """``llama.cpp`` or ``togi``: what ``--gguf-writer`` (``auto`` by default) means for this model."""
    if requested not in WRITERS:
        raise ExportError(f"unknown GGUF writer {requested!r}; choose one of: {', '.join(WRITERS)}", "pass one of them with --gguf-writer")
    if requested == "togi" and model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"togi's GGUF writer covers {', '.join(SUPPORTED_MODEL_TYPES)} models, not {model_type}",
                          "use --gguf-writer llama.cpp (or auto), which writes every architecture llama.cpp supports")
    if requested != "auto":
        return requested
    if llama_cpp.available() or model_type not in SUPPORTED_MODEL_TYPES:
        return "llama.cpp"
    return "togi"


def export_gguf(run_dir: Path, out_dir: Path, quant: str = "f16", verify: bool = True, writer: str = "auto") -> GGUFExport:
    if quant not in ALL_GGUF_TYPES:
        raise ExportError(f"unknown GGUF type {quant!r}; choose one of: {', '.join(ALL_GGUF_TYPES)}", "pass one of them with --quant")
    if quant in llama_cpp.K_QUANTS and not llama_cpp.available():
        raise ExportError(f"--quant {quant} goes through llama.cpp's quantiser; {llama_cpp.INSTALL_HINT}. "
                          "Without it, use q8_0 or q4_0.",
                          "q8_0 and q4_0 are written without llama.cpp")
    model, tokenizer = tuned_model(run_dir)
    chosen = choose_writer(writer, model.config.model_type)
    training = TrainingChat.of_run(run_dir, tokenizer)
    require_consistent([template_mismatch(f"the tokenizer saved in {run_dir}", tokenizer.chat_template, training)])
    path = out_dir / f"model-{quant}.gguf"
    notes: list[str] = []
    try:
        if chosen == "llama.cpp":
            try:
                written_by = _write_with_converter(model, tokenizer, path, quant, training, notes)
            except llama_cpp_converter.ConverterError as refused:
                if writer != "auto" or model.config.model_type not in SUPPORTED_MODEL_TYPES:
                    raise
                # e.g. a tokenizer whose pre-tokenizer llama.cpp does not recognise: togi's writer reads its structure
                notes.append(f"llama.cpp's converter refused this model ({refused.message}); written by togi's writer instead")
                _write_with_togi(model, tokenizer, path, quant, run_dir.name, training, notes)
                written_by = "togi"
        else:
            _write_with_togi(model, tokenizer, path, quant, run_dir.name, training, notes)
            written_by = "togi"
    except GGUFExportError as error:
        raise ExportError(error.message, error.hint) from None
    template, stops = read_gguf_chat(path)
    try:
        require_consistent([template_mismatch("the GGUF file", template, training), stop_mismatch("the GGUF file", stops, training)])
    except ExportError:
        path.unlink(missing_ok=True)
        raise
    result = GGUFExport(path, training, getattr(model.config, "max_position_embeddings", None), tokenizer.eos_token, writer=written_by,
                        notes=notes)
    if verify:
        prompts = held_out_prompts(run_dir, tokenizer)
        architecture = _gguf_architecture(path)
        if architecture in _transformers_gguf_architectures():
            try:
                result.agreement["transformers"] = verify_gguf(model, tokenizer, path, prompts)
            except Exception as error:  # transformers' GGUF reader, not the file: llama.cpp's check below still runs
                first_line = (str(error).splitlines() or [type(error).__name__])[0]
                result.notes.append(f"transformers check failed: transformers could not load this {architecture} GGUF "
                                    f"({type(error).__name__}: {first_line})")
        else:
            result.notes.append(f"transformers check skipped: transformers cannot load GGUF files of architecture {architecture!r}")
        if llama_cpp.available():
            result.agreement["llama.cpp"] = llama_cpp.verify(model, tokenizer, path, prompts)
        else:
            result.notes.append(f"llama.cpp check skipped: {llama_cpp.INSTALL_HINT}")
    return result


def _write_with_togi(model: Any, tokenizer: Any, path: Path, quant: str, name: str, training: TrainingChat, notes: list[str]) -> None:
    if quant in llama_cpp.K_QUANTS:
        unquantized = write_gguf(model, tokenizer, path.with_name(".model-f32.gguf"), "f32", name=name,
                                 end_of_turn_id=training.end_of_turn_id)
        try:
            _note(notes, llama_cpp.quantize(unquantized, path, quant))
        finally:
            unquantized.unlink(missing_ok=True)
    else:
        write_gguf(model, tokenizer, path, quant, name=name, end_of_turn_id=training.end_of_turn_id)


def _write_with_converter(model: Any, tokenizer: Any, path: Path, quant: str, training: TrainingChat, notes: list[str]) -> str:
    """Save the merged model where llama.cpp's converter reads it, convert, quantise if asked, and make the
    end-of-turn token the file's stop token. Returns "llama.cpp <version>"."""
    if quant not in llama_cpp_converter.CONVERTER_TYPES and not llama_cpp.available():
        raise ExportError(f"--quant {quant} from llama.cpp's converter goes through llama.cpp's quantiser; {llama_cpp.INSTALL_HINT}",
                          f"use --quant {' or '.join(llama_cpp_converter.CONVERTER_TYPES)}, or --gguf-writer togi for q4_0 "
                          "on Llama-shaped and Qwen2 models")
    source = llama_cpp_converter.converter_directory()
    architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    supported = llama_cpp_converter.supported_architectures(source)
    if supported and architecture not in supported:
        raise ExportError(f"llama.cpp's converter ({source.name}) does not support {architecture}",
                          "export with --to merged; a newer llama.cpp may support it (pip install -U llama-cpp-python)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".merged-for-gguf-") as merged:
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        _name_byte_level_tokenizer_class(Path(merged), model.config.model_type)
        direct = quant in llama_cpp_converter.CONVERTER_TYPES
        written = llama_cpp_converter.convert(Path(merged), path if direct else path.with_name(".model-f32.gguf"),
                                              quant if direct else "f32", source)
    if not direct:
        try:
            _note(notes, llama_cpp.quantize(written, path, quant))
        finally:
            written.unlink(missing_ok=True)
    _, stops = read_gguf_chat(path)
    if training.end_of_turn not in stops and training.end_of_turn_id is not None:
        llama_cpp_converter.set_end_of_turn(path, training.end_of_turn_id, source)
        notes.append(f"{training.end_of_turn!r} written as the end-of-turn token (the tokenizer's EOS is {tokenizer.eos_token!r})")
    return f"llama.cpp {source.name}"


def _name_byte_level_tokenizer_class(merged: Path, model_type: str) -> None:
    """llama.cpp's Phi-3 converter reads a byte-level BPE vocabulary (Phi-4's) only when tokenizer_config.json names
    ``GPT2Tokenizer``, as transformers 4 wrote it; transformers 5 writes ``TokenizersBackend`` for every fast tokenizer."""
    config_path = merged / "tokenizer_config.json"
    if model_type != "phi3" or (merged / "tokenizer.model").exists() or not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        config["tokenizer_class"] = "GPT2Tokenizer"
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def _note(notes: list[str], note: str | None) -> None:
    if note:
        notes.append(note)


def _gguf_architecture(path: Path) -> str:
    import gguf

    return str(gguf.GGUFReader(str(path)).fields["general.architecture"].contents())


def _transformers_gguf_architectures() -> set[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES)
