"""Structured run configs: defaults in dataclasses, differences in YAML, overrides as `key=value`.

Composition order: `configs/defaults.yaml` < `configs/experiment/NAME.yaml` (if `experiment=NAME`)
< command-line dotlist. `editor=NAME`, `data=NAME` and `model=NAME` pick the registered entry
whose config dataclass then types that whole group, so an unknown key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from benchmark.registry import DATASETS, EDITORS, MODELS, UnknownNameError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = {"editor": EDITORS, "data": DATASETS, "model": MODELS}


class ConfigError(ValueError):
    """A bad name, key or value; the message is one line that names it."""


@dataclass
class LoopConfig:
    eval_every: int = field(default=50, metadata={"help": "edits between ER/TrainR/TestR evaluations"})
    split: str = field(default="edit", metadata={
        "help": "edit: stream D_edit's folds (the reported protocol) | val: stream D_val's, for tuning settings; "
                "D_test is then not read (no TestR) and editors are not handed D_val"})
    mode: str = field(default="stream", metadata={
        "help": "stream: the sequential stream, an edit per mistake (T-Patcher) | batch: every fact of a fold "
                "edited at once with all its training forms (Zhu et al., Sec. 4); needs an editor that edits batches"})
    folds: list[int] | None = field(default=None, metadata={"help": "fold indices to run (default all)"})
    max_fold_examples: int | None = field(default=None, metadata={"help": "cut each fold's stream to this"})
    test_limit: int | None = field(default=None, metadata={"help": "evaluate on at most this many D_test examples"})
    save_state: bool = field(default=True, metadata={"help": "save the editor state after edits (resume)"})
    state_every: int = field(default=1, metadata={
        "help": "edits between saved editor states, at least; a resume redoes the edits after the last state"})
    state_overhead: float = field(default=0.1, metadata={
        "help": "share of the stream's time that saving states may take: after an edit a state is saved only "
                "once the time since the last save is at least the last save's duration / this (FT(all) on "
                "SmolLM2 writes 0.5 GB a state: every ~25 s, not every edit); 0: at every state_every-th edit"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over the stream"})

    def stream(self, fold: list) -> list:
        """The part of a fold that is streamed (all of it unless max_fold_examples cuts it)."""
        return fold[: self.max_fold_examples]

    def __post_init__(self) -> None:
        if self.split not in ("edit", "val"):
            raise ValueError(f"loop.split must be edit or val, got {self.split!r}")
        if self.mode not in ("stream", "batch"):
            raise ValueError(f"loop.mode must be stream or batch, got {self.mode!r}")
        for key in ("eval_every", "state_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"loop.{key} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.state_overhead <= 1:
            raise ValueError(f"loop.state_overhead must be in [0, 1] (0: no limit), got {self.state_overhead}")
        for key in ("max_fold_examples", "test_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"loop.{key} must be at least 1 (or null for all), got {getattr(self, key)}")
        if self.folds is not None:
            if len(set(self.folds)) != len(self.folds):
                raise ValueError(f"loop.folds lists a fold twice: {list(self.folds)}")
            if any(f < 0 for f in self.folds):
                raise ValueError(f"loop.folds are fold indices (0, 1, ...), got {list(self.folds)}")


@dataclass
class LoggerConfig:
    wandb: bool = field(default=False, metadata={"help": "also log to Weights & Biases"})
    wandb_mode: str = field(default="offline", metadata={"help": "offline | online"})
    project: str = field(default="seqedit", metadata={"help": "W&B project"})


ACCELERATORS = ("cpu", "gpu", "cuda", "auto")


@dataclass
class TrainerConfig:
    accelerator: str = field(default="cpu", metadata={"help": "Lightning accelerator: cpu | gpu | cuda | auto"})
    devices: int = field(default=1, metadata={"help": "Lightning devices"})
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy; ddp spreads folds over processes"})
    num_nodes: int = field(default=1, metadata={"help": "machines of a DDP run (folds spread over all processes)"})

    def __post_init__(self) -> None:
        if self.devices < 1 or self.num_nodes < 1:
            raise ValueError("trainer.devices and trainer.num_nodes must be at least 1")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}")
        if self.strategy not in ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"):
            raise ValueError(f"trainer.strategy must be auto or ddp, got {self.strategy!r}")
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if torch.cuda.device_count() < self.devices:
                raise ValueError(f"trainer.accelerator={self.accelerator} with trainer.devices={self.devices}, "
                                 f"but this machine has {torch.cuda.device_count()} CUDA devices")


@dataclass
class InitConfig:
    epochs: int = field(default=0, metadata={"help": "epochs of training on D'train; 0 uses the model as loaded"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    keep: str = field(default="best_val", metadata={"help": "best_val (epoch with the best D_val accuracy) | last"})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads while training the initial model and an editor's training phase (1: the same model "
                "whatever the machine's core count; None: torch's default); not part of the cache keys"})

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("init.epochs >= 0, init.lr > 0 and init.batch_size >= 1 are required")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"init.threads must be at least 1 (or null), got {self.threads}")
        if self.keep not in ("best_val", "last"):
            raise ValueError(f"init.keep must be best_val or last, got {self.keep!r}")


@dataclass
class RunConfig:
    """One run. `init` trains the initial model on D'train first (T-Patcher App. B)."""

    editor: Any = None
    data: Any = None
    model: Any = None
    loop: LoopConfig = field(default_factory=LoopConfig)
    init: InitConfig = field(default_factory=InitConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = field(default=0, metadata={"help": "seed of the run (editing randomness)"})
    output_dir: str = field(default="runs", metadata={"help": "where run folders are written"})
    run_id: str | None = field(default=None, metadata={"help": "run folder name (default: derived)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in output_dir/run_id"})

    def __post_init__(self) -> None:
        if self.run_id is not None and not self.run_id.strip():
            raise ValueError(f"run_id={self.run_id!r}: empty; give a folder name, or leave run_id unset for one "
                             "derived from the config")
        device = str(getattr(self.model, "device", "cpu"))
        if device != "cpu" and self.trainer.accelerator == "cpu":  # Lightning's CPU run moves the model back
            raise ValueError(f"trainer.accelerator=cpu with model.device={device}: the stream would run with the "
                             "model moved back to the CPU; set trainer.accelerator=gpu (or auto)")


def _split_overrides(overrides: list[str]) -> tuple[dict[str, str], str | None, list[str]]:
    choices, experiment, rest = {}, None, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key in GROUPS:
            if not value.strip():
                raise ConfigError(f"{key}= names nothing; give {key}=NAME (`seqedit list` shows the names)")
            choices[key] = value
        elif key == "experiment":
            experiment = value
        else:
            rest.append(item)
    return choices, experiment, rest


def _load_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml errors carry line numbers in their text
        raise ConfigError(f"{path}: {' '.join(str(err).split())}") from None


def _group_name(layer: DictConfig, group: str) -> str | None:
    node = layer.get(group)
    if isinstance(node, str):
        return node
    if isinstance(node, DictConfig):
        return node.get("name")
    return None


def _normalise(layer: DictConfig) -> DictConfig:
    """`editor: NAME` in YAML is shorthand for `editor: {name: NAME}`."""
    for group in GROUPS:
        if isinstance(layer.get(group), str):
            layer[group] = {"name": layer[group]}
    return layer


def _register_all() -> None:
    import benchmark.models.config  # noqa: F401
    import data.configs  # noqa: F401
    import editors.configs  # noqa: F401


def _is_yaml(value: str) -> bool:
    """A choice that names a YAML file (`experiment=path/x.yaml`, `data=my_data.yaml`), not a
    registered name (a model may be a Hugging Face name with a '/', never a .yaml)."""
    return value.endswith((".yaml", ".yml"))


def _user_file(value: str, what: str) -> tuple[DictConfig, Path]:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}={value}: no such file ({path.resolve()})")
    layer = _load_yaml(path)
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, not a {type(layer).__name__}")
    return layer, path.resolve().parent


