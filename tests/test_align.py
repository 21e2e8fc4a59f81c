"The align stage (DPO) from the command line: pairs built from the run or read from a file with broken records, the loss against a hand computation, exact resume after an interrupt, and `run` with the step on and off."
import json, shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import chatgpt_train.tune as tune
from chatgpt_train.align import DPOLoss, pair_collate, pair_example
from chatgpt_train.chat_format import IGNORE_INDEX, load_chat_format
from chatgpt_train.cli import main
from chatgpt_train.jsonio import load_json, write_jsonl
from chatgpt_train.model import make_model
from toy_run import SFT_FAST as FAST, chat_run, kill, start, wait_for

ALIGN = ['--block-size', '64', '--batch-size', '4', '--precision', 'fp32', '--minutes', '0', '--max-new-tokens', '8',
         '--eval-every', '5', '--log-every', '5', '--self-play', '40']


@pytest.fixture(scope='module')
def tuned(tmp_path_factory):
    "The chat-ready toy run (`toy_run.chat_run`) with a fine-tuned sft/."
    run = chat_run(tmp_path_factory.mktemp('align')/'run')
    assert main(['finetune', '--run', str(run), '--data', str(run.parent/'tock.jsonl'), *FAST, '--max-steps', '8']) == 0
    return run


def test_align_on_pairs_built_from_the_run(tuned, tmp_path):
    run = tmp_path/'run'
    shutil.copytree(tuned, run)
    assert main(['align', '--run', str(run), *ALIGN, '--max-steps', '12', '--lr', '1e-3']) == 0
    res = load_json(run/'eval'/'align.json')
    assert res['data']['self_play'] > 0 and res['data']['val_pairs'] > 0 and res['method']['kind'] == 'DPO'
    assert res['before']['preferences']['accuracy'] == 0  # the implicit reward is 0 until the model moves
    assert res['after']['preferences']['accuracy'] > 0.5
    assert len(res['safety_replies']) == 16 and {'before', 'after'} <= set(res['safety_replies'][0])
    a, s = load_file(run/'aligned'/'model.safetensors'), load_file(run/'sft'/'model.safetensors')
    assert not all(torch.equal(a[k], s[k]) for k in a)  # the aligned model is the trained one, not a copy of sft/
    AutoModelForCausalLM.from_pretrained(run/'aligned')
    assert AutoTokenizer.from_pretrained(run/'aligned').chat_template == AutoTokenizer.from_pretrained(run/'sft').chat_template
    train = [json.loads(l) for l in (run/'aligned'/'data'/'train.jsonl').read_text().splitlines()]
    assert all(p['prompt'][-1]['role'] == 'user' and p['chosen'] != p['rejected'] for p in train)
    assert main(['evaluate', '--run', str(run), '--model', 'aligned', '--max-tokens', '2000', '--selection-items', '10',
                 '--reply-items', '3', '--no-samples']) == 0
    assert (run/'eval'/'aligned.json').exists()


def test_align_on_a_file_quarantines_its_broken_records(tuned, tmp_path):
    run, data = tmp_path/'run', tmp_path/'prefs.jsonl'
    shutil.copytree(tuned, run)
    good = [dict(prompt=f'What is your name? ({i})', chosen='My name is Tock.', rejected='I do not know.') for i in range(40)]
    bad = [dict(prompt='Hi', chosen='Hello'), dict(prompt='Hi', chosen='Same.', rejected='Same.')]
    write_jsonl(good + bad, data)
    assert main(['align', '--run', str(run), '--data', str(data), *ALIGN, '--max-steps', '4']) == 0
    res = load_json(run/'eval'/'align.json')
    assert (res['data']['train_pairs'] + res['data']['val_pairs'], res['data']['quarantined']) == (40, 2)
    assert len((run/'aligned'/'data'/'quarantine.jsonl').read_text().splitlines()) == 2


