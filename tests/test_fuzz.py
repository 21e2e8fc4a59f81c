"""Bad input, fuzzed with hypothesis: the collect loaders and the clean stage never crash, and never lose a record unaccounted.

What is fuzzed. For each file format collect reads (JSON Lines, a JSON array, a JSON object keyed by id, CSV with a
conversation a row, CSV with a turn a row, chatterbot YAML, dialogue text, comment threads nested and flat, Parquet, and
folders of them), hypothesis writes files that mix valid records with broken ones: wrong types, missing fields, nulls,
numbers for text, nested lists, unknown roles, over-long turns, truncated JSON, invalid UTF-8 and NUL bytes, numbers too
long for Python, values nested 1,000 to 2,500 levels deep, and lines of random bytes. Every format also gets files of
nothing but random bytes, and fixed cases cover what is too slow to repeat per example: lines of several MB, comment
trees 3,000 levels deep, empty files and files of only whitespace or a byte-order mark, in every format.

What is checked, for every generated file: `run_collect` either returns or raises one of the documented `UserError`s
(chiefly "no conversation could be read", after which the quarantine file still accounts for everything); the report adds
up (read = kept + quarantined, per source and in total); conversations.jsonl has one line per conversation in the report
and quarantine.jsonl one per quarantined record; the number read is the number of records written; and every valid
record written comes out kept, with its turns. The clean stage gets the fuzzed collected conversations and hypothesis
conversations of hostile text (controls, zero-width characters, any non-surrogate Unicode, huge repeats, wrong types):
it must not crash, and its report must account for every conversation and turn, step by step.

`EXAMPLES` is how many files hypothesis generates per format in one run; `FIXED_FILES` the fixed cases on top.
"""
import csv, io, json, tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatgpt_train.clean import CleanConfig, clean_conversations, run_clean
from chatgpt_train.collect import run_collect
from chatgpt_train.core import get_logger, UserError

get_logger('collect'); get_logger('clean')  # bind the stderr handlers now, not inside a test's captured output

EXAMPLES = dict(jsonl=200, json=120, json_keyed=60, csv=120, csv_turns=80, yaml=120, txt=120, threads=100, parquet=40, folder=30,
                random_bytes=300, clean=200)  # generated files (or, for clean, generated datasets) per run
LIMIT = 200  # --max-turn-chars in the fuzzed runs, so that an over-long turn stays small


def fuzz(fmt):
    "hypothesis settings for `EXAMPLES[fmt]` examples, with no deadline (the machine is shared; timings are noise)."
    return settings(max_examples=EXAMPLES[fmt], deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# ---------------------------------------------------------------------------------------------------------------- checks

FILE_KINDS = ('wrong-encoding', 'unknown-file', 'not-a-file', 'bad-link')  # reasons that set aside a file, not a record
OK_ERRORS = ('no conversation could be read', 'not a Parquet file', 'cannot tell how rows make conversations')


def collect_file(path: Path, run: Path, max_turn_chars=LIMIT, allowed=OK_ERRORS[:1]):
    "Run collect on `path`; return (kept conversations, quarantine entries, report), or None after an allowed UserError with no report."
    try: run_collect(str(run), source=str(path), max_turn_chars=max_turn_chars)
    except UserError as e:
        assert any(a in str(e) for a in allowed), str(e)
        if 'no conversation could be read' not in str(e): return None
    folder = run/'collect'
    kept = [json.loads(l) for l in (folder/'conversations.jsonl').read_text(encoding='utf-8').split('\n') if l]
    quarantine = [json.loads(l) for l in (folder/'quarantine.jsonl').read_text(encoding='utf-8').split('\n') if l]
    report = json.loads((folder/'report.json').read_text(encoding='utf-8'))
    check_report(kept, quarantine, report)
    return kept, quarantine, report


def check_report(kept, quarantine, report):
    "The report adds up, and the two files hold what it says."
    sources = report['sources'].values()
    for s in sources: assert s['read'] == s['kept'] + s['quarantined'], s
    assert report['read'] == report['kept'] + report['quarantined'] == sum(s['read'] for s in sources)
    assert len(kept) == report['conversations'] == sum(s['conversations'] for s in sources)
    assert len(quarantine) == sum(n for s in sources for n in s['reasons'].values())
    assert Counter(q['kind'] for q in quarantine) == sum((Counter(s['reasons']) for s in sources), Counter())
    assert len({c['id'] for c in kept}) == len(kept)
    for c in kept:
        assert set(c) == {'id', 'source', 'turns', 'meta'} and c['turns']
        for t in c['turns']: assert t['role'] in ('user', 'assistant', 'system') and t['text'].strip()
    for q in quarantine: assert q['kind'] and q['reason'] and 'raw' in q
    # no record read: only whole files can be set aside (not text, not UTF-8, not a file at all)
    if report['read'] == 0:
        assert not kept and all(q['kind'] in FILE_KINDS for q in quarantine)


def check_plain(result, n_records, valid):
    "A source where one record is one conversation: the files match the counts, `n_records` were read, `valid` {id: turns} kept."
    kept, quarantine, report = result
    assert report['read'] == n_records, (report['read'], n_records)
    assert report['kept'] == len(kept) and report['quarantined'] == len(quarantine)
    by_id = {c['id']: c for c in kept}
    for i, turns in valid.items():
        assert i in by_id, (i, [q for q in quarantine if i in q['raw']][:1])
        if turns is not None: assert by_id[i]['turns'] == turns, (by_id[i]['turns'], turns)


def check_texts_kept(kept, valid):
    "Every conversation of `valid` (lists of turn texts, ids unknown) is among `kept`, as often as it was written."
    got = Counter(tuple(t['text'] for t in c['turns']) for c in kept)
    assert not Counter(tuple(v) for v in valid) - got


def clean_check(kept, run: Path):
    "Run the clean stage on what collect kept: its report accounts for every conversation and turn."
    if not kept: return
    report = run_clean(str(run), val_fraction=0.2)
    check_clean_report(report, len(kept))
    out = [json.loads(l) for l in (run/'clean'/'conversations.jsonl').read_text(encoding='utf-8').split('\n') if l]
    removed = [json.loads(l) for l in (run/'clean'/'removed.jsonl').read_text(encoding='utf-8').split('\n') if l]
    assert len(out) == report['out'] and sum('turn' not in r for r in removed) == report['removed']


def check_clean_report(report, n):
    assert report['in'] == n and report['in'] == report['out'] + report['removed']
    assert report['turns_in'] == report['turns_out'] + report['turns_removed']
    for s in report['steps']:
        assert s['in'] == s['out'] + s['removed'] and s['turns_in'] == s['turns_out'] + s['turns_removed'], s
        assert s['removed'] == sum(s['reasons'].values()), s
    for a, b in zip(report['steps'], report['steps'][1:]): assert (a['out'], a['turns_out']) == (b['in'], b['turns_in'])
    assert report['split']['train'] + report['split']['val'] == report['out']


def tmp():
    return tempfile.TemporaryDirectory(prefix='fuzz-')

# ------------------------------------------------------------------------------------------------------------ strategies

# valid text: any Unicode but surrogates, with something that is not whitespace; a few controls and zero-width characters
text_chars = st.characters(blacklist_categories=('Cs',))
good_text = st.text(text_chars, min_size=1, max_size=40).filter(lambda s: s.strip())
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(text_chars, max_size=10))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)
wrong_text = st.one_of(st.none(), st.just(''), st.just(' \t\n'), st.integers(), st.floats(allow_nan=False),
                       st.booleans(), st.lists(good_text, max_size=2), st.dictionaries(st.text(max_size=3), good_text, max_size=2),
                       st.just('x' * (LIMIT + 1)), st.just('lone \udc80 surrogate'))
