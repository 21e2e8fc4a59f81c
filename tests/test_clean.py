"The clean stage from the command line, on bad input, with and without the profanity classifier."
import json, logging, sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from chatgpt_train import content
from chatgpt_train.clean import CleanConfig, clean_conversations
from chatgpt_train.repair import fix_unicode
from chatgpt_train.split import split_of
from chatgpt_train.content import content_flags, load_content_labels, filter_scores
from chatgpt_train.cli import main
from chatgpt_train.core import UserError
from chatgpt_train.jsonio import load_json, read_jsonl
from chatgpt_train.conversation import load_conversations


def conv(id, *texts, **kw):
    return dict(id=id, source='test', turns=[dict(role=('user', 'assistant')[i % 2], text=t) for i, t in enumerate(texts)],
                meta={}, **kw)


GOOD = [conv(f'g{i}', f'Hello number {i}, how are things in town {i * 7}?', f'Fine, thanks; we had {i} visitors today.',
             f'Nice to hear it, see you on day {i}.') for i in range(30)]


def write_collect(run: Path, records) -> Path:
    "Write `records` as the collect stage's output of `run`; raw strings are written as they are (bad lines)."
    path = run/'collect'/'conversations.jsonl'
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        for r in records: f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')
    return path


def outputs(run: Path):
    d = run/'clean'
    return list(read_jsonl(d/'conversations.jsonl')), list(read_jsonl(d/'removed.jsonl')), load_json(d/'report.json')


def check_report(report):
    "Every step and the whole add up, for conversations and turns."
    for s in report['steps']:
        assert s['in'] == s['out'] + s['removed'], s
        assert s['turns_in'] == s['turns_out'] + s['turns_removed'], s
    for a, b in zip(report['steps'], report['steps'][1:]): assert (a['out'], a['turns_out']) == (b['in'], b['turns_in'])
    assert report['in'] == report['out'] + report['removed']
    assert report['turns_in'] == report['turns_out'] + report['turns_removed']


def test_cli_end_to_end(tmp_path):
    records = GOOD + [dict(GOOD[0], id='dup'),                                 # exact duplicate
                      conv('short', 'anyone there?'),                          # too few turns
                      conv('mail', 'write to ann@example.org', 'will do'),
                      conv('spam', 'look', 'ha ' * 500, 'wow', 'ok then')]
    write_collect(tmp_path, records)
    assert main(['clean', '--run', str(tmp_path), '--val-fraction', '0.2']) == 0
    kept, removed, report = outputs(tmp_path)
    check_report(report)
    assert sorted(p.name for p in (tmp_path/'clean').iterdir()) == ['args.json', 'conversations.jsonl', 'log.txt',
                                                                      'removed.jsonl', 'report.json']
    assert report['in'] == len(records) and report['out'] == len(kept)
    ids = {c['id'] for c in kept}
    assert 'dup' not in ids and 'short' not in ids and {'mail', 'spam'} <= ids
    assert next(c for c in kept if c['id'] == 'mail')['turns'][0]['text'] == 'write to <email>'
    assert [t['text'] for t in next(c for c in kept if c['id'] == 'spam')['turns']] == ['look', 'ok then']
    # one line a removed conversation, one a removed turn, each with its step and reason
    assert sum('turn' not in r for r in removed) == report['removed']
    assert all(r['step'] and r['reason'] for r in removed)
    assert Counter(r['reason'] for r in removed) == Counter({'exact duplicate': 1, 'too few turns': 1,
                                                             'spam-like repetition': 1, 'reply to a dropped turn': 1})
    # the split: every conversation on one side, both sides present, and what load_conversations reads
    train, val = load_conversations(str(tmp_path), 'train'), load_conversations(str(tmp_path), 'val')
    assert len(train) + len(val) == len(kept) and train and val
    assert {c['split'] for c in kept} == {'train', 'val'}
    assert report['split']['near_dups_across_split'] == 0
    args = load_json(tmp_path/'clean'/'args.json')['args']
    assert args['val_fraction'] == 0.2 and args['run'] == str(tmp_path)


