"The fine-tune stage from the command line: full and LoRA on a tiny base, a GPT-2-style folder of another tokenizer, the label guard, exact resume."
import json, shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatgpt_train.cli import main
from chatgpt_train.jsonio import load_json, write_jsonl
from chatgpt_train.model import make_model
import chatgpt_train.finetune as ft
import chatgpt_train.tune as tune
from toy_run import SFT_FAST as FAST, chat_run, chats


@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> Path:
    "The chat-ready toy run (`toy_run.chat_run`); tests get copies through `run`."
    return chat_run(tmp_path_factory.mktemp('toy')/'run')


def chat_reply(folder: Path, text: str, n=12) -> tuple[str, list[int], object]:
    "Answer `text` with transformers alone, through the folder's chat template: (reply, new ids, tokenizer)."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    x = tok.apply_chat_template([dict(role='user', content=text)], add_generation_prompt=True, return_tensors='pt', return_dict=True)
    out = model.generate(**x, max_new_tokens=n, do_sample=False)[0, x['input_ids'].shape[1]:].tolist()
    return tok.decode(out, skip_special_tokens=True), out, tok


def test_full_finetune_on_chatterbot_lowers_assistant_perplexity(run):
    assert main(['finetune', '--run', str(run), *FAST, '--max-steps', '12', '--lr', '3e-3']) == 0
    res = load_json(run/'eval'/'finetune.json')
    assert res['assistant']['perplexity'] < 0.7 * res['before']['perplexity']
    assert res['before']['tokens'] == res['assistant']['tokens'] > 500  # the same held-out replies, before and after
    sel = res['selection']  # response selection on the same held-out items before and after: the pretrained model's number in this run
    assert sel['before']['items'] == sel['after']['items'] > 50 and sel['after']['chance'] == 0.1 and sel['before'] != sel['after']
    assert res['method']['kind'] == 'full' and res['data']['source'] == 'chatterbot' and 0.2 < res['data']['label_share'] < 0.9
    assert [s['prompt'] for s in res['samples']] == ft.PROMPTS and {'base', 'sft', 'sft_sampled'} <= set(res['samples'][0])
    sft = run/'sft'
    assert {'config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'args.json',
            'metrics.jsonl', 'loss.png', 'checkpoints', 'data'} <= {p.name for p in sft.iterdir()}
    profile = [c for c in map(json.loads, (sft/'data'/'clean'/'conversations.jsonl').read_text().splitlines()) if 'botprofile' in c['id']]
    assert profile, "chatterbot's bot profile is part of the data"
    assert load_json(sft/'args.json')['args']['from_'] == 'base'
    reply, ids, tok = chat_reply(sft, 'What is your name?')
    assert len(ids) > 0 and tok.eos_token == '<|end|>'


def test_lora_on_a_local_file_merges_into_a_plain_folder(run, toy):
    data = toy.parent/'tock.jsonl'
    assert main(['finetune', '--run', str(run), '--data', str(data), '--lora', '--lora-r', '8', *FAST, '--max-steps', '10',
                 '--lr', '5e-3']) == 0
    res = load_json(run/'eval'/'finetune.json')
    sft = run/'sft'
    assert res['method']['kind'] == 'lora' and res['method']['trained_parameters'] < 0.2 * res['model']['parameters']
    assert res['assistant']['perplexity'] < res['before']['perplexity']
    assert sorted(p.name for p in (sft/'lora').iterdir()) == ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
    assert not (sft/'adapter_config.json').exists()  # else transformers would load sft/ as adapters
    base, merged = load_file(run/'base'/'model.safetensors'), load_file(sft/'model.safetensors')
    assert base.keys() == merged.keys()  # the original architecture, no peft names
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(k.endswith('.weight') and ('.h.' in k or '.layers.' in k) for k in changed)  # only the blocks' adapted linear layers moved
    # the merged folder computes what the adapters did: compare with peft's model of base + adapters
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(sft).eval()(input_ids=x).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run/'base'), sft/'lora').eval()(input_ids=x).logits
    torch.testing.assert_close(plain, peft, atol=1e-4, rtol=1e-4)
    # a full run afterwards leaves no stale adapters
    assert main(['finetune', '--run', str(run), '--data', str(data), *FAST, '--max-steps', '2']) == 0
    assert not (sft/'lora').exists()


def gpt2_style_folder(folder: Path, texts: list[str]) -> Path:
    "A model folder like a downloaded GPT-2: its own byte-level BPE with only <|endoftext|>, no chat template."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast
    t = Tokenizer(models.BPE())
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=350, special_tokens=['<|endoftext|>'],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = GPT2TokenizerFast(tokenizer_object=t, bos_token='<|endoftext|>', eos_token='<|endoftext|>', unk_token='<|endoftext|>')
    tok.save_pretrained(folder)
    make_model('micro', vocab_size=len(tok), n_positions=128, family='gpt2').save_pretrained(folder)
    return folder