wrong_role = st.one_of(st.none(), st.just('narrator'), st.integers(), st.lists(st.text(max_size=3), max_size=2), st.just(''))
BAD_BYTES = [b'\xff', b'\xc3', b'\xed\xa0\x80', b'\x80\x80', b'\xf0\x9f\x98', b'\xfe\xfe']
MARK = 'QQBADQQ'  # a placeholder in a text, replaced by invalid UTF-8 bytes once the record is serialised


def deep(n):
    "A list nested `n` levels deep, as JSON text."
    return '[' * n + ']' * n


@st.composite
def valid_record(draw, i):
    "(record, expected turns or None) in one of the shapes collect maps, with id `ok-i`."
    texts = draw(st.lists(good_text, min_size=1, max_size=4))
    alt = [{'role': ('user', 'assistant')[k % 2], 'text': t} for k, t in enumerate(texts)]
    shape = draw(st.sampled_from(['turns', 'openai', 'sharegpt', 'pair', 'dialog', 'chitchat']))
    rec, turns = {'id': f'ok-{i}'}, alt
    if shape == 'turns': rec['turns'] = alt
    elif shape == 'openai':
        rec['messages'] = [{'role': t['role'], 'content': draw(st.sampled_from([t['text'], [{'type': 'text', 'text': t['text']}]]))} for t in alt]
    elif shape == 'sharegpt': rec['conversations'] = [{'from': ('human', 'gpt')[k % 2], 'value': t} for k, t in enumerate(texts)]
    elif shape == 'pair':
        rec.update(prompt=texts[0], response=texts[-1]); turns = [alt[0], {'role': 'assistant', 'text': texts[-1]}]
    elif shape == 'dialog': rec['dialog'] = texts
    else: rec['messages'] = [[{'sender': ('a', 'b')[k % 2], 'text': t}] for k, t in enumerate(texts)]; turns = None  # merging is tested elsewhere
    if draw(st.booleans()): rec['meta'] = draw(st.dictionaries(st.text(max_size=5), json_value, max_size=3))
    if draw(st.booleans()): rec['x_extra'] = draw(json_value)
    if draw(st.booleans()) and shape != 'chitchat': del rec['id']  # then its id is file:line; not checked
    return rec, turns


