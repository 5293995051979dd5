"""matplotlib, imported only where a figure is drawn: it is the `plot` extra, not a dependency.

Figures are `matplotlib.figure.Figure` objects saved to files, never pyplot: drawing a figure
neither changes the user's backend nor leaves figures open.
"""

_MISSING = (
    "drawing figures needs matplotlib, which saddlejax installs only with its `plot` extra: "
    "`pip install 'saddlejax[plot]'` (or `pip install matplotlib`)."
)


def figure(**kwargs):
    """A new `matplotlib.figure.Figure(**kwargs)`, or an `ImportError` that says how to install
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_MISSING) from None
    return Figure(**kwargs)


def colormap(name: str):
    """matplotlib's colormap `name` (e.g. "viridis"), or the `ImportError` of `figure`."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(_MISSING) from None
    return matplotlib.colormaps[name]


def has_matplotlib() -> bool:
    """Whether `figure()` can draw (matplotlib is installed)."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a half-imported or stubbed module without a spec
        return False
