"""bench/gpu.py's record keeping: what machine and code ran, the raw JSON (written atomically after
every case, so that a run cut off by the device's time limit still leaves its results), and one
PNG plot per family."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_PACKAGES = ("flashrnn", "fla-core", "accelerated-scan")


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_identity(commit: str | None) -> dict:
    """The rnnc commit (git where the checkout has it, else ``--commit``) and a digest of rnnc's sources,
    which names the code exactly even when the device's copy of the tree has no .git.

    Example:
        >>> len(code_identity(None)["rnnc_sources_sha256"])
        16
    """
    digest = hashlib.sha256()
    for path in sorted((ROOT / "rnnc").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".jinja", ".lark", ".json", ".rnn"):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    status = _run(["git", "status", "--porcelain", "--", "rnnc", "bench", "examples"])
    return {
        "rnnc_commit": _run(["git", "rev-parse", "HEAD"]) or commit or "unknown",
        "rnnc_commit_from": "git" if _run(["git", "rev-parse", "HEAD"]) else ("--commit" if commit else "nowhere"),
        "uncommitted_changes": None if status is None else bool(status),
        "rnnc_sources_sha256": digest.hexdigest()[:16],
    }


def machine(device: str) -> dict:
    """Device, driver and library versions (anchors' versions from their metadata, without importing them)."""
    import importlib.metadata

    import torch
    import triton

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
    for name in ANCHOR_PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            l2_bytes=getattr(props, "L2_cache_size", None),
            memory_bytes=props.total_memory,
            cudnn=torch.backends.cudnn.version(),
            driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        )
    else:
        info.update(device=f"cpu ({platform.processor() or platform.machine()}), Triton interpreter", driver=None)
    return info


class Report:
    """The run's JSON, kept in memory and rewritten atomically to ``OUT/gpu.json`` on every ``save``."""

    def __init__(self, out: Path, data: dict):
        self.out, self.data = out, data
        out.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.out / "gpu.json"

    def save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=False, default=str)
        os.replace(tmp, self.path)


def plot_family(out: Path, family: str, entries: list[dict]) -> str:
    """``OUT/gpu-FAMILY.png``: forward and forward+backward time per case and implementation (log scale),
    and for scans the fraction of the measured copy bandwidth. Returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = []
    for entry in entries:
        impls += [r["impl"] for r in entry["results"] if r["impl"] not in impls]
    panels = [("forward_us", "forward (us)"), ("fwdbwd_us", "forward + backward (us)")]
    if family == "scan":
        panels.append(("fwdbwd_copy_fraction", "fwd+bwd: fraction of copy bandwidth"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, (field, title) in zip(axes[0], panels):
        for i, impl in enumerate(impls):
            values = []
            for entry in entries:
                found = [r for r in entry["results"] if r["impl"] == impl]
                values.append(found[0].get(field) if found and found[0].get(field) is not None else 0.0)
            ax.bar([x + i * width for x in range(len(entries))], values, width, label=impl)
        ax.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(entries))])
        ax.set_xticklabels([e["label"] for e in entries], rotation=30, ha="right", fontsize=7)
        ax.set_title(title)
        if field.endswith("_us"):
            ax.set_yscale("log")
        else:
            ax.axhline(1.0, color="black", linewidth=0.8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{family}: rnnc and its anchors (missing bars: failed or skipped, see gpu.json)")
    fig.tight_layout()
    name = f"gpu-{family}.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name
