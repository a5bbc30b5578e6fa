""":class:`AppConfig`: the whole configuration, one frozen object of checked sections.

Each section checks itself; the whole checks what involves several: destination names
are unique, and ``output.destinations`` names configured destinations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.config.federation import FederationConfig
from appliance.config.reader import ConfigReader
from appliance.config.sections import (
    CasesConfig,
    DestinationConfig,
    DicomConfig,
    HttpConfig,
    InferenceConfig,
    LimitsConfig,
    LoggingConfig,
    ModelsConfig,
    OutboxConfig,
    OutputConfig,
    RetentionConfig,
    StorageConfig,
)
from appliance.errors import NotFoundError
from appliance.routing import DEFAULT_RULES, DEFAULT_STUDY_WAIT_MINUTES, RoutingRule


@dataclass(frozen=True, slots=True)
class AppConfig:
    dicom: DicomConfig = field(default_factory=DicomConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    destinations: tuple[DestinationConfig, ...] = ()
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    routing: tuple[RoutingRule, ...] = DEFAULT_RULES
    models: ModelsConfig = field(default_factory=ModelsConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cases: CasesConfig = field(default_factory=CasesConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # ``[routing] study_wait_minutes`` (the rules stay ``routing``, as every caller reads them)
    study_wait_minutes: float = DEFAULT_STUDY_WAIT_MINUTES

    def __post_init__(self) -> None:
        r = ConfigReader.of(self)
        for name, kind in (
            ("dicom", DicomConfig),
            ("storage", StorageConfig),
            ("outbox", OutboxConfig),
            ("logging", LoggingConfig),
            ("models", ModelsConfig),
            ("inference", InferenceConfig),
            ("output", OutputConfig),
            ("cases", CasesConfig),
            ("federation", FederationConfig),
            ("retention", RetentionConfig),
            ("http", HttpConfig),
            ("limits", LimitsConfig),
        ):
            r.instance(name, kind)
        destinations = r.instances(
            "destinations", DestinationConfig, "must be an array of tables ([[destinations]])"
        )
        r.instances("routing", RoutingRule, "must be a list of routing rules")
        wait = self.study_wait_minutes
        r.check(
            isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0,
            "routing.study_wait_minutes",
            f"must be a number of minutes > 0; got {wait!r}",
        )
        names = [d.name for d in destinations]
        for name in sorted({n for n in names if names.count(n) > 1}):
            r.err("destinations", f"destination name {name!r} is used more than once")
        wanted = self.output.destinations if isinstance(self.output, OutputConfig) else None
        for name in wanted or ():
            r.check(
                name in names,
                "output.destinations",
                f"{name!r} is not a configured destination (known: {', '.join(names) or 'none'})",
            )
        r.raise_issues()

    @property
    def models_root(self) -> Path:
        return self.models.registry_root(self.storage)

    @property
    def results_dir(self) -> Path:
        return self.storage.root / "results"

    @property
    def output_destinations(self) -> tuple[str, ...]:
        """Destinations of the pipeline's SEG and SR (see :class:`OutputConfig`)."""
        if self.output.destinations is not None:
            return self.output.destinations
        return (self.destinations[0].name,) if self.destinations else ()

    def destination(self, name: str) -> DestinationConfig:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise NotFoundError(f"no destination named {name!r} (known: {known})")
