"Encode stage: the command line end to end, token files that hold exactly their split, label masks, packing, resumable batches."
import contextlib, io, json, random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from chatgpt_train.cli import main
from chatgpt_train.jsonio import write_jsonl
from chatgpt_train.chat_format import encode_sft, encode_sft_windows
from chatgpt_train.encode import load_tokens
from chatgpt_train.encode import BlockSampler, pack_sft, pad_collate
from chatgpt_train.tokenizer import load_tokenizer, render_chat

WORDS = "hi hello how are you fine thanks what about weekend pizza 🍕 café 你好 ok sure lol <|end|> why".split()


def make_conversations(n=400, seed=0):
    "Synthetic conversations: random roles (system only first), random words, some long, a few with no answer."
    rng, convs = random.Random(seed), []
    for i in range(n):
        turns = [dict(role='system', text='Be nice.')] if rng.random() < 0.2 else []
        for j in range(rng.choice([1, 2, 2, 4, 6, 30])):
            turns.append(dict(role='user' if j % 2 == 0 else 'assistant', text=' '.join(rng.choices(WORDS, k=rng.randint(1, 25)))))
        convs.append(dict(id=str(i), source='test', turns=turns, meta={}, split='val' if i % 7 == 0 else 'train'))
    return convs


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(argv))
    return rc, err.getvalue()


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp('runs')/'tiny'
    write_jsonl(make_conversations(), run/'clean'/'conversations.jsonl')
    for argv in (['tokenizer', '--run', str(run), '--vocab-size', '600'], ['encode', '--run', str(run)]):
        rc, err = run_cli(*argv)
        assert rc == 0, err
    return run


@pytest.fixture(scope='module')
def tok(run): return load_tokenizer(run)


def test_bin_files_hold_exactly_the_tokens_of_their_split(run, tok):
    meta = json.loads((run/'encode'/'meta.json').read_text())
    convs = make_conversations()
    assert meta['dtype'] == 'uint16' and meta['vocab_size'] == len(tok) <= 600  # a tiny corpus runs out of pairs to merge
    for split in ('train', 'val'):
        part = [c for c in convs if c['split'] == split]
        data = load_tokens(run, split)
        assert data.dtype == np.uint16 and len(data) == meta['tokens'][split] == (run/'encode'/f'{split}.bin').stat().st_size // 2
        assert data.tolist() == [i for c in part for i in tok.encode_chat(c['turns'])]
        assert tok.decode(data.tolist()) == ''.join(render_chat(c['turns']) for c in part)
        assert meta['conversations'][split] == len(part) == int((data == tok.eot_id).sum())
        assert meta['text_bytes'][split] == sum(len(t['text'].encode()) for c in part for t in c['turns'])
    assert meta['special_tokens'] == {'<|endoftext|>': 0, '<|system|>': 1, '<|user|>': 2, '<|assistant|>': 3, '<|end|>': 4}
    assert json.loads((run/'encode'/'args.json').read_text())['args'] == dict(run=str(run))


def test_missing_inputs_are_one_line_errors(tmp_path):
    rc, err = run_cli('encode', '--run', str(tmp_path/'none'))
    assert rc == 2 and err.strip().count('\n') == 0 and 'clean/conversations.jsonl not found' in err
    write_jsonl(make_conversations(3), tmp_path/'r'/'clean'/'conversations.jsonl')
    rc, err = run_cli('encode', '--run', str(tmp_path/'r'))
    assert rc == 2 and 'tokenizer/tokenizer.json not found' in err and 'chatgpt-train tokenizer --run' in err


def assistant_token_mask(tok, turns):
    "1 on the tokens of assistant text and the <|end|> closing it, computed turn by turn, independently of encode_sft."
    mask = [0]
    for t in turns:
        ids = tok.encode(t['text'])
        mask += [0] + [int(t['role'] == 'assistant')] * (len(ids) + 1)
    return mask


def test_labels_are_masked_exactly_on_non_assistant_tokens(tok):
    checked = 0
    for c in make_conversations(200, seed=1):
        ex = encode_sft(c, tok, 10**6)
        if ex is None:
            assert all(t['role'] != 'assistant' for t in c['turns'])
            continue
        turns = c['turns'][:max(i for i, t in enumerate(c['turns']) if t['role'] == 'assistant') + 1]
        assert ex['input_ids'] == tok.encode_chat(turns)
        mask = assistant_token_mask(tok, turns)
        assert [int(l != -100) for l in ex['labels']] == mask
        assert all(l == i for i, l in zip(ex['input_ids'], ex['labels']) if l != -100)
        checked += 1
    assert checked > 100