@st.composite
def bad_record(draw, i, parses=False):
    "A record broken in a way that must be quarantined, as bytes; with `parses`, one that is still JSON (in an array, broken JSON ends the file)."
    rec, _ = draw(valid_record(i))
    rec['id'] = f'bad-{i}'
    key = next(k for k in ('turns', 'messages', 'conversations', 'dialog', 'prompt') if k in rec)
    how = draw(st.sampled_from(['text', 'role', 'container', 'id', 'meta', 'shape', 'not-object', 'deep', 'bigint', 'bytes'] + ['nul'] * (not parses)))
    text = None
    if how == 'text':
        bad = draw(wrong_text)
        if key == 'turns': rec['turns'][0]['text'] = bad
        elif key == 'messages' and isinstance(rec['messages'][0], dict): rec['messages'][0]['content'] = bad if not isinstance(bad, list) else 5
        elif key == 'messages': rec['messages'][0][0]['text'] = bad if bad not in ('', ' \t\n') else None  # an empty send is skipped, not bad
        elif key == 'conversations': rec['conversations'][0]['value'] = bad
        elif key == 'dialog': rec['dialog'][0] = bad if not isinstance(bad, list) else None
        else: rec['prompt'] = bad
        if key == 'messages' and isinstance(rec['messages'][0], list) and bad is None: rec['messages'][0][0]['text'] = 7
    elif how == 'role':
        role = draw(wrong_role)
        if key == 'turns': rec['turns'][0]['role'] = role
        elif key == 'messages' and isinstance(rec['messages'][0], dict): rec['messages'][0]['role'] = role
        elif key == 'conversations': rec['conversations'][0]['from'] = role
        else: rec[key] = None
    elif how == 'container': rec[key] = draw(st.one_of(st.none(), st.integers(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
    elif how == 'id': rec['id'] = draw(st.one_of(st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2), st.just({})))
    elif how == 'meta': rec['meta'] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)))
    elif how == 'shape':
        del rec[key]
        for k in ('response', 'input', 'system'): rec.pop(k, None)
    elif how == 'not-object': text = json.dumps(draw(st.one_of(json_scalar, st.lists(json_scalar, max_size=3))))
    elif how == 'deep':  # a value nested past Python's recursion limit, where a role or a text should be
        d = draw(st.integers(1000, 2500))
        where = draw(st.sampled_from(['role', 'text', 'type', 'meta']))
        body = {'role': f'{{"id": "bad-{i}", "turns": [{{"role": {deep(d)}, "text": "x"}}]}}',
                'text': f'{{"id": "bad-{i}", "conversations": [{{"from": "human", "value": {deep(d)}}}]}}',
                'type': f'{{"id": "bad-{i}", "messages": [{{"role": "user", "content": [{{"type": {deep(d)}}}]}}]}}',
                'meta': f'{{"id": "bad-{i}", "dialog": ["a", "b"], "meta": {{"x": {deep(d)}}}}}'}[where]
        text = body
    elif how == 'bigint':  # valid JSON, but more digits than Python converts
        text = json.dumps(rec)[:-1] + ', "n": ' + '7' * draw(st.integers(4301, 6000)) + '}'
        if draw(st.booleans()): text = f'{{"id": {"1" * 5000}, "dialog": ["a", "b"]}}'
    elif how in ('bytes', 'nul'):
        if key == 'turns': rec['turns'][0]['text'] = MARK
        elif key == 'messages' and isinstance(rec['messages'][0], dict): rec['messages'][0]['content'] = MARK
        elif key == 'messages': rec['messages'][0][0]['text'] = MARK
        elif key == 'conversations': rec['conversations'][0]['value'] = MARK
        elif key == 'dialog': rec['dialog'][0] = MARK
        else: rec['prompt'] = MARK
        bad = draw(st.sampled_from(BAD_BYTES)) if how == 'bytes' else b'\x00'  # a raw NUL in a JSON string is not JSON
        return json.dumps(rec, ensure_ascii=False).encode().replace(MARK.encode(), b'a' + bad + b'b')
    return (text if text is not None else json.dumps(rec, ensure_ascii=False)).encode('utf-8', 'surrogatepass')


junk_line = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b'\n', b' ')),                     # random bytes
    st.text(text_chars, max_size=40).map(lambda s: s.replace('\n', ' ').encode()),    # random text
    st.sampled_from([b'{', b'[', b'{"id": "x", "turns": [', b'null', b'"', b'\x00\x00', b'\xef\xbb\xbf{}', b'}{', b'NaN']))


@st.composite
def jsonl_file(draw):
    "(bytes of a JSON Lines file, number of records, {id: turns} of the valid ones)."
    n = draw(st.integers(0, 12))
    lines, valid = [], {}
    for i in range(n):
        kind = draw(st.sampled_from(['valid', 'valid', 'bad', 'truncated', 'junk']))
        if kind == 'valid':
            rec, turns = draw(valid_record(i))
            if 'id' in rec: valid[rec['id']] = turns
            lines.append(json.dumps(rec, ensure_ascii=draw(st.booleans())).encode('utf-8'))
        elif kind == 'bad': lines.append(draw(bad_record(i)))
        elif kind == 'truncated':
            full = json.dumps(draw(valid_record(i))[0]).encode()
            lines.append(full[:draw(st.integers(1, len(full) - 1))])
        else: lines.append(draw(junk_line))
        if draw(st.integers(0, 4)) == 0: lines.append(draw(st.sampled_from([b'', b'  ', b'\t', b'\r'])))
    eol = draw(st.sampled_from([b'\n', b'\r\n']))
    data = draw(st.sampled_from([b'', b'\xef\xbb\xbf'])) + eol.join(lines) + draw(st.sampled_from([b'', eol]))
    text = data.decode('utf-8', 'surrogateescape').removeprefix('\ufeff')
    return data, sum(1 for l in text.split('\n') if l.strip()), valid


# ----------------------------------------------------------------------------------------------------------------- JSON

@fuzz('jsonl')
@given(jsonl_file())
def test_jsonl(f):
    data, n, valid = f
    with tmp() as d:
        path = Path(d)/'data.jsonl'; path.write_bytes(data)
        result = collect_file(path, Path(d)/'run')
        check_plain(result, n, valid)
        clean_check(result[0], Path(d)/'run')


