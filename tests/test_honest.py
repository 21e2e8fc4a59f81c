"""Honest results: the summary of `chatgpt-train run` and report.md say, one line each and in the same words, when a
model is no better than the bigram table or a stage changed nothing measurable, with what to do; the step table shows
the time each step was planned to take."""
import shutil
from pathlib import Path

import pytest

from chatgpt_train.jsonio import load_json, save_json
from chatgpt_train.evaluate import run_evaluate
from chatgpt_train.pretrain import run_pretrain
from chatgpt_train.report import CHANCE_SE, NO_CHANGE, summary_lines, write_report
from toy_run import make_run

BIGRAM = 'no better than the bigram table'


@pytest.fixture(scope='module')
def weak(tmp_path_factory, one_thread) -> Path:
    "A toy run whose base was pretrained for 2 steps and evaluated by the real evaluate stage: worse than its bigram."
    run = make_run(tmp_path_factory.mktemp('honest')/'weak')
    run_pretrain(str(run), preset='micro', max_steps=2, block_size=32, batch_size=4, tokens_per_step=128,
                 precision='fp32')
    run_evaluate(str(run), 'base', max_tokens=500, samples=False, selection_items=0, reply_items=0)
    return run


@pytest.fixture
def copy(weak, tmp_path) -> Path:
    dst = tmp_path/'weak'
    shutil.copytree(weak, dst)
    return dst


def said(run: Path) -> tuple[list[str], str]:
    "The verdict lines of the summary (without their prefix), and report.md's text."
    lines = [l.removeprefix('warning: ') for l in summary_lines(run, {}) if l.startswith('warning: ')]
    return lines, write_report(run).read_text()


def test_a_base_worse_than_its_bigram_is_named_in_the_summary_and_the_report(weak, copy):
    "The real evaluation of a base pretrained for 2 steps: both say so in one wording, with its numbers and what to do."
    ev = load_json(weak/'eval'/'base.json')
    bpb, big = ev['held_out']['bits_per_byte'], ev['baselines']['bigram']['bits_per_byte']
    assert bpb > big  # the premise: 2 steps teach a model less than a word-pair count
    lines, md = said(copy)
    assert len(lines) == 1 and lines[0].startswith(f'base/ is {BIGRAM} on held-out chats'), lines
    assert f'{bpb:.3f} vs {big:.3f}' in lines[0] and '--max-steps 2' in lines[0], lines
    assert f'- **{lines[0]}**' in md.splitlines()


def test_a_base_that_beats_its_bigram_gets_no_line(copy):
    "The same real evaluation, its held-out bits per byte edited to below the bigram's: nothing to say."
    ev = load_json(copy/'eval'/'base.json')
    ev['held_out']['bits_per_byte'] = ev['baselines']['bigram']['bits_per_byte'] * 0.9
    save_json(ev, copy/'eval'/'base.json')
    lines, md = said(copy)
    assert lines == [] and BIGRAM not in md and '## Verdict' not in md


def finetuned(run: Path, fall: float):
    """Write eval/sft.json and eval/finetune.json as if fine-tuning had lowered the assistant-turn loss by `fall` (a
    share): copies of the real eval/base.json, their numbers edited (no fine-tuning runs)."""
    base = load_json(run/'eval'/'base.json')
    before = dict(base['assistant'])
    after = dict(before, loss=before['loss'] * (1 - fall))
    save_json(dict(base, assistant=after), run/'eval'/'sft.json')
    save_json(dict(data=dict(source='toy', val_conversations=30), before=before, assistant=after, samples=[],
                   training=dict(steps=7)), run/'eval'/'finetune.json')


def test_fine_tuning_that_changed_nothing_gets_its_line(copy):
    "A fall of the fine-tuning data's assistant-turn loss under NO_CHANGE is named; a clear fall is not."
    finetuned(copy, NO_CHANGE / 4)
    lines, md = said(copy)
    tuned = [l for l in lines if l.startswith('fine-tuning changed nothing measurable')]
    assert len(tuned) == 1 and 'the assistant turns of its held-out data' in tuned[0], lines
    assert '(it ran 7)' in tuned[0]
    assert '--sft-steps' in tuned[0] and f'- **{tuned[0]}**' in md.splitlines()
    finetuned(copy, NO_CHANGE * 5)
    assert not [l for l in said(copy)[0] if l.startswith('fine-tuning')]


def aligned(run: Path, accuracy: float, pairs=56):
    "Write eval/align.json by hand (no alignment runs), its held-out preference accuracy `accuracy` after training."
    prefs = lambda acc: dict(pairs=pairs, accuracy=acc, margin=0.002, likelihood_preference=0.4)
    save_json(dict(data=dict(source='run', train_pairs=400, val_pairs=pairs, self_play=400),
                   method=dict(kind='DPO', beta=0.1, lora=False), before=dict(preferences=prefs(0.0), flagged=0.0),
                   after=dict(preferences=prefs(accuracy), flagged=0.0), safety_replies=[]), run/'eval'/'align.json')


def test_alignment_that_changed_nothing_gets_its_line(copy):
    "Held-out preference accuracy within CHANCE_SE standard errors of a coin toss is named; a clear one is not."
    aligned(copy, 0.55)
    lines, md = said(copy)
    al = [l for l in lines if l.startswith('alignment changed nothing measurable')]
    assert len(al) == 1 and '55% of 56 held-out pairs' in al[0] and '--minutes' in al[0], lines
    assert f'- **{al[0]}**' in md.splitlines()
    aligned(copy, 0.5 + CHANCE_SE * (0.25 / 56) ** 0.5 + 0.05)
    assert not [l for l in said(copy)[0] if l.startswith('alignment')]


def test_the_step_table_shows_the_planned_time(copy):
    "pipeline.json's `budget` (seconds planned for a step) shows in minutes beside the minutes taken, blank if absent."
    stamp = lambda secs, **kw: dict(args={}, finished=0.0, seconds=secs, **kw)
    save_json({'pretrain': stamp(300.0, budget=360.0), 'evaluate base': stamp(12.0)}, copy/'pipeline.json')
    table = summary_lines(copy, {'pretrain': 'ran', 'evaluate base': 'ran'})[:3]
    assert table[0].split() == ['step', 'status', 'minutes', 'planned'], table
    assert table[1].split() == ['pretrain', 'ran', '5.0', '6.0']
    assert table[2].split() == ['evaluate', 'base', 'ran', '0.2']
    assert '| pretrain | 300 | 360 |  |' in write_report(copy).read_text()
