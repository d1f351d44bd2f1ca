"""Small, dependency-free SVG charts for docs/scenarios.md: line charts of
per-second series (optionally log-scaled, with vertical event markers) and
bar charts. Plain SVG 1.1 that GitHub and browsers render as images.
"""
import math
from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
W, H = 720, 290
L, R, T, B = 64, 16, 46, 40  # margins (title and legend above the plot)


def _nice(hi):
    """A round upper bound >= hi and its tick step."""
    if hi <= 0:
        return 1.0, 0.25
    mag = 10 ** math.floor(math.log10(hi))
    for m in (1, 2, 2.5, 5, 10):
        if hi <= m * mag:
            top = m * mag
            return top, top / 4
    return 10 * mag, 2.5 * mag


def _fmt(v):
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


class _Frame:
    def __init__(self, title, y_label, x_max, y_max, log, x_label):
        self.log = log
        self.x_max = max(x_max, 1e-9)
        if log:
            self.lo = 10 ** math.floor(math.log10(max(min(y_max, 1.0), 1e-3)))
            self.hi = 10 ** math.ceil(math.log10(max(y_max, self.lo * 10)))
        else:
            self.hi, self.step = _nice(y_max)
        self.out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
                    f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
                    f'<rect width="{W}" height="{H}" fill="#fff"/>',
                    f'<text x="{L}" y="18" font-size="13" font-weight="bold">'
                    f'{escape(title)}</text>',
                    f'<text x="14" y="{T + (H - T - B) / 2}" transform="rotate(-90 14 '
                    f'{T + (H - T - B) / 2})" text-anchor="middle">{escape(y_label)}</text>',
                    f'<text x="{L + (W - L - R) / 2}" y="{H - 6}" text-anchor="middle">'
                    f'{escape(x_label)}</text>']
        self._axes()

    def x(self, v):
        return L + (W - L - R) * v / self.x_max

    def y(self, v):
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = v / self.hi if self.hi else 0
        return H - B - (H - T - B) * min(max(f, 0.0), 1.0)

    def _axes(self):
        ticks = []
        if self.log:
            v = self.lo
            while v <= self.hi * 1.0001:
                ticks.append(v)
                v *= 10
        else:
            ticks = [i * self.step for i in range(5)]
        for v in ticks:
            yy = self.y(v)
            self.out.append(f'<line x1="{L}" x2="{W - R}" y1="{yy:.1f}" y2="{yy:.1f}" '
                            f'stroke="#e5e5e5"/><text x="{L - 6}" y="{yy + 4:.1f}" '
                            f'text-anchor="end">{_fmt(v)}</text>')
        self.out.append(f'<line x1="{L}" x2="{L}" y1="{T}" y2="{H - B}" stroke="#888"/>'
                        f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="#888"/>')

    def legend(self, labels):
        """One row under the title, left to right."""
        x = L
        for i, label in enumerate(labels):
            c = PALETTE[i % len(PALETTE)]
            self.out.append(f'<rect x="{x:.0f}" y="25" width="10" height="10" fill="{c}"/>'
                            f'<text x="{x + 14:.0f}" y="34">{escape(label)}</text>')
            x += 14 + 6.5 * len(label) + 14

    def done(self):
        return "\n".join(self.out + ["</svg>"]) + "\n"


def line_chart(title, series, y_label, x_label="seconds", x_step=1.0, markers=(),
               log=False, binned=True):
    """series: [(label, [y per step])]; markers: [(x, label)]. `binned`: each
    value covers [j, j + 1) steps and is drawn at the bin's middle (per-second
    counts); otherwise value j is an instant sample at j."""
    n = max((len(s) for _, s in series), default=1)
    y_max = max((v for _, s in series for v in s), default=1) or 1
    span = n * x_step if binned else ((n - 1) * x_step if n > 1 else 1)
    off = 0.5 if binned else 0.0
    f = _Frame(title, y_label, span, y_max, log, x_label)
    for t in range(0, int(span) + 1, max(1, int(n * x_step / 8))):
        f.out.append(f'<text x="{f.x(t):.1f}" y="{H - B + 14}" text-anchor="middle">'
                     f'{t}</text>')
    for x, label in markers:
        f.out.append(f'<line x1="{f.x(x):.1f}" x2="{f.x(x):.1f}" y1="{T}" y2="{H - B}" '
                     f'stroke="#555" stroke-dasharray="4 3"/><text x="{f.x(x) + 3:.1f}" '
                     f'y="{T + 12}" fill="#555">{escape(label)}</text>')
    for i, (_, s) in enumerate(series):
        pts = " ".join(f"{f.x((j + off) * x_step):.1f},{f.y(v):.1f}" for j, v in enumerate(s))
        f.out.append(f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
                     f'stroke-width="1.6" points="{pts}"/>')
    f.legend([label for label, _ in series])
    return f.done()


def bar_chart(title, groups, series, y_label, log=False, labels=None):
    """groups: x categories; series: [(label, [value per group])]; labels: text
    above each bar ([[str per group] per series])."""
    y_max = max((v for _, s in series for v in s), default=1) or 1
    f = _Frame(title, y_label, 1, y_max, log, "")
    slot = (W - L - R) / len(groups)
    bw = slot * 0.7 / len(series)
    for g, name in enumerate(groups):
        f.out.append(f'<text x="{L + slot * (g + 0.5):.1f}" y="{H - B + 14}" '
                     f'text-anchor="middle">{escape(name)}</text>')
        for i, (_, s) in enumerate(series):
            x0 = L + slot * g + slot * 0.15 + bw * i
            top = f.y(s[g])
            f.out.append(f'<rect x="{x0:.1f}" y="{top:.1f}" width="{bw:.1f}" '
                         f'height="{H - B - top:.1f}" fill="{PALETTE[i % len(PALETTE)]}"/>')
            if labels:
                f.out.append(f'<text x="{x0 + bw / 2:.1f}" y="{top - 3:.1f}" '
                             f'text-anchor="middle">{escape(labels[i][g])}</text>')
    if len(series) > 1:
        f.legend([label for label, _ in series])
    return f.done()
