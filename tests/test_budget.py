"The whole run on a tiny budget: every step inside `--minutes`, every training stage's schedule complete, the plan kept."
import json, subprocess, time

import pytest
import torch

from chatgpt_train.metrics import read_metrics
from toy_run import BIN, ENV

MINUTES = 1.5
# The run must end within the budget and this share more: the budget of the issue is +10%; a test machine shared with
# other work gets a little more, since the plan is made from speeds measured once, before the load changes.
TOLERANCE = 1.25
MODELS = ('base', 'sft', 'aligned')


@pytest.fixture(scope='module')
def budget_run(tmp_path_factory):
    "`chatgpt-train run --minutes 1.5` of the micro preset on 300 records, timed from outside."
    run = tmp_path_factory.mktemp('budget')/'run'
    argv = [str(BIN/'chatgpt-train'), 'run', '--run', str(run), '--preset', 'micro', '--limit', '300', '--vocab-size',
            '512', '--minutes', str(MINUTES), '--chats', '1']
    t0 = time.time()
    r = subprocess.run(argv, env={**ENV, 'OMP_NUM_THREADS': '2'}, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return run, r, time.time() - t0


def test_the_run_keeps_its_budget(budget_run):
    "The whole run, from collecting data to the sample chat, ends within `--minutes` (and the tolerance)."
    run, r, took = budget_run
    assert took <= TOLERANCE * 60 * MINUTES, (took, r.stdout)


def test_the_plan_is_printed_and_each_step_has_its_budget(budget_run):
    "The plan is logged before pretraining; pipeline.json gives every step after the data stages the seconds it was given."
    run, r, took = budget_run
    assert 'plan for the ' in r.stderr and 'each evaluation' in r.stderr, r.stderr[-3000:]
    stamps = json.loads((run/'pipeline.json').read_text())
    budgeted = [n for n, s in stamps.items() if 'budget' in s]
    assert budgeted == ['pretrain', 'evaluate base', 'finetune', 'evaluate sft', 'align', 'evaluate aligned'], stamps
    plan = json.loads((run/'plan.json').read_text())
    # one set of evaluation sizes for the three evaluations, so their numbers compare
    sizes = {json.dumps({k: json.loads((run/'eval'/f'{m}.json').read_text())['args'][k] for k in plan['eval']})
             for m in ('base', 'sft', 'aligned')}
    assert sizes == {json.dumps(plan['eval'])}


@pytest.mark.parametrize('model', MODELS)
def test_every_training_schedule_completes(budget_run, model):
    "Each training stage warms up, holds and decays within its share: it ends past its warmup, near the end of the decay."
    run, r, took = budget_run
    ckpt = torch.load(run/model/'checkpoints'/'last.pt', weights_only=True, map_location='cpu')
    assert ckpt['step'] > ckpt['warmup'], (model, ckpt['step'], ckpt['warmup'])
    peak = json.loads((run/model/'train_config.json').read_text())['lr']
    last = [row for row in read_metrics(run/model) if 'lr' in row][-1]
    # wsd decays to a tenth of the peak over the last 40% of the run: a third or less means most of the decay was done
    assert last['lr'] <= peak / 3, (model, last, peak)


def test_an_evaluation_that_spends_the_budget_still_ends_with_a_checkpoint(run, one_thread):
    "Held-out evaluations after every step, on a budget they use up: the run ends on a checkpoint of its last step."
    from chatgpt_train.pretrain import run_pretrain
    run_pretrain(str(run), preset='micro', minutes=0.05, block_size=32, batch_size=4, tokens_per_step=128,
                 precision='fp32', eval_every=1, eval_batches=64)
    ckpt = torch.load(run/'base'/'checkpoints'/'last.pt', weights_only=True, map_location='cpu')
    steps = [r['step'] for r in read_metrics(run/'base')]  # a held-out loss after every step
    assert ckpt['step'] == steps[-1] > 0, (ckpt['step'], steps)
