"""The collect stage end to end: every input format with good and broken records mixed, the command line, Hugging Face offline.

Each format test writes a file in which every record is either good (its id must come out in conversations.jsonl) or broken
in a known way (it must come out in quarantine.jsonl at its line, with its kind), then runs `chatgpt-train collect` on it.
"""
import json, os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # belt and braces: the tests also forbid sockets while loading datasets

from pathlib import Path

import pandas as pd

from chatgpt_train.cli import main
from chatgpt_train.core import get_logger
from chatgpt_train.conversation import RAW_CHARS, load_conversations
from chatgpt_train.collect import conversations_dataset, row_to_conversation, run_collect
from chatgpt_train.readers import hf_items

get_logger('collect')  # bind the log's stderr handler now, so progress lines never land in a test's captured stderr

LIMIT = 50  # --max-turn-chars in these tests, so "too long" records stay small
LONG = 'x' * (LIMIT + 1)


def collect(tmp_path, source, *flags, name='run'):
    "Run `chatgpt-train collect` on `source`; return (kept conversations, quarantine entries, report)."
    run = tmp_path/name
    assert main(['collect', '--run', str(run), '--source', str(source), '--max-turn-chars', str(LIMIT), *flags]) == 0
    folder = run/'collect'
    kept = [json.loads(l) for l in (folder/'conversations.jsonl').read_text(encoding='utf-8').splitlines()]
    quarantine = [json.loads(l) for l in (folder/'quarantine.jsonl').read_text(encoding='utf-8').splitlines()]
    report = json.loads((folder/'report.json').read_text())
    assert report['read'] == report['kept'] + report['quarantined']
    for s in report['sources'].values(): assert s['read'] == s['kept'] + s['quarantined']
    assert json.loads((folder/'args.json').read_text())['args']['source'] == str(source)
    for c in kept:  # the schema, exactly
        assert set(c) == {'id', 'source', 'turns', 'meta'} and isinstance(c['meta'], dict) and c['turns']
        for t in c['turns']: assert set(t) == {'role', 'text'} and t['role'] in ('user', 'assistant', 'system') and t['text'].strip()
    return kept, quarantine, report


def write_lines(path, lines):
    "Write `lines` (str or bytes) one a line; return each line's number."
    data = [l if isinstance(l, bytes) else l.encode() for l in lines]
    path.write_bytes(b'\n'.join(data) + b'\n')
    return list(range(1, len(lines) + 1))


def turns(*texts, roles=('user', 'assistant')):
    return [{'role': roles[i % 2], 'text': t} for i, t in enumerate(texts)]


# Records in every shape `record_to_conversation` knows, and every way a record can be broken. (text, expected): the
# expected value is 'keep' or the quarantine kind.
RECORDS = [
    (json.dumps({'id': 'ours', 'turns': turns('hi', 'hello'), 'meta': {'k': 1}}), 'keep'),
    (json.dumps({'id': 'openai', 'messages': [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'},
                                              {'role': 'assistant', 'content': 'hello'}]}), 'keep'),
    (json.dumps({'id': 'sharegpt', 'conversations': [{'from': 'human', 'value': 'hi'}, {'from': 'gpt', 'value': 'hello'}]}), 'keep'),
    (json.dumps({'id': 'pair', 'prompt': 'hi', 'response': 'hello', 'score': 3}), 'keep'),
    (json.dumps({'id': 'chitchat', 'messages': [[{'text': 'hi', 'sender': 'a'}, {'text': 'you', 'sender': 'a'}],
                                                [{'text': 'hello', 'sender': 'b'}]], 'prompt': 'Say hi'}), 'keep'),
    (json.dumps({'id': 'dialog', 'dialog': ['hi', 'hello', 'bye']}), 'keep'),
    ('{"id": "badjson", "turns": [', 'bad-json'),
    (json.dumps({'id': 'missing', 'turns': [{'role': 'user'}]}), 'missing-field'),
    (json.dumps({'id': 'wrongtype', 'turns': [{'role': 'user', 'text': 5}]}), 'wrong-type'),
    (json.dumps({'id': 'notalist', 'messages': 'hi'}), 'wrong-type'),
    (json.dumps({'id': 'empty', 'messages': [{'role': 'user', 'content': '  '}]}), 'empty-text'),
    (b'{"id": "bytes", "prompt": "caf\xe9", "response": "ok"}', 'invalid-utf8'),
    (json.dumps({'id': 'escaped', 'prompt': 'a\udc80b', 'response': 'ok'}), 'invalid-utf8'),  # a lone surrogate escaped in JSON
    (json.dumps({'id': 'long', 'prompt': LONG, 'response': 'ok'}), 'too-long'),
    (json.dumps({'id': 'role', 'conversations': [{'from': 'narrator', 'value': 'x'}]}), 'unknown-role'),
    (json.dumps({'id': 'ours', 'dialog': ['a', 'b']}), 'duplicate-id'),
    (json.dumps({'id': 'shape', 'title': 'x'}), 'unknown-shape'),
    ('[1, 2]', 'wrong-type'),
]
GOOD_IDS = [json.loads(t)['id'] for t, e in RECORDS if e == 'keep']


