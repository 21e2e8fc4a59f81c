"""How fast are the tokenizer and encode stages on the whole default corpus, and what does each encoder choice buy?

Targets from issue 4: training the tokenizer in under 30 s and encoding the corpus in under 10 s on 2 cores. The stages are
timed end to end through their entry points (`run_tokenizer`, `run_encode`), reading and writing files. Beside them, in the
same process and on the same texts, the alternatives as ratios: tiktoken against Hugging Face `tokenizers` (and tiktoken's
own thread pool against a plain loop, which is what `ChatTokenizer.encode_batch` uses), and the pure-Python `SimpleBPE`
trainer against the Rust trainer. The machine is shared, so read ratios, not absolute seconds. Usage:

    python benchmarks/bench_tokenize.py                    # the chitchat corpus, split 95/5, in a temporary run folder
    python benchmarks/bench_tokenize.py --run runs/demo    # a run folder whose clean/ stage exists (its tokenizer/ and encode/ are rewritten)

Results are printed and written to benchmarks/results/bench_tokenize.json.
"""
import argparse, json, os, random, shutil, tempfile, time
from pathlib import Path

from chatgpt_train.runs import stage_dir
from chatgpt_train.jsonio import read_jsonl, write_jsonl


def chitchat_run(folder:Path, seed:int=0, val_frac:float=0.05) -> Path:
    "A run folder whose clean/conversations.jsonl is the whole chitchat corpus in our schema (no cleaning)."
    import chitchat_dataset
    rng, convs = random.Random(seed), []
    for uid, c in chitchat_dataset.Dataset().items():
        turns, first = [], None
        for m in (m for g in c['messages'] for m in g):
            first = first or m['sender']
            role = 'user' if m['sender'] == first else 'assistant'
            if turns and turns[-1]['role'] == role: turns[-1]['text'] += '\n' + m['text']
            else: turns.append(dict(role=role, text=m['text']))
        convs.append(dict(id=uid, source='chitchat', turns=turns, meta={}, split='val' if rng.random() < val_frac else 'train'))
    write_jsonl(convs, stage_dir(folder, 'clean', create=True)/'conversations.jsonl')
    return folder


def timed(f, *args, repeat:int=1, **kw):
    "The result of f(*args) and the best wall time of `repeat` calls."
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter(); out = f(*args, **kw); best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--run', help='a run folder with clean/ (default: the chitchat corpus in a temporary folder)')
    p.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_tokenize.json'))
    a = p.parse_args()
    from chatgpt_train.encode import run_encode
    from chatgpt_train.tokenizer import SimpleBPE, load_tokenizer, run_tokenizer, train_bpe

    tmp = None
    if a.run: run = Path(a.run)
    else: tmp = Path(tempfile.mkdtemp()); run = chitchat_run(tmp/'bench')
    try:
        convs = list(read_jsonl(stage_dir(run, 'clean')/'conversations.jsonl'))
        texts = [t['text'] for c in convs for t in c['turns']]
        n_bytes = sum(len(t.encode()) for t in texts)
        r = dict(conversations=len(convs), turns=len(texts), megabytes=round(n_bytes/1e6, 2), cpus=os.cpu_count(),
                 load_average_at_start=os.getloadavg()[0])  # other processes on the machine slow every number below

        _, r['tokenizer_stage_s'] = timed(run_tokenizer, str(run))
        _, r['encode_stage_s'] = timed(run_encode, str(run))
        meta = json.loads((stage_dir(run, 'encode')/'meta.json').read_text())
        r['tokens'] = meta['tokens']

        tok = load_tokenizer(run)
        tok.encode_batch(texts[:1000])  # warm up tiktoken's lazily built regex and tables
        ids, r['tiktoken_loop_s'] = timed(tok.encode_batch, texts, repeat=2)
        _, r['tiktoken_threads2_s'] = timed(tok.enc.encode_ordinary_batch, texts, num_threads=2, repeat=2)
        _, r['tiktoken_threads8_s'] = timed(tok.enc.encode_ordinary_batch, texts, num_threads=8, repeat=2)
        tok.tok.encode_special_tokens = True  # read "<|end|>" in text as text, as tiktoken's encode_ordinary does
        hf_ids, r['hf_tokenizers_s'] = timed(lambda: [e.ids for e in tok.tok.encode_batch(texts, add_special_tokens=False)], repeat=2)
        r['ids_identical_to_hf'] = ids == hf_ids
        r['round_trip_ok'] = all(tok.decode(i) == t for i, t in zip(ids, texts))
        r['tiktoken_speedup_over_hf'] = round(r['hf_tokenizers_s'] / r['tiktoken_loop_s'], 2)
        r['tiktoken_MB_per_s'] = round(n_bytes / 1e6 / r['tiktoken_loop_s'], 2)

        sample = '\n'.join(texts)[:60_000]
        _, r['simple_bpe_200_merges_60KB_s'] = timed(SimpleBPE().train, sample, 256 + 200)
        _, r['hf_200_merges_60KB_s'] = timed(train_bpe, [sample], 256 + 5 + 200, repeat=3)
        r['rust_trainer_speedup'] = round(r['simple_bpe_200_merges_60KB_s'] / r['hf_200_merges_60KB_s'], 1)

        r['targets'] = dict(tokenizer_under_30s=r['tokenizer_stage_s'] < 30, encode_under_10s=r['encode_stage_s'] < 10)
        r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
        print(json.dumps(r, indent=2))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(r, indent=2) + '\n')
    finally:
        if tmp: shutil.rmtree(tmp)


if __name__ == '__main__': main()
