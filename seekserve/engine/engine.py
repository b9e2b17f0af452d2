"""The engine: `add_request` / `abort_request` / `step`, over a scheduler and a model runner.

engine = Engine.from_config(config, eos_token_ids)
engine.add_request("r1", prompt_token_ids, SamplingParams(max_tokens=32))
while engine.has_unfinished_requests():
    outputs = engine.step()
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from seekserve.config import EngineConfig, resolve_dtype
from seekserve.engine.disk_cache import DiskKVCache
from seekserve.engine.kv_cache import KVCacheManager
from seekserve.engine.outputs import EngineOutput
from seekserve.engine.request import Request
from seekserve.engine.scheduler import Scheduler
from seekserve.models.config import ModelArchConfig
from seekserve.runner import cpu_kernels
from seekserve.runner.model_runner import ModelRunner, kv_bytes_per_block
from seekserve.sampling.constraints import GrammarFactory
from seekserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        model: nn.Module,
        arch: ModelArchConfig,
        dtype: torch.dtype,
        eos_token_ids: frozenset[int],
        fingerprint: str = "",
        grammars: GrammarFactory | None = None,
    ) -> None:
        """`fingerprint` identifies the weights (prefix-cache namespace, disk tier);
        `grammars` builds the constraints of requests with a grammar (None: not offered)."""
        self.grammars = grammars
        self.config = config
        self.arch = arch
        self.dtype = dtype
        self.eos_token_ids = eos_token_ids
        block_size = config.cache.block_size
        self.kv_bytes_per_block = kv_bytes_per_block(arch, block_size, dtype)
        num_blocks = config.cache.num_blocks or max(
            1, config.cache.kv_cache_memory_bytes // self.kv_bytes_per_block
        )
        from seekserve.loader.model_loader import weight_bytes

        config.check_memory_budget(weight_bytes(model), num_blocks * self.kv_bytes_per_block)
        pool_tokens = num_blocks * block_size
        wanted_len = config.model.max_model_len or arch.max_position_embeddings
        self.max_model_len = min(wanted_len, pool_tokens, arch.max_position_embeddings)
        if self.max_model_len < wanted_len:
            logger.warning(
                "max_model_len lowered from %d to %d: the KV pool holds %d tokens and the "
                "model was trained for %d; raise --kv-cache-memory for longer contexts",
                wanted_len,
                self.max_model_len,
                pool_tokens,
                arch.max_position_embeddings,
            )
        # what the K/V of a token prefix depends on besides the tokens
        quant = config.model.quantization or "none"
        namespace = f"{fingerprint}|{arch.architecture}|{dtype}|{quant}|{block_size}"
        self.kv_cache = KVCacheManager(
            num_blocks,
            block_size,
            enable_prefix_caching=config.cache.enable_prefix_caching,
            namespace=namespace,
        )
        self.runner = ModelRunner(
            model,
            arch,
            num_blocks,
            block_size,
            dtype,
            config.model.device,
            config.seed,
            cpu_kernels_enabled=config.use_cpu_kernels,
        )
        self.disk: DiskKVCache | None = None
        if config.cache.disk_cache_dir and config.cache.enable_prefix_caching:
            block_shape = self.runner.kv_cache[:, :, 0].shape
            self.disk = DiskKVCache(
                config.cache.disk_cache_dir,
                config.cache.disk_cache_max_bytes,
                namespace,
                tuple(block_shape),
                dtype,
            )
        self.scheduler = Scheduler(config.scheduler, self.kv_cache, self.disk)
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens, %.0f MiB), max_model_len %d",
            num_blocks,
            block_size,
            pool_tokens,
            num_blocks * self.kv_bytes_per_block / 2**20,
            self.max_model_len,
        )

    @classmethod
    def from_config(
        cls,
        config: EngineConfig,
        eos_token_ids: frozenset[int],
        grammars: GrammarFactory | None = None,
    ) -> Engine:
        """Load the weights named by `config.model.model` (a resolved local path)."""
        from seekserve.loader.model_loader import load_model, model_fingerprint

        threads = config.num_threads or EngineConfig.env_num_threads()
        if threads:
            torch.set_num_threads(threads)
        dtype = resolve_dtype(config.model.dtype, config.model.device)
        path = Path(config.model.model)
        model, arch = load_model(path, dtype, config.model.device)
        device = torch.device(config.model.device)
        fast = device.type == "cpu" and config.use_cpu_kernels and cpu_kernels.enable()
        kernels = cpu_kernels.get(device) if fast else None
        if config.model.quantization == "int8":
            from seekserve.models.layers.quant import quantize_linears_int8

            logger.info("int8 weight-only: %d linear layers", quantize_linears_int8(model, kernels))
        elif config.model.quantization == "w8a8":
            from seekserve.models.layers.quant import quantize_linears_w8a8

            logger.info("w8a8: %d linear layers", quantize_linears_w8a8(model, kernels))
        elif config.use_cpu_kernels:
            from seekserve.models.layers.linear import pack_linears

            if packed := pack_linears(model, kernels):
                logger.info("%d linear layers prepacked for oneDNN", packed)
        return cls(config, model, arch, dtype, eos_token_ids, model_fingerprint(path), grammars)

    # -- requests ------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
        cache_salt: str = "",
    ) -> None:
        """Queue a request. The caller has checked prompt + max_tokens <= max_model_len."""
        if not prompt_token_ids:
            raise ValueError("prompt_token_ids is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt of {len(prompt_token_ids)} tokens leaves no room for output "
                f"(max_model_len {self.max_model_len})"
            )
        constraint = None
        if params.grammar is not None:
            if self.grammars is None:
                raise ValueError("this engine has no grammar support")
            constraint = self.grammars.build(params.grammar)
        self.scheduler.add_request(
            Request(
                request_id=request_id,
                prompt_token_ids=list(prompt_token_ids),
                sampling_params=params,
                eos_token_ids=self.eos_token_ids,
                max_model_len=self.max_model_len,
                arrival_time=time.monotonic() if arrival_time is None else arrival_time,
                cache_salt=cache_salt,
                constraint=constraint,
            )
        )

    def abort_request(self, request_id: str) -> EngineOutput | None:
        """Finish the request now and free its blocks; None if it is not (or no longer) here."""
        request = self.scheduler.abort_request(request_id)
        if request is None:
            return None
        return EngineOutput(request_id, [], "abort", request.num_prompt_tokens)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # -- the step loop -------------------------------------------------------------------

    def step(self) -> list[EngineOutput]:
        """schedule → run → update; returns the new tokens of this step."""
        scheduler_output = self.scheduler.schedule()
        if scheduler_output.is_empty:
            return []
        for block_id, data in scheduler_output.kv_loads:  # prefix blocks read from disk
            self.runner.kv_cache[:, :, block_id].copy_(data)
        requests = self.scheduler.requests
        sampling = [s.request_id for s in scheduler_output.scheduled if s.needs_sample]
        params = {rid: requests[rid].sampling_params for rid in sampling}
        # output history is only read by penalties: copy it for the requests that use them
        history = {
            rid: requests[rid].output_token_ids if p.frequency_penalty or p.presence_penalty else []
            for rid, p in params.items()
        }
        constraints = {rid: requests[rid].constraint for rid in sampling}
        try:
            sampled, logprobs = self.runner.execute(scheduler_output, params, history, constraints)
        except Exception:  # the step's requests fail; the waiting ones and the engine go on
            logger.exception(
                "model step failed; failing the %d requests of this step",
                len(scheduler_output.scheduled),
            )
            return self.fail_requests([s.request_id for s in scheduler_output.scheduled])
        outputs = self.scheduler.update(scheduler_output, sampled, logprobs)
        self._write_behind()
        return outputs

    def fail_requests(
        self, request_ids: list[str], message: str = "internal error in the engine step"
    ) -> list[EngineOutput]:
        """Abort these requests (blocks freed); their outputs carry `message` as the error."""
        failed = []
        for request_id in request_ids:
            output = self.abort_request(request_id)
            if output is not None:
                failed.append(
                    EngineOutput(request_id, [], "abort", output.num_prompt_tokens, error=message)
                )
        return failed

    def _write_behind(self) -> None:
        """Hand the blocks cached this step to the disk tier (copies; written elsewhere)."""
        newly_cached, self.kv_cache.newly_cached = self.kv_cache.newly_cached, []
        if self.disk is None:
            return
        for block_id, block_hash in newly_cached:
            if not self.disk.contains(block_hash):
                self.disk.submit(block_hash, self.runner.kv_cache[:, :, block_id].clone())

    def close(self) -> None:
        """Finish the disk tier's queued writes."""
        if self.disk is not None:
            self.disk.close()
