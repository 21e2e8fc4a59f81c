"""Preference pairs read from files, folders and Hugging Face datasets: every format with good and broken records mixed.

Each format test writes one file in which every record is either good (its id must come out as a pair) or broken in a known
way (it must come out quarantined at its line, with its kind and a reason naming the field at fault).
"""
import json, os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # belt and braces: the tests also forbid sockets while loading datasets

import pandas as pd
import pytest

from chatgpt_train.core import UserError
from chatgpt_train.preferences import PREFERENCE_KEYS, load_preferences, read_preferences, split_preferences, write_preferences

HH = '\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: {}'


def msgs(*texts, key='content'):
    "Messages alternating user and assistant, starting with the user."
    return [{'role': ('user', 'assistant')[i % 2], key: t} for i, t in enumerate(texts)]


def check(path, cases, **kw):
    """Write `cases` ((record, expected) pairs) as JSON Lines at `path` and read them back.

    `expected` is a pair's id, or (kind, words) for a record that must be quarantined at its line with a reason holding `words`."""
    path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r, _ in cases), encoding='utf-8')
    pairs, quarantined = read_preferences(path, **kw)
    assert len(pairs) + len(quarantined) == len(cases)  # nothing vanishes
    want_pairs = [e for _, e in cases if isinstance(e, str)]
    want_bad = [(f'{path}:{i}', *e) for i, (_, e) in enumerate(cases, 1) if not isinstance(e, str)]
    assert [p['id'] for p in pairs] == want_pairs
    assert [(q['source'], q['kind']) for q in quarantined] == [(s, k) for s, k, _ in want_bad]
    for q, (_, _, words) in zip(quarantined, want_bad): assert words in q['reason'], (q['reason'], words)
    for p in pairs:  # the schema, exactly
        assert tuple(p) == PREFERENCE_KEYS and p['prompt'][-1]['role'] == 'user' and p['chosen'] != p['rejected']
        assert p['source'].startswith(f'{path}:') and p['reason'] == f'from {path}'
        for t in p['prompt']: assert set(t) == {'role', 'text'} and t['text'].strip()
    return pairs, quarantined


