"""Regenerate the README's gallery: run presets into `results/gallery/<name>/<mode>` (a finished
run is reused), copy each one's first figure to `notebooks/gallery/<name>.png` and write the
table of their checks to `notebooks/gallery/checks.md`.

    python notebooks/make_gallery.py                      # every preset, quick mode
    python notebooks/make_gallery.py --full jacot-fig1    # the paper's settings, one preset
    python notebooks/make_gallery.py jacot-fig1=full kumar-haupt-fig1=quick
"""

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from saddlejax.cli import use_host_devices

    use_host_devices()
    import saddlejax.experiments as ex

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="*", help="NAME or NAME=quick|full (default: all)")
    parser.add_argument("--full", action="store_true", help="full mode for presets without =mode")
    parser.add_argument("--out", default="results/gallery")
    args = parser.parse_args()
    wanted = args.presets or ex.preset_names()
    gallery = HERE / "gallery"
    gallery.mkdir(exist_ok=True)
    table = gallery / "checks.json"
    rows = json.loads(table.read_text()) if table.exists() else {}
    for item in wanted:
        name, _, mode = item.partition("=")
        mode = mode or ("full" if args.full else "quick")
        (job,) = ex.configure(name, quick=mode == "quick")
        record = ex.execute(job, Path(args.out) / name / mode)
        summary = json.loads((record.folder / "summary.json").read_text())
        for figure in summary["figures"][:1]:
            shutil.copy(record.folder / figure, gallery / f"{name}.png")
        rows[name] = dict(mode=mode, wall_time=summary["wall_time"], checks=summary["checks"])
        print(f"{name} ({mode}): {sum(c['passed'] for c in summary['checks'])}/"
              f"{len(summary['checks'])} checks passed, {summary['wall_time']:.0f} s", flush=True)
    table.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    (gallery / "checks.md").write_text(markdown(rows, ex.preset_names()))
    (gallery / "summary.md").write_text(summary_table(rows, ex.preset_names()))


def _fmt(x) -> str:
    """A table cell: numbers to 4 digits, long lists cut, `|` escaped for markdown."""
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        shown = ", ".join(_fmt(v) for v in x[:6])
        return f"[{shown}{', …' if len(x) > 6 else ''}]"
    return str(x).replace("|", "\\|")


def markdown(rows: dict, order) -> str:
    """The checks of every preset as one markdown table."""
    lines = [
        "| preset (mode, wall s) | check | measured | expected | tolerance | |",
        "|---|---|---|---|---|---|",
    ]
    for name in order:
        if name not in rows:
            continue
        row = rows[name]
        head = f"`{name}` ({row['mode']}, {row['wall_time']:.0f})"
        for c in row["checks"]:
            tol = "" if c["tolerance"] is None else _fmt(c["tolerance"])
            mark = "pass" if c["passed"] else "**FAIL**"
            lines.append(
                f"| {head} | {_fmt(c['quantity'])} | {_fmt(c['measured'])} | {_fmt(c['expected'])} "
                f"| {tol} | {mark} |"
            )
            head = ""
    return "\n".join(lines) + "\n"


def summary_table(rows: dict, order) -> str:
    """One line per preset: mode, checks passed, wall time (the README's table)."""
    lines = ["| preset | mode | checks passed | wall s |", "|---|---|---|---|"]
    for name in order:
        if name in rows:
            row = rows[name]
            n = sum(c["passed"] for c in row["checks"])
            lines.append(
                f"| `{name}` | {row['mode']} | {n} / {len(row['checks'])} | "
                f"{row['wall_time']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
