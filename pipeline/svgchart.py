"""Line charts as standalone SVG, drawn on the server: the bench's latency by load and the console's channel
health. No plotting library and nothing fetched by the browser: the markup is the chart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PALETTE = ("#2c7fb8", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#d35400")


@dataclass
class Line:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y), drawn in x order
    colour: str | None = None


@dataclass
class Marker:
    """A dashed reference line: horizontal at ``y`` or vertical at ``x``, labelled."""

    label: str
    colour: str
    x: float | None = None
    y: float | None = None


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    lines: list[Line]
    markers: list[Marker] = field(default_factory=list)
    y_max: float | None = None  # values above are drawn on the edge, their value written beside
    x_format: Callable[[float], str] = lambda v: f"{v:,.0f}"
    y_format: Callable[[float], str] = lambda v: f"{v:,.0f}"
    x_from_zero: bool = True  # False: the axis starts at the first x (time series)
    width: int = 720
    height: int = 420


def render(chart: Chart) -> str:
    left, right, bottom = 70, 30, 50
    per_row = max(1, (chart.width - left - right) // 100)  # legend entries per row, under the title
    top = 60 + 14 * ((len(chart.lines) - 1) // per_row)
    plot_w, plot_h = chart.width - left - right, chart.height - top - bottom
    xs = [x for line in chart.lines for x, _ in line.points] + [m.x for m in chart.markers if m.x is not None]
    ys = [y for line in chart.lines for _, y in line.points] + [m.y for m in chart.markers if m.y is not None]
    x_min = 0.0 if chart.x_from_zero else min(xs, default=0.0)
    x_max = max(xs, default=1.0)
    x_max = x_max + ((x_max - x_min) * 0.05 or 1.0)
    y_max = chart.y_max or (max(ys, default=1.0) * 1.1 or 1.0)

    def px(v: float) -> float:
        return left + plot_w * (v - x_min) / ((x_max - x_min) or 1.0)

    def py(v: float) -> float:
        return top + plot_h * (1 - min(v, y_max) / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{chart.height}" '
           f'viewBox="0 0 {chart.width} {chart.height}" font-family="sans-serif" font-size="12" role="img">',
           f'<rect width="{chart.width}" height="{chart.height}" fill="white"/>',
           f'<text x="{chart.width / 2}" y="22" text-anchor="middle" font-size="14">{escape(chart.title)}</text>']
    for i in range(5):  # grid and tick labels
        yv, xv = y_max * i / 4, x_min + (x_max - x_min) * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 8}" y="{py(yv) + 4:.1f}" text-anchor="end">{escape(chart.y_format(yv))}</text>')
        out.append(f'<text x="{px(xv):.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
                   f'{escape(chart.x_format(xv))}</text>')
    out += [f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>',
            f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>',
            f'<text x="{left + plot_w / 2}" y="{chart.height - 12}" text-anchor="middle">{escape(chart.x_label)}</text>',
            f'<text x="18" y="{top + plot_h / 2}" text-anchor="middle" '
            f'transform="rotate(-90 18 {top + plot_h / 2})">{escape(chart.y_label)}</text>']
    for m in chart.markers:
        if m.y is not None:
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(m.y):.1f}" y2="{py(m.y):.1f}" '
                       f'stroke="{m.colour}" stroke-dasharray="6 4"/>')
            out.append(f'<text x="{left + plot_w - 4}" y="{py(m.y) - 6:.1f}" text-anchor="end" fill="{m.colour}">'
                       f'{escape(m.label)}</text>')
        if m.x is not None:
            out.append(f'<line x1="{px(m.x):.1f}" x2="{px(m.x):.1f}" y1="{top}" y2="{top + plot_h}" '
                       f'stroke="{m.colour}" stroke-dasharray="6 4"/>')
            out.append(f'<text x="{px(m.x) - 6:.1f}" y="{top + 14}" text-anchor="end" fill="{m.colour}">'
                       f'{escape(m.label)}</text>')
    for k, line in enumerate(chart.lines):
        colour = line.colour or PALETTE[k % len(PALETTE)]
        ordered = sorted(line.points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ordered)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in ordered:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>')
            if y > y_max:
                out.append(f'<text x="{px(x) + 5:.1f}" y="{top + 12}" fill="{colour}">{escape(chart.y_format(y))}</text>')
        lx, ly = left + 100 * (k % per_row), 44 + 14 * (k // per_row)
        out.append(f'<line x1="{lx}" x2="{lx + 20}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
                   f'<text x="{lx + 26}" y="{ly}">{escape(line.name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
