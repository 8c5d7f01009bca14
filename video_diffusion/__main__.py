"""`python -m video_diffusion train|sample ...`."""

from video_diffusion.cli import main

main()
