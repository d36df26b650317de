"""A real uvicorn server on an ephemeral loopback port, and a headless Chromium driven over the
DevTools protocol (Debian's `chromium` package), for the slow tests of tools/serve.py."""

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request


@contextlib.contextmanager
def live_server(service):
    """Yields http://127.0.0.1:PORT of `service` served by uvicorn in a thread; stops it after."""
    import uvicorn
    from serving.app import create_app
    from tools.serve import bind
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """A headless Chromium page driven with the DevTools protocol (websocket-client)."""

    def __init__(self, width: int = 1360, height: int = 900):
        import websocket
        self.profile = tempfile.mkdtemp(prefix="serve-chromium-")
        self.process = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.isfile(port_file) and open(port_file).read().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p.get("type") == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout}s for {expression}")

    def navigate(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def type_into(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("rawKeyDown", "char", "keyUp"):
            extra = {"text": "\r"} if kind == "char" else {}
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      **extra)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


def check_page(base_url: str, query: str, screenshot: str | None = None, height: int = 1180) -> dict:
    """Type `query` into the page, wait for the grid and the explanation; what the page shows."""
    browser = Browser(height=height)
    try:
        browser.navigate(base_url + "/")
        browser.wait_for("document.getElementById('info').textContent.includes('images')")
        browser.type_into("#q", query)
        browser.press_enter()
        browser.wait_for("document.querySelectorAll('#grid .result').length > 0")
        browser.wait_for("document.querySelector('#explain .bars') !== null")
        browser.wait_for("Array.from(document.querySelectorAll('#grid img')).every(i => i.complete)")
        browser.wait_for("(() => { const i = document.querySelector('#picture image'); return !i || "
                         "i.getBBox().width > 0; })()")
        time.sleep(0.5)     # the full-size image paints
        shown = browser.evaluate("""(() => ({
            ids: Array.from(document.querySelectorAll('#grid .result')).map(r => Number(r.dataset.id)),
            boxes: document.querySelectorAll('#picture rect.box').length,
            words: document.querySelectorAll('#words .word').length,
            bars: document.querySelectorAll('#explain .bars rect').length,
            status: document.getElementById('status').textContent,
            error: document.getElementById('status').className === 'error',
            thumbnails: Array.from(document.querySelectorAll('#grid img')).filter(i => i.naturalWidth > 0).length,
        }))()""")
        if screenshot:
            browser.screenshot(screenshot)
        return shown
    finally:
        browser.close()


def main(argv=None):
    """The README's screenshot: python tests/serve_helpers.py URL QUERY OUT.png (a server already running)."""
    import argparse
    parser = argparse.ArgumentParser(description="Type QUERY into the retrieval page at URL in headless Chromium, "
                                                 "check the results and save a screenshot to OUT.png.")
    parser.add_argument("url", help="the page, e.g. http://127.0.0.1:8000/ (tools/serve.py running)")
    parser.add_argument("query", help="a caption to search for")
    parser.add_argument("out", help="the screenshot to write (.png)")
    args = parser.parse_args(argv)
    print(check_page(args.url.rstrip("/"), args.query, args.out))


if __name__ == "__main__":
    main()
