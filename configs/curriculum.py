"""V-Bridge curriculum training: the Wan2.2-TI2V-5B fine-tune, 512 -> 720 -> 960 px.

Variants (`--config=configs/curriculum.py:VARIANT`):

- (none): the paper's setup (Table 7) with the objective of the authors' training script,
  each setting with its source in docs/fidelity.md: full fine-tune of Wan2.2-TI2V-5B from
  a converted checkpoint, bf16 compute, AdamW lr 2e-5 (100 warm-up steps), weight decay
  3e-2, eps 1e-10, the authors' gradient clipping (0.25 decaying to 0.05 over 1000 steps,
  then spike shrinking), seed 42, 5-frame clips, 300 epochs over the data split evenly
  over stages 512/720/960 (the short side resized to the stage size, then a square crop
  of the largest multiple of 32 pixels: 512, 704, 960), one clip per device; half the
  samples plain text-to-video, the loss over all frames, 10% empty prompts, the VAE
  posterior sampled in normalised units (the conditioning frame its own draw), bf16 noise,
  noisy latents and targets, no flips, uniform sampling over pairs. Needs `init_from` (the output of
  `convert/wan_to_jax.py`), `data.source` (paired folders or a prepared TFDS set) and
  `prompts` (`convert/encode_prompts.py`); it fails fast naming what is missing.
- `tiny`: the README's main command. A small DiT (dim 384, 2 heads, 2 layers) on the
  lossless pixel codec (`model.vae="pixel"`, models/pixel_codec.py), fine-tuned from the
  tiny video prior (`init_from="prior:tiny"`: configs/prior.py, built on first use and
  cached, training/prior.py) at lr 2e-4 on the demo set's training split (32 pairs per
  category, degraded at 128 px), half the samples still clips of the GT (`data.still`),
  stages 64 -> 128 px, 700 steps; at every stage end it restores the demo set's held-out
  split (photos never trained on) and logs PSNR-Y/SSIM-Y beside the unrestored input's and
  the reproduction ceiling (`config.eval`, training/heldout.py); the last line is the
  held-out gain.
- `tiny_scratch`: `tiny` from random weights (lr 2e-3): the miniature's no-prior row.
  The tiny variants keep this project's earlier objective (TI2V only, loss on frames >= 1,
  no text drop, posterior mean, balanced sampling with flips, a constant clip), which
  learns the tiny task fastest.
- `tiny_wan`: tiny random DiT and tiny random Wan VAE; exercises the whole trainer (VAE in
  the step, latent cache) in seconds, learns nothing visible. The tests' base.
- `lora`: the paper's setup with LoRA (rank 64) instead of a full fine-tune.

Launch:

    python -m vbridge_jax.train --config=configs/curriculum.py:tiny --workdir=/tmp/vbridge_tiny
    python -m vbridge_jax.train --config=configs/curriculum.py --workdir=/shared/runs/vbridge \
        --config.init_from=/ckpt/wan22_ti2v_jax --config.data.source=/data/fewshot \
        --config.prompts=/ckpt/prompts.npz --config.mesh.fsdp=-1

Rerunning the same command in the same workdir resumes from the last checkpoint. On several
hosts, run it on each with a workdir that all of them see (README: Several hosts).
"""

from __future__ import annotations

import ml_collections

from vbridge_jax.parallel.sharding import DEFAULT_RULES


