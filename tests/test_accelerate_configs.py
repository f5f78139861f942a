"""The accelerate configs in examples/accelerate/, checked by a dry run.

FSDP cannot run in this suite: accelerate turns it on only for accelerator devices (GPU, XPU, NPU, ...), never for
CPU processes (a 2-process gloo launch with an FSDP config trains as plain multi-CPU data parallel), so the
distributed test covers DDP and these tests check what the launcher would do with each config: accelerate's own
launcher parses it, and the FSDP one builds its plugin and wrap policy for a real model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import tiny_gpt2, tiny_llama

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"


def launch_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(CONFIGS / name), "train.py"]))
    return args


@pytest.mark.parametrize("build, layer", [(tiny_llama, "LlamaDecoderLayer"), (tiny_gpt2, "GPT2Block")])
def test_fsdp_config_builds_fsdp2_with_one_unit_per_decoder_layer(build, layer, tokenizer, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    args = launch_args("fsdp.yaml")
    assert args.use_fsdp and not args.use_deepspeed
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    # A full state dict makes save_model write an ordinary checkpoint; efficient loading would broadcast rank 0's
    # weights into the trained model only, never into the reference copy.
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT and not plugin.cpu_ram_efficient_loading
    plugin.set_auto_wrap_policy(build(tokenizer))
    wrapped = {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}
    assert wrapped == {layer}


def test_deepspeed_config_is_zero3_saving_a_16_bit_model():
    args = launch_args("deepspeed_zero3.yaml")
    assert args.use_deepspeed and not args.use_fsdp
    assert (args.zero_stage, args.zero3_init_flag, args.zero3_save_16bit_model) == (3, True, True)
    # Must match the trainer config's, as the file says.
    assert args.gradient_accumulation_steps == 1 and args.mixed_precision == "bf16"


def test_multi_gpu_config_is_plain_ddp():
    args = launch_args("multi_gpu.yaml")
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
