"""How fast does the chat stage generate, what does the key/value cache buy, and how far is batch 1 from the compute bound?

On a model of the `mini` preset (6 layers x 384, vocabulary 2,048, random weights; `--family gpt2` for GPT-2 blocks, else
today's Qwen3 blocks) with a 32-token prompt and 256 new tokens, greedy, at batch 1 and 8, this measures tokens/s (new
tokens of all sequences over the whole call) and time to the first new token for:

- `transformers`' `generate` with its defaults (its dynamic KV cache): the baseline;
- the same without the cache (`use_cache=False`): every step reruns the whole text;
- `chatgpt_train.generate.generate_tokens` with `CacheDecoder` (the model's own forward and cache, without `generate` around it);
- `generate_tokens` with the fast decoder of the family, `GPT2Decoder` or `Qwen3Decoder` (the forward pass written out over
  the weights, a preallocated cache): what chat uses;
- with `--compile`: `generate` with a static cache and `torch.compile` (forced on CPU, where transformers does not do it itself).

Every variant's tokens are compared with the baseline's: greedy output must be identical. Two bounds put batch 1 in context:
the *compute bound*, tokens/s of one forward pass over batch x (prompt + new) positions at once, where the arithmetic is
all there is; and the *weight-read bound*, the time of the matrix multiplies of one token alone, in which every weight is
read once. The rest of a batch-1 step is per-token overhead. Variants run in turns, best of `--repeats`, since the machine
is shared: read the ratios, which are measured in one run. Usage:

    python benchmarks/bench_generate.py                       # mini, prompt 32, 256 new tokens, batches 1 and 8
    python benchmarks/bench_generate.py --preset tiny --threads 1 --repeats 5
    python benchmarks/bench_generate.py --preset tiny --family gpt2      # GPT-2 blocks of the same shape
    python benchmarks/bench_generate.py --compile             # also a static cache + torch.compile (minutes to compile on CPU)

Results are printed and written to benchmarks/results/bench_generate_PRESET[_FAMILY].json.
"""
import argparse, dataclasses, json, os, platform, time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.generation.streamers import BaseStreamer
from transformers.pytorch_utils import Conv1D

from chatgpt_train.generate import GREEDY, generate_tokens, make_decoder
from chatgpt_train.model import make_model


class FirstToken(BaseStreamer):
    "A `generate` streamer that notes when the first new token arrives (its first `put` is the prompt)."
    def __init__(self): self.calls, self.first = 0, None
    def put(self, value):
        self.calls += 1
        if self.calls == 2: self.first = time.perf_counter()
    def end(self): pass


def hf_generate(model, ids, n, use_cache=True, compile=False):
    "Tokens, seconds and time to first token of `model.generate`, greedy, exactly `n` new tokens."
    kw = dict(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=use_cache)
    if compile:
        from transformers import CompileConfig
        cc = CompileConfig(); cc._compile_all_devices = True  # transformers compiles only on GPUs unless told
        kw.update(cache_implementation='static', compile_config=cc)
    s = FirstToken()
    t0 = time.perf_counter()
    out = model.generate(ids, streamer=s, **kw)
    dt = time.perf_counter() - t0
    return out[:, ids.shape[1]:], dt, (s.first - t0) if s.first else None


def ours(model, ids, n, fast=True, use_cache=True):
    "Tokens, seconds and time to first token of `generate_tokens`, greedy, exactly `n` new tokens."
    t0, first, toks = time.perf_counter(), None, []
    for tok in generate_tokens(model, ids, dataclasses.replace(GREEDY, max_new_tokens=n), fast=fast, use_cache=use_cache):
        if first is None: first = time.perf_counter() - t0
        toks.append(tok)
    return torch.stack(toks, 1), time.perf_counter() - t0, first


