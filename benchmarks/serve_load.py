"""Chat completions under load: a real `togi serve` on loopback, one request at a time against batched.

    .venv/bin/python benchmarks/serve_load.py                        # 30 concurrent requests, max_tokens 16, the embedded model
    .venv/bin/python benchmarks/serve_load.py --requests 60 --max-tokens 32 --model NAME=PATH

Each configuration gets its own server process (`togi serve --max-batch N`), one warm-up request (the
model loads), then all requests at once from as many client threads, through the official `openai`
client, greedy, each with a different question. Meanwhile another thread calls `GET /v1/models` every
0.2 s: the slowest of those calls says whether the server stays responsive under the load.
`--max-batch 1` decodes one request at a time: the serialised path of the server before batching.
Reports p50/p95 latency, requests/s, generated tokens/s and the batched/serialised ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai

BIN = Path(sys.executable).parent
QUESTIONS = ["在庫はありますか？", "配送には何日かかりますか？", "返品の方法を教えてください。", "支払い方法は？", "保証期間はどのくらいですか？",
             "色違いはありますか？", "サイズの選び方を教えて。", "ギフト包装はできますか？", "領収書は出ますか？", "海外に発送できますか？"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_configuration(max_batch: int, requests: int, max_tokens: int, model: str | None, work: Path) -> dict:
    data_dir = work / f"data-{max_batch}"
    key = subprocess.run([BIN / "togi", "serve", "keys", "create", "--org", "load", "--data-dir", data_dir],
                         capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    command = [BIN / "togi", "serve", "--port", str(port), "--data-dir", data_dir, "--max-batch", str(max_batch),
               "--max-waiting", str(max(64, requests))]
    if model:
        command += ["--model", model]
    log = (work / f"server-{max_batch}.log").open("wb")
    server = subprocess.Popen([str(part) for part in command], stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(f"togi serve did not start: {(work / f'server-{max_batch}.log').read_text()[-2000:]}")
            time.sleep(0.3)
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
        served = model.split("=", 1)[0] if model else client.models.list().data[0].id
        client.chat.completions.create(model=served, messages=[{"role": "user", "content": "こんにちは"}], max_tokens=2, temperature=0)

        latencies: list[float] = []
        tokens: list[int] = []
        failures: list[str] = []
        models_calls: list[float] = []
        done = threading.Event()

        def ask(index: int) -> None:
            start = time.perf_counter()
            try:
                answer = client.chat.completions.create(model=served, messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                                                        max_tokens=max_tokens, temperature=0)
                latencies.append(time.perf_counter() - start)
                tokens.append(answer.usage.completion_tokens)
            except openai.APIError as error:
                failures.append(f"{type(error).__name__}: {error}")

        def watch_models() -> None:
            while not done.is_set():
                start = time.perf_counter()
                urllib.request.urlopen(urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}), timeout=30)
                models_calls.append(time.perf_counter() - start)
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_models, daemon=True)
        watcher.start()
        threads = [threading.Thread(target=ask, args=(index,)) for index in range(requests)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        done.set()
        watcher.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    ordered = sorted(latencies)
    return {"max_batch": max_batch, "requests": requests, "completed": len(latencies), "failures": failures[:3], "wall_s": round(wall, 2),
            "p50_s": round(statistics.median(ordered), 2) if ordered else None,
            "p95_s": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2) if ordered else None,
            "requests_per_s": round(len(latencies) / wall, 3), "tokens_per_s": round(sum(tokens) / wall, 1),
            "slowest_models_call_s": round(max(models_calls, default=0.0), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32, help="the batched configuration's --max-batch")
    parser.add_argument("--model", help="NAME=PATH of the base model to serve (default: the embedded one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="togi-load-") as work:
        results = [run_configuration(batch, args.requests, args.max_tokens, args.model, Path(work)) for batch in (1, args.max_batch)]
    serial, batched = results
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.processor() or platform.machine()} · commit {commit} · "
          f"{args.requests} concurrent requests, max_tokens {args.max_tokens}")
    print("| --max-batch | completed | wall s | p50 s | p95 s | requests/s | tokens/s | slowest GET /v1/models s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['max_batch']} | {r['completed']}/{r['requests']} | {r['wall_s']} | {r['p50_s']} | {r['p95_s']} | {r['requests_per_s']} | "
              f"{r['tokens_per_s']} | {r['slowest_models_call_s']} |")
    print(f"batched/serialised: {serial['wall_s'] / batched['wall_s']:.2f}x faster in wall time, "
          f"p50 {serial['p50_s'] / batched['p50_s']:.2f}x lower")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
