"""minimal_icl: how a transformer learns in context without training, in NumPy.

A self-attention layer followed by an MLP turns its context into an exact rank-1
update of the MLP's first weight matrix (Dherin et al. 2025, arXiv:2507.16003):

    T_W(C, x) = T_{W+ΔW}(x),   ΔW = (W ΔA) A(x)ᵀ / ‖A(x)‖².

This package has handwritten forward and backward passes for a small transformer, the
theorems as code, and the paper's experiments.

Shape letters, used in every docstring and shape comment:

    B  prompts in a batch        N  context pairs (tokens before the query)
    T  tokens in a prompt        D  model width = token width (d_token)
    H  attention heads           K  key/query/value width per head (d_head)
    M  MLP hidden width (d_mlp)  Tq positions that query (T, or 1 with last_only)
"""

from .backend import namespace, to_device, tree_leaves, tree_map
from .block import BlockPatch
from .config import TransformerConfig
from .dynamics import FactorisedPath, ImplicitPath, factorised_path, implicit_path
from .implicit import (
    DegenerateQueryError,
    ImplicitUpdate,
    implicit_update,
    linear_attention_context_vector,
    minimum_norm_solution,
    null_space_perturbation,
    remove_tokens,
)
from .model import backward, forward, predict
from .params import (
    AttentionParams,
    BlockParams,
    LayerNormParams,
    MLPParams,
    ModelParams,
    init_params,
)
from .tolerances import FLOAT32_RTOL, GRADCHECK_RTOL, IDENTITY_RTOL, relative_residual
from .von_oswald import gd_one_step_predict, von_oswald_attention, von_oswald_model, von_oswald_predict
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import (
    RegressionBatch,
    least_squares_predict,
    one_step_gd_predict,
    optimal_gd_step,
    regression_prompts,
    regression_stream,
    ridge_predict,
    zero_predict,
)
from .loss import query_loss
from .optim import adam_init, adam_step, sgd_init, sgd_step
from .train import OptimizerSettings, TrainingSetup, paper_setting, train_setup

__version__ = "0.1.0"

__all__ = [
    "AttentionParams", "BlockParams", "BlockPatch", "FLOAT32_RTOL", "GRADCHECK_RTOL",
    "IDENTITY_RTOL", "LayerNormParams", "MLPParams", "ModelParams", "TransformerConfig",
    "backward", "forward", "init_params", "namespace", "predict", "relative_residual",
    "to_device", "tree_leaves", "tree_map",
    "DegenerateQueryError", "FactorisedPath", "ImplicitPath", "ImplicitUpdate", "factorised_path",
    "gd_one_step_predict", "implicit_path", "implicit_update", "linear_attention_context_vector",
    "minimum_norm_solution", "null_space_perturbation", "remove_tokens", "von_oswald_attention",
    "von_oswald_model", "von_oswald_predict",
    "CheckpointError", "OptimizerSettings", "RegressionBatch", "TrainingSetup", "adam_init", "adam_step",
    "least_squares_predict", "load_checkpoint", "one_step_gd_predict", "optimal_gd_step", "paper_setting",
    "query_loss", "regression_prompts", "regression_stream", "ridge_predict", "save_checkpoint", "sgd_init",
    "sgd_step", "train_setup", "zero_predict",
]