def _anchor_paths(body: DictConfig, folder: Path) -> None:
    """A data file named relatively in a YAML file is relative to that file's folder (so a config
    works from any directory); `path` and every `*_path` key."""
    for key in list(body.keys()):
        value = body.get(key)
        if (key == "path" or str(key).endswith("_path")) and isinstance(value, str) and value \
                and not Path(value).expanduser().is_absolute():
            body[key] = str(folder / value)


def _group_file(group: str, value: str) -> DictConfig:
    """`data=my_data.yaml`: the file holds that group's settings, either at its top level
    (`name: json`, `path: ...`) or under the group's key (`data: {name: json, ...}`); its `name`
    chooses the registered dataset, editor or model."""
    layer, folder = _user_file(value, group)
    body = layer[group] if set(layer.keys()) == {group} else layer
    if isinstance(body, str):
        body = OmegaConf.create({"name": body})
    if not isinstance(body, DictConfig) or not body.get("name"):
        raise ConfigError(f"{value}: a {group} file needs a `name:` (a registered {GROUPS[group].kind}; "
                          "`seqedit list`)")
    if group == "data":
        _anchor_paths(body, folder)
    return OmegaConf.create({group: body})


def _experiment_file(value: str, what: str) -> DictConfig:
    layer, folder = _user_file(value, what)
    if isinstance(layer.get("data"), DictConfig):
        _anchor_paths(layer.data, folder)
    return layer


