"""How long collecting the embedded chitchat corpus takes, as ratios against the least any loader must do.

    python benchmarks/collect_speed.py

baseline: `json.load` of chitchat's 40 MB dataset.json (no mapping, no line numbers);
items:    `chitchat_items()`: the same parse element by element with line numbers, mapping, checks;
collect:  `run_collect(source='chitchat')`: items plus writing conversations.jsonl, report and the `datasets.Dataset`.
Each is the best of 3 runs in this process; the machine is shared, so compare the ratios, not the seconds.
Results are printed and written to benchmarks/results/collect_speed.json.
"""
import json, os, tempfile, time
from pathlib import Path

from chatgpt_train.collect import run_collect
from chatgpt_train.readers import CHITCHAT, chitchat_items, package_file


def best(fn, n=3):
    times = []
    for _ in range(n):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return min(times)


if __name__ == '__main__':
    import datasets  # noqa: F401 -- imported up front so its import time is not charged to the first collect run
    load = os.getloadavg()[0]  # other processes on the machine slow every number below
    path = package_file(*CHITCHAT)
    base = best(lambda: json.load(open(path, encoding='utf-8')))
    items = best(lambda: list(chitchat_items()))
    with tempfile.TemporaryDirectory() as tmp:
        full = best(lambda: run_collect(f'{tmp}/run'))
    rows = [('baseline json.load', base), ('chitchat_items', items), ('run_collect', full)]
    for name, t in rows: print(f'{name:20} {t:6.2f} s   {t / base:5.1f}x baseline')
    out = Path(__file__).parent/'results'/'collect_speed.json'
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(cpus=os.cpu_count(), load_average_at_start=load,
                                   **{n.split()[-1]: dict(seconds=round(t, 3), x_baseline=round(t / base, 2)) for n, t in rows}),
                              indent=2) + '\n')
