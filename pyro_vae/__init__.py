"""pyro_vae: variational autoencoders as Pyro probabilistic programs."""
from .likelihoods import (BernoulliLikelihood, ContinuousBernoulliLikelihood, GaussianLikelihood,
                          Likelihood, LikelihoodError, build_likelihood)
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .priors import Prior, StandardNormalPrior, build_prior
from .vae import VAE, build_vae

__version__ = "0.1.0"
