"Reply metrics: exact chance for a model that cannot tell replies apart, a copy model that can, PMI against a generic reply, reply statistics by hand, and the evaluate stage's `replies`."
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from chatgpt_train.chat_format import IGNORE_INDEX, ChatFormat, load_chat_format
from chatgpt_train.core import UserError
from chatgpt_train.jsonio import load_json
from chatgpt_train.evaluate import EVAL_KEYS, run_evaluate
from chatgpt_train.generate import random_chat_model, sample_settings
from chatgpt_train.model import make_model
from chatgpt_train.model_folder import hf_quiet
from chatgpt_train.replies import (NotAPrefix, alone_example, candidate_scores, example_nlls, fit_context, generated_metrics, hits_at_1, model_scorer,
                                   no_context, reply_example, reply_stats, response_selection, selection_items, words)

pytestmark = pytest.mark.usefixtures('one_thread')


class ToyLM(nn.Module):
    "Logits `bias + copy * [token occurred in the input so far]`: constant when `copy` is 0."
    def __init__(self, vocab_size, copy=0., bias=None, n_positions=256):
        super().__init__()
        self.copy, self.bias = copy, nn.Parameter(torch.zeros(vocab_size) if bias is None else bias.float())
        self.config = SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=n_positions, pad_token_id=0)

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kw):
        seen = F.one_hot(input_ids, len(self.bias)).cumsum(1).clamp(max=1).float()
        return SimpleNamespace(logits=self.bias + self.copy * seen)


ALPHABETS = ['abc', 'def', 'ghi', 'jkl', 'mno', 'pqr', 'stu', 'vwx', 'yz', 'AB', 'CD', 'EF']


def echo_conversations():
    "12 conversations, each in letters of its own, where the assistant repeats the user's two words; twice."
    word = lambda letters, k: ''.join(letters[(k + j) % len(letters)] for j in range(3 + k % 2))
    convs = []
    for i, letters in enumerate(ALPHABETS):
        w = [word(letters, k) for k in range(4)]
        convs.append(dict(id=f'echo{i}', turns=[dict(role='user', text=f'{w[0]} {w[1]}'), dict(role='assistant', text=f'{w[1]} {w[0]}'),
                                                dict(role='user', text=f'{w[2]} {w[3]}'), dict(role='assistant', text=f'{w[3]} {w[2]}')]))
    return convs


@pytest.fixture(scope='module')
def fmt(tmp_path_factory):
    "Our chat format with a freshly trained 300-token tokenizer."
    return load_chat_format(random_chat_model(tmp_path_factory.mktemp('random')/'model', vocab_size=300))


@pytest.fixture(scope='module')
def items():
    return selection_items(echo_conversations(), 100)


def test_items_have_ten_distinct_candidates_from_other_conversations(items):
    assert len(items) == 12 and items == selection_items(echo_conversations(), 100)
    for it in items:
        assert it['context'][-1]['role'] == 'user' and it['candidates'][0] == it['reply'] and len(it['candidates']) == 10
        assert len({c.strip().lower() for c in it['candidates']}) == 10
        own = set(''.join(ALPHABETS[int(it['id'][4:])]))
        assert all(not set(c) - {' '} <= own for c in it['candidates'][1:])  # from other conversations
    assert selection_items(echo_conversations()[:3], 10) == []           # too few other replies for 9 candidates


def test_hits_share_ties():
    assert hits_at_1([[3, 1, 2]]) == 1 and hits_at_1([[1, 3, 2]]) == 0 and hits_at_1([[3, 3, 2]]) == 0.5
    assert hits_at_1([[0.] * 10] * 7) == 0.1


def test_a_constant_model_scores_exactly_chance(fmt, items):
    V = len(fmt.hf)
    uniform = ToyLM(V)
    assert response_selection(items, fmt, model_scorer(uniform), 256) == dict(items=12, candidates=10, chance=0.1, loglik=0.1, pmi=0.1)
    biased = ToyLM(V, bias=torch.randn(V, generator=torch.Generator().manual_seed(0)) * 3)  # not uniform, still blind to the input
    s = candidate_scores(items, fmt, model_scorer(biased), 256)
    assert all(np.all(p == 0) for p in s['pmi'])
    assert response_selection(items, fmt, model_scorer(biased), 256)['pmi'] == 0.1


