"""How long does the clean stage take on the whole default corpus, and where does the time go?

The target (issue 3): the 7,168 chitchat conversations, default settings (spelling off), clean in under 30 s on 2 cores.
The machine is shared, so each measurement is repeated and the fastest run kept, the CPU time of the whole clean is printed
beside its wall-clock time (a busy machine stretches the one, not the other), and two baselines are timed in the same run,
so the figures can be read as ratios:

- `json`: decoding and encoding every record once (the least any stage that reads and writes JSON Lines pays);
- `ftfy everywhere`: `ftfy.fix_text` on every turn, which the unicode step would cost without its ASCII shortcut.

Usage:

    python benchmarks/bench_clean.py                  # the corpus as the collect stage reads it
    python benchmarks/bench_clean.py --run runs/demo  # a run's collect/conversations.jsonl
    python benchmarks/bench_clean.py --spelling       # also time the spelling step

Results are printed and written to benchmarks/results/bench_clean.json (or --out).
"""
import argparse, json, os, time
from pathlib import Path

import ftfy

from chatgpt_train.clean import CleanConfig, clean_conversations
from chatgpt_train.runs import stage_dir
from chatgpt_train.jsonio import read_jsonl


def load(run):
    if run: return list(read_jsonl(stage_dir(run, 'collect')/'conversations.jsonl'))
    from chatgpt_train.readers import chitchat_items
    return [it.conversation for it in chitchat_items()]


CPU = {}

def best(fn, repeats, name=None):
    "The wall-clock time and result of the fastest of `repeats` runs of `fn`; the CPU time of that run goes to `CPU[name]`."
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0, out))
    wall, cpu, out = min(runs, key=lambda r: r[0])
    if name: CPU[name] = cpu
    return wall, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--run', help='read RUN/collect/conversations.jsonl instead of the embedded corpus')
    p.add_argument('--repeats', type=int, default=3, help='runs of each measurement; the fastest counts')
    p.add_argument('--spelling', action='store_true', help='also time a run with spelling correction on')
    p.add_argument('--out', default=str(Path(__file__).parent/'results'/'bench_clean.json'), help='where to write the results')
    a = p.parse_args()
    loadavg = os.getloadavg()[0]  # other processes on the machine slow every number below

    convs = load(a.run)
    texts = [t['text'] for c in convs for t in c['turns']]
    lines = [json.dumps(c, ensure_ascii=False) for c in convs]
    print(f'{len(convs):,} conversations, {len(texts):,} turns, {sum(map(len, texts)):,} characters')

    t_json, _ = best(lambda: [json.dumps(json.loads(s), ensure_ascii=False) for s in lines], a.repeats)
    t_ftfy, _ = best(lambda: [ftfy.fix_text(t, normalization='NFKC') for t in texts], a.repeats)
    clean_conversations(convs[:50])  # load the classifier once, as any long run would
    t_clean, (kept, report) = best(lambda: clean_conversations(convs), a.repeats, 'clean')
    rows = [('json (baseline)', t_json), ('ftfy everywhere (baseline)', t_ftfy), ('clean_conversations', t_clean)]
    rows += [(f'  step {s["step"]}', s['seconds']) for s in report['steps'] if s['enabled']]
    rows += [('  split + check', report['split']['seconds'])]
    if a.spelling:
        t_spell, (_, rep_s) = best(lambda: clean_conversations(convs, CleanConfig(spelling=True)), 1)
        rows += [('clean_conversations --spelling', t_spell)]
        rows += [('  step spelling', next(s['seconds'] for s in rep_s['steps'] if s['step'] == 'spelling'))]

    print(f'\n{"measurement":34} {"seconds":>8} {"x json":>8}')
    for name, t in rows: print(f'{name:34} {t:8.2f} {t / t_json:8.1f}')
    unicode = next(s['seconds'] for s in report['steps'] if s['step'] == 'unicode')
    print(f'\nkept {report["out"]:,} of {report["in"]:,} conversations ({report["split"]["train"]:,} train, '
          f'{report["split"]["val"]:,} val); near-duplicates across the split: {report["split"]["near_dups_across_split"]}')
    print(f'unicode step {unicode:.2f} s against {t_ftfy:.2f} s for ftfy on every turn ({t_ftfy / max(unicode, 1e-9):.1f}x)')
    print(f'whole clean: {t_clean:.1f} s wall-clock, {CPU["clean"]:.1f} s CPU (one process), '
          f'target under 30 s: {"met" if t_clean < 30 else "NOT met"}')
    res = dict(conversations=len(convs), turns=len(texts), cpus=os.cpu_count(), load_average_at_start=loadavg,
               seconds={name.strip(): round(t, 3) for name, t in rows}, x_json={name.strip(): round(t / t_json, 2) for name, t in rows},
               clean_cpu_seconds=round(CPU['clean'], 2), kept=report['out'], train=report['split']['train'], val=report['split']['val'],
               near_dups_across_split=report['split']['near_dups_across_split'], target_under_30s=t_clean < 30)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + '\n')


if __name__ == '__main__': main()