def compose(overrides: list[str] | None = None, experiment_file: str | Path | None = None) -> DictConfig:
    """The run's config: defaults, then an experiment (a name in configs/experiment/ or any YAML
    file), then group files (`data=my.yaml`), then `key=value` overrides."""
    _register_all()
    choices, experiment, rest = _split_overrides(list(overrides or []))
    layers = _layers(choices, experiment, experiment_file)
    schema = OmegaConf.structured(RunConfig)
    for group, registry in GROUPS.items():
        _type_group(schema, layers, group, registry, choices.get(group))
    try:
        for layer in layers:
            schema = OmegaConf.merge(schema, layer)
        for item in rest:
            schema = _merge_override(schema, item)
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ConfigError(_unknown_key_message(err, schema)) from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{str(err).splitlines()[0]} (key {err.full_key})") from None
    return schema


def _layers(choices: dict[str, str], experiment: str | None, experiment_file: str | Path | None) -> list[DictConfig]:
    """The YAML layers in the order they apply: defaults, the experiment, --config, group files
    (whose group choice becomes the file's name)."""
    layers = [_load_yaml(CONFIG_DIR / "defaults.yaml")]
    if experiment and (_is_yaml(experiment) or "/" in experiment):
        layers.append(_experiment_file(experiment, "experiment"))
    elif experiment:
        path = CONFIG_DIR / "experiment" / f"{experiment}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
            raise ConfigError(f"unknown experiment {experiment!r}; choose one of: {', '.join(names)} "
                              "(or a path to a YAML file)")
        layer = _load_yaml(path)
        if isinstance(layer.get("data"), DictConfig):  # a shipped sample named relatively, as in any YAML
            _anchor_paths(layer.data, path.parent)
        layers.append(layer)
    if experiment_file:
        layers.append(_experiment_file(str(experiment_file), "--config"))
    for group, value in list(choices.items()):
        if _is_yaml(value):
            file_layer = _group_file(group, value)
            layers.append(file_layer)
            choices[group] = str(file_layer[group].name)
    return [_normalise(layer) for layer in layers]


