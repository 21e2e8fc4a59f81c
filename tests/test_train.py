"The pretrain stage from the command line: torchrun (DDP, FSDP) against one process, accumulation, bad input, non-finite loss (kills: test_reliability)."
import re, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

from chatgpt_train.cli import main
from chatgpt_train.core import UserError
from chatgpt_train.jsonio import load_json
from chatgpt_train.encode import load_tokens
from chatgpt_train.model import make_model
from chatgpt_train.encode import BlockSampler
from chatgpt_train.train import TrainConfig, Trainer, lm_loss
from toy_run import BIN, ENV, FAST, checkpoint_step, cli, metrics, weights

pytestmark = pytest.mark.usefixtures('one_thread')  # the in-process tests train tiny models too


def test_cli_writes_a_model_folder(run, capsys):
    assert main(['pretrain', '--run', str(run), *FAST, '--max-steps', '6', '--eval-every', '3', '--save-every', '4',
                 '--log-every', '2']) == 0
    base = run/'base'
    names = {p.name for p in base.iterdir()}
    assert {'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json',
            'metrics.jsonl', 'loss.png', 'args.json', 'train_config.json', 'checkpoints', 'log.txt'} <= names
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    assert len(tok) == model.config.vocab_size == 300
    assert model.generation_config.eos_token_id == load_json(run/'encode'/'meta.json')['end_id']
    state = torch.load(base/'checkpoints'/'last.pt', weights_only=True)  # plain tensors and containers only
    assert state['step'] == 6 and {'model', 'optimizer', 'rng', 'data'} <= set(state)
    recs = metrics(run)
    train = [r for r in recs if 'loss' in r]
    assert [r['step'] for r in train] == [2, 4, 6]
    assert {'step', 'loss', 'lr', 'grad_norm', 'tokens_per_s', 'tokens', 'elapsed'} <= set(train[0])
    assert [r['step'] for r in recs if 'val_loss' in r] == [0, 3, 6]
    assert load_json(base/'args.json')['args']['max_steps'] == 6


