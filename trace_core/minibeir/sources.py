"""Readers for the openly licensed sources of the TRACE-mini corpus.

Three sources, each installed with an ordinary package client (see ``INSTALL_HINTS``):

- npm ``emoji-datasource-google``: ``emoji.json`` plus 64 px Noto emoji PNGs (images Apache-2.0, data MIT);
- Debian ``openclipart-svg``: public-domain SVG clip art, titled in the SVG's RDF metadata;
- Debian ``dataset-fashion-mnist``: 28x28 grey clothing images in IDX files, 10 classes (MIT).

Readers return plain frozen records and never write anything; the builder decides what is copied. A missing
source raises ``SourceMissingError`` whose message says how to install it, so the CLI can exit with code 2.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_EMOJI_DIR = Path("/tmp/npm-src/node_modules/emoji-datasource-google")
DEFAULT_CLIPART_DIR = Path("/usr/share/openclipart/svg")
DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Debian wamerican: vets clip-art titles as English (see load_clipart).
DEFAULT_WORDS_FILE = Path("/usr/share/dict/words")

INSTALL_HINTS: Mapping[str, str] = {
    "emoji": "mkdir -p /tmp/npm-src && cd /tmp/npm-src && npm install emoji-datasource-google@16.0.0 "
    "(then pass --emoji-dir /tmp/npm-src/node_modules/emoji-datasource-google)",
    "clipart": "apt-get install -y openclipart-svg wamerican (and pip install -r requirements-build.txt for cairosvg); "
    "or pass --no-clipart",
    "fashionmnist": "apt-get install -y dataset-fashion-mnist; or pass --no-fashionmnist",
    "wordnet": "apt-get install -y wordnet-base (definition questions of the emoji_task1 pair)",
}

# Unicode skin-tone modifiers (Fitzpatrick types) and the CLDR words for them.
SKIN_TONES: Mapping[str, str] = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}

# Fashion-MNIST label names, from the dataset's README.
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

# Names whose gender variants do not share a stripped stem ("MAN" / "WOMAN" / "ADULT").
_GENDER_STEMS: Mapping[str, tuple[str, str]] = {
    "MAN": ("ADULT", "man"),
    "WOMAN": ("ADULT", "woman"),
    "ADULT": ("ADULT", "person"),
    "BOY": ("CHILD", "man"),
    "GIRL": ("CHILD", "woman"),
    "CHILD": ("CHILD", "person"),
    "OLDER MAN": ("OLDER ADULT", "man"),
    "OLDER WOMAN": ("OLDER ADULT", "woman"),
    "OLDER ADULT": ("OLDER ADULT", "person"),
}
_GENDER_PREFIX = re.compile(r"^(MAN|WOMAN|PERSON)(?::\s*|\s+)(.+)$")


class SourceMissingError(FileNotFoundError):
    """A source is not installed where the builder looked; the message says how to install it."""

    def __init__(self, source: str, where: Path, what: str) -> None:
        super().__init__(
            f"{source} source not found: {what} ({where}). Install it with: {INSTALL_HINTS[source]}"
        )
        self.source = source  # key into INSTALL_HINTS


# ----------------------------------------------------------------------------------------------------
# Emoji


@dataclass(frozen=True)
class Emoji:
    code: str  # unified code points, upper case, e.g. "1F468-200D-1F4BB"; unique
    name: str  # lower-case Unicode name, e.g. "man technologist"; the emoji's caption
    short_name: str  # main shortcode without colons, e.g. "male-technologist"
    category: str  # top-level group, e.g. "People & Body"
    subcategory: str  # CLDR subgroup, e.g. "person-role"
    added_in: str  # Emoji version that introduced it, e.g. "12.0"
    image: Path  # the 64 px PNG of the default (yellow / no skin tone) rendering
    tones: tuple[tuple[str, Path], ...]  # (tone word, 64 px PNG) for single skin-tone variants, in tone order
    family: str  # items sharing a family (skin tones, man/woman/person variants) are split together
    stem: str  # gender-free subject, e.g. "technologist"; equal across the family's gender variants
    gender: str | None  # "man", "woman" or "person" when the family has gender variants, else None


def _gender_of(name_upper: str) -> tuple[str, str | None]:
    """(stem, gender) of an upper-case Unicode name; gender None when the name carries none."""
    if name_upper in _GENDER_STEMS:
        stem, gender = _GENDER_STEMS[name_upper]
        return stem, gender
    m = _GENDER_PREFIX.match(name_upper)
    if m:
        return m.group(2), m.group(1).lower()
    return name_upper, None


def load_emoji(emoji_dir: Path) -> list[Emoji]:
    """Every emoji of ``emoji.json`` that has a Google 64 px image, sorted by the release's sort order."""
    meta = emoji_dir / "emoji.json"
    img_dir = emoji_dir / "img" / "google" / "64"
    if not meta.is_file():
        raise SourceMissingError("emoji", emoji_dir, "no emoji.json")
    if not img_dir.is_dir():
        raise SourceMissingError("emoji", emoji_dir, "no img/google/64 folder")
    raw = json.loads(meta.read_text(encoding="utf-8"))
    raw = [r for r in raw if r.get("has_img_google") and (img_dir / r["image"]).is_file()]
    raw.sort(key=lambda r: r.get("sort_order", 0))

    # Families: union of (a) names equal after removing a gender word and (b) the release's obsoletes links
    # ("RUNNER" is obsoleted by "MAN RUNNING"), so no edit pair straddles the train/test split.
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    by_code = {r["unified"]: r for r in raw}
    stems: dict[str, tuple[str, str | None]] = {}
    for r in raw:
        stem, gender = _gender_of(r["name"].upper())
        stems[r["unified"]] = (stem, gender)
        union(r["unified"], "stem:" + stem)
        for link in ("obsoletes", "obsoleted_by"):
            other = r.get(link)
            if other in by_code:
                union(r["unified"], other)
    members: dict[str, list[str]] = {}
    for code in by_code:
        members.setdefault(find(code), []).append(code)
    # Gender is only meaningful where a family holds more than one gender.
    gendered = {root for root, codes in members.items() if len({stems[c][1] for c in codes} - {None}) >= 2}

    out: list[Emoji] = []
    for r in raw:
        code = r["unified"]
        root = find(code)
        stem, gender = stems[code]
        tones = tuple(
            (word, img_dir / var["image"])
            for key, word in SKIN_TONES.items()
            if (var := (r.get("skin_variations") or {}).get(key)) and (img_dir / var["image"]).is_file()
        )
        if root in gendered and gender is None:
            gender = "person"  # "RUNNER" in the man/woman running family is the neutral person
        out.append(
            Emoji(
                code=code,
                name=r["name"].lower(),
                short_name=r["short_name"],
                category=r["category"],
                subcategory=r["subcategory"],
                added_in=r.get("added_in") or "unknown",
                image=img_dir / r["image"],
                tones=tones,
                family=min(members[root]),
                stem=stem.lower(),
                gender=gender if root in gendered else None,
            )
        )
    logger.info("emoji: %d records, %d families from %s", len(out), len(members), emoji_dir)
    return out


