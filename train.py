"""Train a video diffusion model: `python train.py --config configs/config.yaml`.

The same as `video-diffusion train`; run with --help for every flag.
"""

from video_diffusion.cli import entry

if __name__ == '__main__':
  entry('train', 'train.py')