def test_labels_match_the_transformers_assistant_mask(run, tok):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(run/'tokenizer')
    for c in make_conversations(100, seed=2):
        if any('<|' in t['text'] for t in c['turns']): continue  # transformers would parse that text as special tokens
        ex = encode_sft(c, tok, 10**6)
        if ex is None: continue
        msgs = [dict(role=t['role'], content=t['text']) for t in c['turns']]
        while msgs[-1]['role'] != 'assistant': msgs.pop()
        enc = hf.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
        assert enc['input_ids'] == ex['input_ids'] and enc['assistant_masks'] == [int(l != -100) for l in ex['labels']]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(['user', 'assistant']), st.text(max_size=40)), max_size=12), st.integers(8, 120))
def test_truncation_keeps_whole_turns_and_windows_train_each_answer_once(tok, pairs, max_len):
    turns = [dict(role=r, text=t) for r, t in pairs]
    ex = encode_sft(turns, tok, max_len)
    if ex is not None:
        assert len(ex['input_ids']) <= max_len
        kept = next(k for k in range(len(turns), 0, -1) if tok.encode_chat(turns[:k]) == ex['input_ids'])  # a whole-turn prefix
        assert turns[kept - 1]['role'] == 'assistant'
    wins = encode_sft_windows(turns, tok, max_len)
    assert all(len(w['input_ids']) <= max_len for w in wins)
    trained = [tok.decode([i for i, l in zip(w['input_ids'], w['labels']) if l != -100]) for w in wins]
    fits = [t['text'] + '<|end|>' for t in turns if t['role'] == 'assistant' and len(tok.encode(t['text'])) + 3 <= max_len]
    assert ''.join(trained) == ''.join(fits)  # every answer that fits a window alone is trained exactly once, in order


def test_packing_keeps_labels_and_restarts_positions(tok):
    exs = [e for c in make_conversations(300, seed=3) for e in encode_sft_windows(c, tok, 128)]
    rows = pack_sft(exs, 128, tok.pad_id)
    assert all(len(r['input_ids']) == len(r['labels']) == len(r['position_ids']) == 128 for r in rows)
    assert sorted(l for r in rows for l in r['labels'] if l != -100) == sorted(l for e in exs for l in e['labels'] if l != -100)
    # each example (and the padding) starts at position 0 with <|endoftext|> labelled -100: no example learns to predict the next one's start
    for r in rows:
        for i, p in enumerate(r['position_ids']):
            if p == 0: assert r['input_ids'][i] == tok.eot_id and r['labels'][i] == -100
    real = sum(len(e['input_ids']) for e in exs)
    assert real / (128 * len(rows)) > 0.9  # first fit, longest first, wastes little
    batch = pad_collate(rows[:4], tok.pad_id)
    assert set(batch) == {'input_ids', 'labels', 'position_ids'} and batch['input_ids'].shape == (4, 128)


def test_pad_collate_pads_to_the_longest(tok):
    exs = [encode_sft([dict(role='user', text='hi'), dict(role='assistant', text='hello ' * n)], tok, 512) for n in (1, 5, 3)]
    b = pad_collate(exs, tok.pad_id)
    T = max(len(e['input_ids']) for e in exs)
    assert b['input_ids'].shape == b['labels'].shape == b['attention_mask'].shape == (3, T)
    assert b['attention_mask'].sum().item() == sum(len(e['input_ids']) for e in exs)
    assert (b['labels'][b['attention_mask'] == 0] == -100).all()


def test_sampler_resumes_exactly_from_a_json_state(run):
    train = load_tokens(run, 'train')
    a = BlockSampler(train, 16, 4, seed=7)
    for _ in range(a.steps_in_epoch() + 3): next(a)  # into the second epoch
    state = json.loads(json.dumps(a.state_dict()))  # the checkpoint stores it as JSON
    expected = [next(a) for _ in range(2 * a.steps_in_epoch())]
    b = BlockSampler(load_tokens(run, 'train'), 16, 4)
    b.load_state_dict(state)
    for ba, bb in zip(expected, (next(b) for _ in expected)):
        assert torch.equal(ba['input_ids'], bb['input_ids'])


def test_sampler_epoch_covers_every_block_once_and_ranks_partition_it(run):
    train = load_tokens(run, 'train')
    whole = BlockSampler(train, 16, 4, seed=1)
    ranks = [BlockSampler(train, 16, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].steps_in_epoch() == whole.steps_in_epoch()
    rows = []
    for _ in range(whole.steps_in_epoch()):
        x = next(whole)['input_ids']
        assert torch.equal(torch.cat([next(r)['input_ids'] for r in ranks]), x)
        rows += [tuple(row.tolist()) for row in x]
    starts = whole.epoch_starts(0)
    assert len(set(starts.tolist())) == len(starts) and np.all(np.diff(np.sort(starts)) == 15)  # rows of 16 share an edge token
    assert len(rows) == whole.steps_in_epoch() * 4
