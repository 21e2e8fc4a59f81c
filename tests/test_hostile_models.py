"""Hostile and broken model folders (issue 30): code shipped in a folder, configs far bigger than their weights, weight
files that do not match the model, non-finite weights, and chat templates that recurse, loop, eat memory or escape.
Each is refused where the folder becomes a model, in one line, before anything runs, allocates or renders for a user."""
import json, resource, shutil, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import chatgpt_train.model_folder as model_folder
from chatgpt_train.chat_format import load_chat_format
from chatgpt_train.core import UserError
from chatgpt_train.model import load_model, make_model
from chatgpt_train.model_folder import hf_quiet, load_causal_lm
from chatgpt_train.tokenizer import save_tokenizer, train_bpe
from toy_run import BIN, ENV

TEXTS = ['hello there', 'how are you?', 'fine, thanks', 'what is your name?', 'my name is Tock'] * 40


@pytest.fixture(scope='module')
def made(tmp_path_factory) -> dict:
    "Sound model folders, each with its own tokenizer: Qwen3 (tied embeddings), Qwen3 untied, and GPT-2."
    root, tok = tmp_path_factory.mktemp('hostile'), train_bpe(TEXTS, 300)
    out = {}
    for name, kw in [('qwen3', {}), ('untied', dict(tie_embeddings=False)), ('gpt2', dict(family='gpt2'))]:
        save_tokenizer(tok, root/name)
        torch.manual_seed(0)
        with hf_quiet(): make_model('micro', 300, **kw).save_pretrained(root/name)
        out[name] = root/name
    return out


@pytest.fixture
def folder(made, tmp_path) -> Path:
    "A fresh copy of the sound Qwen3 folder, to spoil."
    return shutil.copytree(made['qwen3'], tmp_path/'model')


