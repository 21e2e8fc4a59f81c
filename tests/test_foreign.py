"Starting from a model someone else trained: tiny random GPT-2, Llama and Qwen3 folders with tokenizers unlike ours (no template, Llama 3's, ChatML), fine-tuned, evaluated and talked to; hub ids without a network."
import io, json, shutil, subprocess, sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, \
    Qwen3Config, Qwen3ForCausalLM

import chatgpt_train.tune as tune
from chatgpt_train.chat_format import IGNORE_INDEX, load_chat_format
from chatgpt_train.cli import main
from chatgpt_train.jsonio import load_json, write_jsonl
from chatgpt_train.model import make_model
from chatgpt_train.tokenizer import CHAT_TEMPLATE
from toy_run import BIN, ENV, SFT_FAST as FAST, chats, make_run

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
          "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# name: (special tokens, bos, eos, the end of turn generation must stop at, template); the eos is not the end of turn, as in base models
TEMPLATES = {
    None:     (['<|endoftext|>'], '<|endoftext|>', '<|endoftext|>', '<|end|>', None),
    'llama3': (['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'],
               '<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', LLAMA3),
    'chatml': (['<|endoftext|>', '<|im_start|>', '<|im_end|>'], '<|im_start|>', '<|endoftext|>', '<|im_end|>', CHATML),
}
CASES = [('gpt2', None), ('llama', 'llama3'), ('qwen3', 'chatml'), ('llama', 'chatml')]


def foreign_folder(folder: Path, family: str, template: str|None) -> Path:
    "A model folder as if downloaded: a random tiny model of `family` and its own byte-level BPE, with `template` or none."
    specials, bos, eos, _, jinja = TEMPLATES[template]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.train_from_iterator([x['text'] for c in chats() for x in c['turns']], trainers.BpeTrainer(
        vocab_size=360, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cls = GPT2TokenizerFast if family == 'gpt2' else PreTrainedTokenizerFast
    tok = cls(tokenizer_object=t, bos_token=bos, eos_token=eos, **({'unk_token': eos} if family == 'gpt2' else {}), chat_template=jinja)
    tok.save_pretrained(folder)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=128, tie_word_embeddings=True, **ids)
    model = (make_model('micro', vocab_size=len(tok), n_positions=128, family='gpt2') if family == 'gpt2'
             else LlamaForCausalLM(LlamaConfig(**shape)) if family == 'llama' else Qwen3ForCausalLM(Qwen3Config(head_dim=16, **shape)))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def base_run(tmp_path_factory) -> Path:
    "A run folder with clean/, tokenizer/ and encode/ (what evaluate and the mix read), and the fine-tuning data beside it."
    run = make_run(tmp_path_factory.mktemp('foreign')/'run')
    write_jsonl(chats(), run.parent/'tock.jsonl')
    return run


def labelled_runs(ids: list[int], labels: list[int], tok) -> list[str]:
    "Each run of labelled tokens, decoded without special tokens."
    runs, cur = [], []
    for i, l in zip(ids + [0], labels + [IGNORE_INDEX]):
        if l != IGNORE_INDEX: cur.append(i)
        elif cur: runs.append(tok.decode(cur, skip_special_tokens=True).strip()); cur = []
    return runs


def chat_lines(folder: Path, text: str) -> tuple[int, list[dict], str]:
    "The chat command on `folder`, one line in: (status, its JSON rows, stderr)."
    out, err, old = io.StringIO(), io.StringIO(), (sys.stdin, sys.stdout, sys.stderr)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(text + '\n'), out, err
    try: rc = main(['chat', '--model', str(folder), '--max-new-tokens', '8', '--jsonl'])
    finally: sys.stdin, sys.stdout, sys.stderr = old
    return rc, [json.loads(l) for l in out.getvalue().splitlines()], err.getvalue()


@pytest.mark.parametrize('family,template', CASES)
def test_full_finetune_keeps_the_template_and_learns(base_run, tmp_path, family, template):
    "Fine-tuned, evaluated and talked to: the template kept (ours only where there was none), the replies' tokens labelled, perplexity down."
    run, src = tmp_path/'run', foreign_folder(tmp_path/'src', family, template)
    shutil.copytree(base_run, run)
    assert main(['finetune', '--run', str(run), '--from', str(src), '--data', str(base_run.parent/'tock.jsonl'), *FAST,
                 '--max-steps', '30', '--lr', '3e-3', '--mix', '0.5']) == 0
    res, sft = load_json(run/'eval'/'finetune.json'), run/'sft'
    assert res['assistant']['perplexity'] < res['before']['perplexity']
    tok, model = AutoTokenizer.from_pretrained(sft), AutoModelForCausalLM.from_pretrained(sft)  # a standard folder
    end = TEMPLATES[template][3]
    assert tok.chat_template == (TEMPLATES[template][4] or CHAT_TEMPLATE) and res['method']['new_tokens'] == (0 if template else 4)
    stops = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids(end) in (stops if isinstance(stops, list) else [stops])
    conv = chats(1, seed=5)[0]
    ex = load_chat_format(sft).assistant_examples([conv], 256)
    assert sum((labelled_runs(e['input_ids'], e['labels'], tok) for e in ex), []) == [t['text'] for t in conv['turns'] if t['role'] == 'assistant']
    assert main(['evaluate', '--run', str(run), '--model', 'sft', '--max-tokens', '2000', '--selection-items', '10',
                 '--reply-items', '3', '--no-samples']) == 0
    ev = load_json(run/'eval'/'sft.json')
    assert ev['tokenizer']['format'] == ('template' if template else 'ours') and ev['assistant']['perplexity'] > 0
    rc, rows, err = chat_lines(sft, 'What is your name?')
    assert rc == 0 and len(rows) == 1 and isinstance(rows[0]['assistant'], str), err


@pytest.mark.parametrize('family,template', CASES)
def test_lora_merges_into_a_folder_with_the_same_template(base_run, tmp_path, family, template):
    run, src = tmp_path/'run', foreign_folder(tmp_path/'src', family, template)
    assert main(['finetune', '--run', str(run), '--from', str(src), '--data', str(base_run.parent/'tock.jsonl'), *FAST,
                 '--max-steps', '4', '--lora']) == 0
    assert load_json(run/'sft'/'args.json')['args']['lora'] is True and (run/'sft'/'lora'/'adapter_config.json').exists()
    assert AutoTokenizer.from_pretrained(run/'sft').chat_template == (TEMPLATES[template][4] or CHAT_TEMPLATE)
    AutoModelForCausalLM.from_pretrained(run/'sft')


def test_a_model_that_will_not_fit_is_refused_before_training(base_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune, 'free_memory', lambda device: 1 << 20)  # 1 MiB free
    run = tmp_path/'run'
    assert main(['finetune', '--run', str(run), '--from', str(foreign_folder(tmp_path/'src', 'llama', 'chatml')),
                 '--data', str(base_run.parent/'tock.jsonl'), *FAST, '--max-steps', '2']) == 2
    err = capsys.readouterr().err
    assert 'is free: pass --lora, or --checkpointing, or a smaller --batch-size (now 8)' in err and 'Traceback' not in err
    assert not (run/'sft'/'checkpoints').exists()


def hub_cache(cache: Path, repo: str, src: Path, commit='0123456789abcdef0123456789abcdef01234567') -> Path:
    "`src` laid out in a hub cache as a download leaves it: the files under snapshots/COMMIT, refs/main naming the commit."
    top = cache/f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, top/'snapshots'/commit)
    (top/'refs').mkdir()
    (top/'refs'/'main').write_text(commit)
    return top/'snapshots'/commit


