"""Damaged run folders, odd flags and odd stdin: every command says what is wrong in one line and exits with status 2, and no
later stage takes the damaged folder (issue 21's table, a test a row)."""
import json, shutil, subprocess

import numpy as np
import pytest
import torch

from chatgpt_train.cli import main
from chatgpt_train.collect import run_collect
from chatgpt_train.conversation import load_conversations
from toy_run import BIN, ENV, FAST, make_run


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    "A run with clean/, tokenizer/, encode/ and a two-step base/ (with its checkpoint)."
    run = make_run(tmp_path_factory.mktemp('damage')/'run')
    assert main(['pretrain', '--run', str(run), *FAST, '--max-steps', '2']) == 0
    return run


@pytest.fixture
def run(made, tmp_path):
    "A fresh copy of the run to damage."
    return shutil.copytree(made, tmp_path/'run')


def refused(capsys, *argv, says=''):
    "Run `chatgpt-train ARGV` in this process: it must exit with 2 and say why in one error line, with no traceback."
    try: rc = main([str(a) for a in argv])
    except SystemExit as e: rc = e.code  # argparse's own exit for a bad flag
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if ': error: ' in l]
    assert rc == 2 and len(errors) == 1 and says in errors[0] and 'Traceback' not in err, (argv, rc, err)
    return errors[0]


def edit_line(path, n, new):
    lines = path.read_text().splitlines()
    lines[n] = new
    path.write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('line, says', [
    ('[1, 2, 3]', 'not a conversation with turns'),
    ('{"id": "x", "split": "train"}', 'not a conversation with turns'),
    ('{"id": "x", "split": "train", "turns": [{"role": "user", "text": 5}]}', 'turn 0 is not a {"role", "text"} object of strings'),
    ('{"id": "x", "split": "train", "turns": ["hello"]}', 'turn 0 is not'),
])
def test_a_broken_line_in_clean_conversations(run, capsys, line, says):
    edit_line(run/'clean'/'conversations.jsonl', 3, line)
    for stage in ('tokenizer', 'encode'):
        assert 'conversations.jsonl:4:' in refused(capsys, stage, '--run', run, says=says)


@pytest.mark.parametrize('content, says', [
    (lambda t: t[:len(t) // 2], 'is not a tokenizer this project can read'),
    (lambda t: json.dumps(dict(version='1.0', model=dict(type='WordLevel', vocab={'a': 0}, unk_token='a'))), 'is not a tokenizer this project can read'),
])
def test_a_damaged_tokenizer(run, capsys, content, says):
    f = run/'tokenizer'/'tokenizer.json'
    f.write_text(content(f.read_text()))
    refused(capsys, 'encode', '--run', run, says=says)
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '1')  # the encoded files no longer match it


def test_token_files_cut_short_or_out_of_range(run, capsys):
    f = run/'encode'/'train.bin'
    data = f.read_bytes()
    f.write_bytes(data[:-1])
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '1', says='not a whole number of uint16 tokens')
    ids = np.frombuffer(data, dtype=np.uint16).copy()
    ids[10] = 5000  # the vocabulary has 300
    f.write_bytes(ids.tobytes())
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '1', says='holds token id 5000, outside the vocabulary of 300')


@pytest.mark.parametrize('change, says', [
    (lambda m: m.pop('eot_id'), 'lacks eot_id'),
    (lambda m: m.update(dtype='os.system'), "dtype 'os.system' is not one of uint16, uint32"),
    (lambda m: m.update(dtype='uint8'), "dtype 'uint8' is not one of"),
    (lambda m: m.update(vocab_size=100), 'has 300 tokens'),
    (lambda m: m.update(vocab_size=9000), 'says vocab_size 9,000 but'),
    (lambda m: m.update(tokens='many'), 'tokens must give a count'),
])
def test_a_damaged_meta_json(run, capsys, change, says):
    f = run/'encode'/'meta.json'
    meta = json.loads(f.read_text())
    change(meta)
    f.write_text(json.dumps(meta))
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '1', says=says)
    refused(capsys, 'evaluate', '--run', run, '--model', 'base', says=says)


def test_token_files_of_another_tokenizer(run, capsys):
    f = run/'tokenizer'/'tokenizer.json'
    spec = json.loads(f.read_text())
    spec['model']['vocab']['zzzz'] = max(spec['model']['vocab'].values())  # still a tokenizer, but not the one encode used
    f.write_text(json.dumps(spec))
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '1', says='encoded with another tokenizer')


@pytest.mark.parametrize('damage', [
    lambda b: (b/'config.json').write_text('{"model_type": "gpt2",'),
    lambda b: (b/'model.safetensors').write_bytes((b/'model.safetensors').read_bytes()[:1000]),
    lambda b: (b/'model.safetensors').write_bytes(b'\x80\x04K\x01.'),  # a pickle under the safetensors name
])
def test_a_damaged_model_folder(run, capsys, damage):
    damage(run/'base')
    for argv in (['evaluate', '--run', run, '--model', 'base'], ['finetune', '--run', run, '--data', 'chatterbot', '--max-steps', '1'],
                 ['chat', '--model', run/'base']):
        line = refused(capsys, *argv, says='rerun `chatgpt-train pretrain --run')  # one line naming the folder and the command that rewrites it
        assert str(run/'base') in line and ('not a causal language model folder' in line or 'no tokenizer could be loaded' in line)


