"""A screenshot of the served demo with headless chromium (Debian's ``chromium``), driven over the
DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated by NUL bytes on
file descriptors 3 and 4; no extra Python package). The page is given real time to answer (gradio
fills it from the server), and buttons can be clicked first, e.g. three answers of a new user.

    python -m experiments.demo.screenshot --url http://127.0.0.1:7860 --click "I prefer B" --click "I prefer B" \\
        --out docs/demo.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless chromium with a DevTools pipe."""

    def __init__(self, binary: str | None = None):
        binary = binary or find_chromium()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="pal-mm-chromium-")

        def fds():  # the child sees our pipe ends as its fds 3 (reads) and 4 (writes)
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # first out of the way of 3 and 4
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                      "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "about:blank"],
                                     preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(method)

    def open(self, url: str, width: int, height: int) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})

    def evaluate(self, js: str):
        return self.send("Runtime.evaluate", {"expression": js, "returnByValue": True}).get("result", {}).get("value")

    def click(self, text: str) -> bool:
        """Click (real mouse events) the first visible tab or button whose text is ``text``; False when there is none."""
        box = self.evaluate(
            f"(() => {{ const b = [...document.querySelectorAll('[role=tab]'), ...document.querySelectorAll('button')].find(x => x.offsetParent !== null && "
            f"x.innerText.trim() === {json.dumps(text)}); if (!b) return null; b.scrollIntoView({{block: 'center'}}); "
            "const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if not box:
            return False
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})
        self.evaluate("window.scrollTo(0, 0)")
        return True

    def screenshot(self, path: str | Path) -> int:
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        Path(path).write_bytes(data)
        return len(data)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self._profile, ignore_errors=True)


def wait_for(browser: Browser, js: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if browser.evaluate(js):
            return True
        time.sleep(0.5)
    return False


IDLE = "document.querySelectorAll('.progress-text, .eta-bar').length === 0 && !!document.querySelector('button')"


def take(url: str, out: str | Path, clicks: list[str] = (), width: int = 1280, height: int = 1400, timeout: float = 60) -> int:
    """Open ``url``, wait for the page to settle, click ``clicks`` in turn (waiting after each), save a PNG."""
    b = Browser()
    try:
        b.open(url, width, height)
        time.sleep(2)
        wait_for(b, IDLE, timeout)
        for text in clicks:
            if not b.click(text):
                raise RuntimeError(f"no button {text!r} on the page")
            time.sleep(1)
            wait_for(b, IDLE, timeout)
        time.sleep(1)
        return b.screenshot(out)
    finally:
        b.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the served demo")
    ap.add_argument("--out", required=True, help="PNG file")
    ap.add_argument("--click", action="append", default=[], help="a button's text to click first (repeatable)")
    ap.add_argument("--width", type=int, default=1280, help="window width (default: 1280)")
    ap.add_argument("--height", type=int, default=1400, help="window height (default: 1400)")
    a = ap.parse_args(argv)
    print(f"{a.out}: {take(a.url, a.out, a.click, a.width, a.height)} bytes")


if __name__ == "__main__":
    main()