def test_strings(tmp_path):
    pairs, quarantined = check(tmp_path/'strings.jsonl', [
        ({'id': 's1', 'prompt': 'What is 2+2?', 'chosen': '4.', 'rejected': '5.'}, 's1'),
        ({'prompt': 'What is 2+2?', 'chosen': '4.'}, ('missing-field', 'no rejected')),
        ({'prompt': 'What is 2+2?', 'rejected': '5.'}, ('missing-field', 'no chosen')),
        ({'chosen': '4.', 'rejected': '5.'}, ('missing-field', 'no prompt')),
        ({'prompt': 'What is 2+2?', 'chosen': '4.', 'rejected': ' '}, ('empty-text', 'rejected: empty text')),
        ({'prompt': '', 'chosen': '4.', 'rejected': '5.'}, ('empty-text', 'prompt turn 1: empty text')),
        ({'prompt': 'What is 2+2?', 'chosen': '4.', 'rejected': '4. '}, ('same-replies', 'chosen and rejected are the same')),
        ({'prompt': 'What is 2+2?', 'chosen': 4, 'rejected': '5.'}, ('wrong-type', 'chosen is a number')),
        ({'prompt': 2, 'chosen': '4.', 'rejected': '5.'}, ('wrong-type', 'prompt is a number')),
        ({'id': ['x'], 'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}, ('wrong-type', 'id is a list')),
        (['What is 2+2?', '4.', '5.'], ('wrong-type', 'not an object')),
        ('{"prompt": "a", "chosen": ', ('bad-json', 'not valid JSON')),
        ({'id': 's1', 'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}, ('duplicate-id', "'s1' is already used")),
        ({'prompt': 'Why?', 'chosen': 'Because.', 'rejected': 'No.'}, f"{tmp_path/'strings.jsonl'}:14"),
    ])
    assert pairs[0]['prompt'] == [{'role': 'user', 'text': 'What is 2+2?'}] and (pairs[0]['chosen'], pairs[0]['rejected']) == ('4.', '5.')
    assert json.loads(quarantined[0]['record']) == {'prompt': 'What is 2+2?', 'chosen': '4.'}  # the record itself, to fix


def test_messages(tmp_path):
    pairs, _ = check(tmp_path/'messages.jsonl', [
        ({'id': 'm1', 'prompt': msgs('What is 2+2?'), 'chosen': msgs('', '4.')[1:], 'rejected': msgs('', '5.')[1:]}, 'm1'),
        ({'id': 'm2', 'prompt': msgs('hi', key='text'), 'chosen': 'Hello!', 'rejected': [{'role': 'gpt', 'content': 'Go away.'}]}, 'm2'),
        ({'id': 'm3', 'prompt': 'What is 2+2?', 'chosen': msgs('What is 2+2?', '4.'), 'rejected': msgs('What is 2+2?', '5.')}, 'm3'),  # UltraFeedback
        ({'prompt': [{'role': 'robot', 'content': 'hi'}], 'chosen': '4.', 'rejected': '5.'}, ('unknown-role', "prompt message 1: role 'robot'")),
        ({'prompt': [{'content': 'hi'}], 'chosen': '4.', 'rejected': '5.'}, ('missing-field', 'prompt message 1: no role')),
        ({'prompt': msgs('hi', 'Hello!'), 'chosen': '4.', 'rejected': '5.'}, ('prompt-end', "ends with the assistant's turn")),
        ({'prompt': msgs('hi'), 'chosen': msgs('hi'), 'rejected': '5.'}, ('not-assistant', "chosen: the last turn is the user's")),
        ({'prompt': msgs('hi'), 'chosen': [], 'rejected': '5.'}, ('empty-text', 'chosen: no messages')),
        ({'prompt': msgs('hi'), 'chosen': ['4.'], 'rejected': '5.'}, ('wrong-type', 'chosen message 1 is a string, not an object')),
        ({'prompt': msgs('hi'), 'chosen': msgs('', '')[1:], 'rejected': '5.'}, ('empty-text', 'chosen: empty text')),
        ({'prompt': 'Other?', 'chosen': msgs('hi', '4.'), 'rejected': msgs('hi', '5.')}, ('different-prompts', 'do not start with the prompt')),
    ])
    assert [p['prompt'] for p in pairs] == [[{'role': 'user', 'text': 'What is 2+2?'}], [{'role': 'user', 'text': 'hi'}],
                                            [{'role': 'user', 'text': 'What is 2+2?'}]]
    assert pairs[1]['rejected'] == 'Go away.' and pairs[2]['chosen'] == '4.'


def test_implicit_prompt(tmp_path):
    system = [{'role': 'system', 'content': 'Be brief.'}]
    pairs, _ = check(tmp_path/'implicit.jsonl', [
        ({'id': 'i1', 'chosen': msgs('What is 2+2?', '4.'), 'rejected': msgs('What is 2+2?', '5.')}, 'i1'),
        ({'id': 'i2', 'chosen': system + msgs('hi', 'Hello!', 'And 3+3?', '6.'), 'rejected': system + msgs('hi', 'Hello!', 'And 3+3?', '7.')}, 'i2'),
        ({'chosen': msgs('hi', '4.'), 'rejected': msgs('hey', '5.')}, ('different-prompts', 'differ at turn 1')),
        ({'chosen': msgs('hi', 'a', 'b', 'c'), 'rejected': msgs('hi', 'd')}, ('different-prompts', 'chosen has 4 turns and rejected 2')),
        ({'chosen': msgs('hi', '4.'), 'rejected': msgs('hi', '4.')}, ('same-replies', 'same reply')),
        ({'chosen': msgs('hi', '4.')}, ('missing-field', 'no rejected')),
        ({'chosen': msgs('hi', '4.'), 'rejected': {'role': 'assistant', 'content': '5.'}}, ('wrong-type', 'rejected is an object')),
    ])
    assert [t['role'] for t in pairs[1]['prompt']] == ['system', 'user', 'assistant', 'user']
    assert (pairs[1]['chosen'], pairs[1]['rejected']) == ('6.', '7.')


def test_hh_transcripts(tmp_path):
    pairs, _ = check(tmp_path/'hh.jsonl', [
        ({'chosen': HH.format('6.'), 'rejected': HH.format('Seven.')}, f"{tmp_path/'hh.jsonl'}:1"),
        ({'chosen': HH.format('6.'), 'rejected': HH.replace('3+3', '4+4').format('8.')}, ('different-prompts', 'differ at turn 3')),
        ({'chosen': HH.format(''), 'rejected': HH.format('6.')}, ('empty-text', 'chosen: empty text')),
        ({'chosen': HH.format('6.'), 'rejected': HH.format('6.')}, ('same-replies', 'same reply')),
        ({'chosen': HH.format('6.') + '\n\nHuman: thanks', 'rejected': HH.format('7.')}, ('not-assistant', "chosen: the last turn is the user's")),
        ({'chosen': HH.format('6.')}, ('missing-field', 'no rejected')),
    ])
    assert [t['text'] for t in pairs[0]['prompt']] == ['What is 2+2?', '4.', 'And 3+3?'] and pairs[0]['chosen'] == '6.'


def test_json_array(tmp_path):
    path = tmp_path/'prefs.json'
    path.write_text(json.dumps([{'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}, {'prompt': 'a', 'chosen': 'b'},
                                {'prompt': 'x', 'chosen': 'y', 'rejected': 'z'}]))  # one line: the ids are the indices
    pairs, quarantined = read_preferences(path)
    assert [p['id'] for p in pairs] == [f'{path}[0]', f'{path}[2]']
    assert [(q['source'], q['kind']) for q in quarantined] == [(f'{path}:1', 'missing-field')] and 'no rejected' in quarantined[0]['reason']


def test_csv(tmp_path):
    path = tmp_path/'prefs.csv'
    path.write_text('prompt,chosen,rejected\n"What is 2+2?",4.,5.\n"Say hi\non two lines",Hi!,Go away.\nHi,Hello!,Hello!\n'
                    ',a,b\nq,a,\n"one,two",only\n', encoding='utf-8')
    pairs, quarantined = read_preferences(path)
    assert len(pairs) + len(quarantined) == 6
    assert [p['id'] for p in pairs] == [f'{path}:2', f'{path}:3'] and pairs[1]['prompt'][0]['text'] == 'Say hi\non two lines'
    assert [(q['source'], q['kind']) for q in quarantined] == [(f'{path}:5', 'same-replies'), (f'{path}:6', 'empty-text'),
                                                            (f'{path}:7', 'empty-text'), (f'{path}:8', 'bad-row')]
    assert 'prompt turn 1' in quarantined[1]['reason'] and 'rejected' in quarantined[2]['reason']
    hh = tmp_path/'hh.csv'  # only chosen and rejected columns: transcripts
    pd.DataFrame({'chosen': [HH.format('6.')], 'rejected': [HH.format('7.')]}).to_csv(hh, index=False)
    pairs, quarantined = read_preferences(hh)
    assert (pairs[0]['chosen'], len(pairs[0]['prompt']), quarantined) == ('6.', 3, [])


def test_folder(tmp_path):
    data = tmp_path/'data'
    (data/'sub').mkdir(parents=True)
    (data/'a.jsonl').write_text(json.dumps({'id': 'a1', 'prompt': 'a', 'chosen': 'b', 'rejected': 'c'}) + '\nnot json\n')
    pd.DataFrame({'id': ['p1', 'p2'], 'prompt': ['q', 'r'], 'chosen': ['yes', 'same'], 'rejected': ['no', 'same']}).to_parquet(data/'sub'/'b.parquet')
    (data/'sub'/'c.csv').write_text('id,prompt,chosen,rejected\na1,x,y,z\nc2,x,y,z\n')
    (data/'notes.md').write_text('# not data\n')
    (data/'.hidden.jsonl').write_text('not read\n')
    pairs, quarantined = read_preferences(data)
    assert [p['id'] for p in pairs] == ['a1', 'p1', 'c2']
    assert pairs[1]['source'] == f"{data/'sub'/'b.parquet'}:0"
    assert [(q['source'], q['kind']) for q in quarantined] == [
        (f"{data/'a.jsonl'}:2", 'bad-json'), (str(data/'notes.md'), 'unknown-file'),
        (f"{data/'sub'/'b.parquet'}:1", 'same-replies'), (f"{data/'sub'/'c.csv'}:2", 'duplicate-id')]
    assert f"{data/'a.jsonl'}:1" in quarantined[-1]['reason']  # the duplicate names the first


def test_hf_offline(tmp_path, no_network):
    ds = tmp_path/'my_prefs'  # the implicit-prompt format, as on the Hub, in a train and a test split
    ds.mkdir()
    rows = [(msgs('hi', 'Hello!'), msgs('hi', 'Go away.')), (msgs('hi', 'Hello!'), msgs('hi', 'Hello!')), (msgs('hi', 'Hello!'), msgs('hey', 'Hi.'))]
    (ds/'train.jsonl').write_text(''.join(json.dumps({'chosen': c, 'rejected': r}) + '\n' for c, r in rows))
    (ds/'test.jsonl').write_text(json.dumps({'chosen': msgs('bye', 'Bye!'), 'rejected': msgs('bye', 'No.')}) + '\n')
    for streaming in (False, True):
        pairs, quarantined = read_preferences(f'hf:{ds}', streaming=streaming)
        assert [(p['id'], p['source'], p['reason']) for p in pairs] == [(f'hf:{ds}:0', f'hf:{ds}', f'from hf:{ds}')]
        assert [(q['source'], q['kind']) for q in quarantined] == [(f'hf:{ds}:1', 'same-replies'), (f'hf:{ds}:2', 'different-prompts')]
    pairs, _ = read_preferences(f'hf:{ds}', hf_split='test')
    assert pairs[0]['chosen'] == 'Bye!'

    pq = tmp_path/'pq_prefs'  # a Parquet dataset of strings
    pq.mkdir()
    pd.DataFrame({'prompt': ['2+2?', 'Why?'], 'chosen': ['4', None], 'rejected': ['5', 'No.']}).to_parquet(pq/'train.parquet')
    pairs, quarantined = read_preferences(f'hf:{pq}', streaming=True)
    assert [p['chosen'] for p in pairs] == ['4'] and [(q['kind'], q['reason'].split(':')[0]) for q in quarantined] == [('missing-field', 'no chosen')]
    with pytest.raises(UserError, match='cannot load Hugging Face dataset'): read_preferences(f"hf:{tmp_path/'no_such_dataset'}")


def test_missing_and_unreadable(tmp_path):
    for src, words in [(tmp_path/'missing.jsonl', 'missing.jsonl not found'), (tmp_path/'missing.csv', 'missing.csv not found'),
                       ('hf:', 'needs a dataset name')]:
        with pytest.raises(UserError, match=words): read_preferences(src)
    (tmp_path/'data.xml').write_text('<x/>')
    with pytest.raises(UserError, match='data.xml: unknown kind of file'): read_preferences(tmp_path/'data.xml')
    (tmp_path/'empty').mkdir()
    with pytest.raises(UserError, match='no preference files'): read_preferences(tmp_path/'empty')


def test_write_load_split(tmp_path):
    pairs = [dict(id=f'p{i}', prompt=[{'role': 'user', 'text': f'Question {i // 3}'}], chosen='good', rejected=f'bad {i}',
                  source='demo', reason='from demo') for i in range(300)]
    assert write_preferences(pairs, tmp_path/'align'/'pairs.jsonl') == 300
    assert load_preferences(tmp_path/'align'/'pairs.jsonl') == pairs
    with pytest.raises(UserError, match='nothing.jsonl not found'): load_preferences(tmp_path/'nothing.jsonl')
    (tmp_path/'bad.jsonl').write_text(json.dumps(pairs[0]) + '\n' + json.dumps({**pairs[1], 'rejected': 'good'}) + '\n')
    with pytest.raises(UserError, match=r'bad.jsonl:2: not a preference pair \(chosen and rejected are the same'): load_preferences(tmp_path/'bad.jsonl')
    train, val = split_preferences(pairs, 0.2, seed=3)
    assert len(train) + len(val) == 300 and 30 <= len(val) <= 90
    assert not {p['prompt'][0]['text'] for p in train} & {p['prompt'][0]['text'] for p in val}  # a prompt's pairs stay together
    assert split_preferences(list(reversed(pairs)), 0.2, seed=3)[1] == list(reversed(val))  # fixed by the prompt, not the order
    assert split_preferences(pairs, 0.2, seed=4)[1] != val
