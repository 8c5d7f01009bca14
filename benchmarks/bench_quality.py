"""Time to quality: which backbone and objective reach the best FVD in a fixed CPU budget.

  python benchmarks/bench_quality.py [--minutes 20] [--variants unet_v,unet_flow,dit_flow,dit_v]
                                     [--num-videos 256] [--points 3] [--output results/quality]
                                     [--seed 0] [--samplers heun-20,ddim-50] [--eval-only]
                                     [--vae PATH]

Each variant is a demo config (configs/demo_unet3d.yaml, the Unet3D with v and
min-SNR, or configs/demo_dit.yaml, the DiT with flow matching; synthetic moving
digits) with at most its objective changed; unet_flow is the demo,
configs/config.yaml. The variants px64_unet_flow, latent_dit_flow,
latent_unet_flow and latent_dit_flow_cached (not run unless named) train on
64 x 64, 17-frame clips: the demo Unet3D in pixels, and the demo DiT and
Unet3D with flow matching on the latents of --vae (a train-vae checkpoint
folder, e.g. of configs/vae_digits.yaml; its own training minutes are not in
the budget), encoded on the fly or, for the _cached one, read from `prepare
--vae` shards of the first 4096 clips (made once before its run, their minutes
printed and not in the budget). One after the other, each trains with train.py in a
subprocess for --minutes of wall-clock time from its start (compilation
included), checkpointing every --checkpoint-every steps, and is then stopped by
SIGTERM (as a scheduler preempts a run: the step in flight finishes and is
checkpointed). Afterwards, in this
process (so I3D and the real videos' features are computed once):

- the FVD curve: the EMA weights of --points checkpoints spread over the
  budget, 64 videos each with the variant's first sampler (FVD against
  minutes, written to fvd_vs_minutes.png);
- the final FVD: the last checkpoint with each sampler of the variant on 64
  videos, then the best of them on --num-videos videos (the table's FVD),
  with the real-vs-real floor of the same number of held-out videos.

Prints a Markdown table (variant, steps done, s/step, params, FVD, sampler,
real-vs-real) and writes it, the curve and every number to --output.

--seed N (weights, data order and noise) trains into <variant>-seed<N> beside
the seed-0 runs, sharing the real videos' features. --samplers keeps only the
listed samplers of each variant (with one left, its 64-video trial is
skipped), and --points 0 draws no curve: a repeat of the final figures alone.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import video_diffusion

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLOW = ['diffusion.objective=flow', 'diffusion.loss_weighting=none']
FLOW += ['diffusion.time_sampling=logit_normal']
V = ['diffusion.objective=v', 'diffusion.loss_weighting=min_snr', 'diffusion.time_sampling=uniform']
# The 64 x 64, 17-frame variants: pixel space, or the latents of --vae (VAE_KEY's value).
PIXELS_64 = ['diffusion.image_size=64', 'diffusion.num_frames=17']
VAE_KEY = 'diffusion.vae'
LATENT = [*PIXELS_64, f'{VAE_KEY}=']
# A variant on cached latents trains on CACHED_CLIPS synthetic clips (indices 0..N-1, as
# the on-the-fly variants draw them) packed once by `prepare --vae` into CACHE_KEY's folder.
CACHE_KEY = 'trainer.dataset_path'
CACHED_CLIPS = 4096
# name -> (config in configs/, its overrides, samplers tried as (name, steps)); the
# first sampler draws the curve. demo_unet3d.yaml is the Unet3D with v and min-SNR,
# demo_dit.yaml the DiT with flow; both train the same data, batch, lr and EMA. The demo,
# config.yaml, is unet_flow (tests/config/test_config.py holds them equal).
VARIANTS = {
  'unet_v': ('demo_unet3d.yaml', [], [('dpmpp', 20), ('ddim', 50)]),
  'unet_flow': ('demo_unet3d.yaml', FLOW, [('euler', 50), ('heun', 20)]),
  'dit_flow': ('demo_dit.yaml', [], [('euler', 50), ('heun', 20)]),
  'dit_v': ('demo_dit.yaml', V, [('dpmpp', 20), ('ddim', 50)]),
  # 64 x 64: the demo Unet3D in pixels at half the batch (a step of 8 took 4 s), against
  # the demo DiT (one latent pixel a token: 5 x 8 x 8 tokens) and Unet3D on latents
  'px64_unet_flow': ('config.yaml', [*PIXELS_64, 'trainer.train_batch_size=4'], [('euler', 20)]),
  'latent_dit_flow': ('demo_dit.yaml', [*LATENT, 'dit.patch_size=1'], [('euler', 20)]),
  'latent_unet_flow': ('demo_unet3d.yaml', [*LATENT, *FLOW], [('euler', 20)]),
  'latent_dit_flow_cached': (
    'demo_dit.yaml',
    [*LATENT, 'dit.patch_size=1', f'{CACHE_KEY}='],
    [('euler', 20)],
  ),
}
DEFAULT_VARIANTS = 'unet_v,unet_flow,dit_flow,dit_v'
CURVE_VIDEOS = 64  # the training-time FVD's default size (trainer.eval_num_videos)
BATCH = 32


def run_name(name: str, seed: int) -> str:
  """The folder of a variant's run under --output: the variant, with its seed unless 0."""
  return name if seed == 0 else f'{name}-seed{seed}'


