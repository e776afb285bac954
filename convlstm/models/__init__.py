"""The models of the toolkit, a file each, and the registry that names them.

A model is a ModelSpec: its class, its own config fields (train.py's flags beyond the common ones), how a config and
a frame shape build it (the one place its frame, patch and backend rules are checked), its forecast and training
objective, and what a checkpoint of it needs. The package's own models register at the end of this file, one line
each; everything else (train.py, evaluate.py, predict.py, load_model, the benchmarks) asks the registry and never
names a model.

A model in the user's own file registers itself with @register_model and is named on the command line as
`--model path/to/file.py:ClassName` or `--model package.module:ClassName` (load_plugin imports it). Only a name the
user typed is ever imported: a checkpoint or a --config file that names a plug-in is refused until the user names it
again (PluginError says how).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys

from torch import nn

from .spec import COMMON_KEYS, Field, ForecastMSE, ModelSpec, PluginError, register_model, unwrap  # noqa: F401

REGISTRY: dict[str, ModelSpec] = {}
DEFAULT_MODEL = "tutorial"  # configs from before a second model have no "model" key: the tutorial's


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name) -> ModelSpec:
    """The registered spec of `name` ("tutorial" for None). ValueError naming the registered models otherwise."""
    name = DEFAULT_MODEL if name is None else name
    if not isinstance(name, str) or name not in REGISTRY:
        if is_plugin_name(name):
            raise not_named(name)
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def not_named(name) -> PluginError:
    """The refusal of a plug-in a checkpoint or a file names but the user did not."""
    return PluginError(f"model {name!r} is a plug-in, whose code is imported only when you name it: pass --model "
                       f"{name} (load_model(..., model_class=...))")


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec whose class `model` (under any wrapper) is."""
    inner = unwrap(model)
    for spec in REGISTRY.values():
        if type(inner) is spec.model_class:
            return spec
    raise ValueError(f"{type(inner).__name__} is not a registered model (convlstm.models.register_model)")


# --- plug-ins: a class in the user's file, named with --model FILE.py:Name or package.module:Name ---------------

def is_plugin_name(name) -> bool:
    return isinstance(name, str) and ":" in name


def class_name(name: str) -> str:
    """The class of a plug-in name ("models/mine.py:Mine" -> "Mine"); a registered name as it is."""
    return name.rsplit(":", 1)[-1]


def load_plugin(name: str) -> ModelSpec:
    """Import the user's model `name` ("path/file.py:Class" or "package.module:Class", as typed) and register it
    under that name. PluginError (one line) when it cannot be imported or is no @register_model class."""
    if name in REGISTRY:
        return REGISTRY[name]
    where, _, attr = name.rpartition(":")
    if not where or not attr:
        raise PluginError(f"--model {name}: a plug-in is named FILE.py:ClassName or package.module:ClassName")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            if not os.path.isfile(where):
                raise PluginError(f"--model {name}: no file {where}")
            module_name = f"convlstm_plugin_{abs(hash(os.path.abspath(where)))}"
            loader = importlib.util.spec_from_file_location(module_name, where)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module  # dataclasses and pickling look their module up by name
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except PluginError:
        raise
    except Exception as error:  # the user's code: any error in it is theirs to see, in one line
        raise PluginError(f"--model {name}: importing {where} failed: {type(error).__name__}: {error}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module) or not hasattr(cls, "__convlstm_spec__"):
        raise PluginError(f"--model {name}: {where} has no class {attr} decorated with "
                          "@convlstm.models.register_model")
    return spec_for_class(cls, name)


def spec_for_class(cls, name: str) -> ModelSpec:
    """The spec of a @register_model class the caller passed (load_model(model_class=...)), registered as `name`
    (the plug-in name a checkpoint stores). PluginError when the class is not decorated."""
    options = getattr(cls, "__convlstm_spec__", None)
    if not isinstance(cls, type) or options is None:
        raise PluginError(f"{getattr(cls, '__name__', cls)!r} is not a class decorated with "
                          "@convlstm.models.register_model")
    return register(_plugin_spec(name, cls, options))


def _plugin_spec(name, cls, options) -> ModelSpec:
    parameters = inspect.signature(cls.__init__).parameters
    own = {}
    for key, parameter in list(parameters.items())[1:]:
        if key in COMMON_KEYS or key == "frame_shape" or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                            parameter.VAR_KEYWORD):
            continue
        given = options["fields"].get(key)
        if given is None and (parameter.default is parameter.empty
                              or type(parameter.default) not in (int, float, bool, str)):
            raise PluginError(f"--model {name}: {cls.__name__}.__init__'s {key} needs a default of type int, float, "
                              f"bool or str (it becomes the flag --{key}), or a Field in register_model(fields=...)")
        own[key] = given or Field(parameter.default, f"{cls.__name__}'s {key}")
    taken = [key for key in COMMON_KEYS + ("frame_shape",) if key in parameters]

    def build(config, frame_shape, backend):
        values = {key: config[key] for key in taken if key in config}
        if "backend" in taken:
            values["backend"] = backend
        if "frame_shape" in taken:
            values["frame_shape"] = tuple(frame_shape) if frame_shape is not None else \
                (config["in_chan"], config["image_size"], config["image_size"])
        return cls(**values, **{key: config.get(key, f.default) for key, f in own.items()})

    spec = dict(name=name, model_class=cls, build=build, summary=options["help"] or f"{cls.__name__} (a plug-in)",
                fields=own, weight_fields=tuple(key for key in taken + list(own)
                                                if key not in ("backend", "n_steps_past", "n_steps_ahead", "in_chan")),
                config_keys=tuple(key for key in taken if key not in ("backend", "frame_shape")),
                unused_parameters=options["unused_parameters"], plugin=True)
    if options["forecast"] is not None:
        spec["forecast"] = options["forecast"]
    if options["objective"] is not None:
        spec["objective"] = options["objective"]
    return ModelSpec(**spec)


def named_class(name):
    """The class of the --model evaluate.py or predict.py were given (a plug-in is imported here, as typed), or
    None when none was: what load_model checks the checkpoint's model against. ValueError (one line) otherwise."""
    return None if name is None else model_spec(name).model_class


def make_objective(cfg, frame_shape, rank: int):
    """The training objective of cfg.model (its spec's, else the MSE of its forecast); frame_shape (C, H, W)."""
    spec = get_spec(cfg.model)
    return ForecastMSE(spec.forecast, cfg) if spec.objective is None else spec.objective(cfg, frame_shape, rank)


def model_spec(name) -> ModelSpec:
    """The spec of a --model value as typed: a registered name, or a plug-in to import."""
    return load_plugin(name) if is_plugin_name(name) else get_spec(name)


def preset_spec(name) -> ModelSpec | None:
    """The registered model whose recipe --preset `name` is, or None."""
    return next((spec for spec in REGISTRY.values() if name in spec.presets), None)


# The package's models: a file each, registered here.
from . import openstl_convlstm, tutorial  # noqa: E402

register(tutorial.SPEC)
register(openstl_convlstm.SPEC)
