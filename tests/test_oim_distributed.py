"""Two CPU processes (gloo): OIM tables stay identical on every rank and contain every rank's features."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return F.normalize(torch.rand(3, 4, generator=g) + 0.1, dim=1)


def _worker(rank, world_size, port, out_dir):
    import person_search  # noqa: F401
    from person_search.modeling import OIMLoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        oim = OIMLoss(embed_dim=4, num_labeled=4, queue_size=5, momentum=0.5, scalar=10.0)
        # rank 0: labeled 0, 1 and one unlabeled; rank 1: labeled 1, 2 and one unlabeled
        pids = torch.tensor([[0, 1, -1], [1, 2, -1]][rank])
        projection = torch.nn.Linear(4, 4, bias=False)  # identity: the embedding equals the input features
        with torch.no_grad():
            projection.weight.copy_(torch.eye(4))
        model = torch.nn.parallel.DistributedDataParallel(projection)
        loss = oim(F.normalize(model(_features(rank)), dim=1), pids)
        loss.backward()
        torch.save({k: v.clone() for k, v in oim.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_keeps_tables_identical(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for name in ("lut", "queue", "queue_ptr"):
        assert torch.equal(s0[name], s1[name]), name
    f0, f1 = _features(0), _features(1)
    # the queue holds rank 0's unlabeled feature, then rank 1's
    assert torch.allclose(s0["queue"][0], f0[2]) and torch.allclose(s0["queue"][1], f1[2])
    assert int(s0["queue_ptr"]) == 2
    # pid 1 was seen on both ranks: updated with rank 0's feature first, then rank 1's
    row = F.normalize(0.5 * f0[1], dim=0)
    row = F.normalize(0.5 * row + 0.5 * f1[0], dim=0)
    assert torch.allclose(s0["lut"][1], row, atol=1e-6)
    assert torch.allclose(s0["lut"][0], f0[0], atol=1e-6) and torch.allclose(s0["lut"][2], f1[1], atol=1e-6)
    assert s0["lut"][3].abs().sum() == 0
