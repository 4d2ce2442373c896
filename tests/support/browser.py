"""A real browser for the HTML report: headless Chromium (Debian's ``chromium``) loads a file,
runs its scripts, and gives the DOM as it then is (``--dump-dom``) or a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed")


def _chromium(args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run(
            [chromium_path(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def file_url(path: str | os.PathLike[str], fragment: str = "") -> str:
    return Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def dump_dom(path: str | os.PathLike[str], fragment: str = "", timeout: float = 120) -> str:
    """The DOM after the page's scripts ran (virtual time lets timers finish first)."""
    return _chromium(
        ["--virtual-time-budget=10000", "--dump-dom", file_url(path, fragment)], timeout
    )


def screenshot(
    path: str | os.PathLike[str],
    png: str | os.PathLike[str],
    fragment: str = "",
    size: tuple[int, int] = (1400, 1000),
    timeout: float = 120,
) -> None:
    _chromium(
        [
            "--virtual-time-budget=10000",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={os.fspath(png)}",
            file_url(path, fragment),
        ],
        timeout,
    )


@dataclass
class ReportPage:
    """What the report's page shows, read from a dumped DOM."""

    rows: list[str] = field(default_factory=list)  # data-call of each listed call, in order
    row_cells: list[list[str]] = field(default_factory=list)
    arrows: list[dict[str, str]] = field(default_factory=list)  # data-* and the label text
    texts: dict[str, str] = field(default_factory=dict)  # element id -> its text
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # element id -> attrs
    hidden: set[str] = field(default_factory=set)  # ids of elements with the hidden attribute
    scripts_with_src: int = 0
    external_refs: list[str] = field(default_factory=list)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = ReportPage()
        self._stack: list[tuple[str, str | None]] = []  # (tag, id of the element with text)
        self._in_row: list[str] | None = None
        self._cell: list[str] | None = None
        self._arrow: dict[str, str] | None = None
        self._label = False
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        ident = a.get("id")
        if ident:
            self.page.attributes[ident] = a
            if "hidden" in a:
                self.page.hidden.add(ident)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("#", "data:")):
                self.page.external_refs.append(f"<{tag} {key}={a[key]}>")
        if tag == "script":
            self._script = True
            if "src" in a:
                self.page.scripts_with_src += 1
        if tag == "tr" and "call" in a.get("class", "").split():
            self.page.rows.append(a.get("data-call", ""))
            self._in_row = []
            self.page.row_cells.append(self._in_row)
        if tag == "td" and self._in_row is not None:
            self._cell = []
        if tag == "g" and "arrow" in a.get("class", "").split():
            self._arrow = {k: v for k, v in a.items() if k.startswith("data-") or k == "class"}
            self.page.arrows.append(self._arrow)
        if tag == "text" and self._arrow is not None and "label" in a.get("class", ""):
            self._label = True
            self._arrow["text"] = ""
        self._stack.append((tag, ident))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, _ = self._stack.pop()
            if open_tag == tag:
                break
        if tag == "td" and self._cell is not None and self._in_row is not None:
            self._in_row.append("".join(self._cell))
            self._cell = None
        if tag == "tr":
            self._in_row = None
        if tag == "g":
            self._arrow = None
        if tag == "text":
            self._label = False
        if tag == "script":
            self._script = False

    def handle_data(self, data: str) -> None:
        if self._script:
            return
        for _, ident in self._stack:
            if ident:
                self.page.texts[ident] = self.page.texts.get(ident, "") + data
        if self._cell is not None:
            self._cell.append(data)
        if self._label and self._arrow is not None:
            self._arrow["text"] += data


def read_page(dom: str) -> ReportPage:
    parser = _PageParser()
    parser.feed(dom)
    parser.close()
    return parser.page
