"""Generation chooses its threads (issue 32): one thread decodes a small model on a CPU, `--threads` overrides it, and
the count that training runs with is back after every reply: finished, closed early, failed, or two at once."""
import inspect, threading

import pytest
import torch

from chatgpt_train.api_request import ApiError, ServeLimits, parse_chat_request
from chatgpt_train.chat import ChatSession, run_chat
from chatgpt_train.core import stage_options
from chatgpt_train.generate import (GREEDY, SamplingConfig, WrittenDecoder, decode_threads, generate_tokens,
                                    random_chat_model)
from chatgpt_train.model import load_model, make_model
from chatgpt_train.serve import _session, run_serve

BEFORE = 3  # the count a training process set (neither the rule's 1 nor the 2 asked for below)


@pytest.fixture(scope='module')
def lm(tmp_path_factory):
    return load_model(None, random_chat_model(tmp_path_factory.mktemp('threads')/'micro'), 'cpu')


@pytest.fixture(autouse=True)
def training_threads():
    "Run each test with BEFORE threads, as a process that trains with them would; put the machine's count back after."
    n = torch.get_num_threads()
    torch.set_num_threads(BEFORE)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def steps(monkeypatch) -> list[int]:
    "The thread count each decode step ran with."
    seen, step = [], WrittenDecoder.step
    def counted(self, tok):
        seen.append(torch.get_num_threads())
        return step(self, tok)
    monkeypatch.setattr(WrittenDecoder, 'step', counted)
    return seen


def tokens(lm, cfg=GREEDY, n=12, batch=1):
    ids = torch.full((batch, 4), 7)
    return generate_tokens(lm.model, ids, SamplingConfig(**{**vars(cfg), 'max_new_tokens': n}))


def test_the_rule_picks_one_thread_for_a_small_model_on_a_cpu():
    assert decode_threads(make_model('tiny', 2048), 1) == 1
    assert decode_threads(make_model('micro', 2048), 8) == 1


def test_a_reply_decodes_with_the_chosen_count_and_leaves_the_count_as_it_found_it(lm, steps):
    assert len(list(tokens(lm))) == 12
    assert steps and set(steps) == {1}
    assert torch.get_num_threads() == BEFORE


def test_threads_is_honoured_and_none_is_the_rule(lm, steps):
    list(tokens(lm, SamplingConfig(threads=2)))
    assert set(steps) == {2} and torch.get_num_threads() == BEFORE
    with pytest.raises(Exception, match='threads must be at least 1'): SamplingConfig(threads=0)


def test_a_generator_closed_early_or_failing_puts_the_count_back(lm, steps, monkeypatch):
    gen = tokens(lm, n=50)
    next(gen); next(gen)
    assert torch.get_num_threads() == 1  # between tokens: still the reply's count
    gen.close()
    assert torch.get_num_threads() == BEFORE
    for tok in tokens(lm, n=50): break  # a caller that stops reading (the chat's stop token)
    assert torch.get_num_threads() == BEFORE
    def broken(self, tok): raise RuntimeError('out of memory')
    monkeypatch.setattr(WrittenDecoder, 'step', broken)
    with pytest.raises(RuntimeError): list(tokens(lm))
    assert torch.get_num_threads() == BEFORE


def test_two_replies_at_once_put_the_count_back_whichever_ends_first(lm, steps):
    for first in (0, 1):
        gens = [tokens(lm, n=50), tokens(lm, n=50)]
        for g in gens: next(g)  # both inside, in one thread
        gens[first].close()
        assert torch.get_num_threads() == 1, 'the other reply is still running'
        gens[1 - first].close()
        assert torch.get_num_threads() == BEFORE


def test_two_threads_generating_at_once_leave_every_thread_as_it_was(lm, steps):
    inside, seen = threading.Barrier(2), {}
    def work(i):
        before = torch.get_num_threads()
        inside.wait()  # both have read their count before either generates
        gen = tokens(lm, n=50)
        next(gen)
        inside.wait()  # both are generating now
        if i == 1: inside.wait()  # the second ends after the first
        seen[i] = (before, list(gen)[-1] is not None, torch.get_num_threads())
        if i == 0: inside.wait()
    ts = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert [seen[i][2] == seen[i][0] for i in (0, 1)] == [True, True], seen
    assert set(steps) == {1} and torch.get_num_threads() == BEFORE


def test_a_chat_session_passes_threads_through(lm, steps):
    ChatSession(lm.model, lm.fmt, sampling=SamplingConfig(max_new_tokens=8, threads=2), safety=False).send('hi')
    assert set(steps) == {2} and torch.get_num_threads() == BEFORE


def test_chat_and_serve_take_threads_and_a_request_cannot(lm):
    assert 'threads' in stage_options(run_chat)  # `chatgpt-train chat --threads N`
    assert inspect.signature(run_serve).parameters['threads'].default is None
    limits = ServeLimits()
    hi = dict(messages=[dict(role='user', content='hi')])
    with pytest.raises(ApiError) as e: parse_chat_request({**hi, 'threads': 64}, limits)
    assert e.value.status == 400 and e.value.param == 'threads'
    req = parse_chat_request({**hi, 'temperature': 1.0}, limits)
    session, _, _ = _session(lm, req, SamplingConfig(threads=2), limits)
    assert (session.sampling.threads, session.sampling.temperature) == (2, 1.0)
