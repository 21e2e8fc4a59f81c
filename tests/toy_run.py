"A run folder prepared for pretraining, and how the tests start `chatgpt-train`: shared by the train and reliability tests."
import json, os, random, signal, subprocess, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from chatgpt_train.core import stage_dir, write_jsonl
from chatgpt_train.encode import run_encode
from chatgpt_train.tokenizer import run_tokenizer

BIN = Path(sys.executable).parent
# A tiny model on short blocks: steps take milliseconds, so the test's time goes to starting processes.
FAST = ['--preset', 'micro', '--block-size', '32', '--batch-size', '4', '--tokens-per-step', '128', '--precision', 'fp32',
        '--eval-batches', '2']
# One thread a process: bit-for-bit repeatable, and fair to the other work on a small shared machine.
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'CHATGPT_TRAIN_HOME': ''}


def ctrl_c_reaches_it():
    "For `preexec_fn`: a child that Ctrl-C stops, also when the tests run as a shell's background job (it starts those with SIGINT ignored, and children inherit that)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_run(folder: Path, n=300, seed=0) -> Path:
    "A run folder with clean/, tokenizer/ and encode/ from `n` synthetic conversations."
    g = random.Random(seed)
    words = 'hello how are you today fine thanks what do like music films the weather is nice cold I we they'.split()
    say = lambda: ' '.join(g.choice(words) for _ in range(g.randint(3, 12))).capitalize() + g.choice('.?!')
    convs = [dict(id=f'c{i}', source='toy', split='val' if i % 10 == 0 else 'train',
                  turns=[dict(role=r, text=say()) for r in ('user', 'assistant') * g.randint(1, 3)]) for i in range(n)]
    write_jsonl(convs, stage_dir(folder, 'clean', create=True)/'conversations.jsonl')
    run_tokenizer(str(folder), vocab_size=300)
    run_encode(str(folder))
    return folder


def weights(run: Path) -> dict:
    return load_file(run/'base'/'model.safetensors')


def metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run/'base'/'metrics.jsonl').read_text().splitlines()]


def checkpoint_step(run: Path) -> int:
    "The step of the run's resumable pretraining checkpoint."
    return torch.load(run/'base'/'checkpoints'/'last.pt', weights_only=True, map_location='cpu')['step']


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN/'chatgpt-train'), *args], env=ENV, capture_output=True, text=True, timeout=300, **kw)