@fuzz('json')
@given(st.data())
def test_json_array(data):
    "An array of valid and broken records; truncated, what ends before the cut is kept and the rest is one bad record."
    n = data.draw(st.integers(0, 10))
    parts, valid = [], {}
    for i in range(n):
        if data.draw(st.booleans()):
            rec, turns = data.draw(valid_record(i))
            raw = json.dumps(rec, indent=data.draw(st.sampled_from([None, 1]))).encode()
            if 'id' in rec: valid[rec['id']] = turns
        else:
            raw = data.draw(bad_record(i, parses=True))
            rec = None
        parts.append((raw, rec))
    body = b'[' + b',\n '.join(p for p, _ in parts) + b']\n'
    pos, keep = 1, {}
    for p, rec in parts:
        pos += len(p)
        if rec is not None and 'id' in rec: keep[rec['id']] = pos
        pos += 3
    cut = data.draw(st.one_of(st.none(), st.integers(0, max(len(body) - 2, 0))))
    with tmp() as d:
        path = Path(d)/'data.json'; path.write_bytes(body if cut is None else body[:cut])
        result = collect_file(path, Path(d)/'run')
        kept, quarantine, report = result
        if cut is None: check_plain(result, n, valid)
        else:  # every valid record that ends before the cut is kept
            ids = {c['id'] for c in kept}
            assert {i for i, end in keep.items() if end <= cut} <= ids
            if cut > 0: assert quarantine and quarantine[-1]['kind'] == 'bad-json'


@fuzz('json_keyed')
@given(st.data())
def test_json_keyed(data):
    "An object of records keyed by id (chitchat's form), the values valid, broken, or not objects."
    n = data.draw(st.integers(1, 8))
    members, valid = [], {}
    for i in range(n):
        kind = data.draw(st.sampled_from(['valid', 'valid', 'bad', 'scalar']))
        key = f'k{i}'
        if kind == 'valid':
            rec, turns = data.draw(valid_record(i)); rec.pop('id', None); valid[key] = turns
            members.append(json.dumps(key).encode() + b': ' + json.dumps(rec).encode())
        elif kind == 'bad':
            raw = data.draw(bad_record(i, parses=True))
            members.append(json.dumps(key).encode() + b': ' + (raw if raw.lstrip().startswith(b'{') else b'{"dialog": 5}'))
        else: members.append(json.dumps(key).encode() + b': ' + json.dumps(data.draw(json_scalar)).encode())
    if not valid: members.append(b'"k-last": {"dialog": ["a", "b"]}'); valid['k-last'] = [{'role': 'user', 'text': 'a'}, {'role': 'assistant', 'text': 'b'}]; n += 1
    with tmp() as d:
        path = Path(d)/'data.json'; path.write_bytes(b'{\n' + b',\n'.join(members) + b'\n}\n')
        check_plain(collect_file(path, Path(d)/'run'), n, valid)


# ------------------------------------------------------------------------------------------------------------ threads

@st.composite
def comment_tree(draw, ids, depth=0):
    "A nested comment with replies; valid comments' ids are added to `ids`."
    cid = f'c{len(ids)}'
    ids.append(cid)
    c = {'id': cid, 'author': draw(st.sampled_from(['ann', 'bob', 'cat', 7])), 'text': draw(good_text)}
    if depth < 3: c['replies'] = [draw(comment_tree(ids, depth + 1)) for _ in range(draw(st.integers(0, 2)))]
    return c


@st.composite
def bad_comment(draw, i):
    "A comment that must be quarantined (each counts as one record)."
    how = draw(st.sampled_from(['text', 'id', 'author', 'parent', 'replies', 'not-object', 'deep-parent', 'deep-text', 'cycle']))
    c = {'id': f'bad{i}', 'author': 'zed', 'text': 'x'}
    if how == 'text': c['text'] = draw(wrong_text)
    elif how == 'id': c['id'] = draw(st.one_of(st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2)))
    elif how == 'author': c['author'] = draw(st.one_of(st.lists(st.integers(), max_size=2), st.just({'a': 1}), st.floats(allow_nan=False)))
    elif how == 'parent': c['parent'] = draw(st.one_of(st.lists(st.integers(), max_size=2), st.just({'a': 1}), st.floats(allow_nan=False)))
    elif how == 'replies': c['replies'] = draw(st.one_of(st.integers(), st.text(max_size=3), st.just({'a': 1})))
    elif how == 'not-object': return [json.dumps(draw(st.one_of(json_scalar, st.lists(json_scalar, max_size=2))))]
    elif how in ('deep-parent', 'deep-text'):
        d = draw(st.integers(1000, 2500))
        return [f'{{"id": "bad{i}", "author": "zed", "{"parent" if how == "deep-parent" else "text"}": {deep(d)}, "body": "x"}}']
    else: return [json.dumps({'id': f'cy{i}a', 'parent': f'cy{i}b', 'text': 'loop'}), json.dumps({'id': f'cy{i}b', 'parent': f'cy{i}a', 'text': 'loop'})]
    return [json.dumps(c, ensure_ascii=False)]


@fuzz('threads')
@given(st.data())
def test_threads(data):
    "Comment threads: nested trees, flat replies by parent id, broken comments, cycles, deep chains; every valid comment kept."
    ids, lines, n = [], [], 0
    for i in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(['tree', 'tree', 'flat', 'bad', 'junk', 'chain']))
        if kind == 'tree': lines.append(json.dumps(data.draw(comment_tree(ids)), ensure_ascii=False)); continue
        if kind == 'flat' and ids:
            cid = f'f{i}'; ids.append(cid)
            lines.append(json.dumps({'id': cid, 'parent_id': data.draw(st.sampled_from(ids[:-1] + ['gone'])), 'author': 'dan',
                                     'body': data.draw(good_text)}))
        elif kind == 'bad': bad = data.draw(bad_comment(i)); lines += bad; n += len(bad)
        elif kind == 'junk':
            j = data.draw(junk_line)
            if j.decode('utf-8', 'surrogateescape').strip(): lines.append(j.decode('utf-8', 'surrogateescape')); n += 1
        elif kind == 'chain':  # a reply chain nested deeper than Python's recursion limit
            depth = data.draw(st.integers(1000, 2500))
            ids.extend(f'd{i}-{k}' for k in range(depth))
            lines.append(''.join(f'{{"id": "d{i}-{k}", "author": "{"ab"[k % 2]}", "text": "t{k}", "children": [' for k in range(depth))
                         + ']}' * depth)
    n += len(ids)
    with tmp() as d:
        path = Path(d)/'thread.jsonl'; path.write_text('\n'.join(lines) + '\n', encoding='utf-8', errors='surrogateescape')
        result = collect_file(path, Path(d)/'run')
        kept, quarantine, report = result
        assert report['read'] == n, (report['read'], n)  # a comment is a record
        seen = {cid for c in kept for cid in c['meta'].get('comments', [])}
        assert set(ids) <= seen, set(ids) - seen
        clean_check(kept, Path(d)/'run')


