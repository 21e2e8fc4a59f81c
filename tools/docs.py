"""Build the documentation site without Quarto: nbdev's own notebook processing, then nbconvert to HTML.

python tools/docs.py            # write _docs/*.html (one page a notebook, index.html from index.ipynb)

Where Quarto is installed, `nbdev_docs` builds the real site from the same notebooks and `_quarto.yml`. Quarto cannot be
installed on the machines this project is built and tested on, so this script runs the same processing nbdev runs before it
calls Quarto (frontmatter, `show_doc` for every exported name with its docments, hidden cells removed) and renders each
processed notebook with nbconvert, honouring the Quarto cell options nbdev sets (`echo: false`, `include: false`, `output: false`).

What Quarto would do on top, it does here too: math written as `$...$` and `$$...$$` in the notebooks' prose becomes MathML
(with latex2mathml, when the page is built), which browsers render without any script, so the pages need no network; the
link attributes Quarto reads (`{target="_blank" ...}`) are removed, in prose and in the `show_doc` output alike; and a
widget whose state is not saved (notebooks are committed without it) shows the text it carries instead of an empty box.
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
_QUARTO_ATTRS = re.compile(r'\{target="_blank"[^}]*\}')  # Quarto-only link attributes
_CODE = re.compile(r'(```.*?```|`[^`\n]*`)', re.S)           # code, where a $ is a dollar
_MATH = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)
WIDGET = 'application/vnd.jupyter.widget-view+json'

def math_to_mathml(md:str) -> str:
    "`md` with its `$...$` and `$$...$$` math (outside code) turned into MathML."
    from latex2mathml.converter import convert
    def one(m): return convert(m[1].strip(), display='block') if m[1] is not None else convert(m[2])
    parts = _CODE.split(md)
    return ''.join(p if i % 2 else _MATH.sub(one, p) for i, p in enumerate(parts))

def _outputs(outputs:list) -> list:
    "Outputs as a page shows them: no Quarto attributes in markdown, and a widget without saved state as its text or HTML."
    for o in outputs:
        data = o.get('data', {})
        if 'text/markdown' in data: data['text/markdown'] = _QUARTO_ATTRS.sub('', ''.join(data['text/markdown']))
        if WIDGET in data and len(data) > 1: del data[WIDGET]  # its state is not in the notebook: the fallback shows
    return outputs

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
            c.outputs = [] if o.get('output') == 'false' else _outputs(c.outputs)
            c.source = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
            if o.get('echo') == 'false':
                if not c.outputs: continue
                c.metadata['transient'] = {'remove_source': True}
                c.source = ''
        if c.cell_type == 'markdown': c.source = math_to_mathml(_QUARTO_ATTRS.sub('', c.source))
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
