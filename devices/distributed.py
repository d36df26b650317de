"""torch.distributed helpers; every function is a no-op on a single process."""

import datetime
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment(device: torch.device, timeout_minutes: int = 120) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); NCCL on CUDA, gloo on CPU.

    The timeout is long because the other ranks wait while rank 0 evaluates."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_max(value: int, device: torch.device) -> int:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size()


def sum_to_main(matrix, device: torch.device):
    """Sum a NumPy matrix over all processes onto rank 0 (NCCL reduces on the GPU, gloo on the CPU);
    used to assemble score matrices whose columns each rank filled in part."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.from_numpy(matrix).to(on)
    dist.reduce(tensor, dst=0)
    return tensor.cpu().numpy()


def gather_objects(value) -> list:
    """Every rank's picklable `value`, in rank order, on every rank (a list of one without DDP)."""
    if not is_distributed():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def gathered_sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's number of rows (the last batch of an epoch may split unevenly)."""
    if not is_distributed():
        return [rows]
    return all_gather_no_grad(torch.tensor([rows], device=device)).tolist()


def all_gather_no_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' rows concatenated in rank order; `sizes` (from `gathered_sizes`) when the ranks
    hold different numbers of rows, which are padded for the collective and cut after it."""
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    longest = max(sizes) if sizes else tensor.shape[0]
    if tensor.shape[0] < longest:
        tensor = torch.cat([tensor, tensor.new_zeros(longest - tensor.shape[0], *tensor.shape[1:])])
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    if sizes:
        parts = [part[:size] for part, size in zip(parts, sizes)]
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate the tensors of all ranks; the backward sums every rank's gradient for this
    rank's slice, so losses that use other ranks' items still train their encoders.
    (all_reduce + slice rather than reduce_scatter, which gloo lacks.)"""

    @staticmethod
    def forward(ctx, tensor, sizes):
        ctx.start, ctx.rows = sum(sizes[:rank()]), tensor.shape[0]
        return all_gather_no_grad(tensor, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.start + ctx.rows], None


def all_gather_with_grad(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    return _GatherWithGrad.apply(tensor, sizes) if is_distributed() else tensor


def cleanup() -> None:
    """Leave the process group together: a rank tearing down while another still uses the
    group can hang gloo at exit. Call on success only; after an error torchrun stops the rest."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