def test_a_copy_model_finds_replies_that_repeat_the_message(fmt, items):
    sel = response_selection(items, fmt, model_scorer(ToyLM(len(fmt.hf), copy=20.)), 256)
    assert sel['pmi'] == 1.0 and sel['loglik'] == 1.0
    assert response_selection(items, fmt, model_scorer(ToyLM(len(fmt.hf), copy=20.)), 24)['pmi'] == 1.0  # context cut to fit


def test_pmi_does_not_reward_a_generic_reply(fmt, items):
    V, ok = len(fmt.hf), fmt.hf('OK', add_special_tokens=False)['input_ids']
    generic = ToyLM(V, copy=20., bias=torch.zeros(V).index_fill(0, torch.tensor(ok), 40.))
    with_ok = [dict(it, candidates=it['candidates'][:-1] + ['OK OK']) for it in items]
    sel = response_selection(with_ok, fmt, model_scorer(generic), 256)
    assert (sel['loglik'], sel['pmi']) == (0., 1.)


def test_example_nlls_against_a_second_computation(fmt):
    torch.manual_seed(0)
    model = make_model('micro', len(fmt.hf), n_positions=64, initializer_range=0.5).eval()
    g = np.random.default_rng(1)
    examples = [dict(input_ids=(ids := g.integers(0, len(fmt.hf), n).tolist()), labels=[i if g.random() < 0.5 else IGNORE_INDEX for i in ids])
                for n in g.integers(2, 40, 11)]
    ref = []
    for e in examples:
        with torch.no_grad(): logp = F.log_softmax(model(input_ids=torch.tensor([e['input_ids']])).logits[0].double(), -1)
        ref.append(-sum(logp[t, y].item() for t, y in enumerate(e['labels'][1:]) if y != IGNORE_INDEX))
    for bs in (1, 3, 11): np.testing.assert_allclose(example_nlls(model, examples, batch_size=bs), ref, rtol=1e-5, atol=1e-5)


def test_reply_examples_label_the_reply_and_its_end(fmt):
    hi = [dict(role='user', text='Hi there!')]
    ex = reply_example(fmt, hi, 'Hello!', 64)
    assert fmt.hf.decode([i for i in ex['labels'] if i != IGNORE_INDEX]) == 'Hello!<|end|>'
    assert len(reply_example(fmt, hi, 'Hello!', 5)['input_ids']) == 5
    long = [dict(role=r, text=f'turn number {i}') for i, r in enumerate(['user', 'assistant'] * 4)][:-1]
    kept, prompt = fit_context(fmt, long, 10, 40)
    assert len(prompt) + 10 <= 40 and kept == long[-len(kept):] and fit_context(fmt, long, 999, 40)[0] == long[-1:]


