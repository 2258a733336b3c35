"""DreamBooth with LoRA and prior preservation, as one top-to-bottom function driven by accelerate."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import resource
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dreamcli import __version__, memory
from dreamcli.requests import ModelOptions, TuneConfig
from dreamcli.training import plot, rundir
from dreamcli.training.class_images import cache_folder, class_image_path, make_class_images
from dreamcli.training.data import DreamBoothDataset, collate
from dreamcli.training.families import recipe_for, text_encoders
from dreamcli.training.inputs import TuneInputs, check_inputs, run_record
from dreamcli.training.kohya import export_kohya
from dreamcli.training.lora import Adapted, add_adapters, load_lora, save_lora
from dreamcli.training.loss import ddpm_noise, dreambooth_loss, flow_noise, preconditioned

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SMOOTHING = 0.9  # loss shown on the progress bar: exponential average, single steps are noisy


@dataclass
class TuneResult:
    """What a run wrote (paths are None on the non-main processes of a multi-process run)."""

    outdir: Path
    weights: Path | None
    steps: int
    exports: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)
    is_main_process: bool = True
    steps_per_second: float = 0.0
    peak_rss_mb: float = 0.0
    final_loss: float | None = None
    peak_memory: tuple[str, float] = ("RAM", 0.0)  # what peak_memory() said at the end: ("GPU" | "RAM", MiB)


class TrainingProgress:
    """The optimisation step, saved in every checkpoint by accelerate (register_for_checkpointing)."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def seed_step(seed: int, process: int, step: int) -> None:
    """Seed every random source (Python, NumPy, torch on each device) for one optimisation step from
    (seed, process, step) alone.

    The noise, timesteps and latent samples of step N then do not depend on what drew random numbers
    before it: a resumed run starts a new data iterator (torch's DataLoader draws its base seed from
    the global generator), validation and class images run in one run and not the other. Accelerate's
    saved RNG states cannot undo draws made after they are restored.
    """
    from accelerate.utils import set_seed

    digest = hashlib.sha256(f"dreamcli-tune:{seed}:{process}:{step}".encode()).digest()
    set_seed(int.from_bytes(digest[:4], "little"))  # 32 bits: NumPy's seed limit


class StopRequest:
    """Ctrl-C during training: the first finishes the current step, so the checkpoint holds a whole
    step (an interrupt inside optimizer.step would save half-updated weights); the second stops at once.

    Only the main thread may handle signals; elsewhere Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB, macOS bytes)."""
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_memory(device) -> tuple[str, float]:
    """What the progress bar shows as peak memory: ("GPU", MiB) the accelerator's allocator peaked at
    (CUDA; MPS reports only what it holds now), else ("RAM", MiB) of this process's peak resident size."""
    device = torch.device(device)
    if device.type == "cuda":
        return "GPU", torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return "GPU", torch.mps.driver_allocated_memory() / 2**20
    return "RAM", peak_rss_mb()


