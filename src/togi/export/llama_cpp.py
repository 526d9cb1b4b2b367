"""llama.cpp, reached through the optional ``llama-cpp-python`` package (``pip install 'togi[llama]'``).

It does two things togi cannot do with the ``gguf`` package alone: quantise to the K-quant types
(Q4_K_M, Q5_K_M, Q6_K) with llama.cpp's own quantiser, and load an exported GGUF in the runtime users
will actually serve it with, to check its tokenization, logits and greedy answers against the model.
The package compiles llama.cpp on install (minutes), so togi works without it and says what it skipped.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from togi.export import ExportError

K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
INSTALL_HINT = "install llama.cpp's Python bindings with: pip install 'togi[llama]' (it compiles llama.cpp, which takes minutes)"


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@contextmanager
def native_stderr_to(log: Path) -> Iterator[None]:
    """Send what C code writes to stderr (llama.cpp's per-tensor log) to ``log`` instead of the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quantize(source: Path, target: Path, quant: str, threads: int = 0) -> str | None:
    """Quantise an F32/F16 GGUF to a K-quant type (or Q4_0) with llama.cpp's quantiser. Returns llama.cpp's note on
    tensors it had to quantise another way (rows not a multiple of 256), if any."""
    if not available():
        raise ExportError(f"--quant {quant} needs llama.cpp; {INSTALL_HINT}", "or use --quant q8_0 or q4_0, which togi writes without it")
    import llama_cpp

    file_types = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
                  "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_types[quant]
    params.nthread = threads
    temporary, log = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.log")
    try:
        with native_stderr_to(log):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(temporary).encode(), ctypes.byref(params))
        messages = log.read_text(encoding="utf-8", errors="replace")
    finally:
        log.unlink(missing_ok=True)
    if status != 0 or not temporary.is_file():
        temporary.unlink(missing_ok=True)
        last = [line for line in messages.splitlines() if line.strip()][-1:] or ["no message"]
        raise ExportError(f"llama.cpp could not quantise {source.name} to {quant} (status {status}): {last[0]}",
                          "use --quant q8_0 or q4_0, which togi writes without llama.cpp")
    temporary.replace(target)
    fallback = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback quantization", messages)
    if fallback:
        return (f"llama.cpp quantised {fallback.group(1)} of {fallback.group(2)} tensors with a non-K type "
                "(their rows are not a multiple of 256)")
    return None


def context_size(path: Path, limit: int = 2048) -> int:
    """The context to open a GGUF with: its training context, at most ``limit`` (llama.cpp keeps a logit
    row per position when comparing logits, so a model's full 8k context would cost gigabytes)."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    architecture = fields["general.architecture"].contents()
    key = f"{architecture}.context_length"
    return min(limit, int(fields[key].contents())) if key in fields else limit


def verify(model: Any, tokenizer: Any, path: Path, prompts: list[str], max_new_tokens: int = 16) -> dict[str, Any]:
    """Load the GGUF with llama.cpp and compare it with ``model``: tokenization, logits at every prompt
    position (largest difference, top-1 agreement) and the greedy answer's tokens."""
    from llama_cpp import Llama

    with closing(Llama(model_path=str(path), n_ctx=context_size(path), logits_all=True, verbose=False, seed=0)) as runtime:
        return _compare(runtime, model, tokenizer, prompts, max_new_tokens)


def _compare(runtime: Any, model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
    import numpy as np
    import torch

    largest, agreeing, positions, equal_answers, equal_tokens = 0.0, 0, 0, 0, 0
    for prompt in prompts:
        expected_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = runtime.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        equal_tokens += int(ids == expected_ids)
        runtime.reset()
        runtime.eval(expected_ids)  # the same tokens for both, so the logits compare even if tokenization differed
        actual = np.asarray(runtime.scores[: len(expected_ids)], dtype=np.float32)
        with torch.no_grad():
            reference = model(torch.tensor([expected_ids])).logits[0].float().numpy()
            greedy = model.generate(torch.tensor([expected_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)[0, len(expected_ids):].tolist()
        largest = max(largest, float(np.abs(reference - actual).max()))
        agreeing += int((reference.argmax(-1) == actual.argmax(-1)).sum())
        positions += len(expected_ids)
        answer: list[int] = []
        for token in runtime.generate(expected_ids, top_k=1, temp=0.0, reset=True):
            answer.append(int(token))
            if len(answer) >= len(greedy) or runtime.token_eos() == token:
                break
        equal_answers += int(answer == greedy[: len(answer)] and len(answer) == len(greedy))
    return {"max_abs_logit_diff": round(largest, 6), "top1_agreement": round(agreeing / max(positions, 1), 4),
            "greedy_equal": f"{equal_answers}/{len(prompts)}", "tokenization_equal": f"{equal_tokens}/{len(prompts)}"}


def generate(path: Path, prompt: str, max_new_tokens: int = 64) -> str:
    """One greedy answer from the GGUF, generated by llama.cpp."""
    from llama_cpp import Llama

    with closing(Llama(model_path=str(path), n_ctx=context_size(path), verbose=False, seed=0)) as runtime:
        result = runtime.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
    return result["choices"][0]["text"]
