"""`video-diffusion eval-vae` on an untrained tiny VAE: it prints PSNR, SSIM and the
reconstruction FVD, and writes the same numbers to --output."""

import json

import numpy as np
import pytest
from test_vae_commands import GOOD, save_checkpoint

from video_diffusion import cli
from video_diffusion.config import config_from_dict
from video_diffusion.eval.reconstruction import HeldOutReconstructions
from video_diffusion.vae import load_vae

# I3D (its forward pass is slow unoptimised: tests/conftest.py); left out of `make test-fast`
pytestmark = [pytest.mark.slow, pytest.mark.optimized]


def test_eval_vae_prints_psnr_ssim_and_fvd(tmp_path, capsys):
  cfg = config_from_dict({**GOOD, 'trainer': {**GOOD['trainer'], 'seed': 3}})
  save_checkpoint(tmp_path / 'checkpoints', cfg)
  output = tmp_path / 'eval' / 'result.json'
  argv = ['eval-vae', '--checkpoint-path', str(tmp_path / 'checkpoints'), '--num-videos', '3']
  cli.main(argv + ['--batch-size', '2', '--seed', '1', '--output', str(output)])
  line = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(output.read_text())
  assert line == (
    f'PSNR {result["psnr"]:.2f} dB, SSIM {result["ssim"]:.4f}, reconstruction FVD '
    f'{result["fvd"]:.2f} on 3 held-out clips: step 0, raw weights'
  )
  assert np.isfinite(result['fvd']) and result['fvd'] >= 0
  assert -1 <= result['ssim'] <= 1 and result['psnr'] > 0
  assert 'past the training indices' in result['real_videos']  # synthetic digits held out
  # the same clips (seed 1) and weights, one batch at a time: the same scores
  scores, _ = HeldOutReconstructions(cfg, 3, seed=1)(load_vae(tmp_path / 'checkpoints'))
  assert scores['psnr'] == pytest.approx(result['psnr'], rel=1e-5)
  assert scores['ssim'] == pytest.approx(result['ssim'], rel=1e-4, abs=1e-6)
