"""Checkpoints of a sweep: a folder bound to one sweep configuration by a fingerprint, holding one
file per finished (α, chunk of seeds).

A sweep resumed from a folder returns exactly what an uninterrupted sweep returns, so the folder
may only be reused by the configuration that wrote it: `sweep.json` records a fingerprint of
everything that determines the results (objective and data, network draw, horizons, grid, chunk
size, flow options, library versions and precision), and any other configuration is refused.
Every file is written to a temporary name and renamed (atomic on POSIX), so a process killed at
any instant leaves either no chunk file or a complete one. Each chunk file ends with a checksum
of its contents and of the fingerprint, so a truncated, damaged or foreign file is recognised,
set aside under `<name>.corrupt` and its chunk recomputed.
"""

import dataclasses
import hashlib
import importlib.metadata
import inspect
import io
import json
import os
import platform
import re
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# Version of the folder layout (sweep.json and the chunk files' trailer).
_FORMAT = 1
_MAGIC = b"SJCHUNK1"
_TRAILER = len(_MAGIC) + hashlib.sha256().digest_size
# Memory addresses in reprs ("<function f at 0x7f…>") differ between processes.
_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


# ---------------------------------------------------------------------------------------------
# Fingerprint: plain JSON data, identical in every process that runs the same configuration.
# Python's `hash()` of strings is salted per process, so only hashlib digests of bytes and of
# address-free reprs are used.


def _stable_repr(obj) -> str:
    return _ADDRESS.sub("", repr(obj))


def _code_digest(code: types.CodeType, h) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        elif isinstance(const, frozenset):  # iteration order of a set of strings is salted
            h.update(repr(sorted(map(repr, const))).encode())
        else:
            h.update(repr(const).encode())


