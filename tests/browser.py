"A page in headless Chromium driven over the DevTools protocol through a pipe (no driver, no websocket library): evaluate JavaScript, wait, take a screenshot."
import base64, json, os, shutil, subprocess, time
from pathlib import Path

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


class Browser:
    "One headless Chromium with one page; `with Browser(dir) as b: b.open(url); b.js('...')`."
    def __init__(self, profile: Path, width=390, height=844):
        assert CHROMIUM, 'chromium is required for the browser tests: apt-get install chromium'
        self.size, self.next_id, self.session = (width, height), 0, None
        # The protocol's pipe: Chromium reads commands on fd 3 and writes replies and events on fd 4, each a JSON text ending in NUL.
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        def fds():  # runs in the child before it closes what it does not keep: 3 and 4 are kept (`pass_fds`)
            r, w = os.dup(cmd_r), os.dup(out_w)  # copies first, so that one dup2 cannot overwrite the other's source
            os.dup2(r, 3); os.dup2(w, 4)
        self.proc = subprocess.Popen([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-sync',
                                      '--disable-background-networking', '--disable-component-update', '--remote-debugging-pipe',
                                      f'--user-data-dir={profile}', 'about:blank'],
                                     preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r); os.close(out_w)
        self._buffer = b''

    def __enter__(self): return self
    def __exit__(self, *exc):
        self.proc.kill(); self.proc.wait()
        os.close(self._cmd_w); os.close(self._out_r)

    def _message(self) -> dict:
        while b'\0' not in self._buffer:
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk: raise RuntimeError('chromium closed its DevTools pipe')
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b'\0', 1)
        return json.loads(text)

    def send(self, method: str, browser=False, **params) -> dict:
        "Send a protocol command to the page (or to the browser) and return its result."
        self.next_id += 1
        msg = dict(id=self.next_id, method=method, params=params)
        if self.session and not browser: msg['sessionId'] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b'\0')
        while True:
            reply = self._message()
            if reply.get('id') == self.next_id:
                if 'error' in reply: raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get('result', {})

    def open(self, url: str):
        "Open `url` in a new page the size of a phone's screen."
        target = self.send('Target.createTarget', browser=True, url='about:blank')['targetId']
        self.session = self.send('Target.attachToTarget', browser=True, targetId=target, flatten=True)['sessionId']
        w, h = self.size
        self.send('Emulation.setDeviceMetricsOverride', width=w, height=h, deviceScaleFactor=2, mobile=True)
        self.send('Page.enable')
        self.send('Page.navigate', url=url)
        self.wait("document.readyState === 'complete'")

    def js(self, expression: str):
        "The value of a JavaScript expression in the page (promises awaited)."
        r = self.send('Runtime.evaluate', expression=expression, awaitPromise=True, returnByValue=True)
        if 'exceptionDetails' in r: raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r['result'].get('value')

    def wait(self, expression: str, timeout=60.):
        "Wait until a JavaScript expression is true in the page."
        end = time.monotonic() + timeout
        while not self.js(f'Boolean({expression})'):
            if time.monotonic() > end: raise TimeoutError(f'the page never had {expression}')
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        "Save what the page shows as a PNG."
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send('Page.captureScreenshot', format='png')['data']))
        return path
