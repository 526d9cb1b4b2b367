"""The quality matrix of the reviews task: how well each recipe teaches SmolLM2-135M-Instruct (and MiniLM)
to label held-out Japanese reviews, on this machine.

    .venv/bin/python benchmarks/quality.py                              # every variant (about 2.5 hours on 2 cores)
    .venv/bin/python benchmarks/quality.py --only demo lora_r64_rslora  # some of them (run demo first: the others are compared with it)
    .venv/bin/python benchmarks/quality.py --list                  # the variants and what each changes

The data is `examples/reviews/reviews.jsonl` split as `make demo` splits it (`togi data split`, 10%
validation, 10% test, stratified by label: 192 / 24 / 24 reviews, 8 of each label in the test split).
Every variant is a recipe run through the CLI as a user would run it (`togi train`, then `togi eval` on
the test split for chat runs, `togi predict --json` for classifiers), each in its own process. Wall
time and peak memory (the largest resident set of the training process) are the training's alone.
Choices (learning rates, steps, which rows to report in the README) were made on the validation
split; the test split is only scored.

Results go to `runs/quality/results.jsonl` (one line per variant, appended) and a Markdown table on
stdout with accuracy, macro-F1, the confusion matrix (rows: true label, columns: predicted, in the
order ポジティブ / ネガティブ / ニュートラル, "-" counting answers with no label), wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABELS = ("ポジティブ", "ネガティブ", "ニュートラル")
LABEL_PATTERN = r"ラベル: (\S+)"
TWO_LINES = r"ラベル: \S+\n理由: [^\n]+|理由: [^\n]+\nラベル: \S+"  # either order
WORK = ROOT / "runs" / "quality"

# The demo's recipe (examples/recipes/reviews-lora.yaml): every chat variant starts from it and changes what
# its name says, at the demo's budget of 32 steps of 6 reviews (one epoch, about 6 minutes here), so the
# rows answer "what is best within the demo's budget". Like the demo, each run scores label accuracy on
# the validation split after 16 and 32 steps and keeps the better checkpoint.
CHAT_BASE: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "method": "lora",
    "data": {"max_length": 768, "balance_labels": True},
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "full"},
    "training": {"max_steps": 32, "batch_size": 6, "gradient_accumulation": 1, "learning_rate": 5e-4, "warmup_ratio": 0.1, "seed": 42},
    "monitoring": {"eval_every": 16, "save_every": 16, "eval_metric": "accuracy", "label_pattern": LABEL_PATTERN, "eval_examples": 24,
                   "eval_max_new_tokens": 32, "samples": 0},
}


def chat(shape: str = "full", **sections: Any) -> dict[str, Any]:
    recipe = json.loads(json.dumps(CHAT_BASE))
    for key, value in sections.items():
        if isinstance(value, dict):
            recipe.setdefault(key, {}).update(value)
        else:
            recipe[key] = value
    return {"kind": "chat", "shape": shape, "recipe": recipe}


def classifier(model: str, method: str, **training: Any) -> dict[str, Any]:
    recipe = {"task": "classification", "model": model, "data": {"max_length": 256}, "classification": {"freeze_backbone": method == "freeze"},
              "training": {"batch_size": 16, "gradient_accumulation": 1, "seed": 42, **training},
              "monitoring": {"eval_every": 1000, "save_every": 1000}}
    if method != "freeze":  # freeze_backbone sets the method itself
        recipe["method"] = method
    return {"kind": "classification", "recipe": recipe}


VARIANTS: dict[str, dict[str, Any]] = {
    # the generative runs: SmolLM2 answers "ラベル: X\n理由: ..." and the label is read off the answer
    "demo": chat(),
    "demo_old": chat(data={"balance_labels": False}, training={"max_steps": 16, "batch_size": 4, "learning_rate": 1e-3},
                     monitoring={"eval_every": 1000, "save_every": 1000, "eval_metric": "loss"}),
    "lora_defaults": chat(data={"balance_labels": False}, training={"batch_size": 4, "max_steps": 48, "learning_rate": None}),
    "lora_r64_rslora": chat(lora={"r": 64, "alpha": 16, "rslora": True}),
    "lora_attention_only": chat(lora={"targets": "minimal"}),
    "dora": chat(method="dora"),
    "full": chat(method="full", training={"learning_rate": 5e-5}),
    "freeze_last4": chat(method="freeze", freeze={"trainable_blocks": 4}, training={"learning_rate": 1e-4}),
    "prompt_tuning": chat(method="prompt_tuning", training={"learning_rate": 3e-2}),
    "short_reason": chat("short"),
    "label_only": chat("label"),
    "reason_first": chat("reason_first", monitoring={"eval_max_new_tokens": 128}),
    # the label's tokens weighted 20x in the loss (data.label_loss_weight), at the demo's budget and over three epochs
    "label_weight": chat(data={"label_loss_weight": 20}),
    "label_weight_3_epochs": chat(data={"label_loss_weight": 20}, training={"max_steps": 96}),
    # the same task as a classifier: a new head reads one vector per review
    "cls_smollm2_lora": classifier("smollm2-135m-instruct", "lora", epochs=4, learning_rate=5e-4),
    "cls_smollm2_full": classifier("smollm2-135m-instruct", "full", epochs=4, learning_rate=5e-5),
    "cls_minilm_head": classifier("all-MiniLM-L6-v2", "freeze", epochs=100, learning_rate=1e-2),
    "cls_minilm_full": classifier("all-MiniLM-L6-v2", "full", epochs=20, learning_rate=5e-5),
}


def short_reason(answer: str) -> str:
    """The answer with its reason cut to the first clause: 'ラベル: X\\n理由: <up to the first 、 or 。>。'."""
    label, _, reason = answer.partition("\n")
    clause = re.split(r"[、。]", reason, maxsplit=1)[0]
    return f"{label}\n{clause}。"


REASON_FIRST_SYSTEM = "商品レビューの感情を「理由: 一文」と「ラベル: ポジティブ/ネガティブ/ニュートラル」の2行で答えてください。"


def reason_first(answer: str) -> str:
    """The two lines swapped: '理由: ...\nラベル: X', so the label is written after the model has said why."""
    label, _, reason = answer.partition("\n")
    return f"{reason}\n{label}"


def reshape(source: Path, target: Path, shape: str) -> Path:
    """A copy of a chat split whose answers take the given shape: full (as written), short, label, reason_first."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        answer = row["messages"][-1]["content"]
        row["messages"][-1]["content"] = {"full": answer, "short": short_reason(answer), "label": answer.split("\n")[0],
                                          "reason_first": reason_first(answer)}[shape]
        if shape == "reason_first":
            row["messages"][0]["content"] = REASON_FIRST_SYSTEM
    target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return target


