"""Write README.md from nbs/index.ipynb, as `nbdev_readme` would, without Quarto (which cannot be installed here).

A code cell marked `#| echo: false` shows what its last expression makes (a `Markdown` table read from
`benchmarks/results/`): this script runs it from `nbs/`, puts the markdown in the README and saves it as the cell's output,
so the README, the docs page and the results file never disagree.

python tools/readme.py          # write README.md (and the tables' outputs in nbs/index.ipynb)
python tools/readme.py --check  # exit 1 if README.md or a table is out of step with nbs/index.ipynb and the results
"""
import ast, json, os, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
INDEX = root/'nbs'/'index.ipynb'

def shown(src:str, ns:dict) -> str:
    "The markdown an `#| echo: false` cell shows: its last expression's, the cell run from nbs/ as the notebook runs it."
    tree = ast.parse(src)
    last, cwd = tree.body.pop(), os.getcwd()
    os.chdir(root/'nbs')
    try:
        exec(compile(tree, str(INDEX), 'exec'), ns)
        value = eval(compile(ast.Expression(last.value), str(INDEX), 'eval'), ns)
    finally: os.chdir(cwd)
    return getattr(value, 'data', str(value)).strip()

def render(nb:dict) -> str:
    "README text: the markdown cells of index.ipynb, the sources of its code cells and what its tables show, in order."
    parts, ns = [], {}
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        lines = src.splitlines()[1:]
        imports = all(l.startswith(('import ', 'from ')) for l in lines)
        # the imports the tables use, in a cell of their own: the docs build runs a cell that mixes imports and code
        if c['cell_type'] == 'code' and src.startswith('#| hide') and imports: exec('\n'.join(lines), ns)
        if not src or src.startswith('#| hide'): continue
        if c['cell_type'] == 'code' and src.startswith('#| echo: false'):
            md = shown(src, ns)
            c['outputs'] = [dict(data={'text/markdown': md.splitlines(True)}, metadata={}, output_type='display_data')]
            parts.append(md)
        else: parts.append(src if c['cell_type'] == 'markdown' else f"```python\n{src}\n```")
    head = '<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n'
    return head + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    before = INDEX.read_text(encoding='utf-8')
    nb = json.loads(before)
    text, readme = render(nb), root/'README.md'
    after = json.dumps(nb, indent=1, ensure_ascii=False) + '\n'
    if '--check' in sys.argv[1:]:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text or after != before:
            sys.exit('README.md or a table of nbs/index.ipynb is out of step with the notebook or benchmarks/results: '
                     'run `python tools/readme.py`')
    else:
        readme.write_text(text, encoding='utf-8')
        INDEX.write_text(after, encoding='utf-8')
