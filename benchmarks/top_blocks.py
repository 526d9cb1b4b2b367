"""Train only the last blocks, many epochs, on hidden states cached once? (benchmarks/QUALITY.md, section 7)

    .venv/bin/python benchmarks/top_blocks.py --last-blocks 8 --epochs 4 --learning-rate 2e-3   # after quality.py split the data
    .venv/bin/python benchmarks/top_blocks.py --last-blocks 8 --epochs 4 --learning-rate 1e-4 --method full

When only the last K of SmolLM2's 30 blocks train, the lower blocks compute the same thing for a review in every
epoch (no dropout runs there). This runs them once, under no_grad, keeps each training review's hidden state at the
input of block 30-K (fp32, 62,502 tokens x 576: 144 MB), and then trains the top K blocks on those states alone:
LoRA r=16 alpha 32 on every linear layer of those blocks (``--method lora``) or the blocks themselves
(``--method full``, the final norm too). The rest is the demo's recipe as in ``label_weight.py``: batches of 6 with
two reviews of each label, AdamW, 10% warm-up, cosine decay, bf16 autocast, and the loss of the label word's tokens
multiplied by ``--weight``. After each epoch it scores the validation split from the decisive token's logits (the
cached state of the prompt plus ``ラベル: `` and the labels' shared first token, through the trained blocks), printing
the accuracy and one letter per review.

What it answers: an epoch of the top 8 blocks costs about a fifth of an epoch of the whole model, so if the task can
be learned in the top blocks, the 6-minute budget holds several epochs instead of one.
"""

from __future__ import annotations

import argparse
import math
import time

import peft
import torch
from transformers.masking_utils import create_causal_mask

from label_weight import SECOND_TOKEN, SHARED_FIRST, SPACE, encode, label_of, read, seeded_base_model

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--last-blocks", type=int, default=4)
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--weight", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    args = parser.parse_args()
    rng, base, tokenizer = seeded_base_model()
    base.requires_grad_(False)
    if not 1 <= args.last_blocks <= base.config.num_hidden_layers:
        parser.error(f"--last-blocks {args.last_blocks}: the model has {base.config.num_hidden_layers} blocks; use 1 to {base.config.num_hidden_layers}")
    first_trained = base.config.num_hidden_layers - args.last_blocks
    train = [encode(tokenizer, row, args.weight) for row in read("train")]
    validation = read("val")
    started = time.time()

    def lower_blocks(ids: list[int]) -> torch.Tensor:
        """The hidden state entering block ``first_trained`` (hidden_states[i] is the input of block i)."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return base.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[first_trained].float()

    cached = [lower_blocks(ids) for ids, _, _ in train]
    cached_validation = []
    for row in validation:
        prompt = tokenizer.apply_chat_template(row["messages"][:2], tokenize=False, add_generation_prompt=True)
        cached_validation.append(lower_blocks(tokenizer(prompt + "ラベル:", add_special_tokens=False)["input_ids"] + [SPACE, SHARED_FIRST]))
    print(f"cached the lower {first_trained} blocks' output for {sum(len(ids) for ids, _, _ in train)} tokens in {time.time() - started:.0f}s", flush=True)

    if args.method == "lora":
        targets = [f"model.layers.{block}.{name}" for block in range(first_trained, base.config.num_hidden_layers) for name in PROJECTIONS]
        model = peft.get_peft_model(base, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets))
        causal_lm = model.base_model.model
    else:
        model = causal_lm = base
        for module in [*base.model.layers[first_trained:], base.model.norm]:
            module.requires_grad_(True)
    blocks, norm, head, rotary = causal_lm.model.layers[first_trained:], causal_lm.model.norm, causal_lm.lm_head, causal_lm.model.rotary_emb

    def upper_blocks(hidden: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(hidden.shape[1])[None]
        position_embeddings = rotary(hidden, positions)
        mask = create_causal_mask(config=causal_lm.config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=positions)
        for block in blocks:
            hidden = block(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=positions)
        return norm(hidden)

    def evaluate() -> tuple[float, str]:
        model.eval()
        guesses = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for hidden in cached_validation:
                logits = head(upper_blocks(hidden)[0, -1])
                guesses.append(max(SECOND_TOKEN, key=lambda label: logits[SECOND_TOKEN[label]].item()))
        model.train()
        return sum(guess == label_of(row) for guess, row in zip(guesses, validation)) / len(validation), "".join(g[0] for g in guesses)

    by_label = {label: [index for index, example in enumerate(train) if example[2] == label] for label in SECOND_TOKEN}
    steps_per_epoch, steps = len(train) // 6, len(train) // 6 * args.epochs
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.01)
    warmup = max(1, int(0.1 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else
                                                 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))
    print(f"{sum(p.numel() for p in parameters):,} trainable parameters; before", *evaluate(), flush=True)
    training_started = time.time()
    for epoch in range(1, args.epochs + 1):
        queues = {label: rng.sample(indices, len(indices)) for label, indices in by_label.items()}
        for step in range(steps_per_epoch):
            batch = [index for queue in queues.values() for index in queue[2 * step: 2 * step + 2]]
            trained_tokens = sum(sum(1 for weight in train[index][1][1:] if weight > 0) for index in batch)
            batch_loss = 0.0
            for index in batch:  # one review at a time: no padding, gradients summed over the batch
                ids, weights, _ = train[index]
                targets, weights = torch.tensor(ids)[1:], torch.tensor(weights)[1:]
                trained = weights > 0
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = head(upper_blocks(cached[index])[0, :-1][trained]).float()
                losses = torch.nn.functional.cross_entropy(logits, targets[trained], reduction="none")
                loss = (losses * weights[trained]).sum() / trained_tokens
                loss.backward()
                batch_loss += loss.item()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        print(f"epoch {epoch} (step {epoch * steps_per_epoch}) loss {batch_loss:.3f}", *evaluate(),
              f"{time.time() - training_started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
