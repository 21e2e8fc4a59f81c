"""The command line as a user meets it: `--help` for every stage, one-line errors for the mistakes people make, and the
end-to-end `chatgpt-train run` on a tiny budget: its report, its model, and a rerun that skips what is done."""
import json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

from chatgpt_train import cli, collect
from chatgpt_train.cli import COMMANDS, main
from chatgpt_train.core import stage_options
from chatgpt_train.jsonio import load_json
from toy_run import call, ctrl_c_reaches_it

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'CHATGPT_TRAIN_HOME': '', 'HF_HUB_OFFLINE': '1'}
# A tiny end-to-end run: 300 chitchat records, a 512-token vocabulary, the micro preset for 10 steps, 5 fine-tuning steps.
TINY = ['--preset', 'micro', '--limit', '300', '--vocab-size', '512', '--max-steps', '10', '--sft-steps', '5',
        '--eval-tokens', '2048', '--chats', '1']
STEPS = ['collect', 'clean', 'tokenizer', 'encode', 'pretrain', 'evaluate base', 'finetune', 'evaluate sft', 'align', 'evaluate aligned']


def chatgpt_train(*args, timeout=600) -> subprocess.CompletedProcess:
    "`chatgpt-train ARGS` in a subprocess, as a user runs it."
    return subprocess.run([str(BIN/'chatgpt-train'), *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def one_line_error(rc, err, *needles):
    "The mistake was reported as one line on stderr with a non-zero status, and no traceback."
    assert rc == 2, (rc, err)
    lines = [l for l in err.splitlines() if l.strip() and not re.match(r'\d\d:\d\d:\d\d \w+: ', l)]  # the stage's log lines aside
    assert 'Traceback' not in err and len(lines) == 1, err
    for n in needles: assert n in lines[0], (n, lines[0])


# --- help -------------------------------------------------------------------------------------------------------------

def test_top_level_help_is_fast_and_lists_every_command():
    r = chatgpt_train('--help', timeout=60)
    assert r.returncode == 0 and all(f'\n  {c} ' in r.stdout for c in COMMANDS), r.stdout
    # --help must not pay for torch: importing the command line imports no stage module, only the light shared ones
    r = subprocess.run([sys.executable, '-c', 'import sys, chatgpt_train.cli; print(sorted(m for m in sys.modules if m in '
                        '("torch", "transformers") or m.startswith("chatgpt_train.") and m.split(".")[1] not in ("cli", "core", "runs", "jsonio", "conversation")))'],
                       capture_output=True, text=True, env=ENV)
    assert r.stdout.strip() == '[]', r.stdout


def test_run_help_in_a_subprocess():
    r = chatgpt_train('run', '--help', timeout=60)
    assert r.returncode == 0
    h = ' '.join(r.stdout.split())
    assert '--preset PRESET' in h and '--minutes MINUTES Time for the whole run' in h and '--force' in h


@pytest.mark.parametrize('cmd', list(COMMANDS))
def test_every_stage_documents_every_flag(cmd, capsys):
    import importlib
    mod, fn = COMMANDS[cmd]
    func = getattr(importlib.import_module(f'chatgpt_train.{mod}'), fn)
    docs = stage_options(func)  # its own parameters' docments and its config's
    assert (func.__doc__ or '').strip(), f'{cmd}: no docstring'
    undocumented = [k for k, d in docs.items() if not (d.docment or '').strip()]
    assert not undocumented, f'{cmd}: flags without help: {undocumented}'
    rc, out, _ = call([cmd, '--help'], capsys)
    assert rc == 0
    h, flat = ' '.join(out.split()), ''.join(out.split())  # argparse wraps lines, also inside words with a dash
    assert ''.join(func.__doc__.split()) in flat
    for name, d in docs.items():
        flag = name.removesuffix('_').replace('_', '-')
        assert f'--{flag}' in h or f'--no-{flag}' in h, f'{cmd}: --{flag} missing from --help'
        assert ''.join(d.docment.split()) in flat, f'{cmd}: the help of --{flag} is missing'


# --- mistakes, one line each ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('cmd, needle', [
    ('clean', 'chatgpt-train collect --run'), ('tokenizer', 'chatgpt-train clean --run'), ('encode', 'chatgpt-train clean --run'),
    ('pretrain', 'chatgpt-train encode --run'), ('evaluate', 'chatgpt-train pretrain --run'),
    ('finetune', 'chatgpt-train pretrain --run'), ('chat', 'chatgpt-train pretrain --run')])