def check(kept, quarantine, expected_ids, expected_bad):
    "Every good record kept, in order; every bad one quarantined at its place with its kind."
    assert [c['id'] for c in kept] == expected_ids
    assert [(q.get('line', q.get('row')), q['kind']) for q in quarantine] == expected_bad
    for q in quarantine: assert q['reason'] and 'raw' in q and q['file']


def test_jsonl(tmp_path):
    lines = []
    for text, _ in RECORDS: lines += [text, '']  # blank lines are not records
    path = tmp_path/'mixed.jsonl'
    write_lines(path, lines)
    kept, quarantine, report = collect(tmp_path, path)
    check(kept, quarantine, GOOD_IDS, [(2 * i + 1, e) for i, (_, e) in enumerate(RECORDS) if e != 'keep'])
    assert report['read'] == len(RECORDS) and report['kept'] == len(GOOD_IDS)
    by_id = {c['id']: c for c in kept}
    assert by_id['ours'] == {'id': 'ours', 'source': str(path), 'turns': turns('hi', 'hello'), 'meta': {'k': 1}}
    assert by_id['openai']['turns'] == [{'role': 'system', 'text': 'be brief'}] + turns('hi', 'hello')
    assert by_id['pair']['meta'] == {'score': 3}
    assert by_id['chitchat']['turns'] == turns('hi\nyou', 'hello') and by_id['chitchat']['meta'] == {'prompt': 'Say hi'}
    assert by_id['dialog']['turns'] == turns('hi', 'hello', 'bye')
    q = {e['raw'][:14]: e for e in quarantine}
    assert 'caf\\xe9' in q['{"id": "bytes"']['raw']  # invalid bytes shown, not lost
    assert 'turn 1: no text' in q['{"id": "missin']['reason']
    assert report['sources'][str(path)]['reasons']['invalid-utf8'] == 2


def test_json_array_and_object(tmp_path):
    good = [t for t, e in RECORDS if e == 'keep']
    bad = [(t, e) for t, e in RECORDS if e not in ('keep', 'bad-json', 'duplicate-id')]
    body = [b'['] + [(t if isinstance(t, bytes) else t.encode()) + b',' for t, _ in [(g, 'keep') for g in good] + bad]
    body += [b'{"id": "broken" "turns": []},', b'{"id": "after", "dialog": ["never read"]}', b']']
    path = tmp_path/'array.json'
    path.write_bytes(b'\n'.join(body))
    kept, quarantine, _ = collect(tmp_path, path)
    n = len(good) + len(bad)
    check(kept, quarantine, GOOD_IDS, [(i + 2, e) for i, (_, e) in enumerate(bad, len(good))] + [(n + 2, 'bad-json')])
    assert 'the rest of the file cannot be read' in quarantine[-1]['reason']
    assert quarantine[0]['index'] == len(good)

    # an object of records keyed by id, chitchat's form: the key is the id
    records = {'c1': {'messages': [[{'text': 'hi', 'sender': 'a'}], [{'text': '', 'sender': 'b'}], [{'text': 'more', 'sender': 'a'}]]},
               'c2': {'messages': [[{'text': 'hi', 'sender': 'a'}], [{'text': 'yo', 'sender': 7, 'extra': 1}]], 'ratings': {'witty': 3}},
               'c3': {'messages': [[{'text': 'hi'}]]},
               'c4': {'messages': [[{'text': 'hi', 'sender': 'a'}], ['not a message']]},
               'c5': 'not a record',
               'c6': {'messages': [[{'text': '', 'sender': 'a'}]]}}
    path = tmp_path/'keyed.json'
    path.write_text('{\n' + ',\n'.join(f'{json.dumps(k)}: {json.dumps(v)}' for k, v in records.items()) + '\n}\n')
    kept, quarantine, report = collect(tmp_path, path, name='keyed')
    check(kept, quarantine, ['c1', 'c2'], [(4, 'missing-field'), (5, 'wrong-type'), (6, 'wrong-type'), (7, 'empty-text')])
    assert [q['key'] for q in quarantine] == ['c3', 'c4', 'c5', 'c6']
    assert kept[0]['turns'] == turns('hi\nmore') and kept[0]['meta'] == {'empty_messages': 1}  # the empty message merged its neighbours
    assert kept[1]['meta'] == {'ratings': {'witty': 3}} and report['sources'][str(path)]['empty_messages'] == 1


