"""Which CPU-sized model learns the embedded chat corpus best in a fixed time?

Scaling rules fitted on large models (about 20 tokens a parameter, Hoffmann et al. 2022) point below 1M parameters for an
8-minute run on 2 CPU cores; this measures it. Each preset is trained on the tokens it would process in `--minutes` on this
machine, then scored on held-out conversations.

The machine is shared, so wall-clock time is a poor budget. Instead the presets' speeds are measured against `tiny` in the
same run (interleaved bursts, fastest burst of each), and each gets `--minutes` x `--tiny-tok-s` x its speed ratio tokens;
`--tiny-tok-s` is tiny's throughput on an idle machine (about 5,000 tokens/s on the 2 cores this project is built on).
Usage:

    python benchmarks/model_size.py --minutes 8 --presets d2,d3,d4,d6

Data: the `chitchat-dataset` corpus, one conversation a document (turns on their own lines, documents separated by
<|endoftext|>), 5% of conversations held out; a byte-level BPE of 8192 tokens trained on the rest. Training: GPT-2 blocks from
`make_model`, AdamW (0.9, 0.95, weight decay 0.1 on matrices), the preset's learning rate with 30 warm-up steps and cosine
decay to 10%, gradient clipping at 1, bf16 autocast, 16 random windows of 256 tokens a step. Validation: 50 fixed random
batches of held-out windows.
"""
import argparse, dataclasses, json, math, os, random, time

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from chatgpt_train.model import count_params, flops_per_token, get_preset, make_model


def corpus(seed=0, val_frac=0.05):
    "Train and validation texts from the embedded corpus, split by conversation."
    import chitchat_dataset
    d = json.load(open(os.path.join(os.path.dirname(chitchat_dataset.__file__), 'dataset.json')))
    docs = ['\n'.join(' '.join(m['text'] for m in turn) for turn in c['messages']) for c in d.values()]
    random.Random(seed).shuffle(docs)
    n = int(len(docs) * val_frac)
    return docs[n:], docs[:n]


def encode(train, val, vocab_size=8192):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(train, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eot = tok.token_to_id('<|endoftext|>')
    def ids(texts): return np.array([i for e in tok.encode_batch(texts) for i in e.ids + [eot]], dtype=np.uint16)
    return ids(train), ids(val)


def batch(data, bs, T, gen):
    ix = torch.randint(len(data) - T - 1, (bs,), generator=gen)
    x = torch.stack([torch.from_numpy(data[i:i + T + 1].astype(np.int64)) for i in ix.tolist()])
    return x[:, :-1], x[:, 1:]


def loss_of(model, x, y):
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


class Trainer:
    "One preset, its optimizer and its data stream."
    def __init__(self, name, train, bs=16, T=256, vocab_size=8192):
        self.name, self.train, self.bs, self.T = name, train, bs, T
        self.cfg = dataclasses.replace(get_preset(name), vocab_size=vocab_size)
        torch.manual_seed(0)
        self.model = make_model(self.cfg).train()
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.1), dict(params=rest, weight_decay=0.0)],
                                     lr=self.cfg.lr, betas=(0.9, 0.95))
        self.gen, self.i, self.steps = torch.Generator().manual_seed(0), 0, None

    def lr(self):
        if self.i < 30: return self.cfg.lr * (self.i + 1) / 30
        frac = (self.i - 30) / max((self.steps or 10**9) - 30, 1)
        return self.cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1))))

    def step(self):
        for g in self.opt.param_groups: g['lr'] = self.lr()
        x, y = batch(self.train, self.bs, self.T, self.gen)
        with torch.autocast('cpu', dtype=torch.bfloat16): loss = loss_of(self.model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step(); self.opt.zero_grad(set_to_none=True)
        self.i += 1
        return loss.item()

    def burst(self, n=3):
        "Seconds a step over `n` steps (the steps count as training, at warm-up learning rates)."
        t = time.perf_counter()
        for _ in range(n): self.step()
        return (time.perf_counter() - t) / n

    def finish(self, val):
        t = time.perf_counter()
        while self.i < self.steps: loss = self.step()
        wall = time.perf_counter() - t
        self.model.eval()
        vgen = torch.Generator().manual_seed(1)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            vloss = sum(loss_of(self.model, *batch(val, self.bs, self.T, vgen)).item() for _ in range(50)) / 50
        tokens = self.steps * self.bs * self.T
        return dict(preset=self.name, params=count_params(self.cfg)['total'], steps=self.steps, tokens=tokens,
                    epochs=round(tokens / len(self.train), 2), flops=tokens * flops_per_token(self.cfg, self.T),
                    train_loss=round(loss, 3), val_loss=round(vloss, 3), train_minutes=round(wall / 60, 1))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--minutes', type=float, default=8, help='training time each model would get on this machine')
    ap.add_argument('--presets', default='d2,d3,d4,d6', help='comma-separated preset names')
    ap.add_argument('--tiny-tok-s', type=float, default=5000, help="tiny's tokens/s on an idle machine")
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count()))
    t = time.time()
    train, val = encode(*corpus())
    print(f"corpus: {len(train):,} train tokens, {len(val):,} validation tokens ({time.time() - t:.0f} s)", flush=True)
    names = a.presets.split(',')
    by_preset = {n: Trainer(n, train) for n in dict.fromkeys(names + ['tiny'])}  # not `trainers`: that is tokenizers'
    for tr in by_preset.values(): tr.burst(2)                    # warm up
    best = {n: float('inf') for n in by_preset}
    for _ in range(3):                                          # interleaved, so contention hits every preset alike
        for n, tr in by_preset.items(): best[n] = min(best[n], tr.burst())
    for n in names:
        tr = by_preset[n]
        ratio = best['tiny'] / best[n]
        tr.steps = max(int(a.minutes * 60 * a.tiny_tok_s * ratio / (tr.bs * tr.T)), tr.i + 1)
        print(json.dumps(dict(speed_vs_tiny=round(ratio, 2), **tr.finish(val))), flush=True)
