"""The zoo's trainer: one process or many (``torchrun``), 2D-torus gradient all-reduce, batch-size
control, AMP, callbacks (the Cuttlefish switch), CSV/TensorBoard logs and atomic, resumable checkpoints.

Launch::

    zoo train --recipe fmnist_resnet18 epochs=3                    # one process
    torchrun --nproc-per-node 4 -m training.cli train --recipe fmnist_resnet18   # 2x2 torus, gloo on CPU

A run directory (``runs/<recipe name>`` unless ``--run-dir``) holds ``recipe.yaml``, ``metrics.csv``,
``tensorboard/``, ``checkpoints/`` and ``best/``. Starting a run whose directory already has a
checkpoint resumes it: model (with its factorized architecture, if the switch happened), optimizer,
schedule position, batch-size stage, callback state and every rank's RNG are restored, and the epoch
that was interrupted is run again from its start, so a killed run ends where an uninterrupted one does
(bit for bit on CPU; on CUDA only with deterministic kernels, and a Cuttlefish switch decided by timing
layers may choose differently if the kill falls in the epoch that decides it).

Safety of a run directory:

* One run at a time: rank 0 locks ``.lock`` in it (``flock``, released when the process ends, however it
  ends); a second run into the directory stops with a :class:`~training.errors.RunError` naming the holder,
  before it loads its data and model.
* All ranks write into the same checkpoint folders, so the run directory must be on a filesystem shared by
  all nodes, at the same path. At start every rank must read back the token rank 0 wrote into ``.lock``;
  a rank that cannot stops the job with a ``RunError``.
* A damaged newest checkpoint (a file missing or not parsing, a ``state.json`` value of the wrong type, model
  arguments that do not build) is passed over with a warning and the previous one resumed
  (``checkpoint.keep``, default 2); if none can be read, a ``RunError`` says so.
* A resume is refused (``RunError``, nothing restored or rewritten) when the recipe differs in anything that
  changes what is computed (``_recipe_changes``): ``log``, ``data``, ``description`` and
  ``distributed.timeout_s`` may change, ``epochs`` only where the learning-rate schedule is the same under
  both values (step or constant decay; cosine spans all epochs and is refused); or when the job has another
  number of ranks than the checkpoint's.
* With several ranks, BatchNorm running statistics are averaged over the ranks before each evaluation, so
  the metrics reported are those of the weights that checkpoints and ``best/`` save.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.distributed as dist
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from timm.optim import param_groups_weight_decay
from timm.utils import distribute_bn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

import zoo
from zoo.io import atomic_write_bytes

from .batch_control import BatchSchedule, LRSchedule, per_rank_batch
from .callbacks import Callback, build_callbacks
from .checkpoint import Checkpoint, CheckpointDir, UnreadableCheckpoint, set_rng_state
from .data.on_device import OnDeviceImages
from .distributed import DistContext
from .errors import RecipeError, RunError
from .recipe import load_recipe
from .runlog import RunDirLock, RunLog, code_version, describe_device
from .tasks import build_task

__all__ = ['Trainer', 'main']

_log = logging.getLogger('training')


def _param_groups(model: torch.nn.Module, weight_decay: float, exclude: set[int]) -> list[dict]:
    """timm's weight-decay groups: none on 1-D tensors (norms, biases), on what the model lists in
    ``no_weight_decay()`` (e.g. a ViT's position embedding and class token), nor on ``exclude`` (parameter ids:
    low-rank factors under Frobenius decay)."""
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    skip |= {name for name, p in model.named_parameters() if id(p) in exclude}
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


_Count = Annotated[int, Field(ge=0)]


class _State(BaseModel):
    """What ``Trainer._state`` saves in a checkpoint's ``state.json``; checked when read back (strictly: a value of
    another type is damage), so a damaged file is passed over like a damaged weights file."""

    model_config = ConfigDict(strict=True, protected_namespaces=(), arbitrary_types_allowed=True)

    epoch: _Count
    warmup_from: _Count
    model_name: str
    model_args: dict[str, Any]
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    train_seconds: Annotated[float, Field(ge=0)]
    world_size: Annotated[int, Field(ge=1)]
    no_weight_decay: list[_Count]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    callbacks: list[dict[str, Any]]
    recipe: dict[str, Any]


class Trainer:
    """Runs a recipe. ``callbacks`` are added to those the recipe asks for (e.g. Cuttlefish)."""

    def __init__(self, recipe: dict, run_dir: Path, callbacks: Sequence[Callback] = ()):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.ctx = DistContext(recipe['distributed']['timeout_s'])
        self.device = self.ctx.device
        self.lock = RunDirLock(self.run_dir)
        # A second run into the directory stops here, before the data and the model load (fit() takes the lock).
        if self.ctx.ranks_where(self.ctx.is_main and self.lock.held_by_another()):
            raise self._in_use()
        _seed_all(recipe['seed'])  # identical initial weights on every rank
        self.task = build_task(recipe['task']['name'], recipe['task']['args'])
        self.train_set, self.val_set = self.task.datasets()
        for split in (self.train_set, self.val_set):
            if isinstance(split, OnDeviceImages):
                split.to_device(self.device)
        self.model_name = recipe['model']['name']
        self.model_args = dict(recipe['model']['args'])
        # A name with a tag ('mrl_seg_nano.stardist') starts from those published weights, architecture included,
        # and so does a published folder ('local-dir:PATH', 'hf-hub:ORG/NAME'), whose config.json holds them.
        folder = self.model_name.startswith(('local-dir:', 'hf-hub:'))
        published = zoo.get_weights(self.model_name) if '.' in self.model_name and not folder else None
        if published is not None:
            self.model_args = {**published.model_args, **self.model_args}
        if (published is not None or folder) and self.ctx.is_main:
            sha256 = f' (sha256 {published.sha256})' if published is not None else ''
            _log.info('starting from the published weights %s%s', self.model_name, sha256)
        self.model = zoo.create_model(self.model_name, pretrained=published is not None or folder, **self.model_args)
        self._place_model()
        _seed_all(recipe['seed'] + self.ctx.rank)  # then a different augmentation stream per rank
        self.lr_schedule = _lr_schedule(recipe)
        self.batch_schedule = self.lr_schedule.batch
        self.epoch = 0
        self.warmup_from = 0  # moved by callbacks that restart warmup (the Cuttlefish switch)
        self.code_version = code_version()  # at start: the checkout may change while a run trains
        self.no_weight_decay: set[int] = set()  # parameter ids excluded from weight decay
        self.history: list[dict] = []
        self.best: dict | None = None
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0  # of every rank: what a shared machine's wall time overstates
        self.callbacks: list[Callback] = [*build_callbacks(recipe), *callbacks]
        self.amp_dtype = self._amp_dtype(recipe['amp'])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.checkpoints = CheckpointDir(self.run_dir, keep=recipe['checkpoint']['keep'])
        self.runlog = RunLog(self.run_dir, recipe['log']['tensorboard'])
        self._rebuild_optimizer()

    # ------------------------------------------------------------------------------------------ setup

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp not in ('auto', 'off', 'fp16', 'bf16'):
            raise ValueError(f"amp must be 'auto', 'off', 'fp16' or 'bf16', got {amp!r}")
        if amp == 'off' or (amp == 'auto' and self.device.type != 'cuda'):
            return None
        if amp == 'auto':
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if amp == 'fp16' else torch.bfloat16

    def _place_model(self) -> None:
        # Channels-last activations let convolutions use the GPU's tensor cores without transposes.
        memory_format = torch.channels_last if self.device.type == 'cuda' else torch.contiguous_format
        self.model.to(self.device, memory_format=memory_format)

    def architecture_changed(
        self, model_args: dict, no_weight_decay: Iterable[torch.nn.Parameter] = (), restart_warmup: bool = False
    ) -> None:
        """A callback changed ``self.model`` in place (e.g. factorized layers): record the constructor arguments
        that rebuild it (``model_args``, saved in checkpoints and ``run.json``), and rebuild everything that held
        its old parameters: the optimizer (with fresh state), the DDP wrapper and its all-reduce hook.
        ``no_weight_decay`` are new parameters to keep out of weight decay; ``restart_warmup`` restarts the
        learning-rate warmup at the next epoch."""
        self.model_args = dict(model_args)
        self.no_weight_decay |= {id(p) for p in no_weight_decay}
        if restart_warmup:
            self.warmup_from = self.epoch + 1
        self._rebuild_optimizer()

    def _rebuild_optimizer(self) -> None:
        """Create the optimizer and, when distributed, the DDP wrapper with its communication hook."""
        o = self.recipe['optim']
        groups = _param_groups(self.model, o['weight_decay'], self.no_weight_decay)
        if o['name'] == 'sgd':
            self.optimizer = torch.optim.SGD(groups, lr=o['lr'], momentum=o['momentum'], nesterov=o['nesterov'])
        elif o['name'] == 'adamw':
            self.optimizer = torch.optim.AdamW(groups, lr=o['lr'], betas=tuple(o['betas']))
        else:
            raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {o['name']!r}")
        self.ddp = None
        if self.ctx.distributed:
            d = self.recipe['distributed']
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device] if self.device.type == 'cuda' else None,
                bucket_cap_mb=d['bucket_cap_mb'],
            )
            if d['allreduce'] == 'torus':
                from .torus import TorusGrid, register_torus_hook

                if not hasattr(self, 'grid'):
                    grid = d['grid'] or (None, None)
                    self.grid = TorusGrid.create(grid[0], grid[1], backend=self.ctx.backend, timeout=self.ctx.timeout)
                register_torus_hook(self.ddp, self.grid)
            elif d['allreduce'] != 'ring':
                raise ValueError(f"distributed.allreduce must be 'torus' or 'ring', got {d['allreduce']!r}")

    @property
    def train_model(self) -> torch.nn.Module:
        return self.ddp if self.ddp is not None else self.model

    # ------------------------------------------------------------------------------------------ state

    def _state(self) -> dict:
        return dict(
            epoch=self.epoch,
            warmup_from=self.warmup_from,
            model_name=self.model_name,
            model_args=self.model_args,
            history=self.history,
            best=self.best,
            train_seconds=self.train_seconds,
            train_cpu_seconds=self.train_cpu_seconds,
            world_size=self.ctx.world_size,
            no_weight_decay=[i for i, p in enumerate(self.model.parameters()) if id(p) in self.no_weight_decay],
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            callbacks=[c.state_dict() for c in self.callbacks],
            recipe=self.recipe,
        )

    def save_checkpoint(self) -> None:
        staging = self.checkpoints.staging(self.epoch)
        if self.ctx.is_main:
            self.checkpoints.begin(self.epoch)
        self.ctx.barrier()
        self.checkpoints.write_rank(staging, self.ctx.rank)
        self.ctx.barrier()
        if self.ctx.is_main:
            self.checkpoints.write_main(staging, self.model.state_dict(), self._state())
            self.checkpoints.commit(self.epoch)
        self.ctx.barrier()

    def resume(self) -> bool:
        """Restore the newest readable checkpoint of ``run_dir`` if there is one; returns whether it did.

        A damaged newest checkpoint is passed over with a warning. Raises :class:`RunError`, before anything
        is changed, when the checkpoint was made with another recipe (see ``_recipe_changes``) or another
        number of ranks, or when no checkpoint can be read."""
        checkpoint = self._read_checkpoint()
        if checkpoint is None:
            return False
        state = checkpoint.state
        changed = _recipe_changes(state['recipe'], self.recipe)
        if changed:
            raise RunError(
                f'{self.run_dir} was trained with a different recipe ({"; ".join(changed)}); '
                f'restore those values to resume it, or train into a new --run-dir'
            )
        if state['world_size'] != self.ctx.world_size:
            raise RunError(
                f'{checkpoint.folder} was written by {state["world_size"]} rank(s) and this job has '
                f'{self.ctx.world_size}; resume it with {state["world_size"]} so that data order and random '
                f'streams match, or train into a new --run-dir'
            )
        # The architecture may have changed during training (the Cuttlefish switch records its ranks).
        self.model_args = state['model_args']
        self.model = zoo.create_model(self.model_name, **self.model_args)
        self._place_model()

        def unfit(error: Exception) -> RunError:
            return RunError(
                f'{checkpoint.folder} does not fit the model and optimizer this code builds (was it written by '
                f'another version of the zoo?): {error}; train into a new --run-dir'
            )

        try:
            self.model.load_state_dict(checkpoint.model)
        except RuntimeError as e:  # torch's words for weights that do not fit
            raise unfit(e) from e
        params = list(self.model.parameters())
        self.no_weight_decay = {id(params[i]) for i in state['no_weight_decay']}
        for callback, callback_state in zip(self.callbacks, state['callbacks']):
            callback.load_state_dict(callback_state)
        self._rebuild_optimizer()
        try:
            self.optimizer.load_state_dict(state['optimizer'])
        except ValueError as e:  # torch's words for parameter groups that do not fit
            raise unfit(e) from e
        self.scaler.load_state_dict(state['scaler'])
        self.epoch, self.warmup_from = state['epoch'], state['warmup_from']
        self.history, self.best, self.train_seconds = state['history'], state['best'], state['train_seconds']
        self.train_cpu_seconds = state.get('train_cpu_seconds', float('nan'))  # not recorded before it was added
        set_rng_state(checkpoint.rng)
        if self.ctx.is_main:
            done = f'epochs 0-{self.epoch - 1} are done' if self.epoch > 1 else 'epoch 0 is done'
            if self.epoch < self.recipe['epochs']:
                _log.info('resumed %s: %s; training continues with epoch %d', checkpoint.folder, done, self.epoch)
            else:
                _log.info('resumed %s: %s, all of the %d epochs', checkpoint.folder, done, self.recipe['epochs'])
        return True

    def _read_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint that every rank can read (all ranks agree on it); None for a new run."""
        problems = []
        for folder in self.checkpoints.candidates():
            try:
                checkpoint, problem = self.checkpoints.read(folder, self.ctx.rank), ''
                self._check_state(checkpoint.state)
            except UnreadableCheckpoint as e:
                checkpoint, problem = None, str(e)
            unreadable = self.ctx.ranks_where(checkpoint is None)
            if not unreadable:
                if problems and self.ctx.is_main:
                    _log.warning('%s; resuming from %s instead', '; '.join(problems), folder)
                return checkpoint
            problems.append(f'{folder} cannot be read ({problem or f"on rank(s) {unreadable}"})')
        if problems:
            raise RunError(
                f'{"; ".join(problems)}; no checkpoint is left to resume from: move {self.checkpoints.root} '
                f'away to train from the start, or train into a new --run-dir'
            )
        return None

    def _check_state(self, state: Any) -> None:
        """Raise :class:`UnreadableCheckpoint` for a ``state.json`` that parses but cannot be resumed from: a value
        of the wrong type, or model arguments that do not build this run's model (built on the meta device)."""
        try:
            _State.model_validate(state)
        except ValidationError as e:
            error = e.errors(include_url=False)[0]
            where, shown = '.'.join(str(part) for part in error['loc']), repr(error['input'])
            shown = shown if len(shown) <= 60 else shown[:57] + '...'
            raise UnreadableCheckpoint(f'state.json: {where}: {error["msg"]}, got {shown}') from None
        try:
            with torch.device('meta'):
                parameters = len(list(zoo.create_model(self.model_name, **state['model_args']).parameters()))
        except Exception as e:  # whatever arguments damaged by hand or by a crash make the builder raise
            raise UnreadableCheckpoint(f'state.json: model_args do not build {self.model_name} ({e})') from e
        if any(index >= parameters for index in state['no_weight_decay']):
            raise UnreadableCheckpoint(f'state.json: no_weight_decay names parameters {self.model_name} does not have')

    def _claim_run_dir(self) -> None:
        """Lock ``run_dir`` for this run (rank 0) and check that every rank sees it: the token rank 0 writes into
        the lock file must be read back by every rank, as checkpoints need (a filesystem shared by all nodes)."""
        token = int.from_bytes(os.urandom(7), 'big')  # not from the seeded generators, which training uses
        locked = self.lock.acquire(token) if self.ctx.is_main else True
        token, locked = self.ctx.broadcast_tensor(torch.tensor([token, int(locked)])).tolist()
        if not locked:
            raise self._in_use()
        blind = self.ctx.ranks_where(self.lock.token() != token)
        if blind:
            self.lock.release()
            raise RunError(
                f'rank(s) {blind} cannot see {self.lock.path}, which rank 0 wrote: --run-dir {self.run_dir} must '
                f'be the same folder for every rank, on a filesystem that all nodes share (checkpoints need it)'
            )
        if self.ctx.is_main:  # the lock is ours: what killed runs left half-written can go
            self.checkpoints.remove_leftovers()
            self.runlog.remove_leftovers()

    def _in_use(self) -> RunError:
        holder = self.lock.holder()
        return RunError(
            f'{self.run_dir} is in use by another run{f" (process {holder})" if holder else ""}; '
            f'wait for it to finish, or train into another --run-dir'
        )

    def _check_batches(self) -> None:
        """Every batch stage the run reaches must split over the ranks and fit the training set."""
        samples_per_rank = len(self.train_set) // self.ctx.world_size
        for start, batch in self.batch_schedule.stages:
            if start >= self.recipe['epochs']:
                continue
            try:
                micro, accumulation = per_rank_batch(batch, self.ctx.world_size, self.recipe['batch']['max_per_rank'])
            except ValueError as e:
                raise RecipeError(f'batch.stages: {e}') from None
            if samples_per_rank // micro < accumulation:
                raise RecipeError(
                    f'batch.stages: the global batch {batch} (from epoch {start}) is larger than the training set '
                    f'({len(self.train_set)} samples); give a smaller batch or more data'
                )

    # ------------------------------------------------------------------------------------------ loop

    def _loader(self, epoch: int) -> tuple[DataLoader, int]:
        micro, accumulation = per_rank_batch(
            self.batch_schedule.global_batch(epoch), self.ctx.world_size, self.recipe['batch']['max_per_rank']
        )
        sampler = DistributedSampler(
            self.train_set, self.ctx.world_size, self.ctx.rank, shuffle=True, seed=self.recipe['seed'], drop_last=True
        )
        sampler.set_epoch(epoch)
        if isinstance(self.train_set, OnDeviceImages):  # same order as the DataLoader path, batched on the device
            return self.train_set.batches(micro, list(sampler), drop_last=True), accumulation
        loader = DataLoader(
            self.train_set,
            batch_size=micro,
            sampler=sampler,
            drop_last=True,
            num_workers=self.recipe['data']['workers'],
            pin_memory=self.device.type == 'cuda',
            persistent_workers=False,
        )
        return loader, accumulation

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group['lr'] = lr

    def train_epoch(self, epoch: int) -> dict:
        loader, accumulation = self._loader(epoch)
        steps = len(loader) // accumulation  # at least 1 (_check_batches)
        self.train_model.train()
        progress = None
        if self.ctx.is_main and self.recipe['log']['progress']:
            from tqdm import tqdm

            progress = tqdm(total=steps, desc=f'epoch {epoch}', leave=False, dynamic_ncols=True)
        batches = iter(loader)
        loss_sum, lr = 0.0, 0.0
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        for step in range(steps):
            lr = self.lr_schedule.lr(epoch, step / steps, self.warmup_from)
            self._set_lr(lr)
            for micro in range(accumulation):
                batch = next(batches)
                sync = (
                    self.ddp.no_sync()
                    if self.ddp is not None and micro < accumulation - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with autocast:
                        loss, _ = self.task.loss(self.train_model, batch, self.device)
                    if not torch.isfinite(loss):
                        self._diverged(loss.item(), epoch, step, lr)
                    self.scaler.scale(loss / accumulation).backward()
                loss_sum += loss.item() / accumulation
            self.scaler.unscale_(self.optimizer)
            for callback in self.callbacks:
                callback.after_backward(self)
            if self.recipe['optim']['clip_grad_norm']:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe['optim']['clip_grad_norm'])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            for callback in self.callbacks:
                callback.on_step_end(self, epoch, step)
            if progress is not None:
                progress.set_postfix(loss=f'{loss_sum / (step + 1):.4f}', lr=f'{lr:.4g}', refresh=False)
                progress.update()
        if progress is not None:
            progress.close()
        totals = self.ctx.all_reduce_sums(dict(loss=loss_sum, steps=float(steps)))
        return dict(
            train_loss=totals['loss'] / totals['steps'], lr=lr, global_batch=self.batch_schedule.global_batch(epoch)
        )

    def _diverged(self, loss: float, epoch: int, step: int, lr: float) -> None:
        """A loss that is no longer finite. After updates, the learning rate drove the weights there: a
        :class:`RecipeError` naming it; at the first step, before any update, it is the data or the model."""
        where = f'epoch {epoch}, step {step}'
        if epoch == 0 and step == 0:
            raise FloatingPointError(
                f'the loss is {loss} at {where}, before any update: the data or the model gives it'
            )
        raise RecipeError(
            f'optim.lr: training diverged (the loss is {loss} at {where}, learning rate {lr:.3g}); lower optim.lr '
            f'(now {self.recipe["optim"]["lr"]:g}), or clip the gradients with optim.clip_grad_norm'
        )

    def evaluate(self) -> dict:
        """Metrics on the validation set, each rank evaluating a strided shard of it.

        With several ranks, each rank's BatchNorm running statistics have seen only its own batches; they are
        first averaged over the ranks, in place (timm's ``distribute_bn``, as its train.py does by default), so
        every rank evaluates the same model, the one that checkpoints and ``best/`` then save."""
        if self.ctx.distributed:
            distribute_bn(self.model, self.ctx.world_size, reduce=True)
        shard = Subset(self.val_set, range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
        self.model.eval()
        sums = self.task.evaluate(self.model, shard, self.device, self.recipe['data']['eval_batch'])
        totals = self.ctx.all_reduce_sums(sums)
        count = totals.pop('count')
        return {k: v / count for k, v in totals.items()}

    def fit(self) -> dict:
        """Train to ``recipe['epochs']``, resuming if the run directory has a checkpoint. Returns the best row.

        The run directory is locked for the duration (a second run into it stops with a :class:`RunError`)."""
        self._check_batches()
        self._claim_run_dir()
        try:
            return self._fit()
        except BaseException:
            if self.ctx.is_main:  # a write that failed (a full disk) leaves no half-written folder behind
                self.checkpoints.remove_leftovers()
                self.runlog.remove_leftovers()
            raise
        finally:
            self.lock.release()

    def _fit(self) -> dict:
        resumed = self.resume()
        if self.ctx.is_main:  # after resume() accepted the recipe: a refused one must not replace the run's
            atomic_write_bytes(self.run_dir / 'recipe.yaml', yaml.safe_dump(self.recipe, sort_keys=False).encode())
        for callback in self.callbacks:
            (callback.on_resume if resumed else callback.on_fit_start)(self)
        while self.epoch < self.recipe['epochs']:
            epoch = self.epoch
            start, start_cpu = time.perf_counter(), time.process_time()
            row = dict(epoch=epoch, **self.train_epoch(epoch))
            row['epoch_seconds'] = time.perf_counter() - start
            self.train_seconds += row['epoch_seconds']
            self.train_cpu_seconds += self.ctx.all_reduce_sums(dict(cpu=time.process_time() - start_cpu))['cpu']
            row.update(self.evaluate())
            row['params'] = sum(p.numel() for p in self.model.parameters())
            # The best weights are the ones just evaluated: save them before a callback may change the
            # model (the Cuttlefish switch factorizes it for the next epoch).
            if self.best is None or row[self.task.main_metric] > self.best[self.task.main_metric]:
                self.best = row
                if self.ctx.is_main:
                    self._save_best()
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, row)
            self.history.append(row)
            self.epoch = epoch + 1
            # A kill at any point leaves the last checkpoint; the rerun epoch rewrites logs and best.
            if self.ctx.is_main:
                self.runlog.epoch(self.history)
            self.save_checkpoint()
        self.ctx.barrier()
        return self.best

    # ------------------------------------------------------------------------------------------ output

    def _save_best(self) -> None:
        info = dict(
            model_name=self.model_name,
            model_args=self.model_args,
            metrics=self.best,
            main_metric=self.task.main_metric,
            recipe=self.recipe,
            train_seconds=self.train_seconds,
            train_cpu_seconds=self.train_cpu_seconds,
            world_size=self.ctx.world_size,
            device=describe_device(self.device),
            allreduce=self.recipe['distributed']['allreduce'] if self.ctx.distributed else 'none',
            grid=[self.grid.x, self.grid.y] if hasattr(self, 'grid') else None,
            code_version=self.code_version,
        )
        examples = self.runlog.save_best(
            self.model.state_dict(),
            info,
            lambda folder: self.task.write_examples(self.model, self.val_set, folder, self.device),
        )
        if examples:
            _log.info('wrote %s', ', '.join(map(str, examples)))