def test_csv_prompt_response(tmp_path):
    path = tmp_path/'qa.csv'
    path.write_bytes(b'\n'.join([
        b'id,Prompt,Response,topic',
        b'q1,What is 2+2?,4,math',                 # 2 keep
        b'q2,"Two lines,\nwith a comma",Yes.,',    # 3-4 keep (a quoted cell spans lines)
        b'q3,Anyone?,,chat',                       # 5 empty response
        b'q4,' + LONG.encode() + b',x,',           # 6 too long
        b'q5,caf\xe9,ok,',                         # 7 invalid UTF-8
        b'q6,a,b,c,d',                             # 8 a cell too many
        b'q7,short row',                           # 9 a cell too few
        b'',                                       # blank: not a record
        b',no id here,fine,',                      # 11 keep, with the file and line as id
        b'q1,again,dup,',                          # 12 duplicate id
    ]) + b'\n')
    kept, quarantine, _ = collect(tmp_path, path)
    check(kept, quarantine, ['q1', 'q2', f'{path}:11'],
          [(5, 'empty-text'), (6, 'too-long'), (7, 'invalid-utf8'), (8, 'bad-row'), (9, 'bad-row'), (12, 'duplicate-id')])
    assert kept[0]['meta'] == {'topic': 'math'} and kept[1]['turns'] == turns('Two lines,\nwith a comma', 'Yes.')


def test_csv_turn_per_row(tmp_path):
    path = tmp_path/'turns.csv'
    path.write_bytes(b'\n'.join([
        b'conversation_id,role,text,timestamp',
        b'a,user,hi,1',            # 2  a: good, rows interleaved with other conversations
        b'b,user,hello,2',         # 3  b: empty text at line 5
        b'a,assistant,hey,3',      # 4
        b'b,assistant,,4',         # 5
        b'c,user,caf\xe9,5',       # 6  c: invalid UTF-8
        b'd,user,ok,6',            # 7  d: a row with a cell missing at line 8
        b'd,assistant',            # 8
        b',user,no id,7',          # 9  no conversation id: quarantined alone
        b'e,user,' + LONG.encode() + b',8',  # 10 e: too long
        b'f,narrator,once,9',      # 11 f: speakers that are not roles alternate
        b'f,narrator,upon,10',     # 12
        b'f,listener,a time,11',   # 13
        b'g,,empty speaker,12',    # 14 g: a missing speaker
        b'a,user,bye,13',          # 15
    ]) + b'\n')
    kept, quarantine, _ = collect(tmp_path, path)
    check(kept, quarantine, ['a', 'f'], [(9, 'missing-field'), (5, 'empty-text'), (6, 'invalid-utf8'), (8, 'bad-row'),
                                        (10, 'too-long'), (14, 'missing-field')])
    assert kept[0]['turns'] == turns('hi', 'hey', 'bye') and kept[1]['turns'] == turns('once\nupon', 'a time')
    assert [q['conversation_id'] for q in quarantine[1:]] == ['b', 'c', 'd', 'e', 'g']

    path = tmp_path/'dialogs.tsv'  # TSV, and columns renamed on the command line
    path.write_text('Dialogue\tWho\tUtterance\n1\tann\thi\n1\tbob\tyo\n')
    kept, _, _ = collect(tmp_path, path, '--columns', 'conversation_id=dialogue,role=who,text=utterance', name='tsv')
    assert kept[0]['turns'] == turns('hi', 'yo')


