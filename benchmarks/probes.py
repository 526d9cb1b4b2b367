"""Linear probes on the frozen SmolLM2-135M-Instruct: is the reviews' sentiment in the base model's hidden states?

    .venv/bin/python benchmarks/probes.py      # after `make demo`, which writes runs/demo-data; results in benchmarks/QUALITY.md

For each review of the split, the mean of the review's token states and the state of the last prompt token
(after `ラベル:`) at every third layer; a logistic regression (L-BFGS, L2) on the 192 training reviews, scored
on the validation and test splits. Last, a character-bigram regression with no model at all, as a floor.
"""
import json, sys, time, torch, collections
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.manual_seed(0)
from togi.models.embedded import ensure_embedded_model
D = str(ensure_embedded_model())
tok = AutoTokenizer.from_pretrained(D); model = AutoModelForCausalLM.from_pretrained(D, dtype=torch.float32).eval()
LABELS = ["ポジティブ", "ネガティブ", "ニュートラル"]
def load(split):
    rows = [json.loads(l) for l in open(f"runs/demo-data/reviews.{split}.jsonl")]
    return [(r["messages"][1]["content"], LABELS.index(r["messages"][2]["content"].split("\n")[0].split(": ")[1])) for r in rows], rows
def feats(split):
    data, rows = load(split); mean, last = [], []
    for (text, _), row in zip(data, rows):
        prompt = tok.apply_chat_template(row["messages"][:2], tokenize=False, add_generation_prompt=True) + "ラベル:"
        ids = tok(prompt, return_tensors="pt").input_ids
        user = tok(text).input_ids
        with torch.no_grad(): hs = model(ids, output_hidden_states=True).hidden_states
        # user span: find by length from the end of the prompt (approx: tokens before the assistant header)
        n = len(user); tail = len(tok("<|im_end|>\n<|im_start|>assistant\nラベル:").input_ids)
        span = slice(ids.shape[1] - tail - n, ids.shape[1] - tail)
        mean.append(torch.stack([h[0, span].mean(0) for h in hs])); last.append(torch.stack([h[0, -1] for h in hs]))
    return torch.stack(mean), torch.stack(last), torch.tensor([y for _, y in data])
t = time.time(); F = {s: feats(s) for s in ("train", "val", "test")}; print("features", round(time.time() - t), "s")
def probe(X, y, Xs, wd=1e-2):
    mu, sd = X.mean(0), X.std(0) + 1e-6; X = (X - mu) / sd
    W = torch.zeros(X.shape[1], 3, requires_grad=True); b = torch.zeros(3, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=200)
    def closure():
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(X @ W + b, y) + wd * (W ** 2).sum(); loss.backward(); return loss
    opt.step(closure)
    return [((x - mu) / sd @ W + b).argmax(1) for x in Xs]
for kind, k in (("mean", 0), ("last", 1)):
    for layer in range(0, 31, 3):
        Xtr = F["train"][k][:, layer]; pv, pt = probe(Xtr, F["train"][2], [F["val"][k][:, layer], F["test"][k][:, layer]])
        print(kind, layer, "val", (pv == F["val"][2]).float().mean().item().__round__(3), "test", (pt == F["test"][2]).float().mean().item().__round__(3))
# character bigram baseline
def grams(t): return collections.Counter(t[i:i+2] for i in range(len(t) - 1))
tr, _ = load("train"); vocab = {g: i for i, g in enumerate({g for t, _ in tr for g in grams(t)})}
def vec(data):
    X = torch.zeros(len(data), len(vocab))
    for i, (t, _) in enumerate(data):
        for g, c in grams(t).items():
            if g in vocab: X[i, vocab[g]] = 1
    return X, torch.tensor([y for _, y in data])
Xtr, ytr = vec(tr); (Xv, yv), (Xt, yt) = vec(load("val")[0]), vec(load("test")[0])
pv, pt = probe(Xtr, ytr, [Xv, Xt], wd=1e-1); print("char-bigram val", (pv == yv).float().mean().item(), "test", (pt == yt).float().mean().item())