def best_time(f, repeats):
    "The fastest of `repeats` calls of `f`, in seconds."
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter(); f(); best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def bounds(model, batch, length, repeats):
    "Tokens/s of a forward pass over batch x length positions (compute bound) and of one token's weight matmuls alone."
    x = torch.randint(5, model.config.vocab_size, (batch, length))
    prefill = best_time(lambda: model(input_ids=x), repeats)
    head = model.get_output_embeddings()
    mats = [(m.weight, isinstance(m, Conv1D)) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]
    ins = {w.shape[0 if conv else 1]: torch.randn(1, w.shape[0 if conv else 1]) for w, conv in mats}  # Conv1D stores (in, out)
    h = torch.randn(1, head.weight.shape[1])
    def one_token():
        for w, conv in mats: ins[w.shape[0]] @ w if conv else F.linear(ins[w.shape[1]], w)
        F.linear(h, head.weight)
    weights = best_time(lambda: [one_token() for _ in range(20)], repeats) / 20
    return batch * length / prefill, 1 / weights


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--preset', default='mini', help='model preset (mini: 6 layers x 384)')
    p.add_argument('--family', default=None, help="block design: the preset's (qwen3 for the CPU sizes) or gpt2")
    p.add_argument('--vocab-size', type=int, default=2048)
    p.add_argument('--prompt-tokens', type=int, default=32)
    p.add_argument('--new-tokens', type=int, default=256)
    p.add_argument('--batches', default='1,8', help='batch sizes, comma-separated')
    p.add_argument('--repeats', type=int, default=3, help='runs of each cached variant (the best counts)')
    p.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument('--compile', action='store_true', help='also generate with a static cache and torch.compile')
    p.add_argument('--out', help='results file (default: benchmarks/results/bench_generate_PRESET.json)')
    a = p.parse_args()
    a.out = a.out or str(Path(__file__).parent/'results'/f"bench_generate_{a.preset}{'_' + a.family if a.family else ''}.json")
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    T, n = a.prompt_tokens, a.new_tokens
    fam = dict(family=a.family) if a.family else {}
    model = make_model(a.preset, a.vocab_size, n_positions=max(256, T + n), bos_token_id=0, eos_token_id=None, pad_token_id=0, **fam).eval()
    fast_name = f'ours, {type(make_decoder(model, 1, T + n)).__name__}'
    params = sum(p.numel() for p in model.parameters())
    res = dict(preset=a.preset, family=model.config.model_type, params=params, prompt_tokens=T, new_tokens=n, threads=torch.get_num_threads(),
               torch=torch.__version__, cpu=platform.processor() or platform.machine(), load_before=os.getloadavg()[0], rows=[])
    print(f"{a.preset}: {params/1e6:.1f}M parameters, prompt {T}, {n} new tokens, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")

    variants = {  # name: (function, repeated)
        'generate': (lambda m, x, k: hf_generate(m, x, k), True),
        'generate, no cache': (lambda m, x, k: hf_generate(m, x, k, use_cache=False), False),
        'ours, model cache (CacheDecoder)': (lambda m, x, k: ours(m, x, k, fast=False), True),
        fast_name: (lambda m, x, k: ours(m, x, k), True),
    }
    if a.compile: variants['generate, static cache + compile'] = (lambda m, x, k: hf_generate(m, x, k, compile=True), True)
    for B in map(int, a.batches.split(',')):
        x = torch.randint(5, a.vocab_size, (B, T), generator=torch.Generator().manual_seed(B))
        best = {}
        for name, (f, repeated) in variants.items():  # warm up: first calls pay for one-time set-up
            if repeated and 'compile' not in name: f(model, x, 8)
        if a.compile:  # compile before timing (the first call compiles; it is not counted)
            t0 = time.perf_counter(); hf_generate(model, x, n, compile=True)
            res[f'compile_seconds_batch{B}'] = round(time.perf_counter() - t0, 1)
        for r in range(a.repeats):
            for name, (f, repeated) in variants.items():
                if r and not repeated: continue
                toks, secs, ttft = f(model, x, n)
                old = best.get(name)
                if old is None or secs < old[1]: best[name] = (toks, secs, ttft if old is None or ttft is None or old[2] is None else min(ttft, old[2]))
        ref, base = best['generate'][0], best['generate'][1]
        for name, (toks, secs, ttft) in best.items():
            row = dict(variant=name, batch=B, tokens_per_s=round(B * n / secs, 1), ttft_ms=None if ttft is None else round(1e3 * ttft, 1),
                       ms_per_step=round(1e3 * secs / n, 2), vs_generate=round(base / secs, 2), identical=bool(torch.equal(toks, ref)))
            res['rows'].append(row)
            print(f"batch {B}  {name:38s} {row['tokens_per_s']:8.1f} tok/s  first token "
                  f"{'   -  ' if ttft is None else f'{1e3*ttft:6.1f}'} ms  {row['vs_generate']:5.2f}x generate  identical: {row['identical']}")
    compute, weights = bounds(model, max(map(int, a.batches.split(','))), T + n, a.repeats)
    b1 = {r['variant']: r for r in res['rows'] if r['batch'] == 1}
    res['bounds'] = dict(compute_bound_tokens_per_s=round(compute, 1), weight_read_bound_tokens_per_s=round(weights, 1))
    if b1:
        fast, gen = b1[fast_name], b1['generate']
        res['batch1'] = dict(
            generate_ms_per_token=gen['ms_per_step'], ours_ms_per_token=fast['ms_per_step'], weight_matmuls_ms=round(1e3 / weights, 2),
            compute_bound_ms_per_token=round(1e3 / compute, 3),
            generate_overhead_share=round(1 - 1e3 / weights / gen['ms_per_step'], 2),
            ours_overhead_share=round(1 - 1e3 / weights / fast['ms_per_step'], 2),
            generate_vs_compute_bound=round(compute / gen['tokens_per_s'], 1), ours_vs_compute_bound=round(compute / fast['tokens_per_s'], 1),
            cache_speedup=round(gen['tokens_per_s'] / b1['generate, no cache']['tokens_per_s'], 1))
        print(f"compute bound {compute:,.0f} tok/s; weight matmuls of one token {1e3/weights:.2f} ms ({weights:,.0f} tok/s)")
        print(json.dumps(res['batch1'], indent=1))
    for B in map(int, a.batches.split(',')):
        rows = {r['variant']: r for r in res['rows'] if r['batch'] == B}
        res[f'cache_speedup_batch{B}'] = round(rows['generate']['tokens_per_s'] / rows['generate, no cache']['tokens_per_s'], 1)
        print(f"batch {B}: the KV cache makes generate {res[f'cache_speedup_batch{B}']}x faster")
    res['load_after'] = os.getloadavg()[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + '\n')
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
