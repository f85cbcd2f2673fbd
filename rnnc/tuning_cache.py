"""The tuning cache: ``rnnc tune``'s measured winners, one JSON file per GPU, cell, kernels, dtype and shape bucket.

An entry lives at ``$RNNC_CACHE_DIR/tuning/CELL-HASH.json``. HASH covers the GPU's name, the
Plan's key, a digest of the generated Triton module (so kernels from other templates never reuse
a winner measured on these), the dtype and the shape bucket (B, NH and the dims exact, T rounded
up to a power of two). Writes are atomic; an entry that does not parse, or whose fields do not
match the key it was found under, is deleted with a debug message (``RNNC_DEBUG=1``) and never
trusted.

Example:
    >>> key = TuningKey.of("Example GPU", "hgrn", "0123456789abcdef", "source text", "bfloat16",
    ...                    {"B": 8, "T": 3000, "NH": 12, "D": 128})
    >>> key.bucket
    {'B': 8, 'T': 4096, 'NH': 12, 'D': 128}
    >>> _ = write(key, {"params": {"BLOCK_C": 256, "BLOCK_T": 64}, "measured_us": 12.5})
    >>> winner(key)
    {'BLOCK_C': 256, 'BLOCK_T': 64}
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rnnc import config
from rnnc.cache_entries import fields_problem, is_finite_positive, is_int, launch_params_problem, parse_json

TUNING_VERSION = 1  # bump when an entry's meaning changes: older entries are then never found
KEY_FIELDS = ("version", "gpu", "cell", "plan", "kernels", "dtype", "bucket")


def shape_bucket(shape: dict) -> dict:
    """The shape a tuned winner is reused for: B, NH and the dims exact, T rounded up to a power of two.

    Example:
        >>> shape_bucket({"B": 16, "T": 1000, "NH": 12, "H": 64})
        {'B': 16, 'T': 1024, 'NH': 12, 'H': 64}
    """
    bucket = {name: int(value) for name, value in shape.items()}
    bucket["T"] = 1 << max(0, int(shape["T"]) - 1).bit_length()
    return bucket


def source_digest(text: str) -> str:
    """A digest of a generated module's text: winners are measured on these kernels and no others.

    Example:
        >>> len(source_digest("def forward_kernel(): pass"))
        16
    """
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TuningKey:
    """What a tuned winner is valid for; :meth:`of` builds it from a call's facts."""

    gpu: str
    cell: str
    plan: str
    kernels: str
    dtype: str
    bucket: dict

    @staticmethod
    def of(gpu: str, cell: str, plan_key: str, source: str, dtype: str, shape: dict) -> "TuningKey":
        """The key of a call: GPU name, cell name, ``plan.key()``, the generated module's text, dtype, shape.

        Example:
            >>> TuningKey.of("G", "c", "p", "src", "float32", {"B": 1, "T": 5, "NH": 1}).bucket["T"]
            8
        """
        return TuningKey(gpu, cell, plan_key, source_digest(source), dtype, shape_bucket(shape))

    def fields(self) -> dict:
        """The key as the entry stores it (checked on every read).

        Example:
            >>> sorted(TuningKey("G", "c", "p", "k", "float32", {"T": 8}).fields())
            ['bucket', 'cell', 'dtype', 'gpu', 'kernels', 'plan', 'version']
        """
        return {
            "version": TUNING_VERSION,
            "gpu": self.gpu,
            "cell": self.cell,
            "plan": self.plan,
            "kernels": self.kernels,
            "dtype": self.dtype,
            "bucket": dict(self.bucket),
        }

    def path(self) -> Path:
        """Where the entry lives: ``$RNNC_CACHE_DIR/tuning/CELL-HASH.json``.

        Example:
            >>> TuningKey("G", "lstm", "p", "k", "bfloat16", {"T": 8}).path().name.startswith("lstm-")
            True
        """
        text = json.dumps(self.fields(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in self.cell)[:40]
        return config.cache_dir() / "tuning" / f"{safe}-{digest}.json"


# what rnnc tune writes beside the key, the winner's params and measured_us (each checked when present)
OPTIONAL_FIELDS = ("estimate_us", "winner_rank", "first_over_best", "profile", "shape", "candidates")
OPTIONAL_FIELDS += ("when", "versions")


def _problem(entry: object, key: TuningKey | None) -> str | None:
    """Why an entry cannot be trusted (None when it can): its fields against the key and their domains.

    Example:
        >>> key = TuningKey("G", "c", "p", "k", "float32", {"B": 2, "T": 8})
        >>> _problem({**key.fields(), "params": {"BLOCK_T": 16.5}, "measured_us": 2.0}, key)
        'BLOCK_T needs a power of two >= 1, has 16.5'
    """
    problem = fields_problem(entry, (*KEY_FIELDS, "params", "measured_us"), OPTIONAL_FIELDS)
    if problem:
        return problem
    if key is not None:
        wrong = [f for f, v in key.fields().items() if entry[f] != v or type(entry[f]) is not type(v)]
        if wrong:
            return f"its {', '.join(wrong)} do not match the key it was found under"
    bucket = entry["bucket"]
    if not isinstance(bucket, dict) or _sizes_problem(bucket):
        return f"needs a bucket of positive integer sizes, has {bucket!r}"
    if not is_int(entry["version"]) or not all(isinstance(entry[f], str) for f in KEY_FIELDS[1:-1]):
        return "needs a version number and names (gpu, cell, plan, kernels, dtype) as text"
    problem = launch_params_problem(entry["params"]) or _times_problem(entry, "measured_us")
    if problem:
        return problem
    if "shape" in entry and (_sizes_problem(entry["shape"]) or shape_bucket(entry["shape"]) != bucket):
        return f"its shape {entry['shape']!r} is not in its bucket {bucket!r}"
    rank = entry.get("winner_rank", 0)
    if not (is_int(rank) and rank >= 0):
        return f"needs a winner_rank >= 0, has {rank!r}"
    ratio = entry.get("first_over_best")
    if ratio is not None and not (is_finite_positive(ratio) and ratio >= 1):
        return f"needs first_over_best None or a finite number >= 1 (the first choice over the best), has {ratio!r}"
    for name in ("profile", "when"):
        if name in entry and not isinstance(entry[name], str):
            return f"needs {name} as text, has {entry[name]!r}"
    versions = entry.get("versions", {})
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        return f"needs versions as names of text, has {versions!r}"
    candidates = entry.get("candidates", [])
    if not isinstance(candidates, list):
        return f"needs a list of candidates, has {candidates!r}"
    for i, row in enumerate(candidates):
        problem = fields_problem(row, ("rank", "params", "estimate_us"), ("measured_us", "status"))
        if problem is None and not (is_int(row["rank"]) and row["rank"] >= 0):
            problem = f"needs a rank >= 0, has {row['rank']!r}"
        if problem is None and not isinstance(row.get("status", ""), str):
            problem = f"needs a status as text, has {row['status']!r}"
        problem = problem or launch_params_problem(row["params"]) or _times_problem(row, "estimate_us")
        if problem:
            return f"candidate {i}: {problem}"
    return None


def _times_problem(row: dict, required: str) -> str | None:
    """Times in microseconds: finite and positive; only ``required`` may not be absent (or None)."""
    for name in ("measured_us", "estimate_us"):
        value = row.get(name)
        if value is None and name != required:
            continue  # a candidate that failed was not measured; an entry may lack the estimate
        if not is_finite_positive(value):
            return f"needs a finite positive {name}, has {value!r}"
    return None


def _sizes_problem(shape: object) -> bool:
    """True unless ``shape`` maps names to integer sizes >= 1, T among them."""
    if not isinstance(shape, dict) or "T" not in shape:
        return True
    return not all(isinstance(k, str) and is_int(v) and v > 0 for k, v in shape.items())


def _discard(path: Path, reason: str) -> None:
    config.debug(1, f"tuning cache: discarded {path}: {reason}")
    try:
        path.unlink()
    except OSError:
        pass


def read(key: TuningKey) -> dict | None:
    """The entry for ``key``, checked; None when there is none. A corrupt entry is deleted, never returned.

    Example:
        >>> read(TuningKey("no such GPU", "c", "p", "k", "float32", {"T": 8})) is None
        True
    """
    path = key.path()
    try:
        entry = parse_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # unreadable or not JSON (ValueError covers bad UTF-8)
        _discard(path, f"cannot parse it ({type(exc).__name__}: {exc})")
        return None
    problem = _problem(entry, key)
    if problem is not None:
        _discard(path, problem)
        return None
    return entry


def write(key: TuningKey, result: dict) -> Path:
    """Store ``result`` (at least ``params`` and ``measured_us``) under ``key``, atomically; returns the path.

    Example:
        >>> key = TuningKey("G", "c", "p", "k", "float32", {"T": 8})
        >>> write(key, {"params": {"BLOCK_T": 16}, "measured_us": 3.0}).exists()
        True
    """
    entry = {**result, **key.fields()}
    problem = _problem(entry, key)
    if problem is not None:
        raise ValueError(f"a tuning entry {problem}")
    path = key.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(entry, sort_keys=True, indent=1))
        os.replace(tmp, path)  # atomic: a reader sees the old entry or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _seen.pop(path, None)
    return path


