"""The rows of ``benchmarks/speed.py`` and their markdown table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One line of the table; None prints as a blank cell. ``img_per_s`` is fp32; ``bf16_img_per_s`` the same work
    under bf16 autocast (``train.precision`` / ``sample.precision = "bf16"``)."""

    section: str
    model: str
    tokens: str = ""
    setting: str = ""
    params: int | None = None
    gflop_per_img: float | None = None
    img_per_s: float | None = None
    gflop_per_s: float | None = None
    peak_frac: float | None = None
    bf16_img_per_s: float | None = None
    note: str = ""

    @property
    def bf16_speedup(self) -> float | None:
        """bf16 images/s over fp32 images/s (None when either is missing)."""
        if self.bf16_img_per_s is None or not self.img_per_s:
            return None
        return self.bf16_img_per_s / self.img_per_s


COLUMNS = [
    "section",
    "model",
    "tokens",
    "setting",
    "params",
    "GFLOP/img",
    "img/s",
    "GFLOP/s",
    "% peak",
    "bf16 img/s",
    "bf16 / fp32",
    "note",
]


def _fmt(x: float | None, kind: str) -> str:
    if x is None:
        return ""
    if kind == "int":
        return f"{int(x) / 1e6:.2f}M"
    if kind == "pct":
        return f"{100 * x:.1f}"
    if kind == "ratio":
        return f"{x:.2f}x"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def cells(r: Row) -> list[str]:
    """The table cells of one row, in ``COLUMNS`` order."""
    return [
        r.section,
        r.model,
        r.tokens,
        r.setting,
        _fmt(r.params, "int"),
        _fmt(r.gflop_per_img, "num"),
        _fmt(r.img_per_s, "num"),
        _fmt(r.gflop_per_s, "num"),
        _fmt(r.peak_frac, "pct"),
        _fmt(r.bf16_img_per_s, "num"),
        _fmt(r.bf16_speedup, "ratio"),
        r.note,
    ]


def markdown(rows: list[Row]) -> str:
    """A markdown table of ``rows``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)
