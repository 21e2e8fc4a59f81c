"""Which sampling settings give the best replies? A small sweep of temperature, top-p and repetition penalty.

On a run's fine-tuned model (`RUN/sft`, or `--model base`), this answers the first `--items` held-out conversations of the
run (one assistant turn each, the one response selection picks, with the turns before it as the context) once per setting,
and measures each setting's replies with the evaluate stage's reply metrics (`replies.generated_metrics`):

- `pmi_per_token`: how much more likely the reply is after its context than without it, per token (nats): does it answer
  *this* message, or would it fit any?
- `distinct_2`: unique word pairs over all word pairs of all replies: variety across replies;
- `repeat_4gram`: the share of replies in which a word 4-gram comes back (loops);
- `top_share`: the share of the most frequent reply ("I'm not sure." to everything);
- `mean_words`.

The rule that picks the default: among settings whose replies loop in at most 5% (`repeat_4gram`) and whose most frequent
reply is at most 10% of all (`top_share`), the highest `pmi_per_token`. Greedy is a special case: one reply per context,
the same every time, which the report's "greedy" column and `evaluate` use. Sampled settings are seeded (reply i draws with
seed + i), so a rerun gives the same numbers. Usage:

    python benchmarks/bench_sampling.py --run runs/demo            # 100 held-out contexts, the sft model
    python benchmarks/bench_sampling.py --run runs/demo --items 200 --seeds 2

Results are printed and written to benchmarks/results/bench_sampling.json, with the machine's load average (time does not
enter the numbers: they are the same on a busy machine).
"""
import argparse, dataclasses, json, os, platform, time
from pathlib import Path

import numpy as np
import torch

from chatgpt_train.conversation import load_conversations
from chatgpt_train.generate import GREEDY, SamplingConfig
from chatgpt_train.model import context_length, load_model
from chatgpt_train.replies import generated_metrics, model_scorer, selection_items

# (name, settings): greedy with and without a repetition penalty, then sampling at three temperatures, two top-p and two penalties
GRID = [('greedy', GREEDY), ('greedy, penalty 1.2', dataclasses.replace(GREEDY, repetition_penalty=1.2)),
        ('greedy, penalty 1.3', dataclasses.replace(GREEDY, repetition_penalty=1.3)),
        ('greedy, penalty 1.5', dataclasses.replace(GREEDY, repetition_penalty=1.5)),
        *[(f'T {t}, top-p {p}, penalty {r}', SamplingConfig(temperature=t, top_k=0, top_p=p, repetition_penalty=r))
          for t in (0.5, 0.7, 1.0) for p in (0.9, 1.0) for r in (1.1, 1.3)]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', required=True, help='a run folder with sft/ (or --model base)')
    ap.add_argument('--model', default='sft')
    ap.add_argument('--items', type=int, default=100, help='held-out contexts to answer')
    ap.add_argument('--max-new-tokens', type=int, default=48)
    ap.add_argument('--seeds', type=int, default=1, help='draws of each sampled setting (seeds 0, 1000, ...), averaged')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_sampling.json'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(a.run, a.model)
    C = context_length(lm.model)
    items = selection_items(load_conversations(a.run, 'val'), a.items, candidates=1)
    score = model_scorer(lm.model, lm.fmt.pad_id)
    rows, t_start = [], time.time()
    for name, cfg in GRID:
        cfg = dataclasses.replace(cfg, max_new_tokens=a.max_new_tokens)
        draws = [generated_metrics(lm.model, lm.fmt, items, cfg, score, seed=1000 * s, max_len=C) for s in range(1 if cfg.temperature == 0 else a.seeds)]
        m = {k: float(np.mean([d[k] for d in draws])) for k in ('pmi_per_token', 'distinct_1', 'distinct_2', 'repeat_4gram', 'mean_words', 'empty')}
        m['top_share'] = float(np.mean([d['top'][0]['share'] for d in draws]))
        rows.append(dict(name=name, sampling=dataclasses.asdict(cfg), **m, top=draws[0]['top'][:3], examples=draws[0]['examples']))
        print(f"{name:32s} pmi/token {m['pmi_per_token']:6.3f}  distinct-2 {m['distinct_2']:.3f}  repeat-4gram {m['repeat_4gram']:.2f}  "
              f"top {m['top_share']:.2f}  words {m['mean_words']:.1f}", flush=True)
    ok = [r for r in rows if r['repeat_4gram'] <= 0.05 and r['top_share'] <= 0.10]
    best = max(ok, key=lambda r: r['pmi_per_token'])['name'] if ok else None
    print(f"best by the rule: {best}")
    out = dict(run=str(Path(a.run).resolve()), model=a.model, items=len(items), max_new_tokens=a.max_new_tokens, seeds=a.seeds,
               rule='highest pmi_per_token among settings with repeat_4gram <= 0.05 and top_share <= 0.10', best=best, rows=rows,
               seconds=round(time.time() - t_start, 1), load_average=os.getloadavg(), threads=a.threads, machine=platform.processor() or platform.machine(),
               torch=torch.__version__)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
