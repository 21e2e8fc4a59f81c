"""Hostile clients of `chatgpt-train serve` (issue 30): bodies built to crash the parser, fields we cannot honour, huge
stop strings, half-sent requests, DNS rebinding and cross-site pages, framing, and a generation that fails. The server
listens on 127.0.0.1 only."""
import json, resource, socket, subprocess, threading, time

import httpx
import pytest

import chatgpt_train.chat
from chatgpt_train.model import load_model
from chatgpt_train.api_request import ServeLimits
from chatgpt_train.serve import make_app, server_config
from toy_run import BIN, ENV, answers_health, free_port, never_ending_model

HI = [dict(role='user', content='Hello! How are you?')]
FILES = 256  # the server's open-file limit in these tests: a flood of connections must not reach it
# A short read timeout so that the test waits little; a connection cap well under FILES; a name of our own the server
# answers to.
HARDEN = ['--read-timeout', '1', '--max-connections', '100', '--allowed-hosts', 'chat.example.org']


def few_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


class Server:
    "`chatgpt-train serve ARGS` on a free port of 127.0.0.1, with at most FILES open files; its log goes to `self.log`."
    def __init__(self, log_path, *args):
        self.port, self.log = free_port(), log_path
        self.url = f'http://127.0.0.1:{self.port}'
        with open(log_path, 'w') as err:
            self.proc = subprocess.Popen([str(BIN/'chatgpt-train'), 'serve', *args, '--host', '127.0.0.1',
                                          '--port', str(self.port)],
                                         env={**ENV, 'HF_HUB_OFFLINE': '1'}, stdout=subprocess.DEVNULL, stderr=err,
                                         preexec_fn=few_files)
        answers_health(self.url, self.proc, log_path.read_text)

    def close(self):
        self.proc.terminate()
        try: self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "A model whose replies run to their token limit (`never_ending_model`)."
    return never_ending_model(tmp_path_factory.mktemp('serve'))


@pytest.fixture(scope='module')
def server(folder, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('log')/'serve.log', '--model', str(folder), '--max-tokens', '1000', *HARDEN)
    yield s
    s.close()


def post(server, body, headers=None, timeout=60) -> httpx.Response:
    "POST /v1/chat/completions with `body` (bytes as they are, anything else as JSON) and a JSON content type."
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f'{server.url}/v1/chat/completions', content=content, timeout=timeout,
                      headers={'content-type': 'application/json', **(headers or {})})


def refused(r: httpx.Response, status: int, param=None) -> dict:
    "The OpenAI-style error of a refusal with `status` (naming `param` when given)."
    assert r.status_code == status, r.text[:300]
    err = r.json()['error']
    assert err['message'] and err['type'] == 'invalid_request_error'
    if param is not None: assert err['param'] == param, err
    return err


def test_json_of_any_depth_or_size_is_a_400_and_never_a_traceback(server):
    deep = b'{"messages": ' + b'[' * 5000 + b']' * 5000 + b'}'
    big_int = b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + b'0' * 5000 + b'}'
    for body in (deep, big_int, b'[' * 100_000):
        refused(post(server, body), 400)
    # numbers and nesting that do parse: each field still gets its 400
    refused(post(server, dict(messages=HI, temperature=10**400)), 400, 'temperature')  # too big for a float
    refused(post(server, dict(messages=HI, max_tokens=10**4000)), 400, 'max_tokens')
    nested = json.loads('[' * 500 + ']' * 500)
    for field in ('stop', 'seed', 'temperature', 'user'):
        refused(post(server, dict(messages=HI, **{field: nested})), 400, field)
    assert post(server, dict(messages=HI, max_tokens=2)).status_code == 200
    assert 'Traceback' not in server.log.read_text()


SUPPORTED_BUT_EMPTY = dict(frequency_penalty=0, presence_penalty=0.0, n=1, user='me', logprobs=False, tools=[],
                           response_format={'type': 'text'}, stream_options=None, store=False)

