"""How much does a training recipe learn in a fixed time? Every recipe trains for the same wall-clock seconds on the same token
files, one after the other in one run, and is scored on the same held-out tokens beside the bigram baseline.

The recipes (issue 15): the seed article's (GPT-2 blocks, plain Adam at 3e-5, each conversation padded to 512 tokens, fp32),
our previous default (GPT-2 blocks, AdamW 1e-3, cosine), each change of the new recipe alone (today's blocks; Muon for the
hidden matrices; the warmup-hold-decay schedule; the shape and vocabulary chosen for the budget; compiling), and the new
default with all of them, tied and untied. `--sweep NAME` runs a grid around one recipe instead (learning rates, shapes, batches), to choose its settings.

Every recipe sees the same tokens in the same order (the sampler's seed), trains under the trainer's time budget (so its
schedule ends where the time does), and is scored on the held-out conversations that the first `--eval-tokens` tokens of the
run's own encoding cover (the same text for every vocabulary), with windows of 256 tokens every 128: in bits per byte, which
compare across vocabularies; within a vocabulary, in perplexity; and as a loss in nats per token of the run's tokenizer
(`loss_in_run_tokens`: the bits per byte times the bytes per token of that text), so that recipes with another vocabulary
have a loss on the same scale as today's. The machine is shared:
the load average before and after each recipe is recorded, and differences under ~10% are noise.

Usage:

    python benchmarks/bench_recipe.py --run runs/demo                      # the table, 150 s a recipe (about 35 minutes)
    python benchmarks/bench_recipe.py --run runs/demo --seconds 60 --recipes old,new   # a quick look
    python benchmarks/bench_recipe.py --run runs/demo --seconds 600 --recipes old,new --out benchmarks/results/bench_recipe_600s.json
    python benchmarks/bench_recipe.py --run runs/demo --sweep lr            # the learning-rate grid of the new recipe

`--run` is a run folder with clean/, tokenizer/ and encode/ (the default `chatgpt-train run` makes one); recipes with another
vocabulary get their own tokenizer and token files in `RUN-vN/`, made from the same clean conversations. Results are printed
and written to benchmarks/results/bench_recipe.json (or bench_recipe_SWEEP.json).
"""
import argparse, dataclasses, math, os, shutil, tempfile, time
from pathlib import Path

import numpy as np
import torch

from chatgpt_train.core import get_logger
from chatgpt_train.jsonio import save_json
from chatgpt_train.conversation import load_conversations
from chatgpt_train.encode import load_meta, load_tokens
from chatgpt_train.encode import pad_collate, run_encode
from chatgpt_train.evaluate import BigramLM, lm_metrics, token_nlls
from chatgpt_train.model import count_params, get_preset, make_model
from chatgpt_train.model_folder import hf_quiet
from chatgpt_train.tokenizer import load_tokenizer, run_tokenizer, token_byte_lengths
from chatgpt_train.encode import BlockSampler
from chatgpt_train.train import TrainConfig, Trainer

