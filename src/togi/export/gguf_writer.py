"""GGUF export for the Llama family (Llama, Mistral, SmolLM) and Qwen2, written with the ``gguf`` package.

It writes what llama.cpp and transformers read: architecture metadata, the byte-level BPE vocabulary
with token types and merges, the special token ids, the chat template, and the tensors under GGUF
names. Query and key projections are permuted into the interleaved rotary layout llama.cpp expects,
as llama.cpp's own converter does. Types: F32, F16, BF16, Q8_0 and Q4_0 (norms stay F32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from togi.errors import TogiError


GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# The GGUF architecture each model type is written as, and whether its query/key weights are permuted
# into llama.cpp's interleaved rotary layout (llama.cpp's own converter permutes Llama and Mistral, not Qwen2).
GGUF_ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}


class GGUFExportError(TogiError):
    """A model or tokenizer that togi's GGUF writer does not cover yet."""

    hint = "export with --to merged and convert that with llama.cpp's convert_hf_to_gguf.py"


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half query/key layout to the interleaved one llama.cpp expects."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer, recognised from tokenizer.json."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise GGUFExportError(f"this tokenizer's pre-tokenizer ({kinds}) has no known llama.cpp name yet")


def _vocabulary(tokenizer: Any) -> tuple[list[str], list[int], list[str]]:
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise GGUFExportError(f"only byte-level BPE tokenizers are exported so far (this one is {data['model']['type']})")
    size = len(tokenizer)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, token_id in data["model"]["vocab"].items():
        tokens[token_id], types[token_id] = token, gguf.TokenType.NORMAL
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"].get("merges", [])]
    return tokens, [int(t) for t in types], merges


def write_gguf(model: Any, tokenizer: Any, path: Path, gguf_type: str = "f16", name: str = "togi",
               end_of_turn_id: int | None = None) -> Path:
    """Write ``model`` as GGUF. ``end_of_turn_id`` is the token that closes an assistant turn in the chat
    template; when it is not the EOS token it is written as the end-of-turn token, so runtimes stop there."""
    import gguf

    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise GGUFExportError(f"GGUF export covers {', '.join(SUPPORTED_MODEL_TYPES)} models so far, not {config.model_type}")
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type {gguf_type!r}; choose one of: {', '.join(GGUF_TYPES)}", "pass one of them with --quant")
    quant = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope_theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    architecture, permute = GGUF_ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(temporary), architecture)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(file_type)

    tokens, types, merges = _vocabulary(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(json.loads(tokenizer.backend_tokenizer.to_str())))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            setter(int(token_id))
    if end_of_turn_id is not None and end_of_turn_id != tokenizer.eos_token_id:
        writer.add_eot_token_id(int(end_of_turn_id))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if architecture == "qwen2" else gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = model.state_dict()
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reuses token_embd when there is no output tensor
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if permute and hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif permute and hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if data.ndim == 1 or quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif quant == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    temporary.replace(path)
    return path


def read_gguf_chat(path: Path) -> tuple[str | None, set[str]]:
    """The chat template a GGUF file carries and the tokens runtimes stop at (its EOS and end-of-turn tokens)."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    stops = {tokens[fields[key].contents()] for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if key in fields}
    template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
    return template, stops


def verify_gguf(model: Any, tokenizer: Any, path: Path, prompts: list[str], max_new_tokens: int = 16) -> dict[str, Any]:
    """Load the GGUF back with transformers and compare it with ``model`` on ``prompts``: the largest
    logit difference, the share of positions whose top token agrees, and how many greedy answers match.
    It is checked against the GGUF's own tokenizer, so a wrong vocabulary shows up as a difference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    largest, agreeing, positions, equal_answers, equal_tokens = 0.0, 0, 0, 0, 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        equal_tokens += int(loaded_tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids["input_ids"][0].tolist())
        with torch.no_grad():
            expected, actual = model(**ids).logits, loaded(**ids).logits
            largest = max(largest, float((expected - actual).abs().max()))
            agreeing += int((expected.argmax(-1) == actual.argmax(-1)).sum())
            positions += expected.shape[1]
            greedy = [m.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                      for m in (model, loaded)]
        equal_answers += int(torch.equal(*greedy))
    return {"max_abs_logit_diff": round(largest, 6), "top1_agreement": round(agreeing / max(positions, 1), 4),
            "greedy_equal": f"{equal_answers}/{len(prompts)}", "tokenization_equal": f"{equal_tokens}/{len(prompts)}"}
