"""How fast is our training step, against the seed article's recipe and a plain PyTorch loop, and how close to the machine?

Targets from issue 6, all measured in one run, on the same model shape, tokens and machine:

- (a) the seed's recipe: a GPT-2 model, each example padded to 512 tokens, plain Adam, fp32, the unshifted loss; counted as
  *useful* (non-padding) tokens per second. Goal: ours at least 5x.
- (b) a plain PyTorch loop over the same packed batches as ours: `model(x, labels=x).loss`, `loss.backward()`,
  `AdamW.step()`, once in fp32 (what such a loop usually is) and once under the same bf16 autocast as ours (the loop's own
  overhead). Goal: ours at least 0.95x.
- (c) the model family (issue 15): today's blocks (Qwen3: RoPE, RMSNorm, QK-norm, SwiGLU) against GPT-2 blocks of the same
  shape and about the same parameter count, both in our Trainer, eager and (with `--compile`) compiled. Goal: at least 0.9x.
- Model FLOP utilisation: the training FLOPs per token of the model stage (6N plus attention) times our tokens/s, as a fraction
  of the FLOP/s of a large matrix multiply measured here, in fp32 and in bf16.

The machine is shared, so the variants are timed in turns (round robin) and the fastest round of each counts; read the
ratios; the matrix products are timed in the same rounds, so that the utilisation compares like with like. An example for (a) is a message and its reply: lengths come from a run's encode/ (pairs of turns, split at `<|end|>`)
when `--run` is given, else from a log-normal with mean about 60 tokens, the size FINDINGS measured on the default corpus.
Usage:

    python benchmarks/bench_train.py                       # tiny preset, random tokens, synthetic example lengths
    python benchmarks/bench_train.py --run runs/demo       # tokens and turn lengths from a run's encode/
    python benchmarks/bench_train.py --preset micro --steps 3 --rounds 1   # a quick look
    python benchmarks/bench_train.py --threads 1           # steadier when other jobs share the cores

Results are printed and written to benchmarks/results/bench_train.json.
"""
import argparse, json, os, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chatgpt_train.jsonio import save_json
from chatgpt_train.encode import load_tokens
from chatgpt_train.model import flops_per_token, get_preset, make_model, model_config
from chatgpt_train.encode import BlockSampler
from chatgpt_train.train import TrainConfig, Trainer


class Matmul:
    "A large square matrix product, the machine's best case; `step` returns FLOPs, so its rate is FLOP/s."
    def __init__(self, dtype, n=2048):
        self.a, self.b, self.n = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), n
        self.name = f"matmul {n}^3 {str(dtype).split('.')[-1]}"
    def step(self):
        self.a @ self.b
        return 2 * self.n**3


def tokens_and_lengths(run, vocab):
    "Training tokens and chat-turn lengths: from `run`'s encode/ or synthetic."
    if run:
        toks = load_tokens(run, 'train')
        meta = json.loads((Path(run)/'encode'/'meta.json').read_text())
        ends = np.flatnonzero(np.asarray(toks[:2_000_000]) == meta['end_id'])
        return toks, np.diff(ends[::2]), meta['vocab_size']  # an example: two consecutive turns, a message and its reply
    g = np.random.default_rng(0)
    return (g.integers(0, vocab, 2_000_000).astype(np.uint16),
            np.clip(g.lognormal(np.log(45), 0.75, 20_000).astype(int), 4, 2000), vocab)


class Ours:
    "Our `Trainer.train_step`: packed blocks, bf16 autocast, fused AdamW, shifted loss over the step's tokens."
    name = 'ours (Trainer, bf16, fused AdamW)'
    def __init__(self, preset, vocab, toks, T, bs, compile=False, family=None):
        torch.manual_seed(0)
        self.model = make_model(preset, vocab, **({'family': family} if family else {}))
        cfg = TrainConfig(max_steps=10**6, warmup_steps=10, batch_size=bs, lr=1e-3, precision='bf16', compile=compile, eval_every=10**6,
                          save_every=10**6)
        self.t = Trainer(self.model, BlockSampler(toks, T, bs, seed=0), cfg, tempfile.mkdtemp(), logger=_quiet())
        self.t.plan.estimate_steps()
        self.name = (self.name if family is None else f'ours, {family} blocks') + (' + torch.compile' if compile else '')
    def step(self): return self.t.train_step()['tokens']


class Plain:
    "A plain loop over the same packed blocks: HF's own loss, default AdamW, optional bf16 autocast."
    def __init__(self, preset, vocab, toks, T, bs, bf16):
        torch.manual_seed(0)
        self.model = make_model(preset, vocab)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.batches, self.bf16 = BlockSampler(toks, T, bs, seed=0), bf16
        self.name = f"plain PyTorch loop, {'bf16' if bf16 else 'fp32'}"
    def step(self):
        x = next(self.batches)['input_ids']
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16): loss = self.model(input_ids=x, labels=x).loss
        loss.backward(); self.opt.step(); self.opt.zero_grad()
        return x.numel()


class Seed:
    "The seed article's recipe: every example padded to 512, plain Adam at 3e-5, unshifted loss, fp32; returns useful tokens."
    name = "seed recipe (pad to 512, Adam, fp32)"
    def __init__(self, preset, vocab, toks, lengths, bs, pad_id=0):
        torch.manual_seed(0)
        self.model = make_model(preset, vocab, n_positions=512)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-5)
        self.toks, self.lengths, self.bs, self.pad, self.i = toks, np.minimum(lengths, 512), bs, pad_id, 0
        self.g = np.random.default_rng(0)
    def step(self):
        lens = self.lengths[self.g.integers(0, len(self.lengths), self.bs)]
        x = torch.full((self.bs, 512), self.pad, dtype=torch.long)
        mask = torch.zeros((self.bs, 512), dtype=torch.long)
        for r, n in enumerate(lens):
            s = int(self.g.integers(0, len(self.toks) - n))
            x[r, :n] = torch.from_numpy(self.toks[s:s + n].astype(np.int64)); mask[r, :n] = 1
        out = self.model(input_ids=x, attention_mask=mask)
        loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), x.view(-1))  # the seed's loss, padding counted
        self.opt.zero_grad(); loss.backward(); self.opt.step()
        return int(lens.sum())


