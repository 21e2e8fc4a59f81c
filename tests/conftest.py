"Fixtures shared by the test modules. A module that needs another `toy` or `run` defines its own, which takes precedence."
import shutil, socket
from pathlib import Path

import pytest
import torch

from toy_run import make_run


@pytest.fixture(scope='module')
def one_thread():
    "One torch thread for a module's in-process training: on 2 shared cores, two threads made small models many times slower."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> Path:
    "A run folder prepared for pretraining (clean/, tokenizer/, encode/); tests copy it, never write into it."
    return make_run(tmp_path_factory.mktemp('toy'))


@pytest.fixture
def run(toy, tmp_path) -> Path:
    "A fresh copy of the toy run with no base/."
    dst = tmp_path/'run'
    shutil.copytree(toy, dst)
    return dst


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    "Fail any attempt to open a connection, and keep the datasets cache in `tmp_path`."
    import datasets
    def refuse(*a, **k): raise AssertionError('a test tried to use the network')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', tmp_path/'hf_cache')