def test_cli_is_deterministic_and_flags_apply(tmp_path):
    a, b = tmp_path/'a', tmp_path/'b'
    for r in (a, b): write_collect(r, GOOD)
    assert main(['clean', '--run', str(a)]) == 0 and main(['clean', '--run', str(b)]) == 0
    assert (a/'clean'/'conversations.jsonl').read_bytes() == (b/'clean'/'conversations.jsonl').read_bytes()
    assert main(['clean', '--run', str(b), '--lowercase', '--min-turns', '4', '--seed', '3']) == 0
    kept, removed, report = outputs(b)
    assert kept == [] and report['removed'] == len(GOOD)  # every conversation has 3 turns
    assert main(['clean', '--run', str(b), '--lowercase', '--no-mask-personal', '--near-dup-threshold', '1']) == 0
    kept, removed, report = outputs(b)
    assert all(t['text'] == t['text'].lower() for c in kept for t in c['turns'])
    steps = {s['step']: s for s in report['steps']}
    assert steps['lowercase']['turns_changed'] > 0 and not steps['personal']['enabled'] and not steps['near']['enabled']


def test_cli_missing_collect_is_one_line(tmp_path, capsys):
    assert main(['clean', '--run', str(tmp_path/'nothing')]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'collect/conversations.jsonl not found' in err and 'chatgpt-train collect --run' in err


def test_cli_bad_value_and_broken_file(tmp_path, capsys):
    write_collect(tmp_path, GOOD[:3] + ['{"id": "broken", "turns": ['])
    assert main(['clean', '--run', str(tmp_path)]) == 2
    assert 'conversations.jsonl:4' in capsys.readouterr().err
    write_collect(tmp_path, GOOD[:3])
    assert main(['clean', '--run', str(tmp_path), '--val-fraction', '1.5']) == 2
    assert 'val_fraction must be in [0, 1)' in capsys.readouterr().err


BAD = ['null', '42', '"text"', '[]', '{}', '{"id": "no-turns"}', '{"id": 5, "turns": []}', '{"id": "t", "turns": "hello"}',
       '{"id": "r", "turns": [{"role": "bot", "text": "x"}]}', '{"id": "s", "turns": ["hi", "there"]}',
       '{"id": "none", "turns": [{"role": "user", "text": null}, {"role": "assistant", "text": "a"}, {"role": "user", "text": "b"}]}',
       '{"id": "obj", "turns": [{"role": "user", "text": {"a": 1}}, {"role": "assistant", "text": [1]}, {"role": "user", "text": 3.5}]}',
       '{"id": "notext", "turns": [{"role": "user"}, {"role": "assistant", "text": "x"}, {"role": "user", "text": "y"}]}',
       '{"id": "sur", "turns": [{"role": "user", "text": "lone \\ud800 half"}, {"role": "assistant", "text": "pair \\ud83d\\ude00"}]}',
       '{"id": "moji", "turns": [{"role": "user", "text": "cafÃ© naÃ¯ve"}, {"role": "assistant", "text": "&lt;3 &amp; \\u200bhi"}]}',
       '{"id": "ctrl", "turns": [{"role": "user", "text": "\\u0000\\u0007\\u001b[31m"}, {"role": "assistant", "text": "c"}, {"role": "user", "text": "d"}]}',
       '{"id": "meta", "source": "x", "turns": [{"role": "user", "text": "e"}, {"role": "assistant", "text": "f"}], "meta": {"k": "\\udcff"}}']


def test_bad_input_never_crashes(tmp_path):
    huge = conv('huge', 'x y z ' * 200_000, 'reply to it', 'more', 'and more')
    write_collect(tmp_path, BAD + [huge, conv('ok', 'g', 'h'), conv('ok', 'repeated', 'id')])
    assert main(['clean', '--run', str(tmp_path), '--max-text-chars', '1000000', '--val-fraction', '0']) == 0
    kept, removed, report = outputs(tmp_path)
    check_report(report)
    texts = {c['id']: [t['text'] for t in c['turns']] for c in kept}
    assert texts['sur'] == ['lone \ufffd half', 'pair 😀'] and texts['moji'] == ['café naïve', '<3 & hi']
    assert texts['none'] == ['a', 'b'] and texts['notext'] == ['x', 'y'] and texts['ctrl'] == ['c', 'd']
    assert texts['huge'] == ['more', 'and more'] and texts['ok'] == ['g', 'h'] and texts['meta'] == ['e', 'f'] and 'obj' not in texts
    reasons = Counter(r['reason'] for r in removed)
    assert reasons['not a conversation'] == 4 and reasons['repeated id'] == 1 and reasons['huge turn'] == 1
    assert reasons['bad role'] == 1 and reasons['bad turn'] == 1 and reasons['bad id'] == 2 and reasons['bad turns'] == 2
    assert kept[0]['split'] == 'train'


def test_bytes_and_mixed_encodings():
    mixed = 'caf\xe9 '.encode('cp1252') + 'na\u00efve \U0001F600'.encode('utf-8')
    kept, report = clean_conversations([conv('b', mixed, b'plain')], CleanConfig(val_fraction=0))
    assert [t['text'] for t in kept[0]['turns']] == ['café naïve 😀', 'plain']
    assert report['steps'][0]['turns_changed'] == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.text(st.characters(blacklist_categories=())), st.none(), st.integers(),
                                   st.binary(max_size=20)), min_size=1, max_size=5), max_size=6))