def test_yaml(tmp_path):
    path = tmp_path/'bot.yml'
    path.write_bytes(b'\n'.join([
        b'categories:',
        b'- demo',
        b'conversations:',
        b'- - Do you agree?',      # 4 keep: "yes" stays text
        b'  - yes',
        b'- - What is 6 x 7?',     # 6 keep: "42" stays text
        b'  - 42',
        b'- just one line',        # 8 not a list
        b'- - a',                  # 9 a nested list as a turn
        b'  - - b',
        b'- - Hello',              # 11 a null turn
        b'  -',
        b'- - caf\xe9',            # 13 invalid UTF-8
        b'  - ok',
        b'- - ' + LONG.encode(),   # 15 too long
        b'- - Single turn',        # 16 keep
    ]) + b'\n')
    kept, quarantine, _ = collect(tmp_path, path)
    check(kept, quarantine, [f'{path}:4', f'{path}:6', f'{path}:16'],
          [(8, 'wrong-type'), (9, 'wrong-type'), (11, 'empty-text'), (13, 'invalid-utf8'), (15, 'too-long')])
    assert kept[0]['turns'] == turns('Do you agree?', 'yes') and kept[1]['turns'][1]['text'] == '42'
    assert kept[0]['meta'] == {'categories': ['demo']}

    bad = tmp_path/'broken.yaml'
    bad.write_text('conversations:\n- - a\n  - b\n- - "unclosed\n')
    (tmp_path/'both').mkdir()
    for p in (path, bad): (tmp_path/'both'/p.name).write_bytes(p.read_bytes())
    kept, quarantine, report = collect(tmp_path, tmp_path/'both', name='both')
    assert len(kept) == 3 and [q['kind'] for q in quarantine if q['file'].endswith('broken.yaml')] == ['bad-yaml']
    assert report['sources'][str(tmp_path/'both'/'broken.yaml')] == dict(read=1, kept=0, quarantined=1, conversations=0, turns=0,
                                                                          reasons={'bad-yaml': 1})


def test_text(tmp_path):
    path = tmp_path/'script.txt'
    path.write_bytes(b'\n'.join([
        b'ANN: Coffee?',                # 1 keep
        b'BOB: Yes.',
        b'BOB: Black.',
        b'It is 10:30 after all.',
        b'',
        b'',
        b'A line before any speaker',   # 7 no speaker
        b'ANN: hi',
        b'',
        b'User: What is RAG?',          # 10 empty turn
        b'Assistant:',
        b'',
        b'ann: caf\xe9',                # 13 invalid UTF-8
        b'bob: ok',
        b'',
        b'ann: ' + LONG.encode(),       # 16 too long
        b'',
        b'System: Be brief.',           # 18 keep, role names
        b'User: Hi',
        b'Assistant: Hello',
    ]) + b'\n')
    kept, quarantine, _ = collect(tmp_path, path)
    check(kept, quarantine, [f'{path}:1', f'{path}:18'], [(7, 'missing-field'), (10, 'empty-text'), (13, 'invalid-utf8'), (16, 'too-long')])
    assert kept[0]['turns'] == turns('Coffee?', 'Yes.\nBlack.\nIt is 10:30 after all.')
    assert kept[1]['turns'] == [{'role': 'system', 'text': 'Be brief.'}] + turns('Hi', 'Hello')


