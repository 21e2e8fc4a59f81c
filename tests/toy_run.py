"Run folders for the tests (one prepared for pretraining, one with a pretrained base and chat data), and how the tests start `chatgpt-train` and wait for it."
import json, os, random, signal, socket, subprocess, sys, time
from pathlib import Path

import torch
from safetensors.torch import load_file

from chatgpt_train.runs import stage_dir
from chatgpt_train.jsonio import write_jsonl
from chatgpt_train.encode import run_encode
from chatgpt_train.pretrain import run_pretrain
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


# Short rows and few steps: the test's time goes to loading data and models, not to training. A tenth of the rows from the
# fine-tuning data (the default is a twentieth): in a dozen steps the tests' data must show in the numbers they check.
SFT_FAST = ['--block-size', '64', '--batch-size', '8', '--precision', 'fp32', '--minutes', '0', '--max-new-tokens', '8',
            '--eval-every', '10', '--log-every', '5', '--mix', '0.9']


def chats(n=160, seed=0) -> list[dict]:
    "Conversations of a small assistant with a name, in the collect stage's schema."
    g = random.Random(seed)
    qa = [('What is your name?', 'My name is Tock.'), ('Who are you?', 'I am Tock, a small chat bot.'),
          ('How are you?', 'I am fine, thank you.'), ('What do you like?', 'I like clocks and music.'),
          ('Where do you live?', 'I live in a computer.'), ('Can you help me?', 'Yes, I can try to help.')]
    out = []
    for i in range(n):
        turns = []
        for q, a in g.sample(qa, g.randint(1, 3)):
            turns += [dict(role='user', text=f'{q} ({i})' if g.random() < .5 else q), dict(role='assistant', text=a)]
        out.append(dict(id=f'tock{i}', turns=turns))
    return out


def chat_run(run: Path) -> Path:
    "A run folder with a `micro` base pretrained for a few steps on synthetic chit-chat, and `tock.jsonl` (`chats`) beside it."
    g = random.Random(1)
    words = 'hello how are you today fine thanks what do like music films the weather is nice cold I we they name'.split()
    say = lambda: ' '.join(g.choice(words) for _ in range(g.randint(3, 12))).capitalize() + g.choice('.?!')
    convs = [dict(id=f'c{i}', source='toy', split='val' if i % 10 == 0 else 'train',
                  turns=[dict(role=r, text=say()) for r in ('user', 'assistant') * g.randint(1, 3)]) for i in range(300)]
    write_jsonl(convs, stage_dir(run, 'clean', create=True)/'conversations.jsonl')
    run_tokenizer(str(run), vocab_size=300)
    run_encode(str(run))
    run_pretrain(str(run), preset='micro', max_steps=8, block_size=64, batch_size=8, tokens_per_step=512, precision='fp32')
    write_jsonl(chats(), run.parent/'tock.jsonl')
    return run


def start(*args, log: Path, driver=None, fault=()) -> subprocess.Popen:
    "Start a command in the background, its stderr going to `log` (a pipe could fill up and stall it)."
    cmd = [sys.executable, str(driver), *fault, *args] if driver else [str(BIN/'chatgpt-train'), *args]
    p = subprocess.Popen(cmd, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, 'w'), preexec_fn=ctrl_c_reaches_it)
    p.log = log
    return p


def wait_for(cond, proc, what, timeout=240):
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None: raise AssertionError(f"the process ended before {what}:\n{proc.log.read_text()}")
        if time.time() > deadline: proc.kill(); raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill(proc, sig=signal.SIGKILL) -> str:
    "Send `sig`, wait for the end, and return what the process wrote to stderr."
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.log.read_text()


def call(argv, capsys) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cli.main(argv)` in this process (a parser error exits, as on the command line)."
    from chatgpt_train.cli import main
    try: rc = main(argv)
    except SystemExit as e: rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def answers_health(url: str, proc: subprocess.Popen, log, timeout=120):
    "Wait until the server at `url` answers /health; fail with `log()` (what it wrote) if it exits first or never answers."
    import httpx
    end = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f'the server exited: {log()}'
        try:
            if httpx.get(f'{url}/health', timeout=2).status_code == 200: return
        except httpx.TransportError: pass
        assert time.monotonic() < end, 'the server never answered /health'
        time.sleep(0.2)


def never_ending_model(folder: Path) -> Path:
    """A small GPT-2 (for its LayerNorm's bias) with random weights that never ends its turn, and a 1,024-token context:
    replies run to their token limit, 1,000 tokens in a second or more."""
    from transformers import AutoModelForCausalLM
    from chatgpt_train.generate import random_chat_model
    from chatgpt_train.tokenizer import SPECIAL_TOKENS
    folder = random_chat_model(folder/'micro', family='gpt2', n_positions=1024, n_layer=4, n_embd=256)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():  # every hidden state ends near `v`, and the special tokens' embeddings (tied to the output) point away
        v = torch.ones(model.config.n_embd)
        model.transformer.ln_f.bias.copy_(v)
        model.transformer.wte.weight[:len(SPECIAL_TOKENS)] = -v / v.norm()
    model.save_pretrained(folder)
    return folder


def run_cli(*argv, stdin=''):
    "Exit status, stdout and stderr of `chatgpt-train ARGV` run in this process with `stdin` piped in (not a terminal)."
    import io
    from chatgpt_train.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try: rc = main(list(argv))
    finally: sys.stdin, sys.stdout, sys.stderr = old
    return rc, out.getvalue(), err.getvalue()
