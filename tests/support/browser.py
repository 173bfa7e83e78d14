"""Headless Chromium for tests, offline and without extra packages (no Playwright, no websockets).

Two one-shot commands are used, each in its own throw-away profile and process group (killed on
timeout, so nothing outlives a test):

* :func:`probe_page` copies a page, injects a probe (a script first in ``<head>`` that records
  ``window.onerror``, unhandled rejections, ``console.error``/``console.warn``, resources that failed
  to load and Content-Security-Policy violations; a script last in ``<body>`` that, on the ``load``
  event, measures every ``svg.plot`` and its shapes and lists the resources the page loaded) and
  loads it with ``--dump-dom``: Chromium prints the DOM once the page has loaded, with the probe's
  findings in it as JSON. The
  console output Chromium logs on stderr (``--enable-logging=stderr``) is parsed too.
* :func:`screenshot` writes a PNG; :func:`png_rows` decodes it (zlib, no imaging library) far
  enough to tell which pixel rows are blank.

Network is cut off: every host name resolves to nothing (``--host-resolver-rules``), and the
usual background traffic is disabled.

CI installs the browser with ``apt-get install -y chromium`` (Debian); tests skip when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """The Chromium executable: ``$RLMPIPE_CHROMIUM``, else the first of CANDIDATES on PATH."""
    explicit = os.environ.get("RLMPIPE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def console(self) -> list[str]:
        """Console messages Chromium logged (``--enable-logging=stderr``): 'CONSOLE(...)' lines."""
        return [line for line in self.stderr.splitlines() if "CONSOLE" in line]


def run_chromium(url: str, *flags: str, window_size: tuple[int, int] = (1280, 2000), scale: float = 1.0,
                 timeout: float = 60.0, executable: str | None = None) -> BrowserRun:
    """Run headless Chromium once on ``url``; its whole process group is ended when it returns."""
    executable = executable or find_chromium()
    if executable is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="rlmpipe-chromium-") as profile:
        command = [executable, *BASE_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                   f"--window-size={window_size[0]},{window_size[1]}",
                   f"--force-device-scale-factor={scale:g}", *flags, url]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   errors="replace", start_new_session=True, cwd=profile,
                                   env={**os.environ, "HOME": profile})
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout, stderr = process.communicate()
            raise TimeoutError(f"chromium did not finish within {timeout}s: {stderr[-2000:]}") from None
        finally:
            _kill_group(process)  # helpers (zygote, GPU/network services) that outlived the browser
        return BrowserRun(process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=10)


# --- probing a page -----------------------------------------------------------------------------
PROBE_HEAD = """<script>
window.__probe = {errors: [], console: [], failed: [], csp: []};
window.addEventListener('error', function (event) {
  var target = event.target;
  if (target && target !== window && (target.src || target.href)) {
    window.__probe.failed.push(String(target.src || target.href));
  } else {
    window.__probe.errors.push(String(event.message) + ' @' + event.lineno + ':' + event.colno);
  }
}, true);
window.addEventListener('unhandledrejection', function (event) {
  window.__probe.errors.push('unhandled rejection: ' + String(event.reason));
});
document.addEventListener('securitypolicyviolation', function (event) {
  window.__probe.csp.push(event.violatedDirective + ' ' + event.blockedURI);
});
['error', 'warn'].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__probe.console.push(level + ': ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
});
</script>"""

PROBE_TAIL = """<script>
window.addEventListener('load', function () {
  var probe = window.__probe;
  probe.plots = {};
  var plots = document.querySelectorAll('svg.plot');
  for (var i = 0; i < plots.length; i++) {
    var svg = plots[i];
    var box = svg.getBoundingClientRect();
    var shapes = svg.querySelectorAll('rect, line, polyline, circle, path, text');
    var visible = 0, bars = 0, texts = 0;
    for (var k = 0; k < shapes.length; k++) {
      var r = shapes[k].getBoundingClientRect();
      if (r.width > 0 || r.height > 0) {
        visible++;
        if (shapes[k].tagName === 'rect' && r.width > 0 && r.height > 0) { bars++; }
        if (shapes[k].tagName === 'text' && shapes[k].textContent.trim()) { texts++; }
      }
    }
    probe.plots[svg.id] = {width: box.width, height: box.height, top: box.top + window.scrollY,
                           shapes: shapes.length, visible: visible, rects: bars, texts: texts};
  }
  probe.resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  probe.title = document.title;
  probe.scrollHeight = document.documentElement.scrollHeight;
  var out = document.createElement('pre');
  out.id = '__probe';
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""


@dataclass
class PageProbe:
    errors: list[str]
    console: list[str]  # console.error / console.warn calls seen by the page
    failed: list[str]  # resources that failed to load
    csp: list[str]  # Content-Security-Policy violations (something tried to load)
    resources: list[str]  # every resource the page loaded
    plots: dict[str, dict]
    title: str
    scroll_height: float
    browser_console: list[str] = field(default_factory=list)  # CONSOLE lines of Chromium's own log

    @property
    def problems(self) -> list[str]:
        return [*self.errors, *self.console, *(f"failed to load {u}" for u in self.failed),
                *(f"CSP: {c}" for c in self.csp), *self.browser_console]


def probe_page(html_path: str | Path, *, window_size: tuple[int, int] = (1280, 2000),
               timeout: float = 60.0) -> PageProbe:
    """Load a copy of the page with the probe in it; returns what the probe saw."""
    text = Path(html_path).read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", text)
    if head is None or "</body>" not in text:
        raise ValueError("the page needs a <head> and a </body>")
    probed = text[: head.end()] + PROBE_HEAD + text[head.end():]
    cut = probed.rindex("</body>")
    probed = probed[:cut] + PROBE_TAIL + probed[cut:]
    with tempfile.TemporaryDirectory(prefix="rlmpipe-probe-") as folder:
        copy = Path(folder) / "probed.html"
        copy.write_text(probed, encoding="utf-8")
        result = run_chromium(copy.as_uri(), "--dump-dom", window_size=window_size, timeout=timeout)
    match = re.search(r'<pre id="__probe">(.*?)</pre>', result.stdout, re.DOTALL)
    if match is None:
        raise AssertionError(f"the probe wrote nothing (rc {result.returncode}): {result.stderr[-3000:]}")
    import html as html_module

    data = json.loads(html_module.unescape(match.group(1)))
    return PageProbe(errors=data["errors"], console=data["console"], failed=data["failed"], csp=data["csp"],
                     resources=data["resources"], plots=data["plots"], title=data["title"],
                     scroll_height=data["scrollHeight"], browser_console=result.console)


def screenshot(html_path: str | Path, png_path: str | Path, *, window_size: tuple[int, int] = (1280, 2000),
               scale: float = 1.0, timeout: float = 60.0) -> Path:
    """A PNG of the page in a ``window_size`` viewport (CSS pixels); ``scale`` < 1 makes a smaller image
    of the same layout (quicker to check)."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    result = run_chromium(Path(html_path).resolve().as_uri(), f"--screenshot={png_path}",
                          window_size=window_size, scale=scale, timeout=timeout)
    if not png_path.exists():
        raise AssertionError(f"no screenshot written (rc {result.returncode}): {result.stderr[-3000:]}")
    return png_path


# --- reading a PNG without an imaging library ---------------------------------------------------
@dataclass
class PngRows:
    width: int
    height: int
    varied: list[bool]  # per pixel row: does it hold more than one colour?

    def varied_between(self, top: float, bottom: float) -> int:
        return sum(self.varied[max(int(top), 0): min(int(bottom), self.height)])


def png_rows(path: str | Path) -> PngRows:
    """Decode an 8-bit, non-interlaced PNG (what Chromium writes) and tell, for each pixel row,
    whether it is all one colour (blank). Filters None/Sub/Up are undone with numpy, Average and
    Paeth byte by byte (a second or so for a screenshot of a few million pixels)."""
    import numpy as np

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    position, idat = 8, []
    width = height = bit_depth = colour_type = interlace = None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        position += 12 + length
    if bit_depth != 8 or interlace != 0 or colour_type not in (0, 2, 4, 6):
        raise ValueError(f"unsupported PNG (bit depth {bit_depth}, colour type {colour_type}, "
                         f"interlace {interlace})")
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, stride + 1)
    previous = np.zeros(stride, dtype=np.uint8)
    varied = []
    for row_index in range(height):
        filter_type = int(raw[row_index, 0])
        line = raw[row_index, 1:].copy()
        if filter_type == 1:  # Sub: a running sum per channel (uint8 arithmetic wraps, as PNG wants)
            line = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif filter_type == 2:  # Up
            line = line + previous
        elif filter_type in (3, 4):
            line = np.frombuffer(_unfilter_slow(filter_type, bytearray(line.tobytes()),
                                                previous.tobytes(), bpp), dtype=np.uint8)
        elif filter_type != 0:
            raise ValueError(f"bad PNG filter type {filter_type}")
        pixels = line.reshape(width, bpp)
        varied.append(bool((pixels != pixels[0]).any()))
        previous = line
    return PngRows(width, height, varied)


def _unfilter_slow(filter_type: int, line: bytearray, previous: bytes, bpp: int) -> bytes:
    n = len(line)
    if filter_type == 3:  # Average
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
    else:  # Paeth
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + predictor) & 0xFF
    return bytes(line)
