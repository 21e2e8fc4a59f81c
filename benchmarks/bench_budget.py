"""Does `chatgpt-train run --minutes M` finish in M minutes, and what does a short budget still make?

For each budget (default 3, 5 and 15 minutes) this runs the whole pipeline with its defaults in a fresh folder, timed from
outside, and records: the wall time against the budget (the target is the budget +10%), the load average before and
after (the machine is shared: read every figure with its load), each step's seconds beside the seconds the plan gave it,
whether every training stage completed its schedule (past its warmup, its rate decayed), the held-out bits per byte of
each model against the bigram table's, chitchat response selection (PMI hits@1 of 10), and the run's own verdicts.

    python benchmarks/bench_budget.py                 # 3, 5 and 15 minutes, one after the other (about 25 minutes)
    python benchmarks/bench_budget.py --minutes 3     # one budget; results of other budgets in the file are kept

Results are printed and merged into benchmarks/results/bench_budget.json, keyed by the budget.
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import torch

from chatgpt_train.metrics import read_metrics
from chatgpt_train.report import verdicts

OUT = Path(__file__).parent/'results'/'bench_budget.json'
MODELS = dict(pretrain='base', finetune='sft', align='aligned')


def schedule(run: Path, folder: str) -> dict:
    "How far a training stage's schedule went: steps against warmup, and the last rate as a share of the peak."
    ckpt = torch.load(run/folder/'checkpoints'/'last.pt', weights_only=True, map_location='cpu')
    peak = json.loads((run/folder/'train_config.json').read_text())['lr']
    last = [r for r in read_metrics(run/folder) if 'lr' in r][-1]
    share = last['lr'] / peak
    return dict(steps=ckpt['step'], warmup=ckpt['warmup'], last_lr_share=round(share, 3),
                complete=ckpt['step'] > ckpt['warmup'] and share <= 1 / 3)


def held_out(run: Path) -> dict:
    "Bits per byte of each model and of the bigram table; chitchat PMI hits@1 of each model."
    out = {}
    for m in ('base', 'sft', 'aligned'):
        e = json.loads((run/'eval'/f'{m}.json').read_text())
        sel = ((e.get('replies') or {}).get('chitchat') or {}).get('selection') or {}
        out[m] = dict(bits_per_byte=e['held_out']['bits_per_byte'], pmi_hits1=sel.get('pmi'))
        out['bigram'] = dict(bits_per_byte=e['baselines']['bigram']['bits_per_byte'])
    out['base_vs_bigram'] = round(out['base']['bits_per_byte'] / out['bigram']['bits_per_byte'], 3)
    return out


def one(minutes: float, root: Path) -> dict:
    "Run the pipeline on `minutes`; what it took and made."
    run = root/f'm{minutes:g}'
    load0, t0 = os.getloadavg(), time.time()
    r = subprocess.run([str(Path(sys.executable).parent/'chatgpt-train'), 'run', '--run', str(run), '--minutes', str(minutes)],
                       capture_output=True, text=True)
    took, load1 = time.time() - t0, os.getloadavg()
    if r.returncode: sys.exit(f"run --minutes {minutes} failed:\n{r.stderr[-3000:]}")
    stamps = json.loads((run/'pipeline.json').read_text())
    return dict(budget_s=60 * minutes, wall_s=round(took, 1), wall_over_budget=round(took / (60 * minutes), 3),
                load_before=[round(x, 2) for x in load0], load_after=[round(x, 2) for x in load1],
                steps={n: dict(seconds=s['seconds'], budget=s.get('budget')) for n, s in stamps.items()},
                plan={k: v for k, v in json.loads((run/'plan.json').read_text()).items() if k != 'args'},
                schedules={st: schedule(run, f) for st, f in MODELS.items()},
                held_out=held_out(run), verdicts=verdicts(run))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--minutes', type=float, nargs='+', default=[3, 5, 15])
    args = ap.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.minutes:
            res = one(m, Path(tmp))
            res.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                       torch=torch.__version__, date=time.strftime('%Y-%m-%d %H:%M'))
            results[f'{m:g}'] = res
            print(json.dumps({f'{m:g}': res}, indent=1))
            OUT.write_text(json.dumps(results, indent=1) + '\n')
