"""pyro_vae: variational autoencoders as Pyro probabilistic programs."""
from .likelihoods import (BernoulliLikelihood, ContinuousBernoulliLikelihood, GaussianLikelihood,
                          Likelihood, LikelihoodError, build_likelihood)
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .priors import MixtureOfGaussiansPrior, Prior, StandardNormalPrior, VampPrior, build_prior
from .vae import VAE, build_vae
from .plates import data_plate
from .importance import ModelGuideContractError, importance_weights, log_weights
from .objectives import CIWAE_ELBO, IWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO, bound_name, build_objective
from .evaluation import JointLogLikelihood, LogLikelihoodSummary, evaluate, joint_log_likelihood, log_likelihood
from .ais import AISSummary, ais_log_likelihood
from .bdmc import BDMCSummary, bdmc
from .gaps import InferenceGaps, inference_gaps
from .config import TrainConfig
from .training import Trainer
from .launch import train
from .factory import load, load_vae, save
from .version import __version__