# ---------------------------------------------------------------------------------------------------------------- CSV

csv_junk = st.text(st.characters(blacklist_characters='"\r\n', blacklist_categories=('Cs',)), max_size=40).filter(lambda s: 'ok-' not in s)


def csv_line(cells, delim=','):
    "One CSV row, quoted where needed (a lone CR or LF in a cell is quoted too, as a terminator of CRLF makes the writer do)."
    buf = io.StringIO(); csv.writer(buf, delimiter=delim, lineterminator='\r\n').writerow(cells)
    return buf.getvalue().removesuffix('\r\n')


@fuzz('csv')
@given(st.data())
def test_csv_rows(data):
    "A conversation a row (prompt and response columns); junk rows, wrong cell counts, invalid bytes, over-long cells."
    tsv = data.draw(st.booleans()); delim = '\t' if tsv else ','
    lines, valid, n = [delim.join(['id', 'Prompt', 'Response', 'topic'])], {}, 0
    for i in range(data.draw(st.integers(0, 12))):
        kind = data.draw(st.sampled_from(['valid', 'valid', 'empty', 'long', 'cells', 'bytes', 'junk']))
        p, r = data.draw(good_text), data.draw(good_text)
        if kind == 'valid':
            valid[f'ok-{i}'] = [{'role': 'user', 'text': p}, {'role': 'assistant', 'text': r}]
            lines.append(csv_line([f'ok-{i}', p, r, data.draw(st.text(text_chars, max_size=5))], delim))
        elif kind == 'empty': lines.append(csv_line([f'bad-{i}', p, data.draw(st.sampled_from(['', '  '])), 'x'], delim))
        elif kind == 'long': lines.append(csv_line([f'bad-{i}', 'x' * (LIMIT + 1), r, ''], delim))
        elif kind == 'cells': lines.append(csv_line([f'bad-{i}', p, r, 'x', 'y'][:data.draw(st.sampled_from([2, 5]))], delim))
        elif kind == 'bytes': lines.append(csv_line([f'bad-{i}', MARK, r, ''], delim))
        else: lines.append(data.draw(csv_junk))
        if any(c.strip() for c in lines[-1].split(delim)): n += 1
        else: lines.pop()
    raw = '\n'.join(lines).encode('utf-8', 'surrogateescape').replace(MARK.encode(), b'a' + data.draw(st.sampled_from(BAD_BYTES)) + b'b')
    with tmp() as d:
        path = Path(d)/('data.tsv' if tsv else 'data.csv'); path.write_bytes(raw + b'\n')
        check_plain(collect_file(path, Path(d)/'run'), n, valid)


@fuzz('csv_turns')
@given(st.data())
def test_csv_turns(data):
    "A turn a row, rows of conversations interleaved; a conversation with one bad row is quarantined whole; junk rows too."
    rows, valid = [], {}
    for i in range(data.draw(st.integers(0, 6))):
        texts = data.draw(st.lists(good_text, min_size=1, max_size=4))
        conv = [[f'ok-{i}', ('user', 'assistant')[k % 2], t] for k, t in enumerate(texts)]
        if data.draw(st.booleans()): valid[f'ok-{i}'] = [{'role': r, 'text': t} for _, r, t in conv]
        else:
            k = data.draw(st.integers(0, len(conv) - 1)); conv = [[f'bad-{i}', r, t] for _, r, t in conv]
            conv[k] = data.draw(st.sampled_from([[f'bad-{i}', 'user', ''], [f'bad-{i}', '', 'x'], [f'bad-{i}', 'user'],
                                                 [f'bad-{i}', 'user', 'x' * (LIMIT + 1)], [f'bad-{i}', 'user', MARK]]))
        rows += [(i, r) for r in conv]
    pending = {}
    for i, r in rows: pending.setdefault(i, []).append(r)
    groups, missing = {r[0] for _, r in rows}, 0
    lines = ['conversation_id,role,text']  # conversations interleave, the rows of each in order
    for i in data.draw(st.permutations([i for i, _ in rows])): lines.append(csv_line(pending[i].pop(0)))
    for _ in range(data.draw(st.integers(0, 3))):
        j = data.draw(csv_junk)
        cells = j.split(',')
        if not any(c.strip() for c in cells): continue
        if cells[0] == '': missing += 1
        else: groups.add(cells[0])
        lines.insert(data.draw(st.integers(1, len(lines))), j)
    raw = '\n'.join(lines).encode('utf-8').replace(MARK.encode(), b'a\xffb')
    with tmp() as d:
        path = Path(d)/'turns.csv'; path.write_bytes(raw + b'\n')
        check_plain(collect_file(path, Path(d)/'run'), len(groups) + missing, valid)


