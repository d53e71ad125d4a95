"""Our DeepCache against the DeepCache package itself: every interval and package branch id,
on a UNet with SD's three layers per down block and on one with two (micro), bit for bit."""

import pytest
import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.patches.deepcache import package_config
from accelerate_diffusion.testing import call_kwargs, make_pipeline

DeepCache = pytest.importorskip("DeepCache")

STEPS = 5


def _sd_layers_unet():
    """Micro SD UNet with SD's own down-block layout: 2 resnets (+ attention) and a downsampler."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4, attention_head_dim=4,
        sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


@pytest.mark.parametrize("layout", ["sd_layers", "micro"])
def test_every_interval_and_branch_matches_the_package(layout):
    pipe = make_pipeline("sd")
    if layout == "sd_layers":
        pipe.unet = _sd_layers_unet()
    ids = range(3 * len(pipe.unet.down_blocks) - 1)        # the last down block has no downsampler
    mismatched = []
    for interval in (2, 3):
        for branch_id in ids:
            helper = DeepCache.DeepCacheSDHelper(pipe=pipe)
            helper.set_params(cache_interval=interval, cache_branch_id=branch_id)
            helper.enable()
            try:
                theirs = pipe(**call_kwargs("sd", steps=STEPS)).images
            finally:
                helper.disable()
            accelerate(pipe, "off", deepcache=package_config(pipe.unet, interval, branch_id))
            ours = pipe(**call_kwargs("sd", steps=STEPS)).images
            pipe.acceleration.remove()
            if not torch.equal(theirs, ours):
                mismatched.append((interval, branch_id))
    assert mismatched == []
    if layout == "sd_layers":      # three layers per down block: the numbering is the package's
        assert all(package_config(pipe.unet, 2, b).cache_branch == b for b in ids)