def test_any_text_adds_up(turn_texts):
    convs = [conv(f'c{i}', *texts) for i, texts in enumerate(turn_texts)]
    removed = []
    kept, report = clean_conversations(convs, CleanConfig(val_fraction=0.3), removed)
    check_report(report)
    for c in kept:
        assert len(c['turns']) >= 2 and c['split'] in ('train', 'val')
        for t in c['turns']:
            assert isinstance(t['text'], str) and t['text'] == t['text'].strip() and t['text']
            t['text'].encode('utf-8')  # writable
    json.dumps(removed, ensure_ascii=False, default=str).encode('utf-8')


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=('Cs',))))
def test_fix_unicode_leaves_no_controls(text):
    out = fix_unicode(text)
    assert out == out.strip() and '\r' not in out and '\n\n\n' not in out and '  ' not in out
    assert not any(ord(ch) < 32 and ch != '\n' for ch in out)
    assert fix_unicode(out) == fix_unicode(fix_unicode(out))


def test_content_filter_falls_back_to_patterns(monkeypatch):
    content.profanity_classifier.cache_clear()
    monkeypatch.setitem(sys.modules, 'profanity_check', None)  # import now fails, as when the extra is not installed
    msgs = []
    handler = logging.Handler(); handler.emit = lambda r: msgs.append(r.getMessage())
    log = logging.getLogger('clean'); log.addHandler(handler)
    try:
        flags = content_flags(['you are a stupid idiot', 'I will kill you', 'have a nice day'])
        kept, report = clean_conversations([conv('p', 'hi', 'I will kill you', 'sorry', 'fine')], CleanConfig(val_fraction=0))
    finally:
        log.removeHandler(handler); content.profanity_classifier.cache_clear()
    assert [f.category for f in flags] == ['mild', 'violence', None] and all(f.score == 0 for f in flags)
    assert any('alt-profanity-check is not available' in m for m in msgs)
    assert [t['text'] for t in kept[0]['turns']] == ['hi', 'fine']  # the threat, and the reply that needs it
    assert {s['step']: s for s in report['steps']}['profanity']['scorer'] == 'patterns'