def add_scale_fields(c: ml_collections.ConfigDict, *, data: int, fsdp: int) -> None:
  """The fields that place a run on devices, shared by training and restoring
  (configs/restore.py): the mesh (`data` x `fsdp` x context x tensor; -1: the rest of the
  devices), the devices used, the logical-axis rules and `jax.distributed`'s settings."""
  c.mesh = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, context=1, tensor=1))
  c.num_devices = 0  # use the first N devices (0: all)
  c.logical_axis_rules = [list(r) for r in DEFAULT_RULES]
  # enabled: auto (when JAX_COORDINATOR_ADDRESS is set) | on | off; 0 / "" = unset.
  c.distributed = ml_collections.ConfigDict(dict(enabled="auto", coordinator_address="",
                                                 num_processes=0, process_id=-1))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42
  # Length: `epochs` passes over the training pairs at the global batch (the paper: 300,
  # split evenly across the stages; 21 x 50 pairs at batch 8 = 39,600 steps), unless
  # `total_steps` > 0, which overrides it.
  c.epochs = 300
  c.total_steps = 0
  # Curriculum: "size[:share],..." (equal shares when omitted); the share of the steps.
  c.stages = "512,720,960"

  c.model = ml_collections.ConfigDict()
  c.model.dit = "ti2v_5b"  # preset for random init: ti2v_5b | tiny
  c.model.vae = "wan22"  # preset for random init: wan22 | tiny
  c.model.dtype = "bfloat16"  # compute dtype inside matmuls/attention
  # Master weights. The authors cast the transformer to bf16 (`.to(weight_dtype)`), so their
  # weights and AdamW state are bf16: `param_dtype = "bfloat16"` reproduces that.
  c.model.param_dtype = "float32"
  c.model.remat = "full"
  c.model.scan_layers = True
  c.model.attention = "xla"
  c.model.vae_dtype = "bfloat16"
  c.model.dit_overrides = ml_collections.ConfigDict()  # DiTConfig fields for a random DiT
  c.model.vae_overrides = ml_collections.ConfigDict()  # VAEConfig fields for a random VAE
  c.init_from = ""  # converted checkpoint folder (dit/ and vae/); required unless random_init
  c.random_init = False
  c.prompts = ""  # .npz with float32 `positive` (L, text_dim); empty: zeros (tiny only)

  c.finetune = "full"  # full | lora
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 64
  c.lora.alpha = 64.0
  c.lora.targets = "q,k,v,o,ffn"

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-5
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 3e-2
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-10
  c.optim.clip_norm = 0.05  # the final limit (Table 7's max grad norm)
  # authors: the limit decays from 5 x clip_norm to clip_norm over 1000 updates, then a norm
  # above 5 x the limit shrinks it by min(norm / limit, 10) (optim.py); constant: clip_norm.
  c.optim.clip_schedule = "authors"
  c.optim.clip_warmup_steps = 1000
  c.optim.clip_initial_ratio = 5.0
  c.optim.clip_spike_ratio = 5.0
  c.optim.clip_max_shrink = 10.0
  # True: each stage restarts the optimizer (warm-up, clipping decay, AdamW moments), as a new
  # launch of the authors' script per stage from saved weights would; False: one continuous
  # schedule, as a resumed launch would (docs/fidelity.md: the hand-off is not released).
  c.optim.restart_per_stage = False

  c.flow = ml_collections.ConfigDict()
  c.flow.shift = 5.0  # training timestep shift (the authors' scheduler config: 5)
  c.flow.sampling = "uniform"  # uniform | logit_normal
  c.flow.weighting = "none"  # none | cosmap
  # The probability that a sample is plain text-to-video (frame 0 noised too, every token at
  # t) instead of TI2V; the authors: 0.5. 0: TI2V only (this project's earlier objective).
  c.flow.t2v_ratio = 0.5
  # The frames the loss averages over: all (frame 0 included, the authors') | generated
  # (the noised frames: >= 1 on a TI2V sample).
  c.flow.loss_frames = "all"
  # The dtype of the noise, noisy latents and target: bfloat16 (the authors' tensors are bf16)
  # | float32.
  c.flow.dtype = "bfloat16"
  # Encode clips with a draw from the VAE posterior (the authors' `.sample()`) instead of its
  # mean. The latent cache stores means, so it applies only when encoding in the step.
  c.vae_sample = True
  # The units the posterior is sampled in: normalized (VideoX-Fun's Wan2.2 VAE, the authors':
  # the normalised mean + exp(logvar / 2) * eps) | raw (diffusers': the draw normalised
  # afterwards, its noise divided by each channel's std). models/wan_vae.py sample_posterior.
  c.vae_sample_units = "normalized"
  # The TI2V conditioning frame 0 is its own posterior draw, independent of the target's (the
  # authors encode the conditioning clip with a second `.sample()`); False: the same draw.
  c.vae_sample_independent_cond = True

  c.data = ml_collections.ConfigDict()
  c.data.source = ""  # paired folders, a TFDS version folder, or "demo"
  # With source "demo": the built-in set's training and held-out pairs per category
  # (data/fewshot.py), built into WORKDIR/demo_data on first use.
  c.data.demo_per_category = 4
  c.data.demo_heldout = 2
  c.data.data_dir = ""  # with a TFDS name in `source`
  # 5 frames: the paper's Table 3 row for 5 frames (22.16 / .7242) equals its Table 4 row
  # for the 512 stage alone, so the curriculum runs were 5-frame runs, and the released
  # evaluation (eval.sh) restores with 5. A model folder records its frame count (model.json).
  c.data.frames = 5
  c.data.batch_size = 8  # global
  # Uniform shuffled sampling over pairs (the authors' RandomSampler); True: each round of
  # draws holds every category once.
  c.data.balance = False
  c.data.flips = False  # the authors declare --random_flip but never flip
  # The fraction of samples drawn as still clips (the LQ replaced by the GT, every frame the
  # clean image): teaches a randomly initialised DiT to carry frame 0 forward, the prior a
  # pretrained video model brings. 0 for fine-tuning Wan2.2 (the paper).
  c.data.still = 0.0
  # The fraction of samples that train on the empty prompt (the authors' text_drop_ratio).
  c.data.text_drop = 0.1
  c.data.allow_upscale = False
  c.data.workers = 0
  c.data.drift_outputs = ""  # drift-corrector mode (configs/drift.py)
  # Encode each stage's batches once with the frozen VAE and train on the stored latents
  # (`batches` per stage, cycled; 0 = one per step). Off: encode every batch in the step.
  # `dir` (default workdir/latent_cache) may be shared by runs (files are keyed by content).
  c.latent_cache = ml_collections.ConfigDict(dict(enabled=False, batches=0, dir=""))

  add_scale_fields(c, data=1, fsdp=-1)

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, use_async=True))
  c.log_every = 10
  c.progress = True
  # Sample grids every `every_steps` and at each stage end (0: stage ends only; -1: never),
  # sampled without guidance on the diffusers schedule (training/trainer.py write_samples).
  c.samples = ml_collections.ConfigDict(dict(every_steps=2000, count=2, steps=20,
                                             solver="unipc", shift=5.0))
  # Held-out evaluation (training/heldout.py) at every stage end and every
  # `every_steps` (0: stage ends only): `source` a paired tree, "demo" (the demo set's
  # held-out split) or "" (off); restored with the restore command's Restorer and these
  # sampler settings, scored with the vbridge protocol.
  c.eval = ml_collections.ConfigDict(dict(
      source="", every_steps=0, max_images=0, size=0, batch_size=0, steps=20, solver="unipc",
      shift=5.0, schedule="wan", guidance=1.0, cfg_skip=0.0, seed=43, ceiling=False))
  # XLA options for the train step and VAE-encode compiles, e.g. the tests'
  # {"xla_backend_optimization_level": 0} (tiny programs: compile time dominates).
  c.compiler_options = ml_collections.ConfigDict()
  # A jax.profiler trace of steps start..stop (from 1, inclusive) into workdir/profile; -1: off.
  c.profile = ml_collections.ConfigDict(dict(start_step=-1, stop_step=-1))
  c.stop_at_step = -1  # stop (with a checkpoint) at this step, as if preempted
  c.debug_nan_at_step = -1  # tests: make the loss NaN at this step
  return c