def _quiet():
    import logging
    log = logging.getLogger('bench_train'); log.addHandler(logging.NullHandler()); log.propagate = False
    return log


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--run', help="take tokens and turn lengths from RUN/encode/")
    p.add_argument('--preset', default='tiny', help='model preset (default: tiny, 3 layers x 192, context 256)')
    p.add_argument('--batch-size', type=int, default=16, help='rows of packed blocks a step (ours and plain)')
    p.add_argument('--seed-batch-size', type=int, default=8, help='examples a step for the seed recipe')
    p.add_argument('--steps', type=int, default=3, help='timed steps per variant and round')
    p.add_argument('--rounds', type=int, default=5, help='rounds; the fastest round of each variant counts')
    p.add_argument('--compile', action='store_true', help='also time ours with torch.compile (about 20 s more)')
    p.add_argument('--threads', type=int, help="torch threads (default: torch's; 1 is steadier on a busy shared machine)")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)

    shape = get_preset(a.preset)
    toks, lengths, vocab = tokens_and_lengths(a.run, shape.vocab_size)
    T = shape.n_positions
    variants = [Ours(a.preset, vocab, toks, T, a.batch_size), Plain(a.preset, vocab, toks, T, a.batch_size, bf16=False),
                Plain(a.preset, vocab, toks, T, a.batch_size, bf16=True), Seed(a.preset, vocab, toks, lengths, a.seed_batch_size)]
    other = 'gpt2' if shape.family == 'qwen3' else None  # the family comparison, for today's presets
    if other: variants.insert(1, Ours(a.preset, vocab, toks, T, a.batch_size, family=other))
    if a.compile:
        variants[1:1] = [Ours(a.preset, vocab, toks, T, a.batch_size, compile=True)] + (
            [Ours(a.preset, vocab, toks, T, a.batch_size, compile=True, family=other)] if other else [])
    mms = [Matmul(torch.float32), Matmul(torch.bfloat16)]
    for v in variants + mms: v.step(); v.step()  # warm up: allocation, oneDNN kernels, compilation
    best = {v.name: 0. for v in variants + mms}
    for _ in range(a.rounds):
        for v in variants + mms:
            t0, n = time.perf_counter(), sum(v.step() for _ in range(a.steps))
            best[v.name] = max(best[v.name], n / (time.perf_counter() - t0))
    mm32, mm16 = (best.pop(m.name) for m in mms)
    fpt = flops_per_token(model_config(variants[0].model), T)
    ours = best[Ours.name]
    rows = [dict(variant=k, tokens_per_s=round(v, 1), ours_vs=round(ours / v, 2)) for k, v in best.items()]
    res = dict(preset=a.preset, params=sum(p.numel() for p in variants[0].model.parameters()), block=T, batch_size=a.batch_size,
               seed_batch_size=a.seed_batch_size, mean_example_tokens=round(float(np.mean(np.minimum(lengths, 512))), 1),
               data=a.run or 'random tokens, log-normal lengths', threads=torch.get_num_threads(), cpus=os.cpu_count(),
               load=os.getloadavg()[0], rows=rows, matmul_fp32_flops=mm32, matmul_bf16_flops=mm16,
               train_flops_per_token=fpt, achieved_flops=ours * fpt, mfu_vs_fp32_matmul=ours * fpt / mm32,
               mfu_vs_bf16_matmul=ours * fpt / mm16)
    if other:
        pairs = [(Ours.name, f'ours, {other} blocks')] + ([(Ours.name + ' + torch.compile', f'ours, {other} blocks + torch.compile')] if a.compile else [])
        res['family_vs_gpt2'] = {k: round(best[k] / best[g], 3) for k, g in pairs}
        res['gpt2_params'] = next(sum(p.numel() for p in v.model.parameters()) for v in variants if v.name == f'ours, {other} blocks')
    print(f"\n{a.preset}: {res['params']/1e6:.1f}M parameters, blocks of {T}, batch {a.batch_size}; seed recipe: batch "
          f"{a.seed_batch_size} examples of {res['mean_example_tokens']} tokens on average, padded to 512; "
          f"{res['threads']} threads, load {res['load']:.1f}\n")
    print("| variant | tokens/s (seed: useful) | ours vs it |\n|---|---|---|")
    for r in rows: print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['ours_vs']:.2f}x |")
    print(f"\nmatmul 2048^3: fp32 {mm32/1e9:.1f} GFLOP/s, bf16 {mm16/1e9:.1f} GFLOP/s; training FLOPs/token {fpt/1e6:.1f}M; "
          f"ours achieves {res['achieved_flops']/1e9:.1f} GFLOP/s = {res['mfu_vs_fp32_matmul']:.0%} of the fp32 matmul, "
          f"{res['mfu_vs_bf16_matmul']:.0%} of the bf16 matmul")
    if other: print(f"today's blocks vs GPT-2 blocks ({res['params']/1e6:.2f}M vs {res['gpt2_params']/1e6:.2f}M parameters): "
                    + ', '.join(f"{k}: {v:.2f}x" for k, v in res['family_vs_gpt2'].items()))
    out = Path(__file__).parent/'results'/'bench_train.json'
    save_json(res, out)
    print(f"wrote {out}")


if __name__ == '__main__': main()
