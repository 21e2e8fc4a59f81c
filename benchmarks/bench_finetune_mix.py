"""How much of the run's own conversation should fine-tuning mix in, at what learning rate, and with the loss on which turns?

For each (mix, lr, mix_loss) of the grid, this copies a run's data and `base/` into a fresh folder under `--work`, fine-tunes with the
stage's defaults but for `--mix`, `--lr` and `--mix-loss`, at equal steps (`--steps`, or the stage's five passes over its data when those
are fewer, which is what chatterbot alone gives), and evaluates the result: held-out chitchat perplexity (every turn), the
perplexity of the fine-tuning data's held-out replies, and response selection (hits@1 of 10) on both. Time does not enter
the numbers, so a busy machine only makes it slower. Usage:

    python benchmarks/bench_finetune_mix.py --run runs/demo                       # the grid below, 300 steps each
    python benchmarks/bench_finetune_mix.py --run runs/demo --grid 0.9:3e-4 0.95:3e-4
    python benchmarks/bench_finetune_mix.py --run runs/demo --grid 0.9:3e-4:assistant 0.9:3e-4:all \
        --out benchmarks/results/bench_finetune_mix_loss.json          # where the loss falls on the run's conversations

Results are printed and written to benchmarks/results/bench_finetune_mix.json (with the base model's numbers, evaluated
once, and the load average). The tables at the end of nbs/08_finetune.ipynb come from it.
"""
import argparse, json, os, shutil, time
from pathlib import Path

from chatgpt_train.evaluate import run_evaluate
from chatgpt_train.finetune import run_finetune

# MIX:LR, or MIX:LR:MIX_LOSS (the stage's default mix_loss when left out)
GRID = ['0:3e-3', '0:1e-3', '0:3e-4', '0.9:3e-3', '0.9:1e-3', '0.9:3e-4', '0.95:3e-4', '0.9:1e-4']


def row(ev:dict, ft:dict|None) -> dict:
    "The numbers of one fine-tuned (or base) model."
    rep = ev['replies']
    sel = lambda k: rep[k]['selection'] if rep.get(k) else None
    return dict(chitchat_perplexity=ev['held_out']['perplexity'], chitchat_bits_per_byte=ev['held_out']['bits_per_byte'],
                data_replies_perplexity=ft['assistant']['perplexity'] if ft else None,
                data_replies_perplexity_before=ft['before']['perplexity'] if ft else None, steps=ft['training']['steps'] if ft else None,
                chitchat_selection=sel('chitchat'), data_selection=sel('sft_data'),
                greedy=({k: rep['chitchat']['generated'][k] for k in ('repeat_4gram', 'distinct_2', 'pmi_per_token')}
                        | {'top_share': rep['chitchat']['generated']['top'][0]['share']}) if rep.get('chitchat') else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', required=True, help='a run folder with collect/ clean/ tokenizer/ encode/ base/')
    ap.add_argument('--work', default='/tmp/bench_finetune_mix', help='where the copies go (removed first)')
    ap.add_argument('--grid', nargs='+', default=GRID, help='MIX:LR or MIX:LR:MIX_LOSS')
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_finetune_mix.json'))
    a = ap.parse_args()
    work, rows, t0 = Path(a.work), [], time.time()
    if work.exists(): shutil.rmtree(work)
    for spec in a.grid:
        mix, lr, *loss = spec.split(':')
        mix, lr, loss = float(mix), float(lr), dict(mix_loss=loss[0]) if loss else {}
        d = work/f"mix{mix}_lr{lr:g}{'_' + loss['mix_loss'] if loss else ''}"
        for s in ('collect', 'clean', 'tokenizer', 'encode', 'base'): shutil.copytree(Path(a.run)/s, d/s)
        ft = run_finetune(str(d), mix=mix, lr=lr, minutes=0, max_steps=a.steps if mix else None, **loss)
        rows.append(dict(mix=mix, lr=lr, **loss, **row(run_evaluate(str(d), 'sft', max_tokens=32768), ft)))
        if not any(r.get('base') for r in rows):  # the base model once, on the same items (its sft_data needs sft/data)
            rows.insert(0, dict(base=True, **row(run_evaluate(str(d), 'base', max_tokens=32768), None)))
        print(json.dumps(rows[-1]), flush=True)
    out = dict(run=str(Path(a.run).resolve()), steps=a.steps, rows=rows, seconds=round(time.time() - t0), load_average=os.getloadavg())
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
