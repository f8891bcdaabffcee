"""Worker of ``test_ddp.py``: trains Quantum-PEFT adapters of a tiny BERT for a
few steps, either in one process on the whole batch or under
DistributedDataParallel (gloo, CPU) on this rank's share of it, and writes the
trained adapter tensors of rank 0 to a safetensors file.

Run by the test as ``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/ddp_worker.py OUT``; the test trains the
one-process case itself with the same functions.
Nothing here runs on import.
"""

from __future__ import annotations

import gc
import os
import sys

GLOBAL_BATCH = 8
STEPS = 3
LENGTH = 12
TARGETS = ["query", "key", "value", "attention.output.dense"]


def build_model():
    """The same tiny BERT with the same adapters in every process (float64)."""
    import torch
    from transformers import BertForSequenceClassification

    import qpeft
    from qpeft.train.testing import tiny_bert_config

    torch.manual_seed(0)
    base = BertForSequenceClassification(
        tiny_bert_config(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    )
    config = qpeft.QPeftConfig(target_modules=TARGETS, rank=4, layers=2,
                               modules_to_save=["classifier"])
    return qpeft.get_qpeft_model(base, config).double()


def batch(vocab_size: int):
    """The global batch: token ids and labels, identical in every process."""
    import torch

    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab_size, (STEPS, GLOBAL_BATCH, LENGTH), generator=generator)
    labels = torch.randint(0, 3, (STEPS, GLOBAL_BATCH), generator=generator)
    return ids, labels


def train(model, vocab_size: int, rank: int = 0, world: int = 1):
    """``STEPS`` Adam steps; each process sees its contiguous share of the global batch."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    ids, labels = batch(vocab_size)
    share = GLOBAL_BATCH // world
    model.train()
    for step in range(STEPS):
        rows = slice(rank * share, (rank + 1) * share)
        loss = model(input_ids=ids[step, rows], labels=labels[step, rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def adapter_tensors(model) -> dict:
    return {name: p.detach().clone().contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


def main(argv: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    output = argv[0]
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    wrapped = DistributedDataParallel(model)
    train(wrapped, model.config.vocab_size, rank, world)
    if rank == 0:
        save_file(adapter_tensors(model), output)
    dist.barrier()
    # Release the reducer (it holds gloo work objects) while the interpreter
    # is fully alive, then leave without interpreter finalization: gloo's
    # worker threads may otherwise still be joinable when the C++ runtime
    # tears down, and the process aborts ("terminate called without an
    # active exception") after its work is done.
    del wrapped
    gc.collect()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