def template_format(template):
    "A format with a foreign tokenizer and chat template."
    t = Tokenizer(models.BPE())
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    t.train_from_iterator(['hello there', 'hi'], trainers.BpeTrainer(vocab_size=280, special_tokens=['<s>', '</s>'],
                                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return ChatFormat(PreTrainedTokenizerFast(tokenizer_object=t, bos_token='<s>', eos_token='</s>', chat_template=template))


def test_formats_without_an_empty_conversation_or_the_prefix_property():
    chatml = template_format("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
                             "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    assert no_context(chatml) == [dict(role='user', text='')]  # transformers refuses to render no messages
    assert chatml.hf.decode([i for i in reply_example(chatml, no_context(chatml), 'hello', 64)['labels'] if i != IGNORE_INDEX]) == 'hello</s>'
    # a foreign format's reply with no context keeps its start: its models were trained with it
    assert alone_example(chatml, 'hello', 64) == reply_example(chatml, no_context(chatml), 'hello', 64)
    # like Qwen3's without thinking: the prompt opens an empty thought that the rendered reply does not have
    marked = template_format("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
                             "{% if add_generation_prompt %}<s>assistant\n<think></think>{% endif %}")
    with pytest.raises(NotAPrefix, match='prompt is not the start of the conversation'):
        reply_example(marked, [dict(role='user', text='hi')], 'hello', 64)


def test_reply_stats_by_hand():
    assert reply_stats(['a b c a b c d', 'hi', 'hi']) == dict(
        replies=3, distinct_1=5/9, distinct_2=4/6, repeat_4gram=0., mean_words=3., empty=0.,
        top=[dict(reply='hi', share=2/3), dict(reply='a b c a b c d', share=1/3)])
    assert reply_stats(['a b c d a b c d', 'Hello, you!'])['repeat_4gram'] == 0.5
    assert reply_stats(['', ' '])['empty'] == 1. and reply_stats(['', ''])['distinct_1'] is None
    assert words("Hello, you! I'm fine.") == ['hello', ',', 'you', '!', 'i', "'", 'm', 'fine', '.']
    with pytest.raises(UserError): reply_stats([])


def test_generated_replies_of_a_copy_model_depend_on_their_context(fmt, items):
    V = len(fmt.hf)
    parrot = ToyLM(V, copy=20., bias=torch.zeros(V).index_fill(0, torch.tensor(sorted(fmt.special)), -30.))
    gm = generated_metrics(parrot, fmt, items[:6], sample_settings(4)['greedy'], model_scorer(parrot), max_len=64)
    assert gm['replies'] == 6 and gm['pmi_per_token'] > 1 and gm['empty'] == 0 and len(gm['examples']) == 3
    assert gm['examples'][0]['context_last_user_turn'] == items[0]['context'][-1]['text'] and gm['sampling']['temperature'] == 0
    const = generated_metrics(ToyLM(V), fmt, items[:6], sample_settings(4)['greedy'], model_scorer(ToyLM(V)), max_len=64)
    assert const['pmi_per_token'] == 0 and const['empty'] == 1  # it ends its turn at once: the first token is <|endoftext|>


def test_the_evaluate_stage_writes_replies(run):
    "A random model on the toy run, with fine-tuning data: `replies` for both data sets, through the stage."
    with hf_quiet(): make_model('micro', 300, n_positions=128).save_pretrained(run/'base')
    (run/'sft'/'data'/'clean').mkdir(parents=True)
    shutil.copy(run/'clean'/'conversations.jsonl', run/'sft'/'data'/'clean'/'conversations.jsonl')
    res = run_evaluate(str(run), 'base', max_tokens=0, samples=False, max_new_tokens=6, selection_items=12, reply_items=5)
    assert set(res) == set(EVAL_KEYS) and load_json(run/'eval'/'base.json')['replies'] == res['replies']
    for name in ('chitchat', 'sft_data'):
        r = res['replies'][name]
        sel, gen = r['selection'], r['generated']
        assert sel['items'] == 12 and sel['candidates'] == 10 and sel['chance'] == 0.1
        assert all(0 <= sel[k] <= 1 for k in ('loglik', 'pmi', 'bigram_loglik'))
        assert gen['replies'] == 5 and 0 <= gen['empty'] <= 1 and len(gen['examples']) == 3
    assert res['replies']['note'] is None and res['seconds']['selection'] > 0 and res['seconds']['generated'] > 0
    skip = run_evaluate(str(run), 'base', max_tokens=0, samples=False, selection_items=0, reply_items=0)
    assert skip['replies'] == dict(chitchat=None, sft_data=None, note=None)


def test_a_reply_alone_in_our_format_starts_at_its_header(fmt):
    "Our models saw the conversation's opening token only before a user's turn: the reply with no context starts at the assistant's header."
    alone, opened = alone_example(fmt, 'hello there', 64), reply_example(fmt, [], 'hello there', 64)
    assert opened['input_ids'][0] == fmt.hf.bos_token_id and alone['input_ids'] == opened['input_ids'][1:]
    assert alone['input_ids'][0] == fmt.hf.convert_tokens_to_ids('<|assistant|>') and alone['labels'] == opened['labels'][1:]
    # cut to fit, the opening token is already gone and no reply token goes with it
    short = alone_example(fmt, 'hello there ' * 20, 16)
    assert len(short['input_ids']) == 16 and short['labels'] == reply_example(fmt, [], 'hello there ' * 20, 16)['labels']