def test_missing_run_folder(cmd, needle, tmp_path, capsys):
    rc, _, err = call([cmd, '--run', str(tmp_path/'nothing')], capsys)
    one_line_error(rc, err, f'chatgpt-train {cmd}: error:', str(tmp_path/'nothing'), needle)
    assert not (tmp_path/'nothing').exists()  # refused before writing anything


def test_missing_source_for_collect(tmp_path, capsys):
    rc, _, err = call(['collect', '--run', str(tmp_path/'r'), '--source', str(tmp_path/'no-such-file.jsonl')], capsys)
    one_line_error(rc, err, 'chatgpt-train collect: error:', 'no-such-file.jsonl')


def test_missing_run_folder_in_a_subprocess(tmp_path):
    r = chatgpt_train('clean', '--run', str(tmp_path/'nothing'), timeout=120)
    one_line_error(r.returncode, r.stderr, 'collect/conversations.jsonl not found')


@pytest.mark.parametrize('argv, needle', [
    (['pretrain', '--run', 'r', '--max-steps', 'ten'], "argument --max-steps: invalid int value: 'ten'"),
    (['pretrain', '--run', 'r', '--precision', 'half'], "argument --precision: invalid choice: 'half'"),
    (['run', '--run', 'r', '--minutes', 'soon'], "argument --minutes: 'soon' is not a number"),
    (['clean', '--run', 'r', '--profanity', 'maybe'], "invalid choice: 'maybe'"),
    (['encode'], 'the following arguments are required: --run'),
    (['tokenizer', '--run', 'r', '--vocab'], '--vocab'),  # an abbreviation that is not one flag's
    (['finetune', '--run', 'r', '--bogus'], 'unrecognized arguments: --bogus'),
])
def test_bad_flag(argv, needle, capsys):
    rc, _, err = call(argv, capsys)
    one_line_error(rc, err, f'chatgpt-train {argv[0]}: error:', needle, '--help')


@pytest.mark.parametrize('argv, needle', [
    (['run', '--preset', 'gpt5'], "unknown model preset 'gpt5'"),
    (['run', '--minutes', '0'], '--minutes must be positive'),
    (['run', '--chats', '9'], '--chats must be between 0 and'),
    (['collect', '--limit', '0'], '--limit must be at least 1'),
])
def test_bad_value(argv, needle, tmp_path, capsys):
    rc, _, err = call([argv[0], '--run', str(tmp_path/'r'), *argv[1:]], capsys)
    one_line_error(rc, err, needle)
    assert not (tmp_path/'r'/'collect').exists()  # checked before any work


def test_unknown_command(capsys):
    rc, _, err = call(['pretrian', '--run', 'r'], capsys)
    one_line_error(rc, err, "unknown command 'pretrian'")


def test_missing_package_is_one_line(monkeypatch, capsys):
    "A stage that needs a package which is not installed: one line naming what to pip install."
    def run_collect(
        run:str, # The run folder
    ):
        "A stage that needs a package this machine does not have."
        import chatgpt_train_missing_dependency  # noqa: F401
    monkeypatch.setattr(collect, 'run_collect', run_collect)
    rc, _, err = call(['collect', '--run', 'r'], capsys)
    one_line_error(rc, err, "'chatgpt-train-missing-dependency' is not installed", 'pip install chatgpt-train-missing-dependency')


def test_missing_tensorboard_for_pretrain(e2e, tmp_path, monkeypatch, capsys):
    "--tensorboard without the tensorboard package: one line saying what to install, before any training."
    run = tmp_path/'demo'
    shutil.copytree(e2e[0], run)
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # as if it were not installed
    rc, _, err = call(['pretrain', '--run', str(run), '--preset', 'micro', '--max-steps', '1', '--tensorboard'], capsys)
    one_line_error(rc, err, 'chatgpt-train pretrain: error:', 'pip install tensorboard')


def test_bug_in_our_code_keeps_its_traceback(monkeypatch):
    def run_collect(
        run:str, # The run folder
    ):
        "A stage with a bug."
        import chatgpt_train.no_such_module  # noqa: F401
    monkeypatch.setattr(collect, 'run_collect', run_collect)
    with pytest.raises(ModuleNotFoundError): main(['collect', '--run', 'r'])