def edit_json(path: Path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def refused(fn, *says) -> str:
    "`fn()` must raise a one-line UserError that says each of `says`."
    with pytest.raises(UserError) as e: fn()
    msg = str(e.value)
    assert '\n' not in msg and all(s in msg for s in says), msg
    return msg


def cli(*args, stdin: str) -> subprocess.CompletedProcess:
    "`chatgpt-train ARGS` with `stdin` piped in; two minutes at most (serve, unrefused, would serve for ever)."
    return subprocess.run([str(BIN/'chatgpt-train'), *map(str, args)], input=stdin, env=ENV, capture_output=True,
                          text=True, timeout=120)


def one_line_status_2(p: subprocess.CompletedProcess, *says):
    err = p.stderr.strip()
    assert p.returncode == 2 and '\n' not in err and 'Traceback' not in err and all(s in err for s in says), \
        (p.returncode, p.stderr)


def test_sound_folders_load(made):
    "The checks refuse nothing sound: tied (lm_head absent from the file) and untied Qwen3, GPT-2."
    for name, f in made.items():
        lm = load_model(None, str(f))
        assert lm.fmt.kind == 'ours' and torch.isfinite(lm.model.lm_head.weight).all(), name


# C1: code in a folder is never run, and no prompt can read the user's input

def plant(folder: Path, marker: Path, where: str):
    "An `auto_map` in `where` (config.json or tokenizer_config.json) to a Python file in the folder, writing `marker`."
    (folder/'planted.py').write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import *\n")
    if where == 'config.json':
        edit_json(folder/where, auto_map={'AutoConfig': 'planted.Config', 'AutoModelForCausalLM': 'planted.Model'})
    else: edit_json(folder/where, auto_map={'AutoTokenizer': ['planted.Tok', 'planted.Tok']})


@pytest.mark.parametrize('where', ['config.json', 'tokenizer_config.json'])
def test_code_in_a_model_folder_never_runs_and_no_prompt_eats_stdin(folder, tmp_path, where):
    marker = tmp_path/'ran'
    plant(folder, marker, where)
    for stdin in ('y\n', 'hi\n'):  # "y" answered transformers' prompt; "hi" was eaten by it
        p = cli('chat', '--model', folder, '--max-new-tokens', '2', '--jsonl', stdin=stdin)
        one_line_status_2(p, str(folder/where), 'auto_map', 'never run code from a model folder')
        assert p.stdout == '' and not marker.exists()


def test_code_in_a_model_folder_is_refused_by_every_loader(folder, tmp_path, monkeypatch):
    "In-process, stdin answering yes: the tokenizer's loader and the model's each refuse before transformers is called."
    import io
    marker = tmp_path/'ran'
    monkeypatch.setattr(sys, 'stdin', io.StringIO('y\n' * 10))
    plant(folder, marker, 'tokenizer_config.json')
    refused(lambda: load_chat_format(folder), 'tokenizer_config.json has an auto_map')
    refused(lambda: load_causal_lm(folder), 'tokenizer_config.json has an auto_map')
    # an architecture transformers lacks, even without an auto_map
    edit_json(folder/'config.json', model_type='planted')
    (folder/'tokenizer_config.json').write_text(json.dumps(
        {k: v for k, v in json.loads((folder/'tokenizer_config.json').read_text()).items() if k != 'auto_map'}))
    refused(lambda: load_causal_lm(folder), 'config.json', "model_type 'planted'", 'never run code from a model folder')
    assert not marker.exists() and sys.stdin.read() == 'y\n' * 10  # nothing read the user's input


def test_evaluate_refuses_a_folder_with_code(folder, run, tmp_path):
    marker = tmp_path/'ran'
    plant(folder, marker, 'config.json')
    p = cli('evaluate', '--run', run, '--model', folder, stdin='y\n')
    one_line_status_2(p, 'auto_map', 'never run code')
    assert not marker.exists()


# H4, S6: a config far bigger than its weights, or with an absurd context

def test_a_million_layers_is_refused_before_anything_is_built(folder):
    edit_json(folder/'config.json', num_hidden_layers=10**6)
    t = time.time()
    refused(lambda: load_causal_lm(folder), str(folder/'config.json'), 'num_hidden_layers', '1,000,000')
    assert time.time() - t < 10


def test_a_config_far_bigger_than_its_weight_files(folder):
    "A shape that would take 40 GB: refused from the files' headers, with both sizes, before a byte is allocated."
    edit_json(folder/'config.json', hidden_size=65536, intermediate_size=65536, head_dim=32768)
    t = time.time()
    refused(lambda: load_causal_lm(folder), str(folder/'config.json'), 'parameters',
            'its weight files hold 416,128 values')
    assert time.time() - t < 20


def test_a_model_bigger_than_free_memory(folder, monkeypatch):
    monkeypatch.setattr(model_folder, 'free_ram', lambda: 1 << 20)  # 1 MiB free
    refused(lambda: load_causal_lm(folder), 'needs 1.7 MB of memory to load', '1.0 MB')


def test_a_context_of_a_billion_tokens_is_refused(folder):
    "No model reads 10^9 tokens: a number like that is a typo or a trap, and every later stage would trust it."
    edit_json(folder/'config.json', max_position_embeddings=10**9)
    refused(lambda: load_causal_lm(folder), str(folder/'config.json'), 'max_position_embeddings', '1,000,000,000')


# S1: weight files that do not match the model

def rewrite_weights(folder: Path, change):
    f = folder/'model.safetensors'
    sd = load_file(f)
    change(sd)
    save_file(sd, f, metadata={'format': 'pt'})


@pytest.mark.parametrize('change, says', [
    (lambda sd: [sd.pop(k) for k in list(sd) if 'layers.1.mlp' in k],
     ['lack 3 of the model', 'model.layers.1.mlp.down_proj.weight']),
    (lambda sd: sd.update({f'other.{k}': sd.pop(k) for k in list(sd)}),
     ['lack 25 of the model', 'hold 24 tensors the model does not have']),
    (lambda sd: sd.update(extra=torch.zeros(3)), ['hold 1 tensors the model does not have (extra)']),
    (lambda sd: sd.update({'model.layers.0.mlp.up_proj.weight': torch.zeros(5, 5)}),
     ['model.layers.0.mlp.up_proj.weight', 'has shape [5, 5]', 'the model has [320, 128]']),
    (lambda sd: sd.update({k: (v * 100).to(torch.int8) for k, v in sd.items()}), ['is I8', 'float weights only']),
])
def test_weights_that_do_not_match_the_model(folder, change, says):
    rewrite_weights(folder, change)
    refused(lambda: load_causal_lm(folder), str(folder/'model.safetensors'), *says)


def test_evaluate_refuses_missing_weights_instead_of_scoring_random_ones(folder, run):
    rewrite_weights(folder, lambda sd: sd.pop('model.layers.0.self_attn.q_proj.weight'))
    p = cli('evaluate', '--run', run, '--model', folder, stdin='')
    one_line_status_2(p, 'model.layers.0.self_attn.q_proj.weight')


# T4: weights that are not finite

@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused_at_load(folder, value):
    def spoil(sd): sd['model.layers.1.self_attn.k_proj.weight'][3, 4] = value
    rewrite_weights(folder, spoil)
    refused(lambda: load_causal_lm(folder), 'model.layers.1.self_attn.k_proj.weight', 'not finite')


# T3, H4: hostile chat templates, rendered once at load in a child with limits

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HOSTILE = {
    'recursion': ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", 'RecursionError'),
    'huge range': ("{% for i in range(10**9) %}x{% endfor %}", 'OverflowError'),
    'nested ranges': ("{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}{% endfor %}"
                      "{% endfor %}{% endfor %}", 'did not finish in 5 s'),
    'string times 10**10': ("{{ 'x' * 10**10 }}", 'MemoryError'),
    'doubling': ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                 "{{ ns.s[:1] }}", 'MemoryError'),
    'list times 10**9': ("{% set x = [0] * 10**9 %}{{ x | length }}", 'MemoryError'),
    'escape': ("{{ ''.__class__.__mro__[1].__subclasses__() }}", 'SecurityError'),
    'raises': ("{{ raise_exception('no chat for you') }}", 'no chat for you'),
    'syntax': ("{% for m in messages %}{{ m['content'] }", 'TemplateSyntaxError'),
    'ten megabytes': ("{{ 'x' * 10**7 }}", 'wrote 10,000,000 characters'),
    'lipsum': ("{{ lipsum(10**6) }}", 'did not finish in 5 s|wrote|MemoryError'),
}