REFUSED = {  # a field we cannot honour (or that lies about its type): the field the 400 must name
    'frequency_penalty': dict(frequency_penalty=0.5),
    'presence_penalty': dict(presence_penalty=-1),
    'top_k': dict(top_k=5),
    'reasoning_effort': dict(reasoning_effort='high'),
    'n': dict(n=True),
    'max_tokens': dict(max_tokens='junk', max_completion_tokens=5),
    'max_completion_tokens': dict(max_tokens=5, max_completion_tokens=2.5),
    'user': dict(user=5),
    'store': dict(store=True),
    'stream_options': dict(stream_options=dict(include_usage=True, other=1)),
    'messages[2]': dict(messages=[*HI, dict(role='assistant', content='Fine.'), dict(role='system', content='Obey.'),
                                  *HI]),
    'messages[0].name': dict(messages=[dict(role='user', content='hi', name=7)]),
}


@pytest.mark.parametrize('param', REFUSED)
def test_fields_we_cannot_honour_are_refused_by_name(server, param):
    err = refused(post(server, {'messages': HI, 'max_tokens': 2, **REFUSED[param]}), 400, param)
    if param == 'messages[2]': assert 'system' in err['message']


def test_supported_fields_at_their_neutral_values_are_accepted(server):
    r = post(server, dict(messages=[dict(role='system', content='Be brief.'),
                                    dict(role='developer', content='Be kind.'), *HI],
                          max_tokens=2, **SUPPORTED_BUT_EMPTY))
    assert r.status_code == 200, r.text


def test_long_stop_strings_are_refused_and_stop_matching_leaves_the_event_loop_free(server):
    huge = ['ab' * 120_000 + str(i) for i in range(4)]  # four 240,000-character stop strings: under the body limit
    refused(post(server, dict(messages=HI, stop=huge, max_tokens=1000)), 400, 'stop')
    refused(post(server, dict(messages=HI, stop=['x' * 10_000], max_tokens=1000)), 400, 'stop')
    # the longest we take, built to be near matches all the time
    longest = ['ab' * 128, 'ba' * 128, 'q' * 256, ' ' * 255 + 'x']
    body = dict(messages=HI, stop=longest, max_tokens=1000, temperature=0, stream=True)
    waits = []
    with httpx.stream('POST', f'{server.url}/v1/chat/completions', json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith('data: ')
        for _ in range(5):  # while it generates, /health answers at once
            t = time.monotonic()
            assert httpx.get(f'{server.url}/health', timeout=10).status_code == 200
            waits.append(time.monotonic() - t)
        events = [l for l in lines if l]
    assert events[-1] == 'data: [DONE]' and max(waits) < 1, waits


def test_half_sent_requests_are_closed_after_the_read_timeout_and_cannot_use_up_the_servers_files(server):
    socks = []
    try:
        for _ in range(FILES + 100):  # more connections than the server may open files
            s = socket.create_connection(('127.0.0.1', server.port), timeout=5)
            s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty')
            socks.append(s)
        t = time.monotonic()
        assert httpx.get(f'{server.url}/health', timeout=5).status_code == 200
        assert time.monotonic() - t < 2
        end = time.monotonic() + 5  # the read timeout is 1 s: every half-sent request is closed well before this
        for s in socks:
            s.settimeout(max(end - time.monotonic(), 0.01))
            try: assert s.recv(100) == b''
            except ConnectionResetError: pass
        for _ in range(200):  # garbage requests: each is a 400 from uvicorn and a warning, at most a few lines of log
            with socket.create_connection(('127.0.0.1', server.port), timeout=5) as s:
                s.sendall(b'\x16\x03\x01 not http at all\r\n\r\n')
                s.settimeout(5)
                s.recv(100)
    finally:
        for s in socks: s.close()
    assert httpx.get(f'{server.url}/health', timeout=5).json()['status'] == 'ok'
    log = server.log.read_text()
    assert len(log) < 10_000 and 'Traceback' not in log, log[-2000:]


def test_a_body_sent_too_slowly_is_a_408(server):
    with socket.create_connection(('127.0.0.1', server.port), timeout=5) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                  b'Content-Length: 100\r\n\r\n{"messa')  # the head, then 7 of the 100 bytes promised
        t = time.monotonic()
        assert s.recv(1000).split(b'\r\n')[0] == b'HTTP/1.1 408 Request Timeout'
        assert time.monotonic() - t < 4  # the read timeout is 1 s


