"""DistributedDataParallel: two processes (gloo, CPU), each on half of the
global batch, train Quantum-PEFT adapters to the same values as one process
on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")

WORKER = Path(ddp_worker.__file__)


def test_two_process_ddp_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    output = tmp_path / "ddp.safetensors"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKER), str(output)],
        capture_output=True, text=True, timeout=300, env=environment,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    distributed = load_file(output)

    model = ddp_worker.build_model()
    initial = ddp_worker.adapter_tensors(model)
    ddp_worker.train(model, model.config.vocab_size)
    single = ddp_worker.adapter_tensors(model)

    assert set(distributed) == set(single)
    assert any("qpeft_theta" in name for name in single)
    for name, value in single.items():
        assert not torch.equal(value, initial[name]), f"{name} did not move in training"
        torch.testing.assert_close(distributed[name], value, rtol=0, atol=1e-10, msg=name)