def test_parquet(tmp_path):
    rows = [
        ([{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}], 'p0'),  # keep
        ([{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': ''}], 'p1'),       # empty text
        (None, 'p2'),                                                                            # messages missing
        ([{'role': 'tool', 'content': '{}'}], 'p3'),                                             # unknown role
        ([{'role': 'user', 'content': LONG}], 'p4'),                                             # too long
        ([{'role': 'user', 'content': 'ok'}], 'p5'),                                             # keep
    ]
    path = tmp_path/'chats.parquet'
    pd.DataFrame({'messages': [m for m, _ in rows], 'id': [i for _, i in rows]}).to_parquet(path)
    kept, quarantine, _ = collect(tmp_path, path)
    check(kept, quarantine, ['p0', 'p5'], [(1, 'empty-text'), (2, 'wrong-type'), (3, 'unknown-role'), (4, 'too-long')])

    path = tmp_path/'turns.parquet'  # one turn a row, grouped by conversation
    pd.DataFrame({'dialog_id': [1, 1, 2, 2], 'speaker': ['human', 'gpt', 'human', 'gpt'], 'text': ['a', 'b', 'c', None]}).to_parquet(path)
    kept, quarantine, _ = collect(tmp_path, path, name='turns')
    check(kept, quarantine, ['1'], [(3, 'missing-field')])
    assert kept[0]['turns'] == turns('a', 'b')


def test_threads(tmp_path):
    # nested: c1 > (c2 > c4, c3); c3's reply c5 arrives flat on another line, c6 has no text, c7's parent is not in the file
    thread = {'id': 'c1', 'author': 'ann', 'text': 'Best topping?', 'replies': [
        {'id': 'c2', 'author': 'bob', 'text': 'Mushrooms.', 'replies': [{'id': 'c4', 'author': 'ann', 'text': 'Really?'}]},
        {'id': 'c3', 'author': 'cat', 'text': 'Pineapple.'}]}
    lines = [json.dumps(thread),                                                         # 1
             json.dumps({'id': 'c5', 'parent': 'c3', 'author': 'ann', 'text': 'No.'}),   # 2
             json.dumps({'id': 'c6', 'parent': 'c3', 'author': 'dan'}),                 # 3 no text
             json.dumps({'id': 'c7', 'parent': 'gone', 'author': 'eve', 'body': 'Late.'}),  # 4 orphan: a thread of its own
             '{"id": "c8", "parent": ',                                                   # 5 bad JSON
             json.dumps({'id': 'c9', 'parent': 'c10', 'text': 'loop'}),                  # 6 cycle
             json.dumps({'id': 'c10', 'parent': 'c9', 'text': 'loop'}),                  # 7 cycle
             json.dumps({'id': 'c11', 'text': 12}),                                       # 8 wrong type
             json.dumps({'id': 'c1', 'text': 'again'}),                                   # 9 duplicate id
             json.dumps({'id': 'c12', 'author': 'fay', 'text': 'caf\udce9'}),             # 10 invalid UTF-8
             json.dumps({'id': 'c13', 'author': 'gus', 'text': LONG, 'replies': [{'id': 'c14', 'author': 'hal', 'text': 'Hm.'}]})]  # 11
    path = tmp_path/'thread.jsonl'
    write_lines(path, lines)
    kept, quarantine, report = collect(tmp_path, path)
    check(kept, quarantine, ['c1/c4', 'c1/c5', 'c7', 'c14'],
          [(3, 'missing-field'), (5, 'bad-json'), (8, 'wrong-type'), (9, 'duplicate-id'), (10, 'invalid-utf8'), (11, 'too-long'),
           (6, 'cycle'), (7, 'cycle')])
    assert kept[0]['turns'] == turns('Best topping?', 'Mushrooms.', 'Really?')
    assert kept[1]['meta'] == {'thread': 'c1', 'comments': ['c1', 'c3', 'c5'], 'authors': ['ann', 'cat', 'ann']}
    assert [q['comment'] for q in quarantine if 'comment' in q] == ['c6', 'c11', 'c1', 'c12', 'c13', 'c9', 'c10']
    assert report['read'] == 15 and report['kept'] == 7 and report['conversations'] == 4  # counted in comments (and one bad line)

    # a chain of 5,000 replies, nested in JSON beyond Python's recursion limit, as a single JSON object
    depth = 5000
    text = ''.join(f'{{"author": "{"ab"[i % 2]}", "text": "t{i}", "children": [' for i in range(depth)) + ']}' * depth
    path = tmp_path/'deep.json'
    path.write_text(text)
    kept, quarantine, report = collect(tmp_path, path, name='deep')
    assert len(kept) == 1 and len(kept[0]['turns']) == depth and not quarantine and report['read'] == depth
    assert kept[0]['turns'][-1] == {'role': 'assistant', 'text': f't{depth - 1}'}


def test_folder(tmp_path):
    data = tmp_path/'data'
    (data/'sub').mkdir(parents=True)
    write_lines(data/'a.jsonl', [json.dumps({'id': 'a1', 'dialog': ['x', 'y']}), 'oops'])
    (data/'sub'/'b.csv').write_text('prompt,response\nq,a\n')
    (data/'sub'/'c.txt').write_text('A: hi\nB: yo\n')
    (data/'notes.md').write_text('# not data\n')
    (data/'.hidden.jsonl').write_text('not read\n')
    kept, quarantine, report = collect(tmp_path, data)
    assert [c['id'] for c in kept] == ['a1', f"{data/'sub'/'b.csv'}:2", f"{data/'sub'/'c.txt'}:1"]
    assert [(Path(q['file']).name, q['kind']) for q in quarantine] == [('a.jsonl', 'bad-json'), ('notes.md', 'unknown-file')]
    assert sorted(Path(s).name for s in report['sources']) == ['a.jsonl', 'b.csv', 'c.txt', 'notes.md']
    assert report['sources'][str(data/'notes.md')]['read'] == 0


def test_hf_offline(tmp_path, no_network):
    ds = tmp_path/'my_dataset'
    ds.mkdir()
    write_lines(ds/'train.jsonl', [json.dumps({'dialogue': ['Hi', 'Hello'], 'topic': 'greet'}),
                                   json.dumps({'dialogue': ['Bye', ''], 'topic': 'leave'}),
                                   json.dumps({'dialogue': ['Long', LONG], 'topic': 'long'})])
    write_lines(ds/'test.jsonl', [json.dumps({'dialogue': ['Test', 'split'], 'topic': 'test'})])
    for flags in ([], ['--streaming']):
        kept, quarantine, report = collect(tmp_path, f'hf:{ds}', '--columns', 'dialog=dialogue', *flags, name=f'hf{len(flags)}')
        assert [c['turns'] for c in kept] == [turns('Hi', 'Hello')] and kept[0]['meta'] == {'topic': 'greet'}
        assert kept[0]['source'] == f'hf:{ds}' and kept[0]['id'] == f'hf:{ds}:0'
        assert [(q['row'], q['kind'], q['split']) for q in quarantine] == [(1, 'empty-text', 'train'), (2, 'too-long', 'train')]
    kept, _, _ = collect(tmp_path, f'hf:{ds}', '--columns', 'dialog=dialogue', '--hf-split', 'test', name='hf_test')
    assert kept[0]['turns'] == turns('Test', 'split')

    pq = tmp_path/'pq_dataset'  # a Parquet dataset in the prompt/response layout, read through the function
    pq.mkdir()
    pd.DataFrame({'question': ['2+2?', 'Why?'], 'answer': ['4', None]}).to_parquet(pq/'train.parquet')
    items = list(hf_items(str(pq), columns={'question': 'prompt', 'answer': 'response'}, streaming=True))
    assert [it.conversation['turns'] if it.conversation else it.error.kind for it in items] == [turns('2+2?', '4'), 'missing-field']


def test_cli_errors(tmp_path, capsys, no_network):
    def fails(*args, logged=False):
        capsys.readouterr()
        assert main(['collect', '--run', str(tmp_path/'r'), *args]) == 2
        err = capsys.readouterr().err
        # one line, the error; a source that was read also has its counts logged before it
        assert err.endswith('\n') and err.splitlines()[-1].startswith('chatgpt-train collect: error: '), err
        assert logged or err.count('\n') == 1, err
        return err.splitlines()[-1]
    assert 'missing.jsonl not found' in fails('--source', str(tmp_path/'missing.jsonl'))
    assert not (tmp_path/'r').exists()  # nothing written for a missing source
    (tmp_path/'data.xml').write_text('<x/>')
    assert 'data.xml: unknown kind of file' in fails('--source', str(tmp_path/'data.xml'))
    (tmp_path/'bad.parquet').write_bytes(b'not parquet at all')
    assert 'cannot read' in fails('--source', str(tmp_path/'bad.parquet'))
    (tmp_path/'odd.csv').write_text('a,b\n1,2\n')
    assert 'cannot tell how rows make conversations' in fails('--source', str(tmp_path/'odd.csv'))
    assert "no language 'klingon'" in fails('--source', 'chatterbot', '--lang', 'klingon')
    assert 'cannot load Hugging Face dataset' in fails('--source', f"hf:{tmp_path/'no_such_dataset'}")
    assert "'promt' is not a field" in fails('--source', 'chitchat', '--columns', 'promt=question')
    (tmp_path/'empty').mkdir()
    assert 'no files collect can read' in fails('--source', str(tmp_path/'empty'))
    write_lines(tmp_path/'allbad.jsonl', ['{', '{"x": 1}'])
    assert 'no conversation could be read' in fails('--source', str(tmp_path/'allbad.jsonl'), logged=True)
    assert len((tmp_path/'r'/'collect'/'quarantine.jsonl').read_text().splitlines()) == 2  # the reasons are kept
    assert not (tmp_path/'r'/'collect'/'args.json').exists()  # and the run is not marked finished


def test_raw_is_cut(tmp_path):
    path = tmp_path/'huge.jsonl'
    write_lines(path, [json.dumps({'prompt': 'y' * (3 * RAW_CHARS), 'response': 'x'}), json.dumps({'prompt': 'a', 'response': 'b'})])
    _, quarantine, _ = collect(tmp_path, path)
    assert len(quarantine[0]['raw']) < RAW_CHARS + 100 and 'characters in all]' in quarantine[0]['raw']


def test_chitchat(tmp_path):
    "The embedded corpus, end to end through the command line: 7,168 conversations read, none lost."
    run = tmp_path/'demo'
    assert main(['collect', '--run', str(run), '--source', 'chitchat']) == 0
    report = json.loads((run/'collect'/'report.json').read_text())
    assert report['read'] == 7168 and report['kept'] + report['quarantined'] == 7168
    assert report['kept'] == 7168 and report['turns'] == 138716 and report['stats']['single_turn'] == 3151
    convs = load_conversations(run, stage='collect')
    assert len(convs) == report['conversations'] and len({c['id'] for c in convs}) == len(convs)
    assert all(c['source'] == 'chitchat' and 'start' in c['meta'] for c in convs)
    assert (sum('prompt' in c['meta'] for c in convs), sum('ratings' in c['meta'] for c in convs)) == (6929, 5988)
    ds = conversations_dataset(convs)  # the Dataset gives back exactly what the file holds
    assert [row_to_conversation(r) for r in ds] == convs


def test_chatterbot(tmp_path):
    full = ('--max-turn-chars', '100000')  # the default limit, overriding the tests' small one (the last flag wins)
    kept, quarantine, report = collect(tmp_path, 'chatterbot', *full)
    assert report['read'] == 2026 and len(kept) == 2025
    assert [(q['file'], q['line'], q['kind']) for q in quarantine] == [('chatterbot_corpus/data/english/trivia.yml', 35, 'wrong-type')]
    assert any('botprofile.yml' in c['id'] for c in kept) and {c['source'] for c in kept} == {'chatterbot:english'}
    kept, _, report = collect(tmp_path, 'chatterbot', '--lang', 'pt', *full, name='pt')
    assert report['read'] == 321 and kept[0]['source'] == 'chatterbot:portuguese'


def test_limit_and_rerun(tmp_path):
    path = tmp_path/'qa.jsonl'
    write_lines(path, [json.dumps({'prompt': f'q{i}', 'response': 'a'}) for i in range(10)])
    report = run_collect(str(tmp_path/'r'), source=str(path), limit=3)
    assert report['conversations'] == 3 and report['read'] == 3
    kept, _, report = collect(tmp_path, path, name='r')  # a rerun replaces the earlier files
    assert len(kept) == 10 and report['read'] == 10
