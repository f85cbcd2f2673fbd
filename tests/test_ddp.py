"""DistributedDataParallel with the gloo backend on 2 CPU processes: each process runs an
``rnnc.nn.Layer`` on half of the batch, and the averaged gradients equal one process's
gradients on the whole batch (the loss is a mean, so the halves' mean is the whole's)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from refs.check import rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layer():
    import rnnc.nn

    torch.manual_seed(0)  # the same initial parameters in every process
    return rnnc.nn.Layer("examples/lstm.rnn", d_model=6, num_heads=2, dims={"H": 4}, backend="reference").double()


def _worker(rank: int, world: int, folder: str) -> None:
    os.chdir(ROOT)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no lookup of the machine's own name
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=5),
    )
    try:
        x, target = torch.load(f"{folder}/data.pt")
        half = x.shape[0] // world
        model = torch.nn.parallel.DistributedDataParallel(_layer())
        y, _ = model(x[rank * half : (rank + 1) * half])
        torch.nn.functional.mse_loss(y, target[rank * half : (rank + 1) * half]).backward()
        grads = {name: p.grad for name, p in model.module.named_parameters()}
        torch.save(grads, f"{folder}/grads{rank}.pt")
        dist.barrier()  # neither process tears the group down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes_gives_the_gradients_of_one(tmp_path):
    x, target = torch.randn(4, 5, 6, dtype=torch.float64), torch.randn(4, 5, 6, dtype=torch.float64)
    torch.save((x, target), tmp_path / "data.pt")
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    layer = _layer()
    y, _ = layer(x)
    torch.nn.functional.mse_loss(y, target).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for name, p in layer.named_parameters():
            assert rel_err(grads[name], p.grad) < 1e-12, (rank, name)
