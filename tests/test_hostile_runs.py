"""Run folders treated roughly: a pretraining on a time budget killed and resumed, `chatgpt-train run` killed and rerun,
a damaged or deleted `pipeline.json`, stage files cut or rewritten behind the pipeline's back, and model folders left
unfinished. Nothing finished is lost, nothing damaged passes for done, and every refusal is one line."""
import hashlib, json, re, shutil, subprocess, sys
from pathlib import Path

import pytest

from chatgpt_train import cli
from chatgpt_train.cli import (budget_step, DATA_STEPS, kept_values, pipeline_steps, run_all, stage_parser,
                               step_state)
from chatgpt_train.runs import INCOMPLETE
from chatgpt_train.jsonio import load_json, save_json
from chatgpt_train.model import model_dir
from toy_run import BIN, ENV, FAST, call, kill, start, wait_for

# A tiny end-to-end run without preference training: 300 chitchat records, the micro preset for 10 steps, 5 fine-tuning
# steps.
TINY = ['--preset', 'micro', '--limit', '300', '--vocab-size', '512', '--max-steps', '10', '--sft-steps', '5',
        '--eval-tokens', '2048', '--no-align', '--chats', '0']
DATA_STEPS = ['collect', 'clean', 'tokenizer', 'encode', 'pretrain']


def chatgpt_train(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN/'chatgpt-train'), *args], env={**ENV, 'HF_HUB_OFFLINE': '1'}, capture_output=True,
                          text=True, timeout=300, **kw)


def states(out: str) -> dict:
    "What the summary says each step did: {step: ran|resumed|skipped}."
    return {m[1]: m[2] for m in re.finditer(r'^  (\w+(?: \w+)?) +(ran|resumed|skipped) ', out, re.M)}


def problems(err: str) -> list[str]:
    "The lines of stderr that are not a stage's log lines."
    return [l for l in err.splitlines() if l.strip() and not re.match(r'\d\d:\d\d:\d\d \w+: ', l)]


def first_steps(monkeypatch, n):
    "Make `run` take only its first `n` steps."
    steps = cli.pipeline_steps
    monkeypatch.setattr(cli, 'pipeline_steps', lambda a: steps(a)[:n])


def sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()


def load_pipeline(path: Path) -> dict: return json.loads(path.read_text())


