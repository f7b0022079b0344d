#!/usr/bin/env python3
"""The admin page in a real browser: headless Chromium, driven over the
DevTools protocol on a pipe (--remote-debugging-pipe: no port, no extra
Python package), against a running `lb` with two backends.

scripts/admin-page-test.sh starts the processes and calls this with the
admin URL, the LB URL and the pid of the backend to kill. This script

 1. sends a bounded, throttled load through the LB (threads, keep-alive,
    stopped at the end and never longer than --load-seconds);
 2. opens the admin page and waits (polling the DOM, with a deadline) until
    its script has rendered live data: two endpoint rows with two share
    bars, each near 50 % over the window;
 3. kills the backend and waits, in the same page (no reload), for its row
    to be shown as ejected while the other stays ready;
 4. checks the page logged no Content-Security-Policy violation, and that
    with JavaScript disabled the server-rendered tables are there;
 5. feeds the page's script a document with names made of markup (fetch
    replaced before the page loads) and checks they are shown as text;
 6. optionally saves a screenshot.

Exit 0 on success; prints what it saw either way.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse


def log(msg):
    print(f"admin-page: {msg}", flush=True)


class Browser:
    """Chromium with the DevTools protocol on fds 3 (in) and 4 (out)."""

    def __init__(self, binary, profile):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            # Nothing but loopback is ever resolved or reached.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--hide-scrollbars",
            "--mute-audio",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(profile, "chromium.log"), "wb"),
            preexec_fn=wire,
            pass_fds=(3, 4),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next = 0
        self.events = []
        self.targets = {}

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=15):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def page(self, url, scripts=True, width=1280, height=720, before=None):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.targets[session] = target
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method, session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        if not scripts:
            self.call("Emulation.setScriptExecutionDisabled", {"value": True}, session=session)
        if before:
            self.call("Page.addScriptToEvaluateOnNewDocument", {"source": before}, session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        return session

    def eval(self, session, expression):
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=session,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, session, path):
        self.call("Target.activateTarget", {"targetId": self.targets[session]})
        height = self.eval(session, "Math.ceil(document.body.getBoundingClientRect().bottom) + 16")
        width = self.eval(session, "document.documentElement.clientWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "clip": clip}, session=session)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Load:
    """A bounded, throttled load: `threads` keep-alive clients, each at most
    `rate` requests a second, until stop() or `seconds` have passed."""

    def __init__(self, lb_url, threads=2, rate=100, seconds=40):
        u = urllib.parse.urlsplit(lb_url)
        self.host, self.port = u.hostname, u.port or 80
        self.rate, self.until = rate, time.monotonic() + seconds
        self.stopped = threading.Event()
        self.sent = self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        conn = None
        gap = 1.0 / self.rate
        while not self.stopped.is_set() and time.monotonic() < self.until:
            start = time.monotonic()
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/host")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.sent += 1
                self.failed += 0 if ok else 1
            self.stopped.wait(max(0.0, gap - (time.monotonic() - start)))
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=10)


# The page's state as the test reads it: rows of the first upstream section.
READ_ROWS = """
(() => {
  const main = document.getElementById('upstreams');
  if (!main) return { source: null, polls: 0, marker: null, bars: 0, status: '', rows: [] };  // still loading
  const sec = document.querySelector('section.upstream');
  const rows = sec ? [...sec.querySelectorAll('tbody tr.endpoint')] : [];
  return {
    source: main.getAttribute('data-source'),
    polls: Number(document.body.getAttribute('data-polls') || 0),
    marker: window.__adminPageTestMarker || null,
    bars: sec ? sec.querySelectorAll('meter.share-window').length : 0,
    status: document.getElementById('status').textContent,
    rows: rows.map(r => ({
      name: r.querySelector('th').textContent,
      address: r.getAttribute('data-address'),
      state: r.getAttribute('data-state'),
      stateText: r.querySelector('.state').textContent,
      share: Number(r.querySelector('meter.share-window').getAttribute('value')),
      shareText: r.querySelector('.pct').textContent,
      rps: r.querySelector('.rps').textContent,
    })),
  };
})()
"""


HOSTILE = '<img src=x onerror="window.__pwned=1">'


def hostile_doc():
    """An /api/stats document whose every name is markup."""
    q = {"count": 0, "p50_ms": None, "p99_ms": None}
    window = {"seconds": 1.0, "requests": 1, "errors_5xx": 0, "requests_per_second": 1.0,
              "errors_5xx_per_second": 0.0, "share": 100.0}
    endpoint = {"address": "127.0.0.9:1", "name": "pod-" + HOSTILE, "state": "ready",
                "ejected_for_seconds": None, "consecutive_failures": 0, "weight": 1,
                "requests": 1, "errors_5xx": 0, "share_since_start": 100.0, "window": window}
    upstream = {"name": "up-" + HOSTILE, "host": "h" + HOSTILE, "path_prefix": "/" + HOSTILE,
                "protocol": "http1", "requests": 1, "window_requests": 1, "endpoints": [endpoint]}
    return {"version": 1, "uptime_seconds": 1.0, "window_seconds": 10, "window_covered_seconds": 1.0,
            "latency": {"scope": "all upstreams", "window": q, "since_start": q}, "upstreams": [upstream]}


# document.body is null while the new document is still being parsed: the
# first polls may run then, and count as "not rendered yet".
READ_HOSTILE = """
(() => ({
  polls: Number((document.body && document.body.getAttribute('data-polls')) || 0),
  pwned: window.__pwned === 1,
  imgs: document.querySelectorAll('img').length,
  upstream: (document.querySelector('section.upstream h2 code') || {}).textContent,
  pod: (document.querySelector('tbody tr.endpoint th') || {}).textContent,
  match: (document.querySelector('p.match') || {}).textContent,
}))()
"""


def wait_for(what, check, deadline_s, interval=0.2):
    """Polls check() until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last and last[0]:
            return last[1]
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}; last seen: {last and last[1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--admin", required=True, help="admin base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--lb", required=True, help="LB base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--kill-pid", type=int, required=True, help="backend to kill")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--screenshot", help="save a PNG of the page here (after the ejection)")
    ap.add_argument("--load-seconds", type=float, default=40)
    args = ap.parse_args()

    profile = tempfile.mkdtemp(prefix="admin-page-chromium.")
    browser = Browser(args.chromium, profile)
    load = None
    try:
        load = Load(args.lb, seconds=args.load_seconds)
        session = browser.page(args.admin.rstrip("/") + "/")

        def balanced():
            s = browser.eval(session, READ_ROWS)
            ok = (
                s["source"] == "live"
                and s["polls"] >= 3
                and s["bars"] == 2
                and len(s["rows"]) == 2
                and all(r["state"] == "ready" for r in s["rows"])
                and all(abs(r["share"] - 50) <= 5 for r in s["rows"])
                and all(r["rps"] not in ("\u2014", "0.0") for r in s["rows"])
            )
            return ok, s

        s = wait_for("two ready endpoints near 50 % each, rendered live", balanced, 20)
        for r in s["rows"]:
            log(f"{r['name']} {r['address']}: {r['stateText']}, window share {r['shareText']}, {r['rps']} req/s")
        log(f"two bars, shares near 50 % (after {s['polls']} polls): ok")

        # A marker that survives only as long as the page is not reloaded.
        browser.eval(session, "window.__adminPageTestMarker = 'same page'")
        os.kill(args.kill_pid, signal.SIGKILL)
        log(f"killed backend pid {args.kill_pid}")

        def ejected():
            s = browser.eval(session, READ_ROWS)
            states = {r["state"] for r in s["rows"]}
            return (states == {"ready", "ejected"} and len(s["rows"]) == 2), s

        s = wait_for("the killed backend's row to show 'ejected'", ejected, 20, interval=0.1)
        victim = next(r for r in s["rows"] if r["state"] == "ejected")
        assert victim["stateText"].startswith("ejected"), victim
        assert s["marker"] == "same page", "the page was reloaded"
        log(f"{victim['name']} {victim['address']} shown as '{victim['stateText']}' (live, no reload): ok")

        # Let the window show the shift, then capture.
        if args.screenshot:
            wait_for(
                "the window share to move to the survivor",
                lambda: (lambda s: (any(r["share"] >= 60 for r in s["rows"]), s))(browser.eval(session, READ_ROWS)),
                15,
            )
            browser.screenshot(session, args.screenshot)
            log(f"screenshot: {args.screenshot}")

        violations = [
            e["params"]["entry"]["text"]
            for e in browser.events
            if e.get("method") == "Log.entryAdded"
            and "Content Security Policy" in e["params"]["entry"].get("text", "")
        ]
        assert not violations, f"CSP violations: {violations}"
        log("no Content-Security-Policy violations: ok")

        # Without JavaScript: the server-rendered snapshot.
        static = browser.page(args.admin.rstrip("/") + "/", scripts=False)

        # (Runtime.evaluate still works with the page's scripts disabled.)
        def server_rows():
            s = browser.eval(static, READ_ROWS)
            return (s["source"] == "server" and len(s["rows"]) == 2 and s["bars"] == 2), s

        s = wait_for("the server-rendered table with scripts disabled", server_rows, 10)
        log(f"without JavaScript: {len(s['rows'])} rows, states {[r['state'] for r in s['rows']]}: ok")

        # The script's own rendering, fed names made of markup.
        fake = (
            "window.fetch = () => Promise.resolve(new Response("
            + json.dumps(json.dumps(hostile_doc()))
            + ", {status: 200, headers: {'Content-Type': 'application/json'}}));"
        )
        evil = browser.page(args.admin.rstrip("/") + "/", before=fake)

        def hostile_rendered():
            s = browser.eval(evil, READ_HOSTILE)
            return s["polls"] >= 2, s

        s = wait_for("the page to render the hostile document", hostile_rendered, 10)
        assert not s["pwned"] and s["imgs"] == 0, f"markup in a name was interpreted: {s}"
        assert s["upstream"] == "up-" + HOSTILE and s["pod"] == "pod-" + HOSTILE, s
        assert "h" + HOSTILE in s["match"] and "/" + HOSTILE in s["match"], s
        log("names made of markup are shown as text by the script: ok")
    finally:
        if load is not None:
            load.stop()
            log(f"load: {load.sent} requests, {load.failed} failed")
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    print("admin-page: PASS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, RuntimeError, TimeoutError) as e:
        print(f"admin-page: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
