"""A bounded XML reader for captagent's configuration: elements with their file and line,
``<xi:include href=...>`` expanded, and limits that no file can make it run past.

expat parses (no namespace processing: captagent's parser has none); the tree is walked
without recursion, so a deep file never reaches Python's recursion limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from captagent_tls.config.files import ConfigError, read_limited

__all__ = ["XmlBudget", "XmlNode", "load_xml"]


@dataclass(eq=False)
class XmlNode:
    """One XML element, remembering its file and line for messages."""

    tag: str
    attrib: dict[str, str]
    file: str
    line: int
    children: list[XmlNode] = field(default_factory=list)
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def iter(self, tag: str) -> Iterator[XmlNode]:
        """This element and those within it named ``tag``, in document order (without
        recursion: a deep file must not reach Python's recursion limit)."""
        stack = [self]
        while stack:
            node = stack.pop()
            if node.tag == tag:
                yield node
            stack.extend(reversed(node.children))


#: Limits of a captagent configuration, far above what one holds (a few files, elements six
#: deep, a few hundred in all), so that no file can make reading it run away.
MAX_XML_DEPTH = 64  # elements within one another, in one file
MAX_INCLUDE_DEPTH = 16  # files including files including files...
MAX_XML_FILES = 256  # files read, counting a file each time it is included
MAX_XML_ELEMENTS = 100_000  # elements in all files read


class XmlBudget:
    """What one configuration has read so far, against the limits above."""

    def __init__(self) -> None:
        self.files = 0
        self.elements = 0


def _parse_xml(path: Path, budget: XmlBudget) -> XmlNode:
    """Parse one file with expat."""
    budget.files += 1
    if budget.files > MAX_XML_FILES:
        raise ConfigError(f"{path}: more than {MAX_XML_FILES} files read (includes)")
    try:
        data = read_limited(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    parser = expat.ParserCreate()
    parser.buffer_text = True
    stack: list[XmlNode] = []
    roots: list[XmlNode] = []

    def start(tag: str, attrib: dict[str, str]) -> None:
        if len(stack) >= MAX_XML_DEPTH:
            raise ConfigError(
                f"{path}:{parser.CurrentLineNumber}: nested too deeply (more "
                f"than {MAX_XML_DEPTH} elements within one another)"
            )
        budget.elements += 1
        if budget.elements > MAX_XML_ELEMENTS:
            raise ConfigError(
                f"{path}:{parser.CurrentLineNumber}: more than "
                f"{MAX_XML_ELEMENTS} elements in the configuration"
            )
        node = XmlNode(tag, attrib, str(path), parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}:{exc.offset + 1}: XML error: {expat.ErrorString(exc.code)}"
        ) from None
    return roots[0]


def _is_include(node: XmlNode) -> bool:
    prefix, colon, local = node.tag.rpartition(":")
    return local == "include" and (bool(colon) or "href" in node.attrib)


def load_xml(
    path: Path, budget: XmlBudget | None = None, including: tuple[Path, ...] = ()
) -> XmlNode:
    """Parse a file and replace its ``<xi:include href=...>`` elements by what they name."""
    budget = budget or XmlBudget()
    root = _parse_xml(path, budget)
    including = (*including, path.resolve())
    stack = [root]
    while stack:
        node = stack.pop()
        for i, child in enumerate(node.children):
            if _is_include(child):
                node.children[i] = _include(child, budget, including)  # expanded already
            else:
                stack.append(child)
    return root


def _include(node: XmlNode, budget: XmlBudget, including: tuple[Path, ...]) -> XmlNode:
    href = node.attrib.get("href", "").strip()
    if not href:
        raise ConfigError(f"{node.where}: <{node.tag}> has no href")
    if node.attrib.get("parse", "xml") != "xml" or "xpointer" in node.attrib:
        raise ConfigError(f"{node.where}: <{node.tag}>: only whole XML files can be included")
    if "\0" in href:
        raise ConfigError(f"{node.where}: <{node.tag}>: href holds a NUL character")
    target = Path(node.file).parent / href
    if target.resolve() in including:
        raise ConfigError(f"{node.where}: {target} includes itself")
    if len(including) >= MAX_INCLUDE_DEPTH:
        raise ConfigError(
            f"{node.where}: includes nested too deeply (more than "
            f"{MAX_INCLUDE_DEPTH} files including one another)"
        )
    if not target.is_file():
        raise ConfigError(f"{node.where}: included file {target} not found")
    return load_xml(target, budget, including)