class Placement:
    """Where the pipeline's models live during a run, so that the GPU holds what the loop needs.

    The models the loop calls every step are kept on the device (`keep`): the denoiser with its adapters,
    and the VAE or the text encoders when they cannot be cached. On an accelerator, the others go back to
    CPU memory once they have cached the latents and the prompts (`visiting`), and come in again for
    validation pictures. Without `offload` the whole pipeline starts on the device. With it, everything
    starts in CPU memory, each text encoder comes in only for its own call, the denoiser only after the
    prompts are encoded, and class and validation pictures are drawn with diffusers' model offload: one model
    on the GPU at a time, the denoiser too.
    On the CPU everything just stays.
    """

    def __init__(self, pipe, device, offload: bool):
        self.pipe, self.device = pipe, torch.device(device)
        self.accelerated = self.device.type != "cpu"
        self.offload = offload and self.accelerated
        self.kept: list[torch.nn.Module] = []  # on the device throughout
        self.parked: list[torch.nn.Module] = []  # in CPU memory between uses

    def start(self) -> None:
        if not self.offload:
            self.pipe.to(self.device)

    def keep(self, *models) -> None:
        for model in models:
            model.to(self.device)
            if model not in self.kept:
                self.kept.append(model)

    @contextlib.contextmanager
    def visiting(self, *models, each: bool = False):
        """The models on the device for the block, then (on an accelerator) parked in CPU memory.

        `each` (models the block calls as modules, like text encoders): with offload, each comes in only for
        its own call, so that T5-XXL and the CLIPs are never on the GPU together.
        """
        hooks = []
        if each and self.offload:
            def come_in(module, args):
                module.to(self.device)

            def go_out(module, args, output):
                module.to("cpu")

            for model in models:
                hooks += [model.register_forward_pre_hook(come_in), model.register_forward_hook(go_out)]
        else:
            for model in models:
                model.to(self.device)
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
        if self.accelerated:
            for model in models:
                if model not in self.kept:
                    model.to("cpu")
                    if model not in self.parked:
                        self.parked.append(model)

    @contextlib.contextmanager
    def sampling(self):
        """The whole pipeline ready to draw pictures for the block, then back as the loop needs it."""
        if self.offload:
            self.pipe.enable_model_cpu_offload(device=self.device)
            try:
                yield
            finally:
                self.pipe.remove_all_hooks()
                for model in self.kept:
                    model.to(self.device)
        else:
            for model in self.parked:
                model.to(self.device)
            try:
                yield
            finally:
                for model in self.parked:
                    model.to("cpu")


