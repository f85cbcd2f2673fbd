"""GPU profiles: the hardware facts the tiling models need, as data files.

Example:
    >>> h100 = load_profile("h100")
    >>> h100.sm_count, h100.warp_size, h100.shared_memory_per_block_optin
    (132, 32, 232448)
    >>> "mi300x" in profile_names()
    True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from rnnc.errors import RnncError

DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class GpuProfile:
    """One GPU's facts; fields are documented in ``constraints/profiles/README.md``."""

    name: str
    full_name: str
    vendor: str
    arch: str
    compute_capability: str
    sm_count: int
    warp_size: int
    max_threads_per_block: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int
    registers_per_thread: int
    shared_memory_per_block_optin: int
    shared_memory_per_sm: int
    l2_bytes: int
    memory_bandwidth_gbps: float
    l2_bandwidth_gbps: float
    memory_bytes: int
    tensor_tflops: dict
    vector_tflops: dict
    launch_overhead_us: float
    grid_sync_us: float
    step_latency_us: float
    assumed: tuple = ()
    sources: str = ""

    def key(self) -> str:
        """A hash of every field: a tiling cached for one profile is not reused for another.

        Example:
            >>> load_profile("h100").key() != load_profile("h200").key()
            True
        """
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def tensor_flops_per_ns(self, dtype: str) -> int:
        """Dense matrix-unit FLOPs per nanosecond for inputs of ``dtype`` (whole GPU)."""
        return max(1, int(self.tensor_tflops[dtype] * 1000))

    def vector_flops_per_ns(self, dtype: str) -> int:
        """Non-matrix FLOPs per nanosecond (fp32 math for 16-bit inputs)."""
        key = "float64" if dtype == "float64" else "float32"
        return max(1, int(self.vector_tflops[key] * 1000))

    def bytes_per_ns(self) -> int:
        """DRAM bytes per nanosecond."""
        return max(1, int(self.memory_bandwidth_gbps))

    def l2_bytes_per_ns(self) -> int:
        """L2 bytes per nanosecond (all SMs together)."""
        return max(1, int(self.l2_bandwidth_gbps))

    def kb(self, nbytes: int) -> str:
        """Bytes as KB text for messages."""
        return f"{nbytes / 1024:.0f} KB"


_REQUIRED = [f.name for f in fields(GpuProfile) if f.name not in ("assumed", "sources")]


def profile_names() -> list[str]:
    """The names of the bundled profiles.

    Example:
        >>> profile_names()[:3]
        ['a100', 'h100', 'h200']
    """
    folder = resources.files("rnnc.constraints").joinpath("profiles")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | Path) -> GpuProfile:
    """A bundled profile by name, or a profile file by path; ``"auto"`` reads the live device.

    Example:
        >>> load_profile("l4").memory_bandwidth_gbps
        300
    """
    if str(name_or_path) == "auto":
        return profile_from_device()[0]
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text, origin = path.read_text(), str(path)
    else:
        name = str(name_or_path).lower()
        if name not in profile_names():
            raise RnncError(
                f"unknown GPU {name_or_path!r}: needs one of {', '.join(profile_names())}, 'auto', or a profile file"
            )
        text = resources.files("rnnc.constraints").joinpath("profiles", f"{name}.json").read_text()
        origin = f"profiles/{name}.json"
    return profile_from_dict(json.loads(text), origin)


def profile_from_dict(data: dict, origin: str = "<dict>") -> GpuProfile:
    """Check a profile's fields and build it.

    Example:
        >>> profile_from_dict({"name": "x"})
        Traceback (most recent call last):
        ...
        rnnc.errors.RnncError: GPU profile <dict> needs the fields full_name, vendor, arch, ...
    """
    missing = [f for f in _REQUIRED if f not in data]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise RnncError(f"GPU profile {origin} needs the fields {shown}")
    for dtype in DTYPES:
        if dtype not in data["tensor_tflops"]:
            raise RnncError(f"GPU profile {origin}: tensor_tflops needs {dtype}")
    known = {f.name for f in fields(GpuProfile)}
    values = {k: v for k, v in data.items() if k in known}
    values["assumed"] = tuple(values.get("assumed", ()))
    return GpuProfile(**values)


# Dense matrix peaks by compute capability, for --gpu auto (per SM per clock is not exposed by drivers).
_PEAK_BY_ARCH = {"9.0": "h100", "8.0": "a100", "8.9": "l40s", "gfx942": "mi300x"}


def profile_from_device(device: int = 0, properties=None) -> tuple[GpuProfile, list[str]]:
    """A profile read from the live GPU, and the fields that had to be assumed.

    ``properties`` may be given (an object with torch's ``get_device_properties``
    attributes) so that the mapping is testable without a GPU.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> p = NS(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
        ...        regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048, warp_size=32,
        ...        shared_memory_per_block_optin=232448, shared_memory_per_multiprocessor=233472,
        ...        L2_cache_size=52428800)
        >>> profile, assumed = profile_from_device(properties=p)
        >>> profile.sm_count, "memory_bandwidth_gbps" in assumed
        (132, True)
    """
    if properties is None:
        import torch

        if not torch.cuda.is_available():
            raise RnncError("--gpu auto needs a visible GPU, and torch sees none; name a profile instead")
        properties = torch.cuda.get_device_properties(device)
    major, minor = getattr(properties, "major", 0), getattr(properties, "minor", 0)
    arch_name = getattr(properties, "gcnArchName", "") or ""
    is_amd = arch_name.startswith("gfx")
    capability = arch_name.split(":")[0] if is_amd else f"{major}.{minor}"
    base = load_profile(_PEAK_BY_ARCH.get(capability, "h100"))
    assumed = [
        "tensor_tflops",
        "vector_tflops",
        "memory_bandwidth_gbps",
        "l2_bandwidth_gbps",
        "launch_overhead_us",
        "grid_sync_us",
        "step_latency_us",
        "max_blocks_per_sm",
        "registers_per_thread",
    ]
    read = {
        "sm_count": "multi_processor_count",
        "registers_per_sm": "regs_per_multiprocessor",
        "max_threads_per_sm": "max_threads_per_multi_processor",
        "warp_size": "warp_size",
        "shared_memory_per_block_optin": "shared_memory_per_block_optin",
        "shared_memory_per_sm": "shared_memory_per_multiprocessor",
        "l2_bytes": "L2_cache_size",
        "memory_bytes": "total_memory",
    }
    values = asdict(base)
    for field_name, attribute in read.items():
        value = getattr(properties, attribute, None)
        if value:
            values[field_name] = int(value)
        else:
            assumed.append(field_name)
    values.update(
        name="auto",
        full_name=str(getattr(properties, "name", "unknown GPU")),
        compute_capability=capability,
        vendor="amd" if is_amd else "nvidia",
        arch=arch_name or f"sm_{major}{minor}",
        assumed=tuple(sorted(set(assumed))),
        sources=f"read from the device; peak rates and bandwidth taken from the {base.name} profile",
    )
    return GpuProfile(**values), sorted(set(assumed))
