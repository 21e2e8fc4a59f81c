"Evaluate stage: perplexity checked a second way, independent of the batch size; baselines; bits per byte; any model folder; the command line."
import contextlib, io, json, math, random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from chatgpt_train.cli import main
from chatgpt_train.jsonio import load_json, write_jsonl
from chatgpt_train.encode import load_tokens
from chatgpt_train.evaluate import (EVAL_KEYS, PROMPTS, BigramLM, UnigramLM, lm_metrics, masked_nll, run_evaluate, token_nlls,
                                    window_spans)
from chatgpt_train.model import make_model
from chatgpt_train.tokenizer import load_tokenizer

THINGS = {'colour': ['red', 'blue', 'green'], 'food': ['pizza', 'pasta', 'rice', 'soup'], 'animal': ['cat', 'dog', 'bird'],
          'sport': ['tennis', 'golf', 'chess'], 'city': ['Paris', 'Rome', 'Oslo', 'Lima']}


def make_conversations(n=360, seed=0):
    "Question-and-answer chats with a structure a small model learns in seconds; every eighth conversation is held out."
    rng, convs = random.Random(seed), []
    for i in range(n):
        turns = []
        for _ in range(rng.randint(1, 3)):
            thing = rng.choice(sorted(THINGS))
            turns += [dict(role='user', text=f'What is your favourite {thing}?'),
                      dict(role='assistant', text=f'My favourite {thing} is {rng.choice(THINGS[thing])}. é✓')]
        convs.append(dict(id=str(i), source='test', turns=turns, meta={}, split='val' if i % 8 == 0 else 'train'))
    return convs


pytestmark = pytest.mark.usefixtures('one_thread')  # two threads made these small models' forward passes 30x slower here


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in argv])
    return rc, err.getvalue()


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A run with tokenizer/, encode/ and base/: a small model pretrained on 32-token blocks for 40 steps."
    run = tmp_path_factory.mktemp('runs')/'tiny'
    write_jsonl(make_conversations(), run/'clean'/'conversations.jsonl')
    for argv in (['tokenizer', '--run', run, '--vocab-size', '300'], ['encode', '--run', run],
                 ['pretrain', '--run', run, '--preset', 'd2', '--max-steps', '40', '--batch-size', '8', '--block-size', '32',
                  '--tokens-per-step', '256', '--lr', '0.01', '--precision', 'fp32', '--eval-every', '1000', '--save-every', '1000']):
        rc, err = run_cli(*argv)
        assert rc == 0, err
    return run


@pytest.fixture(scope='module')
def base(run):
    "The evaluation of the run's base model on the whole held-out split, from the command line."
    rc, err = run_cli('evaluate', '--run', run, '--max-tokens', '0', '--max-new-tokens', '12')
    assert rc == 0, err
    return load_json(run/'eval'/'base.json')


def naive_perplexity(model, ids, context, stride):
    "Perplexity the slow way: for each token, one forward pass over exactly its promised history; log-probs summed by hand."
    total, n = 0.0, 0
    for t in range(1, len(ids)):
        k = max(0, math.ceil((t - context + 1) / stride))  # the first window whose end reaches token t starts at k * stride
        x = torch.tensor([[int(i) for i in ids[k * stride:t]]])
        with torch.no_grad(): logp = F.log_softmax(model(input_ids=x).logits[0, -1].double(), dim=-1)
        total += -logp[int(ids[t])].item()
        n += 1
    return math.exp(total / n)


def peaked_random_model(vocab=61, ctx=24, seed=0):
    "A tiny random GPT whose predictions are far from uniform (large initial weights), so a wrong sum shows."
    torch.manual_seed(seed)
    m = make_model('micro', vocab, n_positions=ctx, n_layer=2, n_head=2, n_embd=32, initializer_range=0.5)
    return m.eval()


@pytest.mark.parametrize('n,context,stride', [(120, 24, 7), (120, 24, 23), (120, 24, 1), (15, 24, 12)])
def test_perplexity_agrees_with_a_second_computation(n, context, stride):
    model = peaked_random_model()
    ids = np.random.default_rng(n + stride).integers(0, 61, n)
    fast = lm_metrics(token_nlls(model, ids, context=context, stride=stride, batch_size=5), 1)['perplexity']
    slow = naive_perplexity(model, ids, context, stride)
    assert abs(math.log(fast / 61)) > 1  # far from uniform guessing (perplexity 61): the check has teeth
    assert abs(fast / slow - 1) < 1e-4


def test_perplexity_agrees_with_a_second_computation_on_the_trained_model(run):
    model = AutoModelForCausalLM.from_pretrained(run/'base').eval()
    ids = load_tokens(run, 'val')[:150]
    fast = math.exp(token_nlls(model, ids, context=32, stride=10).mean())
    assert abs(fast / naive_perplexity(model, ids, 32, 10) - 1) < 1e-4