def _lr_schedule(recipe: dict) -> LRSchedule:
    b, s = recipe['batch'], recipe['schedule']
    return LRSchedule(
        recipe['optim']['lr'],
        recipe['epochs'],
        s['decay'],
        s['milestones'],
        s['gamma'],
        s['min_factor'],
        s['warmup_epochs'],
        s['warmup_start'],
        BatchSchedule([tuple(x) for x in b['stages']], b['base'], b['rule']),
    )


# Recipe entries that may differ when a run resumes: they do not change what is computed. ``epochs`` may
# change too where the learning-rate schedule does not depend on it (see _recipe_changes).
_RESUMABLE_CHANGES = ('epochs', 'log', 'data', 'source', 'description', 'distributed.timeout_s')


def _recipe_changes(before: dict, now: dict) -> list[str]:
    """What differs between a run's recipe and the one it is resumed with, where that changes what is computed.

    Changing ``epochs`` is allowed where the learning rate at every point of both runs is the same under
    either value (step and constant decay), so the resumed run is the one an uninterrupted run with the new
    ``epochs`` would have been; it is refused where the schedule spans all epochs (cosine)."""
    changes = _differences(before, now)
    if before['epochs'] != now['epochs']:
        old, new = _lr_schedule(before), _lr_schedule({**before, 'epochs': now['epochs']})
        points = [(e, f) for e in range(max(old.epochs, new.epochs)) for f in (0.0, 0.25, 0.5, 0.75)]
        if any(old.lr(e, f) != new.lr(e, f) for e, f in points):
            changes.append(
                f'epochs: {old.epochs!r} -> {new.epochs!r}, which changes the {old.decay} learning-rate schedule'
            )
    return changes


def _differences(before: dict, now: dict, prefix: str = '') -> list[str]:
    changes = []
    for key in sorted(set(before) | set(now)):
        path = f'{prefix}{key}'
        if path in _RESUMABLE_CHANGES:
            continue
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _differences(a, b, path + '.')
        elif a != b:
            changes.append(f'{path}: {a!r} -> {b!r}')
    return changes


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(recipe: str, overrides: Iterable[str] = (), run_dir: str | None = None) -> dict:
    """``zoo train``: load the recipe, train (or resume), print the best epoch's metrics."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    config = load_recipe(recipe, list(overrides))
    trainer = Trainer(config, Path(run_dir or Path('runs') / config['name']))
    try:
        best = trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return best
