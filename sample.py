"""Sample videos from a checkpoint into GIFs: `python sample.py --checkpoint-path DIR ...`.

The same as `video-diffusion sample`; run with --help for every flag.
"""

from video_diffusion.cli import entry

if __name__ == '__main__':
  entry('sample', 'sample.py')