def test_nlls_do_not_depend_on_the_batch_size(run):
    model = AutoModelForCausalLM.from_pretrained(run/'base').eval()
    ids = load_tokens(run, 'val')[:800]
    ref = token_nlls(model, ids, context=32, stride=16, batch_size=1)
    for bs in (3, 8, 200):
        np.testing.assert_allclose(token_nlls(model, ids, context=32, stride=16, batch_size=bs), ref, rtol=1e-5, atol=1e-6)


def test_masked_nll_does_not_depend_on_the_batch_size():
    model = peaked_random_model()
    g = np.random.default_rng(0)
    examples = []
    for n in g.integers(3, 24, 13):
        ids = g.integers(0, 61, n).tolist()
        examples.append(dict(input_ids=ids, labels=[i if g.random() < 0.5 else -100 for i in ids]))
    ref_total, ref_n = masked_nll(model, examples, batch_size=1)
    hand = 0.0
    for e in examples:  # by hand: one example at a time, position t scores label t + 1
        with torch.no_grad(): logp = F.log_softmax(model(input_ids=torch.tensor([e['input_ids']])).logits[0].double(), -1)
        hand += -sum(logp[t, y].item() for t, y in enumerate(e['labels'][1:]) if y != -100)
    assert abs(ref_total / hand - 1) < 1e-5 and ref_n == sum(y != -100 for e in examples for y in e['labels'][1:])
    for bs in (4, 13):
        total, n = masked_nll(model, examples, batch_size=bs)
        assert n == ref_n and abs(total / ref_total - 1) < 1e-5


def test_the_stage_does_not_depend_on_the_batch_size(run, base):
    rc, err = run_cli('evaluate', '--run', run, '--max-tokens', '0', '--batch-size', '1', '--no-samples')
    assert rc == 0, err
    one = load_json(run/'eval'/'base.json')
    for part in ('held_out', 'assistant'):
        assert one[part]['tokens'] == base[part]['tokens']
        assert abs(one[part]['perplexity'] / base[part]['perplexity'] - 1) < 1e-5
    assert one['baselines'] == base['baselines'] and one['settings']['batch_size'] == 1 and one['samples'] == []


@given(n=st.integers(0, 300), context=st.integers(2, 70), data=st.data())
@settings(max_examples=200, deadline=None)
def test_windows_score_every_token_once_with_the_promised_history(n, context, data):
    stride = data.draw(st.integers(1, context - 1))
    spans = window_spans(n, context, stride)
    assert [t for _, e, f in spans for t in range(f, e)] == list(range(1, n))
    assert all(0 < e - b <= context and b < f for b, e, f in spans)
    assert all(f - b >= context - stride for b, e, f in spans[1:])


@given(st.lists(st.integers(0, 9), min_size=1, max_size=60), st.floats(0.05, 0.95))
@settings(max_examples=100, deadline=None)
def test_baselines_are_probability_distributions(train, discount):
    train, V = np.array(train), 12  # tokens 10 and 11 never occur in training
    bi = BigramLM(train, V, discount=discount)
    assert abs(UnigramLM(train, V).probs.sum() - 1) < 1e-12
    for a in range(V): assert abs(bi.prob(np.full(V, a), np.arange(V)).sum() - 1) < 1e-9
    assert np.all(np.isfinite(bi.nlls(np.array([11, 10, 3, 11]))))


def test_the_pretrained_model_beats_the_unigram_baseline(base):
    h, b = base['held_out'], base['baselines']
    assert h['perplexity'] < b['unigram']['perplexity'] < b['uniform']['perplexity']
    assert b['bigram']['perplexity'] < b['unigram']['perplexity']


def test_the_result_file(run, base):
    meta, tok = load_json(run/'encode'/'meta.json'), load_tokenizer(run)
    assert set(base) == set(EVAL_KEYS)
    assert base['split'] == 'val' and base['model']['name'] == 'base' and base['tokenizer']['format'] == 'ours'
    assert base['model']['context'] == base['settings']['context'] == 32  # the block size it was trained on, not its 256 positions
    assert base['settings']['stride'] == 16
    d = base['data']
    assert d['conversations'] == d['split_conversations'] == meta['conversations']['val']
    assert d['tokens'] == meta['tokens']['val'] and d['scored_tokens'] == d['tokens'] - 1 == base['held_out']['tokens']
    # the bytes are those of the turns' text: the decoded scored tokens, special tokens counting zero (with é and ✓, not ASCII)
    val = load_tokens(run, 'val')
    decoded = tok.decode([i for i in val[1:].tolist() if i not in tok.special.values()]).encode('utf-8')
    assert d['text_bytes'] == meta['text_bytes']['val'] == len(decoded) == base['held_out']['text_bytes']
    for r in (base['held_out'], *base['baselines'].values()):
        assert math.isclose(r['perplexity'], math.exp(r['loss']))
        assert math.isclose(r['bits_per_byte'], r['loss'] * r['tokens'] / math.log(2) / d['text_bytes'])
    assert math.isclose(base['baselines']['uniform']['perplexity'], meta['vocab_size'])
    a = base['assistant']
    assert a['conversations'] == d['conversations'] and 0 < a['tokens'] < d['scored_tokens'] and a['perplexity'] > 1
    assert [s['prompt'] for s in base['samples']] == PROMPTS
    assert all(isinstance(s['greedy'], str) and isinstance(s['sampled'], str) for s in base['samples'])
    assert load_json(run/'eval'/'args.json')['stage'] == 'evaluate'


