"""Frozen dataclass configs, loaded from and saved to YAML, with checked ``a.b=v`` overrides.

Every number a stage depends on (pixel range, token limit, latent scale, ...) is a field here, never
a literal in the code that uses it. One module per area; everything is importable from here.
"""

from cxrgen.config.base import FrozenDict, apply_overrides, from_dict, load_config, save_config, to_dict
from cxrgen.config.data import DataConfig, ImageConfig, PromptConfig, SplitConfig
from cxrgen.config.evaluation import (
    UNCERTAIN_POLICIES,
    EvalConfig,
    EvaluatorConfig,
    EvaluatorTrainConfig,
    ReidTrainConfig,
    SSLEvaluatorTrainConfig,
)
from cxrgen.config.models import (
    PREDICTION_TYPES,
    AutoencoderConfig,
    DenoiserConfig,
    ModelConfig,
    TextEncoderConfig,
)
from cxrgen.config.phantom import PhantomConfig
from cxrgen.config.sampling import DDPM_SAMPLER_NAMES, FLOW_SAMPLER_NAMES, SAMPLER_NAMES, SamplingConfig
from cxrgen.config.training import (
    CACHE_DTYPES,
    AutoencoderTrainConfig,
    CacheConfig,
    ObjectiveConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "DDPM_SAMPLER_NAMES",
    "FLOW_SAMPLER_NAMES",
    "PREDICTION_TYPES",
    "SAMPLER_NAMES",
    "AutoencoderConfig",
    "AutoencoderTrainConfig",
    "CACHE_DTYPES",
    "CacheConfig",
    "DataConfig",
    "DenoiserConfig",
    "EvalConfig",
    "EvaluatorConfig",
    "EvaluatorTrainConfig",
    "FrozenDict",
    "ImageConfig",
    "ModelConfig",
    "SSLEvaluatorTrainConfig",
    "ObjectiveConfig",
    "PhantomConfig",
    "PromptConfig",
    "ReidTrainConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "SplitConfig",
    "TextEncoderConfig",
    "TrainConfig",
    "UNCERTAIN_POLICIES",
    "apply_overrides",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
