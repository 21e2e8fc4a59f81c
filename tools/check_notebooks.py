"""Check that the committed notebooks carry no saved widget state and no carriage-return progress output.

python tools/check_notebooks.py     # exit 1, naming each notebook and cell, if any does

Saved widget state bloats a notebook (tens of KB for one progress bar) and renders as an empty box in the docs; a stream
output with carriage returns is a progress bar that redrew itself into the file. Either means the notebook was saved from a
session whose output should not be committed: strip it (nbdev_clean removes the state; rerun the cell for its output).
"""
import json, sys
from pathlib import Path

WIDGET = 'application/vnd.jupyter.widget-view+json'

def problems(path:Path) -> list[str]:
    "What is wrong with the notebook at `path`, one line each."
    nb, out = json.loads(path.read_text(encoding='utf-8')), []
    if 'widgets' in nb.get('metadata', {}): out.append(f"{path}: saved widget state in its metadata")
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            if '\r' in ''.join(o.get('text', '')): out.append(f"{path}: cell {i} has a stream output with carriage returns (a redrawn progress bar)")
            data = o.get('data', {})
            if WIDGET in data and not ({'text/html', 'text/markdown', 'image/png'} & set(data)):
                out.append(f"{path}: cell {i} shows a widget with nothing to show where widgets do not run (no text/html fallback)")
    return out

if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent
    found = [p for nb in sorted((root/'nbs').glob('*.ipynb')) for p in problems(nb)]
    print('\n'.join(found) or 'notebooks: no widget state, no carriage-return output', file=sys.stderr if found else sys.stdout)
    sys.exit(1 if found else 0)
