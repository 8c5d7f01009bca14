"""`python -m video_diffusion train|sample|eval ...`."""

from video_diffusion.cli import main

main()
