"""Hostile inputs to the align and fine-tune stages and to the preference reader (issue 30).

A mistyped --data leaves a finished model folder as it was; a file with no usable pair still gets its own quarantine; a
huge pair file costs what its steps use; pipes, bad links, folders named like files and UTF-16 files each get a
quarantine line.
"""
import hashlib, json, os, shutil, signal, time
from contextlib import contextmanager

import pytest

from chatgpt_train.cli import main
from chatgpt_train.jsonio import write_jsonl
from chatgpt_train.preferences import read_preferences
from toy_run import SFT_FAST, chat_run

ALIGN = ['--block-size', '64', '--batch-size', '4', '--precision', 'fp32', '--minutes', '0', '--max-new-tokens', '8',
         '--eval-every', '5', '--log-every', '5']


def good_pairs(n, tag=''):
    return [dict(prompt=f'What is your name? ({tag}{i})', chosen='My name is Tock.', rejected='I do not know.')
            for i in range(n)]


def bad_pairs(n):
    "Records that are no pair: each lacks its rejected reply."
    return [dict(prompt=f'Hi {i}', chosen='Hello') for i in range(n)]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def aligned(tmp_path_factory, one_thread):
    "The chat-ready toy run with a fine-tuned sft/ and an aligned/ from a file whose 7 bad records were quarantined."
    run = chat_run(tmp_path_factory.mktemp('hostile')/'run')
    assert main(['finetune', '--run', str(run), '--data', str(run.parent/'tock.jsonl'), *SFT_FAST,
                 '--max-steps', '4']) == 0
    write_jsonl(good_pairs(40) + bad_pairs(7), run.parent/'prefs.jsonl')
    assert main(['align', '--run', str(run), '--data', str(run.parent/'prefs.jsonl'), *ALIGN, '--max-steps', '2']) == 0
    assert len((run/'aligned'/'data'/'quarantine.jsonl').read_text().splitlines()) == 7
    return run


def folder_state(folder):
    "What a finished model folder holds that a failed attempt must leave alone."
    return dict(mark=(folder/'INCOMPLETE').exists(), model=digest(folder/'model.safetensors'),
                files=sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.name != 'log.txt'))


def test_align_with_a_mistyped_data_path_leaves_aligned_alone(aligned, tmp_path, capsys):
    "D1: the input is checked before the stage marks its folder, so chat and serve still find the finished aligned/."
    aligned = shutil.copytree(aligned, tmp_path/'run')  # a copy: a failure here must not spoil the other tests
    before = folder_state(aligned/'aligned')
    assert not before['mark']
    assert main(['align', '--run', str(aligned), '--data', str(tmp_path/'no'/'such'/'file.jsonl'), *ALIGN,
                 '--max-steps', '2']) == 2
    err = capsys.readouterr().err.strip()
    assert 'file.jsonl not found' in err and len(err.splitlines()) == 1
    assert folder_state(aligned/'aligned') == before
    # a model folder that is no model: refused before aligned/ is touched too
    (tmp_path/'nomodel').mkdir()
    assert main(['align', '--run', str(aligned), '--from', str(tmp_path/'nomodel'), *ALIGN, '--max-steps', '2']) == 2
    assert folder_state(aligned/'aligned') == before


def test_finetune_with_a_mistyped_data_path_leaves_sft_alone(aligned, tmp_path, capsys):
    "D1 for the fine-tune stage: its --data is read before sft/ is marked or its data/ replaced."
    aligned = shutil.copytree(aligned, tmp_path/'run')  # a copy: a failure here must not spoil the other tests
    before = folder_state(aligned/'sft')
    assert main(['finetune', '--run', str(aligned), '--data', str(tmp_path/'no_such.jsonl'), *SFT_FAST,
                 '--max-steps', '2']) == 2
    err = capsys.readouterr().err.strip()
    assert 'no_such.jsonl not found' in err and len(err.splitlines()) == 1
    assert folder_state(aligned/'sft') == before
    (tmp_path/'junk.jsonl').write_text('not json\n' * 3)  # read, but no conversation in it
    assert main(['finetune', '--run', str(aligned), '--data', str(tmp_path/'junk.jsonl'), *SFT_FAST,
                 '--max-steps', '2']) == 2
    assert folder_state(aligned/'sft') == before
    # a --from folder that cannot load: refused before sft/ is marked
    broken = shutil.copytree(aligned/'base', tmp_path/'broken')
    (broken/'config.json').write_text('{"model_type": "qwen3", "num_hidden_layers": 10000000}')
    assert main(['finetune', '--run', str(aligned), '--from', str(broken), *SFT_FAST, '--max-steps', '2']) == 2
    assert folder_state(aligned/'sft') == before