def test_a_page_on_another_site_cannot_use_the_server(server):
    ok = dict(messages=HI, max_tokens=2)
    # DNS rebinding
    for host in ('rebind.evil.example', f'rebind.evil.example:{server.port}', 'localhost.evil.example'):
        refused(post(server, ok, {'host': host}), 400)
        refused(httpx.get(f'{server.url}/health', headers={'host': host}), 400)
    for host in (f'127.0.0.1:{server.port}', 'localhost', f'localhost:{server.port}', 'chat.example.org:443',
                 f'[::1]:{server.port}'):
        assert post(server, ok, {'host': host}).status_code == 200, host
    for origin in ('https://evil.example', 'null', f'http://localhost:{server.port + 1}'):  # another site's page
        refused(post(server, ok, {'origin': origin}), 403)
        refused(httpx.get(f'{server.url}/v1/models', headers={'origin': origin}), 403)
    assert post(server, ok, {'origin': server.url}).status_code == 200  # the chat page's own requests
    # a "simple" request
    for kind in ('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', None):
        headers = {'content-type': kind} if kind else {}
        r = httpx.post(f'{server.url}/v1/chat/completions', content=json.dumps(ok).encode(), headers=headers,
                       timeout=60)
        refused(r, 415)
    assert post(server, ok, {'content-type': 'application/json; charset=utf-8'}).status_code == 200


def test_every_response_forbids_framing_and_sniffing(server):
    responses = {'/': httpx.get(server.url + '/'), '/static/chat.js': httpx.get(server.url + '/static/chat.js'),
                 '/v1/models': httpx.get(server.url + '/v1/models'), '/health': httpx.get(server.url + '/health'),
                 '404': httpx.get(server.url + '/v1/nothing'), '400': post(server, dict(messages=[])),
                 'bad host': httpx.get(server.url + '/', headers={'host': 'evil.example'}),
                 '415': httpx.post(server.url + '/v1/chat/completions', content=b'{}',
                                   headers={'content-type': 'text/plain'})}
    for what, r in responses.items():
        assert r.headers.get('x-content-type-options') == 'nosniff', what
        assert "frame-ancestors 'none'" in r.headers.get('content-security-policy', ''), what
    assert "default-src 'self'" in responses['/'].headers['content-security-policy']  # the page's own policy stays


@pytest.fixture
def in_process(folder, monkeypatch):
    "The app in a uvicorn of this process on 127.0.0.1, with a `ChatSession.stream` that fails after its first piece."
    def failing(self, message, cancel=None):
        self.usage = dict(prompt_tokens=1, completion_tokens=1, total_tokens=2)
        yield 'Hello'
        raise RuntimeError('the sampler broke: ' + 'x' * 50)
    monkeypatch.setattr(chatgpt_train.chat.ChatSession, 'stream', failing)
    lm = load_model(None, str(folder), 'cpu')
    port = free_port()
    server = __import__('uvicorn').Server(server_config(make_app(lm, 'micro', safety=False), '127.0.0.1', port,
                                                        ServeLimits()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end and thread.is_alive()
        time.sleep(0.05)
    yield f'http://127.0.0.1:{port}'
    server.should_exit = True
    thread.join(30)


def test_a_failing_generation_ends_its_request_cleanly_with_one_log_line(in_process):
    import logging
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(logging.Formatter().format(record))
    logging.getLogger('serve').addHandler(handler)
    try:
        body = dict(messages=HI, max_tokens=8)
        r = httpx.post(f'{in_process}/v1/chat/completions', json=body, timeout=30)
        assert r.status_code == 500 and r.json()['error']['type'] == 'server_error'
        assert 'RuntimeError' in r.json()['error']['message']
        with httpx.stream('POST', f'{in_process}/v1/chat/completions', json={**body, 'stream': True}, timeout=30) as s:
            events = [l for l in s.iter_lines() if l]
        assert s.status_code == 200 and events[-1] == 'data: [DONE]'
        assert json.loads(events[-2][6:])['error']['type'] == 'server_error'
        h = httpx.get(f'{in_process}/health', timeout=10).json()
        assert h['status'] == 'ok' and h['failed'] == 2
    finally: logging.getLogger('serve').removeHandler(handler)
    assert len(lines) == 2 and all('RuntimeError' in l and '\n' not in l for l in lines), lines
