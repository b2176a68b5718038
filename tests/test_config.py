"""Composition of every option of every config group, and refusal of bad values."""
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from rpe_bench import config, pos
from rpe_bench.config import ConfigError, register_configs, validate
from tests.helpers import CONF_DIR, compose_config

GROUPS = ["dataset", "model", "pos", "sparsity", "trainer", "logger", "variant", "experiment"]


def options(group: str) -> list[str]:
    """A group's options: its YAML files, and for `variant` the pairs generated from the pos and sparsity
    configs (rpe_bench.config.register_variants)."""
    if group == "variant":
        register_configs()
        return sorted(name.removesuffix(".yaml") for name in ConfigStore.instance().list("variant"))
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def test_variants_pair_every_encoding_with_its_sparsity_levels():
    variants = options("variant")
    encodings = options("pos")
    sparse = [name for name in encodings
              if "f" in (OmegaConf.load(CONF_DIR / "pos" / f"{name}.yaml").get("options") or {})]
    assert sparse == ["cayley_sparse"]
    assert {name for name in encodings if name not in sparse} <= set(variants)
    assert {"cayley_sparse_f1.0", "cayley_sparse_f0.5", "cayley_sparse_f0.3", "cayley_sparse_f0.2",
            "cayley_sparse_f0.1"} <= set(variants)
    cfg = compose_config("variant=cayley_sparse_f0.2")
    assert (cfg.pos.name, cfg.sparsity.f, cfg.pos.options.f) == ("cayley_sparse", 0.2, 0.2)
    assert compose_config("variant=liere").pos.name == "liere"


def test_default_config_is_the_reference_notebook_first_cell():
    cfg = compose_config()
    validate(cfg)
    assert (cfg.dataset.name, cfg.pos.name, cfg.seed) == ("mnist", "rope", 42)
    assert (cfg.model.emb_dim, cfg.model.depth, cfg.model.num_heads, cfg.model.patch_size) == (128, 4, 4, 7)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.lr, cfg.trainer.weight_decay) == (
        128, 2, 3e-4, 0.01)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes_and_validates(group, option):
    cfg = compose_config(f"{group}={option}")
    if group in ("dataset", "pos"):
        assert cfg[group].name == option
    validate(cfg)


def test_sparsity_options_set_f_and_reach_cayley_sparse():
    assert compose_config("sparsity=dense").sparsity.f == 1.0
    for value in ("0.5", "0.3", "0.2", "0.1"):
        cfg = compose_config("pos=cayley_sparse", f"sparsity=f{value}")
        assert cfg.pos.options.f == float(value)
    assert compose_config("pos=cayley_sparse", "sparsity.f=0.25").pos.options.f == 0.25


def test_patch_size_defaults_to_the_dataset_and_can_be_overridden():
    assert compose_config("dataset=cifar10").model.patch_size == 4
    assert compose_config("dataset=cifar10", "model.patch_size=8").model.patch_size == 8


@pytest.mark.parametrize("override,error", [
    ("trainer.epochs=two", ValidationError),
    ("model.emb_dim=1.5", ValidationError),
    ("trainer.unknown_key=1", ConfigCompositionException),
    ("pos=not_an_encoding", ConfigCompositionException),
    ("dataset=imagenet", ConfigCompositionException),
    ("trainer.device=tpu", ValidationError),
    ("trainer.precision=fp8", ValidationError),
])
def test_hydra_refuses_bad_types_keys_and_options(override, error):
    with pytest.raises((error, ConfigCompositionException, ConfigKeyError)):
        compose_config(override)


