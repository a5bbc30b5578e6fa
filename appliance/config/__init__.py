"""The appliance's configuration: one validated, frozen object from TOML plus environment.

Every problem is collected (not just the first) and reported with its dotted key and
what is allowed. Environment variables override the file:
``APPLIANCE__<SECTION>__<KEY>=value`` (double underscores), e.g.
``APPLIANCE__DICOM__PORT=11113``; values are read as TOML values, falling back to a
plain string.

- :mod:`~appliance.config.reader`: the one typed reader (:class:`ConfigReader`), also
  used by the federation's run settings and the federated benchmark's config;
- :mod:`~appliance.config.sections`, :mod:`~appliance.config.federation`,
  :mod:`~appliance.config.app`: the frozen sections, each checking itself on
  construction (so one built in code is as valid as one read from a file), and
  :class:`StrategyName`, the one vocabulary of federated strategies;
- :mod:`~appliance.config.loading`: :func:`load_config` / :func:`parse_config`;
- :mod:`~appliance.config.cron`: ``federation.schedule``'s cron expressions.

This package imports nothing of the appliance above it (only ``appliance.errors``,
``appliance.states`` and the dependency-free ``appliance.routing``).
"""

from appliance.config.app import AppConfig
from appliance.config.federation import FederationConfig, StrategyName
from appliance.config.loading import CONFIG_ENV, ENV_PREFIX, load_config, parse_config
from appliance.config.reader import ConfigReader
from appliance.config.sections import (
    LOG_FORMATS,
    LOG_LEVELS,
    MODEL_DEVICES,
    SEG_TYPES,
    CallerConfig,
    CasesConfig,
    DestinationConfig,
    DestinationKind,
    DicomConfig,
    HttpConfig,
    InferenceConfig,
    LimitsConfig,
    LoggingConfig,
    ModelsConfig,
    OutboxConfig,
    OutputConfig,
    OutputKind,
    RetentionConfig,
    StorageConfig,
    TlsConfig,
    shipped_bundles_dir,
)
from appliance.errors import ConfigError, ConfigIssue

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MODEL_DEVICES",
    "SEG_TYPES",
    "AppConfig",
    "CallerConfig",
    "CasesConfig",
    "ConfigError",
    "ConfigIssue",
    "ConfigReader",
    "DestinationConfig",
    "DestinationKind",
    "DicomConfig",
    "FederationConfig",
    "HttpConfig",
    "InferenceConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModelsConfig",
    "OutboxConfig",
    "OutputConfig",
    "OutputKind",
    "RetentionConfig",
    "StorageConfig",
    "StrategyName",
    "TlsConfig",
    "load_config",
    "parse_config",
    "shipped_bundles_dir",
]