def tiny_wan(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny random DiT and tiny random Wan VAE: exercises every part of the trainer (VAE in
  the step, latent cache) in seconds; learns nothing visible (the decoder is random)."""
  c.total_steps = 150
  # This project's earlier objective (see the module docstring).
  c.flow.t2v_ratio = 0.0
  c.flow.loss_frames = "generated"
  c.vae_sample = False
  c.vae_sample_independent_cond = False
  c.flow.dtype = "float32"
  c.data.text_drop = 0.0
  c.data.balance = True
  c.data.flips = True
  c.optim.clip_schedule = "constant"
  c.stages = "64,96,128"
  c.model.dit = "tiny"
  c.model.vae = "tiny"
  c.model.dtype = "float32"  # bf16 matmuls are slow on CPUs
  c.model.vae_dtype = "float32"
  c.model.remat = "none"
  c.model.vae_overrides = ml_collections.ConfigDict(dict(num_res_blocks=1, precision="default"))
  c.random_init = True
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10
  c.optim.clip_norm = 1.0
  c.flow.shift = 1.0
  c.data.source = "demo"
  c.data.frames = 5
  c.data.batch_size = 4
  c.data.allow_upscale = True
  c.checkpoint.every_steps = 25
  c.checkpoint.keep = 2
  c.log_every = 5
  c.samples = ml_collections.ConfigDict(dict(every_steps=0, count=2, steps=8, solver="euler",
                                             shift=1.0))
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The README's main command: the tiny video prior (configs/prior.py, built on first use)
  fine-tuned with V-Bridge on the demo set, scored on its held-out split (module docstring).
  `--config.init_from=` (empty) trains the same DiT from scratch instead (`tiny_scratch`)."""
  c = tiny_scratch(c)
  c.init_from = "prior:tiny"  # training/prior.py: trained once, cached, reused
  c.optim.lr = 2e-4  # a fine-tune keeps what the prior knows (2e-3 wipes it)
  return c


def tiny_scratch(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`tiny` without the prior: the same DiT randomly initialised (the miniature's
  no-prior row)."""
  c = tiny_wan(c)
  c.init_from = ""
  c.total_steps = 700
  c.stages = "64:5,128:1"
  # Wide and shallow: a token is 2x2 codec pixels x 48 = 192 values, which the DiT must
  # carry through (the velocity contains the input noise), so dim > 192. Two heads: wider
  # heads find the same position in frame 0 sooner than six did.
  c.model.dit_overrides = ml_collections.ConfigDict(dict(
      dim=384, ffn_dim=768, num_heads=2, num_layers=2))
  # Half the samples are still clips of the GT, so that the random DiT learns to carry
  # frame 0 forward (what the pretrained Wan2.2 brings), and 32 training pairs per
  # category: with 4 the model memorised them instead.
  c.data.still = 0.5
  c.data.demo_per_category = 32
  c.model.vae = "pixel"  # the lossless pixel codec: no random autoencoder in the way
  c.model.vae_overrides = ml_collections.ConfigDict()
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 20
  c.flow.shift = 5.0  # most training samples near pure noise, where frame 0 must be used
  c.checkpoint.every_steps = 200
  c.log_every = 20
  c.samples.every_steps = -1  # the held-out grids (samples/heldout_step_*.png) replace them
  c.eval = ml_collections.ConfigDict(dict(
      source="demo", every_steps=0, max_images=0, size=128, batch_size=0, steps=4,
      solver="euler", shift=5.0, schedule="diffusers", guidance=1.0, cfg_skip=0.0, seed=43,
      ceiling=True))
  return c


def lora(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.finetune = "lora"
  c.optim.lr = 1e-4
  return c


VARIANTS = {"": lambda c: c, "tiny": tiny, "tiny_scratch": tiny_scratch, "tiny_wan": tiny_wan,
            "lora": lora}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/curriculum.py; one of "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  return VARIANTS[arg](base_config())
