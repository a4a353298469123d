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
    S  recurrent state width (d_state), for contextual_layer="rnn"
"""

from .backend import namespace, to_device, tree_leaves, tree_map
from .block import BlockPatch
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TransformerConfig
from .data import (
    RegressionBatch,
    least_squares_predict,
    one_step_gd_predict,
    optimal_gd_step,
    prompt_tokens,
    regression_prompts,
    regression_stream,
    ridge_predict,
    zero_predict,
)
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
from .loss import query_loss
from .model import backward, forward, predict
from .optim import adam_init, adam_step, sgd_init, sgd_step
from .params import (
    AttentionParams,
    BlockParams,
    LayerNormParams,
    MLPParams,
    ModelParams,
    RNNParams,
    init_params,
)
from .positions import (
    DegeneratePositionError,
    at_position,
    implicit_update_every_position,
    implicit_update_from_last_token,
    position_alignment,
)
from .thought import CompressionError, ThoughtPatch, compression_error, thought_patch
from .tolerances import FLOAT32_RTOL, GRADCHECK_RTOL, IDENTITY_RTOL, relative_residual
from .train import OptimizerSettings, TrainingSetup, paper_setting, train_setup
from .von_oswald import von_oswald_attention, von_oswald_model, von_oswald_predict

__version__ = "0.1.0"

__all__ = [
    # the model
    "TransformerConfig", "init_params", "forward", "backward", "predict",
    "ModelParams", "BlockParams", "AttentionParams", "MLPParams", "LayerNormParams", "BlockPatch",
    "RNNParams",
    # Theorem 2.2 and its neighbours
    "implicit_update", "ImplicitUpdate", "DegenerateQueryError", "remove_tokens",
    "minimum_norm_solution", "null_space_perturbation", "linear_attention_context_vector",
    # every position as a query; one patch for all queries
    "implicit_update_every_position", "implicit_update_from_last_token", "at_position",
    "position_alignment", "DegeneratePositionError",
    "thought_patch", "ThoughtPatch", "compression_error", "CompressionError",
    # Proposition 3.1
    "implicit_path", "ImplicitPath", "factorised_path", "FactorisedPath",
    # von Oswald et al. (2023)
    "von_oswald_attention", "von_oswald_model", "von_oswald_predict",
    # data and baselines
    "RegressionBatch", "regression_prompts", "regression_stream", "prompt_tokens", "zero_predict",
    "one_step_gd_predict", "optimal_gd_step", "least_squares_predict", "ridge_predict",
    # training and checkpoints
    "query_loss", "sgd_init", "sgd_step", "adam_init", "adam_step", "OptimizerSettings",
    "TrainingSetup", "paper_setting", "train_setup",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
    # tolerances and backends
    "IDENTITY_RTOL", "GRADCHECK_RTOL", "FLOAT32_RTOL", "relative_residual",
    "namespace", "to_device", "tree_map", "tree_leaves",
]
