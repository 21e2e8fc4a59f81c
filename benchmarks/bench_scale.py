"""Do the data stages scale? Seconds and peak memory of collect, clean, tokenizer and encode at 1x, 4x and 16x the corpus.

The corpus is made here: `k` times 7,168 conversations in our JSON Lines schema, each as long as a real chitchat
conversation (cycling through them) with its turns drawn at random (seeded) from all chitchat turns, so that
deduplication keeps them and every step has real text to work on. Each stage runs as its command in a fresh process;
peak memory is the largest resident size of that process and its workers together, sampled 20 times a second.

The targets (issue 20), read as ratios within one run of this script, so a busy machine slows both sides:

- peak memory of every stage at 16x at most 1.5x its peak at 1x;
- time at 16x at most 18x the time at 1x, on one worker;
- clean with 2 workers at 8x at least 1.6x faster than with 1 (`--workers-at 8`).

Usage:

    python benchmarks/bench_scale.py                      # 1x, 4x, 16x on one worker, and clean at 8x on 1 and 2 workers
    python benchmarks/bench_scale.py --scales 1 2 --no-workers   # a quick look

Results are printed and written to benchmarks/results/bench_scale.json (or --out).
"""
import argparse, json, os, random, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

import psutil

STAGES = ('collect', 'clean', 'tokenizer', 'encode')


def make_corpus(k:int, path:Path, seed:int=0) -> int:
    "Write `k` x 7,168 synthetic conversations to `path`; return its size in bytes."
    from chatgpt_train.readers import chitchat_items
    convs = [it.conversation for it in chitchat_items()]
    turns = [t['text'] for c in convs for t in c['turns']]
    rng = random.Random(seed)
    with open(path, 'w', encoding='utf-8') as f:
        for i in range(k * len(convs)):
            n = len(convs[i % len(convs)]['turns'])
            rec = dict(id=f'synthetic-{i}', turns=[dict(role=('user', 'assistant')[j % 2], text=rng.choice(turns)) for j in range(n)])
            f.write(json.dumps(rec, ensure_ascii=False) + '\n')
    return path.stat().st_size


def measure(cmd:list[str]) -> dict:
    "Run `cmd`; its wall-clock seconds and the peak resident memory (MB) of it and its children together."
    t0, peak = time.perf_counter(), 0
    p = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = threading.Event()
    def watch():
        nonlocal peak
        while not done.is_set():
            try: rss = sum(q.memory_full_info().pss for q in [p, *p.children(recursive=True)])  # pss: forked workers share pages
            except psutil.Error: rss = 0
            peak = max(peak, rss)
            done.wait(0.05)
    th = threading.Thread(target=watch, daemon=True); th.start()
    _, err = p.communicate()
    done.set(); th.join()
    if p.returncode: raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return dict(seconds=round(time.perf_counter() - t0, 2), peak_mb=round(peak / 2**20, 1))


def run_stages(corpus:Path, run:Path, workers:int) -> dict:
    "Each data stage of one run on `corpus`, measured."
    exe = [str(Path(sys.executable).parent/'chatgpt-train')]
    args = dict(collect=['--source', str(corpus)], clean=[], tokenizer=[], encode=[])
    par = dict(collect=[], clean=['--workers', str(workers)], tokenizer=[], encode=[])
    out = {}
    for s in STAGES:
        out[s] = measure(exe + [s, '--run', str(run)] + args[s] + par[s])
        print(f'  {s:10s} {out[s]["seconds"]:8.1f} s {out[s]["peak_mb"]:8.0f} MB', flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scales', type=int, nargs='+', default=[1, 4, 16], help='corpus sizes, as multiples of chitchat')
    p.add_argument('--workers-at', type=int, default=8, help='the scale at which clean is timed on 1 and 2 workers')
    p.add_argument('--no-workers', action='store_true', help='skip the comparison of 1 and 2 workers')
    p.add_argument('--keep', help='make the corpora and runs in this folder and keep them (default: a temporary folder)')
    p.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_scale.json'), help='where to write the results')
    a = p.parse_args()
    root = Path(a.keep or tempfile.mkdtemp(prefix='bench_scale_'))
    root.mkdir(parents=True, exist_ok=True)
    res = dict(loadavg_start=os.getloadavg()[0], cores=os.cpu_count(), scales={})
    try:
        for k in a.scales:
            corpus = root/f'corpus_{k}x.jsonl'
            size = make_corpus(k, corpus)
            print(f'{k}x: {size / 1e6:.0f} MB of JSON Lines', flush=True)
            res['scales'][k] = dict(mb=round(size / 1e6, 1), stages=run_stages(corpus, root/f'run_{k}x', 1))
        if not a.no_workers:
            k = a.workers_at
            corpus = root/f'corpus_{k}x.jsonl'
            if not corpus.exists(): make_corpus(k, corpus)
            base = root/f'run_{k}x_w'
            exe = [str(Path(sys.executable).parent/'chatgpt-train')]
            subprocess.run(exe + ['collect', '--run', str(base), '--source', str(corpus)], check=True, capture_output=True)
            w = {}
            for n in (1, 2):
                w[n] = measure(exe + ['clean', '--run', str(base), '--workers', str(n)])
                print(f'clean at {k}x on {n} worker(s): {w[n]["seconds"]:.1f} s, {w[n]["peak_mb"]:.0f} MB', flush=True)
            res['workers'] = dict(scale=k, clean=w, speedup=round(w[1]['seconds'] / w[2]['seconds'], 2))
    finally:
        if not a.keep: shutil.rmtree(root, ignore_errors=True)
    res['loadavg_end'] = os.getloadavg()[0]
    lo, hi = min(res['scales']), max(res['scales'])
    if lo != hi:
        res['ratios'] = {s: dict(time=round(res['scales'][hi]['stages'][s]['seconds'] / res['scales'][lo]['stages'][s]['seconds'], 2),
                                 memory=round(res['scales'][hi]['stages'][s]['peak_mb'] / res['scales'][lo]['stages'][s]['peak_mb'], 2))
                         for s in STAGES}
        print(f'{hi}x over {lo}x:', json.dumps(res['ratios']))
    if 'workers' in res: print(f"clean at {res['workers']['scale']}x: 2 workers {res['workers']['speedup']}x faster than 1")
    print(f"load average {res['loadavg_start']:.2f} at the start, {res['loadavg_end']:.2f} at the end")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + '\n')


if __name__ == '__main__': main()