def split_data() -> dict[str, Path]:
    out = WORK / "data"
    if not (out / "reviews.test.jsonl").exists():
        subprocess.run([BIN / "togi", "data", "split", ROOT / "examples/reviews/reviews.jsonl", "--val-ratio", "0.1", "--test-ratio", "0.1",
                        "--stratify", "label", "--label-pattern", LABEL_PATTERN, "--out-dir", out], check=True, stdout=subprocess.DEVNULL)
    return {split: out / f"reviews.{split}.jsonl" for split in ("train", "val", "test")}


def as_labelled_texts(source: Path, target: Path) -> Path:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    target.write_text("".join(json.dumps({"text": row["messages"][1]["content"], "label": re.search(LABEL_PATTERN, row["messages"][2]["content"])[1]},
                                         ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return target


def timed(command: list[Any]) -> tuple[float, float, str]:
    """Run a command; its wall seconds, its peak resident memory in GiB, and its output."""
    start = time.perf_counter()
    process = subprocess.Popen([str(part) for part in command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {process.returncode}:\n{output[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20, output


def scores(expected: list[str], predicted: list[str | None]) -> dict[str, Any]:
    confusion = [[sum(e == truth and p == guess for e, p in zip(expected, predicted)) for guess in (*LABELS, None)] for truth in LABELS]
    f1s = []
    for label in LABELS:
        true_positive = sum(e == label and p == label for e, p in zip(expected, predicted))
        predicted_count, expected_count = sum(p == label for p in predicted), sum(e == label for e in expected)
        f1s.append(2 * true_positive / (predicted_count + expected_count) if predicted_count + expected_count else 0.0)
    return {"accuracy": sum(e == p for e, p in zip(expected, predicted)) / len(expected), "macro_f1": sum(f1s) / len(f1s), "confusion": confusion}


def run_variant(name: str, variant: dict[str, Any], splits: dict[str, Path], evaluate_on: str) -> dict[str, Any]:
    run_dir = WORK / name
    recipe = json.loads(json.dumps(variant["recipe"]))
    recipe["output_dir"] = str(run_dir)
    if variant["kind"] == "chat":
        shape = variant["shape"]
        train = reshape(splits["train"], WORK / "data" / f"train.{shape}.jsonl", shape)
        val = reshape(splits["val"], WORK / "data" / f"val.{shape}.jsonl", shape)
        recipe["data"].update(train_file=str(train), val_file=str(val))
    else:
        recipe["data"].update(train_file=str(as_labelled_texts(splits["train"], WORK / "data" / "train.labels.jsonl")),
                              val_file=str(as_labelled_texts(splits["val"], WORK / "data" / "val.labels.jsonl")))
    recipe_path = WORK / f"{name}.yaml"
    recipe_path.write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")  # JSON is YAML
    seconds, peak_gib, _ = timed([BIN / "togi", "train", recipe_path])
    data = splits[evaluate_on]
    if variant["kind"] == "chat":  # scored with the prompt the run was trained on
        data = reshape(data, WORK / "data" / f"{evaluate_on}.{variant['shape']}.jsonl", variant["shape"])
    expected = [re.search(LABEL_PATTERN, json.loads(line)["messages"][2]["content"])[1] for line in data.read_text(encoding="utf-8").splitlines()]
    result: dict[str, Any] = {"variant": name, "split": evaluate_on, "train_seconds": round(seconds, 1), "peak_rss_gib": round(peak_gib, 2)}
    if variant["kind"] == "chat":
        out = run_dir / f"eval-{evaluate_on}"
        # The base model is scored once, beside the demo; every other row is compared with the demo's run (or,
        # before the demo has run, with itself), whose short answers cost far less than the base model's run-on ones.
        baseline = "base" if name == "demo" else WORK / "demo" if (WORK / "demo" / "adapter").exists() else run_dir
        eval_seconds, _, _ = timed([BIN / "togi", "eval", run_dir, "--data", data, "--label-pattern", LABEL_PATTERN, "--batch-size", "12",
                                    "--out", out, "--baseline", baseline])
        records = [json.loads(line) for line in (out / "records.jsonl").read_text(encoding="utf-8").splitlines()]
        tuned = [r for r in records if r["model"] == "tuned"]
        predicted = [r["predicted_label"] for r in tuned]
        answers = [r.get("prediction", r.get("answer", "")) for r in tuned]
        metrics_log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        result["validation_accuracy"] = [record["eval_accuracy"] for record in metrics_log if "eval_accuracy" in record]
        if baseline == "base":
            result["base_accuracy"] = scores(expected, [r["predicted_label"] for r in records if r["model"] != "tuned"])["accuracy"]
        result.update(scores(expected, predicted), eval_seconds=round(eval_seconds, 1),
                      two_line_answers=sum(bool(re.fullmatch(TWO_LINES, a.strip())) for a in answers),
                      ended_before_limit=sum(not r.get("hit_limit", False) for r in tuned))
    else:
        texts = WORK / "data" / f"{evaluate_on}.texts.jsonl"
        as_labelled_texts(data, texts)
        _, _, output = timed([BIN / "togi", "predict", run_dir, "--file", texts, "--json"])
        predicted = [json.loads(line)["label"] for line in output.splitlines() if line.startswith("{")]
        result.update(scores(expected, predicted))
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| variant | split | accuracy | macro-F1 | confusion (P/N/U rows; P N U - columns) | base acc. | two-line | ended | train s | eval s | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        confusion = " / ".join(" ".join(str(n) for n in row) for row in r["confusion"])
        lines.append(f"| {r['variant']} | {r['split']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {confusion} | {r.get('base_accuracy', '')} | "
                     f"{r.get('two_line_answers', '')} | {r.get('ended_before_limit', '')} | {r['train_seconds']} | {r.get('eval_seconds', '')} | {r['peak_rss_gib']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="the split scored (choices are made on val)")
    parser.add_argument("--list", action="store_true", help="print the variants' recipes and exit")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    if args.list:
        for name in names:
            print(name, json.dumps(VARIANTS[name], ensure_ascii=False))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    splits = split_data()
    results = []
    for name in names:
        result = run_variant(name, VARIANTS[name], splits, args.split)
        results.append(result)
        with (WORK / "results.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps(result, ensure_ascii=False) + "\n")
        print(table([result]).splitlines()[-1], flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