def overrides_of(name: str, vae: str | None, cache: pathlib.Path | None = None) -> list[str]:
  """The variant's overrides, its autoencoder's path and its cached latents' folder
  (under `cache`) filled in; an error without --vae where one is needed."""
  overrides = VARIANTS[name][1]
  if f'{VAE_KEY}=' not in overrides:
    return overrides
  if not vae:
    sys.exit(f'error: {name} trains on latents: give --vae PATH (a train-vae checkpoint folder)')
  fill = {f'{VAE_KEY}=': f'{VAE_KEY}={vae}', f'{CACHE_KEY}=': f'{CACHE_KEY}={cache}'}
  return [fill.get(o, o) for o in overrides]


def cached_latents(out: pathlib.Path, vae: str) -> tuple[pathlib.Path, float]:
  """(folder, minutes): `prepare --vae` shards of the first CACHED_CLIPS synthetic
  64 x 64 clips under `out`, made once (the minutes it took are kept beside them)."""
  folder, timing = out / 'cached-latents', out / 'cached-latents-minutes.txt'
  if timing.exists():
    return folder, float(timing.read_text())
  import numpy as np

  from video_diffusion.data.synthetic import moving_digits

  started = time.time()
  clips = np.stack(
    [
      moving_digits(0, i, num_frames=17, image_size=64, channels=1)['video']
      for i in range(CACHED_CLIPS)
    ]
  )
  np.save(out / 'cached-clips.npy', clips)  # (clips, frames, h, w, channels)
  argv = ['prepare', str(out / 'cached-clips.npy'), str(folder), '--num-frames', '17']
  argv += ['--image-size', '64', '--channels', '1', '--vae', vae]
  subprocess.run([sys.executable, '-m', 'video_diffusion', *argv], cwd=ROOT, check=True)
  minutes = (time.time() - started) / 60
  timing.write_text(f'{minutes:.2f}')
  return folder, minutes


def train_for(name: str, minutes: float, out: pathlib.Path, every: int, seed: int, vae=None):
  """Runs train.py on the variant's config for `minutes`, then SIGTERM."""
  cache = None
  if f'{CACHE_KEY}=' in VARIANTS[name][1]:
    cache, prepared = cached_latents(out, vae)
    print(f'{name}: latents of {CACHED_CLIPS} clips cached in {prepared:.1f} min', flush=True)
  base, overrides = VARIANTS[name][0], overrides_of(name, vae, cache)
  train_run(out / run_name(name, seed), base, overrides, minutes, every, seed)