# --------------------------------------------------------------------------------------------------------------- YAML

yaml_text = st.text(st.characters(whitelist_categories=('L', 'M', 'N', 'P', 'S', 'Zs')), min_size=1, max_size=30).filter(
    lambda s: s.strip() and s == s.strip())  # printable, as chatterbot's files are; YAML escapes the rest, which the loader reads back


@fuzz('yaml')
@given(st.data())
def test_yaml(data):
    "chatterbot YAML: conversations as lists of turns, broken ones (a scalar, nested lists, mappings, nulls, bad bytes); truncated files."
    import yaml
    convs, valid = [], []
    for i in range(data.draw(st.integers(0, 10))):
        kind = data.draw(st.sampled_from(['valid', 'valid', 'scalar', 'nested', 'mapping', 'null', 'long', 'bytes']))
        texts = data.draw(st.lists(yaml_text, min_size=1, max_size=4))
        if kind == 'valid': convs.append(texts); valid.append(texts)
        elif kind == 'scalar': convs.append(texts[0])
        elif kind == 'nested': convs.append(texts[:1] + [[texts[-1]]])
        elif kind == 'mapping': convs.append([{'a': texts[0]}])
        elif kind == 'null': convs.append(texts[:1] + [None])
        elif kind == 'long': convs.append(['x' * (LIMIT + 1)])
        else: convs.append(texts[:1] + [MARK])
    doc = {'categories': ['fuzz'], 'conversations': convs} if data.draw(st.booleans()) else convs
    text = yaml.safe_dump(doc, allow_unicode=True, default_flow_style=data.draw(st.sampled_from([False, None])))
    raw = text.encode('utf-8').replace(MARK.encode(), b'a' + data.draw(st.sampled_from(BAD_BYTES)) + b'b')
    cut = data.draw(st.one_of(st.none(), st.none(), st.integers(0, len(raw))))
    with tmp() as d:
        path = Path(d)/'bot.yml'; path.write_bytes(raw if cut is None else raw[:cut])
        result = collect_file(path, Path(d)/'run')
        if cut is None:
            kept, _, report = result
            assert report['read'] == len(convs) and report['kept'] == len(kept)
            check_texts_kept(kept, valid)


# --------------------------------------------------------------------------------------------------------------- text

@fuzz('txt')
@given(st.data())
def test_txt(data):
    "Dialogue text: blank-line-separated blocks of 'Name: text' lines, with speakerless blocks, empty turns, bad bytes, junk."
    line_text = good_text.filter(lambda s: '\n' not in s and '\r' not in s and s == s.strip() and s.split('\n')[0].strip())
    blocks, valid, n = [], [], 0
    for i in range(data.draw(st.integers(0, 10))):
        kind = data.draw(st.sampled_from(['valid', 'valid', 'nospeaker', 'empty', 'long', 'bytes', 'junk']))
        texts = data.draw(st.lists(line_text, min_size=1, max_size=4))
        if kind == 'valid':
            valid.append(texts); blocks.append([f"{('Ann', 'Bob')[k % 2]}: {t}" for k, t in enumerate(texts)])
        elif kind == 'nospeaker': blocks.append(['just words here'] + [f'Ann: {t}' for t in texts])
        elif kind == 'empty': blocks.append([f'Ann: {texts[0]}', 'Bob:'])
        elif kind == 'long': blocks.append(['Ann: ' + 'x' * (LIMIT + 1)])
        elif kind == 'bytes': blocks.append([f'Ann: {texts[0]}', f'Bob: {MARK}'])
        else:
            j = data.draw(junk_line).decode('utf-8', 'surrogateescape').replace('\r', ' ')
            if not j.strip(): continue
            blocks.append([j])
        n += 1
    sep = data.draw(st.sampled_from(['\n\n', '\n \n', '\r\n\r\n', '\n\n\n']))
    text = sep.join(('\r\n' if sep.startswith('\r') else '\n').join(b) for b in blocks)
    raw = text.encode('utf-8', 'surrogateescape').replace(MARK.encode(), b'a' + data.draw(st.sampled_from(BAD_BYTES)) + b'b')
    with tmp() as d:
        path = Path(d)/'script.txt'; path.write_bytes(raw)
        kept, _, report = result = collect_file(path, Path(d)/'run')
        check_plain(result, n, {})
        check_texts_kept(kept, valid)


# ------------------------------------------------------------------------------------------------------------ Parquet

@fuzz('parquet')
@given(st.data())
def test_parquet(data):
    "Parquet rows of OpenAI messages: nulls, empty lists, unknown roles, empty and over-long content; and a truncated file."
    import pyarrow as pa, pyarrow.parquet as pq
    ids, msgs, valid = [], [], {}
    for i in range(data.draw(st.integers(1, 10))):
        texts = data.draw(st.lists(good_text, min_size=1, max_size=3))
        m = [{'role': ('user', 'assistant')[k % 2], 'content': t} for k, t in enumerate(texts)]
        kind = data.draw(st.sampled_from(['valid', 'valid', 'null', 'empty', 'role', 'content', 'long']))
        if kind == 'valid': valid[f'ok-{i}'] = [{'role': x['role'], 'text': x['content']} for x in m]
        elif kind == 'null': m = None
        elif kind == 'empty': m = []
        elif kind == 'role': m[0]['role'] = data.draw(st.sampled_from(['tool', '', None]))
        elif kind == 'content': m[-1]['content'] = data.draw(st.sampled_from(['', ' ', None]))
        else: m[0]['content'] = 'x' * (LIMIT + 1)
        ids.append(f'ok-{i}' if kind == 'valid' else f'bad-{i}'); msgs.append(m)
    table = pa.table({'id': ids, 'messages': pa.array(msgs, pa.list_(pa.struct([('role', pa.string()), ('content', pa.string())])))})
    with tmp() as d:
        path = Path(d)/'chats.parquet'; pq.write_table(table, path)
        check_plain(collect_file(path, Path(d)/'run'), len(ids), valid)
        raw = path.read_bytes()
        path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
        collect_file(path, Path(d)/'cut', allowed=OK_ERRORS + ('cannot read',))