OLD = dict(n_layer=4, n_head=4, n_embd=256)  # our previous default's shape (`tiny` until issue 15), at its vocabulary of 8,192
GPT2 = dict(family='gpt2', **OLD)           # with GPT-2 blocks: 5.3M parameters at vocabulary 8,192
RECIPES = {  # name: the model's shape (a preset and its overrides), the training settings, and the data
    'seed':    dict(vocab=8192, shape=dict(GPT2, n_positions=512), lr=3e-5, weight_decay=0., min_lr_ratio=1., precision='fp32', padded=512,
                    about="the seed's: GPT-2 blocks, Adam 3e-5 without schedule, each conversation padded to 512, fp32"),
    'old':     dict(vocab=8192, shape=GPT2, lr=1e-3, schedule='cosine', about='our previous default: GPT-2 blocks, AdamW 1e-3, cosine'),
    'old-3e-3': dict(vocab=8192, shape=GPT2, lr=3e-3, schedule='cosine', about='the same at AdamW 3e-3'),
    'block':   dict(vocab=8192, shape=OLD, lr=1e-3, schedule='cosine', about="today's blocks alone (Qwen3: RoPE, RMSNorm, QK-norm, SwiGLU, no biases)"),
    'muon':    dict(vocab=8192, shape=GPT2, lr=3e-3, muon_lr=3e-3, schedule='cosine', about='Muon for the hidden matrices alone (GPT-2 blocks), AdamW 3e-3 for the rest'),
    'wsd':     dict(vocab=8192, shape=GPT2, lr=1e-3, schedule='wsd', about='the warmup-hold-decay schedule alone'),
    'shape':   dict(vocab=8192, shape=dict(GPT2, n_layer=3, n_head=3, n_embd=192), lr=1e-3, schedule='cosine', about='the 3 x 192 shape alone (GPT-2 blocks)'),
    'vocab':   dict(shape=GPT2, lr=1e-3, schedule='cosine', vocab=2048, about='the 2,048-token vocabulary alone'),
    'block+muon': dict(vocab=8192, shape=OLD, lr=3e-3, muon_lr=3e-3, schedule='cosine', about="today's blocks and Muon, cosine"),
    'compile': dict(vocab=8192, shape=OLD, lr=1e-3, schedule='cosine', compile=True, about="today's blocks, compiled (compiling counts in the seconds)"),
    'new':     dict(shape={}, compile=True, vocab=2048, about='the new default: all of the above, with its shape, vocabulary, batch and rates, compiled'),
    'untied':  dict(shape=dict(tie_embeddings=False), compile=True, vocab=2048, about='the new default with an output layer of its own (untied embeddings)'),
}
SWEEPS = {  # name: recipes varied around 'new'
    'lr': {f'lr {a:g} muon {m:g}': dict(lr=a, muon_lr=m) for a, m in ((3e-3, 3e-3), (3e-3, 1e-2), (3e-3, 2e-2), (1e-2, 1e-2), (1e-3, 1e-2))},
    'shape': {f'{k}': dict(shape=v) for k, v in {'4x256': OLD, '5x320': dict(n_layer=5, n_embd=320, n_head=5),
                                                  '6x384': dict(n_layer=6, n_embd=384, n_head=6), '3x256': dict(n_layer=3, n_head=4, n_embd=256),
                                                  '3x192': {}}.items()},  # 3x192: `tiny`
    'batch': {f'{b}x{t}': dict(batch_size=b, block=t) for b, t in ((8, 256), (16, 256), (32, 256))},
    'vocab': {f'vocab {v}': dict(vocab=v) for v in (2048, 4096, 8192, 16384)},
    'cooldown': {f'cooldown {c:g}': dict(cooldown=c) for c in (0.2, 0.4, 0.6)},
    'wd': {f'wd {w:g} muon wd {m:g}': dict(weight_decay=w, muon_weight_decay=m) for w, m in ((0., 0.), (0.1, 0.), (0.1, 0.1))},
    # eager: a later recipe in one process compiles faster (inductor keeps kernels in memory), which would favour it
    'embed': {'tied': dict(shape=dict(tie_embeddings=True), compile=False), 'untied': dict(shape=dict(tie_embeddings=False), compile=False)},
}


def _load() -> str: return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def run_with_vocab(run:Path, vocab:int|None) -> Path:
    "The run folder with token files of vocabulary `vocab`: `run` itself if it has that vocabulary, else `RUN-vN` made from its clean/."
    if vocab is None or load_meta(run)['vocab_size'] == vocab: return run
    other = run.parent/f'{run.name}-v{vocab}'
    if not (other/'encode'/'meta.json').exists():
        (other/'clean').mkdir(parents=True, exist_ok=True)
        shutil.copy(run/'clean'/'conversations.jsonl', other/'clean'/'conversations.jsonl')
        run_tokenizer(str(other), vocab_size=vocab); run_encode(str(other))
    return other


