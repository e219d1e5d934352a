"""Drive a real headless Chromium through the DevTools protocol: load a page, type, press keys,
read the DOM. (No browser-automation package: a WebSocket to Chromium's debugging port.)

    with Browser() as b:
        b.open("http://127.0.0.1:PORT/")
        b.wait_for("document.body.dataset.ready === '1'")
        b.key("c")
        b.eval("document.title")
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tierguard.localenv.ports import free_port
from tierguard.localenv.process import ManagedProcess


class Browser:
    def __init__(self, path: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tierguard-chromium-"))
        self.port = free_port()
        self.proc = ManagedProcess(
            "chromium",
            [path, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={self.tmp / 'profile'}", f"--remote-debugging-port={self.port}",
             "--remote-allow-origins=*", "--window-size=1280,1000", "about:blank"],
            self.tmp / "chromium.log",
        )
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def __enter__(self) -> Browser:
        self.proc.start()
        self._thread.start()
        deadline = time.monotonic() + 30
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not targets:
            self.close()
            raise RuntimeError(f"chromium did not come up:\n{self.proc.log_text()}")
        self._call(self._connect(targets[0]["webSocketDebuggerUrl"]))
        self.send("Page.enable")
        self.send("Runtime.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._call(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self.proc.stop(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- protocol ------------------------------------------------------------------------------

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)

    async def _send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        mid = next(self._ids)
        await self._ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._send(method, params))
        return result

    # --- conveniences --------------------------------------------------------------------------

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def eval(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"not true after {timeout}s: {expression}")

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", text=text)

    def key(self, key: str) -> None:
        """Press and release one key as a person would (keydown with its text, keyup)."""
        special = {"Enter": (13, "\r"), "Escape": (27, ""), "Tab": (9, "")}
        code, text = special.get(key, (ord(key.upper()) if len(key) == 1 else 0, key))
        base = {"key": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code}
        self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **base)
        self.send("Input.dispatchKeyEvent", type="keyUp", **base)

    def screenshot(self, path: str | os.PathLike[str]) -> None:
        import base64

        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
