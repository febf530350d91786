"""The one table ``make bench`` prints: figures, then ratios against targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Figure:
    """A measured quantity: median over rounds, with min and max."""

    section: str
    name: str
    samples: list[float]
    unit: str  # "µs", "req/s", "ms", "MB", "requests"

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def shown(self) -> str:
        low, high = min(self.samples), max(self.samples)
        if len(self.samples) == 1:
            return f"{self.median:,.1f} {self.unit}"
        return f"{self.median:,.1f} {self.unit} ({low:,.1f}–{high:,.1f})"


def paired(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-round ratios of two figures measured in the same rounds.

    Each round's pair was measured moments apart, so a slow spell of a
    shared machine cancels out of the ratio.
    """
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


@dataclass
class Ratio:
    """A comparison measured side by side, with its target if it has one."""

    section: str
    name: str
    samples: list[float]
    target: str = ""  # such as "<= 1.10"
    suffix: str = ""

    @property
    def value(self) -> float:
        """The median of the per-round ratios."""
        return statistics.median(self.samples)

    @property
    def met(self) -> str:
        if not self.target:
            return ""
        op, bound = self.target.split()
        limit = float(bound.rstrip("x"))
        ok = self.value <= limit if op == "<=" else self.value >= limit
        return "yes" if ok else "NO"


@dataclass
class Table:
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)

    def figure(self, section: str, name: str, samples: list[float], unit: str) -> Figure:
        figure = Figure(section, name, samples, unit)
        self.figures.append(figure)
        return figure

    def ratio(
        self,
        section: str,
        name: str,
        value: float | list[float],
        target: str = "",
        suffix: str = "",
    ) -> None:
        """``value``: one ratio, or per-round ratios (see :func:`paired`)."""
        samples = value if isinstance(value, list) else [value]
        self.ratios.append(Ratio(section, name, samples, target, suffix))

    def print(self) -> None:
        width = max([len(f.name) for f in self.figures] + [len(r.name) for r in self.ratios] + [20])
        section = None
        print(f"\n{'':{width}}   median (min–max)")
        for figure in self.figures:
            if figure.section != section:
                section = figure.section
                print(f"\n[{section}]")
            print(f"  {figure.name:{width}} {figure.shown()}")
        heading = "ratio (median of per-round ratios)"
        print(f"\n{heading:{width + 2}} {'value':>10}  {'target':>9}  met")
        section = None
        for ratio in self.ratios:
            if ratio.section != section:
                section = ratio.section
                print(f"[{section}]")
            times = "x" if ratio.target.endswith("x") else ""
            shown = "{:,.0f}" if times or ratio.value >= 100 else "{:,.3f}"
            value = shown.format(ratio.value) + times
            spread = ""
            if len(ratio.samples) > 1:
                low, high = (shown.format(n) for n in (min(ratio.samples), max(ratio.samples)))
                spread = f"  ({low}–{high}{times})"
            print(
                f"  {ratio.name:{width}} {value:>10}  {ratio.target:>9}  {ratio.met:3}"
                f"{spread}{ratio.suffix}"
            )
