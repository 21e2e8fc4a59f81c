"""Faults: kills at random moments (one in the middle of a checkpoint write), a full disk, a non-finite loss, hostile pickles
and remote code, two writers on one run folder, and Ctrl-C in every stage. Nothing is lost or half written, and every
failure says what happened and what to do."""
import errno, json, os, random, signal, shutil, subprocess, sys, time
from pathlib import Path

import pytest
import torch

import chatgpt_train.train as train_mod
from chatgpt_train.cli import main
from chatgpt_train.runs import INCOMPLETE, LOCK
from chatgpt_train.jsonio import write_jsonl
from toy_run import BIN, ENV, FAST, checkpoint_step, cli, kill, metrics, start, wait_for, weights

KILLS = 3  # SIGKILLs survived by one pretraining run (the README's reliability section quotes it)
SEED = int(os.environ.get('RELIABILITY_SEED', time.time_ns() % 10_000))  # the kill moments; rerun a failure with this seed

# Runs a command of chatgpt-train with one fault planted, then waits: `flag` appears when it reaches the fault.
#   save N TARGET:    the N-th torch.save writes half its bytes to the file, then the process hangs (to be killed)
#   replace N FOLDER: the N-th file renamed into FOLDER has landed, then the process hangs (to be interrupted)
#   call N MOD:FUNC:  the N-th call of FUNC in chatgpt_train module MOD hangs before it runs (to be interrupted)
DRIVER = '''
import importlib, io, os, sys, time
from pathlib import Path
mode, n, flag, target, argv = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5:]
count = [0]
def reached():
    count[0] += 1
    return count[0] == n
def hang():
    flag.touch()
    time.sleep(600)
if mode == 'save':
    import torch
    real_save = torch.save
    def save(obj, f, *a, **k):
        if not reached(): return real_save(obj, f, *a, **k)
        buf = io.BytesIO(); real_save(obj, buf, *a, **k)
        with open(f, 'wb') as out: out.write(buf.getvalue()[:len(buf.getvalue()) // 2]); out.flush(); os.fsync(out.fileno())
        hang()
    torch.save = save
elif mode == 'replace':
    folder, real_replace = Path(target).resolve(), os.replace
    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if Path(dst).resolve().is_relative_to(folder) and reached(): hang()
    os.replace = replace
else:
    mod, name = target.split(':')
    mod = importlib.import_module(f'chatgpt_train.{mod}')
    real_fn = getattr(mod, name)
    def fn(*a, **k):
        if reached(): hang()
        return real_fn(*a, **k)
    setattr(mod, name, fn)
from chatgpt_train.cli import main
sys.exit(main(argv))
'''


