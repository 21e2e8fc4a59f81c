"""How many CPU threads should decoding use, and does `decode_threads` pick well?

Decoding one reply is a loop of tiny steps; torch splits each over all its intra-op threads (2 on the 2-core machines
this project is built on), and on a busy machine two threads waiting on each other can cost more than the work. Two modes:

- the check (default): one greedy reply (64 new tokens after a 16-token prompt) of a `tiny` preset model with random
  weights, at batch 1, on a quiet machine (load average under 0.5 if it gets there within `--quiet-wait`) and then with
  busy loops beside it (load about 3): torch's default thread count against the one `decode_threads` chooses, and 1
  against 2 threads.
  Targets: busy, the chosen count at least 10x the default's tokens/s; quiet, within 10% of the best count.
- `--sweep`: presets micro, tiny, mini and gpt2 (its own 50,257 vocabulary; the others 2,048) at batch 1 and 8, 1 against
  2 threads, quiet and busy: the table `decode_threads`' rule was read from.

Each figure is the median tokens/s (new tokens of all sequences over the whole call) of `--repeats` calls, the thread
counts compared taking turns call by call so that each meets the same load; every row keeps the 1-minute load average
before and after it (`os.getloadavg()`). On a shared machine "quiet" is what it gets: the load says how quiet. Usage:

    python benchmarks/bench_threads.py                 # the check; writes benchmarks/results/bench_threads.json
    python benchmarks/bench_threads.py --sweep         # writes benchmarks/results/bench_threads_sweep.json
    python benchmarks/bench_threads.py --busy 3        # three busy loops instead of two
    python benchmarks/bench_threads.py --sweep --phases quiet --presets mini,gpt2 --out /tmp/quiet.json

The busy loops are processes of this benchmark (`python -c "while True: pass"`), ended when it ends.
"""
import argparse, contextlib, dataclasses, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

import torch

from chatgpt_train.generate import GREEDY, decode_threads, generate_tokens
from chatgpt_train.model import make_model

RESULTS = Path(__file__).parent/'results'


def load() -> float: return round(os.getloadavg()[0], 2)


def wait_for_load(ok, what:str, limit:float):
    "Wait until `ok(load())` or `limit` seconds have passed; say which."
    t0 = time.monotonic()
    while not ok(load()) and time.monotonic() - t0 < limit: time.sleep(2)
    print(f"{what}: load average {load():.2f} after {time.monotonic() - t0:.0f} s", flush=True)


@contextlib.contextmanager
def busy(n:int, target:float, limit:float=150.):
    "Run `n` busy-loop processes beside the block, once the load average has reached `target` (or `limit` seconds)."
    procs = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(n)]
    try:
        wait_for_load(lambda l: l >= target, f"{n} busy loops", limit)
        yield
    finally:
        for p in procs: p.kill()
        for p in procs: p.wait()


def tokens_per_s(model, batch:int, counts:list[int], n_new:int, repeats:int) -> dict:
    "For each thread count: median tokens/s of `repeats` greedy calls of `generate_tokens`, the counts taken in turns."
    ids = torch.randint(5, model.config.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0))
    before, rates = load(), {n: [] for n in counts}
    for _ in range(repeats):  # in turns, so that every count meets the same load
        for n in counts:
            t0 = time.perf_counter()
            k = sum(1 for _ in generate_tokens(model, ids, dataclasses.replace(GREEDY, max_new_tokens=n_new, threads=n)))
            rates[n].append(k * batch / (time.perf_counter() - t0))
    assert torch.get_num_threads() == DEFAULT, 'generating changed the thread count'
    return dict(tok_s={n: round(statistics.median(r), 1) for n, r in rates.items()}, load_before=before,
                load_after=load())


def model_of(preset:str):
    torch.manual_seed(0)
    return make_model(preset, None if preset.startswith('gpt2') else 2048).eval()


def check(a) -> dict:
    "tiny at batch 1: the default count, the chosen one, 1 and 2 threads; quiet, then busy."
    model, res = model_of('tiny'), {}
    chosen = decode_threads(model, 1) or DEFAULT
    for phase in a.phases.split(','):
        ctx = busy(a.busy, a.busy_load) if phase == 'busy' else contextlib.nullcontext()
        if phase == 'quiet': wait_for_load(lambda l: l < 0.5, 'quiet', a.quiet_wait)
        with ctx: r = tokens_per_s(model, 1, sorted({1, 2, DEFAULT, chosen}), a.new_tokens, a.repeats)
        t = r['tok_s']
        res[phase] = dict(r, default=t[DEFAULT], chosen=t[chosen], chosen_over_default=round(t[chosen] / t[DEFAULT], 2),
                          chosen_over_best=round(t[chosen] / max(t.values()), 3))
        print(phase, json.dumps(res[phase]), flush=True)
    if 'busy' in res: res['busy_10x'] = res['busy']['chosen_over_default'] >= 10
    if 'quiet' in res: res['quiet_within_10pct'] = res['quiet']['chosen_over_best'] >= 0.9
    return dict(res, chosen=chosen)


def sweep(a) -> dict:
    "Presets x batch 1 and 8 x 1 and 2 threads, quiet and busy."
    models = {p: model_of(p) for p in a.presets.split(',')}
    rows = []
    for phase in a.phases.split(','):
        ctx = busy(a.busy, a.busy_load) if phase == 'busy' else contextlib.nullcontext()
        if phase == 'quiet': wait_for_load(lambda l: l < 0.5, 'quiet', a.quiet_wait)
        with ctx:
            for p, m in models.items():
                for b in (1, 8):
                    r = dict(preset=p, n_embd=m.config.hidden_size, batch=b, phase=phase, rule=decode_threads(m, b))
                    r.update(tokens_per_s(m, b, [1, 2], a.new_tokens, a.repeats))
                    r['one_over_two'] = round(r['tok_s'][1] / r['tok_s'][2], 2)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
    return dict(rows=rows)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sweep', action='store_true', help='presets x batch x threads, quiet and busy')
    p.add_argument('--presets', default='micro,tiny,mini,gpt2', help='with --sweep: comma-separated presets')
    p.add_argument('--phases', default='quiet,busy', help='quiet, busy or both, comma-separated')
    p.add_argument('--busy', type=int, default=2, help='busy-loop processes beside the busy measurements')
    p.add_argument('--busy-load', type=float, default=2.5, help='load average to reach before measuring busy')
    p.add_argument('--quiet-wait', type=float, default=120., help='seconds to wait for a load average under 0.5')
    p.add_argument('--new-tokens', type=int, default=64, help='tokens of each reply')
    p.add_argument('--repeats', type=int, default=5, help='calls per figure (the median is kept)')
    p.add_argument('--out', help='results file (default: benchmarks/results/bench_threads[_sweep].json)')
    a = p.parse_args()
    DEFAULT = torch.get_num_threads()
    out = Path(a.out or RESULTS/f"bench_threads{'_sweep' if a.sweep else ''}.json")
    res = dict(date=time.strftime('%Y-%m-%d'), torch=torch.__version__, cpus=os.cpu_count(),
               cpu=platform.processor() or platform.machine(), default_threads=DEFAULT, busy_loops=a.busy,
               new_tokens=a.new_tokens, repeats=a.repeats, load_start=load())
    res.update(sweep(a) if a.sweep else check(a))
    res['load_end'] = load()
    out.write_text(json.dumps(res, indent=1) + '\n')
    print('wrote', out)
