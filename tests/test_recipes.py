"""Every shipped recipe validates and documents itself; every accelerate config parses as `accelerate launch` would.

Recipes are found the way `domaintune recipe ls/cp` finds them (`api.recipe_names`, package data),
so a recipe missing from the installed package fails here too. The accelerate configs are parsed
by accelerate's own launcher code: the config file class (unknown top-level keys are errors),
the launch argument parser (every nested key must be one of its options, since accelerate copies
them onto its arguments without checking), and the environment it hands to each process.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import yaml

from domaintune import api
from domaintune.config import load_recipe

NAMES = api.recipe_names()
# The recipes issue 3 promises; a rename or a missing package-data glob shows up here.
PROMISED = {"cpu_demo", "deepseek_llm_7b_lora", "deepseek_llm_7b_qlora", "r1_distill_qwen_1_5b_lora", "full",
            "freeze", "prefix", "adapter", "distill", "multi_gpu_lora"}
METHODS = {"deepseek_llm_7b_lora": "lora", "deepseek_llm_7b_qlora": "qlora", "r1_distill_qwen_1_5b_lora": "lora",
           "full": "full", "freeze": "freeze", "prefix": "prefix", "adapter": "adapter", "distill": "distill",
           "multi_gpu_lora": "lora"}
ACCELERATE_DIR = resources.files("domaintune") / "recipes" / "accelerate"
ACCELERATE = sorted(p.name.removesuffix(".yaml") for p in ACCELERATE_DIR.iterdir() if p.name.endswith(".yaml")) \
    if ACCELERATE_DIR.is_dir() else []


def shipped_text(name: str) -> str:
    return (resources.files("domaintune") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")


def header(text: str) -> str:
    """The comment block a recipe starts with."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_promised_recipes_ship():
    assert PROMISED <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates(name, tmp_path):
    path = api.copy_recipe(name, str(tmp_path))
    recipe = load_recipe(str(path))
    assert recipe.model.trust_remote_code is False
    assert path.read_text(encoding="utf-8") == shipped_text(name)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_recipe_uses_its_method(name, tmp_path):
    recipe = load_recipe(str(api.copy_recipe(name, str(tmp_path))))
    assert recipe.train.method.method == METHODS[name]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "cpu_demo"])
def test_recipe_header_says_what_hardware_and_how_to_run(name):
    head = header(shipped_text(name))
    assert head.count("\n") >= 5, "a recipe starts with a comment block"
    assert "Hardware:" in head
    assert f"domaintune recipe cp {name} ." in head
    launch = rf"(domaintune train|accelerate launch .* -m domaintune train) --config {name}\.yaml"
    assert re.search(launch, head), "the header gives the exact command that trains with this recipe"


@pytest.mark.parametrize("name", NAMES)
def test_recipe_trains_on_what_it_prepares(name, tmp_path):
    data = yaml.safe_load(shipped_text(name))
    if "train" not in data or not data.get("prepare", {}).get("inputs"):
        pytest.skip("no train section, or nothing to prepare")
    recipe = load_recipe(str(api.copy_recipe(name, str(tmp_path))))
    assert recipe.train.data_dir == recipe.prepare.output_dir


def test_r1_recipes_keep_the_reasoning_with_the_r1_template(tmp_path):
    for name in ("r1_distill_qwen_1_5b_lora", "distill"):
        recipe = load_recipe(str(api.copy_recipe(name, str(tmp_path))))
        assert recipe.model.template == "deepseek_r1"
        assert recipe.train.keep_reasoning is True


# ---- accelerate configs -------------------------------------------------------------------------

EXPECTED_ACCELERATE = {"deepspeed_zero2": ("DEEPSPEED", 2), "deepspeed_zero3": ("DEEPSPEED", 3),
                       "fsdp": ("FSDP", None)}


def launch_args(name: str):
    """Parse `accelerate launch --config_file NAME.yaml -m domaintune train --config r.yaml` as accelerate does."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(ACCELERATE_DIR / f"{name}.yaml"), "-m", "domaintune", "train", "--config", "r.yaml"]
    return _validate_launch_command(launch_command_parser().parse_args(argv))


def test_accelerate_configs_ship():
    assert set(ACCELERATE) == set(EXPECTED_ACCELERATE)


@pytest.mark.parametrize("name", sorted(EXPECTED_ACCELERATE))
def test_accelerate_config_loads_with_known_keys(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(ACCELERATE_DIR / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == EXPECTED_ACCELERATE[name][0]
    assert (config.num_machines, config.machine_rank, config.use_cpu) == (1, 0, False)
    assert config.num_processes >= 2
    options = {action.dest for action in launch_command_parser()._actions}
    nested = [*config.deepspeed_config, *(k if k.startswith("fsdp_") else f"fsdp_{k}" for k in config.fsdp_config)]
    assert nested, "the DeepSpeed or FSDP settings are in the file"
    assert [k for k in nested if k not in options] == []


@pytest.mark.parametrize("name", sorted(EXPECTED_ACCELERATE))
def test_accelerate_launch_runs_domaintune_train(name):
    args, _, _ = launch_args(name)
    kind, stage = EXPECTED_ACCELERATE[name]
    assert (args.use_deepspeed, args.use_fsdp) == (kind == "DEEPSPEED", kind == "FSDP")
    assert args.module and args.training_script == "domaintune"
    assert args.training_script_args == ["train", "--config", "r.yaml"]
    assert args.mixed_precision == "bf16"
    if stage is not None:
        assert args.zero_stage == stage


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_environment(name):
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, _ = launch_args(name)
    # `accelerate launch` sets this itself before building the environment (commands/launch.py).
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(EXPECTED_ACCELERATE[name][1])
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "1"  # domaintune accumulates itself
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"


def test_fsdp_plugin_from_the_launch_environment(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = launch_args("fsdp")
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what each process builds from that environment
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading is True


@pytest.mark.parametrize("name", sorted(EXPECTED_ACCELERATE))
def test_accelerate_header_gives_the_command_and_says_not_run(name):
    head = header((ACCELERATE_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    assert f"accelerate launch --config_file recipes/accelerate/{name}.yaml -m domaintune train --config" in head
    assert "NOT run" in head
