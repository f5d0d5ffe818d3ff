"""The parameters a model/guide pair trains, found by tracing it (not by asking a module): the module's
``nn.Parameter``s plus any ``pyro.param`` a user's program creates outside it.  Also what a data-parallel run must
know of the pair before its first step (:func:`ddp_probe`), and the ``pyro.param`` values a checkpoint keeps.
"""
from typing import Any, Dict, List, Tuple

import torch
import pyro
from pyro import poutine

from .contract import checked_once, state_preserved


def trained_parameters(module: Any, objective: Any, x: torch.Tensor, **data) -> Tuple[List[torch.Tensor], List[str]]:
    """``(parameters, foreign names)``: every parameter the objective's loss touches on the small batch
    ``x: [b, D]`` (the module's first, in its order), and the names of the ``pyro.param``s among them that are
    not the module's (DDP does not synchronise those; ``--model`` checkpoints cannot rebuild them).  The loss runs
    under ``no_grad`` with its sample sites hidden, as Pyro's docs do to collect parameters for a torch optimiser;
    it draws from the global random stream like any step.  The module's own parameters are found without its
    ``pyro.module`` registration (:func:`~pyro_vae.contract.checked_once`), so a param store still holding
    another module's parameters of the same names is never mistaken for this one's."""
    with poutine.trace(param_only=True) as capture, checked_once(module):   # the module's own, not the store's
        with poutine.block(hide_types=["sample"]), torch.no_grad():
            objective.loss(module.model, module.guide, x, **data)
    params = {id(p): p for p in module.parameters() if p.requires_grad}
    foreign = []
    for name, site in capture.trace.nodes.items():
        p = site["value"].unconstrained()
        if id(p) not in params:
            foreign.append(name)
        params.setdefault(id(p), p)
    return list(params.values()), foreign


def ddp_probe(module: Any, objective: Any, x: torch.Tensor, num_data: int, device: torch.device,
              **data) -> Tuple[bool, bool]:
    """``(does some parameter get no gradient?, does a step change buffers?)`` from one loss on the small batch
    ``x``, leaving the random streams and the buffers as they were: what ``DistributedDataParallel`` must be told
    (search the graph for unused parameters each step; broadcast rank 0's buffers before each step)."""
    params = [p for p in module.parameters() if p.requires_grad]
    with state_preserved(module, device) as buffers:
        loss = objective.differentiable_loss(module.model, module.guide, x, num_data=num_data, **data)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        changed = [b for b, before in buffers if not torch.equal(b, before)]
    return any(g is None for g in grads), bool(changed)


def user_param_values() -> Dict[str, torch.Tensor]:
    """The unconstrained values of the ``pyro.param``s in Pyro's param store that are not ``nn.Module``
    parameters (those, named ``"module$$$..."``, live in the module's ``state_dict``)."""
    return {k: v for k, v in pyro.get_param_store().get_state()["params"].items() if "$$$" not in k}


def load_user_param_values(values: Dict[str, torch.Tensor]) -> None:
    """Copy saved :func:`user_param_values` into the param store, in place (an optimiser holding the tensors
    keeps them); names the store does not hold are skipped."""
    store = pyro.get_param_store()
    with torch.no_grad():
        for name, unconstrained in values.items():
            if name in store:
                store._params[name].copy_(unconstrained)