def torchrun(run: Path, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '--no-python', '--',
           str(BIN/'chatgpt-train'), 'pretrain', '--run', str(run), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_torchrun_matches_one_process(toy, tmp_path):
    """2 processes (gloo) with 2 rows each make the same updates as 1 process with 4 rows: DDP with Muon (the default recipe),
    and FSDP, which shards each matrix over the processes and so trains the hidden matrices with AdamW (against AdamW alone)."""
    runs = {k: tmp_path/k for k in ('one', 'one-adamw', 'ddp', 'fsdp')}
    for d in runs.values(): shutil.copytree(toy, d)
    common = ['--preset', 'micro', '--block-size', '32', '--tokens-per-step', '128', '--precision', 'fp32', '--max-steps', '4',
              '--eval-every', '2', '--eval-batches', '2', '--log-every', '1']
    for k, extra in (('one', []), ('one-adamw', ['--muon-lr', '0'])):
        one = cli('pretrain', '--run', str(runs[k]), *common, '--batch-size', '4', *extra)
        assert one.returncode == 0, one.stderr
    # Muon orthogonalises each update in bf16, as PyTorch's does: two processes that add their halves of the gradient round
    # differently from one process adding all of it, and the weights end a bf16 rounding apart (about 1% at most here) while
    # the losses agree to 1e-4. AdamW in fp32 has no such step: the FSDP run matches to float precision.
    for k, extra, ref, (rtol, atol) in (('ddp', [], 'one', (0.05, 5e-3)), ('fsdp', ['--fsdp'], 'one-adamw', (1e-4, 1e-5))):
        r = torchrun(runs[k], *common, '--batch-size', '2', *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        if k == 'fsdp': assert 'train with AdamW, not Muon' in r.stderr
        a, b = weights(runs[ref]), weights(runs[k])
        assert a.keys() == b.keys()
        for n in a: torch.testing.assert_close(b[n], a[n], rtol=rtol, atol=atol, msg=f'{k}: {n}')
        m1, m2 = metrics(runs[ref]), metrics(runs[k])
        assert [r['step'] for r in m2] == [r['step'] for r in m1]  # rank 0 alone wrote, each line once
        for r1, r2 in zip(m1, m2):
            for key in ('loss', 'val_loss'):
                if key in r1: assert r2[key] == pytest.approx(r1[key], abs=3e-4)
        assert checkpoint_step(runs[k]) == 4


def test_accumulation_matches_a_bigger_batch(toy, tmp_path):
    "Two micro-batches of 2 rows accumulated make the update of one batch of 4."
    def train(bs, folder):
        blocks = BlockSampler(load_tokens(toy, 'train'), 32, 4, seed=0)
        torch.manual_seed(0)
        model = make_model('micro', 300)
        if bs == 2:  # the same 4 rows, as two halves
            class Halves:
                def __init__(self, s): self.s, self.rest = s, None
                def __iter__(self): return self
                def __next__(self):
                    if self.rest is not None: b, self.rest = self.rest, None; return b
                    b = next(self.s); self.rest = {k: v[2:] for k, v in b.items()}
                    return {k: v[:2] for k, v in b.items()}
            batches = Halves(blocks)
        else: batches = blocks
        cfg = TrainConfig(max_steps=3, batch_size=bs, tokens_per_step=128, precision='fp32', eval_every=100, save_every=100)
        Trainer(model, batches, cfg, folder).fit()
        return model.state_dict()
    a, b = train(4, tmp_path/'a'), train(2, tmp_path/'b')
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)  # Adam magnifies rounding on near-zero gradients


def test_non_finite_loss_stops_and_keeps_the_checkpoint(run):
    r = cli('pretrain', '--run', str(run), *FAST, '--max-steps', '10', '--lr', '1e30', '--warmup-steps', '1', '--save-every', '1')
    assert r.returncode == 2
    # today's blocks normalise every input, so their loss can stay finite while the gradient is already NaN: either stops it
    assert re.search(r'the (loss|gradient norm) became nan at step 2 of 10', r.stderr) and 'after step 1, is kept' in r.stderr
    assert 'Traceback' not in r.stderr
    assert checkpoint_step(run) == 1


def test_out_of_memory_suggests_a_smaller_batch(run, tmp_path):
    model = make_model('micro', 300)
    def boom(*a, **kw): raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model.forward = boom
    t = Trainer(model, BlockSampler(load_tokens(run, 'train'), 32, 8), TrainConfig(max_steps=2, batch_size=8), tmp_path/'base')
    with pytest.raises(UserError, match=r'out of memory .* micro-batches of 8 x 32 tokens: try --batch-size 4'): t.fit()


def test_time_budget(run):
    assert main(['pretrain', '--run', str(run), *FAST, '--minutes', '0.05', '--eval-every', '1000']) == 0
    cfg, state = load_json(run/'base'/'train_config.json'), torch.load(run/'base'/'checkpoints'/'last.pt', weights_only=True)
    assert cfg['max_steps'] is None and cfg['minutes'] == 0.05
    assert state['max_steps'] >= 1 and 1 <= state['step'] <= state['max_steps']  # planned from the measured speed
    assert (run/'base'/'model.safetensors').exists()


def test_a_slower_machine_shortens_the_run_and_the_rate_never_jumps(run, tmp_path):
    "Under a time budget, steps that suddenly take three times as long end the run sooner; the learning rate follows time smoothly."
    class Slowing(BlockSampler):
        def __next__(self):
            if self.step > 40: time.sleep(0.03)  # from step 40 on the machine is busy
            return super().__next__()
    torch.manual_seed(0)
    cfg = TrainConfig(minutes=0.1, batch_size=4, lr=3e-3, muon_lr=1e-2, precision='fp32', log_every=1, eval_every=10**6, save_every=10**6)
    t = Trainer(make_model('micro', 300), Slowing(load_tokens(run, 'train'), 32, 4, seed=0), cfg, tmp_path/'base')
    t.fit()
    lrs = [r['lr'] for r in t.history if 'lr' in r]
    after_warmup = np.array(lrs[t.plan.warmup:])
    # no jump: a re-plan that moved the schedule would change the rate by a large part of the peak at once; a slow step on a busy
    # machine moves it by a few percent (5.1% was seen in CI), so the bound is 10%
    assert len(lrs) > 50 and np.abs(np.diff(after_warmup)).max() < 0.1 * 3e-3
    assert after_warmup[-1] < 0.2 * 3e-3 and after_warmup.max() == pytest.approx(3e-3)  # held at the peak, then decayed to the floor
    assert t.elapsed <= 0.1 * 60


def test_bad_input(run, tmp_path, capsys):
    def err(*args):
        assert main(['pretrain', *args]) == 2
        return capsys.readouterr().err
    assert 'encode/meta.json not found' in err('--run', str(tmp_path/'nothing'))
    assert 'chatgpt-train encode --run' in err('--run', str(tmp_path/'nothing'))
    assert "unknown model preset 'huge'" in err('--run', str(run), '--preset', 'huge')
    assert 'nothing to resume' in err('--run', str(run), '--resume')
    assert '--block-size must be between 2 and the context length of micro, 256' in err('--run', str(run), '--preset', 'micro', '--block-size', '1000')
    assert 'batch_size must be at least 1' in err('--run', str(run), *FAST, '--batch-size', '0')
    assert 'fewer than one batch' in err('--run', str(run), '--preset', 'micro', '--batch-size', '4096')


def test_tensorboard_is_optional(run, capsys):
    try: import tensorboard  # noqa: F401
    except ImportError:
        assert main(['pretrain', '--run', str(run), *FAST, '--max-steps', '2', '--tensorboard']) == 2
        assert 'pip install tensorboard' in capsys.readouterr().err
        return
    assert main(['pretrain', '--run', str(run), *FAST, '--max-steps', '2', '--tensorboard']) == 0
    assert any((run/'base'/'tensorboard').iterdir())


def test_loss_shifts_and_ignores():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 3:] = -100
    keep = labels[:, 1:] != -100
    ref = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    torch.testing.assert_close(lm_loss(logits, labels), ref)
