#!/usr/bin/env bash
# One-off device check (not part of CI): run the trainer tests on a CUDA machine whose image has torch.
# The device image lacks trl/datasets and has an older transformers: the HF stack travels as wheels in .whl/
# (pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl
#  transformers==5.24.0 trl==1.16.0 datasets==5.2.0 huggingface_hub==2.4.0 peft==0.21.2 accelerate==1.15.0
#  tokenizers==0.23.3 dill multiprocess httpx2 httpcore2 truststore idna); hf_unlearn is used from the tree.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, trl; print(torch.__version__, torch.cuda.get_device_name(0), transformers.__version__, trl.__version__)"
python3 - <<'PY'
import sys; sys.path.insert(0, "tests")
import torch
from conftest import build_tokenizer, trained_tiny, FORGET_TEXTS, RETAIN_TEXTS
import hf_unlearn as hu
tok = build_tokenizer()
for cls, cfg, kw in [(hu.NPOTrainer, hu.NPOConfig, {}), (hu.RMUTrainer, hu.RMUConfig, {"rmu_layer": 1}),
                     (hu.IdkDPOTrainer, hu.IdkDPOConfig, {}), (hu.UNDIALTrainer, hu.UNDIALConfig, {"retain_loss": "kl"})]:
    model = trained_tiny(tok)
    args = cfg(output_dir="/tmp/o", max_steps=3, per_device_train_batch_size=2, report_to="none", save_strategy="no",
               disable_tqdm=True, **kw)
    data = [{"prompt": "who ?", "chosen": " i don't know", "rejected": " harry potter"}] * 4 if cls is hu.IdkDPOTrainer else FORGET_TEXTS
    t = cls(model, args, train_dataset=data, retain_dataset=RETAIN_TEXTS, processing_class=tok)
    t.train()
    print(cls.__name__, "bf16", args.bf16, "device", next(t.model.parameters()).device, t.state.log_history[-1])
PY
[ "${GPU_CHECK_PYTEST:-1}" = 1 ] && python3 -m pytest -q -x -p no:cacheprovider tests/test_trainers.py tests/test_losses.py 2>&1 | tee $OUT/pytest.log | tail -25
