"Chat stage: the terminal chat through a pipe, run and model folders, bad input, every decoder against `generate`, streaming."
import dataclasses, io, json, os, random, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from chatgpt_train.chat import ChatSession, ChatWidget, chat_loop
from chatgpt_train.generate import (GREEDY, GPT2Decoder, SamplingConfig, generate_text, generate_tokens, random_chat_model,
                                    stream_text)
from chatgpt_train.model import load_model
from toy_run import run_cli
from chatgpt_train.jsonio import save_json


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "A model folder: a micro GPT-2 with random weights and a tokenizer that has multi-byte characters among its tokens."
    texts = ['héllo wörld, ça va? 👋🏽 🎉', '你好，世界。今天好吗？', 'Привет, мир!'] * 20
    from chatgpt_train.generate import _corpus_texts
    return random_chat_model(tmp_path_factory.mktemp('models')/'micro', texts=_corpus_texts() + texts, vocab_size=600)


@pytest.fixture(scope='module')
def loaded(folder):
    lm = load_model(None, folder, 'cpu')
    return lm.model, lm.fmt.hf


def chatgpt_train_command() -> list[str]:
    "The installed `chatgpt-train` console script, or the same entry point through this Python."
    exe = Path(sys.executable).parent/'chatgpt-train'
    return [str(exe)] if exe.exists() else [sys.executable, '-c', 'import sys; from chatgpt_train.cli import main; sys.exit(main())']


def test_terminal_chat_answers_piped_lines_in_a_subprocess(folder):
    lines = 'Hello there!\nWhat do you like to do?\n/reset\nHello there!\n'
    p = subprocess.run([*chatgpt_train_command(), 'chat', '--model', str(folder), '--max-new-tokens', '24', '--jsonl'],
                       input=lines, capture_output=True, text=True, timeout=300, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in p.stdout.splitlines()]
    assert [r['user'] for r in rows] == ['Hello there!', 'What do you like to do?', 'Hello there!']
    assert all(isinstance(r['assistant'], str) and r['flagged'] is False for r in rows)
    assert rows[0]['assistant'] == rows[2]['assistant']  # /reset reseeds: the same line gets the same reply
    assert 'started over' in p.stderr


def test_plain_output_one_reply_a_line(folder):
    p = subprocess.run([*chatgpt_train_command(), 'chat', '--model', str(folder), '--max-new-tokens', '16', '--temperature', '0'],
                       input='Hi!\nHow are you?\n', capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('\n') >= 2  # one reply a line (a reply may itself hold line breaks)


def test_run_folder_prefers_sft_then_base(folder, tmp_path, monkeypatch):
    import shutil
    from chatgpt_train import chat
    loaded, load = [], chat.load_model
    monkeypatch.setattr(chat, 'load_model', lambda *a, **k: (lm := load(*a, **k), loaded.append(lm.folder))[0])
    run = tmp_path/'run'
    shutil.copytree(folder, run/'base')
    rc, out, err = run_cli('chat', '--run', str(run), '--max-new-tokens', '8', '--jsonl', stdin='Hi\n')
    assert rc == 0, err
    assert loaded == [run/'base'] and len(out.splitlines()) == 1
    shutil.copytree(folder, run/'sft')
    rc, out, err = run_cli('chat', '--run', str(run), '--max-new-tokens', '8', stdin='Hi\n')
    assert rc == 0 and loaded[-1] == run/'sft'


@pytest.mark.parametrize('argv, message', [
    ([], 'one of the two'),
    (['--model', 'MODEL', '--run', 'RUN'], 'one of the two'),
    (['--model', 'MISSING'], 'config.json not found'),
    (['--run', 'RUN'], 'has no model yet'),
    (['--model', 'NOTOK'], 'has no tokenizer files'),
    (['--model', 'MODEL', '--top-p', '0'], 'top_p must be in (0, 1]'),
    (['--model', 'MODEL', '--temperature', '-1'], 'temperature must be'),
])
def test_bad_input_is_one_line_and_status_2(folder, tmp_path, argv, message):
    notok = tmp_path/'notok'; notok.mkdir(); save_json({}, notok/'config.json')
    names = dict(MODEL=str(folder), MISSING=str(tmp_path/'missing'), RUN=str(tmp_path/'emptyrun'), NOTOK=str(notok))
    rc, out, err = run_cli('chat', *[names.get(a, a) for a in argv], stdin='Hi\n')
    assert rc == 2 and message in err and 'Traceback' not in err, err


def test_a_too_long_message_is_reported_and_the_chat_goes_on(folder):
    rc, out, err = run_cli('chat', '--model', str(folder), '--max-new-tokens', '8', '--jsonl', stdin='word ' * 400 + '\nHi\n')
    assert rc == 0
    assert 'error: the message is too long' in err
    assert [json.loads(l)['user'] for l in out.splitlines()] == ['Hi']


def test_commands(loaded):
    model, tok = loaded
    s = ChatSession(model, tok, sampling=SamplingConfig(max_new_tokens=8))
    out, err = io.StringIO(), io.StringIO()
    n = chat_loop(s, ['/system Be nice.', '/temp 0.25', '/temp -3', '/help', '/nope', '', 'Hi', '/exit', 'not read'], out, err)
    assert n == 1 and s.system == 'Be nice.' and s.sampling.temperature == 0.25
    text = err.getvalue()
    assert 'system prompt: Be nice.' in text and '/temp needs a number' in text and 'unknown command /nope' in text
    chat_loop(s, ['/system'], out, err)
    assert s.system is None


class Scripted(torch.nn.Module):
    "A stand-in model that always predicts the next token of `reply`, whatever the input."
    def __init__(self, config, vocab, reply):
        super().__init__()
        self.config, self.vocab, self.reply, self.w = config, vocab, reply, torch.nn.Parameter(torch.zeros(1))
    def forward(self, input_ids, **kw):
        if not hasattr(self, 'start'): self.start = input_ids.shape[1]
        i = min(input_ids.shape[1] - self.start, len(self.reply) - 1)
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab); logits[:, :, self.reply[i]] = 100.
        return SimpleNamespace(logits=logits)