def train_run(
  folder: pathlib.Path, base: str, overrides: list[str], minutes: float, every: int, seed: int
) -> None:
  """Trains configs/`base` with `overrides` into `folder` (made here) for `minutes`
  of wall clock from the start, checkpointing every `every` steps, then SIGTERM."""
  from video_diffusion.config import dump_config, load_config

  cfg = load_config(
    ROOT / 'configs' / base,
    overrides
    + [
      f'trainer.results_folder={folder}',
      'trainer.train_num_steps=10000000',
      f'trainer.checkpoint_every_steps={every}',
      'trainer.max_to_keep=null',
      'trainer.save_and_sample_every=100000000',
      'trainer.tensorboard_dir=null',
      'trainer.resume_training_step=0',
      f'trainer.seed={seed}',
      f'unet.rngs_seed={seed}',
    ],
  )
  folder.mkdir(parents=True, exist_ok=False)
  dump_config(cfg, folder / 'config.yaml')  # its time stamp is the run's start
  proc = subprocess.Popen(
    [sys.executable, str(ROOT / 'train.py'), '--config', str(folder / 'config.yaml')], cwd=ROOT
  )
  try:
    proc.wait(timeout=minutes * 60)
    raise RuntimeError(
      f'{folder.name}: train.py ended before the budget (status {proc.returncode})'
    )
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)


def trained_run(folder: pathlib.Path):
  """(config, seconds from the start to each logged step, metrics records) of a trained run."""
  from video_diffusion.config import load_config

  config_path = folder / 'config.yaml'
  started = config_path.stat().st_mtime
  records = [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]
  return load_config(config_path), {r['step']: r['time'] - started for r in records}, records


def evaluate(cfg, step: int, sampler: str, steps: int, num_videos: int, cache: pathlib.Path):
  """evaluate_checkpoint's numbers (FVD, real-vs-real FVD, mean pixel, changes over
  time) for the EMA weights, each evaluation
  made once (kept in cache/evaluations.json, so an interrupted bench resumes with --eval-only)."""
  store = cache / 'evaluations.json'
  done = json.loads(store.read_text()) if store.exists() else {}
  key = f'{pathlib.Path(cfg.trainer.results_folder).name}/{step}/{sampler}-{steps}/{num_videos}'
  if key not in done:
    r = _evaluate(cfg, step, sampler, steps, num_videos, cache)
    done[key] = {k: v for k, v in r.items() if isinstance(v, float)}
    store.write_text(json.dumps(done, indent=2))
  return done[key]


