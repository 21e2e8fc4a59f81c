"Data stages at scale: any number of workers and any chunk size give the same files, and an interrupted run leaves no process behind."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import psutil
import pytest

from chatgpt_train import clean as clean_mod
from chatgpt_train.clean import CleanConfig, clean_conversations
from chatgpt_train.cli import main
from chatgpt_train.jsonio import load_json, read_jsonl

EXE = str(Path(sys.executable).parent/'chatgpt-train')


def timeless(report):
    "A clean report without its times and worker count: what must not depend on how the work was shared."
    r = json.loads(json.dumps(report))
    r.pop('seconds'); r.pop('workers'); r['split'].pop('seconds')
    for s in r['steps']: s.pop('seconds')
    return r


@pytest.fixture(scope='module')
def collected(tmp_path_factory):
    "A run with the first 1,500 chitchat conversations collected: six chunks, with duplicates, profanity and one-turn chats."
    run = tmp_path_factory.mktemp('scale')/'base'
    assert main(['collect', '--run', str(run), '--limit', '1500']) == 0
    return run


def clean_with(collected, tmp_path, name, *flags):
    run = tmp_path/name
    shutil.copytree(collected/'collect', run/'collect')
    assert main(['clean', '--run', str(run), *flags]) == 0
    d = run/'clean'
    return (d/'conversations.jsonl').read_bytes(), (d/'removed.jsonl').read_bytes(), load_json(d/'report.json')


@pytest.mark.parametrize('flags', [(), ('--spelling', '--lowercase')])
def test_workers_write_the_same_files(collected, tmp_path, flags):
    one = clean_with(collected, tmp_path, 'one', '--workers', '1', *flags)
    two = clean_with(collected, tmp_path, 'two', '--workers', '2', *flags)
    assert one[0] == two[0] and one[1] == two[1]  # byte for byte: kept conversations, removed records in the same order
    assert timeless(one[2]) == timeless(two[2]) and two[2]['workers'] == 2
    report = one[2]
    assert report['in'] == 1500 and report['in'] == report['out'] + report['removed'] and report['removed'] > 500
    assert {s['step'] for s in report['steps'] if s['removed']} >= {'quality', 'exact'}
    if flags: assert report['steps'][5]['step'] == 'spelling' and report['steps'][5]['words'] > 10_000


def test_chunks_do_not_change_the_result(collected, monkeypatch):
    convs = list(read_jsonl(collected/'collect'/'conversations.jsonl'))[:400]
    removed_a, removed_b = [], []
    kept_a, report_a = clean_conversations(convs, CleanConfig(val_fraction=0.2), removed_a)
    monkeypatch.setattr(clean_mod, 'CHUNK', 7)
    kept_b, report_b = clean_conversations(convs, CleanConfig(val_fraction=0.2), removed_b, workers=2)
    assert kept_a == kept_b and timeless(report_a) == timeless(report_b)
    key = lambda r: json.dumps(r, sort_keys=True)
    assert sorted(map(key, removed_a)) == sorted(map(key, removed_b))  # the same records, grouped by chunk


def test_bad_worker_count(collected, tmp_path, capsys):
    run = tmp_path/'r'
    shutil.copytree(collected/'collect', run/'collect')
    assert main(['clean', '--run', str(run), '--workers', '0']) == 2
    assert '--workers must be at least 1, not 0' in capsys.readouterr().err


def test_interrupted_clean_leaves_no_workers(collected, tmp_path):
    run = tmp_path/'big'
    (run/'collect').mkdir(parents=True)
    lines = (collected/'collect'/'conversations.jsonl').read_text(encoding='utf-8').splitlines()
    with open(run/'collect'/'conversations.jsonl', 'w', encoding='utf-8') as f:  # long enough to be stopped halfway
        for k in range(6):
            for line in lines:
                c = json.loads(line)
                f.write(json.dumps({**c, 'id': f"{c['id']}-{k}"}) + '\n')
    shutil.copy(collected/'collect'/'args.json', run/'collect'/'args.json')
    # as from a terminal: a job started in the background (as CI may be) inherits SIGINT ignored, and Python then keeps it so
    p = psutil.Popen([EXE, 'clean', '--run', str(run), '--workers', '2'], stderr=subprocess.PIPE, start_new_session=True,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and len(p.children()) < 2: time.sleep(0.1)  # the workers are at work
    time.sleep(2)  # halfway through the work, not while the pool starts (that case is the pool's signal mask, in 02_clean)
    workers = p.children()
    assert len(workers) == 2, 'the workers never started'
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, as in a terminal
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and b'interrupted' in err and b'Traceback' not in err  # one line, not a trace from every worker
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert not (run/'clean'/'report.json').exists()  # no report of work not done
    assert main(['clean', '--run', str(run), '--workers', '1']) == 0  # and the stage runs again from the start
    assert load_json(run/'clean'/'report.json')['in'] == 6 * len(lines)


def test_datatrove_local_executor_matches_the_command(collected, tmp_path):
    from chatgpt_train.clean_datatrove import clean_executors
    cmd, dt = tmp_path/'cmd', tmp_path/'dt'
    for r in (cmd, dt): shutil.copytree(collected/'collect', r/'collect')
    assert main(['clean', '--run', str(cmd), '--workers', '2']) == 0
    clean_executors(dt, tasks=3, workers=2)[-1].run()
    for f in ('conversations.jsonl', 'removed.jsonl'): assert (cmd/'clean'/f).read_bytes() == (dt/'clean'/f).read_bytes(), f
    a, b = load_json(cmd/'clean'/'report.json'), load_json(dt/'clean'/'report.json')
    assert b.pop('engine') == 'datatrove' and b['workers'] == 3 and timeless(a) == timeless(b)
    stamp = (dt/'clean'/'report.json').stat().st_mtime_ns
    clean_executors(dt, tasks=3, workers=2, resume=True)[-1].run()  # every task finished: a resubmission redoes nothing
    assert (dt/'clean'/'report.json').stat().st_mtime_ns == stamp
