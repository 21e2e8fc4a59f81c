"""The terminal chat with input piped in (issue 32): each reply is kept together and told apart from the next, also when
it spans several lines; `--jsonl` stays one JSON object a line; and `chat --help` says which model `--run` loads."""
import dataclasses, json
from types import SimpleNamespace

import pytest
import torch

from chatgpt_train import chat
from chatgpt_train.cli import main
from toy_run import run_cli
from chatgpt_train.generate import random_chat_model
from chatgpt_train.runs import MODEL_DIRS

# Leading spaces, an empty line, a tab: the lines a parser of the output must give back as they were.
REPLY = 'Hello!\nI am fine, thanks.\n\n  - and you?\tBye.'


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return random_chat_model(tmp_path_factory.mktemp('pipe')/'micro')


class Scripted(torch.nn.Module):
    "A stand-in model that writes `reply` (token ids) after each `<|assistant|>`, whatever the message."
    def __init__(self, config, vocab, assistant, reply):
        super().__init__()
        self.config, self.vocab, self.assistant, self.reply = config, vocab, assistant, reply
        self.w = torch.nn.Parameter(torch.zeros(1))
    def forward(self, input_ids, **kw):
        row = input_ids[0].tolist()
        n = len(row) - 1 - max(i for i, t in enumerate(row) if t == self.assistant)  # reply tokens written so far
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, :, self.reply[min(n, len(self.reply) - 1)]] = 100.
        return SimpleNamespace(logits=logits)


@pytest.fixture
def multiline(monkeypatch):
    "`chatgpt-train chat` loads, whatever it is given, a model that answers every message with `REPLY`."
    load = chat.load_model
    def scripted(*a, **k):
        lm = load(*a, **k)
        tok = lm.fmt.hf
        ids = tok.encode(REPLY, add_special_tokens=False) + [tok.convert_tokens_to_ids('<|end|>')]
        assert tok.decode(ids[:-1]) == REPLY  # the tokenizer writes the reply back exactly
        return dataclasses.replace(lm, model=Scripted(lm.model.config, len(tok), tok.convert_tokens_to_ids('<|assistant|>'), ids))
    monkeypatch.setattr(chat, 'load_model', scripted)


def split_replies(out: str) -> list[str]:
    "The replies in piped output, read the way the notebook documents, without the package: `model> ` starts a reply, and its other lines are indented by as much."
    replies = []
    for line in out.split('\n')[:-1]:  # the output ends with a newline
        if line.startswith('model> '): replies.append(line[len('model> '):])
        else:
            assert line.startswith(' ' * len('model> ')), repr(line)
            replies[-1] += '\n' + line[len('model> '):]
    return replies


def test_piped_multiline_replies_split_back_into_one_reply_a_message(folder, multiline):
    rc, out, err = run_cli('chat', '--model', str(folder), stdin='hi\nhow are you\n')
    assert rc == 0, err
    assert split_replies(out) == [REPLY, REPLY]


def test_jsonl_output_is_unchanged(folder, multiline):
    rc, out, err = run_cli('chat', '--model', str(folder), '--jsonl', stdin='hi\nhow are you\n')
    assert rc == 0, err
    assert [json.loads(l) for l in out.splitlines()] == [dict(user=m, assistant=REPLY, flagged=False)
                                                        for m in ('hi', 'how are you')]


@pytest.mark.parametrize('reply', ['', 'one line', 'a\nb', 'ends with a newline\n', '\n\nstarts with two',
                                   'model> looks like a label\nmodel> twice', '  \n\t\n'])
def test_labelled_replies_read_back_exactly(reply):
    from chatgpt_train.chat import label_reply
    assert split_replies(label_reply(reply) + '\n' + label_reply('next') + '\n') == [reply, 'next']


def test_chat_help_names_the_models_run_loads(capsys):
    with pytest.raises(SystemExit): main(['chat', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    newest_first = ', else '.join(f'{m}/' for m in reversed(MODEL_DIRS))  # aligned/, else sft/, else base/
    assert f'newest model ({newest_first})' in text, text
