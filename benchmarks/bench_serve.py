"""How fast does `chatgpt-train serve` answer, alone and under concurrent clients, against the same replies generated in-process?

Starts `chatgpt-train serve` on a run's model (its newest: aligned/, else sft/, else base/) on a free port, then for 1, 4
and 16 concurrent clients each sends `--requests` streamed chat completions (httpx, one connection per client), and
measures per request:

- time to first token: from sending the request to the first chunk with text (the output filter releases whole words, so
  this is the first word);
- tokens/s: the reply's tokens (the usage the server reports) over the request's whole time;

at the median and the 95th percentile, the aggregate tokens/s over the wall time of each level, and the errors (must be 0).
The baseline is the same replies (same messages, seeds and sampling, so the same tokens) generated in this process with
`ChatSession.stream`, one after another: what the server adds is HTTP, JSON, the event loop, and waiting for a worker.
Replies are checked to be identical to the baseline's. With `--workers 1 2`, a server per setting: whether generating two
replies at once on these cores beats queueing them. Usage:

    python benchmarks/bench_serve.py --run runs/demo
    python benchmarks/bench_serve.py --run runs/demo --workers 1 2 --requests 4 --max-tokens 64

Results are printed and written to benchmarks/results/bench_serve.json, with the load average before and after.
"""
import argparse, json, os, platform, socket, subprocess, sys, threading, time
from pathlib import Path

import httpx

from chatgpt_train.chat import ChatSession
from chatgpt_train.generate import PROMPTS, SamplingConfig
from chatgpt_train.model import load_model

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def request(i: int, max_tokens: int) -> dict:
    "Request i: one of the sample prompts, its own seed."
    return dict(messages=[dict(role='user', content=PROMPTS[i % len(PROMPTS)])], max_tokens=max_tokens, temperature=0.7, top_p=0.9,
                seed=i, stream=True, stream_options=dict(include_usage=True))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summary(rows, wall) -> dict:
    ok = [r for r in rows if 'error' not in r]
    return dict(requests=len(rows), errors=len(rows) - len(ok),
                ttft_p50=round(pct([r['ttft'] for r in ok], .5), 3), ttft_p95=round(pct([r['ttft'] for r in ok], .95), 3),
                tok_s_p50=round(pct([r['tok_s'] for r in ok], .5), 1), tok_s_p95=round(pct([r['tok_s'] for r in ok], .05), 1),  # the slow tail
                aggregate_tok_s=round(sum(r['tokens'] for r in ok) / wall, 1), wall_s=round(wall, 2))


def in_process(lm, n, max_tokens) -> tuple[list[dict], dict]:
    "The replies to requests 0..n-1 generated here, one after another: timings and texts."
    rows, texts = [], {}
    t_all = time.perf_counter()
    for i in range(n):
        r = request(i, max_tokens)
        s = ChatSession(lm.model, lm.fmt, sampling=SamplingConfig(temperature=r['temperature'], top_p=r['top_p'], max_new_tokens=max_tokens), seed=i)
        t0, first, text = time.perf_counter(), None, ''
        for piece in s.stream(r['messages'][-1]['content']):
            if first is None and piece: first = time.perf_counter()
            text += piece
        dt = time.perf_counter() - t0
        rows.append(dict(ttft=(first or time.perf_counter()) - t0, tokens=s.usage['completion_tokens'], tok_s=s.usage['completion_tokens'] / dt))
        texts[i] = text
    return rows, {**summary(rows, time.perf_counter() - t_all), 'texts': texts}


def client(url, ids, max_tokens, rows, texts):
    "One client: its requests one after another on one connection."
    with httpx.Client(timeout=300) as c:
        for i in ids:
            t0, first, text, tokens = time.perf_counter(), None, '', 0
            try:
                with c.stream('POST', f'{url}/v1/chat/completions', json=request(i, max_tokens)) as r:
                    if r.status_code != 200: raise RuntimeError(f'{r.status_code} {r.read()[:200]}')
                    for line in r.iter_lines():
                        if not line.startswith('data: ') or line == 'data: [DONE]': continue
                        chunk = json.loads(line[6:])
                        if 'error' in chunk: raise RuntimeError(chunk['error']['message'])
                        if chunk.get('usage'): tokens = chunk['usage']['completion_tokens']
                        for ch in chunk['choices']:
                            if ch['delta'].get('content'):
                                if first is None: first = time.perf_counter()
                                text += ch['delta']['content']
                dt = time.perf_counter() - t0
                rows.append(dict(ttft=(first or time.perf_counter()) - t0, tokens=tokens, tok_s=tokens / dt))
                texts[i] = text
            except Exception as e: rows.append(dict(error=str(e)))


def serve_level(url, n_clients, per_client, max_tokens) -> tuple[dict, dict]:
    rows, texts = [], {}
    threads = [threading.Thread(target=client, args=(url, range(c * per_client, (c + 1) * per_client), max_tokens, rows, texts))
               for c in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    return summary(rows, time.perf_counter() - t0), texts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', required=True, help='a run folder with a model')
    ap.add_argument('--model', default=None, help='base, sft, aligned or a folder (default: the run\'s newest)')
    ap.add_argument('--clients', type=int, nargs='+', default=[1, 4, 16])
    ap.add_argument('--requests', type=int, default=4, help='requests per client')
    ap.add_argument('--max-tokens', type=int, default=64)
    ap.add_argument('--workers', type=int, nargs='+', default=[1])
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_serve.json'))
    a = ap.parse_args()
    load0 = os.getloadavg()
    lm = load_model(a.run, a.model, 'cpu')
    n = max(a.clients) * a.requests
    print(f'{lm.folder}: {n} distinct requests of up to {a.max_tokens} tokens; load {load0[0]:.2f}')
    base_rows, base = in_process(lm, n, a.max_tokens)
    base_texts = base.pop('texts')
    print('in-process, one after another:', base)
    results = dict(model=str(lm.folder), machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                   max_tokens=a.max_tokens, requests_per_client=a.requests, in_process=base, serve={})
    for w in a.workers:
        port = free_port()
        url = f'http://127.0.0.1:{port}'
        args = ['--run', a.run, *(['--model', a.model] if a.model else []), '--port', str(port), '--workers', str(w),
                '--max-tokens', str(max(a.max_tokens, 512))]
        proc = subprocess.Popen([str(BIN/'chatgpt-train'), 'serve', *args], stderr=subprocess.PIPE, text=True)
        try:
            while True:
                try:
                    if httpx.get(f'{url}/health', timeout=2).status_code == 200: break
                except httpx.TransportError: time.sleep(0.2)
                if proc.poll() is not None: sys.exit(f'the server exited: {proc.stderr.read()}')
            for c in a.clients:
                s, texts = serve_level(url, c, a.requests, a.max_tokens)
                s['same_replies'] = sum(texts.get(i) == base_texts[i] for i in texts)
                s['ttft_p50_vs_in_process'] = round(s['ttft_p50'] / base['ttft_p50'], 2)
                s['aggregate_vs_in_process'] = round(s['aggregate_tok_s'] / base['aggregate_tok_s'], 2)
                results['serve'][f'workers={w} clients={c}'] = s
                print(f'workers {w}, {c:>2} clients:', s)
        finally:
            proc.terminate(); proc.wait()
    results['loadavg_before'], results['loadavg_after'] = [round(x, 2) for x in load0], [round(x, 2) for x in os.getloadavg()]
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f'load {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after; written to {a.out}')


if __name__ == '__main__':
    main()