def test_a_token_cap_keeps_whole_conversations_and_the_same_text_for_all(run, base):
    res = run_evaluate(str(run), 'base', max_tokens=500, samples=False)
    d = res['data']
    assert 1 <= d['conversations'] < base['data']['conversations'] and d['tokens'] <= 500
    convs = [json.loads(l) for l in (run/'clean'/'conversations.jsonl').read_text().splitlines()]
    first = [c for c in convs if c['split'] == 'val'][:d['conversations']]
    assert d['text_bytes'] == sum(len(t['text'].encode()) for c in first for t in c['turns'])
    assert res['assistant']['conversations'] == d['conversations']
    assert all(r['text_bytes'] == d['text_bytes'] for r in res['baselines'].values())


def foreign_folder(path, texts, template=None):
    "A random GPT-2 with a tokenizer unlike ours (its own BPE and special tokens), saved as a Hugging Face folder."
    t = Tokenizer(models.BPE())
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=['<s>', '</s>'],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=t, bos_token='<s>', eos_token='</s>', chat_template=template)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(hf), n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=hf.bos_token_id,
                               eos_token_id=hf.eos_token_id)).save_pretrained(path)
    hf.save_pretrained(path)
    return path


CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}</s>"
          "{% endgeneration %}{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")


@pytest.mark.parametrize('template,fmt', [(None, 'plain'), (CHATML, 'template')])
def test_any_hugging_face_model_folder(run, base, tmp_path, template, fmt):
    texts = [t['text'] for c in make_conversations() for t in c['turns']]
    folder = foreign_folder(tmp_path/'other-model', texts, template)
    rc, err = run_cli('evaluate', '--run', run, '--model', folder, '--max-tokens', '0', '--max-new-tokens', '5')
    assert rc == 0, err
    res = load_json(run/'eval'/'other-model.json')
    assert res['tokenizer']['format'] == fmt and res['model']['context'] == 64
    assert res['baselines'] == base['baselines']                    # the same conversations, so the same baselines
    assert res['data']['text_bytes'] == base['data']['text_bytes']  # and the same bytes: bits per byte compare
    assert res['data']['tokens'] != base['data']['tokens']          # though its tokenizer cuts them differently
    assert 0 < res['held_out']['bits_per_byte'] and res['held_out']['perplexity'] > 1
    assert (res['assistant'] is None) == (template is None)
    assert len(res['samples']) == len(PROMPTS)


@pytest.mark.parametrize('argv,message', [
    (['--model', 'sft'], 'sft/config.json not found: run `chatgpt-train finetune'),
    (['--model', '/nonexistent/folder'], 'is not a model folder'),
    (['--stride', '32'], 'stride must be between 1 and context - 1 = 31'),
    (['--context', '999'], "model's context length"),
    (['--max-tokens', '-1'], '--max-tokens must be 0'),
    (['--selection-items', '-1'], '--selection-items must be 0 (skip) or more'),
])
def test_mistakes_are_explained(run, argv, message):
    rc, err = run_cli('evaluate', '--run', run, *argv)
    assert rc == 2 and message in err, err


def test_stale_token_files_are_caught(run, tmp_path):
    other = tmp_path/'stale'
    for d in ('tokenizer', 'encode', 'base'):
        (other/d).mkdir(parents=True)
        for f in (run/d).iterdir():
            if f.is_file(): (other/d/f.name).write_bytes(f.read_bytes())
    write_jsonl(make_conversations(200, seed=1), other/'clean'/'conversations.jsonl')  # cleaned again after encoding
    rc, err = run_cli('evaluate', '--run', other)
    assert rc == 2 and 'rerun `chatgpt-train encode' in err, err
    write_jsonl([dict(c, split='train') for c in make_conversations(20)], other/'clean'/'conversations.jsonl')
    rc, err = run_cli('evaluate', '--run', other)
    assert rc == 2 and 'no held-out conversations' in err, err


def test_reply_metrics(run, base):
    "Response selection and generated-reply statistics on the held-out chats (details and exact cases in test_replies.py)."
    r = base['replies']
    assert r['sft_data'] is None and r['note'] is None  # no fine-tuning data in this run
    sel, gen = r['chitchat']['selection'], r['chitchat']['generated']
    assert sel['items'] == base['data']['conversations'] and sel['candidates'] == 10 and sel['chance'] == 0.1
    assert all(0 <= sel[k] <= 1 for k in ('loglik', 'pmi', 'bigram_loglik'))
    assert gen['replies'] == sel['items'] and gen['sampling']['temperature'] == 0 and gen['sampling']['max_new_tokens'] == 12
    assert all(0 <= gen[k] <= 1 for k in ('distinct_1', 'distinct_2', 'repeat_4gram', 'empty') if gen[k] is not None)
    assert base['seconds']['selection'] > 0 and base['seconds']['generated'] > 0