@pytest.mark.parametrize("overrides,named", [
    (["pos=cayley_sparse", "sparsity.f=0"], "sparsity.f=0"),
    (["pos=cayley_sparse", "sparsity.f=1.5"], "sparsity.f=1.5"),
    (["model.patch_size=5"], "patch size 5"),
    (["model.emb_dim=130"], "emb_dim=130"),
    (["model.emb_dim=126", "model.num_heads=2"], "63"),  # head dim 63 is odd: its channels do not pair
    (["trainer.lr=0"], "trainer.lr=0"),
    (["trainer.epochs=0"], "trainer.epochs=0"),
    (["trainer.batch_size=0"], "trainer.batch_size=0"),
    (["pos=reflection", "pos.options.k=0"], "k=0"),
    (["trainer.limit_extrapolation_batches=0"], "trainer.limit_extrapolation_batches=0"),
    (["pos.coordinate_augmentation.jitter=0.5"], "pos.coordinate_augmentation.jitter=0.5"),
    (["pos.coordinate_augmentation.shift=-0.1"], "pos.coordinate_augmentation.shift=-0.1"),
    # Encoding options are typed by their constructors' annotations.
    (["pos.options.rope_base=abc"], "rope_base='abc'"),
    (["pos=reflection", "pos.options.k=2.5"], "k=2.5"),
    (["pos=reflection", "pos.options.k=true"], "k=True"),
])
def test_out_of_range_values_are_refused_with_one_line(overrides, named):
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    message = str(refused.value)
    assert named in message and "\n" not in message


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def train_into(run_dir: Path, override: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpe_bench.train", override, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])


@pytest.mark.parametrize("override,named", [
    ("model.emb_dim=130", "emb_dim=130"), ("pos.options.rope_base=abc", "rope_base='abc'"),
    ("trainer.lr=-1", "trainer.lr=-1"),
    pytest.param("trainer.device=cuda", "trainer.device=cuda", marks=NO_CUDA)])
def test_command_line_refusal_exits_non_zero_and_writes_nothing(tmp_path, override, named):
    run_dir = tmp_path / "run"
    completed = train_into(run_dir, override)
    assert completed.returncode == 2
    assert named in completed.stderr and len(completed.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override,named", [("pos=rope2d", "pos/rope2d"), ("trainer.lr=fast", "trainer.lr"),
                                             ("trainer.learning_rate=0.1", "trainer.learning_rate")])
def test_hydras_own_refusals_name_the_value_and_write_nothing(tmp_path, override, named):
    """Unknown options, keys and types are Hydra's to refuse, at composition: before any folder exists."""
    completed = train_into(tmp_path / "run", override)
    assert completed.returncode == 1
    assert named in completed.stderr and "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == []


# ---- where a default lives (docs/design.md) ------------------------------------------------------------------

@pytest.mark.parametrize("group, schema", [("trainer", "TrainerConfig"), ("logger", "LoggerConfig")])
def test_a_settings_yaml_never_repeats_its_dataclass_default(group, schema):
    """Framework settings: the dataclass holds the default; a YAML of the group holds only what it changes."""
    defaults = {item.name: item.default for item in dataclasses.fields(getattr(config, schema))
                if item.default is not dataclasses.MISSING}
    for path in (CONF_DIR / group).glob("*.yaml"):
        written = OmegaConf.to_container(OmegaConf.load(path)) or {}
        repeated = {key for key, value in written.items()
                    if key in defaults and str(getattr(defaults[key], "value", defaults[key])) == str(value)}
        assert not repeated, f"{path.name} repeats the defaults of {sorted(repeated)}"
    top_level = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))
    assert "seed" not in top_level  # RunConfig.seed holds it


@pytest.mark.parametrize("name", [path.stem for path in (CONF_DIR / "pos").glob("*.yaml")])
def test_an_encoding_option_its_yaml_sets_has_no_constructor_default(name):
    """Encoding options: conf/pos/<name>.yaml holds the default of every option it sets; `pos.build` fills them."""
    signature = inspect.signature(pos.encoding_type(name)).parameters
    configured = pos.configured_defaults(name)
    doubled = [option for option in configured if signature[option].default is not inspect.Parameter.empty]
    assert not doubled, f"{name}: {doubled} have defaults in the constructor and in conf/pos/{name}.yaml"


def test_the_design_docs_module_map_names_every_module_and_only_those():
    design = (CONF_DIR.parent / "docs" / "design.md").read_text()
    module_map = design.split("```\n", 2)[1]
    listed = set(re.findall(r"^  (\w+\.py|pos/)", module_map, re.MULTILINE))
    modules = {path.name for path in (CONF_DIR.parent / "rpe_bench").glob("*.py") if path.name != "__init__.py"}
    assert listed == modules | {"pos/"}