_seen: dict[Path, tuple[tuple[int, int], dict | None]] = {}  # path -> ((mtime_ns, size), winner params)


def winner(key: TuningKey) -> dict | None:
    """The cached winner's launch parameters for ``key``, or None. Cheap on repeated calls (one ``stat``).

    Example:
        >>> winner(TuningKey("no such GPU", "c", "p", "k", "float32", {"T": 8})) is None
        True
    """
    path = key.path()
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    seen = _seen.get(path)
    if seen is not None and seen[0] == stamp:
        return dict(seen[1]) if seen[1] is not None else None
    entry = read(key)
    params = dict(entry["params"]) if entry is not None else None
    if params is not None:
        config.debug(1, f"tuning cache: {key.cell} on {key.gpu} at {key.bucket} uses the tuned {params}")
        _seen[path] = (stamp, params)
    return dict(params) if params is not None else None


def entries(gpu: str | None = None) -> list[dict]:
    """Every trustworthy entry in the cache (of one GPU when ``gpu`` is given); corrupt ones are deleted.

    Example:
        >>> entries("no such GPU")
        []
    """
    folder = config.cache_dir() / "tuning"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = parse_json(path.read_text())
        except (OSError, ValueError) as exc:
            _discard(path, f"cannot parse it ({type(exc).__name__}: {exc})")
            continue
        problem = _problem(entry, None)
        if problem is not None:
            _discard(path, problem)
        elif gpu is None or entry["gpu"] == gpu:
            found.append(entry)
    return found


def summarize(found: list[dict]) -> dict:
    """How often the tiling model's first choice was the measured best, and by how much it missed.

    ``first_over_best`` of an entry is the first choice's time over the winner's (1.0 when the
    first choice won; absent when it failed to run).

    Example:
        >>> summarize([{"winner_rank": 0, "first_over_best": 1.0}, {"winner_rank": 2, "first_over_best": 1.5}])
        {'entries': 2, 'first_was_best': 1, 'median_first_over_best': 1.25, 'worst_first_over_best': 1.5}
    """
    ratios = [e["first_over_best"] for e in found if isinstance(e.get("first_over_best"), (int, float))]
    return {
        "entries": len(found),
        "first_was_best": sum(1 for e in found if e.get("winner_rank") == 0),
        "median_first_over_best": round(statistics.median(ratios), 4) if ratios else None,
        "worst_first_over_best": round(max(ratios), 4) if ratios else None,
    }