# ------------------------------------------------------------------------------------------------------- random bytes

@fuzz('random_bytes')
@given(st.sampled_from(['.jsonl', '.json', '.csv', '.tsv', '.yml', '.txt', '.parquet']),
       st.one_of(st.binary(max_size=3000),
                 st.lists(st.sampled_from([b'{', b'}', b'[', b']', b'"', b',', b':', b'\n', b' ', b'\x00', b'\xff', b'a', b'1',
                                           b'-', b'#', b'\t', b'\r', b'null', b'\xef\xbb\xbf', b'text', b'replies']),
                          max_size=400).map(b''.join)))
def test_random_bytes(ext, raw):
    "A file of random bytes, or of random JSON/CSV/YAML punctuation, in every format: no crash, and the counts add up."
    with tmp() as d:
        path = Path(d)/f'noise{ext}'; path.write_bytes(raw)
        collect_file(path, Path(d)/'run', allowed=OK_ERRORS)


# ------------------------------------------------------------------------------------------------------------ folders

@fuzz('folder')
@given(jsonl_file(), st.binary(max_size=200), st.lists(good_text, min_size=1, max_size=3))
def test_folder(f, noise, texts):
    "A folder of a fuzzed JSON Lines file, a file of noise in an unknown format, a hidden file and a valid CSV."
    data, n, valid = f
    with tmp() as d:
        folder = Path(d)/'data'; (folder/'sub').mkdir(parents=True)
        (folder/'a.jsonl').write_bytes(data)
        (folder/'noise.bin').write_bytes(noise)
        (folder/'.hidden.jsonl').write_bytes(b'{"dialog": ["never", "read"]}\n')
        (folder/'sub'/'b.csv').write_text('prompt,response\n' + csv_line([texts[0], texts[-1]]) + '\n', encoding='utf-8')
        kept, quarantine, report = collect_file(folder, Path(d)/'run')
        s = report['sources']
        assert s.get(str(folder/'a.jsonl'), {'read': 0})['read'] == n and s[str(folder/'sub'/'b.csv')]['kept'] == 1
        assert s[str(folder/'noise.bin')] == dict(read=0, kept=0, quarantined=0, conversations=0, turns=0, reasons={'unknown-file': 1})
        assert report['quarantined'] == len(quarantine) - 1 and report['kept'] == len(kept)
        assert set(valid) <= {c['id'] for c in kept} and not any('never' in json.dumps(c) for c in kept)


# -------------------------------------------------------------------------------------------------------- fixed cases

FIXED_FILES = 0  # counted below, as each fixed case is defined

EMPTY = [b'', b'\xef\xbb\xbf', b'\n', b'\r\n\r\n', b' \t \n  \n', b'\xef\xbb\xbf  \n\t\n']
EMPTY_KINDS = ['.jsonl', '.json', '.csv', '.tsv', '.yml', '.txt']
FIXED_FILES += len(EMPTY) * len(EMPTY_KINDS) + 1


def test_empty_files(tmp_path):
    "Empty files, and files of only whitespace or a byte-order mark, in every format: nothing read, a clear error, nothing lost."
    for k, (ext, raw) in enumerate((e, r) for e in EMPTY_KINDS for r in EMPTY):
        path = tmp_path/f'empty{k}{ext}'; path.write_bytes(raw)
        with pytest.raises(UserError, match='no conversation could be read'): run_collect(str(tmp_path/f'r{k}'), source=str(path))
        report = json.loads((tmp_path/f'r{k}'/'collect'/'report.json').read_text())
        assert report['read'] == report['kept'] == report['quarantined'] == 0, (ext, raw)
        assert (tmp_path/f'r{k}'/'collect'/'quarantine.jsonl').read_bytes() == b''
    path = tmp_path/'empty.parquet'; path.write_bytes(b'')
    with pytest.raises(UserError, match='not a Parquet file'): run_collect(str(tmp_path/'rp'), source=str(path))


MB = 1 << 20
FIXED_FILES += 4


def test_giant_lines(tmp_path):
    "Lines of several MB in JSON Lines, CSV, text and YAML: a valid record of 4 MB is kept, an over-long turn and 4 MB of junk quarantined."
    big = [('y' * 90_000 + str(k)) for k in range(45)]  # 45 turns of 90,000 characters: 4 MB, every turn under the limit
    folder = tmp_path/'big'; folder.mkdir()
    (folder/'big.jsonl').write_text('\n'.join([json.dumps({'id': 'big', 'dialog': big}), json.dumps({'id': 'huge', 'prompt': 'z' * (5 * MB), 'response': 'r'}),
                                               'j' * (4 * MB), json.dumps({'id': 'small', 'dialog': ['a', 'b']})]) + '\n')
    (folder/'big.csv').write_text('id,prompt,response\n' + f'csvbig,{"p" * 90_000},{"r" * 90_000}\n' + f'csvhuge,{"q" * (4 * MB)},r\n')
    (folder/'big.txt').write_text(f'Ann: {"t" * 90_000}\nBob: ok\n\nAnn: {"u" * (4 * MB)}\nBob: ok\n')
    (folder/'big.yml').write_text(f'conversations:\n- - {"v" * 90_000}\n  - ok\n- - {"w" * (4 * MB)}\n')
    kept, quarantine, report = collect_file(folder, tmp_path/'run', max_turn_chars=100_000)
    ids = {c['id'] for c in kept}
    assert {'big', 'small', 'csvbig'} <= ids and len(kept) == 5 and [t['text'] for t in next(c for c in kept if c['id'] == 'big')['turns']] == big
    assert sorted(q['kind'] for q in quarantine) == ['bad-json', 'too-long', 'too-long', 'too-long', 'too-long']
    assert all(len(q['raw']) < 20_000 for q in quarantine)  # the quarantine keeps a cut of a giant record, not all of it
    assert report['read'] == 10


