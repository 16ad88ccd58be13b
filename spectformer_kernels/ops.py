"""``torch.library`` registration, the derivative rules, and the entry point ``spectral_gate``.

Two custom ops do the work; each has a fake kernel (``torch.compile`` / ``torch.export``
trace them without running them) and dispatches to the backend named by its string
argument:

    spectral_gate(x, weight, backend) -> y
    spectral_gate_backward(grad_y, x, weight, backend) -> (grad_x, grad_weight)

Derivatives. ``y = G(x, K)`` is bilinear in ``(x, K)``, and its adjoint in ``x`` is the same
map with the conjugate filter (``docs/design.md``, "Derivatives": ``dx`` is the forward map
with transposed matrices and ``conj(K)``, and the transposed matrices are the forward ones up
to the ``c_k`` weights, which commute with the gate). Writing ``B(g, x, K) = (G(g, conj K),
W(g, x))`` for the backward op, with ``W`` the filter gradient (bilinear in ``g`` and
``x``, independent of ``K``), every derivative of every order is again a call of ``G`` or
``B``:

    tangent of G        G(tx, K) + G(x, tK)
    tangent of B        B(tg, x, K) + B(g, tx, tK)
    cotangents of B     for (vx, vK):  g <- G(vx, K) + G(x, vK);  x <- G(g, conj vK);
                                       K <- conj W(vx, g)

So every backend gets forward-mode AD, double backward, Hessians and the ``torch.func``
transforms from its two kernels, and the derivatives are exact transposes of each other.

Two routes carry those rules:
- the ops' registered autograd formulas (``register_autograd``): reverse mode, any order.
  This is the route of plain eager code, ``torch.compile`` and ``torch.export``.
- an ``autograd.Function`` pair with ``setup_context``, ``jvp`` and ``vmap``: taken only
  inside ``torch.func`` transforms or a forward-AD ``dual_level``, which registered
  formulas cannot serve (custom ops have no forward-mode rule and no functorch support).
  Dynamo never sees it: under compilation the op route is always taken.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd import forward_ad

from . import backends
from .dft import spectral_gate_dft
from .contract import check_inputs, compute_dtype


def _no_autocast(x: torch.Tensor):
    """Backends choose their own precision: an enclosing autocast region must not turn the
    fp32 DFT matmuls inside them into bf16 ones."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The enclosing autocast dtype for ``x``'s device, or None (also for devices such as
    ``meta`` that have no autocast)."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


# -- the two custom ops ------------------------------------------------------------------------
#
# What every backend may rely on is settled here, once, so no backend repeats it: the batch
# is not empty, the filter is in the compute dtype, ``grad_out`` is in ``x``'s dtype, no
# autocast region is active; outputs are made contiguous and the filter gradient is returned
# in the filter's dtype. ``backend`` is a name ``spectral_gate`` already resolved (and the
# backward receives the same one); ``"auto"`` from a direct caller of the op is resolved here.

def _backend_for(name: str, x: torch.Tensor, weight: torch.Tensor) -> backends.Backend:
    if name == "auto":
        name = backends.resolve_backend(name, x, weight)
    return backends.get_backend(name)


