import math

import pytest
import torch
import torch.nn.functional as F

from person_search.modeling import OIMLoss, SoftmaxIdentityLoss, build_identity_loss


def make_oim(**kwargs):
    args = dict(embed_dim=2, num_labeled=2, queue_size=2, momentum=0.5, scalar=10.0)
    args.update(kwargs)
    return OIMLoss(**args)


def test_oim_loss_matches_hand_computation():
    oim = make_oim()
    oim.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    oim.queue.copy_(torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    f = torch.tensor([[0.6, 0.8]], requires_grad=True)
    loss = oim(f, torch.tensor([0]))
    # logits = 10 * [f.lut0, f.lut1, f.queue0, f.queue1] = [6, 8, 10, 0]; target column 0
    expected = -math.log(math.exp(6) / (math.exp(6) + math.exp(8) + math.exp(10) + math.exp(0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    assert not oim.lut.requires_grad and not oim.queue.requires_grad


def test_oim_logits_layout():
    oim = make_oim(queue_size=3)
    oim.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    oim.queue[1] = torch.tensor([1.0, 0.0])
    logits = oim.logits(torch.tensor([[1.0, 0.0]]))
    assert logits.tolist() == [[10.0, 0.0, 0.0, 10.0, 0.0]]


def test_lut_momentum_update_and_renormalisation():
    oim = make_oim()
    oim.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    oim(torch.tensor([[0.6, 0.8]]), torch.tensor([0]))
    # 0.5 * [1, 0] + 0.5 * [0.6, 0.8] = [0.8, 0.4], divided by its norm sqrt(0.8)
    norm = math.sqrt(0.8)
    assert oim.lut[0].tolist() == pytest.approx([0.8 / norm, 0.4 / norm], rel=1e-6)
    assert oim.lut[1].tolist() == [0.0, 1.0]  # untouched
    assert oim.queue.abs().sum() == 0 and int(oim.queue_ptr) == 0  # nothing unlabeled


def test_repeated_identity_is_updated_sequentially():
    oim = make_oim(momentum=0.3)
    oim.lut[0] = torch.tensor([1.0, 0.0])
    f1, f2 = F.normalize(torch.tensor([[0.2, 1.0], [1.0, 1.0]]), dim=1)
    oim(torch.stack([f1, f2]), torch.tensor([0, 0]))
    row = F.normalize(0.3 * torch.tensor([1.0, 0.0]) + 0.7 * f1, dim=0)
    row = F.normalize(0.3 * row + 0.7 * f2, dim=0)
    assert torch.allclose(oim.lut[0], row, atol=1e-6)


def test_queue_wraps_around():
    oim = make_oim(queue_size=3)
    feats = F.normalize(torch.arange(1.0, 11.0).view(5, 2), dim=1)
    oim(feats[:2], torch.tensor([-1, -1]))  # slots 0, 1
    assert int(oim.queue_ptr) == 2
    oim(feats[2:4], torch.tensor([-1, -1]))  # slots 2, 0
    assert int(oim.queue_ptr) == 1
    assert torch.equal(oim.queue, torch.stack([feats[3], feats[1], feats[2]]))


def test_queue_overflow_keeps_newest_in_their_slots():
    oim = make_oim(queue_size=3)
    feats = F.normalize(torch.rand(5, 2) + 0.1, dim=1)
    oim(feats, torch.full((5,), -1))
    # written one by one into slots 0,1,2,0,1: slot0 = f3, slot1 = f4, slot2 = f2; pointer at 5 % 3
    assert torch.equal(oim.queue, torch.stack([feats[3], feats[4], feats[2]]))
    assert int(oim.queue_ptr) == 2


def test_labeled_features_are_not_enqueued_and_unlabeled_do_not_touch_lut():
    oim = make_oim(queue_size=2)
    feats = F.normalize(torch.tensor([[1.0, 2.0], [3.0, 1.0]]), dim=1)
    oim(feats, torch.tensor([1, -1]))
    assert torch.allclose(oim.lut[1], feats[0]) and oim.lut[0].abs().sum() == 0
    assert torch.equal(oim.queue[0], feats[1]) and int(oim.queue_ptr) == 1


@pytest.mark.parametrize("pids", [[-1, -1], []])
def test_unlabeled_only_and_empty_batches_give_zero_loss_not_nan(pids):
    oim = make_oim()
    feats = F.normalize(torch.rand(len(pids), 2), dim=1).requires_grad_()
    loss = oim(feats, torch.tensor(pids, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    softmax = SoftmaxIdentityLoss(embed_dim=2, num_classes=2)
    assert softmax(feats.detach(), torch.tensor(pids, dtype=torch.long)).item() == 0.0


def test_no_update_in_eval_mode():
    oim = make_oim().eval()
    oim(F.normalize(torch.rand(2, 2), dim=1), torch.tensor([0, -1]))
    assert oim.lut.abs().sum() == 0 and oim.queue.abs().sum() == 0


def test_state_dict_round_trip():
    oim = make_oim(queue_size=3)
    oim(F.normalize(torch.rand(4, 2), dim=1), torch.tensor([0, 1, -1, -1]))
    state = oim.state_dict()
    assert set(state) == {"lut", "queue", "queue_ptr"}
    restored = make_oim(queue_size=3)
    restored.load_state_dict(state)
    for name in ("lut", "queue", "queue_ptr"):
        assert torch.equal(getattr(restored, name), getattr(oim, name))


def test_invalid_pids_are_rejected_with_a_clear_error():
    oim = make_oim()
    with pytest.raises(ValueError, match="NUM_LABELED"):
        oim(torch.rand(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        oim(torch.rand(2, 2), torch.tensor([0]))


def test_invalid_sizes_are_rejected_at_construction():
    with pytest.raises(ValueError, match="OIMLoss: need embed_dim > 0"):
        OIMLoss(embed_dim=0, num_labeled=4, queue_size=2)
    with pytest.raises(ValueError, match="SoftmaxIdentityLoss: need embed_dim > 0 and num_classes > 0"):
        SoftmaxIdentityLoss(embed_dim=8, num_classes=0)


def test_softmax_loss_ignores_unlabeled():
    softmax = SoftmaxIdentityLoss(embed_dim=2, num_classes=3)
    feats = F.normalize(torch.rand(3, 2), dim=1)
    loss = softmax(feats, torch.tensor([2, -1, 0]))
    expected = F.cross_entropy(softmax.classifier(feats[[0, 2]]), torch.tensor([2, 0]))
    assert loss.item() == pytest.approx(expected.item())


def test_build_identity_loss_from_config(cfg_factory):
    oim = build_identity_loss(cfg_factory("MODEL.REID.OIM.QUEUE_SIZE", 0))
    assert isinstance(oim, OIMLoss) and oim.queue.shape == (0, 32) and oim.lut.shape == (8, 32)
    oim(F.normalize(torch.rand(2, 32), dim=1), torch.tensor([1, -1]))  # queue disabled: nothing to write
    softmax = build_identity_loss(cfg_factory("MODEL.REID.LOSS", "Softmax"))
    assert isinstance(softmax, SoftmaxIdentityLoss) and softmax.classifier.out_features == 8