def _callable(fn) -> dict:
    """A function by its qualified name and, for Python code, a digest of its bytecode (so two
    lambdas, or an edited function, differ); a closure's captured values are not read."""
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str):
        name = f"{getattr(fn, '__module__', None) or ''}.{qualname}"
    else:  # e.g. a functools.partial: its repr names the function and the bound arguments
        text = _stable_repr(fn)
        name = text if len(text) <= 200 else text[:197] + "..."
    out = {"name": name}
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if isinstance(code, types.CodeType):
        h = hashlib.sha256()
        _code_digest(code, h)
        out["code"] = h.hexdigest()[:16]
    return out


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _tree(tree) -> dict:
    """A pytree by its type, its leaves' dtypes and shapes (values too when small), and one
    sha256 of its structure (type names and static fields) and of every leaf's bytes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h = hashlib.sha256(_stable_repr(treedef).encode())
    shown = []
    for leaf in leaves:
        if _is_array(leaf):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            a = np.asarray(leaf)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes(order="C"))
            text = f"{a.dtype.name}{list(a.shape)}"
            shown.append(text + (f"={a.tolist()}" if a.size <= 4 else ""))
        elif callable(leaf):
            h.update(json.dumps(_callable(leaf)).encode())
            shown.append(_callable(leaf)["name"])
        else:
            h.update(f"{type(leaf).__qualname__}:{_stable_repr(leaf)}".encode())
            shown.append(_stable_repr(leaf))
    out = {"type": f"{type(tree).__module__}.{type(tree).__qualname__}"}
    if isinstance(tree, eqx.Module):  # e.g. "Tsit5()", "AutoStiff(switch_ratio=...)"
        text = _stable_repr(tree)
        out["repr"] = text if len(text) <= 200 else text[:197] + "..."
    text = " ".join(shown)  # for reading only: the digest covers every leaf
    out["leaves"] = text if len(text) <= 300 else f"{text[:280]}... ({len(leaves)} leaves)"
    out["sha256"] = h.hexdigest()
    return out


def _value(x):
    """A setting as JSON data: numbers and strings as they are, functions by name and code,
    arrays and pytrees (solvers, events, `SaveAt`) by `_tree`."""
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        return x if np.isfinite(x) else repr(x)
    if callable(x) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x)):
        return _callable(x)  # a function, not a callable pytree such as a Module
    return _tree(x)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def sweep_fingerprint(
    objective,
    draw: Callable,
    t1_of: Callable,
    alphas,
    seeds,
    *,
    chunk: int,
    batching,
    devices,
    options,
) -> dict:
    """Everything that determines the results of `sweep(objective, draw, t1, ...)`, as JSON data:
    the objective (its data hashed), the network `draw` (its name and a hash of the draw of the
    first seed), t1 at every α, the grid, the chunk size and batching, the `FlowOptions` (all
    but `progress`), and the platform, precision and versions of the numerical stack."""
    import saddlejax

    first_draw = draw(jax.random.key(int(seeds[0])))
    return {
        "objective": _value(objective),
        "draw": {"function": _callable(draw), "first_draw": _tree(first_draw)},
        "t1": [float(t1_of(alpha)) for alpha in alphas],
        "alphas": [float(a) for a in alphas],
        "seeds": [int(s) for s in seeds],
        "chunk_size": int(chunk),
        "batching": batching,
        # A looped seed runs alone on one device; a vmapped chunk is sharded over all of them.
        **({"n_devices": len(devices)} if batching == "vmap" else {}),
        "platform": devices[0].platform,
        "options": {
            f.name: _value(getattr(options, f.name))
            for f in dataclasses.fields(options)
            if f.name != "progress"
        },
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "versions": {
            "saddlejax": saddlejax.__version__,
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "diffrax": _version("diffrax"),
            "equinox": _version("equinox"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else text[:97] + "..."


def _differences(old: dict, new: dict) -> list[str]:
    """ "key: old → new" for every setting that differs; a digest only where nothing more
    readable (a shape, a value, a name) beside it differs."""
    old, new = _flat(old), _flat(new)
    keys = [
        key
        for key in sorted(set(old) | set(new))
        if key not in old or key not in new or old[key] != new[key]
    ]

    def shown(values, key):
        return _show(values[key]) if key in values else "(absent)"

    return [
        f"{key}: {shown(old, key)} → {shown(new, key)}"
        for key in keys
        if not key.endswith(".sha256")
        or not any(k.startswith(key[: -len("sha256")]) and k != key for k in keys)
    ]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, rename it onto `path`:
    a reader, or a process killed at any instant, sees the old file or the complete new one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class CheckpointMismatch(ValueError):
    """A checkpoint folder that cannot be resumed by this sweep: written by another
    configuration or version, or without the record of its configuration."""


class SweepCheckpoint:
    """The checkpoint folder of one sweep configuration.

    Created with the sweep's `fingerprint`: in an empty (or new) folder it writes `sweep.json`;
    in a folder holding the same fingerprint it resumes; in any other folder it raises a
    `ValueError` naming the settings that differ.
    """

    def __init__(self, directory: str | Path, fingerprint: dict):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from disk
        text = json.dumps(fingerprint, sort_keys=True, ensure_ascii=False).encode()
        self.digest = hashlib.sha256(text).digest()
        meta = self.directory / "sweep.json"
        fix = (
            f"Use a new folder for this configuration, or delete {str(self.directory)!r} to "
            "start over."
        )
        if not meta.exists():
            if any(self.directory.glob("*.eqx")):
                raise CheckpointMismatch(
                    f"checkpoint folder {str(self.directory)!r} holds chunk files but no "
                    f"sweep.json, so the configuration that wrote them is unknown. {fix}"
                )
            _write_atomic(meta, json.dumps({"format": _FORMAT, **fingerprint}, indent=1).encode())
            return
        try:
            stored = json.loads(meta.read_text())
            if not isinstance(stored, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointMismatch(
                f"checkpoint folder {str(self.directory)!r}: {meta.name} is unreadable ({e}). {fix}"
            ) from None
        if stored.pop("format", None) != _FORMAT:
            raise CheckpointMismatch(
                f"checkpoint folder {str(self.directory)!r} was written by another version of "
                f"saddlejax: its {meta.name} holds no fingerprint of its configuration that this "
                f"version reads, so the folder cannot be checked. {fix}"
            )
        changed = _differences(stored, fingerprint)
        if changed:
            raise CheckpointMismatch(
                f"checkpoint folder {str(self.directory)!r} holds a sweep with another "
                "configuration; its results are not those of this sweep. Differences "
                "(stored → requested):\n  " + "\n  ".join(changed) + f"\n{fix}"
            )

    def path(self, i_alpha: int, alpha: float, seeds: np.ndarray) -> Path:
        return self.directory / f"alpha{i_alpha:03d}_{alpha:.6e}_seeds{seeds[0]}-{seeds[-1]}.eqx"

    def n_chunks(self) -> int:
        """How many chunk files the folder holds (complete or not yet checked)."""
        return sum(1 for _ in self.directory.glob("*.eqx"))

    def load(self, path: Path, like):
        """The chunk at `path` (structured like `like`), or None if it is not there. A file that
        is truncated, damaged or was written by another configuration is renamed to
        `<name>.corrupt` with a warning, and None is returned so that its chunk is recomputed."""
        if not path.exists():
            return None
        try:
            return self._read(path, like)
        except Exception as e:  # whatever a damaged file makes numpy or equinox raise
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            warnings.warn(
                f"checkpoint file {str(path)!r} cannot be used ({e}); moved it to "
                f"{aside.name!r} and recomputing its chunk.",
                RuntimeWarning,
                stacklevel=2,
            )
            return None

    def _read(self, path: Path, like):
        data = path.read_bytes()
        payload, trailer = data[:-_TRAILER], data[-_TRAILER:]
        if len(data) < _TRAILER or trailer[: len(_MAGIC)] != _MAGIC:
            raise ValueError(f"truncated: {len(data)} bytes without the end marker")
        if trailer[len(_MAGIC) :] != hashlib.sha256(self.digest + payload).digest():
            raise ValueError("checksum mismatch: damaged, or written by another configuration")
        f = io.BytesIO(payload)
        out = eqx.tree_deserialise_leaves(f, like)
        if f.tell() != len(payload):
            raise ValueError("trailing data after the last array")
        for got, want in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(like)):
            if _is_array(got) and (got.shape, got.dtype) != (want.shape, want.dtype):
                raise ValueError(
                    f"an array of shape {got.shape} {got.dtype} where {want.shape} "
                    f"{want.dtype} was expected"
                )
        return out

    def save(self, path: Path, solution) -> None:
        f = io.BytesIO()
        eqx.tree_serialise_leaves(f, solution)
        payload = f.getvalue()
        digest = hashlib.sha256(self.digest + payload).digest()
        _write_atomic(path, payload + _MAGIC + digest)