def test_a_checkpoint_of_another_kind_or_another_run(run, capsys):
    ckpt = run/'base'/'checkpoints'/'last.pt'
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != 'model'}, ckpt)
    refused(capsys, 'pretrain', '--run', run, '--resume', says='lacks model')
    state['config']['lr'] = 0.5  # made by a run with another rate than base/args.json says
    torch.save(state, ckpt)
    refused(capsys, 'pretrain', '--run', run, '--resume', says='belongs to another run')
    state['config']['lr'] = json.loads((run/'base'/'train_config.json').read_text())['lr']
    state['model'] = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in state['model'].items()}
    torch.save(state, ckpt)
    refused(capsys, 'pretrain', '--run', run, '--resume', says='weights that are not finite')


def test_a_checkpoint_made_on_other_data_is_not_resumed(run, capsys):
    f = run/'encode'/'meta.json'
    meta = json.loads(f.read_text())
    meta['text_bytes']['train'] += 1  # the token files were rewritten from other text since the checkpoint
    f.write_text(json.dumps(meta))
    refused(capsys, 'pretrain', '--run', run, '--resume', says='made on other training data')


def test_a_fresh_run_never_leaves_an_older_checkpoint_and_a_diverging_one_writes_no_model(run, capsys):
    "The issue's case: an earlier run's checkpoint was taken for the new run's, and `--resume` then 'finished' it with a NaN loss."
    weights = (run/'base'/'model.safetensors').read_bytes()
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '5', '--seed', '7', '--lr', '1e30', '--grad-clip', '0',
            says='no checkpoint had been written yet')
    assert not (run/'base'/'checkpoints'/'last.pt').exists()  # the earlier run's is gone, and no bad one was written
    assert (run/'base'/'model.safetensors').read_bytes() == weights  # no model with non-finite weights was written
    refused(capsys, 'pretrain', '--run', run, '--resume', says='nothing to resume')
    refused(capsys, 'evaluate', '--run', run, '--model', 'base')  # base/ is marked unfinished: no later stage takes it


@pytest.mark.parametrize('flags, says', [
    (['--minutes', 'nan'], "'nan' is not a finite number"), (['--minutes', 'inf'], "'inf' is not a finite number"),
    (['--lr', '0'], 'lr must be a positive number'), (['--lr', '-1'], 'lr must be a positive number'),
    (['--tokens-per-step', '0'], 'tokens_per_step must be at least 1'), (['--warmup-steps', '-3'], 'warmup_steps must be 0'),
    (['--grad-clip', '-1'], 'grad_clip must be 0'), (['--eval-batches', '0'], 'eval_batches must be at least 1'),
])
def test_odd_training_flags(run, capsys, flags, says):
    refused(capsys, 'pretrain', '--run', run, *FAST, '--max-steps', '1', *flags, says=says)


def test_odd_finetune_flags(run, capsys):
    refused(capsys, 'finetune', '--run', run, '--data', 'chatterbot', '--lr', '0', '--max-steps', '1', says='lr must be a positive number')
    refused(capsys, 'finetune', '--run', run, '--minutes', 'nan', says="'nan' is not a finite number")


def test_a_run_that_is_a_file_or_a_stage_folder_that_is_a_file(run, tmp_path, capsys):
    f = tmp_path/'notes.txt'
    f.write_text('x')
    for argv in (['collect', '--run', f, '--limit', '5'], ['tokenizer', '--run', f], ['pretrain', '--run', f]):
        refused(capsys, *argv, says='is a file, not a run folder')
    shutil.rmtree(run/'collect', ignore_errors=True)
    (run/'collect').write_text('x')
    refused(capsys, 'collect', '--run', run, '--limit', '5', says='is a file where the collect/ folder')
    (run/'collect').unlink()
    (run/'collect'/'conversations.jsonl').mkdir(parents=True)
    refused(capsys, 'collect', '--run', run, '--limit', '5', says='is a folder where a file should be written')


def test_chat_goes_on_after_binary_bytes_and_control_characters_on_stdin(made):
    stdin = b'\xff\xfe\x00garbage\n\x0cHello\x07 there\n\x1b[2Jhow are you\n'
    p = subprocess.run([str(BIN/'chatgpt-train'), 'chat', '--model', str(made/'base'), '--max-new-tokens', '4', '--jsonl'],
                       input=stdin, capture_output=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in p.stdout.decode().splitlines()]
    assert [r['user'] for r in rows] == ['\ufffd\ufffdgarbage', 'Hello there', '[2Jhow are you']
    assert p.stderr.decode().count('note: the input has bytes') == 1 and b'Traceback' not in p.stderr


def test_a_one_line_json_array_is_collected_whole(tmp_path):
    "json.dump writes an array on one line: each record is its own, not a duplicate of its neighbour."
    f = tmp_path/'pairs.json'
    f.write_text(json.dumps([dict(prompt=f'question {i}', response=f'answer {i}') for i in range(200_000)]))
    run_collect(str(tmp_path/'r'), source=str(f))
    convs = load_conversations(tmp_path/'r', stage='collect')
    assert len(convs) == 200_000 and len({c['id'] for c in convs}) == 200_000
    assert not (tmp_path/'r'/'collect'/'quarantine.jsonl').read_text().strip()