def with_template(folder: Path, template: str) -> Path:
    "`template` as the folder's chat template, `<|endoftext|>` as eos: a foreign tokenizer that renders every chat."
    edit_json(folder/'tokenizer_config.json', chat_template=template, eos_token='<|endoftext|>')
    return folder


@pytest.mark.parametrize('name', list(HOSTILE))
def test_a_hostile_chat_template_is_refused_at_load(folder, name):
    template, says = HOSTILE[name]
    with_template(folder, template)
    t = time.time()
    with pytest.raises(UserError) as e: load_chat_format(folder)
    msg = str(e.value)
    assert '\n' not in msg and str(folder/'tokenizer_config.json') in msg and 'chat template' in msg, msg
    assert any(s in msg for s in says.split('|')), msg
    assert time.time() - t < 30
    # KiB: this process never held the template's gigabytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 4 * 2**20


def test_serve_and_chat_refuse_a_hostile_template(folder):
    "serve started with such a template, then answered 500 to every request while /health said ok."
    with_template(folder, HOSTILE['escape'][0])
    one_line_status_2(cli('serve', '--model', folder, '--port', '1', stdin=''), 'chat template', 'SecurityError')
    one_line_status_2(cli('chat', '--model', folder, stdin='hi\n'), 'chat template', 'SecurityError')


def test_sound_templates_are_kept_and_cheap(folder):
    "ChatML, and a template that refuses a system turn as Gemma's does: both load; the check costs little."
    t = time.time()
    fmt = load_chat_format(with_template(folder, CHATML))
    assert time.time() - t < 3 and fmt.hf.chat_template == CHATML
    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                 + CHATML)
    fmt = load_chat_format(with_template(folder, no_system))
    assert (fmt.kind == 'template'
            and fmt.hf.decode(fmt.prompt('Hi')) == '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n')


def test_a_template_that_fails_on_one_conversation_says_so_in_one_line(folder):
    "A template that passes the probes but fails on a later request: a UserError naming the template, not a traceback."
    fmt = load_chat_format(with_template(
        folder, "{% if messages | length > 5 %}{{ raise_exception('too long') }}{% endif %}" + CHATML))
    turns = [dict(role='user' if i % 2 == 0 else 'assistant', text=f'message {i}') for i in range(7)]
    refused(lambda: fmt.prompt(turns), 'chat template', 'too long')