def test_a_hub_model_in_the_cache_is_found_without_a_network(base_run, tmp_path):
    "The real hub path, offline: the model is taken from the cache, and its commit is recorded in args.json."
    snap = hub_cache(tmp_path/'hub', 'someone/tiny-chat', foreign_folder(tmp_path/'src', 'qwen3', 'chatml'))
    run = tmp_path/'run'
    p = subprocess.run([str(BIN/'chatgpt-train'), 'finetune', '--run', str(run), '--from', 'someone/tiny-chat', '--data',
                        str(base_run.parent/'tock.jsonl'), *FAST, '--max-steps', '2'], env={**ENV, 'HF_HUB_CACHE': str(tmp_path/'hub')},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    args = load_json(run/'sft'/'args.json')
    assert args['hub'] == dict(id='someone/tiny-chat', revision=snap.name) and args['args']['from_'] == 'someone/tiny-chat'


@pytest.mark.parametrize('argv', [['finetune', '--run', '{run}', '--from', '{id}'], ['evaluate', '--run', '{run}', '--model', '{id}'],
                                  ['chat', '--model', '{id}'], ['run', '--run', '{run}', '--from', '{id}', '--minutes', '1']])
def test_a_hub_id_that_cannot_be_had_is_one_line_and_status_2(base_run, tmp_path, argv):
    repo = 'nobody-here/no-such-model-xyz'
    p = subprocess.run([str(BIN/'chatgpt-train'), *(a.format(run=tmp_path/'run', id=repo) for a in argv)],
                       env={**ENV, 'HF_HUB_CACHE': str(tmp_path/'hub')}, capture_output=True, text=True, timeout=300, input='')
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert f'cannot download {repo}' in line and '\n' not in line and 'Traceback' not in line, p.stderr


def test_run_from_a_model_skips_pretraining_and_reports_it(tmp_path, capsys):
    src, run = foreign_folder(tmp_path/'src', 'llama', 'chatml'), tmp_path/'run'
    assert main(['run', '--run', str(run), '--from', str(src), '--limit', '300', '--vocab-size', '512', '--sft-steps', '5',
                 '--eval-tokens', '2048', '--chats', '1']) == 0
    out = capsys.readouterr().out
    assert list(load_json(run/'pipeline.json')) == ['collect', 'clean', 'tokenizer', 'encode', 'evaluate base', 'finetune', 'evaluate sft',
                                                    'align', 'evaluate aligned']
    assert not (run/'base').exists() and load_json(run/'eval'/'base.json')['model']['path'] == str(src)
    assert AutoTokenizer.from_pretrained(run/'sft').chat_template == CHATML
    assert f'No pretraining in this run: it fine-tunes **{src}**' in (run/'report.md').read_text()
    assert '  you:   Hi! How are you today?\n  model: ' in out
