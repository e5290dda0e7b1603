"""Sources made of image files: a folder (recursive), a zip, and CelebA-HQ (either, in numeric
order of the file names)."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from progressive.core.errors import UserError
from progressive.core.images import EXTENSIONS, Reject, image_files, is_image_name, open_image
from progressive.data.sources import Source

_zips: dict[tuple[int, str], zipfile.ZipFile] = {}


def _open_zip(path: str) -> zipfile.ZipFile:
    """One ZipFile per process: a handle inherited across fork shares the file offset."""
    key = (os.getpid(), path)
    if key not in _zips:
        _zips[key] = zipfile.ZipFile(path)
    return _zips[key]


def _numeric_key(name: str) -> tuple[int, int, str]:
    """Sort by the last integer in the file stem; names without one go last."""
    digits = re.findall(r"\d+", Path(name).stem)
    return (0, int(digits[-1]), name) if digits else (1, 0, name)


class _NamedFiles(Source):
    """A source of named image files, listed once in sorted order (numeric for CelebA-HQ)."""

    numeric = False

    def _set_names(self, names: list[str], input: str) -> None:
        self.names = sorted(names, key=_numeric_key if self.numeric else None)
        if not self.names:
            raise UserError(f"{input} holds no images ({', '.join(EXTENSIONS)})")

    def items(self) -> Iterator[str]:
        yield from self.names

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, item: str) -> bytes:
        raise NotImplementedError

    def load(self, item: str):
        data = self._read(item)
        if not data:
            raise Reject("empty file")
        return item, open_image(data)


class FolderSource(_NamedFiles):
    """Every image file under a folder, recursively, in sorted path order."""

    kind = "folder"

    def __init__(self, input: str, **options):
        super().__init__(input, **options)
        root = Path(input)
        if not root.is_dir():
            raise UserError(f"{input} is not a folder; pass a folder of images")
        self.root = root
        self._set_names(image_files(root), input)

    def _read(self, item: str) -> bytes:
        return (self.root / item).read_bytes()


class ZipSource(_NamedFiles):
    """Every image member of a zip file, in sorted member-name order."""

    kind = "zip"

    def __init__(self, input: str, **options):
        super().__init__(input, **options)
        if not Path(input).is_file():
            raise UserError(f"{input} is not a file; pass a .zip of images")
        try:
            with zipfile.ZipFile(input) as z:
                names = [i.filename for i in z.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{input} is not a readable zip file ({e})") from None
        self._set_names([n for n in names if is_image_name(n)], input)

    def _read(self, item: str) -> bytes:
        try:
            return _open_zip(str(self.input)).read(item)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise Reject(f"cannot read zip member: {e}") from None


class _CelebAHQFolder(FolderSource):
    kind = "celebahq"
    numeric = True


class _CelebAHQZip(ZipSource):
    kind = "celebahq"
    numeric = True


def celebahq(input: str, **options) -> Source:
    """CelebA-HQ's 30,000 1024x1024 images from a folder or a zip, sorted by the integer in
    each file name (imgHQ00000.png, 00000.jpg, ...)."""
    if Path(input).is_dir():
        return _CelebAHQFolder(input, **options)
    if Path(input).is_file():
        return _CelebAHQZip(input, **options)
    raise UserError(f"{input} does not exist; pass the CelebA-HQ folder or zip")
