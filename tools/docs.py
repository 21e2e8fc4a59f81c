"""Build the documentation site without Quarto: nbdev's own notebook processing, then nbconvert to HTML.

python tools/docs.py            # write _docs/*.html (one page a notebook, index.html from index.ipynb)

Where Quarto is installed, `nbdev_docs` builds the real site from the same notebooks and `_quarto.yml`. Quarto cannot be
installed on the machines this project is built and tested on, so this script runs the same processing nbdev runs before it
calls Quarto (frontmatter, `show_doc` for every exported name with its docments, hidden cells removed) and renders each
processed notebook with nbconvert, honouring the Quarto cell options nbdev sets (`echo: false`, `include: false`, `output: false`).
"""
import re, shutil, sys
from pathlib import Path

import nbformat, yaml
from nbconvert import HTMLExporter
from nbdev.config import get_config
from nbdev.doclinks import _build_modidx
from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
from nbdev.serve import proc_nbs

_opt = re.compile(r'^#\|\s*([\w-]+)\s*:\s*(.+?)\s*$')

def _options(src:str) -> dict:
    "The `#| key: value` Quarto options at the top of a cell."
    opts = {}
    for line in src.splitlines():
        m = _opt.match(line)
        if m: opts[m.group(1)] = m.group(2).lower()
        elif not line.startswith('#|'): break
    return opts

def _quarto_like(nb):
    "Apply the cell options Quarto would: drop hidden code or output, strip `#|` lines, turn frontmatter into a heading."
    cells = []
    for c in nb.cells:
        if c.cell_type == 'raw' and c.source.startswith('---'):
            meta = yaml.safe_load(c.source.strip().strip('-')) or {}  # a long subtitle is folded over several lines
            text = f"# {meta['title']}\n\n" if meta.get('title') else ''
            if meta.get('description'): text += f"> {' '.join(str(meta['description']).split())}\n"
            if text: cells.append(nbformat.v4.new_markdown_cell(text))
            continue
        if c.cell_type == 'code':
            o = _options(c.source)
            if o.get('include') == 'false': continue
            if o.get('output') == 'false': c.outputs = []
            c.source = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
            if o.get('echo') == 'false':
                if not c.outputs: continue
                c.metadata['transient'] = {'remove_source': True}
                c.source = ''
        if c.cell_type == 'markdown': c.source = re.sub(r'\{target="_blank"[^}]*\}', '', c.source)  # Quarto-only link attributes
        cells.append(c)
    nb.cells = cells
    return nb

def build(out:str|Path|None=None) -> Path:
    "Process every notebook as nbdev does for Quarto and render it to HTML in `out` (default: `doc_path`)."
    cfg = get_config()
    out = Path(out or cfg.config_path/cfg.doc_path)
    refresh_quarto_yml()
    _build_modidx()
    nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
    cache = proc_nbs(cfg.nbs_path, n_workers=1, force=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    exporter = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.exclude_anchor_links = False
    for nb_path in sorted(cache.glob('*.ipynb')):
        nb = _quarto_like(nbformat.read(nb_path, as_version=4))
        nb.cells = [c for c in nb.cells if not (c.cell_type == 'code' and c.metadata.get('transient', {}).get('remove_source') and not c.outputs)]
        html, _ = exporter.from_notebook_node(nb)
        html = re.sub(r'href="(\w+)\.ipynb(#[^"]*)?"', r'href="\1.html\2"', html)  # links between notebooks go to pages
        (out/f'{nb_path.stem}.html').write_text(html, encoding='utf-8')
    shutil.copy(cfg.nbs_path/'styles.css', out/'styles.css')
    return out

if __name__ == '__main__':
    out = build(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"docs: {len(list(out.glob('*.html')))} pages in {out}")
