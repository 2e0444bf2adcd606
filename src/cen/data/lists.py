"""List and split files: parsing them into entries that name every file of a sample.

An :class:`Entry` is one sample: the files of each role (a modality name or
``"mask"``) and where it came from (``file:line``), so errors can name both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One sample: ``files`` maps a role (modality or ``"mask"``) to its path;
    ``source`` is ``"<list file>:<line number>"`` and ``text`` that line."""

    source: str
    text: str
    files: dict[str, Path]

    def where(self) -> str:
        """``'<list file>:<line> ("<text>")'`` for error messages."""
        return f"{self.source} ({self.text!r})"


def resolve_list_file(root: str | os.PathLike, list_file: str | os.PathLike) -> Path:
    """``list_file`` as given if it exists, else relative to ``root``."""
    path = Path(list_file)
    if not path.is_absolute() and not path.exists() and (Path(root) / path).exists():
        path = Path(root) / path
    if not path.is_file():
        raise FileNotFoundError(f"list file {list_file} not found (also looked in {root})")
    return path


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a list file as (1-based line number, text without newline).

    Raises ValueError if the file has no non-blank line or is not UTF-8 text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text list file ({err})") from err
    lines = [(i + 1, line.rstrip("\r\n")) for i, line in enumerate(text.splitlines())]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: list file is empty; expected one sample per line")
    return lines


def nyudv2_entries(
    root: str | os.PathLike, list_file: str | os.PathLike, roles: Sequence[str] = ("rgb", "mask", "depth")
) -> list[Entry]:
    """Entries of a reference NYUDv2 / SUN RGB-D list file.

    Each line holds tab-separated paths relative to ``root`` in the reference order
    ``rgb<TAB>mask<TAB>depth`` (``roles`` names the columns).

    Raises:
        FileNotFoundError: the list file is missing.
        ValueError: the list is empty, or a line does not have ``len(roles)`` columns
            (names the file, line number and the line).
    """
    root = Path(root)
    path = resolve_list_file(root, list_file)
    entries = []
    for n, line in read_lines(path):
        cols = line.strip().split("\t")
        if len(cols) != len(roles) or any(not c.strip() for c in cols):
            raise ValueError(
                f"{path}:{n}: malformed line {line!r}: expected {len(roles)} tab-separated paths "
                f"({'<TAB>'.join(roles)}), e.g. 'rgb/000003.png\\tmasks/000003.png\\tdepth/000003.png'"
            )
        entries.append(Entry(f"{path}:{n}", line, {r: root / c.strip() for r, c in zip(roles, cols)}))
    return entries


def taskonomy_entries(root: str | os.PathLike, list_file: str | os.PathLike, domains: Sequence[str]) -> list[Entry]:
    """Entries of a Taskonomy list file of ``{domain}`` templates.

    Each line is a path relative to ``root`` containing ``{domain}``, e.g.
    ``{domain}/point_407_view_2_domain_{domain}.png``; it is expanded for every domain.

    Raises ValueError for an empty list or a line without ``{domain}``.
    """
    root = Path(root)
    path = resolve_list_file(root, list_file)
    entries = []
    for n, line in read_lines(path):
        template = line.strip()
        if "{domain}" not in template or template.replace("{domain}", "").count("{"):
            raise ValueError(
                f"{path}:{n}: malformed line {line!r}: expected a path template containing '{{domain}}', "
                "e.g. '{domain}/point_407_view_2_domain_{domain}.png'"
            )
        entries.append(Entry(f"{path}:{n}", line, {d: root / template.replace("{domain}", d) for d in domains}))
    return entries


def folder_entries(
    root: str | os.PathLike,
    split_file: str | os.PathLike,
    modalities: Sequence[str],
    mask: str | None = "masks",
    ext: str | Mapping[str, str] = "png",
) -> list[Entry]:
    """Entries of a generic ``<root>/<modality>/<stem>.<ext>`` data set.

    ``split_file`` lists one stem per line. ``mask`` is the folder of the labels (its
    role is ``"mask"``), or None. ``ext`` is one extension or one per folder.
    """
    root = Path(root)
    path = resolve_list_file(root, split_file)
    folders = {m: m for m in modalities}
    if mask is not None:
        folders["mask"] = mask

    def ext_of(folder: str) -> str:
        e = ext if isinstance(ext, str) else ext.get(folder, "png")
        return e.lstrip(".")

    entries = []
    for n, line in read_lines(path):
        stem = line.strip()
        if "\t" in stem or "/" in stem or "\\" in stem:
            raise ValueError(
                f"{path}:{n}: malformed line {line!r}: expected one file stem per line (no folders, no tabs), "
                "e.g. 'kitchen_0001'"
            )
        entries.append(
            Entry(f"{path}:{n}", line, {role: root / f / f"{stem}.{ext_of(f)}" for role, f in folders.items()})
        )
    return entries


def missing_files(entries: Sequence[Entry]) -> list[tuple[Entry, str, Path]]:
    """(entry, role, path) of every file named by ``entries`` that does not exist."""
    return [(e, role, p) for e in entries for role, p in e.files.items() if not p.is_file()]


def raise_if_missing(entries: Sequence[Entry]) -> None:
    """Raise FileNotFoundError naming the first missing file and its list line."""
    missing = missing_files(entries)
    if missing:
        entry, role, p = missing[0]
        more = f" ({len(missing) - 1} more files missing; run `cen data check`)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{p}: no such file ({role}), named by {entry.where()}{more}")