class Padded:
    "The seed's batches: whole conversations, each cut or padded to `length` tokens, `batch_size` a batch, in a seeded order."
    def __init__(self, run:Path, length:int, batch_size:int, seed:int=0):
        tok = load_tokenizer(run)
        self.examples = [tok.encode_chat(c['turns'])[:length] for c in load_conversations(run, 'train')]
        self.length, self.bs, self.pad, self.g, self.i = length, batch_size, tok.pad_id, np.random.default_rng(seed), 0
        self.order = self.g.permutation(len(self.examples))
    def __iter__(self): return self
    def __next__(self):
        if self.i + self.bs > len(self.order): self.order, self.i = self.g.permutation(len(self.examples)), 0
        rows = [self.examples[j] for j in self.order[self.i:self.i + self.bs]]
        self.i += self.bs
        batch = pad_collate([dict(input_ids=r + [self.pad] * (self.length - len(r)), labels=r + [-100] * (self.length - len(r))) for r in rows], self.pad)
        batch['attention_mask'] = (batch['labels'] != -100).long()
        batch['attention_mask'][:, 0] = 1
        return batch


def held_out(run:Path, data:Path, eval_tokens:int) -> np.ndarray:
    "The held-out tokens of `data` that cover the same conversations as the first `eval_tokens` of `run`'s (whole conversations)."
    ref, meta = np.asarray(load_tokens(run, 'val')[:eval_tokens]), load_meta(run)
    n = max(1, int((ref == meta['eot_id']).sum()))  # conversations begun in the reference's slice
    val, eot = np.asarray(load_tokens(data, 'val')), load_meta(data)['eot_id']
    starts = np.flatnonzero(val == eot)
    return val[:starts[n]] if n < len(starts) else val


