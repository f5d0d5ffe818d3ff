"""How many processes share a training run, handed to the trainer explicitly: :class:`SingleProcess` or a
:class:`DDPGroup` of data-parallel processes (``torch.nn.parallel.DistributedDataParallel``).

The trainer has one step for both.  Each process takes its share ``x_r`` (``b_r`` points) of every global batch
of B points, computes ``loss_r = objective.differentiable_loss(model, guide, x_r, num_data=N)`` (N / b_r times
its share's sum), and backpropagates ``share_weight(b_r, B) * loss_r``; DDP averages the gradients over the W
processes, so with ``share_weight = b_r W / B`` the step's gradient is that of ``N / B * (sum over the global
batch)``, as in one process, even for uneven or empty shares.  One small all-reduce per step, overlapped with
the backward pass, carries the global batch's loss (for metrics and the NaN check, so every process raises
together) and the stop flag (every process stops after the same step).

For one process the share is the batch, ``share_weight`` is exactly 1, and every reduction is the identity: the
one-process step is bit for bit what it was before this module existed.
"""
import inspect
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


def shard_bounds(num: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``num`` items, as ``tensor_split`` cuts them:
    the first ``num % world_size`` ranks get one item more; shares can be empty when ``num < world_size``."""
    base, extra = divmod(num, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class SingleProcess:
    """The whole run in this process (which also handles Ctrl-C and SIGTERM itself)."""
    rank, world_size, is_writer, handles_signals = 0, 1, True, True

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def gpu(self) -> Optional[torch.device]:
        """This process's own GPU when it shares the machine's GPUs with other processes (None: one process)."""
        return None

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        return indices

    def shard_bounds(self, num: int) -> Tuple[int, int]:
        return 0, num

    def share_weight(self, share: int, batch: int) -> float:
        return 1.0

    def loss_function(self, module: Any, objective: Any, num_data: int, probe: Callable,
                      foreign: Sequence[str] = ()) -> Callable:
        """``loss(x, model, guide, **data)``: the objective's differentiable loss of the share ``x``.  Parameters
        outside the module (``foreign``: ``pyro.param`` names) are fine in one process."""
        def loss(x, model, guide, **data):
            return objective.differentiable_loss(model, guide, x, num_data=num_data, **data)
        return loss

    def start_step_reduce(self, loss: torch.Tensor, share: int, batch: int, num_data: int,
                          stop: bool) -> Callable[[], Tuple[float, bool]]:
        """Start reducing a step's loss and stop flag; the returned call gives ``(global batch's loss per full
        data set, whether any process asked to stop)``."""
        value = loss.item()
        return lambda: (value, stop)

    def agree_stop(self, requested: bool) -> bool:
        """Whether the run stops before the next step: here, exactly when asked."""
        return requested

    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass

    def external_stop(self) -> bool:
        """A stop asked by a parent process (the launcher relays Ctrl-C/SIGTERM); never for one process."""
        return False


def require_module_parameters(foreign: Sequence[str]) -> None:
    """Refuse parameters that DistributedDataParallel would not synchronise: ``pyro.param``s that are not
    parameters of the trained ``nn.Module`` (``foreign``: their names)."""
    if foreign:
        raise ValueError(
            f"training on several devices (devices > 1) synchronises only the model's nn.Module parameters, "
            f"but these pyro.param parameters are not in the module and would drift apart between processes: "
            f"{', '.join(sorted(foreign))}. Make them nn.Parameter attributes of the module (or PyroParam "
            f"attributes of a PyroModule), or train on one device (devices=1, --devices 1)")


class DistributedLoss(torch.nn.Module):
    """The module DDP wraps: holds the user's module (so DDP sees and synchronises its parameters) and
    returns the objective's differentiable loss of the share ``x`` (scaled by ``num_data / len(x)``)."""

    def __init__(self, module: torch.nn.Module, objective, num_data: int):
        super().__init__()
        self.module, self.objective, self.num_data = module, objective, num_data

    def forward(self, x: torch.Tensor, model: Callable, guide: Callable, **data) -> torch.Tensor:
        """``model``/``guide``: the module's programs, possibly wrapped (KL warm-up)."""
        if x.shape[0] == 0:   # an empty share of a short last batch: no loss, but every parameter takes part
            return sum(p.sum() for p in self.module.parameters() if p.requires_grad) * 0.0
        return self.objective.differentiable_loss(model, guide, x, num_data=self.num_data, **data)


def buffer_sync(every_step: bool) -> dict:
    """DistributedDataParallel's argument for syncing buffers from rank 0 before every forward (or only when
    it is built): ``forward_sync_buffers`` where torch has it, else ``broadcast_buffers`` (which, False, also
    skips the sync at construction; every rank builds the same buffers from the same seed anyway)."""
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": every_step}


class DDPGroup:
    """This process's place in an initialised ``torch.distributed`` process group of ``world_size`` processes
    (:mod:`pyro_vae.launch` starts them): rank 0 writes; ``stop_event`` is the launcher's relayed Ctrl-C."""

    handles_signals = False   # the launcher receives Ctrl-C and SIGTERM and relays them as stop_event

    def __init__(self, rank: int, world_size: int, device: torch.device, stop_event: Any = None):
        self.rank, self.world_size, self.device, self.stop_event = rank, world_size, device, stop_event
        self.is_writer = rank == 0
        self._agreed = False

    @property
    def gpu(self) -> Optional[torch.device]:
        return self.device if self.device.type == "cuda" else None

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices (no overlap, all covered)."""
        return indices.tensor_split(self.world_size)[self.rank]

    def shard_bounds(self, num: int) -> Tuple[int, int]:
        return shard_bounds(num, self.rank, self.world_size)

    def share_weight(self, share: int, batch: int) -> float:
        return share * self.world_size / batch

    def loss_function(self, module: Any, objective: Any, num_data: int, probe: Callable,
                      foreign: Sequence[str] = ()) -> Callable:
        """The loss through DistributedDataParallel (which broadcasts rank 0's parameters and buffers when it is
        built); parameters outside the module (``foreign``) are refused: DDP would not synchronise them.  DDP must know whether some parameter gets no gradient (then it searches the graph every step)
        and whether a step changes buffers (batch-norm statistics: then it broadcasts rank 0's before every
        step, a collective that constant buffers do not need): ``probe()`` answers both, once, as
        ``(unused parameters?, changed buffers?)``."""
        require_module_parameters(foreign)
        unused, changed = probe()
        return torch.nn.parallel.DistributedDataParallel(
            DistributedLoss(module, objective, num_data),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=unused, **buffer_sync(changed))

    def _start_sum(self, values: Sequence) -> Callable[[], List[float]]:
        tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(())
                              for v in values])
        work = dist.all_reduce(tensor, async_op=True)

        def wait() -> List[float]:
            work.wait()
            return tensor.tolist()
        return wait

    def start_step_reduce(self, loss: torch.Tensor, share: int, batch: int, num_data: int,
                          stop: bool) -> Callable[[], Tuple[float, bool]]:
        sums = self._start_sum([loss.detach() * (share / num_data), float(stop)])

        def wait() -> Tuple[float, bool]:
            total, stops = sums()
            self._agreed = self._agreed or stops > 0
            return total * num_data / batch, self._agreed
        return wait

    def agree_stop(self, requested: bool) -> bool:
        """Whether the run stops before the next step: when any process asked before the last step's reduce."""
        return self._agreed

    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        """Sum ``values`` over all ranks in one float64 all-reduce (every rank must call it in the same order)."""
        return self._start_sum(values)()

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def external_stop(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()