@torch.library.custom_op("spectformer::spectral_gate", mutates_args=())
def spectral_gate_op(x: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:
    if x.shape[0] == 0:  # an empty batch is valid; some FFT libraries reject it
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    run = _backend_for(backend, x, weight)
    with _no_autocast(x):
        return run.forward(x, weight.to(compute_dtype(x.dtype))).contiguous()


@spectral_gate_op.register_fake
def _spectral_gate_fake(x, weight, backend):
    check_inputs(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("spectformer::spectral_gate_backward", mutates_args=())
def spectral_gate_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[0] == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.zeros_like(weight)
    run = _backend_for(backend, x, weight)
    with _no_autocast(x):
        grad_x, grad_weight = run.backward(grad_out.to(x.dtype), x,
                                           weight.to(compute_dtype(x.dtype)))
    return grad_x.contiguous(), grad_weight.to(weight.dtype).contiguous()


@spectral_gate_backward_op.register_fake
def _spectral_gate_backward_fake(grad_out, x, weight, backend):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
    )


# -- routing: the ops, or the autograd.Function pair inside functorch / forward AD ------------

def _in_functorch_or_forward_ad() -> bool:
    if torch.compiler.is_compiling():
        return False
    return (
        torch._C._functorch.peek_interpreter_stack() is not None
        or forward_ad._current_level >= 0
    )


def _gate(x: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:
    """``G(x, K)``, differentiable to any order in both arguments."""
    if _in_functorch_or_forward_ad():
        return _GateFunction.apply(x, weight, backend)
    return spectral_gate_op(x, weight, backend)


def _gate_backward(grad_out, x, weight, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``B(g, x, K) = (G(g, conj K), W(g, x))``, differentiable to any order."""
    if _in_functorch_or_forward_ad():
        return _GateBackwardFunction.apply(grad_out, x, weight, backend)
    return spectral_gate_backward_op(grad_out, x, weight, backend)


# -- the derivative rules, shared by both routes ---------------------------------------------

def _conj(weight: torch.Tensor) -> torch.Tensor:
    """The filter ``conj(K)`` in the ``(..., 2)`` real layout."""
    return torch.stack((weight[..., 0], -weight[..., 1]), dim=-1)


def _sum(terms):
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _saved(t: torch.Tensor) -> torch.Tensor:
    """Inference tensors cannot be saved for backward; torch.fft code never saves its input
    (it saves the spectrum), so an inference-mode ``x`` must work here too: save a copy."""
    return t.clone() if t.is_inference() else t


def _gate_vjp(grad_y, x, weight, backend, needs):
    """Cotangents of ``G`` for ``(x, weight)``: both come from one backward op call."""
    if not (needs[0] or needs[1]):
        return None, None
    grad_x, grad_weight = _gate_backward(grad_y, x, weight, backend)
    return (grad_x if needs[0] else None), (grad_weight if needs[1] else None)


def _gate_jvp(x, weight, tangent_x, tangent_weight, backend):
    return _sum([
        None if tangent_x is None else _gate(tangent_x, weight, backend),
        None if tangent_weight is None else _gate(x, tangent_weight, backend),
    ])


def _gate_backward_vjp(grad_y, x, weight, v_x, v_weight, backend, needs):
    """Cotangents of ``B(grad_y, x, weight)`` given the cotangents ``(v_x, v_weight)`` of
    its outputs, for its inputs ``(grad_y, x, weight)``."""
    d_grad_y = d_x = d_weight = None
    if needs[0]:
        d_grad_y = _sum([
            None if v_x is None else _gate(v_x, weight, backend),
            None if v_weight is None else _gate(x, v_weight, backend),
        ])
    if needs[1] and v_weight is not None:
        d_x = _gate(grad_y, _conj(v_weight), backend)
    if needs[2] and v_x is not None:
        d_weight = _conj(_gate_backward(v_x, grad_y, weight, backend)[1])
    # Autograd wants a tensor (or None) per input, in the input's dtype.
    return (
        _cast(d_grad_y, grad_y) if needs[0] else None,
        _cast(d_x, x) if needs[1] else None,
        _cast(d_weight, weight) if needs[2] else None,
    )


def _gate_backward_jvp(grad_y, x, weight, t_grad_y, t_x, t_weight, backend):
    terms_x, terms_weight = [], []
    for args in ((t_grad_y, x, weight), (grad_y, t_x, t_weight)):
        g, a, k = args
        if g is None or (a is None and k is None):
            continue
        # B is linear in g and, for fixed g, in (x, K) jointly; a missing tangent is zero.
        a = torch.zeros_like(x) if a is None else a
        k = torch.zeros_like(weight) if k is None else k
        tx, tk = _gate_backward(g, a, k, backend)
        terms_x.append(tx)
        terms_weight.append(tk)
    return _cast(_sum(terms_x), x), _cast(_sum(terms_weight), weight)


def _cast(t, like):
    if t is None:
        return torch.zeros_like(like)
    return t.to(like.dtype)


# -- route 1: the ops' registered autograd formulas ------------------------------------------

def _setup(ctx, inputs, output):
    """Either op: save its tensor inputs for the backward; the last input is the backend."""
    *tensors, backend = inputs
    ctx.save_for_backward(*(_saved(t) for t in tensors))
    ctx.backend = backend


def _backward_gate(ctx, grad_y):
    x, weight = ctx.saved_tensors
    return (*_gate_vjp(grad_y, x, weight, ctx.backend, ctx.needs_input_grad), None)


def _backward_gate_backward(ctx, v_x, v_weight):
    grad_y, x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    return (*_gate_backward_vjp(grad_y, x, weight, v_x, v_weight, ctx.backend, needs), None)


spectral_gate_op.register_autograd(_backward_gate, setup_context=_setup)
spectral_gate_backward_op.register_autograd(_backward_gate_backward, setup_context=_setup)


# -- route 2: autograd.Functions for torch.func and forward-mode AD -------------------------

def _batch_first(t, bdim, size):
    """``t`` with its vmap dimension in front (expanded if ``t`` is not batched)."""
    if bdim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(bdim, 0)


def _fold_into_channels(t, bdim, size, channel_axis):
    """Fold the vmap dimension into the channel axis: channels are independent problems,
    so a vmapped gate is one gate over ``V * C`` channels."""
    return _batch_first(t, bdim, size).movedim(0, channel_axis).flatten(channel_axis, channel_axis + 1)


class _OpFunction(torch.autograd.Function):
    """What both Functions share: the ops' context, kept for the forward-mode rule too."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:-1])


class _GateFunction(_OpFunction):
    @staticmethod
    def forward(x, weight, backend):
        return spectral_gate_op(x, weight, backend)

    backward = staticmethod(_backward_gate)

    @staticmethod
    def jvp(ctx, tangent_x, tangent_weight, _):
        x, weight = ctx.saved_tensors
        return _cast(_gate_jvp(x, weight, tangent_x, tangent_weight, ctx.backend), x)

    @staticmethod
    def vmap(info, in_dims, x, weight, backend):
        x_dim, weight_dim, _ = in_dims
        v = info.batch_size
        if weight_dim is None:  # one filter: the vmap dimension is more images
            x5 = x.movedim(x_dim, 0)
            y = _gate(x5.flatten(0, 1), weight, backend)
            return y.unflatten(0, x5.shape[:2]), 0
        y = _gate(_fold_into_channels(x, x_dim, v, 3), _fold_into_channels(weight, weight_dim, v, 2), backend)
        return y.unflatten(3, (v, -1)), 3


class _GateBackwardFunction(_OpFunction):
    @staticmethod
    def forward(grad_y, x, weight, backend):
        return spectral_gate_backward_op(grad_y, x, weight, backend)

    backward = staticmethod(_backward_gate_backward)

    @staticmethod
    def jvp(ctx, t_grad_y, t_x, t_weight, _):
        grad_y, x, weight = ctx.saved_tensors
        return _gate_backward_jvp(grad_y, x, weight, t_grad_y, t_x, t_weight, ctx.backend)

    @staticmethod
    def vmap(info, in_dims, grad_y, x, weight, backend):
        # The filter gradient sums over images, so the vmap dimension must not join the
        # images: fold it into the channels for all three inputs.
        g_dim, x_dim, weight_dim, _ = in_dims
        v = info.batch_size
        grad_x, grad_weight = _gate_backward(
            _fold_into_channels(grad_y, g_dim, v, 3),
            _fold_into_channels(x, x_dim, v, 3),
            _fold_into_channels(weight, weight_dim, v, 2),
            backend,
        )
        return (grad_x.unflatten(3, (v, -1)), grad_weight.unflatten(2, (v, -1))), (3, 2)


# -- the public function -------------------------------------------------------------------------

def spectral_gate(
    x: torch.Tensor, weight: torch.Tensor, *, backend: Optional[str] = None
) -> torch.Tensor:
    """Spectral gating: ``irfft2(rfft2(x, norm="ortho") * K, s=(H, W), norm="ortho")``.

    Args:
        x: real ``(B, H, W, C)`` tensor (fp32, bf16, fp16 or fp64), any strides.
        weight: ``(H, W//2+1, C, 2)`` real tensor holding the complex filter ``K``
            (last axis = real, imaginary), as GFNet's ``complex_weight``.
        backend: a name from ``available_backends()``; ``None`` means
            ``$SPECTFORMER_BACKEND`` if set, else ``"auto"``.

    Returns:
        ``(B, H, W, C)`` in ``x.dtype``, differentiable in ``x`` and ``weight`` to any order,
        in reverse and forward mode and under the ``torch.func`` transforms. Inside an
        autocast region an fp32 ``x`` gives a result in the autocast dtype, as a matmul
        would. The backend is chosen for an input in that dtype; a kernel that reads 16-bit
        inputs gets ``x`` rounded to it, while a backend that computes in fp32 anyway
        (``reference``, ``dft``) gets the fp32 ``x`` and only its result is rounded, once.
    """
    check_inputs(x, weight)
    autocast_dtype = _autocast_dtype(x)
    if autocast_dtype is None or x.dtype != torch.float32:
        return _run(x, weight, backends.resolve_backend(backend, x, weight))
    # The choice is made for the input a 16-bit kernel would see: x's layout in the
    # autocast dtype. An empty tensor stands in for it, so nothing is rounded just to ask.
    name = backends.resolve_backend(backend, torch.empty_like(x, dtype=autocast_dtype), weight)
    if backends.get_backend(name).widens_16bit:
        # fp32 -> bf16 -> fp32 inside the backend would only lose bits and copy x twice.
        return _run(x, weight, name).to(autocast_dtype)
    return _run(x.to(autocast_dtype), weight, name)


def _run(x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
    """The gate on the backend ``name`` resolved for ``x``."""
    if torch.onnx.is_in_onnx_export():
        # ONNX has no custom-op kernel to call: export the matmul form, which every
        # runtime executes (and which computes the same function).
        return spectral_gate_dft(x, weight, chunked=False)
    return _gate(x, weight, name)
