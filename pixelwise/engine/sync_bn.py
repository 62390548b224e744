"""Synchronised batch normalisation that works under any process group, gloo on CPU included.

PyTorch's ``nn.SyncBatchNorm`` runs only on CUDA tensors. :class:`SyncBatchNorm` all-reduces the
per-channel sum, the sum of squared deviations and the element count in the forward pass, and the
per-channel sums of the gradient and of gradient × normalised input in the backward pass, so N
processes at batch B/N normalise and differentiate as one process at batch B. It keeps the
parameter and buffer names of ``nn.BatchNorm*d``, so checkpoints load either way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx


def _all_reduce(tensor: Tensor, group) -> Tensor:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()  # statistics in float32 also under autocast
        local_count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        sums = _all_reduce(torch.cat([xf.sum(dims), local_count]), group)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = xf - mean.view(shape)
        # Two passes (mean, then squared deviations) as BatchNorm's own kernels: no cancellation.
        var = _all_reduce(centred.square().sum(dims), group) / count
        invstd = torch.rsqrt(var + eps)
        x_hat = centred * invstd.view(shape)
        y = x_hat
        if weight is not None:
            y = y * weight.float().view(shape)
        if bias is not None:
            y = y + bias.float().view(shape)
        ctx.save_for_backward(x_hat, invstd, weight, count)
        ctx.has_weight, ctx.has_bias, ctx.group, ctx.dims = (
            weight is not None,
            bias is not None,
            group,
            dims,
        )
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, grad_y: Tensor, *_):  # type: ignore[override]
        x_hat, invstd, weight, count = ctx.saved_tensors
        dims, shape = ctx.dims, [1, -1] + [1] * (grad_y.dim() - 2)
        g = grad_y.float()
        local_sum_g = g.sum(dims)
        local_sum_g_xhat = (g * x_hat).sum(dims)
        # The parameters' gradients stay local: DistributedDataParallel averages them like any other.
        grad_weight = local_sum_g_xhat.to(weight.dtype) if ctx.has_weight else None
        grad_bias = (
            local_sum_g.to(weight.dtype if ctx.has_weight else grad_y.dtype)
            if ctx.has_bias
            else None
        )
        sums = _all_reduce(torch.cat([local_sum_g, local_sum_g_xhat]), ctx.group)
        channels = local_sum_g.numel()
        mean_g, mean_g_xhat = sums[:channels] / count, sums[channels:] / count
        scale = invstd if weight is None else invstd * weight.float()
        grad_x = (g - mean_g.view(shape) - x_hat * mean_g_xhat.view(shape)) * scale.view(shape)
        return grad_x.to(grad_y.dtype), grad_weight, grad_bias, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the whole process group, for any backend and device.

    In training the batch statistics are those of all processes' batches together and the running
    statistics are updated with them (unbiased variance, as ``nn.BatchNorm``); in evaluation it is
    plain batch normalisation with the running statistics.
    """

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch = self.training or not self.track_running_stats
        if not use_batch or not (dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        y, mean, var, count = _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.eps, self.process_group
        )
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # a cumulative moving average, as nn.BatchNorm
            momentum = 1.0 / float(self.num_batches_tracked)
        else:
            momentum = self.momentum
        unbiased = var * (count / (count - 1).clamp(min=1))
        # The same expression as ATen's batch norm, so one process and N agree to rounding.
        self.running_mean.copy_(momentum * mean + (1 - momentum) * self.running_mean)
        self.running_var.copy_(momentum * unbiased + (1 - momentum) * self.running_var)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every ``nn.BatchNorm*d`` in ``module`` by :class:`SyncBatchNorm`, keeping its
    parameters, buffers and train/eval mode (as ``nn.SyncBatchNorm.convert_sync_batchnorm``)."""
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, SyncBatchNorm
    ):
        converted = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, process_group=process_group,
            device=_device_of(module), dtype=_dtype_of(module),
        )  # fmt: skip
        with torch.no_grad():
            if module.affine:
                converted.weight = module.weight
                converted.bias = module.bias
            if module.track_running_stats:
                converted.running_mean = module.running_mean
                converted.running_var = module.running_var
                converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return None if tensor is None else tensor.device


def _dtype_of(module: nn.Module) -> torch.dtype | None:
    tensor = next(iter(module.parameters()), None)
    return None if tensor is None else tensor.dtype