def test_interactive_loop_streams_and_withdraws_a_flagged_reply(loaded):
    model, tok = loaded
    end = tok.convert_tokens_to_ids('<|end|>')
    polite = Scripted(model.config, len(tok), tok.encode('fine, thanks', add_special_tokens=False) + [end])
    rude = Scripted(model.config, len(tok), tok.encode('shut up you faggot', add_special_tokens=False) + [end])
    out, err = io.StringIO(), io.StringIO()
    chat_loop(ChatSession(polite, tok, fast=False), ['How are you?'], out, err, interactive=True)
    assert out.getvalue() == 'model> fine, thanks\n'
    out = io.StringIO()
    chat_loop(ChatSession(rude, tok, fast=False, refusal='Let us keep it friendly.'), ['Hey'], out, err, interactive=True)
    assert out.getvalue() == 'model> shut up you \n[withdrawn by the content filter] Let us keep it friendly.\n'


def test_stream_pieces_add_up_to_the_decoded_reply_for_any_tokens(loaded):
    "Random token sequences, with byte tokens that split characters: the pieces never show half a character."
    model, tok = loaded
    rng = random.Random(0)
    special = set(tok.all_special_ids)
    ordinary = [i for i in range(len(tok)) if i not in special]
    for _ in range(30):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(1, 25))]
        pieces = list(stream_text(Scripted(model.config, len(tok), ids + [tok.convert_tokens_to_ids('<|end|>')]), tok, [0], GREEDY, fast=False))
        assert ''.join(pieces) == tok.decode(ids, clean_up_tokenization_spaces=False)
        assert all(p and not p.endswith('\ufffd') for p in pieces[:-1])


@pytest.mark.parametrize('preset, overrides, fast', [('micro', {}, 'Qwen3Decoder'), ('micro', dict(family='gpt2'), 'GPT2Decoder'),
                                                     ('micro', dict(family='gpt3', attention='sparse', window=8), 'CacheDecoder'),
                                                     ('micro', dict(family='gpt1'), 'CacheDecoder')])
def test_greedy_equals_generate_for_every_family(preset, overrides, fast):
    from chatgpt_train.generate import make_decoder
    from chatgpt_train.model import make_model
    torch.manual_seed(0)
    model = make_model(preset, 300, pad_token_id=0, **overrides).eval()
    x = torch.randint(5, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    ref = model.generate(x, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)[:, 10:]
    for kw in [dict(), dict(fast=False), dict(use_cache=False)]:
        ours = torch.stack(list(generate_tokens(model, x, dataclasses.replace(GREEDY, max_new_tokens=30), **kw)), 1)
        assert torch.equal(ours, ref), (overrides, kw)
    assert type(make_decoder(model, 2, 40)).__name__ == fast
    assert GPT2Decoder.supports(model) == (fast == 'GPT2Decoder')


def test_a_batch_decodes_like_each_row_alone(loaded):
    model, _ = loaded
    x = torch.randint(5, 500, (4, 12), generator=torch.Generator().manual_seed(1))
    cfg = dataclasses.replace(GREEDY, max_new_tokens=20, repetition_penalty=1.3)
    batch = torch.stack(list(generate_tokens(model, x, cfg)), 1)
    for r in range(4): assert torch.equal(batch[r], torch.stack(list(generate_tokens(model, x[r:r+1], cfg)), 1)[0])


@pytest.mark.parametrize('fast', [True, False])
def test_streaming_equals_not_streaming_for_a_seed(loaded, fast):
    model, tok = loaded
    prompt = tok.apply_chat_template([dict(role='user', content='Tell me about your day.')], add_generation_prompt=True, return_dict=True)['input_ids']
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=60)
    gen = lambda: torch.Generator().manual_seed(11)
    streamed = list(stream_text(model, tok, prompt, cfg, gen(), fast=fast))
    assert ''.join(streamed) == generate_text(model, tok, prompt, cfg, gen(), fast=fast)
    a, b = ChatSession(model, tok, seed=5, sampling=cfg, fast=fast), ChatSession(model, tok, seed=5, sampling=cfg, fast=fast)
    for msg in ['Hi!', 'What is your favourite food?']: assert ''.join(a.stream(msg)) == b.send(msg)


def test_widget_builds_and_answers_headless(loaded):
    model, tok = loaded
    w = ChatWidget(ChatSession(model, tok, sampling=SamplingConfig(max_new_tokens=12), system='Be kind.'))
    seen = []
    w.transcript.observe(lambda ch: seen.append(ch['new']), 'value')
    w.top_p.value = 0.5
    w.send('<b>bold?</b>')
    assert w.session.sampling.top_p == 0.5 and len(w.session.history) == 2
    assert '&lt;b&gt;bold?&lt;/b&gt;' in w.transcript.value and 'Be kind.' in w.transcript.value  # shown as text, not HTML
    assert len(seen) >= 2
    w.send('word ' * 400)  # too long: an error line, the history unchanged
    assert 'too long' in w.transcript.value and len(w.session.history) == 2
