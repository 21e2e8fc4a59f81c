"""What should "no context" be in PMI? Response selection with three ways of scoring a reply alone, on a run's models.

PMI ranks a candidate reply by log P(reply | context) - log P(reply). The second term needs the reply scored with no
context, and what the model is shown there matters: a place it never saw in training skews the score. For each model of a
run (base, sft, aligned where present) and `--draws` draws of items (`selection_items` with seeds 0, 1, ...), this ranks the
candidates by PMI with the reply alone

- `header`: after the assistant's header alone (`replies.alone_example`, what the evaluate stage uses for our format);
- `opening`: after the token that opens a conversation and the header (`fmt.prompt([])`, the old choice);
- `empty_user`: after one empty user turn;

and by the mean log-likelihood a token, beside chance. Time does not enter the numbers. Usage:

    python benchmarks/bench_no_context.py --run runs/demo

Results are printed and written to benchmarks/results/bench_no_context.json with the load average. 07a_replies quotes them.
"""
import argparse, json, os, time
from pathlib import Path

import numpy as np
import torch

from chatgpt_train.conversation import load_conversations
from chatgpt_train.model import load_model
from chatgpt_train.replies import alone_example, candidate_scores, hits_at_1, model_scorer, reply_example, selection_items

ALONE = dict(header=lambda fmt, r, L: alone_example(fmt, r, L),
             opening=lambda fmt, r, L: reply_example(fmt, [], r, L),
             empty_user=lambda fmt, r, L: reply_example(fmt, [dict(role='user', text='')], r, L))


def selection(lm, convs, seed:int, n:int, L:int) -> dict:
    "hits@1 by loglik and by PMI with each way of scoring a reply alone, on one draw of items."
    items, score = selection_items(convs, n, seed=seed), model_scorer(lm.model, lm.fmt.pad_id, 32)
    s = candidate_scores(items, lm.fmt, score, L, pmi=False)
    cond = [-ll * t for ll, t in zip(s['loglik'], s['tokens'])]  # the summed NLL of each candidate after its context
    texts = sorted({r for it in items for r in it['candidates']})
    out = dict(loglik=hits_at_1(s['loglik']))
    for name, alone in ALONE.items():
        nll = dict(zip(texts, score([alone(lm.fmt, r, L) for r in texts])))
        out[f'pmi_{name}'] = hits_at_1([np.array([nll[r] for r in it['candidates']]) - c for it, c in zip(items, cond)])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', required=True)
    ap.add_argument('--models', nargs='+', default=['base', 'sft', 'aligned'])
    ap.add_argument('--items', type=int, default=200)
    ap.add_argument('--draws', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_no_context.json'))
    a = ap.parse_args()
    torch.set_num_threads(2)
    convs, rows, t0 = load_conversations(a.run, 'val'), [], time.time()
    for m in a.models:
        if not (Path(a.run)/m/'config.json').exists(): continue
        lm = load_model(a.run, m)
        draws = [selection(lm, convs, seed, a.items, 256) for seed in range(a.draws)]
        rows.append(dict(model=m, draws=draws, mean={k: float(np.mean([d[k] for d in draws])) for k in draws[0]}))
        print(m, {k: round(v, 3) for k, v in rows[-1]['mean'].items()}, flush=True)
    out = dict(run=str(Path(a.run).resolve()), items=a.items, draws=a.draws, chance=0.1, rows=rows, seconds=round(time.time() - t0),
               load_average=os.getloadavg())
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