def test_another_model_folder_gets_our_chat_format(toy, tmp_path):
    "A GPT-2-style folder, fine-tuned with LoRA: our role tokens are added, their embeddings trained, the rest frozen."
    data = toy.parent/'tock.jsonl'
    src = gpt2_style_folder(tmp_path/'gpt2', [t['text'] for c in chats() for t in c['turns']])
    n = json.loads((src/'config.json').read_text())['vocab_size']
    run = tmp_path/'chatrun'
    assert main(['finetune', '--run', str(run), '--from', str(src), '--data', str(data), *FAST, '--max-steps', '16',
                 '--lr', '1e-2', '--lora']) == 0
    res = load_json(run/'eval'/'finetune.json')
    assert res['method']['new_tokens'] == 4 and res['model']['base'] == str(src)
    assert res['assistant']['perplexity'] < 0.7 * res['before']['perplexity']
    w0, w1 = load_file(src/'model.safetensors'), load_file(run/'sft'/'model.safetensors')
    emb = next(k for k in w1 if k.endswith('wte.weight'))
    assert w1[emb].shape[0] == n + 4 and torch.equal(w1[emb][:n], w0[emb])  # the old rows stay frozen
    reply, ids, tok = chat_reply(run/'sft', 'What is your name?', n=8)
    assert tok.convert_tokens_to_ids('<|end|>') == n + 3 and tok.eos_token == '<|end|>'
    assert tok.decode(tok.apply_chat_template([dict(role='user', content='Hi')], add_generation_prompt=True)['input_ids']) \
        == '<|endoftext|><|user|>Hi<|end|><|assistant|>'
    assert 'Tock' in reply, reply  # it learnt who it is, through the chat format it did not have


def test_no_assistant_turns_stops_before_training(run, capsys):
    bad = run.parent/'questions.jsonl'
    write_jsonl([dict(id=f'q{i}', turns=[dict(role='user', text=f'Question {i}?'), dict(role='user', text='Anyone?')])
                 for i in range(60)], bad)
    assert main(['finetune', '--run', str(run), '--data', str(bad), *FAST, '--max-steps', '2']) == 2
    err = capsys.readouterr().err
    assert 'no token has a label, so there is nothing to learn' in err and 'Traceback' not in err
    assert not (run/'sft'/'checkpoints').exists() and not (run/'eval'/'finetune.json').exists()


def test_unmasked_labels_stop_before_training(run, toy, capsys, monkeypatch):
    "If a chat format ever labelled every token (prompts too), the stage refuses to train on it."
    real = ft.ChatFormat.assistant_examples
    def unmasked(self, convs, max_len): return [dict(e, labels=list(e['input_ids'])) for e in real(self, convs, max_len)]
    monkeypatch.setattr(ft.ChatFormat, 'assistant_examples', unmasked)
    assert main(['finetune', '--run', str(run), '--data', str(toy.parent/'tock.jsonl'), *FAST, '--max-steps', '2']) == 2
    assert 'every token has a label' in capsys.readouterr().err
    assert not (run/'sft'/'checkpoints').exists()


def test_bad_input(run, tmp_path, capsys):
    assert main(['finetune', '--run', str(run), '--from', str(tmp_path/'nowhere')]) == 2
    assert 'is not a model folder' in capsys.readouterr().err
    assert main(['finetune', '--run', str(tmp_path/'empty')]) == 2
    assert 'chatgpt-train pretrain --run' in capsys.readouterr().err
    assert main(['finetune', '--run', str(run), '--resume']) == 2
    assert 'nothing to resume' in capsys.readouterr().err
    with pytest.raises(SystemExit): main(['finetune', '--help'])
    assert '--from FROM' in capsys.readouterr().out


@pytest.mark.parametrize('lora', [False, True])
def test_resume_after_interrupt_is_exact(toy, tmp_path, monkeypatch, lora):
    "Ctrl-C in the middle, then --resume: the same weights as a run that was never interrupted."
    data = str(toy.parent/'tock.jsonl')
    args = ['--data', data, *FAST, '--max-steps', '6', '--save-every', '100', '--lr', '3e-3', *(['--lora'] if lora else [])]
    whole, parts = tmp_path/'whole', tmp_path/'parts'
    for d in (whole, parts): shutil.copytree(toy, d)
    assert main(['finetune', '--run', str(whole), *args]) == 0

    real_next = tune.ChatBatches.__next__
    def interrupted(self):
        if self.step == 4: raise KeyboardInterrupt
        return real_next(self)
    monkeypatch.setattr(tune.ChatBatches, '__next__', interrupted)
    assert main(['finetune', '--run', str(parts), *args]) == 130
    assert torch.load(parts/'sft'/'checkpoints'/'last.pt', weights_only=True)['step'] == 4
    monkeypatch.setattr(tune.ChatBatches, '__next__', real_next)
    assert main(['finetune', '--run', str(parts), '--resume']) == 0
    a, b = load_file(whole/'sft'/'model.safetensors'), load_file(parts/'sft'/'model.safetensors')
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = load_json(whole/'eval'/'finetune.json'), load_json(parts/'eval'/'finetune.json')
    assert ra['before'] == rb['before'] and ra['assistant'] == rb['assistant']
