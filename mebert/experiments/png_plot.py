"""A line plot written as a PNG with nothing but numpy and zlib (no matplotlib in the environment).

Enough for the experiment reports: axes with ticks and grid lines, one polyline with markers per
series, a legend, a title, and text in a built-in 5x7 bitmap font (lowercase letters, digits and a
little punctuation; text is lowercased).
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

# 5x7 glyphs, one string of 7 rows of 5 pixels per character.
_FONT_ROWS = {
    "a": ".....|.....|.###.|....#|.####|#...#|.####", "b": "#....|#....|####.|#...#|#...#|#...#|####.",
    "c": ".....|.....|.###.|#....|#....|#...#|.###.", "d": "....#|....#|.####|#...#|#...#|#...#|.####",
    "e": ".....|.....|.###.|#...#|#####|#....|.###.", "f": "..##.|.#..#|.#...|###..|.#...|.#...|.#...",
    "g": ".....|.####|#...#|#...#|.####|....#|.###.", "h": "#....|#....|#.##.|##..#|#...#|#...#|#...#",
    "i": "..#..|.....|.##..|..#..|..#..|..#..|.###.", "j": "...#.|.....|..##.|...#.|...#.|#..#.|.##..",
    "k": "#....|#....|#..#.|#.#..|##...|#.#..|#..#.", "l": ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
    "m": ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#", "n": ".....|.....|#.##.|##..#|#...#|#...#|#...#",
    "o": ".....|.....|.###.|#...#|#...#|#...#|.###.", "p": ".....|.....|####.|#...#|####.|#....|#....",
    "q": ".....|.....|.####|#...#|.####|....#|....#", "r": ".....|.....|#.##.|##..#|#....|#....|#....",
    "s": ".....|.....|.####|#....|.###.|....#|####.", "t": ".#...|.#...|###..|.#...|.#...|.#..#|..##.",
    "u": ".....|.....|#...#|#...#|#...#|#..##|.##.#", "v": ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
    "w": ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.", "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    "y": ".....|.....|#...#|#...#|.####|....#|.###.", "z": ".....|.....|#####|...#.|..#..|.#...|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    ".": ".....|.....|.....|.....|.....|.##..|.##..", ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    "-": ".....|.....|.....|#####|.....|.....|.....", "_": ".....|.....|.....|.....|.....|.....|#####",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.", ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##", ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "/": ".....|....#|...#.|..#..|.#...|#....|.....", "=": ".....|.....|#####|.....|#####|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    " ": ".....|.....|.....|.....|.....|.....|.....", "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}
FONT = {c: np.array([[p == "#" for p in row] for row in rows.split("|")]) for c, rows in _FONT_ROWS.items()}
# matplotlib's tab10 colours.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class Canvas:
  def __init__(self, width: int, height: int, background=(255, 255, 255)):
    self.pixels = np.empty((height, width, 3), np.uint8)
    self.pixels[:] = background

  @property
  def height(self) -> int:
    return self.pixels.shape[0]

  @property
  def width(self) -> int:
    return self.pixels.shape[1]

  def rect(self, x0, y0, x1, y1, color) -> None:
    x0, x1 = sorted((int(round(x0)), int(round(x1))))
    y0, y1 = sorted((int(round(y0)), int(round(y1))))
    self.pixels[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = color

  def disk(self, x, y, radius, color) -> None:
    r = int(math.ceil(radius))
    ys, xs = np.mgrid[-r:r + 1, -r:r + 1]
    inside = xs ** 2 + ys ** 2 <= radius ** 2
    for dy, dx in zip(ys[inside], xs[inside]):
      px, py = int(round(x)) + dx, int(round(y)) + dy
      if 0 <= px < self.width and 0 <= py < self.height:
        self.pixels[py, px] = color

  def line(self, x0, y0, x1, y1, color, width: float = 1.0, dash: int = 0) -> None:
    steps = max(int(math.hypot(x1 - x0, y1 - y0)), 1)
    for i in range(steps + 1):
      if dash and (i // dash) % 2:
        continue
      t = i / steps
      x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
      if width <= 1:
        if 0 <= int(round(x)) < self.width and 0 <= int(round(y)) < self.height:
          self.pixels[int(round(y)), int(round(x))] = color
      else:
        self.disk(x, y, width / 2, color)

  def text(self, x, y, text: str, color=(0, 0, 0), scale: int = 2, anchor: str = "left") -> None:
    """Draws `text` with its top at y; anchor: left, center or right of x."""
    text = text.lower()
    w = text_width(text, scale)
    x = x - w if anchor == "right" else x - w // 2 if anchor == "center" else x
    for i, ch in enumerate(text):
      glyph = FONT.get(ch, FONT["?"])
      for gy, gx in zip(*np.nonzero(glyph)):
        self.rect(x + (6 * i + gx) * scale, y + gy * scale, x + (6 * i + gx) * scale + scale - 1,
                  y + gy * scale + scale - 1, color)

  def to_png(self) -> bytes:
    height, width, _ = self.pixels.shape
    raw = b"".join(b"\x00" + self.pixels[r].tobytes() for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
      return (struct.pack(">I", len(data)) + kind + data
              + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def text_width(text: str, scale: int = 2) -> int:
  return max(6 * len(text) - 1, 0) * scale


def wrap(text: str, width: int) -> list[str]:
  lines, line = [], ""
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}" if line else word
  return lines + [line] if line else lines


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
  span = max(high - low, 1e-9)
  step = 10 ** math.floor(math.log10(span / count))
  for m in (1, 2, 2.5, 5, 10):
    if span / (step * m) <= count:
      step *= m
      break
  first = math.floor(low / step) * step
  return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def line_plot(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
              xticks: list[float], log2_x: bool = True, width: int = 900, height: int = 560,
              notes: list[str] = (), reference: tuple[str, list[tuple[float, float]]] | None = None
              ) -> bytes:
  """One polyline with markers per series (x, y points; a series may have a single point), and an
  optional dashed grey reference line (name, points), e.g. a baseline.

  x is on a log2 axis by default (eval lengths 64, 128, 256 equally spaced). Returns PNG bytes.
  """
  canvas = Canvas(width, height)
  left, right, top, bottom = 90, 230, 70, 80
  x0, x1, y0, y1 = left, width - right, height - bottom, top
  fx = (lambda v: math.log2(v)) if log2_x else (lambda v: v)
  xs_all = [fx(v) for v in xticks]
  xmin, xmax = min(xs_all), max(xs_all)
  pad = 0.08 * (xmax - xmin or 1)
  xmin, xmax = xmin - pad, xmax + pad
  ys = [y for points in series.values() for _, y in points] + [
      y for _, y in (reference[1] if reference else [])]
  ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
  margin = 0.1 * (yhi - ylo or abs(yhi) or 1)
  # Not below zero when no value is (accuracies, losses).
  yticks = nice_ticks(max(ylo - margin, 0.0) if ylo >= 0 else ylo - margin, yhi + margin)
  ylo, yhi = yticks[0], yticks[-1]
  px = lambda v: x0 + (fx(v) - xmin) / (xmax - xmin) * (x1 - x0)
  py = lambda v: y0 - (v - ylo) / (yhi - ylo) * (y0 - y1)
  grid, axis = (225, 225, 225), (60, 60, 60)
  step = yticks[1] - yticks[0]
  decimals = next((d for d in range(8) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-6), 8)
  for t in yticks:
    canvas.line(x0, py(t), x1, py(t), grid)
    canvas.text(x0 - 8, py(t) - 7, f"{t:.{decimals}f}", axis, anchor="right")
  for t in xticks:
    canvas.line(px(t), y0, px(t), y1, grid)
    canvas.text(px(t), y0 + 10, f"{t:g}", axis, anchor="center")
  canvas.line(x0, y0, x1, y0, axis)
  canvas.line(x0, y0, x0, y1, axis)
  canvas.text(width / 2, 12, title, (0, 0, 0), anchor="center")
  canvas.text((x0 + x1) / 2, y0 + 36, xlabel, axis, anchor="center")
  canvas.text(10, y1 - 26, ylabel, axis)
  legend = len(series)
  if reference:
    grey = (150, 150, 150)
    points = sorted(reference[1])
    for (ax, ay), (bx, by) in zip(points, points[1:]):
      canvas.line(px(ax), py(ay), px(bx), py(by), grey, width=2, dash=6)
    ly = top + 10 + 26 * legend
    canvas.line(x1 + 20, ly + 7, x1 + 50, ly + 7, grey, width=2, dash=6)
    canvas.text(x1 + 58, ly + 3, reference[0], (90, 90, 90), scale=1)
    legend += 1
  for i, (name, points) in enumerate(series.items()):
    color = PALETTE[i % len(PALETTE)]
    points = sorted(points)
    for (ax, ay), (bx, by) in zip(points, points[1:]):
      canvas.line(px(ax), py(ay), px(bx), py(by), color, width=3)
    for ax, ay in points:
      canvas.disk(px(ax), py(ay), 5, color)
    ly = top + 10 + 26 * i
    canvas.line(x1 + 20, ly + 7, x1 + 50, ly + 7, color, width=3)
    canvas.disk(x1 + 35, ly + 7, 5, color)
    canvas.text(x1 + 58, ly, name, (0, 0, 0))
  lines = []
  for note in notes:  # wrapped to the legend's column
    lines += wrap(note, max((width - x1 - 30) // 6, 8))
  for j, line in enumerate(lines):
    canvas.text(x1 + 20, top + 26 * legend + 20 + 16 * j, line, axis, scale=1)
  return canvas.to_png()
