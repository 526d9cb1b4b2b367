"""Chat examples for the training benchmarks, built offline and deterministically: realistic mixed lengths
(``build_chat_records``) and short uniform rows (``build_calculator_records``).

Real fine-tuning sets are not rows of equal length: most examples are short (a question and its
answer, a review and its label), a tail is long (documents to summarise, long answers to write).
Here the lengths in tokens follow a log-normal distribution (median 170 tokens, clipped to 20 ... 1,500;
the chat template's own tokens make the shortest about 45), taken at evenly spaced quantiles so that
a small set has the tail too, and a task decides how each length splits between the prompt (no loss)
and the answer (loss): a review is mostly prompt, an essay mostly answer. Text is Japanese and English.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

JAPANESE = [
    "ご注文の商品は本日発送いたしました。",
    "お届けまでは通常二日から三日ほどかかります。",
    "初期不良の場合は送料を当社が負担いたします。",
    "返品をご希望の際は、商品到着後七日以内にご連絡ください。",
    "この炊飯器には玄米モードと雑穀米モードが付いています。",
    "バッテリーは満充電で約十時間使用できます。",
    "アプリとの同期がたびたび失敗し、そのたびにペアリングし直す必要がありました。",
    "音質は価格以上で、低音もしっかり出ています。",
    "装着感が良く、長時間つけていても耳が痛くなりません。",
    "説明書が分かりにくく、初期設定に一時間ほどかかりました。",
    "画面は明るく、屋外でも文字がはっきり読めます。",
    "梱包が丁寧で、箱にも傷一つありませんでした。",
    "サポートに問い合わせたところ、翌日には丁寧な回答が届きました。",
    "会議の議事録を共有しますので、来週までにご確認をお願いします。",
    "新しい料金プランは来月一日から適用されます。",
    "システムの定期メンテナンスのため、土曜日の深夜はサービスを停止します。",
    "在庫が少なくなっておりますので、お早めにお求めください。",
    "東京の今日の天気は晴れのち曇りで、最高気温は二十八度の予想です。",
    "この関数は入力された文字列を正規化してから比較します。",
    "データの前処理では、重複した行と空の行を取り除きます。",
    "研修の資料は社内ポータルからダウンロードできます。",
    "申し訳ございませんが、その商品は現在取り扱っておりません。",
    "ポイントは購入金額の一パーセントが自動で付与されます。",
    "ご不明な点がございましたら、お気軽にお問い合わせください。",
]

ENGLISH = [
    "The order was shipped this morning and should arrive within three business days.",
    "Please restart the device and hold the power button for ten seconds.",
    "The quarterly report shows a steady increase in recurring revenue.",
    "Our team reviewed the proposal and agreed to move forward with the pilot.",
    "The function normalises the input string before comparing it with the stored value.",
    "Remember to back up your data before installing the new firmware.",
    "The museum is open from nine in the morning until five in the evening.",
    "A good summary keeps the main argument and drops the examples.",
    "The battery lasts about ten hours on a full charge with the screen at half brightness.",
    "We recommend starting with a small learning rate and increasing it gradually.",
    "The contract renews automatically unless either party cancels in writing.",
    "Customers in rural areas reported slower delivery times during the holidays.",
    "The new policy applies to all employees from the first of next month.",
    "Each chapter ends with a short exercise that reviews the key ideas.",
    "The bridge was closed for repairs after the storm damaged its supports.",
    "Use a separate validation set to decide when to stop training.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Attendance at the conference doubled compared with the previous year.",
    "The library offers free workshops on programming for beginners.",
    "Sales of the compact model exceeded expectations in the first week.",
    "The committee will publish its findings after the public consultation.",
    "Travellers should check the visa requirements before booking their flights.",
    "The software update fixes a bug that caused the app to crash on startup.",
    "Regular maintenance extends the life of the equipment considerably.",
]

SHORT = ["はい。", "いいえ。", "承知しました。", "明日届きます。", "在庫はあります。", "Yes.", "No.", "Thanks!", "It ships today."]


@dataclass(frozen=True)
class Task:
    name: str
    weight: float
    prompt_share: float  # of the example's tokens, the part before the answer
    system: str | None
    instruction: str  # formatted with the example's number
    prompt_pool: list[str]
    answer_pool: list[str]
    answer_prefix: str = ""


TASKS = [
    Task("support", 0.35, 0.35, "あなたはオンラインショップのサポート担当です。丁寧に答えてください。",
         "お問い合わせ番号{n}: ", JAPANESE, JAPANESE),
    Task("review", 0.15, 0.85, "商品レビューの感情を「ラベル」と「理由」の2行で答えてください。",
         "レビュー{n}: ", JAPANESE, JAPANESE, answer_prefix="ラベル: ネガティブ\n理由: "),
    Task("summary", 0.10, 0.85, None, "Summarise document {n} in a few sentences.\n\n", ENGLISH + JAPANESE, ENGLISH),
    Task("writing", 0.25, 0.10, None, "Write a detailed answer to request {n}: ", ENGLISH, ENGLISH),
    Task("translation", 0.15, 0.50, None, "次の文章{n}を英語に翻訳してください。\n", JAPANESE, ENGLISH),
]

MEDIAN_TOKENS = 170
SPREAD = 0.9  # sigma of log(length): about 3% of examples over 1,000 tokens
MIN_TOKENS, MAX_TOKENS = 20, 1500


def build_chat_records(count: int, *, seed: int, tokenizer: Any) -> list[dict[str, Any]]:
    """``count`` chat examples (OpenAI ``messages`` records); ``tokenizer`` measures the sentences so
    that the drawn lengths are lengths in the model's own tokens."""
    rng = random.Random(seed)
    sentence_tokens = {sentence: len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
                       for sentence in JAPANESE + ENGLISH + SHORT}

    def text_of(pool: list[str], budget: int) -> str:
        """Random sentences of ``pool`` (short replies when little room is left) filling ``budget`` tokens."""
        chosen, used = [], 0
        while True:
            fitting = ([sentence for sentence in pool if sentence_tokens[sentence] <= budget - used]
                       or [sentence for sentence in SHORT if sentence_tokens[sentence] <= budget - used])
            if not fitting:
                break
            sentence = rng.choice(fitting)
            chosen.append(sentence)
            used += sentence_tokens[sentence]
        if not chosen:
            chosen.append(min(SHORT, key=sentence_tokens.__getitem__))
        return "".join(sentence if sentence.endswith("。") else sentence + " " for sentence in chosen).strip()

    def tokens_of(messages: list[dict[str, str]]) -> int:
        return len(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])

    records = []
    # Lengths at evenly spaced quantiles of the distribution, in random order: even a small set has its long tail
    normal = statistics.NormalDist(math.log(MEDIAN_TOKENS), SPREAD)
    lengths = [round(math.exp(normal.inv_cdf((i + 0.5) / count))) for i in range(count)]
    rng.shuffle(lengths)
    for number, length in enumerate(lengths):
        task = rng.choices(TASKS, weights=[task.weight for task in TASKS])[0]
        messages = [{"role": "system", "content": task.system}] if task.system else []
        messages += [{"role": "user", "content": task.instruction.format(n=number + 1)},
                     {"role": "assistant", "content": task.answer_prefix}]
        body = min(max(length, MIN_TOKENS), MAX_TOKENS) - tokens_of(messages)
        prompt_budget = max(1, round(body * task.prompt_share))
        messages[-2]["content"] += text_of(task.prompt_pool, prompt_budget)
        messages[-1]["content"] += text_of(task.answer_pool, max(1, body - prompt_budget))
        records.append({"messages": messages})
    return records


def build_calculator_records(count: int, *, seed: int) -> list[dict[str, Any]]:
    """``count`` short, uniform chats: the user writes a sum such as ``47 * 6 =``, the assistant answers ``282``.
    With SmolLM2's chat template (its default system prompt included) each is 38 to 41 tokens, the shape of a
    small single-answer job where every batch is nearly free of padding."""
    rng = random.Random(seed)
    results = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    records = []
    for _ in range(count):
        a, b, operator = rng.randint(2, 99), rng.randint(2, 9), rng.choice(tuple(results))
        records.append({"messages": [{"role": "user", "content": f"{a} {operator} {b} ="},
                                     {"role": "assistant", "content": str(results[operator](a, b))}]})
    return records
