"""``togi export --to gguf``: write, quantise, check and verify a GGUF file for a run.

1. The merged model is written with the ``gguf`` package (F32, F16, BF16, Q8_0, Q4_0), or written as
   F32 and quantised by llama.cpp for the K-quants (Q4_K_M, Q5_K_M, Q6_K).
2. The template-consistency check reads the file back: its chat template must be the training
   template, and its EOS/end-of-turn tokens must include the token that ends an assistant turn.
   A file that fails is deleted and the export refused.
3. Verification loads the file back with transformers (always) and llama.cpp (when installed) and
   compares tokenization, logits and greedy answers with the merged model on held-out prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from togi.export import ExportError, llama_cpp
from togi.export.consistency import TrainingChat, require_consistent, stop_mismatch, template_mismatch
from togi.export.gguf_writer import GGUF_TYPES, GGUFExportError, read_gguf_chat, verify_gguf, write_gguf
from togi.export.merge import tuned_model
from togi.runs import Run

ALL_GGUF_TYPES = GGUF_TYPES + llama_cpp.K_QUANTS


@dataclass
class GGUFExport:
    path: Path
    training: TrainingChat
    context_length: int | None = None
    eos_token: str | None = None
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


def export_gguf(run_dir: Path, out_dir: Path, quant: str = "f16", verify: bool = True) -> GGUFExport:
    if quant not in ALL_GGUF_TYPES:
        raise ExportError(f"unknown GGUF type {quant!r}; choose one of: {', '.join(ALL_GGUF_TYPES)}", "pass one of them with --quant")
    if quant in llama_cpp.K_QUANTS and not llama_cpp.available():
        raise ExportError(f"--quant {quant} goes through llama.cpp's quantiser; {llama_cpp.INSTALL_HINT}. "
                          "Without it, use q8_0 or q4_0.",
                          "q8_0 and q4_0 are written without llama.cpp")
    model, tokenizer = tuned_model(run_dir)
    training = TrainingChat.of_run(run_dir, tokenizer)
    require_consistent([template_mismatch(f"the tokenizer saved in {run_dir}", tokenizer.chat_template, training)])
    path = out_dir / f"model-{quant}.gguf"
    try:
        if quant in llama_cpp.K_QUANTS:
            unquantized = write_gguf(model, tokenizer, out_dir / ".model-f32.gguf", "f32", name=run_dir.name,
                                     end_of_turn_id=training.end_of_turn_id)
            try:
                quantize_note = llama_cpp.quantize(unquantized, path, quant)
            finally:
                unquantized.unlink(missing_ok=True)
        else:
            quantize_note = None
            write_gguf(model, tokenizer, path, quant, name=run_dir.name, end_of_turn_id=training.end_of_turn_id)
    except GGUFExportError as error:
        raise ExportError(error.message, error.hint) from None
    template, stops = read_gguf_chat(path)
    try:
        require_consistent([template_mismatch("the GGUF file", template, training), stop_mismatch("the GGUF file", stops, training)])
    except ExportError:
        path.unlink(missing_ok=True)
        raise
    result = GGUFExport(path, training, getattr(model.config, "max_position_embeddings", None), tokenizer.eos_token)
    if quantize_note:
        result.notes.append(quantize_note)
    if verify:
        prompts = held_out_prompts(run_dir, tokenizer)
        result.agreement["transformers"] = verify_gguf(model, tokenizer, path, prompts)
        if llama_cpp.available():
            result.agreement["llama.cpp"] = llama_cpp.verify(model, tokenizer, path, prompts)
        else:
            result.notes.append(f"llama.cpp check skipped: {llama_cpp.INSTALL_HINT}")
    return result
