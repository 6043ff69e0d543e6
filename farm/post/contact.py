"""The contact sheet of a job with takes: `JOB/contact.jpg`, one row per image, its takes side
by side (each take's first frame, its id and seed; the picked take outlined and marked), so that
the takes of a thousand images can be compared at a glance before `farm pick`.

`contact_layout` is the pure part (which cells, their labels, the grid's geometry and its
bounds); `draw_contact_sheet` draws a layout with Pillow from the thumbnails (`JOB/ITEM.jpg`);
`write_contact_sheet` reads and writes the store. It is written when a job ends (`farm run`,
`farm resume`, the service) and after a pick of a finished job; an unchanged sheet is not
written again. Items without takes are not on it. The sheet stops at `MAX_ROWS` rows and at a
pixel budget, so a 10,000-item job's stays a few MB; its footer says what was left out.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from farm.core.errors import StorageError
from farm.core.manifest import JobSpec
from farm.core.states import SKIPPED, SUCCEEDED
from farm.core.takes import take_groups

log = logging.getLogger(__name__)

CELL_WIDTH = 256
MAX_THUMB_HEIGHT = 2 * CELL_WIDTH  # a 9:16 take's box is 256 x 455
PAD = 8
TITLE_HEIGHT = 24
ROW_LABEL_HEIGHT = 18
LINE_HEIGHT = 14  # two label lines under each thumbnail
FOOTER_LINE_HEIGHT = 16
CHAR_WIDTH = 6  # Pillow's default font, about: labels are cut to fit their cell
MAX_ROWS = 200
MAX_HEIGHT = 60_000  # below JPEG's 65,535
MAX_PIXELS = 40_000_000  # about 120 MB while drawing (RGB)
JPEG_QUALITY = 85
COMMITTED = (SUCCEEDED, SKIPPED)

BACKGROUND, TEXT, DIM = (22, 22, 22), (235, 235, 235), (150, 150, 150)
MISSING, PICKED = (110, 110, 110), (255, 196, 0)


def contact_sheet_key(job_name: str) -> str:
    return f"{job_name}/contact.jpg"


@dataclass(frozen=True)
class Cell:
    item_id: str
    take: int
    seed: int
    x: int  # the thumbnail's box; the labels are the two lines under it
    y: int
    width: int
    height: int
    labels: tuple[str, str]
    picked: bool
    rendered: bool  # committed: its thumbnail is drawn; else a grey cell saying why
    state: str


@dataclass(frozen=True)
class Row:
    label: str  # the takes' shared id
    y: int  # of the label; the cells start ROW_LABEL_HEIGHT below
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class ContactLayout:
    width: int
    height: int
    title: str
    rows: tuple[Row, ...]
    footer: tuple[str, ...]

    @property
    def footer_y(self) -> int:
        return self.height - PAD - FOOTER_LINE_HEIGHT * len(self.footer)


def _cut(text: str, width_px: int) -> str:
    chars = max(width_px // CHAR_WIDTH, 4)
    return text if len(text) <= chars else text[: chars - 3] + "..."


def contact_layout(spec: JobSpec, states: Mapping[str, str], picks: Mapping[str, str], *,
                   max_rows: int = MAX_ROWS, max_height: int = MAX_HEIGHT, max_pixels: int = MAX_PIXELS
                   ) -> ContactLayout | None:
    """The sheet of `spec` given each item's state (`states`: item id -> state; committed ones
    are drawn) and the picks (shared id -> take id); None when the job has no takes. Rows follow
    the manifest; columns are the most takes of any row shown. Pure: no I/O, no Pillow."""
    groups = take_groups(spec)
    if not groups:
        return None
    columns_all = max(len(takes) for takes in groups.values())
    width = PAD + columns_all * (CELL_WIDTH + PAD)
    singles = sum(1 for item in spec.items if item.take_of is None)
    notes = ["picked takes are outlined"] + ([f"{singles} item(s) without takes are not shown"] if singles else [])
    rows: list[Row] = []
    y = TITLE_HEIGHT + PAD
    for shared, takes in groups.items():
        box_w, box_h = takes[0].params.size
        thumb_h = min(round(CELL_WIDTH * box_h / box_w), MAX_THUMB_HEIGHT)
        row_h = ROW_LABEL_HEIGHT + thumb_h + 2 * LINE_HEIGHT + PAD
        end = y + row_h + PAD + FOOTER_LINE_HEIGHT * (len(notes) + 1)  # +1: the "stops here" line
        if len(rows) == max_rows or end > max_height or width * end > max_pixels:
            break
        cells = []
        for column, item in enumerate(takes):
            state = str(states.get(item.id, "queued"))
            picked = picks.get(shared) == item.id
            second = f"seed {item.seed}" + ("  PICKED" if picked else "")
            cells.append(Cell(item.id, item.take, item.seed, PAD + column * (CELL_WIDTH + PAD), y + ROW_LABEL_HEIGHT,
                              CELL_WIDTH, thumb_h, (_cut(item.id, CELL_WIDTH), _cut(second, CELL_WIDTH)), picked,
                              state in COMMITTED, state))
        rows.append(Row(_cut(shared, width - 2 * PAD), y, tuple(cells)))
        y += row_h
    if len(rows) < len(groups):
        notes.insert(0, f"showing the first {len(rows)} of {len(groups)} images (a sheet stops at {max_rows} rows, "
                        f"{max_height} px high or {max_pixels // 1_000_000} megapixels); job.json lists every take")
    height = y + PAD + FOOTER_LINE_HEIGHT * len(notes)
    picked = sum(1 for shared in groups if shared in picks)
    title = _cut(f"{spec.name}: {len(groups)} image(s) with takes, {picked} picked", width - 2 * PAD)
    return ContactLayout(width, height, title, tuple(rows), tuple(notes))


_FONT = None


def _font():
    global _FONT
    if _FONT is None:
        from PIL import ImageFont

        _FONT = ImageFont.load_default()
    return _FONT


def draw_contact_sheet(layout: ContactLayout, thumbnail: Callable[[str], bytes | None]) -> bytes:
    """The sheet as JPEG bytes; `thumbnail(item_id)` gives a committed item's first frame (None,
    or bytes Pillow cannot read: drawn as a grey cell)."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    draw.text((PAD, PAD), layout.title, fill=TEXT, font=font)
    for row in layout.rows:
        draw.text((PAD, row.y + 3), row.label, fill=TEXT, font=font)
        for cell in row.cells:
            box = (cell.x, cell.y, cell.x + cell.width - 1, cell.y + cell.height - 1)
            image = _thumbnail(thumbnail, cell) if cell.rendered else None
            if image is None:
                draw.rectangle(box, fill=MISSING)
                why = "no thumbnail" if cell.rendered else f"not rendered ({cell.state})"
                draw.text((cell.x + PAD, cell.y + cell.height // 2 - 6), why, fill=TEXT, font=font)
            else:
                image.thumbnail((cell.width, cell.height))  # fits the box, aspect kept
                sheet.paste(image, (cell.x + (cell.width - image.width) // 2, cell.y + (cell.height - image.height) // 2))
                image.close()
            labels_y = cell.y + cell.height + 2
            draw.text((cell.x, labels_y), cell.labels[0], fill=TEXT, font=font)
            draw.text((cell.x, labels_y + LINE_HEIGHT), cell.labels[1], fill=PICKED if cell.picked else DIM, font=font)
            if cell.picked:
                draw.rectangle((cell.x - 4, cell.y - 4, cell.x + cell.width + 3, labels_y + 2 * LINE_HEIGHT),
                               outline=PICKED, width=3)
    for n, line in enumerate(layout.footer):
        draw.text((PAD, layout.footer_y + n * FOOTER_LINE_HEIGHT), line, fill=DIM, font=font)
    out = io.BytesIO()
    sheet.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _thumbnail(thumbnail: Callable[[str], bytes | None], cell: Cell):
    from PIL import Image, UnidentifiedImageError

    data = thumbnail(cell.item_id)
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # A thumbnail is a first frame (<= 1024 px a side): small enough to decode whole.
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def write_contact_sheet(store, spec: JobSpec, *, picks: Mapping[str, str] | None = None,
                        states: Mapping[str, str] | None = None) -> str | None:
    """Write `JOB/contact.jpg` for a job with takes; its key, or None for a job without takes.
    `states` (item id -> state) and `picks` default to the job record's (`job.json`). Written
    only when it changed (an identical re-run writes nothing). Raises StorageError."""
    if not any(item.take_of is not None for item in spec.items):
        return None
    if picks is None or states is None:
        from farm.storage.picks import read_record

        record = read_record(store, spec.name) or {}
        items = record.get("items") if isinstance(record.get("items"), dict) else {}
        states = states if states is not None else {k: v.get("state") for k, v in items.items() if isinstance(v, dict)}
        picks = picks if picks is not None else (record.get("picks") if isinstance(record.get("picks"), dict) else {})
    layout = contact_layout(spec, states, picks)
    if layout is None:
        return None
    from farm.storage.base import item_keys

    def thumbnail(item_id: str) -> bytes | None:
        try:
            return store.get_bytes(item_keys(spec.name, item_id)["thumbnail"])
        except StorageError as error:  # one unreadable thumbnail is a grey cell, not no sheet
            log.warning("contact sheet of %s: thumbnail of %s not read: %s", spec.name, item_id, error)
            return None

    data = draw_contact_sheet(layout, thumbnail)
    key = contact_sheet_key(spec.name)
    if store.get_bytes(key) != data:
        store.put_bytes(key, data, "image/jpeg")
    return key


def write_contact_sheet_logged(store, spec: JobSpec, **kwargs) -> str | None:
    """`write_contact_sheet`, with any failure logged instead of raised: the sheet is a view of
    the job, never a reason for the job (or a pick) to fail."""
    try:
        return write_contact_sheet(store, spec, **kwargs)
    except Exception as error:  # Pillow, storage, a damaged record: all only cost the sheet
        log.warning("contact sheet of job %s not written: %s: %s", spec.name, type(error).__name__, error)
        return None
