"""Prior study on static binarized MNIST: standard normal vs mixture of Gaussians vs VampPrior, the comparison
of Tomczak & Welling (2018) on the benchmark of their Table 2, at a budget this machine can give.

Every run: Larochelle's static binarization (``binarized_mnist_{train,valid,test}.amat[.gz]`` under
``--data-dir``, e.g. ``../shared/data``), the nearest network this code has to the paper's one-layer model
(784-300-300-40 ReLU MLP encoder and decoder; the paper's are gated), Trace_ELBO, batch 100, Adam lr 5e-4, KL
warm-up over the first 10 epochs (the paper: 100), a fixed number of epochs with no early stopping, K = 500
components for both the MoG and the VampPrior (the paper's K); test log p(x) by importance sampling with
S = 5000 on all 10,000 test points, of the model at its best validation epoch, mean ± standard error over
3 seeds.  Published for comparison (one layer, gated MLP, up to 2000 epochs, so not like for like): the
VampPrior at -85.57 nats.

Budgets (2 CPU cores):

* ``smoke``: seconds, on whatever ``--data-dir`` holds (the tests use a stand-in), for the tests;
* ``small``: 3 seeds x 3 priors, 30 epochs each (2-3 min of training a run, 5 for the VampPrior), then
  S = 5000 on the full test set with ``compile="fused"`` (8-11 min a run): about 2.5 hours, resumable run by
  run (measured 2026-12-07: MoG -90.53, VampPrior -90.92, standard -92.65).
"""
from pathlib import Path
from typing import Dict, Optional

from . import priors

DATA = dict(dataset="binarized-mnist", binarize="none")
NETWORK = dict(hidden=(300, 300), latent_dim=40, batch_size=100, lr=5e-4, patience=0, warmup_epochs=10)

BUDGETS: Dict[str, Dict] = {
    "smoke": dict(seeds=[0], num_samples=20, eval_points=20, data="static binarized MNIST",
                  network="a 16-unit MLP, 2 latents", components={"mog": 3, "vamp": 5},
                  train=dict(DATA, hidden=(16,), latent_dim=2, epochs=1, patience=0, batch_size=100)),
    "small": dict(seeds=[0, 1, 2], num_samples=5000, eval_points=None, data="static binarized MNIST",
                  network="784-300-300-40 ReLU MLP, batch 100, Adam 5e-4, warm-up 10 epochs, 30 epochs",
                  components={"mog": 500, "vamp": 500}, train=dict(DATA, **NETWORK, epochs=30)),
}


def run(budget_name: str, out_dir: Path, command: str, revision: str, data_dir: Optional[str] = None,
        download: bool = False) -> Dict[str, Dict]:
    return priors.run_budget(budget_name, BUDGETS[budget_name], out_dir, command, revision, data_dir, download,
                             title="Prior study on static binarized MNIST")
