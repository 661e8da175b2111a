"""Two PNG plots of a report, drawn with Pillow (installed with tensorboard, a dependency of
omni_ds) so no plotting library is needed: latency distribution and WER vs answer length.
Without Pillow the plots are skipped and the report says so."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

W, H, MARGIN = 640, 400, 60
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))


class _Axes:
    """Data -> pixel mapping of one plot area, with its frame, ticks and labels drawn."""

    def __init__(self, draw, x_range, y_range, title: str, labels: tuple[str, str]):
        self.draw, (self.x0, self.x1), (self.y0, self.y1) = draw, x_range, y_range
        self.x1 = self.x1 if self.x1 > self.x0 else self.x0 + 1.0
        self.y1 = self.y1 if self.y1 > self.y0 else self.y0 + 1.0
        draw.rectangle([MARGIN, MARGIN, W - MARGIN, H - MARGIN], outline=(0, 0, 0))
        draw.text((MARGIN, 20), title, fill=(0, 0, 0))
        draw.text((W // 2 - 60, H - 25), labels[0], fill=(0, 0, 0))
        draw.text((5, MARGIN - 20), labels[1], fill=(0, 0, 0))
        for k in range(5):
            fx, fy = self.x0 + (self.x1 - self.x0) * k / 4, self.y0 + (self.y1 - self.y0) * k / 4
            draw.text((self.px(fx) - 10, H - MARGIN + 5), f"{fx:.3g}", fill=(0, 0, 0))
            draw.text((8, self.py(fy) - 5), f"{fy:.3g}", fill=(0, 0, 0))

    def px(self, x: float) -> float:
        return MARGIN + (x - self.x0) / (self.x1 - self.x0) * (W - 2 * MARGIN)

    def py(self, y: float) -> float:
        return H - MARGIN - (y - self.y0) / (self.y1 - self.y0) * (H - 2 * MARGIN)


def _canvas():
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (W, H), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def latency_plot(series: dict[str, list[float]], path: Path) -> Optional[Path]:
    """Empirical CDF per latency kind (x seconds, y fraction of samples at or below)."""
    series = {k: sorted(v) for k, v in series.items() if v}
    if not series:
        return None
    image, draw = _canvas()
    top = max(v[-1] for v in series.values())
    axes = _Axes(draw, (0.0, top * 1.05), (0.0, 1.0), "latency distribution (CDF)",
                 ("seconds from audio in", "fraction"))
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [(axes.px(v), axes.py((j + 1) / len(values))) for j, v in enumerate(values)]
        draw.line([(axes.px(0.0), axes.py(0.0))] + points, fill=colour, width=2)
        draw.text((W - MARGIN - 190, H - MARGIN - 55 + 15 * i), name, fill=colour)   # lower right: the CDFs rise left
    image.save(path)
    return path


def wer_length_plot(points: list[tuple[float, float]], path: Path) -> Optional[Path]:
    """One dot per sample: reference answer length in words (x) against its WER (y)."""
    if not points:
        return None
    image, draw = _canvas()
    axes = _Axes(draw, (0.0, max(p[0] for p in points) * 1.05), (0.0, max(1.0, max(p[1] for p in points))),
                 "text WER vs answer length", ("reference answer words", "WER"))
    for x, y in points:
        cx, cy = axes.px(x), axes.py(y)
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=COLOURS[0])
    image.save(path)
    return path


def write_plots(rows: list[dict], out: Path) -> tuple[list[str], Optional[str]]:
    """(PNG paths written, why none were written or None)."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        return [], "Pillow is not installed: no plots"
    ok = [r for r in rows if r["status"] == "ok"]
    series = {k: [r[k] for r in ok if r.get(k) is not None]
              for k in ("first_token_latency_s", "first_chunk_latency_s", "first_audio_latency_s")}
    wer_points = [(r["reference_words"], r["text_wer"]) for r in ok if r.get("text_wer") is not None]
    written = [latency_plot(series, out / "latency.png"), wer_length_plot(wer_points, out / "wer_vs_length.png")]
    return [str(p) for p in written if p is not None], None