def _evaluate(cfg, step: int, sampler: str, steps: int, num_videos: int, cache: pathlib.Path):
  import dataclasses

  from video_diffusion.config import resolved_checkpoint_dir
  from video_diffusion.diffusion.samplers import get_sampler
  from video_diffusion.eval.evaluate import evaluate_checkpoint

  # Every variant is judged on the synthetic digits past the training indices (the
  # cached variant's shards hold the first CACHED_CLIPS of them).
  cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, dataset_path=None))
  d = cfg.diffusion
  return evaluate_checkpoint(
    cfg,
    resolved_checkpoint_dir(cfg),
    step=step,
    ema=True,
    sampler=get_sampler(sampler, d.timesteps, steps, flow=d.is_flow),
    sampler_name=sampler,
    num_videos=num_videos,
    batch_size=BATCH,
    cache_dir=str(cache),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--minutes', type=float, default=20.0)
  parser.add_argument('--variants', default=DEFAULT_VARIANTS)
  parser.add_argument('--num-videos', type=int, default=256)
  parser.add_argument('--points', type=int, default=3, help='checkpoints on the FVD curve')
  parser.add_argument('--checkpoint-every', type=int, default=25)
  parser.add_argument('--output', default=str(ROOT / 'results' / 'quality'))
  parser.add_argument('--seed', type=int, default=0, help='of weights, data order and noise')
  parser.add_argument(
    '--samplers', default=None, help="keep only these of each variant's samplers, e.g. heun-20"
  )
  parser.add_argument(
    '--eval-only', action='store_true', help='evaluate the runs already trained in --output'
  )
  parser.add_argument('--vae', default=None, help="the latent variants' train-vae checkpoints")
  args = parser.parse_args()
  names = args.variants.split(',')
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f'unknown variants {unknown}: use some of {", ".join(VARIANTS)}')
  samplers_of = {name: VARIANTS[name][2] for name in names}
  if args.samplers:
    keep = args.samplers.split(',')
    samplers_of = {n: [s for s in ss if f'{s[0]}-{s[1]}' in keep] for n, ss in samplers_of.items()}
    empty = [n for n, ss in samplers_of.items() if not ss]
    if empty:
      parser.error(f'--samplers {args.samplers} leaves no sampler for {", ".join(empty)}')
  out = pathlib.Path(args.output).resolve()
  cache = out / 'real_features'
  cache.mkdir(parents=True, exist_ok=True)
  os.environ.setdefault('PYTHONUNBUFFERED', '1')

  import jax
  import numpy as np

  from video_diffusion.config import resolved_checkpoint_dir
  from video_diffusion.diffusion.factory import split_diffusion
  from video_diffusion.reporting.plot import plot_series

  runs = {}
  for name in names:
    if not args.eval_only:
      print(f'== {name}: training for {args.minutes} min', flush=True)
      train_for(name, args.minutes, out, args.checkpoint_every, args.seed, args.vae)
    runs[name] = trained_run(out / run_name(name, args.seed))

  rows, curves, results = [], {}, {}
  for name in names:
    cfg, seconds, records = runs[name]
    samplers = samplers_of[name]
    ckpt_dir = pathlib.Path(resolved_checkpoint_dir(cfg))
    saved = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    last = saved[-1]
    seconds.setdefault(last, args.minutes * 60)  # checkpointed at the stop, not logged
    targets = np.linspace(0, seconds[last], args.points + 1)[1:] if args.points else []
    chosen = sorted({min(saved, key=lambda s, t=t: abs(seconds.get(s, 0) - t)) for t in targets})
    curve = []
    for step in chosen:
      r = evaluate(cfg, step, *samplers[0], CURVE_VIDEOS, cache)
      curve.append((seconds[step] / 60, r['fvd']))
      print(f'{name} step {step} ({seconds[step] / 60:.1f} min): FVD {r["fvd"]:.1f}', flush=True)
    curves[name] = ([m for m, _ in curve], [f for _, f in curve])
    trials = (
      {  # with one sampler there is nothing to choose
        f'{s}-{n}': evaluate(cfg, last, s, n, CURVE_VIDEOS, cache)['fvd'] for s, n in samplers
      }
      if samplers[1:]
      else {}
    )
    best = min(trials, key=trials.get) if trials else '-'.join(map(str, samplers[0]))
    sampler, steps = best.split('-')
    final = evaluate(cfg, last, sampler, int(steps), args.num_videos, cache)
    step_times = [r['step_time'] for r in records if 'step_time' in r][1:]  # not the compile
    params = sum(
      int(np.prod(p.shape)) for p in jax.tree.leaves(split_diffusion(cfg, abstract=True)[1])
    )
    results[name] = dict(
      seed=args.seed,
      steps=last,
      s_per_step=float(np.median(step_times)),
      params=params,
      fvd=final['fvd'],
      sampler=best,
      real_vs_real=final['fvd_real_vs_real'],
      curve=curve,
      samplers_on_64=trials,
      config=VARIANTS[name][0],
      overrides=overrides_of(name, args.vae, out / 'cached-latents'),
      cached_minutes=(
        float((out / 'cached-latents-minutes.txt').read_text())
        if f'{CACHE_KEY}=' in VARIANTS[name][1]
        else None
      ),
    )
    rows.append(
      f'| {run_name(name, args.seed)} | {last} | {np.median(step_times):.2f} | '
      f'{params / 1e6:.2f}M | '
      f'{final["fvd"]:.1f} | {best} | {final["fvd_real_vs_real"]:.1f} |'
    )

  table = '\n'.join(
    [
      f'Time to quality: {args.minutes:g} min of training each, FVD of the EMA weights on '
      f'{args.num_videos} videos ({time.strftime("%Y-%m-%d", time.gmtime())})',
      '',
      '| variant | steps | s/step | params | FVD | sampler | real vs real |',
      '| --- | --- | --- | --- | --- | --- | --- |',
      *rows,
    ]
  )
  print(table)
  (out / f'{run_name("table", args.seed)}.md').write_text(table + '\n')
  (out / f'{run_name("results", args.seed)}.json').write_text(json.dumps(results, indent=2))
  if not args.points:
    return
  plot_series(
    curves,
    out / 'fvd_vs_minutes.png',
    title=f'FVD ({CURVE_VIDEOS} videos, EMA) against training minutes',
    x_label='minutes',
  )


if __name__ == '__main__':
  video_diffusion.configure_cpu()  # before JAX starts its backend
  main()