@pytest.fixture(scope='module')
def driver(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp('driver')/'driver.py'
    p.write_text(DRIVER)
    return p


def test_three_kills_one_mid_checkpoint_resume_to_identical_weights(toy, tmp_path, driver):
    "SIGKILL at three random moments (one while a checkpoint is half written); each resume continues; the end is bit-identical."
    rng = random.Random(SEED)
    print(f"RELIABILITY_SEED={SEED}")
    whole, parts = tmp_path/'whole', tmp_path/'parts'
    shutil.copytree(toy, whole); shutil.copytree(toy, parts)
    args = [*FAST, '--max-steps', '150', '--save-every', '5', '--eval-every', '50', '--log-every', '5']
    ck = parts/'base'/'checkpoints'/'last.pt'
    has_ckpt = lambda after: ck.exists() and checkpoint_step(parts) >= after

    # 1: at a random checkpoint past the start; meanwhile a second writer is refused
    first = rng.randrange(10, 40, 5)
    p = start('pretrain', '--run', str(parts), *args, log=tmp_path/'kill1.txt')
    wait_for(lambda: has_ckpt(first), p, 'a checkpoint')
    second = cli('encode', '--run', str(parts))
    assert second.returncode == 2 and f'is in use by process {p.pid}' in second.stderr and 'writing base/' in second.stderr, second.stderr
    kill(p)
    kills = [checkpoint_step(parts)]

    # 2: in the middle of writing a checkpoint: half the bytes are on disk under a temporary name
    flag = tmp_path/'in_save'
    p = start('pretrain', '--run', str(parts), '--resume', log=tmp_path/'kill2.txt', driver=driver,
              fault=('save', str(rng.randint(2, 4)), str(flag), '-'))
    wait_for(flag.exists, p, 'the checkpoint write')
    err = kill(p)
    assert 'took over the lock' in err and 'which has ended' in err, err
    half = list((parts/'base'/'checkpoints').glob('.*.tmp'))
    assert len(half) == 1 and half[0].stat().st_size > 0  # the torn write is there, under its temporary name only
    kills.append(checkpoint_step(parts))  # and last.pt is the previous checkpoint, whole
    assert kills[1] > kills[0]

    # 3: at a random moment between two checkpoints
    p = start('pretrain', '--run', str(parts), '--resume', log=tmp_path/'kill3.txt')
    wait_for(lambda: has_ckpt(kills[1] + 5), p, 'a new checkpoint')
    time.sleep(rng.uniform(0, 0.3))
    kill(p)
    kills.append(checkpoint_step(parts))
    assert (parts/'base'/INCOMPLETE).exists() and (parts/LOCK).exists()  # what a killed run leaves: a mark, and a lock nobody holds

    refused = cli('evaluate', '--run', str(parts))
    assert refused.returncode == 2 and 'base/ is unfinished' in refused.stderr and '--resume' in refused.stderr, refused.stderr
    done = cli('pretrain', '--run', str(whole), *args)
    assert done.returncode == 0, done.stderr
    resumed = cli('pretrain', '--run', str(parts), '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert f'after step {kills[-1]}' in resumed.stderr
    a, b = weights(whole), weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r['step'] for r in metrics(parts) if 'loss' in r]
    assert steps == list(range(5, 151, 5))  # lines written after a kill's last checkpoint are gone, none twice
    assert [r['loss'] for r in metrics(parts) if 'loss' in r] == [r['loss'] for r in metrics(whole) if 'loss' in r]
    left = [p.name for p in (parts/'base').rglob('*') if p.name == INCOMPLETE or p.name.endswith('.tmp')]
    assert left == [] and not (parts/LOCK).exists(), left
    assert len(kills) == KILLS


def test_disk_full_while_saving_keeps_the_previous_checkpoint(run, monkeypatch, capsys):
    real, calls = torch.save, [0]
    def full_disk(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] < 3: return real(obj, f, *a, **k)
        Path(f).write_bytes(b'\0' * 4096)  # some bytes got out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, 'save', full_disk)
    assert main(['pretrain', '--run', str(run), *FAST, '--max-steps', '8', '--save-every', '2', '--eval-every', '100']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'cannot write the checkpoint after step 6 (No space left on device)' in err, err
    assert 'after step 4) is intact' in err and 'then resume' in err
    ck = run/'base'/'checkpoints'
    assert checkpoint_step(run) == 4 and [p.name for p in ck.iterdir()] == ['last.pt']  # loadable, no torn file beside it
    assert (run/'base'/INCOMPLETE).exists() and not (run/LOCK).exists()
    monkeypatch.setattr(torch, 'save', real)  # space freed
    assert main(['pretrain', '--run', str(run), '--resume']) == 0
    assert checkpoint_step(run) == 8 and not (run/'base'/INCOMPLETE).exists()


def test_non_finite_loss_mid_run_keeps_the_last_good_checkpoint(run, monkeypatch, capsys):
    real, calls = train_mod.lm_loss, [0]
    def nan_at_step_7(logits, labels, **kw):
        loss = real(logits, labels, **kw)
        if not torch.is_grad_enabled(): return loss  # a held-out evaluation
        calls[0] += 1
        return loss * float('nan') if calls[0] == 7 else loss  # one micro-batch a step (FAST): the 7th step
    monkeypatch.setattr(train_mod, 'lm_loss', nan_at_step_7)
    assert main(['pretrain', '--run', str(run), *FAST, '--max-steps', '10', '--save-every', '3', '--eval-every', '100']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'the loss became nan at step 7 of 10' in err and 'after step 6, is kept' in err and 'resume' in err, err
    assert checkpoint_step(run) == 6
    monkeypatch.setattr(train_mod, 'lm_loss', real)
    assert main(['pretrain', '--run', str(run), '--resume']) == 0
    assert checkpoint_step(run) == 10


class Planted:
    "What a hostile pickle does: run a command while it is being loaded."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def test_a_planted_pickle_is_refused_unexecuted(run, tmp_path):
    marker = tmp_path/'it_ran'
    # a resumable checkpoint
    assert cli('pretrain', '--run', str(run), *FAST, '--max-steps', '2').returncode == 0
    torch.save({'step': 1, 'model': Planted(marker)}, run/'base'/'checkpoints'/'last.pt')
    r = cli('pretrain', '--run', str(run), '--resume')
    assert r.returncode == 2 and 'could run code if loaded: refused' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    # a model folder whose weights are a pickle
    folder = tmp_path/'downloaded'
    shutil.copytree(run/'base', folder, ignore=shutil.ignore_patterns('checkpoints', INCOMPLETE))
    (folder/'model.safetensors').unlink()
    torch.save({'transformer.wte.weight': Planted(marker)}, folder/'pytorch_model.bin')
    for argv in (['chat', '--model', str(folder)], ['evaluate', '--run', str(run), '--model', str(folder)]):
        r = subprocess.run([str(BIN/'chatgpt-train'), *argv], env=ENV, capture_output=True, text=True, input='hi\n', timeout=300)
        assert r.returncode == 2 and 'weights only as pickles (pytorch_model.bin)' in r.stderr, (argv, r.stderr)
    assert not marker.exists()  # refused without being run


def test_a_stale_lock_is_cleared_and_a_live_one_refuses(run):
    "A lock file left by a process that has ended is taken over; one held by a live process refuses, naming it."
    (run/LOCK).write_text(json.dumps(dict(pid=2**22 + 7, host='old-host', what='clean/', started='yesterday')))
    r = cli('encode', '--run', str(run))
    assert r.returncode == 0 and 'took over the lock' in r.stderr and 'writing clean/ since yesterday' in r.stderr, r.stderr
    assert not (run/LOCK).exists()
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time\nfrom chatgpt_train.runs import run_lock\n'
                               f'with run_lock({str(run)!r}, "a test"):\n print("held", flush=True); time.sleep(120)'],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        for argv in (['encode', '--run', str(run)], ['run', '--run', str(run)]):
            r = cli(*argv)
            assert r.returncode == 2 and r.stderr.count('\n') == 1 and f'in use by process {holder.pid}' in r.stderr, r.stderr
    finally:
        holder.kill(); holder.wait()


# each stage, interrupted just after the first file it writes lands: (command, folder it writes, a later command that reads it)
STAGES = [
    (['collect', '--source', '{data}'], 'collect', ['clean']),
    (['clean'], 'clean', ['tokenizer', '--vocab-size', '300']),
    (['tokenizer', '--vocab-size', '300'], 'tokenizer', ['encode']),
    (['encode'], 'encode', ['pretrain', *FAST, '--max-steps', '2']),
    (['pretrain', *FAST, '--max-steps', '4', '--save-every', '2'], 'base', ['evaluate', '--max-tokens', '500', '--no-samples']),
    (['finetune', '--data', '{data}', '--max-steps', '2', '--minutes', '0', '--max-new-tokens', '4', '--block-size', '32'], 'sft',
     ['evaluate', '--model', 'sft', '--max-tokens', '500', '--no-samples']),
]


def test_ctrl_c_in_any_stage_leaves_nothing_taken_for_finished(tmp_path, driver):
    "SIGINT after each stage's first file: the stage says so, its folder is marked, a later stage refuses it, a rerun mends it."
    data = tmp_path/'chats.jsonl'
    g = random.Random(0)
    words = 'hello how are you today fine thanks what do like music films the weather is nice cold'.split()
    write_jsonl([dict(turns=[dict(role=r, text=' '.join(g.choice(words) for _ in range(g.randint(3, 9))))
                             for r in ('user', 'assistant') * 2]) for _ in range(200)], data)
    run = tmp_path/'run'
    for i, (argv, folder, later) in enumerate(STAGES):
        argv = [a.replace('{data}', str(data)) for a in argv]
        flag = tmp_path/f'flag{i}'
        p = start(argv[0], '--run', str(run), *argv[1:], log=tmp_path/f'log{i}.txt', driver=driver,
                  fault=('replace', '1', str(flag), str(run/folder)))
        wait_for(flag.exists, p, f'{argv[0]} writing its first file')
        err = kill(p, signal.SIGINT)
        assert p.returncode == 130 and err.strip().splitlines()[-1] == f'chatgpt-train {argv[0]}: interrupted', err
        assert (run/folder/INCOMPLETE).exists() and not (run/LOCK).exists(), argv[0]
        assert not [t for t in (run/folder).rglob('*.tmp')], argv[0]  # Ctrl-C leaves no temporary behind
        r = cli(later[0], '--run', str(run), *later[1:])
        assert r.returncode == 2 and f'{folder}/ is unfinished' in r.stderr and f'chatgpt-train {argv[0]}' in r.stderr, r.stderr
        r = cli(argv[0], '--run', str(run), *argv[1:])  # the rerun finishes it
        assert r.returncode == 0 and not (run/folder/INCOMPLETE).exists(), r.stderr
    # evaluate writes one file, atomically, at its end: interrupted on the way, it leaves none
    flag = tmp_path/'flag_eval'
    p = start('evaluate', '--run', str(run), '--max-tokens', '500', log=tmp_path/'log_eval.txt', driver=driver,
              fault=('call', '1', str(flag), 'evaluate:lm_metrics'))
    wait_for(flag.exists, p, 'evaluate scoring')
    assert kill(p, signal.SIGINT).strip().endswith('chatgpt-train evaluate: interrupted') and p.returncode == 130
    assert not (run/'eval'/'base.json').exists() and not list((run/'eval').glob('.*.tmp')) and not (run/LOCK).exists()