@pytest.fixture(scope='module')
def finished(tmp_path_factory) -> Path:
    "A finished tiny run (through fine-tuning and its evaluation); tests copy it."
    run = tmp_path_factory.mktemp('finished')/'demo'
    r = chatgpt_train('run', '--run', str(run), *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


@pytest.fixture
def demo(finished, tmp_path) -> Path:
    run = tmp_path/'demo'
    shutil.copytree(finished, run)
    return run


# --- T1: a time-budget run resumes ------------------------------------------------------------------------------------

def test_minutes_pretraining_killed_then_resumed(run, tmp_path):
    "SIGKILL after the first checkpoint of a pretraining on --minutes; --resume finishes it (it raised a TypeError)."
    p = start('pretrain', '--run', str(run), *FAST, '--minutes', '0.1', '--save-every', '5', '--log-every', '5',
              log=tmp_path/'kill.txt')
    wait_for((run/'base'/'checkpoints'/'last.pt').exists, p, 'the first checkpoint')
    kill(p)
    r = chatgpt_train('pretrain', '--run', str(run), '--resume')
    assert r.returncode == 0 and 'resumed from' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert (run/'base'/'model.safetensors').exists() and not (run/'base'/INCOMPLETE).exists()


RUN_TO_PRETRAIN = ('import sys; from chatgpt_train import cli; steps = cli.pipeline_steps\n'
                   'def five(a):\n    s = steps(a)[:5]; s[4].kwargs["save_every"] = 5; return s\n'
                   'cli.pipeline_steps = five; sys.exit(cli.main(sys.argv[1:]))')


def test_run_killed_mid_pretraining_reruns_to_the_end(tmp_path):
    "`chatgpt-train run` (pretraining planned on minutes) killed after a checkpoint; the same command finishes it."
    run = tmp_path/'demo'
    argv = ['run', '--run', str(run), '--preset', 'micro', '--limit', '300', '--vocab-size', '512', '--minutes', '0.2',
            '--batch-size', '4', '--chats', '0']
    drv = tmp_path/'drv.py'; drv.write_text(RUN_TO_PRETRAIN)
    p = subprocess.Popen([sys.executable, str(drv), *argv], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path/'log', 'w'))
    p.log = tmp_path/'log'
    wait_for((run/'base'/'checkpoints'/'last.pt').exists, p, 'the first pretraining checkpoint')
    kill(p)
    r = subprocess.run([sys.executable, str(drv), *argv], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'pretrain: resuming' in r.stderr and states(r.stdout)['pretrain'] == 'resumed', r.stdout
    assert (run/'base'/'model.safetensors').exists() and load_pipeline(run/'pipeline.json')['pretrain']['resumed']


# --- D3: no pipeline.json, nothing redone that is whole ---------------------------------------------------------------

def test_run_without_pipeline_json_reuses_finished_steps(demo, capsys):
    model = demo/'base'/'model.safetensors'
    kept = lambda: (model.stat().st_mtime_ns,
                    *(sha(demo/f) for f in ('sft/model.safetensors', 'eval/base.json', 'eval/sft.json')))
    before = kept()
    (demo/'pipeline.json').unlink()
    rc, out, err = call(['run', '--run', str(demo), *TINY], capsys)
    assert rc == 0, err
    assert states(out) == {s: 'skipped' for s in [*DATA_STEPS, 'evaluate base', 'finetune', 'evaluate sft']}, out
    assert kept() == before  # the models and their evaluations (each keeps its own arguments) are reused, not redone
    assert list(load_pipeline(demo/'pipeline.json')) == [*DATA_STEPS, 'evaluate base', 'finetune', 'evaluate sft']
    rc, out, _ = call(['run', '--run', str(demo), *TINY], capsys)  # and now it is all recorded
    assert rc == 0 and set(states(out).values()) == {'skipped'}, out


def test_no_message_advises_deleting_files():
    "A damaged file names the command that rewrites it: advice to delete a file has cost a finished model."
    import chatgpt_train
    src = ''.join(p.read_text() for p in Path(chatgpt_train.__file__).parent.glob('*.py'))
    assert not re.search(r'(delete|remove) (it|the file|pipeline\.json),? (and|then) re(run|start)', src, re.I)


def test_cut_json_names_the_stage_to_rerun(demo, capsys):
    (demo/'encode'/'meta.json').write_text('{"vocab_size": 5')
    rc, _, err = call(['pretrain', '--run', str(demo), '--preset', 'micro'], capsys)
    assert rc == 2 and 'the file is damaged; rerun `chatgpt-train encode --run' in err and 'delete' not in err, err
    assert not (demo/'base'/INCOMPLETE).exists()


# --- T2: a pipeline.json of the wrong shape, a stage folder that is a file --------------------------------------------

@pytest.mark.parametrize('text', ['[1, 2, 3]', '{"collect": {"args": {}, "finished": "yesterday", "seconds": 1}}',
                                  '{"collect": {"args": {"limit": 300}}}', '{"version": 3, "steps": {"collect": {}}}',
                                  '{"collect": {"args": {}, "finished": 1e999, "seconds": 0}}', '{"collect": {"ar'])
def test_damaged_pipeline_json_is_read_as_absent(demo, text, capsys, monkeypatch):
    (demo/'pipeline.json').write_text(text)
    first_steps(monkeypatch, 5)
    rc, out, err = call(['run', '--run', str(demo), *TINY], capsys)
    assert rc == 0 and 'Traceback' not in err, err
    assert [l for l in err.splitlines() if 'pipeline.json' in l and 'damaged' in l].__len__() == 1, err
    assert states(out) == {s: 'skipped' for s in DATA_STEPS}, out
    assert list(load_pipeline(demo/'pipeline.json')) == DATA_STEPS  # rewritten whole


def test_eval_folder_that_is_a_file_is_one_line(demo, capsys):
    shutil.rmtree(demo/'eval'); (demo/'eval').write_text('not a folder')
    rc, out, err = call(['run', '--run', str(demo), *TINY], capsys)
    assert rc == 2 and 'Traceback' not in err, err
    assert problems(err) == [p for p in problems(err)
                             if 'is a file where the eval/ folder of the run should be' in p] != [], err
    assert (demo/'base'/'model.safetensors').exists() and (demo/'eval').read_text() == 'not a folder'


# --- S4: damaged files are noticed -----------------------------------------------------------------------------------

def _cut_train(run): (run/'encode'/'train.bin').write_bytes((run/'encode'/'train.bin').read_bytes()[:100])
def _change_vocab(run):
    meta = json.loads((run/'encode'/'meta.json').read_text()); meta['vocab_size'] += 1
    save_json(meta, run/'encode'/'meta.json')
def _garbage_config(run): (run/'sft'/'config.json').write_text('garbage')
def _no_finetune_eval(run): (run/'eval'/'finetune.json').unlink()

@pytest.mark.parametrize('damage,step,says', [(_cut_train, 'encode', 'train.bin'),
                                              (_change_vocab, 'encode', 'vocab_size'),
                                              (_garbage_config, 'finetune', 'not a causal language model folder'),
                                              (_no_finetune_eval, 'finetune', 'eval/finetune.json is missing')])
def test_damaged_step_is_not_up_to_date(demo, damage, step, says):
    args = vars(stage_parser(run_all, 'run').parse_args(['--run', str(demo), *TINY]))
    steps = {s.name: s for s in pipeline_steps({k: v for k, v in args.items() if k not in ('run', 'chats', 'force')})}
    stamps, plan = load_pipeline(demo/'pipeline.json'), load_json(demo/'plan.json')
    for s in steps.values():  # as a rerun takes them: each with the share of the budget it ran on
        if s.name not in DATA_STEPS: budget_step(s, plan, 0., [], kept_values(s, stamps, demo))
    assert step_state(steps[step], demo, dict(stamps)) == ('done', '')
    damage(demo)
    state, why = step_state(steps[step], demo, dict(stamps))
    assert state == 'run' and says in why and '\n' not in why, why


def test_cut_token_file_redoes_encode_and_what_reads_it(demo, capsys, monkeypatch):
    _cut_train(demo)
    first_steps(monkeypatch, 5)
    rc, out, err = call(['run', '--run', str(demo), *TINY], capsys)
    assert rc == 0, err
    assert states(out) == {'collect': 'skipped', 'clean': 'skipped', 'tokenizer': 'skipped', 'encode': 'ran',
                           'pretrain': 'ran'}, out
    assert (re.search(r'encode: running encode.run_encode \(.*train.bin', err)
            and 'pretrain: running pretrain.run_pretrain (encode ran again' in err), err


def test_pretrain_checks_its_inputs_before_marking_base(demo, capsys):
    "A damaged token file stops pretraining before it touches the finished base/."
    _cut_train(demo)
    rc, _, err = call(['pretrain', '--run', str(demo), '--preset', 'micro'], capsys)
    assert rc == 2 and 'train.bin' in err, err
    assert not (demo/'base'/INCOMPLETE).exists() and model_dir(demo, 'base') == demo/'base'


# --- S3, D1: unfinished model folders --------------------------------------------------------------------------------

def test_chat_refuses_an_unfinished_model_folder_named_as_a_path(demo, capsys):
    (demo/'sft'/INCOMPLETE).write_text("sft/ is unfinished: the process that began writing it failed; "
                                       "rerun `chatgpt-train finetune`\n")
    rc, _, err = call(['chat', '--model', str(demo/'sft')], capsys)
    assert (rc == 2 and len(problems(err)) == 1 and 'sft/ is unfinished' in err
            and 'rerun `chatgpt-train finetune' in err), err
    copy = demo.parent/'elsewhere'; shutil.copytree(demo/'sft', copy)  # any folder with the mark
    with pytest.raises(Exception, match='is unfinished'): model_dir(None, str(copy))


def test_chat_uses_the_newest_finished_model_and_says_what_it_skipped(demo):
    "An aligned/ left unfinished (a failed align) does not hide sft/: chat falls back to it, with one warning line."
    shutil.copytree(demo/'sft', demo/'aligned')
    (demo/'aligned'/INCOMPLETE).write_text("aligned/ is unfinished: the process that began writing it failed "
                                           "(no file x)\n")
    assert model_dir(demo) == demo/'sft'
    r = chatgpt_train('chat', '--run', str(demo), '--max-new-tokens', '4', input='Hello!\n')
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    warned = [l for l in r.stderr.splitlines() if 'aligned/ is unfinished' in l]
    assert len(warned) == 1 and 'using sft/' in warned[0] and 'chatgpt-train align --run' in warned[0], r.stderr
    (demo/'sft'/INCOMPLETE).write_text('sft/ is unfinished\n')  # and with sft/ unfinished too, base/
    assert model_dir(demo) == demo/'base'