FIXED_FILES += 3


def test_deep_comment_trees(tmp_path):
    "A reply chain 3,000 deep as JSON Lines (replies) and as a JSON array (children), and a 250,000-deep line: no RecursionError."
    depth = 3000
    chain = lambda key: ''.join(f'{{"id": "n{k}", "author": "{"ab"[k % 2]}", "text": "t{k}", "{key}": [' for k in range(depth)) + ']}' * depth
    other = json.dumps({'id': 'other', 'author': 'c', 'text': 'hi'})
    for name, text, n in [('deep.jsonl', chain('replies') + '\n' + other + '\n', depth + 1), ('deep.json', f"[{chain('children')}]", depth)]:
        (tmp_path/name).write_text(text)
        run = tmp_path/name.replace('.', '_')
        kept, quarantine, report = collect_file(tmp_path/name, run)
        chains = [c for c in kept if len(c['turns']) == depth]
        assert len(chains) == 1 and not quarantine and report['read'] == n
        assert chains[0]['turns'][-1] == {'role': 'assistant', 'text': f't{depth - 1}'}
        clean_check(kept, run)
    path = tmp_path/'deeper.jsonl'  # deeper than collect parses at all: quarantined, the next line still read
    path.write_text(deep(250_000) + '\n' + json.dumps({'id': 'after', 'dialog': ['a', 'b']}) + '\n')
    kept, quarantine, report = collect_file(path, tmp_path/'deeper')
    assert [c['id'] for c in kept] == ['after'] and [q['kind'] for q in quarantine] == ['too-deep']


FIXED_FILES += 1


def test_deep_meta_through_clean(tmp_path):
    "Metadata nested 900 levels deep, which collect can write, must not crash the clean stage."
    path = tmp_path/'meta.jsonl'
    path.write_text('\n'.join(f'{{"id": "m{k}", "dialog": ["tell me about item {k}", "item {k} is fine"], "meta": {{"x": {deep(d)}}}}}'
                              for k, d in enumerate([3, 500, 900])) + '\n')
    kept, quarantine, report = collect_file(path, tmp_path/'run')
    assert len(kept) + len(quarantine) == 3
    clean_check(kept, tmp_path/'run')


# -------------------------------------------------------------------------------------------------------------- clean

def nested(depth):
    "A list nested `depth` levels deep."
    x = []
    for _ in range(depth): x = [x]
    return x


deep_value = st.integers(1000, 3000).map(nested)
hostile_char = st.one_of(text_chars, st.sampled_from(list('\x00\x07\x1b\x7f\x85\u200b\u200c\u200d\u2060\ufeff\u00ad\u202e\u2028\r\t\x0b')))
hostile_text = st.one_of(st.text(hostile_char, max_size=60),
                         st.tuples(st.text(hostile_char, min_size=1, max_size=4), st.integers(1000, 50_000)).map(lambda t: t[0] * t[1]))
turn = st.one_of(st.fixed_dictionaries({'role': st.sampled_from(['user', 'assistant', 'system']), 'text': hostile_text}),
                 st.fixed_dictionaries({'role': st.sampled_from(['user', 'assistant']), 'text': st.one_of(st.none(), st.integers(), st.binary(max_size=20))}),
                 st.fixed_dictionaries({'role': st.one_of(wrong_role, deep_value), 'text': st.one_of(good_text, deep_value)}),
                 st.just('not a turn'), st.just({}))
conversation = st.one_of(
    st.builds(lambda i, ts, meta: {'id': i, 'source': 'fuzz', 'turns': ts, 'meta': meta},
              st.one_of(st.sampled_from(['a', 'b', 'c', 'd', 'e', 'f']), st.just(''), st.integers(), st.none(), deep_value),
              st.lists(turn, max_size=5), st.dictionaries(st.text(max_size=4), st.one_of(json_value, deep_value), max_size=2)),
    json_scalar, st.lists(st.integers(), max_size=2), st.just({'id': 'noturns'}), deep_value)


@fuzz('clean')
@given(st.lists(conversation, max_size=8), st.booleans(), st.booleans())
def test_clean_accounts_for_everything(convs, lower, spam_off):
    "Hostile conversations through `clean_conversations`: no crash, and every conversation and turn accounted for."
    removed = []
    kept, report = clean_conversations(convs, CleanConfig(val_fraction=0.3, lowercase=lower, spam_ratio=0 if spam_off else 0.3,
                                                          max_text_chars=40_000), removed)
    check_clean_report(report, len(convs))
    assert len(kept) == report['out'] and sum('turn' not in r for r in removed) == report['removed']
    for c in kept:
        for t in c['turns']: assert isinstance(t['text'], str) and t['text'].strip() and t['text'].encode('utf-8')
    json.dumps(removed, ensure_ascii=False, default=str).encode('utf-8')  # what run_clean writes
