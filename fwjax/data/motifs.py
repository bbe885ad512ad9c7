"""Painters for the tread motifs of the 17 NFRC descriptors, used by fwjax.data.synthetic.

Each painter draws ink (value 255) on a blank 'L' canvas the size of a sole region, with a
size scale ``unit`` (pixels per element) and a numpy Generator; the caller masks the result to
the region and the sole. Leaf motifs map to codes (parents are added by the caller):

  bars D01, wavy D01-01, curved-wavy D01-02, circles D02, targets D02-01, triangles D03,
  quadrilaterals D04, pentagons D05, hexagons D06, complex (stars, crosses) D07, zigzag D08,
  text D09, logo D10, lattice D11, stippled texture D12, hollow outlines D13, plain D14.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Painter = Callable[[ImageDraw.ImageDraw, int, int, float, np.random.Generator], None]
INK = 255


def _grid(w, h, step, rng, stagger=True):
  offset = rng.uniform(0, step)
  for row, y in enumerate(np.arange(-step + offset, h + step, step)):
    shift = step / 2 if stagger and row % 2 else 0
    for x in np.arange(-step + offset + shift, w + step, step):
      yield float(x), float(y)


def _polygon(cx, cy, radius, sides, angle):
  return [(cx + radius * math.cos(angle + 2 * math.pi * k / sides),
           cy + radius * math.sin(angle + 2 * math.pi * k / sides)) for k in range(sides)]


def bars(draw, w, h, unit, rng):
  thick, gap = unit * rng.uniform(0.35, 0.5), unit * rng.uniform(0.5, 0.8)
  angle = rng.uniform(-0.6, 0.6)
  length = 2 * (w + h)
  for t in np.arange(-length, length, thick + gap):
    cx, cy = w / 2 + t * math.sin(angle), h / 2 + t * math.cos(angle)
    dx, dy = length * math.cos(angle), -length * math.sin(angle)
    draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=INK, width=max(2, int(thick)))


def _wave_lines(draw, w, h, unit, rng, amplitude, period, curve):
  thick, gap = unit * 0.4, unit * rng.uniform(0.7, 0.9)
  xs = np.linspace(-unit, w + unit, 80)
  for y0 in np.arange(-unit, h + unit, thick + gap):
    bend = curve * ((xs - w / 2) / max(w, 1)) ** 2 * h * 0.8
    ys = y0 + amplitude * np.sin(2 * math.pi * xs / period) + bend
    draw.line(list(zip(xs, ys)), fill=INK, width=max(2, int(thick)), joint='curve')


def wavy(draw, w, h, unit, rng):
  _wave_lines(draw, w, h, unit, rng, amplitude=unit * 0.45, period=unit * 2.2, curve=0.0)


def curved_wavy(draw, w, h, unit, rng):
  _wave_lines(draw, w, h, unit, rng, amplitude=unit * 0.3, period=unit * 3.0,
              curve=rng.choice([-1.0, 1.0]) * 1.5)


def circles(draw, w, h, unit, rng):
  radius = unit * rng.uniform(0.35, 0.5)
  for x, y in _grid(w, h, unit * 1.3, rng):
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=INK)


def targets(draw, w, h, unit, rng):
  radius = unit * 0.95
  ring = max(2, int(unit * 0.16))
  for x, y in _grid(w, h, unit * 2.2, rng):
    for r in (radius, radius * 0.55):
      draw.ellipse([x - r, y - r, x + r, y + r], outline=INK, width=ring)
    draw.ellipse([x - radius * 0.18, y - radius * 0.18, x + radius * 0.18, y + radius * 0.18],
                 fill=INK)


def _polygons(sides, size=0.55):
  def paint(draw, w, h, unit, rng):
    angle = rng.uniform(0, 2 * math.pi)
    for x, y in _grid(w, h, unit * 1.45, rng):
      draw.polygon(_polygon(x, y, unit * size, sides, angle), fill=INK)
  return paint


def complex_shapes(draw, w, h, unit, rng):
  points = int(rng.integers(5, 8))
  angle = rng.uniform(0, math.pi)
  for x, y in _grid(w, h, unit * 1.6, rng):
    star = []
    for k in range(2 * points):
      r = unit * (0.7 if k % 2 == 0 else 0.3)
      a = angle + math.pi * k / points
      star.append((x + r * math.cos(a), y + r * math.sin(a)))
    draw.polygon(star, fill=INK)


def zigzag(draw, w, h, unit, rng):
  thick, step = max(2, int(unit * 0.3)), unit * 0.9
  for y0 in np.arange(-unit, h + unit, unit * 1.3):
    xs = np.arange(-unit, w + 2 * unit, step)
    ys = y0 + np.where(np.arange(len(xs)) % 2 == 0, -unit * 0.4, unit * 0.4)
    draw.line(list(zip(xs, ys)), fill=INK, width=thick, joint='curve')


_WORDS = ('GRIP', 'SPORT', 'TRAIL', 'RUN', 'FLEX', 'PRO', 'MAX', 'AIR', 'STAR', 'CLUB')


def text(draw, w, h, unit, rng):
  font = ImageFont.load_default(size=max(8, int(unit * 1.3)))
  word = str(rng.choice(_WORDS))
  box = draw.textbbox((0, 0), word, font=font)
  tw, th = box[2] - box[0], box[3] - box[1]
  for y in np.arange(rng.uniform(0, th), h, th * 1.8):
    draw.text((max(0.0, (w - tw) / 2), float(y) - box[1]), word, fill=INK, font=font)


def logo(draw, w, h, unit, rng):
  # One large emblem: a swoosh (two arcs forming a crescent) with a bar through it.
  cx, cy = w / 2, h / 2
  r = min(w, h) * 0.42
  ts = np.linspace(0.15 * math.pi, 1.1 * math.pi, 40)
  outer = [(cx + r * math.cos(t), cy + r * 0.6 * math.sin(t)) for t in ts]
  inner = [(cx + r * 0.8 * math.cos(t), cy + r * 0.25 * math.sin(t) - r * 0.1) for t in ts[::-1]]
  draw.polygon(outer + inner, fill=INK)
  draw.line([(cx - r, cy - r * 0.6), (cx + r * 0.2, cy - r * 0.15)], fill=INK,
            width=max(2, int(unit * 0.35)))


def lattice(draw, w, h, unit, rng):
  thick, step = max(2, int(unit * 0.22)), unit * 1.0
  angle = rng.uniform(0.5, 0.9)
  length = 2 * (w + h)
  for sign in (1, -1):
    for t in np.arange(-length, length, step):
      a = sign * angle
      cx, cy = w / 2 + t * math.sin(a), h / 2 + t * math.cos(a)
      dx, dy = length * math.cos(a), -length * math.sin(a)
      draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=INK, width=thick)


def texture(draw, w, h, unit, rng):
  count = int(w * h / (unit * unit) * 6)
  xs, ys = rng.uniform(0, w, count), rng.uniform(0, h, count)
  size = max(1.0, unit * 0.12)
  for x, y in zip(xs, ys):
    draw.rectangle([x, y, x + size, y + size], fill=INK)


def hollow(draw, w, h, unit, rng):
  # Hollow, irregular rounded outlines (not circles, not polygons with a set number of sides).
  width = max(2, int(unit * 0.2))
  for x, y in _grid(w, h, unit * 2.0, rng):
    r = unit * 0.8
    ts = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    radii = r * (1 + 0.3 * np.sin(2 * ts + rng.uniform(0, 6)) + 0.15 * np.sin(3 * ts))
    pts = [(x + rr * math.cos(t), y + rr * 0.7 * math.sin(t)) for t, rr in zip(ts, radii)]
    draw.polygon(pts, outline=INK, width=width)


def plain(draw, w, h, unit, rng):
  draw.rectangle([0, 0, w, h], fill=INK)


#: leaf code -> painter.
PAINTERS: dict[str, Painter] = {
    'D01': bars, 'D01-01': wavy, 'D01-02': curved_wavy, 'D02': circles, 'D02-01': targets,
    'D03': _polygons(3, 0.6), 'D04': _polygons(4, 0.55), 'D05': _polygons(5, 0.55),
    'D06': _polygons(6, 0.55), 'D07': complex_shapes, 'D08': zigzag, 'D09': text, 'D10': logo,
    'D11': lattice, 'D12': texture, 'D13': hollow, 'D14': plain,
}


def paint(code: str, width: int, height: int, unit: float, seed: int) -> np.ndarray:
  """The motif of a leaf code on a (height, width) region: bool ink mask."""
  canvas = Image.new('L', (max(1, width), max(1, height)), 0)
  PAINTERS[code](ImageDraw.Draw(canvas), width, height, unit, np.random.default_rng(seed))
  return np.asarray(canvas) > 127
