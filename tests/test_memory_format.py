"""MODEL.CHANNELS_LAST: channels-last weights from the trainer's build_model, same results, checkpoints either way."""
import torch

from conftest import tiny_cfg
from person_search.engine import PersonSearchTrainer


def _build(channels_last):
    torch.manual_seed(0)
    return PersonSearchTrainer.build_model(
        tiny_cfg("MODEL.CHANNELS_LAST", channels_last, "MODEL.RESNETS.NORM", "BN", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    ).eval()


def _conv_weights(model):
    return {name: p for name, p in model.named_parameters() if p.dim() == 4 and p.shape[-1] > 1}


def test_channels_last_model_matches_the_default_one():
    default, channels_last = _build(False), _build(True)
    assert _conv_weights(default) and all(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in _conv_weights(channels_last).values()
    )
    # same values: a checkpoint of either loads into the other
    default.load_state_dict(channels_last.state_dict())
    assert all(p.is_contiguous() for p in _conv_weights(default).values())
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        (a,), (b,) = default([{"image": image}]), channels_last([{"image": image}])
    a, b = a["instances"], b["instances"]
    assert len(a) == len(b) > 0
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(a.pred_embeddings, b.pred_embeddings, atol=1e-4)