def emoji_version(emoji_dir: Path) -> str:
    """The npm package version, for the manifest and SOURCES.md."""
    pkg = emoji_dir / "package.json"
    try:
        return str(json.loads(pkg.read_text(encoding="utf-8")).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"


# ----------------------------------------------------------------------------------------------------
# Clip art


@dataclass(frozen=True)
class Clipart:
    key: str  # file stem made unique and filesystem-safe, e.g. "bat_orlando_karam"
    svg: Path  # the source SVG
    title: str  # cleaned dc:title of the work, e.g. "bat"
    topics: tuple[str, ...]  # folder path below svg/, e.g. ("animals", "mammals"): the package's subject sort


# The work's own title is the first dc:title; later ones name the publisher ("Open Clip Art Library").
_TITLE_RE = re.compile(r"<dc:title>\s*([^<]{2,80}?)\s*</dc:title>")
_SAFE_RE = re.compile(r"[^a-z0-9]+")
_BAD_TITLES = {"open clip art library", "untitled", "svg", "drawing", "image", "clipart"}


def _clean_title(title: str) -> str:
    title = re.sub(r"[_\-]+", " ", title).strip().lower()
    title = re.sub(r"\s+", " ", title)
    return title


def _load_words(words_file: Path) -> frozenset[str]:
    if not words_file.is_file():
        raise SourceMissingError("clipart", words_file, "no English word list to vet clip-art titles")
    return frozenset(
        w.strip().lower() for w in words_file.read_text(encoding="utf-8", errors="replace").split()
    )


def load_clipart(
    svg_dir: Path, words_file: Path = DEFAULT_WORDS_FILE, max_bytes: int = 120_000
) -> list[Clipart]:
    """Clip art with a usable English title; symlinked duplicates and heavy SVGs are skipped.

    Many openclipart titles are author names or Italian ("architetto francesco rollandin"), useless as
    captions, so every title word must be in an English word list. ``max_bytes`` keeps rendering fast and
    skips photo-like SVGs that stay unrecognisable at 64 px.
    """
    if not svg_dir.is_dir():
        raise SourceMissingError("clipart", svg_dir, "no svg folder")
    words = _load_words(words_file)
    out: list[Clipart] = []
    seen_keys: set[str] = set()
    seen_titles: set[str] = set()
    for path in sorted(svg_dir.rglob("*.svg")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size > max_bytes:
            continue
        head = path.read_text(encoding="utf-8", errors="replace")[:20000]
        m = _TITLE_RE.search(head)
        if not m:
            continue
        title = _clean_title(m.group(1))
        # Titles must be short English phrases to serve as captions: no codes, no file names.
        if (
            title in _BAD_TITLES
            or title in seen_titles
            or not re.fullmatch(r"[a-z][a-z ']{2,40}", title)
            or len(title.split()) > 6
            or not all(w in words for w in title.split())
        ):
            continue
        topics = tuple(p.replace("_", " ") for p in path.relative_to(svg_dir).parent.parts)
        key = _SAFE_RE.sub("_", path.stem.lower()).strip("_")[:48] or "clip"
        while key in seen_keys:
            key += "_x"
        seen_keys.add(key)
        seen_titles.add(title)
        out.append(Clipart(key=key, svg=path, title=title, topics=topics))
    logger.info("clipart: %d titled SVGs under %s", len(out), svg_dir)
    return out


def render_svg(svg: Path, size: int = 64) -> bytes | None:
    """PNG bytes of the SVG fitted into ``size`` px on white, or None when cairosvg cannot render it."""
    import io

    import cairosvg  # build-only dependency (requirements-build.txt)
    from PIL import Image

    try:
        png = cairosvg.svg2png(url=str(svg), output_width=size * 2)
        img = Image.open(io.BytesIO(png)).convert("RGBA")
    except Exception as e:  # noqa: BLE001 - SVGs in the wild fail in many ways; skipping one is fine
        logger.debug("cannot render %s: %s", svg, e)
        return None
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if img.getbbox() is None:
        return None  # fully transparent: nothing to see
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2), img)
    if len(set(canvas.getdata())) < 3:
        return None  # blank or almost blank after rendering
    buf = io.BytesIO()
    canvas.quantize(64).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def clipart_version() -> str:
    return dpkg_version("openclipart-svg")


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST


