"""The typed configuration: model, loading with provenance, and validation."""

from routed_nv.config.loader import ConfigError, Problem, load_config
from routed_nv.config.model import Config

__all__ = ["Config", "ConfigError", "Problem", "load_config"]
