"""Does weighting the label's tokens in the loss make LoRA learn the reviews' labels? (benchmarks/QUALITY.md, section 6)

    .venv/bin/python benchmarks/label_weight.py --weight 20 --steps 96     # after benchmarks/quality.py has split the data

The demo's recipe in a plain PyTorch loop (SmolLM2-135M-Instruct, LoRA r=16 alpha 32 on every linear layer of the
blocks, AdamW lr 5e-4 with 10% warm-up and a cosine decay, batches of 6 holding two reviews of each label, bf16
autocast), with one change: the loss of the tokens of the label word (ポジティブ / ネガティブ / ニュートラル) is
multiplied by ``--weight``; every other answer token keeps weight 1. The sum is divided by the number of answer
tokens, as togi's loss is, so weight 1 is the demo's loss.

Every 16 steps it scores the validation split without generating: after the prompt and ``ラベル: `` plus the labels'
shared first token (11100), the label is the one of the three second tokens (247 / 231 / 229) with the highest
logit. It prints the accuracy and one letter per review (ポ / ネ / ニ) so a collapse onto one label shows.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import peft
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from togi.models.embedded import ensure_embedded_model

DATA = Path(__file__).resolve().parents[1] / "runs" / "quality" / "data"
SECOND_TOKEN = {"ポジティブ": 247, "ネガティブ": 231, "ニュートラル": 229}  # after the shared first token 11100
SPACE, SHARED_FIRST = 216, 11100


def read(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"reviews.{split}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def label_of(row: dict) -> str:
    return row["messages"][2]["content"].split("\n")[0].removeprefix("ラベル: ")


def encode(tokenizer, row: dict, weight: float) -> tuple[list[int], list[float], str]:
    """Token ids, per-token loss weights (0 on the prompt, ``weight`` on the label word, 1 elsewhere), label."""
    prompt = tokenizer.apply_chat_template(row["messages"][:2], tokenize=False, add_generation_prompt=True)
    answer = row["messages"][2]["content"] + "<|im_end|>\n"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"][: len(prompt_ids)] == prompt_ids
    label = label_of(row)
    start = len(prompt) + len("ラベル: ")
    end = start + len(label)
    weights = [0.0] * len(prompt_ids) + [weight if begin < end and finish > start else 1.0
                                         for begin, finish in encoded["offset_mapping"][len(prompt_ids):]]
    return encoded["input_ids"], weights, label


def seeded_base_model() -> tuple[random.Random, PreTrainedModel, PreTrainedTokenizerBase]:
    """The run's random generator and the seeded global state, SmolLM2-135M-Instruct in fp32, its tokenizer."""
    torch.manual_seed(0)
    path = ensure_embedded_model()
    return random.Random(0), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weight", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    args = parser.parse_args()
    rng, base, tokenizer = seeded_base_model()
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    backbone, head = model.base_model.model.model, model.base_model.model.lm_head
    train = [encode(tokenizer, row, args.weight) for row in read("train")]
    validation = read("val")
    by_label = {label: [example for example in train if example[2] == label] for label in SECOND_TOKEN}

    def balanced_batches():
        while True:
            queues = {label: rng.sample(examples, len(examples)) for label, examples in by_label.items()}
            for index in range(min(len(queue) for queue in queues.values()) // 2):
                batch = [example for queue in queues.values() for example in queue[2 * index: 2 * index + 2]]
                rng.shuffle(batch)
                yield batch

    def evaluate() -> tuple[float, str]:
        model.eval()
        letters = []
        with torch.no_grad():
            for row in validation:
                prompt = tokenizer.apply_chat_template(row["messages"][:2], tokenize=False, add_generation_prompt=True)
                ids = tokenizer(prompt + "ラベル:", add_special_tokens=False)["input_ids"] + [SPACE, SHARED_FIRST]
                logits = head(backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])
                letters.append(max(SECOND_TOKEN, key=lambda label: logits[SECOND_TOKEN[label]].item()))
        model.train()
        return sum(guess == label_of(row) for guess, row in zip(letters, validation)) / len(validation), "".join(g[0] for g in letters)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=0.01)
    warmup = max(1, int(0.1 * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else
                                                 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))))
    print("before", *evaluate(), flush=True)
    started, batches = time.time(), balanced_batches()
    for step in range(1, args.steps + 1):
        batch = next(batches)
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _, _ in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in batch])
        weights = torch.tensor([w + [0.0] * (width - len(w)) for _, w, _ in batch])[:, 1:]
        trained = weights > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
            logits = head(hidden[trained]).float()  # the LM head only where a loss is taken
        losses = torch.nn.functional.cross_entropy(logits, ids[:, 1:][trained], reduction="none")
        loss = (losses * weights[trained]).sum() / trained.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 16 == 0 or step == args.steps:
            print(step, round(loss.item(), 3), *evaluate(), f"{time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
