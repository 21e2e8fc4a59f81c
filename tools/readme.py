"""Write README.md from nbs/index.ipynb, as `nbdev_readme` would, without Quarto (which cannot be installed here).

python tools/readme.py          # write README.md
python tools/readme.py --check  # exit 1 if README.md is out of step with nbs/index.ipynb
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def render() -> str:
    "README text: the markdown cells of index.ipynb and the sources of its code cells, in order."
    nb = json.loads((root/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        if not src or src.startswith('#| hide'): continue
        parts.append(src if c['cell_type'] == 'markdown' else f"```python\n{src}\n```")
    head = '<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n'
    return head + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv[1:]:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is out of step with nbs/index.ipynb: run `python tools/readme.py`')
    else: readme.write_text(text, encoding='utf-8')