def test_the_loss_is_the_formula_on_the_same_tensors(tuned):
    "DPO's loss, computed by hand token by token with log_softmax, for a policy and a reference that differ."
    fmt = load_chat_format(tuned/'sft')
    torch.manual_seed(0)
    pol, ref = make_model('micro', vocab_size=len(fmt.hf)), make_model('micro', vocab_size=len(fmt.hf))
    def logp(model, e):
        lp = torch.log_softmax(model(torch.tensor([e['input_ids']])).logits[0].double(), -1)
        return sum(lp[t - 1, e['labels'][t]] for t in range(1, len(e['labels'])) if e['labels'][t] != IGNORE_INDEX)
    rows = [pair_example(fmt, dict(prompt=[dict(role='user', text=f'Hi {i}')], chosen=f'Hello {i}!', rejected='No.'), 64) for i in range(4)]
    with torch.no_grad():
        for r in rows: r['ref'] = [logp(ref, r['chosen']).item(), logp(ref, r['rejected']).item()]
        want = sum(-F.logsigmoid(0.3 * ((logp(pol, r['chosen']) - r['ref'][0]) - (logp(pol, r['rejected']) - r['ref'][1]))) for r in rows)
        got = DPOLoss(0.3)(pol, pair_collate(rows, fmt.pad_id))
    assert abs(got.item() - want.item()) < 1e-4


def test_resume_after_interrupt_is_exact(tuned, tmp_path, monkeypatch):
    "Ctrl-C in the middle, then --resume: the same weights as a run that was never interrupted."
    args = [*ALIGN, '--max-steps', '6', '--save-every', '100', '--lr', '1e-3']
    whole, parts = tmp_path/'whole', tmp_path/'parts'
    for d in (whole, parts): shutil.copytree(tuned, d)
    assert main(['align', '--run', str(whole), *args]) == 0
    real_next = tune.ChatBatches.__next__
    def interrupted(self):
        if self.step == 4: raise KeyboardInterrupt
        return real_next(self)
    monkeypatch.setattr(tune.ChatBatches, '__next__', interrupted)
    assert main(['align', '--run', str(parts), *args]) == 130
    monkeypatch.setattr(tune.ChatBatches, '__next__', real_next)
    assert main(['align', '--run', str(parts), '--resume']) == 0
    a, b = load_file(whole/'aligned'/'model.safetensors'), load_file(parts/'aligned'/'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_json(whole/'eval'/'align.json')['after'] == load_json(parts/'eval'/'align.json')['after']


def test_bad_input(tuned, tmp_path, capsys):
    assert main(['align', '--run', str(tuned), '--beta', '0']) == 2
    assert '--beta must be positive' in capsys.readouterr().err
    assert main(['align', '--run', str(tmp_path/'empty')]) == 2
    assert 'chatgpt-train finetune --run' in capsys.readouterr().err
    assert main(['align', '--run', str(tuned), '--data', str(tmp_path/'none.jsonl'), *ALIGN, '--max-steps', '2']) == 2
    assert 'none.jsonl' in capsys.readouterr().err


def test_resume_after_a_kill_is_exact(tuned, tmp_path):
    "SIGKILL between two checkpoints, then --resume: the same weights and measures as a run never killed."
    args = [*ALIGN, '--max-steps', '30', '--save-every', '5', '--lr', '1e-3']
    whole, parts = tmp_path/'whole', tmp_path/'parts'
    for d in (whole, parts): shutil.copytree(tuned, d)
    assert main(['align', '--run', str(whole), *args]) == 0
    ck = parts/'aligned'/'checkpoints'/'last.pt'
    p = start('align', '--run', str(parts), *args, log=tmp_path/'kill.txt')
    wait_for(lambda: ck.exists() and torch.load(ck, weights_only=True)['step'] >= 10, p, 'a checkpoint')
    kill(p)
    assert torch.load(ck, weights_only=True)['step'] < 30
    assert main(['align', '--run', str(parts), '--resume']) == 0
    a, b = load_file(whole/'aligned'/'model.safetensors'), load_file(parts/'aligned'/'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_json(whole/'eval'/'align.json')['after'] == load_json(parts/'eval'/'align.json')['after']