def test_a_file_with_no_usable_pair_has_its_own_quarantine(aligned, tmp_path, capsys):
    "D2: the quarantine the message names holds exactly the 54 records of this file, and aligned/'s own is unchanged."
    aligned = shutil.copytree(aligned, tmp_path/'run')  # a copy: a failure here must not spoil the other tests
    data = tmp_path/'all_bad.jsonl'
    write_jsonl(bad_pairs(54), data)
    before = folder_state(aligned/'aligned')
    kept = (aligned/'aligned'/'data'/'quarantine.jsonl').read_text()
    assert main(['align', '--run', str(aligned), '--data', str(data), *ALIGN, '--max-steps', '2']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '54 quarantined' in err
    named = err.split('see ')[1].split(')')[0].split(' ')[0].rstrip(';,')
    rows = [json.loads(l) for l in open(named, encoding='utf-8')]
    assert len(rows) == 54 and all(r['kind'] == 'missing-field' and 'no rejected' in r['reason'] for r in rows)
    assert [r['source'] for r in rows] == [f'{data}:{i}' for i in range(1, 55)]
    assert (folder_state(aligned/'aligned') == before
            and (aligned/'aligned'/'data'/'quarantine.jsonl').read_text() == kept)


def test_a_huge_pair_file_costs_what_its_steps_use(aligned, tmp_path, monkeypatch):
    "H5: on 20,000 pairs, 3 steps of 4 pairs score 24 training rows with the reference, not 40,000 (val is capped)."
    import chatgpt_train.align as align
    scored = []  # rows the reference model scores: up front (`with_reference`) or as batches are used (`Reference`)
    real_with = align.with_reference
    monkeypatch.setattr(align, 'with_reference',
                        lambda model, ex, *a, **k: scored.append(2 * len(ex)) or real_with(model, ex, *a, **k))
    if hasattr(align, 'Reference'):
        real_call = align.Reference.__call__
        monkeypatch.setattr(align.Reference, '__call__',
                            lambda self, b: scored.append(len(b['input_ids'])) or real_call(self, b))
    big, took = tmp_path/'big.jsonl', {}
    write_jsonl(good_pairs(20_000), big)
    run = shutil.copytree(aligned, tmp_path/'run')
    t0 = time.time()
    assert main(['align', '--run', str(run), '--data', str(big), *ALIGN, '--max-steps', '3']) == 0
    took = time.time() - t0
    res = json.loads((run/'eval'/'align.json').read_text())
    assert res['data']['train_pairs'] + res['data']['val_pairs'] == 20_000 and res['data']['val_pairs'] <= 500
    assert sum(scored) <= 2 * 500 + 3 * 4 * 2, (sum(scored), took)  # the held-out pairs once, then each step's batch


@contextmanager
def deadline(seconds):
    "Fail instead of hanging: opening a named pipe waits for a writer forever."
    def stop(*_): raise TimeoutError(f'still running after {seconds} s: something opened a named pipe')
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try: yield
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)


def odd_folder(folder, record):
    "One good file and every kind of entry that is not: a pipe, two bad links, a folder named like a file, UTF-16 text."
    folder.mkdir()
    (folder/'good.jsonl').write_text(json.dumps(record) + '\n')
    os.mkfifo(folder/'pipe.jsonl')
    (folder/'loop.jsonl').symlink_to(folder/'loop.jsonl')
    (folder/'gone.jsonl').symlink_to(folder/'moved_away.jsonl')
    (folder/'x.jsonl').mkdir()
    (folder/'notepad.jsonl').write_text(json.dumps(record) + '\n', encoding='utf-16')
    (folder/'no_mark.jsonl').write_bytes((json.dumps(record) + '\n').encode('utf-16-le'))
    return folder


REASONS = {'gone.jsonl': 'points to nothing', 'loop.jsonl': 'points to itself',
           'no_mark.jsonl': 'UTF-16 text: save it as UTF-8', 'notepad.jsonl': 'UTF-16 text: save it as UTF-8',
           'pipe.jsonl': 'a named pipe, not a file', 'x.jsonl': 'a folder named like a file'}


def test_odd_entries_in_a_preference_folder(tmp_path):
    folder = odd_folder(tmp_path/'prefs', good_pairs(1)[0])
    with deadline(60): pairs, quarantined = read_preferences(folder)
    assert len(pairs) == 1
    got = {os.path.basename(q['source']): q['reason'] for q in quarantined}
    assert set(got) == set(REASONS) and all(REASONS[k] in got[k] for k in REASONS), got
    with deadline(60):
        for name in ('pipe.jsonl', 'loop.jsonl', 'gone.jsonl'):
            with pytest.raises(Exception, match=REASONS[name]): read_preferences(folder/name)
        pairs, quarantined = read_preferences(folder/'notepad.jsonl')
    assert pairs == [] and [q['reason'] for q in quarantined] == ['UTF-16 text: save it as UTF-8; the file is not read']


def test_odd_entries_in_a_collect_folder(tmp_path, capsys):
    folder = odd_folder(tmp_path/'chats', dict(id='c1', prompt='hi', response='hello'))
    with deadline(120): assert main(['collect', '--run', str(tmp_path/'run'), '--source', str(folder)]) == 0
    quarantine = [json.loads(l) for l in (tmp_path/'run'/'collect'/'quarantine.jsonl').read_text().splitlines()]
    got = {os.path.basename(q['file']): q['reason'] for q in quarantine}
    assert set(got) == set(REASONS) and all(REASONS[k] in got[k] for k in REASONS), got
    with deadline(60):
        assert main(['collect', '--run', str(tmp_path/'run2'), '--source', str(folder/'pipe.jsonl')]) == 2
    assert 'a named pipe, not a file' in capsys.readouterr().err