def train_and_score(name:str, r:dict, run:Path, seconds:float, eval_tokens:int, log) -> dict:
    "Train recipe `r` for `seconds` and score it on the held-out tokens; its numbers."
    data = run_with_vocab(run, r.get('vocab'))
    meta, train = load_meta(data), load_tokens(data, 'train')
    shape = dataclasses.replace(get_preset('tiny'), vocab_size=meta['vocab_size'], **r.get('shape', {}))
    torch.manual_seed(0)
    model = make_model(shape, bos_token_id=meta['eot_id'], eos_token_id=meta['end_id'], pad_token_id=meta['pad_id'])
    T, bs = r.get('block', 256), r.get('batch_size', 16)
    keys = ('lr', 'muon_lr', 'muon_weight_decay', 'weight_decay', 'schedule', 'cooldown', 'min_lr_ratio', 'precision', 'compile')
    cfg = TrainConfig(minutes=seconds / 60, batch_size=bs, eval_every=10**6, save_every=10**6, log_every=10**6, seed=0,
                      **{'precision': 'bf16', **{k: r[k] for k in keys if k in r}})
    batches = Padded(data, r['padded'], bs) if r.get('padded') else BlockSampler(train, T, bs, seed=0)
    if r.get('compile'):  # compile from scratch, as a first run does: no kernels cached by an earlier recipe
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor-')
        torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as out:
        load_before, t0 = _load(), time.time()
        res = Trainer(model, batches, cfg, out, logger=log).fit()
        wall, load_after = time.time() - t0, _load()
    ids = held_out(run, data, eval_tokens).astype(np.int64)
    nbytes = int(token_byte_lengths(load_tokenizer(data))[ids[1:]].sum())
    held = lm_metrics(token_nlls(model.eval(), ids, context=256, stride=128, batch_size=8), nbytes)
    bigram = lm_metrics(BigramLM(np.asarray(train), meta['vocab_size']).nlls(ids), nbytes)
    per_ref = math.log(2) * nbytes / (len(held_out(run, run, eval_tokens)) - 1)  # nats per token of `run`'s tokenizer, per bit per byte
    tokens = res['step'] * (cfg.batch_size * (r['padded'] if r.get('padded') else T))
    return dict(recipe=name, about=r.get('about', ''), settings={k: v for k, v in r.items() if k != 'about'},
                params=count_params(shape)['total'], vocab=meta['vocab_size'], steps=res['step'], tokens=tokens,
                tokens_per_s=round(tokens / res['elapsed'], 1), train_seconds=round(res['elapsed'], 1), wall_seconds=round(wall, 1),
                held_out=dict(loss=round(held['loss'], 4), perplexity=round(held['perplexity'], 2), bits_per_byte=round(held['bits_per_byte'], 4),
                              loss_in_run_tokens=round(held['bits_per_byte'] * per_ref, 4)),
                bigram=dict(loss=round(bigram['loss'], 4), perplexity=round(bigram['perplexity'], 2), bits_per_byte=round(bigram['bits_per_byte'], 4)),
                bpb_vs_bigram=round(held['bits_per_byte'] / bigram['bits_per_byte'], 4), load_before=load_before, load_after=load_after)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', required=True, help='a run folder with clean/, tokenizer/ and encode/')
    p.add_argument('--seconds', type=float, default=150., help='wall-clock seconds of training for each recipe')
    p.add_argument('--eval-tokens', type=int, default=32768, help='held-out tokens scored')
    p.add_argument('--recipes', default=','.join(RECIPES), help='which recipes, comma-separated')
    p.add_argument('--sweep', help=f"a grid around the new recipe instead of the table: {', '.join(SWEEPS)}, or several, comma-separated")
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    p.add_argument('--out', help='results file (default: benchmarks/results/bench_recipe[_SWEEP][.IofN].json)')
    p.add_argument('--shard', default=None, help='I/N: run every N-th recipe from the I-th (0-based), to split a sweep over processes')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    from chatgpt_train.model import training_defaults
    new = {**RECIPES['new'], **{k: v for k, v in training_defaults('tiny').items() if k != 'tokens_per_step'}}
    if a.sweep and (bad := set(a.sweep.split(',')) - set(SWEEPS)): p.error(f"unknown sweep {', '.join(sorted(bad))}; choose from {', '.join(SWEEPS)}")
    grid = {k: v for w in (a.sweep or '').split(',') if w for k, v in SWEEPS[w].items()}
    recipes = ({k: {**new, **v, 'shape': {**new.get('shape', {}), **v.get('shape', {})}} for k, v in grid.items()} if a.sweep
               else {k: {**new, **RECIPES[k]} if k in ('new', 'untied') else RECIPES[k] for k in a.recipes.split(',')})  # untied: the new default's rates
    suffix = ''
    if a.shard:
        i, n = map(int, a.shard.split('/'))
        recipes, suffix = dict(list(recipes.items())[i::n]), f'.{i}of{n}'
    log, rows = get_logger('bench'), []
    out = Path(a.out or Path(__file__).parent/'results'/((f"bench_recipe_{a.sweep.replace(',', '_')}" if a.sweep else 'bench_recipe') + suffix + '.json'))
    print(f"{len(recipes)} recipes, {a.seconds:g} s each, on {Path(a.run)}; load average {_load()}", flush=True)
    for name, r in recipes.items():
        with hf_quiet(): rows.append(row := train_and_score(name, r, Path(a.run), a.seconds, a.eval_tokens, log))
        print(f"{name:24} {row['steps']:5} steps {row['tokens_per_s']:7,.0f} tok/s  held-out loss {row['held_out']['loss']:.3f} "
              f"({row['held_out']['loss_in_run_tokens']:.3f} in the run's tokens) "
              f"ppl {row['held_out']['perplexity']:7.1f} bpb {row['held_out']['bits_per_byte']:.3f} "
              f"(bigram {row['bigram']['bits_per_byte']:.3f}, x{row['bpb_vs_bigram']:.3f})  load {row['load_before']} -> {row['load_after']}", flush=True)
        save_json(dict(seconds=a.seconds, eval_tokens=a.eval_tokens, run=str(a.run), threads=torch.get_num_threads(),
                       cpus=os.cpu_count(), torch=torch.__version__, rows=rows), out)
    print(f"wrote {out}\n\n| recipe | parameters | steps | tokens/s | held-out loss (run's tokens) | perplexity | bits per byte | vs bigram |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        h = r['held_out']
        print(f"| {r['recipe']} | {r['params']/1e6:.1f}M | {r['steps']} | {r['tokens_per_s']:,.0f} | {h['loss_in_run_tokens']:.3f} | "
              f"{h['perplexity']:.1f} (vocabulary {r['vocab']:,}) | {h['bits_per_byte']:.3f} | {r['bpb_vs_bigram']:.3f}x |")


if __name__ == '__main__': main()
