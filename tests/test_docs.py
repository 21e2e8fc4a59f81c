"""The docs check: nbdev's processing of every notebook, rendered to HTML without Quarto, then read in headless Chromium."""
import html.parser, os, shutil, subprocess, sys
from pathlib import Path

import pytest

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root/'tools'))
import docs

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# CI installs Debian's chromium; a developer machine without it skips only the browser part.
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get('CI'), reason='chromium is not installed')

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    return docs.build(tmp_path_factory.mktemp('docs'))

class _VisibleText(html.parser.HTMLParser):
    "The text a reader sees: everything outside script, style and elements hidden with display:none."
    hidden_tags = {'script', 'style', 'head', 'template', 'noscript'}
    void = {'br', 'img', 'hr', 'meta', 'link', 'input', 'wbr', 'source', 'col', 'area', 'base', 'embed', 'param', 'track'}
    def __init__(self):
        super().__init__(); self.stack, self.parts = [], []
    def handle_starttag(self, tag, attrs):
        if tag in self.void: return
        style = (dict(attrs).get('style') or '').replace(' ', '')
        self.stack.append(tag in self.hidden_tags or 'display:none' in style or 'hidden' in dict(attrs))
    def handle_endtag(self, tag):
        if tag not in self.void and self.stack: self.stack.pop()
    def handle_data(self, data):
        if not any(self.stack): self.parts.append(data)
    def text(self): return ' '.join(' '.join(self.parts).split())

def rendered_dom(page:Path) -> str:
    "The DOM of `page` after Chromium has loaded it and run its scripts."
    assert CHROMIUM, 'chromium is required for the docs check: apt-get install chromium'
    with subprocess.Popen([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                           '--disable-background-networking', '--disable-component-update', '--disable-sync',
                           f'--user-data-dir={page.parent/".chromium"}', '--dump-dom', page.resolve().as_uri()],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as p:
        dom, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and dom, f'chromium could not render {page}'
    return dom

def visible_text(dom:str) -> str:
    "The text a reader sees in `dom`."
    v = _VisibleText(); v.feed(dom)
    return v.text()

def rendered_text(page:Path) -> str:
    "The visible text of `page` after Chromium has loaded it and run its scripts."
    return visible_text(rendered_dom(page))

def test_every_notebook_has_a_page(site):
    nbs = {p.stem for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith('_')}
    assert nbs == {p.stem for p in site.glob('*.html')}

def test_api_page_holds_show_doc_with_docments(site):
    page = (site/'00_runs.html').read_text()
    assert 'run_path' in page and 'A run folder, or a bare run name' in page  # the signature and a parameter's docment
    assert '#| export' not in page and '#| hide' not in page  # nbdev's directives never reach the reader

@needs_chromium
def test_index_and_api_page_in_a_browser(site):
    index = rendered_text(site/'index.html')
    assert 'The pipeline' in index and 'target="_blank"' not in index
    assert 'chatgpt-train collect --run runs/demo --source chitchat' in index  # a row of the pipeline table
    api = rendered_text(site/'00_runs.html')
    # show_doc's signature with each parameter's docment, as the reader sees it (spacing comes from the code highlighter)
    assert 'defrun_path(run:str|Path,#Arunfolder,orabarerunname)->Path' in api.replace(' ', '')


@needs_chromium
def test_math_and_links_render_as_a_reader_sees_them(site):
    "Math becomes MathML (no raw LaTeX on the page), and no Quarto-only link attribute shows, in prose or in show_doc output."
    dom = rendered_dom(site/'06_train.html')
    text = visible_text(dom)
    assert '<math' in dom and '$x_1' not in text and '\\dots' not in text and '\\ln 64' not in text
    for page in ('00_core.html', '05_model.html', '07_evaluate.html'):
        assert 'target="_blank"' not in rendered_text(site/page) and 'font-size:smaller' not in rendered_text(site/page), page


def test_widgets_without_state_show_their_text(site):
    "The chat widget, committed without widget state, shows its transcript on the page rather than an empty box."
    page = (site/'09_chat.html').read_text()
    assert 'Hello again!' in page and 'No messages yet' not in page.split('Hello again!')[0][-2000:]


def test_contributing_maps_every_module_and_notebook():
    "CONTRIBUTING.md maps every module of the package and no module that is gone; the sidebar lists every notebook."
    import re
    text = (root/'CONTRIBUTING.md').read_text()
    the_map = text.split('## The map', 1)[1].split('\n## ', 1)[0]
    mapped = re.findall(r'^- `(\w+)`', the_map, re.M)
    modules = sorted(p.stem for p in (root/'chatgpt_train').glob('*.py') if not p.stem.startswith('_'))
    assert sorted(mapped) == modules, set(mapped) ^ set(modules)
    sidebar = (root/'nbs'/'sidebar.yml').read_text()
    assert all(f'- {p.name}' in sidebar for p in (root/'nbs').glob('*.ipynb')), 'a notebook is missing from nbs/sidebar.yml'