def tune(config: TuneConfig, inputs: TuneInputs | None = None, on_progress=None, on_note=None) -> TuneResult:
    """Teach a model the subject in `config.instance_data_dir` and write a LoRA into `config.output_dir`.

    `on_progress(stage, done, total, **info)` reports class-image generation and training steps,
    `on_note(text)` warnings; both are called on the main process only. Ctrl-C finishes the current
    step, saves a checkpoint and raises KeyboardInterrupt (a second Ctrl-C stops at once);
    `config.resume` continues from the newest checkpoint and gives the weights of a run that never
    stopped. tune_config.json ends "finished", "interrupted" or "failed" (with "error"); a run killed
    outright is left "running" with a pid that is gone (rundir.was_killed).
    Raises InputError on bad input before anything is written.
    """
    from dreamcli.engine import load_base_pipeline, pick_device, source_hash  # first: it quiets library logs

    from accelerate import Accelerator  # isort: skip
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    # ---- 1. Check inputs, start accelerate, load the base model ----
    inputs = inputs or check_inputs(config)
    outdir = Path(config.output_dir).expanduser()
    accelerator = Accelerator(
        cpu=pick_device(config.device) == "cpu",  # also makes torchrun CPU processes join over gloo
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # Shuffled from (seed, epoch) alone, so a resumed run sees the batches an uninterrupted one would;
        # the same seed on every process, so their shards of one permutation do not overlap.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    main = accelerator.is_main_process
    note = (on_note if main and on_note else lambda text: None)
    progress_cb = (on_progress if main and on_progress else lambda *a, **k: None)
    record_written = False
    progress = TrainingProgress()  # the steps done: loaded from a checkpoint, counted by the loop
    progress.step = inputs.resume_step if inputs.resume_from is not None else 0
    try:
        options = ModelOptions(config.model, config.model_config, allow_unsafe_pickle=config.allow_unsafe_pickle)
        weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
        # Loaded in the compute dtype and placed only then: the frozen weights never train, and a 12 B Flux
        # loaded in fp32 would need 48 GB on the way to 24. The adapters are added later, in fp32.
        pipe = load_base_pipeline(inputs.source, options, weight_dtype)
        pipe.set_progress_bar_config(disable=True)
        # The family says what differs (families.py): prompts, latents, noise, the denoiser call, LoRA targets.
        family, recipe = recipe_for(inputs.source, pipe)
        sampling = family.call_args(pipe, {})  # class and validation pictures drawn as dream gen draws them
        denoiser, vae, encoders = getattr(pipe, family.denoiser), pipe.vae, text_encoders(pipe, recipe)
        # Not SDXL's VAE in fp16, which overflows (its config says force_upcast; a fixed fp16 VAE says not).
        keep_vae_fp32 = family.upcast_vae and getattr(vae.config, "force_upcast", False)
        if keep_vae_fp32:
            vae.to(dtype=torch.float32)
        if config.quantize == "fp8":  # before the adapters, which then stay out of the fp8 storage
            memory.quantize(pipe, family, "fp8", weight_dtype, training=True)
        place = Placement(pipe, accelerator.device, config.offload and accelerator.num_processes == 1)
        if config.offload and not place.offload:
            note("--offload changes nothing here: " + ("on the CPU every model is in CPU memory already"
                 if not place.accelerated else "a multi-process run keeps each process's pipeline on its GPU"))
        place.start()
        noise_scheduler = recipe.training_scheduler(pipe)
        resolution = inputs.resolution
        model_id = f"{inputs.source.kind}:{inputs.source.location}:{source_hash(inputs.source)}"

        if main:
            if inputs.start_over:
                rundir.remove_previous_run(outdir)
            outdir.mkdir(parents=True, exist_ok=True)
            for path in rundir.remove_unfinished(outdir):
                note(f"skipped the half-written checkpoint {path.name} (killed while saving it); removed it")
            if inputs.resume_from is not None:
                rundir.truncate_loss_log(outdir, inputs.resume_step)
            record = {
                **run_record(config), "model_id": model_id, "family": family.name, "resolution": resolution,
                "num_processes": accelerator.num_processes, "status": "running", "versions": _versions(),
                # While "running", a reader tells a killed run (SIGKILL, power loss) by this pid being gone.
                "pid": os.getpid(), "host": socket.gethostname(),
            }
            rundir.write_json_atomic(outdir / rundir.CONFIG_NAME, record)
            record_written = True

        # ---- 2. Class images: the user's, topped up by the base model (main process; cached) ----
        class_paths: list[Path] = []
        if config.with_prior_preservation:
            class_paths = list(inputs.class_images)[: config.num_class_images]
            missing = config.num_class_images - len(class_paths)
            if missing > 0:
                folder = cache_folder(
                    model_id, config.class_text, resolution, config.class_steps, config.class_guidance
                )
                if main and not all(class_image_path(folder, i).exists() for i in range(missing)):
                    with place.sampling():
                        make_class_images(
                            pipe, folder, missing, config.class_text, resolution, config.class_steps,
                            config.class_guidance, {"model": model_id}, progress_cb, sampling,
                        )
                accelerator.wait_for_everyone()
                class_paths += [class_image_path(folder, i) for i in range(missing)]

        # ---- 3. Dataset: images at the training resolution; latents cached when nothing varies ----
        vae.requires_grad_(False)
        dataset = DreamBoothDataset(inputs.instance_images, class_paths, resolution, config.random_crop, config.seed)
        if not config.random_crop:
            # Not under autocast when the VAE stays fp32: autocast would run its convolutions in fp16 anyway.
            with place.visiting(vae), contextlib.nullcontext() if keep_vae_fp32 else accelerator.autocast():
                dataset.cache_latents(vae, accelerator.device, vae.dtype)
        else:
            place.keep(vae)  # it encodes every step
        dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=config.train_batch_size, shuffle=True, collate_fn=collate, num_workers=0
        )
        prompt_ids = {
            kind: {name: ids.to(accelerator.device) for name, ids in recipe.tokenize(pipe, text).items()}
            for kind, text in (("instance", config.instance_text), ("class", config.class_text))
        }

        # ---- 4. LoRA adapters on the family's layers; frozen weights in the compute dtype; prompts encoded ----
        # Seeded here, after the class images (made on a cache miss only), so they start the same either way.
        set_seed(config.seed, device_specific=True)
        lora_encoders = recipe.lora_encoders if config.train_text_encoder else ()
        adapted = Adapted(recipe.pipeline, family.denoiser, denoiser,
                          {name: encoders[name] for name in lora_encoders if name in encoders})
        frozen = [model for name, model in encoders.items() if name not in adapted.encoders]
        params = add_adapters(adapted, frozen, config.rank, config.alpha, recipe.targets[config.lora_layers],
                              recipe.text_targets)
        trained = adapted.models()
        cast_training_params(trained, dtype=torch.float32)  # adapters train in fp32 under mixed precision
        if config.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
            for encoder in adapted.encoders.values():
                # transformers 5 renamed it; older releases only have the first name.
                enable = getattr(encoder, "activation_checkpointing_enable", None)
                (enable or encoder.gradient_checkpointing_enable)()
        text_states = None
        if not adapted.encoders:
            with torch.no_grad(), place.visiting(*encoders.values(), each=True):  # two fixed prompts: encoded once
                text_states = {k: recipe.encode(encoders, ids) for k, ids in prompt_ids.items()}
        else:
            place.keep(*encoders.values())  # they encode every step (the frozen ones too)
        place.keep(denoiser)  # with --offload, only now: the encoders have left

        if config.use_8bit_adam:
            import bitsandbytes as bnb

            optimizer_class = bnb.optim.AdamW8bit
        else:
            optimizer_class = torch.optim.AdamW
        optimizer = optimizer_class(params, lr=config.learning_rate, weight_decay=1e-2)
        lr_scheduler = get_scheduler("constant", optimizer=optimizer)
        prepared = accelerator.prepare(*trained, optimizer, dataloader, lr_scheduler)
        fp8_backward = memory.fp8_backward(denoiser)  # fp8 weights stay fp8 between forward and backward
        trained_wrapped = prepared[: len(trained)]
        optimizer, dataloader, lr_scheduler = prepared[len(trained):]
        denoiser_wrapped = trained_wrapped[0]
        # The encoders as the loop calls them: the prepared (maybe distributed) ones where they train.
        encoders_wrapped = {**encoders, **dict(zip(adapted.encoders, trained_wrapped[1:], strict=True))}

        # ---- 5. Checkpoints hold the LoRA (diffusers format), optimizer, scheduler, RNG and step ----
        accelerator.register_for_checkpointing(progress)

        def save_hook(models, weights, folder):
            while weights:
                weights.pop()  # the frozen base weights are not ours to save: only the adapters
            if accelerator.is_main_process:
                save_lora(Path(folder), adapted)
                rundir.kill_here_if_testing(progress.step)  # test hook: a half-written checkpoint

        def load_hook(models, folder):
            models.clear()
            load_lora(Path(folder), adapted)
            cast_training_params(trained, dtype=torch.float32)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

        def save_checkpoint(step: int, everyone: bool = True) -> None:
            final = rundir.checkpoint_dir(outdir, step)
            tmp = final.with_name(final.name + ".tmp")
            if everyone:
                if main:
                    shutil.rmtree(tmp, ignore_errors=True)
                accelerator.wait_for_everyone()
            if everyone or main:
                accelerator.save_state(str(tmp))
            if everyone:
                accelerator.wait_for_everyone()
            if main:
                # Flushed, marked complete, then renamed into place: a kill at any moment leaves the
                # newest complete checkpoint resumable and the half-written one recognisable.
                rundir.seal_checkpoint(tmp, step)
                rundir.publish_checkpoint(tmp, final)
                rundir.prune_checkpoints(outdir)
                _finish_record(outdir, checkpoint_step=step, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                plot.write_loss_chart(outdir)

        if inputs.resume_from is not None:
            accelerator.load_state(str(inputs.resume_from))
            note(f"resumed from {inputs.resume_from} at step {progress.step}")

        # ---- 6. The loop: noise (DDPM or flow), denoise, MSE(instance) + prior weight x MSE(class) ----
        steps_per_epoch = math.ceil(len(dataloader) / config.gradient_accumulation_steps)
        step, first_step = progress.step, progress.step
        epoch = step // steps_per_epoch
        skip_batches = (step % steps_per_epoch) * config.gradient_accumulation_steps
        smoothed, last_loss, validation_images = None, None, []
        step_begun = False  # a micro-batch of step+1 has run: its random draws were seeded
        updating = False  # inside optimizer.step .. step += 1: the weights may be half a step on
        started = time.perf_counter()
        for model in trained_wrapped:
            model.train()
        stop = StopRequest()
        try:
            stop.install()
            progress_cb("training", step, config.max_train_steps)
            while step < config.max_train_steps:
                dataloader.set_epoch(epoch)
                dataset.epoch = epoch  # random crops are drawn from (seed, epoch, index)
                batches = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
                for batch in batches:
                    if not step_begun:
                        seed_step(config.seed, accelerator.process_index, step + 1)
                        step_begun = True
                    with accelerator.accumulate(*trained_wrapped):
                        batch_inputs = batch["inputs"].to(accelerator.device, dtype=vae.dtype)
                        with torch.no_grad():
                            if dataset.cached is not None:
                                latents = DiagonalGaussianDistribution(batch_inputs).sample()
                            else:
                                latents = vae.encode(batch_inputs).latent_dist.sample()
                            latents = recipe.latents(vae, latents).to(weight_dtype)
                        noise = torch.randn_like(latents)
                        if recipe.flow:
                            noised = flow_noise(noise_scheduler, latents, noise, config.timestep_density)
                        else:
                            noised = ddpm_noise(noise_scheduler, latents, noise)
                        n, classes = batch["num_instance"], latents.shape[0] - batch["num_instance"]
                        if text_states is not None:
                            cond = {key: torch.cat([text_states["instance"][key]] * n
                                                   + [text_states["class"][key]] * classes)
                                    for key in text_states["instance"]}
                        else:
                            ids = {name: torch.cat([prompt_ids["instance"][name]] * n
                                                   + [prompt_ids["class"][name]] * classes)
                                   for name in prompt_ids["instance"]}
                            cond = recipe.encode(encoders_wrapped, ids)
                        with accelerator.autocast(), fp8_backward:
                            pred = recipe.predict(denoiser_wrapped, noised.noisy, noised.timesteps, cond,
                                                  batch["geometry"], resolution)
                        target = noised.target
                        if recipe.precondition:
                            pred, target = preconditioned(pred, noised, latents)
                        parts = dreambooth_loss(pred, target, config.prior_loss_weight, config.with_prior_preservation,
                                                noised.weighting)
                        accelerator.backward(parts.total)
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(params, 1.0)
                        updating = accelerator.sync_gradients
                        optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    progress.step = step
                    updating, step_begun = False, False
                    # The stop request travels with the losses, so every process stops after the same step.
                    parts_now = torch.stack([
                        parts.total.detach(), parts.instance.detach(), parts.prior.detach(),
                        torch.tensor(float(stop.requested), device=parts.total.device),
                    ])
                    losses = accelerator.reduce(parts_now, "mean")
                    last_loss = float(losses[0])
                    smoothed = last_loss if smoothed is None else SMOOTHING * smoothed + (1 - SMOOTHING) * last_loss
                    if main:
                        rundir.append_loss(outdir, {
                            "step": step, "loss": round(last_loss, 6), "instance_loss": round(float(losses[1]), 6),
                            "prior_loss": round(float(losses[2]), 6), "lr": lr_scheduler.get_last_lr()[0],
                            "seconds": round(time.perf_counter() - started, 2),
                        })
                    memory_kind, peak_mb = peak_memory(accelerator.device)
                    progress_cb("training", step, config.max_train_steps, loss=smoothed, memory=memory_kind,
                                peak_mb=peak_mb)
                    stopping = float(losses[3]) > 0 and step < config.max_train_steps
                    if stopping or (step % config.checkpointing_steps == 0 and step < config.max_train_steps):
                        save_checkpoint(step)
                    if stopping:
                        raise KeyboardInterrupt
                    if main and config.num_validation_images and config.validation_steps \
                            and step % config.validation_steps == 0:
                        with place.sampling():
                            validation_images += _validate(
                                pipe, config, outdir, step, resolution, accelerator, trained_wrapped, sampling
                            )
                    if step >= config.max_train_steps:
                        break
                epoch, skip_batches = epoch + 1, 0
        except KeyboardInterrupt:
            saved = rundir.checkpoints(outdir)
            # Between steps the weights are whole: save them. Inside optimizer.step they may be half
            # updated: the newest checkpoint stands. The others may be stopped anywhere: no barrier.
            if step > first_step and not updating and not (saved and saved[-1][0] == step):
                save_checkpoint(step, everyone=False)
            raise
        finally:
            stop.restore()
        elapsed = time.perf_counter() - started
        rate = (step - first_step) / elapsed if elapsed > 0 else 0.0

        # ---- 7. Save: the LoRA in diffusers format, exports, validation images, the run record ----
        save_checkpoint(step)  # so `--resume --steps MORE` continues from exactly here
        result = TuneResult(outdir, None, step, is_main_process=main, steps_per_second=rate,
                            peak_rss_mb=peak_rss_mb(), final_loss=last_loss,
                            peak_memory=peak_memory(accelerator.device))
        if main:
            result.weights = save_lora(outdir, adapted, rundir.WEIGHTS_NAME)
            if "kohya" in config.export:
                kohya = outdir / f"{outdir.name}_kohya.safetensors"
                result.exports.append(export_kohya(kohya, family.name, adapted, config.alpha))
            # The end gets a validation round unless the loop just made one at this step.
            validated = bool(config.validation_steps) and step % config.validation_steps == 0 and step > first_step
            if config.num_validation_images and not validated:
                with place.sampling():
                    validation_images += _validate(pipe, config, outdir, step, resolution, accelerator,
                                                   trained_wrapped, sampling)
            result.validation_images = validation_images
            _finish_record(
                outdir, status="finished", step=step, steps_per_second=round(rate, 4),
                peak_rss_mb=round(result.peak_rss_mb, 1), final_loss=last_loss,
            )
        accelerator.wait_for_everyone()
        return result
    except BaseException as error:
        # The record says how the run ended; a run killed outright (SIGKILL) stays "running" with its pid.
        if main and record_written:
            if isinstance(error, KeyboardInterrupt):
                fields = {"status": "interrupted"}
            else:
                fields = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            _finish_record(outdir, **fields, step=progress.step)
        raise
    finally:
        accelerator.end_training()
        _reset_accelerate()


def _validate(pipe, config: TuneConfig, outdir: Path, step: int, resolution: int, accelerator, trained,
              sampling: dict) -> list[Path]:
    """Images of the validation prompt with the adapters as they are now (fixed seeds, so steps compare);
    `sampling` is what the family adds to a pipeline call."""
    prompt = config.validation_prompt or config.instance_text
    folder = outdir / rundir.VALIDATION
    folder.mkdir(parents=True, exist_ok=True)
    for model in trained:
        model.eval()
    seeds = [config.seed + i for i in range(config.num_validation_images)]  # the same every round
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.no_grad(), accelerator.autocast():
        images = pipe(
            [prompt] * len(generators), height=resolution, width=resolution, num_inference_steps=config.class_steps,
            guidance_scale=config.class_guidance, generator=generators, **sampling,
        ).images
    for model in trained:
        model.train()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"step-{step:06d}-{i}.png"
        image.save(path)
        paths.append(path)
    # One labelled picture of the round, validation/step-NNNNNN.png, to compare rounds at a glance.
    plot.write_validation_grid(folder / f"step-{step:06d}.png", images, [prompt] * len(images), seeds, step)
    return paths


def _finish_record(outdir: Path, **fields) -> None:
    record = rundir.read_config(outdir) or {}
    record.update(fields)
    rundir.write_json_atomic(outdir / rundir.CONFIG_NAME, record)


def _versions() -> dict:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {
        "dreamcli": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
    }


def _reset_accelerate() -> None:
    """Forget accelerate's per-process settings, so a later run in this process may use others
    (the process group, if any, stays)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