def test_content_filter_actions():
    convs = [conv('p', 'hi', 'you are a stupid idiot', 'sorry', 'fine', 'you should go kill yourself', 'Anyway, what classes are you taking next semester?')]
    kept, report = clean_conversations(convs, CleanConfig(val_fraction=0))
    assert [t['text'] for t in kept[0]['turns']] == ['hi', 'you are a stupid idiot', 'sorry', 'fine\nAnyway, what classes are you taking next semester?']
    assert {s['step']: s for s in report['steps']}['profanity']['flagged'] == {'mild': 1, 'self_harm': 1}
    removed = []
    mild_too = clean_conversations(convs, CleanConfig(val_fraction=0, drop_categories='mild,self_harm'), removed)[0]
    assert [t['text'] for t in mild_too[0]['turns']] == ['hi', 'fine\nAnyway, what classes are you taking next semester?']
    assert {r['reason'] for r in removed} >= {'mild content', 'self_harm content', 'reply to a dropped turn'}
    assert clean_conversations(convs, CleanConfig(val_fraction=0, profanity='conversation'))[0] == []
    assert len(clean_conversations(convs, CleanConfig(val_fraction=0, profanity='off'))[0][0]['turns']) == 6
    with pytest.raises(UserError, match='unknown content categories rude'): CleanConfig(drop_categories='rude')


def test_content_filter_on_the_labelled_sample():
    "Precision and recall of the default filter on the hand-labelled turns that ship with the package (see 02a_content)."
    pytest.importorskip('profanity_check')
    rows = load_content_labels()
    assert len([r for r in rows if r['source'] == 'chitchat']) >= 300
    flags = content_flags([r['text'] for r in rows])
    corpus = [(r['label'], f) for r, f in zip(rows, flags) if r['source'] == 'chitchat']
    flagged = filter_scores([l for l, _ in corpus], [f for _, f in corpus], frozenset(content.CATEGORIES))
    assert flagged['precision'] >= 0.8 and flagged['recall'] >= 0.8, flagged
    dropped = filter_scores([r['label'] for r in rows], flags)
    assert dropped['positives'] >= 30 and dropped['precision'] >= 0.8 and dropped['recall'] >= 0.8, dropped


def test_spelling_flag(tmp_path):
    write_collect(tmp_path, [conv('s', 'i recieve teh mail lol', 'definately ok')] + GOOD[:3])
    assert main(['clean', '--run', str(tmp_path), '--spelling']) == 0
    kept, _, report = outputs(tmp_path)
    assert [t['text'] for t in kept[0]['turns']] == ['i receive the mail lol', 'definitely ok']
    assert next(s for s in report['steps'] if s['step'] == 'spelling')['words_changed'] == 3


def test_near_duplicates_and_split():
    base = ('we went hiking up the mountain trail on saturday and saw a family of deer near the lake before the rain started '
            'so we turned back early and had soup')
    convs = [conv('a', base, 'that sounds like a lovely day out'), conv('b', base + ' together', 'that sounds like a lovely day out'),
             conv('c', 'something else entirely about cooking pasta at home with fresh basil', 'yum')]
    removed = []
    kept, report = clean_conversations(convs, CleanConfig(val_fraction=0), removed)
    assert [c['id'] for c in kept] == ['a', 'c']
    assert removed[0]['reason'] == 'near duplicate' and removed[0]['detail'].endswith('similar to a')
    # with near-dup removal off, a copy on the other side of the split is caught by the split's own check
    ids = [f'x{i}' for i in range(400)]
    t, v = next(i for i in ids if split_of(i, 0.5) == 'train'), next(i for i in ids if split_of(i, 0.5) == 'val')
    pair = [conv(t, base, 'nice'), conv(v, base + ' together', 'nice')]
    kept, report = clean_conversations(pair, CleanConfig(val_fraction=0.5))
    assert report['split']['near_dups_across_split'] == 0 and report['split']['near_dups_across_split_found'] == 0
    from chatgpt_train.split import split_conversations
    out, s = split_conversations(pair, 0.5)
    assert (s['near_dups_across_split_found'], s['moved_to_train'], [c['split'] for c in out]) == (1, 1, ['train', 'train'])


def test_load_conversations_errors(tmp_path):
    with pytest.raises(UserError, match='chatgpt-train clean --run'): load_conversations(str(tmp_path))
    with pytest.raises(UserError, match='split must be train or val'): load_conversations(str(tmp_path), 'test')