def _type_group(schema: DictConfig, layers: list[DictConfig], group: str, registry, chosen: str | None) -> None:
    """Give `group` the config class of the name chosen (on the command line, else by the last
    layer naming one), checked before anything is merged; drop the layers' settings for another."""
    named = [n for n in (_group_name(layer, group) for layer in reversed(layers)) if n]
    name = chosen or (named[0] if named else None)
    if not name:
        raise ConfigError(f"no {group} chosen; add {group}=NAME (one of: {', '.join(registry.names())})")
    if group == "model" and name not in registry:
        from benchmark.models.config import ModelConfig  # a Hugging Face name or local path

        config_class = ModelConfig
    elif name not in registry:
        raise ConfigError(str(UnknownNameError(f"unknown {registry.kind} {name!r}; choose one of: "
                                               f"{', '.join(registry.names())}")))
    else:
        config_class = registry.get(name).config_class
    # the class's field defaults, not an instance's: `__post_init__` resolves unset fields (a
    # recipe's defaults) only once every override is in
    config_class(name=name)  # its own checks, before anything is merged
    schema[group] = OmegaConf.structured(config_class)
    schema[group].name = name
    for layer in layers:  # a layer's settings for another editor/dataset/model do not apply
        if _group_name(layer, group) not in (None, name):
            del layer[group]


def _merge_override(schema: DictConfig, item: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, _parse_override(item))
    except TypeError:  # a mapping given for a list, or the reverse
        key = item.split("=", 1)[0]
        parent = key.rsplit(".", 1)[0]
        if isinstance(OmegaConf.select(schema, parent), DictConfig):  # a mapping given for a list
            raise ConfigError(f"override {item!r} does not fit: {key} takes a list or value") from None
        raise ConfigError(f"override {item!r} does not fit: {parent} takes no sub-keys") from None


def _parse_override(item: str) -> DictConfig:
    """One `key=value`, parsed alone so that a malformed one is named."""
    try:
        return OmegaConf.from_dotlist([item])
    except Exception as err:  # grammar and YAML errors alike
        raise ConfigError(f"override {item!r} cannot be parsed ({' '.join(str(err).split())[:120]})") from None


def _no_nan(node: Any, path: str = "") -> None:
    """NaN passes every `<`/`>` check a config makes; refuse it by name before anything runs."""
    if isinstance(node, float) and math.isnan(node):
        raise ConfigError(f"{path}=nan is not a number a setting can take")
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        _no_nan(value, f"{path}.{key}" if path else str(key))


RENAMED = {"data.folds": "data.num_folds", "data.memory_size": "data.pool_size"}  # one meaning per name
# max_steps counts optimizer steps of the edited weights; the locate-then-edit editors take none (v* is a latent)
EDITOR_RENAMED = {"max_steps": "v_steps"}


def _unknown_key_message(err: OmegaConfBaseException, schema: DictConfig) -> str:
    full_key = err.full_key or ""
    if full_key in RENAMED:
        return f"config key {full_key!r} is now {RENAMED[full_key]!r}"
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    key = full_key.rsplit(".", 1)[-1]
    if parent == "editor" and isinstance(node, DictConfig) and EDITOR_RENAMED.get(key) in node:
        return (f"config key {full_key!r}: editor {node.get('name')} takes no optimizer step on the weights it edits; "
                f"its v* steps are editor.{EDITOR_RENAMED[key]}")
    valid = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else ""
    return f"unknown config key {full_key!r}; valid keys{' of ' + parent if parent else ''}: {valid}"


def instantiate(cfg: DictConfig) -> RunConfig:
    """Typed objects with every `__post_init__` check run; errors become one line."""
    _no_nan(OmegaConf.to_container(cfg, resolve=False))
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).split("\n")[0]) from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _no_infinity(run)
    return run


def _no_infinity(node: Any, path: str = "") -> None:
    """An infinity (`1e999` reads as one) passes every `> 0` check, so `editor.lr=1e999` would be
    taken and every edit fail: refused by name, except in a field whose metadata says infinity
    means something (`"infinite": "what it means"`, as constrained FT's delta = inf: no bound)."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            _no_infinity(value, key)
        elif isinstance(value, float) and math.isinf(value) and not f.metadata.get("infinite"):
            raise ConfigError(f"{key}={value} is not a finite number, which this setting must be")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