@dataclass(frozen=True)
class FashionImage:
    key: str  # "<file>-<index>", e.g. "t10k-00017"; unique
    label: int  # class index into FASHION_CLASSES
    pixels: bytes  # 28*28 grey values, row-major, 0 = background


def _read_idx(path: Path) -> tuple[tuple[int, ...], bytes]:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def load_fashion(fashion_dir: Path, files: tuple[str, ...] = ("t10k",)) -> list[FashionImage]:
    """Images and labels of the given IDX file sets ("t10k" is 10k images, plenty for a small corpus)."""
    out: list[FashionImage] = []
    for stem in files:
        images = fashion_dir / f"{stem}-images-idx3-ubyte.gz"
        labels = fashion_dir / f"{stem}-labels-idx1-ubyte.gz"
        if not images.is_file() or not labels.is_file():
            raise SourceMissingError("fashionmnist", fashion_dir, f"no {images.name} / {labels.name}")
        (n, rows, cols), pix = _read_idx(images)
        (n_labels,), lab = _read_idx(labels)
        if n != n_labels or rows * cols != 784:
            raise ValueError(
                f"unexpected Fashion-MNIST shapes in {fashion_dir}: {n}x{rows}x{cols}, {n_labels}"
            )
        out.extend(FashionImage(f"{stem}-{i:05d}", lab[i], pix[i * 784 : (i + 1) * 784]) for i in range(n))
    return out


def fashion_png(img: FashionImage) -> bytes:
    """The image as an 8-bit grey 28x28 PNG, kept at its native size."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("L", (28, 28), img.pixels).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def fashion_version() -> str:
    return dpkg_version("dataset-fashion-mnist")


def dpkg_version(package: str) -> str:
    """Installed Debian package version, "unknown" off Debian; only used for provenance."""
    import subprocess

    try:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return res.stdout.strip() or "unknown"