# --- the end-to-end run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def e2e(tmp_path_factory):
    "One tiny end-to-end run through the installed command: (run folder, its result). Tests copy it before changing it."
    run = tmp_path_factory.mktemp('e2e')/'demo'
    r = chatgpt_train('run', '--run', str(run), *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r


def stamps(run: Path) -> dict:
    return load_json(run/'pipeline.json')


def states(out: str) -> dict:
    "What the summary says each step did: {step: ran|resumed|skipped}."
    found = {}
    for line in out.splitlines():
        for s in STEPS:
            rest = line[2 + len(s):].split() if line.startswith(f'  {s} ') else []
            if rest and rest[0] in ('ran', 'resumed', 'skipped'): found[s] = rest[0]
    return found


def first_steps(monkeypatch, n):
    "Make `run` take only its first `n` steps (a test about skipping and forcing need not train)."
    steps = cli.pipeline_steps
    monkeypatch.setattr(cli, 'pipeline_steps', lambda a: steps(a)[:n])


def test_run_makes_every_stage_and_a_summary(e2e):
    run, r = e2e
    for f in ('collect/conversations.jsonl', 'clean/conversations.jsonl', 'tokenizer/tokenizer.json', 'encode/train.bin',
              'base/model.safetensors', 'base/checkpoints/last.pt', 'eval/base.json', 'sft/model.safetensors', 'eval/sft.json', 'eval/finetune.json', 'aligned/model.safetensors', 'eval/align.json', 'eval/aligned.json',
              'report.md', 'plots/base.png', 'plots/sft.png', 'log.txt'):
        assert (run/f).exists(), f
    assert list(stamps(run)) == STEPS
    out = r.stdout
    assert states(out) == {s: 'ran' for s in STEPS}, out
    assert 'held-out' in out and 'unigram' in out and 'bigram' in out
    assert '  you:   Hi! How are you today?\n  model: ' in out
    assert 'Traceback' not in r.stderr


def test_no_align_stops_after_fine_tuning(e2e, tmp_path, capsys):
    run = tmp_path/'demo'
    shutil.copytree(e2e[0], run)
    rc, out, _ = call(['run', '--run', str(run), *TINY, '--no-align', '--chats', '0'], capsys)
    assert rc == 0 and states(out) == {s: 'skipped' for s in STEPS[:-2]}, out


def test_the_stages_got_the_run_settings(e2e):
    run = e2e[0]
    assert load_json(run/'collect'/'args.json')['args']['limit'] == 300
    assert load_json(run/'tokenizer'/'report.json')['vocab_size'] <= 512
    base = load_json(run/'base'/'args.json')['args']
    assert (base['preset'], base['max_steps']) == ('micro', 10)
    assert json.loads((run/'base'/'metrics.jsonl').read_text().splitlines()[-1])['step'] == 10
    assert load_json(run/'sft'/'args.json')['args']['max_steps'] == 5
    ev = load_json(run/'eval'/'base.json')
    assert ev['data']['tokens'] <= 2048 and {'unigram', 'bigram'} <= set(ev['baselines'])


def test_report_has_every_section(e2e):
    run = e2e[0]
    md = (run/'report.md').read_text()
    for h in ('## Data', '## Tokenizer and tokens', '## Model', '## Training curves', '## Evaluation', '## Sample chats', '## Time'):
        assert h in md, h
    assert 'not run yet' not in md and 'No samples yet' not in md
    assert 'Preset **micro**' in md and 'training FLOPs per token' in md
    assert '![pretraining curves](plots/base.png)' in md and '![fine-tuning curves](plots/sft.png)' in md
    assert '| base model |' in md and '| unigram baseline |' in md and '| bigram baseline |' in md
    assert '| Hi! How are you doing today? |' in md or '| Hello! |' in md  # a row of the sample chats
    assert (run/'plots'/'base.png').read_bytes()[:4] == b'\x89PNG'


def test_report_is_remade_from_the_folder_alone(e2e, tmp_path):
    "write_report reads only the run folder: a copy elsewhere, with the stages' code untouched, gives the same report."
    copy = tmp_path/'demo'  # the same run name, in another place
    shutil.copytree(e2e[0], copy)
    (copy/'report.md').unlink(); shutil.rmtree(copy/'plots')
    from chatgpt_train.report import write_report
    path = write_report(copy)
    strip = lambda s: '\n'.join(l for l in s.splitlines() if 'written 20' not in l).replace(str(e2e[0]), str(copy))
    assert strip(path.read_text()) == strip((e2e[0]/'report.md').read_text())
    assert (copy/'plots'/'sft.png').exists()


def test_the_model_chats_through_transformers(e2e):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    sft = e2e[0]/'sft'
    tok = AutoTokenizer.from_pretrained(sft, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(sft, local_files_only=True)
    ids = tok.apply_chat_template([dict(role='user', content='Hello!')], add_generation_prompt=True, return_dict=True,
                                  return_tensors='pt')
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids['input_ids'].shape[1]


def test_rerun_skips_every_finished_step(e2e, tmp_path, capsys):
    run = tmp_path/'demo'
    shutil.copytree(e2e[0], run)
    before = stamps(run)
    rc, out, _ = call(['run', '--run', str(run), *TINY], capsys)
    assert rc == 0 and states(out) == {s: 'skipped' for s in STEPS}, out
    assert stamps(run) == before                 # nothing ran again


def test_changed_setting_redoes_only_what_depends_on_it(e2e, tmp_path, capsys):
    run = tmp_path/'demo'
    shutil.copytree(e2e[0], run)
    before = stamps(run)
    argv = [a if a != '2048' else '1024' for a in TINY]  # fewer held-out tokens: only the evaluations change
    rc, out, _ = call(['run', '--run', str(run), *argv], capsys)
    assert rc == 0
    after = stamps(run)
    redone = [s for s in STEPS if after[s]['finished'] != before[s]['finished']]
    assert redone == ['evaluate base', 'evaluate sft', 'evaluate aligned'], redone
    assert load_json(run/'eval'/'base.json')['data']['tokens'] <= 1024


def test_force_redoes_everything(e2e, tmp_path, capsys, monkeypatch):
    run = tmp_path/'demo'
    shutil.copytree(e2e[0], run)
    before = stamps(run)
    (run/'clean'/'stray.txt').write_text('left by an earlier run')
    first_steps(monkeypatch, 4)  # the data stages are enough to see it
    rc, out, _ = call(['run', '--run', str(run), *TINY, '--force', '--chats', '0'], capsys)
    assert rc == 0 and states(out) == {s: 'ran' for s in STEPS[:4]}, out
    assert all(stamps(run)[s]['finished'] > before[s]['finished'] for s in STEPS[:4])
    assert not (run/'clean'/'stray.txt').exists()  # a fresh start leaves nothing of the old stage behind


def test_interrupted_pretraining_resumes(e2e, tmp_path):
    "Ctrl-C during pretraining saves a checkpoint; the rerun continues from it."
    run = tmp_path/'demo'
    shutil.copytree(e2e[0], run)
    (run/'base'/'metrics.jsonl').unlink()  # the step counts below must come from the new run
    argv = [a if a != '10' else '25' for a in TINY] + ['--chats', '0']  # more pretraining steps: pretraining is redone
    # the command as a user runs it, but only up to pretraining: the evaluations and fine-tuning are tested above
    code = ('import sys; from chatgpt_train import cli; steps = cli.pipeline_steps; '
            'cli.pipeline_steps = lambda a: steps(a)[:5]; sys.exit(cli.main(sys.argv[1:]))')
    cmd = [sys.executable, '-c', code, 'run', '--run', str(run), *argv]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_it)
    metrics = run/'base'/'metrics.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any('"loss"' in l and json.loads(l)['step'] >= 10 for l in lines if l.endswith('}')): break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130 and 'chatgpt-train run: interrupted' in err, err[-2000:]
    assert (run/'base'/'checkpoints'/'last.pt').exists() and not (run/'base'/'model.safetensors').exists()
    assert 'pretrain' not in stamps(run)
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'pretrain: resuming' in r.stderr and 'resumed from' in r.stderr
    assert states(r.stdout) == {**{s: 'skipped' for s in STEPS[:4]}, 'pretrain': 'resumed'}, r.stdout
    assert stamps(run)['pretrain']['resumed']
    steps = [json.loads(l)['step'] for l in metrics.read_text().splitlines() if '"loss"' in l]
    assert steps == sorted(set(steps)) and steps[-1] == 25
