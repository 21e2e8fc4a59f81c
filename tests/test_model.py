"The model stage beyond the notebook: memory estimates against measured peaks for every family, the model folder round trip, GPUs."
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from chatgpt_train.core import UserError
from chatgpt_train.model import (get_preset, make_model, measure_training_peak, model_summary, recommend_model,
                                 training_memory)


@pytest.mark.parametrize('family,precision,checkpointing,vocab', [
    ('gpt2', 'fp32', False, 8192), ('gpt2', 'bf16', False, 8192), ('gpt2', 'bf16', True, 512),
    ('gpt1', 'bf16', False, 512), ('sparse', 'fp32', True, 512),
    ('qwen3', 'fp32', False, 8192), ('qwen3', 'bf16', False, 8192), ('qwen3', 'bf16', True, 512)])
def test_memory_estimate_matches_measured_peak(family, precision, checkpointing, vocab):
    "The training-memory estimate of `tiny` is within 25% of the peak measured by PyTorch's profiler (it is within ~15%)."
    kw = dict(family='gpt3', attention='sparse') if family == 'sparse' else dict(family=family)
    cfg = dataclasses.replace(get_preset('tiny'), vocab_size=vocab, **kw)
    torch.manual_seed(0)
    measured = measure_training_peak(make_model(cfg), 4, precision=precision, checkpointing=checkpointing)
    est = training_memory(cfg, 4, precision=precision, checkpointing=checkpointing)['total']
    assert 0.75 < est / measured < 1.25, (est, measured)


def test_estimate_tracks_what_changes_memory():
    "The measured peak moves with batch size and checkpointing as the estimate says (a wrong slope would fail here)."
    cfg = dataclasses.replace(get_preset('tiny'), vocab_size=512)
    def peak(bs, ckpt=False):
        torch.manual_seed(0)
        return measure_training_peak(make_model(cfg), bs, precision='bf16', checkpointing=ckpt)
    est = lambda bs, ckpt=False: training_memory(cfg, bs, precision='bf16', checkpointing=ckpt)['total']
    small, big = peak(2), peak(8)
    assert 0.75 < (est(8) - est(2)) / (big - small) < 1.25
    assert 0.75 < (est(8) - est(8, True)) / (big - peak(8, True)) < 1.25


@pytest.mark.parametrize('family', ['qwen3', 'gpt2', 'gpt1', 'gpt3'])
def test_every_family_has_the_shapes_later_stages_rely_on(family):
    "Logits of (batch, T, vocab); as many parameters as the model stage counts; no biases and no position table in today's block."
    cfg = dataclasses.replace(get_preset('micro'), family=family, vocab_size=300, n_positions=64)
    torch.manual_seed(0)
    model = make_model(cfg)
    x = torch.randint(0, 300, (3, 17))
    assert model(input_ids=x).logits.shape == (3, 17, 300)
    from chatgpt_train.model import count_params
    assert count_params(cfg)['total'] == sum(p.numel() for p in model.parameters())
    if family == 'qwen3':
        names = [n for n, _ in model.named_parameters()]
        assert not any(n.endswith('.bias') for n in names) and not any('position' in n or 'wpe' in n for n in names)
        assert any('q_norm' in n for n in names) and type(model).__name__ == 'Qwen3ForCausalLM'


def test_model_folder_round_trip(tmp_path):
    "A built model (today's family) saves and loads as a Hugging Face folder, keeps its token ids, generates with the KV cache, and runs in `pipeline`."
    torch.manual_seed(0)
    model = make_model('micro', 300, bos_token_id=1, eos_token_id=2, pad_token_id=0).eval()
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(3, 300, (2, 10))
    with torch.no_grad(): assert torch.equal(model(x).logits, back(x).logits)
    assert (back.config.eos_token_id, back.config.pad_token_id, back.generation_config.use_cache) == (2, 0, True)
    assert back.config.use_cache is False  # training forward passes build no cache
    cached = back.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None)
    uncached = back.generate(x, max_new_tokens=8, do_sample=False, eos_token_id=None, use_cache=False)
    assert cached.shape == (2, 18) and torch.equal(cached, uncached)
    assert model_summary(back) == model_summary(model)
    from transformers import pipeline
    from chatgpt_train.tokenizer import save_tokenizer, train_bpe
    save_tokenizer(train_bpe(['hello there, how are you?', 'fine thanks'] * 30, 300), tmp_path)
    out = pipeline('text-generation', model=str(tmp_path), device='cpu')('hello', max_new_tokens=4, do_sample=False)
    assert isinstance(out[0]['generated_text'], str)


def test_unknown_preset_and_setting_are_user_errors():
    with pytest.raises(UserError, match="unknown model preset 'huge'; choose one of micro, tiny"): make_model('huge')
    with pytest.raises(UserError, match='unknown model setting n_layers'): make_model('micro', 300, n_layers=3)
    with pytest.raises(UserError, match='multiple of n_head'): make_model('micro', 300, n_embd=99)


def test_recommendation_for_the_embedded_corpus():
    """The default run's 12 minutes of pretraining on the 2-core CPU get the preset measured best there (`tiny`, see
    benchmarks/bench_recipe.py --sweep shape); on an H100 the embedded corpus (~3.6M tokens) is the limit; a web corpus is not."""
    r = recommend_model(3.6e6, hours=12 / 60, device='laptop-cpu')
    assert (r['preset'], r['limit']) == ('tiny', 'compute') and r['epochs'] <= 4
    r = recommend_model(3.6e6, hours=1, device='h100')
    assert r['params'] < 20e6 and r['epochs'] <= 4 and r['limit'] == 'data'
    assert recommend_model(10e9, hours=24, device='h100')['params'] > 100e6


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_bf16_sdpa_and_memory():
    "On a GPU: built on the device with SDPA, trains under bf16 autocast and compile, and the estimate holds against the CUDA counter."
    cfg = dataclasses.replace(get_preset('gpt2'), vocab_size=8192)
    torch.manual_seed(0)
    model = make_model(cfg, device='cuda')
    assert model.config._attn_implementation == 'sdpa' and next(model.parameters()).is_cuda
    measured = measure_training_peak(model, 8, n_ctx=1024, precision='bf16')
    est = training_memory(cfg, 8, n_ctx=1024, precision='bf16')['total']
    assert 0.75 < est / measured < 1.25, (est, measured)
    compiled = torch.compile(make_model('tiny', device='cuda'))
    x = torch.randint(0, 8192, (4, 256), device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16): compiled(input_ids=x, labels=x).loss.backward()
